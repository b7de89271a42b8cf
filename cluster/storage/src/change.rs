//! Changes: the unit of durability, replication and the change feed.
//!
//! Every mutation of a store becomes one [`Change`]: a sequence number, a version, a logical kind
//! and the list of *state* operations it made (put this record, remove that key, put or delete
//! those queue items). Operations are states, not deltas, so applying a change twice, or on top
//! of a snapshot that already contains it, gives the same result: this is what makes log replay
//! over a fuzzy snapshot correct. A multi-key operation is one change, so it is replayed whole or
//! not at all.

use crate::clock::Version;
use crate::error::{Error, Result};
use crate::record::{Reader, Record};

/// What kind of operation made a change (used for filtering feeds and hooks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum ChangeKind {
    /// A value was written (set, add, replace, append, partial write, cas).
    Set = 1,
    /// A key was deleted.
    Delete = 2,
    /// A key expired and became a tombstone.
    Expire = 3,
    /// Tombstones or expired records were removed for good.
    Purge = 4,
    /// A key was renamed.
    Rename = 5,
    /// A sub-key list changed.
    SubKey = 6,
    /// Only attributes changed (touch).
    Attr = 7,
    /// A CAS counter changed.
    Counter = 8,
    /// Items were pushed to a queue.
    QueuePush = 9,
    /// Items were popped or removed from a queue.
    QueuePop = 10,
    /// Everything was flushed.
    Flush = 11,
    /// Records were loaded from an archive or a replica.
    Import = 12,
}

impl ChangeKind {
    /// All kinds.
    pub const ALL: [ChangeKind; 12] = [
        ChangeKind::Set,
        ChangeKind::Delete,
        ChangeKind::Expire,
        ChangeKind::Purge,
        ChangeKind::Rename,
        ChangeKind::SubKey,
        ChangeKind::Attr,
        ChangeKind::Counter,
        ChangeKind::QueuePush,
        ChangeKind::QueuePop,
        ChangeKind::Flush,
        ChangeKind::Import,
    ];

    fn from_u8(b: u8) -> Result<ChangeKind> {
        ChangeKind::ALL
            .into_iter()
            .find(|k| *k as u8 == b)
            .ok_or_else(|| Error::Corrupt(format!("change kind {b}")))
    }

    /// The snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            ChangeKind::Set => "set",
            ChangeKind::Delete => "delete",
            ChangeKind::Expire => "expire",
            ChangeKind::Purge => "purge",
            ChangeKind::Rename => "rename",
            ChangeKind::SubKey => "sub_key",
            ChangeKind::Attr => "attr",
            ChangeKind::Counter => "counter",
            ChangeKind::QueuePush => "queue_push",
            ChangeKind::QueuePop => "queue_pop",
            ChangeKind::Flush => "flush",
            ChangeKind::Import => "import",
        }
    }
}

impl std::str::FromStr for ChangeKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ChangeKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("unknown change kind {s:?}"))
    }
}

/// One item of a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueItem {
    /// The key of a key-queue item; `None` in a plain value queue.
    pub key: Option<Box<[u8]>>,
    /// The value (an envelope when encrypted).
    pub value: Box<[u8]>,
    /// Expiry, unix seconds, 0 = never.
    pub expire: u32,
    /// Whether `value` is an encryption envelope.
    pub encrypted: bool,
    /// When the item was pushed.
    pub version: Version,
}

/// One state operation of a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// The record (a value or a tombstone) is now this.
    Put(Record),
    /// The key no longer exists at all (not even as a tombstone).
    Remove(Box<[u8]>),
    /// Queue `queue` holds `item` at position `id`.
    QueuePut {
        /// Queue name.
        queue: Box<[u8]>,
        /// Position; items are ordered by id.
        id: u64,
        /// The item.
        item: QueueItem,
    },
    /// Queue `queue` no longer holds the items at these ids.
    QueueDel {
        /// Queue name.
        queue: Box<[u8]>,
        /// Positions removed.
        ids: Vec<u64>,
    },
}

impl Op {
    /// The key or queue name this op touches.
    pub fn key(&self) -> &[u8] {
        match self {
            Op::Put(r) => r.view().key(),
            Op::Remove(k) => k,
            Op::QueuePut { queue, .. } | Op::QueueDel { queue, .. } => queue,
        }
    }
}

