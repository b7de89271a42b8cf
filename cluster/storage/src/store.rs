//! The store: the K2HASH data model (values, attributes, TTL, tombstones, sub-keys, queues,
//! counters, encryption) over the sharded state and an engine.
//!
//! Every mutating operation follows one path: lock the shards of every key it touches, read,
//! decide, build the new records, [`Store::commit`] them (sequence → engine append → apply to
//! memory), release the locks, then wait for the engine's durability ticket. So each operation
//! is atomic on this node, is visible only once logged, and is acknowledged only once durable
//! per the fsync policy. Reads take a shard read lock and never wait for I/O.
//!
//! Expired records are invisible at once; the sweeper turns them into tombstones, and purges
//! tombstones after the grace time, so deletes and expiries can be merged into replicas later.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::change::{Change, ChangeFilter, ChangeKind, Op, QueueItem};
use crate::clock::{Clock, Hlc, SystemClock, Version};
use crate::crypto::{self, Keyring, KeyringConfig};
use crate::engine::{Engine, EngineStats, MemoryEngine, Ticket};
use crate::error::{Error, Limit, Result};
use crate::feed::{Feed, FeedBatch};
use crate::file::{FileEngine, FileOptions, Fsync};
use crate::hook::HookConfig;
use crate::record::{Ext, HistoryEntry, Kind, MAX_KEY_LEN, Meta, Record, RecordRef};
use crate::state::{Locked, State};

/// Hard ceiling of the configurable value size.
pub const MAX_VALUE_CEILING: usize = 64 << 20;

/// Which engine a store uses.
#[derive(Debug, Clone)]
pub enum EngineConfig {
    /// Nothing survives a restart.
    Memory,
    /// Persistent and crash-safe in a directory.
    File(FileOptions),
    /// The file engine in a fresh directory under `parent` (or the system temp dir), removed
    /// at close.
    Temporary {
        /// Where to create the directory.
        parent: Option<PathBuf>,
        /// Fsync policy.
        fsync: Fsync,
    },
}

/// Everything a store is opened with. [`StoreConfig::validate`] checks it.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The engine.
    pub engine: EngineConfig,
    /// This node's id, stamped into versions.
    pub node_id: u32,
    /// Number of lock shards (rounded up to a power of two).
    pub shards: usize,
    /// Largest value, in bytes (default 1 MiB, at most 64 MiB).
    pub max_value_len: usize,
    /// Expiry given to writes that ask for the default (0 = never).
    pub default_ttl_secs: u32,
    /// How long tombstones are kept before they are purged.
    pub tombstone_grace_secs: u32,
    /// Previous versions kept per key (0 = none).
    pub history: usize,
    /// Bytes of recent changes kept for feed readers.
    pub feed_capacity_bytes: usize,
    /// Registered pass phrases and key files.
    pub keyring: KeyringConfig,
    /// Encrypt writes with the default key unless they say otherwise.
    pub encrypt_by_default: bool,
    /// How often the sweeper and compaction check run; `None` runs no background worker.
    pub maintenance_interval: Option<Duration>,
    /// The transaction hook, if any.
    pub hook: Option<HookConfig>,
    /// The wall clock.
    pub clock: Arc<dyn Clock>,
}

impl StoreConfig {
    /// A memory store with defaults.
    pub fn memory() -> StoreConfig {
        StoreConfig {
            engine: EngineConfig::Memory,
            node_id: 0,
            shards: 64,
            max_value_len: 1 << 20,
            default_ttl_secs: 0,
            tombstone_grace_secs: 3600,
            history: 0,
            feed_capacity_bytes: 8 << 20,
            keyring: KeyringConfig::default(),
            encrypt_by_default: false,
            maintenance_interval: Some(Duration::from_secs(1)),
            hook: None,
            clock: Arc::new(SystemClock),
        }
    }

    /// A file store in `dir` with defaults.
    pub fn file(dir: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            engine: EngineConfig::File(FileOptions::new(dir)),
            ..StoreConfig::memory()
        }
    }

    /// Check ranges and combinations.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if self.max_value_len == 0 || self.max_value_len > MAX_VALUE_CEILING {
            return bad(format!("max_value_len must be 1..={MAX_VALUE_CEILING}"));
        }
        if self.history > 1000 {
            return bad("history must be at most 1000".into());
        }
        if self.encrypt_by_default && self.keyring.default.is_none() {
            return bad("encrypt_by_default needs a default pass phrase".into());
        }
        if let Some(h) = &self.hook {
            h.validate()?;
            if self.feed_capacity_bytes == 0 {
                return bad("the transaction hook needs feed_capacity_bytes > 0".into());
            }
        }
        Ok(())
    }
}

/// When a write expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Expire {
    /// The store's default TTL.
    #[default]
    Default,
    /// Keep the record's current expiry (new records get the default).
    Keep,
    /// Never.
    Never,
    /// At this unix time in seconds; a time in the past means already expired.
    At(u32),
    /// This many seconds from now.
    After(u32),
}

/// How a write treats an existing value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SetMode {
    /// Write unconditionally.
    #[default]
    Set,
    /// Only if absent.
    Add,
    /// Only if present.
    Replace,
    /// Add to the end of an existing value.
    Append,
    /// Add to the start of an existing value.
    Prepend,
}

/// Options of a write.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteOpts<'a> {
    /// Client flags; `None` keeps the existing ones (0 for a new key).
    pub flags: Option<u32>,
    /// Expiry.
    pub expire: Expire,
    /// Per-request pass phrase: encrypt with it (and open the old value with it).
    pub pass: Option<&'a [u8]>,
    /// Force encryption on or off; `None` follows the store's default.
    pub encrypt: Option<bool>,
    /// Check-and-set: only write if the current cas unique is this.
    pub cas: Option<u64>,
}

/// Result of [`Store::set_versioned`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versioned {
    /// Written at this feed position.
    Applied {
        /// Feed position.
        seq: u64,
    },
    /// The record here is this version, not older than the one given: nothing written.
    Stale(Version),
    /// The record needs more than the request (see [`Store::set_versioned`]).
    Ineligible,
}

/// Result of a conditional write, in memcached's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOutcome {
    /// Written; the new cas unique.
    Stored {
        /// New cas unique.
        cas: u64,
    },
    /// A condition on presence failed (add, replace, append, prepend).
    NotStored,
    /// The cas unique did not match.
    Exists,
    /// A cas was given and the key does not exist.
    NotFound,
}

/// Result of a delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// Deleted (a tombstone was left).
    Deleted,
    /// No live key.
    NotFound,
    /// The cas unique did not match.
    Exists,
}

/// A value read from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    /// The value (decrypted).
    pub data: Vec<u8>,
    /// Client flags.
    pub flags: u32,
    /// cas unique.
    pub cas: u64,
    /// Version of the last change.
    pub version: Version,
    /// Expiry (unix seconds, 0 = never).
    pub expire: u32,
    /// Creation time (unix seconds).
    pub created: u32,
    /// Kind of data.
    pub kind: Kind,
    /// Whether it is stored encrypted.
    pub encrypted: bool,
}

/// A value lent to a closure without copying (see [`Store::get_with`]).
#[derive(Debug, Clone, Copy)]
pub struct ValueRef<'a> {
    /// The value (decrypted).
    pub data: &'a [u8],
    /// All attributes.
    pub meta: Meta,
}

