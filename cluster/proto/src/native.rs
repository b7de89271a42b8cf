//! The k2hdkc native protocol, version 1: length-prefixed binary frames carrying every
//! operation of the storage data model, with structured result codes and pipelining.
//!
//! Every frame, both ways, is a fixed 12-byte header and a body:
//!
//! ```text
//! 0      1        2          3       4           8             12
//! | magic | version | op/status | flags | id (u32 BE) | body_len (u32 BE) | body ...
//! ```
//!
//! - `magic` is [`MAGIC_REQUEST`] (0xD7) or [`MAGIC_RESPONSE`] (0xD8); anything else means the
//!   stream is out of step and the connection is closed.
//! - `version` is [`VERSION`]. The header layout is the same in every version, so a server that
//!   gets a version it does not speak can still skip the frame and answer
//!   [`Status::UnsupportedVersion`] in its own version.
//! - A request carries an [`Op`]; its response carries a [`Status`] and the same `id`. Responses
//!   come in request order, so a client may pipeline any number of requests.
//! - `flags` bit 0 ([`FLAG_QUIET`]) asks the server to send nothing for a successful request
//!   (errors are always answered), for bulk loads.
//! - The body is a sequence of fields `tag (u8) | len (u32 BE) | bytes`. Integers are big
//!   endian and fixed width per tag ([`Tag`]). A field appears at most once except the
//!   repeatable list fields ([`Tag::Child`], [`Tag::Key`] and [`Tag::Value`]/[`Tag::Version`]
//!   in replies). An unknown tag, a wrong width or a duplicate is a [`Status::BadRequest`].
//!
//! Invariants: parsing never panics and never allocates more than the frame holds; a frame is
//! consumed exactly (header + `body_len`) whatever its content, so one bad request never puts
//! the stream out of step.

use std::fmt;

/// First byte of a request frame.
pub const MAGIC_REQUEST: u8 = 0xD7;
/// First byte of a response frame.
pub const MAGIC_RESPONSE: u8 = 0xD8;
/// The protocol version this build speaks.
pub const VERSION: u8 = 1;
/// Header length.
pub const HEADER_LEN: usize = 12;
/// Header flag: no reply on success.
pub const FLAG_QUIET: u8 = 1;

macro_rules! code_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $n:expr),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum $name { $($(#[$vm])* $v = $n),* }
        impl $name {
            /// Every value, in code order.
            pub const ALL: &'static [$name] = &[$($name::$v),*];
            /// From a wire code.
            pub fn from_u8(b: u8) -> Option<$name> {
                match b { $($n => Some($name::$v),)* _ => None }
            }
            /// The name, as used by tools.
            pub fn name(self) -> &'static str {
                match self { $($name::$v => stringify!($v)),* }
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.name()) }
        }
    };
}

