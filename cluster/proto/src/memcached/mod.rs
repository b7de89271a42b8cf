//! memcached wire protocols: the classic text protocol ([`text`]), the meta protocol ([`meta`])
//! and the binary protocol ([`binary`]).
//!
//! The text and meta codecs are pure functions over byte slices that answer like memcached 1.6
//! (`proto_text.c`), byte for byte, for every request and every error.
//!
//! # Invariants
//!
//! * **Panic-free.** Every byte sequence is handled. There is no slice indexing that is not
//!   bounds-checked (`get`) or masked into range, and no `unwrap` on anything derived from input.
//! * **Allocation-light.** Parsed requests borrow keys and values from the caller's buffer. The
//!   only allocations are the key list of a multi-key retrieval (at most
//!   [`Limits::max_keys_per_get`] entries), the arguments of `stats` (bounded by the line length)
//!   and base64-decoded meta keys (shorter than [`KEY_MAX_LEN`]). Nothing is ever allocated in
//!   proportion to a *declared* length: a storage command is checked against
//!   [`Limits::max_value`] before its data block is waited for.
//! * **Progress.** [`Parsed::Done`] and [`Parsed::Error`] always carry
//!   `1 <= consumed <= buf.len()`, so a caller that drops `consumed` bytes after every call can
//!   never spin on the same input.
//! * **Determinism.** The result for a buffer never depends on how the bytes were split across
//!   reads: every proper prefix of a request that parses as `Done` parses as
//!   [`Parsed::Incomplete`].
//!
//! # Driving a connection
//!
//! ```text
//! loop {
//!     match text::parse(&buf, &limits) {
//!         Parsed::Incomplete => read more (buf is bounded by max_line / max_value + line),
//!         Parsed::Done { req, consumed } => { execute(req); buf.drain(..consumed) }
//!         Parsed::Error { err, consumed, swallow, noreply, close } => {
//!             if !noreply { err.write(&mut out) }
//!             buf.drain(..consumed);
//!             discard the next `swallow` bytes of the stream (some may already be in buf);
//!             if close { flush `out` and close the connection }
//!         }
//!     }
//! }
//! ```

use std::fmt;

pub mod binary;
pub mod meta;
pub mod text;

/// Longest key memcached accepts (`KEY_MAX_LENGTH`). For base64 meta keys the limit applies to
/// the encoded form, as in memcached.
pub const KEY_MAX_LEN: usize = 250;

/// Largest `<bytes>` / `<datalen>` memcached accepts on a command line (`INT_MAX - 2`). A larger
/// declared length is `CLIENT_ERROR bad command line format` (nothing swallowed), not an
/// oversized object.
pub const MAX_DECLARED_LEN: u64 = i32::MAX as u64 - 2;

/// Limits applied while parsing; see [`Limits::default`] for memcached's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest command line, excluding its `\r\n`, for every command except multi-key retrievals
    /// (`get`, `gets`, `gat`, `gats`, `bget`), which get [`Limits::multiget_line_limit`].
    /// memcached closes a connection that sends 2048 bytes without a newline.
    pub max_line: usize,
    /// Largest data block a storage command (`set` .. `cas`, `ms`) may declare. Larger
    /// declarations are answered with `SERVER_ERROR object too large for cache` and the data
    /// block is swallowed. memcached's default item size limit is 1 MiB.
    pub max_value: usize,
    /// Most keys one retrieval command may name (memcached has no limit; this bounds the key
    /// list allocation). More keys are answered with `CLIENT_ERROR bad command line format`.
    pub max_keys_per_get: usize,
}

/// Bytes memcached adds to a value to make an item (header, cas, the key's NUL and the data
/// block's `\r\n`, on 64-bit builds): its `-I` limit applies to the item, so the largest value
/// a key of `n` bytes may hold is `max_value - n - ITEM_OVERHEAD`.
pub const ITEM_OVERHEAD: usize = 59;

/// Whether an item of this key and value length exceeds `max_item` (see [`ITEM_OVERHEAD`]).
pub fn item_too_large(key_len: usize, value_len: usize, max_item: usize) -> bool {
    value_len
        .saturating_add(key_len)
        .saturating_add(ITEM_OVERHEAD)
        > max_item
}

