//! memcached classic text protocol: request parsing and reply encoding.
//!
//! [`parse`] reads one request from the front of a receive buffer and borrows its keys and data
//! from it. Meta commands (`mg`, `ms`, `md`, `ma`, `mn`, `me`) may be mixed freely with classic
//! ones on the same connection, as in memcached; they come back as [`TextRequest::Meta`].
//!
//! # memcached 1.6 behaviour reproduced here
//!
//! * A command line ends at `\n`; a `\r` directly before it is dropped, so bare `\n` works.
//!   Tokens are separated by spaces only (a tab is part of a token). An empty line answers
//!   `ERROR`. Command names are case-sensitive.
//! * Unknown commands and known commands with the wrong number of tokens answer `ERROR`
//!   (e.g. `get` without a key, `set k 0 0`, `incr k`).
//! * Keys longer than 250 bytes answer `CLIENT_ERROR bad command line format` (for a multi-key
//!   `get` the whole reply is that one error). Keys with control characters are refused the
//!   same way (memcached itself only checks the length).
//! * Storage commands: a bad `flags` (u32), `exptime`, `bytes` or `cas unique`, or a negative
//!   `bytes` or one above `INT_MAX - 2`, answers `CLIENT_ERROR bad command line format` and
//!   consumes only the line — the data block that follows is then read as commands (usually
//!   answering `ERROR`), exactly like memcached. A `bytes` above [`Limits::max_value`] answers
//!   `SERVER_ERROR object too large for cache` and swallows `bytes + 2` bytes. A data block not
//!   followed by `\r\n` answers `CLIENT_ERROR bad data chunk` after consuming `bytes + 2` bytes.
//! * `noreply` (the last token) suppresses every reply of that command, errors included, once
//!   the token count is right; the `noreply` field of [`Parsed::Error`] carries this.
//! * `delete <key> 0` and `delete <key> 0 noreply` are accepted (legacy hold time); any other
//!   third token answers `CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]`.
//! * `incr`/`decr` with a non-u64 delta answer `CLIENT_ERROR invalid numeric delta argument`;
//!   `touch`, `gat`, `gats`, `flush_all` with a bad exptime answer
//!   `CLIENT_ERROR invalid exptime argument`. `gat <exptime>` without keys answers just `END`.
//! * A line longer than [`Limits::max_line`] (or [`Limits::multiget_line_limit`] for
//!   retrievals) closes the connection without a reply.
//!
//! Deviation: `exptime` and `delay` are parsed as i64 (memcached uses i32 and rejects larger
//! values); clamp them when converting to a deadline.
//!
//! The admin commands `slabs`, `lru`, `lru_crawler`, `watch`, `cache_memlimit`, `extstore`,
//! `misbehave`, `debugtime` and `refresh_certs` are not supported and answer `ERROR`.

use super::meta::{self, MetaRequest};
use super::{
    Data, Limits, Line, MAX_DECLARED_LEN, Parsed, ProtoError, Tokens, line_limit, next_line,
    parse_i64, parse_u32, parse_u64, push_u64, split_tokens, take_data, valid_key,
};
use std::borrow::Cow;

/// The six storage commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreCmd {
    /// `set`: store unconditionally.
    Set,
    /// `add`: store only if the key is absent (`NOT_STORED` otherwise).
    Add,
    /// `replace`: store only if the key is present (`NOT_STORED` otherwise).
    Replace,
    /// `append`: append to an existing value; flags and exptime are ignored.
    Append,
    /// `prepend`: prepend to an existing value; flags and exptime are ignored.
    Prepend,
    /// `cas`: store only if the item's CAS equals `cas` (`EXISTS` / `NOT_FOUND` otherwise).
    Cas,
}

