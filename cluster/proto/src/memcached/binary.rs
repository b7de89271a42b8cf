//! Memcached **binary** protocol codec: request parsing and response encoding.
//!
//! This module owns the wire format only. It never touches the cache; a connection handler
//! feeds it the bytes it has buffered and acts on the result.
//!
//! # Packet layout
//!
//! Every packet is a 24-byte header followed by `body_len` bytes of body, which is
//! `extras ++ key ++ value` (all integers big-endian):
//!
//! | off | size | request        | response       |
//! |-----|------|----------------|----------------|
//! | 0   | 1    | magic `0x80`   | magic `0x81`   |
//! | 1   | 1    | opcode         | opcode         |
//! | 2   | 2    | key length     | key length     |
//! | 4   | 1    | extras length  | extras length  |
//! | 5   | 1    | data type (0)  | data type (0)  |
//! | 6   | 2    | vbucket        | status         |
//! | 8   | 4    | total body len | total body len |
//! | 12  | 4    | opaque         | opaque (echo)  |
//! | 16  | 8    | CAS            | CAS            |
//!
//! # Invariants
//!
//! * [`parse`] never panics, whatever the input: every slice is taken with checked accessors.
//! * [`parse`] never allocates and never asks the caller to buffer more than
//!   `24 + max_body` bytes: the header alone decides whether a request is malformed, unknown or
//!   too large, so a hostile `body_len` is rejected before any body byte is awaited.
//! * Validation mirrors memcached 1.6 `proto_bin.c` (`try_read_command_binary` and
//!   `dispatch_bin_command`), including which errors close the connection and which ones let it
//!   continue after "swallowing" the unread body. The two deliberate differences are documented
//!   on [`parse`].
//! * Response writers only append to a `Vec<u8>`; responses are always self-consistent frames
//!   (header lengths match the bytes written).

/// Magic byte of a request packet.
pub const REQ_MAGIC: u8 = 0x80;
/// Magic byte of a response packet.
pub const RES_MAGIC: u8 = 0x81;
/// Length of the fixed packet header.
pub const HEADER_LEN: usize = 24;
/// Longest key memcached accepts (`KEY_MAX_LENGTH`); the binary header could carry 65535.
pub const KEY_MAX_LEN: usize = 250;
/// The only data type defined by the protocol (`PROTOCOL_BINARY_RAW_BYTES`).
pub const RAW_BYTES: u8 = 0x00;

/// Protocol detection: memcached treats a connection whose first byte is [`REQ_MAGIC`] as a
/// binary-protocol connection and anything else as text.
#[inline]
pub fn is_binary(first_byte: u8) -> bool {
    first_byte == REQ_MAGIC
}

/// Command opcodes of the binary protocol that this codec understands.
///
/// Names ending in `Q` are the *quiet* variants (see [`Opcode::is_quiet`]).
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Opcode {
    /// Get a value (no key in the response).
    Get = 0x00,
    /// Store unconditionally.
    Set = 0x01,
    /// Store only if absent.
    Add = 0x02,
    /// Store only if present.
    Replace = 0x03,
    /// Delete a key.
    Delete = 0x04,
    /// Increment a counter.
    Increment = 0x05,
    /// Decrement a counter.
    Decrement = 0x06,
    /// Answer, then close the connection.
    Quit = 0x07,
    /// Invalidate all items, optionally after a delay.
    Flush = 0x08,
    /// Quiet [`Opcode::Get`]: misses are not answered.
    GetQ = 0x09,
    /// No operation; forces pending quiet responses to be flushed.
    Noop = 0x0a,
    /// Server version string.
    Version = 0x0b,
    /// Get a value, echoing the key in the response.
    GetK = 0x0c,
    /// Quiet [`Opcode::GetK`].
    GetKQ = 0x0d,
    /// Append to an existing value.
    Append = 0x0e,
    /// Prepend to an existing value.
    Prepend = 0x0f,
    /// Statistics (key = optional group name).
    Stat = 0x10,
    /// Quiet [`Opcode::Set`].
    SetQ = 0x11,
    /// Quiet [`Opcode::Add`].
    AddQ = 0x12,
    /// Quiet [`Opcode::Replace`].
    ReplaceQ = 0x13,
    /// Quiet [`Opcode::Delete`].
    DeleteQ = 0x14,
    /// Quiet [`Opcode::Increment`].
    IncrementQ = 0x15,
    /// Quiet [`Opcode::Decrement`].
    DecrementQ = 0x16,
    /// Quiet [`Opcode::Quit`]: close without answering.
    QuitQ = 0x17,
    /// Quiet [`Opcode::Flush`].
    FlushQ = 0x18,
    /// Quiet [`Opcode::Append`].
    AppendQ = 0x19,
    /// Quiet [`Opcode::Prepend`].
    PrependQ = 0x1a,
    /// Set the verbosity level (4-byte extras).
    Verbosity = 0x1b,
    /// Update an item's expiration time without fetching it.
    Touch = 0x1c,
    /// Get and touch.
    Gat = 0x1d,
    /// Quiet [`Opcode::Gat`].
    Gatq = 0x1e,
    /// List SASL mechanisms.
    SaslListMechs = 0x20,
    /// Start SASL authentication (key = mechanism, value = data).
    SaslAuth = 0x21,
    /// Continue SASL authentication.
    SaslStep = 0x22,
    /// Get and touch, echoing the key.
    Gatk = 0x23,
    /// Quiet [`Opcode::Gatk`].
    Gatkq = 0x24,
}

impl Opcode {
    /// Every opcode, in wire-value order.
    pub const ALL: [Opcode; 36] = [
        Opcode::Get,
        Opcode::Set,
        Opcode::Add,
        Opcode::Replace,
        Opcode::Delete,
        Opcode::Increment,
        Opcode::Decrement,
        Opcode::Quit,
        Opcode::Flush,
        Opcode::GetQ,
        Opcode::Noop,
        Opcode::Version,
        Opcode::GetK,
        Opcode::GetKQ,
        Opcode::Append,
        Opcode::Prepend,
        Opcode::Stat,
        Opcode::SetQ,
        Opcode::AddQ,
        Opcode::ReplaceQ,
        Opcode::DeleteQ,
        Opcode::IncrementQ,
        Opcode::DecrementQ,
        Opcode::QuitQ,
        Opcode::FlushQ,
        Opcode::AppendQ,
        Opcode::PrependQ,
        Opcode::Verbosity,
        Opcode::Touch,
        Opcode::Gat,
        Opcode::Gatq,
        Opcode::SaslListMechs,
        Opcode::SaslAuth,
        Opcode::SaslStep,
        Opcode::Gatk,
        Opcode::Gatkq,
    ];

    /// Decodes a wire opcode; `None` for opcodes this codec does not know.
    pub fn from_u8(b: u8) -> Option<Opcode> {
        use Opcode::*;
        Some(match b {
            0x00 => Get,
            0x01 => Set,
            0x02 => Add,
            0x03 => Replace,
            0x04 => Delete,
            0x05 => Increment,
            0x06 => Decrement,
            0x07 => Quit,
            0x08 => Flush,
            0x09 => GetQ,
            0x0a => Noop,
            0x0b => Version,
            0x0c => GetK,
            0x0d => GetKQ,
            0x0e => Append,
            0x0f => Prepend,
            0x10 => Stat,
            0x11 => SetQ,
            0x12 => AddQ,
            0x13 => ReplaceQ,
            0x14 => DeleteQ,
            0x15 => IncrementQ,
            0x16 => DecrementQ,
            0x17 => QuitQ,
            0x18 => FlushQ,
            0x19 => AppendQ,
            0x1a => PrependQ,
            0x1b => Verbosity,
            0x1c => Touch,
            0x1d => Gat,
            0x1e => Gatq,
            0x20 => SaslListMechs,
            0x21 => SaslAuth,
            0x22 => SaslStep,
            0x23 => Gatk,
            0x24 => Gatkq,
            _ => return None,
        })
    }

