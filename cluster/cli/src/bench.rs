//! `k2hdkc bench ADDR`: a load generator for the memcached text protocol and the native
//! protocol.
//!
//! Preloads `--keys` keys, then runs `--connections` connections on `--threads` threads for
//! `--duration` seconds (or until `--requests` requests are done), each sending batches of
//! `--pipeline` requests (sets and gets by `--ratio SET:GET`, uniform random keys) and reading
//! every reply. Prints ops/s and per-request latency percentiles (a request's latency is its
//! batch's round trip), with a live progress bar; `--json` for scripts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use k2hdkc_proto::native::{self as wire, FrameParse, MAGIC_RESPONSE, Op, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// A connection to the server: plain TCP or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type Sock = Box<dyn Io>;

/// Wire protocol of a benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// memcached text protocol.
    Memcached,
    /// k2hdkc native protocol.
    Native,
}

/// Arguments of `k2hdkc bench`.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Server address (of the chosen protocol's listener).
    #[arg(required_unless_present_any = ["join", "socket"])]
    pub addr: Option<SocketAddr>,
    /// Instead of ADDR: a server's or gateway's memcached Unix socket (`--memcached-socket`).
    #[arg(long, conflicts_with_all = ["addr", "join", "tls_ca"])]
    pub socket: Option<std::path::PathBuf>,
    /// Instead of ADDR: run a gateway inside this process (K2HDKC's slave node in the client's
    /// own process) that joins the cluster through this node's native address, and send the
    /// load to it over in-process connections (repeatable, or comma-separated).
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["addr", "tls_ca"])]
    pub join: Vec<String>,
    /// The cluster secret, for --join.
    #[arg(long, requires = "join")]
    pub secret_file: Option<std::path::PathBuf>,
    /// With --join: send every set through the key's primary, not to the owners directly.
    #[arg(long, requires = "join")]
    pub no_direct_writes: bool,
    /// Protocol to speak.
    #[arg(long, value_enum, default_value_t = Protocol::Memcached)]
    pub protocol: Protocol,
    /// Client threads.
    #[arg(long, short = 't', default_value_t = 1)]
    pub threads: usize,
    /// Concurrent connections.
    #[arg(long, short = 'c', default_value_t = 1)]
    pub connections: usize,
    /// Requests sent per batch on each connection.
    #[arg(long, short = 'p', default_value_t = 1)]
    pub pipeline: usize,
    /// SET:GET ratio, e.g. 1:10.
    #[arg(long, default_value = "1:10")]
    pub ratio: String,
    /// Distinct keys (preloaded).
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// Key size in bytes (at least 8).
    #[arg(long, default_value_t = 16)]
    pub key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// How long to run, in seconds.
    #[arg(long, short = 'd', default_value_t = 10)]
    pub duration: u64,
    /// Stop after this many requests instead of after --duration.
    #[arg(long, short = 'n')]
    pub requests: Option<u64>,
    /// Skip the preload.
    #[arg(long)]
    pub no_preload: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Speak TLS, trusting servers whose certificate this CA (PEM) signed.
    #[arg(long)]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM), for a port that requires one (with --tls-key).
    #[arg(long, requires = "tls_key", requires = "tls_ca")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// Client private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
}

/// Where the load goes.
enum Target {
    /// A server's listener.
    Tcp(SocketAddr),
    /// A server's memcached Unix socket.
    Unix(std::path::PathBuf),
    /// A gateway in this process (`--join`).
    Embedded(k2hdkc_node::Server),
}

impl Target {
    fn describe(&self) -> String {
        match self {
            Target::Tcp(a) => a.to_string(),
            Target::Unix(p) => format!("unix:{}", p.display()),
            Target::Embedded(_) => "embedded gateway".into(),
        }
    }
}

/// Start the embedded gateway of `--join` and wait until it can route every key.
async fn embedded_gateway(a: &BenchArgs) -> anyhow::Result<k2hdkc_node::Server> {
    let mut c = k2hdkc_node::ServerConfig::default();
    c.cluster.gateway = true;
    c.cluster.join = a.join.clone();
    c.cluster.secret_file = a.secret_file.clone();
    c.cluster.direct_writes = !a.no_direct_writes;
    c.storage.mode = k2hdkc_node::StorageMode::Memory;
    c.listen.memcached = None;
    // Peers never call a gateway; it needs a native address only as its identity.
    c.listen.native = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    c.limits.threads = a.threads;
    c.limits.max_connections = c.limits.max_connections.max(a.connections + 1);
    let server = k2hdkc_node::Server::start(c)
        .await
        .context("embedded gateway")?;
    if !server.wait_routable(Duration::from_secs(15)).await {
        let _ = server.shutdown().await;
        bail!(
            "the embedded gateway could not reach an owner of every partition through {} within 15 s (is the cluster attached, and is the secret file the cluster's?)",
            a.join.join(",")
        );
    }
    Ok(server)
}