code_enum! {
    /// Operations. Required and optional fields are listed per operation; replies list
    /// what a successful reply holds.
    Op {
        /// Nothing; reply empty (a ping, or a pipeline barrier).
        Noop = 0x00,
        /// Reply: `Message` = server version text, `Count` = highest protocol version.
        Hello = 0x01,
        /// Reply: `Message` = JSON object of server statistics.
        Stats = 0x02,
        /// `Key`, opt `Pass`. Reply: `Value`, `Flags`, `Cas`, `Expire`.
        Get = 0x10,
        /// `Key`. Reply: `Kind`, `Flags`, `Cas`, `Version`, `Expire`, `Created`, `Modified`,
        /// `Encrypted`, `StoredLen`, `SubkeyCount`, `HistoryCount`.
        Attrs = 0x11,
        /// `Key`, `Offset`, opt `Length`, opt `Pass`. Reply: `Value`.
        ReadAt = 0x12,
        /// `Key`, opt `Pass`. Reply: (`Version`, `Value`)* oldest first.
        History = 0x13,
        /// `Key`, `Value`, opt `Mode`, `Flags`, `Expire`, `Pass`, `Encrypt`, `Cas`. Reply: `Cas`.
        /// Not written: `NotStored` (mode condition), `Exists` (cas), `NotFound` (cas, absent).
        Set = 0x20,
        /// `Key`, `Offset`, `Value`, opt `Flags`, `Expire`, `Pass`, `Encrypt`, `Cas`. Reply: `Cas`.
        WriteAt = 0x21,
        /// `Key`, opt `Cas`. `NotFound` or `Exists` when nothing was deleted.
        Delete = 0x22,
        /// `Key`: the key, its sub-keys and theirs. Reply: `Count` of keys deleted.
        DeleteTree = 0x23,
        /// `Key`, `Expire`, opt `WantValue`, `Pass`. Reply: as `Get` when `WantValue`.
        Touch = 0x24,
        /// `Key`, `Delta` (u64): memcached decimal incr. Reply: `Count` = new value, `Cas`.
        Incr = 0x25,
        /// As `Incr`, decrementing (never below 0).
        Decr = 0x26,
        /// `Key`. Reply: `Child`* (a key with no list replies none; a missing key `NotFound`).
        Subkeys = 0x30,
        /// `Key`, `Child`*: replace the list.
        SetSubkeys = 0x31,
        /// `Key`: empty the list. `NotFound` when there was none.
        ClearSubkeys = 0x32,
        /// `Key` (parent), `Child`, opt `Value` with `Flags`, `Expire`, `Pass`, `Encrypt`:
        /// add the child (and write it in the same atomic change).
        AddSubkey = 0x33,
        /// `Key`, `Child`, opt `DeleteChild`. `NotFound` when not listed.
        RemoveSubkey = 0x34,
        /// `Key` (from), `To`, opt `Parent`, `Pass`.
        Rename = 0x35,
        /// `Key` (queue), `Value`, opt `ItemKey` (a key-queue item), `Fifo` (default 1),
        /// `Expire`, `Pass`, `Encrypt`. Reply: `Count` = queue length.
        QueuePush = 0x40,
        /// `Key`, opt `Pass`. Reply: `Value`, opt `ItemKey`. Empty queue: `NotFound`.
        QueuePop = 0x41,
        /// As `QueuePop` without removing.
        QueuePeek = 0x42,
        /// `Key`, `Count`. Reply: `Count` removed.
        QueueRemove = 0x43,
        /// `Key`. Reply: `Count`.
        QueueLen = 0x44,
        /// `Key`, `Width`, `New`, opt `Expire`. Reply: `Count` = value.
        CounterInit = 0x50,
        /// `Key`, `Width`. Reply: `Count`.
        CounterGet = 0x51,
        /// `Key`, `Width`, `Old`, `New`. Reply: `Count` = new value; `NotSameValue` on mismatch.
        CounterCas = 0x52,
        /// `Key`, `Width`, `Delta` (i64, wrapping at the width). Reply: `Count` = new value.
        CounterAdd = 0x53,
        /// opt `Prefix`, `After`, `Limit` (default 1000). Reply: `Key`*, opt `Next`.
        Scan = 0x60,
        /// Remove every key. Reply: `Count` removed.
        FlushAll = 0x70,
        /// Cluster control between nodes and from tools: `Message` = a JSON request with a
        /// `method`, authenticated by the cluster secret. Reply: `Message` = JSON.
        Cluster = 0x80,
        /// Replication between nodes: `Value` = a batch of storage changes (format-versioned),
        /// `Count` = the sender's feed position after the batch. Reply: `Count` = applied.
        Replicate = 0x81,
        /// A memcached request forwarded to the node that owns its key: `Value` = the request
        /// bytes (one text or meta request with its data block, or one binary packet).
        /// Reply: `Value` = the reply bytes, exactly as the owner answered. Opt `Mode` (the
        /// request's protocol), `Count` (its partition), `Deadline` (not run after it: the
        /// reply is then `Unavailable`).
        Forward = 0x82,
        /// A quorum read's version check between nodes: `Value` = the keys and the sender's
        /// versions of them (format-versioned; see the node's `cluster::repair`). Reply:
        /// `Value` = this node's versions of those keys, then opt `Value` = a replication
        /// batch of this node's records that are newer than the sender's.
        Check = 0x83,
        /// A plain set sent by a gateway to every owner of the key at once, with the version
        /// the gateway chose: `Key`, `Value`, `Flags`, `Expire`, `Version`, `Count` (the
        /// partition), `Level` (1: the receiver is the key's primary; 2: a replica), `To` (a
        /// replica's: the primary's native address), opt `Deadline`. The primary writes it
        /// only if the version is newer than its record and it leads the partition; a
        /// replica writes it by last-writer-wins. Reply: empty; `Exists` with `Version` when
        /// the record is not older, `NotStored` when the record needs more than the request
        /// (sub-keys, history, encryption), `Unavailable` when the receiver does not lead.
        Put = 0x84,
    }
}