    /// The wire value.
    #[inline]
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// Whether this is a quiet variant. memcached suppresses the *success* response of a quiet
    /// command (and, for the get family, the *miss* response); error responses and get hits are
    /// always sent.
    pub fn is_quiet(self) -> bool {
        use Opcode::*;
        matches!(
            self,
            GetQ | GetKQ
                | SetQ
                | AddQ
                | ReplaceQ
                | DeleteQ
                | IncrementQ
                | DecrementQ
                | QuitQ
                | FlushQ
                | AppendQ
                | PrependQ
                | Gatq
                | Gatkq
        )
    }

    /// The non-quiet command a quiet variant performs (`GetQ -> Get`, `GetKQ -> GetK`,
    /// `Gatkq -> Gatk`, ...); non-quiet opcodes map to themselves.
    pub fn base(self) -> Opcode {
        use Opcode::*;
        match self {
            GetQ => Get,
            GetKQ => GetK,
            SetQ => Set,
            AddQ => Add,
            ReplaceQ => Replace,
            DeleteQ => Delete,
            IncrementQ => Increment,
            DecrementQ => Decrement,
            QuitQ => Quit,
            FlushQ => Flush,
            AppendQ => Append,
            PrependQ => Prepend,
            Gatq => Gat,
            Gatkq => Gatk,
            other => other,
        }
    }

    /// Whether hit and miss responses carry the request key (`GetK`, `GetKQ`, `Gatk`, `Gatkq`).
    pub fn returns_key(self) -> bool {
        matches!(
            self,
            Opcode::GetK | Opcode::GetKQ | Opcode::Gatk | Opcode::Gatkq
        )
    }
}

/// Response status codes (`protocol_binary_response_status`).
#[repr(u16)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// No error.
    Success = 0x0000,
    /// Key not found.
    KeyNotFound = 0x0001,
    /// Key exists (CAS mismatch, or `Add` of an existing key).
    KeyExists = 0x0002,
    /// Value too large (`E2BIG`).
    TooLarge = 0x0003,
    /// Invalid arguments (malformed request).
    Einval = 0x0004,
    /// Item not stored.
    NotStored = 0x0005,
    /// Incr/decr on a non-numeric value.
    DeltaBadval = 0x0006,
    /// Authentication required / failed (also sent when flush is disabled).
    AuthError = 0x0020,
    /// SASL authentication continues.
    AuthContinue = 0x0021,
    /// Unknown command.
    UnknownCommand = 0x0081,
    /// Out of memory.
    Enomem = 0x0082,
    /// Temporary failure (a cluster could not reach the owners of the key in time).
    TemporaryFailure = 0x0086,
}

impl Status {
    /// The wire value.
    #[inline]
    pub fn code(self) -> u16 {
        self as u16
    }

    /// Decodes a wire status; `None` for codes memcached does not define.
    pub fn from_u16(v: u16) -> Option<Status> {
        use Status::*;
        Some(match v {
            0x0000 => Success,
            0x0001 => KeyNotFound,
            0x0002 => KeyExists,
            0x0003 => TooLarge,
            0x0004 => Einval,
            0x0005 => NotStored,
            0x0006 => DeltaBadval,
            0x0020 => AuthError,
            0x0021 => AuthContinue,
            0x0081 => UnknownCommand,
            0x0082 => Enomem,
            0x0086 => TemporaryFailure,
            _ => return None,
        })
    }

    /// The error text memcached puts in the body of an error response (`write_bin_error`
    /// with no explicit text). Empty for [`Status::Success`] and [`Status::AuthContinue`],
    /// which are not error responses.
    pub fn message(self) -> &'static [u8] {
        match self {
            Status::Success | Status::AuthContinue => b"",
            Status::KeyNotFound => b"Not found",
            Status::KeyExists => b"Data exists for key.",
            Status::TooLarge => b"Too large.",
            Status::Einval => b"Invalid arguments",
            Status::NotStored => b"Not stored.",
            Status::DeltaBadval => b"Non-numeric server-side value for incr or decr",
            Status::AuthError => b"Auth failure.",
            Status::UnknownCommand => b"Unknown command",
            Status::Enomem => b"Out of memory",
            Status::TemporaryFailure => b"Temporary failure",
        }
    }
}

/// A decoded 24-byte packet header (request or response).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// [`REQ_MAGIC`] or [`RES_MAGIC`].
    pub magic: u8,
    /// Raw opcode byte.
    pub opcode: u8,
    /// Key length.
    pub key_len: u16,
    /// Extras length.
    pub extras_len: u8,
    /// Data type; always [`RAW_BYTES`] in practice, ignored by memcached.
    pub data_type: u8,
    /// vbucket id in requests (ignored), status in responses.
    pub vbucket_or_status: u16,
    /// Total body length: extras + key + value.
    pub body_len: u32,
    /// Opaque value echoed back in the response.
    pub opaque: u32,
    /// CAS value (0 = none).
    pub cas: u64,
}

impl Header {
    /// Decodes the first [`HEADER_LEN`] bytes of `buf`; `None` if `buf` is shorter.
    /// The magic byte is not checked here.
    pub fn decode(buf: &[u8]) -> Option<Header> {
        let b: &[u8; HEADER_LEN] = buf.get(..HEADER_LEN)?.try_into().ok()?;
        Some(Header {
            magic: b[0],
            opcode: b[1],
            key_len: u16::from_be_bytes([b[2], b[3]]),
            extras_len: b[4],
            data_type: b[5],
            vbucket_or_status: u16::from_be_bytes([b[6], b[7]]),
            body_len: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
            opaque: u32::from_be_bytes([b[12], b[13], b[14], b[15]]),
            cas: u64::from_be_bytes([b[16], b[17], b[18], b[19], b[20], b[21], b[22], b[23]]),
        })
    }

    /// Appends the 24 encoded header bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.magic);
        out.push(self.opcode);
        out.extend_from_slice(&self.key_len.to_be_bytes());
        out.push(self.extras_len);
        out.push(self.data_type);
        out.extend_from_slice(&self.vbucket_or_status.to_be_bytes());
        out.extend_from_slice(&self.body_len.to_be_bytes());
        out.extend_from_slice(&self.opaque.to_be_bytes());
        out.extend_from_slice(&self.cas.to_be_bytes());
    }

    /// Value length implied by the header (`body_len - extras_len - key_len`), or `None` if
    /// the extras and key do not fit in the body.
    pub fn value_len(&self) -> Option<u32> {
        self.body_len
            .checked_sub(u32::from(self.key_len) + u32::from(self.extras_len))
    }
}

/// A complete, validated request borrowing from the input buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BinRequest<'a> {
    /// The raw header.
    pub header: Header,
    /// The decoded opcode (a request is only `Done` if its opcode is known).
    pub opcode: Opcode,
    /// Extras bytes (length already validated for the opcode).
    pub extras: &'a [u8],
    /// Key bytes (at most [`KEY_MAX_LEN`]).
    pub key: &'a [u8],
    /// Value bytes (empty for every opcode that forbids a value).
    pub value: &'a [u8],
}

