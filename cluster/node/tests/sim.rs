//! Deterministic simulation of the cluster protocols (turmoil).
//!
//! Three real server nodes — membership, the Paxos layout agreement, replication streams,
//! hand-overs and takeovers, quorum reads — run on turmoil's simulated network and clock
//! (through the `Transport` seam and the store's `Clock`), with a gateway; odd seeds keep
//! the nodes' data in memory, even seeds in files (`K2HDKC_SIM_STORAGE=memory|file` picks one
//! for every seed). Two clients write (and now and then delete) their own keys and increment
//! one shared counter through random nodes and the gateway while a schedule drawn from the
//! seed crashes and restarts nodes (a memory node restarts with nothing, a file node with
//! what it acknowledged, and merges what changed meanwhile), cuts one node off from the
//! others, or holds its messages, or only those between it and the gateway (delivered at the
//! heal, as TCP retransmits after a link comes back); one fault at a time, each healed before
//! the next (cutting a node off cuts it from the gateway too). After the last heal a checker
//! reads every key through every node and the gateway, and asks the cluster to compare its
//! copies.
//!
//! What holds (and is asserted): every key reads back its last acknowledged value (absent if
//! that was a delete) or a later one whose write or delete had an unknown outcome (never an
//! older or a never-written one, and no deleted value comes back); the
//! counter is within [acknowledged increments, acknowledged + unknown]; no partition's copies
//! differ. The network, the fault schedule and the clients' choices come from the seed;
//! tokio's own scheduling choices (`select!` branch order) are not seeded without
//! `--cfg tokio_unstable`, so a seed reproduces the schedule, not every interleaving.
//!
//! A second, scripted scenario holds one link (packets wait, as behind a cut link whose
//! retransmissions get through after the heal) while a forwarded set times out, and checks
//! that the set does not take effect when the link is released. A third holds the link
//! between two server nodes for 15 s while increments of one counter alternate between
//! them and the third node: none may be lost (two primaries), and requests to the node that
//! cannot reach the counter's primary must go through the third node, not fail.
//!
//! `K2HDKC_SIM_SEEDS=N` runs N seeds (default 10; 3 for the scripted scenarios), `=A-B` seeds A to B; `K2HDKC_SIM_SEED=S` runs only seed S;
//! `K2HDKC_SIM_LOG=k2hdkc_node=debug` (a tracing filter) shows what the nodes log.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k2hdkc_client::transport::{BoxFuture, BoxStream, Listener};
use k2hdkc_client::{Client, ClientConfig, Net, Transport};
use k2hdkc_layout::Change;
use k2hdkc_node::config::{ServerConfig, StorageMode};
use k2hdkc_node::{Env, Server};
use k2hdkc_proto::native::{Args, Op, Status};
use k2hdkc_storage::Clock;
use serde_json::{Value as Json, json};

const NODES: usize = 3;
const PORT: u16 = 8020;
/// Keys per client.
const KEYS: usize = 24;
/// Simulated seconds of load (after the cluster formed).
const LOAD_SECS: u64 = 40;
/// 2026-01-01 in unix milliseconds: the simulated wall clock starts there.
const EPOCH_MS: u64 = 1_767_225_600_000;

/// turmoil's network as a [`Transport`]. turmoil listens only on the unspecified address,
/// so a listener binds that and reports the host's own address (what the node advertises).
struct SimNet;

struct SimListener {
    l: turmoil::net::TcpListener,
    addr: SocketAddr,
}

