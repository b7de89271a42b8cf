//! The memcached front-end: text, meta and binary protocols on one port, detected per
//! connection by the first byte (0x80 is binary).
//!
//! Each read drains every complete request in the buffer, executes them in order, and sends
//! all replies with one write, so pipelined clients cost one system call per batch each way.
//! Malformed requests get memcached's own error replies; a declared data block over the limit
//! is swallowed (never buffered) so the connection stays in step; a connection is closed only
//! where memcached closes it (a line over the limit, a bad binary magic byte, `quit`).

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k2hdkc_proto::memcached::binary::{self, BinParsed, BinRequest, Opcode, Status};
use k2hdkc_proto::memcached::meta::MetaCmd;
use k2hdkc_proto::memcached::text::{self, StoreCmd, TextRequest};
use k2hdkc_proto::memcached::{Limits, Parsed, ProtoError};
use k2hdkc_storage::{DeleteOutcome, Error as StoreError, Expire, SetMode, SetOutcome, WriteOpts};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::metrics::Cmd;
use crate::server::Shared;

/// The version string of `version` replies.
pub const VERSION: &str = concat!("1.6.45-k2hdkc-", env!("CARGO_PKG_VERSION"));
/// memcached treats exptimes up to 30 days as relative.
const REL_EXPTIME_MAX: i64 = 60 * 60 * 24 * 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Text,
    Binary,
    Native,
}

/// What to do after a batch.
#[derive(Default)]
pub(crate) struct Batch {
    /// Bytes of the buffer used up.
    pub consumed: usize,
    /// Bytes still to drop as they arrive (a refused data block or frame).
    pub swallow: usize,
    /// Close the connection after sending the replies.
    pub close: bool,
    /// Requests served (for the latency histogram).
    pub requests: u64,
    /// Replies that need other nodes (cluster mode only).
    pub deferred: Vec<crate::routing::Deferred>,
}

/// Convert a memcached exptime.
pub fn expire_of(exptime: i64) -> Expire {
    match exptime {
        0 => Expire::Default,
        e if e < 0 => Expire::At(1),
        e if e <= REL_EXPTIME_MAX => Expire::After(e as u32),
        e => Expire::At(e.min(u32::MAX as i64) as u32),
    }
}

/// The protocol's form of a storage error.
pub fn store_error(e: &StoreError) -> ProtoError {
    match e {
        StoreError::TooLarge { .. } => ProtoError::TOO_LARGE,
        StoreError::NotNumeric => ProtoError::NON_NUMERIC,
        StoreError::BadPassPhrase => {
            ProtoError::Client("value is encrypted; a pass phrase is needed")
        }
        StoreError::NotSameType { .. } => {
            ProtoError::Client("operation not supported on this kind of value")
        }
        StoreError::InvalidArgument(_) => ProtoError::BAD_FORMAT,
        StoreError::Closed(_) => ProtoError::Server("shutting down"),
        _ => ProtoError::Server("storage failure"),
    }
}

/// Result of an incr/decr shared by the binary and meta protocols.
pub(crate) enum Arith {
    /// The new value and cas.
    Done(u64, u64),
    /// No such key (and none created).
    NotFound,
    /// A compare-cas was given and differs.
    CasMismatch,
}

/// incr/decr with an optional compare-cas and an optional (initial value, expiry) with which a
/// missing key is created, as the binary `incr` and meta `ma N` do.
pub(crate) fn arith(
    store: &k2hdkc_storage::Store,
    key: &[u8],
    delta: u64,
    decr: bool,
    compare_cas: Option<u64>,
    create: Option<(u64, Expire)>,
) -> Result<Arith, StoreError> {
    if let Some(c) = compare_cas {
        match store.attrs(key)? {
            None => return Ok(Arith::NotFound),
            Some(a) if a.cas != c => return Ok(Arith::CasMismatch),
            _ => {}
        }
    }
    if let Some((n, cas)) = store.incr_decimal(key, delta, decr)? {
        return Ok(Arith::Done(n, cas));
    }
    let Some((initial, expire)) = create else {
        return Ok(Arith::NotFound);
    };
    let opts = WriteOpts {
        flags: Some(0),
        expire,
        ..Default::default()
    };
    match store.set(key, initial.to_string().as_bytes(), SetMode::Add, &opts)? {
        SetOutcome::Stored { cas } => Ok(Arith::Done(initial, cas)),
        // Someone created it meanwhile: apply the delta to theirs.
        _ => Ok(store
            .incr_decimal(key, delta, decr)?
            .map_or(Arith::NotFound, |(n, c)| Arith::Done(n, c))),
    }
}

