//! Cluster membership and request routing of a node.
//!
//! Owns: the committed [`Layout`] (agreed by [`paxos`]), the liveness of peers (heartbeats;
//! a peer is down after `failure_timeout_ms` without an answer), the replication streams and
//! partition transfers ([`replicate`]), and the decision where a request for a key runs.
//!
//! Routing: every partition has a primary, the first owner that is up (while data moves, the
//! first live owner of the previous assignment, which still has all of it). The primary runs
//! the request against its store, so every data-model operation keeps its single-node
//! semantics (CAS, append, counters, queues) per key; other nodes and gateways forward the
//! request to it. A write is answered only after `W - 1` other owners acknowledged it (the
//! primary's own store is the first copy). A primary that just took over first pulls nothing:
//! acknowledged writes reached `W` owners, and with `R + W > N` the reads it serves after the
//! streams of the other owners caught up are current; `Level::All` reads check every owner.
//!
//! Invariants: a layout is installed only if newer than the current one and valid; the node's
//! own liveness view never changes the layout by itself (only `ctl` or auto-complete do, via
//! consensus), so a flapping network cannot reshuffle data.

pub mod paxos;
pub mod repair;
pub mod replicate;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use k2hdkc_client::{Client, ClientConfig};
use k2hdkc_layout::{Action, Change, Layout, Node, NodeIdx, PARTITIONS, Ring, partition_of};
use k2hdkc_proto::native::{Args, Op, Status};
use k2hdkc_storage::{Expire, Store, Version, Versioned};
use serde_json::{Value as Json, json};

use crate::chmpx::Desired;
use crate::config::ClusterConfig;
use paxos::{Acceptor, Ballot, Promise, StateDir};

/// Where a request for a key runs.
#[derive(Clone)]
pub enum Route {
    /// Here.
    Local,
    /// On this peer.
    Remote(Arc<Peer>),
    /// Nowhere right now (why).
    Unavailable(String),
}

/// Cluster counters (Prometheus and `stat`).
#[derive(Default)]
pub struct ClusterStats {
    /// Requests forwarded to their primary.
    pub forwarded: AtomicU64,
    /// Gateway sets written here (`Op::Put`).
    pub direct_puts: AtomicU64,
    /// A gateway's sets it wrote to the owners itself, and those it then sent through the
    /// primary instead (refused, or short of the quorum).
    pub direct_sent: AtomicU64,
    /// See `direct_sent`.
    pub direct_fallbacks: AtomicU64,
    /// Forwarded requests that failed.
    pub forward_errors: AtomicU64,
    /// Requests (forwarded here, or waiting for a takeover) not run because their deadline
    /// passed first.
    pub expired: AtomicU64,
    /// Writes that did not reach their write quorum in time.
    pub quorum_failures: AtomicU64,
    /// Changes sent to replicas.
    pub replicated: AtomicU64,
    /// Bytes of replication batches sent.
    pub replicated_bytes: AtomicU64,
    /// Changes received from peers and applied.
    pub imported: AtomicU64,
    /// Changes received from peers (applied or not: older than what is here).
    pub received: AtomicU64,
    /// Anti-entropy rounds run by this node.
    pub anti_entropy_rounds: AtomicU64,
    /// Partitions found different and resent by anti-entropy.
    pub anti_entropy_repairs: AtomicU64,
    /// Records anti-entropy sent (from this node as leader, or asked by it).
    pub anti_entropy_records: AtomicU64,
    /// Bytes of replication batches received.
    pub received_bytes: AtomicU64,
    /// Reads compared with other owners (quorum reads).
    pub read_checks: AtomicU64,
    /// Records repaired by quorum reads (imported here, or sent to an owner that was behind).
    pub read_repairs: AtomicU64,
}

/// A peer node (by native address).
pub struct Peer {
    /// Native address.
    pub addr: String,
    /// Connections for replication and heartbeats: never held up by a request that waits.
    pub client: Client,
    /// Connections for control requests (consensus, flushes, status), which may wait at the
    /// peer for seconds: a connection is served in order, so they must not share one with
    /// replication batches or heartbeats.
    pub control: Client,
    /// Connections for forwarded requests: these may wait at the peer (while it takes over
    /// partitions), and must not hold up replication or heartbeats behind them.
    pub forwards: Client,
    last_ok: Mutex<Option<Instant>>,
    up: AtomicBool,
    /// Feed position this peer acknowledged.
    pub acked: AtomicU64,
    /// Highest version (HLC timestamp) among acknowledged changes.
    pub acked_version: AtomicU64,
    /// Where the stream to this peer started in this process (`acked` is assumed up to
    /// here, not known: other nodes must not infer from it that the peer has those changes).
    pub since: u64,
    /// Imported changes the stream to this peer holds back because their sender's own stream
    /// is expected to deliver them (see [`replicate`]); the lowest such feed position.
    pub held_from: AtomicU64,
    /// The lowest version (HLC timestamp) among those held-back changes.
    pub held_version: AtomicU64,
    /// What the peer last said about itself and its own streams (heartbeat).
    pub view: Mutex<Option<Arc<PeerView>>>,
    /// The peer takes over partitions and asked for everything held back for it.
    pub force_release: AtomicBool,
    /// The peer restarted and may have lost what it had not yet written to disk (or started
    /// empty): send it the state of its partitions newer than `resync_since`, not only what
    /// changed since its acknowledged position.
    pub resync_all: AtomicBool,
    /// See `resync_all` (an HLC timestamp; 0 for everything).
    pub resync_since: AtomicU64,
    /// The peer's last reported status (ping reply).
    pub status: Mutex<Json>,
    /// The peer said it is catching up (after a start or a pause): do not route to it.
    pub catching_up: AtomicBool,
    streaming: AtomicBool,
    /// It refused a connection since its last answer: its process is gone (or not yet
    /// listening), whatever other nodes heard from it before (see
    /// `Cluster::keep_majority_peers`).
    refused: AtomicBool,
    /// This node's own connections to it fail (a connect that timed out, heartbeats that do
    /// not come back) while it is up for the others (they vouched for it after a takeover's
    /// collection): requests for its partitions go through a node that reaches it (see
    /// [`Cluster::route_partition`]) until a heartbeat of this node's gets an answer.
    relayed: AtomicBool,
    /// When one of this node's own heartbeats last got an answer (its `status` is from
    /// then): unlike `last_ok`, never set on the others' word.
    answered_at: Mutex<Option<Instant>>,
    /// The peer's clock minus this node's, in ms, as the last heartbeat measured it (to
    /// within half its round trip, `clock_error`); `CLOCK_UNKNOWN` before the first one.
    clock_offset: AtomicI64,
    /// Half the round trip of the heartbeat that measured `clock_offset`, in ms.
    clock_error: AtomicU64,
}

/// [`Peer`]'s clock offset before a heartbeat measured it.
const CLOCK_UNKNOWN: i64 = i64::MIN;
/// A heartbeat whose round trip took longer than this does not update the clock offset
/// (its error bound would be too loose to set deadlines by; the bound is taken off every
/// deadline sent, see [`Peer::peer_time`]).
const CLOCK_MAX_RTT_MS: u64 = 200;

impl Peer {
    /// Whether heartbeats say it is up.
    pub fn up(&self) -> bool {
        self.up.load(Relaxed)
    }

    /// It answered (a heartbeat, or a request of its own): heard from now, up. Returns
    /// whether it was up already.
    fn answered(&self) -> bool {
        *self.last_ok.lock().expect("lock") = Some(Instant::now());
        self.refused.store(false, SeqCst);
        self.up.swap(true, SeqCst)
    }

    /// Whether it answered within `d`.
    fn heard_within(&self, d: Duration) -> bool {
        self.last_ok
            .lock()
            .expect("lock")
            .is_some_and(|t| t.elapsed() <= d)
    }

    /// Take it out of routing until a heartbeat answers again (it refused a connection).
    pub fn suspect(&self) {
        self.refused.store(true, SeqCst);
        if self.up.swap(false, SeqCst) {
            tracing::warn!(peer = %self.addr, "peer refused a connection; routing around it");
        }
    }

    /// Whether requests may be routed to it.
    pub fn routable(&self) -> bool {
        self.up() && !self.catching_up.load(Relaxed)
    }

    /// Whether this node reaches it only through others ([`Peer::relay`]).
    pub fn is_relayed(&self) -> bool {
        self.relayed.load(Relaxed)
    }

    /// Whom it listed as heard from itself in its last heartbeat reply to this node, if that
    /// reply came within `fresh` and this node takes it for up and reaches it itself: a
    /// status kept from before a cut (or from a peer kept up on the others' word) says
    /// nothing about now.
    fn recent_heard(&self, fresh: Duration) -> Option<Vec<String>> {
        let recent = self.up()
            && !self.is_relayed()
            && self
                .answered_at
                .lock()
                .expect("lock")
                .is_some_and(|t| t.elapsed() < fresh);
        if !recent {
            return None;
        }
        let status = self.status.lock().expect("lock");
        let list = status["heard"].as_array()?;
        Some(
            list.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
        )
    }

    /// Whether requests may be sent to it over this node's own connections: routable, and
    /// not reached only through others ([`Peer::relay`]).
    pub fn reachable(&self) -> bool {
        self.routable() && !self.relayed.load(Relaxed)
    }

    /// This node cannot reach it itself (a connection did not open in time), though it
    /// may be up: route its partitions through another node until a heartbeat of this
    /// node's is answered. Nothing was sent on the connection that failed to open, so
    /// routing its requests elsewhere runs none of them twice.
    pub fn relay(&self) {
        if !self.relayed.swap(true, SeqCst) {
            tracing::warn!(
                peer = %self.addr,
                "cannot reach the peer from here; routing its partitions through another node"
            );
        }
    }

    /// The deadline `local_ms` (this node's clock) on the peer's clock, once a heartbeat
    /// measured the offset between them: early by the measurement's error bound, so the
    /// peer never takes it for later than it is.
    pub fn peer_time(&self, local_ms: u64) -> Option<u64> {
        let off = self.clock_offset.load(Relaxed);
        let err = self.clock_error.load(Relaxed);
        (off != CLOCK_UNKNOWN).then(|| local_ms.saturating_add_signed(off).saturating_sub(err))
    }

    /// Record a heartbeat's reading of the peer's clock: sent at `t0`, answered at `t1`
    /// (this node's clock), the peer said `theirs` in between.
    fn observe_clock(&self, t0: u64, t1: u64, theirs: u64) {
        let rtt = t1.saturating_sub(t0);
        if rtt > CLOCK_MAX_RTT_MS || theirs == 0 {
            return;
        }
        let mid = t0 + rtt / 2;
        let off = i128::from(theirs) - i128::from(mid);
        let off = off.clamp(i128::from(i64::MIN + 1), i128::from(i64::MAX)) as i64;
        // Two relaxed stores: a reader may pair one round's offset with the other's bound,
        // both from heartbeats of under `CLOCK_MAX_RTT_MS`.
        self.clock_error.store(rtt.div_ceil(2), Relaxed);
        self.clock_offset.store(off, Relaxed);
    }
}

/// What a peer reported in its last heartbeat reply about its streams.
#[derive(Debug, Default)]
pub struct PeerView {
    /// Its process incarnation (changes on every start).
    pub incarnation: u64,
    /// Its layout version.
    pub version: u64,
    /// Per target address: (where its stream to the target started, the feed position up to
    /// which the target has everything it should get from it).
    pub streams: HashMap<String, (u64, u64)>,
}

impl PeerView {
    fn parse(r: &Json) -> PeerView {
        let streams = r["streams"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(a, v)| Some((a.clone(), (v[0].as_u64()?, v[1].as_u64()?))))
                    .collect()
            })
            .unwrap_or_default();
        PeerView {
            incarnation: r["incarnation"].as_u64().unwrap_or(0),
            version: r["version"].as_u64().unwrap_or(0),
            streams,
        }
    }
}

/// The node's own storage, as the cluster layer needs it.
pub struct LocalStore {
    /// The store.
    pub store: Store,
    /// Where the layout and the consensus state are kept (`None`: nowhere).
    pub state_dir: Option<std::path::PathBuf>,
    /// Whether every acknowledged write was on disk first (file mode, `fsync = always`): a
    /// restarted node then lost nothing it acknowledged.
    pub acks_durable: bool,
}

/// Who delivered an imported change (kept per feed position, see [`replicate`]).
#[derive(Debug, Clone)]
pub enum Origin {
    /// A peer's replication stream: its address, incarnation, and the change's position in
    /// its feed.
    Stream {
        /// Sender's native address.
        sender: Arc<str>,
        /// Sender's incarnation.
        incarnation: u64,
        /// The change's position in the sender's feed.
        seq: u64,
    },
    /// A gateway's plain set that names the key's primary ([`Cluster::put_direct`]): the
    /// primary's stream delivers it to the other owners, so it is held back like a stream
    /// import, but its position in the primary's feed is not known yet. When the primary's
    /// own copy arrives here it becomes [`Origin::Stream`]; until then it is sent on if the
    /// primary goes down, restarts or the layout changes, or after [`DIRECT_HOLD_MS`] (to the
    /// primary too: the set may have failed there).
    Direct {
        /// The primary's native address.
        sender: Arc<str>,
        /// Its incarnation as this node knew it (0: not known).
        incarnation: u64,
        /// The layout version then.
        layout: u64,
        /// When it was written here (this node's clock, unix ms).
        at_ms: u64,
    },
    /// A partition transfer or a resync: other owners get theirs from the sender directly.
    Transfer,
    /// Not known (or no longer to be relied on): forward it.
    Unknown,
}

/// A gateway's plain set as `Op::Put` carries it (see [`Cluster::put_direct`]).
pub struct DirectPut<'a> {
    /// The key.
    pub key: &'a [u8],
    /// The value.
    pub value: &'a [u8],
    /// Client flags.
    pub flags: u32,
    /// Expiry.
    pub expire: Expire,
    /// The version the gateway chose.
    pub version: Version,
    /// Whether the receiver is the key's primary (else a replica).
    pub primary: bool,
    /// The primary's native address (a replica holds the copy back for its stream).
    pub sender: &'a str,
}

/// Most imported changes whose origin is remembered; older ones are forwarded (safe).
const ORIGINS_CAP: usize = 1 << 21;

/// Longest a replica holds back a gateway's set waiting for the primary's copy before it sends
/// it on itself (safe: at worst a second copy). The primary's copy normally comes within a
/// few milliseconds (its streams gather for at most 10 ms: `replicate::LINGER`).
pub const DIRECT_HOLD_MS: u64 = 2_000;