/// One text-protocol request, borrowing keys and data from the receive buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextRequest<'a> {
    /// `get <key>*` (`cas = false`) or `gets <key>*` (`cas = true`); reply with
    /// [`write_value`] per hit, then [`END`]. `bget` is accepted as `get`.
    Get {
        /// One or more valid keys, in request order (duplicates kept).
        keys: Vec<&'a [u8]>,
        /// Include the CAS unique in `VALUE` lines.
        cas: bool,
    },
    /// `gat <exptime> <key>*` / `gats <exptime> <key>*`: get and touch.
    Gat {
        /// New expiration time for every hit.
        exptime: i64,
        /// Zero or more keys (`gat 10` alone is valid and answers `END`).
        keys: Vec<&'a [u8]>,
        /// Include the CAS unique in `VALUE` lines (`gats`).
        cas: bool,
    },
    /// `set|add|replace|append|prepend <key> <flags> <exptime> <bytes> [noreply]` or
    /// `cas <key> <flags> <exptime> <bytes> <cas unique> [noreply]`, with its data block.
    Store {
        /// Which storage command.
        cmd: StoreCmd,
        /// The key.
        key: &'a [u8],
        /// Opaque client flags.
        flags: u32,
        /// Expiration: 0 never, negative already expired, up to 30 days relative, else absolute
        /// Unix time.
        exptime: i64,
        /// The data block (without its `\r\n`).
        data: &'a [u8],
        /// CAS unique for [`StoreCmd::Cas`], 0 otherwise.
        cas: u64,
        /// Send no reply.
        noreply: bool,
    },
    /// `delete <key> [0] [noreply]`: reply [`DELETED`] or [`NOT_FOUND`].
    Delete {
        /// The key.
        key: &'a [u8],
        /// Send no reply.
        noreply: bool,
    },
    /// `incr <key> <delta> [noreply]`: reply with [`write_number`] or [`NOT_FOUND`]; wraps at
    /// 2^64.
    Incr {
        /// The key.
        key: &'a [u8],
        /// Amount to add.
        delta: u64,
        /// Send no reply.
        noreply: bool,
    },
    /// `decr <key> <delta> [noreply]`: like `incr`, but stops at 0.
    Decr {
        /// The key.
        key: &'a [u8],
        /// Amount to subtract.
        delta: u64,
        /// Send no reply.
        noreply: bool,
    },
    /// `touch <key> <exptime> [noreply]`: reply [`TOUCHED`] or [`NOT_FOUND`].
    Touch {
        /// The key.
        key: &'a [u8],
        /// New expiration time.
        exptime: i64,
        /// Send no reply.
        noreply: bool,
    },
    /// `flush_all [delay] [noreply]`: reply [`OK`]. A delay `<= 0` means now.
    FlushAll {
        /// Seconds (or absolute time) until the flush takes effect; 0 when absent.
        delay: i64,
        /// Send no reply.
        noreply: bool,
    },
    /// `stats [<arg> ...]`: reply with [`write_stat`] lines and [`END`]; `stats reset` answers
    /// [`RESET`]; unknown sub-commands answer `ERROR`.
    Stats {
        /// The sub-command (`settings`, `items`, `slabs`, `detail`, `reset`, ...), if any.
        arg: Option<&'a [u8]>,
        /// Further arguments (e.g. `on` in `stats detail on`).
        extra: Vec<&'a [u8]>,
    },
    /// `version`: reply with [`write_version`]. Extra tokens are ignored.
    Version,
    /// `verbosity <level> [noreply]`: reply [`OK`].
    Verbosity {
        /// Requested level (memcached clamps it to its maximum).
        level: u32,
        /// Send no reply.
        noreply: bool,
    },
    /// `quit`: close the connection after flushing pending replies, without a reply.
    Quit,
    /// `shutdown [graceful]`. memcached answers `ERROR: shutdown not enabled` unless started
    /// with `-A`; otherwise it closes the connection and stops.
    Shutdown {
        /// `shutdown graceful`.
        graceful: bool,
    },
    /// A meta command; see [`meta`].
    Meta(MetaRequest<'a>),
    /// A storage command (text `set` .. `cas`, or meta `ms`) whose item would exceed
    /// [`Limits::max_value`]: answer [`ProtoError::TOO_LARGE`](super::ProtoError::TOO_LARGE)
    /// unless `noreply`, drop `evict` when it is set (memcached unlinks the old item of a
    /// failed plain `set`, so no stale value outlives it), then discard `swallow` bytes of the
    /// stream after this request (the data block and its `\r\n`).
    TooLarge {
        /// The key to remove: the key of a `set` (or `ms` in set mode), `None` otherwise.
        evict: Option<Cow<'a, [u8]>>,
        /// Do not answer (text `noreply`).
        noreply: bool,
        /// Bytes to discard after the command line.
        swallow: usize,
    },
}

impl TextRequest<'_> {
    /// Whether the classic `noreply` option was given. Meta commands use their own quiet mode
    /// ([`MetaRequest::suppress`]) and report `false` here.
    pub fn noreply(&self) -> bool {
        match self {
            Self::Store { noreply, .. }
            | Self::Delete { noreply, .. }
            | Self::Incr { noreply, .. }
            | Self::Decr { noreply, .. }
            | Self::Touch { noreply, .. }
            | Self::FlushAll { noreply, .. }
            | Self::Verbosity { noreply, .. } => *noreply,
            _ => false,
        }
    }
}

/// Parses one request from the front of `buf`.
///
/// Returns [`Parsed::Incomplete`] until the whole command line (and, for storage commands, the
/// data block and its `\r\n`) is buffered. Never panics and never allocates in proportion to a
/// declared length; see the [module documentation](super) for the caller contract.
pub fn parse<'a>(buf: &'a [u8], limits: &Limits) -> Parsed<TextRequest<'a>> {
    let (line, line_len) = match next_line(buf, line_limit(buf, limits)) {
        Line::Incomplete => return Parsed::Incomplete,
        Line::TooLong => return Parsed::line_too_long(buf.len()),
        Line::Complete { line, consumed } => (line, consumed),
    };
    let toks = Tokens::new(line);
    let Some(cmd) = toks.get(0) else {
        return Parsed::fail(ProtoError::Error, line_len, false);
    };
    if cmd.len() == 2 && cmd.first() == Some(&b'm') {
        return meta::parse_tokens(&toks, buf, line_len, limits).map(|m| match m.cmd {
            meta::MetaCmd::SetTooLarge { evict, swallow } => TextRequest::TooLarge {
                evict: evict.then_some(m.key),
                noreply: false,
                swallow,
            },
            _ => TextRequest::Meta(m),
        });
    }
    match cmd {
        b"get" | b"bget" => parse_retrieval(&toks, line, line_len, limits, false, false),
        b"gets" => parse_retrieval(&toks, line, line_len, limits, true, false),
        b"gat" => parse_retrieval(&toks, line, line_len, limits, false, true),
        b"gats" => parse_retrieval(&toks, line, line_len, limits, true, true),
        b"set" => parse_store(StoreCmd::Set, &toks, buf, line_len, limits),
        b"add" => parse_store(StoreCmd::Add, &toks, buf, line_len, limits),
        b"replace" => parse_store(StoreCmd::Replace, &toks, buf, line_len, limits),
        b"append" => parse_store(StoreCmd::Append, &toks, buf, line_len, limits),
        b"prepend" => parse_store(StoreCmd::Prepend, &toks, buf, line_len, limits),
        b"cas" => parse_store(StoreCmd::Cas, &toks, buf, line_len, limits),
        b"incr" => parse_arith(&toks, line_len, true),
        b"decr" => parse_arith(&toks, line_len, false),
        b"delete" => parse_delete(&toks, line_len),
        b"touch" => parse_touch(&toks, line_len),
        b"flush_all" => parse_flush_all(&toks, line_len),
        b"verbosity" => parse_verbosity(&toks, line_len),
        b"stats" => {
            let extra = split_tokens(line).skip(2).collect();
            Parsed::Done {
                req: TextRequest::Stats {
                    arg: toks.get(1),
                    extra,
                },
                consumed: line_len,
            }
        }
        b"version" => Parsed::Done {
            req: TextRequest::Version,
            consumed: line_len,
        },
        b"quit" => Parsed::Done {
            req: TextRequest::Quit,
            consumed: line_len,
        },
        b"shutdown" => parse_shutdown(&toks, line_len),
        _ => Parsed::fail(ProtoError::Error, line_len, false),
    }
}