impl Limits {
    /// memcached's limits: 2048-byte lines, 1 MiB values, and 4096 keys per retrieval.
    pub const DEFAULT: Limits = Limits {
        max_line: 2048,
        max_value: 1024 * 1024,
        max_keys_per_get: 4096,
    };

    /// Line length limit for multi-key retrievals: room for [`Limits::max_keys_per_get`]
    /// maximal keys plus the command and exptime, and never less than [`Limits::max_line`].
    pub fn multiget_line_limit(&self) -> usize {
        self.max_keys_per_get
            .saturating_mul(KEY_MAX_LEN + 1)
            .saturating_add(32)
            .max(self.max_line)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Outcome of parsing the front of a receive buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Parsed<T> {
    /// The buffer does not yet hold a complete request; read more and call again with the same
    /// (grown) buffer. Nothing is consumed.
    Incomplete,
    /// A complete request; drop `consumed` bytes (`>= 1`) from the front of the buffer.
    Done {
        /// The request, borrowing from the buffer.
        req: T,
        /// Bytes the request occupied, command line and data block included.
        consumed: usize,
    },
    /// A request that must be answered with an error.
    Error {
        /// The error line to send (see [`ProtoError::write`]).
        err: ProtoError,
        /// Bytes to drop from the front of the buffer (`>= 1`).
        consumed: usize,
        /// Bytes to discard from the stream *after* `consumed` (memcached's `conn_swallow`): the
        /// declared data block plus its `\r\n` of a storage command that was rejected after its
        /// length was understood. Part of it may already be buffered. Usually 0.
        swallow: usize,
        /// Do not send `err`: the text command carried `noreply` (memcached suppresses even
        /// errors then) or the connection is being closed silently.
        noreply: bool,
        /// The stream cannot be resynchronised; close the connection after flushing.
        close: bool,
    },
}

impl<T> Parsed<T> {
    /// Converts the request of a [`Parsed::Done`], keeping everything else.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Parsed<U> {
        match self {
            Parsed::Incomplete => Parsed::Incomplete,
            Parsed::Done { req, consumed } => Parsed::Done {
                req: f(req),
                consumed,
            },
            Parsed::Error {
                err,
                consumed,
                swallow,
                noreply,
                close,
            } => Parsed::Error {
                err,
                consumed,
                swallow,
                noreply,
                close,
            },
        }
    }

    /// An error that consumes `consumed` bytes and swallows nothing.
    pub(crate) fn fail(err: ProtoError, consumed: usize, noreply: bool) -> Self {
        Parsed::Error {
            err,
            consumed,
            swallow: 0,
            noreply,
            close: false,
        }
    }

    /// memcached closes a connection whose command line does not end within the limit, without
    /// writing anything.
    pub(crate) fn line_too_long(buffered: usize) -> Self {
        Parsed::Error {
            err: ProtoError::LINE_TOO_LONG,
            consumed: buffered,
            swallow: 0,
            noreply: true,
            close: true,
        }
    }
}

/// An error reply of the text and meta protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtoError {
    /// `ERROR`: unknown command, or a known command with the wrong number of tokens.
    Error,
    /// `CLIENT_ERROR <msg>`: the request does not conform to the protocol.
    Client(&'static str),
    /// `SERVER_ERROR <msg>`: the server cannot carry out the request.
    Server(&'static str),
}

impl ProtoError {
    /// Malformed command line, key longer than 250 bytes, bad number in a storage command.
    pub const BAD_FORMAT: ProtoError = ProtoError::Client("bad command line format");
    /// A data block not followed by `\r\n`.
    pub const BAD_DATA_CHUNK: ProtoError = ProtoError::Client("bad data chunk");
    /// A declared data block larger than the item size limit (its bytes are swallowed).
    pub const TOO_LARGE: ProtoError = ProtoError::Server("object too large for cache");
    /// No memory for an item that would fit (server-side; not produced by the parsers).
    pub const OUT_OF_MEMORY: ProtoError = ProtoError::Server("out of memory storing object");
    /// Non-numeric exptime in `touch`, `gat`, `gats` and `flush_all`.
    pub const INVALID_EXPTIME: ProtoError = ProtoError::Client("invalid exptime argument");
    /// Non-numeric or out-of-range delta in `incr` / `decr`.
    pub const INVALID_DELTA: ProtoError = ProtoError::Client("invalid numeric delta argument");
    /// `incr` / `decr` / `ma` on a value that is not a decimal u64 (server-side).
    pub const NON_NUMERIC: ProtoError =
        ProtoError::Client("cannot increment or decrement non-numeric value");
    /// `delete <key> <x>` where `<x>` is neither `0` nor `noreply` (note the two spaces).
    pub const DELETE_USAGE: ProtoError =
        ProtoError::Client("bad command line format.  Usage: delete <key> [noreply]");
    /// `shutdown` with an argument other than `graceful`.
    pub const INVALID_SHUTDOWN: ProtoError = ProtoError::Client("invalid shutdown mode");
    /// No newline within the line limit. memcached closes the connection without a reply, so
    /// the parsers report it with `noreply` and `close` set.
    pub const LINE_TOO_LONG: ProtoError = ProtoError::Client("line too long");

    /// Appends the reply line, `\r\n` included.
    pub fn write(&self, out: &mut Vec<u8>) {
        match self {
            ProtoError::Error => out.extend_from_slice(b"ERROR"),
            ProtoError::Client(msg) => {
                out.extend_from_slice(b"CLIENT_ERROR ");
                out.extend_from_slice(msg.as_bytes());
            }
            ProtoError::Server(msg) => {
                out.extend_from_slice(b"SERVER_ERROR ");
                out.extend_from_slice(msg.as_bytes());
            }
        }
        out.extend_from_slice(b"\r\n");
    }
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtoError::Error => f.write_str("ERROR"),
            ProtoError::Client(msg) => write!(f, "CLIENT_ERROR {msg}"),
            ProtoError::Server(msg) => write!(f, "SERVER_ERROR {msg}"),
        }
    }
}

