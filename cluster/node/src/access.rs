//! Per-item hints of the memcached meta protocol that the storage engine does not keep:
//! "fetched before" (`h`), "seconds since the last access" (`l`), and the stale and
//! recache-token marks behind `md I`, `ms I`, `mg N` and `mg R` (`X`, `W`, `Z`).
//!
//! Invariants:
//! - Every hint is bound to the item's cas unique. Any write gives the item a new cas, so the
//!   hints of an old value are never reported for a new one, and nothing has to be cleared on
//!   the write paths (touch keeps the cas, and keeps the hints, as in memcached).
//! - Fetch hints live in a fixed table of atomics: bounded memory and no lock on the get path.
//!   Two items hashing to the same slot overwrite each other's hint, which can make an item
//!   read as "not fetched before"; a hint is never invented for an item that was not fetched.
//! - Marks (stale, token sent) live in a bounded map that the get path reads only while it is
//!   not empty, so servers that never use them pay one atomic load.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// Slots of the fetch table (8 bytes each).
const FETCH_SLOTS: usize = 1 << 18;
/// Most marks kept; beyond it the oldest-looking half is dropped (marks are short-lived:
/// a recache completes with a write, which obsoletes the mark).
const MAX_MARKS: usize = 65_536;

/// A mark on one value of an item.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mark {
    /// `md I` / `ms I`: the value is stale; readers see `X`.
    pub stale: bool,
    /// A recache token (`W`) was handed out; later readers see `Z`.
    pub token_sent: bool,
}

/// What a read learned about the item's earlier accesses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fetched {
    /// The value was read before this read.
    pub before: bool,
    /// Seconds since the previous read (or since the value was written, when never read).
    pub idle_secs: u64,
}

/// The hint tables of one server.
pub struct Access {
    fetch: Box<[AtomicU64]>,
    marks: Mutex<HashMap<Vec<u8>, (u64, Mark)>>,
    mark_count: AtomicUsize,
}

impl Default for Access {
    fn default() -> Self {
        Self {
            fetch: (0..FETCH_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            marks: Mutex::new(HashMap::new()),
            mark_count: AtomicUsize::new(0),
        }
    }
}

/// 64-bit hash of a key and a cas unique (FNV-1a over 8-byte words, then a finaliser): fast for
/// short keys and good enough to spread slots; the table holds hints, not data.
fn hash(key: &[u8], cas: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ cas;
    let mut chunks = key.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = (h ^ w).wrapping_mul(0x0000_0100_0000_01b3);
    }
    for &b in chunks.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

impl Access {
    /// Record a read of the value `cas` of `key` at `now` (unix seconds); `written` is when
    /// that value was written (unix seconds). Returns what was known before this read.
    pub fn fetched(&self, key: &[u8], cas: u64, now: u32, written: u32) -> Fetched {
        let h = hash(key, cas);
        let slot = &self.fetch[(h as usize) & (FETCH_SLOTS - 1)];
        let tag = (h >> 32) as u32;
        // Time 0 would read as "empty"; 1970 is not a time a server runs at.
        let entry = (u64::from(tag) << 32) | u64::from(now.max(1));
        let prev = slot.swap(entry, Relaxed);
        let before = prev != 0 && (prev >> 32) as u32 == tag;
        let since = if before { prev as u32 } else { written };
        Fetched {
            before,
            idle_secs: u64::from(now.saturating_sub(since)),
        }
    }

    /// What a read would report, without counting as a read (`me`, `mg u`).
    pub fn peek(&self, key: &[u8], cas: u64, now: u32, written: u32) -> Fetched {
        let h = hash(key, cas);
        let prev = self.fetch[(h as usize) & (FETCH_SLOTS - 1)].load(Relaxed);
        let before = prev != 0 && (prev >> 32) as u32 == (h >> 32) as u32;
        let since = if before { prev as u32 } else { written };
        Fetched {
            before,
            idle_secs: u64::from(now.saturating_sub(since)),
        }
    }

    /// The mark on value `cas` of `key`, if any.
    pub fn mark(&self, key: &[u8], cas: u64) -> Mark {
        if self.mark_count.load(Relaxed) == 0 {
            return Mark::default();
        }
        let marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        match marks.get(key) {
            Some(&(c, m)) if c == cas => m,
            _ => Mark::default(),
        }
    }

    /// Apply `f` to the mark of value `cas` of `key` (a fresh one when absent or of an older
    /// value) and return the mark as it was before.
    pub fn update(&self, key: &[u8], cas: u64, f: impl FnOnce(&mut Mark)) -> Mark {
        let mut marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        if marks.len() >= MAX_MARKS && !marks.contains_key(key) {
            // Marks of values that were since rewritten are dead; without a store lookup the
            // cheapest bound is to drop every other entry.
            let mut keep = false;
            marks.retain(|_, _| {
                keep = !keep;
                keep
            });
        }
        let e = marks.entry(key.to_vec()).or_insert((cas, Mark::default()));
        if e.0 != cas {
            *e = (cas, Mark::default());
        }
        let before = e.1;
        f(&mut e.1);
        if e.1 == Mark::default() {
            marks.remove(key);
        }
        self.mark_count.store(marks.len(), Relaxed);
        before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetched_is_bound_to_the_value() {
        let a = Access::default();
        let first = a.fetched(b"k", 7, 1000, 990);
        assert!(!first.before);
        assert_eq!(first.idle_secs, 10);
        let second = a.fetched(b"k", 7, 1004, 990);
        assert!(second.before);
        assert_eq!(second.idle_secs, 4);
        assert!(a.peek(b"k", 7, 1005, 990).before);
        // A new value (new cas) starts unfetched.
        assert!(!a.fetched(b"k", 8, 1005, 1005).before);
        assert!(!a.peek(b"other", 7, 1005, 1000).before);
    }

    #[test]
    fn marks_follow_the_cas_and_vanish_when_cleared() {
        let a = Access::default();
        assert_eq!(a.mark(b"k", 1), Mark::default());
        a.update(b"k", 1, |m| m.stale = true);
        assert!(a.mark(b"k", 1).stale);
        assert!(!a.mark(b"k", 2).stale);
        let before = a.update(b"k", 1, |m| m.token_sent = true);
        assert!(before.stale && !before.token_sent);
        assert_eq!(
            a.mark(b"k", 1),
            Mark {
                stale: true,
                token_sent: true
            }
        );
        // A mark for a newer value replaces the old one.
        a.update(b"k", 2, |m| m.token_sent = true);
        assert!(!a.mark(b"k", 2).stale);
        a.update(b"k", 2, |m| *m = Mark::default());
        assert_eq!(a.mark_count.load(Relaxed), 0);
    }

    #[test]
    fn marks_stay_bounded() {
        let a = Access::default();
        for i in 0..(MAX_MARKS * 2) {
            a.update(format!("k{i}").as_bytes(), 1, |m| m.stale = true);
        }
        assert!(a.mark_count.load(Relaxed) <= MAX_MARKS);
    }
}