/// Unix seconds at which a value was written.
pub(crate) fn secs_of(v: k2hdkc_storage::Version) -> u32 {
    u32::try_from(v.millis() / 1000).unwrap_or(u32::MAX)
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Drop up to `*swallow` bytes from the front of `buf`; returns whether some remain to drop.
fn drain_swallow(buf: &mut Vec<u8>, swallow: &mut usize) -> bool {
    let k = (*swallow).min(buf.len());
    buf.drain(..k);
    *swallow -= k;
    *swallow > 0
}

/// The memcached parser limits of this server.
pub(crate) fn limits_of(shared: &Shared) -> Limits {
    Limits {
        max_line: 2048,
        max_value: shared.config.storage.max_value_bytes,
        max_keys_per_get: shared.config.limits.max_keys_per_get,
    }
}

/// Serve one client connection until it closes, errs, or the server stops: the native
/// protocol when `native`, else memcached text/meta or binary by the first byte.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin + Send>(
    mut sock: S,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    native: bool,
) -> io::Result<()> {
    let lim = &shared.config.limits;
    let limits = limits_of(&shared);
    let idle = (lim.idle_timeout_secs > 0).then(|| Duration::from_secs(lim.idle_timeout_secs));
    let mut buf: Vec<u8> = Vec::with_capacity(16 << 10);
    let mut out: Vec<u8> = Vec::with_capacity(16 << 10);
    let mut mode = native.then_some(Mode::Native);
    let mut swallow = 0usize;
    let mut deferred = Vec::new();
    let m = &shared.metrics;
    loop {
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 << 10);
        }
        let read = async {
            match idle {
                Some(d) => tokio::time::timeout(d, sock.read_buf(&mut buf))
                    .await
                    .unwrap_or(Ok(0)),
                None => sock.read_buf(&mut buf).await,
            }
        };
        let n = tokio::select! {
            r = read => r?,
            _ = crate::server::stopped(&mut stop) => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        m.bytes_read.fetch_add(n as u64, Relaxed);
        // A node taking over partitions first collects what the other owners hold (native
        // frames wait one by one instead, so replication keeps flowing on those connections).
        if !native
            && let Some(c) = &shared.cluster
            && c.in_takeover()
        {
            c.wait_takeover().await;
        }
        let start = Instant::now();
        let mut requests = 0;
        let mut close = false;
        // Swallowing a refused data block can uncover more requests: go on until none is left.
        loop {
            if swallow > 0 && (drain_swallow(&mut buf, &mut swallow) || buf.is_empty()) {
                break;
            }
            let mode = *mode.get_or_insert(match buf.first() {
                Some(&b) if binary::is_binary(b) => Mode::Binary,
                _ => Mode::Text,
            });
            let mut batch = if shared.blocking_writes {
                tokio::task::block_in_place(|| {
                    process(&shared, mode, &limits, &buf, &mut out, false)
                })
            } else {
                process(&shared, mode, &limits, &buf, &mut out, false)
            };
            deferred.append(&mut batch.deferred);
            buf.drain(..batch.consumed);
            requests += batch.requests;
            swallow = batch.swallow;
            close = batch.close;
            if close || swallow == 0 {
                break;
            }
        }
        if !deferred.is_empty() {
            let pending = std::mem::take(&mut deferred);
            out = crate::routing::resolve(&shared, std::mem::take(&mut out), pending).await;
        }
        if !out.is_empty() {
            sock.write_all(&out).await?;
            m.bytes_written.fetch_add(out.len() as u64, Relaxed);
            out.clear();
        }
        m.observe(start, requests);
        if close {
            let _ = sock.shutdown().await;
            return Ok(());
        }
        if buf.len() > shared.config.limits.max_request_bytes + 4096
            && (mode != Some(Mode::Native) || buf.len() > crate::native::max_body(&shared) + 4096)
        {
            // The parsers bound lines and data; this is a last line of defence.
            return Ok(());
        }
        if buf.capacity() > 1 << 20 && buf.len() < 64 << 10 {
            buf.shrink_to(64 << 10);
        }
    }
}

/// Execute every complete request in `buf`. In a cluster, requests for keys owned elsewhere
/// are forwarded (see [`crate::routing`]) unless `local_only` (this node is running a request
/// forwarded to it).
pub(crate) fn process(
    shared: &Shared,
    mode: Mode,
    limits: &Limits,
    buf: &[u8],
    out: &mut Vec<u8>,
    local_only: bool,
) -> Batch {
    if mode == Mode::Native {
        return crate::native::process(shared, buf, out, local_only);
    }
    let cluster = shared.cluster.clone();
    let mut b = Batch::default();
    let m = &shared.metrics;
    while b.consumed < buf.len() && !b.close {
        let rest = &buf[b.consumed..];
        match mode {
            Mode::Text => match text::parse(rest, limits) {
                Parsed::Incomplete => break,
                Parsed::Done {
                    req:
                        TextRequest::TooLarge {
                            evict,
                            noreply,
                            swallow,
                        },
                    consumed,
                } => {
                    m.cmd(Cmd::Set);
                    b.consumed += consumed;
                    b.requests += 1;
                    if let Some(key) = evict {
                        unlink_failed_set(shared, cluster.as_deref(), local_only, &key);
                    }
                    if !noreply {
                        ProtoError::TOO_LARGE.write(out);
                    }
                    b.swallow = swallow;
                    break;
                }
                Parsed::Done { req, consumed } => {
                    b.consumed += consumed;
                    b.requests += 1;
                    b.close = match &cluster {
                        None => exec_text(shared, req, out),
                        Some(c) => {
                            let raw = &rest[..consumed];
                            routed_text(shared, c, req, raw, out, &mut b.deferred, local_only)
                        }
                    };
                }
                Parsed::Error {
                    err,
                    consumed,
                    swallow,
                    noreply,
                    close,
                } => {
                    m.protocol_errors.fetch_add(1, Relaxed);
                    b.consumed += consumed;
                    b.requests += 1;
                    if !noreply {
                        err.write(out);
                    }
                    b.close = close;
                    if swallow > 0 {
                        b.swallow = swallow;
                        break;
                    }
                }
            },
            // Served by the early return above.
            Mode::Native => break,
            Mode::Binary => match binary::parse(rest, limits.max_value + 512) {
                BinParsed::Incomplete => break,
                BinParsed::Done { req, consumed } => {
                    b.consumed += consumed;
                    b.requests += 1;
                    b.close = match &cluster {
                        None => exec_binary(shared, &req, out),
                        Some(c) => {
                            let raw = &rest[..consumed];
                            routed_binary(shared, c, &req, raw, out, &mut b.deferred, local_only)
                        }
                    };
                }
                BinParsed::Invalid {
                    opaque,
                    opcode,
                    status,
                    consumed,
                    swallow,
                    close,
                } => {
                    m.protocol_errors.fetch_add(1, Relaxed);
                    if status == Status::TooLarge
                        && let Some(key) = binary::oversized_set_key(rest)
                    {
                        unlink_failed_set(shared, cluster.as_deref(), local_only, key);
                    }
                    b.consumed += consumed;
                    b.requests += 1;
                    binary::write_error(out, opcode, status, opaque);
                    b.close = close;
                    if swallow > 0 {
                        b.swallow = swallow as usize;
                        break;
                    }
                }
                BinParsed::BadMagic { .. } => {
                    m.protocol_errors.fetch_add(1, Relaxed);
                    b.consumed = buf.len();
                    b.close = true;
                }
            },
        }
    }
    b
}