code_enum! {
    /// Result codes.
    Status {
        /// Done.
        Ok = 0,
        /// No such key, item, queue entry or child.
        NotFound = 1,
        /// The cas unique did not match.
        Exists = 2,
        /// A presence condition (add, replace, append, prepend) failed.
        NotStored = 3,
        /// A counter compare-and-set saw another value.
        NotSameValue = 4,
        /// The key holds another kind of data (a queue, a counter...).
        NotSameType = 5,
        /// Decimal incr/decr on a value that is not a number.
        NotNumeric = 6,
        /// A key, value or frame is over its limit.
        TooLarge = 7,
        /// The value is encrypted and the pass phrase is wrong or missing.
        BadPassPhrase = 8,
        /// An argument is out of range.
        InvalidArgument = 9,
        /// The frame or a field is malformed, or the op is unknown.
        BadRequest = 10,
        /// The frame's protocol version is not spoken here.
        UnsupportedVersion = 11,
        /// The server is shutting down or cannot reach enough replicas; retry elsewhere.
        Unavailable = 12,
        /// An internal failure (I/O, corrupt data).
        ServerError = 13,
        /// This host may not connect (not listed in the cluster's `SVRNODE` or `SLVNODE`).
        Refused = 14,
    }
}

code_enum! {
    /// Field tags.
    Tag {
        /// Bytes: the key (repeated in `Scan` replies).
        Key = 1,
        /// Bytes: a value (repeated in `History` replies).
        Value = 2,
        /// Bytes: pass phrase.
        Pass = 3,
        /// u32: client flags.
        Flags = 4,
        /// u8 kind + u32: 0 default, 1 keep, 2 never, 3 at unix seconds, 4 after seconds.
        /// In replies: kind 3 with the absolute time, or 2 for never.
        Expire = 5,
        /// u64: cas unique.
        Cas = 6,
        /// u8: 0 set, 1 add, 2 replace, 3 append, 4 prepend.
        Mode = 7,
        /// u8 bool: force encryption on (1) or off (0).
        Encrypt = 8,
        /// u64: byte offset.
        Offset = 9,
        /// u64: byte length.
        Length = 10,
        /// u64 (`Incr`/`Decr`) or i64 (`CounterAdd`).
        Delta = 11,
        /// u8: counter width in bits (8, 16, 32, 64).
        Width = 12,
        /// u64: expected counter value.
        Old = 13,
        /// u64: new or initial counter value.
        New = 14,
        /// Bytes: a sub-key (repeatable).
        Child = 15,
        /// Bytes: the parent of a rename.
        Parent = 16,
        /// Bytes: the new name of a rename.
        To = 17,
        /// u8 bool: push at the back (1) or front (0).
        Fifo = 18,
        /// u64: a count or number.
        Count = 19,
        /// Bytes: scan prefix.
        Prefix = 20,
        /// Bytes: scan cursor (exclusive).
        After = 21,
        /// u32: maximum keys in a reply.
        Limit = 22,
        /// u8 bool: `Touch` also returns the value.
        WantValue = 23,
        /// u8 bool: `RemoveSubkey` also deletes the child.
        DeleteChild = 24,
        /// u8: consistency level for clusters (0 default, 1 one, 2 quorum, 3 all).
        Level = 25,
        /// Bytes: the key of a key-queue item.
        ItemKey = 26,
        /// u64: unix milliseconds, by the receiver's clock, after which a forwarded request
        /// must not run (its sender has stopped waiting and reported a failure).
        Deadline = 27,
        /// UTF-8: error text, version text or JSON.
        Message = 40,
        /// u64 HLC timestamp + u32 origin node.
        Version = 41,
        /// UTF-8: kind name.
        Kind = 42,
        /// u32: creation time, unix seconds.
        Created = 43,
        /// u64: last modification, unix milliseconds.
        Modified = 44,
        /// u8 bool: stored encrypted.
        Encrypted = 45,
        /// u64: stored length.
        StoredLen = 46,
        /// u64: number of sub-keys.
        SubkeyCount = 47,
        /// u64: number of history entries.
        HistoryCount = 48,
        /// Bytes: the cursor of the next scan page.
        Next = 49,
    }
}

impl Tag {
    /// The fixed width of an integer field, or `None` for byte strings.
    pub fn width(self) -> Option<usize> {
        use Tag::*;
        match self {
            Flags | Created | Limit => Some(4),
            Expire => Some(5),
            Cas | Offset | Length | Delta | Old | New | Count | Deadline | Modified | StoredLen
            | SubkeyCount | HistoryCount => Some(8),
            Version => Some(12),
            Mode | Encrypt | Width | Fifo | WantValue | DeleteChild | Level | Encrypted => Some(1),
            Key | Value | Pass | Child | Parent | To | Prefix | After | ItemKey | Message
            | Kind | Next => None,
        }
    }

    /// Whether the field may appear more than once in one frame.
    pub fn repeatable(self) -> bool {
        matches!(self, Tag::Key | Tag::Value | Tag::Child | Tag::Version)
    }
}

/// An expiry as carried by [`Tag::Expire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Expiry {
    /// The server's default TTL.
    #[default]
    Default,
    /// Keep the current expiry.
    Keep,
    /// Never expires.
    Never,
    /// At this unix time (seconds).
    At(u32),
    /// This many seconds from now.
    After(u32),
}

