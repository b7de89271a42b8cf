//! Moving data between nodes: the replication stream to each peer, and the transfers of whole
//! partitions when the layout moves data (attach, detach, remove).
//!
//! The stream: each node ships the changes in its change feed (its own, and those it imported,
//! so an acknowledged write reaches every owner even if its primary dies) to every peer that
//! owns the changed keys, in feed order, in batches; the peer applies them with
//! last-writer-wins on versions and acknowledges the feed position. A write waits until `W - 1`
//! owners other than the node itself have acknowledged a position at or after its change (see
//! `Cluster::wait_quorum`). A peer that is down keeps its position: when it returns, the stream
//! resumes from there (only what changed meanwhile travels); if the feed no longer holds that
//! position, the state newer than the last acknowledged version is sent instead.
//!
//! Forwarding imported changes without sending them twice: a replica B that imported change
//! `c` from sender A's stream also owes `c` to the other owners (C), in case A dies right after
//! acknowledging the write. But while A lives, A's own stream delivers `c` to C, and a second
//! copy from B would double the traffic (a node returning after a crash would pull every change
//! once from each other owner). So B remembers, per imported feed position, who sent it and at
//! which position of the sender's feed ([`Origin`]); its stream to C holds `c` back until A's
//! heartbeat says A's stream to C has passed that position (then `c` is dropped), or A is down,
//! restarted (another incarnation: its positions were reset), out of the layout (no longer
//! pinged), or on another layout version (then `c` is sent). "A's stream passed it" means A
//! sent it to C or holds it back itself, answerable to the node A got it from, down to the node that wrote it, which sends its own
//! writes itself; so no two nodes wait for each other. Transfers and resyncs are not
//! forwarded: every new owner gets its own. Held changes live in memory, but what they stand
//! for survives a crash: every second (and at shutdown) the node saves, per peer, the feed
//! position below everything its stream has not delivered or holds back
//! (`Cluster::save_streams`), and a restarted file-mode node resumes each stream there, its
//! feed refilled from the log; imports then have no origin and are sent. So the loss of two
//! nodes of such a chain (or of a node holding hints for a peer that is down) costs C nothing
//! once either returns; what was delivered after the last save is sent twice.
//!
//! Batches carry a format version ([`BATCH_FORMAT`]); a receiver refuses other versions.

use std::sync::Arc;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::time::Duration;

use k2hdkc_layout::{Layout, NodeIdx, PARTITIONS, partition_of};
use k2hdkc_proto::native::{Args, Op, Status};
use k2hdkc_storage::{
    Change, ChangeFilter, ChangeKind, Error as StoreError, Op as StateOp, Version,
};

use super::{Cluster, Origin, Peer};

/// Format version of a replication batch: 2 is the compact form (varint headers, deltas; see
/// `Change::encode_compact`); receivers still read 1 (fixed-width changes, each with a u32
/// length) from nodes not yet upgraded.
pub const BATCH_FORMAT: u8 = 2;
/// Most changes per batch.
const BATCH_CHANGES: usize = 1024;
/// Most bytes per batch (a batch is one frame).
const BATCH_BYTES: usize = 4 << 20;
/// Most bytes of imported changes a stream holds back; beyond it, it sends them (safe).
const HELD_BYTES: usize = 64 << 20;
/// How often held changes are looked at again.
const HELD_RECHECK: Duration = Duration::from_millis(100);

/// How long a stream may keep back changes whose write quorum does not need its peer (see
/// [`urgent`]), to send them with later ones in one batch: every batch costs the peer a
/// wake-up and this node one for the acknowledgement, a sizeable share of a synchronous
/// client's set.
const LINGER: Duration = Duration::from_millis(10);
/// A stream stops gathering once it has this many changes to send: under load larger batches
/// only hold up the receiver's other requests longer (measured: 10 ms batches of a pipelined
/// load cost 10-25% of its throughput).
const LINGER_CHANGES: usize = 128;

/// Whether no write of this node waits for `peer` (both indexes in `layout`, `me` this
/// node's) while the owners it counts on are up: a write's quorum needs `W - 1`
/// acknowledgements from the other owners, and this node counts on the first `W - 1` after
/// itself round the node order (any `W - 1` acknowledgements still make the quorum). With
/// three nodes and three copies, one replica answers each node's writes and the other
/// gets batches. Returns the owners counted on instead (the stream stops lingering while one
/// of them is down), or `None` when some partition's quorum needs `peer`.
pub(crate) fn lazy_target(layout: &Layout, me: NodeIdx, peer: NodeIdx) -> Option<Vec<NodeIdx>> {
    let need = layout.effective_write_quorum().saturating_sub(1);
    let n = layout.nodes.len().max(1);
    let dist = |i: NodeIdx| (usize::from(i) + n - usize::from(me)) % n;
    let mut counted: Vec<NodeIdx> = Vec::new();
    for p in 0..PARTITIONS {
        let set = layout.owners_of_partition(p).write_set();
        if !set.contains(&peer) || !set.contains(&me) {
            // Not this node's to replicate (transfers and forwarded imports), or not the
            // peer's: nobody waits.
            continue;
        }
        let mut others: Vec<NodeIdx> = set.into_iter().filter(|&i| i != me).collect();
        others.sort_by_key(|&i| dist(i));
        others.truncate(need);
        if others.contains(&peer) {
            return None;
        }
        for i in others {
            if !counted.contains(&i) {
                counted.push(i);
            }
        }
    }
    Some(counted)
}