/// `get`/`gets`/`bget <key>*` and `gat`/`gats <exptime> <key>*`.
fn parse_retrieval<'a>(
    toks: &Tokens<'a>,
    line: &'a [u8],
    line_len: usize,
    limits: &Limits,
    cas: bool,
    touch: bool,
) -> Parsed<TextRequest<'a>> {
    if toks.count() < 2 {
        return Parsed::fail(ProtoError::Error, line_len, false);
    }
    let exptime = if touch {
        match toks.get(1).and_then(parse_i64) {
            Some(exptime) => exptime,
            None => return Parsed::fail(ProtoError::INVALID_EXPTIME, line_len, false),
        }
    } else {
        0
    };
    let skip = if touch { 2 } else { 1 };
    let count = toks.count().saturating_sub(skip);
    if count > limits.max_keys_per_get {
        return Parsed::fail(ProtoError::BAD_FORMAT, line_len, false);
    }
    let mut keys = Vec::with_capacity(count);
    for key in split_tokens(line).skip(skip) {
        if !valid_key(key) {
            return Parsed::fail(ProtoError::BAD_FORMAT, line_len, false);
        }
        keys.push(key);
    }
    let req = if touch {
        TextRequest::Gat { exptime, keys, cas }
    } else {
        TextRequest::Get { keys, cas }
    };
    Parsed::Done {
        req,
        consumed: line_len,
    }
}

/// `<cmd> <key> <flags> <exptime> <bytes> [noreply]` / `cas ... <bytes> <cas> [noreply]`.
fn parse_store<'a>(
    cmd: StoreCmd,
    toks: &Tokens<'a>,
    buf: &'a [u8],
    line_len: usize,
    limits: &Limits,
) -> Parsed<TextRequest<'a>> {
    let base = if cmd == StoreCmd::Cas { 6 } else { 5 };
    let n = toks.count();
    if n != base && n != base + 1 {
        return Parsed::fail(ProtoError::Error, line_len, false);
    }
    let noreply = toks.noreply();
    let bad = || Parsed::fail(ProtoError::BAD_FORMAT, line_len, noreply);
    let Some(key) = toks.get(1).filter(|k| valid_key(k)) else {
        return bad();
    };
    let header = (
        toks.get(2).and_then(parse_u32),
        toks.get(3).and_then(parse_i64),
        toks.get(4).and_then(parse_i64),
    );
    let (Some(flags), Some(exptime), Some(bytes)) = header else {
        return bad();
    };
    let cas = if cmd == StoreCmd::Cas {
        match toks.get(5).and_then(parse_u64) {
            Some(cas) => cas,
            None => return bad(),
        }
    } else {
        0
    };
    let Some(len) = u64::try_from(bytes)
        .ok()
        .filter(|&b| b <= MAX_DECLARED_LEN)
        .and_then(|b| usize::try_from(b).ok())
    else {
        return bad();
    };
    if super::item_too_large(key.len(), len, limits.max_value) {
        return Parsed::Done {
            req: TextRequest::TooLarge {
                evict: (cmd == StoreCmd::Set).then_some(Cow::Borrowed(key)),
                noreply,
                swallow: len.saturating_add(2),
            },
            consumed: line_len,
        };
    }
    match take_data(buf, line_len, len) {
        Data::Incomplete => Parsed::Incomplete,
        Data::Bad { consumed } => Parsed::fail(ProtoError::BAD_DATA_CHUNK, consumed, noreply),
        Data::Complete { data, consumed } => Parsed::Done {
            req: TextRequest::Store {
                cmd,
                key,
                flags,
                exptime,
                data,
                cas,
                noreply,
            },
            consumed,
        },
    }
}

/// `incr|decr <key> <delta> [noreply]`.
fn parse_arith<'a>(toks: &Tokens<'a>, line_len: usize, incr: bool) -> Parsed<TextRequest<'a>> {
    let n = toks.count();
    if n != 3 && n != 4 {
        return Parsed::fail(ProtoError::Error, line_len, false);
    }
    let noreply = toks.noreply();
    let Some(key) = toks.get(1).filter(|k| valid_key(k)) else {
        return Parsed::fail(ProtoError::BAD_FORMAT, line_len, noreply);
    };
    let Some(delta) = toks.get(2).and_then(parse_u64) else {
        return Parsed::fail(ProtoError::INVALID_DELTA, line_len, noreply);
    };
    let req = if incr {
        TextRequest::Incr {
            key,
            delta,
            noreply,
        }
    } else {
        TextRequest::Decr {
            key,
            delta,
            noreply,
        }
    };
    Parsed::Done {
        req,
        consumed: line_len,
    }
}

/// `delete <key> [0] [noreply]`.
fn parse_delete<'a>(toks: &Tokens<'a>, line_len: usize) -> Parsed<TextRequest<'a>> {
    let n = toks.count();
    if !(2..=4).contains(&n) {
        return Parsed::fail(ProtoError::Error, line_len, false);
    }
    let mut noreply = false;
    if n > 2 {
        let hold_is_zero = toks.get(2) == Some(&b"0"[..]);
        noreply = toks.noreply();
        let valid = (n == 3 && (hold_is_zero || noreply)) || (n == 4 && hold_is_zero && noreply);
        if !valid {
            return Parsed::fail(ProtoError::DELETE_USAGE, line_len, noreply);
        }
    }
    match toks.get(1).filter(|k| valid_key(k)) {
        Some(key) => Parsed::Done {
            req: TextRequest::Delete { key, noreply },
            consumed: line_len,
        },
        None => Parsed::fail(ProtoError::BAD_FORMAT, line_len, noreply),
    }
}

