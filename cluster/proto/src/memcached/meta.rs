//! memcached meta protocol: `mg`, `ms`, `md`, `ma`, `mn` and `me` requests and their replies.
//!
//! Meta commands share the text protocol's connection and framing; [`super::text::parse`]
//! delegates to this module, and [`parse`] serves meta-only streams. Requests are
//! `<cm> <key> <flag>*\r\n` (`ms <key> <datalen> <flag>*\r\n<data>\r\n`); each flag is one
//! character, some followed by a token (`T30`, `O123`). Replies are a two-letter code, the
//! requested return flags in request order, and for `VA` a data block.
//!
//! # memcached 1.6 behaviour reproduced here
//!
//! * The same flag parser serves every command, so any known flag is accepted (and ignored where
//!   it means nothing). A repeated flag, or a flag byte >= 127, is `CLIENT_ERROR duplicate flag`;
//!   an unknown one `CLIENT_ERROR invalid flag` (reported at once); a bad numeric token
//!   `CLIENT_ERROR bad token in command line format` (`J`: `invalid numeric initial value`,
//!   `D`: `invalid numeric delta value`, `F`: `bad command line format`, `M` with other than one
//!   character: `incorrect length for M token`); a base64 key that does not decode
//!   `CLIENT_ERROR error decoding key`. Later errors overwrite earlier messages. `md` and `ma`
//!   report all of these as `CLIENT_ERROR invalid or duplicate flag`.
//! * No key answers `ERROR` (`me` without a key: `CLIENT_ERROR bad command line format`); a key
//!   over 250 bytes (before base64 decoding) answers `CLIENT_ERROR bad command line format`.
//! * At most 19 tokens per line: more answer `CLIENT_ERROR options flags are too long` (`mg`)
//!   or `CLIENT_ERROR options flags too long` (`ms`, `md`, `ma`).
//! * An `O` token longer than 32 bytes (its `O` included) answers
//!   `CLIENT_ERROR opaque token too long`.
//! * `ms`: a missing or invalid `<datalen>` (negative, above `INT_MAX - 2`) answers
//!   `CLIENT_ERROR bad command line format` and swallows nothing; every later error (bad flags,
//!   `CLIENT_ERROR invalid mode for ms M token`, `SERVER_ERROR object too large for cache`)
//!   also swallows `datalen + 2` bytes. A bad data block answers `CLIENT_ERROR bad data chunk`.
//! * `ma` with an unknown mode answers `CLIENT_ERROR invalid mode for ma M token`.
//! * Errors are always sent, whatever the `q` flag says; see [`MetaRequest::suppress`] for what
//!   `q` hides.
//!
//! Deviations: TTL tokens are parsed as i64 (memcached: i32), and keys with control characters
//! are refused like in the text protocol.

use std::borrow::Cow;

use super::{
    Data, KEY_MAX_LEN, Limits, Line, MAX_DECLARED_LEN, Parsed, ProtoError, Tokens, next_line,
    parse_i64, parse_u32, parse_u64, push_i64, push_u64, take_data, valid_key,
};

/// Most tokens on a meta command line (memcached's `MFLAG_MAX_OPT_LENGTH` counts one more).
const MAX_META_TOKENS: usize = 19;

/// Longest `O` (opaque) token, its leading `O` included.
pub const MAX_OPAQUE_LEN: usize = 32;

/// Capacity of the flag order record; [`MAX_META_TOKENS`] keeps real requests well below it.
const MAX_FLAGS: usize = 24;

const MSG_BAD_FORMAT: &str = "bad command line format";
const MSG_DUPLICATE: &str = "duplicate flag";
const MSG_INVALID: &str = "invalid flag";
const MSG_BAD_TOKEN: &str = "bad token in command line format";
const MSG_DECODE_KEY: &str = "error decoding key";
const MSG_M_LENGTH: &str = "incorrect length for M token";
const MSG_INITIAL: &str = "invalid numeric initial value";
const MSG_DELTA: &str = "invalid numeric delta value";
const MSG_INVALID_OR_DUPLICATE: &str = "invalid or duplicate flag";
const MSG_OPAQUE_TOO_LONG: &str = "opaque token too long";
const MSG_MG_TOO_MANY: &str = "options flags are too long";
const MSG_TOO_MANY: &str = "options flags too long";
const MSG_MS_MODE: &str = "invalid mode for ms M token";
const MSG_MA_MODE: &str = "invalid mode for ma M token";

/// The meta command, with its mode for `ms` and `ma`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetaCmd {
    /// `mg`: fetch (and optionally touch, vivify, win a recache token).
    Get,
    /// `ms`: store; the mode comes from the `M` flag.
    Set(SetMode),
    /// `md`: delete, or with `I` mark stale.
    Delete,
    /// `ma`: increment or decrement; the mode comes from the `M` flag.
    Arithmetic(ArithMode),
    /// `me`: human-readable item metadata.
    Debug,
    /// `mn`: no-op, answered with [`MN`]; used to terminate a pipeline of quiet commands.
    Noop,
    /// An `ms` whose item would be too large; [`text::parse`](super::text::parse) turns it into
    /// [`TextRequest::TooLarge`](super::text::TextRequest::TooLarge), which says what to do.
    SetTooLarge {
        /// The ms was in set mode: the old item is removed.
        evict: bool,
        /// Bytes to discard after the command line.
        swallow: usize,
    },
}

/// `ms` mode (`M` flag). With a `C` (compare CAS) flag, memcached turns `Set` and `Replace` into
/// a CAS store; `Append`/`Prepend` honour `C` as well and with `N` create a missing item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SetMode {
    /// `MS` or no `M`: store unconditionally.
    #[default]
    Set,
    /// `ME`: store only if absent (`NS` otherwise).
    Add,
    /// `MR`: store only if present (`NS` otherwise).
    Replace,
    /// `MA`: append to the existing value.
    Append,
    /// `MP`: prepend to the existing value.
    Prepend,
}

/// `ma` mode (`M` flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ArithMode {
    /// `MI`, `M+` or no `M`: add the delta (wrapping at 2^64).
    #[default]
    Incr,
    /// `MD` or `M-`: subtract the delta (stopping at 0).
    Decr,
}

/// Meta reply codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetaStatus {
    /// `HD`: success without a value (mg hit without `v`, stored, deleted, arithmetic done).
    Hd,
    /// `VA <size>`: success with a value block (mg with `v`, ma with `v`).
    Va,
    /// `EN`: mg (or me) miss.
    En,
    /// `NS`: not stored (add/replace condition not met, vivify failed).
    Ns,
    /// `EX`: CAS mismatch.
    Ex,
    /// `NF`: not found (ms CAS / append on a missing item, md, ma).
    Nf,
}

