//! The memcached meta commands (mg, ms, md, ma, mn, me) over the store.
//!
//! Follows memcached 1.6.18, the reference of the differential test: stale values and recache
//! tokens (`md I`, `ms I`, `mg N` / `R`, answered `X` / `W` / `Z`) and fetch hints (`h`, `l`)
//! are kept by [`crate::access`]. Like 1.6.18, `E` (explicit cas) and `md x` are refused as
//! invalid flags: here a cas unique is the value's hybrid-logical-clock version, which a client
//! cannot choose without breaking last-writer-wins between replicas.

use std::sync::atomic::Ordering::Relaxed;

use k2hdkc_proto::memcached::meta::{
    self, ArithMode, DebugInfo, ItemInfo, MetaCmd, MetaRequest, MetaStatus, SetMode as MetaSetMode,
};
use k2hdkc_storage::{
    DeleteOutcome, Error as StoreError, Expire, SetMode, SetOutcome, Value, WriteOpts,
};

use crate::memcached::{Arith, arith, expire_of, secs_of, store_error, unix_now};
use crate::metrics::Cmd;
use crate::server::Shared;

/// Seconds left before `expire` (unix seconds), -1 for never: the meta `t` flag.
fn remaining_ttl(expire: u32) -> i64 {
    if expire == 0 {
        -1
    } else {
        (expire as i64 - unix_now()).max(0)
    }
}

fn info_of(v: &Value) -> ItemInfo {
    ItemInfo {
        cas: v.cas,
        client_flags: v.flags,
        size: v.data.len(),
        ttl: remaining_ttl(v.expire),
        ..Default::default()
    }
}

fn respond(
    out: &mut Vec<u8>,
    req: &MetaRequest<'_>,
    st: MetaStatus,
    info: Option<&ItemInfo>,
    value: Option<&[u8]>,
) {
    if !req.suppress(st) {
        meta::write_response(out, req, st, info, value);
    }
}