/// What the stream to a target does with an imported change.
enum Fate {
    Send,
    Skip,
    Hold,
}

/// Senders' views, looked up once per batch. Per sender address: `None` when it is down or
/// unknown, `Some(None)` when it is up but said nothing yet.
type SenderView = Option<Option<Arc<super::PeerView>>>;

#[derive(Default)]
struct Views(std::collections::HashMap<Arc<str>, SenderView>);

impl Views {
    fn get(&mut self, cluster: &Cluster, sender: &Arc<str>) -> SenderView {
        self.0
            .entry(sender.clone())
            .or_insert_with(|| {
                // A sender that left the layout is no longer pinged: its last view would
                // hold its copies back for good (the simulation found a returning node's
                // catch-up waiting on them forever, seed 19). It counts as down.
                let member = cluster.layout().nodes.iter().any(|n| *n.addr == **sender);
                cluster
                    .known_peer(sender)
                    .filter(|p| member && p.up())
                    .map(|p| p.view.lock().expect("lock").clone())
            })
            .clone()
    }
}

/// Decide for an imported change (see the module documentation).
fn fate(
    cluster: &Cluster,
    views: &mut Views,
    origin: Option<&Origin>,
    target: &str,
    version: u64,
) -> Fate {
    let Some(origin) = origin else {
        return Fate::Send;
    };
    let (sender, incarnation, seq) = match origin {
        Origin::Stream {
            sender,
            incarnation,
            seq,
        } => (sender, incarnation, seq),
        Origin::Transfer => return Fate::Skip,
        Origin::Unknown => return Fate::Send,
        Origin::Direct {
            sender,
            incarnation,
            layout,
            at_ms,
        } => {
            // The primary streams it to the target unless it went down, restarted or the
            // layout moved on; a copy it never sends (it refused the set, or failed before
            // writing it) is sent from here after the hold, to the primary itself too (it
            // takes it by last-writer-wins; without it the primary would lack what the
            // replicas have, if the set failed on the way through it as well). Once the
            // primary's copy arrived, the origin is its stream (`settled_origin`).
            let alive = views.get(cluster, sender).is_some_and(|v| {
                v.is_none_or(|v| *incarnation == 0 || v.incarnation == *incarnation)
            });
            let young = cluster.store.now_ms().saturating_sub(*at_ms) < super::DIRECT_HOLD_MS;
            return if alive && young && *layout == version {
                Fate::Hold
            } else {
                Fate::Send
            };
        }
    };
    if &**sender == target {
        return Fate::Skip;
    }
    let Some(view) = views.get(cluster, sender) else {
        return Fate::Send;
    };
    let Some(view) = view else {
        return Fate::Hold;
    };
    if view.incarnation != *incarnation || view.version != version {
        return Fate::Send;
    }
    match view.streams.get(target) {
        Some(&(since, acked)) if since < *seq && *seq <= acked => Fate::Skip,
        Some(&(since, _)) if since >= *seq => Fate::Send,
        _ => Fate::Hold,
    }
}

/// Imported changes a stream holds back for its target.
#[derive(Default)]
struct Held {
    changes: Vec<(Arc<Change>, Origin)>,
    bytes: usize,
    checked: Option<tokio::time::Instant>,
}

impl Held {
    fn publish(&self, peer: &Peer) {
        let (low, oldest) = self
            .changes
            .iter()
            .fold((u64::MAX, u64::MAX), |(s, v), (c, _)| {
                (s.min(c.seq), v.min(c.version.ts))
            });
        // The version first: `save_streams` reads the position, then the version.
        peer.held_version.store(oldest, SeqCst);
        peer.held_from.store(low, SeqCst);
    }

    /// Send `due` to the peer; what does not get through is kept, to be sent whatever its
    /// sender does.
    async fn send_or_keep(&mut self, cluster: &Cluster, peer: &Peer, due: Vec<Arc<Change>>) {
        if due.is_empty() {
            return;
        }
        let position = peer.acked.load(SeqCst).max(1);
        if let Err(e) = send_all_at(cluster, peer, &due, position).await {
            tracing::debug!(peer = %peer.addr, error = %e, "held changes not sent yet");
            for c in due {
                self.bytes += c.weight();
                self.changes.push((c, Origin::Unknown));
            }
        }
    }

