//! The engine trait: how a store's changes survive (or do not survive) a restart.
//!
//! A store keeps its whole state in memory (like K2HASH's full-mapped mode or Redis) and hands
//! every [`Change`] to its engine before it becomes visible. The engine decides what durability
//! means: the memory engine forgets; the file engine appends to a checksummed log with group
//! commit and compacts it into snapshots. Both pass the same conformance suite.
//!
//! Contract:
//! - [`Engine::append`] is called in sequence order, with the store's sequencer lock held, and
//!   must not block on I/O; it fails only when the engine is poisoned by an earlier I/O error.
//! - [`Engine::commit`] is called without locks and returns once the change is as durable as the
//!   configured fsync policy promises for an acknowledged write.
//! - [`Engine::recover`] replays, in order, every change that was committed before a crash.

use std::fmt;

use crate::change::Change;
use crate::error::Result;

/// A position in an engine's log, for [`Engine::commit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(pub u64);

/// Counters an engine reports.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct EngineStats {
    /// Engine name.
    pub engine: &'static str,
    /// Bytes appended to the log since start.
    pub log_bytes_appended: u64,
    /// Size of the current log generation.
    pub log_bytes_current: u64,
    /// Number of fsync calls.
    pub fsyncs: u64,
    /// Completed compactions.
    pub compactions: u64,
    /// Current log generation.
    pub generation: u64,
}

/// Receives a full snapshot of the state during a compaction.
pub trait SnapshotSink: Send {
    /// One change holding some state (records or queue items).
    fn write(&mut self, change: &Change) -> Result<()>;
    /// The snapshot is complete; `last_seq` is the store's sequence number at its start.
    fn finish(self: Box<Self>, last_seq: u64) -> Result<()>;
}

/// How a store's state is made durable.
pub trait Engine: Send + Sync + fmt::Debug {
    /// Short name for stats and logs.
    fn name(&self) -> &'static str;
    /// Replay everything persisted, in order. Called once, before the first append. Returns
    /// the highest change sequence number seen.
    fn recover(&self, apply: &mut dyn FnMut(Change) -> Result<()>) -> Result<u64>;
    /// Queue a change for persistence (no I/O wait).
    fn append(&self, change: &Change) -> Result<Ticket>;
    /// Wait until `ticket` is durable per the fsync policy.
    fn commit(&self, ticket: Ticket) -> Result<()>;
    /// Write and fsync everything appended so far.
    fn sync(&self) -> Result<()>;
    /// Whether a compaction would shrink the files enough to be worth it.
    fn wants_compaction(&self) -> bool;
    /// Rotate the log (called with the sequencer lock held) and return where the snapshot of
    /// the state goes; `None` when the engine keeps no files.
    fn begin_compaction(&self) -> Result<Option<Box<dyn SnapshotSink>>>;
    /// Counters.
    fn stats(&self) -> EngineStats;
    /// Flush, sync and release files. Idempotent.
    fn close(&self) -> Result<()>;
}

/// The memory engine: nothing is persisted; a restart starts empty.
#[derive(Debug, Default)]
pub struct MemoryEngine;

impl Engine for MemoryEngine {
    fn name(&self) -> &'static str {
        "memory"
    }
    fn recover(&self, _apply: &mut dyn FnMut(Change) -> Result<()>) -> Result<u64> {
        Ok(0)
    }
    fn append(&self, _change: &Change) -> Result<Ticket> {
        Ok(Ticket(0))
    }
    fn commit(&self, _ticket: Ticket) -> Result<()> {
        Ok(())
    }
    fn sync(&self) -> Result<()> {
        Ok(())
    }
    fn wants_compaction(&self) -> bool {
        false
    }
    fn begin_compaction(&self) -> Result<Option<Box<dyn SnapshotSink>>> {
        Ok(None)
    }
    fn stats(&self) -> EngineStats {
        EngineStats {
            engine: "memory",
            ..Default::default()
        }
    }
    fn close(&self) -> Result<()> {
        Ok(())
    }
}