impl BinRequest<'_> {
    /// Opaque to echo in every response to this request.
    #[inline]
    pub fn opaque(&self) -> u32 {
        self.header.opaque
    }

    /// Request CAS (0 = unconditional).
    #[inline]
    pub fn cas(&self) -> u64 {
        self.header.cas
    }

    /// Whether the request is a quiet variant (see [`Opcode::is_quiet`]).
    #[inline]
    pub fn is_quiet(&self) -> bool {
        self.opcode.is_quiet()
    }

    /// `(flags, exptime)` of a Set/Add/Replace(Q) request (8-byte extras).
    pub fn store_extras(&self) -> Option<(u32, u32)> {
        if self.extras.len() != 8 {
            return None;
        }
        Some((be_u32(self.extras, 0)?, be_u32(self.extras, 4)?))
    }

    /// `(delta, initial, exptime)` of an Increment/Decrement(Q) request (20-byte extras).
    ///
    /// memcached semantics on a missing key: if `exptime == 0xffffffff` the command fails with
    /// [`Status::KeyNotFound`]; otherwise the item is created (flags 0) holding `initial`, and
    /// `initial` is returned as the counter value.
    pub fn arith_extras(&self) -> Option<(u64, u64, u32)> {
        if self.extras.len() != 20 {
            return None;
        }
        Some((
            be_u64(self.extras, 0)?,
            be_u64(self.extras, 8)?,
            be_u32(self.extras, 16)?,
        ))
    }

    /// New expiration time of a Touch/Gat/Gatq/Gatk/Gatkq request.
    pub fn touch_exptime(&self) -> Option<u32> {
        match self.opcode {
            Opcode::Touch | Opcode::Gat | Opcode::Gatq | Opcode::Gatk | Opcode::Gatkq => {
                self.four_byte_extras()
            }
            _ => None,
        }
    }

    /// Delay of a Flush(Q) request, `0` meaning "now" (also when the optional 4-byte extras are
    /// absent, as in memcached). A non-zero delay is an exptime: memcached invalidates items
    /// at `realtime(delay)`.
    pub fn flush_delay(&self) -> u32 {
        match self.opcode {
            Opcode::Flush | Opcode::FlushQ => self.four_byte_extras().unwrap_or(0),
            _ => 0,
        }
    }

    /// Level of a Verbosity request.
    pub fn verbosity(&self) -> Option<u32> {
        match self.opcode {
            Opcode::Verbosity => self.four_byte_extras(),
            _ => None,
        }
    }

    fn four_byte_extras(&self) -> Option<u32> {
        if self.extras.len() == 4 {
            be_u32(self.extras, 0)
        } else {
            None
        }
    }
}

/// Outcome of [`parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinParsed<'a> {
    /// More bytes are needed; call again with a longer buffer (same start).
    Incomplete,
    /// A complete valid request occupying `buf[..consumed]`.
    Done {
        /// The request.
        req: BinRequest<'a>,
        /// Bytes to drop from the front of the buffer.
        consumed: usize,
    },
    /// The request must be answered with an error. The caller:
    /// 1. writes `write_error(out, opcode, status, opaque)`,
    /// 2. drops `consumed` bytes (always [`HEADER_LEN`]) from its buffer,
    /// 3. discards the next `swallow` bytes, which may not have arrived yet (memcached's
    ///    `conn_swallow` state), and
    /// 4. closes the connection after the response is written if `close` is set (then
    ///    `swallow` is 0 and the rest of the input is irrelevant).
    Invalid {
        /// Request opaque, to echo.
        opaque: u32,
        /// Raw request opcode, to echo.
        opcode: u8,
        /// Error status; the body is `status.message()`.
        status: Status,
        /// Bytes to drop from the front of the buffer.
        consumed: usize,
        /// Body bytes to discard after `consumed`.
        swallow: u32,
        /// Close the connection once the error is written.
        close: bool,
    },
    /// The first byte is not [`REQ_MAGIC`]: memcached closes the connection at once, without
    /// any response.
    BadMagic {
        /// The offending byte.
        magic: u8,
    },
}

/// Parses one request from the front of `buf`.
///
/// `max_body` bounds the total body (extras + key + value) the caller is willing to buffer; a
/// larger declared body yields `Invalid { status: TooLarge, consumed: 24, swallow: body_len,
/// close: false }` as soon as the header is in, exactly like memcached answering "Too large."
/// and swallowing the value when the item cannot be allocated.
///
/// Checks, in memcached's order (all decided on the 24-byte header alone):
/// 1. magic must be `0x80`, else [`BinParsed::BadMagic`] (close, no answer);
/// 2. `key_len + extras_len <= body_len`, else `UnknownCommand`, close;
/// 3. `key_len <= 250`, else `Einval` ("Invalid arguments"), close;
/// 4. known opcode, else `UnknownCommand` with the whole body swallowed, connection kept;
/// 5. per-opcode extras/key/value shape (see below), else `Einval`, close;
/// 6. `body_len <= max_body`, else `TooLarge`, body swallowed, connection kept (for Set and
///    SetQ only once the extras and key are buffered, so that the caller can read the key
///    with [`oversized_set_key`] and remove the old item).
///
/// Per-opcode shape (E = extras length, K = key length, V = value length):
///
/// | opcodes                                   | E      | K    | V        |
/// |-------------------------------------------|--------|------|----------|
/// | Get, GetQ, GetK, GetKQ, Delete(Q)         | 0      | > 0  | 0        |
/// | Set, Add, Replace (+Q)                    | 8      | > 0  | any      |
/// | Append, Prepend (+Q)                      | 0      | > 0  | any      |
/// | Increment, Decrement (+Q)                 | 20     | > 0  | 0        |
/// | Touch, Gat, Gatq, Gatk, Gatkq             | 4      | > 0  | 0 (*)    |
/// | Quit(Q), Noop, Version, SaslListMechs     | 0      | 0    | 0        |
/// | Flush(Q)                                  | 0 or 4 | 0    | 0        |
/// | Stat                                      | 0      | any  | 0 (*)    |
/// | SaslAuth, SaslStep                        | 0      | > 0  | any      |
/// | Verbosity                                 | 4      | 0    | 0        |
///
/// (*) Deliberate differences from memcached: it does not check the value length of
/// Stat and Touch/Gat* requests and then mis-parses the leftover value bytes as the next
/// packet; here a value there is `Einval` + close, as the protocol spec says "MUST NOT have
/// value". Also, memcached waits for the extras and key before answering checks 2-6; this
/// parser answers from the header alone. A Verbosity of the wrong shape is `UnknownCommand`
/// with its body swallowed and the connection kept, as memcached answers it.
pub fn parse(buf: &[u8], max_body: usize) -> BinParsed<'_> {
    let Some(&first) = buf.first() else {
        return BinParsed::Incomplete;
    };
    if first != REQ_MAGIC {
        return BinParsed::BadMagic { magic: first };
    }
    let Some(header) = Header::decode(buf) else {
        return BinParsed::Incomplete;
    };

    let key_len = usize::from(header.key_len);
    let extras_len = usize::from(header.extras_len);
    if header.value_len().is_none() {
        return invalid(&header, Status::UnknownCommand, 0, true);
    }
    if key_len > KEY_MAX_LEN {
        return invalid(&header, Status::Einval, 0, true);
    }
    let Some(opcode) = Opcode::from_u8(header.opcode) else {
        return invalid(&header, Status::UnknownCommand, header.body_len, false);
    };
    if !shape_ok(opcode, &header) {
        // memcached answers a malformed Verbosity as an unknown command and reads on.
        if opcode == Opcode::Verbosity {
            return invalid(&header, Status::UnknownCommand, header.body_len, false);
        }
        return invalid(&header, Status::Einval, 0, true);
    }
    let body_len = usize::try_from(header.body_len).unwrap_or(usize::MAX);
    if body_len > max_body {
        // The caller of an oversized Set removes the old item (as memcached does), so it
        // gets the extras and key first: at most 24 + 8 + 250 bytes.
        if opcode.base() == Opcode::Set && buf.len() < HEADER_LEN + extras_len + key_len {
            return BinParsed::Incomplete;
        }
        return invalid(&header, Status::TooLarge, header.body_len, false);
    }
    let Some(total) = HEADER_LEN.checked_add(body_len) else {
        return invalid(&header, Status::TooLarge, header.body_len, false);
    };
    let Some(packet) = buf.get(..total) else {
        return BinParsed::Incomplete;
    };
    // Cannot fail: `total = 24 + body_len` and `extras_len + key_len <= body_len` (checked
    // above). Kept checked so that a future edit cannot introduce a panic.
    let Some((_, body)) = packet.split_at_checked(HEADER_LEN) else {
        return invalid(&header, Status::UnknownCommand, 0, true);
    };
    let Some((extras, rest)) = body.split_at_checked(extras_len) else {
        return invalid(&header, Status::UnknownCommand, 0, true);
    };
    let Some((key, value)) = rest.split_at_checked(key_len) else {
        return invalid(&header, Status::UnknownCommand, 0, true);
    };
    BinParsed::Done {
        req: BinRequest {
            header,
            opcode,
            extras,
            key,
            value,
        },
        consumed: total,
    }
}

