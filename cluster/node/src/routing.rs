//! Replies that depend on other nodes: the glue between the protocol front-ends and
//! [`crate::cluster`].
//!
//! The front-ends stay synchronous: while parsing a batch they write every local reply into
//! the output buffer at once and leave a [`Deferred`] for each reply that needs a peer (a
//! request forwarded to its key's primary, the replication quorum of a local write, a cluster
//! control request). [`resolve`] then runs all of them concurrently and splices their results
//! into the buffer at their positions, so replies keep request order and pipelining still
//! works across nodes.
//!
//! Invariants: every deferred item owns a distinct position or range of the buffer; a range is
//! either kept as it is or replaced whole by the request's error reply; nothing is written for
//! a request twice.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use k2hdkc_proto::memcached::binary;
use k2hdkc_proto::native::{self as wire, Args, Op, Status, Tag};
use serde_json::Value as Json;

use crate::cluster::{Cluster, Peer, Route};
use crate::server::Shared;

/// Protocol of a forwarded request.
pub const MODE_TEXT: u8 = 0;
/// Binary memcached.
pub const MODE_BINARY: u8 = 1;
/// Native.
pub const MODE_NATIVE: u8 = 2;

/// A reply that needs a peer.
pub(crate) enum Deferred {
    /// Keep `out[at..at + len]` (the reply of a local write) if the changes up to `seq` reach
    /// the write quorum of `partitions`, else put `error` there.
    Quorum {
        at: usize,
        len: usize,
        seq: u64,
        partitions: Vec<usize>,
        all: bool,
        error: Vec<u8>,
    },
    /// Insert at `at` the reply of `bytes` run by `peer` (`error` if that fails). A text
    /// retrieval piece drops the peer's trailing `END\r\n` (`strip_end`).
    Forward {
        at: usize,
        peer: Arc<Peer>,
        partition: usize,
        /// [`k2hdkc_layout::key_hash`] of the request's key (a gateway batch keeps a set and
        /// a later request of the same key in order by it; see `direct_all`).
        key: u64,
        mode: u8,
        bytes: Vec<u8>,
        strip_end: bool,
        error: Vec<u8>,
        /// Not run by the peer after this (this node's clock, unix ms); `None`: the run
        /// budget from when it is sent.
        deadline: Option<u64>,
    },
    /// Insert at `at` the native reply (request id `id`) of a cluster control request.
    Control { at: usize, id: u32, request: Json },
    /// Insert at `at` the native reply (request id `id`) of a forwarded request this node ran:
    /// `inner` is its reply with its own pending items.
    Nested {
        at: usize,
        id: u32,
        inner: Vec<u8>,
        pending: Vec<Deferred>,
    },
    /// Send `bytes` to every other node and ignore the replies (flush_all).
    Broadcast { mode: u8, bytes: Vec<u8> },
    /// A cluster-wide scan page (native request id `id`), inserted at `at`.
    Scan {
        at: usize,
        id: u32,
        prefix: Vec<u8>,
        after: Option<Vec<u8>>,
        limit: u32,
    },
    /// Run the native `frame` once this node's takeover sync is done (see
    /// `Cluster::begin_takeover`) and insert its reply at `at`; if that is not before
    /// `deadline` (this node's clock, unix ms), put an error there instead.
    Later {
        at: usize,
        frame: Vec<u8>,
        deadline: u64,
    },
    /// Keep `out[at..at + len]` (the reply of a local read of `key`, which found `version`)
    /// if the read quorum's other owners have nothing newer (see `cluster::repair`); if one
    /// had, run `rerun` (in `mode`) again and put its reply there; if too few answered, put
    /// `error` there.
    ReadCheck {
        at: usize,
        len: usize,
        key: Vec<u8>,
        version: k2hdkc_storage::Version,
        all: bool,
        mode: u8,
        rerun: Vec<u8>,
        strip_end: bool,
        error: Vec<u8>,
    },
    /// A plain set this gateway writes to the key's owners itself (see [`DirectSet`]).
    Direct(Box<DirectSet>),
}

/// A plain set a gateway writes to the key's primary and to the replicas its write quorum
/// needs, at once, with a version it chose (`Op::Put`, see `Cluster::put_direct`): one
/// network hop less than through the primary. It succeeds when the primary and `W - 1`
/// replicas wrote it (then `reply` goes at `at`); else, and when data moves or too few
/// owners are up, it is forwarded to the primary as `bytes` (its `error` if that fails too),
/// which writes it with a version of its own.
pub(crate) struct DirectSet {
    pub at: usize,
    /// The primary as this gateway routes the key.
    pub peer: Arc<Peer>,
    pub partition: usize,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub flags: u32,
    pub expire: k2hdkc_storage::Expire,
    pub version: k2hdkc_storage::Version,
    pub reply: Vec<u8>,
    pub mode: u8,
    pub bytes: Vec<u8>,
    pub error: Vec<u8>,
}