impl std::error::Error for ProtoError {}

// ---------------------------------------------------------------------------------------------
// Shared scanning helpers for the text and meta parsers.
// ---------------------------------------------------------------------------------------------

/// Result of looking for the command line at the front of a buffer.
pub(crate) enum Line<'a> {
    /// No newline yet and the limit is not exceeded.
    Incomplete,
    /// The line is (or will be) longer than the limit.
    TooLong,
    /// A line: its content without the `\n` or `\r\n`, and the bytes it occupies.
    Complete { line: &'a [u8], consumed: usize },
}

/// Finds the first line. Like memcached, a bare `\n` terminates a command line as well as
/// `\r\n`; the `\r` is stripped only directly before the `\n`. `limit` bounds the content.
pub(crate) fn next_line(buf: &[u8], limit: usize) -> Line<'_> {
    let window_len = buf.len().min(limit.saturating_add(2));
    let window = buf.get(..window_len).unwrap_or(buf);
    match window.iter().position(|&b| b == b'\n') {
        Some(nl) => {
            let end = if nl > 0 && window.get(nl - 1) == Some(&b'\r') {
                nl - 1
            } else {
                nl
            };
            match buf.get(..end) {
                Some(line) if end <= limit => Line::Complete {
                    line,
                    consumed: nl + 1,
                },
                _ => Line::TooLong,
            }
        }
        None if buf.len() >= limit.saturating_add(2) => Line::TooLong,
        None => Line::Incomplete,
    }
}

/// The line limit for the command at the front of `buf`: multi-key retrievals may be long.
pub(crate) fn line_limit(buf: &[u8], limits: &Limits) -> usize {
    const MULTI_KEY: [&[u8]; 5] = [b"get ", b"gets ", b"gat ", b"gats ", b"bget "];
    let start = buf
        .iter()
        .take(limits.max_line)
        .position(|&b| b != b' ')
        .unwrap_or(0);
    let rest = buf.get(start..).unwrap_or_default();
    if MULTI_KEY.iter().any(|prefix| rest.starts_with(prefix)) {
        limits.multiget_line_limit()
    } else {
        limits.max_line
    }
}

/// Splits a command line into tokens the way memcached does: only `' '` separates tokens, runs
/// of spaces collapse, and leading/trailing spaces are ignored (a tab is part of a token).
pub(crate) fn split_tokens(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(|&b| b == b' ').filter(|tok| !tok.is_empty())
}

/// How many tokens [`Tokens`] keeps (memcached's `MAX_TOKENS`).
const MAX_TOKENS: usize = 24;