fn reply(out: &mut Vec<u8>, noreply: bool, r: &[u8]) {
    if !noreply {
        out.extend_from_slice(r);
    }
}

fn err_reply(out: &mut Vec<u8>, noreply: bool, e: &StoreError) {
    if !noreply {
        store_error(e).write(out);
    }
}

/// Execute a text or meta request; returns whether to close the connection.
fn exec_text(shared: &Shared, req: TextRequest<'_>, out: &mut Vec<u8>) -> bool {
    let store = &shared.store;
    let m = &shared.metrics;
    match req {
        TextRequest::Get { keys, cas } => {
            m.cmd(Cmd::Get);
            for key in keys {
                get_one(shared, key, cas, None, out);
            }
            out.extend_from_slice(text::END);
        }
        TextRequest::Gat { exptime, keys, cas } => {
            m.cmd(Cmd::Touch);
            for key in keys {
                get_one(shared, key, cas, Some(expire_of(exptime)), out);
            }
            out.extend_from_slice(text::END);
        }
        TextRequest::Store {
            cmd,
            key,
            flags,
            exptime,
            data,
            cas,
            noreply,
        } => {
            m.cmd(Cmd::Set);
            let mode = match cmd {
                StoreCmd::Set | StoreCmd::Cas => SetMode::Set,
                StoreCmd::Add => SetMode::Add,
                StoreCmd::Replace => SetMode::Replace,
                StoreCmd::Append => SetMode::Append,
                StoreCmd::Prepend => SetMode::Prepend,
            };
            let concat = matches!(mode, SetMode::Append | SetMode::Prepend);
            let opts = WriteOpts {
                flags: (!concat).then_some(flags),
                expire: expire_of(exptime),
                cas: (cmd == StoreCmd::Cas).then_some(cas),
                ..Default::default()
            };
            match store.set(key, data, mode, &opts) {
                Ok(SetOutcome::Stored { .. }) => reply(out, noreply, text::STORED),
                Ok(SetOutcome::NotStored) => reply(out, noreply, text::NOT_STORED),
                Ok(SetOutcome::Exists) => reply(out, noreply, text::EXISTS),
                Ok(SetOutcome::NotFound) => reply(out, noreply, text::NOT_FOUND),
                // memcached cannot allocate the joined item and stores nothing.
                Err(StoreError::TooLarge { .. }) if concat => reply(out, noreply, text::NOT_STORED),
                Err(e) => err_reply(out, noreply, &e),
            }
        }
        TextRequest::Delete { key, noreply } => {
            m.cmd(Cmd::Delete);
            match store.delete(key, None) {
                Ok(DeleteOutcome::Deleted) => reply(out, noreply, text::DELETED),
                Ok(_) => reply(out, noreply, text::NOT_FOUND),
                Err(e) => err_reply(out, noreply, &e),
            }
        }
        TextRequest::Incr {
            key,
            delta,
            noreply,
        }
        | TextRequest::Decr {
            key,
            delta,
            noreply,
        } => {
            m.cmd(Cmd::Arith);
            let decr = matches!(req, TextRequest::Decr { .. });
            match store.incr_decimal(key, delta, decr) {
                Ok(Some((n, _))) if !noreply => text::write_number(out, n),
                Ok(Some(_)) => {}
                Ok(None) => reply(out, noreply, text::NOT_FOUND),
                Err(e) => err_reply(out, noreply, &e),
            }
        }
        TextRequest::Touch {
            key,
            exptime,
            noreply,
        } => {
            m.cmd(Cmd::Touch);
            match store.touch(key, expire_of(exptime), false, None) {
                Ok(Some(v)) => {
                    let now = store.now_secs();
                    shared.access.fetched(key, v.cas, now, secs_of(v.version));
                    reply(out, noreply, text::TOUCHED)
                }
                Ok(None) => reply(out, noreply, text::NOT_FOUND),
                Err(e) => err_reply(out, noreply, &e),
            }
        }
        TextRequest::FlushAll { delay, noreply } => {
            m.cmd(Cmd::Flush);
            flush_after(shared, delay);
            reply(out, noreply, text::OK);
        }
        TextRequest::Stats { arg, extra: _ } => {
            m.cmd(Cmd::Other);
            write_text_stats(shared, arg, out);
        }
        TextRequest::Version => {
            m.cmd(Cmd::Other);
            text::write_version(out, VERSION);
        }
        TextRequest::Verbosity { noreply, .. } => {
            m.cmd(Cmd::Other);
            reply(out, noreply, text::OK);
        }
        TextRequest::Quit => return true,
        TextRequest::Shutdown { .. } => out.extend_from_slice(b"ERROR: shutdown not enabled\r\n"),
        TextRequest::Meta(req) => return crate::meta::exec(shared, req, out),
        // Answered by `process`, which also swallows the data block.
        TextRequest::TooLarge { .. } => ProtoError::TOO_LARGE.write(out),
    }
    false
}