impl Expiry {
    fn encode(self) -> [u8; 5] {
        let (k, v) = match self {
            Expiry::Default => (0u8, 0u32),
            Expiry::Keep => (1, 0),
            Expiry::Never => (2, 0),
            Expiry::At(t) => (3, t),
            Expiry::After(s) => (4, s),
        };
        let mut b = [0u8; 5];
        b[0] = k;
        b[1..].copy_from_slice(&v.to_be_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Expiry> {
        let v = u32::from_be_bytes(b.get(1..5)?.try_into().ok()?);
        Some(match b[0] {
            0 => Expiry::Default,
            1 => Expiry::Keep,
            2 => Expiry::Never,
            3 => Expiry::At(v),
            4 => Expiry::After(v),
            _ => return None,
        })
    }
}

/// A frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// [`MAGIC_REQUEST`] or [`MAGIC_RESPONSE`].
    pub magic: u8,
    /// Protocol version.
    pub version: u8,
    /// Op (requests) or status (responses), raw.
    pub code: u8,
    /// Flags.
    pub flags: u8,
    /// Request id, echoed in the response.
    pub id: u32,
    /// Body length.
    pub body_len: u32,
}

impl Header {
    /// Parse the first [`HEADER_LEN`] bytes of `b` (`None` if shorter).
    pub fn parse(b: &[u8]) -> Option<Header> {
        let h = b.get(..HEADER_LEN)?;
        Some(Header {
            magic: h[0],
            version: h[1],
            code: h[2],
            flags: h[3],
            id: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
            body_len: u32::from_be_bytes([h[8], h[9], h[10], h[11]]),
        })
    }

    /// Append the header to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[self.magic, self.version, self.code, self.flags]);
        out.extend_from_slice(&self.id.to_be_bytes());
        out.extend_from_slice(&self.body_len.to_be_bytes());
    }
}

/// What a buffer holds at its front.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameParse<'a> {
    /// Not a whole frame yet.
    Incomplete,
    /// A whole frame of `HEADER_LEN + body.len()` bytes.
    Frame {
        /// The header.
        header: Header,
        /// The body.
        body: &'a [u8],
    },
    /// The declared body is over `max_body`: answer `TooLarge` and skip `skip` bytes (the
    /// header is already counted in `consumed`).
    TooLarge {
        /// The header.
        header: Header,
        /// Bytes of the buffer to drop now (at most the whole frame).
        consumed: usize,
        /// Bytes still to drop as they arrive.
        skip: usize,
    },
    /// The stream is out of step (bad magic): close the connection.
    BadMagic(u8),
}

/// Look for one frame with `magic` at the front of `buf`.
pub fn parse_frame(buf: &[u8], magic: u8, max_body: usize) -> FrameParse<'_> {
    match buf.first() {
        None => return FrameParse::Incomplete,
        Some(&m) if m != magic => return FrameParse::BadMagic(m),
        _ => {}
    }
    let Some(header) = Header::parse(buf) else {
        return FrameParse::Incomplete;
    };
    let len = header.body_len as usize;
    if len > max_body {
        let total = HEADER_LEN + len;
        let consumed = total.min(buf.len());
        return FrameParse::TooLarge {
            header,
            consumed,
            skip: total - consumed,
        };
    }
    match buf.get(HEADER_LEN..HEADER_LEN + len) {
        Some(body) => FrameParse::Frame { header, body },
        None => FrameParse::Incomplete,
    }
}

/// A malformed body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError(pub String);

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FieldError {}

fn ferr(s: impl Into<String>) -> FieldError {
    FieldError(s.into())
}

/// Iterate over the fields of a body, checking tags and widths.
pub fn fields(body: &[u8]) -> impl Iterator<Item = Result<(Tag, &[u8]), FieldError>> {
    let mut rest = body;
    let mut failed = false;
    std::iter::from_fn(move || {
        if rest.is_empty() || failed {
            return None;
        }
        let r = (|| {
            if rest.len() < 5 {
                return Err(ferr("truncated field header"));
            }
            let raw = rest[0];
            let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            let tag = Tag::from_u8(raw).ok_or_else(|| ferr(format!("unknown field tag {raw}")))?;
            let v = rest
                .get(5..5 + len)
                .ok_or_else(|| ferr(format!("field {tag} runs past the end of the frame")))?;
            if let Some(w) = tag.width()
                && w != len
            {
                return Err(ferr(format!("field {tag} must be {w} bytes, not {len}")));
            }
            rest = &rest[5 + len..];
            Ok((tag, v))
        })();
        failed = r.is_err();
        Some(r)
    })
}

