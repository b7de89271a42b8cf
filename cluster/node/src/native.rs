//! The native front-end: executes native-protocol frames (see `k2hdkc_proto::native`) against
//! the store. The connection loop, batching and limits are shared with the memcached front-end
//! (`memcached::serve`); this module owns only the mapping of ops to store calls and of store
//! errors to [`Status`] codes.
//!
//! Invariants: every frame gets exactly one reply (none for a successful quiet request), in
//! order; a malformed frame is answered `BadRequest` and skipped whole; only a bad magic byte
//! (the stream is out of step) closes the connection.

use std::sync::atomic::Ordering::Relaxed;

use k2hdkc_proto::native::{
    self as wire, Args, Expiry, FLAG_QUIET, FrameParse, HEADER_LEN, MAGIC_REQUEST, Op, Status, Tag,
};
use k2hdkc_storage::{
    DeleteOutcome, Error as StoreError, Expire, QueueOpts, SetMode, SetOutcome, WriteOpts,
};

use crate::memcached::Batch;
use crate::metrics::Cmd;
use crate::server::Shared;

/// The largest frame body accepted: a maximal value plus room for keys and options.
pub fn max_body(shared: &Shared) -> usize {
    shared
        .config
        .limits
        .max_request_bytes
        .max(shared.config.storage.max_value_bytes + (256 << 10))
}

/// Execute every complete frame in `buf` (in a cluster, forwarding frames for keys owned
/// elsewhere unless `local_only`).
pub(crate) fn process(shared: &Shared, buf: &[u8], out: &mut Vec<u8>, local_only: bool) -> Batch {
    let mut b = Batch::default();
    let m = &shared.metrics;
    let max = max_body(shared);
    // Whether a request of this batch waits to run (`Deferred::Later`): the ones after it
    // that would run here wait behind it.
    let mut waiting = false;
    while b.consumed < buf.len() {
        match wire::parse_frame(&buf[b.consumed..], MAGIC_REQUEST, max) {
            FrameParse::Incomplete => break,
            FrameParse::Frame { header, body } => {
                let frame = &buf[b.consumed..b.consumed + HEADER_LEN + body.len()];
                b.consumed += HEADER_LEN + body.len();
                b.requests += 1;
                let start = out.len();
                let ok = if header.version != wire::VERSION {
                    m.protocol_errors.fetch_add(1, Relaxed);
                    let msg = format!(
                        "protocol version {} is not supported; this server speaks {}",
                        header.version,
                        wire::VERSION
                    );
                    wire::write_error(out, Status::UnsupportedVersion, header.id, &msg);
                    false
                } else if let Some(c) = &shared.cluster {
                    dispatch(
                        shared,
                        c,
                        &header,
                        body,
                        frame,
                        out,
                        &mut b.deferred,
                        &mut waiting,
                        local_only,
                    )
                } else {
                    exec(shared, header.code, header.id, body, out)
                };
                if ok && header.flags & FLAG_QUIET != 0 {
                    out.truncate(start);
                }
            }
            FrameParse::TooLarge {
                header,
                consumed,
                skip,
            } => {
                m.protocol_errors.fetch_add(1, Relaxed);
                b.consumed += consumed;
                b.requests += 1;
                let msg = format!(
                    "frame body of {} bytes is over the limit of {max} bytes",
                    header.body_len
                );
                wire::write_error(out, Status::TooLarge, header.id, &msg);
                if skip > 0 {
                    b.swallow = skip;
                    break;
                }
            }
            FrameParse::BadMagic(byte) => {
                m.protocol_errors.fetch_add(1, Relaxed);
                let msg = format!("bad magic byte 0x{byte:02x}: not a k2hdkc native frame");
                wire::write_error(out, Status::BadRequest, 0, &msg);
                b.consumed = buf.len();
                b.close = true;
            }
        }
    }
    b
}

/// The wire status of a store error.
pub fn status_of(e: &StoreError) -> Status {
    match e {
        StoreError::NotFound => Status::NotFound,
        StoreError::NotSameValue => Status::NotSameValue,
        StoreError::NotSameType { .. } => Status::NotSameType,
        StoreError::NotNumeric => Status::NotNumeric,
        StoreError::TooLarge { .. } => Status::TooLarge,
        StoreError::BadPassPhrase => Status::BadPassPhrase,
        StoreError::InvalidArgument(_) => Status::InvalidArgument,
        StoreError::Closed(_) => Status::Unavailable,
        _ => Status::ServerError,
    }
}