/// The key of an oversized Set/SetQ that [`parse`] refused with `TooLarge`: `buf` is the buffer
/// that was given to [`parse`].
pub fn oversized_set_key(buf: &[u8]) -> Option<&[u8]> {
    let h = Header::decode(buf)?;
    let op = Opcode::from_u8(h.opcode)?;
    if op.base() != Opcode::Set {
        return None;
    }
    let start = HEADER_LEN + usize::from(h.extras_len);
    buf.get(start..start + usize::from(h.key_len))
        .filter(|k| !k.is_empty())
}

fn invalid<'a>(header: &Header, status: Status, swallow: u32, close: bool) -> BinParsed<'a> {
    BinParsed::Invalid {
        opaque: header.opaque,
        opcode: header.opcode,
        status,
        consumed: HEADER_LEN,
        swallow,
        close,
    }
}

/// Per-opcode extras/key/value rules (see the table on [`parse`]). Assumes
/// `key_len + extras_len <= body_len` has been checked.
fn shape_ok(opcode: Opcode, h: &Header) -> bool {
    use Opcode::*;
    let k = u32::from(h.key_len);
    let e = u32::from(h.extras_len);
    let b = h.body_len;
    match opcode {
        Get | GetQ | GetK | GetKQ | Delete | DeleteQ => e == 0 && k > 0 && b == k,
        Set | SetQ | Add | AddQ | Replace | ReplaceQ => e == 8 && k > 0,
        Append | AppendQ | Prepend | PrependQ => e == 0 && k > 0,
        Increment | IncrementQ | Decrement | DecrementQ => e == 20 && k > 0 && b == k + e,
        Touch | Gat | Gatq | Gatk | Gatkq => e == 4 && k > 0 && b == k + e,
        Quit | QuitQ | Noop | Version | SaslListMechs => e == 0 && k == 0 && b == 0,
        Flush | FlushQ => k == 0 && b == e && (e == 0 || e == 4),
        Stat => e == 0 && b == k,
        SaslAuth | SaslStep => e == 0 && k > 0,
        Verbosity => e == 4 && k == 0 && b == 4,
    }
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    let s: [u8; 4] = b.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_be_bytes(s))
}

fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    let s: [u8; 8] = b.get(at..at.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_be_bytes(s))
}

/// Clamps a slice to `max` bytes. Only reachable if a caller passes an out-of-range field;
/// truncating keeps the emitted frame self-consistent instead of panicking.
fn clamp(s: &[u8], max: usize) -> &[u8] {
    s.get(..max).unwrap_or(s)
}

/// Appends one packet with the given magic; lengths are clamped to their field widths.
#[allow(clippy::too_many_arguments)]
fn write_packet(
    out: &mut Vec<u8>,
    magic: u8,
    opcode: u8,
    vbucket_or_status: u16,
    opaque: u32,
    cas: u64,
    extras: &[u8],
    key: &[u8],
    value: &[u8],
) {
    let extras = clamp(extras, usize::from(u8::MAX));
    let key = clamp(key, usize::from(u16::MAX));
    let max_body = usize::try_from(u32::MAX).unwrap_or(usize::MAX);
    let value = clamp(value, max_body.saturating_sub(extras.len() + key.len()));
    let body = extras.len() + key.len() + value.len();
    let header = Header {
        magic,
        opcode,
        key_len: u16::try_from(key.len()).unwrap_or(u16::MAX),
        extras_len: u8::try_from(extras.len()).unwrap_or(u8::MAX),
        data_type: RAW_BYTES,
        vbucket_or_status,
        body_len: u32::try_from(body).unwrap_or(u32::MAX),
        opaque,
        cas,
    };
    out.reserve(HEADER_LEN.saturating_add(body));
    header.encode(out);
    out.extend_from_slice(extras);
    out.extend_from_slice(key);
    out.extend_from_slice(value);
}

/// Appends a response packet. `opcode` is the raw request opcode (memcached echoes the request
/// opcode byte, so a GetQ hit is answered with opcode `0x09`). Data type is always 0.
#[allow(clippy::too_many_arguments)]
pub fn write_response(
    out: &mut Vec<u8>,
    opcode: u8,
    status: Status,
    opaque: u32,
    cas: u64,
    extras: &[u8],
    key: &[u8],
    value: &[u8],
) {
    write_packet(
        out,
        RES_MAGIC,
        opcode,
        status.code(),
        opaque,
        cas,
        extras,
        key,
        value,
    );
}

/// Appends an error response whose body is memcached's text for `status`
/// ([`Status::message`]), with no extras, no key and CAS 0.
pub fn write_error(out: &mut Vec<u8>, opcode: u8, status: Status, opaque: u32) {
    write_response(out, opcode, status, opaque, 0, &[], &[], status.message());
}

/// Appends an error response with a custom body, e.g. memcached's out-of-memory texts with the
/// `SERVER_ERROR ` prefix stripped ("Out of memory allocating item").
pub fn write_error_msg(out: &mut Vec<u8>, opcode: u8, status: Status, opaque: u32, msg: &[u8]) {
    write_response(out, opcode, status, opaque, 0, &[], &[], msg);
}

/// Appends a get/gat/touch hit: 4-byte flags extras, the key when `key` is `Some` (GetK,
/// GetKQ, Gatk, Gatkq), then the value. A Touch hit is written with an empty value (memcached
/// sends only the flags).
pub fn write_get_hit(
    out: &mut Vec<u8>,
    opcode: u8,
    opaque: u32,
    cas: u64,
    flags: u32,
    key: Option<&[u8]>,
    value: &[u8],
) {
    let key = key.unwrap_or(&[]);
    write_response(
        out,
        opcode,
        Status::Success,
        opaque,
        cas,
        &flags.to_be_bytes(),
        key,
        value,
    );
}