/// Append a byte-string field.
pub fn put(out: &mut Vec<u8>, tag: Tag, v: &[u8]) {
    out.push(tag as u8);
    out.extend_from_slice(&(v.len() as u32).to_be_bytes());
    out.extend_from_slice(v);
}

/// Append a u8 field.
pub fn put_u8(out: &mut Vec<u8>, tag: Tag, v: u8) {
    put(out, tag, &[v]);
}

/// Append a u32 field.
pub fn put_u32(out: &mut Vec<u8>, tag: Tag, v: u32) {
    put(out, tag, &v.to_be_bytes());
}

/// Append a u64 field.
pub fn put_u64(out: &mut Vec<u8>, tag: Tag, v: u64) {
    put(out, tag, &v.to_be_bytes());
}

/// Append an expiry field.
pub fn put_expire(out: &mut Vec<u8>, e: Expiry) {
    put(out, Tag::Expire, &e.encode());
}

/// Append a version field.
pub fn put_version(out: &mut Vec<u8>, ts: u64, node: u32) {
    let mut b = [0u8; 12];
    b[..8].copy_from_slice(&ts.to_be_bytes());
    b[8..].copy_from_slice(&node.to_be_bytes());
    put(out, Tag::Version, &b);
}

fn be_u64(v: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&v[..8]);
    u64::from_be_bytes(b)
}

fn be_u32(v: &[u8]) -> u32 {
    u32::from_be_bytes([v[0], v[1], v[2], v[3]])
}

fn be_bool(tag: Tag, v: &[u8]) -> Result<bool, FieldError> {
    match v[0] {
        0 => Ok(false),
        1 => Ok(true),
        b => Err(ferr(format!("field {tag} must be 0 or 1, not {b}"))),
    }
}

/// The fields of a request, decoded. Which are required depends on the op.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Args<'a> {
    /// `Key`.
    pub key: Option<&'a [u8]>,
    /// `Value`.
    pub value: Option<&'a [u8]>,
    /// `Pass`.
    pub pass: Option<&'a [u8]>,
    /// `Flags`.
    pub flags: Option<u32>,
    /// `Expire`.
    pub expire: Option<Expiry>,
    /// `Cas`.
    pub cas: Option<u64>,
    /// `Mode` (0..=4).
    pub mode: Option<u8>,
    /// `Encrypt`.
    pub encrypt: Option<bool>,
    /// `Offset`.
    pub offset: Option<u64>,
    /// `Length`.
    pub length: Option<u64>,
    /// `Delta`, raw (u64; `CounterAdd` reads it as i64).
    pub delta: Option<u64>,
    /// `Width`.
    pub width: Option<u8>,
    /// `Old`.
    pub old: Option<u64>,
    /// `New`.
    pub new: Option<u64>,
    /// `Child`*.
    pub children: Vec<&'a [u8]>,
    /// `Parent`.
    pub parent: Option<&'a [u8]>,
    /// `To`.
    pub to: Option<&'a [u8]>,
    /// `Fifo`.
    pub fifo: Option<bool>,
    /// `Count`.
    pub count: Option<u64>,
    /// `Prefix`.
    pub prefix: Option<&'a [u8]>,
    /// `After`.
    pub after: Option<&'a [u8]>,
    /// `Limit`.
    pub limit: Option<u32>,
    /// `WantValue`.
    pub want_value: Option<bool>,
    /// `DeleteChild`.
    pub delete_child: Option<bool>,
    /// `Level`.
    pub level: Option<u8>,
    /// `ItemKey`.
    pub item_key: Option<&'a [u8]>,
    /// `Message` (cluster control JSON).
    pub message: Option<&'a [u8]>,
    /// `Deadline`.
    pub deadline: Option<u64>,
    /// `Version` (HLC timestamp, origin node).
    pub version: Option<(u64, u32)>,
}

fn once<T>(slot: &mut Option<T>, tag: Tag, v: T) -> Result<(), FieldError> {
    if slot.is_some() {
        return Err(ferr(format!("field {tag} given twice")));
    }
    *slot = Some(v);
    Ok(())
}

