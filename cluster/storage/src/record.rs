//! The record: one key with its value and attributes, packed into a single heap allocation.
//!
//! Layout of a record blob (little endian), identical in memory, in the log, in snapshots and in
//! archives (those files carry the format version in their headers):
//!
//! ```text
//! 0      kind u8         Value | Tombstone | Counter8/16/32/64
//! 1      bits u8         HAS_EXT | ENCRYPTED
//! 2..4   key_len u16
//! 4..8   flags u32       memcached client flags
//! 8..16  version.ts u64  HLC timestamp (also the memcached cas unique)
//! 16..20 version.node u32
//! 20..24 expire u32      unix seconds, 0 = never; for a tombstone: when it may be purged
//! 24..28 created u32     unix seconds of the first write of this key
//! 28..   key, then if HAS_EXT: ext_len u32 + ext, then the value to the end
//! ```
//!
//! One allocation per record keeps the per-item overhead near 28 bytes of header plus the table
//! slot, which is what lets the memory engine stay within its per-item memory budget.

use crate::clock::Version;
use crate::error::{Error, Result};

/// Bytes before the key.
pub const HEADER_LEN: usize = 28;
/// Largest key.
pub const MAX_KEY_LEN: usize = u16::MAX as usize;

const HAS_EXT: u8 = 1;
const ENCRYPTED: u8 = 2;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// An ordinary value.
    Value = 0,
    /// A deleted or expired key, kept until its grace time so deletes can be merged.
    Tombstone = 1,
    /// An 8-bit CAS counter.
    Counter8 = 2,
    /// A 16-bit CAS counter.
    Counter16 = 3,
    /// A 32-bit CAS counter.
    Counter32 = 4,
    /// A 64-bit CAS counter.
    Counter64 = 5,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            0 => Kind::Value,
            1 => Kind::Tombstone,
            2 => Kind::Counter8,
            3 => Kind::Counter16,
            4 => Kind::Counter32,
            5 => Kind::Counter64,
            _ => return None,
        })
    }

    /// A human name, used in type-mismatch errors.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Value => "value",
            Kind::Tombstone => "tombstone",
            Kind::Counter8 => "8-bit counter",
            Kind::Counter16 => "16-bit counter",
            Kind::Counter32 => "32-bit counter",
            Kind::Counter64 => "64-bit counter",
        }
    }

    /// The counter kind of a width in bits.
    pub fn counter(width: u8) -> Result<Kind> {
        Ok(match width {
            8 => Kind::Counter8,
            16 => Kind::Counter16,
            32 => Kind::Counter32,
            64 => Kind::Counter64,
            w => {
                return Err(Error::InvalidArgument(format!(
                    "counter width {w} is not 8/16/32/64"
                )));
            }
        })
    }

    /// Width in bytes of a counter kind.
    pub fn counter_bytes(self) -> Option<usize> {
        match self {
            Kind::Counter8 => Some(1),
            Kind::Counter16 => Some(2),
            Kind::Counter32 => Some(4),
            Kind::Counter64 => Some(8),
            _ => None,
        }
    }
}

/// Attributes of a record apart from key, value and extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// What the record holds.
    pub kind: Kind,
    /// The value is an encryption envelope.
    pub encrypted: bool,
    /// memcached client flags.
    pub flags: u32,
    /// Version of the last change.
    pub version: Version,
    /// Expiry (unix seconds, 0 = never).
    pub expire: u32,
    /// Creation time (unix seconds).
    pub created: u32,
}

/// One previous version kept in a record's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// Version of that value.
    pub version: Version,
    /// Its flags.
    pub flags: u32,
    /// Whether the value is an encryption envelope.
    pub encrypted: bool,
    /// The value as stored.
    pub value: Box<[u8]>,
}

/// The optional part of a record: its sub-key list and its history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ext {
    /// Ordered child keys.
    pub subkeys: Vec<Box<[u8]>>,
    /// Previous versions, newest first.
    pub history: Vec<HistoryEntry>,
}