/// Execute one meta request; returns whether to close the connection (never, for meta).
pub fn exec(shared: &Shared, req: MetaRequest<'_>, out: &mut Vec<u8>) -> bool {
    let store = &shared.store;
    let m = &shared.metrics;
    let key: &[u8] = &req.key;
    let f = &req.flags;
    match req.cmd {
        MetaCmd::Noop => meta::write_noop(out),
        MetaCmd::Debug => {
            m.cmd(Cmd::Other);
            match store.get(key, None) {
                Ok(Some(v)) => {
                    let seen = shared
                        .access
                        .peek(key, v.cas, store.now_secs(), secs_of(v.version));
                    let info = DebugInfo {
                        last_access: seen.idle_secs,
                        fetched: seen.before,
                        exp: if v.expire == 0 {
                            -1
                        } else {
                            unix_now() - v.expire as i64
                        },
                        cas: v.cas,
                        class: 1,
                        size: v.data.len() + key.len(),
                    };
                    meta::write_debug(out, &req, &info);
                }
                _ => meta::write_response(out, &req, MetaStatus::En, None, None),
            }
        }
        MetaCmd::Get => {
            m.cmd(Cmd::Get);
            let now = store.now_secs();
            let r = match f.ttl {
                Some(t) => store.touch(key, expire_of(t), true, None),
                None => store.get(key, None),
            };
            match r {
                Ok(Some(v)) => {
                    m.get_hits.fetch_add(1, Relaxed);
                    let mut info = info_of(&v);
                    let written = secs_of(v.version);
                    let seen = if f.no_bump {
                        shared.access.peek(key, v.cas, now, written)
                    } else {
                        shared.access.fetched(key, v.cas, now, written)
                    };
                    info.fetched = seen.before;
                    info.last_access = seen.idle_secs;
                    win_flags(shared, &req, &v, &mut info);
                    if f.return_value {
                        respond(out, &req, MetaStatus::Va, Some(&info), Some(&v.data));
                    } else {
                        respond(out, &req, MetaStatus::Hd, Some(&info), None);
                    }
                }
                Ok(None) | Err(_) => {
                    m.get_misses.fetch_add(1, Relaxed);
                    // Vivify on miss: create an empty placeholder; this client wins the token
                    // to fill it and later readers see `Z` until it is written.
                    if let Some(n) = f.vivify_ttl {
                        let opts = WriteOpts {
                            flags: Some(0),
                            expire: expire_of(n),
                            ..Default::default()
                        };
                        if let Ok(SetOutcome::Stored { cas }) =
                            store.set(key, b"", SetMode::Add, &opts)
                        {
                            shared.access.update(key, cas, |mk| mk.token_sent = true);
                            let info = ItemInfo {
                                cas,
                                won: true,
                                ttl: n,
                                ..Default::default()
                            };
                            let st = if f.return_value {
                                MetaStatus::Va
                            } else {
                                MetaStatus::Hd
                            };
                            meta::write_response(out, &req, st, Some(&info), Some(b""));
                            return false;
                        }
                    }
                    respond(out, &req, MetaStatus::En, None, None);
                }
            }
        }
        MetaCmd::Set(mode) => {
            m.cmd(Cmd::Set);
            let mode = match mode {
                MetaSetMode::Set => SetMode::Set,
                MetaSetMode::Add => SetMode::Add,
                MetaSetMode::Replace => SetMode::Replace,
                MetaSetMode::Append => SetMode::Append,
                MetaSetMode::Prepend => SetMode::Prepend,
            };
            let concat = matches!(mode, SetMode::Append | SetMode::Prepend);
            // `I` with an older cas: the write goes in, but as a stale value (a late writer
            // must not leave data that looks current).
            let stale_write = f.invalidate
                && f.compare_cas
                    .is_some_and(|c| store.attrs(key).ok().flatten().is_some_and(|a| c < a.cas));
            let opts = WriteOpts {
                flags: if concat {
                    None
                } else {
                    Some(f.client_flags.unwrap_or(0))
                },
                expire: match (concat, f.ttl) {
                    (true, _) => Expire::Keep,
                    (false, Some(t)) => expire_of(t),
                    (false, None) => Expire::Default,
                },
                cas: if stale_write { None } else { f.compare_cas },
                ..Default::default()
            };
            let r = store.set(key, req.data, mode, &opts);
            // Append/prepend with vivify create the item when it is missing.
            let r = match (r, f.vivify_ttl) {
                (Ok(SetOutcome::NotStored), Some(n)) if concat => {
                    let o = WriteOpts {
                        flags: Some(0),
                        expire: expire_of(n),
                        ..Default::default()
                    };
                    store.set(key, req.data, SetMode::Add, &o)
                }
                (r, _) => r,
            };
            // Failures still answer `c` (as c0), like memcached.
            let none = ItemInfo::default();
            match r {
                Ok(SetOutcome::Stored { cas }) => {
                    if stale_write {
                        shared.access.update(key, cas, |mk| mk.stale = true);
                    }
                    let info = ItemInfo {
                        cas,
                        ..Default::default()
                    };
                    respond(out, &req, MetaStatus::Hd, Some(&info), None);
                }
                Ok(SetOutcome::NotStored) => respond(out, &req, MetaStatus::Ns, Some(&none), None),
                Ok(SetOutcome::Exists) => respond(out, &req, MetaStatus::Ex, Some(&none), None),
                Ok(SetOutcome::NotFound) => respond(out, &req, MetaStatus::Nf, Some(&none), None),
                // memcached cannot allocate the joined item and stores nothing.
                Err(StoreError::TooLarge { .. }) if concat => {
                    respond(out, &req, MetaStatus::Ns, Some(&none), None)
                }
                Err(e) => store_error(&e).write(out),
            }
        }
        MetaCmd::Delete if f.invalidate => {
            m.cmd(Cmd::Delete);
            match invalidate(shared, key, f.compare_cas, f.ttl) {
                Ok(DeleteOutcome::Deleted) => respond(out, &req, MetaStatus::Hd, None, None),
                Ok(DeleteOutcome::NotFound) => respond(out, &req, MetaStatus::Nf, None, None),
                Ok(DeleteOutcome::Exists) => respond(out, &req, MetaStatus::Ex, None, None),
                Err(e) => store_error(&e).write(out),
            }
        }
        MetaCmd::Delete => {
            m.cmd(Cmd::Delete);
            match store.delete(key, f.compare_cas) {
                Ok(DeleteOutcome::Deleted) => respond(out, &req, MetaStatus::Hd, None, None),
                Ok(DeleteOutcome::NotFound) => respond(out, &req, MetaStatus::Nf, None, None),
                Ok(DeleteOutcome::Exists) => respond(out, &req, MetaStatus::Ex, None, None),
                Err(e) => store_error(&e).write(out),
            }
        }
        MetaCmd::Arithmetic(mode) => {
            m.cmd(Cmd::Arith);
            let decr = mode == ArithMode::Decr;
            let create = f.vivify_ttl.map(|n| (req.initial(), expire_of(n)));
            match arith(store, key, req.delta(), decr, f.compare_cas, create) {
                Ok(Arith::Done(n, cas)) => {
                    // `T` updates the TTL of the counter (a touch keeps the cas).
                    let attrs = match f.ttl {
                        Some(t) => store.touch(key, expire_of(t), false, None).ok().flatten(),
                        None => store.get(key, None).ok().flatten(),
                    };
                    let ttl = attrs.map_or(-1, |a| remaining_ttl(a.expire));
                    let info = ItemInfo {
                        cas,
                        ttl,
                        ..Default::default()
                    };
                    if f.return_value {
                        let text = n.to_string();
                        respond(
                            out,
                            &req,
                            MetaStatus::Va,
                            Some(&info),
                            Some(text.as_bytes()),
                        );
                    } else {
                        respond(out, &req, MetaStatus::Hd, Some(&info), None);
                    }
                }
                Ok(Arith::NotFound) => respond(out, &req, MetaStatus::Nf, None, None),
                Ok(Arith::CasMismatch) => respond(out, &req, MetaStatus::Ex, None, None),
                Err(e) => store_error(&e).write(out),
            }
        }
        // Turned into `TextRequest::TooLarge` by the parser.
        MetaCmd::SetTooLarge { .. } => {
            k2hdkc_proto::memcached::ProtoError::TOO_LARGE.write(out);
        }
    }
    false
}