impl<'a> Args<'a> {
    /// Decode a request body.
    pub fn decode(body: &'a [u8]) -> Result<Args<'a>, FieldError> {
        let mut a = Args::default();
        for f in fields(body) {
            let (tag, v) = f?;
            match tag {
                Tag::Key => once(&mut a.key, tag, v)?,
                Tag::Value => once(&mut a.value, tag, v)?,
                Tag::Pass => once(&mut a.pass, tag, v)?,
                Tag::Flags => once(&mut a.flags, tag, be_u32(v))?,
                Tag::Expire => once(
                    &mut a.expire,
                    tag,
                    Expiry::decode(v).ok_or_else(|| ferr("unknown expiry kind"))?,
                )?,
                Tag::Cas => once(&mut a.cas, tag, be_u64(v))?,
                Tag::Mode => {
                    if v[0] > 4 {
                        return Err(ferr(format!("unknown set mode {}", v[0])));
                    }
                    once(&mut a.mode, tag, v[0])?
                }
                Tag::Encrypt => once(&mut a.encrypt, tag, be_bool(tag, v)?)?,
                Tag::Offset => once(&mut a.offset, tag, be_u64(v))?,
                Tag::Length => once(&mut a.length, tag, be_u64(v))?,
                Tag::Delta => once(&mut a.delta, tag, be_u64(v))?,
                Tag::Width => once(&mut a.width, tag, v[0])?,
                Tag::Old => once(&mut a.old, tag, be_u64(v))?,
                Tag::New => once(&mut a.new, tag, be_u64(v))?,
                Tag::Child => a.children.push(v),
                Tag::Parent => once(&mut a.parent, tag, v)?,
                Tag::To => once(&mut a.to, tag, v)?,
                Tag::Fifo => once(&mut a.fifo, tag, be_bool(tag, v)?)?,
                Tag::Count => once(&mut a.count, tag, be_u64(v))?,
                Tag::Prefix => once(&mut a.prefix, tag, v)?,
                Tag::After => once(&mut a.after, tag, v)?,
                Tag::Limit => once(&mut a.limit, tag, be_u32(v))?,
                Tag::WantValue => once(&mut a.want_value, tag, be_bool(tag, v)?)?,
                Tag::DeleteChild => once(&mut a.delete_child, tag, be_bool(tag, v)?)?,
                Tag::Level => {
                    if v[0] > 3 {
                        return Err(ferr(format!("unknown consistency level {}", v[0])));
                    }
                    once(&mut a.level, tag, v[0])?
                }
                Tag::ItemKey => once(&mut a.item_key, tag, v)?,
                Tag::Message => once(&mut a.message, tag, v)?,
                Tag::Deadline => once(&mut a.deadline, tag, be_u64(v))?,
                Tag::Version => once(&mut a.version, tag, (be_u64(&v[..8]), be_u32(&v[8..12])))?,
                other => return Err(ferr(format!("field {other} is not allowed in a request"))),
            }
        }
        Ok(a)
    }

    /// Encode these fields as a request body.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let b = |out: &mut Vec<u8>, t: Tag, v: Option<&[u8]>| {
            if let Some(v) = v {
                put(out, t, v)
            }
        };
        b(out, Tag::Key, self.key);
        b(out, Tag::Value, self.value);
        b(out, Tag::Pass, self.pass);
        if let Some(v) = self.flags {
            put_u32(out, Tag::Flags, v)
        }
        if let Some(e) = self.expire {
            put_expire(out, e)
        }
        let u64s = [
            (Tag::Cas, self.cas),
            (Tag::Offset, self.offset),
            (Tag::Length, self.length),
            (Tag::Delta, self.delta),
            (Tag::Old, self.old),
            (Tag::New, self.new),
            (Tag::Count, self.count),
            (Tag::Deadline, self.deadline),
        ];
        for (t, v) in u64s {
            if let Some(v) = v {
                put_u64(out, t, v)
            }
        }
        let u8s = [
            (Tag::Mode, self.mode),
            (Tag::Encrypt, self.encrypt.map(u8::from)),
            (Tag::Width, self.width),
            (Tag::Fifo, self.fifo.map(u8::from)),
            (Tag::WantValue, self.want_value.map(u8::from)),
            (Tag::DeleteChild, self.delete_child.map(u8::from)),
            (Tag::Level, self.level),
        ];
        for (t, v) in u8s {
            if let Some(v) = v {
                put_u8(out, t, v)
            }
        }
        for c in &self.children {
            put(out, Tag::Child, c);
        }
        b(out, Tag::Parent, self.parent);
        b(out, Tag::To, self.to);
        b(out, Tag::Prefix, self.prefix);
        b(out, Tag::After, self.after);
        if let Some(v) = self.limit {
            put_u32(out, Tag::Limit, v)
        }
        b(out, Tag::ItemKey, self.item_key);
        b(out, Tag::Message, self.message);
        if let Some((ts, node)) = self.version {
            put_version(out, ts, node);
        }
    }
}

/// Append a whole request frame.
pub fn write_request(out: &mut Vec<u8>, op: Op, flags: u8, id: u32, args: &Args<'_>) {
    let start = out.len();
    Header {
        magic: MAGIC_REQUEST,
        version: VERSION,
        code: op as u8,
        flags,
        id,
        body_len: 0,
    }
    .write(out);
    args.encode(out);
    patch_len(out, start);
}