/// One key of a get/gets/gat/gats.
fn get_one(shared: &Shared, key: &[u8], cas: bool, touch: Option<Expire>, out: &mut Vec<u8>) {
    let m = &shared.metrics;
    let now = shared.store.now_secs();
    let r = match touch {
        None => shared.store.get_with(key, None, |v| {
            let ts = v.meta.version;
            shared.access.fetched(key, ts.ts, now, secs_of(ts));
            text::write_value(out, key, v.meta.flags, v.data, cas.then_some(ts.ts));
        }),
        Some(e) => shared.store.touch(key, e, true, None).map(|v| {
            v.map(|v| {
                shared.access.fetched(key, v.cas, now, secs_of(v.version));
                text::write_value(out, key, v.flags, &v.data, cas.then_some(v.cas))
            })
        }),
    };
    match r {
        Ok(Some(())) => m.get_hits.fetch_add(1, Relaxed),
        // An unreadable (encrypted) value reads as a miss: an error would break the framing.
        Ok(None) | Err(_) => m.get_misses.fetch_add(1, Relaxed),
    };
}

/// `flush_all [delay]`: now, or at a later time (relative up to 30 days, else absolute).
pub fn flush_after(shared: &Shared, delay: i64) {
    let now = unix_now();
    let secs = match delay {
        d if d <= 0 => 0,
        d if d <= REL_EXPTIME_MAX => d,
        d => (d - now).max(0),
    };
    let store = shared.store.clone();
    if secs == 0 {
        if let Err(e) = store.flush_all() {
            tracing::warn!(error = %e, "flush_all failed");
        }
        return;
    }
    if let Ok(h) = tokio::runtime::Handle::try_current() {
        h.spawn(async move {
            tokio::time::sleep(Duration::from_secs(secs as u64)).await;
            let _ = tokio::task::spawn_blocking(move || store.flush_all()).await;
        });
    }
}

/// The general stats, as (name, value) pairs, shared by the text and binary protocols.
pub fn general_stats(shared: &Shared) -> Vec<(&'static str, String)> {
    let m = &shared.metrics;
    let st = shared.store.stats();
    let now = unix_now();
    let hits = m.get_hits.load(Relaxed);
    let misses = m.get_misses.load(Relaxed);
    vec![
        ("pid", std::process::id().to_string()),
        ("uptime", m.uptime_secs().to_string()),
        ("time", now.to_string()),
        ("version", VERSION.to_string()),
        ("pointer_size", "64".into()),
        (
            "curr_connections",
            m.curr_connections.load(Relaxed).to_string(),
        ),
        (
            "total_connections",
            m.total_connections.load(Relaxed).to_string(),
        ),
        (
            "rejected_connections",
            m.rejected_connections.load(Relaxed).to_string(),
        ),
        ("cmd_get", (hits + misses).to_string()),
        ("cmd_set", m.count(Cmd::Set).to_string()),
        ("cmd_flush", m.count(Cmd::Flush).to_string()),
        ("cmd_touch", m.count(Cmd::Touch).to_string()),
        ("get_hits", hits.to_string()),
        ("get_misses", misses.to_string()),
        ("bytes_read", m.bytes_read.load(Relaxed).to_string()),
        ("bytes_written", m.bytes_written.load(Relaxed).to_string()),
        ("limit_maxbytes", "0".into()),
        ("threads", "2".into()),
        ("curr_items", (st.records - st.tombstones).to_string()),
        ("total_items", st.last_seq.to_string()),
        ("bytes", st.record_bytes.to_string()),
        ("evictions", "0".into()),
        ("storage_engine", st.engine.engine.to_string()),
    ]
}

fn write_text_stats(shared: &Shared, arg: Option<&[u8]>, out: &mut Vec<u8>) {
    match arg {
        None => {
            for (k, v) in general_stats(shared) {
                text::write_stat(out, k.as_bytes(), v.as_bytes());
            }
        }
        Some(b"settings") => {
            let c = &shared.config;
            let s: [(&str, String); 6] = [
                ("maxconns", c.limits.max_connections.to_string()),
                ("item_size_max", c.storage.max_value_bytes.to_string()),
                ("idle_timeout", c.limits.idle_timeout_secs.to_string()),
                ("binding_protocol", "auto-negotiate".into()),
                ("evictions", "off".into()),
                ("cas_enabled", "yes".into()),
            ];
            for (k, v) in s {
                text::write_stat(out, k.as_bytes(), v.as_bytes());
            }
        }
        // No slab allocator and no per-connection table: these groups are empty.
        Some(b"items" | b"slabs" | b"sizes" | b"conns") => {}
        Some(b"reset") => {
            out.extend_from_slice(text::RESET);
            return;
        }
        Some(_) => {
            ProtoError::Error.write(out);
            return;
        }
    }
    out.extend_from_slice(text::END);
}