impl MetaStatus {
    /// The two-letter code.
    pub fn code(self) -> &'static [u8] {
        match self {
            MetaStatus::Hd => b"HD",
            MetaStatus::Va => b"VA",
            MetaStatus::En => b"EN",
            MetaStatus::Ns => b"NS",
            MetaStatus::Ex => b"EX",
            MetaStatus::Nf => b"NF",
        }
    }
}

/// The order in which flags appeared, for echoing return flags in request order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct FlagOrder {
    flags: [u8; MAX_FLAGS],
    len: usize,
}

impl FlagOrder {
    fn push(&mut self, flag: u8) {
        if let Some(slot) = self.flags.get_mut(self.len) {
            *slot = flag;
            self.len += 1;
        }
    }

    fn as_slice(&self) -> &[u8] {
        self.flags.get(..self.len).unwrap_or_default()
    }
}

/// Parsed meta flags. Which ones matter depends on the command; memcached accepts all of them
/// everywhere and ignores the irrelevant ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetaFlags<'a> {
    /// `b`: the key was sent base64-encoded; [`MetaRequest::key`] holds the decoded bytes and the
    /// key is echoed (`k`) base64-encoded followed by ` b`.
    pub base64_key: bool,
    /// `c`: return the CAS value (mg, and ms / ma after success).
    pub return_cas: bool,
    /// `f`: return the client flags (mg).
    pub return_client_flags: bool,
    /// `h`: return whether the item was fetched before, as 0 or 1 (mg).
    pub return_hit: bool,
    /// `k`: return the key.
    pub return_key: bool,
    /// `l`: return the seconds since the last access (mg).
    pub return_last_access: bool,
    /// `q`: quiet mode; see [`MetaRequest::suppress`].
    pub quiet: bool,
    /// `s`: return the value size (mg; ms: size after append/prepend).
    pub return_size: bool,
    /// `t`: return the remaining TTL in seconds, -1 for none (mg, ma).
    pub return_ttl: bool,
    /// `u`: do not bump the item in the LRU or update its access time (mg).
    pub no_bump: bool,
    /// `v`: return the value (mg, ma).
    pub return_value: bool,
    /// `I`: md marks the item stale (bumping its CAS) instead of deleting it; ms with `C`
    /// accepts an older CAS but marks the item stale.
    pub invalidate: bool,
    /// `O<token>`: opaque token to copy back (without its `O`), at most
    /// [`MAX_OPAQUE_LEN`]` - 1` bytes.
    pub opaque: Option<&'a [u8]>,
    /// `T<ttl>`: new TTL (mg / ma touch, ms TTL, md with `I`).
    pub ttl: Option<i64>,
    /// `N<ttl>`: vivify on miss with this TTL (mg, ma, ms in append/prepend mode).
    pub vivify_ttl: Option<i64>,
    /// `R<ttl>`: mg wins a recache token if the remaining TTL is below this.
    pub recache_ttl: Option<i64>,
    /// `F<flags>`: client flags to store (ms; 0 when absent).
    pub client_flags: Option<u32>,
    /// `C<cas>`: compare CAS (ms, md, ma).
    pub compare_cas: Option<u64>,
    /// `M<mode>`: the raw mode character; validated into [`MetaCmd`] for ms and ma.
    pub mode: Option<u8>,
    /// `D<delta>`: ma delta (default 1, see [`MetaRequest::delta`]).
    pub delta: Option<u64>,
    /// `J<initial>`: ma initial value on vivify (default 0, see [`MetaRequest::initial`]).
    pub initial: Option<u64>,
    order: FlagOrder,
}

impl MetaFlags<'_> {
    /// Every flag character in request order (return flags are echoed in this order).
    pub fn order(&self) -> &[u8] {
        self.order.as_slice()
    }

    fn opaque_too_long(&self) -> bool {
        self.opaque.is_some_and(|o| o.len() + 1 > MAX_OPAQUE_LEN)
    }
}

/// One meta request, borrowing from the receive buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaRequest<'a> {
    /// The command (and ms / ma mode).
    pub cmd: MetaCmd,
    /// The key, base64-decoded when [`MetaFlags::base64_key`] is set (then it may hold any
    /// bytes); empty for `mn`.
    pub key: Cow<'a, [u8]>,
    /// The ms data block without its `\r\n`; empty for other commands.
    pub data: &'a [u8],
    /// The flags.
    pub flags: MetaFlags<'a>,
}

impl MetaRequest<'_> {
    fn bare(cmd: MetaCmd) -> Self {
        MetaRequest {
            cmd,
            key: Cow::Borrowed(&[]),
            data: &[],
            flags: MetaFlags::default(),
        }
    }

    /// Whether quiet mode (`q`) hides a reply with this status, as memcached does: the miss
    /// (`EN`) of mg, the success (`HD`) of ms and md, and the success (`HD` or `VA`) of ma.
    /// Hits of mg, failures (`NS`, `EX`, `NF`) and errors are always sent.
    pub fn suppress(&self, status: MetaStatus) -> bool {
        self.flags.quiet
            && matches!(
                (self.cmd, status),
                (MetaCmd::Get, MetaStatus::En)
                    | (MetaCmd::Set(_), MetaStatus::Hd)
                    | (MetaCmd::Delete, MetaStatus::Hd)
                    | (MetaCmd::Arithmetic(_), MetaStatus::Hd | MetaStatus::Va)
            )
    }

    /// The ma delta: `D`, or 1.
    pub fn delta(&self) -> u64 {
        self.flags.delta.unwrap_or(1)
    }

    /// The ma initial value on vivify: `J`, or 0.
    pub fn initial(&self) -> u64 {
        self.flags.initial.unwrap_or(0)
    }
}

/// Parses one meta request from the front of `buf` (a meta-only stream). Anything that is not a
/// meta command answers `ERROR`. Same contract as [`super::text::parse`].
pub fn parse<'a>(buf: &'a [u8], limits: &Limits) -> Parsed<MetaRequest<'a>> {
    match next_line(buf, limits.max_line) {
        Line::Incomplete => Parsed::Incomplete,
        Line::TooLong => Parsed::line_too_long(buf.len()),
        Line::Complete { line, consumed } => {
            parse_tokens(&Tokens::new(line), buf, consumed, limits)
        }
    }
}

/// Parses a tokenised meta command line; `buf` is the whole buffer, the line occupying its
/// first `line_len` bytes (the ms data block follows).
pub(crate) fn parse_tokens<'a>(
    toks: &Tokens<'a>,
    buf: &'a [u8],
    line_len: usize,
    limits: &Limits,
) -> Parsed<MetaRequest<'a>> {
    match toks.get(0) {
        Some(b"mg") => parse_keyed(Keyed::Get, toks, line_len),
        Some(b"md") => parse_keyed(Keyed::Delete, toks, line_len),
        Some(b"ma") => parse_keyed(Keyed::Arithmetic, toks, line_len),
        Some(b"ms") => parse_set(toks, buf, line_len, limits),
        Some(b"mn") => Parsed::Done {
            req: MetaRequest::bare(MetaCmd::Noop),
            consumed: line_len,
        },
        Some(b"me") => parse_debug(toks, line_len),
        _ => Parsed::fail(ProtoError::Error, line_len, false),
    }
}