/// Start a response frame; fill the body with `put*`, then call [`finish_response`].
pub fn begin_response(out: &mut Vec<u8>, status: Status, id: u32) -> usize {
    let start = out.len();
    Header {
        magic: MAGIC_RESPONSE,
        version: VERSION,
        code: status as u8,
        flags: 0,
        id,
        body_len: 0,
    }
    .write(out);
    start
}

/// Set the body length of the frame begun at `start`.
pub fn finish_response(out: &mut [u8], start: usize) {
    patch_len(out, start);
}

fn patch_len(out: &mut [u8], start: usize) {
    let len = (out.len() - start - HEADER_LEN) as u32;
    out[start + 8..start + 12].copy_from_slice(&len.to_be_bytes());
}

/// Append an error response with a message.
pub fn write_error(out: &mut Vec<u8>, status: Status, id: u32, message: &str) {
    let s = begin_response(out, status, id);
    put(out, Tag::Message, message.as_bytes());
    finish_response(out, s);
}

/// A decoded response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reply {
    /// Raw status (see [`Status::from_u8`]).
    pub status: u8,
    /// Request id.
    pub id: u32,
    /// `Key`* (scan pages) .
    pub keys: Vec<Vec<u8>>,
    /// `Value`* (one for reads, several for history).
    pub values: Vec<Vec<u8>>,
    /// `Version`* as (HLC timestamp, node).
    pub versions: Vec<(u64, u32)>,
    /// `Child`*.
    pub children: Vec<Vec<u8>>,
    /// `Flags`.
    pub flags: Option<u32>,
    /// `Cas`.
    pub cas: Option<u64>,
    /// `Expire`.
    pub expire: Option<Expiry>,
    /// `Count`.
    pub count: Option<u64>,
    /// `Message`.
    pub message: Option<String>,
    /// `Kind`.
    pub kind: Option<String>,
    /// `Created`.
    pub created: Option<u32>,
    /// `Modified`.
    pub modified: Option<u64>,
    /// `Encrypted`.
    pub encrypted: Option<bool>,
    /// `StoredLen`.
    pub stored_len: Option<u64>,
    /// `SubkeyCount`.
    pub subkey_count: Option<u64>,
    /// `HistoryCount`.
    pub history_count: Option<u64>,
    /// `Next`.
    pub next: Option<Vec<u8>>,
    /// `ItemKey`.
    pub item_key: Option<Vec<u8>>,
}

impl Reply {
    /// The status, if known.
    pub fn status(&self) -> Option<Status> {
        Status::from_u8(self.status)
    }

