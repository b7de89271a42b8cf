//! The sequencer and the change feed.
//!
//! Every change passes through [`Feed::sequence`], which assigns the next sequence number, hands
//! the change to the engine and keeps it in a ring bounded by bytes. Because callers hold the
//! shard locks of every key a change touches while sequencing, two changes to one key are
//! sequenced in the order they were applied.
//!
//! Readers resume from any sequence number the ring still holds; an older position gets
//! [`Error::FeedTruncated`], and the reader resynchronises from a state scan
//! ([`crate::Store::changes_since_version`]), as a replica with a too-old backlog position
//! would. After a restart of a file-backed store the ring is refilled from the replayed log.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::change::{Change, ChangeFilter};
use crate::engine::{Engine, Ticket};
use crate::error::{Error, Result};

struct Inner {
    next_seq: u64,
    ring: VecDeque<Arc<Change>>,
    bytes: usize,
}

/// Sequencer plus bounded ring of recent changes.
pub(crate) struct Feed {
    inner: Mutex<Inner>,
    cv: Condvar,
    cap: usize,
}

/// A batch read from the feed.
#[derive(Debug, Clone)]
pub struct FeedBatch {
    /// Matching changes, in sequence order.
    pub changes: Vec<Arc<Change>>,
    /// Where to resume.
    pub next_seq: u64,
}

impl Feed {
    pub fn new(cap_bytes: usize) -> Feed {
        Feed {
            inner: Mutex::new(Inner {
                next_seq: 1,
                ring: VecDeque::new(),
                bytes: 0,
            }),
            cv: Condvar::new(),
            cap: cap_bytes,
        }
    }

    fn keep(&self, inner: &mut Inner, c: Arc<Change>) {
        if self.cap == 0 {
            return;
        }
        inner.bytes += c.weight();
        inner.ring.push_back(c);
        while inner.bytes > self.cap
            && let Some(old) = inner.ring.pop_front()
        {
            inner.bytes -= old.weight();
        }
    }

    /// Number and log a change; returns it (for applying) with its durability ticket.
    pub fn sequence(&self, engine: &dyn Engine, mut change: Change) -> Result<(Change, Ticket)> {
        let mut g = self.inner.lock();
        change.seq = g.next_seq;
        let t = engine.append(&change)?;
        g.next_seq += 1;
        if self.cap > 0 {
            self.keep(&mut g, Arc::new(change.clone()));
            drop(g);
            self.cv.notify_all();
        }
        Ok((change, t))
    }

    /// Run `f` with the sequencer held, so no change is sequenced meanwhile.
    pub fn with_sequencer<R>(&self, f: impl FnOnce(u64) -> R) -> R {
        let g = self.inner.lock();
        f(g.next_seq - 1)
    }

    /// Take a replayed change (recovery).
    pub fn recovered(&self, c: &Change) {
        let mut g = self.inner.lock();
        if c.seq >= g.next_seq {
            g.next_seq = c.seq + 1;
            if self.cap > 0 {
                self.keep(&mut g, Arc::new(c.clone()));
            }
        }
    }

    /// Continue numbering after `seq`.
    pub fn set_last(&self, seq: u64) {
        let mut g = self.inner.lock();
        g.next_seq = g.next_seq.max(seq + 1);
    }

    /// The last sequence number issued.
    pub fn last_seq(&self) -> u64 {
        self.inner.lock().next_seq - 1
    }

    /// Up to `max` changes with `seq >= from` that pass `filter`.
    pub fn read(&self, from: u64, filter: &ChangeFilter, max: usize) -> Result<FeedBatch> {
        let g = self.inner.lock();
        let oldest = g.ring.front().map_or(g.next_seq, |c| c.seq);
        if from < oldest {
            return Err(Error::FeedTruncated { oldest });
        }
        let skip = (from - oldest) as usize;
        let mut changes = Vec::new();
        let mut next = from.max(oldest);
        for c in g.ring.iter().skip(skip) {
            if changes.len() >= max {
                break;
            }
            next = c.seq + 1;
            if filter.matches(c) {
                changes.push(c.clone());
            }
        }
        Ok(FeedBatch {
            changes,
            next_seq: next,
        })
    }

    /// Wait until a change with `seq >= from` exists, or the timeout passes.
    pub fn wait(&self, from: u64, timeout: Duration) -> bool {
        let mut g = self.inner.lock();
        if g.next_seq > from {
            return true;
        }
        self.cv.wait_for(&mut g, timeout);
        g.next_seq > from
    }

    /// Wake every waiter (shutdown).
    pub fn wake_all(&self) {
        self.cv.notify_all();
    }
}