/// One atomic mutation of a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Position in this store's change sequence (starts at 1).
    pub seq: u64,
    /// Version stamped on the change.
    pub version: Version,
    /// What kind of operation it was.
    pub kind: ChangeKind,
    /// The state operations, applied together.
    pub ops: Vec<Op>,
}

const TAG_CHANGE: u8 = 1;
const OP_PUT: u8 = 1;
const OP_REMOVE: u8 = 2;
const OP_QPUT: u8 = 3;
const OP_QDEL: u8 = 4;

fn put_blob(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// Append one op in the fixed-width form.
fn encode_op(op: &Op, out: &mut Vec<u8>) {
    match op {
        Op::Put(r) => {
            out.push(OP_PUT);
            put_blob(out, r.as_bytes());
        }
        Op::Remove(k) => {
            out.push(OP_REMOVE);
            put_blob(out, k);
        }
        Op::QueuePut { queue, id, item } => {
            out.push(OP_QPUT);
            put_blob(out, queue);
            out.extend_from_slice(&id.to_le_bytes());
            match &item.key {
                Some(k) => {
                    out.push(1);
                    put_blob(out, k);
                }
                None => out.push(0),
            }
            put_blob(out, &item.value);
            out.extend_from_slice(&item.expire.to_le_bytes());
            out.push(item.encrypted as u8);
            out.extend_from_slice(&item.version.ts.to_le_bytes());
            out.extend_from_slice(&item.version.node.to_le_bytes());
        }
        Op::QueueDel { queue, ids } => {
            out.push(OP_QDEL);
            put_blob(out, queue);
            out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
            for id in ids {
                out.extend_from_slice(&id.to_le_bytes());
            }
        }
    }
}

/// Decode one op in the fixed-width form, after its tag.
fn decode_op(tag: u8, r: &mut Reader<'_, '_>) -> Result<Op> {
    Ok(match tag {
        OP_PUT => Op::Put(Record::from_bytes(r.blob()?.into())?),
        OP_REMOVE => Op::Remove(r.blob()?.into()),
        OP_QPUT => {
            let queue = r.blob()?.into();
            let id = r.u64()?;
            let key = match r.u8()? {
                0 => None,
                _ => Some(r.blob()?.into()),
            };
            let value = r.blob()?.into();
            let expire = r.u32()?;
            let encrypted = r.u8()? != 0;
            let version = Version {
                ts: r.u64()?,
                node: r.u32()?,
            };
            Op::QueuePut {
                queue,
                id,
                item: QueueItem {
                    key,
                    value,
                    expire,
                    encrypted,
                    version,
                },
            }
        }
        OP_QDEL => {
            let queue = r.blob()?.into();
            let k = r.u32()? as usize;
            let mut ids = Vec::with_capacity(k.min(1 << 16));
            for _ in 0..k {
                ids.push(r.u64()?);
            }
            Op::QueueDel { queue, ids }
        }
        t => return Err(Error::Corrupt(format!("op type {t}"))),
    })
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(d: u64) -> u64 {
    let d = d as i64;
    ((d << 1) ^ (d >> 63)) as u64
}

fn unzigzag(z: u64) -> u64 {
    ((z >> 1) as i64 ^ -((z & 1) as i64)) as u64
}

impl Change {
    /// Append the binary encoding (the format version lives in the enclosing file header).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(TAG_CHANGE);
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.version.ts.to_le_bytes());
        out.extend_from_slice(&self.version.node.to_le_bytes());
        out.push(self.kind as u8);
        out.extend_from_slice(&(self.ops.len() as u32).to_le_bytes());
        for op in &self.ops {
            encode_op(op, out);
        }
    }

    /// Append the compact encoding used for runs of changes (replication batches): the header
    /// as varints, `seq` and the version's timestamp as differences from the previous change
    /// of the run (`prev`, updated; start from `(0, 0)`), record and key lengths as varints.
    /// A change of a few fields costs a few bytes beyond its records.
    pub fn encode_compact(&self, prev: &mut (u64, u64), out: &mut Vec<u8>) {
        put_varint(out, zigzag(self.seq.wrapping_sub(prev.0)));
        put_varint(out, zigzag(self.version.ts.wrapping_sub(prev.1)));
        put_varint(out, u64::from(self.version.node));
        out.push(self.kind as u8);
        put_varint(out, self.ops.len() as u64);
        for op in &self.ops {
            match op {
                Op::Put(r) => {
                    out.push(OP_PUT);
                    put_varint(out, r.as_bytes().len() as u64);
                    out.extend_from_slice(r.as_bytes());
                }
                Op::Remove(k) => {
                    out.push(OP_REMOVE);
                    put_varint(out, k.len() as u64);
                    out.extend_from_slice(k);
                }
                other => encode_op(other, out),
            }
        }
        *prev = (self.seq, self.version.ts);
    }

    /// Decode one change of a compact run (see [`Change::encode_compact`]); advances `b`.
    pub fn decode_compact(b: &mut &[u8], prev: &mut (u64, u64)) -> Result<Change> {
        let mut r = Reader(b);
        let seq = prev.0.wrapping_add(unzigzag(r.varint()?));
        let ts = prev.1.wrapping_add(unzigzag(r.varint()?));
        let node = u32::try_from(r.varint()?)
            .map_err(|_| Error::Corrupt("node id does not fit".into()))?;
        let kind = ChangeKind::from_u8(r.u8()?)?;
        let n = r.varint()? as usize;
        let mut ops = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            let op = match r.u8()? {
                OP_PUT => Op::Put(Record::from_bytes(r.vblob()?.into())?),
                OP_REMOVE => Op::Remove(r.vblob()?.into()),
                t => decode_op(t, &mut r)?,
            };
            ops.push(op);
        }
        *prev = (seq, ts);
        Ok(Change {
            seq,
            version: Version { ts, node },
            kind,
            ops,
        })
    }

    /// Decode one change; every length is checked.
    pub fn decode(mut b: &[u8]) -> Result<Change> {
        let mut r = Reader(&mut b);
        if r.u8()? != TAG_CHANGE {
            return Err(Error::Corrupt("not a change entry".into()));
        }
        let seq = r.u64()?;
        let version = Version {
            ts: r.u64()?,
            node: r.u32()?,
        };
        let kind = ChangeKind::from_u8(r.u8()?)?;
        let n = r.u32()? as usize;
        let mut ops = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            let op = decode_op(r.u8()?, &mut r)?;
            ops.push(op);
        }
        if !r.is_empty() {
            return Err(Error::Corrupt("trailing bytes after change".into()));
        }
        Ok(Change {
            seq,
            version,
            kind,
            ops,
        })
    }

    /// Approximate memory held, for bounding the feed.
    pub fn weight(&self) -> usize {
        64 + self
            .ops
            .iter()
            .map(|o| match o {
                Op::Put(r) => 16 + r.heap_len(),
                Op::Remove(k) => 16 + k.len(),
                Op::QueuePut { queue, item, .. } => {
                    64 + queue.len() + item.value.len() + item.key.as_ref().map_or(0, |k| k.len())
                }
                Op::QueueDel { queue, ids } => 32 + queue.len() + 8 * ids.len(),
            })
            .sum::<usize>()
    }

    /// One JSON object describing the change (the transaction hook's line format, version 1).
    /// Binary keys and values are given as hex, and as text too when they are valid UTF-8.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        let bytes = |b: &[u8]| -> serde_json::Value {
            match std::str::from_utf8(b) {
                Ok(s) => json!({"text": s, "hex": hex(b)}),
                Err(_) => json!({"hex": hex(b)}),
            }
        };
        let ops: Vec<_> = self
            .ops
            .iter()
            .map(|op| match op {
                Op::Put(r) => {
                    let v = r.view();
                    let m = v.meta();
                    json!({
                        "op": if m.kind == crate::record::Kind::Tombstone { "tombstone" } else { "put" },
                        "key": bytes(v.key()),
                        "kind": m.kind.name(),
                        "flags": m.flags,
                        "expire": m.expire,
                        "encrypted": m.encrypted,
                        "version": m.version.to_string(),
                        // Encrypted values are never revealed, not even as ciphertext.
                        "value": if m.encrypted { serde_json::Value::Null } else { bytes(v.value()) },
                    })
                }
                Op::Remove(k) => json!({"op": "remove", "key": bytes(k)}),
                Op::QueuePut { queue, id, item } => json!({
                    "op": "queue_put",
                    "queue": bytes(queue),
                    "id": id,
                    "key": item.key.as_deref().map(bytes),
                    "value": if item.encrypted { serde_json::Value::Null } else { bytes(&item.value) },
                    "expire": item.expire,
                }),
                Op::QueueDel { queue, ids } => {
                    json!({"op": "queue_del", "queue": bytes(queue), "ids": ids})
                }
            })
            .collect();
        json!({
            "format": 1,
            "seq": self.seq,
            "version": self.version.to_string(),
            "kind": self.kind.name(),
            "ops": ops,
        })
    }
}