impl Ext {
    /// Whether there is nothing to store.
    pub fn is_empty(&self) -> bool {
        self.subkeys.is_empty() && self.history.is_empty()
    }

    fn encoded_len(&self) -> usize {
        8 + self.subkeys.iter().map(|k| 2 + k.len()).sum::<usize>()
            + self
                .history
                .iter()
                .map(|h| 8 + 4 + 4 + 1 + 4 + h.value.len())
                .sum::<usize>()
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.subkeys.len() as u32).to_le_bytes());
        for k in &self.subkeys {
            out.extend_from_slice(&(k.len() as u16).to_le_bytes());
            out.extend_from_slice(k);
        }
        out.extend_from_slice(&(self.history.len() as u32).to_le_bytes());
        for h in &self.history {
            out.extend_from_slice(&h.version.ts.to_le_bytes());
            out.extend_from_slice(&h.version.node.to_le_bytes());
            out.extend_from_slice(&h.flags.to_le_bytes());
            out.push(h.encrypted as u8);
            out.extend_from_slice(&(h.value.len() as u32).to_le_bytes());
            out.extend_from_slice(&h.value);
        }
    }

    fn decode(mut b: &[u8]) -> Result<Ext> {
        let mut r = Reader(&mut b);
        let n = r.u32()? as usize;
        let mut subkeys = Vec::with_capacity(n.min(4096));
        for _ in 0..n {
            let len = r.u16()? as usize;
            subkeys.push(r.bytes(len)?.into());
        }
        let n = r.u32()? as usize;
        let mut history = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            let ts = r.u64()?;
            let node = r.u32()?;
            let flags = r.u32()?;
            let encrypted = r.u8()? != 0;
            let len = r.u32()? as usize;
            let value = r.bytes(len)?.into();
            history.push(HistoryEntry {
                version: Version { ts, node },
                flags,
                encrypted,
                value,
            });
        }
        Ok(Ext { subkeys, history })
    }
}

/// A small bounds-checked little-endian reader over a byte slice.
pub(crate) struct Reader<'a, 'b>(pub &'a mut &'b [u8]);

impl<'b> Reader<'_, 'b> {
    pub fn bytes(&mut self, n: usize) -> Result<&'b [u8]> {
        if self.0.len() < n {
            return Err(Error::Corrupt(format!(
                "need {n} bytes, have {}",
                self.0.len()
            )));
        }
        let (a, b) = self.0.split_at(n);
        *self.0 = b;
        Ok(a)
    }
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.bytes(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(
            self.bytes(2)?.try_into().expect("2 bytes"),
        ))
    }
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.bytes(4)?.try_into().expect("4 bytes"),
        ))
    }
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.bytes(8)?.try_into().expect("8 bytes"),
        ))
    }
    /// An unsigned LEB128 varint (at most 10 bytes).
    pub fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Error::Corrupt("varint longer than 10 bytes".into()))
    }
    /// A varint-length-prefixed byte string.
    pub fn vblob(&mut self) -> Result<&'b [u8]> {
        let n = usize::try_from(self.varint()?)
            .map_err(|_| Error::Corrupt("length does not fit".into()))?;
        self.bytes(n)
    }
    /// A u32-length-prefixed byte string.
    pub fn blob(&mut self) -> Result<&'b [u8]> {
        let n = self.u32()? as usize;
        self.bytes(n)
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// An owned record blob.
#[derive(Clone, PartialEq, Eq)]
pub struct Record(Box<[u8]>);

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = self.view();
        f.debug_struct("Record")
            .field("key", &String::from_utf8_lossy(r.key()))
            .field("meta", &r.meta())
            .field("value_len", &r.value().len())
            .finish()
    }
}