/// The commands without a data block that share one shape: `<cm> <key> <flag>*`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Keyed {
    Get,
    Delete,
    Arithmetic,
}

fn parse_keyed<'a>(kind: Keyed, toks: &Tokens<'a>, line_len: usize) -> Parsed<MetaRequest<'a>> {
    let fail = |msg: &'static str| Parsed::fail(ProtoError::Client(msg), line_len, false);
    let Some(key_raw) = toks.get(1) else {
        return Parsed::fail(ProtoError::Error, line_len, false);
    };
    if key_raw.len() > KEY_MAX_LEN {
        return fail(MSG_BAD_FORMAT);
    }
    if toks.count() > MAX_META_TOKENS {
        return fail(if kind == Keyed::Get {
            MSG_MG_TOO_MANY
        } else {
            MSG_TOO_MANY
        });
    }
    let Preparsed { flags, key } = match preparse(key_raw, toks, 2) {
        Ok(pre) => pre,
        Err(msg) if kind == Keyed::Get => return fail(msg),
        Err(_) => return fail(MSG_INVALID_OR_DUPLICATE),
    };
    let cmd = match kind {
        Keyed::Get => MetaCmd::Get,
        Keyed::Delete => MetaCmd::Delete,
        Keyed::Arithmetic => match flags.mode {
            None | Some(b'I' | b'+') => MetaCmd::Arithmetic(ArithMode::Incr),
            Some(b'D' | b'-') => MetaCmd::Arithmetic(ArithMode::Decr),
            Some(_) => return fail(MSG_MA_MODE),
        },
    };
    if flags.opaque_too_long() {
        return fail(MSG_OPAQUE_TOO_LONG);
    }
    if !flags.base64_key && !valid_key(key_raw) {
        return fail(MSG_BAD_FORMAT);
    }
    Parsed::Done {
        req: MetaRequest {
            cmd,
            key,
            data: &[],
            flags,
        },
        consumed: line_len,
    }
}

/// `ms <key> <datalen> <flag>*\r\n<data>\r\n`.
fn parse_set<'a>(
    toks: &Tokens<'a>,
    buf: &'a [u8],
    line_len: usize,
    limits: &Limits,
) -> Parsed<MetaRequest<'a>> {
    let fail = |msg: &'static str| Parsed::fail(ProtoError::Client(msg), line_len, false);
    let Some(key_raw) = toks.get(1) else {
        return Parsed::fail(ProtoError::Error, line_len, false);
    };
    if key_raw.len() > KEY_MAX_LEN || toks.count() == 2 {
        return fail(MSG_BAD_FORMAT);
    }
    if toks.count() > MAX_META_TOKENS {
        return fail(MSG_TOO_MANY);
    }
    let Some(len) = toks
        .get(2)
        .and_then(parse_i64)
        .and_then(|v| u64::try_from(v).ok())
        .filter(|&v| v <= MAX_DECLARED_LEN)
        .and_then(|v| usize::try_from(v).ok())
    else {
        return fail(MSG_BAD_FORMAT);
    };
    // From here on memcached knows the length and swallows the data block after an error.
    let swallow = len.saturating_add(2);
    let reject = |err: ProtoError| Parsed::Error {
        err,
        consumed: line_len,
        swallow,
        noreply: false,
        close: false,
    };
    let Preparsed { flags, key } = match preparse(key_raw, toks, 3) {
        Ok(pre) => pre,
        Err(msg) => return reject(ProtoError::Client(msg)),
    };
    if flags.opaque_too_long() {
        return reject(ProtoError::Client(MSG_OPAQUE_TOO_LONG));
    }
    let mode = match flags.mode {
        None | Some(b'S') => SetMode::Set,
        Some(b'E') => SetMode::Add,
        Some(b'A') => SetMode::Append,
        Some(b'P') => SetMode::Prepend,
        Some(b'R') => SetMode::Replace,
        Some(_) => return reject(ProtoError::Client(MSG_MS_MODE)),
    };
    if !flags.base64_key && !valid_key(key_raw) {
        return reject(ProtoError::BAD_FORMAT);
    }
    if super::item_too_large(key.len(), len, limits.max_value) {
        return Parsed::Done {
            req: MetaRequest {
                cmd: MetaCmd::SetTooLarge {
                    evict: mode == SetMode::Set,
                    swallow,
                },
                key,
                data: &[],
                flags,
            },
            consumed: line_len,
        };
    }
    match take_data(buf, line_len, len) {
        Data::Incomplete => Parsed::Incomplete,
        // Errors of meta commands are sent even in quiet mode.
        Data::Bad { consumed } => Parsed::fail(ProtoError::BAD_DATA_CHUNK, consumed, false),
        Data::Complete { data, consumed } => Parsed::Done {
            req: MetaRequest {
                cmd: MetaCmd::Set(mode),
                key,
                data,
                flags,
            },
            consumed,
        },
    }
}

/// `me <key> [b]`.
fn parse_debug<'a>(toks: &Tokens<'a>, line_len: usize) -> Parsed<MetaRequest<'a>> {
    let bad = || Parsed::fail(ProtoError::BAD_FORMAT, line_len, false);
    let Some(key_raw) = toks.get(1).filter(|k| k.len() <= KEY_MAX_LEN) else {
        return bad();
    };
    let mut flags = MetaFlags::default();
    let key = if toks.get(2) == Some(&b"b"[..]) {
        flags.base64_key = true;
        match base64_decode(key_raw) {
            Some(decoded) if !decoded.is_empty() => Cow::Owned(decoded),
            _ => return bad(),
        }
    } else if valid_key(key_raw) {
        Cow::Borrowed(key_raw)
    } else {
        return bad();
    };
    let req = MetaRequest {
        cmd: MetaCmd::Debug,
        key,
        data: &[],
        flags,
    };
    Parsed::Done {
        req,
        consumed: line_len,
    }
}

/// Flags and (possibly decoded) key of a meta command.
struct Preparsed<'a> {
    flags: MetaFlags<'a>,
    key: Cow<'a, [u8]>,
}

/// The error message of the flag parser: later failures overwrite earlier ones, and an `F`
/// failure keeps whatever message was current (memcached's `_meta_flag_preparse`).
struct Failure {
    msg: &'static str,
    failed: bool,
}

