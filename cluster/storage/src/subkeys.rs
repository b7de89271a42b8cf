//! Sub-keys and rename: a key owns an ordered list of child keys (K2HASH's subkeys).
//!
//! Invariants: a sub-key list has no duplicates; children are ordinary keys that may or may not
//! exist; every operation that touches a parent and its child (or a renamed key and its parent)
//! locks all of them and is one change, so it is atomic, unlike K2HDKC's two-step composites.
//! A recursive delete walks the tree with a visited set, so cycles end it instead of looping.

use std::collections::HashSet;

use crate::change::{ChangeKind, Op};
use crate::crypto;
use crate::error::{Error, Result};
use crate::record::{Ext, Kind, Meta, Record, RecordRef};
use crate::state::Locked;
use crate::store::{Expire, Store, WriteOpts};

impl Store {
    /// The sub-key list of a live key; `None` when the key is absent.
    pub fn subkeys(&self, parent: &[u8]) -> Result<Option<Vec<Vec<u8>>>> {
        let now = self.now();
        Ok(self.inner.state.read(parent, |r| {
            r.filter(|r| r.is_live(now))
                .map(|r| r.ext().subkeys.into_iter().map(Vec::from).collect())
        }))
    }

    /// The parent record with a new sub-key list (created empty if absent).
    fn with_subkeys(
        &self,
        l: &Locked<'_>,
        parent: &[u8],
        now: u32,
        f: impl FnOnce(&mut Vec<Box<[u8]>>),
    ) -> Result<Record> {
        let old = l.get(parent)?.filter(|r| r.is_live(now));
        let version = self.new_version();
        let (mut meta, mut ext, value): (Meta, Ext, &[u8]) = match old {
            Some(o) => (o.meta(), o.ext(), o.value()),
            None => (
                Meta {
                    kind: Kind::Value,
                    encrypted: false,
                    flags: 0,
                    version,
                    expire: self.expire_at(Expire::Default, None, now),
                    created: now,
                },
                Ext::default(),
                &[],
            ),
        };
        meta.version = version;
        f(&mut ext.subkeys);
        Ok(Record::build(parent, value, &meta, Some(&ext)))
    }

    /// Replace the sub-key list (the parent is created empty if absent).
    pub fn set_subkeys(&self, parent: &[u8], children: &[&[u8]]) -> Result<()> {
        self.check_key(parent)?;
        let mut seen = HashSet::new();
        for c in children {
            self.check_key(c)?;
            if !seen.insert(*c) {
                return Err(Error::InvalidArgument("duplicate sub-key in list".into()));
            }
        }
        let l = self.lock(&[parent]);
        let now = self.now();
        let rec = self.with_subkeys(&l, parent, now, |list| {
            *list = children.iter().map(|c| Box::from(*c)).collect();
        })?;
        let v = rec.view().version();
        self.commit_and_wait(l, v, ChangeKind::SubKey, vec![Op::Put(rec)])
    }

    /// Empty a live key's sub-key list (children are kept). Returns whether the key exists.
    pub fn clear_subkeys(&self, parent: &[u8]) -> Result<bool> {
        self.check_key(parent)?;
        let l = self.lock(&[parent]);
        let now = self.now();
        if l.get(parent)?.filter(|r| r.is_live(now)).is_none() {
            return Ok(false);
        }
        let rec = self.with_subkeys(&l, parent, now, |list| list.clear())?;
        let v = rec.view().version();
        self.commit_and_wait(l, v, ChangeKind::SubKey, vec![Op::Put(rec)])?;
        Ok(true)
    }

