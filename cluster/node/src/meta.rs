//! The memcached meta commands (mg, ms, md, ma, mn, me) over the store.
//!
//! Not supported (answered as if absent): recache tokens and stale items (`R`, `I` mark nothing
//! stale; `md I` deletes), last-access and fetched tracking (`l` reports 0, `h` reports 0),
//! explicit new cas values (`E`). Everything else follows memcached's meta protocol.

use std::sync::atomic::Ordering::Relaxed;

use k2hdkc_proto::memcached::meta::{
    self, ArithMode, DebugInfo, ItemInfo, MetaCmd, MetaRequest, MetaStatus, SetMode as MetaSetMode,
};
use k2hdkc_storage::{DeleteOutcome, Expire, SetMode, SetOutcome, Value, WriteOpts};

use crate::memcached::{Arith, arith, expire_of, store_error, unix_now};
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
                    let info = DebugInfo {
                        exp: if v.expire == 0 {
                            -1
                        } else {
                            unix_now() - v.expire as i64
                        },
                        cas: v.cas,
                        class: 1,
                        size: v.data.len() + key.len(),
                        ..Default::default()
                    };
                    meta::write_debug(out, &req, &info);
                }
                _ => meta::write_response(out, &req, MetaStatus::En, None, None),
            }
        }
        MetaCmd::Get => {
            m.cmd(Cmd::Get);
            let r = match f.ttl {
                Some(t) => store.touch(key, expire_of(t), true, None),
                None => store.get(key, None),
            };
            match r {
                Ok(Some(v)) => {
                    m.get_hits.fetch_add(1, Relaxed);
                    let info = info_of(&v);
                    if f.return_value {
                        respond(out, &req, MetaStatus::Va, Some(&info), Some(&v.data));
                    } else {
                        respond(out, &req, MetaStatus::Hd, Some(&info), None);
                    }
                }
                Ok(None) | Err(_) => {
                    m.get_misses.fetch_add(1, Relaxed);
                    // Vivify on miss: create an empty placeholder so one client recaches.
                    if let Some(n) = f.vivify_ttl {
                        let opts = WriteOpts {
                            flags: Some(0),
                            expire: expire_of(n),
                            ..Default::default()
                        };
                        if let Ok(SetOutcome::Stored { cas }) =
                            store.set(key, b"", SetMode::Add, &opts)
                        {
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
                cas: f.compare_cas,
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
            match r {
                Ok(SetOutcome::Stored { cas }) => {
                    let info = ItemInfo {
                        cas,
                        size: req.data.len(),
                        ..Default::default()
                    };
                    respond(out, &req, MetaStatus::Hd, Some(&info), None);
                }
                Ok(SetOutcome::NotStored) => respond(out, &req, MetaStatus::Ns, None, None),
                Ok(SetOutcome::Exists) => respond(out, &req, MetaStatus::Ex, None, None),
                Ok(SetOutcome::NotFound) => respond(out, &req, MetaStatus::Nf, None, None),
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
                    let ttl = store
                        .attrs(key)
                        .ok()
                        .flatten()
                        .map_or(-1, |a| remaining_ttl(a.expire));
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
    }
    false
}