/// The recache flags of an mg hit: `X` for a stale value; `W` for the first reader of a stale
/// value, or of one whose TTL fell below the request's `R`; `Z` once that token was handed out.
fn win_flags(shared: &Shared, req: &MetaRequest<'_>, v: &Value, info: &mut ItemInfo) {
    let mark = shared.access.mark(&req.key, v.cas);
    let recache = req
        .flags
        .recache_ttl
        .is_some_and(|r| v.expire != 0 && info.ttl < r);
    info.stale = mark.stale;
    if mark.token_sent {
        info.win_sent = true;
    } else if mark.stale || recache {
        // The update decides under its lock, so two racing readers cannot both win.
        let before = shared
            .access
            .update(&req.key, v.cas, |mk| mk.token_sent = true);
        if before.token_sent {
            info.win_sent = true;
        } else {
            info.won = true;
        }
    }
}

/// `md I`: keep the value but give it a new cas and mark it stale (optionally with a new TTL),
/// so the next reader wins the token to recache it while others still get the old value.
fn invalidate(
    shared: &Shared,
    key: &[u8],
    compare_cas: Option<u64>,
    ttl: Option<i64>,
) -> Result<DeleteOutcome, StoreError> {
    let store = &shared.store;
    let Some(v) = store.get(key, None)? else {
        return Ok(DeleteOutcome::NotFound);
    };
    if compare_cas.is_some_and(|c| c != v.cas) {
        return Ok(DeleteOutcome::Exists);
    }
    let opts = WriteOpts {
        flags: Some(v.flags),
        expire: ttl.map_or(Expire::Keep, expire_of),
        cas: Some(v.cas),
        ..Default::default()
    };
    match store.set(key, &v.data, SetMode::Set, &opts)? {
        SetOutcome::Stored { cas } => {
            shared.access.update(key, cas, |mk| mk.stale = true);
            Ok(DeleteOutcome::Deleted)
        }
        // Changed meanwhile: the newer value is not ours to invalidate.
        SetOutcome::Exists | SetOutcome::NotStored => Ok(DeleteOutcome::Exists),
        SetOutcome::NotFound => Ok(DeleteOutcome::NotFound),
    }
}