    /// Add `child` to `parent`'s list (the parent is created empty if absent) and, if
    /// `child_value` is given, write the child in the same atomic change.
    pub fn add_subkey(
        &self,
        parent: &[u8],
        child: &[u8],
        child_value: Option<(&[u8], &WriteOpts<'_>)>,
    ) -> Result<()> {
        self.check_key(parent)?;
        self.check_key(child)?;
        if let Some((v, _)) = child_value {
            self.check_value(v.len())?;
            if parent == child {
                return Err(Error::InvalidArgument(
                    "a key cannot be written as its own child".into(),
                ));
            }
        }
        let l = self.lock(&[parent, child]);
        let now = self.now();
        let mut ops = Vec::with_capacity(2);
        if let Some((value, opts)) = child_value {
            let old = l.get(child)?.filter(|r| r.is_live(now));
            let (stored, encrypted) =
                self.seal_value(child, value.to_vec(), opts.pass, opts.encrypt, None)?;
            let version = self.new_version();
            let meta = Meta {
                kind: Kind::Value,
                encrypted,
                flags: opts.flags.unwrap_or(0),
                version,
                expire: self.expire_at(opts.expire, old.map(|o| o.expire()), now),
                created: old.map_or(now, |o| o.created()),
            };
            let ext = self.next_ext(old);
            ops.push(Op::Put(Record::build(child, &stored, &meta, ext.as_ref())));
        }
        let parent_rec = self.with_subkeys(&l, parent, now, |list| {
            if !list.iter().any(|k| &k[..] == child) {
                list.push(child.into());
            }
        })?;
        let v = parent_rec.view().version();
        ops.push(Op::Put(parent_rec));
        self.commit_and_wait(l, v, ChangeKind::SubKey, ops)
    }

    /// Remove `child` from `parent`'s list, and delete the child record too with
    /// `delete_child`. Returns whether the child was listed.
    pub fn remove_subkey(&self, parent: &[u8], child: &[u8], delete_child: bool) -> Result<bool> {
        self.check_key(parent)?;
        self.check_key(child)?;
        let l = self.lock(&[parent, child]);
        let now = self.now();
        if l.get(parent)?.filter(|r| r.is_live(now)).is_none() {
            return Err(Error::NotFound);
        }
        let mut listed = false;
        let parent_rec = self.with_subkeys(&l, parent, now, |list| {
            let before = list.len();
            list.retain(|k| &k[..] != child);
            listed = list.len() != before;
        })?;
        let v = parent_rec.view().version();
        let mut ops = vec![Op::Put(parent_rec)];
        if delete_child && let Some(c) = l.get(child)?.filter(|r| r.is_live(now)) {
            ops.push(Op::Put(self.tombstone(c, v, now)));
        }
        if !listed && ops.len() == 1 {
            return Ok(false);
        }
        self.commit_and_wait(l, v, ChangeKind::SubKey, ops)?;
        Ok(listed)
    }

    /// Delete a key and, recursively, every key below it. Returns how many were deleted.
    pub fn delete_recursive(&self, key: &[u8]) -> Result<usize> {
        self.check_key(key)?;
        // The set of keys is only known while walking, so every shard is locked.
        let l = self.lock_all();
        let now = self.now();
        let mut seen: HashSet<Vec<u8>> = HashSet::new();
        let mut stack = vec![key.to_vec()];
        let version = self.new_version();
        let mut ops = Vec::new();
        while let Some(k) = stack.pop() {
            if !seen.insert(k.clone()) {
                continue;
            }
            if let Some(r) = l.get(&k)?.filter(|r: &RecordRef<'_>| r.is_live(now)) {
                for c in r.ext().subkeys.iter().rev() {
                    stack.push(c.to_vec());
                }
                ops.push(Op::Put(self.tombstone(r, version, now)));
            }
        }
        let n = ops.len();
        if n == 0 {
            return Ok(0);
        }
        self.commit_and_wait(l, version, ChangeKind::Delete, ops)?;
        Ok(n)
    }

    /// Rename `from` to `to` (overwriting `to`), keeping value, attributes and sub-keys; with
    /// `parent`, also replace `from` by `to` in the parent's list (appending if not listed).
    /// An encrypted value is re-sealed for its new key, which needs its pass phrase (`pass`,
    /// or a registered one).
    pub fn rename(
        &self,
        from: &[u8],
        to: &[u8],
        parent: Option<&[u8]>,
        pass: Option<&[u8]>,
    ) -> Result<()> {
        self.check_key(from)?;
        self.check_key(to)?;
        if let Some(p) = parent {
            self.check_key(p)?;
            if p == from || p == to {
                return Err(Error::InvalidArgument(
                    "the parent of a rename cannot be its source or target".into(),
                ));
            }
        }
        if from == to {
            return if self.contains(from) {
                Ok(())
            } else {
                Err(Error::NotFound)
            };
        }
        let mut keys: Vec<&[u8]> = vec![from, to];
        keys.extend(parent);
        let l = self.lock(&keys);
        let now = self.now();
        let Some(old) = l.get(from)?.filter(|r| r.is_live(now)) else {
            return Err(Error::NotFound);
        };
        let version = self.new_version();
        let value = if old.encrypted() {
            let k = self.inner.keyring.key_for(old.value(), pass)?;
            let plain = crypto::open(&k, from, old.value())?;
            crypto::seal(&k, to, &plain)?
        } else {
            old.value().to_vec()
        };
        let mut meta = old.meta();
        meta.version = version;
        let ext = old.has_ext().then(|| old.ext());
        let mut ops = vec![
            Op::Put(Record::build(to, &value, &meta, ext.as_ref())),
            Op::Put(self.tombstone(old, version, now)),
        ];
        if let Some(p) = parent {
            if l.get(p)?.filter(|r| r.is_live(now)).is_none() {
                return Err(Error::NotFound);
            }
            let rec = self.with_subkeys(&l, p, now, |list| {
                match list.iter().position(|k| &k[..] == from) {
                    Some(i) => list[i] = to.into(),
                    None => list.push(to.into()),
                }
                // `to` may have been listed already: keep the first occurrence only.
                let mut seen = HashSet::new();
                list.retain(|k| seen.insert(k.clone()));
            })?;
            ops.push(Op::Put(rec));
        }
        self.commit_and_wait(l, version, ChangeKind::Rename, ops)
    }
}