impl Record {
    /// Build a record. `key` must be at most [`MAX_KEY_LEN`] bytes (checked by the store).
    pub fn build(key: &[u8], value: &[u8], meta: &Meta, ext: Option<&Ext>) -> Record {
        debug_assert!(key.len() <= MAX_KEY_LEN);
        let ext = ext.filter(|e| !e.is_empty());
        let ext_len = ext.map(|e| 4 + e.encoded_len()).unwrap_or(0);
        let mut out = Vec::with_capacity(HEADER_LEN + key.len() + ext_len + value.len());
        out.push(meta.kind as u8);
        out.push(
            if ext.is_some() { HAS_EXT } else { 0 } | if meta.encrypted { ENCRYPTED } else { 0 },
        );
        out.extend_from_slice(&(key.len() as u16).to_le_bytes());
        out.extend_from_slice(&meta.flags.to_le_bytes());
        out.extend_from_slice(&meta.version.ts.to_le_bytes());
        out.extend_from_slice(&meta.version.node.to_le_bytes());
        out.extend_from_slice(&meta.expire.to_le_bytes());
        out.extend_from_slice(&meta.created.to_le_bytes());
        out.extend_from_slice(key);
        if let Some(e) = ext {
            out.extend_from_slice(&((ext_len - 4) as u32).to_le_bytes());
            e.encode(&mut out);
        }
        out.extend_from_slice(value);
        Record(out.into_boxed_slice())
    }

    /// Check and adopt a blob read from disk or the network.
    pub fn from_bytes(b: Box<[u8]>) -> Result<Record> {
        if b.len() < HEADER_LEN || Kind::from_u8(b[0]).is_none() {
            return Err(Error::Corrupt("record header".into()));
        }
        let key_len = u16::from_le_bytes([b[2], b[3]]) as usize;
        let mut end = HEADER_LEN + key_len;
        if b.len() < end {
            return Err(Error::Corrupt("record key".into()));
        }
        if b[1] & HAS_EXT != 0 {
            if b.len() < end + 4 {
                return Err(Error::Corrupt("record ext length".into()));
            }
            let n = u32::from_le_bytes(b[end..end + 4].try_into().expect("4")) as usize;
            end += 4;
            if b.len() < end + n {
                return Err(Error::Corrupt("record ext".into()));
            }
            Ext::decode(&b[end..end + n])?;
        }
        Ok(Record(b))
    }

    /// The record's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// A borrowed view.
    pub fn view(&self) -> RecordRef<'_> {
        RecordRef(&self.0)
    }

    /// Heap bytes held.
    pub fn heap_len(&self) -> usize {
        self.0.len()
    }
}

/// A borrowed record.
#[derive(Clone, Copy)]
pub struct RecordRef<'a>(&'a [u8]);