    /// Take the held changes that must be sent now; drop those delivered by their sender.
    fn release(&mut self, cluster: &Cluster, target: &str, version: u64) -> Vec<Arc<Change>> {
        let mut out = Vec::new();
        let mut keep = Vec::new();
        let mut views = Views::default();
        for (c, o) in self.changes.drain(..) {
            let o = cluster.settled_origin(c.seq, o);
            match fate(cluster, &mut views, Some(&o), target, version) {
                Fate::Send => out.push(c),
                Fate::Skip => {}
                Fate::Hold => keep.push((c, o)),
            }
        }
        self.bytes = keep.iter().map(|(c, _)| c.weight()).sum();
        self.changes = keep;
        self.checked = Some(tokio::time::Instant::now());
        out
    }
}

/// Encode changes as a replication batch.
pub fn encode_batch<C: std::borrow::Borrow<Change>>(changes: &[C]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(8 + changes.iter().map(|c| c.borrow().weight()).sum::<usize>());
    out.push(BATCH_FORMAT);
    out.extend_from_slice(&(changes.len() as u32).to_be_bytes());
    let mut prev = (0, 0);
    for c in changes {
        c.borrow().encode_compact(&mut prev, &mut out);
    }
    out
}

/// Decode a replication batch.
pub fn decode_batch(mut b: &[u8]) -> Result<Vec<Change>, String> {
    let Some((&format, rest)) = b.split_first() else {
        return Err("empty replication batch".into());
    };
    if format != BATCH_FORMAT && format != 1 {
        return Err(format!(
            "replication batch format {format} is not supported (this node reads 1 and {BATCH_FORMAT})"
        ));
    }
    b = rest;
    let take = |b: &mut &[u8], n: usize| -> Result<Vec<u8>, String> {
        if b.len() < n {
            return Err("truncated replication batch".into());
        }
        let (h, t) = b.split_at(n);
        *b = t;
        Ok(h.to_vec())
    };
    let n = u32::from_be_bytes(take(&mut b, 4)?.try_into().expect("4 bytes")) as usize;
    let mut out = Vec::with_capacity(n.min(BATCH_CHANGES * 4));
    if format == BATCH_FORMAT {
        let mut prev = (0, 0);
        for _ in 0..n {
            out.push(
                Change::decode_compact(&mut b, &mut prev)
                    .map_err(|e| format!("bad change in batch: {e}"))?,
            );
        }
        if !b.is_empty() {
            return Err("trailing bytes after a replication batch".into());
        }
        return Ok(out);
    }
    for _ in 0..n {
        let len = u32::from_be_bytes(take(&mut b, 4)?.try_into().expect("4 bytes")) as usize;
        let body = take(&mut b, len)?;
        out.push(Change::decode(&body).map_err(|e| format!("bad change in batch: {e}"))?);
    }
    if !b.is_empty() {
        return Err("trailing bytes after a replication batch".into());
    }
    Ok(out)
}

/// Whether `peer` is in the write set of every partition of `layout` (three copies on three
/// nodes): then [`for_peer`] need not look at keys.
fn owns_all(layout: &Layout, peer: NodeIdx) -> bool {
    (0..PARTITIONS).all(|p| layout.owners_of_partition(p).writes_to(peer))
}

/// The part of `c` that `peer` should receive under `layout`: ops on keys whose partition it
/// owns (now or before a movement). Removals of purged tombstones stay local: every node
/// purges on its own schedule. `all` is [`owns_all`]`(layout, peer)`: it spares reading each
/// key, from a record a stream mostly finds out of cache (measured: a fifth of a node's
/// samples under gateway sets).
///
/// Changes this node imported travel on too: a write acknowledged by the primary and one
/// replica must reach the other replicas even if the primary dies right after. Echoes end by
/// themselves: a receiver that already holds a version applies nothing and logs nothing.
fn for_peer(c: &Arc<Change>, layout: &Layout, peer: NodeIdx, all: bool) -> Option<Arc<Change>> {
    let wanted = |op: &StateOp| {
        !matches!(op, StateOp::Remove(_))
            && (all
                || layout
                    .owners_of_partition(partition_of(op.key()))
                    .writes_to(peer))
    };
    // Most changes touch one key: share the feed's copy instead of cloning records.
    if c.ops.iter().all(wanted) {
        return (!c.ops.is_empty()).then(|| c.clone());
    }
    let ops: Vec<StateOp> = c.ops.iter().filter(|op| wanted(op)).cloned().collect();
    if ops.is_empty() {
        return None;
    }
    Some(Arc::new(Change {
        seq: c.seq,
        version: c.version,
        kind: c.kind,
        ops,
    }))
}