impl Failure {
    fn set(&mut self, msg: Option<&'static str>) {
        self.failed = true;
        if let Some(msg) = msg {
            self.msg = msg;
        }
    }
}

/// Parses the flag tokens from index `first` on (memcached's `_meta_flag_preparse`).
fn preparse<'a>(
    key_raw: &'a [u8],
    toks: &Tokens<'a>,
    first: usize,
) -> Result<Preparsed<'a>, &'static str> {
    let mut flags = MetaFlags::default();
    let mut key = Cow::Borrowed(key_raw);
    let mut seen = [false; 127];
    let mut failure = Failure {
        msg: MSG_BAD_FORMAT,
        failed: false,
    };
    for i in first..toks.count() {
        let Some(tok) = toks.get(i) else { break };
        let Some((&flag, arg)) = tok.split_first() else {
            continue;
        };
        match seen.get_mut(usize::from(flag)) {
            Some(slot) if !*slot => *slot = true,
            _ => return Err(MSG_DUPLICATE),
        }
        flags.order.push(flag);
        match flag {
            b'b' => {
                flags.base64_key = true;
                match base64_decode(key_raw) {
                    Some(decoded) if !decoded.is_empty() => key = Cow::Owned(decoded),
                    _ => failure.set(Some(MSG_DECODE_KEY)),
                }
            }
            b'N' => match parse_i64(arg) {
                Some(v) => flags.vivify_ttl = Some(v),
                None => failure.set(Some(MSG_BAD_TOKEN)),
            },
            b'T' => match parse_i64(arg) {
                Some(v) => flags.ttl = Some(v),
                None => failure.set(Some(MSG_BAD_TOKEN)),
            },
            b'R' => match parse_i64(arg) {
                Some(v) => flags.recache_ttl = Some(v),
                None => failure.set(Some(MSG_BAD_TOKEN)),
            },
            b'F' => match parse_u32(arg) {
                Some(v) => flags.client_flags = Some(v),
                None => failure.set(None),
            },
            b'C' => match parse_u64(arg) {
                Some(v) => flags.compare_cas = Some(v),
                None => failure.set(Some(MSG_BAD_TOKEN)),
            },
            b'J' => match parse_u64(arg) {
                Some(v) => flags.initial = Some(v),
                None => failure.set(Some(MSG_INITIAL)),
            },
            b'D' => match parse_u64(arg) {
                Some(v) => flags.delta = Some(v),
                None => failure.set(Some(MSG_DELTA)),
            },
            b'M' => match arg {
                [mode] => flags.mode = Some(*mode),
                _ => failure.set(Some(MSG_M_LENGTH)),
            },
            b'O' => flags.opaque = Some(arg),
            // Proxy hints; accepted and ignored like in memcached.
            b'P' | b'L' => {}
            b'c' => flags.return_cas = true,
            b'f' => flags.return_client_flags = true,
            b'h' => flags.return_hit = true,
            b'k' => flags.return_key = true,
            b'l' => flags.return_last_access = true,
            b'q' => flags.quiet = true,
            b's' => flags.return_size = true,
            b't' => flags.return_ttl = true,
            b'u' => flags.no_bump = true,
            b'v' => flags.return_value = true,
            b'I' => flags.invalidate = true,
            _ => return Err(MSG_INVALID),
        }
    }
    if failure.failed {
        Err(failure.msg)
    } else {
        Ok(Preparsed { flags, key })
    }
}

// ---------------------------------------------------------------------------------------------
// Replies.
// ---------------------------------------------------------------------------------------------

/// The `mn` reply.
pub const MN: &[u8] = b"MN\r\n";

/// What the server knows about an item, for the return flags of a reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ItemInfo {
    /// CAS value (`c`).
    pub cas: u64,
    /// Client flags (`f`).
    pub client_flags: u32,
    /// Value size in bytes (`s`).
    pub size: usize,
    /// Remaining TTL in seconds, -1 for none (`t`).
    pub ttl: i64,
    /// Seconds since the last access, before this request (`l`).
    pub last_access: u64,
    /// Fetched before this request (`h`).
    pub fetched: bool,
    /// mg: this client won the recache token (`W`).
    pub won: bool,
    /// mg: the item is stale (`X`).
    pub stale: bool,
    /// mg: a recache token was already handed out (`Z`).
    pub win_sent: bool,
}

/// Item metadata for the `me` reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DebugInfo {
    /// `exp`: memcached prints -1 for no expiry, else `now - exptime` (negative while alive).
    pub exp: i64,
    /// `la`: seconds since the last access.
    pub last_access: u64,
    /// `cas`: CAS value.
    pub cas: u64,
    /// `fetch`: fetched before.
    pub fetched: bool,
    /// `cls`: slab class (any small number for a non-slab store).
    pub class: u32,
    /// `size`: total item size in bytes.
    pub size: usize,
}

/// Whether a return flag that needs item data is answered by this command. memcached answers
/// `c f h l s t` on mg hits, `c s` on ms replies and `c t` on ma successes.
fn returns_info(cmd: MetaCmd, flag: u8) -> bool {
    match cmd {
        MetaCmd::Get => matches!(flag, b'c' | b'f' | b'h' | b'l' | b's' | b't'),
        // memcached accepts but ignores the other return flags on ms.
        MetaCmd::Set(_) => flag == b'c',
        MetaCmd::Arithmetic(_) => matches!(flag, b'c' | b't'),
        MetaCmd::Delete | MetaCmd::Debug | MetaCmd::Noop | MetaCmd::SetTooLarge { .. } => false,
    }
}

/// Appends a key as echoed by `k` and `me`: base64-encoded when the request used `b`.
fn push_key(out: &mut Vec<u8>, key: &[u8], base64: bool) {
    if base64 {
        base64_encode(key, out);
    } else {
        out.extend_from_slice(key);
    }
}