/// Leaves of the anti-entropy hash tree below each partition: a differing partition is
/// compared leaf by leaf, and only the records of differing leaves are resent.
pub const LEAF_BITS: u32 = 6;
/// `2^LEAF_BITS` (a leaf set fits a u64 mask).
pub const LEAVES: usize = 1 << LEAF_BITS;

/// The leaf of a key within its partition: the key-hash bits right below the partition's.
pub fn leaf_of(key: &[u8]) -> usize {
    let shift = 64 - k2hdkc_layout::PARTITION_BITS - LEAF_BITS;
    (k2hdkc_layout::key_hash(key) >> shift) as usize & (LEAVES - 1)
}

/// The leaves whose digests differ between two owners' lists for one partition (all of them
/// when either list is missing or malformed: the owner runs an older version).
fn differing_leaves(a: Option<&Vec<String>>, b: Option<&Vec<String>>) -> u64 {
    match (a, b) {
        (Some(a), Some(b)) if a.len() == LEAVES && b.len() == LEAVES => a
            .iter()
            .zip(b)
            .enumerate()
            .filter(|(_, (x, y))| x != y)
            .fold(0u64, |m, (i, _)| m | 1 << i),
        _ => u64::MAX,
    }
}

/// Per peer address: the feed position its stream has delivered everything up to, and a
/// version below what it has not (see [`Cluster::save_streams`]).
type StreamPositions = BTreeMap<String, (u64, u64)>;

/// Imports carry other nodes' clocks, a little behind this one's: a second of HLC time.
const IMPORT_CLOCK_MARGIN: u64 = Version::at_millis(1000).ts;

/// Copy digests (`ctl verify`, anti-entropy) cover versions older than this: writes still
/// travelling do not count as differences.
const DIGEST_SETTLE_MS: u64 = 5_000;

/// How often the hosts of a cluster description are looked up again.
const RESOLVE_EVERY: Duration = Duration::from_secs(30);

/// Format of `streams.json`: `{"format": 1, "peers": {addr: [position, version]}}`.
const STREAMS_FORMAT: u64 = 1;
/// Least time between two saves of the stream positions.
const STREAMS_SAVE_EVERY: Duration = Duration::from_secs(1);

/// Most gateway sets a replica remembers while it waits for the primary's copies (beyond it,
/// they are sent on after the hold: safe).
const DIRECT_CAP: usize = 1 << 18;

/// A node's view of the cluster.
pub struct Cluster {
    /// This node's name.
    pub me: String,
    /// This node's advertised native address.
    pub addr: String,
    /// This node's memcached address, if any.
    pub memcached: Option<String>,
    cfg: ClusterConfig,
    /// The node's store.
    pub store: Store,
    layout: RwLock<Arc<Layout>>,
    peers: Mutex<BTreeMap<String, Arc<Peer>>>,
    /// Stream positions saved before a restart, for peers not met again yet: (feed
    /// position, version) by address (see [`Cluster::save_streams`]).
    resume: Mutex<StreamPositions>,
    /// What was saved last, and when; held while the positions are written (one save at a
    /// time: they share a temporary file).
    streams_saved: tokio::sync::Mutex<(Option<Instant>, StreamPositions)>,
    acceptor: tokio::sync::Mutex<Acceptor>,
    state: StateDir,
    stop: AtomicBool,
    /// Notified whenever a peer acknowledges replication.
    pub acked: tokio::sync::Notify,
    /// Notified after local writes, so replication streams wake without a blocking wait.
    pub written: tokio::sync::Notify,
    /// Counters.
    pub stats: ClusterStats,
    /// Transfers of the current movement: total and done (partition x target).
    pub transfer_total: AtomicU64,
    /// See `transfer_total`.
    pub transfer_done: AtomicU64,
    /// The layout version whose transfers this node finished.
    pub transfers_finished: AtomicU64,
    /// Token that cluster requests must carry (`Pass`), when a secret is configured.
    pub token: Option<Vec<u8>>,
    /// After a start or a pause this node does not lead partitions until the other nodes'
    /// streams have delivered what they hold for it (see [`Cluster::catch_up`]).
    catching_up: AtomicBool,
    /// When the heartbeat loop last ran (pause detection).
    /// Milliseconds since `started` at that moment (an atomic: read on every routed request).
    last_tick: AtomicU64,
    started: Instant,
    /// Random per process start: peers learn from it that this node's stream positions were
    /// reset (see [`Peer::since`]).
    pub incarnation: u64,
    /// Who delivered the imported changes still in the feed, by local feed position.
    pub origins: Mutex<std::collections::BTreeMap<u64, Origin>>,
    /// Gateway sets written here as a replica whose primary's copy has not arrived yet: key to
    /// (version, local feed position, when: unix ms).
    direct: Mutex<HashMap<Vec<u8>, (Version, u64, u64)>>,
    /// What became of gateway sets written here as a replica once the primary's copy came:
    /// local feed position to (its origin now, when: unix ms). Streams that hold one back
    /// look here (`Cluster::settled_origin`). Ordered: the lookups are of recent positions,
    /// which a B-tree keeps together in cache where a hash table scatters them (measured: its
    /// probes were a twentieth of a node's samples under pipelined gateway sets).
    direct_settled: Mutex<std::collections::BTreeMap<u64, (Origin, u64)>>,
    /// The highest feed position a write quorum waits for (streams to owners a quorum counts
    /// on send at once only up to it; past it they may gather changes, see `replicate`).
    pub quorum_wait: AtomicU64,
    /// What the CHMPX-style file asks for, if the node runs from one.
    desired: Mutex<Option<Desired>>,
    /// Collecting what the other owners hold before leading partitions taken over.
    takeover: AtomicBool,
    /// A takeover was asked for while one ran (see [`Cluster::begin_takeover_also`]).
    takeover_again: AtomicBool,
    /// Dropped nodes the next takeover round asks too.
    takeover_also: Mutex<Vec<String>>,
    /// Notified when a takeover sync ends.
    takeover_done: tokio::sync::Notify,
    /// The catch-up asked the others to flush (see `ping_reply`).
    flushing: AtomicBool,
    /// TLS for connections to peers (`[cluster.tls]`).
    tls: std::sync::OnceLock<k2hdkc_client::TlsConnector>,
    /// The first catch-up after this process started asks for everything newer than this
    /// (an HLC timestamp: the newest version here at start, less a margin; 0 when empty;
    /// nothing when acknowledged writes were durable).
    resync_from: Option<u64>,
    /// Whether that first catch-up is still to come.
    fresh_start: AtomicBool,
    /// Peers that delivered that resync already (a catch-up that is retried skips them).
    resynced: Mutex<std::collections::HashSet<String>>,
    /// A round of layout upkeep (auto-complete, the cluster description) is running.
    admin_busy: AtomicBool,
    /// When the last anti-entropy round started (seconds since `started`).
    last_anti_entropy: AtomicU64,
    /// How this node connects to its peers.
    net: k2hdkc_client::Net,
}

/// Errors of cluster control requests.
fn err(msg: impl Into<String>) -> Json {
    json!({"ok": false, "error": msg.into()})
}

impl Cluster {
    /// Load the persisted state (if any) and make the cluster object; [`Cluster::start`] then
    /// joins and runs the background tasks.
    pub fn new(
        cfg: ClusterConfig,
        token: Option<Vec<u8>>,
        me: String,
        addr: String,
        memcached: Option<String>,
        local: LocalStore,
        net: k2hdkc_client::Net,
    ) -> Result<Arc<Cluster>, String> {
        let LocalStore {
            store,
            state_dir,
            acks_durable,
        } = local;
        let state = StateDir(state_dir);
        let (layout, acceptor) = state.load()?;
        let layout = layout.unwrap_or_else(|| Layout::new(&cfg.cluster));
        if layout.cluster != cfg.cluster {
            return Err(format!(
                "the saved layout belongs to cluster {:?}, not {:?}",
                layout.cluster, cfg.cluster
            ));
        }
        // What a crash may have lost (writes acknowledged before they reached the disk) is newer
        // than the newest version recovered; imports carry other nodes' clocks, a little
        // behind, hence a margin of a second of HLC time. Nothing is lost where every
        // acknowledgement waited for fsync; everything where nothing is kept.
        let resync_from = if store.last_seq() == 0 && store.stats().records == 0 {
            Some(0)
        } else if acks_durable {
            None
        } else {
            Some(store.max_version().ts.saturating_sub(IMPORT_CLOCK_MARGIN))
        };
        let resume = match state
            .load_streams()
            .map(|t| serde_json::from_str::<Json>(&t))
        {
            None => BTreeMap::new(),
            Some(Ok(j)) if j["format"] == json!(STREAMS_FORMAT) => j["peers"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(a, v)| Some((a.clone(), (v[0].as_u64()?, v[1].as_u64()?))))
                .collect(),
            // A torn or foreign file loses only the hints it held: say so and go on.
            Some(r) => {
                tracing::warn!(
                    file = "streams.json",
                    error = ?r.err().map(|e| e.to_string()),
                    "saved stream positions not readable; streams resume from the feed's end"
                );
                BTreeMap::new()
            }
        };
        let incarnation = incarnation(store.now_ms());
        Ok(Arc::new(Cluster {
            me,
            addr,
            memcached,
            cfg,
            store,
            layout: RwLock::new(Arc::new(layout)),
            peers: Mutex::new(BTreeMap::new()),
            resume: Mutex::new(resume),
            streams_saved: tokio::sync::Mutex::new((None, BTreeMap::new())),
            acceptor: tokio::sync::Mutex::new(acceptor),
            state,
            stop: AtomicBool::new(false),
            acked: tokio::sync::Notify::new(),
            written: tokio::sync::Notify::new(),
            stats: ClusterStats::default(),
            transfer_total: AtomicU64::new(0),
            transfer_done: AtomicU64::new(0),
            transfers_finished: AtomicU64::new(0),
            token,
            catching_up: AtomicBool::new(true),
            last_tick: AtomicU64::new(0),
            started: Instant::now(),
            incarnation,
            origins: Mutex::new(Default::default()),
            direct: Mutex::new(HashMap::new()),
            direct_settled: Mutex::new(Default::default()),
            quorum_wait: AtomicU64::new(0),
            desired: Mutex::new(None),
            takeover: AtomicBool::new(false),
            takeover_again: AtomicBool::new(false),
            takeover_also: Mutex::new(Vec::new()),
            takeover_done: tokio::sync::Notify::new(),
            flushing: AtomicBool::new(false),
            tls: std::sync::OnceLock::new(),
            resync_from,
            fresh_start: AtomicBool::new(true),
            resynced: Mutex::new(Default::default()),
            admin_busy: AtomicBool::new(false),
            last_anti_entropy: AtomicU64::new(0),
            net,
        }))
    }

    /// Whether this node is a gateway (holds no data).
    pub fn gateway(&self) -> bool {
        self.cfg.gateway
    }

    /// Whether this gateway writes plain sets to the owners itself ([`Cluster::put_direct`]).
    pub fn direct_writes(&self) -> bool {
        self.cfg.gateway && self.cfg.direct_writes
    }

    /// The committed layout.
    pub fn layout(&self) -> Arc<Layout> {
        self.layout.read().expect("lock").clone()
    }

    /// Whether shutdown has begun.
    pub fn stopping(&self) -> bool {
        self.stop.load(Relaxed)
    }

    /// Stop the background tasks.
    pub fn shutdown(&self) {
        self.stop.store(true, SeqCst);
        self.acked.notify_waiters();
    }

