//! The in-memory state of a store: records and queues in hash-sharded tables.
//!
//! Invariants:
//! - A record lives in the shard chosen by the hash of its key, a queue in the shard chosen by
//!   the hash of its name; so every single-key or single-queue operation locks one shard.
//! - Multi-key operations lock every shard they touch in ascending shard order (or all shards),
//!   so they are atomic and cannot deadlock with each other.
//! - State changes only by [`Shard::apply`] of a [`crate::change::Op`], the same code that log
//!   replay uses, so what is in memory is always what the log says.

use std::collections::BTreeMap;
use std::hash::BuildHasher;

use hashbrown::HashTable;
use hashbrown::hash_map::HashMap;
use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::change::{Op, QueueItem};
use crate::error::{Error, Result};
use crate::record::{Record, RecordRef};

/// Id of the first item pushed to an empty queue; front pushes count down from here.
pub(crate) const QUEUE_ORIGIN: u64 = 1 << 63;

/// One queue: items ordered by id; the front is the smallest id.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    pub items: BTreeMap<u64, QueueItem>,
}

/// One shard of the state.
#[derive(Default)]
pub(crate) struct Shard {
    pub records: HashTable<Record>,
    pub queues: HashMap<Box<[u8]>, Queue>,
    /// Heap bytes of all record blobs, for stats.
    pub record_bytes: usize,
    pub tombstones: usize,
}

impl Shard {
    pub fn find(&self, hash: u64, key: &[u8]) -> Option<RecordRef<'_>> {
        self.records
            .find(hash, |r| r.view().key() == key)
            .map(|r| r.view())
    }

    /// Apply one state operation. `hash` is the state hash of the op's key.
    pub fn apply(&mut self, hasher: &impl BuildHasher, hash: u64, op: Op) {
        match op {
            Op::Put(rec) => {
                let tomb = rec.view().kind() == crate::record::Kind::Tombstone;
                let len = rec.heap_len();
                match self.records.entry(
                    hash,
                    |r| r.view().key() == rec.view().key(),
                    |r| hasher.hash_one(r.view().key()),
                ) {
                    hashbrown::hash_table::Entry::Occupied(mut e) => {
                        let old = e.get_mut();
                        self.record_bytes -= old.heap_len();
                        if old.view().kind() == crate::record::Kind::Tombstone {
                            self.tombstones -= 1;
                        }
                        *old = rec;
                    }
                    hashbrown::hash_table::Entry::Vacant(e) => {
                        e.insert(rec);
                    }
                }
                self.record_bytes += len;
                if tomb {
                    self.tombstones += 1;
                }
            }
            Op::Remove(key) => {
                if let Ok(e) = self
                    .records
                    .find_entry(hash, |r| r.view().key() == &key[..])
                {
                    let (old, _) = e.remove();
                    self.record_bytes -= old.heap_len();
                    if old.view().kind() == crate::record::Kind::Tombstone {
                        self.tombstones -= 1;
                    }
                }
            }
            Op::QueuePut { queue, id, item } => {
                self.queues.entry(queue).or_default().items.insert(id, item);
            }
            Op::QueueDel { queue, ids } => {
                if let Some(q) = self.queues.get_mut(&queue) {
                    for id in ids {
                        q.items.remove(&id);
                    }
                    if q.items.is_empty() {
                        self.queues.remove(&queue);
                    }
                }
            }
        }
    }
}

/// All shards and the hasher that places keys.
pub(crate) struct State {
    shards: Box<[RwLock<Shard>]>,
    shift: u32,
    hasher: hashbrown::DefaultHashBuilder,
}

/// Write guards over a set of shards, taken in ascending order.
pub(crate) struct Locked<'a> {
    state: &'a State,
    guards: Vec<(usize, RwLockWriteGuard<'a, Shard>)>,
}

impl State {
    /// `shards` is rounded up to a power of two.
    pub fn new(shards: usize) -> State {
        let n = shards.clamp(1, 4096).next_power_of_two();
        State {
            shards: (0..n).map(|_| RwLock::new(Shard::default())).collect(),
            shift: 64 - n.trailing_zeros(),
            hasher: hashbrown::DefaultHashBuilder::default(),
        }
    }

    pub fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    pub fn shard_of(&self, hash: u64) -> usize {
        // The top bits pick the shard; the table uses the low bits, so they stay independent.
        if self.shift == 64 {
            0
        } else {
            (hash >> self.shift) as usize
        }
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    pub fn read_shard(&self, i: usize) -> RwLockReadGuard<'_, Shard> {
        self.shards[i].read()
    }

    /// Read a record under a shared lock.
    pub fn read<R>(&self, key: &[u8], f: impl FnOnce(Option<RecordRef<'_>>) -> R) -> R {
        let h = self.hash(key);
        let g = self.shards[self.shard_of(h)].read();
        f(g.find(h, key))
    }

    /// Lock the shards of these keys (or queue names).
    pub fn lock<'a>(&'a self, keys: &[&[u8]]) -> Locked<'a> {
        let mut idx: Vec<usize> = keys.iter().map(|k| self.shard_of(self.hash(k))).collect();
        idx.sort_unstable();
        idx.dedup();
        Locked {
            state: self,
            guards: idx
                .into_iter()
                .map(|i| (i, self.shards[i].write()))
                .collect(),
        }
    }

    /// Lock every shard.
    pub fn lock_all(&self) -> Locked<'_> {
        Locked {
            state: self,
            guards: (0..self.shards.len())
                .map(|i| (i, self.shards[i].write()))
                .collect(),
        }
    }

    /// Apply an op outside any caller-held lock (recovery, import).
    pub fn apply_unlocked(&self, op: Op) {
        let h = self.hash(op.key());
        let mut g = self.shards[self.shard_of(h)].write();
        g.apply(&self.hasher, h, op);
    }
}

impl<'a> Locked<'a> {
    fn guard(&self, key: &[u8]) -> Result<(u64, &Shard)> {
        let h = self.state.hash(key);
        let i = self.state.shard_of(h);
        match self.guards.binary_search_by_key(&i, |(j, _)| *j) {
            Ok(p) => Ok((h, &self.guards[p].1)),
            Err(_) => Err(Error::InvalidArgument(
                "internal: key outside the locked set".into(),
            )),
        }
    }

    /// The record at `key`, if any (tombstones included).
    pub fn get(&self, key: &[u8]) -> Result<Option<RecordRef<'_>>> {
        let (h, s) = self.guard(key)?;
        Ok(s.find(h, key))
    }

    /// The queue named `name`, if any.
    pub fn queue(&self, name: &[u8]) -> Result<Option<&Queue>> {
        let (_, s) = self.guard(name)?;
        Ok(s.queues.get(name))
    }

    /// Check that every op's key is locked, before anything is logged.
    pub fn check(&self, ops: &[Op]) -> Result<()> {
        for op in ops {
            self.guard(op.key())?;
        }
        Ok(())
    }

    /// Apply ops (their keys must be locked; see [`Locked::check`]).
    pub fn apply(&mut self, ops: Vec<Op>) {
        let hasher = &self.state.hasher;
        for op in ops {
            let h = self.state.hash(op.key());
            let i = self.state.shard_of(h);
            if let Ok(p) = self.guards.binary_search_by_key(&i, |(j, _)| *j) {
                self.guards[p].1.apply(hasher, h, op);
            }
        }
    }

    /// Visit every locked shard (used with [`State::lock_all`]).
    pub fn shards_mut(&mut self) -> impl Iterator<Item = &mut Shard> {
        self.guards.iter_mut().map(|(_, g)| &mut **g)
    }
}