/// `touch <key> <exptime> [noreply]`.
fn parse_touch<'a>(toks: &Tokens<'a>, line_len: usize) -> Parsed<TextRequest<'a>> {
    let n = toks.count();
    if n != 3 && n != 4 {
        return Parsed::fail(ProtoError::Error, line_len, false);
    }
    let noreply = toks.noreply();
    let Some(key) = toks.get(1).filter(|k| valid_key(k)) else {
        return Parsed::fail(ProtoError::BAD_FORMAT, line_len, noreply);
    };
    let Some(exptime) = toks.get(2).and_then(parse_i64) else {
        return Parsed::fail(ProtoError::INVALID_EXPTIME, line_len, noreply);
    };
    Parsed::Done {
        req: TextRequest::Touch {
            key,
            exptime,
            noreply,
        },
        consumed: line_len,
    }
}

/// `flush_all [delay] [noreply]`.
fn parse_flush_all<'a>(toks: &Tokens<'a>, line_len: usize) -> Parsed<TextRequest<'a>> {
    let n = toks.count();
    if !(1..=3).contains(&n) {
        return Parsed::fail(ProtoError::Error, line_len, false);
    }
    let noreply = n >= 2 && toks.noreply();
    // memcached parses the delay whenever the token count is not exactly that of the bare
    // (optionally `noreply`) form; extra tokens after a valid delay are ignored.
    let bare_form = if noreply { 2 } else { 1 };
    let delay = if n == bare_form {
        0
    } else {
        match toks.get(1).and_then(parse_i64) {
            Some(delay) => delay,
            None => return Parsed::fail(ProtoError::INVALID_EXPTIME, line_len, noreply),
        }
    };
    Parsed::Done {
        req: TextRequest::FlushAll { delay, noreply },
        consumed: line_len,
    }
}

/// `verbosity <level> [noreply]`.
fn parse_verbosity<'a>(toks: &Tokens<'a>, line_len: usize) -> Parsed<TextRequest<'a>> {
    let n = toks.count();
    if n != 2 && n != 3 {
        return Parsed::fail(ProtoError::Error, line_len, false);
    }
    let noreply = toks.noreply();
    match toks.get(1).and_then(parse_u32) {
        Some(level) => Parsed::Done {
            req: TextRequest::Verbosity { level, noreply },
            consumed: line_len,
        },
        None => Parsed::fail(ProtoError::BAD_FORMAT, line_len, noreply),
    }
}

/// `shutdown [graceful]`.
fn parse_shutdown<'a>(toks: &Tokens<'a>, line_len: usize) -> Parsed<TextRequest<'a>> {
    let graceful = match (toks.count(), toks.get(1)) {
        (1, _) => false,
        (2, Some(b"graceful")) => true,
        _ => return Parsed::fail(ProtoError::INVALID_SHUTDOWN, line_len, false),
    };
    Parsed::Done {
        req: TextRequest::Shutdown { graceful },
        consumed: line_len,
    }
}

// ---------------------------------------------------------------------------------------------
// Replies.
// ---------------------------------------------------------------------------------------------

/// Storage succeeded.
pub const STORED: &[u8] = b"STORED\r\n";
/// `add`/`replace`/`append`/`prepend` condition not met.
pub const NOT_STORED: &[u8] = b"NOT_STORED\r\n";
/// `cas` on an item modified since it was fetched.
pub const EXISTS: &[u8] = b"EXISTS\r\n";
/// The key does not exist (`cas`, `delete`, `incr`, `decr`, `touch`).
pub const NOT_FOUND: &[u8] = b"NOT_FOUND\r\n";
/// `delete` succeeded.
pub const DELETED: &[u8] = b"DELETED\r\n";
/// `touch` succeeded.
pub const TOUCHED: &[u8] = b"TOUCHED\r\n";
/// `flush_all`, `verbosity` succeeded.
pub const OK: &[u8] = b"OK\r\n";
/// Terminates retrieval and `stats` replies.
pub const END: &[u8] = b"END\r\n";
/// `stats reset` succeeded.
pub const RESET: &[u8] = b"RESET\r\n";

