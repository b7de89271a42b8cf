//! Opening stores of every engine kind with a manual clock, for the shared suites.

use std::sync::Arc;

use k2hdkc_storage::{
    EngineConfig, FileOptions, Fsync, KeyringConfig, ManualClock, Store, StoreConfig,
};

/// Start of the manual clock: 2026-01-01T00:00:00Z.
pub const T0: u64 = 1_767_225_600_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Memory,
    File,
    Temporary,
}

pub struct Harness {
    pub kind: Kind,
    pub clock: Arc<ManualClock>,
    pub dir: tempfile::TempDir,
}

impl Harness {
    pub fn new(kind: Kind) -> Harness {
        Harness {
            kind,
            clock: ManualClock::new(T0),
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// Whether data survives [`Harness::reopen`].
    pub fn durable(&self) -> bool {
        self.kind == Kind::File
    }

    pub fn config(&self) -> StoreConfig {
        let engine = match self.kind {
            Kind::Memory => EngineConfig::Memory,
            Kind::File => {
                let mut o = FileOptions::new(self.dir.path().join("data"));
                o.fsync = Fsync::Never;
                EngineConfig::File(o)
            }
            Kind::Temporary => EngineConfig::Temporary {
                parent: Some(self.dir.path().to_path_buf()),
                fsync: Fsync::Never,
            },
        };
        StoreConfig {
            engine,
            node_id: 1,
            shards: 8,
            maintenance_interval: None,
            keyring: KeyringConfig {
                phrases: vec!["registered secret".into()],
                default: Some(0),
                iterations: Some(1000),
                ..Default::default()
            },
            clock: self.clock.clone(),
            ..StoreConfig::memory()
        }
    }

    pub fn open(&self) -> Store {
        Store::open(self.config()).expect("open store")
    }

    pub fn open_with(&self, f: impl FnOnce(&mut StoreConfig)) -> Store {
        let mut c = self.config();
        f(&mut c);
        Store::open(c).expect("open store")
    }

    /// Close and open again (the same directory for the file engine).
    pub fn reopen(&self, s: Store) -> Store {
        s.close().expect("close");
        drop(s);
        self.open()
    }

    pub fn advance_secs(&self, s: u64) {
        self.clock.advance(s * 1000);
    }
}

/// A full dump of a store's state (records incl. tombstones and queue items), for comparison.
pub fn dump(s: &Store) -> Vec<String> {
    let mut v: Vec<String> = s
        .changes_since_version(k2hdkc_storage::Version::ZERO, &Default::default())
        .iter()
        .map(|c| format!("{:?}", c.ops))
        .collect();
    v.sort();
    v
}
