//! The node storage engine of k2hdkc: the full K2HASH data model, atomic on one node.
//!
//! - [`Store`] holds the data model: values with attributes and versions, TTL and tombstones,
//!   sub-keys and rename, FIFO/LIFO queues and key-queues, CAS counters, per-value encryption,
//!   key scans, the change feed, archives and the transaction hook.
//! - An [`Engine`] decides durability: [`MemoryEngine`] keeps nothing, [`FileEngine`] keeps a
//!   crash-safe checksummed log with group commit and snapshots (also in a temporary mode).
//!   Both engines pass one conformance suite (`tests/conformance.rs`).
//!
//! ```
//! use k2hdkc_storage::{SetMode, Store, StoreConfig, WriteOpts};
//! let store = Store::open(StoreConfig::memory()).unwrap();
//! store.set(b"greeting", b"hello", SetMode::Set, &WriteOpts::default()).unwrap();
//! assert_eq!(store.get(b"greeting", None).unwrap().unwrap().data, b"hello");
//! store.close().unwrap();
//! ```

mod archive;
mod change;
mod clock;
mod counter;
mod crypto;
mod engine;
mod error;
mod feed;
mod file;
mod hook;
mod queue;
mod record;
mod state;
mod store;
mod subkeys;

pub use archive::{ARCHIVE_VERSION, ArchiveStats, verify_archive};
pub use change::{Change, ChangeFilter, ChangeKind, Op, QueueItem, hex};
pub use clock::{Clock, Hlc, ManualClock, SystemClock, Version};
pub use crypto::{Keyring, KeyringConfig, ValueKey};
pub use engine::{Engine, EngineStats, MemoryEngine, SnapshotSink, Ticket};
pub use error::{Error, Limit, Result};
pub use feed::FeedBatch;
pub use file::{FORMAT_VERSION, FileEngine, FileOptions, Fsync};
pub use hook::HookConfig;
pub use queue::{Popped, QueueOpts};
pub use record::{Ext, HistoryEntry, Kind, MAX_KEY_LEN, Meta, Record, RecordRef};
pub use store::{
    Attrs, DeleteOutcome, EngineConfig, Expire, MAX_VALUE_CEILING, ScanPage, SetMode, SetOutcome,
    Store, StoreConfig, StoreStats, SweepStats, Value, ValueRef, Versioned, WriteOpts,
};