/// Attributes of a key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Attrs {
    /// Kind name.
    pub kind: &'static str,
    /// Client flags.
    pub flags: u32,
    /// cas unique.
    pub cas: u64,
    /// Version, as text.
    pub version: String,
    /// Expiry (unix seconds, 0 = never).
    pub expire: u32,
    /// Creation time (unix seconds).
    pub created: u32,
    /// Last modification time (unix milliseconds, from the version).
    pub modified_ms: u64,
    /// Stored encrypted.
    pub encrypted: bool,
    /// Stored value length (the envelope when encrypted).
    pub stored_len: usize,
    /// Number of sub-keys.
    pub subkeys: usize,
    /// Number of history entries.
    pub history: usize,
}

/// One page of a key scan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanPage {
    /// Keys in ascending byte order.
    pub keys: Vec<Vec<u8>>,
    /// Pass as `after` to get the next page; `None` at the end.
    pub next: Option<Vec<u8>>,
}

/// Counters of a store.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StoreStats {
    /// Live records plus tombstones.
    pub records: usize,
    /// Tombstones.
    pub tombstones: usize,
    /// Heap bytes of record blobs.
    pub record_bytes: usize,
    /// Queues.
    pub queues: usize,
    /// Items in all queues.
    pub queue_items: usize,
    /// Last change sequence number.
    pub last_seq: u64,
    /// Engine counters.
    pub engine: EngineStats,
}

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepStats {
    /// Expired records turned into tombstones.
    pub expired: usize,
    /// Tombstones purged.
    pub purged: usize,
    /// Expired queue items removed.
    pub queue_items: usize,
}

pub(crate) struct Inner {
    pub(crate) max_value_len: usize,
    pub(crate) default_ttl: u32,
    pub(crate) grace: u32,
    pub(crate) history: usize,
    pub(crate) encrypt_by_default: bool,
    /// Whether a delete of a key this store lacks still leaves a tombstone (see
    /// [`Store::set_tombstone_absent`]).
    tombstone_absent: AtomicBool,
    pub(crate) state: State,
    pub(crate) engine: Box<dyn Engine>,
    pub(crate) feed: Feed,
    pub(crate) hlc: Hlc,
    pub(crate) keyring: Keyring,
    closed: AtomicBool,
    compacting: Mutex<()>,
    sweep_cursor: std::sync::atomic::AtomicUsize,
    stop: Mutex<bool>,
    stop_cv: Condvar,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

/// A node's store. Cheap to clone; all clones share one state.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("engine", &self.inner.engine)
            .finish()
    }
}

fn temp_dir(parent: Option<&PathBuf>) -> Result<PathBuf> {
    let base = parent.cloned().unwrap_or_else(std::env::temp_dir);
    let mut r = [0u8; 8];
    openssl::rand::rand_bytes(&mut r)?;
    Ok(base.join(format!(
        "k2hdkc-tmp-{}-{}",
        std::process::id(),
        crate::change::hex(&r)
    )))
}

impl Store {
    /// Open a store: build the engine, replay what it persisted, start the workers.
    pub fn open(cfg: StoreConfig) -> Result<Store> {
        cfg.validate()?;
        let engine: Box<dyn Engine> = match &cfg.engine {
            EngineConfig::Memory => Box::new(MemoryEngine),
            EngineConfig::File(o) => Box::new(FileEngine::open(o.clone())?),
            EngineConfig::Temporary { parent, fsync } => {
                let mut o = FileOptions::new(temp_dir(parent.as_ref())?);
                o.fsync = *fsync;
                o.remove_on_close = true;
                Box::new(FileEngine::open(o)?)
            }
        };
        let inner = Arc::new(Inner {
            max_value_len: cfg.max_value_len,
            default_ttl: cfg.default_ttl_secs,
            grace: cfg.tombstone_grace_secs,
            history: cfg.history,
            encrypt_by_default: cfg.encrypt_by_default,
            tombstone_absent: AtomicBool::new(false),
            state: State::new(cfg.shards),
            engine,
            feed: Feed::new(cfg.feed_capacity_bytes),
            hlc: Hlc::new(cfg.node_id, cfg.clock.clone()),
            keyring: Keyring::new(&cfg.keyring)?,
            closed: AtomicBool::new(false),
            compacting: Mutex::new(()),
            sweep_cursor: std::sync::atomic::AtomicUsize::new(0),
            stop: Mutex::new(false),
            stop_cv: Condvar::new(),
            workers: Mutex::new(Vec::new()),
        });
        let last = {
            let i = &inner;
            i.engine.recover(&mut |c: Change| {
                for op in &c.ops {
                    if let Op::Put(r) = op {
                        i.hlc.observe(r.view().version());
                    }
                }
                i.hlc.observe(c.version);
                if c.seq > 0 {
                    i.feed.recovered(&c);
                }
                for op in c.ops {
                    i.state.apply_unlocked(op);
                }
                Ok(())
            })?
        };
        inner.feed.set_last(last);
        let store = Store { inner };
        if let Some(every) = cfg.maintenance_interval {
            store.spawn_worker("k2hdkc-maintenance", every, |s| {
                if let Err(e) = s.sweep_step() {
                    tracing::warn!(error = %e, "sweep failed");
                }
                if s.inner.engine.wants_compaction()
                    && let Err(e) = s.compact()
                {
                    tracing::warn!(error = %e, "compaction failed");
                }
            });
        }
        if let Some(h) = cfg.hook {
            crate::hook::start(&store, h)?;
        }
        Ok(store)
    }