impl<'a> RecordRef<'a> {
    fn u32_at(&self, i: usize) -> u32 {
        u32::from_le_bytes(self.0[i..i + 4].try_into().expect("4"))
    }
    fn key_len(&self) -> usize {
        u16::from_le_bytes([self.0[2], self.0[3]]) as usize
    }
    fn ext_range(&self) -> Option<(usize, usize)> {
        if self.0[1] & HAS_EXT == 0 {
            return None;
        }
        let at = HEADER_LEN + self.key_len();
        let n = self.u32_at(at) as usize;
        Some((at + 4, at + 4 + n))
    }
    /// Kind of data.
    pub fn kind(&self) -> Kind {
        Kind::from_u8(self.0[0]).unwrap_or(Kind::Value)
    }
    /// Whether the value is an encryption envelope.
    pub fn encrypted(&self) -> bool {
        self.0[1] & ENCRYPTED != 0
    }
    /// The key.
    pub fn key(&self) -> &'a [u8] {
        &self.0[HEADER_LEN..HEADER_LEN + self.key_len()]
    }
    /// memcached flags.
    pub fn flags(&self) -> u32 {
        self.u32_at(4)
    }
    /// Version of the last change.
    pub fn version(&self) -> Version {
        Version {
            ts: u64::from_le_bytes(self.0[8..16].try_into().expect("8")),
            node: self.u32_at(16),
        }
    }
    /// Expiry, unix seconds, 0 = never.
    pub fn expire(&self) -> u32 {
        self.u32_at(20)
    }
    /// Creation time, unix seconds.
    pub fn created(&self) -> u32 {
        self.u32_at(24)
    }
    /// Whether the record is live at `now` (not a tombstone, not expired).
    pub fn is_live(&self, now: u32) -> bool {
        self.is_live_with(|| now)
    }

    /// Like [`RecordRef::is_live`], reading the clock only for records that can expire.
    pub fn is_live_with(&self, now: impl FnOnce() -> u32) -> bool {
        self.0[0] != Kind::Tombstone as u8 && {
            let e = self.expire();
            e == 0 || e > now()
        }
    }
    /// All attributes.
    pub fn meta(&self) -> Meta {
        Meta {
            kind: self.kind(),
            encrypted: self.encrypted(),
            flags: self.flags(),
            version: self.version(),
            expire: self.expire(),
            created: self.created(),
        }
    }
    /// The extension, decoded (empty when absent).
    pub fn ext(&self) -> Ext {
        match self.ext_range() {
            // The blob was validated when it entered the store.
            Some((a, b)) => Ext::decode(&self.0[a..b]).unwrap_or_default(),
            None => Ext::default(),
        }
    }
    /// Whether the record has sub-keys or history.
    pub fn has_ext(&self) -> bool {
        self.0[1] & HAS_EXT != 0
    }
    /// The stored value (an envelope when encrypted).
    pub fn value(&self) -> &'a [u8] {
        let start = match self.ext_range() {
            Some((_, b)) => b,
            None => HEADER_LEN + self.key_len(),
        };
        &self.0[start..]
    }
    /// Copy into an owned record.
    pub fn to_owned(&self) -> Record {
        Record(self.0.into())
    }
    /// Raw bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_ext() {
        let meta = Meta {
            kind: Kind::Value,
            encrypted: true,
            flags: 0xdead_beef,
            version: Version { ts: 99, node: 3 },
            expire: 1234,
            created: 55,
        };
        let ext = Ext {
            subkeys: vec![b"a".to_vec().into(), b"bb".to_vec().into()],
            history: vec![HistoryEntry {
                version: Version { ts: 1, node: 2 },
                flags: 4,
                encrypted: false,
                value: b"old".to_vec().into(),
            }],
        };
        let r = Record::build(b"key", b"value", &meta, Some(&ext));
        let r2 = Record::from_bytes(r.as_bytes().into()).unwrap();
        let v = r2.view();
        assert_eq!(v.key(), b"key");
        assert_eq!(v.value(), b"value");
        assert_eq!(v.meta(), meta);
        assert_eq!(v.ext(), ext);
        let plain = Record::build(b"k", b"", &meta, None);
        assert!(!plain.view().has_ext());
        assert_eq!(plain.view().value(), b"");
    }

    #[test]
    fn rejects_truncated_blobs() {
        let meta = Meta {
            kind: Kind::Value,
            encrypted: false,
            flags: 0,
            version: Version::ZERO,
            expire: 0,
            created: 0,
        };
        let ext = Ext {
            subkeys: vec![b"child".to_vec().into()],
            history: vec![],
        };
        let r = Record::build(b"key", b"v", &meta, Some(&ext));
        for cut in 0..r.as_bytes().len() - 1 {
            let b: Box<[u8]> = r.as_bytes()[..cut].into();
            // Either rejected, or (when the cut only shortens the value) still well formed.
            if let Ok(rec) = Record::from_bytes(b) {
                assert_eq!(rec.view().key(), b"key");
            }
        }
        assert!(Record::from_bytes(vec![9u8; 40].into()).is_err());
    }
}