/// Appends `VALUE <key> <flags> <bytes>[ <cas>]\r\n<data>\r\n` for one retrieval hit.
pub fn write_value(out: &mut Vec<u8>, key: &[u8], flags: u32, data: &[u8], cas: Option<u64>) {
    out.reserve(key.len() + data.len() + 48);
    out.extend_from_slice(b"VALUE ");
    out.extend_from_slice(key);
    out.push(b' ');
    push_u64(out, u64::from(flags));
    out.push(b' ');
    push_u64(out, data.len() as u64);
    if let Some(cas) = cas {
        out.push(b' ');
        push_u64(out, cas);
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Appends [`END`].
pub fn write_end(out: &mut Vec<u8>) {
    out.extend_from_slice(END);
}

/// Appends the `incr`/`decr` reply: the new value in decimal and `\r\n`.
pub fn write_number(out: &mut Vec<u8>, value: u64) {
    push_u64(out, value);
    out.extend_from_slice(b"\r\n");
}

/// Appends `VERSION <version>\r\n`.
pub fn write_version(out: &mut Vec<u8>, version: &str) {
    out.extend_from_slice(b"VERSION ");
    out.extend_from_slice(version.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends `STAT <name> <value>\r\n`.
pub fn write_stat(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(b"STAT ");
    out.extend_from_slice(name);
    out.push(b' ');
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends `STAT <name> <value>\r\n` for a numeric value.
pub fn write_stat_u64(out: &mut Vec<u8>, name: &[u8], value: u64) {
    out.extend_from_slice(b"STAT ");
    out.extend_from_slice(name);
    out.push(b' ');
    push_u64(out, value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::super::meta::{MetaCmd, SetMode};
    use super::*;

    fn lim() -> Limits {
        Limits::default()
    }

    fn done(buf: &[u8]) -> (TextRequest<'_>, usize) {
        match parse(buf, &lim()) {
            Parsed::Done { req, consumed } => (req, consumed),
            other => panic!(
                "expected Done for {:?}, got {other:?}",
                String::from_utf8_lossy(buf)
            ),
        }
    }

    fn req(buf: &[u8]) -> TextRequest<'_> {
        let (req, consumed) = done(buf);
        assert_eq!(consumed, buf.len(), "{:?}", String::from_utf8_lossy(buf));
        req
    }

    /// (err, consumed, swallow, noreply, close)
    fn error_with(buf: &[u8], limits: &Limits) -> (ProtoError, usize, usize, bool, bool) {
        match parse(buf, limits) {
            Parsed::Error {
                err,
                consumed,
                swallow,
                noreply,
                close,
            } => (err, consumed, swallow, noreply, close),
            // An oversized storage command is answered (and swallowed) by the caller.
            Parsed::Done {
                req:
                    TextRequest::TooLarge {
                        noreply, swallow, ..
                    },
                consumed,
            } => (ProtoError::TOO_LARGE, consumed, swallow, noreply, false),
            other => panic!(
                "expected Error for {:?}, got {other:?}",
                String::from_utf8_lossy(buf)
            ),
        }
    }

    fn error(buf: &[u8]) -> (ProtoError, usize, usize, bool, bool) {
        error_with(buf, &lim())
    }

    /// A line-only error that consumes the whole buffer and swallows nothing.
    fn line_error(buf: &[u8]) -> (ProtoError, bool) {
        let (err, consumed, swallow, noreply, close) = error(buf);
        assert_eq!(consumed, buf.len(), "{:?}", String::from_utf8_lossy(buf));
        assert_eq!(swallow, 0);
        assert!(!close);
        (err, noreply)
    }

    #[test]
    fn retrieval() {
        assert_eq!(
            req(b"get a\r\n"),
            TextRequest::Get {
                keys: vec![&b"a"[..]],
                cas: false
            }
        );
        assert_eq!(
            req(b"gets a bb  ccc\r\n"),
            TextRequest::Get {
                keys: vec![&b"a"[..], b"bb", b"ccc"],
                cas: true
            }
        );
        assert_eq!(
            req(b"bget a\r\n"),
            TextRequest::Get {
                keys: vec![&b"a"[..]],
                cas: false
            }
        );
        assert_eq!(
            req(b"gat 100 a b\r\n"),
            TextRequest::Gat {
                exptime: 100,
                keys: vec![&b"a"[..], b"b"],
                cas: false
            }
        );
        assert_eq!(
            req(b"gats -1 a\r\n"),
            TextRequest::Gat {
                exptime: -1,
                keys: vec![&b"a"[..]],
                cas: true
            }
        );
        assert_eq!(
            req(b"gat 10\r\n"),
            TextRequest::Gat {
                exptime: 10,
                keys: vec![],
                cas: false
            }
        );
        // Bare \n, leading and trailing spaces, and duplicate keys.
        assert_eq!(
            req(b"  get a a \n"),
            TextRequest::Get {
                keys: vec![&b"a"[..], b"a"],
                cas: false
            }
        );
        let key = [b'k'; 250];
        let line = [&b"get "[..], &key, b"\r\n"].concat();
        assert_eq!(
            req(&line),
            TextRequest::Get {
                keys: vec![&key[..]],
                cas: false
            }
        );
    }

    #[test]
    fn retrieval_errors() {
        assert_eq!(line_error(b"get\r\n"), (ProtoError::Error, false));
        assert_eq!(line_error(b"gets   \r\n"), (ProtoError::Error, false));
        assert_eq!(line_error(b"gat\r\n"), (ProtoError::Error, false));
        assert_eq!(
            line_error(b"gat x a\r\n"),
            (ProtoError::INVALID_EXPTIME, false)
        );
        assert_eq!(line_error(b"get\ta\r\n"), (ProtoError::Error, false));
        assert_eq!(
            line_error(b"get a\x01b\r\n"),
            (ProtoError::BAD_FORMAT, false)
        );
        let key = [b'k'; 251];
        let line = [&b"get a "[..], &key, b" b\r\n"].concat();
        assert_eq!(line_error(&line), (ProtoError::BAD_FORMAT, false));
        let few = Limits {
            max_keys_per_get: 2,
            ..lim()
        };
        assert!(matches!(parse(b"get a b\r\n", &few), Parsed::Done { .. }));
        assert_eq!(
            error_with(b"get a b c\r\n", &few),
            (ProtoError::BAD_FORMAT, 11, 0, false, false)
        );
    }

    #[test]
    fn long_multiget_lines() {
        let mut line = b"get".to_vec();
        for i in 0..400 {
            line.extend_from_slice(format!(" key-{i:06}").as_bytes());
        }
        assert!(line.len() > 2048);
        line.extend_from_slice(b"\r\n");
        match req(&line) {
            TextRequest::Get { keys, cas: false } => {
                assert_eq!(keys.len(), 400);
                assert_eq!(keys[399], b"key-000399");
            }
            other => panic!("{other:?}"),
        }
        // The same length is fatal for other commands.
        let mut set = b"set ".to_vec();
        set.extend(std::iter::repeat_n(b'k', 3000));
        assert_eq!(
            error(&set),
            (ProtoError::LINE_TOO_LONG, set.len(), 0, true, true)
        );
        set.extend_from_slice(b" 0 0 1\r\nx\r\n");
        assert_eq!(
            error(&set),
            (ProtoError::LINE_TOO_LONG, set.len(), 0, true, true)
        );
        // A multiget beyond its own limit is fatal too.
        let small = Limits {
            max_keys_per_get: 2,
            ..lim()
        };
        let mut get = b"get ".to_vec();
        get.extend(std::iter::repeat_n(b'k', small.multiget_line_limit() + 2));
        let (err, _, _, noreply, close) = error_with(&get, &small);
        assert_eq!(err, ProtoError::LINE_TOO_LONG);
        assert!(noreply && close);
        // Exactly max_line is fine.
        let mut exact = b"touch ".to_vec();
        exact.extend(std::iter::repeat_n(b'k', 2048 - 6 - 2));
        exact.extend_from_slice(b" 1");
        assert_eq!(exact.len(), 2048);
        exact.extend_from_slice(b"\r\n");
        assert_eq!(line_error(&exact), (ProtoError::BAD_FORMAT, false));
    }

    #[test]
    fn storage() {
        assert_eq!(
            req(b"set a 5 -1 3\r\nabc\r\n"),
            TextRequest::Store {
                cmd: StoreCmd::Set,
                key: b"a",
                flags: 5,
                exptime: -1,
                data: b"abc",
                cas: 0,
                noreply: false
            }
        );
        assert_eq!(
            req(b"cas a 4294967295 100 2 18446744073709551615 noreply\r\n\r\n\r\n"),
            TextRequest::Store {
                cmd: StoreCmd::Cas,
                key: b"a",
                flags: u32::MAX,
                exptime: 100,
                data: b"\r\n",
                cas: u64::MAX,
                noreply: true
            }
        );
        for (line, cmd) in [
            (&b"add k 0 0 0\r\n\r\n"[..], StoreCmd::Add),
            (&b"replace k 0 0 0\r\n\r\n"[..], StoreCmd::Replace),
            (&b"append k 0 0 0\r\n\r\n"[..], StoreCmd::Append),
            (&b"prepend k 0 0 0 noreply\r\n\r\n"[..], StoreCmd::Prepend),
        ] {
            match req(line) {
                TextRequest::Store {
                    cmd: got,
                    key: b"k",
                    data: b"",
                    ..
                } => assert_eq!(got, cmd),
                other => panic!("{other:?}"),
            }
        }
        // Data may contain anything, including line ends; a 7th token other than noreply is
        // ignored, as in memcached.
        assert_eq!(
            req(b"set a 0 0 4 whatever\r\n\r\n\0\n\r\n"),
            TextRequest::Store {
                cmd: StoreCmd::Set,
                key: b"a",
                flags: 0,
                exptime: 0,
                data: b"\r\n\0\n",
                cas: 0,
                noreply: false
            }
        );
        // The next command stays in the buffer.
        let (_, consumed) = done(b"set a 0 0 1\r\nx\r\nget a\r\n");
        assert_eq!(consumed, 16);
    }

    #[test]
    fn storage_errors() {
        for line in [
            &b"set k 0 0\r\n"[..],
            b"set k 0 0 1 noreply x\r\n",
            b"cas k 0 0 1\r\n",
            b"cas k 0 0 1 1 noreply x\r\n",
            b"SET k 0 0 1\r\n",
            b"prepend\r\n",
        ] {
            assert_eq!(line_error(line), (ProtoError::Error, false), "{line:?}");
        }
        for line in [
            &b"set k x 0 1\r\n"[..],
            b"set k 4294967296 0 1\r\n",
            b"set k -1 0 1\r\n",
            b"set k 0 x 1\r\n",
            b"set k 0 0 x\r\n",
            b"set k 0 0 -1\r\n",
            b"set k 0 0 2147483646\r\n",
            b"set k 0 0 4000000000\r\n",
            b"set k 0 0 99999999999999999999999\r\n",
            b"cas k 0 0 1 x\r\n",
            b"cas k 0 0 1 -1\r\n",
            b"set k\x7f 0 0 1\r\n",
        ] {
            assert_eq!(
                line_error(line),
                (ProtoError::BAD_FORMAT, false),
                "{line:?}"
            );
        }
        let key = [b'k'; 251];
        let line = [&b"set "[..], &key, b" 0 0 1\r\n"].concat();
        assert_eq!(line_error(&line), (ProtoError::BAD_FORMAT, false));
        // noreply silences even errors once the token count is right.
        assert_eq!(
            line_error(b"set k x 0 1 noreply\r\n"),
            (ProtoError::BAD_FORMAT, true)
        );
        assert_eq!(
            line_error(b"set k 0 0 noreply\r\n"),
            (ProtoError::BAD_FORMAT, true)
        );
    }

    #[test]
    fn oversized_values_are_swallowed() {
        let small = Limits {
            max_value: 10,
            ..lim()
        };
        let line = b"set k 0 0 11\r\n";
        assert_eq!(
            error_with(line, &small),
            (ProtoError::TOO_LARGE, line.len(), 13, false, false)
        );
        let line = b"set k 0 0 11 noreply\r\n";
        assert_eq!(
            error_with(line, &small),
            (ProtoError::TOO_LARGE, line.len(), 13, true, false)
        );
        assert!(matches!(
            parse(b"set k 0 0 10\r\n0123456789\r\n", &small),
            Parsed::Done { .. }
        ));
        // The largest declarable length is "too large", not a format error, and nothing is
        // allocated for it.
        let line = b"set k 0 0 2147483645\r\n";
        assert_eq!(
            error(line),
            (
                ProtoError::TOO_LARGE,
                line.len(),
                2_147_483_647,
                false,
                false
            )
        );

        // A driver that honours `swallow` stays in sync.
        let mut stream = b"set k 0 0 20\r\n".to_vec();
        stream.extend_from_slice(b"01234567890123456789\r\nget k\r\n");
        let (_, consumed, swallow, _, _) = error_with(&stream, &small);
        let rest = &stream[consumed + swallow..];
        assert_eq!(
            parse(rest, &small),
            Parsed::Done {
                req: TextRequest::Get {
                    keys: vec![&b"k"[..]],
                    cas: false
                },
                consumed: 7
            }
        );
    }

    #[test]
    fn bad_data_chunks() {
        // memcached consumes bytes + 2 and then reads what follows as a command.
        let buf = b"set k 0 0 3\r\nabcde\r\n";
        assert_eq!(
            error(buf),
            (ProtoError::BAD_DATA_CHUNK, 18, 0, false, false)
        );
        assert_eq!(error(&buf[18..]), (ProtoError::Error, 2, 0, false, false));
        let buf = b"set k 0 0 1 noreply\r\nabc";
        assert_eq!(
            error(buf),
            (ProtoError::BAD_DATA_CHUNK, buf.len(), 0, true, false)
        );
        assert_eq!(parse(b"set k 0 0 3\r\nabc\r", &lim()), Parsed::Incomplete);
        assert_eq!(parse(b"set k 0 0 3\r\nabc", &lim()), Parsed::Incomplete);
        assert_eq!(parse(b"set k 0 0 3\r\n", &lim()), Parsed::Incomplete);
    }

    #[test]
    fn delete() {
        assert_eq!(
            req(b"delete k\r\n"),
            TextRequest::Delete {
                key: b"k",
                noreply: false
            }
        );
        assert_eq!(
            req(b"delete k 0\r\n"),
            TextRequest::Delete {
                key: b"k",
                noreply: false
            }
        );
        assert_eq!(
            req(b"delete k noreply\r\n"),
            TextRequest::Delete {
                key: b"k",
                noreply: true
            }
        );
        assert_eq!(
            req(b"delete k 0 noreply\r\n"),
            TextRequest::Delete {
                key: b"k",
                noreply: true
            }
        );
        assert_eq!(
            line_error(b"delete k 5\r\n"),
            (ProtoError::DELETE_USAGE, false)
        );
        assert_eq!(
            line_error(b"delete k 5 noreply\r\n"),
            (ProtoError::DELETE_USAGE, true)
        );
        assert_eq!(
            line_error(b"delete k noreply 0\r\n"),
            (ProtoError::DELETE_USAGE, false)
        );
        assert_eq!(line_error(b"delete\r\n"), (ProtoError::Error, false));
        assert_eq!(
            line_error(b"delete k 0 noreply x\r\n"),
            (ProtoError::Error, false)
        );
        let key = [b'k'; 251];
        let line = [&b"delete "[..], &key, b" noreply\r\n"].concat();
        assert_eq!(line_error(&line), (ProtoError::BAD_FORMAT, true));
    }

    #[test]
    fn arithmetic() {
        assert_eq!(
            req(b"incr k 18446744073709551615\r\n"),
            TextRequest::Incr {
                key: b"k",
                delta: u64::MAX,
                noreply: false
            }
        );
        assert_eq!(
            req(b"decr k 1 noreply\r\n"),
            TextRequest::Decr {
                key: b"k",
                delta: 1,
                noreply: true
            }
        );
        assert_eq!(line_error(b"incr k\r\n"), (ProtoError::Error, false));
        assert_eq!(
            line_error(b"incr k 1 noreply x\r\n"),
            (ProtoError::Error, false)
        );
        assert_eq!(
            line_error(b"incr k x\r\n"),
            (ProtoError::INVALID_DELTA, false)
        );
        assert_eq!(
            line_error(b"incr k -1\r\n"),
            (ProtoError::INVALID_DELTA, false)
        );
        assert_eq!(
            line_error(b"decr k 18446744073709551616 noreply\r\n"),
            (ProtoError::INVALID_DELTA, true)
        );
        assert_eq!(
            line_error(b"incr k\x01 1\r\n"),
            (ProtoError::BAD_FORMAT, false)
        );
    }

    #[test]
    fn touch_flush_verbosity_and_friends() {
        assert_eq!(
            req(b"touch k 10\r\n"),
            TextRequest::Touch {
                key: b"k",
                exptime: 10,
                noreply: false
            }
        );
        assert_eq!(
            line_error(b"touch k x noreply\r\n"),
            (ProtoError::INVALID_EXPTIME, true)
        );
        assert_eq!(line_error(b"touch k\r\n"), (ProtoError::Error, false));

        assert_eq!(
            req(b"flush_all\r\n"),
            TextRequest::FlushAll {
                delay: 0,
                noreply: false
            }
        );
        assert_eq!(
            req(b"flush_all noreply\r\n"),
            TextRequest::FlushAll {
                delay: 0,
                noreply: true
            }
        );
        assert_eq!(
            req(b"flush_all 10\r\n"),
            TextRequest::FlushAll {
                delay: 10,
                noreply: false
            }
        );
        assert_eq!(
            req(b"flush_all -5 noreply\r\n"),
            TextRequest::FlushAll {
                delay: -5,
                noreply: true
            }
        );
        assert_eq!(
            req(b"flush_all 7 8\r\n"),
            TextRequest::FlushAll {
                delay: 7,
                noreply: false
            }
        );
        assert_eq!(
            line_error(b"flush_all x\r\n"),
            (ProtoError::INVALID_EXPTIME, false)
        );
        assert_eq!(
            line_error(b"flush_all noreply 5\r\n"),
            (ProtoError::INVALID_EXPTIME, false)
        );
        assert_eq!(
            line_error(b"flush_all 1 2 3\r\n"),
            (ProtoError::Error, false)
        );

        assert_eq!(
            req(b"verbosity 1\r\n"),
            TextRequest::Verbosity {
                level: 1,
                noreply: false
            }
        );
        assert_eq!(
            req(b"verbosity 2 noreply\r\n"),
            TextRequest::Verbosity {
                level: 2,
                noreply: true
            }
        );
        assert_eq!(
            line_error(b"verbosity noreply\r\n"),
            (ProtoError::BAD_FORMAT, true)
        );
        assert_eq!(line_error(b"verbosity\r\n"), (ProtoError::Error, false));

        assert_eq!(
            req(b"stats\r\n"),
            TextRequest::Stats {
                arg: None,
                extra: vec![]
            }
        );
        assert_eq!(
            req(b"stats detail on\r\n"),
            TextRequest::Stats {
                arg: Some(&b"detail"[..]),
                extra: vec![&b"on"[..]]
            }
        );
        assert_eq!(req(b"version\r\n"), TextRequest::Version);
        assert_eq!(req(b"version please\r\n"), TextRequest::Version);
        assert_eq!(req(b"quit\r\n"), TextRequest::Quit);
        assert_eq!(
            req(b"shutdown\r\n"),
            TextRequest::Shutdown { graceful: false }
        );
        assert_eq!(
            req(b"shutdown graceful\r\n"),
            TextRequest::Shutdown { graceful: true }
        );
        assert_eq!(
            line_error(b"shutdown now\r\n"),
            (ProtoError::INVALID_SHUTDOWN, false)
        );

        for line in [
            &b"\r\n"[..],
            b"\n",
            b"   \r\n",
            b"x\r\n",
            b"bogus\r\n",
            b"slabs reassign 1 2\r\n",
        ] {
            assert_eq!(line_error(line), (ProtoError::Error, false), "{line:?}");
        }
    }

    #[test]
    fn noreply_accessor() {
        assert!(req(b"delete k noreply\r\n").noreply());
        assert!(!req(b"get k\r\n").noreply());
        assert!(!req(b"mg k q\r\n").noreply());
    }

    #[test]
    fn meta_commands_are_delegated() {
        match req(b"ms k 2 MA q\r\nhi\r\n") {
            TextRequest::Meta(m) => {
                assert_eq!(m.cmd, MetaCmd::Set(SetMode::Append));
                assert_eq!(m.data, b"hi");
                assert!(m.flags.quiet);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(line_error(b"mz k\r\n"), (ProtoError::Error, false));
        assert_eq!(line_error(b"mgg k\r\n"), (ProtoError::Error, false));
        assert_eq!(
            line_error(b"mg k v v\r\n"),
            (ProtoError::Client("duplicate flag"), false)
        );
    }

    const PIPELINE: &[u8] = b"set a 0 0 3\r\nabc\r\nget a b\r\ngets a\nincr a 5 noreply\r\n\
        delete a\r\nmg a v k O12\r\nms b 2 T5 MA\r\nhi\r\nmn\r\ncas b 1 2 0 9\r\n\r\n\
        flush_all 10\r\ntouch b 1\r\n";

    #[test]
    fn every_split_point_of_a_pipeline_is_incomplete() {
        let limits = lim();
        let mut pos = 0;
        let mut commands = 0;
        while pos < PIPELINE.len() {
            let rest = &PIPELINE[pos..];
            let Parsed::Done { consumed, .. } = parse(rest, &limits) else {
                panic!("command at {pos} did not parse: {:?}", parse(rest, &limits));
            };
            assert!(consumed >= 1 && consumed <= rest.len());
            for cut in 0..consumed {
                assert_eq!(
                    parse(&rest[..cut], &limits),
                    Parsed::Incomplete,
                    "cut {cut} at {pos}"
                );
            }
            // The result does not depend on what follows.
            assert_eq!(parse(&rest[..consumed], &limits), parse(rest, &limits));
            pos += consumed;
            commands += 1;
        }
        assert_eq!(pos, PIPELINE.len());
        assert_eq!(commands, 11);
    }

    /// xorshift64: deterministic pseudo-random numbers for the garbage test.
    struct Rng(u64);

    impl Rng {
        fn next_u64(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next_u64() % n as u64) as usize
        }
    }

    #[test]
    fn garbage_never_panics_and_always_progresses() {
        const WORDS: &[&[u8]] = &[
            b"get",
            b"gets",
            b"gat",
            b"gats",
            b"set",
            b"cas",
            b"add",
            b"append",
            b"delete",
            b"incr",
            b"decr",
            b"touch",
            b"flush_all",
            b"stats",
            b"version",
            b"verbosity",
            b"shutdown",
            b"mg",
            b"ms",
            b"md",
            b"ma",
            b"mn",
            b"me",
            b"noreply",
            b"0",
            b"1",
            b"3",
            b"-1",
            b"2147483645",
            b"18446744073709551616",
            b"k",
            b"key",
            b"v",
            b"q",
            b"O1",
            b"T10",
            b"N5",
            b"MA",
            b"MX",
            b"b",
            b"Zm9v",
            b"!!",
            b"D",
            b"C9",
            b"F",
            b"\r\n",
            b"\n",
            b" ",
            b"  ",
            b"\r",
            b"abc",
            b"\0",
            b"\xff",
            b"\t",
        ];
        let limits = Limits {
            max_line: 64,
            max_value: 16,
            max_keys_per_get: 4,
        };
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..4000 {
            let mut buf = Vec::new();
            for _ in 0..rng.below(24) {
                buf.extend_from_slice(WORDS[rng.below(WORDS.len())]);
                if rng.below(3) == 0 {
                    buf.push(b' ');
                }
            }
            let mut pos = 0;
            while pos < buf.len() {
                let rest = &buf[pos..];
                match parse(rest, &limits) {
                    Parsed::Incomplete => break,
                    Parsed::Done { consumed, .. } => {
                        assert!(consumed >= 1 && consumed <= rest.len());
                        for cut in 0..consumed {
                            assert_eq!(parse(&rest[..cut], &limits), Parsed::Incomplete);
                        }
                        pos += consumed;
                    }
                    Parsed::Error {
                        consumed,
                        swallow,
                        close,
                        ..
                    } => {
                        assert!(consumed >= 1 && consumed <= rest.len());
                        if close {
                            break;
                        }
                        pos = pos.saturating_add(consumed).saturating_add(swallow);
                    }
                }
            }
        }
    }

    #[test]
    fn replies() {
        let mut out = Vec::new();
        write_value(&mut out, b"k", 5, b"abc", None);
        write_value(&mut out, b"k2", 0, b"", Some(9));
        write_end(&mut out);
        assert_eq!(out, b"VALUE k 5 3\r\nabc\r\nVALUE k2 0 0 9\r\n\r\nEND\r\n");

        let mut out = Vec::new();
        write_number(&mut out, 0);
        write_number(&mut out, u64::MAX);
        write_version(&mut out, "1.6.21");
        write_stat(&mut out, b"version", b"1.6.21");
        write_stat_u64(&mut out, b"curr_items", 42);
        assert_eq!(
            out,
            b"0\r\n18446744073709551615\r\nVERSION 1.6.21\r\n\
              STAT version 1.6.21\r\nSTAT curr_items 42\r\n"
        );
        let all = [
            STORED, NOT_STORED, EXISTS, NOT_FOUND, DELETED, TOUCHED, OK, END, RESET,
        ]
        .concat();
        assert_eq!(
            all,
            b"STORED\r\nNOT_STORED\r\nEXISTS\r\nNOT_FOUND\r\nDELETED\r\nTOUCHED\r\nOK\r\nEND\r\nRESET\r\n"
        );
    }
}