    /// Run `tick` every `every` on a named thread until the store closes. The thread holds
    /// only a weak reference, so dropping the last `Store` ends it.
    pub(crate) fn spawn_worker(
        &self,
        name: &str,
        every: Duration,
        tick: impl Fn(&Store) + Send + 'static,
    ) {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let h = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                loop {
                    {
                        let Some(inner) = weak.upgrade() else { return };
                        let mut stop = inner.stop.lock();
                        if *stop {
                            return;
                        }
                        inner.stop_cv.wait_for(&mut stop, every);
                        if *stop {
                            return;
                        }
                    }
                    let Some(inner) = weak.upgrade() else { return };
                    tick(&Store { inner });
                }
            })
            .expect("spawn worker thread");
        self.inner.workers.lock().push(h);
    }

    pub(crate) fn inner_workers_push(&self, h: JoinHandle<()>) {
        self.inner.workers.lock().push(h);
    }

    /// Whether the store has been asked to stop.
    pub(crate) fn stopping(&self) -> bool {
        *self.inner.stop.lock()
    }

    /// Sleep up to `d`, waking early when the store stops; returns whether it is stopping.
    pub(crate) fn sleep(&self, d: Duration) -> bool {
        let mut stop = self.inner.stop.lock();
        if !*stop {
            self.inner.stop_cv.wait_for(&mut stop, d);
        }
        *stop
    }

    /// Stop the workers, flush and fsync, release the files. Later writes fail.
    pub fn close(&self) -> Result<()> {
        self.inner.closed.store(true, Ordering::SeqCst);
        {
            *self.inner.stop.lock() = true;
            self.inner.stop_cv.notify_all();
            self.inner.feed.wake_all();
        }
        let me = std::thread::current().id();
        let hs: Vec<_> = std::mem::take(&mut *self.inner.workers.lock());
        for h in hs {
            if h.thread().id() != me {
                let _ = h.join();
            }
        }
        self.inner.engine.close()
    }

    // ---- shared helpers -------------------------------------------------------------------

    pub(crate) fn now(&self) -> u32 {
        self.inner.hlc.clock().now_secs()
    }

    /// The store's clock, in unix seconds (what expiry times are compared with).
    pub fn now_secs(&self) -> u32 {
        self.now()
    }

    /// The store's clock, in unix milliseconds (HLC timestamps are this << 16).
    pub fn now_ms(&self) -> u64 {
        self.inner.hlc.clock().now_ms()
    }

    pub(crate) fn check_key(&self, key: &[u8]) -> Result<()> {
        if key.is_empty() {
            return Err(Error::InvalidArgument("empty key".into()));
        }
        if key.len() > MAX_KEY_LEN {
            return Err(Error::TooLarge {
                what: Limit::Key,
                size: key.len(),
                max: MAX_KEY_LEN,
            });
        }
        Ok(())
    }

    pub(crate) fn check_value(&self, len: usize) -> Result<()> {
        if len > self.inner.max_value_len {
            return Err(Error::TooLarge {
                what: Limit::Value,
                size: len,
                max: self.inner.max_value_len,
            });
        }
        Ok(())
    }

    /// Absolute expiry for a write; `old` is the current record's expiry, if live.
    pub(crate) fn expire_at(&self, e: Expire, old: Option<u32>, now: u32) -> u32 {
        let default = || {
            if self.inner.default_ttl == 0 {
                0
            } else {
                now.saturating_add(self.inner.default_ttl)
            }
        };
        match e {
            Expire::Default => default(),
            Expire::Keep => old.unwrap_or_else(default),
            Expire::Never => 0,
            // 0 would mean "never": an instant in the past becomes "expired a second ago".
            Expire::At(t) => t.max(1),
            Expire::After(s) => now.saturating_add(s).max(1),
        }
    }

    /// The plaintext of a stored value.
    pub(crate) fn open_value<'a>(
        &self,
        aad: &[u8],
        stored: &'a [u8],
        encrypted: bool,
        pass: Option<&[u8]>,
    ) -> Result<Cow<'a, [u8]>> {
        if !encrypted {
            return Ok(Cow::Borrowed(stored));
        }
        let k = self.inner.keyring.key_for(stored, pass)?;
        Ok(Cow::Owned(crypto::open(&k, aad, stored)?))
    }

    /// The stored form of a value: encrypted when asked, or by default, or (`keep`) with the
    /// key that encrypted the value it replaces.
    pub(crate) fn seal_value(
        &self,
        aad: &[u8],
        plain: Vec<u8>,
        pass: Option<&[u8]>,
        encrypt: Option<bool>,
        keep: Option<&[u8]>,
    ) -> Result<(Vec<u8>, bool)> {
        let key = match (pass, encrypt) {
            (_, Some(false)) => None,
            (Some(p), _) => Some(self.inner.keyring.for_phrase(p)?),
            (None, Some(true)) => match keep {
                Some(env) => Some(self.inner.keyring.key_for(env, None)?),
                None => Some(self.inner.keyring.default_key().ok_or_else(|| {
                    Error::InvalidArgument(
                        "encryption asked for, but no default pass phrase is set".into(),
                    )
                })?),
            },
            (None, None) => match keep {
                Some(env) => Some(self.inner.keyring.key_for(env, None)?),
                None if self.inner.encrypt_by_default => self.inner.keyring.default_key(),
                None => None,
            },
        };
        match key {
            Some(k) => Ok((crypto::seal(&k, aad, &plain)?, true)),
            None => Ok((plain, false)),
        }
    }

    /// Sequence, log and apply one change under held locks; returns the durability ticket.
    pub(crate) fn commit(
        &self,
        l: &mut Locked<'_>,
        version: Version,
        kind: ChangeKind,
        ops: Vec<Op>,
    ) -> Result<Ticket> {
        self.commit_seq(l, version, kind, ops).map(|(_, t)| t)
    }

    /// [`Store::commit`], also returning the change's feed position.
    fn commit_seq(
        &self,
        l: &mut Locked<'_>,
        version: Version,
        kind: ChangeKind,
        ops: Vec<Op>,
    ) -> Result<(u64, Ticket)> {
        if self.inner.closed.load(Ordering::Relaxed) {
            return Err(Error::Closed("store is closed".into()));
        }
        l.check(&ops)?;
        let (change, t) = self.inner.feed.sequence(
            &*self.inner.engine,
            Change {
                seq: 0,
                version,
                kind,
                ops,
            },
        )?;
        let seq = change.seq;
        l.apply(change.ops);
        Ok((seq, t))
    }

    /// Commit one change, release the locks, then wait for its durability.
    pub(crate) fn commit_and_wait(
        &self,
        mut l: Locked<'_>,
        version: Version,
        kind: ChangeKind,
        ops: Vec<Op>,
    ) -> Result<()> {
        let t = self.commit(&mut l, version, kind, ops)?;
        drop(l);
        self.durable(t)
    }

    /// Wait for durability of a committed change (call without locks).
    pub(crate) fn durable(&self, t: Ticket) -> Result<()> {
        self.inner.engine.commit(t)
    }

    pub(crate) fn tombstone(&self, old: RecordRef<'_>, version: Version, now: u32) -> Record {
        let meta = self.tombstone_meta(version, now, old.created());
        Record::build(old.key(), b"", &meta, None)
    }

    /// A tombstone's metadata: kept for the grace time from `now`.
    fn tombstone_meta(&self, version: Version, now: u32, created: u32) -> Meta {
        Meta {
            kind: Kind::Tombstone,
            encrypted: false,
            flags: 0,
            version,
            expire: now.saturating_add(self.inner.grace).max(1),
            created,
        }
    }

    /// Ext of the record that replaces `old` (sub-keys kept; history extended if enabled).
    pub(crate) fn next_ext(&self, old: Option<RecordRef<'_>>) -> Option<Ext> {
        let old = old?;
        if !old.has_ext() && (self.inner.history == 0 || old.kind() != Kind::Value) {
            return None;
        }
        let mut ext = old.ext();
        if self.inner.history > 0 && old.kind() == Kind::Value {
            ext.history.insert(
                0,
                HistoryEntry {
                    version: old.version(),
                    flags: old.flags(),
                    encrypted: old.encrypted(),
                    value: old.value().into(),
                },
            );
            ext.history.truncate(self.inner.history);
        }
        Some(ext)
    }

    fn to_value(&self, r: RecordRef<'_>, pass: Option<&[u8]>) -> Result<Value> {
        let data = self
            .open_value(r.key(), r.value(), r.encrypted(), pass)?
            .into_owned();
        let m = r.meta();
        Ok(Value {
            data,
            flags: m.flags,
            cas: m.version.ts,
            version: m.version,
            expire: m.expire,
            created: m.created,
            kind: m.kind,
            encrypted: m.encrypted,
        })
    }

    // ---- plain values ---------------------------------------------------------------------

    /// Read a live value.
    pub fn get(&self, key: &[u8], pass: Option<&[u8]>) -> Result<Option<Value>> {
        let now = self.now();
        self.inner
            .state
            .read(key, |r| match r.filter(|r| r.is_live(now)) {
                Some(r) => self.to_value(r, pass).map(Some),
                None => Ok(None),
            })
    }

    /// Lend a live value to `f` without copying it (decrypting if needed).
    pub fn get_with<R>(
        &self,
        key: &[u8],
        pass: Option<&[u8]>,
        f: impl FnOnce(ValueRef<'_>) -> R,
    ) -> Result<Option<R>> {
        let now = self.now();
        self.inner
            .state
            .read(key, |r| match r.filter(|r| r.is_live(now)) {
                Some(r) => {
                    let data = self.open_value(r.key(), r.value(), r.encrypted(), pass)?;
                    Ok(Some(f(ValueRef {
                        data: &data,
                        meta: r.meta(),
                    })))
                }
                None => Ok(None),
            })
    }

    /// Whether a live key exists.
    pub fn contains(&self, key: &[u8]) -> bool {
        let now = self.now();
        self.inner
            .state
            .read(key, |r| r.is_some_and(|r| r.is_live(now)))
    }

    /// Write a value.
    pub fn set(
        &self,
        key: &[u8],
        value: &[u8],
        mode: SetMode,
        opts: &WriteOpts<'_>,
    ) -> Result<SetOutcome> {
        self.check_key(key)?;
        self.check_value(value.len())?;
        let l = self.inner.state.lock(&[key]);
        // One clock read per write: the version, taken under the lock so that versions of one
        // key increase in commit order, also gives "now".
        let version = self.inner.hlc.now();
        let now = (version.millis() / 1000).min(u32::MAX as u64) as u32;
        let old = l.get(key)?.filter(|r| r.is_live(now));
        match (mode, old.is_some()) {
            (SetMode::Add, true) => return Ok(SetOutcome::NotStored),
            (SetMode::Replace | SetMode::Append | SetMode::Prepend, false)
                if opts.cas.is_none() =>
            {
                return Ok(SetOutcome::NotStored);
            }
            _ => {}
        }
        if let Some(cas) = opts.cas {
            match old {
                None => return Ok(SetOutcome::NotFound),
                Some(r) if r.version().ts != cas => return Ok(SetOutcome::Exists),
                _ => {}
            }
        }
        let concat = matches!(mode, SetMode::Append | SetMode::Prepend);
        let (plain, keep) = match (concat, old) {
            (true, Some(o)) => {
                if o.kind() != Kind::Value {
                    return Err(Error::NotSameType {
                        expected: Kind::Value.name(),
                        found: o.kind().name(),
                    });
                }
                let cur = self.open_value(key, o.value(), o.encrypted(), opts.pass)?;
                self.check_value(cur.len() + value.len())?;
                let mut v = Vec::with_capacity(cur.len() + value.len());
                if mode == SetMode::Append {
                    v.extend_from_slice(&cur);
                    v.extend_from_slice(value);
                } else {
                    v.extend_from_slice(value);
                    v.extend_from_slice(&cur);
                }
                (v, o.encrypted().then(|| o.value()))
            }
            _ => (value.to_vec(), None),
        };
        let (stored, encrypted) = self.seal_value(key, plain, opts.pass, opts.encrypt, keep)?;
        let expire = if concat {
            self.expire_at(Expire::Keep, old.map(|o| o.expire()), now)
        } else {
            self.expire_at(opts.expire, old.map(|o| o.expire()), now)
        };
        let meta = Meta {
            kind: Kind::Value,
            encrypted,
            flags: opts
                .flags
                .or(concat.then(|| old.map(|o| o.flags())).flatten())
                .unwrap_or(0),
            version,
            expire,
            created: old.map_or(now, |o| o.created()),
        };
        let ext = self.next_ext(old);
        let rec = Record::build(key, &stored, &meta, ext.as_ref());
        self.commit_and_wait(l, version, ChangeKind::Set, vec![Op::Put(rec)])?;
        Ok(SetOutcome::Stored { cas: version.ts })
    }

    /// A new version from this store's clock (a gateway stamps the plain sets it sends to
    /// the owners itself; see [`Store::set_versioned`]).
    pub fn next_version(&self) -> Version {
        self.inner.hlc.now()
    }

    /// Let this store's clock pass `v` (a version seen in another node's reply).
    pub fn observe_version(&self, v: Version) {
        self.inner.hlc.observe(v);
    }

    /// A plain set whose version was chosen by the sender (a gateway writing to every owner
    /// of the key at once): it applies only if `version` is newer than the key's record here
    /// (tombstones included), builds the record from this store's own state like [`Store::set`]
    /// would, and enters the feed as the sender's own write (`import == false`, the primary,
    /// which streams it to the other owners) or as an import (a replica).
    ///
    /// Only records that need nothing but the request are written this way: a key with
    /// sub-keys or history, an encrypted value, or a store that encrypts or keeps history
    /// answers [`Versioned::Ineligible`], and the sender goes through the primary instead, so
    /// that every owner builds the same record from the same request.
    pub fn set_versioned(
        &self,
        key: &[u8],
        value: &[u8],
        flags: u32,
        expire: Expire,
        version: Version,
        import: bool,
    ) -> Result<Versioned> {
        self.check_key(key)?;
        self.check_value(value.len())?;
        self.check_import_version(version)?;
        if self.inner.encrypt_by_default || self.inner.history > 0 {
            return Ok(Versioned::Ineligible);
        }
        let mut l = self.inner.state.lock(&[key]);
        let old = l.get(key)?;
        if let Some(o) = old {
            if o.version() >= version {
                return Ok(Versioned::Stale(o.version()));
            }
            if o.has_ext() || o.encrypted() {
                return Ok(Versioned::Ineligible);
            }
        }
        self.inner.hlc.observe(version);
        let now = (version.millis() / 1000).min(u32::MAX as u64) as u32;
        let live = old.filter(|r| r.is_live(now));
        let meta = Meta {
            kind: Kind::Value,
            encrypted: false,
            flags,
            version,
            expire: self.expire_at(expire, live.map(|o| o.expire()), now),
            created: live.map_or(now, |o| o.created()),
        };
        let rec = Record::build(key, value, &meta, None);
        let kind = if import {
            ChangeKind::Import
        } else {
            ChangeKind::Set
        };
        // The change's own version is this clock's, as for imports: the feed's versions then
        // keep increasing with its positions however far behind the sender's clock is.
        let at = self.inner.hlc.now();
        let (seq, t) = self.commit_seq(&mut l, at, kind, vec![Op::Put(rec)])?;
        drop(l);
        self.durable(t)?;
        Ok(Versioned::Applied { seq })
    }

    /// Put `rec` in place of the record of the same key and version when the two differ
    /// (an import that last-writer-wins would skip, being no newer): a replica that built a
    /// gateway's set from its own state takes the primary's record of it instead. Returns the
    /// feed position of the change, or `None` when nothing was written.
    pub fn replace_same_version(&self, rec: &Record) -> Result<Option<u64>> {
        let v = rec.view();
        let mut l = self.inner.state.lock(&[v.key()]);
        let same = match l.get(v.key())? {
            Some(cur) => cur.version() == v.version() && cur.as_bytes() != v.as_bytes(),
            None => false,
        };
        if !same {
            return Ok(None);
        }
        let at = self.inner.hlc.now();
        let (seq, t) =
            self.commit_seq(&mut l, at, ChangeKind::Import, vec![Op::Put(rec.clone())])?;
        drop(l);
        self.durable(t)?;
        Ok(Some(seq))
    }

    /// Delete a key, leaving a tombstone.
    pub fn delete(&self, key: &[u8], cas: Option<u64>) -> Result<DeleteOutcome> {
        self.check_key(key)?;
        let l = self.inner.state.lock(&[key]);
        let now = self.now();
        let Some(old) = l.get(key)?.filter(|r| r.is_live(now)) else {
            if cas.is_none() && self.inner.tombstone_absent.load(Ordering::Relaxed) {
                // A copy of the key elsewhere (one this store missed) must not outlive the
                // delete: the tombstone supersedes it wherever it travels.
                let version = self.inner.hlc.now();
                let meta = self.tombstone_meta(version, now, now);
                let tomb = Record::build(key, b"", &meta, None);
                self.commit_and_wait(l, version, ChangeKind::Delete, vec![Op::Put(tomb)])?;
            }
            return Ok(DeleteOutcome::NotFound);
        };
        if cas.is_some_and(|c| c != old.version().ts) {
            return Ok(DeleteOutcome::Exists);
        }
        let version = self.inner.hlc.now();
        let tomb = self.tombstone(old, version, now);
        self.commit_and_wait(l, version, ChangeKind::Delete, vec![Op::Put(tomb)])?;
        Ok(DeleteOutcome::Deleted)
    }

    /// Make a delete of a key this store lacks (or holds expired) leave a tombstone all the
    /// same, still answering "not found": a cluster's primary turns it on, since a replica
    /// may hold a copy the primary missed, which the delete must supersede (without the
    /// tombstone, a read that asks the replicas would bring the deleted value back).
    pub fn set_tombstone_absent(&self, on: bool) {
        self.inner.tombstone_absent.store(on, Ordering::Relaxed);
    }

    /// Change a live key's expiry; `get` also returns the value (memcached `gat`).
    pub fn touch(
        &self,
        key: &[u8],
        expire: Expire,
        get: bool,
        pass: Option<&[u8]>,
    ) -> Result<Option<Value>> {
        self.check_key(key)?;
        let l = self.inner.state.lock(&[key]);
        let now = self.now();
        let Some(old) = l.get(key)?.filter(|r| r.is_live(now)) else {
            return Ok(None);
        };
        let value = if get {
            let mut v = self.to_value(old, pass)?;
            v.expire = self.expire_at(expire, Some(old.expire()), now);
            Some(v)
        } else {
            None
        };
        // The change is sequenced under a fresh version, but the record keeps the version of
        // its value: a touch is not a write, so the cas unique stays (as in memcached) and a
        // replica holding the same value does not see it as newer data.
        let change = self.inner.hlc.now();
        let mut meta = old.meta();
        meta.expire = self.expire_at(expire, Some(old.expire()), now);
        let ext = old.has_ext().then(|| old.ext());
        let rec = Record::build(key, old.value(), &meta, ext.as_ref());
        self.commit_and_wait(l, change, ChangeKind::Attr, vec![Op::Put(rec)])?;
        Ok(Some(value.unwrap_or(Value {
            data: Vec::new(),
            flags: meta.flags,
            cas: meta.version.ts,
            version: meta.version,
            expire: meta.expire,
            created: meta.created,
            kind: meta.kind,
            encrypted: meta.encrypted,
        })))
    }

    /// Read `len` bytes (to the end when `None`) at `offset` of a live value.
    pub fn read_at(
        &self,
        key: &[u8],
        offset: usize,
        len: Option<usize>,
        pass: Option<&[u8]>,
    ) -> Result<Option<Vec<u8>>> {
        self.get_with(key, pass, |v| {
            let start = offset.min(v.data.len());
            let end = len.map_or(v.data.len(), |n| start.saturating_add(n).min(v.data.len()));
            v.data[start..end].to_vec()
        })
    }

    /// Overwrite bytes at `offset` of a value (created if absent, padded with zero bytes).
    pub fn write_at(
        &self,
        key: &[u8],
        offset: usize,
        data: &[u8],
        opts: &WriteOpts<'_>,
    ) -> Result<SetOutcome> {
        self.check_key(key)?;
        let end = offset
            .checked_add(data.len())
            .ok_or_else(|| Error::InvalidArgument("offset overflow".into()))?;
        let l = self.inner.state.lock(&[key]);
        let now = self.now();
        let old = l.get(key)?.filter(|r| r.is_live(now));
        if let Some(cas) = opts.cas
            && old.is_none_or(|o| o.version().ts != cas)
        {
            return Ok(if old.is_none() {
                SetOutcome::NotFound
            } else {
                SetOutcome::Exists
            });
        }
        if let Some(o) = old
            && o.kind() != Kind::Value
        {
            return Err(Error::NotSameType {
                expected: Kind::Value.name(),
                found: o.kind().name(),
            });
        }
        let cur = match old {
            Some(o) => self.open_value(key, o.value(), o.encrypted(), opts.pass)?,
            None => Cow::Borrowed(&[][..]),
        };
        self.check_value(end.max(cur.len()))?;
        let mut v = cur.into_owned();
        if v.len() < end {
            v.resize(end, 0);
        }
        v[offset..end].copy_from_slice(data);
        let keep = old.filter(|o| o.encrypted()).map(|o| o.value());
        let (stored, encrypted) = self.seal_value(key, v, opts.pass, opts.encrypt, keep)?;
        let version = self.inner.hlc.now();
        let meta = Meta {
            kind: Kind::Value,
            encrypted,
            flags: opts.flags.or(old.map(|o| o.flags())).unwrap_or(0),
            version,
            expire: self.expire_at(
                if opts.expire == Expire::Default {
                    Expire::Keep
                } else {
                    opts.expire
                },
                old.map(|o| o.expire()),
                now,
            ),
            created: old.map_or(now, |o| o.created()),
        };
        let ext = self.next_ext(old);
        let rec = Record::build(key, &stored, &meta, ext.as_ref());
        self.commit_and_wait(l, version, ChangeKind::Set, vec![Op::Put(rec)])?;
        Ok(SetOutcome::Stored { cas: version.ts })
    }

    /// Attributes of a live key.
    pub fn attrs(&self, key: &[u8]) -> Result<Option<Attrs>> {
        let now = self.now();
        Ok(self.inner.state.read(key, |r| {
            r.filter(|r| r.is_live(now)).map(|r| {
                let m = r.meta();
                let ext = r.ext();
                Attrs {
                    kind: m.kind.name(),
                    flags: m.flags,
                    cas: m.version.ts,
                    version: m.version.to_string(),
                    expire: m.expire,
                    created: m.created,
                    modified_ms: m.version.millis(),
                    encrypted: m.encrypted,
                    stored_len: r.value().len(),
                    subkeys: ext.subkeys.len(),
                    history: ext.history.len(),
                }
            })
        }))
    }

    /// Previous versions of a live key, newest first, decrypted where possible.
    pub fn history(&self, key: &[u8], pass: Option<&[u8]>) -> Result<Vec<(Version, Vec<u8>)>> {
        let now = self.now();
        self.inner.state.read(key, |r| {
            let Some(r) = r.filter(|r| r.is_live(now)) else {
                return Ok(Vec::new());
            };
            r.ext()
                .history
                .iter()
                .map(|h| {
                    Ok((
                        h.version,
                        self.open_value(key, &h.value, h.encrypted, pass)?
                            .into_owned(),
                    ))
                })
                .collect()
        })
    }

    /// memcached `incr`/`decr` on a decimal value: incr wraps at 2^64, decr stops at 0.
    /// Returns the new value and cas, or `None` when the key is absent.
    pub fn incr_decimal(&self, key: &[u8], delta: u64, decr: bool) -> Result<Option<(u64, u64)>> {
        self.check_key(key)?;
        let l = self.inner.state.lock(&[key]);
        let now = self.now();
        let Some(old) = l.get(key)?.filter(|r| r.is_live(now)) else {
            return Ok(None);
        };
        if old.kind() != Kind::Value {
            return Err(Error::NotSameType {
                expected: Kind::Value.name(),
                found: old.kind().name(),
            });
        }
        let cur = self.open_value(key, old.value(), old.encrypted(), None)?;
        let n = parse_counter_text(&cur).ok_or(Error::NotNumeric)?;
        let new = if decr {
            n.saturating_sub(delta)
        } else {
            n.wrapping_add(delta)
        };
        let mut text = new.to_string().into_bytes();
        // A shorter number keeps the value's length, padded with spaces (memcached rewrites
        // the item in place), so clients that read fixed-width counters see what they expect.
        if text.len() < cur.len() {
            text.resize(cur.len(), b' ');
        }
        let keep = old.encrypted().then(|| old.value());
        let (stored, encrypted) = self.seal_value(key, text, None, None, keep)?;
        let version = self.inner.hlc.now();
        let mut meta = old.meta();
        meta.version = version;
        meta.encrypted = encrypted;
        let ext = self.next_ext(Some(old));
        let rec = Record::build(key, &stored, &meta, ext.as_ref());
        self.commit_and_wait(l, version, ChangeKind::Set, vec![Op::Put(rec)])?;
        Ok(Some((new, version.ts)))
    }

    /// Delete every live record (tombstones are left, so replicas learn of it). Returns how
    /// many were deleted. Queues are not touched.
    pub fn flush_all(&self) -> Result<usize> {
        let mut l = self.inner.state.lock_all();
        let now = self.now();
        let per_shard: Vec<Vec<Vec<u8>>> = l
            .shards_mut()
            .map(|s| {
                s.records
                    .iter()
                    .filter(|r| r.view().is_live(now))
                    .map(|r| r.view().key().to_vec())
                    .collect()
            })
            .collect();
        let mut last = None;
        let mut count = 0;
        for keys in per_shard.into_iter().filter(|k| !k.is_empty()) {
            let version = self.inner.hlc.now();
            let meta = self.tombstone_meta(version, now, now);
            count += keys.len();
            let ops = keys
                .iter()
                .map(|k| Op::Put(Record::build(k, b"", &meta, None)))
                .collect();
            last = Some(self.commit(&mut l, version, ChangeKind::Flush, ops)?);
        }
        drop(l);
        if let Some(t) = last {
            self.durable(t)?;
        }
        Ok(count)
    }

    // ---- scans, feed, stats ---------------------------------------------------------------

    /// Live keys with `prefix`, after `after`, in ascending order, at most `limit`.
    /// Cost: one pass over the keys per page (the tables are hashed, not ordered).
    pub fn scan(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Result<ScanPage> {
        if limit == 0 {
            return Err(Error::InvalidArgument(
                "scan limit must be at least 1".into(),
            ));
        }
        let now = self.now();
        let mut heap: std::collections::BinaryHeap<Vec<u8>> = std::collections::BinaryHeap::new();
        for i in 0..self.inner.state.shard_count() {
            let s = self.inner.state.read_shard(i);
            for r in s.records.iter() {
                let v = r.view();
                let k = v.key();
                if !k.starts_with(prefix) || after.is_some_and(|a| k <= a) || !v.is_live(now) {
                    continue;
                }
                if heap.len() < limit {
                    heap.push(k.to_vec());
                } else if heap.peek().is_some_and(|top| k < top.as_slice()) {
                    heap.pop();
                    heap.push(k.to_vec());
                }
            }
        }
        let keys = heap.into_sorted_vec();
        let next = (keys.len() == limit).then(|| keys[limit - 1].clone());
        Ok(ScanPage { keys, next })
    }

    /// Changes since `from` (a sequence number) that pass `filter`, at most `max`.
    pub fn feed_read(&self, from: u64, filter: &ChangeFilter, max: usize) -> Result<FeedBatch> {
        self.inner.feed.read(from, filter, max)
    }

    /// Wait until a change numbered `from` or later exists.
    pub fn feed_wait(&self, from: u64, timeout: Duration) -> bool {
        self.inner.feed.wait(from, timeout)
    }

    /// The last change sequence number.
    pub fn last_seq(&self) -> u64 {
        self.inner.feed.last_seq()
    }

    /// The current state of every record (tombstones included) and queue item whose version
    /// is newer than `since`, as changes ordered by version: how a reader resynchronises when
    /// the feed no longer holds its position, and what an incremental archive holds.
    pub fn changes_since_version(&self, since: Version, filter: &ChangeFilter) -> Vec<Change> {
        let mut out = Vec::new();
        self.for_each_state(since, &mut |c| {
            if filter.matches(&c) {
                out.push(c);
            }
            Ok(())
        })
        .expect("collecting into memory cannot fail");
        out.sort_by_key(|c| c.version);
        out
    }

    /// Order-independent digests of the records (tombstones included) and queue items older
    /// than `before`, in `buckets` buckets chosen by `bucket(key)`: two stores whose digests of
    /// a bucket match hold the same versions of its keys (up to hash collisions). Newer
    /// versions are left out, so writes still travelling do not count as differences.
    pub fn digests(
        &self,
        buckets: usize,
        bucket: &dyn Fn(&[u8]) -> usize,
        before: Version,
    ) -> Vec<u64> {
        fn mix(mut h: u64) -> u64 {
            h ^= h >> 33;
            h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
            h ^= h >> 33;
            h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
            h ^ (h >> 33)
        }
        fn of(key: &[u8], v: Version, salt: u64) -> u64 {
            let mut h = 0xcbf2_9ce4_8422_2325u64;
            for &b in key {
                h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
            }
            mix(h ^ mix(v.ts ^ (u64::from(v.node) << 40) ^ salt))
        }
        let mut out = vec![0u64; buckets];
        for i in 0..self.inner.state.shard_count() {
            let s = self.inner.state.read_shard(i);
            for r in s.records.iter() {
                let v = r.view();
                if v.version() < before {
                    let b = bucket(v.key()) % buckets;
                    out[b] = out[b].wrapping_add(of(v.key(), v.version(), v.kind() as u64));
                }
            }
            for (name, q) in &s.queues {
                for (id, it) in &q.items {
                    if it.version < before {
                        let b = bucket(name) % buckets;
                        out[b] = out[b].wrapping_add(of(name, it.version, *id));
                    }
                }
            }
        }
        out
    }

    /// How long tombstones are kept, in seconds: a copy of a record older than this may be a
    /// value whose delete was already forgotten here.
    pub fn tombstone_grace_secs(&self) -> u32 {
        self.inner.grace
    }

    /// The newest version of any record or queue item here (`Version::ZERO` when empty): after
    /// a restart, what a node may have lost (a write acknowledged before its last fsync) is
    /// newer than this.
    pub fn max_version(&self) -> Version {
        let mut max = Version::ZERO;
        for i in 0..self.inner.state.shard_count() {
            let s = self.inner.state.read_shard(i);
            for r in s.records.iter() {
                max = max.max(r.view().version());
            }
            for q in s.queues.values() {
                for it in q.items.values() {
                    max = max.max(it.version);
                }
            }
        }
        max
    }

    /// The version of `key`'s record (live, expired or a tombstone), if there is one: what
    /// replicas compare on a quorum read.
    pub fn record_version(&self, key: &[u8]) -> Option<Version> {
        self.inner.state.read(key, |r| r.map(|r| r.version()))
    }

    /// `key`'s record (tombstones included) as a change another store can import with
    /// last-writer-wins: what read repair sends to a copy that is behind.
    pub fn record_state(&self, key: &[u8]) -> Option<Change> {
        let rec = self.inner.state.read(key, |r| {
            r.map(|r| (r.version(), Record::from_bytes(r.as_bytes().into())))
        })?;
        let (version, rec) = rec;
        Some(Change {
            seq: 0,
            version,
            kind: ChangeKind::Import,
            ops: vec![Op::Put(rec.ok()?)],
        })
    }

    /// Visit the state newer than `since`, shard by shard, as one change per record and per
    /// queue item (each under a short read lock).
    pub(crate) fn for_each_state(
        &self,
        since: Version,
        f: &mut dyn FnMut(Change) -> Result<()>,
    ) -> Result<()> {
        for i in 0..self.inner.state.shard_count() {
            let batch: Vec<Change> = {
                let s = self.inner.state.read_shard(i);
                let recs = s
                    .records
                    .iter()
                    .filter(|r| r.view().version() > since)
                    .map(|r| {
                        let v = r.view().version();
                        Change {
                            seq: 0,
                            version: v,
                            kind: ChangeKind::Import,
                            ops: vec![Op::Put(r.clone())],
                        }
                    });
                let items = s.queues.iter().flat_map(|(name, q)| {
                    q.items
                        .iter()
                        .filter(|(_, it)| it.version > since)
                        .map(|(id, it)| Change {
                            seq: 0,
                            version: it.version,
                            kind: ChangeKind::Import,
                            ops: vec![Op::QueuePut {
                                queue: name.clone(),
                                id: *id,
                                item: it.clone(),
                            }],
                        })
                });
                recs.chain(items).collect()
            };
            for c in batch {
                f(c)?;
            }
        }
        Ok(())
    }

    /// Versions more than a day ahead of this node's clock would drag its clock (and every
    /// later version) into the future: refuse them.
    fn check_import_version(&self, v: Version) -> Result<()> {
        let limit = self.inner.hlc.clock().now_ms().saturating_add(86_400_000);
        if v.millis() > limit {
            return Err(Error::InvalidArgument(format!(
                "version {v} is more than a day in the future"
            )));
        }
        Ok(())
    }

    /// Apply changes from an archive or a replica: each record wins only if its version is
    /// newer than what is here (or always, with `overwrite`). Returns how many applied.
    pub fn import_changes(&self, changes: Vec<Change>, overwrite: bool) -> Result<usize> {
        self.import_changes_mapped(changes, overwrite)
            .map(|(n, _)| n)
    }

    /// [`Store::import_changes`], also returning, for every change that applied, its `seq` as
    /// given and the feed position it got here (a replica uses that to know which sender's
    /// stream delivered which of its own changes). Waits for durability once, after the last.
    pub fn import_changes_mapped(
        &self,
        changes: Vec<Change>,
        overwrite: bool,
    ) -> Result<(usize, Vec<(u64, u64)>)> {
        let mut applied = 0;
        let mut mapped = Vec::new();
        let mut last: Option<Ticket> = None;
        let r = self.import_each(changes, overwrite, &mut applied, &mut mapped, &mut last);
        // Changes committed before an error still get their durability wait.
        if let Some(t) = last {
            self.durable(t)?;
        }
        r.map(|()| (applied, mapped))
    }

    fn import_each(
        &self,
        changes: Vec<Change>,
        overwrite: bool,
        applied: &mut usize,
        mapped: &mut Vec<(u64, u64)>,
        last: &mut Option<Ticket>,
    ) -> Result<()> {
        for c in changes {
            let their_seq = c.seq;
            // A touch keeps the value's version; the expiry it sets must still reach replicas.
            let attr = c.kind == ChangeKind::Attr;
            let keys: Vec<Vec<u8>> = c.ops.iter().map(|o| o.key().to_vec()).collect();
            let key_refs: Vec<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
            let l = self.inner.state.lock(&key_refs);
            let mut ops = Vec::new();
            for op in c.ops {
                let newer = match &op {
                    Op::Put(r) => {
                        let v = r.view();
                        self.check_key(v.key())?;
                        self.check_import_version(v.version())?;
                        self.inner.hlc.observe(v.version());
                        overwrite
                            || l.get(v.key())?.is_none_or(|cur| {
                                cur.version() < v.version()
                                    || (attr
                                        && cur.version() == v.version()
                                        && cur.expire() != v.expire())
                            })
                    }
                    Op::QueuePut { queue, id, item } => {
                        self.check_import_version(item.version)?;
                        self.inner.hlc.observe(item.version);
                        overwrite || l.queue(queue)?.is_none_or(|q| !q.items.contains_key(id))
                    }
                    Op::Remove(_) | Op::QueueDel { .. } => true,
                };
                if newer {
                    ops.push(op);
                }
            }
            if ops.is_empty() {
                continue;
            }
            *applied += ops.len();
            let version = self.inner.hlc.now();
            let mut l = l;
            let (seq, t) = self.commit_seq(&mut l, version, ChangeKind::Import, ops)?;
            drop(l);
            mapped.push((their_seq, seq));
            *last = Some(t);
        }
        Ok(())
    }

    /// Counters.
    pub fn stats(&self) -> StoreStats {
        let mut st = StoreStats::default();
        for i in 0..self.inner.state.shard_count() {
            let s = self.inner.state.read_shard(i);
            st.records += s.records.len();
            st.tombstones += s.tombstones;
            st.record_bytes += s.record_bytes;
            st.queues += s.queues.len();
            st.queue_items += s.queues.values().map(|q| q.items.len()).sum::<usize>();
        }
        st.last_seq = self.last_seq();
        st.engine = self.inner.engine.stats();
        st
    }

    /// Write and fsync everything now.
    pub fn sync(&self) -> Result<()> {
        self.inner.engine.sync()
    }

    // ---- maintenance ----------------------------------------------------------------------

    /// Turn expired records into tombstones, purge old tombstones and expired queue items.
    pub fn sweep_now(&self) -> Result<SweepStats> {
        self.sweep_shards(0..self.inner.state.shard_count())
    }

    /// Sweep the next eighth of the shards (the background worker's step), so that the cost
    /// of a tick stays bounded however many records there are.
    fn sweep_step(&self) -> Result<SweepStats> {
        let n = self.inner.state.shard_count();
        let step = n.div_ceil(8);
        let start = self.inner.sweep_cursor.fetch_add(step, Ordering::Relaxed) % n;
        self.sweep_shards(start..(start + step).min(n))
    }

    fn sweep_shards(&self, shards: std::ops::Range<usize>) -> Result<SweepStats> {
        const BATCH: usize = 4096;
        let mut stats = SweepStats::default();
        for i in shards {
            let now = self.now();
            let (expired, purge, qexp) = {
                let s = self.inner.state.read_shard(i);
                let mut expired = Vec::new();
                let mut purge = Vec::new();
                for r in s.records.iter() {
                    let v = r.view();
                    let e = v.expire();
                    if e == 0 || e > now {
                        continue;
                    }
                    if v.kind() == Kind::Tombstone {
                        if purge.len() < BATCH {
                            purge.push(v.key().to_vec());
                        }
                    } else if expired.len() < BATCH {
                        expired.push(v.key().to_vec());
                    }
                }
                let mut qexp = Vec::new();
                for (name, q) in s.queues.iter() {
                    let ids: Vec<u64> = q
                        .items
                        .iter()
                        .filter(|(_, it)| it.expire != 0 && it.expire <= now)
                        .map(|(id, _)| *id)
                        .collect();
                    if !ids.is_empty() {
                        qexp.push((name.clone(), ids));
                    }
                }
                (expired, purge, qexp)
            };
            if expired.is_empty() && purge.is_empty() && qexp.is_empty() {
                continue;
            }
            let any: &[u8] = expired
                .first()
                .or(purge.first())
                .map(|k| k.as_slice())
                .unwrap_or_else(|| &qexp[0].0);
            let mut l = self.inner.state.lock(&[any]);
            let mut tickets = Vec::new();
            if !expired.is_empty() {
                let version = self.inner.hlc.now();
                let mut ops = Vec::new();
                for k in &expired {
                    // Re-check under the write lock: the key may have been rewritten meanwhile.
                    if let Some(r) = l.get(k)?
                        && r.kind() != Kind::Tombstone
                        && r.expire() != 0
                        && r.expire() <= now
                    {
                        ops.push(Op::Put(self.tombstone(r, version, now)));
                    }
                }
                stats.expired += ops.len();
                if !ops.is_empty() {
                    tickets.push(self.commit(&mut l, version, ChangeKind::Expire, ops)?);
                }
            }
            if !purge.is_empty() || !qexp.is_empty() {
                let version = self.inner.hlc.now();
                let mut ops = Vec::new();
                for k in &purge {
                    if let Some(r) = l.get(k)?
                        && r.kind() == Kind::Tombstone
                        && r.expire() <= now
                    {
                        ops.push(Op::Remove(k.clone().into()));
                    }
                }
                stats.purged += ops.len();
                for (name, ids) in qexp {
                    stats.queue_items += ids.len();
                    ops.push(Op::QueueDel { queue: name, ids });
                }
                if !ops.is_empty() {
                    tickets.push(self.commit(&mut l, version, ChangeKind::Purge, ops)?);
                }
            }
            drop(l);
            if let Some(t) = tickets.pop() {
                self.durable(t)?;
            }
        }
        Ok(stats)
    }

    /// Rewrite the engine's files as one snapshot plus an empty log.
    pub fn compact(&self) -> Result<bool> {
        const CHUNK: usize = 256 << 10;
        // One compaction at a time: each one's clean-up would delete the other's files.
        let _one = self.inner.compacting.lock();
        let (sink, last_seq) = self
            .inner
            .feed
            .with_sequencer(|last| (self.inner.engine.begin_compaction(), last));
        let Some(mut sink) = sink? else {
            return Ok(false);
        };
        let mut ops: Vec<Op> = Vec::new();
        let mut bytes = 0;
        self.for_each_state(Version::ZERO, &mut |c| {
            for op in c.ops {
                bytes += match &op {
                    Op::Put(r) => r.heap_len(),
                    Op::QueuePut { item, .. } => item.value.len() + 64,
                    _ => 16,
                };
                ops.push(op);
            }
            if bytes >= CHUNK {
                bytes = 0;
                let ops = std::mem::take(&mut ops);
                sink.write(&Change {
                    seq: 0,
                    version: Version::ZERO,
                    kind: ChangeKind::Import,
                    ops,
                })?;
            }
            Ok(())
        })?;
        if !ops.is_empty() {
            sink.write(&Change {
                seq: 0,
                version: Version::ZERO,
                kind: ChangeKind::Import,
                ops,
            })?;
        }
        sink.finish(last_seq)?;
        Ok(true)
    }

    /// Lock keys for an operation (used by the sub-key, queue and counter modules).
    pub(crate) fn lock<'a>(&'a self, keys: &[&[u8]]) -> Locked<'a> {
        self.inner.state.lock(keys)
    }

    pub(crate) fn lock_all(&self) -> Locked<'_> {
        self.inner.state.lock_all()
    }

    pub(crate) fn new_version(&self) -> Version {
        self.inner.hlc.now()
    }

    pub(crate) fn queue_item_live(it: &QueueItem, now: u32) -> bool {
        it.expire == 0 || it.expire > now
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        *self.stop.lock() = true;
        self.stop_cv.notify_all();
        if let Err(e) = self.engine.close() {
            tracing::error!(error = %e, "closing the engine failed");
        }
    }
}