/// Execute one binary request; returns whether to close the connection.
fn exec_binary(shared: &Shared, req: &BinRequest<'_>, out: &mut Vec<u8>) -> bool {
    let store = &shared.store;
    let m = &shared.metrics;
    let op = req.opcode;
    let code = op.as_u8();
    let opaque = req.opaque();
    let quiet = req.is_quiet();
    let key = req.key;
    let ok = |out: &mut Vec<u8>, cas: u64| {
        if !quiet {
            binary::write_response(out, code, Status::Success, opaque, cas, &[], &[], &[]);
        }
    };
    let fail = |out: &mut Vec<u8>, e: &StoreError| {
        let st = match e {
            StoreError::TooLarge { .. } => Status::TooLarge,
            StoreError::NotNumeric => Status::DeltaBadval,
            StoreError::InvalidArgument(_) => Status::Einval,
            _ => Status::NotStored,
        };
        binary::write_error(out, code, st, opaque);
    };
    match op.base() {
        Opcode::Get | Opcode::GetK | Opcode::Gat | Opcode::Gatk | Opcode::Touch => {
            let touch = req.touch_exptime().map(|e| expire_of(e as i64));
            m.cmd(if touch.is_some() {
                Cmd::Touch
            } else {
                Cmd::Get
            });
            let k = op.returns_key().then_some(key);
            let now = store.now_secs();
            let r = match touch {
                None => store.get_with(key, None, |v| {
                    shared
                        .access
                        .fetched(key, v.meta.version.ts, now, secs_of(v.meta.version));
                    binary::write_get_hit(
                        out,
                        code,
                        opaque,
                        v.meta.version.ts,
                        v.meta.flags,
                        k,
                        v.data,
                    )
                }),
                Some(e) => store
                    .touch(key, e, op.base() != Opcode::Touch, None)
                    .map(|v| {
                        v.map(|v| {
                            shared.access.fetched(key, v.cas, now, secs_of(v.version));
                            if op.base() == Opcode::Touch {
                                binary::write_response(
                                    out,
                                    code,
                                    Status::Success,
                                    opaque,
                                    v.cas,
                                    &v.flags.to_be_bytes(),
                                    &[],
                                    &[],
                                );
                            } else {
                                binary::write_get_hit(out, code, opaque, v.cas, v.flags, k, &v.data)
                            }
                        })
                    }),
            };
            match r {
                Ok(Some(())) => {
                    m.get_hits.fetch_add(1, Relaxed);
                }
                Ok(None) | Err(_) => {
                    m.get_misses.fetch_add(1, Relaxed);
                    if !quiet {
                        binary::write_get_miss(out, code, opaque, k);
                    }
                }
            }
        }
        Opcode::Set | Opcode::Add | Opcode::Replace | Opcode::Append | Opcode::Prepend => {
            m.cmd(Cmd::Set);
            let mode = match op.base() {
                Opcode::Set => SetMode::Set,
                Opcode::Add => SetMode::Add,
                Opcode::Replace => SetMode::Replace,
                Opcode::Append => SetMode::Append,
                _ => SetMode::Prepend,
            };
            let (flags, exptime) = req.store_extras().unwrap_or((0, 0));
            let concat = matches!(mode, SetMode::Append | SetMode::Prepend);
            let opts = WriteOpts {
                flags: (!concat).then_some(flags),
                expire: if concat {
                    Expire::Keep
                } else {
                    expire_of(exptime as i64)
                },
                cas: (req.cas() != 0).then_some(req.cas()),
                ..Default::default()
            };
            let max = shared.config.storage.max_value_bytes;
            if k2hdkc_proto::memcached::item_too_large(key.len(), req.value.len(), max) {
                if mode == SetMode::Set {
                    let _ = store.delete(key, None);
                }
                binary::write_error(out, code, Status::TooLarge, opaque);
                return false;
            }
            match store.set(key, req.value, mode, &opts) {
                Ok(SetOutcome::Stored { cas }) => ok(out, cas),
                Err(StoreError::TooLarge { .. }) if concat => {
                    binary::write_error(out, code, Status::NotStored, opaque)
                }
                Ok(SetOutcome::NotStored) => {
                    let st = match mode {
                        SetMode::Add => Status::KeyExists,
                        SetMode::Replace => Status::KeyNotFound,
                        _ => Status::NotStored,
                    };
                    binary::write_error(out, code, st, opaque);
                }
                Ok(SetOutcome::Exists) => binary::write_error(out, code, Status::KeyExists, opaque),
                Ok(SetOutcome::NotFound) => {
                    binary::write_error(out, code, Status::KeyNotFound, opaque)
                }
                Err(e) => fail(out, &e),
            }
        }
        Opcode::Delete => {
            m.cmd(Cmd::Delete);
            match store.delete(key, (req.cas() != 0).then_some(req.cas())) {
                Ok(DeleteOutcome::Deleted) => ok(out, 0),
                Ok(DeleteOutcome::NotFound) => {
                    binary::write_error(out, code, Status::KeyNotFound, opaque)
                }
                Ok(DeleteOutcome::Exists) => {
                    binary::write_error(out, code, Status::KeyExists, opaque)
                }
                Err(e) => fail(out, &e),
            }
        }
        Opcode::Increment | Opcode::Decrement => {
            m.cmd(Cmd::Arith);
            let Some((delta, initial, exptime)) = req.arith_extras() else {
                binary::write_error(out, code, Status::Einval, opaque);
                return false;
            };
            let decr = op.base() == Opcode::Decrement;
            // exptime 0xffffffff: do not create a missing counter.
            let create = (exptime != u32::MAX).then(|| (initial, expire_of(exptime as i64)));
            let compare = (req.cas() != 0).then(|| req.cas());
            match arith(store, key, delta, decr, compare, create) {
                Ok(Arith::Done(v, cas)) => {
                    if !quiet {
                        binary::write_arith(out, code, opaque, cas, v);
                    }
                }
                Ok(Arith::NotFound) => binary::write_error(out, code, Status::KeyNotFound, opaque),
                Ok(Arith::CasMismatch) => binary::write_error(out, code, Status::KeyExists, opaque),
                Err(e) => fail(out, &e),
            }
        }
        Opcode::Quit => {
            if !quiet {
                binary::write_response(out, code, Status::Success, opaque, 0, &[], &[], &[]);
            }
            return true;
        }
        Opcode::Flush => {
            m.cmd(Cmd::Flush);
            flush_after(shared, req.flush_delay() as i64);
            ok(out, 0);
        }
        Opcode::Noop => {
            binary::write_response(out, code, Status::Success, opaque, 0, &[], &[], &[])
        }
        Opcode::Version => binary::write_response(
            out,
            code,
            Status::Success,
            opaque,
            0,
            &[],
            &[],
            VERSION.as_bytes(),
        ),
        Opcode::Verbosity => ok(out, 0),
        Opcode::Stat => {
            m.cmd(Cmd::Other);
            match key {
                b"" => {
                    for (k, v) in general_stats(shared) {
                        binary::write_stat(out, opaque, k.as_bytes(), v.as_bytes());
                    }
                    binary::write_stat_end(out, opaque);
                }
                b"settings" | b"items" | b"slabs" | b"sizes" | b"conns" | b"reset" => {
                    binary::write_stat_end(out, opaque)
                }
                _ => binary::write_error(out, code, Status::KeyNotFound, opaque),
            }
        }
        _ => binary::write_error(out, code, Status::UnknownCommand, opaque),
    }
    false
}