/// Lower-case hex of bytes.
pub fn hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(D[(x >> 4) as usize] as char);
        s.push(D[(x & 15) as usize] as char);
    }
    s
}

/// Which changes a feed reader or hook wants.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChangeFilter {
    /// Only changes touching a key (or queue) with this prefix.
    #[serde(default)]
    pub prefix: Option<Vec<u8>>,
    /// Only these kinds; `None` means all.
    #[serde(default)]
    pub kinds: Option<Vec<ChangeKind>>,
}

impl ChangeFilter {
    /// Whether a change passes.
    pub fn matches(&self, c: &Change) -> bool {
        if let Some(k) = &self.kinds
            && !k.contains(&c.kind)
        {
            return false;
        }
        match &self.prefix {
            Some(p) => c.ops.iter().any(|o| o.key().starts_with(p)),
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Kind, Meta};

    #[test]
    fn encode_decode_round_trip() {
        let meta = Meta {
            kind: Kind::Value,
            encrypted: false,
            flags: 1,
            version: Version { ts: 5, node: 1 },
            expire: 0,
            created: 1,
        };
        let c = Change {
            seq: 42,
            version: Version { ts: 7, node: 2 },
            kind: ChangeKind::Rename,
            ops: vec![
                Op::Put(Record::build(b"new", b"v", &meta, None)),
                Op::Remove(b"old".to_vec().into()),
                Op::QueuePut {
                    queue: b"q".to_vec().into(),
                    id: 9,
                    item: QueueItem {
                        key: Some(b"ik".to_vec().into()),
                        value: b"iv".to_vec().into(),
                        expire: 3,
                        encrypted: true,
                        version: Version { ts: 8, node: 2 },
                    },
                },
                Op::QueueDel {
                    queue: b"q".to_vec().into(),
                    ids: vec![1, 2, 3],
                },
            ],
        };
        let mut buf = Vec::new();
        c.encode(&mut buf);
        assert_eq!(Change::decode(&buf).unwrap(), c);
        for cut in 0..buf.len() {
            assert!(
                Change::decode(&buf[..cut]).is_err(),
                "cut at {cut} must fail"
            );
        }
        // The compact form of a run: deltas in both directions, every cut refused.
        let mut later = c.clone();
        later.seq = 40;
        later.version.ts = u64::MAX - 3;
        later.ops.truncate(1);
        let mut run = Vec::new();
        let mut prev = (0, 0);
        c.encode_compact(&mut prev, &mut run);
        later.encode_compact(&mut prev, &mut run);
        let mut b = run.as_slice();
        let mut prev = (0, 0);
        assert_eq!(Change::decode_compact(&mut b, &mut prev).unwrap(), c);
        assert_eq!(Change::decode_compact(&mut b, &mut prev).unwrap(), later);
        assert!(b.is_empty());
        assert!(run.len() < 2 * buf.len() - 40, "compact is smaller");
        for cut in 0..run.len() {
            let mut b = &run[..cut];
            let mut prev = (0, 0);
            let ok = Change::decode_compact(&mut b, &mut prev)
                .and_then(|_| Change::decode_compact(&mut b, &mut prev));
            assert!(ok.is_err(), "cut at {cut} must fail");
        }
        let j = c.to_json();
        assert_eq!(j["kind"], "rename");
        assert_eq!(j["ops"][0]["key"]["text"], "new");
        let f = ChangeFilter {
            prefix: Some(b"ne".to_vec()),
            kinds: None,
        };
        assert!(f.matches(&c));
        let f = ChangeFilter {
            prefix: None,
            kinds: Some(vec![ChangeKind::Set]),
        };
        assert!(!f.matches(&c));
    }
}
