//! Time: an injectable wall clock and the hybrid logical clock (HLC) that stamps every record.
//!
//! Invariants: versions issued by one [`Hlc`] strictly increase, even when the wall clock steps
//! back; after [`Hlc::observe`] of a remote version, every later local version is greater. A
//! version orders first by timestamp, then by origin node id, so two nodes never issue equal
//! versions and last-writer-wins has a total order.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Bits of an HLC timestamp given to the logical counter (the rest is milliseconds).
pub const LOGICAL_BITS: u32 = 16;

/// A source of wall-clock time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
    /// Whole seconds since the Unix epoch.
    fn now_secs(&self) -> u32 {
        (self.now_ms() / 1000).min(u32::MAX as u64) as u32
    }
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that moves only when told to; for tests of expiry and tombstones.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock standing at `ms`.
    pub fn new(ms: u64) -> Arc<Self> {
        Arc::new(ManualClock(AtomicU64::new(ms)))
    }
    /// Move forward by `ms`.
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
    /// Set the time.
    pub fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The version of a record: an HLC timestamp and the id of the node that made the change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Version {
    /// HLC timestamp: milliseconds << 16 | logical counter.
    pub ts: u64,
    /// Origin node id.
    pub node: u32,
}

impl Version {
    /// The zero version, older than every real one.
    pub const ZERO: Version = Version { ts: 0, node: 0 };

    /// Wall-clock milliseconds of this version.
    pub fn millis(&self) -> u64 {
        self.ts >> LOGICAL_BITS
    }

    /// The oldest version of wall-clock millisecond `ms`: every version made at `ms` or
    /// later is not older.
    pub const fn at_millis(ms: u64) -> Version {
        Version {
            ts: ms << LOGICAL_BITS,
            node: 0,
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}@{}", self.millis(), self.ts & 0xffff, self.node)
    }
}

impl std::str::FromStr for Version {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("bad version {s:?}, expected MILLIS.LOGICAL@NODE");
        let (t, node) = s.split_once('@').ok_or_else(bad)?;
        let (ms, lo) = t.split_once('.').ok_or_else(bad)?;
        let ms: u64 = ms.parse().map_err(|_| bad())?;
        let lo: u64 = lo.parse().map_err(|_| bad())?;
        if lo > 0xffff || ms >= 1 << (64 - LOGICAL_BITS) {
            return Err(bad());
        }
        Ok(Version {
            ts: ms << LOGICAL_BITS | lo,
            node: node.parse().map_err(|_| bad())?,
        })
    }
}

/// A hybrid logical clock for one node.
#[derive(Debug)]
pub struct Hlc {
    node: u32,
    last: AtomicU64,
    clock: Arc<dyn Clock>,
}

impl Hlc {
    /// A clock for node `node` reading wall time from `clock`.
    pub fn new(node: u32, clock: Arc<dyn Clock>) -> Self {
        Hlc {
            node,
            last: AtomicU64::new(0),
            clock,
        }
    }

    /// The wall clock behind this HLC.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// This node's id.
    pub fn node(&self) -> u32 {
        self.node
    }

    /// A new version, greater than every version issued or observed before.
    pub fn now(&self) -> Version {
        let phys = self.clock.now_ms() << LOGICAL_BITS;
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = phys.max(last.saturating_add(1));
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    return Version {
                        ts: next,
                        node: self.node,
                    };
                }
                Err(cur) => last = cur,
            }
        }
    }

    /// Take a version seen elsewhere into account (replication, recovery).
    pub fn observe(&self, v: Version) {
        self.last.fetch_max(v.ts, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_even_when_clock_steps_back() {
        let c = ManualClock::new(10_000);
        let h = Hlc::new(7, c.clone());
        let a = h.now();
        c.set(5_000);
        let b = h.now();
        assert!(b > a);
        h.observe(Version {
            ts: b.ts + 1000,
            node: 1,
        });
        assert!(h.now().ts > b.ts + 1000);
        assert_eq!(a.node, 7);
    }

    #[test]
    fn version_text_round_trip() {
        let v = Version {
            ts: (1234 << LOGICAL_BITS) | 5,
            node: 9,
        };
        assert_eq!(v.to_string().parse::<Version>().unwrap(), v);
        assert!("x".parse::<Version>().is_err());
        assert!("1.70000@1".parse::<Version>().is_err());
    }
}
