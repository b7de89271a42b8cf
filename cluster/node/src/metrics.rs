//! Server metrics: lock-free counters and a latency histogram, rendered in the Prometheus text
//! format on `/metrics` and used by memcached `stats`. Names are documented in `render`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

/// Commands counted separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Cmd {
    /// get/gets/gat/mg and binary gets.
    Get,
    /// All storage commands.
    Set,
    /// delete / md.
    Delete,
    /// incr / decr / ma.
    Arith,
    /// touch / gat.
    Touch,
    /// flush_all.
    Flush,
    /// Sub-key list operations and rename (native).
    Subkey,
    /// Queue operations (native).
    Queue,
    /// CAS counter operations (native).
    Counter,
    /// Key scans (native).
    Scan,
    /// Everything else.
    Other,
}

const CMDS: [(&str, Cmd); 11] = [
    ("get", Cmd::Get),
    ("set", Cmd::Set),
    ("delete", Cmd::Delete),
    ("arith", Cmd::Arith),
    ("touch", Cmd::Touch),
    ("flush", Cmd::Flush),
    ("subkey", Cmd::Subkey),
    ("queue", Cmd::Queue),
    ("counter", Cmd::Counter),
    ("scan", Cmd::Scan),
    ("other", Cmd::Other),
];

/// Upper bounds of the latency buckets, in microseconds.
const BUCKETS_US: [u64; 12] = [
    5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10_000, 50_000, 250_000,
];

/// All counters of one server.
#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    cmds: [AtomicU64; 11],
    /// Get hits.
    pub get_hits: AtomicU64,
    /// Get misses.
    pub get_misses: AtomicU64,
    /// Bytes read from clients.
    pub bytes_read: AtomicU64,
    /// Bytes written to clients.
    pub bytes_written: AtomicU64,
    /// Connections open now.
    pub curr_connections: AtomicU64,
    /// Connections accepted since start.
    pub total_connections: AtomicU64,
    /// Connections refused over the limit.
    pub rejected_connections: AtomicU64,
    /// Protocol errors answered.
    pub protocol_errors: AtomicU64,
    latency: [AtomicU64; 13],
    latency_sum_us: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started: Instant::now(),
            cmds: Default::default(),
            get_hits: AtomicU64::new(0),
            get_misses: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            curr_connections: AtomicU64::new(0),
            total_connections: AtomicU64::new(0),
            rejected_connections: AtomicU64::new(0),
            protocol_errors: AtomicU64::new(0),
            latency: Default::default(),
            latency_sum_us: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Count a command.
    pub fn cmd(&self, c: Cmd) {
        self.cmds[c as usize].fetch_add(1, Relaxed);
    }

    /// How many of a command.
    pub fn count(&self, c: Cmd) -> u64 {
        self.cmds[c as usize].load(Relaxed)
    }

    /// Record the time to serve one batch of requests, per request.
    pub fn observe(&self, since: Instant, requests: u64) {
        if requests == 0 {
            return;
        }
        let us = since.elapsed().as_micros() as u64 / requests;
        let i = BUCKETS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(BUCKETS_US.len());
        self.latency[i].fetch_add(requests, Relaxed);
        self.latency_sum_us.fetch_add(us * requests, Relaxed);
    }

    /// Seconds since start.
    pub fn uptime_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// The Prometheus text exposition.
    pub fn render(&self, store: &k2hdkc_storage::StoreStats) -> String {
        let mut o = String::with_capacity(4096);
        let g = |o: &mut String, name: &str, help: &str, kind: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        let _ = writeln!(
            o,
            "# HELP k2hdkc_commands_total Commands served, by command.\n# TYPE k2hdkc_commands_total counter"
        );
        for (name, c) in CMDS {
            let _ = writeln!(
                o,
                "k2hdkc_commands_total{{cmd=\"{name}\"}} {}",
                self.count(c)
            );
        }
        g(
            &mut o,
            "k2hdkc_get_hits_total",
            "Keys found by gets.",
            "counter",
            self.get_hits.load(Relaxed),
        );
        g(
            &mut o,
            "k2hdkc_get_misses_total",
            "Keys not found by gets.",
            "counter",
            self.get_misses.load(Relaxed),
        );
        g(
            &mut o,
            "k2hdkc_read_bytes_total",
            "Bytes read from clients.",
            "counter",
            self.bytes_read.load(Relaxed),
        );
        g(
            &mut o,
            "k2hdkc_written_bytes_total",
            "Bytes written to clients.",
            "counter",
            self.bytes_written.load(Relaxed),
        );
        g(
            &mut o,
            "k2hdkc_connections",
            "Open client connections.",
            "gauge",
            self.curr_connections.load(Relaxed),
        );
        g(
            &mut o,
            "k2hdkc_connections_total",
            "Accepted connections.",
            "counter",
            self.total_connections.load(Relaxed),
        );
        g(
            &mut o,
            "k2hdkc_rejected_connections_total",
            "Connections refused over the limit.",
            "counter",
            self.rejected_connections.load(Relaxed),
        );
        g(
            &mut o,
            "k2hdkc_protocol_errors_total",
            "Malformed requests answered with an error.",
            "counter",
            self.protocol_errors.load(Relaxed),
        );
        g(
            &mut o,
            "k2hdkc_items",
            "Live records plus tombstones.",
            "gauge",
            store.records as u64,
        );
        g(
            &mut o,
            "k2hdkc_tombstones",
            "Tombstones kept for merging deletes.",
            "gauge",
            store.tombstones as u64,
        );
        g(
            &mut o,
            "k2hdkc_item_bytes",
            "Heap bytes of stored records.",
            "gauge",
            store.record_bytes as u64,
        );
        g(
            &mut o,
            "k2hdkc_queue_items",
            "Items in all queues.",
            "gauge",
            store.queue_items as u64,
        );
        g(
            &mut o,
            "k2hdkc_change_seq",
            "Last change sequence number.",
            "counter",
            store.last_seq,
        );
        g(
            &mut o,
            "k2hdkc_fsyncs_total",
            "Log fsync calls.",
            "counter",
            store.engine.fsyncs,
        );
        g(
            &mut o,
            "k2hdkc_compactions_total",
            "Log compactions.",
            "counter",
            store.engine.compactions,
        );
        g(
            &mut o,
            "k2hdkc_uptime_seconds",
            "Seconds since start.",
            "gauge",
            self.uptime_secs(),
        );
        let _ = writeln!(
            o,
            "# HELP k2hdkc_request_duration_microseconds Time to serve a request.\n# TYPE k2hdkc_request_duration_microseconds histogram"
        );
        let mut acc = 0;
        for (i, b) in BUCKETS_US.iter().enumerate() {
            acc += self.latency[i].load(Relaxed);
            let _ = writeln!(
                o,
                "k2hdkc_request_duration_microseconds_bucket{{le=\"{b}\"}} {acc}"
            );
        }
        acc += self.latency[BUCKETS_US.len()].load(Relaxed);
        let _ = writeln!(
            o,
            "k2hdkc_request_duration_microseconds_bucket{{le=\"+Inf\"}} {acc}"
        );
        let _ = writeln!(
            o,
            "k2hdkc_request_duration_microseconds_sum {}",
            self.latency_sum_us.load(Relaxed)
        );
        let _ = writeln!(o, "k2hdkc_request_duration_microseconds_count {acc}");
        o
    }
}