/// Appends a get-family miss as memcached does: with a key (GetK/Gatk) the response carries
/// the key as key *and* as the whole body, with no text; without one it is a plain
/// [`Status::KeyNotFound`] error with body "Not found". (Quiet variants send nothing on a
/// miss; that is the caller's decision.)
pub fn write_get_miss(out: &mut Vec<u8>, opcode: u8, opaque: u32, key: Option<&[u8]>) {
    match key {
        Some(k) if !k.is_empty() => {
            write_response(out, opcode, Status::KeyNotFound, opaque, 0, &[], k, &[]);
        }
        _ => write_error(out, opcode, Status::KeyNotFound, opaque),
    }
}

/// Appends a successful incr/decr response: the new counter value as an 8-byte big-endian
/// body, no extras, and the item's CAS.
pub fn write_arith(out: &mut Vec<u8>, opcode: u8, opaque: u32, cas: u64, value: u64) {
    write_response(
        out,
        opcode,
        Status::Success,
        opaque,
        cas,
        &[],
        &[],
        &value.to_be_bytes(),
    );
}

/// Appends one statistic packet (opcode Stat, key = name, value = value, CAS 0).
pub fn write_stat(out: &mut Vec<u8>, opaque: u32, name: &[u8], value: &[u8]) {
    write_response(
        out,
        Opcode::Stat.as_u8(),
        Status::Success,
        opaque,
        0,
        &[],
        name,
        value,
    );
}

/// Appends the empty Stat packet (no key, no value) that terminates a stats sequence.
pub fn write_stat_end(out: &mut Vec<u8>, opaque: u32) {
    write_stat(out, opaque, &[], &[]);
}

/// Appends a request packet (for clients and tests). Lengths are clamped to their field widths.
pub fn write_request(
    out: &mut Vec<u8>,
    opcode: u8,
    opaque: u32,
    cas: u64,
    extras: &[u8],
    key: &[u8],
    value: &[u8],
) {
    write_packet(out, REQ_MAGIC, opcode, 0, opaque, cas, extras, key, value);
}

/// A complete response packet borrowing from the input buffer (client side / tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BinResponse<'a> {
    /// The raw header; `vbucket_or_status` is the status.
    pub header: Header,
    /// Extras bytes.
    pub extras: &'a [u8],
    /// Key bytes.
    pub key: &'a [u8],
    /// Value bytes.
    pub value: &'a [u8],
}

impl BinResponse<'_> {
    /// Decoded status, `None` if the code is not one memcached defines.
    pub fn status(&self) -> Option<Status> {
        Status::from_u16(self.header.vbucket_or_status)
    }
}

/// Outcome of [`parse_response`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RespParsed<'a> {
    /// More bytes are needed.
    Incomplete,
    /// A complete response occupying `buf[..consumed]`.
    Done {
        /// The response.
        resp: BinResponse<'a>,
        /// Bytes to drop from the front of the buffer.
        consumed: usize,
    },
    /// Wrong magic, inconsistent lengths, or a body larger than `max_body`.
    Invalid,
}