/// A failed request: status and message.
struct Fail(Status, String);

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Fail {
        let s = status_of(&e);
        // Internal details (paths, errno) stay in the server log.
        if s == Status::ServerError {
            tracing::warn!(error = %e, "native request failed");
            return Fail(s, "internal storage failure".into());
        }
        Fail(s, e.to_string())
    }
}

fn fail(s: Status, msg: impl Into<String>) -> Fail {
    Fail(s, msg.into())
}

fn need<T>(v: Option<T>, what: &str) -> Result<T, Fail> {
    v.ok_or_else(|| fail(Status::BadRequest, format!("missing field {what}")))
}

fn expire_of(e: Option<Expiry>) -> Expire {
    match e.unwrap_or_default() {
        Expiry::Default => Expire::Default,
        Expiry::Keep => Expire::Keep,
        Expiry::Never => Expire::Never,
        Expiry::At(t) => Expire::At(t),
        Expiry::After(s) => Expire::After(s),
    }
}

fn reply_expire(expire: u32) -> Expiry {
    if expire == 0 {
        Expiry::Never
    } else {
        Expiry::At(expire)
    }
}

fn write_opts<'a>(a: &Args<'a>) -> WriteOpts<'a> {
    WriteOpts {
        flags: a.flags,
        expire: a.expire.map_or(Expire::Default, |e| expire_of(Some(e))),
        pass: a.pass,
        encrypt: a.encrypt,
        cas: a.cas,
    }
}

fn cmd_of(op: Op) -> Cmd {
    use Op::*;
    match op {
        Get | Attrs | ReadAt | History => Cmd::Get,
        Set | WriteAt => Cmd::Set,
        Delete | DeleteTree => Cmd::Delete,
        Touch => Cmd::Touch,
        Incr | Decr => Cmd::Arith,
        Subkeys | SetSubkeys | ClearSubkeys | AddSubkey | RemoveSubkey | Rename => Cmd::Subkey,
        QueuePush | QueuePop | QueuePeek | QueueRemove | QueueLen => Cmd::Queue,
        CounterInit | CounterGet | CounterCas | CounterAdd => Cmd::Counter,
        Scan => Cmd::Scan,
        FlushAll => Cmd::Flush,
        Noop | Hello | Stats | Cluster | Replicate | Forward | Check | Put => Cmd::Other,
    }
}

/// Execute one frame; returns whether it succeeded (quiet requests send nothing then).
fn exec(shared: &Shared, code: u8, id: u32, body: &[u8], out: &mut Vec<u8>) -> bool {
    let start = out.len();
    let r = match Op::from_u8(code) {
        None => Err(fail(Status::BadRequest, format!("unknown op 0x{code:02x}"))),
        Some(op) => {
            shared.metrics.cmd(cmd_of(op));
            match Args::decode(body) {
                Err(e) => Err(fail(Status::BadRequest, e.0)),
                Ok(a) => {
                    let s = wire::begin_response(out, Status::Ok, id);
                    let r = run(shared, op, &a, out);
                    if r.is_ok() {
                        wire::finish_response(out, s);
                    }
                    r
                }
            }
        }
    };
    match r {
        Ok(()) => true,
        Err(Fail(status, msg)) => {
            out.truncate(start);
            wire::write_error(out, status, id, &msg);
            false
        }
    }
}

fn outcome(o: SetOutcome, out: &mut Vec<u8>) -> Result<(), Fail> {
    match o {
        SetOutcome::Stored { cas } => {
            wire::put_u64(out, Tag::Cas, cas);
            Ok(())
        }
        SetOutcome::NotStored => Err(fail(Status::NotStored, "not stored")),
        SetOutcome::Exists => Err(fail(Status::Exists, "cas mismatch")),
        SetOutcome::NotFound => Err(fail(Status::NotFound, "no such key")),
    }
}

fn not_found() -> Fail {
    fail(Status::NotFound, "no such key")
}

fn to_usize(v: u64, what: &str) -> Result<usize, Fail> {
    usize::try_from(v).map_err(|_| fail(Status::InvalidArgument, format!("{what} is too large")))
}