/// The first [`MAX_TOKENS`] tokens of a line, the total token count and the last token, without
/// allocating.
#[derive(Clone, Copy)]
pub(crate) struct Tokens<'a> {
    toks: [&'a [u8]; MAX_TOKENS],
    stored: usize,
    total: usize,
    last: &'a [u8],
}

impl<'a> Tokens<'a> {
    pub(crate) fn new(line: &'a [u8]) -> Self {
        let empty: &'a [u8] = &[];
        let mut toks = [empty; MAX_TOKENS];
        let mut stored = 0;
        let mut total = 0;
        let mut last = empty;
        for tok in split_tokens(line) {
            if let Some(slot) = toks.get_mut(stored) {
                *slot = tok;
                stored += 1;
            }
            total += 1;
            last = tok;
        }
        Tokens {
            toks,
            stored,
            total,
            last,
        }
    }

    /// Number of tokens on the line (not capped).
    pub(crate) fn count(&self) -> usize {
        self.total
    }

    /// Token `i`, if it is among the first [`MAX_TOKENS`].
    pub(crate) fn get(&self, i: usize) -> Option<&'a [u8]> {
        if i < self.stored {
            self.toks.get(i).copied()
        } else {
            None
        }
    }

    /// memcached's `set_noreply_maybe`: the last token is exactly `noreply`.
    pub(crate) fn noreply(&self) -> bool {
        self.last == b"noreply"
    }
}

/// Decimal u64 with an optional `+` (as `strtoull` accepts); no sign, space or overflow.
pub(crate) fn parse_u64(tok: &[u8]) -> Option<u64> {
    let digits = tok.strip_prefix(b"+").unwrap_or(tok);
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &b| {
        let d = b.checked_sub(b'0').filter(|d| *d < 10)?;
        acc.checked_mul(10)?.checked_add(u64::from(d))
    })
}

/// Decimal u32 with an optional `+`.
pub(crate) fn parse_u32(tok: &[u8]) -> Option<u32> {
    parse_u64(tok).and_then(|v| u32::try_from(v).ok())
}

/// Decimal i64 with an optional sign; the full range including `i64::MIN`.
pub(crate) fn parse_i64(tok: &[u8]) -> Option<i64> {
    let (neg, digits) = match tok.first() {
        Some(&b'-') => (true, tok.get(1..).unwrap_or_default()),
        Some(&b'+') => (false, tok.get(1..).unwrap_or_default()),
        _ => (false, tok),
    };
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0i64, |acc, &b| {
        let d = i64::from(b.checked_sub(b'0').filter(|d| *d < 10)?);
        let acc = acc.checked_mul(10)?;
        if neg {
            acc.checked_sub(d)
        } else {
            acc.checked_add(d)
        }
    })
}

/// A text key: 1..=250 bytes, no control characters, spaces or DEL (bytes >= 0x80 are allowed).
/// memcached itself only checks the length; we also refuse control characters, as the protocol
/// document requires.
pub(crate) fn valid_key(key: &[u8]) -> bool {
    !key.is_empty() && key.len() <= KEY_MAX_LEN && key.iter().all(|&b| b > b' ' && b != 0x7f)
}

/// Appends `n` in decimal.
pub(crate) fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start = start.saturating_sub(1);
        if let Some(slot) = digits.get_mut(start) {
            // `n % 10` is a single digit, so the cast cannot truncate.
            *slot = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(digits.get(start..).unwrap_or_default());
}

/// Appends `n` in decimal, with a leading `-` when negative.
pub(crate) fn push_i64(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    push_u64(out, n.unsigned_abs());
}

/// Result of looking for a data block of a storage command.
pub(crate) enum Data<'a> {
    /// Fewer than `len + 2` bytes after the line.
    Incomplete,
    /// The block is not followed by `\r\n`; memcached still consumes `len + 2` bytes.
    Bad { consumed: usize },
    /// The block, and the bytes line + block + `\r\n` occupy.
    Complete { data: &'a [u8], consumed: usize },
}