/// Appends the reply to `req`: `<code>` (or `VA <size>`), the return flags in request order,
/// `\r\n`, and for [`MetaStatus::Va`] the value and `\r\n`.
///
/// `O` (opaque) and `k` (key, followed by ` b` for base64 keys) are always echoed. Flags that
/// need item data (`c f h l s t`, see [`ItemInfo`]) are written only when `info` is given and
/// the command answers them; mg hits also get `Z`, `X`, `W` from `info`. Pass `info = None` for
/// misses and failures. Check [`MetaRequest::suppress`] first for quiet requests.
pub fn write_response(
    out: &mut Vec<u8>,
    req: &MetaRequest<'_>,
    status: MetaStatus,
    info: Option<&ItemInfo>,
    value: Option<&[u8]>,
) {
    let value = value.unwrap_or_default();
    if status == MetaStatus::Va {
        out.extend_from_slice(b"VA ");
        push_u64(out, value.len() as u64);
    } else {
        out.extend_from_slice(status.code());
    }
    for &flag in req.flags.order() {
        match flag {
            b'O' => {
                out.extend_from_slice(b" O");
                out.extend_from_slice(req.flags.opaque.unwrap_or_default());
            }
            b'k' => {
                out.extend_from_slice(b" k");
                push_key(out, &req.key, req.flags.base64_key);
                if req.flags.base64_key {
                    out.extend_from_slice(b" b");
                }
            }
            _ => {
                if let Some(info) = info.filter(|_| returns_info(req.cmd, flag)) {
                    push_info_flag(out, flag, info);
                }
            }
        }
    }
    if let (MetaCmd::Get, Some(info)) = (req.cmd, info) {
        if info.win_sent {
            out.extend_from_slice(b" Z");
        }
        if info.stale {
            out.extend_from_slice(b" X");
        }
        if info.won {
            out.extend_from_slice(b" W");
        }
    }
    out.extend_from_slice(b"\r\n");
    if status == MetaStatus::Va {
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
}

fn push_info_flag(out: &mut Vec<u8>, flag: u8, info: &ItemInfo) {
    out.push(b' ');
    out.push(flag);
    match flag {
        b'c' => push_u64(out, info.cas),
        b'f' => push_u64(out, u64::from(info.client_flags)),
        b'h' => out.push(if info.fetched { b'1' } else { b'0' }),
        b'l' => push_u64(out, info.last_access),
        b's' => push_u64(out, info.size as u64),
        b't' => push_i64(out, info.ttl),
        _ => {}
    }
}

/// Appends [`MN`].
pub fn write_noop(out: &mut Vec<u8>) {
    out.extend_from_slice(MN);
}

/// Appends the `me` hit reply:
/// `ME <key> exp=<exp> la=<la> cas=<cas> fetch=<yes|no> cls=<cls> size=<size>\r\n`.
/// A miss is [`MetaStatus::En`] via [`write_response`].
pub fn write_debug(out: &mut Vec<u8>, req: &MetaRequest<'_>, info: &DebugInfo) {
    out.extend_from_slice(b"ME ");
    push_key(out, &req.key, req.flags.base64_key);
    out.extend_from_slice(b" exp=");
    push_i64(out, info.exp);
    out.extend_from_slice(b" la=");
    push_u64(out, info.last_access);
    out.extend_from_slice(b" cas=");
    push_u64(out, info.cas);
    out.extend_from_slice(if info.fetched {
        &b" fetch=yes"[..]
    } else {
        b" fetch=no"
    });
    out.extend_from_slice(b" cls=");
    push_u64(out, u64::from(info.class));
    out.extend_from_slice(b" size=");
    push_u64(out, info.size as u64);
    out.extend_from_slice(b"\r\n");
}

// ---------------------------------------------------------------------------------------------
// Base64 (standard alphabet) for binary keys.
// ---------------------------------------------------------------------------------------------

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_value(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// Decodes standard base64. Padding is optional, but if present the input length must be a
/// multiple of 4 with at most two trailing `=`. Returns `None` for anything else (stray `=`,
/// whitespace, other alphabets, a dangling single symbol).
pub fn base64_decode(input: &[u8]) -> Option<Vec<u8>> {
    // memcached decodes padded base64 only ("error decoding key" otherwise).
    if !input.len().is_multiple_of(4) {
        return None;
    }
    let pad = input
        .iter()
        .rev()
        .take(2)
        .take_while(|&&c| c == b'=')
        .count();
    let body = input.get(..input.len().saturating_sub(pad))?;
    if body.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() / 4 * 3 + 2);
    let mut acc: u32 = 0;
    let mut bits: u32 = 0;
    for &c in body {
        acc = (acc << 6) | u32::from(base64_value(c)?);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            // `acc` holds `bits + 8` significant bits, so this is exactly one byte.
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Appends the padded standard base64 encoding of `input`.
pub fn base64_encode(input: &[u8], out: &mut Vec<u8>) {
    for chunk in input.chunks(3) {
        let b0 = chunk.first().copied().unwrap_or(0);
        let b1 = chunk.get(1).copied();
        let b2 = chunk.get(2).copied();
        let n =
            (u32::from(b0) << 16) | (u32::from(b1.unwrap_or(0)) << 8) | u32::from(b2.unwrap_or(0));
        let sym = |shift: u32| BASE64[((n >> shift) & 63) as usize];
        out.push(sym(18));
        out.push(sym(12));
        out.push(if b1.is_some() { sym(6) } else { b'=' });
        out.push(if b2.is_some() { sym(0) } else { b'=' });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim() -> Limits {
        Limits::default()
    }

    fn req(buf: &[u8]) -> MetaRequest<'_> {
        match parse(buf, &lim()) {
            Parsed::Done { req, consumed } => {
                assert_eq!(consumed, buf.len(), "{:?}", String::from_utf8_lossy(buf));
                req
            }
            other => panic!(
                "expected Done for {:?}, got {other:?}",
                String::from_utf8_lossy(buf)
            ),
        }
    }

    /// (err, consumed, swallow); meta errors are never silent and never close.
    fn error_with(buf: &[u8], limits: &Limits) -> (ProtoError, usize, usize) {
        match parse(buf, limits) {
            Parsed::Error {
                err,
                consumed,
                swallow,
                noreply,
                close,
            } => {
                assert!(!noreply && !close, "{:?}", String::from_utf8_lossy(buf));
                (err, consumed, swallow)
            }
            // An oversized ms is answered (and swallowed) by the caller.
            Parsed::Done {
                req:
                    MetaRequest {
                        cmd: MetaCmd::SetTooLarge { swallow, .. },
                        ..
                    },
                consumed,
            } => (ProtoError::TOO_LARGE, consumed, swallow),
            other => panic!(
                "expected Error for {:?}, got {other:?}",
                String::from_utf8_lossy(buf)
            ),
        }
    }

    /// An error that consumes exactly the (whole) line and swallows nothing.
    fn line_error(buf: &[u8]) -> ProtoError {
        let (err, consumed, swallow) = error_with(buf, &lim());
        assert_eq!(
            (consumed, swallow),
            (buf.len(), 0),
            "{:?}",
            String::from_utf8_lossy(buf)
        );
        err
    }

    fn client(msg: &'static str) -> ProtoError {
        ProtoError::Client(msg)
    }

    #[test]
    fn meta_get() {
        let r = req(b"mg foo s v t c f k O9 q h l u\r\n");
        assert_eq!(r.cmd, MetaCmd::Get);
        assert_eq!(r.key, Cow::Borrowed(&b"foo"[..]));
        assert!(matches!(r.key, Cow::Borrowed(_)));
        assert!(r.data.is_empty());
        let f = &r.flags;
        assert!(f.return_size && f.return_value && f.return_ttl && f.return_cas);
        assert!(f.return_client_flags && f.return_key && f.quiet && f.return_hit);
        assert!(f.return_last_access && f.no_bump);
        assert!(!f.base64_key && !f.invalidate);
        assert_eq!(f.opaque, Some(&b"9"[..]));
        assert_eq!(f.order(), b"svtcfkOqhlu");

        let r = req(b"mg foo T30 N-1 R5 O\n");
        assert_eq!(r.flags.ttl, Some(30));
        assert_eq!(r.flags.vivify_ttl, Some(-1));
        assert_eq!(r.flags.recache_ttl, Some(5));
        assert_eq!(r.flags.opaque, Some(&b""[..]));
        assert_eq!(req(b"mg foo\r\n").flags, MetaFlags::default());
        // Flags that mean nothing to mg are accepted, as in memcached; trailing bytes after a
        // token-less flag are ignored.
        let r = req(b"mg foo D5 F1 MX vv\r\n");
        assert_eq!(r.flags.delta, Some(5));
        assert!(r.flags.return_value);
    }

    #[test]
    fn flag_errors() {
        assert_eq!(line_error(b"mg\r\n"), ProtoError::Error);
        assert_eq!(line_error(b"md\r\n"), ProtoError::Error);
        assert_eq!(line_error(b"ma   \r\n"), ProtoError::Error);
        assert_eq!(line_error(b"mg foo v v\r\n"), client("duplicate flag"));
        assert_eq!(line_error(b"mg foo v vx\r\n"), client("duplicate flag"));
        assert_eq!(line_error(b"mg foo \x80\r\n"), client("duplicate flag"));
        assert_eq!(line_error(b"mg foo Q\r\n"), client("invalid flag"));
        assert_eq!(
            line_error(b"mg foo Tx\r\n"),
            client("bad token in command line format")
        );
        assert_eq!(
            line_error(b"mg foo T\r\n"),
            client("bad token in command line format")
        );
        assert_eq!(line_error(b"mg foo Tx Q\r\n"), client("invalid flag"));
        assert_eq!(
            line_error(b"mg foo Tx Cy\r\n"),
            client("bad token in command line format")
        );
        assert_eq!(
            line_error(b"mg foo Tx J-1\r\n"),
            client("invalid numeric initial value")
        );
        assert_eq!(
            line_error(b"mg foo Dx\r\n"),
            client("invalid numeric delta value")
        );
        assert_eq!(
            line_error(b"mg foo F\r\n"),
            client("bad command line format")
        );
        assert_eq!(
            line_error(b"mg foo Tx F\r\n"),
            client("bad token in command line format")
        );
        assert_eq!(
            line_error(b"mg foo MAB\r\n"),
            client("incorrect length for M token")
        );
        assert_eq!(
            line_error(b"mg foo M\r\n"),
            client("incorrect length for M token")
        );
        assert_eq!(line_error(b"mg foo E1\r\n"), client("invalid flag"));
        // md and ma report every flag problem the same way.
        for line in [
            &b"md foo v v\r\n"[..],
            b"md foo Q\r\n",
            b"md foo Tx\r\n",
            b"ma foo Dx\r\n",
        ] {
            assert_eq!(
                line_error(line),
                client("invalid or duplicate flag"),
                "{line:?}"
            );
        }
        assert_eq!(
            line_error(b"ma foo MX\r\n"),
            client("invalid mode for ma M token")
        );
    }

    #[test]
    fn key_and_size_limits() {
        let key = [b'k'; 251];
        let line = [&b"mg "[..], &key, b" v\r\n"].concat();
        assert_eq!(line_error(&line), client("bad command line format"));
        let line = [&b"md "[..], &key[..250], b" q\r\n"].concat();
        assert_eq!(req(&line).key.len(), 250);
        assert_eq!(
            line_error(b"mg a\x01b v\r\n"),
            client("bad command line format")
        );

        let many = b"mg foo c f h k l O1 q s t u v P L x I T1 N1 R1\r\n";
        assert_eq!(line_error(many), client("options flags are too long"));
        let many = b"md foo c f h k l O1 q s t u v P L x I T1 N1 R1\r\n";
        assert_eq!(line_error(many), client("options flags too long"));
        let max = b"mg foo c f h k l O1 q s t u v P L C1 I T1 N1\r\n";
        assert_eq!(req(max).flags.order().len(), 17);

        let opaque = [&b"mg foo O"[..], &[b'x'; 32], b"\r\n"].concat();
        assert_eq!(line_error(&opaque), client("opaque token too long"));
        let opaque = [&b"mg foo O"[..], &[b'x'; 31], b"\r\n"].concat();
        assert_eq!(req(&opaque).flags.opaque.map(<[u8]>::len), Some(31));
    }

    #[test]
    fn base64_keys() {
        let r = req(b"mg Zm9v b k v\r\n");
        assert_eq!(&*r.key, b"foo");
        assert!(matches!(r.key, Cow::Owned(_)));
        assert!(r.flags.base64_key);
        // Binary keys may hold anything, control characters included.
        let r = req(b"md AAEC b\r\n");
        assert_eq!(&*r.key, b"\x00\x01\x02");
        assert_eq!(line_error(b"mg !!! b\r\n"), client("error decoding key"));
        assert_eq!(line_error(b"mg = b\r\n"), client("error decoding key"));
        assert_eq!(line_error(b"mg ==== b\r\n"), client("error decoding key"));
        assert_eq!(
            line_error(b"md !!! b\r\n"),
            client("invalid or duplicate flag")
        );
        assert_eq!(line_error(b"mg Zm9v b b\r\n"), client("duplicate flag"));
    }

    #[test]
    fn meta_set() {
        let r = req(b"ms foo 2 T10 F5 MA c k O1 I C7 N30\r\nhi\r\n");
        assert_eq!(r.cmd, MetaCmd::Set(SetMode::Append));
        assert_eq!(&*r.key, b"foo");
        assert_eq!(r.data, b"hi");
        assert_eq!(r.flags.ttl, Some(10));
        assert_eq!(r.flags.client_flags, Some(5));
        assert_eq!(r.flags.compare_cas, Some(7));
        assert_eq!(r.flags.vivify_ttl, Some(30));
        assert!(r.flags.invalidate && r.flags.return_cas && r.flags.return_key);
        assert_eq!(r.flags.order(), b"TFMckOICN");
        for (mode, expected) in [
            (&b""[..], SetMode::Set),
            (&b" MS"[..], SetMode::Set),
            (&b" ME"[..], SetMode::Add),
            (&b" MA"[..], SetMode::Append),
            (&b" MP"[..], SetMode::Prepend),
            (&b" MR"[..], SetMode::Replace),
        ] {
            let line = [&b"ms k 0"[..], mode, b"\r\n\r\n"].concat();
            assert_eq!(req(&line).cmd, MetaCmd::Set(expected), "{mode:?}");
        }
        let r = req(b"ms Zm9v 3 b\r\n\r\n\0\r\n");
        assert_eq!(&*r.key, b"foo");
        assert_eq!(r.data, b"\r\n\0");
        assert_eq!(parse(b"ms foo 2\r\nhi\r", &lim()), Parsed::Incomplete);
        assert_eq!(parse(b"ms foo 2\r\n", &lim()), Parsed::Incomplete);
    }

    #[test]
    fn meta_set_errors() {
        assert_eq!(line_error(b"ms\r\n"), ProtoError::Error);
        // Before the length is known nothing is swallowed.
        assert_eq!(line_error(b"ms foo\r\n"), ProtoError::BAD_FORMAT);
        assert_eq!(line_error(b"ms foo x\r\n"), ProtoError::BAD_FORMAT);
        assert_eq!(line_error(b"ms foo -1\r\n"), ProtoError::BAD_FORMAT);
        assert_eq!(line_error(b"ms foo 2147483646\r\n"), ProtoError::BAD_FORMAT);
        let key = [b'k'; 251];
        let line = [&b"ms "[..], &key, b" 2\r\n"].concat();
        assert_eq!(line_error(&line), ProtoError::BAD_FORMAT);
        let many = b"ms foo 2 c f h k l O1 q s t u v P L x I T1 N1\r\n";
        assert_eq!(line_error(many), client("options flags too long"));
        // Afterwards the data block is swallowed.
        let line = b"ms foo 2 MX\r\n";
        assert_eq!(
            error_with(line, &lim()),
            (client("invalid mode for ms M token"), line.len(), 4)
        );
        let line = b"ms foo 2 v v\r\n";
        assert_eq!(
            error_with(line, &lim()),
            (client("duplicate flag"), line.len(), 4)
        );
        let line = b"ms foo 2 Fx\r\n";
        assert_eq!(
            error_with(line, &lim()),
            (client("bad command line format"), line.len(), 4)
        );
        let line = b"ms foo 2 !!\r\n";
        assert_eq!(
            error_with(line, &lim()),
            (client("invalid flag"), line.len(), 4)
        );
        let line = [&b"ms foo 2 O"[..], &[b'1'; 40], b"\r\n"].concat();
        assert_eq!(
            error_with(&line, &lim()),
            (client("opaque token too long"), line.len(), 4)
        );
        let line = b"ms foo\x01 2\r\n";
        assert_eq!(
            error_with(line, &lim()),
            (ProtoError::BAD_FORMAT, line.len(), 4)
        );
        let line = b"ms foo 2000000 q\r\n";
        assert_eq!(
            error_with(line, &lim()),
            (ProtoError::TOO_LARGE, line.len(), 2_000_002)
        );
        let small = Limits {
            max_value: 1,
            ..lim()
        };
        let line = b"ms foo 2\r\n";
        assert_eq!(
            error_with(line, &small),
            (ProtoError::TOO_LARGE, line.len(), 4)
        );
        // A bad chunk consumes datalen + 2 and is reported even in quiet mode.
        let buf = b"ms foo 2 q\r\nhiX\r\n";
        assert_eq!(error_with(buf, &lim()), (ProtoError::BAD_DATA_CHUNK, 16, 0));
    }

    #[test]
    fn meta_arithmetic_delete_noop_debug() {
        let r = req(b"ma foo MD D5 N0 J10 v t c\r\n");
        assert_eq!(r.cmd, MetaCmd::Arithmetic(ArithMode::Decr));
        assert_eq!(
            (r.delta(), r.initial(), r.flags.vivify_ttl),
            (5, 10, Some(0))
        );
        let r = req(b"ma foo\r\n");
        assert_eq!(r.cmd, MetaCmd::Arithmetic(ArithMode::Incr));
        assert_eq!((r.delta(), r.initial()), (1, 0));
        for (line, mode) in [
            (&b"ma k MI\r\n"[..], ArithMode::Incr),
            (&b"ma k M+\r\n"[..], ArithMode::Incr),
            (&b"ma k M-\r\n"[..], ArithMode::Decr),
            (&b"ma k MD\r\n"[..], ArithMode::Decr),
        ] {
            assert_eq!(req(line).cmd, MetaCmd::Arithmetic(mode));
        }

        let r = req(b"md foo I T30 q C5 k\r\n");
        assert_eq!(r.cmd, MetaCmd::Delete);
        assert!(r.flags.invalidate && r.flags.quiet && r.flags.return_key);
        assert_eq!((r.flags.ttl, r.flags.compare_cas), (Some(30), Some(5)));

        assert_eq!(req(b"mn\r\n").cmd, MetaCmd::Noop);
        assert_eq!(req(b"mn foo bar\r\n").cmd, MetaCmd::Noop);
        assert!(req(b"mn\r\n").key.is_empty());

        let r = req(b"me foo\r\n");
        assert_eq!((r.cmd, &*r.key), (MetaCmd::Debug, &b"foo"[..]));
        let r = req(b"me Zm9v b\r\n");
        assert_eq!(&*r.key, b"foo");
        assert!(r.flags.base64_key);
        assert_eq!(req(b"me foo x y\r\n").cmd, MetaCmd::Debug);
        assert_eq!(line_error(b"me\r\n"), ProtoError::BAD_FORMAT);
        assert_eq!(line_error(b"me !!! b\r\n"), ProtoError::BAD_FORMAT);
        assert_eq!(line_error(b"me a\x02\r\n"), ProtoError::BAD_FORMAT);

        assert_eq!(line_error(b"mx foo\r\n"), ProtoError::Error);
        assert_eq!(line_error(b"get foo\r\n"), ProtoError::Error);
        assert_eq!(line_error(b"\r\n"), ProtoError::Error);
    }

    #[test]
    fn quiet_mode() {
        use MetaStatus::{En, Ex, Hd, Nf, Ns, Va};
        let all = [Hd, Va, En, Ns, Ex, Nf];
        let hidden = |line: &[u8]| -> Vec<MetaStatus> {
            let r = req(line);
            all.iter().copied().filter(|s| r.suppress(*s)).collect()
        };
        assert_eq!(hidden(b"mg k v q\r\n"), vec![En]);
        assert_eq!(hidden(b"ms k 0 q\r\n\r\n"), vec![Hd]);
        assert_eq!(hidden(b"md k q\r\n"), vec![Hd]);
        assert_eq!(hidden(b"ma k q\r\n"), vec![Hd, Va]);
        assert_eq!(hidden(b"mn\r\n"), vec![]);
        for line in [
            &b"mg k v\r\n"[..],
            b"ms k 0\r\n\r\n",
            b"md k\r\n",
            b"ma k\r\n",
        ] {
            assert_eq!(hidden(line), vec![], "{line:?}");
        }
    }

    #[test]
    fn replies() {
        let info = ItemInfo {
            cas: 5,
            client_flags: 3,
            size: 2,
            ttl: -1,
            ..ItemInfo::default()
        };
        let r = req(b"mg foo s v t c f k O9 q\r\n");
        let mut out = Vec::new();
        write_response(&mut out, &r, MetaStatus::Va, Some(&info), Some(&b"hi"[..]));
        write_response(&mut out, &r, MetaStatus::En, None, None);
        assert_eq!(out, b"VA 2 s2 t-1 c5 f3 kfoo O9\r\nhi\r\nEN kfoo O9\r\n");

        let info = ItemInfo {
            fetched: true,
            last_access: 7,
            won: true,
            stale: true,
            win_sent: true,
            ..ItemInfo::default()
        };
        let mut out = Vec::new();
        write_response(
            &mut out,
            &req(b"mg foo h l k\r\n"),
            MetaStatus::Hd,
            Some(&info),
            None,
        );
        assert_eq!(out, b"HD h1 l7 kfoo Z X W\r\n");

        let mut out = Vec::new();
        let r = req(b"mg Zm9v b k v\r\n");
        write_response(
            &mut out,
            &r,
            MetaStatus::Va,
            Some(&ItemInfo::default()),
            Some(&b"hi"[..]),
        );
        assert_eq!(out, b"VA 2 kZm9v b\r\nhi\r\n");

        let mut out = Vec::new();
        let r = req(b"ms foo 2 c k O1 T0 s f\r\nhi\r\n");
        let info = ItemInfo {
            cas: 77,
            size: 2,
            client_flags: 9,
            ..ItemInfo::default()
        };
        write_response(&mut out, &r, MetaStatus::Hd, Some(&info), None);
        write_response(&mut out, &r, MetaStatus::Ns, None, None);
        // ms answers only c of the item flags.
        assert_eq!(out, b"HD c77 kfoo O1\r\nNS kfoo O1\r\n");

        let mut out = Vec::new();
        let r = req(b"ma foo v t c N0 J5\r\n");
        let info = ItemInfo {
            cas: 9,
            ttl: -1,
            ..ItemInfo::default()
        };
        write_response(&mut out, &r, MetaStatus::Va, Some(&info), Some(&b"6"[..]));
        write_response(&mut out, &r, MetaStatus::Nf, None, None);
        assert_eq!(out, b"VA 1 t-1 c9\r\n6\r\nNF\r\n");

        let mut out = Vec::new();
        let r = req(b"md foo q k O5 c\r\n");
        write_response(
            &mut out,
            &r,
            MetaStatus::Hd,
            Some(&ItemInfo::default()),
            None,
        );
        write_response(&mut out, &r, MetaStatus::Ex, None, None);
        assert_eq!(out, b"HD kfoo O5\r\nEX kfoo O5\r\n");

        let mut out = Vec::new();
        write_noop(&mut out);
        let info = DebugInfo {
            exp: -1,
            last_access: 3,
            cas: 9,
            fetched: false,
            class: 1,
            size: 66,
        };
        write_debug(&mut out, &req(b"me foo\r\n"), &info);
        let info = DebugInfo {
            fetched: true,
            ..info
        };
        write_debug(&mut out, &req(b"me Zm9v b\r\n"), &info);
        assert_eq!(
            out,
            b"MN\r\nME foo exp=-1 la=3 cas=9 fetch=no cls=1 size=66\r\n\
              ME Zm9v exp=-1 la=3 cas=9 fetch=yes cls=1 size=66\r\n"
        );
    }

    #[test]
    fn base64() {
        let cases: [(&[u8], &[u8]); 7] = [
            (b"", b""),
            (b"Zg==", b"f"),
            (b"Zm8=", b"fo"),
            (b"Zm9v", b"foo"),
            (b"Zm9vYg==", b"foob"),
            (b"Zm9vYmE=", b"fooba"),
            (b"Zm9vYmFy", b"foobar"),
        ];
        for (encoded, decoded) in cases {
            assert_eq!(
                base64_decode(encoded).as_deref(),
                Some(decoded),
                "{encoded:?}"
            );
            let mut out = Vec::new();
            base64_encode(decoded, &mut out);
            assert_eq!(out, encoded);
        }
        // Unpadded input is refused, as memcached refuses it.
        assert_eq!(base64_decode(b"Zg"), None);
        assert_eq!(base64_decode(b"Zm8"), None);
        assert_eq!(
            base64_decode(b"+/+/").as_deref(),
            Some(&b"\xfb\xff\xbf"[..])
        );
        for bad in [
            &b"Z"[..],
            b"Zm9vY",
            b"Zg=",
            b"Z===",
            b"====",
            b"Zm 9v",
            b"Zm9v\n",
            b"Zg==Zg==",
            b"Zm-_",
        ] {
            assert_eq!(base64_decode(bad), None, "{bad:?}");
        }
        for len in 0..40usize {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let mut encoded = Vec::new();
            base64_encode(&data, &mut encoded);
            assert_eq!(encoded.len(), len.div_ceil(3) * 4);
            assert_eq!(base64_decode(&encoded), Some(data));
        }
    }

    #[test]
    fn every_split_point_of_a_pipeline_is_incomplete() {
        let pipeline: &[u8] =
            b"mg a v\r\nms b 3 T1\r\nabc\r\nmd a q\r\nma c N0\nmn\r\nme a\r\nms Zm9v 0 b\r\n\r\n";
        let limits = lim();
        let mut pos = 0;
        let mut commands = 0;
        while pos < pipeline.len() {
            let rest = &pipeline[pos..];
            let Parsed::Done { consumed, .. } = parse(rest, &limits) else {
                panic!("command at {pos} did not parse: {:?}", parse(rest, &limits));
            };
            for cut in 0..consumed {
                assert_eq!(
                    parse(&rest[..cut], &limits),
                    Parsed::Incomplete,
                    "cut {cut} at {pos}"
                );
            }
            assert_eq!(parse(&rest[..consumed], &limits), parse(rest, &limits));
            pos += consumed;
            commands += 1;
        }
        assert_eq!(commands, 7);
    }

    #[test]
    fn too_long_lines_close_silently() {
        let line = [&b"mg "[..], &[b'k'; 3000]].concat();
        match parse(&line, &lim()) {
            Parsed::Error {
                err,
                consumed,
                swallow: 0,
                noreply: true,
                close: true,
            } => {
                assert_eq!(err, ProtoError::LINE_TOO_LONG);
                assert_eq!(consumed, line.len());
            }
            other => panic!("{other:?}"),
        }
    }
}