// ---- cluster routing ------------------------------------------------------------------------

use crate::cluster::{Cluster, Route};
use crate::routing::{Deferred, MODE_BINARY, MODE_TEXT, error_reply};

/// After a local request: if it changed the store, its reply waits for the write quorum.
#[allow(clippy::too_many_arguments)]
fn track_write(
    shared: &Shared,
    before: u64,
    at: usize,
    out: &[u8],
    key: &[u8],
    mode: u8,
    raw: &[u8],
    deferred: &mut Vec<Deferred>,
) {
    let after = shared.store.last_seq();
    if after > before {
        deferred.push(Deferred::Quorum {
            at,
            len: out.len() - at,
            seq: after,
            partitions: vec![k2hdkc_layout::partition_of(key)],
            all: false,
            error: error_reply(mode, raw, "replication quorum not reached"),
        });
    }
}

/// After a local read: if the read quorum asks for it, its reply waits for the other owners'
/// versions (see `cluster::repair`).
#[allow(clippy::too_many_arguments)]
fn check_read(
    seen: Option<k2hdkc_storage::Version>,
    at: usize,
    out: &[u8],
    key: &[u8],
    mode: u8,
    rerun: Vec<u8>,
    error: Vec<u8>,
    deferred: &mut Vec<Deferred>,
) {
    if let Some(version) = seen {
        deferred.push(Deferred::ReadCheck {
            at,
            len: out.len() - at,
            key: key.to_vec(),
            version,
            all: false,
            mode,
            rerun,
            strip_end: mode == MODE_TEXT && error.is_empty(),
            error,
        });
    }
}

/// The version a local read of `key` is checked against, taken before the read (if the
/// read quorum asks for a check): a copy that lands between the two then makes the check
/// run the read again; taken after, an older value would pass as current.
pub(crate) fn read_version(
    shared: &Shared,
    c: &Cluster,
    level: u8,
    key: &[u8],
) -> Option<k2hdkc_storage::Version> {
    (crate::routing::read_checks_on() && crate::cluster::repair::wanted(c, level))
        .then(|| shared.store.record_version(key).unwrap_or_default())
}

/// The key a text or meta request is about, if it has exactly one.
fn text_key<'a>(req: &'a TextRequest<'_>) -> Option<&'a [u8]> {
    match req {
        TextRequest::Store { key, .. }
        | TextRequest::Delete { key, .. }
        | TextRequest::Incr { key, .. }
        | TextRequest::Decr { key, .. }
        | TextRequest::Touch { key, .. } => Some(key),
        TextRequest::Meta(m) if !m.key.is_empty() => Some(&m.key),
        _ => None,
    }
}