    /// Decode a response frame's body.
    pub fn decode(header: &Header, body: &[u8]) -> Result<Reply, FieldError> {
        let mut r = Reply {
            status: header.code,
            id: header.id,
            ..Default::default()
        };
        for f in fields(body) {
            let (tag, v) = f?;
            match tag {
                Tag::Key => r.keys.push(v.to_vec()),
                Tag::Value => r.values.push(v.to_vec()),
                Tag::Version => r.versions.push((be_u64(v), be_u32(&v[8..]))),
                Tag::Child => r.children.push(v.to_vec()),
                Tag::Flags => once(&mut r.flags, tag, be_u32(v))?,
                Tag::Cas => once(&mut r.cas, tag, be_u64(v))?,
                Tag::Expire => once(
                    &mut r.expire,
                    tag,
                    Expiry::decode(v).ok_or_else(|| ferr("unknown expiry kind"))?,
                )?,
                Tag::Count => once(&mut r.count, tag, be_u64(v))?,
                Tag::Message => once(&mut r.message, tag, String::from_utf8_lossy(v).into_owned())?,
                Tag::Kind => once(&mut r.kind, tag, String::from_utf8_lossy(v).into_owned())?,
                Tag::Created => once(&mut r.created, tag, be_u32(v))?,
                Tag::Modified => once(&mut r.modified, tag, be_u64(v))?,
                Tag::Encrypted => once(&mut r.encrypted, tag, be_bool(tag, v)?)?,
                Tag::StoredLen => once(&mut r.stored_len, tag, be_u64(v))?,
                Tag::SubkeyCount => once(&mut r.subkey_count, tag, be_u64(v))?,
                Tag::HistoryCount => once(&mut r.history_count, tag, be_u64(v))?,
                Tag::Next => once(&mut r.next, tag, v.to_vec())?,
                Tag::ItemKey => once(&mut r.item_key, tag, v.to_vec())?,
                other => return Err(ferr(format!("field {other} is not allowed in a reply"))),
            }
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip() {
        let args = Args {
            key: Some(b"k"),
            value: Some(b"value"),
            pass: Some(b"pw"),
            flags: Some(7),
            expire: Some(Expiry::After(30)),
            cas: Some(99),
            mode: Some(3),
            encrypt: Some(true),
            children: vec![b"a", b"b"],
            delta: Some(u64::MAX),
            width: Some(16),
            limit: Some(5),
            level: Some(2),
            item_key: Some(b"ik"),
            ..Default::default()
        };
        let mut out = Vec::new();
        write_request(&mut out, Op::Set, 0, 42, &args);
        write_request(&mut out, Op::Noop, FLAG_QUIET, 43, &Args::default());
        let FrameParse::Frame { header, body } = parse_frame(&out, MAGIC_REQUEST, 1 << 20) else {
            panic!("no frame");
        };
        assert_eq!(header.id, 42);
        assert_eq!(Op::from_u8(header.code), Some(Op::Set));
        assert_eq!(Args::decode(body).unwrap(), args);
        let rest = &out[HEADER_LEN + body.len()..];
        let FrameParse::Frame { header, body } = parse_frame(rest, MAGIC_REQUEST, 1 << 20) else {
            panic!("no second frame");
        };
        assert_eq!((header.id, header.flags, body.len()), (43, FLAG_QUIET, 0));
    }

    #[test]
    fn incomplete_too_large_and_bad_magic() {
        let mut out = Vec::new();
        write_request(
            &mut out,
            Op::Get,
            0,
            1,
            &Args {
                key: Some(b"abc"),
                ..Default::default()
            },
        );
        for cut in 0..out.len() {
            assert_eq!(
                parse_frame(&out[..cut], MAGIC_REQUEST, 100),
                FrameParse::Incomplete
            );
        }
        match parse_frame(&out, MAGIC_REQUEST, 3) {
            FrameParse::TooLarge { consumed, skip, .. } => {
                assert_eq!((consumed, skip), (out.len(), 0))
            }
            other => panic!("{other:?}"),
        }
        match parse_frame(&out[..HEADER_LEN], MAGIC_REQUEST, 3) {
            FrameParse::TooLarge { consumed, skip, .. } => {
                assert_eq!((consumed, skip), (HEADER_LEN, out.len() - HEADER_LEN))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse_frame(b"get x\r\n", MAGIC_REQUEST, 100),
            FrameParse::BadMagic(b'g')
        );
    }

    #[test]
    fn bad_fields_are_refused() {
        let mut body = Vec::new();
        put_u8(&mut body, Tag::Flags, 1);
        assert!(
            Args::decode(&body)
                .unwrap_err()
                .0
                .contains("must be 4 bytes")
        );
        let mut body = Vec::new();
        put(&mut body, Tag::Key, b"a");
        put(&mut body, Tag::Key, b"b");
        assert!(Args::decode(&body).unwrap_err().0.contains("twice"));
        assert!(
            Args::decode(&[200, 0, 0, 0, 0])
                .unwrap_err()
                .0
                .contains("unknown field")
        );
        assert!(
            Args::decode(&[1, 0, 0, 0, 9, 1])
                .unwrap_err()
                .0
                .contains("past the end")
        );
        assert!(Args::decode(&[1, 0]).unwrap_err().0.contains("truncated"));
        let mut body = Vec::new();
        put(&mut body, Tag::Kind, b"x");
        assert!(Args::decode(&body).unwrap_err().0.contains("not allowed"));
        let mut body = Vec::new();
        put_u8(&mut body, Tag::Fifo, 2);
        assert!(Args::decode(&body).is_err());
    }

    #[test]
    fn reply_round_trip() {
        let mut out = Vec::new();
        let s = begin_response(&mut out, Status::Ok, 9);
        put(&mut out, Tag::Value, b"v1");
        put_version(&mut out, 1 << 20, 3);
        put(&mut out, Tag::Value, b"v2");
        put_expire(&mut out, Expiry::Never);
        put_u64(&mut out, Tag::Cas, 5);
        finish_response(&mut out, s);
        let FrameParse::Frame { header, body } = parse_frame(&out, MAGIC_RESPONSE, 1 << 20) else {
            panic!()
        };
        let r = Reply::decode(&header, body).unwrap();
        assert_eq!(r.status(), Some(Status::Ok));
        assert_eq!(r.values, vec![b"v1".to_vec(), b"v2".to_vec()]);
        assert_eq!(r.versions, vec![(1 << 20, 3)]);
        assert_eq!((r.cas, r.expire, r.id), (Some(5), Some(Expiry::Never), 9));
    }

    #[test]
    fn codes_round_trip() {
        for op in Op::ALL {
            assert_eq!(Op::from_u8(*op as u8), Some(*op));
        }
        for s in Status::ALL {
            assert_eq!(Status::from_u8(*s as u8), Some(*s));
        }
        for t in Tag::ALL {
            assert_eq!(Tag::from_u8(*t as u8), Some(*t));
        }
    }
}