/// The body of a successful reply is appended to `out`; an error leaves `out` to be truncated.
fn run(shared: &Shared, op: Op, a: &Args<'_>, out: &mut Vec<u8>) -> Result<(), Fail> {
    let store = &shared.store;
    let m = &shared.metrics;
    let key = || need(a.key, "Key");
    let width = || need(a.width, "Width");
    match op {
        Op::Noop => {}
        Op::Hello => {
            wire::put(out, Tag::Message, crate::memcached::VERSION.as_bytes());
            wire::put_u64(out, Tag::Count, u64::from(wire::VERSION));
        }
        Op::Stats => {
            let mut o = serde_json::Map::new();
            for (k, v) in crate::memcached::general_stats(shared) {
                o.insert(k.to_string(), v.into());
            }
            let text = serde_json::Value::Object(o).to_string();
            wire::put(out, Tag::Message, text.as_bytes());
        }
        Op::Get => {
            let k = key()?;
            let hit = store.get_with(k, a.pass, |v| {
                wire::put(out, Tag::Value, v.data);
                wire::put_u32(out, Tag::Flags, v.meta.flags);
                wire::put_u64(out, Tag::Cas, v.meta.version.ts);
                wire::put_expire(out, reply_expire(v.meta.expire));
            });
            match hit? {
                Some(()) => m.get_hits.fetch_add(1, Relaxed),
                None => {
                    m.get_misses.fetch_add(1, Relaxed);
                    return Err(not_found());
                }
            };
        }
        Op::Attrs => {
            let at = store.attrs(key()?)?.ok_or_else(not_found)?;
            wire::put(out, Tag::Kind, at.kind.as_bytes());
            wire::put_u32(out, Tag::Flags, at.flags);
            wire::put_u64(out, Tag::Cas, at.cas);
            if let Ok(v) = at.version.parse::<k2hdkc_storage::Version>() {
                wire::put_version(out, v.ts, v.node);
            }
            wire::put_expire(out, reply_expire(at.expire));
            wire::put_u32(out, Tag::Created, at.created);
            wire::put_u64(out, Tag::Modified, at.modified_ms);
            wire::put_u8(out, Tag::Encrypted, at.encrypted.into());
            wire::put_u64(out, Tag::StoredLen, at.stored_len as u64);
            wire::put_u64(out, Tag::SubkeyCount, at.subkeys as u64);
            wire::put_u64(out, Tag::HistoryCount, at.history as u64);
        }
        Op::ReadAt => {
            let off = to_usize(need(a.offset, "Offset")?, "Offset")?;
            let len = a.length.map(|l| to_usize(l, "Length")).transpose()?;
            let v = store
                .read_at(key()?, off, len, a.pass)?
                .ok_or_else(not_found)?;
            wire::put(out, Tag::Value, &v);
        }
        Op::History => {
            for (v, data) in store.history(key()?, a.pass)? {
                wire::put_version(out, v.ts, v.node);
                wire::put(out, Tag::Value, &data);
            }
        }
        Op::Set => {
            let mode = match a.mode.unwrap_or(0) {
                0 => SetMode::Set,
                1 => SetMode::Add,
                2 => SetMode::Replace,
                3 => SetMode::Append,
                _ => SetMode::Prepend,
            };
            let v = need(a.value, "Value")?;
            outcome(store.set(key()?, v, mode, &write_opts(a))?, out)?;
        }
        Op::WriteAt => {
            let off = to_usize(need(a.offset, "Offset")?, "Offset")?;
            let v = need(a.value, "Value")?;
            outcome(store.write_at(key()?, off, v, &write_opts(a))?, out)?;
        }
        Op::Delete => match store.delete(key()?, a.cas)? {
            DeleteOutcome::Deleted => {}
            DeleteOutcome::NotFound => return Err(not_found()),
            DeleteOutcome::Exists => return Err(fail(Status::Exists, "cas mismatch")),
        },
        Op::DeleteTree => {
            let n = store.delete_recursive(key()?)?;
            wire::put_u64(out, Tag::Count, n as u64);
        }
        Op::Touch => {
            let e = expire_of(Some(need(a.expire, "Expire")?));
            let want = a.want_value.unwrap_or(false);
            let v = store
                .touch(key()?, e, want, a.pass)?
                .ok_or_else(not_found)?;
            if want {
                wire::put(out, Tag::Value, &v.data);
                wire::put_u32(out, Tag::Flags, v.flags);
            }
            wire::put_u64(out, Tag::Cas, v.cas);
            wire::put_expire(out, reply_expire(v.expire));
        }
        Op::Incr | Op::Decr => {
            let d = need(a.delta, "Delta")?;
            let (n, cas) = store
                .incr_decimal(key()?, d, op == Op::Decr)?
                .ok_or_else(not_found)?;
            wire::put_u64(out, Tag::Count, n);
            wire::put_u64(out, Tag::Cas, cas);
        }
        Op::Subkeys => {
            for c in store.subkeys(key()?)?.ok_or_else(not_found)? {
                wire::put(out, Tag::Child, &c);
            }
        }
        Op::SetSubkeys => store.set_subkeys(key()?, &a.children)?,
        Op::ClearSubkeys => {
            if !store.clear_subkeys(key()?)? {
                return Err(not_found());
            }
        }
        Op::AddSubkey => {
            let child = need(a.children.first().copied(), "Child")?;
            if a.children.len() > 1 {
                return Err(fail(Status::BadRequest, "AddSubkey takes one Child"));
            }
            let opts = write_opts(a);
            store.add_subkey(key()?, child, a.value.map(|v| (v, &opts)))?;
        }
        Op::RemoveSubkey => {
            let child = need(a.children.first().copied(), "Child")?;
            if !store.remove_subkey(key()?, child, a.delete_child.unwrap_or(false))? {
                return Err(fail(Status::NotFound, "not a sub-key of this key"));
            }
        }
        Op::Rename => store.rename(key()?, need(a.to, "To")?, a.parent, a.pass)?,
        Op::QueuePush => {
            let opts = QueueOpts {
                expire: expire_of(a.expire),
                pass: a.pass,
                encrypt: a.encrypt,
            };
            let v = need(a.value, "Value")?;
            let fifo = a.fifo.unwrap_or(true);
            let n = store.queue_push(key()?, a.item_key, v, fifo, &opts)?;
            wire::put_u64(out, Tag::Count, n as u64);
        }
        Op::QueuePop | Op::QueuePeek => {
            let k = key()?;
            let item = if op == Op::QueuePop {
                store.queue_pop(k, a.pass)?
            } else {
                store.queue_peek(k, a.pass)?
            };
            let item = item.ok_or_else(|| fail(Status::NotFound, "queue is empty"))?;
            wire::put(out, Tag::Value, &item.value);
            if let Some(ik) = &item.key {
                wire::put(out, Tag::ItemKey, ik);
            }
        }
        Op::QueueRemove => {
            let n = to_usize(need(a.count, "Count")?, "Count")?;
            let removed = store.queue_remove(key()?, n)?;
            wire::put_u64(out, Tag::Count, removed as u64);
        }
        Op::QueueLen => {
            wire::put_u64(out, Tag::Count, store.queue_len(key()?)? as u64);
        }
        Op::CounterInit => {
            let v = need(a.new, "New")?;
            store.counter_init(key()?, width()?, v, expire_of(a.expire))?;
            wire::put_u64(out, Tag::Count, v);
        }
        Op::CounterGet => {
            let v = store.counter_get(key()?, width()?)?.ok_or_else(not_found)?;
            wire::put_u64(out, Tag::Count, v);
        }
        Op::CounterCas => {
            let (old, new) = (need(a.old, "Old")?, need(a.new, "New")?);
            store.counter_cas(key()?, width()?, old, new)?;
            wire::put_u64(out, Tag::Count, new);
        }
        Op::CounterAdd => {
            let d = need(a.delta, "Delta")? as i64;
            let v = store.counter_add(key()?, width()?, d)?;
            wire::put_u64(out, Tag::Count, v);
        }
        Op::Scan => {
            let limit = a.limit.unwrap_or(1000).clamp(1, 100_000) as usize;
            let page = store.scan(a.prefix.unwrap_or_default(), a.after, limit)?;
            for k in &page.keys {
                wire::put(out, Tag::Key, k);
            }
            if let Some(n) = &page.next {
                wire::put(out, Tag::Next, n);
            }
        }
        Op::FlushAll => {
            let n = store.flush_all()?;
            wire::put_u64(out, Tag::Count, n as u64);
        }
        Op::Cluster | Op::Replicate | Op::Forward | Op::Check | Op::Put => {
            return Err(fail(
                Status::Unavailable,
                "this node is not part of a cluster (start it with --join)",
            ));
        }
    }
    Ok(())
}