impl Transport for SimNet {
    fn connect(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<BoxStream>> {
        Box::pin(async move {
            let s = turmoil::net::TcpStream::connect(addr).await?;
            Ok(Box::new(s) as BoxStream)
        })
    }

    fn bind(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn Listener>>> {
        Box::pin(async move {
            let l = turmoil::net::TcpListener::bind(("0.0.0.0", addr.port())).await?;
            Ok(Box::new(SimListener { l, addr }) as Box<dyn Listener>)
        })
    }

    fn inline_blocking(&self) -> bool {
        true
    }
}

impl Listener for SimListener {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxStream, SocketAddr)>> {
        Box::pin(async move {
            let (s, peer) = self.l.accept().await?;
            Ok((Box::new(s) as BoxStream, peer))
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

/// The simulation's clock as the store's wall clock.
#[derive(Debug)]
struct SimClock;

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        EPOCH_MS + turmoil::sim_elapsed().map_or(0, |d| d.as_millis() as u64)
    }
}

fn net() -> Net {
    Net(Arc::new(SimNet))
}

/// How the simulated server nodes keep their data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Storage {
    /// In memory: a crashed node restarts empty.
    Memory,
    /// Files (fsync always) in a directory per node that outlives its crashes: a crashed node
    /// restarts with what it acknowledged, catches up and merges.
    File,
}

impl Storage {
    /// `K2HDKC_SIM_STORAGE=memory|file`, else odd seeds memory and even seeds file.
    fn for_seed(seed: u64) -> Storage {
        match std::env::var("K2HDKC_SIM_STORAGE").as_deref() {
            Ok("memory") => Storage::Memory,
            Ok("file") => Storage::File,
            Ok(other) => panic!("K2HDKC_SIM_STORAGE={other:?}: want memory or file"),
            Err(_) if seed % 2 == 1 => Storage::Memory,
            Err(_) => Storage::File,
        }
    }
}

fn node_config(
    i: usize,
    ip: IpAddr,
    seed_ip: IpAddr,
    data: Option<&std::path::Path>,
) -> ServerConfig {
    let mut c = ServerConfig::default();
    match data {
        None => c.storage.mode = StorageMode::Memory,
        Some(dir) => {
            c.storage.mode = StorageMode::File;
            c.storage.data_dir = Some(dir.join(format!("n{}", i + 1)));
            // A crash here is a process's: what reached the kernel stays. The directory is
            // on tmpfs where there is one, so an fsync costs nothing.
            c.storage.fsync = "always".into();
        }
    }
    c.listen.native = Some(SocketAddr::new(ip, PORT));
    c.cluster.name = Some(format!("n{}", i + 1));
    c.cluster.join = vec![SocketAddr::new(seed_ip, PORT).to_string()];
    c.cluster.heartbeat_ms = 200;
    c.cluster.failure_timeout_ms = 1_000;
    c.cluster.request_timeout_ms = 2_000;
    // Only the streams, hand-overs and read checks may make copies agree here.
    c.cluster.anti_entropy_secs = 0;
    c
}

fn client(addr: SocketAddr) -> Client {
    let mut cc = ClientConfig::new(addr);
    cc.connections = 1;
    cc.connect_timeout = Duration::from_millis(500);
    cc.request_timeout = Duration::from_secs(3);
    cc.net = net();
    Client::lazy(cc)
}

async fn control(c: &Client, req: Json) -> Result<Json, String> {
    let body = serde_json::to_vec(&req).expect("json");
    let args = Args {
        message: Some(&body),
        ..Default::default()
    };
    let r = c
        .request(Op::Cluster, &args)
        .await
        .map_err(|e| e.to_string())?;
    if r.status() != Some(Status::Ok) {
        return Err(r.message.unwrap_or_default());
    }
    let j: Json =
        serde_json::from_str(r.message.as_deref().unwrap_or("null")).map_err(|e| e.to_string())?;
    if j["ok"] == json!(false) {
        return Err(j["error"].to_string());
    }
    Ok(j)
}

/// What the clients saw.
#[derive(Default, Debug)]
struct History {
    /// key -> last acknowledged value (`None`: deleted).
    acked: BTreeMap<String, Option<String>>,
    /// key -> values written after the last acknowledgement whose outcome is unknown.
    maybe: BTreeMap<String, Vec<Option<String>>>,
    incrs_acked: u64,
    incrs_unknown: u64,
    deletes_acked: u64,
    /// What each acknowledged increment returned, when (simulated ms) and through which
    /// node: two increments that returned one value show where an update was lost.
    incr_values: Vec<(u64, u64, SocketAddr)>,
    ops: u64,
    failed: u64,
    /// Things that must never happen (a counter that vanished, say).
    violations: Vec<String>,
}

impl History {
    /// Whether reading `got` from `key` fits what the clients did: its last acknowledged
    /// value (or its deletion), or a later write (or delete) of unknown outcome; absent also
    /// when nothing was acknowledged, since unknown writes may all have failed.
    fn fits(&self, key: &str, got: &Option<String>) -> bool {
        let acked = self.acked.get(key);
        let maybe = self.maybe.get(key);
        let unknown = |v: &Option<String>| maybe.is_some_and(|m| m.contains(v));
        match got {
            Some(_) => acked == Some(got) || unknown(got),
            None => matches!(acked, None | Some(None)) || unknown(got),
        }
    }
}

/// Form the cluster: N=3, W=2, R=2, every node in service.
async fn form(nodes: &[SocketAddr]) -> Result<(), String> {
    let c = client(nodes[0]);
    for _ in 0..400 {
        if let Ok(s) = control(&c, json!({"method": "status"})).await
            && s["nodes"].as_array().map_or(0, Vec::len) == NODES
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let change = |ch: Change| json!({"method": "change", "change": ch});
    control(
        &c,
        change(Change::SetReplication {
            replicas: 3,
            write_quorum: 2,
            read_quorum: 2,
        }),
    )
    .await?;
    control(&c, change(Change::Attach { names: vec![] })).await?;
    for _ in 0..600 {
        if let Ok(s) = control(&c, json!({"method": "status"})).await {
            let nodes = s["nodes"].as_array().cloned().unwrap_or_default();
            if nodes.len() == NODES
                && nodes.iter().all(|n| n["ring"] == "SERVICE IN")
                && s["moving"] == false
            {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err("the cluster did not form".into())
}

/// `K2HDKC_SIM_TRACE=KEY` prints every request of the clients on KEY, with simulated time.
fn trace_key(key: &str, what: impl FnOnce() -> String) {
    if std::env::var("K2HDKC_SIM_TRACE").is_ok_and(|k| k == key) {
        let t = turmoil::sim_elapsed().unwrap_or_default();
        eprintln!("{:>9.3}s trace {key}: {}", t.as_secs_f64(), what());
    }
}

async fn worker(
    id: usize,
    seed: u64,
    nodes: Vec<SocketAddr>,
    history: Arc<Mutex<History>>,
    ready: Arc<AtomicBool>,
) -> turmoil::Result {
    let mut rng = fastrand::Rng::with_seed(seed ^ ((id as u64 + 1) * 0x9e37_79b9));
    let clients: Vec<Client> = nodes.iter().map(|&a| client(a)).collect();
    while !ready.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let start = tokio::time::Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(LOAD_SECS) {
        let c = &clients[rng.usize(..clients.len())];
        n += 1;
        let dice = rng.u8(..20);
        if dice < 4 {
            // Read one of this client's own keys (nobody else writes them): it must show the
            // last acknowledged value or a later one of unknown outcome, now, not only after
            // the heal (a stale write that lands late and is overwritten again before the end
            // would pass the final check).
            let key = format!("c{id}-k{}", rng.usize(..KEYS));
            let r = c.get(key.as_bytes()).await;
            trace_key(&key, || {
                let r = r.as_ref().map(|g| {
                    g.as_ref()
                        .map(|i| String::from_utf8_lossy(&i.value).into_owned())
                });
                format!("get via {}: {r:?}", c.addr())
            });
            let mut h = history.lock().unwrap();
            h.ops += 1;
            match r {
                Ok(got) => {
                    let got = got.map(|i| String::from_utf8_lossy(&i.value).into_owned());
                    if !h.fits(&key, &got) {
                        let acked = h.acked.get(&key).cloned();
                        let maybe = h.maybe.get(&key).cloned().unwrap_or_default();
                        let t = turmoil::sim_elapsed().unwrap_or_default();
                        h.violations.push(format!(
                            "{key}: read {got:?} at {t:?} via {}; acknowledged {acked:?}, maybe {maybe:?}",
                            c.addr()
                        ));
                    }
                }
                Err(_) => h.failed += 1,
            }
        } else if dice < 17 {
            // A set, or now and then a delete (a tombstone that must travel like a value).
            let key = format!("c{id}-k{}", rng.usize(..KEYS));
            let value = (dice < 15).then(|| format!("c{id}-v{n}"));
            // (For a delete, whether the key was found.)
            let r = match &value {
                Some(v) => c.set(key.as_bytes(), v.as_bytes()).await.map(|_| true),
                None => c.delete(key.as_bytes()).await,
            };
            trace_key(&key, || {
                format!(
                    "{} {value:?} via {}: {:?}",
                    if value.is_some() { "set" } else { "delete" },
                    c.addr(),
                    r
                )
            });
            let mut h = history.lock().unwrap();
            h.ops += 1;
            match r {
                Ok(_) => {
                    h.deletes_acked += u64::from(value.is_none());
                    h.acked.insert(key.clone(), value);
                    h.maybe.remove(&key);
                }
                Err(_) => {
                    h.failed += 1;
                    h.maybe.entry(key).or_default().push(value);
                }
            }
        } else {
            let r = c.incr(b"ctr", 1).await;
            let mut h = history.lock().unwrap();
            h.ops += 1;
            match r {
                Ok(Some(v)) => {
                    h.incrs_acked += 1;
                    let t = turmoil::sim_elapsed().unwrap_or_default().as_millis() as u64;
                    h.incr_values.push((v, t, c.addr()));
                }
                Ok(None) => h
                    .violations
                    .push("the counter was not found (it was set before the load)".into()),
                Err(_) => {
                    h.failed += 1;
                    h.incrs_unknown += 1;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(5..25))).await;
    }
    Ok(())
}

/// Read every key through every node and compare with the history; ask for a copy check.
async fn check(
    nodes: Vec<SocketAddr>,
    history: Arc<Mutex<History>>,
    go: Arc<AtomicBool>,
    gone: Option<String>,
) -> turmoil::Result {
    while !go.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (mut problems, keys) = {
        let h = history.lock().unwrap();
        let keys: Vec<String> = h.acked.keys().chain(h.maybe.keys()).cloned().collect();
        (h.violations.clone(), keys)
    };
    if let Some(gone) = &gone {
        // The detached node is out of service and no data moves any more (bounded). It may
        // be back as a recognised node: one crashed after it left restarts empty and, as its
        // `--join` says, asks to be added again (SERVICE OUT, holding nothing).
        let c = client(nodes[0]);
        let mut settled = false;
        let mut last = Json::Null;
        for _ in 0..240 {
            if let Ok(s) = control(&c, json!({"method": "status"})).await {
                let serving: Vec<&str> = s["nodes"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter(|n| n["ring"] == "SERVICE IN")
                            .filter_map(|n| n["name"].as_str())
                            .collect()
                    })
                    .unwrap_or_default();
                if s["moving"] == false
                    && !serving.contains(&gone.as_str())
                    && serving.len() == NODES
                {
                    settled = true;
                    break;
                }
                last = s;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        if !settled {
            problems.push(format!(
                "{gone} is still in service, or data still moves: {last}"
            ));
        }
    }
    for &addr in &nodes {
        let c = client(addr);
        for key in &keys {
            let got = match c.get(key.as_bytes()).await {
                Ok(v) => v.map(|i| String::from_utf8_lossy(&i.value).into_owned()),
                Err(e) => {
                    problems.push(format!("{key} via {addr}: {e}"));
                    continue;
                }
            };
            let h = history.lock().unwrap();
            if !h.fits(key, &got) {
                let acked = h.acked.get(key);
                let maybe = h.maybe.get(key).cloned().unwrap_or_default();
                problems.push(format!(
                    "{key} via {addr} reads {got:?}; acknowledged {acked:?}, maybe {maybe:?}"
                ));
            }
        }
        let ctr = c
            .get(b"ctr")
            .await
            .ok()
            .flatten()
            .and_then(|i| String::from_utf8_lossy(&i.value).trim().parse::<u64>().ok());
        let h = history.lock().unwrap();
        let (lo, hi) = (h.incrs_acked, h.incrs_acked + h.incrs_unknown);
        if !ctr.is_some_and(|v| (lo..=hi).contains(&v)) {
            let mut seen: BTreeMap<u64, Vec<(u64, SocketAddr)>> = BTreeMap::new();
            for &(v, t, via) in &h.incr_values {
                seen.entry(v).or_default().push((t, via));
            }
            let twice: Vec<_> = seen.iter().filter(|(_, w)| w.len() > 1).collect();
            problems.push(format!(
                "counter via {addr} reads {ctr:?}, expected {lo}..={hi}; values returned \
                 twice (ms, via): {twice:?}"
            ));
        }
    }
    match control(&client(nodes[0]), json!({"method": "verify"})).await {
        Ok(v) if v["differ"].as_array().is_some_and(Vec::is_empty) => {}
        Ok(v) => problems.push(format!("copies differ: {v}")),
        Err(e) => problems.push(format!("verify: {e}")),
    }
    if problems.is_empty() {
        Ok(())
    } else {
        let n = problems.len();
        let mut seen = std::collections::BTreeSet::new();
        // The first problem of each kind and node.
        problems.retain(|p| {
            seen.insert(
                p.split(": ")
                    .nth(1)
                    .unwrap_or(p)
                    .chars()
                    .take(40)
                    .collect::<String>()
                    + p.split(" via ")
                        .nth(1)
                        .unwrap_or("")
                        .split(':')
                        .next()
                        .unwrap_or(""),
            )
        });
        problems.truncate(12);
        Err(format!("{n} problems, the first:\n{}", problems.join("\n")).into())
    }
}

/// One fault of the schedule.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Crash node `i` (it loses its memory), restart it later.
    Crash(usize),
    /// Cut node `i` off from the other nodes and the clients, heal later.
    Isolate(usize),
    /// Hold every message to and from node `i` (a link that is down while TCP retransmits),
    /// deliver them all later.
    Hold(usize),
    /// Hold only the messages between the gateway and node `i` (the node stays in touch with
    /// the other nodes), deliver them later.
    HoldGateway(usize),
    /// Hold only the messages between server nodes `i` and `j` (each stays in touch with
    /// the third node, the gateway and the clients), deliver them later.
    HoldLink(usize, usize),
}

/// A simulation with the three server nodes as hosts n1..n3: (the simulation, host names,
/// native addresses).
fn nodes_sim<'a>(seed: u64, secs: u64) -> (turmoil::Sim<'a>, Vec<String>, Vec<SocketAddr>) {
    nodes_sim_late(seed, secs, None, None)
}

/// A directory for the nodes' files, on tmpfs where there is one.
fn sim_data_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(d) = tempfile::Builder::new()
            .prefix("k2hdkc-sim")
            .tempdir_in(shm)
    {
        return d;
    }
    tempfile::tempdir().expect("temporary directory")
}

/// [`nodes_sim`], and with `late` a fourth server node, n4, which starts (and joins) once the
/// flag is set; with `data` the nodes keep their files there.
fn nodes_sim_late<'a>(
    seed: u64,
    secs: u64,
    late: Option<Arc<AtomicBool>>,
    data: Option<std::path::PathBuf>,
) -> (turmoil::Sim<'a>, Vec<String>, Vec<SocketAddr>) {
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(Duration::from_secs(secs))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(4))
        .tcp_capacity(1 << 16)
        .build();
    let hosts = NODES + usize::from(late.is_some());
    let names: Vec<String> = (0..hosts).map(|i| format!("n{}", i + 1)).collect();
    for (i, name) in names.iter().enumerate() {
        let gate = late.clone().filter(|_| i == NODES);
        let data = data.clone();
        sim.host(name.as_str(), move || {
            let gate = gate.clone();
            let data = data.clone();
            async move {
                if let Some(g) = gate {
                    while !g.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                let ip = turmoil::lookup(format!("n{}", i + 1));
                let seed_ip = turmoil::lookup("n1");
                let env = Env {
                    net: net(),
                    clock: Some(Arc::new(SimClock)),
                };
                let config = node_config(i, ip, seed_ip, data.as_deref());
                // (A crashed file node's directory stays locked until its store closes,
                // which a store worker thread may delay a moment: the store waits for it.)
                let _server = Server::start_with(config, env).await?;
                std::future::pending::<()>().await;
                Ok(())
            }
        });
    }
    let nodes: Vec<SocketAddr> = names
        .iter()
        .map(|n| SocketAddr::new(sim.lookup(n.as_str()), PORT))
        .collect();
    (sim, names, nodes)
}

/// Run one seed; returns a line describing the run, or the checker's findings. With
/// `movements`, data moves under the load and the faults too: a fourth node starts 6 s into
/// the load and is attached, and 22 s in one of the first three (drawn from the seed) is
/// detached; the check then reads through the nodes left.
fn run_seed(seed: u64, movements: bool, links: bool) -> Result<String, String> {
    let late = movements.then(|| Arc::new(AtomicBool::new(false)));
    let storage = Storage::for_seed(seed);
    let dir = (storage == Storage::File).then(sim_data_dir);
    let (mut sim, names, nodes) = nodes_sim_late(
        seed,
        LOAD_SECS + 180,
        late.clone(),
        dir.as_ref().map(|d| d.path().to_path_buf()),
    );
    let leaving = movements.then(|| fastrand::Rng::with_seed(seed ^ 0x5eed).usize(..NODES));
    // A gateway (K2HDKC's slave): holds nothing, routes every request to its primary. It is
    // never crashed itself, but cutting a node off cuts it from the gateway too.
    sim.host("gw", || async {
        let ip = turmoil::lookup("gw");
        let mut c = node_config(0, ip, turmoil::lookup("n1"), None);
        c.cluster.name = Some("gw".into());
        c.cluster.gateway = true;
        let env = Env {
            net: net(),
            clock: Some(Arc::new(SimClock)),
        };
        let _gateway = Server::start_with(c, env).await?;
        std::future::pending::<()>().await;
        Ok(())
    });
    // What the clients talk to: every node (the late one fails until it started), and the
    // gateway.
    let targets: Vec<SocketAddr> = nodes
        .iter()
        .copied()
        .chain([SocketAddr::new(sim.lookup("gw"), PORT)])
        .collect();
    // What the checker reads through: the nodes the cluster has at the end, and the gateway.
    let final_targets: Vec<SocketAddr> = targets
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != leaving)
        .map(|(_, a)| *a)
        .collect();
    let history = Arc::new(Mutex::new(History::default()));
    let ready = Arc::new(AtomicBool::new(false));
    {
        let (nodes, ready) = (nodes.clone(), ready.clone());
        sim.client("setup", async move {
            form(&nodes).await?;
            client(nodes[0]).set(b"ctr", b"0").await?;
            ready.store(true, Ordering::SeqCst);
            Ok(())
        });
    }
    let movement_log = Arc::new(Mutex::new(Vec::<String>::new()));
    if let (Some(gate), Some(leaving)) = (late.clone(), leaving) {
        let (nodes, ready, log) = (nodes.clone(), ready.clone(), movement_log.clone());
        sim.client("admin", async move {
            while !ready.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let start = tokio::time::Instant::now();
            let note = |m: String| {
                let t = turmoil::sim_elapsed().unwrap_or_default();
                log.lock()
                    .unwrap()
                    .push(format!("{:.1}s {m}", t.as_secs_f64()));
            };
            tokio::time::sleep(Duration::from_secs(6)).await;
            gate.store(true, Ordering::SeqCst);
            let change = |ch: Change| json!({"method": "change", "change": ch});
            // Through any node that answers (a fault may have one down or cut off).
            let ask = |req: Json| {
                let nodes = nodes.clone();
                async move {
                    let mut last = String::new();
                    for attempt in 0..120 {
                        let c = client(nodes[attempt % NODES]);
                        match control(&c, req.clone()).await {
                            Ok(j) => return Ok(j),
                            Err(e) => last = e,
                        }
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    Err(last)
                }
            };
            let mut recognised = false;
            for _ in 0..200 {
                if let Ok(s) = ask(json!({"method": "status"})).await
                    && s["nodes"].as_array().map_or(0, Vec::len) == NODES + 1
                {
                    recognised = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if !recognised {
                note("n4 was not recognised".into());
                return Ok(());
            }
            match ask(change(Change::Attach { names: vec![] })).await {
                Ok(_) => note("attached n4".into()),
                Err(e) => note(format!("attach failed: {e}")),
            }
            tokio::time::sleep_until(start + Duration::from_secs(22)).await;
            let name = format!("n{}", leaving + 1);
            match ask(change(Change::Detach { name: name.clone() })).await {
                Ok(_) => note(format!("detaching {name}")),
                Err(e) => note(format!("detach of {name} failed: {e}")),
            }
            Ok(())
        });
    }
    let workers: Vec<String> = (0..2).map(|i| format!("w{i}")).collect();
    for (i, w) in workers.iter().enumerate() {
        let (targets, history, ready) = (targets.clone(), history.clone(), ready.clone());
        sim.client(w.as_str(), worker(i, seed, targets, history, ready));
    }
    // The fault schedule: after the load starts, one fault every few seconds, each lasting
    // 2-5 s, then at least 3 s of calm.
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut faults = Vec::new();
    let mut t = 3_000u64;
    while t + 8_000 < LOAD_SECS * 1000 {
        let i = rng.usize(..NODES);
        let f = match rng.u8(..4) {
            0 => Fault::Crash(i),
            1 => Fault::Isolate(i),
            2 => Fault::Hold(i),
            // (The link schedule draws one number more here, so its seeds' schedules are
            // their own; the other runs' are as they were.)
            _ if links => Fault::HoldLink(i, (i + 1 + rng.usize(..NODES - 1)) % NODES),
            _ => Fault::HoldGateway(i),
        };
        let len = rng.u64(2_000..5_000);
        faults.push((t, t + len, f));
        t += len + rng.u64(3_000..6_000);
    }
    eprintln!("seed {seed}: faults (ms after the load started) {faults:?}");
    let others = |i: usize| -> Vec<String> {
        names
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| n.clone())
            .chain(workers.iter().cloned())
            .chain(["gw".to_string()])
            .chain(movements.then(|| "admin".to_string()))
            .collect()
    };
    let mut load_start: Option<Duration> = None;
    let mut next = 0usize;
    let mut active: Option<(u64, Fault)> = None;
    let go = Arc::new(AtomicBool::new(false));
    {
        let (targets, history, go) = (final_targets.clone(), history.clone(), go.clone());
        let gone = leaving.map(|i| format!("n{}", i + 1));
        sim.client("checker", check(targets, history, go, gone));
    }
    let mut checker_started = false;
    loop {
        let done = sim.step().map_err(|e| format!("seed {seed}: {e}"))?;
        if done {
            break;
        }
        let now = sim.elapsed();
        if load_start.is_none() && ready.load(Ordering::SeqCst) {
            load_start = Some(now);
        }
        let Some(t0) = load_start else { continue };
        let ms = (now - t0).as_millis() as u64;
        if let Some((end, f)) = active
            && ms >= end
        {
            match f {
                Fault::Crash(i) => sim.bounce(names[i].as_str()),
                Fault::Isolate(i) => {
                    for o in others(i) {
                        sim.repair(names[i].as_str(), o.as_str());
                    }
                }
                Fault::Hold(i) => {
                    for o in others(i) {
                        sim.release(names[i].as_str(), o.as_str());
                    }
                }
                Fault::HoldGateway(i) => sim.release(names[i].as_str(), "gw"),
                Fault::HoldLink(i, j) => sim.release(names[i].as_str(), names[j].as_str()),
            }
            active = None;
        }
        if active.is_none()
            && let Some(&(at, end, f)) = faults.get(next)
            && ms >= at
        {
            match f {
                Fault::Crash(i) => sim.crash(names[i].as_str()),
                Fault::Isolate(i) => {
                    for o in others(i) {
                        sim.partition(names[i].as_str(), o.as_str());
                    }
                }
                Fault::Hold(i) => {
                    for o in others(i) {
                        sim.hold(names[i].as_str(), o.as_str());
                    }
                }
                Fault::HoldGateway(i) => sim.hold(names[i].as_str(), "gw"),
                Fault::HoldLink(i, j) => sim.hold(names[i].as_str(), names[j].as_str()),
            }
            active = Some((end, f));
            next += 1;
        }
        // Settle after the load (every fault healed), then check.
        if !checker_started && active.is_none() && ms >= (LOAD_SECS + 15) * 1000 {
            checker_started = true;
            go.store(true, Ordering::SeqCst);
        }
    }
    let h = history.lock().unwrap();
    if !checker_started {
        return Err(format!(
            "seed {seed}: the simulation ended before the check, at {:?} ({} ops; load started at {load_start:?})",
            sim.elapsed(),
            h.ops
        ));
    }
    let moved = movement_log.lock().unwrap().join(", ");
    Ok(format!(
        "seed {seed} ({storage:?}): {} faults {:?}; {} ops, {} failed ({:.2}%), {} increments and {} deletes acknowledged{}",
        faults.len(),
        faults.iter().map(|f| f.2).collect::<Vec<_>>(),
        h.ops,
        h.failed,
        100.0 * h.failed as f64 / h.ops.max(1) as f64,
        h.incrs_acked,
        h.deletes_acked,
        if moved.is_empty() {
            String::new()
        } else {
            format!("; {moved}")
        }
    ))
}

/// `K2HDKC_SIM_LOG` (a tracing filter) shows what the nodes log, stamped with simulated time.
fn init_log() {
    if let Ok(filter) = std::env::var("K2HDKC_SIM_LOG") {
        struct SimTime;
        impl tracing_subscriber::fmt::time::FormatTime for SimTime {
            fn format_time(
                &self,
                w: &mut tracing_subscriber::fmt::format::Writer<'_>,
            ) -> std::fmt::Result {
                let t = turmoil::sim_elapsed().unwrap_or_default();
                write!(w, "{:>9.3}s", t.as_secs_f64())
            }
        }
        let _ = tracing_subscriber::fmt()
            .with_timer(SimTime)
            .with_ansi(false)
            // Both simulations run in one process: tell their lines apart.
            .with_thread_names(true)
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
}

#[test]
fn simulated_faults_lose_no_acknowledged_write() {
    init_log();
    // 583 lost an increment in 30 of 30 runs before the majority-vouch rule of takeovers
    // (a returned node whose heartbeats to the primary hung led its partition beside it).
    run_seeds(with_regressions(seeds_from_env(10), &[583]), false, false);
}

/// [`simulated_faults_lose_no_acknowledged_write`] with the gateway's links replaced by links
/// between two server nodes as the third kind of held messages: a node that cannot reach a
/// primary the others reach must route around it, never lead its partitions beside it.
#[test]
fn simulated_cut_links_between_nodes_lose_nothing() {
    init_log();
    run_seeds(seeds_from_env(6), false, true);
}

/// [`simulated_faults_lose_no_acknowledged_write`] while data moves: a fourth node is attached
/// and one of the first three detached under the load and the faults.
#[test]
fn simulated_faults_during_attach_and_detach_lose_nothing() {
    init_log();
    // 220 read a stale value in about 5% of runs before a peer that starts catching up
    // got a takeover collection (a replica still held its copy back for that peer's stream).
    run_seeds(with_regressions(seeds_from_env(4), &[220]), true, false);
}

/// The seeds that once found a bug join the default run (not one chosen by env).
fn with_regressions(mut seeds: Vec<u64>, found: &[u64]) -> Vec<u64> {
    let chosen = std::env::var_os("K2HDKC_SIM_SEED").is_some()
        || std::env::var_os("K2HDKC_SIM_SEEDS").is_some();
    if !chosen {
        for s in found {
            if !seeds.contains(s) {
                seeds.push(*s);
            }
        }
    }
    seeds
}

/// `K2HDKC_SIM_SEED=S` alone, else seeds 1..=`K2HDKC_SIM_SEEDS` (`default` without it).
fn seeds_from_env(default: u64) -> Vec<u64> {
    match std::env::var("K2HDKC_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("K2HDKC_SIM_SEED is a number")],
        Err(_) => {
            let v = std::env::var("K2HDKC_SIM_SEEDS").unwrap_or_default();
            // `A-B` runs seeds A..=B (new seeds beyond those CI runs).
            if let Some((a, b)) = v.split_once('-') {
                let a: u64 = a.parse().expect("K2HDKC_SIM_SEEDS=A-B: A is a number");
                let b: u64 = b.parse().expect("K2HDKC_SIM_SEEDS=A-B: B is a number");
                return (a..=b).collect();
            }
            let n: u64 = v.parse().unwrap_or(default);
            (1..=n).collect()
        }
    }
}

fn run_seeds(seeds: Vec<u64>, movements: bool, links: bool) {
    let mut failures = Vec::new();
    for seed in seeds {
        match run_seed(seed, movements, links) {
            Ok(line) => eprintln!("{line}"),
            Err(e) => {
                eprintln!("seed {seed} FAILED:\n{e}");
                failures.push(seed);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "seeds {failures:?} failed (rerun one with K2HDKC_SIM_SEED=S)"
    );
}

/// The first of the keys `name(0)`, `name(1)`, ... whose primary is not n1: (the key, its
/// primary, the third node), all 0-based.
async fn key_led_elsewhere(
    c: &Client,
    mut name: impl FnMut(usize) -> String,
) -> Result<(String, usize, usize), String> {
    for i in 0..200 {
        let k = name(i);
        let p = primary_of(c, k.as_bytes()).await?;
        if p != 0 {
            let third = (0..NODES).find(|&j| j != 0 && j != p).expect("three nodes");
            return Ok((k, p, third));
        }
    }
    Err("no key with a primary other than n1".into())
}

/// The node (0-based) that is the primary of `key` in the committed layout.
async fn primary_of(c: &Client, key: &[u8]) -> Result<usize, String> {
    let r = control(c, json!({"method": "layout"})).await?;
    let l: k2hdkc_layout::Layout =
        serde_json::from_value(r["layout"].clone()).map_err(|e| e.to_string())?;
    let owners = l.owners(key);
    let list = owners.serving();
    let name = &l.node(list[0]).name;
    name.trim_start_matches('n')
        .parse::<usize>()
        .map(|n| n - 1)
        .map_err(|e| format!("node name {name}: {e}"))
}

/// A set that timed out behind a link that holds its packets (a link that was down, whose
/// retransmissions get through after the heal) must not take effect when the link comes
/// back: later acknowledged writes would be overwritten by it, with a newer version.
/// Node a forwards `set K old` to K's primary p over a held a-p link; the client sees the
/// failure; `set K new` through the third node is acknowledged; the link is released and
/// every node must still read `new`.
fn held_forward_run(seed: u64) -> Result<String, String> {
    scripted_run(seed, move |nodes, names| async move {
        form(&nodes).await?;
        let c0 = client(nodes[0]);
        // A key whose primary is not n1, so n1 forwards it.
        let (key, p, third) = key_led_elsewhere(&c0, |i| format!("held-{i}")).await?;
        let via_a = client(nodes[0]);
        let via_b = client(nodes[third]);
        // Several, so every pooled connection n1 forwards on is open: the held set
        // must travel on an established connection (a new one would fail to connect
        // and be routed around, which is not the case under test).
        for _ in 0..4 {
            via_a
                .set(key.as_bytes(), b"first")
                .await
                .map_err(|e| format!("first set: {e}"))?;
        }
        turmoil::hold(names[0].as_str(), names[p].as_str());
        let old = via_a.set(key.as_bytes(), b"old").await;
        if old.is_ok() {
            return Err(format!(
                "the set of {key} over the held link n1-n{} was acknowledged",
                p + 1
            ));
        }
        // Acknowledged after the old one failed: this is what must be read.
        let mut acked = None;
        for n in 0..10 {
            let v = format!("new-{n}");
            if via_b.set(key.as_bytes(), v.as_bytes()).await.is_ok() {
                acked = Some(v);
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let acked = acked.ok_or("no set through the third node was acknowledged")?;
        turmoil::release(names[0].as_str(), names[p].as_str());
        // Let the held traffic land, streams catch up and read checks settle.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let mut bad = Vec::new();
        for (i, &addr) in nodes.iter().enumerate() {
            let mut got = None;
            for _ in 0..20 {
                match client(addr).get(key.as_bytes()).await {
                    Ok(v) => {
                        got = Some(v.map(|i| String::from_utf8_lossy(&i.value).into_owned()));
                        break;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
            if got.as_ref() != Some(&Some(acked.clone())) {
                bad.push(format!("n{} reads {got:?}", i + 1));
            }
        }
        if bad.is_empty() {
            Ok(format!(
                "seed {seed}: {key} (primary n{}): old failed, {acked} acknowledged and read everywhere",
                p + 1
            ))
        } else {
            Err(format!(
                "seed {seed}: {key} (primary n{}): acknowledged {acked}, but {}",
                p + 1,
                bad.join(", ")
            ))
        }
    })
}

#[test]
fn forward_held_past_its_deadline_does_not_overwrite_newer_writes() {
    run_scripted_seeds(held_forward_run);
}

/// A scripted scenario on three nodes (see [`nodes_sim`]): `tester`, given the nodes'
/// addresses and host names, is the simulation's one client, and its result the seed's.
fn scripted_run<F, Fut>(seed: u64, tester: F) -> Result<String, String>
where
    F: FnOnce(Vec<SocketAddr>, Vec<String>) -> Fut,
    Fut: std::future::Future<Output = Result<String, String>> + 'static,
{
    let (mut sim, names, nodes) = nodes_sim(seed, 120);
    let result: Arc<Mutex<Option<Result<String, String>>>> = Arc::new(Mutex::new(None));
    let run = tester(nodes, names);
    let out = result.clone();
    sim.client("tester", async move {
        let r = run.await;
        *out.lock().unwrap() = Some(r);
        Ok(())
    });
    sim.run().map_err(|e| format!("seed {seed}: {e}"))?;
    let r = result.lock().unwrap().take();
    r.unwrap_or_else(|| Err(format!("seed {seed}: the tester did not finish")))
}

/// Run a scripted scenario for its seeds (3 by default), reporting every failure.
fn run_scripted_seeds(run: fn(u64) -> Result<String, String>) {
    init_log();
    let mut failures = Vec::new();
    for seed in seeds_from_env(3) {
        match run(seed) {
            Ok(line) => eprintln!("{line}"),
            Err(e) => {
                eprintln!("{e}");
                failures.push(e);
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// One link between two server nodes held (its packets wait, as on a link that went down
/// while TCP retransmits) while both stay in touch with the third: the node `a` that cannot
/// reach a key's primary `p` must neither lead the key's partition beside it (two primaries
/// return one counter value twice) nor fail requests for it: they go through the third node,
/// which reaches `p`. Increments alternate between `a` and the third node, one at a time,
/// for 15 s of the cut; then the link is released and every node must read the count.
fn cut_link_run(seed: u64) -> Result<String, String> {
    scripted_run(seed, move |nodes, names| async move {
        form(&nodes).await?;
        let c0 = client(nodes[0]);
        let mut rng = fastrand::Rng::with_seed(seed);
        let (key, p, third) =
            key_led_elsewhere(&c0, |i| format!("cut-{}-{i}", rng.u32(..))).await?;
        c0.set(key.as_bytes(), b"0")
            .await
            .map_err(|e| format!("first set: {e}"))?;
        let via = [client(nodes[0]), client(nodes[third])];
        let mut values: Vec<(u64, usize, u64)> = Vec::new();
        let mut unknown = 0u64;
        // Requests through `a` from 5 s into the cut (failure detection and the
        // takeover's collection are done by then): (answered, failed).
        let mut late = (0u64, 0u64);
        turmoil::hold(names[0].as_str(), names[p].as_str());
        let cut = tokio::time::Instant::now();
        let mut n = 0usize;
        while cut.elapsed() < Duration::from_secs(15) {
            let side = n % 2;
            n += 1;
            let at = cut.elapsed().as_millis() as u64;
            let r = via[side].incr(key.as_bytes(), 1).await;
            let counted = side == 0 && at >= 5_000;
            match r {
                Ok(Some(v)) => {
                    values.push((v, side, at));
                    late.0 += u64::from(counted);
                }
                Ok(None) => return Err(format!("{key} vanished")),
                Err(_) => {
                    unknown += 1;
                    late.1 += u64::from(counted);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        turmoil::release(names[0].as_str(), names[p].as_str());
        tokio::time::sleep(Duration::from_secs(8)).await;
        let mut problems = Vec::new();
        let mut sorted: Vec<u64> = values.iter().map(|v| v.0).collect();
        sorted.sort_unstable();
        let before = sorted.len();
        sorted.dedup();
        if sorted.len() != before {
            problems.push(format!(
                        "{} increments returned a value another one returned (two primaries); the first 20 (value, 0: via n1 1: via the third, ms into the cut): {:?}",
                        before - sorted.len(),
                        &values[..values.len().min(20)]
                    ));
        }
        let acked = values.len() as u64;
        for (i, &addr) in nodes.iter().enumerate() {
            let mut got = None;
            for _ in 0..20 {
                match client(addr).get(key.as_bytes()).await {
                    Ok(v) => {
                        got = v.and_then(|i| String::from_utf8_lossy(&i.value).parse::<u64>().ok());
                        break;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
            match got {
                Some(v) if v >= acked && v <= acked + unknown => {}
                other => problems.push(format!(
                    "n{} reads {other:?}, want {acked}..={}",
                    i + 1,
                    acked + unknown
                )),
            }
        }
        let (ok, failed) = late;
        if failed * 20 > ok + failed {
            problems.push(format!(
                "through n1, {failed} of {} increments failed from 5 s into the cut (more than 5%)",
                ok + failed
            ));
        }
        let line = format!(
            "seed {seed}: {key} (primary n{}, n1-n{} cut): {acked} increments answered, {unknown} failed; through n1 after 5 s {ok} answered, {failed} failed",
            p + 1,
            p + 1
        );
        if problems.is_empty() {
            Ok(line)
        } else {
            Err(format!("{line}\n{}", problems.join("\n")))
        }
    })
}

#[test]
fn a_cut_link_between_two_nodes_is_routed_around() {
    run_scripted_seeds(cut_link_run);
}