/// Run a text or meta request in a cluster: here, forwarded to its key's primary, or (for
/// multi-key retrievals) key by key.
fn routed_text(
    shared: &Shared,
    c: &Arc<Cluster>,
    req: TextRequest<'_>,
    raw: &[u8],
    out: &mut Vec<u8>,
    deferred: &mut Vec<Deferred>,
    local_only: bool,
) -> bool {
    let route = |key: &[u8]| {
        if local_only {
            Route::Local
        } else {
            c.route(key)
        }
    };
    match &req {
        TextRequest::Get { keys, cas } | TextRequest::Gat { keys, cas, .. } => {
            let touch = match &req {
                TextRequest::Gat { exptime, .. } => Some(*exptime),
                _ => None,
            };
            shared.metrics.cmd(if touch.is_some() {
                Cmd::Touch
            } else {
                Cmd::Get
            });
            for key in keys {
                match route(key) {
                    Route::Local => {
                        let before = shared.store.last_seq();
                        let at = out.len();
                        let seen = read_version(shared, c, 0, key);
                        get_one(shared, key, *cas, touch.map(expire_of), out);
                        if touch.is_some() {
                            track_write(shared, before, at, out, key, MODE_TEXT, raw, deferred);
                        } else {
                            let cmd: &[u8] = if *cas { b"gets " } else { b"get " };
                            let rerun = [cmd, key, b"\r\n"].concat();
                            // A piece whose check fails reads as a miss, like a failed forward.
                            check_read(seen, at, out, key, MODE_TEXT, rerun, Vec::new(), deferred);
                        }
                    }
                    Route::Remote(peer) => {
                        let cmd = match (touch, *cas) {
                            (None, false) => "get".to_string(),
                            (None, true) => "gets".to_string(),
                            (Some(t), false) => format!("gat {t}"),
                            (Some(t), true) => format!("gats {t}"),
                        };
                        let mut bytes = cmd.into_bytes();
                        bytes.push(b' ');
                        bytes.extend_from_slice(key);
                        bytes.extend_from_slice(b"\r\n");
                        // A piece that fails reads as a miss: an error line would break the
                        // framing of the whole retrieval.
                        deferred.push(Deferred::Forward {
                            at: out.len(),
                            peer,
                            partition: k2hdkc_layout::partition_of(key),
                            key: k2hdkc_layout::key_hash(key),
                            mode: MODE_TEXT,
                            bytes,
                            strip_end: true,
                            error: Vec::new(),
                            deadline: crate::routing::inherited_deadline(),
                        });
                    }
                    Route::Unavailable(_) => {
                        shared.metrics.get_misses.fetch_add(1, Relaxed);
                    }
                }
            }
            out.extend_from_slice(text::END);
            false
        }
        TextRequest::FlushAll { .. } => {
            if !local_only && !c.gateway() {
                deferred.push(Deferred::Broadcast {
                    mode: MODE_TEXT,
                    bytes: raw.to_vec(),
                });
            }
            if c.gateway() {
                deferred.push(Deferred::Broadcast {
                    mode: MODE_TEXT,
                    bytes: raw.to_vec(),
                });
                out.extend_from_slice(text::OK);
                return false;
            }
            exec_text(shared, req, out)
        }
        _ => {
            let Some(key) = text_key(&req).map(<[u8]>::to_vec) else {
                return exec_text(shared, req, out);
            };
            match route(&key) {
                Route::Local => {
                    let before = shared.store.last_seq();
                    let at = out.len();
                    let mg = matches!(&req, TextRequest::Meta(m) if m.cmd == MetaCmd::Get);
                    let seen = if mg {
                        read_version(shared, c, 0, &key)
                    } else {
                        None
                    };
                    let close = exec_text(shared, req, out);
                    if mg && shared.store.last_seq() == before {
                        let error = error_reply(MODE_TEXT, raw, "read quorum not reached");
                        check_read(
                            seen,
                            at,
                            out,
                            &key,
                            MODE_TEXT,
                            raw.to_vec(),
                            error,
                            deferred,
                        );
                    } else {
                        track_write(shared, before, at, out, &key, MODE_TEXT, raw, deferred);
                    }
                    close
                }
                Route::Remote(peer)
                    if let Some((key, data, flags, exptime, noreply)) =
                        plain_text_set(&req).filter(|_| c.direct_writes()) =>
                {
                    let version = shared.store.next_version();
                    deferred.push(Deferred::Direct(Box::new(crate::routing::DirectSet {
                        at: out.len(),
                        peer,
                        partition: k2hdkc_layout::partition_of(key),
                        key: key.to_vec(),
                        value: data.to_vec(),
                        flags,
                        expire: expire_of(exptime),
                        version,
                        reply: if noreply {
                            Vec::new()
                        } else {
                            text::STORED.to_vec()
                        },
                        mode: MODE_TEXT,
                        bytes: raw.to_vec(),
                        error: if noreply {
                            Vec::new()
                        } else {
                            error_reply(MODE_TEXT, raw, "the owner of the key did not answer")
                        },
                    })));
                    false
                }
                Route::Remote(peer) => {
                    deferred.push(Deferred::Forward {
                        at: out.len(),
                        peer,
                        partition: k2hdkc_layout::partition_of(&key),
                        key: k2hdkc_layout::key_hash(&key),
                        mode: MODE_TEXT,
                        bytes: raw.to_vec(),
                        strip_end: false,
                        error: if req.noreply() {
                            Vec::new()
                        } else {
                            error_reply(MODE_TEXT, raw, "the owner of the key did not answer")
                        },
                        deadline: crate::routing::inherited_deadline(),
                    });
                    false
                }
                Route::Unavailable(why) => {
                    if !req.noreply() {
                        out.extend_from_slice(&error_reply(MODE_TEXT, raw, &why));
                    }
                    false
                }
            }
        }
    }
}