/// Connect (and handshake, with `--tls-ca`).
async fn connect(a: &BenchArgs, target: &Target) -> anyhow::Result<Sock> {
    let addr = match target {
        Target::Tcp(addr) => *addr,
        Target::Unix(path) => {
            let s = tokio::net::UnixStream::connect(path)
                .await
                .with_context(|| format!("connect {}", path.display()))?;
            return Ok(Box::new(s));
        }
        Target::Embedded(server) => {
            return Ok(Box::new(
                server.connect_local(a.protocol == Protocol::Native),
            ));
        }
    };
    let s = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    s.set_nodelay(true)?;
    let Some(ca) = &a.tls_ca else {
        return Ok(Box::new(s));
    };
    let cert_key = a.tls_cert.as_deref().zip(a.tls_key.as_deref());
    let c = k2hdkc_client::tls::client_port_connector(ca, cert_key, None)
        .map_err(|e| anyhow::anyhow!("TLS: {e}"))?;
    let t = c
        .connect(s)
        .await
        .map_err(|e| anyhow::anyhow!("{addr}: {e}"))?;
    Ok(Box::new(t))
}

fn parse_ratio(s: &str) -> anyhow::Result<(u32, u32)> {
    let (a, b) = s
        .split_once(':')
        .context("ratio must look like SET:GET, e.g. 1:10")?;
    let (a, b): (u32, u32) = (a.parse()?, b.parse()?);
    if a + b == 0 {
        bail!("ratio {s} sends nothing");
    }
    Ok((a, b))
}

fn key(i: u64, size: usize) -> Vec<u8> {
    let mut k = format!("{i:0>width$}", width = size.max(8)).into_bytes();
    k.truncate(size.max(8));
    k
}

/// Read exactly one reply to a set (a line) or a get (END, or VALUE .. data .. END).
async fn read_reply(
    s: &mut Sock,
    buf: &mut Vec<u8>,
    pos: &mut usize,
    get: bool,
    proto: Protocol,
) -> anyhow::Result<bool> {
    loop {
        let parsed = match proto {
            Protocol::Memcached => parse_reply(&buf[*pos..], get)?,
            Protocol::Native => parse_native(&buf[*pos..])?,
        };
        if let Some((n, hit)) = parsed {
            *pos += n;
            return Ok(hit);
        }
        if *pos > 0 {
            buf.drain(..*pos);
            *pos = 0;
        }
        // Into the buffer's spare room: a zeroed chunk per read would cost more than the
        // reply.
        buf.reserve(64 << 10);
        let n = s.read_buf(buf).await?;
        if n == 0 {
            bail!("server closed the connection");
        }
    }
}

fn line(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n").map(|p| p + 2)
}

/// Some((bytes consumed, hit)) when a whole reply is buffered.
fn parse_reply(b: &[u8], get: bool) -> anyhow::Result<Option<(usize, bool)>> {
    let Some(l) = line(b) else { return Ok(None) };
    if !get {
        if &b[..l] != b"STORED\r\n" {
            bail!(
                "unexpected reply to set: {:?}",
                String::from_utf8_lossy(&b[..l])
            );
        }
        return Ok(Some((l, true)));
    }
    if &b[..l] == b"END\r\n" {
        return Ok(Some((l, false)));
    }
    let head = std::str::from_utf8(&b[..l - 2])?;
    let len: usize = head
        .split(' ')
        .nth(3)
        .and_then(|n| n.parse().ok())
        .context("bad VALUE line")?;
    let end = l + len + 2;
    if b.len() < end + 5 {
        return Ok(None);
    }
    if &b[end..end + 5] != b"END\r\n" {
        bail!("reply to get does not end in END");
    }
    Ok(Some((end + 5, true)))
}

/// Some((bytes consumed, hit)) when a whole native reply is buffered.
fn parse_native(b: &[u8]) -> anyhow::Result<Option<(usize, bool)>> {
    match wire::parse_frame(b, MAGIC_RESPONSE, 1 << 27) {
        FrameParse::Incomplete => Ok(None),
        FrameParse::Frame { header, body } => {
            let n = wire::HEADER_LEN + body.len();
            match Status::from_u8(header.code) {
                Some(Status::Ok) => Ok(Some((n, true))),
                Some(Status::NotFound) => Ok(Some((n, false))),
                other => {
                    let r = wire::Reply::decode(&header, body).unwrap_or_default();
                    bail!("server refused a request: {other:?} {:?}", r.message)
                }
            }
        }
        other => bail!("bad reply frame: {other:?}"),
    }
}