/// Send one batch to a peer; returns when the peer applied it.
async fn send<C: std::borrow::Borrow<Change>>(
    cluster: &Cluster,
    peer: &Peer,
    changes: &[C],
    position: u64,
) -> Result<(), String> {
    let value = encode_batch(changes);
    let from = cluster.sender_note();
    let args = Args {
        value: Some(&value),
        count: Some(position),
        message: Some(from.as_bytes()),
        pass: cluster.token.as_deref(),
        ..Default::default()
    };
    let r = tokio::time::timeout(
        cluster.request_timeout(),
        peer.client.request(Op::Replicate, &args),
    )
    .await
    .map_err(|_| "replication timed out".to_string())?
    .map_err(|e| e.to_string())?;
    match r.status() {
        Some(Status::Ok) => {
            cluster
                .stats
                .replicated
                .fetch_add(changes.len() as u64, Relaxed);
            cluster
                .stats
                .replicated_bytes
                .fetch_add(value.len() as u64, Relaxed);
            Ok(())
        }
        _ => Err(r.message.unwrap_or_else(|| "replication refused".into())),
    }
}

/// The replication stream to one peer; runs until the cluster stops or the peer leaves the
/// layout.
pub async fn stream(cluster: Arc<Cluster>, peer: Arc<Peer>) {
    let store = cluster.store.clone();
    let mut from = peer.acked.load(SeqCst) + 1;
    let mut backoff = Duration::from_millis(50);
    let mut held = Held::default();
    let poll = tokio::time::sleep(Duration::from_millis(50));
    tokio::pin!(poll);
    // Until when the changes waiting now may be kept back (see `LINGER`), and whether this
    // stream may (per layout version: `lazy_target`).
    let mut linger: Option<tokio::time::Instant> = None;
    let mut lazy: Option<(u64, Option<Vec<NodeIdx>>)> = None;
    // Whether the peer owns every partition, per installed layout (the same one, not only
    // the same version; the peer's index follows from it: see `owns_all`).
    let mut share: Option<(Arc<Layout>, bool)> = None;
    let mut scan: Option<Scan> = None;
    while !cluster.stopping() {
        let layout = cluster.layout();
        let Some(me_in_layout) = layout
            .nodes
            .iter()
            .position(|n| n.addr == peer.addr)
            .map(|i| i as NodeIdx)
        else {
            // Not (or no longer) a node of the layout: nothing to send.
            scan = None;
            held = Held::default();
            held.publish(&peer);
            peer.acked.store(store.last_seq(), SeqCst);
            from = peer.acked.load(SeqCst) + 1;
            cluster.acked.notify_waiters();
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        // A scan made from another position or under another layout decided for nothing
        // that is still to send.
        if scan
            .as_ref()
            .is_some_and(|s| s.from != from || s.layout != layout.version)
        {
            scan = None;
        }
        let (read_from, room) = scan
            .as_ref()
            .map_or((from, BATCH_CHANGES), |s| (s.next, BATCH_CHANGES - s.read));
        let batch = match store.feed_read(read_from, &ChangeFilter::default(), room) {
            Ok(b) => b,
            Err(StoreError::FeedTruncated { .. }) => {
                scan = None;
                // The feed moved past this peer's position while it was away: send the state
                // newer than what it acknowledged, then go on from the end of the feed.
                let resume = store.last_seq() + 1;
                match resync(&cluster, &peer, &layout, me_in_layout, None).await {
                    Ok(()) => {
                        peer.acked.store(resume - 1, SeqCst);
                        from = resume;
                        cluster.acked.notify_waiters();
                    }
                    Err(e) => {
                        tracing::debug!(peer = %peer.addr, error = %e, "resync failed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "change feed read failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        // The peer restarted and asked for what it may have lost (all of it when it started
        // empty). The flag stays set until it is done: `flush_to` waits for that.
        if peer.resync_all.load(SeqCst) {
            scan = None;
            let since = peer.resync_since.load(SeqCst);
            match resync(&cluster, &peer, &layout, me_in_layout, Some(since)).await {
                Ok(()) => {
                    // In addition to what its position says it lacks, which the stream
                    // goes on sending from there.
                    tracing::info!(peer = %peer.addr, since, "resent what a restarted peer may have lost");
                    peer.resync_all.store(false, SeqCst);
                    cluster.acked.notify_waiters();
                }
                Err(e) => {
                    tracing::debug!(peer = %peer.addr, error = %e, "full resync failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
            continue;
        }
        // The peer takes over partitions: everything held back for it goes now (and what the
        // scan would hold is decided again).
        if peer.force_release.swap(false, SeqCst) && !held.changes.is_empty() {
            scan = None;
            let all: Vec<Arc<Change>> = held.changes.drain(..).map(|(c, _)| c).collect();
            held.bytes = 0;
            held.send_or_keep(&cluster, &peer, all).await;
            held.publish(&peer);
            cluster.acked.notify_waiters();
            continue;
        }
        // Held changes whose fate is now known: send or drop them.
        if !held.changes.is_empty()
            && peer.up()
            && held.checked.is_none_or(|t| t.elapsed() >= HELD_RECHECK)
        {
            let due = held.release(&cluster, &peer.addr, layout.version);
            held.send_or_keep(&cluster, &peer, due).await;
            held.publish(&peer);
            if held.changes.is_empty() {
                cluster.acked.notify_waiters();
            }
        }
        if scan.is_none() && batch.next_seq <= from {
            // Nothing new: local writes notify `written`; changes from elsewhere (expiry
            // sweeps, imports) are picked up within the poll interval.
            let woken = cluster.written.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if store.last_seq() < from {
                // One poll timer re-armed only once it fired: a fresh timer per idle wait is
                // earlier than the timer wheel's next wake and so costs the runtime a wake-up
                // of its own (an eventfd write and an extra epoll round) on every write.
                if poll.is_elapsed() {
                    poll.as_mut()
                        .reset(tokio::time::Instant::now() + Duration::from_millis(50));
                }
                tokio::select! {
                    _ = woken => {}
                    _ = poll.as_mut() => {}
                }
            }
            continue;
        }
        let all = match &share {
            Some((l, all)) if Arc::ptr_eq(l, &layout) => *all,
            _ => {
                let all = owns_all(&layout, me_in_layout);
                share = Some((layout.clone(), all));
                all
            }
        };
        let s = scan.get_or_insert_with(|| Scan::new(from, layout.version, all));
        s.take(
            &cluster,
            &layout,
            me_in_layout,
            &peer.addr,
            held.bytes,
            batch,
        );
        let keep = |held: &mut Held, s: Scan| {
            if !s.hold.is_empty() {
                held.bytes += s.hold_bytes;
                held.changes.extend(s.hold);
                held.publish(&peer);
            }
        };
        if s.out.is_empty() {
            let next = s.next;
            keep(&mut held, scan.take().expect("scanned"));
            peer.acked.store(next - 1, SeqCst);
            from = next;
            cluster.acked.notify_waiters();
            continue;
        }
        if !peer.up() {
            // Hinted handoff: keep the position and wait for the peer to return (and decide
            // again then).
            scan = None;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        // No write waits for this peer (another replica answers them): gather more (each
        // batch costs the peer a wake-up, and its acknowledgement one here) for up to
        // `LINGER`.
        if s.read < BATCH_CHANGES && !s.cut && s.out.len() < LINGER_CHANGES {
            if lazy.as_ref().is_none_or(|(v, _)| *v != layout.version) {
                let me = layout.nodes.iter().position(|n| n.addr == cluster.addr);
                let l = me.and_then(|me| lazy_target(&layout, me as NodeIdx, me_in_layout));
                lazy = Some((layout.version, l));
            }
            let counted_on_up = lazy
                .as_ref()
                .and_then(|(_, l)| l.as_ref())
                .is_some_and(|l| l.iter().all(|&i| cluster.peer_up(&layout.node(i).addr)));
            let until = *linger.get_or_insert_with(|| tokio::time::Instant::now() + LINGER);
            if counted_on_up && tokio::time::Instant::now() < until {
                tokio::time::sleep_until(until).await;
                continue;
            }
            // A stream a quorum counts on gathers too while no write waits for what it has
            // (gateway sets, whose quorum the gateway collects itself): until a write waits.
            let unwaited = || cluster.quorum_wait.load(SeqCst) < from;
            if unwaited() && tokio::time::Instant::now() < until {
                let woken = cluster.written.notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                // Checked again once listening: a write that started to wait in between
                // notified before this could hear it.
                if unwaited() {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => {}
                        _ = woken => {}
                    }
                }
                continue;
            }
        }
        linger = None;
        let s = scan.take().expect("scanned");
        let next = s.next;
        match send(&cluster, &peer, &s.out, next - 1).await {
            Ok(()) => {
                // What the batch holds back is published before the acknowledged version and
                // position move past it (the saved stream positions rely on that order).
                let max_version = s.max_version;
                keep(&mut held, s);
                peer.acked_version.store(max_version.ts, SeqCst);
                peer.acked.store(next - 1, SeqCst);
                from = next;
                backoff = Duration::from_millis(50);
                cluster.acked.notify_waiters();
            }
            Err(e) => {
                // Read and decided again from `from` next time.
                tracing::debug!(peer = %peer.addr, error = %e, "replication batch failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// What a stream has read of its feed since its position and decided about, while it gathers
/// a batch (`LINGER`): each wake reads on from `next` instead of deciding every change again
/// (which made gathering cost the square of the batch). Decisions are not revisited before
/// the batch goes: one to send that would now be skipped costs a copy the receiver ignores;
/// one to hold is looked at again with the held changes.
struct Scan {
    /// The stream position the scan started at.
    from: u64,
    /// The layout version its decisions were made under.
    layout: u64,
    /// Whether the peer owns every partition of that layout (see `owns_all`).
    all: bool,
    /// Where to read on.
    next: u64,
    /// Changes read so far.
    read: usize,
    /// To send.
    out: Vec<Arc<Change>>,
    bytes: usize,
    max_version: Version,
    /// To hold back once the batch's position is passed (a batch that fails is read again,
    /// and must not hold its copies twice).
    hold: Vec<(Arc<Change>, Origin)>,
    hold_bytes: usize,
    /// The byte cap cut the batch: `next` is after the last change taken.
    cut: bool,
}

impl Scan {
    fn new(from: u64, layout: u64, all: bool) -> Scan {
        Scan {
            from,
            layout,
            all,
            next: from,
            read: 0,
            out: Vec::new(),
            bytes: 0,
            max_version: Version::ZERO,
            hold: Vec::new(),
            hold_bytes: 0,
            cut: false,
        }
    }

    /// Decide about the changes of `batch`, read at `self.next` (`held_bytes`: what the
    /// stream holds back already).
    fn take(
        &mut self,
        cluster: &Cluster,
        layout: &Layout,
        peer_idx: NodeIdx,
        peer: &str,
        held_bytes: usize,
        batch: k2hdkc_storage::FeedBatch,
    ) {
        self.read += batch.changes.len();
        self.next = batch.next_seq.max(self.next);
        // The origins of the imports, looked up in one short critical section (imports
        // insert into the same map).
        let origins: Vec<Option<Origin>> = {
            let o = cluster.origins.lock().expect("lock");
            batch
                .changes
                .iter()
                .map(|c| {
                    (c.kind == ChangeKind::Import)
                        .then(|| o.get(&c.seq).cloned())
                        .flatten()
                        .map(|origin| cluster.settled_origin(c.seq, origin))
                })
                .collect()
        };
        let mut views = Views::default();
        for (c, o) in batch.changes.iter().zip(origins) {
            let Some(c) = for_peer(c, layout, peer_idx, self.all) else {
                continue;
            };
            if c.kind == ChangeKind::Import {
                match fate(cluster, &mut views, o.as_ref(), peer, layout.version) {
                    Fate::Skip => continue,
                    Fate::Hold if held_bytes + self.hold_bytes + c.weight() <= HELD_BYTES => {
                        self.hold_bytes += c.weight();
                        self.hold.push((c, o.expect("held changes have an origin")));
                        continue;
                    }
                    Fate::Hold | Fate::Send => {}
                }
            }
            self.bytes += c.weight();
            self.max_version = self.max_version.max(c.version);
            let seq = c.seq;
            self.out.push(c);
            if self.bytes > BATCH_BYTES {
                self.cut = true;
                self.next = seq + 1;
                break;
            }
        }
    }
}

/// Send `peer` every record and queue item of its partitions newer than what it acknowledged
/// (or than `since`).
async fn resync(
    cluster: &Cluster,
    peer: &Peer,
    layout: &Layout,
    idx: NodeIdx,
    since: Option<u64>,
) -> Result<(), String> {
    let since = Version {
        ts: since.unwrap_or_else(|| peer.acked_version.load(SeqCst)),
        node: 0,
    };
    let changes = state_since(cluster, since).await?;
    let all = owns_all(layout, idx);
    let mine: Vec<Arc<Change>> = changes
        .into_iter()
        .map(Arc::new)
        .filter_map(|c| for_peer(&c, layout, idx, all))
        .collect();
    send_all(cluster, peer, &mine).await
}

/// Send changes in batches (a transfer or resync: receivers do not forward them).
pub async fn send_all<C: std::borrow::Borrow<Change>>(
    cluster: &Cluster,
    peer: &Peer,
    changes: &[C],
) -> Result<(), String> {
    send_all_at(cluster, peer, changes, 0).await
}

/// Send changes in batches marked with stream `position` (0: a transfer or resync).
async fn send_all_at<C: std::borrow::Borrow<Change>>(
    cluster: &Cluster,
    peer: &Peer,
    changes: &[C],
    position: u64,
) -> Result<(), String> {
    let mut start = 0;
    while start < changes.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < changes.len() && end - start < BATCH_CHANGES && bytes < BATCH_BYTES {
            bytes += changes[end].borrow().weight();
            end += 1;
        }
        send(cluster, peer, &changes[start..end], position).await?;
        start = end;
    }
    Ok(())
}

/// This node's records and queue items newer than `since`, read off the async threads.
async fn state_since(cluster: &Cluster, since: Version) -> Result<Vec<Change>, String> {
    let store = cluster.store.clone();
    cluster
        .blocking(move || store.changes_since_version(since, &ChangeFilter::default()))
        .await
}

/// State (one change per record or queue item) bucketed by partition, as imports.
fn by_partition(state: Vec<Change>) -> Vec<Vec<Change>> {
    let mut out: Vec<Vec<Change>> = vec![Vec::new(); PARTITIONS];
    for c in state {
        if let Some(op) = c.ops.first() {
            out[partition_of(op.key())].push(Change {
                kind: ChangeKind::Import,
                ..c
            });
        }
    }
    out
}

/// Send this node's state of partitions `parts` (of the leaves set in `masks`, one mask per
/// partition; see `super::leaf_of`) newer than the tombstone grace time to `target`
/// (anti-entropy repair; receivers keep what is newer). Older records stay: a node that lacks
/// one may have forgotten its delete, and resending it would bring it back.
pub async fn push_partitions(
    cluster: &Cluster,
    target: &str,
    parts: &[usize],
    masks: Option<&[u64]>,
) -> Result<usize, String> {
    let grace_ms = u64::from(cluster.store.tombstone_grace_secs()) * 1000;
    let since = cluster.version_ago(grace_ms);
    let mut by_partition = by_partition(state_since(cluster, since).await?);
    let mine: Vec<Change> = parts
        .iter()
        .enumerate()
        .filter(|&(_, &p)| p < PARTITIONS)
        .flat_map(|(i, &p)| {
            let mask = masks.and_then(|m| m.get(i)).copied().unwrap_or(u64::MAX);
            std::mem::take(&mut by_partition[p])
                .into_iter()
                .filter(move |c| {
                    c.ops
                        .first()
                        .is_some_and(|op| mask & (1 << super::leaf_of(op.key())) != 0)
                })
        })
        .collect();
    let peer = cluster.peer(target);
    send_all(cluster, &peer, &mine).await?;
    Ok(mine.len())
}

/// How far back the previous owners other than a partition's transfer source send their
/// records to its new owners (see [`transfer`]): past the time a copy can be held back at
/// one owner while the others lack it (a gateway set waits at most `DIRECT_HOLD_MS` for the
/// primary's copy, or until the primary is found down).
const TRANSFER_RECENT_MS: u64 = 15_000;

/// Transfers for the movement of layout `l` that this node is the source of: for every
/// partition whose owners changed, the first live previous owner sends the partition's state to
/// each new owner, and every other live previous owner its records of the last
/// [`TRANSFER_RECENT_MS`]: a copy that only one of them holds when the transfer runs (held
/// back for a primary that then crashed) reaches the new owner too (last-writer-wins merges
/// them). Returns when all are done (or the layout changed, or the cluster stops).
pub async fn transfer(cluster: Arc<Cluster>, l: Arc<Layout>) -> Result<usize, String> {
    let Some(prev) = l.previous.as_ref() else {
        return Ok(0);
    };
    let Some(me) = l.index_of(&cluster.me) else {
        return Ok(0);
    };
    // (partition, target, whole state or only recent records) this node must send.
    let mut jobs: Vec<(usize, NodeIdx, bool)> = Vec::new();
    for (p, before) in prev.iter().enumerate() {
        if !before.contains(&me) {
            continue;
        }
        let source = before
            .iter()
            .copied()
            .find(|&o| o == me || cluster.peer_up(&l.node(o).addr));
        for &t in &l.assignment[p] {
            if !before.contains(&t) {
                jobs.push((p, t, source == Some(me)));
            }
        }
    }
    cluster.transfer_total.store(jobs.len() as u64, SeqCst);
    cluster.transfer_done.store(0, SeqCst);
    if jobs.is_empty() {
        return Ok(0);
    }
    let recent = cluster.version_ago(TRANSFER_RECENT_MS);
    // Only the recent records where this node sends no partition whole.
    let since = if jobs.iter().any(|&(_, _, whole)| whole) {
        Version::ZERO
    } else {
        recent
    };
    let by_partition = by_partition(state_since(&cluster, since).await?);
    let mut sent = 0usize;
    // Whole partitions first, each target's together, then the recent records: a new owner
    // that is down holds up only what comes after its own jobs.
    jobs.sort_by_key(|&(p, t, whole)| (!whole, t, p));
    for (p, t, whole) in jobs {
        let addr = l.node(t).addr.clone();
        let peer = cluster.peer(&addr);
        let part: Vec<&Change> = by_partition[p]
            .iter()
            .filter(|c| whole || c.version > recent)
            .collect();
        loop {
            if cluster.stopping() || cluster.layout().version != l.version {
                return Err("layout changed during the transfer".into());
            }
            match send_all(&cluster, &peer, &part).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::debug!(partition = p, target = %addr, error = %e, "transfer retry");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
        sent += part.len();
        cluster.transfer_done.fetch_add(1, SeqCst);
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k2hdkc_layout::Change as LayoutChange;
    use k2hdkc_storage::{Store, StoreConfig};

    /// Leaves split each partition evenly (they use other key-hash bits than partitions),
    /// and two owners' leaf lists differ exactly where their digests do.
    #[test]
    fn leaves_split_partitions_and_masks_mark_differences() {
        use super::super::{LEAVES, differing_leaves, leaf_of};
        let mut per_leaf = vec![0usize; LEAVES];
        let mut in_partition_zero = std::collections::BTreeSet::new();
        for i in 0..64_000u32 {
            let k = format!("key-{i}");
            per_leaf[leaf_of(k.as_bytes())] += 1;
            if partition_of(k.as_bytes()) == 0 {
                in_partition_zero.insert(leaf_of(k.as_bytes()));
            }
        }
        for (l, n) in per_leaf.iter().enumerate() {
            assert!((900..1100).contains(n), "leaf {l}: {n} of 64,000 keys");
        }
        assert!(in_partition_zero.len() > 30, "{in_partition_zero:?}");
        let a: Vec<String> = (0..LEAVES).map(|i| format!("{i:016x}")).collect();
        let mut b = a.clone();
        assert_eq!(differing_leaves(Some(&a), Some(&b)), 0);
        b[3] = "x".into();
        b[63] = "y".into();
        assert_eq!(differing_leaves(Some(&a), Some(&b)), 1 << 3 | 1 << 63);
        // An owner without leaves (an older node) is compared whole.
        assert_eq!(differing_leaves(Some(&a), None), u64::MAX);
        assert_eq!(
            differing_leaves(Some(&a), Some(&a[..10].to_vec())),
            u64::MAX
        );
    }

    fn layout(nodes: usize, replicas: u8, w: u8) -> Layout {
        let mut l = Layout::new("t");
        for i in 0..nodes {
            let n =
                k2hdkc_layout::Node::joining(format!("n{i}"), format!("127.0.0.1:{}", 9000 + i));
            l = l.apply(&LayoutChange::Join { node: n }).unwrap();
        }
        l = l
            .apply(&LayoutChange::SetReplication {
                replicas,
                write_quorum: w,
                read_quorum: w,
            })
            .unwrap();
        l = l.apply(&LayoutChange::Attach { names: vec![] }).unwrap();
        l.apply(&LayoutChange::Complete).unwrap_or(l)
    }

    #[test]
    fn each_write_counts_on_enough_streams() {
        // Three nodes, three copies, W = 2: each node counts on the next one round the order
        // and lets the stream to the other linger.
        let l = layout(3, 3, 2);
        for me in 0..3u16 {
            let next = (me + 1) % 3;
            let other = (me + 2) % 3;
            assert_eq!(lazy_target(&l, me, next), None, "me {me}");
            assert_eq!(lazy_target(&l, me, other), Some(vec![next]), "me {me}");
        }
        // W = N: every copy is waited for.
        let l = layout(3, 3, 3);
        for me in 0..3u16 {
            for peer in (0..3u16).filter(|&p| p != me) {
                assert_eq!(lazy_target(&l, me, peer), None);
            }
        }
        // More nodes than copies: every partition this node owns still has W - 1 owners
        // whose streams do not linger.
        let l = layout(5, 3, 2);
        for me in 0..5u16 {
            let eager: Vec<u16> = (0..5u16)
                .filter(|&p| p != me && lazy_target(&l, me, p).is_none())
                .collect();
            for p in 0..PARTITIONS {
                let set = l.owners_of_partition(p).write_set();
                if set.contains(&me) {
                    let n = set.iter().filter(|i| eager.contains(i)).count();
                    assert!(n >= 1, "partition {p} of {me}: {set:?} eager {eager:?}");
                }
            }
        }
    }

    #[test]
    fn a_peer_that_owns_everything_gets_what_the_keys_say() {
        let s = Store::open(StoreConfig::memory()).unwrap();
        for i in 0..200 {
            let k = format!("key{i}");
            s.set(
                k.as_bytes(),
                b"v",
                k2hdkc_storage::SetMode::Set,
                &Default::default(),
            )
            .unwrap();
            if i % 7 == 0 {
                s.delete(k.as_bytes(), None).unwrap();
            }
        }
        let changes: Vec<Arc<Change>> = s
            .feed_read(1, &ChangeFilter::default(), 1000)
            .unwrap()
            .changes;
        assert!(changes.len() > 200);
        for (nodes, replicas) in [(3, 3), (3, 2), (4, 3), (5, 2), (1, 1)] {
            let l = layout(nodes, replicas, 1);
            for peer in 0..nodes as NodeIdx {
                let all = owns_all(&l, peer);
                assert_eq!(
                    all,
                    usize::from(replicas) >= nodes,
                    "{nodes} nodes {replicas} copies"
                );
                for c in &changes {
                    assert_eq!(
                        for_peer(c, &l, peer, all),
                        for_peer(c, &l, peer, false),
                        "{nodes} nodes {replicas} copies, peer {peer}, change {}",
                        c.seq
                    );
                }
            }
        }
    }

    #[test]
    fn batches_round_trip_and_refuse_garbage() {
        let s = Store::open(StoreConfig::memory()).unwrap();
        s.set(
            b"a",
            b"1",
            k2hdkc_storage::SetMode::Set,
            &Default::default(),
        )
        .unwrap();
        s.delete(b"a", None).unwrap();
        let changes = s.changes_since_version(Version::ZERO, &ChangeFilter::default());
        assert!(!changes.is_empty());
        let b = encode_batch(&changes);
        assert_eq!(decode_batch(&b).unwrap(), changes);
        assert!(decode_batch(&[]).is_err());
        assert!(
            decode_batch(&[9, 0, 0, 0, 0])
                .unwrap_err()
                .contains("format 9")
        );
        assert!(decode_batch(&b[..b.len() - 1]).is_err());
        let mut longer = b.clone();
        longer.push(0);
        assert!(decode_batch(&longer).is_err());
    }
}