    /// Longest wait for a peer.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.request_timeout_ms)
    }

    /// How long after a request was sent (or arrived) it may still start to run: shorter than
    /// the sender's wait by a margin for clock error and the time the run itself takes, so
    /// a request its sender reported as failed never takes effect later (and then overwrites
    /// newer acknowledged writes with a fresh version).
    pub fn run_budget_ms(&self) -> u64 {
        let t = self.cfg.request_timeout_ms;
        t - (t / 5).max(50).min(t / 2)
    }

    /// The oldest version of `ms` milliseconds ago, by this node's clock.
    pub fn version_ago(&self, ms: u64) -> Version {
        Version::at_millis(self.store.now_ms().saturating_sub(ms))
    }

    /// The deadline (this node's clock) of a request that starts here now without one.
    pub fn fresh_deadline(&self) -> u64 {
        self.store.now_ms() + self.run_budget_ms()
    }

    /// Whether `deadline` (this node's clock) has passed; counted as an expired request if
    /// so (the caller then answers with an error instead of running it).
    pub fn expired(&self, deadline: u64) -> bool {
        let past = self.store.now_ms() > deadline;
        if past {
            self.stats.expired.fetch_add(1, Relaxed);
        }
        past
    }

    /// Run blocking work (a scan of the store) off the async threads, or in place where the
    /// transport asks for it (a simulation).
    pub async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        if self.net.inline_blocking() {
            return Ok(f());
        }
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| e.to_string())
    }

    /// The peer at a native address (created on first use).
    pub fn peer(&self, addr: &str) -> Arc<Peer> {
        let mut peers = self.peers.lock().expect("lock");
        if let Some(p) = peers.get(addr) {
            return p.clone();
        }
        let sock: SocketAddr = addr
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let since = self.store.last_seq();
        // Where the stream stood before a restart (what it had not sent, or held back):
        // resume there, so a crash loses no hint.
        let (acked, acked_version) = match self.resume.lock().expect("lock").remove(addr) {
            Some((position, version)) => (position.min(since), version),
            None => (since, 0),
        };
        let mut cc = ClientConfig::new(sock);
        cc.connections = 2;
        cc.connect_timeout = Duration::from_millis(self.cfg.failure_timeout_ms.min(2000));
        cc.request_timeout = self.request_timeout();
        cc.tls = self.tls.get().cloned();
        cc.net = self.net.clone();
        let p = Arc::new(Peer {
            addr: addr.to_string(),
            client: Client::lazy(cc.clone()),
            control: Client::lazy(cc.clone()),
            forwards: Client::lazy(cc),
            last_ok: Mutex::new(None),
            // Optimistic until heartbeats say otherwise, so a fresh node routes at once.
            up: AtomicBool::new(true),
            acked: AtomicU64::new(acked),
            acked_version: AtomicU64::new(acked_version),
            since,
            held_from: AtomicU64::new(u64::MAX),
            held_version: AtomicU64::new(u64::MAX),
            view: Mutex::new(None),
            force_release: AtomicBool::new(false),
            resync_all: AtomicBool::new(false),
            resync_since: AtomicU64::new(0),
            status: Mutex::new(Json::Null),
            catching_up: AtomicBool::new(false),
            streaming: AtomicBool::new(false),
            refused: AtomicBool::new(false),
            relayed: AtomicBool::new(false),
            answered_at: Mutex::new(None),
            clock_offset: AtomicI64::new(CLOCK_UNKNOWN),
            clock_error: AtomicU64::new(0),
        });
        peers.insert(addr.to_string(), p.clone());
        p
    }

    /// The peer at this address, if this node knows it.
    pub fn known_peer(&self, addr: &str) -> Option<Arc<Peer>> {
        self.peers.lock().expect("lock").get(addr).cloned()
    }

    /// Whether the node at this address is up (this node always is).
    pub fn peer_up(&self, addr: &str) -> bool {
        addr == self.addr
            || self
                .peers
                .lock()
                .expect("lock")
                .get(addr)
                .is_none_or(|p| p.up())
    }

    /// Where a request for `key` runs.
    pub fn route(&self, key: &[u8]) -> Route {
        self.check_pause();
        let l = self.layout();
        self.route_partition(&l, partition_of(key))
    }

    /// Where a request for partition `p` runs under layout `l`.
    pub fn route_partition(&self, l: &Layout, p: usize) -> Route {
        let list = l.owners_of_partition(p).serving();
        if list.is_empty() {
            return Route::Unavailable(if l.nodes.is_empty() {
                "this node has not joined a cluster yet".into()
            } else {
                "no node is in service: run `k2hdkc ctl ADDR attach`".into()
            });
        }
        // Owners that are catching up are passed over, unless nobody else is left.
        let mut fallback = None;
        for &i in list {
            let n = l.node(i);
            if n.addr == self.addr && !self.gateway() {
                if !self.catching_up() {
                    return Route::Local;
                }
                // A node cut off from the majority serves nothing, not even as a last resort:
                // the majority may be writing these keys.
                if self.majority_reachable(l) {
                    fallback.get_or_insert(Route::Local);
                }
                continue;
            }
            let peer = self.peer(&n.addr);
            if peer.routable() {
                // Relayed only where this node starts the request: one it was forwarded
                // goes on to the primary itself, so two nodes whose views differ for a
                // moment cannot pass it back and forth.
                if peer.is_relayed()
                    && crate::routing::inherited_deadline().is_none()
                    && let Some(relay) = self.relay_for(l, list, &peer)
                {
                    return Route::Remote(relay);
                }
                return Route::Remote(peer);
            }
            if peer.up() {
                fallback.get_or_insert(Route::Remote(peer));
            }
        }
        fallback
            .unwrap_or_else(|| Route::Unavailable(format!("every owner of partition {p} is down")))
    }

    /// A node to send requests for `primary`'s partitions through, when this node cannot
    /// reach it itself: the partition's next owner this node reaches, else any other node
    /// of the layout it reaches. The relay routes the request on by its own view (a
    /// forward for a partition it does not lead: see `Op::Forward`), so to the primary if
    /// it reaches it, and the primary still orders every update of the key.
    fn relay_for(&self, l: &Layout, owners: &[NodeIdx], primary: &Peer) -> Option<Arc<Peer>> {
        owners
            .iter()
            .map(|&i| l.node(i))
            .chain(l.nodes.iter())
            .filter(|n| n.addr != self.addr && n.addr != primary.addr)
            .map(|n| self.peer(&n.addr))
            .find(|p| p.reachable())
    }

    /// Whether the layout is known and every partition has somewhere to run now.
    pub fn routes_everything(&self) -> bool {
        let l = self.layout();
        l.version > 0
            && (0..PARTITIONS)
                .all(|p| !matches!(self.route_partition(&l, p), Route::Unavailable(_)))
    }

    /// Whether this node is catching up (and so leads nothing).
    pub fn catching_up(&self) -> bool {
        self.catching_up.load(SeqCst)
    }

    /// If this process was paused (its heartbeat loop did not run for longer than the
    /// failure timeout), others may have led its partitions meanwhile: catch up first.
    pub fn check_pause(&self) {
        let gap = self.cfg.heartbeat_ms + self.cfg.failure_timeout_ms;
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.last_tick.load(Relaxed);
        if now.saturating_sub(last) > gap
            && self
                .last_tick
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            tracing::warn!(gap_ms = now - last, "this node was paused; catching up");
            self.catching_up.store(true, SeqCst);
        }
    }

    /// A page of the cluster-wide scan: keys with `prefix` after `after`, in order, at most
    /// `limit`, and where the next page starts. Every node that holds data is asked for its
    /// own page; a key counts only from the node that leads its partition in this node's
    /// view (stale copies elsewhere do not show), and a page is cut at the smallest last key
    /// of the nodes whose pages were full, so no key between pages is skipped.
    pub async fn scan_all(
        self: &Arc<Self>,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: u32,
    ) -> Result<(Vec<Vec<u8>>, Option<Vec<u8>>), String> {
        let l = self.layout();
        let mut set = tokio::task::JoinSet::new();
        for n in l.nodes.iter() {
            if n.addr == self.addr {
                if self.gateway() {
                    continue;
                }
                let page = self
                    .store
                    .scan(prefix, after, limit as usize)
                    .map_err(|e| e.to_string())?;
                let full = page.next.is_some();
                set.spawn(std::future::ready(Ok((n.addr.clone(), page.keys, full))));
                continue;
            }
            if !self.peer_up(&n.addr) {
                // Its partitions are led by others now: they are asked.
                continue;
            }
            let peer = self.peer(&n.addr);
            let (prefix, after) = (prefix.to_vec(), after.map(<[u8]>::to_vec));
            let timeout = self.request_timeout();
            set.spawn(async move {
                let a = Args {
                    prefix: Some(&prefix),
                    after: after.as_deref(),
                    limit: Some(limit),
                    level: Some(1),
                    ..Default::default()
                };
                let r = tokio::time::timeout(timeout, peer.forwards.request(Op::Scan, &a))
                    .await
                    .map_err(|_| format!("{} did not answer the scan in time", peer.addr))?
                    .map_err(|e| format!("{}: {e}", peer.addr))?;
                if r.status() != Some(Status::Ok) {
                    return Err(format!(
                        "{}: {}",
                        peer.addr,
                        r.message.unwrap_or_else(|| "scan refused".into())
                    ));
                }
                let full = r.next.is_some();
                Ok((peer.addr.clone(), r.keys, full))
            });
        }
        let mut keys: Vec<Vec<u8>> = Vec::new();
        let mut cut: Option<Vec<u8>> = None;
        while let Some(r) = set.join_next().await {
            let (addr, page, full) = r.map_err(|e| e.to_string())??;
            if full && let Some(last) = page.last() {
                cut = Some(match cut {
                    Some(c) if c <= *last => c,
                    _ => last.clone(),
                });
            }
            for k in page {
                let leader = match self.route_partition(&l, partition_of(&k)) {
                    Route::Local => self.addr.clone(),
                    Route::Remote(p) => p.addr.clone(),
                    Route::Unavailable(_) => continue,
                };
                if leader == addr {
                    keys.push(k);
                }
            }
        }
        keys.sort();
        keys.dedup();
        if let Some(c) = &cut {
            keys.retain(|k| k <= c);
        }
        let truncated = keys.len() > limit as usize;
        keys.truncate(limit as usize);
        // Cut by the limit: go on after the last key given. Cut by a full page: everything up
        // to that page's last key is covered, so go on after it.
        let next = if truncated { keys.last().cloned() } else { cut };
        Ok((keys, next))
    }

    /// This node's digest of every partition over versions older than `before` (an HLC
    /// timestamp), as hex strings.
    async fn digests(&self, before: u64) -> Vec<String> {
        let store = self.store.clone();
        let before = Version {
            ts: before,
            node: 0,
        };
        self.blocking(move || store.digests(PARTITIONS, &partition_of, before))
            .await
            .unwrap_or_default()
            .iter()
            .map(|x| format!("{x:016x}"))
            .collect()
    }

    /// This node's digests of the leaves of `parts` over versions older than `before`: for
    /// each partition in order, [`LEAVES`] hex strings.
    async fn leaf_digests(&self, before: u64, parts: Vec<usize>) -> Vec<Vec<String>> {
        let store = self.store.clone();
        let before = Version {
            ts: before,
            node: 0,
        };
        let n = parts.len();
        let mut slot = vec![usize::MAX; PARTITIONS];
        for (i, &p) in parts.iter().enumerate() {
            slot[p] = i;
        }
        // Keys of other partitions go to one extra bucket, dropped.
        let bucket = move |k: &[u8]| match slot[partition_of(k)] {
            usize::MAX => n * LEAVES,
            i => i * LEAVES + leaf_of(k),
        };
        let d = self
            .blocking(move || store.digests(n * LEAVES + 1, &bucket, before))
            .await
            .unwrap_or_default();
        d.chunks(LEAVES)
            .take(n)
            .map(|c| c.iter().map(|x| format!("{x:016x}")).collect())
            .collect()
    }

    /// The leaf digests of `parts` from every live owner of some of them: by node name, by
    /// partition. An owner that does not answer with leaves is left out (its pairs are
    /// compared whole).
    async fn owners_leaves(
        self: &Arc<Self>,
        l: &Layout,
        parts: &[usize],
    ) -> HashMap<String, HashMap<usize, Vec<String>>> {
        let before = self.version_ago(DIGEST_SETTLE_MS).ts;
        let mut set = tokio::task::JoinSet::new();
        for (i, n) in l.nodes.iter().enumerate() {
            let mine: Vec<usize> = parts
                .iter()
                .copied()
                .filter(|&p| l.assignment[p].contains(&(i as NodeIdx)))
                .collect();
            if mine.is_empty() || !n.holds_data() {
                continue;
            }
            let me = self.clone();
            let (name, addr) = (n.name.clone(), n.addr.clone());
            set.spawn(async move {
                let leaves = if addr == me.addr {
                    Some(me.leaf_digests(before, mine.clone()).await)
                } else if me.peer_up(&addr) {
                    let req = json!({"method": "digests", "before": before, "partitions": mine});
                    me.call(&addr, req).await.ok().and_then(|r| {
                        serde_json::from_value::<Vec<Vec<String>>>(r["leaves"].clone()).ok()
                    })
                } else {
                    None
                };
                (name, mine, leaves)
            });
        }
        let mut out = HashMap::new();
        while let Some(Ok((name, mine, leaves))) = set.join_next().await {
            if let Some(leaves) = leaves.filter(|v| v.len() == mine.len()) {
                out.insert(name, mine.into_iter().zip(leaves).collect());
            }
        }
        out
    }

    /// Compare the copies of every partition across its live owners (`ctl verify`): digests
    /// of versions older than a few seconds, so writes in flight do not count. Returns the
    /// partitions whose copies differ, with the owners that answered.
    pub async fn verify(self: &Arc<Self>) -> Result<Json, String> {
        let l = self.layout();
        if l.moving() {
            return Err("data is moving; verify once it is done".into());
        }
        let before = self.version_ago(DIGEST_SETTLE_MS).ts;
        let mut set = tokio::task::JoinSet::new();
        for n in l.nodes.iter().filter(|n| n.holds_data()) {
            let me = self.clone();
            let (name, addr) = (n.name.clone(), n.addr.clone());
            set.spawn(async move {
                let req = json!({"method": "digests", "before": before});
                let r = if addr == me.addr {
                    Ok(json!({"ok": true, "digests": me.digests(before).await}))
                } else if me.peer_up(&addr) {
                    me.call(&addr, req).await
                } else {
                    Err("down".into())
                };
                (name, r)
            });
        }
        let mut digests: HashMap<String, Vec<String>> = HashMap::new();
        let mut skipped = Vec::new();
        while let Some(r) = set.join_next().await {
            let (name, r) = r.map_err(|e| e.to_string())?;
            match r {
                Ok(j) if j["ok"] == json!(true) => {
                    let d = j["digests"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|x| x.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default();
                    digests.insert(name, d);
                }
                Ok(j) => skipped.push(json!({"node": name, "error": j["error"]})),
                Err(e) => skipped.push(json!({"node": name, "error": e})),
            }
        }
        let mut differ = Vec::new();
        let mut compared = 0;
        for p in 0..PARTITIONS {
            let owners: Vec<&str> = l.assignment[p]
                .iter()
                .map(|&i| l.node(i).name.as_str())
                .filter(|n| digests.contains_key(*n))
                .collect();
            if owners.len() < 2 {
                continue;
            }
            compared += 1;
            let first = digests[owners[0]].get(p);
            if owners.iter().any(|o| digests[*o].get(p) != first) {
                differ.push(json!({"partition": p, "owners": owners}));
            }
        }
        Ok(json!({
            "ok": true,
            "version": l.version,
            "compared": compared,
            "differ": differ,
            "skipped": skipped,
        }))
    }

    /// One anti-entropy round (by the leading node): compare every partition's copies, then
    /// the [`LEAVES`] leaves of each differing partition (a two-level hash tree), and have
    /// every live owner send each other owner its recent records of the leaves where the two
    /// differ (see `replicate::push_partitions`); last-writer-wins merges them.
    async fn anti_entropy(self: &Arc<Self>) {
        let v = match self.verify().await {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(error = %e, "anti-entropy skipped");
                return;
            }
        };
        let differ = v["differ"].as_array().cloned().unwrap_or_default();
        self.stats.anti_entropy_rounds.fetch_add(1, Relaxed);
        if differ.is_empty() {
            return;
        }
        let l = self.layout();
        let parts: Vec<usize> = differ
            .iter()
            .filter_map(|d| d["partition"].as_u64().map(|p| p as usize))
            .filter(|&p| p < PARTITIONS)
            .collect();
        let leaves = self.owners_leaves(&l, &parts).await;
        // (source address, target address) -> (partitions, leaf masks)
        let mut jobs: HashMap<(String, String), (Vec<usize>, Vec<u64>)> = HashMap::new();
        for &p in &parts {
            let owners: Vec<&Node> = l.assignment[p]
                .iter()
                .map(|&i| l.node(i))
                .filter(|n| self.peer_up(&n.addr))
                .collect();
            for from in &owners {
                for to in owners.iter().filter(|t| t.name != from.name) {
                    let leaves_of = |n: &Node| leaves.get(&n.name).and_then(|m| m.get(&p));
                    let mask = differing_leaves(leaves_of(from), leaves_of(to));
                    if mask != 0 {
                        let j = jobs
                            .entry((from.addr.clone(), to.addr.clone()))
                            .or_default();
                        j.0.push(p);
                        j.1.push(mask);
                    }
                }
            }
        }
        tracing::warn!(
            partitions = differ.len(),
            "copies differ; their owners exchange them"
        );
        self.stats
            .anti_entropy_repairs
            .fetch_add(differ.len() as u64, Relaxed);
        for ((from, to), (parts, masks)) in jobs {
            let r = if from == self.addr {
                replicate::push_partitions(self, &to, &parts, Some(&masks)).await
            } else {
                let req = json!({"method": "push_partitions", "to": to, "partitions": parts, "leaves": masks});
                self.call(&from, req).await.and_then(|r| {
                    r["records"]
                        .as_u64()
                        .map(|n| n as usize)
                        .ok_or_else(|| r["error"].as_str().unwrap_or("refused").to_string())
                })
            };
            match r {
                Ok(n) => {
                    self.stats.anti_entropy_records.fetch_add(n as u64, Relaxed);
                }
                Err(e) => {
                    tracing::warn!(from = %from, to = %to, error = %e, "anti-entropy repair failed")
                }
            }
        }
    }

    /// Whether this node leads partition `p` now.
    pub fn leads(&self, p: usize) -> bool {
        matches!(self.route_partition(&self.layout(), p), Route::Local)
    }

    /// Whether a takeover sync runs (see [`Cluster::begin_takeover`]).
    pub fn in_takeover(&self) -> bool {
        self.takeover.load(SeqCst)
    }

    /// Wait until no takeover sync and no catch-up runs (bounded by the request timeout).
    pub async fn wait_takeover(&self) {
        self.wait_takeover_for(self.request_timeout()).await
    }

    /// [`Cluster::wait_takeover`], but no longer than until `deadline` (this node's clock,
    /// unix ms): a request's own deadline.
    pub async fn wait_takeover_until(&self, deadline: u64) {
        let left = deadline.saturating_sub(self.store.now_ms());
        self.wait_takeover_for(Duration::from_millis(left).min(self.request_timeout()))
            .await
    }

    async fn wait_takeover_for(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        let busy = || self.in_takeover() || self.catching_up();
        while busy() && tokio::time::Instant::now() < deadline {
            let n = self.takeover_done.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if !busy() {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), n).await;
        }
    }

    /// A peer failed (or another node routes its partitions here): before this node leads
    /// them, it collects what the other live owners hold, including the copies they hold
    /// back for the failed peer's stream (see [`replicate`]). A write acknowledged by the
    /// failed primary and one other owner is then here before anything reads or modifies
    /// the key. Meanwhile requests this node would run wait (`Deferred::Later`, and
    /// memcached connections before their next batch); replication and control traffic
    /// flows on.
    pub fn begin_takeover(self: &Arc<Self>, why: &str) {
        self.begin_takeover_also(why, Vec::new());
    }

    /// [`Cluster::begin_takeover`], asking also the nodes at `also` (ones a layout change
    /// just dropped: a removed node may still be sending writes it led). A takeover that
    /// already runs goes round once more, under the newest layout.
    pub fn begin_takeover_also(self: &Arc<Self>, why: &str, also: Vec<String>) {
        if self.gateway() {
            return;
        }
        self.takeover_also.lock().expect("lock").extend(also);
        if self.takeover.swap(true, SeqCst) {
            self.takeover_again.store(true, SeqCst);
            return;
        }
        tracing::info!(
            reason = why,
            "taking over: collecting what the other owners hold first"
        );
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                me.takeover_round().await;
                if me.takeover_again.swap(false, SeqCst) {
                    continue;
                }
                me.takeover.store(false, SeqCst);
                // Asked again between the check and the store: go round once more.
                if me.takeover_again.swap(false, SeqCst) && !me.takeover.swap(true, SeqCst) {
                    continue;
                }
                break;
            }
            me.takeover_done.notify_waiters();
            tracing::info!("takeover sync done");
        });
    }

    /// One collection of a takeover: every live node of the layout (and the dropped ones
    /// asked for) delivers what it holds for this node, under this node's layout version.
    async fn takeover_round(self: &Arc<Self>) {
        let l = self.layout();
        let version = l.version;
        let mut addrs: Vec<String> = l.nodes.iter().map(|n| n.addr.clone()).collect();
        addrs.extend(std::mem::take(
            &mut *self.takeover_also.lock().expect("lock"),
        ));
        addrs.sort();
        addrs.dedup();
        let mut set = tokio::task::JoinSet::new();
        for addr in addrs.into_iter().filter(|a| *a != self.addr) {
            if !self.peer_up(&addr) {
                continue;
            }
            let me = self.clone();
            set.spawn(async move {
                let req = json!({"method": "flush_to", "addr": me.addr, "force": true,
                                 "version": version});
                (addr.clone(), me.call(&addr, req).await)
            });
        }
        let mut heard: Vec<(String, Vec<String>)> = Vec::new();
        while let Some(r) = set.join_next().await {
            if let Ok((addr, Ok(r))) = r {
                if r["caught_up"] != json!(true) {
                    tracing::warn!(peer = %addr, "a peer did not deliver everything in time");
                }
                let list = r["heard"].as_array().map_or_else(Vec::new, |a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                });
                heard.push((addr, list));
            }
        }
        self.keep_majority_peers(&l, &heard);
    }

    /// The peers this node heard from itself within two heartbeat intervals (flush and
    /// heartbeat replies carry them: see [`Cluster::keep_majority_peers`] and
    /// [`Cluster::vouched_by_majority`]). Not a peer kept up only on the others' word (it
    /// is relayed): two nodes that each vouched for a dead peer on the other's word would
    /// keep it up for ever.
    fn heard_recently(&self) -> Vec<String> {
        let fresh = Duration::from_millis(2 * self.cfg.heartbeat_ms);
        self.peers
            .lock()
            .expect("lock")
            .values()
            .filter(|p| p.up() && p.heard_within(fresh) && !p.is_relayed())
            .map(|p| p.addr.clone())
            .collect()
    }

    /// After a takeover's collection: a voter this node takes for down that, with the voters
    /// that heard from it lately (`heard`: each answering node's list), makes a majority
    /// still leads its partitions (a node leads only while it reaches a majority:
    /// [`Cluster::majority_reachable`]), so only this node's link to it failed (a connection
    /// that broke). It counts as up again and requests for its partitions go to it, instead
    /// of this node leading them beside it: the simulation lost an increment that way (seed
    /// 583: after a cut healed, the returned node's heartbeats to the counter's primary hung
    /// on a broken connection; it led the counter's partition while the primary, reached by
    /// everyone else, still did, and both returned the same value). If it is really gone, its
    /// other peers stop hearing from it within two heartbeat intervals; a peer that refused a
    /// connection (its port is closed) is not kept. A voter whose flush answer is late still
    /// counts by its last heartbeat reply to this node, if that is recent: a slow flush
    /// (a loaded host) must not make this node lead beside a live primary.
    fn keep_majority_peers(&self, l: &Layout, flushed: &[(String, Vec<String>)]) {
        let voters = paxos::voters(l);
        for n in &l.nodes {
            if n.addr == self.addr || !voters.contains(&n.name) || self.peer_up(&n.addr) {
                continue;
            }
            let vouching = self.vouchers(l, &voters, &n.addr, flushed);
            let p = self.peer(&n.addr);
            // A refused connection says its process is gone, not its link.
            if self.majority_with_me(&voters, vouching) && !p.refused.load(SeqCst) {
                // Taken as an answer: the failure timeout starts again. This node's own link
                // to it failed, so its requests go through the nodes that hear from it.
                p.relayed.store(true, SeqCst);
                if !p.answered() {
                    tracing::warn!(
                        peer = %n.addr,
                        vouching,
                        "peer is down from here only (a majority hears from it): routing to it through them"
                    );
                }
            }
        }
    }

    /// How many voters other than this node and the one at `addr` hear from it: by their
    /// answer to a takeover's flush (`flushed`: each answering node's list), else (no
    /// answer, or a late one) by their recent heartbeat reply to this node
    /// ([`Peer::recent_heard`]).
    fn vouchers(
        &self,
        l: &Layout,
        voters: &[String],
        addr: &str,
        flushed: &[(String, Vec<String>)],
    ) -> usize {
        let fresh = Duration::from_millis(self.cfg.failure_timeout_ms + 2 * self.cfg.heartbeat_ms);
        l.nodes
            .iter()
            .filter(|n| voters.contains(&n.name) && n.addr != self.addr && n.addr != addr)
            .filter(|n| match flushed.iter().find(|(from, _)| *from == n.addr) {
                Some((_, list)) => list.iter().any(|a| a == addr),
                None => self
                    .known_peer(&n.addr)
                    .and_then(|q| q.recent_heard(fresh))
                    .is_some_and(|list| list.iter().any(|a| a == addr)),
            })
            .count()
    }

    /// Whether `others` voters and this node (if it votes: a gateway or a joining node
    /// does not) make a majority.
    fn majority_with_me(&self, voters: &[String], others: usize) -> bool {
        usize::from(voters.contains(&self.me)) + others > voters.len() / 2
    }

    /// Whether `p`, which this node cannot reach itself, is heard from by voters that make a
    /// majority with this node, by their recent heartbeat replies to this node (see
    /// [`Cluster::vouchers`]). A peer that refused a connection (its process is gone) is
    /// not vouched for.
    fn vouched_by_majority(&self, l: &Layout, p: &Peer) -> bool {
        if p.refused.load(SeqCst) {
            return false;
        }
        let voters = paxos::voters(l);
        self.majority_with_me(&voters, self.vouchers(l, &voters, &p.addr, &[]))
    }

    /// Whether this node reaches a majority of the voting nodes (itself included). A node
    /// that does not (a network partition cut it off) leads nothing: the majority side may be
    /// taking writes for its partitions, and serving its own copy would lose them.
    pub fn majority_reachable(&self, l: &Layout) -> bool {
        let voters = paxos::voters(l);
        if !voters.contains(&self.me) {
            return true;
        }
        let reachable = l
            .nodes
            .iter()
            .filter(|n| voters.contains(&n.name))
            .filter(|n| n.name == self.me || self.peer_up(&n.addr))
            .count();
        reachable > voters.len() / 2
    }

    /// The heartbeat loop is alive (see [`Cluster::check_pause`]).
    fn tick(&self) {
        self.last_tick
            .store(self.started.elapsed().as_millis() as u64, Relaxed);
    }

    /// Ask every other node of the layout to finish streaming to this node what it holds for
    /// it; then lead again. Nodes that do not answer are skipped (they are down: what they
    /// hold arrives when they return).
    async fn catch_up(self: &Arc<Self>) {
        let l = self.layout();
        if !l.nodes.iter().any(|n| n.name == self.me) {
            // Not joined yet (a memory-mode node learns the layout from its peers): what
            // to ask for depends on the partitions it holds there.
            return;
        }
        if !self.majority_reachable(&l) {
            // Cut off: whatever the majority wrote meanwhile is not here yet; stay out.
            return;
        }
        self.flushing.store(true, SeqCst);
        let mut set = tokio::task::JoinSet::new();
        // After a start, a node that holds partitions needs what it may have lost: everything
        // of them newer than what it recovered (all of it for a memory-mode node), not only
        // what the others' streams think it lacks. (A node being added gets transfers.)
        let resync_since = (self.fresh_start.load(SeqCst) && self.holds_data_in(&l))
            .then_some(self.resync_from)
            .flatten();
        for n in l.nodes.iter().filter(|n| n.addr != self.addr) {
            let me = self.clone();
            let addr = n.addr.clone();
            // A peer that already delivered the resync in an earlier round is not asked again.
            let since =
                resync_since.filter(|_| !self.resynced.lock().expect("lock").contains(&addr));
            set.spawn(async move {
                let req = json!({"method": "flush_to", "addr": me.addr, "resync_since": since});
                (addr.clone(), me.call(&addr, req).await)
            });
        }
        let mut answered = std::collections::HashSet::new();
        while let Some(r) = set.join_next().await {
            match r {
                Ok((addr, Ok(r))) if r["caught_up"] == json!(true) => {
                    if resync_since.is_some() {
                        self.resynced.lock().expect("lock").insert(addr.clone());
                    }
                    answered.insert(addr);
                }
                Ok((addr, Ok(_))) => {
                    tracing::debug!(peer = %addr, "peer did not deliver everything in time");
                }
                Ok((addr, Err(e))) => {
                    tracing::debug!(peer = %addr, error = %e, "no flush from peer");
                }
                Err(_) => {}
            }
        }
        let voters = paxos::voters(&l);
        let flushed = l
            .nodes
            .iter()
            .filter(|n| voters.contains(&n.name))
            .filter(|n| n.name == self.me || answered.contains(&n.addr))
            .count();
        if voters.contains(&self.me) && flushed < voters.len() / 2 + 1 {
            self.flushing.store(false, SeqCst);
            tracing::info!(
                flushed,
                voters = voters.len(),
                "caught up with too few nodes; trying again"
            );
            return;
        }
        self.catching_up.store(false, SeqCst);
        self.flushing.store(false, SeqCst);
        // What a start may have lost is fetched once the node holds data in the layout: a
        // memory-mode node whose join list names only itself starts on a layout of its own
        // (version 1, holding nothing) and learns the real one from its peers later.
        // A node being added gets transfers instead, and needs no resync afterwards.
        let pending = self.fresh_start.load(SeqCst)
            && !self.holds_data_in(&l)
            && !self.being_added(&l)
            && self.resync_from.is_some();
        self.fresh_start.store(pending, SeqCst);
        self.takeover_done.notify_waiters();
        tracing::info!("caught up; leading again");
    }

    /// Wait until the changes up to feed position `seq` reached the write quorum (or, with
    /// `all`, every owner) of every partition in `partitions`. `Err` says which fell short.
    pub async fn wait_quorum(
        &self,
        seq: u64,
        partitions: &[usize],
        all: bool,
    ) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + self.request_timeout();
        if self.quorum_wait.fetch_max(seq, SeqCst) < seq {
            // A stream that gathers changes must send these now.
            self.written.notify_waiters();
        }
        loop {
            let notified = self.acked.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let Some((p, acks, w)) = self.quorum_short(seq, partitions, all) else {
                return Ok(());
            };
            if self.stopping() || tokio::time::Instant::now() >= deadline {
                self.stats.quorum_failures.fetch_add(1, Relaxed);
                return Err(format!(
                    "write quorum not reached: partition {p} has {acks} of {w} copies"
                ));
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    /// Whether the changes up to `seq` reached the write quorum (every owner with `all`) of
    /// every one of `partitions` now.
    pub fn quorum_met(&self, seq: u64, partitions: &[usize], all: bool) -> bool {
        self.quorum_short(seq, partitions, all).is_none()
    }

    /// The first of `partitions` whose owners hold fewer than the quorum of the changes up
    /// to `seq`: (partition, copies, copies needed).
    fn quorum_short(
        &self,
        seq: u64,
        partitions: &[usize],
        all: bool,
    ) -> Option<(usize, usize, usize)> {
        let l = self.layout();
        let w = l.effective_write_quorum();
        // Whether each node holds `seq`, looked up once per node rather than per partition.
        let mut holds: Vec<Option<bool>> = vec![None; l.nodes.len()];
        for &p in partitions {
            let set = l.owners_of_partition(p).write_set();
            let mut acks = 0usize;
            for &i in &set {
                let h = *holds[i as usize].get_or_insert_with(|| {
                    let n = l.node(i);
                    n.addr == self.addr || self.peer(&n.addr).acked.load(SeqCst) >= seq
                });
                if h {
                    acks += 1;
                }
            }
            let need = if all {
                set.len().max(1)
            } else {
                w.min(set.len().max(1))
            };
            if acks < need {
                return Some((p, acks, need));
            }
        }
        None
    }

    /// Run a cluster control request (the JSON of an `Op::Cluster` frame).
    pub async fn control(self: &Arc<Self>, req: &Json) -> Json {
        let method = req.get("method").and_then(Json::as_str).unwrap_or("");
        match method {
            "hello" => json!({"ok": true, "node": self.me, "cluster": self.cfg.cluster,
                              "version": self.layout().version}),
            "ping" => {
                if let (Some(v), Some(addr)) = (
                    req.get("version").and_then(Json::as_u64),
                    req.get("addr").and_then(Json::as_str),
                ) && v > self.layout().version
                {
                    let me = self.clone();
                    let addr = addr.to_string();
                    tokio::spawn(async move { me.fetch_layout(&addr).await });
                }
                self.ping_reply()
            }
            "layout" => {
                json!({"ok": true, "layout": serde_json::to_value(&*self.layout()).expect("layout")})
            }
            "prepare" | "accept" | "commit" => self.paxos_local(req).await,
            "change" => match req
                .get("change")
                .map(|c| serde_json::from_value::<Change>(c.clone()))
            {
                // A node that has not started or joined a cluster yet must not start one
                // around a joiner (a seed asked before it bootstrapped would leave itself out).
                Some(Ok(_)) if self.layout().nodes.is_empty() => {
                    err("this node has not joined a cluster yet; retry")
                }
                Some(Ok(c)) => match self.propose(c).await {
                    Ok(l) => json!({"ok": true, "version": l.version,
                                    "layout": serde_json::to_value(&*l).expect("layout")}),
                    Err(e) => err(e),
                },
                Some(Err(e)) => err(format!("bad change: {e}")),
                None => err("change needs a change"),
            },
            "flush_to" => {
                // Answer once the stream to that node has delivered every change made here
                // so far (bounded by the request timeout).
                let Some(addr) = req["addr"].as_str() else {
                    return err("flush_to needs addr");
                };
                // A node taking over under a newer layout: stop leading what it leads
                // there before taking the position it needs (a write run here under the
                // old layout after that would be missed).
                if req["version"]
                    .as_u64()
                    .is_some_and(|v| v > self.layout().version)
                    && self.fetch_layout(addr).await == Ok(true)
                {
                    // Let what runs here under the old layout finish first.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let p = self.peer(addr);
                if let Some(since) = req["resync_since"].as_u64() {
                    // It restarted: resend what it may have lost, and count nothing as
                    // delivered until that is done.
                    p.resync_since.store(since, SeqCst);
                    p.resync_all.store(true, SeqCst);
                }
                // It asked, so it is up, whatever this node's heartbeats to it say yet (after
                // a partition they can fail for a request timeout more, on connections that
                // broke): taking it for down, this node would go on leading its partitions
                // while it leads them again itself, and two primaries lose increments (the
                // simulation found this with a gateway routing to the returned node).
                let was_down = !p.answered();
                if was_down {
                    tracing::info!(peer = %p.addr, "peer is up (it asked for a flush)");
                }
                if req["force"] == json!(true) {
                    p.force_release.store(true, SeqCst);
                } else if p.catching_up.swap(false, SeqCst) || was_down {
                    // It is catching up and will lead its partitions next: stop leading them
                    // here now (requests for them go to it, which holds them until it is
                    // done), and let what runs here already finish before the position
                    // that must reach it is taken.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let last = self.store.last_seq();
                // Answered before the asker's own timeout (the request timeout) gives up on
                // it: a late answer is lost with the list of whom this node heard from,
                // which the asker's takeover needs (see `keep_majority_peers`).
                let deadline = tokio::time::Instant::now() + self.request_timeout() * 3 / 4;
                let done = || {
                    p.acked.load(SeqCst) >= last
                        && p.held_from.load(SeqCst) > last
                        && !p.resync_all.load(SeqCst)
                };
                while !done() && tokio::time::Instant::now() < deadline {
                    let n = self.acked.notified();
                    let _ = tokio::time::timeout(Duration::from_millis(50), n).await;
                }
                json!({"ok": true, "caught_up": done(), "heard": self.heard_recently()})
            }
            "status" => self.status().await,
            "push_partitions" => {
                // Anti-entropy: send this node's copy of these partitions to `to`.
                let (Some(to), Some(parts)) = (req["to"].as_str(), req["partitions"].as_array())
                else {
                    return err("push_partitions needs to and partitions");
                };
                let parts: Vec<usize> = parts
                    .iter()
                    .filter_map(|p| p.as_u64().map(|p| p as usize))
                    .collect();
                if parts.iter().any(|&p| p >= PARTITIONS) {
                    return err(format!("partitions are below {PARTITIONS}"));
                }
                // Leaf masks, one per partition (without them: whole partitions).
                let masks: Option<Vec<u64>> = req["leaves"]
                    .as_array()
                    .map(|a| a.iter().map(|m| m.as_u64().unwrap_or(u64::MAX)).collect());
                if masks.as_ref().is_some_and(|m| m.len() != parts.len()) {
                    return err("push_partitions: one leaf mask per partition");
                }
                match replicate::push_partitions(self, to, &parts, masks.as_deref()).await {
                    Ok(n) => json!({"ok": true, "records": n}),
                    Err(e) => err(e),
                }
            }
            "verify" => match self.verify().await {
                Ok(j) => j,
                Err(e) => err(e),
            },
            "stats" => self.ping_reply(),
            "digests" => {
                let before = req["before"].as_u64().unwrap_or(u64::MAX);
                match req["partitions"].as_array() {
                    None => json!({"ok": true, "digests": self.digests(before).await}),
                    Some(a) => {
                        let parts: Vec<usize> = a
                            .iter()
                            .filter_map(|p| p.as_u64().map(|p| p as usize))
                            .collect();
                        if parts.len() != a.len() || parts.iter().any(|&p| p >= PARTITIONS) {
                            return err(format!("partitions are numbers below {PARTITIONS}"));
                        }
                        json!({"ok": true, "leaves": self.leaf_digests(before, parts).await})
                    }
                }
            }
            "" => err("missing method"),
            other => err(format!("unknown method {other:?}")),
        }
    }

    /// The acceptor side of [`paxos`]: `prepare`, `accept` and `commit` requests.
    async fn paxos_local(self: &Arc<Self>, req: &Json) -> Json {
        match req.get("method").and_then(Json::as_str).unwrap_or("") {
            "prepare" => {
                let (Some(v), Some(b)) = (
                    req.get("version").and_then(Json::as_u64),
                    req.get("ballot")
                        .and_then(|b| serde_json::from_value::<Ballot>(b.clone()).ok()),
                ) else {
                    return err("prepare needs version and ballot");
                };
                let mut a = self.acceptor.lock().await;
                let p = a.prepare(self.layout().version, v, &b);
                if let Err(e) = self.state.save_acceptor(&a) {
                    return err(format!("cannot persist the promise: {e}"));
                }
                json!({"ok": true, "promise": serde_json::to_value(&p).expect("promise")})
            }
            "accept" => {
                let (Some(v), Some(b), Some(value)) = (
                    req.get("version").and_then(Json::as_u64),
                    req.get("ballot")
                        .and_then(|b| serde_json::from_value::<Ballot>(b.clone()).ok()),
                    req.get("layout")
                        .and_then(|l| serde_json::from_value::<Layout>(l.clone()).ok()),
                ) else {
                    return err("accept needs version, ballot and layout");
                };
                if value.validate().is_err() || value.cluster != self.cfg.cluster {
                    return err("refusing an invalid layout");
                }
                let mut a = self.acceptor.lock().await;
                let ok = a.accept(self.layout().version, v, &b, &value);
                if let Err(e) = self.state.save_acceptor(&a) {
                    return err(format!("cannot persist the acceptance: {e}"));
                }
                json!({"ok": true, "accepted": ok})
            }
            "commit" => match req
                .get("layout")
                .map(|l| serde_json::from_value::<Layout>(l.clone()))
            {
                Some(Ok(l)) => match self.install(l) {
                    Ok(_) => json!({"ok": true}),
                    Err(e) => err(e),
                },
                _ => err("commit needs a layout"),
            },
            _ => err("not a consensus request"),
        }
    }

    /// This node's own status, as peers and `ctl` see it.
    pub fn ping_reply(&self) -> Json {
        let st = self.store.stats();
        let l = self.layout();
        json!({
            "ok": true,
            "node": self.me,
            "addr": self.addr,
            "memcached": self.memcached,
            "gateway": self.gateway(),
            // Once it asks the others to flush, they hand its partitions back (requests wait
            // here until it is done), so it no longer asks to be routed around.
            "catching_up": self.catching_up() && !self.flushing.load(SeqCst),
            "version": l.version,
            // Whom it hears from: a peer that cannot reach one of them itself keeps it up
            // while a majority does (see `Cluster::vouched_by_majority`).
            "heard": self.heard_recently(),
            // The store's clock, so peers can put forwarded requests' deadlines on it.
            "now_ms": self.store.now_ms(),
            "uptime_secs": self.started.elapsed().as_secs(),
            "items": st.records,
            "transfers": {"total": self.transfer_total.load(SeqCst),
                          "done": self.transfer_done.load(SeqCst),
                          "finished_version": self.transfers_finished.load(SeqCst)},
            "forwarded": self.stats.forwarded.load(Relaxed),
            "direct_sets": self.stats.direct_sent.load(Relaxed),
            "direct_fallbacks": self.stats.direct_fallbacks.load(Relaxed),
            "direct_puts": self.stats.direct_puts.load(Relaxed),
            "expired": self.stats.expired.load(Relaxed),
            "quorum_failures": self.stats.quorum_failures.load(Relaxed),
            "replicated": self.stats.replicated.load(Relaxed),
            "replicated_bytes": self.stats.replicated_bytes.load(Relaxed),
            "imported": self.stats.imported.load(Relaxed),
            "received": self.stats.received.load(Relaxed),
            "received_bytes": self.stats.received_bytes.load(Relaxed),
            "anti_entropy_rounds": self.stats.anti_entropy_rounds.load(Relaxed),
            "anti_entropy_repairs": self.stats.anti_entropy_repairs.load(Relaxed),
            "anti_entropy_records": self.stats.anti_entropy_records.load(Relaxed),
            "read_checks": self.stats.read_checks.load(Relaxed),
            "read_repairs": self.stats.read_repairs.load(Relaxed),
            "incarnation": self.incarnation,
            "streams": self.stream_positions(),
        })
    }

    /// Per peer: where this process's stream to it started, and up to where its stream has
    /// handled the feed (sent what the peer should get from here, or holds it back with an
    /// origin that answers for it: see [`replicate`]).
    fn stream_positions(&self) -> Json {
        let peers = self.peers.lock().expect("lock");
        let m: serde_json::Map<String, Json> = peers
            .values()
            .map(|p| (p.addr.clone(), json!([p.since, p.acked.load(SeqCst)])))
            .collect();
        Json::Object(m)
    }

    /// Prometheus text for the cluster: replication lag and handoff per peer, quorum
    /// failures, forwarding, movement progress, layout version.
    pub fn render_metrics(&self) -> String {
        use std::fmt::Write as _;
        let mut o = String::new();
        let l = self.layout();
        let gauges: [(&str, &str, &str, u64); 20] = [
            (
                "k2hdkc_cluster_layout_version",
                "gauge",
                "Committed layout version.",
                l.version,
            ),
            (
                "k2hdkc_cluster_forwarded_total",
                "counter",
                "Requests forwarded to their primary.",
                self.stats.forwarded.load(Relaxed),
            ),
            (
                "k2hdkc_cluster_forward_errors_total",
                "counter",
                "Forwarded requests that failed.",
                self.stats.forward_errors.load(Relaxed),
            ),
            (
                "k2hdkc_cluster_direct_sets_total",
                "counter",
                "Plain sets a gateway wrote to the owners itself.",
                self.stats.direct_sent.load(Relaxed),
            ),
            (
                "k2hdkc_cluster_direct_fallbacks_total",
                "counter",
                "Plain sets a gateway sent through the primary after writing to the owners fell short.",
                self.stats.direct_fallbacks.load(Relaxed),
            ),
            (
                "k2hdkc_cluster_direct_puts_total",
                "counter",
                "Gateway sets written here.",
                self.stats.direct_puts.load(Relaxed),
            ),
            (
                "k2hdkc_cluster_expired_requests_total",
                "counter",
                "Requests not run because their sender's deadline passed first.",
                self.stats.expired.load(Relaxed),
            ),
            (
                "k2hdkc_cluster_quorum_failures_total",
                "counter",
                "Writes that missed their write quorum.",
                self.stats.quorum_failures.load(Relaxed),
            ),
            (
                "k2hdkc_cluster_replicated_changes_total",
                "counter",
                "Changes sent to replicas.",
                self.stats.replicated.load(Relaxed),
            ),
            (
                "k2hdkc_cluster_replicated_bytes_total",
                "counter",
                "Bytes of replication batches sent.",
                self.stats.replicated_bytes.load(Relaxed),
            ),
            (
                "k2hdkc_cluster_imported_changes_total",
                "counter",
                "Changes received from peers and applied.",
                self.stats.imported.load(Relaxed),
            ),
            (
                "k2hdkc_cluster_received_bytes_total",
                "counter",
                "Bytes of replication batches received from peers.",
                self.stats.received_bytes.load(Relaxed),
            ),
            (
                "k2hdkc_cluster_anti_entropy_rounds_total",
                "counter",
                "Anti-entropy rounds this node ran.",
                self.stats.anti_entropy_rounds.load(Relaxed),
            ),
            (
                "k2hdkc_cluster_anti_entropy_repairs_total",
                "counter",
                "Partitions whose copies differed and were resent.",
                self.stats.anti_entropy_repairs.load(Relaxed),
            ),
            (
                "k2hdkc_cluster_anti_entropy_records_total",
                "counter",
                "Records anti-entropy rounds led by this node had sent.",
                self.stats.anti_entropy_records.load(Relaxed),
            ),
            (
                "k2hdkc_cluster_read_checks_total",
                "counter",
                "Reads compared with other owners' versions (read quorum).",
                self.stats.read_checks.load(Relaxed),
            ),
            (
                "k2hdkc_cluster_read_repairs_total",
                "counter",
                "Records repaired by quorum reads.",
                self.stats.read_repairs.load(Relaxed),
            ),
            (
                "k2hdkc_cluster_moving_partitions",
                "gauge",
                "Partitions whose data is moving.",
                l.moving_partitions().len() as u64,
            ),
            (
                "k2hdkc_cluster_transfers_total",
                "gauge",
                "Partition copies this node sends in the current movement.",
                self.transfer_total.load(SeqCst),
            ),
            (
                "k2hdkc_cluster_transfers_done",
                "gauge",
                "Partition copies sent so far in the current movement.",
                self.transfer_done.load(SeqCst),
            ),
        ];
        for (name, kind, help, v) in gauges {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        }
        let last = self.store.last_seq();
        let (mut lag, mut up) = (String::new(), String::new());
        for n in l.nodes.iter().filter(|n| n.addr != self.addr) {
            let p = self.peer(&n.addr);
            let behind = last.saturating_sub(p.acked.load(SeqCst));
            let _ = writeln!(
                lag,
                "k2hdkc_cluster_replication_lag_changes{{peer=\"{}\"}} {behind}",
                n.name
            );
            let _ = writeln!(
                up,
                "k2hdkc_cluster_peer_up{{peer=\"{}\"}} {}",
                n.name,
                u8::from(p.up())
            );
        }
        let _ = write!(
            o,
            "# HELP k2hdkc_cluster_replication_lag_changes Changes of this node a peer has not \
             acknowledged (held for it while it is down: hinted handoff).\n\
             # TYPE k2hdkc_cluster_replication_lag_changes gauge\n{lag}\
             # HELP k2hdkc_cluster_peer_up Whether heartbeats reach the peer.\n\
             # TYPE k2hdkc_cluster_peer_up gauge\n{up}"
        );
        o
    }

    /// The whole cluster as this node sees it (`ctl status`).
    pub async fn status(self: &Arc<Self>) -> Json {
        let l = self.layout();
        let mut nodes = Vec::new();
        for (i, n) in l.nodes.iter().enumerate() {
            let (up, st) = if n.addr == self.addr {
                (true, self.ping_reply())
            } else {
                let p = self.peer(&n.addr);
                (p.up(), p.status.lock().expect("lock").clone())
            };
            let i = i as NodeIdx;
            let partitions = l.assignment.iter().filter(|o| o.contains(&i)).count();
            let primaries = l
                .assignment
                .iter()
                .filter(|o| o.first() == Some(&i))
                .count();
            let operate = match (n.action, l.moving()) {
                (Action::None, _) => "Nothing",
                (_, true) => {
                    let fin = st["transfers"]["finished_version"].as_u64().unwrap_or(0);
                    if fin >= l.version { "Done" } else { "Doing" }
                }
                (_, false) => "Pending",
            };
            nodes.push(json!({
                "name": n.name, "addr": n.addr, "memcached": n.memcached, "zone": n.zone,
                "capacity": n.capacity,
                "live": if up { "UP" } else { "DOWN" },
                "ring": match n.ring { Ring::ServiceIn => "SERVICE IN", Ring::ServiceOut => "SERVICE OUT" },
                "action": match n.action { Action::None => "n/a", Action::Add => "ADD", Action::Delete => "DELETE" },
                "operate": operate,
                "partitions": partitions, "primaries": primaries,
                "items": st.get("items").cloned().unwrap_or(Json::Null),
                "catching_up": st.get("catching_up").cloned().unwrap_or(Json::Null),
                "transfers": st.get("transfers").cloned().unwrap_or(Json::Null),
            }));
        }
        json!({
            "ok": true,
            "cluster": l.cluster,
            "version": l.version,
            "replicas": l.replicas, "effective_replicas": l.effective_replicas(),
            "write_quorum": l.write_quorum, "read_quorum": l.read_quorum,
            "moving": l.moving(), "moving_partitions": l.moving_partitions().len(),
            "partitions": PARTITIONS,
            "nodes": nodes,
            "answered_by": self.me,
        })
    }

    /// Whether this node holds data in `l` that a restart may have lost (a node being added
    /// gets transfers instead).
    fn holds_data_in(&self, l: &Layout) -> bool {
        l.nodes
            .iter()
            .any(|n| n.name == self.me && n.holds_data() && n.action != Action::Add)
    }

    /// Whether this node is in `l` as a node being added (receiving transfers).
    fn being_added(&self, l: &Layout) -> bool {
        l.nodes
            .iter()
            .any(|n| n.name == self.me && n.action == Action::Add)
    }

    /// Install a newer layout (from a commit, a peer, or this node's own proposal).
    pub fn install(self: &Arc<Self>, l: Layout) -> Result<bool, String> {
        l.validate().map_err(|e| e.to_string())?;
        if l.cluster != self.cfg.cluster {
            return Err(format!(
                "layout of cluster {:?}, this is {:?}",
                l.cluster, self.cfg.cluster
            ));
        }
        let mut cur = self.layout.write().expect("lock");
        if l.version <= cur.version {
            return Ok(false);
        }
        self.state
            .save_layout(&l)
            .map_err(|e| format!("cannot persist the layout: {e}"))?;
        tracing::info!(
            node = %self.me,
            version = l.version,
            nodes = l.nodes.len(),
            moving = l.moving(),
            "layout installed"
        );
        let before = cur.clone();
        *cur = Arc::new(l);
        let now = cur.clone();
        drop(cur);
        if self.being_added(&before) || self.being_added(&now) {
            // Its data arrives by transfer: when the add completes it holds everything, and
            // a resync would fetch it all a second time.
            self.fresh_start.store(false, SeqCst);
        }
        if self.fresh_start.load(SeqCst)
            && !self.gateway()
            && !self.holds_data_in(&before)
            && self.holds_data_in(&now)
        {
            // A fresh start that caught up while holding nothing (see `catch_up`) now holds
            // data it never fetched: lead nothing until it has.
            tracing::info!("this node holds data in the new layout: catching up first");
            self.catching_up.store(true, SeqCst);
        }
        if !self.gateway() && self.handed_partitions(&before, &now) {
            // A movement completing (say) makes this node lead partitions another node led.
            // That node's last writes may still be on their way here (streams linger, and
            // their quorum did not need this node): an increment run here before they
            // arrive would lose one (the simulation found it, seed 76). Collect them first.
            let dropped: Vec<String> = before
                .nodes
                .iter()
                .filter(|b| !now.nodes.iter().any(|n| n.addr == b.addr))
                .map(|b| b.addr.clone())
                .collect();
            self.begin_takeover_also(
                "a layout change hands this node partitions to lead",
                dropped,
            );
        }
        self.acked.notify_waiters();
        self.spawn_streams();
        Ok(true)
    }

    /// Whether `now` makes this node lead a partition another node led in `before` (the
    /// first of its serving owners: the previous ones while data moves).
    fn handed_partitions(&self, before: &Layout, now: &Layout) -> bool {
        fn leader(l: &Layout, p: usize) -> Option<&str> {
            let first = l.owners_of_partition(p).serving().first().copied();
            first.map(|i| l.node(i).name.as_str())
        }
        (0..PARTITIONS).any(|p| {
            leader(now, p) == Some(self.me.as_str())
                && leader(before, p).is_some_and(|n| n != self.me)
        })
    }

    /// Ask the node at `addr` for its layout and install it if newer.
    pub async fn fetch_layout(self: &Arc<Self>, addr: &str) -> Result<bool, String> {
        let r = self.call(addr, json!({"method": "layout"})).await?;
        let l: Layout = serde_json::from_value(r["layout"].clone()).map_err(|e| e.to_string())?;
        self.install(l)
    }

    /// Send a control request to a node.
    pub async fn call(&self, addr: &str, req: Json) -> Result<Json, String> {
        let peer = self.peer(addr);
        call_client(
            &peer.control,
            &req,
            self.token.as_deref(),
            self.request_timeout(),
        )
        .await
    }

    /// Whether a request carries this cluster's credential (always, without a secret).
    pub fn authorized(&self, pass: Option<&[u8]>) -> bool {
        match (&self.token, pass) {
            (None, _) => true,
            (Some(t), Some(p)) => t.len() == p.len() && openssl::memcmp::eq(t, p),
            (Some(_), None) => false,
        }
    }

    /// Agree on `change` applied to the newest layout, retrying on conflicts.
    pub async fn propose(self: &Arc<Self>, change: Change) -> Result<Arc<Layout>, String> {
        for attempt in 0..12u32 {
            let cur = self.layout();
            let next = cur.apply(&change).map_err(|e| e.to_string())?;
            let voters = paxos::voters(&cur);
            let addrs: Vec<String> = if voters.is_empty() {
                vec![self.addr.clone()]
            } else {
                voters
                    .iter()
                    .filter_map(|v| cur.nodes.iter().find(|n| &n.name == v))
                    .map(|n| n.addr.clone())
                    .collect()
            };
            let majority = addrs.len() / 2 + 1;
            let round = self.acceptor.lock().await.max_round + 1 + u64::from(attempt);
            let ballot = Ballot {
                round,
                node: self.me.clone(),
            };
            let v = next.version;
            // Phase 1.
            let prep = json!({"method": "prepare", "version": v, "ballot": ballot});
            let replies = self.ask_all(&addrs, prep).await;
            let mut promises: Vec<Promise> = Vec::new();
            let mut behind = None;
            for (addr, r) in &replies {
                let Ok(r) = r else { continue };
                let Ok(p) = serde_json::from_value::<Promise>(r["promise"].clone()) else {
                    continue;
                };
                if p.committed > cur.version {
                    behind = Some(addr.clone());
                }
                {
                    let mut a = self.acceptor.lock().await;
                    a.max_round = a.max_round.max(p.max_round);
                }
                if p.ok {
                    promises.push(p);
                }
            }
            if let Some(addr) = behind {
                let _ = self.fetch_layout(&addr).await;
                continue;
            }
            if promises.len() < majority {
                tokio::time::sleep(Duration::from_millis(20 + 30 * u64::from(attempt))).await;
                if attempt >= 6 && replies.iter().filter(|(_, r)| r.is_ok()).count() < majority {
                    return Err(format!(
                        "no majority of the {} voting nodes answers; the layout cannot change now",
                        addrs.len()
                    ));
                }
                continue;
            }
            let adopted = paxos::adopt(&promises);
            let (value, ours) = match adopted {
                Some(l) if l != next => (l, false),
                _ => (next, true),
            };
            // Phase 2.
            let acc = json!({"method": "accept", "version": v, "ballot": ballot,
                             "layout": serde_json::to_value(&value).expect("layout")});
            let replies = self.ask_all(&addrs, acc).await;
            let accepted = replies
                .iter()
                .filter(|(_, r)| r.as_ref().is_ok_and(|r| r["accepted"] == json!(true)))
                .count();
            if accepted < majority {
                tokio::time::sleep(Duration::from_millis(20 + 30 * u64::from(attempt))).await;
                continue;
            }
            // Decided: install here, then tell everyone (laggards also catch up by heartbeat).
            self.install(value.clone())?;
            let mut everyone: Vec<String> = value.nodes.iter().map(|n| n.addr.clone()).collect();
            everyone.extend(addrs);
            everyone.sort();
            everyone.dedup();
            everyone.retain(|a| *a != self.addr);
            let commit = json!({"method": "commit", "layout": serde_json::to_value(&value).expect("layout")});
            let _ = self.ask_all(&everyone, commit).await;
            if ours {
                return Ok(self.layout());
            }
            // Someone else's value won this version: try ours on the next one.
        }
        Err("the layout kept changing under this request; try again".into())
    }

    /// Send a request to several nodes at once (this node answers itself directly).
    async fn ask_all(
        self: &Arc<Self>,
        addrs: &[String],
        req: Json,
    ) -> Vec<(String, Result<Json, String>)> {
        let mut set = tokio::task::JoinSet::new();
        for a in addrs {
            let me = self.clone();
            let a = a.clone();
            let req = req.clone();
            set.spawn(async move {
                let r = if a == me.addr {
                    Ok(me.paxos_local(&req).await)
                } else {
                    me.call(&a, req).await
                };
                (a, r)
            });
        }
        let mut out = Vec::new();
        while let Some(r) = set.join_next().await {
            if let Ok(r) = r {
                out.push(r);
            }
        }
        out
    }

    fn this_node(&self) -> Node {
        let mut n = Node::joining(&self.me, &self.addr);
        n.memcached = self.memcached.clone();
        n.zone = self.cfg.zone.clone();
        n.capacity = self.cfg.capacity;
        n
    }

    /// Join through the configured addresses; a node that lists itself starts the cluster
    /// when nobody else answers. Retries until it succeeds or the node stops.
    pub async fn join(self: &Arc<Self>) {
        let seeds: Vec<String> = self.cfg.join.clone();
        let mut delay = Duration::from_millis(100);
        // A node that keeps nothing (memory or temporary mode) cannot tell its first start
        // from a restart: before it starts a cluster of its own, it listens a few heartbeats
        // long for the nodes of the cluster it may have been in. They ping every node of
        // their layout, down ones too, and a ping with a newer layout makes this node fetch
        // it; starting a new cluster at once would let nodes join that one instead (found by
        // the simulation: a restarted seed took in a joining node the real cluster never
        // heard of). A node with a state directory knows: it bootstraps only on its first
        // start.
        let bootstrap_after = tokio::time::Instant::now()
            + if self.state.0.is_none() {
                Duration::from_millis(3 * self.cfg.heartbeat_ms)
            } else {
                Duration::ZERO
            };
        let mut attempt = 0u64;
        while !self.stopping() {
            attempt += 1;
            let mut why = Vec::new();
            for s in &seeds {
                if *s == self.addr {
                    continue;
                }
                match self.fetch_layout(s).await {
                    Ok(_) => break,
                    Err(e) => why.push(format!("{s}: {e}")),
                }
            }
            if self.gateway() {
                if !self.layout().nodes.is_empty() {
                    return;
                }
                // Say why now and then (a refused host, a wrong secret, nothing listening).
                if attempt % 8 == 3 {
                    tracing::warn!(errors = %why.join("; "), "no cluster node answered yet; retrying");
                }
            } else {
                let l = self.layout();
                match l.nodes.iter().find(|n| n.name == self.me) {
                    Some(n) if n.addr == self.addr && n.memcached == self.memcached => return,
                    _ => {}
                }
                let change = Change::Join {
                    node: self.this_node(),
                };
                let alone = l.nodes.is_empty() || paxos::voters(&l).iter().all(|v| *v == self.me);
                let r = if alone && (seeds.contains(&self.addr) || !l.nodes.is_empty()) {
                    if l.nodes.is_empty() && tokio::time::Instant::now() < bootstrap_after {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    self.propose(change).await
                } else {
                    // Ask a node of the cluster to run the proposal.
                    let mut last = Err("no node to join through answered".to_string());
                    for s in seeds.iter().filter(|s| **s != self.addr) {
                        let req = json!({"method": "change", "change": serde_json::to_value(&change).expect("change")});
                        match self.call(s, req).await {
                            Ok(r) if r["ok"] == json!(true) => {
                                let _ = self.fetch_layout(s).await;
                                last = Ok(self.layout());
                                break;
                            }
                            Ok(r) => {
                                last = Err(r["error"].as_str().unwrap_or("refused").to_string())
                            }
                            Err(e) => last = Err(e),
                        }
                    }
                    last
                };
                match r {
                    Ok(l) => {
                        tracing::info!(version = l.version, node = %self.me, "joined the cluster");
                        return;
                    }
                    Err(e) if e.starts_with("nothing to change") => return,
                    Err(e) => tracing::warn!(error = %e, "joining failed; retrying"),
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// Start a replication stream to every peer of the layout that has none yet.
    fn spawn_streams(self: &Arc<Self>) {
        if self.gateway() {
            return;
        }
        let l = self.layout();
        for n in &l.nodes {
            if n.addr == self.addr {
                continue;
            }
            let p = self.peer(&n.addr);
            if !p.streaming.swap(true, SeqCst) {
                tokio::spawn(replicate::stream(self.clone(), p));
            }
        }
    }

    /// Heartbeats, layout catch-up, transfers and auto-complete, until the node stops.
    pub async fn run(self: Arc<Self>) {
        self.spawn_streams();
        let hb = Duration::from_millis(self.cfg.heartbeat_ms);
        let timeout = Duration::from_millis(self.cfg.failure_timeout_ms);
        let mut transfer: Option<(u64, tokio::task::JoinHandle<Result<usize, String>>)> = None;
        let mut catch: Option<tokio::task::JoinHandle<()>> = None;
        while !self.stopping() {
            self.check_pause();
            self.tick();
            let l = self.layout();
            if self.catching_up()
                && !self.gateway()
                && catch.as_ref().is_none_or(|h| h.is_finished())
            {
                let me = self.clone();
                catch = Some(tokio::spawn(async move { me.catch_up().await }));
            }
            if self.gateway() {
                self.catching_up.store(false, SeqCst);
            }
            // Heartbeats.
            let mut set = tokio::task::JoinSet::new();
            let targets: Vec<String> = l
                .nodes
                .iter()
                .map(|n| n.addr.clone())
                .filter(|a| *a != self.addr)
                .collect();
            for addr in targets {
                let me = self.clone();
                let req = json!({"method": "ping", "from": self.me, "addr": self.addr, "version": l.version});
                set.spawn(async move {
                    let p = me.peer(&addr);
                    let t0 = me.store.now_ms();
                    let r = tokio::time::timeout(
                        timeout,
                        call_client(&p.client, &req, me.token.as_deref(), timeout),
                    )
                    .await;
                    if let Ok(Ok(r)) = &r {
                        p.observe_clock(t0, me.store.now_ms(), r["now_ms"].as_u64().unwrap_or(0));
                    }
                    (p, r.unwrap_or_else(|_| Err("timeout".into())))
                });
            }
            while let Some(Ok((p, r))) = set.join_next().await {
                match r {
                    Ok(r) => {
                        let was_up = p.answered();
                        if !was_up {
                            tracing::info!(peer = %p.addr, "peer is up");
                        }
                        // This node's own request came back: its link to the peer works.
                        if p.relayed.swap(false, SeqCst) {
                            tracing::info!(peer = %p.addr, "the peer answers again; routing to it directly");
                        }
                        if r["version"].as_u64().unwrap_or(0) > l.version {
                            let me = self.clone();
                            let addr = p.addr.clone();
                            tokio::spawn(async move { me.fetch_layout(&addr).await });
                        }
                        let catching = r["catching_up"] == json!(true);
                        if catching && was_up && !p.catching_up.load(SeqCst) {
                            // A peer that led its partitions stopped (it lost the majority,
                            // or was paused): they go to their next live owner, maybe this
                            // node, which must first collect what the other owners hold, as
                            // when a peer goes down. Without it, a write the peer had
                            // acknowledged with one other owner (a new owner of a moving
                            // partition, which held its copy back for the peer's own
                            // stream) was missing at the next owner, which served an older
                            // value (the attach/detach simulation, seed 220). Begun
                            // before the peer stops being routable, so requests routed
                            // here meanwhile wait for it.
                            self.begin_takeover("a peer is catching up");
                        }
                        p.catching_up.store(catching, SeqCst);
                        *p.view.lock().expect("lock") = Some(Arc::new(PeerView::parse(&r)));
                        *p.status.lock().expect("lock") = r;
                        *p.answered_at.lock().expect("lock") = Some(Instant::now());
                    }
                    Err(_) => {
                        if !p.heard_within(timeout) {
                            if p.relayed.load(SeqCst) && self.vouched_by_majority(&l, &p) {
                                // Down from here only, still: it stays up, reached through
                                // the others, rather than being taken for down and vouched
                                // for again after a takeover every failure timeout.
                                *p.last_ok.lock().expect("lock") = Some(Instant::now());
                            } else if p.up.swap(false, SeqCst) {
                                tracing::warn!(peer = %p.addr, "peer is down");
                                self.begin_takeover("a peer is down");
                            }
                        }
                    }
                }
            }
            // Heartbeats to a peer that hangs take up to the failure timeout: that is not a
            // pause of this process.
            self.tick();
            self.prune_origins();
            self.prune_direct();
            // Not awaited: a slow disk must not hold up heartbeats.
            let (me, l2) = (self.clone(), l.clone());
            tokio::spawn(async move { me.save_streams(&l2, false).await });
            if !self.gateway() && !self.majority_reachable(&l) && !self.catching_up() {
                tracing::warn!(
                    "cut off from the majority of the cluster; leading nothing until it is back"
                );
                self.catching_up.store(true, SeqCst);
            }
            // Transfers of the movement in progress.
            if l.moving() && !self.gateway() {
                let fin = self.transfers_finished.load(SeqCst);
                let running = transfer
                    .as_ref()
                    .is_some_and(|(v, h)| *v == l.version && !h.is_finished());
                if fin < l.version && !running {
                    if let Some((v, h)) = transfer.take()
                        && v == l.version
                        && h.is_finished()
                    {
                        match h.await {
                            Ok(Ok(n)) => {
                                tracing::info!(version = v, records = n, "transfers done");
                                self.transfers_finished.store(v, SeqCst);
                            }
                            Ok(Err(e)) => tracing::warn!(error = %e, "transfers interrupted"),
                            Err(e) => tracing::warn!(error = %e, "transfer task failed"),
                        }
                    } else {
                        let me = self.clone();
                        let l2 = l.clone();
                        transfer = Some((l.version, tokio::spawn(replicate::transfer(me, l2))));
                    }
                }
            }
            // Layout changes wait for a quorum (seconds when a voter hangs): off the heartbeat
            // loop, which would otherwise look paused, one round at a time.
            if !self.admin_busy.swap(true, SeqCst) {
                let me = self.clone();
                let l2 = l.clone();
                tokio::spawn(async move {
                    if me.gateway() {
                        me.refind(&l2).await;
                    } else {
                        if l2.moving() && me.cfg.auto_complete {
                            me.maybe_complete(&l2).await;
                        }
                        me.reconcile(&l2).await;
                        let every = me.cfg.anti_entropy_secs;
                        let now = me.started.elapsed().as_secs();
                        let last = me.last_anti_entropy.load(SeqCst);
                        if every > 0
                            && now >= last + every
                            && !l2.moving()
                            && !me.catching_up()
                            && me.leads_reconciliation(&l2)
                        {
                            me.last_anti_entropy.store(now, SeqCst);
                            me.anti_entropy().await;
                        }
                    }
                    me.admin_busy.store(false, SeqCst);
                });
            }
            tokio::time::sleep(hb).await;
            self.check_pause();
        }
    }

    /// Use TLS for every connection to peers (set before the node starts).
    pub fn set_tls(&self, t: k2hdkc_client::TlsConnector) {
        let _ = self.tls.set(t);
    }

    /// Record what the cluster description asks for; the reconciling node acts on it.
    pub fn set_desired(&self, d: Desired) {
        *self.desired.lock().expect("lock") = Some(d);
    }

    /// Whether this node is the one that acts for the cluster (the lowest-named live voter).
    fn leads_reconciliation(&self, l: &Layout) -> bool {
        let voters = paxos::voters(l);
        let leader = voters
            .iter()
            .filter(|v| {
                l.nodes
                    .iter()
                    .find(|n| &&n.name == v)
                    .is_some_and(|n| self.peer_up(&n.addr))
            })
            .min();
        leader == Some(&self.me)
    }

    /// One step toward the cluster description: the next layout change it asks for, if any.
    /// Listed nodes that joined are attached (with AUTOMERGE), unlisted ones detached (or
    /// removed when they are down), replication set as written. One change
    /// per heartbeat round, and none while data moves.
    pub fn reconcile_step(&self, l: &Layout) -> Option<Change> {
        let d = self.desired.lock().expect("lock").clone()?;
        if l.moving() || !d.automerge {
            return None;
        }
        let listed = |name: &str| d.servers.iter().any(|s| s == name);
        for n in &l.nodes {
            if listed(&n.name) {
                continue;
            }
            // A recognised node that is up and not listed yet may be one this node's copy of
            // the file does not know about (every node reads its own copy): leave it.
            let serving = n.ring == Ring::ServiceIn && n.action != Action::Delete;
            if !self.peer_up(&n.addr) && (serving || n.ring == Ring::ServiceOut) {
                return Some(Change::Remove {
                    name: n.name.clone(),
                });
            }
            if serving {
                return Some(Change::Detach {
                    name: n.name.clone(),
                });
            }
        }
        let waiting: Vec<String> = l
            .nodes
            .iter()
            .filter(|n| n.ring == Ring::ServiceOut && listed(&n.name) && self.peer_up(&n.addr))
            .map(|n| n.name.clone())
            .collect();
        if !waiting.is_empty() {
            return Some(Change::Attach { names: waiting });
        }
        if let Some((n, w, r)) = d.replication
            && (l.replicas, l.write_quorum, l.read_quorum) != (n, w, r)
        {
            return Some(Change::SetReplication {
                replicas: n,
                write_quorum: w,
                read_quorum: r,
            });
        }
        None
    }

    /// Apply the next step of the cluster description, when this node leads.
    async fn reconcile(self: &Arc<Self>, l: &Layout) {
        if !self.leads_reconciliation(l) {
            return;
        }
        let Some(change) = self.reconcile_step(l) else {
            return;
        };
        tracing::info!(?change, "following the cluster description");
        if let Err(e) = self.propose(change).await {
            tracing::warn!(error = %e, "could not follow the cluster description yet");
        }
    }

    /// A gateway whose known nodes are all gone looks for the cluster at the addresses of
    /// the cluster description.
    async fn refind(self: &Arc<Self>, l: &Layout) {
        let addrs = match self.desired.lock().expect("lock").as_ref() {
            Some(d) => d.addrs.clone(),
            None => return,
        };
        if l.nodes.iter().any(|n| self.peer_up(&n.addr)) {
            return;
        }
        for a in addrs {
            if self.fetch_layout(&a).await.is_ok() {
                tracing::info!(addr = %a, "found the cluster again through its description");
                return;
            }
        }
    }

    /// The lowest-named live voter completes a movement once every live node finished its
    /// transfers for this version (CHMPX's automatic COMPMERGE).
    async fn maybe_complete(self: &Arc<Self>, l: &Layout) {
        if !self.leads_reconciliation(l) {
            return;
        }
        for n in &l.nodes {
            let fin = if n.addr == self.addr {
                self.transfers_finished.load(SeqCst)
            } else {
                let p = self.peer(&n.addr);
                if !p.up() {
                    continue;
                }
                let st = p.status.lock().expect("lock").clone();
                st["transfers"]["finished_version"].as_u64().unwrap_or(0)
            };
            if fin < l.version {
                return;
            }
        }
        match self.propose(Change::Complete).await {
            Ok(nl) => tracing::info!(version = nl.version, "data movement complete"),
            Err(e) => tracing::debug!(error = %e, "completing the movement failed"),
        }
    }

    /// Apply a replication batch from a peer. `from` is the sender (`ADDR INCARNATION`, as
    /// [`replicate`] sends it); `position` 0 marks a transfer or resync.
    pub fn import(
        &self,
        value: &[u8],
        from: Option<&[u8]>,
        position: u64,
    ) -> Result<usize, String> {
        let changes = replicate::decode_batch(value)?;
        self.stats.received.fetch_add(changes.len() as u64, Relaxed);
        self.stats
            .received_bytes
            .fetch_add(value.len() as u64, Relaxed);
        let sender = from
            .and_then(|f| std::str::from_utf8(f).ok())
            .and_then(|f| self.note_sender(f));
        // The primary's copies of gateway sets written here come in its stream.
        let found = if sender.is_some() && position != 0 {
            self.take_direct(&changes)
        } else {
            Vec::new()
        };
        let (n, mapped) = self
            .store
            .import_changes_mapped(changes, false)
            .map_err(|e| e.to_string())?;
        if let Some((sender, incarnation)) = &sender {
            let mut o = self.origins.lock().expect("lock");
            for (seq, local) in mapped {
                let origin = if position == 0 {
                    Origin::Transfer
                } else {
                    Origin::Stream {
                        sender: sender.clone(),
                        incarnation: *incarnation,
                        seq,
                    }
                };
                o.insert(local, origin);
            }
            while o.len() > ORIGINS_CAP {
                o.pop_first();
            }
        }
        if let Some((sender, inc)) = &sender
            && !found.is_empty()
        {
            self.settle_direct(found, sender, *inc);
        }
        self.stats.imported.fetch_add(n as u64, Relaxed);
        Ok(n)
    }

    /// A gateway's plain set (`Op::Put`) with the version it chose. As the key's primary
    /// (`primary`), this node writes it only while it leads the partition (and no data
    /// moves) and only if the version is newer than its record, which it then streams to the
    /// other owners as its own write: so the primary still orders every write of the key, and
    /// what CAS, append and counters read there includes every set acknowledged. As a replica
    /// it writes it by last-writer-wins and holds it back from the other owners like a copy
    /// from the primary's stream (`Origin::Direct`). `Err` is the reply: its status, text,
    /// and the version here when that is not older.
    pub fn put_direct(&self, req: DirectPut<'_>) -> Result<(), (Status, String, Option<Version>)> {
        let fail = |s: Status, m: &str| Err((s, m.to_string(), None));
        if self.gateway() {
            return fail(Status::Unavailable, "a gateway holds no data");
        }
        let l = self.layout();
        let p = partition_of(req.key);
        if req.primary {
            if l.moving()
                || self.in_takeover()
                || self.catching_up()
                || !matches!(self.route_partition(&l, p), Route::Local)
            {
                return fail(
                    Status::Unavailable,
                    "this node does not lead the key's partition now",
                );
            }
        } else {
            let owns = l
                .nodes
                .iter()
                .position(|n| n.addr == self.addr)
                .is_some_and(|me| l.owners_of_partition(p).writes_to(me as NodeIdx));
            if !owns {
                return fail(
                    Status::Unavailable,
                    "this node does not own the key's partition",
                );
            }
        }
        let r = self.store.set_versioned(
            req.key,
            req.value,
            req.flags,
            req.expire,
            req.version,
            !req.primary,
        );
        match r {
            Ok(Versioned::Applied { seq }) => {
                if !req.primary {
                    let sender: Arc<str> = Arc::from(req.sender);
                    let incarnation = self
                        .known_peer(req.sender)
                        .and_then(|p| p.view.lock().expect("lock").as_ref().map(|v| v.incarnation))
                        .unwrap_or(0);
                    self.origins.lock().expect("lock").insert(
                        seq,
                        Origin::Direct {
                            sender,
                            incarnation,
                            layout: l.version,
                            at_ms: self.store.now_ms(),
                        },
                    );
                    let mut d = self.direct.lock().expect("lock");
                    if d.len() < DIRECT_CAP {
                        d.insert(req.key.to_vec(), (req.version, seq, self.store.now_ms()));
                    }
                }
                self.stats.direct_puts.fetch_add(1, Relaxed);
                tracing::trace!(primary = req.primary, seq, "wrote a gateway set");
                if req.primary {
                    // Its streams pick it up now rather than at their next poll (a replica's
                    // hold it back anyway, and find it at their next batch).
                    self.written.notify_waiters();
                }
                Ok(())
            }
            // A replica that holds something newer has nothing to add: the primary decides.
            Ok(Versioned::Stale(_)) if !req.primary => Ok(()),
            Ok(Versioned::Stale(v)) => Err((
                Status::Exists,
                "the key's record here is not older than this version".into(),
                Some(v),
            )),
            Ok(Versioned::Ineligible) => fail(
                Status::NotStored,
                "the key's record needs more than the request (sub-keys, history or encryption)",
            ),
            Err(e) => Err((crate::native::status_of(&e), e.to_string(), None)),
        }
    }

    /// The primary's copies of gateway sets this node wrote as a replica, in a batch from
    /// its stream (`changes`, before they are imported): (local feed position, position in
    /// the sender's feed, the primary's record). They stop waiting here.
    fn take_direct(
        &self,
        changes: &[k2hdkc_storage::Change],
    ) -> Vec<(u64, u64, k2hdkc_storage::Record)> {
        let mut d = self.direct.lock().expect("lock");
        if d.is_empty() {
            return Vec::new();
        }
        let mut found = Vec::new();
        for c in changes {
            for op in &c.ops {
                let k2hdkc_storage::Op::Put(r) = op else {
                    continue;
                };
                let v = r.view();
                if d.get(v.key()).is_some_and(|(dv, _, _)| *dv == v.version()) {
                    let (_, local, _) = d.remove(v.key()).expect("present");
                    found.push((local, c.seq, r.clone()));
                }
            }
        }
        found
    }

    /// [`Cluster::take_direct`]'s finds become copies from the sender's stream; where this
    /// node built a record that differs from the primary's (its own old state differed), the
    /// primary's replaces it.
    fn settle_direct(
        &self,
        found: Vec<(u64, u64, k2hdkc_storage::Record)>,
        sender: &Arc<str>,
        incarnation: u64,
    ) {
        let now = self.store.now_ms();
        for (local, their, rec) in found {
            let replaced = self.store.replace_same_version(&rec).ok().flatten();
            let stream = Origin::Stream {
                sender: sender.clone(),
                incarnation,
                seq: their,
            };
            // (`direct_settled` is locked while `origins` is, by the streams' lookups: never
            // the other way round.)
            let now_origin = match replaced {
                // The replacement travels as the primary's copy; the record it replaced is
                // gone and need not.
                Some(seq) => {
                    self.origins.lock().expect("lock").insert(seq, stream);
                    Origin::Transfer
                }
                None => stream,
            };
            self.direct_settled
                .lock()
                .expect("lock")
                .insert(local, (now_origin, now));
        }
    }

    /// Save, for each peer of `l`, the feed position up to which its stream has delivered
    /// everything (below what it holds back) and a version below those changes, so a
    /// restarted node resumes its streams there instead of at its feed's end: the hints
    /// for a peer that is down, changes not yet sent and held-back copies survive a crash
    /// of this node (what is resent twice is only what the last save did not cover). At most
    /// once per [`STREAMS_SAVE_EVERY`] unless `now`, and only when something moved; nothing
    /// without a state directory.
    pub async fn save_streams(&self, l: &Layout, now: bool) {
        if self.state.0.is_none() || self.gateway() {
            return;
        }
        let mut saved = match self.streams_saved.try_lock() {
            Ok(g) => g,
            Err(_) if !now => return,
            Err(_) => self.streams_saved.lock().await,
        };
        let mut peers = BTreeMap::new();
        for n in l.nodes.iter().filter(|n| n.addr != self.addr) {
            if let Some(p) = self.known_peer(&n.addr) {
                // The acknowledged position first: a stream publishes what it holds back
                // before it moves `acked` past it, so this never skips a held change.
                let acked = p.acked.load(SeqCst);
                let position = acked.min(p.held_from.load(SeqCst).saturating_sub(1));
                let version = p
                    .acked_version
                    .load(SeqCst)
                    .min(p.held_version.load(SeqCst))
                    .saturating_sub(IMPORT_CLOCK_MARGIN);
                peers.insert(n.addr.clone(), (position, version));
            } else if let Some(r) = self.resume.lock().expect("lock").get(&n.addr) {
                peers.insert(n.addr.clone(), *r);
            }
        }
        if saved.1 == peers || (!now && saved.0.is_some_and(|t| t.elapsed() < STREAMS_SAVE_EVERY)) {
            return;
        }
        let text = json!({
            "format": STREAMS_FORMAT,
            "peers": peers.iter().map(|(a, (p, v))| (a.clone(), json!([p, v]))).collect::<serde_json::Map<_, _>>(),
        })
        .to_string();
        let state = self.state.clone();
        let r = tokio::task::spawn_blocking(move || state.save_streams(&text))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        match r {
            Ok(()) => *saved = (Some(Instant::now()), peers),
            Err(e) => tracing::warn!(error = %e, "cannot save the stream positions"),
        }
    }

    /// Forget gateway sets waiting for the primary's copy once their hold is over (they are
    /// sent on by then).
    fn prune_direct(&self) {
        let now = self.store.now_ms();
        self.direct
            .lock()
            .expect("lock")
            .retain(|_, (_, _, at)| now.saturating_sub(*at) < DIRECT_HOLD_MS);
        // Held changes are looked at again every few hundred milliseconds; a settled origin
        // is kept well past the hold itself.
        self.direct_settled
            .lock()
            .expect("lock")
            .retain(|_, (_, at)| now.saturating_sub(*at) < 2 * DIRECT_HOLD_MS);
    }

    /// The origin of the change at local feed position `seq` whose origin was `o`: for a
    /// gateway set, what it became once the primary's copy came (see [`Origin::Direct`]).
    pub fn settled_origin(&self, seq: u64, o: Origin) -> Origin {
        if !matches!(o, Origin::Direct { .. }) {
            return o;
        }
        self.direct_settled
            .lock()
            .expect("lock")
            .get(&seq)
            .map_or(o, |(s, _)| s.clone())
    }

    /// Who sends a replication batch, with its streams' positions, so receivers learn them
    /// at the pace of the batches rather than of heartbeats:
    /// `ADDR INCARNATION LAYOUT_VERSION [PEER=SINCE:ACKED ...]`.
    pub fn sender_note(&self) -> String {
        use std::fmt::Write;
        let mut s = format!(
            "{} {} {}",
            self.addr,
            self.incarnation,
            self.layout().version
        );
        for p in self.peers.lock().expect("lock").values() {
            let _ = write!(s, " {}={}:{}", p.addr, p.since, p.acked.load(SeqCst));
        }
        s
    }

    /// Read a [`Cluster::sender_note`]: the sender and its incarnation; its stream positions
    /// become its view.
    fn note_sender(&self, note: &str) -> Option<(Arc<str>, u64)> {
        let mut it = note.split(' ');
        let addr = it.next()?;
        let incarnation = it.next()?.parse::<u64>().ok()?;
        if let Some(version) = it.next().and_then(|v| v.parse::<u64>().ok()) {
            let streams = it
                .filter_map(|t| {
                    let (a, pos) = t.split_once('=')?;
                    let (since, acked) = pos.split_once(':')?;
                    Some((a.to_string(), (since.parse().ok()?, acked.parse().ok()?)))
                })
                .collect();
            if let Some(p) = self.known_peer(addr) {
                *p.view.lock().expect("lock") = Some(Arc::new(PeerView {
                    incarnation,
                    version,
                    streams,
                }));
            }
        }
        Some((Arc::from(addr), incarnation))
    }

    /// Forget the origins of feed positions every stream has passed.
    fn prune_origins(&self) {
        let peers: Vec<Arc<Peer>> = self.peers.lock().expect("lock").values().cloned().collect();
        let l = self.layout();
        let low = peers
            .iter()
            .filter(|p| l.nodes.iter().any(|n| n.addr == p.addr))
            .map(|p| p.acked.load(SeqCst))
            .min()
            .unwrap_or(u64::MAX);
        let mut o = self.origins.lock().expect("lock");
        while o.first_key_value().is_some_and(|(&k, _)| k <= low) {
            o.pop_first();
        }
    }
}

/// Follow a CHMPX-style file: hand what it asks for to the cluster now and whenever its
/// contents change. A file that does not validate changes nothing (and says why, once).
///
/// `gate`, on a server node, gets the hosts each new description admits.
pub async fn watch_chmpx(
    cluster: Arc<Cluster>,
    gate: Option<Arc<crate::chmpx::Gate>>,
    path: std::path::PathBuf,
    every: Duration,
) {
    let mut last: Option<Vec<u8>> = None;
    // The hosts a description admits are looked up again now and then, so a name that did
    // not resolve at start (DNS not ready) or moved is followed without editing the file.
    // `None`: a new description, not looked up yet.
    let mut resolved: Option<tokio::time::Instant> = None;
    let mut admitted: Option<crate::chmpx::ChmpxConfig> = None;
    while !cluster.stopping() {
        // A small file: a blocking read is shorter than handing it to another thread.
        match std::fs::read(&path) {
            Ok(bytes) if last.as_ref() != Some(&bytes) => {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                let syntax = crate::chmpx::Syntax::guess(Some(&path), &text);
                match crate::chmpx::parse(&text, syntax) {
                    Ok(c) if c.group == cluster.layout().cluster => {
                        let d = c.desired();
                        admitted = Some(c);
                        resolved = None;
                        if last.is_some() {
                            tracing::info!(path = %path.display(), servers = ?d.servers, "cluster description changed");
                        }
                        cluster.set_desired(d);
                    }
                    Ok(c) => tracing::warn!(
                        path = %path.display(),
                        group = %c.group,
                        "the cluster description names another GROUP; ignored"
                    ),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cluster description not applied")
                    }
                }
                last = Some(bytes);
            }
            Ok(_) => {}
            Err(e) => {
                if last.is_some() {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read the cluster description");
                }
            }
        }
        if let (Some(g), Some(c)) = (&gate, &admitted)
            && resolved.is_none_or(|t| t.elapsed() >= RESOLVE_EVERY)
        {
            // Name lookups can block for seconds on a bad resolver.
            let c = c.clone();
            if let Ok(a) =
                tokio::task::spawn_blocking(move || crate::chmpx::Admission::new(&c)).await
            {
                g.set(a);
            }
            resolved = Some(tokio::time::Instant::now());
        }
        tokio::time::sleep(every).await;
    }
}

/// A number that differs between process starts: the start time (by the store's clock,
/// so a simulation's restarts differ too) mixed with the process id.
fn incarnation(now_ms: u64) -> u64 {
    let t = now_ms.wrapping_mul(1_000_000);
    t ^ (u64::from(std::process::id()) << 40) | 1
}

/// Send a control request over a client (with the cluster token, if any) and decode the JSON
/// reply.
pub async fn call_client(
    c: &Client,
    req: &Json,
    token: Option<&[u8]>,
    timeout: Duration,
) -> Result<Json, String> {
    let body = serde_json::to_vec(req).expect("json");
    let args = Args {
        message: Some(&body),
        pass: token,
        ..Default::default()
    };
    let r = tokio::time::timeout(timeout, c.request(Op::Cluster, &args))
        .await
        .map_err(|_| "no answer in time".to_string())?
        .map_err(|e| e.to_string())?;
    if r.status() != Some(Status::Ok) {
        return Err(r
            .message
            .unwrap_or_else(|| "cluster request refused".into()));
    }
    let j: Json =
        serde_json::from_str(r.message.as_deref().unwrap_or("null")).map_err(|e| e.to_string())?;
    if j["ok"] == json!(false) {
        return Err(j["error"].as_str().unwrap_or("refused").to_string());
    }
    Ok(j)
}