/// Append one request to `req`.
fn push_request(req: &mut Vec<u8>, proto: Protocol, key: &[u8], set: Option<&[u8]>, id: u32) {
    match (proto, set) {
        (Protocol::Memcached, None) => {
            req.extend_from_slice(b"get ");
            req.extend_from_slice(key);
            req.extend_from_slice(b"\r\n");
        }
        (Protocol::Memcached, Some(v)) => {
            req.extend_from_slice(b"set ");
            req.extend_from_slice(key);
            req.extend_from_slice(format!(" 0 0 {}\r\n", v.len()).as_bytes());
            req.extend_from_slice(v);
            req.extend_from_slice(b"\r\n");
        }
        (Protocol::Native, v) => {
            let args = wire::Args {
                key: Some(key),
                value: v,
                ..Default::default()
            };
            let op = if v.is_some() { Op::Set } else { Op::Get };
            wire::write_request(req, op, 0, id, &args);
        }
    }
}

struct Totals {
    issued: AtomicU64,
    ops: AtomicU64,
    hits: AtomicU64,
    gets: AtomicU64,
}

async fn preload(a: &BenchArgs, target: &Target) -> anyhow::Result<()> {
    let mut s = connect(a, target).await?;
    let value = vec![b'v'; a.value_size];
    let mut buf = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    while i < a.keys {
        let mut req = Vec::new();
        let n = (a.keys - i).min(256);
        for j in 0..n {
            push_request(
                &mut req,
                a.protocol,
                &key(i + j, a.key_size),
                Some(&value),
                j as u32,
            );
        }
        s.write_all(&req).await?;
        for _ in 0..n {
            read_reply(&mut s, &mut buf, &mut pos, false, a.protocol).await?;
        }
        i += n;
    }
    Ok(())
}

async fn worker(
    a: Arc<BenchArgs>,
    target: Arc<Target>,
    seed: u64,
    until: Instant,
    t: Arc<Totals>,
) -> anyhow::Result<Vec<u32>> {
    let (sets, gets) = parse_ratio(&a.ratio)?;
    let mut s = connect(&a, &target).await?;
    let mut rng = fastrand::Rng::with_seed(seed);
    let value = vec![b'x'; a.value_size];
    let mut buf = Vec::with_capacity(1 << 16);
    let mut pos = 0;
    let mut lat = Vec::with_capacity(1 << 16);
    let mut req = Vec::with_capacity(a.pipeline * (a.key_size + a.value_size + 32));
    let mut kinds = Vec::with_capacity(a.pipeline);
    let mut id = 0u32;
    loop {
        match a.requests {
            Some(n) => {
                if t.issued.fetch_add(a.pipeline as u64, Ordering::Relaxed) >= n {
                    break;
                }
            }
            None => {
                if Instant::now() >= until {
                    break;
                }
            }
        }
        req.clear();
        kinds.clear();
        for _ in 0..a.pipeline {
            let k = key(rng.u64(0..a.keys.max(1)), a.key_size);
            let is_get = rng.u32(0..sets + gets) >= sets;
            id = id.wrapping_add(1);
            push_request(
                &mut req,
                a.protocol,
                &k,
                (!is_get).then_some(&value[..]),
                id,
            );
            kinds.push(is_get);
        }
        let start = Instant::now();
        s.write_all(&req).await?;
        let mut hits = 0;
        for &g in &kinds {
            if read_reply(&mut s, &mut buf, &mut pos, g, a.protocol).await? && g {
                hits += 1;
            }
        }
        let us = start.elapsed().as_micros().min(u32::MAX as u128) as u32;
        for _ in 0..a.pipeline {
            lat.push(us);
        }
        t.ops.fetch_add(a.pipeline as u64, Ordering::Relaxed);
        t.hits.fetch_add(hits, Ordering::Relaxed);
        t.gets.fetch_add(
            kinds.iter().filter(|g| **g).count() as u64,
            Ordering::Relaxed,
        );
    }
    Ok(lat)
}