thread_local! {
    /// Off while a read that a quorum check found stale runs again (it must not check again).
    static READ_CHECKS: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
    /// The deadline of the forwarded request being run (see [`with_deadline`]).
    static DEADLINE: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// Run `f` (which parses a forwarded request) so that the forwards it makes inherit
/// `deadline`: a request routed on by this node must not outlive its first sender's wait.
pub(crate) fn with_deadline<T>(deadline: Option<u64>, f: impl FnOnce() -> T) -> T {
    /// Puts the outer value back even if `f` panics (the thread lives on in the runtime).
    struct Restore(Option<u64>);
    impl Drop for Restore {
        fn drop(&mut self) {
            DEADLINE.with(|d| d.set(self.0));
        }
    }
    let _restore = Restore(DEADLINE.with(|d| d.replace(deadline)));
    f()
}

/// The deadline a forward made now inherits (`None` outside a forwarded request).
pub(crate) fn inherited_deadline() -> Option<u64> {
    DEADLINE.with(std::cell::Cell::get)
}

/// Whether local reads should record a [`Deferred::ReadCheck`] now.
pub(crate) fn read_checks_on() -> bool {
    READ_CHECKS.with(std::cell::Cell::get)
}

/// Run `bytes` (one request in `mode`) against this node's store only, without read checks.
fn rerun_local(shared: &Arc<Shared>, mode: u8, bytes: &[u8]) -> (Vec<u8>, Vec<Deferred>) {
    let m = match mode {
        MODE_TEXT => crate::memcached::Mode::Text,
        MODE_BINARY => crate::memcached::Mode::Binary,
        _ => crate::memcached::Mode::Native,
    };
    let limits = crate::memcached::limits_of(shared);
    let mut o = Vec::new();
    /// Turns checks back on even if the run panics (the thread lives on in the runtime).
    struct On;
    impl Drop for On {
        fn drop(&mut self) {
            READ_CHECKS.with(|c| c.set(true));
        }
    }
    READ_CHECKS.with(|c| c.set(false));
    let on = On;
    let b = crate::memcached::process(shared, m, &limits, bytes, &mut o, true);
    drop(on);
    (o, b.deferred)
}

impl Deferred {
    fn at(&self) -> usize {
        match self {
            Deferred::Quorum { at, .. }
            | Deferred::Forward { at, .. }
            | Deferred::Control { at, .. }
            | Deferred::Nested { at, .. }
            | Deferred::Later { at, .. }
            | Deferred::ReadCheck { at, .. }
            | Deferred::Scan { at, .. } => *at,
            Deferred::Direct(d) => d.at,
            Deferred::Broadcast { .. } => usize::MAX,
        }
    }
}

/// The error reply of a request, in its protocol.
pub(crate) fn error_reply(mode: u8, raw: &[u8], msg: &str) -> Vec<u8> {
    let mut out = Vec::new();
    match mode {
        MODE_BINARY => {
            let h = binary::Header::decode(raw);
            let (op, opaque) = h.map_or((0, 0), |h| (h.opcode, h.opaque));
            binary::write_error(&mut out, op, binary::Status::TemporaryFailure, opaque);
        }
        MODE_NATIVE => {
            let id = wire::Header::parse(raw).map_or(0, |h| h.id);
            wire::write_error(&mut out, Status::Unavailable, id, msg);
        }
        _ => {
            out.extend_from_slice(b"SERVER_ERROR ");
            out.extend_from_slice(msg.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

/// Run `bytes` on `peer` and return its reply bytes.
pub(crate) async fn forward(
    cluster: &Cluster,
    peer: &Peer,
    mode: u8,
    bytes: &[u8],
) -> Result<Vec<u8>, String> {
    cluster.stats.forwarded.fetch_add(1, Relaxed);
    let deadline = cluster.fresh_deadline();
    let args = Args {
        value: Some(bytes),
        mode: Some(mode),
        pass: cluster.token.as_deref(),
        deadline: peer.peer_time(deadline),
        ..Default::default()
    };
    // The pool's own timeout (the peer's request timeout) kills the connection, so a request
    // given up on is not sent later; a second, outer timeout here could fire first and leave
    // it queued.
    let r = peer
        .forwards
        .request(Op::Forward, &args)
        .await
        .map_err(|e| match e {
            k2hdkc_client::ClientError::Timeout(_) => {
                format!("{} did not answer in time", peer.addr)
            }
            e => e.to_string(),
        });
    match r {
        Ok(r) if r.status() == Some(Status::Ok) => {
            Ok(r.values.into_iter().next().unwrap_or_default())
        }
        Ok(r) => {
            cluster.stats.forward_errors.fetch_add(1, Relaxed);
            Err(r.message.unwrap_or_else(|| "forwarding refused".into()))
        }
        Err(e) => {
            cluster.stats.forward_errors.fetch_add(1, Relaxed);
            Err(e)
        }
    }
}

/// Forward several requests to one peer in one pipeline (so they run in request order);
/// returns each request's reply bytes (its error reply where it failed).
async fn forward_all(
    cluster: &Arc<Cluster>,
    peer: &Peer,
    pieces: Vec<Piece>,
) -> Vec<(Slot, Result<Vec<u8>, Piece>)> {
    let mut p = peer.forwards.pipeline();
    push_pieces(cluster, peer, &mut p, &pieces);
    // Bounded by the pool's timeouts (connect, then the request timeout, which kills the
    // connection so nothing given up on is sent later: see `forward`).
    let replies = p.run().await;
    piece_results(cluster, peer, pieces, replies)
}

/// Queue forwards on a pipeline to `peer`.
fn push_pieces(
    cluster: &Cluster,
    peer: &Peer,
    p: &mut k2hdkc_client::Pipeline<'_>,
    pieces: &[Piece],
) {
    cluster
        .stats
        .forwarded
        .fetch_add(pieces.len() as u64, Relaxed);
    for piece in pieces {
        p.push(
            Op::Forward,
            &Args {
                value: Some(&piece.bytes),
                mode: Some(piece.mode),
                // The partition, so the receiver can tell whether it leads it (see
                // `Cluster::begin_takeover`).
                count: Some(piece.partition as u64),
                pass: cluster.token.as_deref(),
                // On the peer's clock; unknown before the first heartbeat (then the peer
                // bounds only the time it holds the request back itself).
                deadline: peer.peer_time(piece.deadline),
                ..Default::default()
            },
        );
    }
}

/// The replies of forwards queued by [`push_pieces`]: each piece's reply bytes, its error
/// reply, or (the peer refused the connection, so it ran none of them) the piece itself, to
/// route again.
fn piece_results(
    cluster: &Arc<Cluster>,
    peer: &Peer,
    pieces: Vec<Piece>,
    replies: PipelineReplies,
) -> Vec<(Slot, Result<Vec<u8>, Piece>)> {
    let replies = match replies {
        Ok(r) => r,
        Err(k2hdkc_client::ClientError::Connect { refused, .. }) => {
            if refused {
                // Nothing listens on its port: its process is gone.
                peer.suspect();
                cluster.begin_takeover("a peer refused connections");
            } else {
                // No connection in time: its link or host is down, maybe from here only
                // (the others may still reach it, and it may still lead its partitions, so
                // this node must not take them over: heartbeats and the takeover's
                // collection decide that). Its requests go through another node meanwhile.
                peer.relay();
            }
            return pieces.into_iter().map(|p| (p.k, Err(p))).collect();
        }
        Err(e) => {
            tracing::debug!(peer = %peer.addr, error = %e, "forward failed");
            return pieces
                .into_iter()
                .map(|p| {
                    cluster.stats.forward_errors.fetch_add(1, Relaxed);
                    (p.k, Ok(failed_piece(&p, &peer.addr, &e)))
                })
                .collect();
        }
    };
    let mut replies = replies.into_iter();
    pieces
        .into_iter()
        .map(|piece| {
            let r = match replies.next() {
                Some(Ok(r)) if r.status() == Some(Status::Ok) => {
                    let mut v = r.values.into_iter().next().unwrap_or_default();
                    if piece.strip_end && v.ends_with(b"END\r\n") {
                        v.truncate(v.len() - 5);
                    }
                    v
                }
                other => {
                    cluster.stats.forward_errors.fetch_add(1, Relaxed);
                    let why = match other {
                        Some(Ok(r)) => {
                            let status = r.status();
                            r.message.unwrap_or_else(|| format!("status {status:?}"))
                        }
                        Some(Err(e)) => e.to_string(),
                        None => "no reply".to_string(),
                    };
                    failed_piece(&piece, &peer.addr, &why)
                }
            };
            (piece.k, Ok(r))
        })
        .collect()
}

/// The error reply of a forward that failed, saying why (a timeout, the owner's own error),
/// so that a client, and a test's log, can tell the causes apart. Empty for a quiet request,
/// as its `error`.
fn failed_piece(piece: &Piece, peer: &str, why: &dyn std::fmt::Display) -> Vec<u8> {
    if piece.error.is_empty() {
        return Vec::new();
    }
    let msg = format!("the owner of the key did not answer ({peer}: {why})");
    // One line: the text protocol's error ends at the first line break.
    let msg: String = msg
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    error_reply(piece.mode, &piece.bytes, &msg)
}

/// What a pipeline's run gives.
type PipelineReplies = Result<
    Vec<Result<k2hdkc_client::Reply, k2hdkc_client::ClientError>>,
    k2hdkc_client::ClientError,
>;

/// Run gateway sets ([`DirectSet`]) and the batch's `forwards`: one pipeline per owner with
/// its `Op::Put`s and forwards in request order, all owners at once; the sets that fell short
/// then go to their primary as forwards. Returns each set's and forward's reply, or the
/// pieces whose peer refused the connection (to route again, as for [`forward_all`]).
async fn direct_all(
    cluster: &Arc<Cluster>,
    store: &k2hdkc_storage::Store,
    items: Vec<(Slot, Box<DirectSet>)>,
    forwards: Forwards,
) -> Vec<(Slot, Result<Vec<u8>, Piece>)> {
    let deadline = cluster.fresh_deadline();
    // A set whose key another request of the batch is about goes through the primary in line
    // with it: a set written directly that then fell short would go through the primary
    // after a later request ran there, so a read after it would miss it and an append would
    // be lost under it (see `demote_followed`).
    let (items, forwards) = demote_followed(items, forwards, deadline);
    let l = cluster.layout();
    let need = l.effective_write_quorum();
    // Per owner: which sets go there (and whether as their primary), and the batch's
    // forwards to it: one pipeline each, in request order, so that a read after a set of the
    // same key on one client connection runs after it at the primary.
    let mut per_peer: std::collections::BTreeMap<String, PeerBatch> = Default::default();
    for (addr, (peer, pieces)) in forwards {
        per_peer.insert(addr, (peer, Vec::new(), pieces));
    }
    // Per set: replicas asked (`None`: not sent directly at all).
    let mut asked: Vec<Option<usize>> = Vec::with_capacity(items.len());
    // The batch's owners, routable or not (`None`).
    let mut peers: HashMap<String, Option<Arc<Peer>>> = HashMap::new();
    for (i, (_, d)) in items.iter().enumerate() {
        let o = l.owners_of_partition(d.partition);
        let primary_owns = o.current.iter().any(|&n| l.node(n).addr == d.peer.addr);
        // Routed through a relay (an owner before it is reached only through others): the
        // relay does not lead the partition and would refuse the primary's copy.
        let relayed = o
            .current
            .iter()
            .map(|&n| l.node(n).addr.as_str())
            .take_while(|a| *a != d.peer.addr)
            .any(|a| cluster.known_peer(a).is_some_and(|p| p.is_relayed()));
        if l.moving() || !primary_owns || relayed {
            asked.push(None);
            continue;
        }
        let replicas: Vec<Arc<Peer>> = o
            .current
            .iter()
            .map(|&n| l.node(n).addr.as_str())
            .filter(|a| *a != d.peer.addr && *a != cluster.addr)
            .filter_map(|a| {
                // Looked up once per owner and batch, not once per set.
                peers
                    .entry(a.to_string())
                    .or_insert_with(|| Some(cluster.peer(a)).filter(|p| p.reachable()))
                    .clone()
            })
            .take(need.saturating_sub(1))
            .collect();
        if replicas.len() + 1 < need {
            asked.push(None);
            continue;
        }
        asked.push(Some(replicas.len()));
        per_peer
            .entry(d.peer.addr.clone())
            .or_insert_with(|| (d.peer.clone(), Vec::new(), Vec::new()))
            .1
            .push((i, true));
        for r in replicas {
            per_peer
                .entry(r.addr.clone())
                .or_insert_with(|| (r.clone(), Vec::new(), Vec::new()))
                .1
                .push((i, false));
        }
    }
    let items = Arc::new(items);
    let mut set = tokio::task::JoinSet::new();
    for (_, (peer, list, pieces)) in per_peer {
        let items = items.clone();
        let c = cluster.clone();
        set.spawn(async move {
            // Request order: sets and forwards by their place in the client's batch.
            let mut order: Vec<(Slot, Entry)> = list
                .iter()
                .map(|&(i, primary)| (items[i].0, Entry::Put(i, primary)))
                .chain(pieces.iter().map(|p| (p.k, Entry::Forward)))
                .collect();
            order.sort_by_key(|o| o.0);
            let mut p = peer.forwards.pipeline();
            let mut next_piece = pieces.iter();
            for (_, e) in &order {
                let Entry::Put(i, primary) = *e else {
                    let piece = next_piece.next().expect("one entry per piece");
                    push_pieces(&c, &peer, &mut p, std::slice::from_ref(piece));
                    continue;
                };
                let d = &items[i].1;
                p.push(
                    Op::Put,
                    &Args {
                        key: Some(&d.key),
                        value: Some(&d.value),
                        flags: Some(d.flags),
                        expire: Some(wire_expiry(d.expire)),
                        version: Some((d.version.ts, d.version.node)),
                        count: Some(d.partition as u64),
                        level: Some(if primary { 1 } else { 2 }),
                        to: (!primary).then_some(d.peer.addr.as_bytes()),
                        pass: c.token.as_deref(),
                        deadline: peer.peer_time(deadline),
                        ..Default::default()
                    },
                );
            }
            // The replies in the same order: the sets' here, the forwards' to
            // `piece_results` (which also takes a failed run as it is).
            let mut sets = Vec::with_capacity(list.len());
            let piece_replies = match p.run().await {
                Ok(all) => {
                    let mut all = all.into_iter();
                    let mut forwarded = Vec::with_capacity(pieces.len());
                    for (_, e) in &order {
                        let r = all.next();
                        match *e {
                            Entry::Put(i, primary) => sets.push((i, primary, r)),
                            Entry::Forward => forwarded.extend(r),
                        }
                    }
                    Ok(forwarded)
                }
                Err(e) => {
                    sets.extend(list.iter().map(|&(i, primary)| (i, primary, None)));
                    Err(e)
                }
            };
            let sets = sets
                .into_iter()
                .map(|(i, primary, r)| {
                    let (ok, seen) = match r {
                        Some(Ok(r)) => (
                            r.status() == Some(Status::Ok),
                            r.versions
                                .first()
                                .map(|&(ts, node)| k2hdkc_storage::Version { ts, node }),
                        ),
                        _ => (false, None),
                    };
                    (i, primary, ok, seen)
                })
                .collect::<Vec<_>>();
            let forwarded = if pieces.is_empty() {
                Vec::new()
            } else {
                piece_results(&c, &peer, pieces, piece_replies)
            };
            (sets, forwarded)
        });
    }
    let mut primary_ok = vec![false; items.len()];
    let mut replica_oks = vec![0usize; items.len()];
    let mut out = Vec::with_capacity(items.len());
    while let Some(r) = set.join_next().await {
        let Ok((sets, forwarded)) = r else { continue };
        out.extend(forwarded);
        for (i, primary, ok, seen) in sets {
            if let Some(v) = seen {
                // The primary has a newer version of the key: this clock learns it, so the
                // retry through the primary is rare from now on.
                store.observe_version(v);
            }
            if ok && primary {
                primary_ok[i] = true;
            } else if ok {
                replica_oks[i] += 1;
            }
        }
    }
    let mut fallbacks: std::collections::BTreeMap<String, (Arc<Peer>, Vec<Piece>)> =
        Default::default();
    // (Every task is done: the sets are read through the shared list.)
    for (i, (slot, d)) in items.iter().enumerate() {
        let done = asked[i].is_some_and(|n| primary_ok[i] && replica_oks[i] >= n);
        if done {
            cluster.stats.direct_sent.fetch_add(1, Relaxed);
            out.push((*slot, Ok(d.reply.clone())));
            continue;
        }
        if asked[i].is_some() {
            cluster.stats.direct_fallbacks.fetch_add(1, Relaxed);
            tracing::debug!(
                primary = %d.peer.addr,
                primary_ok = primary_ok[i],
                replicas_ok = replica_oks[i],
                "a gateway set fell short at the owners; sending it through the primary"
            );
        }
        fallbacks
            .entry(d.peer.addr.clone())
            .or_insert_with(|| (d.peer.clone(), Vec::new()))
            .1
            .push(Piece {
                forwarded: false,
                k: *slot,
                partition: d.partition,
                key: k2hdkc_layout::key_hash(&d.key),
                mode: d.mode,
                bytes: d.bytes.clone(),
                strip_end: false,
                error: d.error.clone(),
                deadline,
            });
    }
    for (_, (peer, pieces)) in fallbacks {
        out.extend(forward_all(cluster, &peer, pieces).await);
    }
    out
}

/// Forwards by owner address: the owner and its pieces in request order.
type Forwards = std::collections::BTreeMap<String, (Arc<Peer>, Vec<Piece>)>;

/// Turn the gateway sets whose key another request of the batch is about into forwards to
/// their primary, in request order with the batch's other forwards to it (see `direct_all`).
fn demote_followed(
    items: Vec<(Slot, Box<DirectSet>)>,
    mut forwards: Forwards,
    deadline: u64,
) -> (Vec<(Slot, Box<DirectSet>)>, Forwards) {
    // Requests per key: the forwards and the sets themselves. Any other request of a set's
    // key makes it go in line: one after it would run before a fall-back; one before it
    // could have its read check see the set at a replica first; of two sets, the first
    // falling back would overwrite the second.
    let keys: Vec<u64> = items
        .iter()
        .map(|(_, d)| k2hdkc_layout::key_hash(&d.key))
        .collect();
    let mut count: HashMap<u64, usize> = HashMap::new();
    let pieces = forwards.values().flat_map(|(_, p)| p.iter().map(|p| p.key));
    for key in pieces.chain(keys.iter().copied()) {
        *count.entry(key).or_default() += 1;
    }
    let mut keep = Vec::with_capacity(items.len());
    let mut touched = Vec::new();
    for ((slot, d), key) in items.into_iter().zip(keys) {
        if count.get(&key).is_none_or(|&n| n <= 1) {
            keep.push((slot, d));
            continue;
        }
        let d = *d;
        touched.push(d.peer.addr.clone());
        forwards
            .entry(d.peer.addr.clone())
            .or_insert_with(|| (d.peer.clone(), Vec::new()))
            .1
            .push(Piece {
                forwarded: false,
                k: slot,
                partition: d.partition,
                key,
                mode: d.mode,
                bytes: d.bytes,
                strip_end: false,
                error: d.error,
                deadline,
            });
    }
    for addr in touched {
        if let Some((_, pieces)) = forwards.get_mut(&addr) {
            pieces.sort_by_key(|p| p.k);
        }
    }
    (keep, forwards)
}

/// A gateway set's place in the list, and whether it goes to that owner as to its primary.
type Target = (usize, bool);

/// What one pipeline to one owner carries: its gateway sets and the batch's forwards.
type PeerBatch = (Arc<Peer>, Vec<Target>, Vec<Piece>);

/// One request of a [`PeerBatch`] in request order: a gateway set (its place in the list, and
/// whether to its primary), or the next forward.
#[derive(Clone, Copy)]
enum Entry {
    Put(usize, bool),
    Forward,
}

/// A storage expiry as the native protocol carries it.
fn wire_expiry(e: k2hdkc_storage::Expire) -> k2hdkc_proto::native::Expiry {
    use k2hdkc_proto::native::Expiry;
    use k2hdkc_storage::Expire;
    match e {
        Expire::Default => Expiry::Default,
        Expire::Keep => Expiry::Keep,
        Expire::Never => Expiry::Never,
        Expire::At(t) => Expiry::At(t),
        Expire::After(s) => Expiry::After(s),
    }
}

/// One request forwarded to a peer.
pub(crate) struct Piece {
    /// Made while running a request this node was forwarded itself: routed again (after a
    /// refused connection) straight to the primary, never through a relay, so that it cannot
    /// go back the way it came (see `Cluster::route_partition`).
    forwarded: bool,
    k: Slot,
    partition: usize,
    /// Its key's hash.
    key: u64,
    mode: u8,
    bytes: Vec<u8>,
    strip_end: bool,
    error: Vec<u8>,
    /// Not run after this (this node's clock): set when the piece is first sent, and kept
    /// when it is routed again.
    deadline: u64,
}

/// Where a deferred item's result goes: (piece, edit) in [`resolve_many`].
type Slot = (usize, usize);

/// A checked read's slot, and how to run it again or fail it: (slot, mode, request bytes,
/// strip a trailing `END`, error reply).
type Rerun = (Slot, u8, Vec<u8>, bool, Vec<u8>);

/// An edit of a reply: (position, length, what replaces it; `None` keeps it).
type Edit = (usize, usize, Option<Vec<u8>>);
/// A reply with the items it waits for.
type Pending = (Vec<u8>, Vec<Deferred>);
/// A local write waiting for its quorum: (slot, feed position, partitions, all owners, error).
type QuorumWait = (Slot, u64, Vec<usize>, bool, Vec<u8>);

type Boxed<'a> = Pin<Box<dyn Future<Output = Vec<u8>> + Send + 'a>>;
type BoxedMany<'a> = Pin<Box<dyn Future<Output = Vec<Vec<u8>>> + Send + 'a>>;

/// Run every deferred item and splice the results into `out`.
pub(crate) fn resolve<'a>(
    shared: &'a Arc<Shared>,
    out: Vec<u8>,
    pending: Vec<Deferred>,
) -> Boxed<'a> {
    Box::pin(async move {
        if pending.is_empty() || shared.cluster.is_none() {
            return out;
        }
        resolve_many(shared, vec![(out, pending)])
            .await
            .pop()
            .unwrap_or_default()
    })
}

/// Resolve several replies at once (a connection batch, or every request a peer forwarded in
/// one batch): their waits are shared — one write-quorum wait for all local writes (they
/// are answered together anyway), one version check per owner for all quorum reads, one
/// pipeline per peer for all forwards — then each reply is spliced on its own.
fn resolve_many<'a>(
    shared: &'a Arc<Shared>,
    pieces: Vec<(Vec<u8>, Vec<Deferred>)>,
) -> BoxedMany<'a> {
    Box::pin(async move {
        let Some(cluster) = shared.cluster.clone() else {
            return pieces.into_iter().map(|(o, _)| o).collect();
        };
        let mut outs = Vec::with_capacity(pieces.len());
        let mut edits: Vec<Vec<Edit>> = Vec::with_capacity(pieces.len());
        let mut set = tokio::task::JoinSet::new();
        let mut forwards: std::collections::BTreeMap<String, (Arc<Peer>, Vec<Piece>)> =
            Default::default();
        let mut checks: Vec<Rerun> = Vec::new();
        let mut reads: Vec<crate::cluster::repair::Read> = Vec::new();
        // (slot, error) of every local write, and the wait they share.
        let mut quorum_slots: Vec<QuorumWait> = Vec::new();
        let mut nested: Vec<(Slot, u32, Vec<u8>, Vec<Deferred>)> = Vec::new();
        let mut directs: Vec<(Slot, Box<DirectSet>)> = Vec::new();
        let mut wrote = false;
        // Run of the last `Deferred::Later` so far (see there).
        let mut later_prev: Option<tokio::sync::oneshot::Receiver<()>> = None;
        for (pi, (out, mut pending)) in pieces.into_iter().enumerate() {
            pending.sort_by_key(Deferred::at);
            let mut e = Vec::with_capacity(pending.len());
            for (ei, d) in pending.into_iter().enumerate() {
                let slot = (pi, ei);
                let c = cluster.clone();
                match d {
                    Deferred::Quorum {
                        at,
                        len,
                        seq,
                        partitions,
                        all,
                        error,
                    } => {
                        wrote = true;
                        e.push((at, len, None));
                        quorum_slots.push((slot, seq, partitions, all, error));
                    }
                    Deferred::Forward {
                        at,
                        peer,
                        partition,
                        key,
                        mode,
                        bytes,
                        strip_end,
                        error,
                        deadline,
                    } => {
                        // Grouped per peer below: one pipeline keeps their order.
                        e.push((at, 0, None));
                        let f = forwards
                            .entry(peer.addr.clone())
                            .or_insert_with(|| (peer, Vec::new()));
                        f.1.push(Piece {
                            forwarded: deadline.is_some(),
                            k: slot,
                            partition,
                            key,
                            mode,
                            bytes,
                            strip_end,
                            error,
                            deadline: deadline.unwrap_or_else(|| c.fresh_deadline()),
                        });
                    }
                    Deferred::Direct(d) => {
                        e.push((d.at, 0, None));
                        directs.push((slot, d));
                    }
                    Deferred::Control { at, id, request } => {
                        e.push((at, 0, None));
                        set.spawn(async move {
                            let j = c.control(&request).await;
                            let mut o = Vec::new();
                            let s = wire::begin_response(&mut o, Status::Ok, id);
                            wire::put(&mut o, Tag::Message, j.to_string().as_bytes());
                            wire::finish_response(&mut o, s);
                            (slot, Some(o))
                        });
                    }
                    Deferred::Nested {
                        at,
                        id,
                        inner,
                        pending,
                    } => {
                        wrote = true;
                        e.push((at, 0, None));
                        nested.push((slot, id, inner, pending));
                    }
                    Deferred::Scan {
                        at,
                        id,
                        prefix,
                        after,
                        limit,
                    } => {
                        e.push((at, 0, None));
                        set.spawn(async move {
                            let mut o = Vec::new();
                            match c.scan_all(&prefix, after.as_deref(), limit).await {
                                Ok((keys, next)) => {
                                    let s = wire::begin_response(&mut o, Status::Ok, id);
                                    for k in &keys {
                                        wire::put(&mut o, Tag::Key, k);
                                    }
                                    if let Some(n) = &next {
                                        wire::put(&mut o, Tag::Next, n);
                                    }
                                    wire::finish_response(&mut o, s);
                                }
                                Err(e) => wire::write_error(&mut o, Status::Unavailable, id, &e),
                            }
                            (slot, Some(o))
                        });
                    }
                    Deferred::ReadCheck {
                        at,
                        len,
                        key,
                        version,
                        all,
                        mode,
                        rerun,
                        strip_end,
                        error,
                    } => {
                        // All checks go out together below.
                        e.push((at, len, None));
                        checks.push((slot, mode, rerun, strip_end, error));
                        reads.push(crate::cluster::repair::Read { key, version, all });
                    }
                    Deferred::Later {
                        at,
                        frame,
                        deadline,
                    } => {
                        e.push((at, 0, None));
                        let sh = shared.clone();
                        // They run in request order: each starts once the one before it has
                        // run (its reply may still wait), as they would have without the
                        // wait (a get after a set of its key must see it).
                        let (ran, next) = tokio::sync::oneshot::channel::<()>();
                        let before = later_prev.replace(next);
                        set.spawn(async move {
                            c.wait_takeover_until(deadline).await;
                            if let Some(b) = before {
                                let _ = b.await;
                            }
                            // (Dropping `ran` on an early return lets the next one go too.)
                            if c.in_takeover() || c.catching_up() {
                                // Still not ready (cut off from the majority, say): the
                                // sender stops waiting about now; say so instead of waiting
                                // again.
                                c.stats.expired.fetch_add(1, Relaxed);
                                let msg = "this node is catching up and cannot run requests yet";
                                return (slot, Some(error_reply(MODE_NATIVE, &frame, msg)));
                            }
                            if c.expired(deadline) {
                                // Run now, it would take a version newer than writes
                                // acknowledged after its sender reported it failed.
                                let msg = "the request's deadline passed while this node caught up";
                                return (slot, Some(error_reply(MODE_NATIVE, &frame, msg)));
                            }
                            let mut inner = Vec::new();
                            let batch = with_deadline(Some(deadline), || {
                                crate::native::process(&sh, &frame, &mut inner, false)
                            });
                            let _ = ran.send(());
                            (slot, Some(resolve(&sh, inner, batch.deferred).await))
                        });
                    }
                    Deferred::Broadcast { mode, bytes } => {
                        e.push((usize::MAX, 0, None));
                        let l = c.layout();
                        let addrs: Vec<String> = l
                            .nodes
                            .iter()
                            .map(|n| n.addr.clone())
                            .filter(|a| *a != c.addr)
                            .collect();
                        set.spawn(async move {
                            for a in addrs {
                                let p = c.peer(&a);
                                if let Err(e) = forward(&c, &p, mode, &bytes).await {
                                    tracing::warn!(peer = %a, error = %e, "broadcast failed");
                                }
                            }
                            (slot, None)
                        });
                    }
                }
            }
            outs.push(out);
            edits.push(e);
        }
        if wrote {
            cluster.written.notify_waiters();
        }
        let mut piped = tokio::task::JoinSet::new();
        if directs.is_empty() {
            for (_, (peer, pieces)) in forwards {
                let c = cluster.clone();
                piped.spawn(async move { forward_all(&c, &peer, pieces).await });
            }
        } else {
            // The forwards share the sets' pipelines (see `direct_all`).
            let c = cluster.clone();
            let store = shared.store.clone();
            piped.spawn(async move { direct_all(&c, &store, directs, forwards).await });
        }
        // The shared waits run together, here (no task each).
        let quorum = async {
            if quorum_slots.is_empty() {
                return Vec::new();
            }
            let seq = quorum_slots.iter().map(|q| q.1).max().unwrap_or(0);
            let mut parts: Vec<usize> = quorum_slots
                .iter()
                .flat_map(|q| q.2.iter().copied())
                .collect();
            parts.sort_unstable();
            parts.dedup();
            let all = quorum_slots.iter().any(|q| q.3);
            match cluster.wait_quorum(seq, &parts, all).await {
                Ok(()) => Vec::new(),
                // Some missed it: tell which, each by its own position and partitions.
                Err(e) => {
                    tracing::debug!(error = %e, "write quorum failed");
                    quorum_slots
                        .iter()
                        .filter(|q| !cluster.quorum_met(q.1, &q.2, q.3))
                        .map(|q| (q.0, q.4.clone()))
                        .collect()
                }
            }
        };
        let inner = async {
            if nested.is_empty() {
                return Vec::new();
            }
            let (meta, inners): (Vec<(Slot, u32)>, Vec<Pending>) = nested
                .into_iter()
                .map(|(slot, id, inner, pending)| ((slot, id), (inner, pending)))
                .unzip();
            let replies = resolve_many(shared, inners).await;
            meta.into_iter()
                .zip(replies)
                .map(|((slot, id), inner)| {
                    let mut o = Vec::with_capacity(inner.len() + 16);
                    let s = wire::begin_response(&mut o, Status::Ok, id);
                    wire::put(&mut o, Tag::Value, &inner);
                    wire::finish_response(&mut o, s);
                    (slot, o)
                })
                .collect()
        };
        let checked = async {
            if reads.is_empty() {
                Vec::new()
            } else {
                crate::cluster::repair::check(&cluster, &reads).await
            }
        };
        let (failed_writes, wrapped, verdicts) = tokio::join!(quorum, inner, checked);
        for (slot, error) in failed_writes {
            edits[slot.0][slot.1].2 = Some(error);
        }
        for (slot, o) in wrapped {
            edits[slot.0][slot.1].2 = Some(o);
        }
        while let Some(r) = set.join_next().await {
            if let Ok((slot, r)) = r {
                edits[slot.0][slot.1].2 = r;
            }
        }
        for (i, (slot, mode, rerun, strip_end, error)) in checks.into_iter().enumerate() {
            let r = match verdicts.get(i) {
                Some(crate::cluster::repair::Verdict::Current) => continue,
                Some(crate::cluster::repair::Verdict::Stale) => {
                    let (o, more) = rerun_local(shared, mode, &rerun);
                    let mut o = resolve(shared, o, more).await;
                    if strip_end && o.ends_with(b"END\r\n") {
                        o.truncate(o.len() - 5);
                    }
                    o
                }
                Some(crate::cluster::repair::Verdict::Failed(e)) => {
                    tracing::debug!(error = %e, "read quorum failed");
                    error
                }
                None => error,
            };
            edits[slot.0][slot.1].2 = Some(r);
        }
        let mut retries = Vec::new();
        while let Some(r) = piped.join_next().await {
            if let Ok(results) = r {
                for (slot, r) in results {
                    match r {
                        Ok(bytes) => edits[slot.0][slot.1].2 = Some(bytes),
                        Err(piece) => retries.push(piece),
                    }
                }
            }
        }
        // No connection to the peer opened (it refused one, or none opened in time), so it
        // ran none of them: route them again (the next owner, a relay, or here) once.
        for piece in retries {
            let slot = piece.k;
            // As where the request started: a forwarded one is not relayed (see `Piece`).
            let route_of = |piece: &Piece| {
                let inherited = piece.forwarded.then_some(piece.deadline);
                with_deadline(inherited, || {
                    cluster.route_partition(&cluster.layout(), piece.partition)
                })
            };
            let mut route = route_of(&piece);
            if matches!(route, Route::Local) && cluster.in_takeover() {
                // Collect first; then the partition may have a leader elsewhere again.
                cluster.wait_takeover_until(piece.deadline).await;
                route = route_of(&piece);
            }
            if cluster.expired(piece.deadline) {
                // Its sender stops waiting about now: run it no more (see `Deferred::Later`).
                edits[slot.0][slot.1].2 = Some(piece.error);
                continue;
            }
            let r = match route {
                Route::Local => {
                    let m = match piece.mode {
                        MODE_TEXT => crate::memcached::Mode::Text,
                        MODE_BINARY => crate::memcached::Mode::Binary,
                        _ => crate::memcached::Mode::Native,
                    };
                    let limits = crate::memcached::limits_of(shared);
                    let mut o = Vec::new();
                    let b = with_deadline(Some(piece.deadline), || {
                        crate::memcached::process(shared, m, &limits, &piece.bytes, &mut o, true)
                    });
                    let mut o = resolve(shared, o, b.deferred).await;
                    if piece.strip_end && o.ends_with(b"END\r\n") {
                        o.truncate(o.len() - 5);
                    }
                    o
                }
                Route::Remote(p2) => {
                    let err = piece.error.clone();
                    forward_all(&cluster, &p2, vec![piece])
                        .await
                        .pop()
                        .and_then(|(_, r)| r.ok())
                        .unwrap_or(err)
                }
                Route::Unavailable(_) => piece.error,
            };
            edits[slot.0][slot.1].2 = Some(r);
        }
        outs.into_iter()
            .zip(edits)
            .map(|(out, edits)| splice(&out, edits))
            .collect()
    })
}

/// `out` with each edit's range replaced by its result (kept where it has none).
fn splice(out: &[u8], edits: Vec<Edit>) -> Vec<u8> {
    let mut res = Vec::with_capacity(out.len() + 256);
    let mut pos = 0;
    for (at, len, insert) in edits {
        if at == usize::MAX {
            continue;
        }
        res.extend_from_slice(&out[pos..at]);
        match insert {
            Some(bytes) => res.extend_from_slice(&bytes),
            None => res.extend_from_slice(&out[at..at + len]),
        }
        pos = at + len;
    }
    res.extend_from_slice(&out[pos..]);
    res
}