/// The number at the start of a decimal counter value, read the way memcached reads it
/// (`strtoull` then a check of what follows): optional leading white space and sign, digits,
/// then the end of the value or white space. `None` when that is not a number or it overflows.
fn parse_counter_text(v: &[u8]) -> Option<u64> {
    let is_space = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c);
    let start = v.iter().position(|&b| !is_space(b))?;
    let (negative, i) = match v[start] {
        b'-' => (true, start + 1),
        b'+' => (false, start + 1),
        _ => (false, start),
    };
    let digits = v[i..].iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in &v[i..i + digits] {
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    if v.get(i + digits).is_some_and(|&b| !is_space(b)) {
        return None;
    }
    if negative {
        // strtoull negates; memcached refuses a result that looks negative as a signed number.
        let neg = n.wrapping_neg();
        return (neg as i64 >= 0).then_some(neg);
    }
    Some(n)
}

#[cfg(test)]
mod counter_text_tests {
    use super::parse_counter_text as p;

    #[test]
    fn reads_numbers_like_memcached() {
        assert_eq!(p(b"12"), Some(12));
        assert_eq!(p(b" 12"), Some(12));
        assert_eq!(p(b"\t12"), Some(12));
        assert_eq!(p(b"+12"), Some(12));
        assert_eq!(p(b"12 ab"), Some(12));
        assert_eq!(p(b"000000000000000000007"), Some(7));
        assert_eq!(p(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(p(b"-0"), Some(0));
        assert_eq!(p(b"18446744073709551616"), None);
        assert_eq!(p(b"12a"), None);
        assert_eq!(p(b"-12"), None);
        assert_eq!(p(b""), None);
        assert_eq!(p(b"  "), None);
        assert_eq!(p(b"+"), None);
        assert_eq!(p(b"abc"), None);
    }
}

#[cfg(test)]
mod digest_tests {
    use crate::{ChangeFilter, SetMode, Store, StoreConfig, Version};

    #[test]
    fn copies_with_the_same_versions_have_the_same_digests() {
        let a = Store::open(StoreConfig::memory()).unwrap();
        for i in 0..200 {
            a.set(
                format!("k{i}").as_bytes(),
                b"v",
                SetMode::Set,
                &Default::default(),
            )
            .unwrap();
        }
        a.delete(b"k7", None).unwrap();
        // A replica: the same records, imported (versions kept).
        let b = Store::open(StoreConfig::memory()).unwrap();
        b.import_changes(
            a.changes_since_version(Version::ZERO, &ChangeFilter::default()),
            false,
        )
        .unwrap();
        let bucket = |k: &[u8]| k.iter().map(|&x| x as usize).sum::<usize>();
        let all = Version {
            ts: u64::MAX,
            node: 0,
        };
        assert_eq!(a.digests(16, &bucket, all), b.digests(16, &bucket, all));
        // One newer write differs in exactly its bucket...
        b.set(b"k3", b"w", SetMode::Set, &Default::default())
            .unwrap();
        let (da, db) = (a.digests(16, &bucket, all), b.digests(16, &bucket, all));
        let differ: Vec<usize> = (0..16).filter(|&i| da[i] != db[i]).collect();
        assert_eq!(differ, [bucket(b"k3") % 16]);
        // ...and a key written after the cut-off is not counted.
        let cut = b.max_version();
        let cut = Version {
            ts: cut.ts + 1,
            node: 0,
        };
        let before = b.digests(16, &bucket, cut);
        b.set(b"fresh", b"x", SetMode::Set, &Default::default())
            .unwrap();
        assert_eq!(b.digests(16, &bucket, cut), before);
        assert_eq!(
            Store::open(StoreConfig::memory())
                .unwrap()
                .digests(4, &bucket, all),
            [0; 4]
        );
    }
}
