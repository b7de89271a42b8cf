//! Storage engine benchmarks: get, set, delete, incr, queue push+pop on 1M preloaded keys of 16
//! bytes with 100-byte values, for the memory engine and the file engine (`fsync = batch`), with
//! 1 and 2 threads. Before the benchmarks run, the memory footprint per item of the memory
//! engine is measured from the process's resident set (`K2HDKC_BENCH_KEYS` sets the key count).
//!
//! Run: `cargo bench -p k2hdkc-storage --bench engine`

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use divan::counter::ItemsCount;
use k2hdkc_storage::{
    EngineConfig, Expire, FileOptions, Fsync, QueueOpts, SetMode, Store, StoreConfig, WriteOpts,
};

fn keys() -> u64 {
    std::env::var("K2HDKC_BENCH_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn key(i: u64) -> [u8; 16] {
    let mut k = *b"key:000000000000";
    let mut n = i;
    for b in k[4..].iter_mut().rev() {
        *b = b'0' + (n % 10) as u8;
        n /= 10;
    }
    k
}

const VALUE: [u8; 100] = [b'v'; 100];

fn quiet(mut c: StoreConfig) -> StoreConfig {
    c.feed_capacity_bytes = 4 << 20;
    c.maintenance_interval = Some(std::time::Duration::from_secs(1));
    c
}

fn load(s: &Store) {
    for i in 0..keys() {
        s.set(&key(i), &VALUE, SetMode::Set, &WriteOpts::default())
            .unwrap();
    }
    for i in 0..1000 {
        s.counter_init(format!("ctr{i}").as_bytes(), 64, 0, Expire::Never)
            .unwrap();
    }
}

static MEMORY: LazyLock<Store> = LazyLock::new(|| {
    let s = Store::open(quiet(StoreConfig::memory())).unwrap();
    load(&s);
    s
});

static FILE: LazyLock<(Store, tempfile::TempDir)> = LazyLock::new(|| {
    let dir = tempfile::tempdir().unwrap();
    let mut o = FileOptions::new(dir.path().join("data"));
    o.fsync = Fsync::Batch(std::time::Duration::from_millis(10));
    o.compaction_min_bytes = 1 << 30;
    let s = Store::open(quiet(StoreConfig {
        engine: EngineConfig::File(o),
        ..StoreConfig::memory()
    }))
    .unwrap();
    load(&s);
    (s, dir)
});

fn store(engine: &str) -> &'static Store {
    match engine {
        "memory" => &MEMORY,
        _ => &FILE.0,
    }
}

static CTR_KEYS: LazyLock<Vec<Vec<u8>>> =
    LazyLock::new(|| (0..1000).map(|i| format!("ctr{i}").into_bytes()).collect());

static CURSOR: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static RNG: std::cell::Cell<u64> =
        std::cell::Cell::new(CURSOR.fetch_add(0x1234_5677, Ordering::Relaxed) | 1);
}

/// A per-thread xorshift stream, so that the benchmark itself shares no cache line.
fn next_u64() -> u64 {
    RNG.with(|c| {
        let mut x = c.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.set(x);
        x
    })
}

fn next_key() -> [u8; 16] {
    key(next_u64() % keys())
}

const ENGINES: &[&str] = &["memory", "file"];

#[divan::bench(args = ENGINES, threads = [1, 2], sample_count = 30, sample_size = 5000)]
fn get(b: divan::Bencher, engine: &str) {
    let s = store(engine);
    b.counter(ItemsCount::new(1usize)).bench(|| {
        let k = next_key();
        s.get_with(&k, None, |v| v.data.len()).unwrap()
    });
}

#[divan::bench(args = ENGINES, threads = [1, 2], sample_count = 30, sample_size = 5000)]
fn set(b: divan::Bencher, engine: &str) {
    let s = store(engine);
    b.counter(ItemsCount::new(1usize)).bench(|| {
        let k = next_key();
        s.set(&k, &VALUE, SetMode::Set, &WriteOpts::default())
            .unwrap()
    });
}

#[divan::bench(args = ENGINES, threads = [1, 2], sample_count = 30, sample_size = 5000)]
fn delete_then_add(b: divan::Bencher, engine: &str) {
    let s = store(engine);
    // Two operations per iteration, so that the key set stays the same size.
    b.counter(ItemsCount::new(2usize)).bench(|| {
        let k = next_key();
        s.delete(&k, None).unwrap();
        s.set(&k, &VALUE, SetMode::Add, &WriteOpts::default())
            .unwrap()
    });
}

#[divan::bench(args = ENGINES, threads = [1, 2], sample_count = 30, sample_size = 5000)]
fn incr(b: divan::Bencher, engine: &str) {
    let s = store(engine);
    b.counter(ItemsCount::new(1usize)).bench(|| {
        let n = next_u64() % 1000;
        s.counter_add(&CTR_KEYS[n as usize], 64, 1).unwrap()
    });
}

#[divan::bench(args = ENGINES, threads = [1, 2], sample_count = 30, sample_size = 5000)]
fn queue_push_pop(b: divan::Bencher, engine: &str) {
    let s = store(engine);
    b.counter(ItemsCount::new(2usize)).bench(|| {
        let q = [b'q', (next_u64() % 16) as u8];
        s.queue_push(&q, None, &VALUE, true, &QueueOpts::default())
            .unwrap();
        s.queue_pop(&q, None).unwrap()
    });
}

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    s.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 4096
}

fn footprint() {
    let n = keys();
    let before = rss_bytes();
    let mut c = StoreConfig::memory();
    c.feed_capacity_bytes = 0;
    c.maintenance_interval = None;
    let s = Store::open(c).unwrap();
    for i in 0..n {
        s.set(&key(i), &VALUE, SetMode::Set, &WriteOpts::default())
            .unwrap();
    }
    let after = rss_bytes();
    let per = (after - before) as f64 / n as f64;
    let st = s.stats();
    eprintln!(
        "footprint: {n} items of 16+100 bytes: {per:.1} bytes/item resident, {:.1} bytes/item overhead \
         beyond key and value (record blobs: {:.1} bytes/item)",
        per - 116.0,
        st.record_bytes as f64 / n as f64
    );
    s.close().unwrap();
}

fn main() {
    if std::env::args().any(|a| a == "--bench") || std::env::var_os("K2HDKC_FOOTPRINT").is_some() {
        footprint();
    }
    divan::main();
}
