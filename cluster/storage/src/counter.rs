//! CAS counters (K2HDKC's CasInit/CasGet/CasSet/CasIncDec) of 8, 16, 32 or 64 bits.
//!
//! A counter is a record of kind `CounterN` holding N/8 little-endian bytes. Operations name the
//! width they expect, and a record of another kind or width is [`Error::NotSameType`]; so a
//! 16-bit client never misreads a 64-bit counter. Increments wrap around at the width, like
//! the machine integers K2HDKC uses. Counters are stored in plain text: their worth is in being
//! updated atomically in place, which encryption would not add to.

use crate::change::{ChangeKind, Op};
use crate::error::{Error, Result};
use crate::record::{Kind, Meta, Record};
use crate::store::{Expire, Store};

fn mask(width: u8) -> u64 {
    if width == 64 {
        u64::MAX
    } else {
        (1u64 << width) - 1
    }
}

impl Store {
    fn counter_kind(width: u8) -> Result<Kind> {
        Kind::counter(width)
    }

    fn read_counter(kind: Kind, found: Kind, value: &[u8]) -> Result<u64> {
        if found != kind {
            return Err(Error::NotSameType {
                expected: kind.name(),
                found: found.name(),
            });
        }
        let n = kind.counter_bytes().expect("counter kind");
        if value.len() != n {
            return Err(Error::Corrupt("counter of the wrong length".into()));
        }
        let mut b = [0u8; 8];
        b[..n].copy_from_slice(value);
        Ok(u64::from_le_bytes(b))
    }

    fn write_counter(&self, key: &[u8], kind: Kind, value: u64, expire: Expire) -> Result<u64> {
        let n = kind.counter_bytes().expect("counter kind");
        let l = self.lock(&[key]);
        let now = self.now();
        let old = l.get(key)?.filter(|r| r.is_live(now));
        let version = self.new_version();
        let meta = Meta {
            kind,
            encrypted: false,
            flags: old.map_or(0, |o| o.flags()),
            version,
            expire: self.expire_at(expire, old.map(|o| o.expire()), now),
            created: old.map_or(now, |o| o.created()),
        };
        let ext = old.filter(|o| o.has_ext()).map(|o| {
            let mut e = o.ext();
            e.history.clear();
            e
        });
        let rec = Record::build(key, &value.to_le_bytes()[..n], &meta, ext.as_ref());
        self.commit_and_wait(l, version, ChangeKind::Counter, vec![Op::Put(rec)])?;
        Ok(version.ts)
    }

    /// Create or overwrite a counter of `width` bits with `value`.
    pub fn counter_init(&self, key: &[u8], width: u8, value: u64, expire: Expire) -> Result<u64> {
        self.check_key(key)?;
        let kind = Self::counter_kind(width)?;
        if value > mask(width) {
            return Err(Error::InvalidArgument(format!(
                "{value} does not fit in {width} bits"
            )));
        }
        self.write_counter(key, kind, value, expire)
    }

    /// The value of a counter; `None` when absent.
    pub fn counter_get(&self, key: &[u8], width: u8) -> Result<Option<u64>> {
        self.check_key(key)?;
        let kind = Self::counter_kind(width)?;
        let now = self.now();
        self.inner
            .state
            .read(key, |r| match r.filter(|r| r.is_live(now)) {
                Some(r) => Self::read_counter(kind, r.kind(), r.value()).map(Some),
                None => Ok(None),
            })
    }

    /// Set to `new` only if the counter is `old`: [`Error::NotSameValue`] otherwise,
    /// [`Error::NotFound`] when absent.
    pub fn counter_cas(&self, key: &[u8], width: u8, old: u64, new: u64) -> Result<u64> {
        self.check_key(key)?;
        let kind = Self::counter_kind(width)?;
        if new > mask(width) || old > mask(width) {
            return Err(Error::InvalidArgument(format!(
                "value does not fit in {width} bits"
            )));
        }
        self.update_counter(key, kind, |cur| {
            if cur == old {
                Ok(new)
            } else {
                Err(Error::NotSameValue)
            }
        })
        .map(|(_, cas)| cas)
    }

    /// Add `delta` (negative to decrement), wrapping at the width. Returns the new value.
    pub fn counter_add(&self, key: &[u8], width: u8, delta: i64) -> Result<u64> {
        self.check_key(key)?;
        let kind = Self::counter_kind(width)?;
        self.update_counter(key, kind, |cur| {
            Ok(cur.wrapping_add(delta as u64) & mask(width))
        })
        .map(|(v, _)| v)
    }

    fn update_counter(
        &self,
        key: &[u8],
        kind: Kind,
        f: impl FnOnce(u64) -> Result<u64>,
    ) -> Result<(u64, u64)> {
        let n = kind.counter_bytes().expect("counter kind");
        let l = self.lock(&[key]);
        let now = self.now();
        let Some(old) = l.get(key)?.filter(|r| r.is_live(now)) else {
            return Err(Error::NotFound);
        };
        let cur = Self::read_counter(kind, old.kind(), old.value())?;
        let new = f(cur)?;
        let version = self.new_version();
        let mut meta = old.meta();
        meta.version = version;
        let ext = old.has_ext().then(|| old.ext());
        let rec = Record::build(key, &new.to_le_bytes()[..n], &meta, ext.as_ref());
        self.commit_and_wait(l, version, ChangeKind::Counter, vec![Op::Put(rec)])?;
        Ok((new, version.ts))
    }
}