// ---- cluster ---------------------------------------------------------------------------------

use std::sync::Arc;

use crate::cluster::{Cluster, Route};
use crate::routing::{Deferred, MODE_NATIVE, error_reply};

/// Keys whose partitions a request writes (for the write quorum).
/// Reads whose reply a quorum read compares across owners (see `cluster::repair`).
fn is_read(op: Op) -> bool {
    matches!(
        op,
        Op::Get | Op::Attrs | Op::ReadAt | Op::History | Op::Subkeys | Op::CounterGet
    )
}

fn written_partitions(a: &Args<'_>) -> Vec<usize> {
    let mut p: Vec<usize> = a
        .key
        .into_iter()
        .chain(a.to)
        .chain(a.parent)
        .chain(a.children.iter().copied())
        .map(k2hdkc_layout::partition_of)
        .collect();
    p.sort_unstable();
    p.dedup();
    p
}

/// Answer Unavailable for a request from a peer whose `Deadline` passed; returns whether it
/// did (then the request must not run).
fn refused_expired(c: &Cluster, a: &Args<'_>, id: u32, out: &mut Vec<u8>) -> bool {
    let expired = a.deadline.is_some_and(|d| c.expired(d));
    if expired {
        wire::write_error(
            out,
            Status::Unavailable,
            id,
            "the request's deadline passed",
        );
    }
    expired
}