/// Parses one response packet from the front of `buf` (client side / tests). Never panics and
/// never waits for more than `24 + max_body` bytes.
pub fn parse_response(buf: &[u8], max_body: usize) -> RespParsed<'_> {
    let Some(&first) = buf.first() else {
        return RespParsed::Incomplete;
    };
    if first != RES_MAGIC {
        return RespParsed::Invalid;
    }
    let Some(header) = Header::decode(buf) else {
        return RespParsed::Incomplete;
    };
    if header.value_len().is_none() {
        return RespParsed::Invalid;
    }
    let body_len = usize::try_from(header.body_len).unwrap_or(usize::MAX);
    if body_len > max_body {
        return RespParsed::Invalid;
    }
    let Some(total) = HEADER_LEN.checked_add(body_len) else {
        return RespParsed::Invalid;
    };
    let Some(packet) = buf.get(..total) else {
        return RespParsed::Incomplete;
    };
    let Some((_, body)) = packet.split_at_checked(HEADER_LEN) else {
        return RespParsed::Invalid;
    };
    let Some((extras, rest)) = body.split_at_checked(usize::from(header.extras_len)) else {
        return RespParsed::Invalid;
    };
    let Some((key, value)) = rest.split_at_checked(usize::from(header.key_len)) else {
        return RespParsed::Invalid;
    };
    RespParsed::Done {
        resp: BinResponse {
            header,
            extras,
            key,
            value,
        },
        consumed: total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 20;

    fn req(op: u8, opaque: u32, cas: u64, extras: &[u8], key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        write_request(&mut v, op, opaque, cas, extras, key, value);
        v
    }

    /// A raw header with arbitrary (possibly inconsistent) lengths.
    fn raw_header(op: u8, key_len: u16, extras_len: u8, body_len: u32, opaque: u32) -> Vec<u8> {
        let mut v = Vec::new();
        Header {
            magic: REQ_MAGIC,
            opcode: op,
            key_len,
            extras_len,
            data_type: 0,
            vbucket_or_status: 0,
            body_len,
            opaque,
            cas: 0,
        }
        .encode(&mut v);
        v
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    /// A valid (extras, key, value) for every opcode.
    fn sample(op: Opcode) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        use Opcode::*;
        match op {
            Get | GetQ | GetK | GetKQ | Delete | DeleteQ => (vec![], b"key".to_vec(), vec![]),
            Set | SetQ | Add | AddQ | Replace | ReplaceQ => (
                cat(&[&0xdead_beef_u32.to_be_bytes(), &3600u32.to_be_bytes()]),
                b"key".to_vec(),
                b"value".to_vec(),
            ),
            Append | AppendQ | Prepend | PrependQ => (vec![], b"key".to_vec(), b"tail".to_vec()),
            Increment | IncrementQ | Decrement | DecrementQ => (
                cat(&[
                    &5u64.to_be_bytes(),
                    &10u64.to_be_bytes(),
                    &u32::MAX.to_be_bytes(),
                ]),
                b"counter".to_vec(),
                vec![],
            ),
            Touch | Gat | Gatq | Gatk | Gatkq => {
                (60u32.to_be_bytes().to_vec(), b"key".to_vec(), vec![])
            }
            Quit | QuitQ | Noop | Version | SaslListMechs => (vec![], vec![], vec![]),
            Flush | FlushQ => (30u32.to_be_bytes().to_vec(), vec![], vec![]),
            Stat => (vec![], b"settings".to_vec(), vec![]),
            SaslAuth | SaslStep => (vec![], b"PLAIN".to_vec(), b"\0user\0pass".to_vec()),
            Verbosity => (1u32.to_be_bytes().to_vec(), vec![], vec![]),
        }
    }

    #[derive(Clone, Copy)]
    enum KeyRule {
        Required,
        Forbidden,
        Optional,
    }

    /// Declarative restatement of memcached's `dispatch_bin_command` rules:
    /// (allowed extras lengths, key rule, value allowed).
    fn rules(op: Opcode) -> (Vec<usize>, KeyRule, bool) {
        use KeyRule::*;
        use Opcode::*;
        match op {
            Get | GetQ | GetK | GetKQ | Delete | DeleteQ => (vec![0], Required, false),
            Set | SetQ | Add | AddQ | Replace | ReplaceQ => (vec![8], Required, true),
            Append | AppendQ | Prepend | PrependQ => (vec![0], Required, true),
            Increment | IncrementQ | Decrement | DecrementQ => (vec![20], Required, false),
            Touch | Gat | Gatq | Gatk | Gatkq => (vec![4], Required, false),
            Quit | QuitQ | Noop | Version | SaslListMechs => (vec![0], Forbidden, false),
            Flush | FlushQ => (vec![0, 4], Forbidden, false),
            Stat => (vec![0], Optional, false),
            SaslAuth | SaslStep => (vec![0], Required, true),
            Verbosity => (vec![4], Forbidden, false),
        }
    }

    #[test]
    fn opcode_table_round_trips() {
        for b in 0..=u8::MAX {
            match Opcode::from_u8(b) {
                Some(op) => assert_eq!(op.as_u8(), b),
                None => assert!(!Opcode::ALL.iter().any(|o| o.as_u8() == b), "{b:#x}"),
            }
        }
        for op in Opcode::ALL {
            assert_eq!(Opcode::from_u8(op as u8), Some(op));
        }
        assert_eq!(Opcode::from_u8(0x1f), None);
        assert_eq!(Opcode::from_u8(0x25), None);
    }

    #[test]
    fn quiet_variants_map_to_base() {
        use Opcode::*;
        let pairs = [
            (GetQ, Get),
            (GetKQ, GetK),
            (SetQ, Set),
            (AddQ, Add),
            (ReplaceQ, Replace),
            (DeleteQ, Delete),
            (IncrementQ, Increment),
            (DecrementQ, Decrement),
            (QuitQ, Quit),
            (FlushQ, Flush),
            (AppendQ, Append),
            (PrependQ, Prepend),
            (Gatq, Gat),
            (Gatkq, Gatk),
        ];
        for (q, b) in pairs {
            assert!(q.is_quiet());
            assert!(!b.is_quiet());
            assert_eq!(q.base(), b);
            assert_eq!(b.base(), b);
        }
        let quiet = Opcode::ALL.iter().filter(|o| o.is_quiet()).count();
        assert_eq!(quiet, pairs.len());
        for op in Opcode::ALL {
            if !op.is_quiet() {
                assert_eq!(op.base(), op);
            }
        }
        assert!(GetK.returns_key() && GetKQ.returns_key() && Gatk.returns_key());
        assert!(Gatkq.returns_key() && !Get.returns_key() && !Gat.returns_key());
    }

    #[test]
    fn status_messages_are_memcached_exact() {
        assert_eq!(Status::KeyNotFound.message(), b"Not found");
        assert_eq!(Status::KeyExists.message(), b"Data exists for key.");
        assert_eq!(Status::TooLarge.message(), b"Too large.");
        assert_eq!(Status::Einval.message(), b"Invalid arguments");
        assert_eq!(Status::NotStored.message(), b"Not stored.");
        assert_eq!(
            Status::DeltaBadval.message(),
            b"Non-numeric server-side value for incr or decr"
        );
        assert_eq!(Status::AuthError.message(), b"Auth failure.");
        assert_eq!(Status::UnknownCommand.message(), b"Unknown command");
        assert_eq!(Status::Enomem.message(), b"Out of memory");
        assert_eq!(Status::Success.message(), b"");
        for code in 0..=u16::MAX {
            if let Some(s) = Status::from_u16(code) {
                assert_eq!(s.code(), code);
            }
        }
        assert_eq!(Status::from_u16(0x81), Some(Status::UnknownCommand));
        assert_eq!(Status::from_u16(0x07), None);
    }

    #[test]
    fn is_binary_detects_request_magic() {
        assert!(is_binary(0x80));
        assert!(!is_binary(0x81));
        assert!(!is_binary(b'g'));
    }

    #[test]
    fn every_opcode_round_trips() {
        for (i, op) in Opcode::ALL.into_iter().enumerate() {
            let (e, k, v) = sample(op);
            let opaque = 0x0102_0304 ^ i as u32;
            let cas = 0xaabb_ccdd_0000_0000 | i as u64;
            let buf = req(op.as_u8(), opaque, cas, &e, &k, &v);
            match parse(&buf, MAX) {
                BinParsed::Done { req, consumed } => {
                    assert_eq!(consumed, buf.len(), "{op:?}");
                    assert_eq!(req.opcode, op);
                    assert_eq!(req.header.opcode, op.as_u8());
                    assert_eq!(req.header.magic, REQ_MAGIC);
                    assert_eq!(req.opaque(), opaque);
                    assert_eq!(req.cas(), cas);
                    assert_eq!(req.extras, &e[..]);
                    assert_eq!(req.key, &k[..]);
                    assert_eq!(req.value, &v[..]);
                    assert_eq!(req.is_quiet(), op.is_quiet());
                }
                other => panic!("{op:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn typed_extras_accessors() {
        let done = |op: Opcode| {
            let (e, k, v) = sample(op);
            let buf = req(op.as_u8(), 1, 0, &e, &k, &v);
            match parse(&buf, MAX) {
                BinParsed::Done { req, .. } => (
                    req.store_extras(),
                    req.arith_extras(),
                    req.touch_exptime(),
                    req.flush_delay(),
                    req.verbosity(),
                ),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            done(Opcode::Set),
            (Some((0xdead_beef, 3600)), None, None, 0, None)
        );
        assert_eq!(done(Opcode::AddQ).0, Some((0xdead_beef, 3600)));
        assert_eq!(
            done(Opcode::Increment),
            (None, Some((5, 10, u32::MAX)), None, 0, None)
        );
        assert_eq!(done(Opcode::DecrementQ).1, Some((5, 10, u32::MAX)));
        assert_eq!(done(Opcode::Touch), (None, None, Some(60), 0, None));
        assert_eq!(done(Opcode::Gatkq).2, Some(60));
        assert_eq!(done(Opcode::Flush), (None, None, None, 30, None));
        assert_eq!(done(Opcode::Verbosity), (None, None, None, 0, Some(1)));
        assert_eq!(done(Opcode::Get), (None, None, None, 0, None));

        // Flush without extras: delay 0, as memcached.
        let buf = req(Opcode::FlushQ.as_u8(), 1, 0, &[], &[], &[]);
        match parse(&buf, MAX) {
            BinParsed::Done { req, .. } => assert_eq!(req.flush_delay(), 0),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn incomplete_at_every_split_point() {
        for op in Opcode::ALL {
            let (e, k, v) = sample(op);
            let buf = req(op.as_u8(), 7, 9, &e, &k, &v);
            for n in 0..buf.len() {
                assert_eq!(
                    parse(&buf[..n], MAX),
                    BinParsed::Incomplete,
                    "{op:?} at {n}"
                );
            }
            assert!(matches!(parse(&buf, MAX), BinParsed::Done { .. }));
        }
    }

    #[test]
    fn pipelined_requests_parse_one_at_a_time() {
        let mut buf = req(Opcode::GetKQ.as_u8(), 1, 0, &[], b"a", &[]);
        buf.extend(req(Opcode::GetKQ.as_u8(), 2, 0, &[], b"bb", &[]));
        buf.extend(req(Opcode::Noop.as_u8(), 3, 0, &[], &[], &[]));
        let mut rest = &buf[..];
        let mut seen = Vec::new();
        while !rest.is_empty() {
            match parse(rest, MAX) {
                BinParsed::Done { req, consumed } => {
                    seen.push((req.opcode, req.opaque(), req.key.to_vec()));
                    rest = &rest[consumed..];
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            seen,
            vec![
                (Opcode::GetKQ, 1, b"a".to_vec()),
                (Opcode::GetKQ, 2, b"bb".to_vec()),
                (Opcode::Noop, 3, vec![]),
            ]
        );
    }

    #[test]
    fn shape_rules_for_every_opcode() {
        for op in Opcode::ALL {
            let (ext_ok, key_rule, value_ok) = rules(op);
            for ext in [0usize, 1, 4, 8, 20] {
                for key in [0usize, 3] {
                    for val in [0usize, 2] {
                        let e = vec![0u8; ext];
                        let k = vec![b'k'; key];
                        let v = vec![b'v'; val];
                        let buf = req(op.as_u8(), 0x55, 0, &e, &k, &v);
                        let key_ok = match key_rule {
                            KeyRule::Required => key > 0,
                            KeyRule::Forbidden => key == 0,
                            KeyRule::Optional => true,
                        };
                        let valid = ext_ok.contains(&ext) && key_ok && (val == 0 || value_ok);
                        let got = parse(&buf, MAX);
                        if valid {
                            let done_len = match got {
                                BinParsed::Done { consumed, .. } => Some(consumed),
                                _ => None,
                            };
                            assert_eq!(
                                done_len,
                                Some(buf.len()),
                                "{op:?} e={ext} k={key} v={val}: {got:?}"
                            );
                        } else if op == Opcode::Verbosity {
                            assert_eq!(
                                got,
                                BinParsed::Invalid {
                                    opaque: 0x55,
                                    opcode: op.as_u8(),
                                    status: Status::UnknownCommand,
                                    consumed: HEADER_LEN,
                                    swallow: (ext + key + val) as u32,
                                    close: false,
                                },
                                "{op:?} e={ext} k={key} v={val}"
                            );
                        } else {
                            assert_eq!(
                                got,
                                BinParsed::Invalid {
                                    opaque: 0x55,
                                    opcode: op.as_u8(),
                                    status: Status::Einval,
                                    consumed: HEADER_LEN,
                                    swallow: 0,
                                    close: true,
                                },
                                "{op:?} e={ext} k={key} v={val}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn invalid_shape_is_answered_from_the_header_alone() {
        // Get with extras: body never sent, still rejected at once.
        let buf = raw_header(Opcode::Get.as_u8(), 3, 4, 7, 9);
        assert!(matches!(
            parse(&buf, MAX),
            BinParsed::Invalid {
                status: Status::Einval,
                close: true,
                consumed: 24,
                ..
            }
        ));
        // Shape errors win over size errors (memcached validates before allocating).
        let buf = raw_header(Opcode::Get.as_u8(), 3, 0, 1 << 30, 9);
        assert!(matches!(
            parse(&buf, 16),
            BinParsed::Invalid {
                status: Status::Einval,
                close: true,
                ..
            }
        ));
    }

    #[test]
    fn key_length_limit() {
        let ok = req(Opcode::Get.as_u8(), 1, 0, &[], &[b'k'; KEY_MAX_LEN], &[]);
        assert!(matches!(parse(&ok, MAX), BinParsed::Done { .. }));
        let long = req(
            Opcode::Get.as_u8(),
            1,
            0,
            &[],
            &[b'k'; KEY_MAX_LEN + 1],
            &[],
        );
        assert_eq!(
            parse(&long, MAX),
            BinParsed::Invalid {
                opaque: 1,
                opcode: 0,
                status: Status::Einval,
                consumed: 24,
                swallow: 0,
                close: true
            }
        );
        // Even for an unknown opcode the key limit is checked first, as in memcached.
        let buf = raw_header(0x1f, 300, 0, 300, 2);
        assert!(matches!(
            parse(&buf, MAX),
            BinParsed::Invalid {
                status: Status::Einval,
                close: true,
                ..
            }
        ));
    }

    #[test]
    fn key_and_extras_longer_than_body_is_unknown_command_and_close() {
        for (k, e, b) in [
            (5u16, 0u8, 4u32),
            (0, 8, 7),
            (3, 8, 10),
            (u16::MAX, u8::MAX, 0),
        ] {
            let buf = raw_header(Opcode::Set.as_u8(), k, e, b, 0xfeed);
            assert_eq!(
                parse(&buf, MAX),
                BinParsed::Invalid {
                    opaque: 0xfeed,
                    opcode: Opcode::Set.as_u8(),
                    status: Status::UnknownCommand,
                    consumed: 24,
                    swallow: 0,
                    close: true,
                }
            );
        }
    }

    #[test]
    fn unknown_opcode_swallows_body_and_keeps_connection() {
        for op in [0x1fu8, 0x25, 0x2e, 0x30, 0xff] {
            let buf = raw_header(op, 0, 0, 10, 4);
            assert_eq!(
                parse(&buf, MAX),
                BinParsed::Invalid {
                    opaque: 4,
                    opcode: op,
                    status: Status::UnknownCommand,
                    consumed: 24,
                    swallow: 10,
                    close: false,
                }
            );
        }
        // A huge body of an unknown command is swallowed, not buffered.
        let buf = raw_header(0x1f, 0, 0, u32::MAX, 4);
        assert!(matches!(
            parse(&buf, 1024),
            BinParsed::Invalid {
                status: Status::UnknownCommand,
                swallow: u32::MAX,
                ..
            }
        ));
    }

    #[test]
    fn oversized_body_is_too_large_and_swallowed() {
        for op in [Opcode::Set, Opcode::AddQ, Opcode::Append, Opcode::SaslAuth] {
            let (e, _, _) = sample(op);
            for body in [1025u32, 1 << 20, u32::MAX] {
                let mut buf = raw_header(op.as_u8(), 3, e.len() as u8, body, 77);
                if op.base() == Opcode::Set {
                    // An oversized Set waits for its key (the caller removes the old item).
                    assert_eq!(parse(&buf, 1024), BinParsed::Incomplete);
                    buf.extend_from_slice(&e);
                    buf.extend_from_slice(b"key");
                    assert_eq!(oversized_set_key(&buf), Some(&b"key"[..]));
                }
                assert_eq!(
                    parse(&buf, 1024),
                    BinParsed::Invalid {
                        opaque: 77,
                        opcode: op.as_u8(),
                        status: Status::TooLarge,
                        consumed: 24,
                        swallow: body,
                        close: false,
                    },
                    "{op:?} {body}"
                );
            }
        }
        // Exactly max_body is accepted once complete.
        let value = vec![b'x'; 1024 - 8 - 3];
        let buf = req(Opcode::Set.as_u8(), 1, 0, &[0; 8], b"key", &value);
        assert!(matches!(parse(&buf, 1024), BinParsed::Done { .. }));
        assert_eq!(parse(&buf[..buf.len() - 1], 1024), BinParsed::Incomplete);
    }

    #[test]
    fn bad_magic_closes_without_answer() {
        for b in [0x00u8, 0x81, b'g', b's', 0xff] {
            assert_eq!(parse(&[b], MAX), BinParsed::BadMagic { magic: b });
            let mut buf = req(Opcode::Noop.as_u8(), 0, 0, &[], &[], &[]);
            buf[0] = b;
            assert_eq!(parse(&buf, MAX), BinParsed::BadMagic { magic: b });
        }
        assert_eq!(parse(&[], MAX), BinParsed::Incomplete);
    }

    #[test]
    fn error_response_layout() {
        let mut out = Vec::new();
        write_error(&mut out, Opcode::Set.as_u8(), Status::TooLarge, 0x0a0b_0c0d);
        assert_eq!(out.len(), 24 + 10);
        assert_eq!(out[0], RES_MAGIC);
        assert_eq!(out[1], 0x01);
        assert_eq!(&out[2..4], &[0, 0]); // key len
        assert_eq!(out[4], 0); // extras len
        assert_eq!(out[5], 0); // data type
        assert_eq!(&out[6..8], &[0, 3]); // status
        assert_eq!(&out[8..12], &10u32.to_be_bytes());
        assert_eq!(&out[12..16], &0x0a0b_0c0du32.to_be_bytes());
        assert_eq!(&out[16..24], &[0; 8]);
        assert_eq!(&out[24..], b"Too large.");

        let mut out = Vec::new();
        write_error_msg(
            &mut out,
            1,
            Status::Enomem,
            0,
            b"Out of memory allocating item",
        );
        match parse_response(&out, MAX) {
            RespParsed::Done { resp, .. } => {
                assert_eq!(resp.status(), Some(Status::Enomem));
                assert_eq!(resp.value, b"Out of memory allocating item");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn get_hit_and_miss_responses() {
        let mut out = Vec::new();
        write_get_hit(
            &mut out,
            Opcode::GetK.as_u8(),
            5,
            42,
            0xdead_beef,
            Some(&b"Hello"[..]),
            b"World",
        );
        write_get_hit(&mut out, Opcode::GetQ.as_u8(), 6, 43, 7, None, b"World");
        write_get_miss(&mut out, Opcode::GetK.as_u8(), 7, Some(&b"Hello"[..]));
        write_get_miss(&mut out, Opcode::Get.as_u8(), 8, None);
        write_get_hit(&mut out, Opcode::Touch.as_u8(), 9, 44, 1, None, &[]);

        let mut rest = &out[..];
        let mut resps = Vec::new();
        while !rest.is_empty() {
            match parse_response(rest, MAX) {
                RespParsed::Done { resp, consumed } => {
                    resps.push(resp);
                    rest = &rest[consumed..];
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(resps.len(), 5);
        let r = &resps[0];
        assert_eq!(
            (r.header.opcode, r.header.opaque, r.header.cas),
            (0x0c, 5, 42)
        );
        assert_eq!(r.status(), Some(Status::Success));
        assert_eq!(r.extras, &0xdead_beefu32.to_be_bytes());
        assert_eq!((r.key, r.value), (&b"Hello"[..], &b"World"[..]));
        assert_eq!(r.header.body_len, 14);
        let r = &resps[1];
        assert_eq!(
            (r.header.opcode, r.key, r.value),
            (0x09, &b""[..], &b"World"[..])
        );
        let r = &resps[2];
        assert_eq!(r.status(), Some(Status::KeyNotFound));
        assert_eq!(
            (r.key, r.value, r.header.body_len),
            (&b"Hello"[..], &b""[..], 5)
        );
        let r = &resps[3];
        assert_eq!(r.status(), Some(Status::KeyNotFound));
        assert_eq!((r.key, r.value), (&b""[..], &b"Not found"[..]));
        let r = &resps[4];
        assert_eq!((r.extras.len(), r.key.len(), r.value.len()), (4, 0, 0));
    }

    #[test]
    fn arith_and_stat_responses() {
        let mut out = Vec::new();
        write_arith(&mut out, Opcode::Increment.as_u8(), 1, 99, 12345);
        write_stat(&mut out, 2, b"pid", b"3078");
        write_stat_end(&mut out, 2);
        let RespParsed::Done { resp, consumed } = parse_response(&out, MAX) else {
            panic!("arith");
        };
        assert_eq!(resp.value, &12345u64.to_be_bytes());
        assert_eq!((resp.extras.len(), resp.header.cas), (0, 99));
        let out = &out[consumed..];
        let RespParsed::Done { resp, consumed } = parse_response(out, MAX) else {
            panic!("stat");
        };
        assert_eq!(
            (resp.header.opcode, resp.key, resp.value),
            (0x10, &b"pid"[..], &b"3078"[..])
        );
        assert_eq!(
            (resp.header.body_len, resp.header.opaque, resp.header.cas),
            (7, 2, 0)
        );
        let out = &out[consumed..];
        assert_eq!(out.len(), 24);
        let RespParsed::Done { resp, .. } = parse_response(out, MAX) else {
            panic!("stat end");
        };
        assert_eq!(
            (
                resp.header.opcode,
                resp.header.body_len,
                resp.header.key_len
            ),
            (0x10, 0, 0)
        );
    }

    #[test]
    fn response_parser_rejects_garbage() {
        assert_eq!(parse_response(&[], MAX), RespParsed::Incomplete);
        assert_eq!(parse_response(&[0x80], MAX), RespParsed::Invalid);
        let mut out = Vec::new();
        write_response(
            &mut out,
            0,
            Status::Success,
            0,
            0,
            &[1, 2, 3, 4],
            b"k",
            b"v",
        );
        for n in 0..out.len() {
            assert_eq!(parse_response(&out[..n], MAX), RespParsed::Incomplete);
        }
        assert_eq!(parse_response(&out, 2), RespParsed::Invalid);
        out[8..12].copy_from_slice(&1u32.to_be_bytes()); // body shorter than extras + key
        assert_eq!(parse_response(&out, MAX), RespParsed::Invalid);
    }

    #[test]
    fn header_round_trip() {
        let h = Header {
            magic: REQ_MAGIC,
            opcode: 0x21,
            key_len: 0x1234,
            extras_len: 0x56,
            data_type: 0x78,
            vbucket_or_status: 0x9abc,
            body_len: 0xdead_beef,
            opaque: 0x0102_0304,
            cas: 0x1122_3344_5566_7788,
        };
        let mut v = Vec::new();
        h.encode(&mut v);
        assert_eq!(v.len(), HEADER_LEN);
        assert_eq!(Header::decode(&v), Some(h));
        assert_eq!(Header::decode(&v[..23]), None);
        assert_eq!(h.value_len(), Some(0xdead_beef - 0x1234 - 0x56));
    }

    #[test]
    fn random_input_never_panics() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 80) as usize;
            let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Bias towards plausible headers so the deeper checks are exercised.
            if let Some(b) = buf.first_mut()
                && next() % 4 != 0
            {
                *b = REQ_MAGIC;
            }
            if buf.len() >= 12 && next() % 2 == 0 {
                buf[1] = (next() % 0x26) as u8;
                buf[2] = 0;
                buf[3] = (next() % 16) as u8;
                buf[4] = [0u8, 4, 8, 20][(next() % 4) as usize];
                buf[8..12].copy_from_slice(&((next() % 64) as u32).to_be_bytes());
            }
            let max = (next() % 128) as usize;
            match parse(&buf, max) {
                BinParsed::Incomplete => {}
                BinParsed::Done { req, consumed } => {
                    assert!(consumed >= HEADER_LEN && consumed <= buf.len());
                    assert!(consumed - HEADER_LEN <= max);
                    assert_eq!(
                        req.extras.len() + req.key.len() + req.value.len(),
                        consumed - HEADER_LEN
                    );
                }
                BinParsed::Invalid {
                    consumed,
                    close,
                    swallow,
                    ..
                } => {
                    assert_eq!(consumed, HEADER_LEN);
                    assert!(consumed <= buf.len());
                    assert!(!close || swallow == 0);
                }
                BinParsed::BadMagic { magic } => assert_ne!(magic, REQ_MAGIC),
            }
            let _ = parse_response(&buf, max);
        }
    }

    #[test]
    fn writers_clamp_out_of_range_fields() {
        let mut out = Vec::new();
        let big_extras = vec![1u8; 300];
        write_response(&mut out, 0, Status::Success, 0, 0, &big_extras, b"k", b"v");
        let RespParsed::Done { resp, consumed } = parse_response(&out, MAX) else {
            panic!("clamped frame must parse");
        };
        assert_eq!(consumed, out.len());
        assert_eq!(
            (resp.extras.len(), resp.key, resp.value),
            (255, &b"k"[..], &b"v"[..])
        );
    }
}