/// A text `set` (not `cas`, `add`, ...): its key, data, flags, exptime and noreply.
type PlainSet<'a> = (&'a [u8], &'a [u8], u32, i64, bool);

fn plain_text_set<'a>(req: &TextRequest<'a>) -> Option<PlainSet<'a>> {
    match req {
        TextRequest::Store {
            cmd: StoreCmd::Set,
            key,
            data,
            flags,
            exptime,
            noreply,
            ..
        } => Some((key, data, *flags, *exptime, *noreply)),
        _ => None,
    }
}

/// Run a binary request in a cluster.
fn routed_binary(
    shared: &Shared,
    c: &Arc<Cluster>,
    req: &BinRequest<'_>,
    raw: &[u8],
    out: &mut Vec<u8>,
    deferred: &mut Vec<Deferred>,
    local_only: bool,
) -> bool {
    if req.key.is_empty() {
        if req.opcode.base() == Opcode::Flush && !local_only {
            deferred.push(Deferred::Broadcast {
                mode: MODE_BINARY,
                bytes: raw.to_vec(),
            });
            if c.gateway() {
                if !req.is_quiet() {
                    binary::write_response(
                        out,
                        req.opcode.as_u8(),
                        Status::Success,
                        req.opaque(),
                        0,
                        &[],
                        &[],
                        &[],
                    );
                }
                return false;
            }
        }
        return exec_binary(shared, req, out);
    }
    let route = if local_only {
        Route::Local
    } else {
        c.route(req.key)
    };
    match route {
        Route::Local => {
            let before = shared.store.last_seq();
            let at = out.len();
            let get = matches!(req.opcode.base(), Opcode::Get | Opcode::GetK);
            let seen = if get {
                read_version(shared, c, 0, req.key)
            } else {
                None
            };
            let close = exec_binary(shared, req, out);
            if get && shared.store.last_seq() == before {
                let error = error_reply(MODE_BINARY, raw, "");
                check_read(
                    seen,
                    at,
                    out,
                    req.key,
                    MODE_BINARY,
                    raw.to_vec(),
                    error,
                    deferred,
                );
            } else {
                track_write(shared, before, at, out, req.key, MODE_BINARY, raw, deferred);
            }
            close
        }
        Route::Remote(peer)
            if c.direct_writes() && req.opcode.base() == Opcode::Set && req.cas() == 0 =>
        {
            let (flags, exptime) = req.store_extras().unwrap_or((0, 0));
            let version = shared.store.next_version();
            let mut reply = Vec::new();
            if !req.is_quiet() {
                binary::write_response(
                    &mut reply,
                    req.opcode.as_u8(),
                    Status::Success,
                    req.opaque(),
                    version.ts,
                    &[],
                    &[],
                    &[],
                );
            }
            deferred.push(Deferred::Direct(Box::new(crate::routing::DirectSet {
                at: out.len(),
                peer,
                partition: k2hdkc_layout::partition_of(req.key),
                key: req.key.to_vec(),
                value: req.value.to_vec(),
                flags,
                expire: expire_of(exptime as i64),
                version,
                reply,
                mode: MODE_BINARY,
                bytes: raw.to_vec(),
                error: error_reply(MODE_BINARY, raw, ""),
            })));
            false
        }
        Route::Remote(peer) => {
            deferred.push(Deferred::Forward {
                at: out.len(),
                peer,
                partition: k2hdkc_layout::partition_of(req.key),
                key: k2hdkc_layout::key_hash(req.key),
                mode: MODE_BINARY,
                bytes: raw.to_vec(),
                strip_end: false,
                error: error_reply(MODE_BINARY, raw, ""),
                deadline: crate::routing::inherited_deadline(),
            });
            false
        }
        Route::Unavailable(_) => {
            out.extend_from_slice(&error_reply(MODE_BINARY, raw, ""));
            false
        }
    }
}

/// memcached unlinks the old item of a plain set that failed (too large), so a reader never
/// sees the value the client meant to replace; in a cluster only where this node is the
/// key's primary (elsewhere its delete would be a tombstone of its own, bypassing the
/// primary: see `Store::set_tombstone_absent`).
fn unlink_failed_set(
    shared: &Shared,
    cluster: Option<&crate::cluster::Cluster>,
    local_only: bool,
    key: &[u8],
) {
    let here = match cluster {
        Some(c) if !local_only => matches!(c.route(key), crate::cluster::Route::Local),
        _ => true,
    };
    if here {
        let _ = shared.store.delete(key, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exptime_rules() {
        assert_eq!(expire_of(0), Expire::Default);
        assert_eq!(expire_of(-1), Expire::At(1));
        assert_eq!(expire_of(100), Expire::After(100));
        assert_eq!(
            expire_of(REL_EXPTIME_MAX),
            Expire::After(REL_EXPTIME_MAX as u32)
        );
        assert_eq!(
            expire_of(REL_EXPTIME_MAX + 1),
            Expire::At(REL_EXPTIME_MAX as u32 + 1)
        );
    }
}