/// A native set a gateway may write to the owners itself: unconditional, unencrypted, at the
/// cluster's write quorum.
fn plain_set(op: Op, a: &Args<'_>) -> bool {
    op == Op::Set
        && a.value.is_some()
        && a.mode.is_none_or(|m| m == 0)
        && a.cas.is_none()
        && a.pass.is_none()
        && a.encrypt.is_none()
        && a.level.is_none_or(|l| l == 0 || l == 2)
}

/// Run one frame in a cluster: the cluster's own ops, or a data op here or at its primary.
#[allow(clippy::too_many_arguments)]
fn dispatch(
    shared: &Shared,
    c: &Arc<Cluster>,
    header: &wire::Header,
    body: &[u8],
    frame: &[u8],
    out: &mut Vec<u8>,
    deferred: &mut Vec<Deferred>,
    waiting: &mut bool,
    local_only: bool,
) -> bool {
    let id = header.id;
    let Some(op) = Op::from_u8(header.code) else {
        return exec(shared, header.code, id, body, out);
    };
    let a = match Args::decode(body) {
        Ok(a) => a,
        Err(_) => return exec(shared, header.code, id, body, out),
    };
    if matches!(
        op,
        Op::Cluster | Op::Replicate | Op::Forward | Op::Check | Op::Put
    ) && !c.authorized(a.pass)
    {
        shared.metrics.protocol_errors.fetch_add(1, Relaxed);
        tracing::warn!(op = %op, "refused a cluster request without the cluster credential");
        wire::write_error(
            out,
            Status::BadPassPhrase,
            id,
            "cluster authentication failed: this cluster needs its secret (cluster.secret_file)",
        );
        return false;
    }
    match op {
        Op::Cluster => {
            shared.metrics.cmd(Cmd::Other);
            let request = a
                .message
                .and_then(|m| serde_json::from_slice::<serde_json::Value>(m).ok());
            match request {
                Some(request) => {
                    deferred.push(Deferred::Control {
                        at: out.len(),
                        id,
                        request,
                    });
                    true
                }
                None => {
                    wire::write_error(out, Status::BadRequest, id, "Cluster needs a JSON Message");
                    false
                }
            }
        }
        Op::Replicate => {
            shared.metrics.cmd(Cmd::Set);
            let Some(v) = a.value else {
                wire::write_error(out, Status::BadRequest, id, "Replicate needs a Value");
                return false;
            };
            match c.import(v, a.message, a.count.unwrap_or(0)) {
                Ok(n) => {
                    let s = wire::begin_response(out, Status::Ok, id);
                    wire::put_u64(out, Tag::Count, n as u64);
                    wire::finish_response(out, s);
                    true
                }
                Err(e) => {
                    wire::write_error(out, Status::BadRequest, id, &e);
                    false
                }
            }
        }
        Op::Put => {
            shared.metrics.cmd(Cmd::Set);
            // As for `Forward`: its sender stopped waiting and took another way.
            if refused_expired(c, &a, id, out) {
                return false;
            }
            let (Some(key), Some(value), Some((ts, node)), Some(level)) =
                (a.key, a.value, a.version, a.level)
            else {
                wire::write_error(
                    out,
                    Status::BadRequest,
                    id,
                    "Put needs Key, Value, Version and Level",
                );
                return false;
            };
            let sender = a.to.and_then(|t| std::str::from_utf8(t).ok());
            if level != 1 && sender.is_none() {
                wire::write_error(out, Status::BadRequest, id, "a replica's Put needs To");
                return false;
            }
            let req = crate::cluster::DirectPut {
                key,
                value,
                flags: a.flags.unwrap_or(0),
                expire: expire_of(a.expire),
                version: k2hdkc_storage::Version { ts, node },
                primary: level == 1,
                sender: sender.unwrap_or_default(),
            };
            match c.put_direct(req) {
                Ok(()) => {
                    let s = wire::begin_response(out, Status::Ok, id);
                    wire::finish_response(out, s);
                    true
                }
                Err((status, msg, version)) => {
                    let s = wire::begin_response(out, status, id);
                    if let Some(v) = version {
                        wire::put_version(out, v.ts, v.node);
                    }
                    wire::put(out, Tag::Message, msg.as_bytes());
                    wire::finish_response(out, s);
                    false
                }
            }
        }
        Op::Check => {
            shared.metrics.cmd(Cmd::Other);
            let Some(v) = a.value else {
                wire::write_error(out, Status::BadRequest, id, "Check needs a Value");
                return false;
            };
            match crate::cluster::repair::answer(c, v) {
                Ok((versions, newer)) => {
                    let s = wire::begin_response(out, Status::Ok, id);
                    wire::put(out, Tag::Value, &versions);
                    if let Some(b) = &newer {
                        wire::put(out, Tag::Value, b);
                    }
                    wire::finish_response(out, s);
                }
                Err(e) => wire::write_error(out, Status::BadRequest, id, &e),
            }
            false
        }
        Op::Forward => {
            // Its sender has stopped waiting and reported a failure (it sat in a queue, or on
            // a link that was down): running it now would give it a version newer than writes
            // acknowledged since.
            if refused_expired(c, &a, id, out) {
                return false;
            }
            // What it waits for or routes on must not outlive this request's own deadline.
            let deadline = a
                .deadline
                .or_else(crate::routing::inherited_deadline)
                .unwrap_or_else(|| c.fresh_deadline());
            if !local_only && (c.in_takeover() || c.catching_up() || *waiting) {
                // This node is collecting what the other owners hold (a takeover, or catching
                // up after a start, pause or partition): run it once that is done, if that is
                // in time (and after the batch's requests before it that wait, even if the
                // wait ended meanwhile).
                deferred.push(Deferred::Later {
                    at: out.len(),
                    frame: frame.to_vec(),
                    deadline,
                });
                *waiting = true;
                return true;
            }
            let (Some(v), Some(mode)) = (a.value, a.mode) else {
                wire::write_error(out, Status::BadRequest, id, "Forward needs Value and Mode");
                return false;
            };
            // The sender routes this partition here. If in this node's view another node leads
            // it, route it on from here, so one node leads a partition at a time as far as
            // this node can tell (if that node is gone, the retry lands here after a
            // takeover); else run it here.
            let here = local_only
                || a.count
                    .is_none_or(|p| p >= k2hdkc_layout::PARTITIONS as u64 || c.leads(p as usize));
            let m = match mode {
                0 => crate::memcached::Mode::Text,
                1 => crate::memcached::Mode::Binary,
                _ => crate::memcached::Mode::Native,
            };
            let limits = crate::memcached::limits_of(shared);
            let mut inner = Vec::new();
            let batch = crate::routing::with_deadline(Some(deadline), || {
                crate::memcached::process(shared, m, &limits, v, &mut inner, here)
            });
            deferred.push(Deferred::Nested {
                at: out.len(),
                id,
                inner,
                pending: batch.deferred,
            });
            true
        }
        Op::Scan if !local_only && a.level != Some(1) => {
            // Cluster-wide: every node's keys of the partitions it leads, merged (Level one
            // asks for this node's keys only: what the merge sends to each node).
            deferred.push(Deferred::Scan {
                at: out.len(),
                id,
                prefix: a.prefix.unwrap_or_default().to_vec(),
                after: a.after.map(<[u8]>::to_vec),
                limit: a.limit.unwrap_or(1000).clamp(1, 100_000),
            });
            true
        }
        Op::Noop | Op::Hello | Op::Stats | Op::Scan => exec(shared, header.code, id, body, out),
        Op::FlushAll => {
            if !local_only {
                deferred.push(Deferred::Broadcast {
                    mode: MODE_NATIVE,
                    bytes: frame.to_vec(),
                });
            }
            exec(shared, header.code, id, body, out)
        }
        _ => {
            let Some(key) = a.key else {
                return exec(shared, header.code, id, body, out);
            };
            let route = if local_only {
                Route::Local
            } else {
                c.route(key)
            };
            match route {
                Route::Local if !local_only && (c.in_takeover() || *waiting) => {
                    *waiting = true;
                    deferred.push(Deferred::Later {
                        at: out.len(),
                        frame: frame.to_vec(),
                        deadline: crate::routing::inherited_deadline()
                            .unwrap_or_else(|| c.fresh_deadline()),
                    });
                    false
                }
                Route::Local => {
                    let before = shared.store.last_seq();
                    let at = out.len();
                    // Level: 1 one (answer at once; replicas follow), 3 all owners, else the
                    // cluster's write (or read) quorum.
                    let level = a.level.unwrap_or(0);
                    let seen = if is_read(op) {
                        crate::memcached::read_version(shared, c, level, key)
                    } else {
                        None
                    };
                    if exec(shared, header.code, id, body, out) && header.flags & FLAG_QUIET != 0 {
                        out.truncate(at);
                    }
                    let after = shared.store.last_seq();
                    if let Some(version) = seen
                        && after == before
                    {
                        deferred.push(Deferred::ReadCheck {
                            at,
                            len: out.len() - at,
                            key: key.to_vec(),
                            version,
                            all: level == 3,
                            mode: MODE_NATIVE,
                            rerun: frame.to_vec(),
                            strip_end: false,
                            error: error_reply(MODE_NATIVE, frame, "read quorum not reached"),
                        });
                    }
                    if after > before && level != 1 {
                        deferred.push(Deferred::Quorum {
                            at,
                            len: out.len() - at,
                            seq: after,
                            all: level == 3,
                            partitions: written_partitions(&a),
                            error: error_reply(
                                MODE_NATIVE,
                                frame,
                                "replication quorum not reached",
                            ),
                        });
                    }
                    // Quiet handling is done above, before the range was recorded.
                    false
                }
                Route::Remote(peer) if c.direct_writes() && plain_set(op, &a) => {
                    let version = shared.store.next_version();
                    let mut reply = Vec::new();
                    if header.flags & FLAG_QUIET == 0 {
                        let s = wire::begin_response(&mut reply, Status::Ok, id);
                        wire::put_u64(&mut reply, Tag::Cas, version.ts);
                        wire::finish_response(&mut reply, s);
                    }
                    deferred.push(Deferred::Direct(Box::new(crate::routing::DirectSet {
                        at: out.len(),
                        peer,
                        partition: k2hdkc_layout::partition_of(key),
                        key: key.to_vec(),
                        value: a.value.unwrap_or_default().to_vec(),
                        flags: a.flags.unwrap_or(0),
                        expire: expire_of(a.expire),
                        version,
                        reply,
                        mode: MODE_NATIVE,
                        bytes: frame.to_vec(),
                        error: error_reply(
                            MODE_NATIVE,
                            frame,
                            "the owner of the key did not answer",
                        ),
                    })));
                    false
                }
                Route::Remote(peer) => {
                    deferred.push(Deferred::Forward {
                        at: out.len(),
                        peer,
                        partition: k2hdkc_layout::partition_of(key),
                        key: k2hdkc_layout::key_hash(key),
                        mode: MODE_NATIVE,
                        bytes: frame.to_vec(),
                        strip_end: false,
                        error: error_reply(
                            MODE_NATIVE,
                            frame,
                            "the owner of the key did not answer",
                        ),
                        deadline: crate::routing::inherited_deadline(),
                    });
                    // Quiet requests that fail still answer: the forwarded reply decides.
                    false
                }
                Route::Unavailable(why) => {
                    wire::write_error(out, Status::Unavailable, id, &why);
                    false
                }
            }
        }
    }
}