fn pct(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Run the benchmark.
pub async fn run(a: BenchArgs) -> anyhow::Result<()> {
    parse_ratio(&a.ratio)?;
    if a.connections == 0 || a.pipeline == 0 || a.keys == 0 || a.duration == 0 || a.threads == 0 {
        bail!("--connections, --threads, --pipeline, --keys and --duration must be positive");
    }
    if a.requests == Some(0) {
        bail!("--requests must be positive");
    }
    if a.socket.is_some() && a.protocol == Protocol::Native {
        bail!("--socket serves the memcached protocols only (the native protocol is on TCP)");
    }
    let target = Arc::new(match (a.addr, &a.socket) {
        (Some(addr), _) => Target::Tcp(addr),
        (None, Some(p)) => Target::Unix(p.clone()),
        (None, None) => Target::Embedded(embedded_gateway(&a).await?),
    });
    let r = drive(a, target.clone()).await;
    if let Ok(Target::Embedded(server)) = Arc::try_unwrap(target) {
        let _ = server.shutdown().await;
    }
    r
}

async fn drive(a: BenchArgs, target: Arc<Target>) -> anyhow::Result<()> {
    if !a.no_preload {
        eprintln!(
            "preloading {} keys of {} bytes with {}-byte values ...",
            a.keys, a.key_size, a.value_size
        );
        preload(&a, &target).await?;
    }
    let a = Arc::new(a);
    let t = Arc::new(Totals {
        issued: AtomicU64::new(0),
        ops: AtomicU64::new(0),
        hits: AtomicU64::new(0),
        gets: AtomicU64::new(0),
    });
    let start = Instant::now();
    let until = start + Duration::from_secs(a.duration);
    let tasks: Vec<_> = (0..a.connections)
        .map(|i| {
            tokio::spawn(worker(
                a.clone(),
                target.clone(),
                0x5eed + i as u64,
                until,
                t.clone(),
            ))
        })
        .collect();
    let mut last = 0;
    let finished = || tasks.iter().all(|t| t.is_finished());
    while !finished() {
        let tick = Instant::now() + Duration::from_secs(1);
        while Instant::now() < tick && !finished() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let ops = t.ops.load(Ordering::Relaxed);
        let el = start.elapsed().as_secs_f64();
        let frac = match a.requests {
            Some(n) => ops as f64 / n as f64,
            None => el / a.duration as f64,
        }
        .clamp(0.0, 1.0);
        let done = (frac * 30.0) as usize;
        if !a.json {
            eprint!(
                "\r[{}{}] {:>5.1}% {:>6.1}s {:>10} ops/s",
                "=".repeat(done),
                " ".repeat(30 - done.min(30)),
                frac * 100.0,
                el,
                ops - last
            );
        }
        last = ops;
    }
    let mut lat = Vec::new();
    for task in tasks {
        lat.extend(task.await??);
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let ops = t.ops.load(Ordering::Relaxed);
    let gets = t.gets.load(Ordering::Relaxed);
    let report = serde_json::json!({
        "addr": target.describe(),
        "protocol": format!("{:?}", a.protocol).to_lowercase(),
        "threads": a.threads,
        "connections": a.connections,
        "pipeline": a.pipeline,
        "ratio": a.ratio,
        "keys": a.keys,
        "value_size": a.value_size,
        "seconds": secs,
        "ops": ops,
        "ops_per_sec": ops as f64 / secs,
        "get_hit_ratio": if gets > 0 { t.hits.load(Ordering::Relaxed) as f64 / gets as f64 } else { 0.0 },
        "latency_us": { "p50": pct(&lat, 0.50), "p99": pct(&lat, 0.99), "p999": pct(&lat, 0.999), "max": lat.last().copied().unwrap_or(0) },
    });
    if a.json {
        println!("{report}");
    } else {
        eprintln!();
        println!(
            "{} ops in {:.1}s: {:.0} ops/s; latency p50 {} us, p99 {} us, p99.9 {} us; get hit ratio {:.3}",
            ops,
            secs,
            ops as f64 / secs,
            report["latency_us"]["p50"],
            report["latency_us"]["p99"],
            report["latency_us"]["p999"],
            report["get_hit_ratio"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_and_ratios_validate() {
        assert_eq!(parse_reply(b"STORED\r\n", false).unwrap(), Some((8, true)));
        assert_eq!(parse_reply(b"END\r\n", true).unwrap(), Some((5, false)));
        assert_eq!(
            parse_reply(b"VALUE k 0 2\r\nab\r\nEND\r\n", true).unwrap(),
            Some((22, true))
        );
        assert_eq!(parse_reply(b"VALUE k 0 2\r\nab\r\nEN", true).unwrap(), None);
        assert!(parse_reply(b"ERROR\r\n", false).is_err());
        assert_eq!(parse_ratio("1:10").unwrap(), (1, 10));
        assert!(parse_ratio("0:0").is_err());
        assert!(parse_ratio("x").is_err());
        assert_eq!(key(42, 16).len(), 16);
        let mut req = Vec::new();
        push_request(&mut req, Protocol::Native, b"k", Some(b"v"), 1);
        assert!(matches!(
            wire::parse_frame(&req, wire::MAGIC_REQUEST, 100),
            FrameParse::Frame { .. }
        ));
        let mut rep = Vec::new();
        wire::write_error(&mut rep, Status::NotFound, 1, "x");
        assert_eq!(parse_native(&rep).unwrap(), Some((rep.len(), false)));
        let mut rep = Vec::new();
        wire::write_error(&mut rep, Status::TooLarge, 1, "x");
        assert!(parse_native(&rep).is_err());
        assert_eq!(parse_native(&rep[..5]).unwrap(), None);
    }
}