/// Takes the `len`-byte data block that starts at `start` and must be followed by `\r\n`.
pub(crate) fn take_data(buf: &[u8], start: usize, len: usize) -> Data<'_> {
    let Some(total) = start.checked_add(len).and_then(|end| end.checked_add(2)) else {
        // Unreachable for lengths within MAX_DECLARED_LEN; resynchronise by dropping the buffer.
        return Data::Bad {
            consumed: buf.len().max(1),
        };
    };
    let end = total - 2;
    match (buf.get(start..end), buf.get(end..total)) {
        (Some(data), Some(term)) if term == b"\r\n" => Data::Complete {
            data,
            consumed: total,
        },
        (Some(_), Some(_)) => Data::Bad { consumed: total },
        _ => Data::Incomplete,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_of(buf: &[u8], limit: usize) -> Option<(&[u8], usize)> {
        match next_line(buf, limit) {
            Line::Complete { line, consumed } => Some((line, consumed)),
            Line::Incomplete | Line::TooLong => None,
        }
    }

    #[test]
    fn error_lines_are_exact() {
        let mut out = Vec::new();
        ProtoError::Error.write(&mut out);
        ProtoError::BAD_FORMAT.write(&mut out);
        ProtoError::TOO_LARGE.write(&mut out);
        ProtoError::DELETE_USAGE.write(&mut out);
        assert_eq!(
            out,
            b"ERROR\r\nCLIENT_ERROR bad command line format\r\n\
              SERVER_ERROR object too large for cache\r\n\
              CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n"
        );
        assert_eq!(
            ProtoError::BAD_DATA_CHUNK.to_string(),
            "CLIENT_ERROR bad data chunk"
        );
        assert_eq!(ProtoError::Error.to_string(), "ERROR");
        assert_eq!(
            ProtoError::OUT_OF_MEMORY.to_string(),
            "SERVER_ERROR out of memory storing object"
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u64(b"0"), Some(0));
        assert_eq!(parse_u64(b"+5"), Some(5));
        assert_eq!(parse_u64(b"007"), Some(7));
        assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64(b"18446744073709551616"), None);
        for bad in [
            &b""[..],
            b"+",
            b"-1",
            b"-0",
            b"1a",
            b" 1",
            b"1 ",
            b"0x10",
            b"\t1",
        ] {
            assert_eq!(parse_u64(bad), None, "{bad:?}");
        }
        assert_eq!(parse_u32(b"4294967295"), Some(u32::MAX));
        assert_eq!(parse_u32(b"4294967296"), None);
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64(b"9223372036854775808"), None);
        assert_eq!(parse_i64(b"-9223372036854775809"), None);
        assert_eq!(parse_i64(b"-1"), Some(-1));
        assert_eq!(parse_i64(b"+1"), Some(1));
        for bad in [&b""[..], b"-", b"+", b"--1", b"1-", b"1.5"] {
            assert_eq!(parse_i64(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn decimal_output() {
        let mut out = Vec::new();
        push_u64(&mut out, 0);
        out.push(b' ');
        push_u64(&mut out, u64::MAX);
        out.push(b' ');
        push_i64(&mut out, -1);
        out.push(b' ');
        push_i64(&mut out, i64::MIN);
        out.push(b' ');
        push_i64(&mut out, 42);
        assert_eq!(out, b"0 18446744073709551615 -1 -9223372036854775808 42");
    }

    #[test]
    fn lines() {
        assert!(matches!(next_line(b"", 10), Line::Incomplete));
        assert!(matches!(next_line(b"abc", 10), Line::Incomplete));
        assert!(matches!(next_line(b"abc\r", 10), Line::Incomplete));
        assert_eq!(line_of(b"abc\r\nrest", 10), Some((&b"abc"[..], 5)));
        assert_eq!(line_of(b"abc\nrest", 10), Some((&b"abc"[..], 4)));
        assert_eq!(line_of(b"a\rb\r\n", 10), Some((&b"a\rb"[..], 5)));
        assert_eq!(line_of(b"\r\n", 10), Some((&b""[..], 2)));
        assert_eq!(line_of(b"\n", 10), Some((&b""[..], 1)));
        // Exactly at the limit is fine, one more byte is not, with or without the newline.
        assert_eq!(
            line_of(b"0123456789\r\n", 10),
            Some((&b"0123456789"[..], 12))
        );
        assert!(matches!(next_line(b"0123456789", 10), Line::Incomplete));
        assert!(matches!(next_line(b"0123456789\r", 10), Line::Incomplete));
        assert!(matches!(next_line(b"0123456789A\r\n", 10), Line::TooLong));
        assert!(matches!(next_line(b"0123456789AB", 10), Line::TooLong));
        assert!(matches!(next_line(b"0123456789A\n", 10), Line::TooLong));
        assert!(matches!(next_line(b"x\n", 0), Line::TooLong));
        assert_eq!(line_of(b"\n", 0), Some((&b""[..], 1)));
    }

    #[test]
    fn multiget_lines_may_be_long() {
        let limits = Limits::default();
        assert_eq!(
            line_limit(b"get a b", &limits),
            limits.multiget_line_limit()
        );
        assert_eq!(
            line_limit(b"   gets a", &limits),
            limits.multiget_line_limit()
        );
        assert_eq!(
            line_limit(b"gat 1 a", &limits),
            limits.multiget_line_limit()
        );
        assert_eq!(line_limit(b"set a", &limits), 2048);
        assert_eq!(line_limit(b"getx a", &limits), 2048);
        assert_eq!(line_limit(b"ge", &limits), 2048);
        assert!(limits.multiget_line_limit() > 4096 * 250);
        let tiny = Limits {
            max_keys_per_get: 0,
            ..Limits::default()
        };
        assert_eq!(tiny.multiget_line_limit(), 2048);
        let huge = Limits {
            max_keys_per_get: usize::MAX,
            ..Limits::default()
        };
        assert_eq!(huge.multiget_line_limit(), usize::MAX);
    }

    #[test]
    fn tokens() {
        let toks = Tokens::new(b"  set  key\t1 0   5 noreply  ");
        // A tab is part of a token, as in memcached: set, key\t1, 0, 5, noreply.
        assert_eq!(toks.count(), 5);
        assert_eq!(toks.get(0), Some(&b"set"[..]));
        assert_eq!(toks.get(1), Some(&b"key\t1"[..]));
        assert_eq!(toks.get(4), Some(&b"noreply"[..]));
        assert_eq!(toks.get(5), None);
        assert!(toks.noreply());
        let empty = Tokens::new(b"   ");
        assert_eq!(empty.count(), 0);
        assert_eq!(empty.get(0), None);
        assert!(!empty.noreply());
        let many: Vec<u8> = (0..30)
            .flat_map(|i| format!("t{i} ").into_bytes())
            .collect();
        let toks = Tokens::new(&many);
        assert_eq!(toks.count(), 30);
        assert_eq!(toks.get(23), Some(&b"t23"[..]));
        assert_eq!(toks.get(24), None);
    }

    #[test]
    fn keys() {
        assert!(valid_key(b"a"));
        assert!(valid_key(&[b'k'; KEY_MAX_LEN]));
        assert!(valid_key("ключ".as_bytes()));
        assert!(!valid_key(b""));
        assert!(!valid_key(&[b'k'; KEY_MAX_LEN + 1]));
        assert!(!valid_key(b"a\x01b"));
        assert!(!valid_key(b"a\tb"));
        assert!(!valid_key(b"a\x7fb"));
        assert!(!valid_key(b"a\0"));
    }

    #[test]
    fn data_blocks() {
        assert!(matches!(
            take_data(b"L\nabc\r\nX", 2, 3),
            Data::Complete {
                data: b"abc",
                consumed: 7
            }
        ));
        assert!(matches!(take_data(b"L\nabc\r", 2, 3), Data::Incomplete));
        assert!(matches!(take_data(b"L\nab", 2, 3), Data::Incomplete));
        assert!(matches!(
            take_data(b"L\nabcde", 2, 3),
            Data::Bad { consumed: 7 }
        ));
        assert!(matches!(
            take_data(b"L\n\r\n", 2, 0),
            Data::Complete {
                data: b"",
                consumed: 4
            }
        ));
        assert!(matches!(
            take_data(b"L\n", 2, usize::MAX),
            Data::Bad { consumed: 2 }
        ));
    }

    #[test]
    fn map_keeps_errors() {
        let p: Parsed<u8> = Parsed::Done {
            req: 1,
            consumed: 3,
        };
        assert_eq!(
            p.map(u16::from),
            Parsed::Done {
                req: 1u16,
                consumed: 3
            }
        );
        let e: Parsed<u8> = Parsed::line_too_long(9);
        assert_eq!(
            e.map(u16::from),
            Parsed::Error {
                err: ProtoError::LINE_TOO_LONG,
                consumed: 9,
                swallow: 0,
                noreply: true,
                close: true
            }
        );
        assert_eq!(Parsed::<u8>::Incomplete.map(u16::from), Parsed::Incomplete);
    }
}
