//! A cluster under load: three file-mode nodes joined with `--join` and attached with
//! `k2hdkc ctl`, a gateway, and a writer that keeps setting keys and incrementing a counter
//! through the gateway while one node is killed with SIGKILL and restarted, a fourth node is
//! attached and another is detached. Every acknowledged write must be readable afterwards
//! with its last acknowledged value, no acknowledged increment may be lost, and at least 99%
//! of the operations must succeed.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use system_tests::{NetLab, Proc, bin, free_addr, wait_listening};

/// A minimal synchronous memcached text client.
struct Mc {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Mc {
    fn connect(addr: SocketAddr) -> std::io::Result<Mc> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(8)))?;
        s.set_write_timeout(Some(Duration::from_secs(8)))?;
        Ok(Mc {
            r: BufReader::new(s.try_clone()?),
            w: s,
        })
    }

    fn line(&mut self) -> std::io::Result<String> {
        let mut l = String::new();
        if self.r.read_line(&mut l)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(l.trim_end().to_string())
    }

    fn set(&mut self, k: &str, v: &str) -> std::io::Result<String> {
        self.w
            .write_all(format!("set {k} 0 0 {}\r\n{v}\r\n", v.len()).as_bytes())?;
        self.line()
    }

    fn incr(&mut self, k: &str) -> std::io::Result<String> {
        self.w.write_all(format!("incr {k} 1\r\n").as_bytes())?;
        self.line()
    }

    fn get(&mut self, k: &str) -> std::io::Result<Option<String>> {
        self.w.write_all(format!("get {k}\r\n").as_bytes())?;
        let l = self.line()?;
        if l == "END" {
            return Ok(None);
        }
        if !l.starts_with("VALUE ") {
            return Err(std::io::Error::other(l));
        }
        let v = self.line()?;
        let end = self.line()?;
        if end != "END" {
            return Err(std::io::Error::other(end));
        }
        Ok(Some(v))
    }
}

struct Node {
    name: String,
    native: SocketAddr,
    memcached: SocketAddr,
    proc: Proc,
}

fn start_node(
    dir: &Path,
    name: &str,
    native: SocketAddr,
    memcached: SocketAddr,
    seed: SocketAddr,
) -> Node {
    start_node_with(dir, name, native, memcached, seed, "batch")
}

/// [`start_node`] with an fsync policy: with `always` a restarted node lost nothing it
/// acknowledged, so it pulls only what changed; with `batch` it also pulls the records of the
/// second before its newest one (a crash may have lost them).
fn start_node_with(
    dir: &Path,
    name: &str,
    native: SocketAddr,
    memcached: SocketAddr,
    seed: SocketAddr,
    fsync: &str,
) -> Node {
    let data = dir.join(name).to_string_lossy().to_string();
    let args = server_args(
        name,
        &["--storage", "file", "--fsync", fsync, "--data-dir", &data],
        native,
        memcached,
        seed,
        &[],
    );
    let proc = Proc::start(
        &bin("k2hdkc"),
        &args,
        Some(&dir.join(format!("{name}.log"))),
    );
    assert!(
        wait_listening(native, Duration::from_secs(10)),
        "{name} did not start"
    );
    Node {
        name: name.into(),
        native,
        memcached,
        proc,
    }
}

/// The arguments of `k2hdkc server` for test node `name`: `storage` (mode, fsync, data dir),
/// its listeners, the seed to join, the test's cluster secret, and `extra`.
fn server_args(
    name: &str,
    storage: &[&str],
    native: SocketAddr,
    memcached: SocketAddr,
    seed: SocketAddr,
    extra: &[&str],
) -> Vec<String> {
    let mut a: Vec<String> = vec!["server".into(), "--name".into(), name.into()];
    a.extend(storage.iter().map(|s| s.to_string()));
    a.extend([
        "--listen".into(),
        native.to_string(),
        "--memcached-listen".into(),
        memcached.to_string(),
        "--join".into(),
        seed.to_string(),
        "--secret-file".into(),
        secret().to_string_lossy().to_string(),
    ]);
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// The cluster secret shared by nodes, gateways and tools of these tests (one file per test
/// process, removed at exit by the OS temp cleaner only; it holds a random test secret).
fn secret() -> &'static std::path::PathBuf {
    static SECRET: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    SECRET.get_or_init(|| {
        let p = std::env::temp_dir().join(format!("k2hdkc-test-secret-{}", std::process::id()));
        std::fs::write(&p, format!("test-secret-{}\n", fastrand::u64(..))).expect("secret");
        p
    })
}

fn ctl(addr: SocketAddr, args: &[&str]) -> String {
    let out = Command::new(bin("k2hdkc"))
        .arg("ctl")
        .arg(addr.to_string())
        .args(args)
        .args(["--timeout", "20"])
        .arg("--secret-file")
        .arg(secret())
        .output()
        .expect("run k2hdkc ctl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "k2hdkc ctl {args:?} failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn status(addr: SocketAddr) -> serde_json::Value {
    serde_json::from_str(&ctl(addr, &["status", "--json"])).expect("status JSON")
}

/// Wait until `f(status)` holds (bounded).
fn wait_status(
    addr: SocketAddr,
    what: &str,
    within: Duration,
    f: impl Fn(&serde_json::Value) -> bool,
) {
    let deadline = Instant::now() + within;
    loop {
        let s = status(addr);
        if f(&s) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The nodes of a `status` answer.
fn nodes_in(s: &serde_json::Value) -> std::slice::Iter<'_, serde_json::Value> {
    s["nodes"]
        .as_array()
        .expect("a status lists its nodes")
        .iter()
}

/// Wait until `addr` sees every node up and none catching up (bounded).
fn wait_caught_up(addr: SocketAddr, what: &str) {
    wait_status(addr, what, Duration::from_secs(30), |s| {
        nodes_in(s).all(|n| n["live"] == "UP" && n["catching_up"] != true)
    });
}

/// Wait until `nodes` nodes are recognised, then three copies with quorums of two, attached.
fn form_cluster(seed: SocketAddr, nodes: usize) {
    wait_status(
        seed,
        "every node recognised",
        Duration::from_secs(20),
        |s| s["nodes"].as_array().map_or(0, Vec::len) == nodes,
    );
    ctl(
        seed,
        &[
            "set-replicas",
            "3",
            "--write-quorum",
            "2",
            "--read-quorum",
            "2",
        ],
    );
    ctl(seed, &["attach", "--wait"]);
}

#[derive(Default)]
struct Tally {
    ok: u64,
    failed: u64,
    /// key -> last acknowledged value.
    acked: std::collections::BTreeMap<String, String>,
    /// Increments acknowledged.
    incrs: u64,
    /// key -> values written after its last acknowledgement whose outcome is unknown (the
    /// request failed or timed out: it may or may not have been applied).
    maybe: std::collections::BTreeMap<String, Vec<String>>,
    /// Increments whose outcome is unknown.
    maybe_incrs: u64,
}

#[test]
fn writes_survive_kill_attach_and_detach() {
    let dir = system_tests::test_dir();
    let secret = secret().clone();
    let seed = free_addr();
    let mut nodes: Vec<Node> = Vec::new();
    nodes.push(start_node(dir.path(), "n1", seed, free_addr(), seed));
    for name in ["n2", "n3"] {
        nodes.push(start_node(dir.path(), name, free_addr(), free_addr(), seed));
    }
    wait_status(
        seed,
        "three recognised nodes",
        Duration::from_secs(20),
        |s| s["nodes"].as_array().map_or(0, Vec::len) == 3,
    );
    // Without the cluster secret, control requests are refused.
    let denied = Command::new(bin("k2hdkc"))
        .args(["ctl", &seed.to_string(), "status"])
        .env_remove("K2HDKC_SECRET_FILE")
        .output()
        .expect("run ctl");
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("authentication failed"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    let out = ctl(
        seed,
        &[
            "set-replicas",
            "3",
            "--write-quorum",
            "2",
            "--read-quorum",
            "2",
        ],
    );
    assert!(out.contains("SUCCEED"), "{out}");
    let out = ctl(seed, &["attach", "--wait"]);
    assert!(out.contains("SUCCEED"), "{out}");
    let s = status(seed);
    assert_eq!(s["effective_replicas"], 3, "{s}");
    assert!(nodes_in(&s).all(|n| n["ring"] == "SERVICE IN"));

    // A gateway routes memcached clients to the owners.
    let gw_mc = free_addr();
    let gw_native = free_addr();
    let _gw = Proc::start(
        &bin("k2hdkc"),
        &[
            "gateway".into(),
            "--join".into(),
            seed.to_string(),
            "--memcached-listen".into(),
            gw_mc.to_string(),
            "--native-listen".into(),
            gw_native.to_string(),
            "--secret-file".into(),
            secret.to_string_lossy().to_string(),
        ],
        Some(&dir.path().join("gateway.log")),
    );
    assert!(wait_listening(gw_mc, Duration::from_secs(10)));
    eprintln!(
        "gateway memcached {gw_mc}; nodes {:?}",
        nodes
            .iter()
            .map(|n| (&n.name, n.memcached))
            .collect::<Vec<_>>()
    );
    std::thread::sleep(Duration::from_millis(500));

    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(gw_mc, tally.clone(), stop.clone());

    std::thread::sleep(Duration::from_secs(2));
    // A node that stops answering without closing its connections (SIGSTOP): requests in
    // flight to it time out, heartbeats route around it, and after SIGCONT it catches up on
    // what the others did meanwhile before it leads again.
    assert!(nodes[2].proc.signal("STOP"));
    std::thread::sleep(Duration::from_secs(5));
    assert!(nodes[2].proc.signal("CONT"));
    wait_status(seed, "n3 answering again", Duration::from_secs(20), |s| {
        nodes_in(s).all(|n| n["live"] == "UP")
    });
    // Kill -9 a node under load, then bring it back.
    nodes[1].proc.kill9();
    std::thread::sleep(Duration::from_secs(4));
    let n2 = &nodes[1];
    let restarted = start_node(dir.path(), "n2", n2.native, n2.memcached, seed);
    nodes[1] = restarted;
    wait_status(seed, "n2 up again", Duration::from_secs(20), |s| {
        nodes_in(s).all(|n| n["live"] == "UP")
    });
    std::thread::sleep(Duration::from_secs(1));
    // Attach a fourth node under load, then detach n3.
    nodes.push(start_node(dir.path(), "n4", free_addr(), free_addr(), seed));
    wait_status(seed, "n4 recognised", Duration::from_secs(20), |s| {
        s["nodes"].as_array().map_or(0, Vec::len) == 4
    });
    let out = ctl(seed, &["attach", "--wait"]);
    assert!(out.contains("SUCCEED"), "{out}");
    std::thread::sleep(Duration::from_secs(1));
    let out = ctl(nodes[1].native, &["detach", "n3", "--wait"]);
    assert!(out.contains("SUCCEED"), "{out}");
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");

    let s = status(seed);
    let names: Vec<&str> = nodes_in(&s).map(|n| n["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 3, "n3 left: {s}");
    assert!(!names.contains(&"n3"), "{s}");
    assert_eq!(s["moving"], false, "{s}");

    // Every acknowledged write reads back with its last acknowledged value, through the
    // gateway and through every remaining node.
    let mut readers = vec![gw_mc];
    readers.extend(nodes.iter().filter(|n| n.name != "n3").map(|n| n.memcached));
    check_history(&tally.lock().unwrap(), &readers, "cluster load");
    // And the copies agree: every partition's digests match across its owners.
    let v = ctl(seed, &["verify"]);
    assert!(v.contains("1024 partitions compared, 0 differ"), "{v}");
    // The detached node's process can stop now; the others stop when dropped.
    for n in &mut nodes {
        if n.name == "n3" {
            n.proc.terminate(Duration::from_secs(5));
        }
    }
}

/// The writer: through `addr`, sets of fresh keys, overwrites of a few hot keys, and counter
/// increments, one at a time, until `stop` (or two minutes). Acknowledgements go to `tally`.
fn spawn_writer(
    gw_mc: SocketAddr,
    tally: Arc<Mutex<Tally>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    spawn_writer_tagged(gw_mc, "", tally, stop)
}

/// [`spawn_writer`] with its own keys (`TAGkey...`, `TAGhot...`), so several writers can
/// share a tally: only the counter is common to them (increments add up whoever makes them).
fn spawn_writer_tagged(
    gw_mc: SocketAddr,
    tag: &'static str,
    tally: Arc<Mutex<Tally>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut mc: Option<Mc> = None;
        let mut i = 0u64;
        let deadline = Instant::now() + Duration::from_secs(120);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            i += 1;
            let c = match mc.as_mut() {
                Some(c) => c,
                None => match Mc::connect(gw_mc) {
                    Ok(c) => mc.insert(c),
                    Err(_) => {
                        tally.lock().unwrap().failed += 1;
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                },
            };
            let (key, value) = if i.is_multiple_of(5) {
                (format!("{tag}hot{}", i % 7), format!("v{i}"))
            } else {
                (format!("{tag}key{i}"), format!("value-{i}"))
            };
            let r = if i.is_multiple_of(3) {
                c.incr("counter").map(|r| (r, true))
            } else {
                c.set(&key, &value).map(|r| (r, false))
            };
            let mut t = tally.lock().unwrap();
            match r {
                Ok((r, false)) if r == "STORED" => {
                    t.ok += 1;
                    t.maybe.remove(&key);
                    t.acked.insert(key, value);
                }
                Ok((r, true)) if r.parse::<u64>().is_ok() => {
                    t.ok += 1;
                    t.incrs += 1;
                }
                Ok((r, true)) if r == "NOT_FOUND" => {
                    drop(t);
                    let _ = c.set("counter", "0");
                }
                _ => {
                    t.failed += 1;
                    if i.is_multiple_of(3) {
                        t.maybe_incrs += 1;
                    } else {
                        t.maybe.entry(key).or_default().push(value);
                    }
                    mc = None;
                }
            }
        }
    })
}

/// The history checker: the load ran and at least 99% of it succeeded; every acknowledged
/// key reads back through every reader with its last acknowledged value or a value written
/// after it whose request failed (so nothing acknowledged is lost and no value appears that
/// was never written); the counter counts every acknowledged increment and at most the
/// increments whose outcome is unknown besides.
fn check_history(t: &Tally, readers: &[SocketAddr], what: &str) {
    let total = t.ok + t.failed;
    eprintln!(
        "{what}: {} ok, {} failed ({:.3}% ok), {} keys, {} increments",
        t.ok,
        t.failed,
        100.0 * t.ok as f64 / total.max(1) as f64,
        t.acked.len(),
        t.incrs
    );
    assert!(t.ok > 200, "too little load ran: {}", t.ok);
    assert!(
        t.ok as f64 >= 0.99 * total as f64,
        "only {} of {} operations succeeded",
        t.ok,
        total
    );
    for &addr in readers {
        let mut c = Mc::connect(addr).expect("connect for reads");
        let readable = |c: &mut Mc, k: &String, v: &String| {
            let later = t.maybe.get(k).map_or(&[][..], Vec::as_slice);
            match c.get(k) {
                Ok(Some(got)) if got == *v || later.contains(&got) => Ok(()),
                other => Err(format!("{k}: want {v}, got {other:?}")),
            }
        };
        let misses: Vec<(&String, &String)> = t
            .acked
            .iter()
            .filter(|(k, v)| readable(&mut c, k, v).is_err())
            .collect();
        // A text get whose piece fails (an owner that does not answer in time) reads as a
        // miss, like a lost write: what is missing is read once more, a little later, and
        // only what is still missing then counts as lost.
        let mut lost = Vec::new();
        if !misses.is_empty() {
            eprintln!(
                "{what}: {} keys unreadable via {addr} at first; reading them again",
                misses.len()
            );
            std::thread::sleep(Duration::from_secs(2));
            let mut c = Mc::connect(addr).expect("connect for reads");
            for (k, v) in misses {
                if let Err(e) = readable(&mut c, k, v) {
                    lost.push(e);
                }
            }
        }
        assert!(
            lost.is_empty(),
            "{} acknowledged writes are not readable via {addr}: {:?}",
            lost.len(),
            &lost[..lost.len().min(10)]
        );
        let counter: u64 = c
            .get("counter")
            .expect("read counter")
            .expect("counter exists")
            .trim()
            .parse()
            .expect("numeric counter");
        assert!(
            counter >= t.incrs && counter <= t.incrs + t.maybe_incrs,
            "counter is {counter} but {} increments were acknowledged and {} unknown",
            t.incrs,
            t.maybe_incrs
        );
    }
}

/// A node's cluster counters (`k2hdkc stat --json`).
fn node_stats(addr: SocketAddr) -> serde_json::Value {
    let out = Command::new(bin("k2hdkc"))
        .args(["stat", &addr.to_string(), "--json", "--secret-file"])
        .arg(secret())
        .output()
        .expect("run k2hdkc stat");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stat JSON")
}

fn counter(v: &serde_json::Value, k: &str) -> u64 {
    v["cluster"][k].as_u64().unwrap_or(0)
}

/// Pipelined sets over one connection; returns how many were STORED.
fn load(addr: SocketAddr, keys: impl Iterator<Item = (String, String)>) -> usize {
    let mut c = Mc::connect(addr).expect("connect");
    let mut req = Vec::new();
    let mut n = 0;
    for (k, v) in keys {
        req.extend_from_slice(format!("set {k} 0 0 {}\r\n{v}\r\n", v.len()).as_bytes());
        n += 1;
    }
    c.w.write_all(&req).expect("send");
    let mut stored = 0;
    let mut other = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..n {
        match c.line() {
            Ok(l) if l == "STORED" => stored += 1,
            r => *other.entry(format!("{r:?}")).or_default() += 1,
        }
    }
    if !other.is_empty() {
        eprintln!("load via {addr}: {stored} stored, other replies: {other:?}");
    }
    stored
}

#[test]
fn attach_and_return_move_little_data() {
    let dir = system_tests::test_dir();
    let seed = free_addr();
    let mut nodes: Vec<Node> = vec![start_node_with(
        dir.path(),
        "n1",
        seed,
        free_addr(),
        seed,
        "always",
    )];
    for name in ["n2", "n3"] {
        nodes.push(start_node_with(
            dir.path(),
            name,
            free_addr(),
            free_addr(),
            seed,
            "always",
        ));
    }
    wait_status(
        seed,
        "three recognised nodes",
        Duration::from_secs(20),
        |s| s["nodes"].as_array().map_or(0, Vec::len) == 3,
    );
    ctl(
        seed,
        &[
            "set-replicas",
            "1",
            "--write-quorum",
            "1",
            "--read-quorum",
            "1",
        ],
    );
    ctl(seed, &["attach", "--wait"]);
    let value = "x".repeat(100);
    let keys = 4000;
    let stored = load(
        nodes[0].memcached,
        (0..keys).map(|i| (format!("k{i:05}"), value.clone())),
    );
    assert_eq!(stored, keys);

    // One replica, a 4th node: it should receive about a quarter of the keys, no more.
    nodes.push(start_node_with(
        dir.path(),
        "n4",
        free_addr(),
        free_addr(),
        seed,
        "always",
    ));
    wait_status(seed, "n4 recognised", Duration::from_secs(20), |s| {
        s["nodes"].as_array().map_or(0, Vec::len) == 4
    });
    ctl(seed, &["attach", "--wait"]);
    let st = node_stats(nodes[3].native);
    let received = counter(&st, "received");
    let items = st["stats"]["curr_items"]
        .as_str()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let quarter = keys as f64 / 4.0;
    eprintln!(
        "attach with 1 replica: n4 received {received} records, holds {items}, a quarter is {quarter}"
    );
    assert!(
        (received as f64) <= quarter * 1.1,
        "n4 received {received} records for {quarter}"
    );
    assert!(
        (items as f64) >= quarter * 0.9 && (items as f64) <= quarter * 1.1,
        "n4 holds {items}"
    );
    let mut c = Mc::connect(nodes[1].memcached).expect("connect");
    for i in (0..keys).step_by(37) {
        assert_eq!(
            c.get(&format!("k{i:05}")).expect("get"),
            Some(value.clone()),
            "k{i:05}"
        );
    }
    // A scan through any node covers the whole cluster (each node holds about a quarter),
    // page by page (the shell asks for pages of at most 1,000), in order, once each.
    let out = Command::new(bin("k2hdkc"))
        .args([
            "shell",
            &nodes[2].native.to_string(),
            "-c",
            "scan k",
            "--json",
        ])
        .output()
        .expect("run k2hdkc shell");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("shell JSON: {e}: {}", String::from_utf8_lossy(&out.stdout)));
    let scanned: Vec<String> = j["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect();
    let want: Vec<String> = (0..keys).map(|i| format!("k{i:05}")).collect();
    assert_eq!(
        scanned.len(),
        want.len(),
        "cluster-wide scan: {}",
        &String::from_utf8_lossy(&out.stdout)[..300.min(out.stdout.len())]
    );
    assert_eq!(scanned, want);

    // Three replicas; then n3 misses 1,000 changes while it is down.
    ctl(
        seed,
        &[
            "set-replicas",
            "3",
            "--write-quorum",
            "2",
            "--read-quorum",
            "2",
        ],
    );
    wait_status(
        seed,
        "three replicas in place",
        Duration::from_secs(60),
        |s| s["moving"] == false,
    );
    nodes[2].proc.kill9();
    std::thread::sleep(Duration::from_millis(300));
    let changed = 1000;
    let newer = "y".repeat(100);
    let stored = load(
        nodes[0].memcached,
        (0..changed).map(|i| {
            if i % 2 == 0 {
                (format!("k{i:05}"), newer.clone())
            } else {
                (format!("new{i:05}"), newer.clone())
            }
        }),
    );
    assert_eq!(stored, changed, "writes with one node down");
    // n3 owns only some of them (3 copies on 4 nodes): ask `k2hdkc hash` which.
    let changed_keys: Vec<String> = (0..changed)
        .map(|i| {
            if i % 2 == 0 {
                format!("k{i:05}")
            } else {
                format!("new{i:05}")
            }
        })
        .collect();
    let out = hash_json(seed, &changed_keys);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let owned = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("\"n3\""))
        .count();
    assert!(owned > changed / 2, "n3 owns {owned} of the changed keys");
    let n3 = &nodes[2];
    let back = start_node_with(dir.path(), "n3", n3.native, n3.memcached, seed, "always");
    nodes[2] = back;
    // Wait until what n3 received stops growing.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = (0, Instant::now());
    loop {
        let r = counter(&node_stats(nodes[2].native), "received");
        if r != last.0 {
            last = (r, Instant::now());
        } else if r >= owned as u64 && last.1.elapsed() > Duration::from_secs(2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "n3 received only {r} of the {owned} changes it owns"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let st = node_stats(nodes[2].native);
    let (received, bytes) = (counter(&st, "received"), counter(&st, "received_bytes"));
    // The bytes that changed: keys and values, and as the store holds them (each record also
    // carries a 28-byte header: version, expiry, flags, creation time).
    let payload: u64 = changed_keys
        .iter()
        .zip(String::from_utf8_lossy(&out.stdout).lines())
        .filter(|(_, l)| l.contains("\"n3\""))
        .map(|(k, _)| (k.len() + 100) as u64)
        .sum();
    let records = payload + owned as u64 * 28;
    eprintln!(
        "returning node: {received} records for the {owned} changes it owns ({:.2}x), {bytes} bytes for {payload} bytes of keys and values ({:.2}x), {records} bytes of records ({:.2}x)",
        received as f64 / owned as f64,
        bytes as f64 / payload as f64,
        bytes as f64 / records as f64,
    );
    assert!(
        bytes as f64 <= records as f64 * 1.2,
        "n3 pulled {bytes} bytes for {records} bytes of changed records"
    );
    // Each change reaches it once: from its primary's stream, while the replica that imported
    // it holds its own copy back until the primary's stream passed it (a full resend would be
    // ~6x; forwarding without that check 2x). Goal: 1.2x of the changes, and of their bytes.
    assert!(
        received as f64 <= owned as f64 * 1.2,
        "n3 pulled {received} records for the {owned} changes it owns"
    );
    // Its copies are current: every node answers the new values.
    for n in &nodes {
        let mut c = Mc::connect(n.memcached).expect("connect");
        assert_eq!(
            c.get("k00000").expect("get"),
            Some(newer.clone()),
            "{}",
            n.name
        );
        assert_eq!(
            c.get("new00001").expect("get"),
            Some(newer.clone()),
            "{}",
            n.name
        );
    }
}

/// A CHMPX-style file (INI) describing the cluster: servers started from it form the cluster,
/// attach and replicate without `ctl`; a gateway started from its SLAVE form serves clients;
/// rewriting the file grows and shrinks the cluster (the DBaaS's way); a broken file changes
/// nothing.
#[test]
fn chmpx_file_drives_membership() {
    let dir = system_tests::test_dir();
    struct Srv {
        id: String,
        port: SocketAddr,
        ctl: SocketAddr,
        mc: SocketAddr,
    }
    let srv: Vec<Srv> = (1..=4)
        .map(|i| Srv {
            id: format!("n{i}"),
            port: free_addr(),
            ctl: free_addr(),
            mc: free_addr(),
        })
        .collect();
    let render = |members: &[usize], mode: &str| {
        let mut s = format!(
            "# generated for the test\n[GLOBAL]\nFILEVERSION = 1\nGROUP = k2hdkc\nMODE = {mode}\n\
             DELIVERMODE = hash\nREPLICA = 1\nAUTOMERGE = on\nMAXMQSERVER = 8\n"
        );
        for &i in members {
            let v = &srv[i];
            s += &format!(
                "[SVRNODE]\nNAME = 127.0.0.1\nPORT = {}\nCTLPORT = {}\nMEMCACHED_PORT = {}\nCUSTOM_ID_SEED = {}\n",
                v.port.port(),
                v.ctl.port(),
                v.mc.port(),
                v.id
            );
        }
        s += "[SLVNODE]\nNAME = [.]*\n[K2HDKC]\nK2HTYPE = file\nMAXTHREAD = 20\n";
        s
    };
    let conf = dir.path().join("cluster.ini");
    let slave_conf = dir.path().join("slave.ini");
    // Written to a new file and renamed, as k2hr3 get-resource does.
    let write = |path: &Path, text: &str| {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, path).expect("rename");
    };
    write(&conf, &render(&[0, 1, 2], "SERVER"));
    write(&slave_conf, &render(&[0, 1, 2], "SLAVE"));
    let start = |i: usize| {
        let v = &srv[i];
        let args: Vec<String> = [
            "server",
            "--chmpx-conf",
            &conf.to_string_lossy(),
            "--ctlport",
            &v.ctl.port().to_string(),
            "--data-dir",
            &dir.path().join(&v.id).to_string_lossy(),
            "--secret-file",
            &secret().to_string_lossy(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let p = Proc::start(
            &bin("k2hdkc"),
            &args,
            Some(&dir.path().join(format!("{}.log", v.id))),
        );
        assert!(
            wait_listening(v.port, Duration::from_secs(10)),
            "{} did not start",
            v.id
        );
        p
    };
    let mut procs: Vec<Option<Proc>> = (0..3).map(|i| Some(start(i))).collect();
    let seed = srv[0].port;
    let in_service = |s: &serde_json::Value, names: &[&str]| {
        let nodes = s["nodes"].as_array().cloned().unwrap_or_default();
        s["moving"] == false
            && nodes.len() == names.len()
            && names.iter().all(|n| {
                nodes
                    .iter()
                    .any(|x| x["name"] == *n && x["ring"] == "SERVICE IN" && x["live"] == "UP")
            })
    };
    wait_status(
        seed,
        "n1..n3 in service from the file",
        Duration::from_secs(60),
        |s| in_service(s, &["n1", "n2", "n3"]) && s["replicas"] == 2,
    );
    let gw_mc = free_addr();
    let gw = Proc::start(
        &bin("k2hdkc"),
        &[
            "gateway".to_string(),
            "--chmpx-conf".into(),
            slave_conf.to_string_lossy().into(),
            "--memcached-listen".into(),
            gw_mc.to_string(),
            "--secret-file".into(),
            secret().to_string_lossy().into(),
        ],
        Some(&dir.path().join("gateway.log")),
    );
    assert!(wait_listening(gw_mc, Duration::from_secs(10)), "gateway");
    let keys = 300;
    let stored = (0..keys)
        .filter(|i| {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(mut c) = Mc::connect(gw_mc)
                    && c.set(&format!("c{i}"), &format!("v{i}"))
                        .is_ok_and(|r| r == "STORED")
                {
                    return true;
                }
                if Instant::now() > deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        .count();
    assert_eq!(stored, keys, "writes through the gateway");
    // Each node serves memcached on the port the file gave it.
    let mut c = Mc::connect(srv[1].mc).expect("n2 memcached");
    assert_eq!(c.get("c7").expect("get"), Some("v7".into()));

    // Grow: the file lists n4, which starts from it.
    write(&conf, &render(&[0, 1, 2, 3], "SERVER"));
    procs.push(Some(start(3)));
    wait_status(
        seed,
        "n4 attached from the file",
        Duration::from_secs(90),
        |s| in_service(s, &["n1", "n2", "n3", "n4"]),
    );
    // Shrink: n2 leaves the file; its data moves away and it leaves the layout.
    write(&conf, &render(&[0, 2, 3], "SERVER"));
    write(&slave_conf, &render(&[0, 2, 3], "SLAVE"));
    wait_status(
        seed,
        "n2 detached by the file",
        Duration::from_secs(90),
        |s| in_service(s, &["n1", "n3", "n4"]),
    );
    if let Some(p) = procs[1].take() {
        drop(p);
    }
    let mut c = Mc::connect(gw_mc).expect("gateway");
    for i in 0..keys {
        assert_eq!(
            c.get(&format!("c{i}")).expect("get"),
            Some(format!("v{i}")),
            "c{i} after grow and shrink"
        );
    }
    // A broken file changes nothing.
    let before = status(seed)["version"].clone();
    write(&conf, "[GLOBAL]\nGROUP = k2hdkc\nREPLICA = lots\n");
    std::thread::sleep(Duration::from_millis(2500));
    let after = status(seed);
    assert_eq!(
        after["version"], before,
        "a broken file must not change the layout"
    );
    assert!(in_service(&after, &["n1", "n3", "n4"]));
    drop(gw);
}

/// A network partition: three nodes, each in its own network namespace with its own address
/// (standard ports), a gateway outside them, and the writer running through the gateway while
/// one node's link is cut for 8 s and then healed. The cut-off node stops leading when it
/// loses the majority and catches up before leading again; the history checker then reads
/// every acknowledged write from the gateway and from every node. Needs root (skipped
/// otherwise).
#[test]
fn partitioned_node_loses_nothing() {
    let lab = match NetLab::new(3) {
        Ok(l) => l,
        Err(why) => {
            eprintln!("skipped: partitioned_node_loses_nothing needs network namespaces ({why})");
            return;
        }
    };
    let dir = system_tests::test_dir();
    let native = |i: usize| SocketAddr::new(lab.addr(i), 8020);
    let memcached = |i: usize| SocketAddr::new(lab.addr(i), 11211);
    let start = |i: usize| {
        let data = dir.path().join(format!("n{}", i + 1));
        let data = data.to_string_lossy();
        let storage = ["--storage", "file", "--fsync", "batch", "--data-dir", &data];
        start_in_lab(&lab, dir.path(), i, &storage)
    };
    // Declared after `lab`, so they stop before the namespaces go.
    let _procs: Vec<Proc> = (0..3).map(start).collect();
    let seed = native(0);
    form_cluster(seed, 3);
    let (_gw, gw_mc) = start_gateway(dir.path(), seed);
    std::thread::sleep(Duration::from_millis(500));

    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(gw_mc, tally.clone(), stop.clone());
    std::thread::sleep(Duration::from_secs(2));
    lab.cut(2);
    std::thread::sleep(Duration::from_secs(8));
    lab.heal(2);
    wait_status(seed, "n3 reachable again", Duration::from_secs(30), |s| {
        nodes_in(s).all(|n| n["live"] == "UP")
    });
    // Load after the heal exercises the returned node as a primary again.
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    let readers = [gw_mc, memcached(0), memcached(1), memcached(2)];
    check_history(&tally.lock().unwrap(), &readers, "partition");
    let v = ctl(seed, &["verify"]);
    assert!(v.contains("1024 partitions compared, 0 differ"), "{v}");
    // The cut was real: n3 noticed it had lost the majority, and caught up after the heal.
    let log = std::fs::read_to_string(dir.path().join("n3.log")).unwrap_or_default();
    assert!(
        log.contains("cut off from the majority"),
        "n3 never lost the majority:\n{log}"
    );
    assert!(
        log.contains("caught up; leading again"),
        "n3 never caught up:\n{log}"
    );
}

/// One link cut, between the counter's primary p and another node a (each still reaches
/// the third node, the gateway and the clients): writes and increments through the gateway,
/// through a and through p lose nothing and succeed (a sends requests for p's partitions
/// through the third node instead of leading them beside p, and p likewise for a's), and the
/// copies agree after the heal.
#[test]
#[ignore = "loses one acknowledged increment in about one run in eight (a known bug, see docs/cluster.md); run with --ignored"]
fn a_cut_link_between_two_nodes_loses_nothing() {
    let lab = match NetLab::new(3) {
        Ok(l) => l,
        Err(why) => {
            eprintln!(
                "skipped: a_cut_link_between_two_nodes_loses_nothing needs network namespaces ({why})"
            );
            return;
        }
    };
    let dir = system_tests::test_dir();
    let native = |i: usize| SocketAddr::new(lab.addr(i), 8020);
    let memcached = |i: usize| SocketAddr::new(lab.addr(i), 11211);
    let start = |i: usize| start_in_lab(&lab, dir.path(), i, &["--storage", "memory"]);
    // Declared after `lab`, so they stop before the namespaces go.
    let _procs: Vec<Proc> = (0..3).map(start).collect();
    let seed = native(0);
    form_cluster(seed, 3);
    let (_gw, gw_mc) = start_gateway(dir.path(), seed);
    std::thread::sleep(Duration::from_millis(500));
    // The counter's primary: two nodes leading its partition would return one value twice
    // and the final count would miss increments.
    let out = hash_json(seed, &["counter".to_string()]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("hash JSON");
    let p = j["owners"][0]["name"]
        .as_str()
        .and_then(|n| n.trim_start_matches('n').parse::<usize>().ok())
        .map(|n| n - 1)
        .unwrap_or_else(|| panic!("no primary in {j}"));
    let a = (p + 1) % 3;

    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers = [
        spawn_writer_tagged(gw_mc, "g", tally.clone(), stop.clone()),
        spawn_writer_tagged(memcached(a), "a", tally.clone(), stop.clone()),
        spawn_writer_tagged(memcached(p), "p", tally.clone(), stop.clone()),
    ];
    std::thread::sleep(Duration::from_secs(2));
    lab.cut_link(a, p);
    std::thread::sleep(Duration::from_secs(10));
    lab.heal_link(a, p);
    wait_status(
        seed,
        "every node up after the heal",
        Duration::from_secs(30),
        |s| nodes_in(s).all(|n| n["live"] == "UP"),
    );
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().expect("writer");
    }
    let readers = [gw_mc, memcached(0), memcached(1), memcached(2)];
    check_history(&tally.lock().unwrap(), &readers, "cut link");
    let v = ctl(seed, &["verify"]);
    assert!(v.contains("1024 partitions compared, 0 differ"), "{v}");
    // The cut was real, and was routed around rather than taken for a failure.
    let log_path = dir.path().join(format!("n{}.log", a + 1));
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        log.contains("routing its partitions through another node")
            || log.contains("routing to it through them"),
        "n{} never routed around n{}:\n{}",
        a + 1,
        p + 1,
        crate::python_clients::log_tail(&log_path)
    );
    assert!(
        !log.contains("cut off from the majority"),
        "n{} lost the majority over one cut link",
        a + 1
    );
}

/// `k2hdkc hash --join SEED --json KEYS...`: one line of JSON per key (partition, owners).
fn hash_json(seed: SocketAddr, keys: &[String]) -> std::process::Output {
    Command::new(bin("k2hdkc"))
        .args([
            "hash",
            "--join",
            &seed.to_string(),
            "--json",
            "--secret-file",
        ])
        .arg(secret())
        .args(keys)
        .output()
        .expect("run k2hdkc hash")
}

/// Start node n{i+1} in host `i` of `lab` (native port 8020, memcached 11211, joined through
/// host 0) with `storage` arguments; its log is DIR/n{i+1}.log.
fn start_in_lab(lab: &NetLab, dir: &Path, i: usize, storage: &[&str]) -> Proc {
    let name = format!("n{}", i + 1);
    let native = |i: usize| SocketAddr::new(lab.addr(i), 8020);
    let memcached = SocketAddr::new(lab.addr(i), 11211);
    let args = server_args(&name, storage, native(i), memcached, native(0), &[]);
    let p = lab.start(
        i,
        &bin("k2hdkc"),
        &args,
        Some(&dir.join(format!("{name}.log"))),
    );
    assert!(
        wait_listening(native(i), Duration::from_secs(10)),
        "{name} did not start"
    );
    p
}

/// A memory-mode node that restarts comes back empty: its catch-up asks the others for the
/// whole state of its partitions, not only for what changed while it was away, and it leads
/// again only with all of it.
#[test]
fn memory_node_restart_refetches_everything() {
    let dir = system_tests::test_dir();
    let start = |name: &str, native: SocketAddr, mc: SocketAddr, seed: SocketAddr| {
        let args = server_args(name, &["--storage", "memory"], native, mc, seed, &[]);
        let p = Proc::start(
            &bin("k2hdkc"),
            &args,
            Some(&dir.path().join(format!("{name}.log"))),
        );
        assert!(wait_listening(native, Duration::from_secs(10)), "{name}");
        p
    };
    let addrs: Vec<(SocketAddr, SocketAddr)> = (0..3).map(|_| (free_addr(), free_addr())).collect();
    let seed = addrs[0].0;
    let mut procs: Vec<Proc> = (0..3)
        .map(|i| start(&format!("n{}", i + 1), addrs[i].0, addrs[i].1, seed))
        .collect();
    form_cluster(seed, 3);
    let keys = 2000;
    let stored = load(
        addrs[0].1,
        (0..keys).map(|i| (format!("m{i:05}"), format!("value-{i}"))),
    );
    assert_eq!(stored, keys);
    // n3 dies and comes back empty; 200 more writes happen meanwhile.
    procs[2].kill9();
    std::thread::sleep(Duration::from_millis(300));
    let more = load(
        addrs[0].1,
        (0..200).map(|i| (format!("late{i:03}"), "x".to_string())),
    );
    assert_eq!(more, 200);
    procs[2] = start("n3", addrs[2].0, addrs[2].1, seed);
    // With three copies on three nodes, n3 holds every key once it caught up.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let items = node_stats(addrs[2].0)["cluster"]["items"]
            .as_u64()
            .unwrap_or(0);
        if items == (keys + 200) as u64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "n3 holds {items} of {} items after its restart",
            keys + 200
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // And serves them as their primary where it is one.
    let mut c = Mc::connect(addrs[2].1).expect("n3");
    for i in (0..keys).step_by(97) {
        assert_eq!(
            c.get(&format!("m{i:05}")).expect("get"),
            Some(format!("value-{i}"))
        );
    }
}

/// Hinted handoff survives a crash of the nodes that hold the hints: n3 is stopped (SIGSTOP),
/// 300 writes land on n1 and n2 only, both are killed (-9) and restarted, n3 resumes, and
/// n3 gets every write from their saved stream positions. Anti-entropy is off and nothing
/// reads, so no other repair can hide a lost hint.
#[test]
fn hints_survive_a_crash_of_the_nodes_holding_them() {
    let dir = system_tests::test_dir();
    let d = dir.path().to_path_buf();
    let addrs: Vec<(SocketAddr, SocketAddr)> = (0..3).map(|_| (free_addr(), free_addr())).collect();
    let seed = addrs[0].0;
    let start = |i: usize| start_file_node(&d, &addrs, i, "batch", &["--anti-entropy-secs", "0"]);
    let mut procs: Vec<Proc> = (0..3).map(start).collect();
    form_cluster(seed, 3);
    let first = load(
        addrs[0].1,
        (0..100).map(|i| (format!("a{i:03}"), "x".into())),
    );
    assert_eq!(first, 100);
    wait_items(addrs[2].0, 100, "first writes");
    assert!(procs[2].signal("STOP"), "SIGSTOP n3");
    // Both writers' failure detectors, not only the seed's: a node that still sees n3 up
    // routes n3's keys on to it for a heartbeat interval, longer on a loaded host (a CI run
    // had 170 of the 300 writes time out so).
    for (i, a) in addrs.iter().enumerate().take(2) {
        wait_status(
            a.0,
            &format!("n3 down at n{}", i + 1),
            Duration::from_secs(30),
            |s| nodes_in(s).any(|n| n["name"] == "n3" && n["live"] == "DOWN"),
        );
    }
    let hinted = load(
        addrs[0].1,
        (0..300).map(|i| (format!("h{i:03}"), "y".into())),
    );
    assert_eq!(hinted, 300, "writes with n3 down");
    for i in [0, 1] {
        assert_eq!(items_of(addrs[i].0), 400, "n{}", i + 1);
    }
    // Past one save of the stream positions (every second at most).
    std::thread::sleep(Duration::from_millis(1500));
    procs[0].kill9();
    procs[1].kill9();
    assert!(procs[2].signal("CONT"), "SIGCONT n3");
    procs[0] = start(0);
    procs[1] = start(1);
    wait_items(
        addrs[2].0,
        400,
        "n3 after the nodes holding its hints restarted",
    );
    // Reads need a quorum of owners that lead again (a text get that cannot reach one reads
    // as a miss): on a loaded host the restarted nodes may still be catching up here.
    wait_caught_up(addrs[2].0, "every node up and caught up");
    let mut m = Mc::connect(addrs[2].1).expect("n3");
    assert_eq!(m.get("h299").expect("get"), Some("y".into()));
    drop(procs);
}

/// A gateway joined through `seed` with the test secret, its memcached port listening; its
/// log in `dir`.
fn start_gateway(dir: &Path, seed: SocketAddr) -> (Proc, SocketAddr) {
    let mc = free_addr();
    let p = Proc::start(
        &bin("k2hdkc"),
        &[
            "gateway".to_string(),
            "--join".into(),
            seed.to_string(),
            "--memcached-listen".into(),
            mc.to_string(),
            "--secret-file".into(),
            secret().to_string_lossy().into(),
        ],
        Some(&dir.join("gateway.log")),
    );
    assert!(wait_listening(mc, Duration::from_secs(10)), "gateway");
    (p, mc)
}

/// Memory-mode nodes n1.. at `addrs` (native, memcached), joined through the first, with the
/// test secret and `extra` arguments; logs in `dir`.
fn memory_nodes(dir: &Path, addrs: &[(SocketAddr, SocketAddr)], extra: &[&str]) -> Vec<Proc> {
    let mut storage = vec!["--storage", "memory"];
    storage.extend_from_slice(extra);
    addrs
        .iter()
        .enumerate()
        .map(|(i, &(native, mc))| {
            let name = format!("n{}", i + 1);
            let args = server_args(&name, &storage, native, mc, addrs[0].0, &[]);
            let p = Proc::start(
                &bin("k2hdkc"),
                &args,
                Some(&dir.join(format!("{name}.log"))),
            );
            assert!(wait_listening(native, Duration::from_secs(10)), "{name}");
            p
        })
        .collect()
}

/// `k2hdkc bench --join`: the load generator runs a gateway in its own process (the slave
/// node inside the client), which joins with the cluster secret, writes the sets straight to
/// their owners and reads through them; every preloaded key is then readable at a node, with
/// a value the load wrote. Without the secret the embedded gateway is refused and the command
/// says so instead of measuring nothing.
#[test]
fn embedded_gateway_reaches_the_owners() {
    let dir = system_tests::test_dir();
    let addrs: Vec<(SocketAddr, SocketAddr)> = (0..3).map(|_| (free_addr(), free_addr())).collect();
    let seed = addrs[0].0;
    let _procs = memory_nodes(dir.path(), &addrs, &[]);
    form_cluster(seed, 3);
    let bench = |secret_file: &Path| {
        Command::new(bin("k2hdkc"))
            .args(["bench", "--join", &seed.to_string(), "--secret-file"])
            .arg(secret_file)
            .args([
                "--keys",
                "300",
                "--requests",
                "3000",
                "-c",
                "2",
                "-p",
                "4",
                "--ratio",
                "1:1",
                "--json",
            ])
            .output()
            .expect("run k2hdkc bench")
    };
    let before: u64 = addrs
        .iter()
        .map(|a| counter(&node_stats(a.0), "direct_puts"))
        .sum();
    let out = bench(secret());
    // (Failed once in CI with "the owner of the key did not answer" during the preload, not
    // since in six runs alone: the nodes' logs say why, next time.)
    assert!(
        out.status.success(),
        "bench --join failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        (1..=3)
            .map(|i| {
                let log = dir.path().join(format!("n{i}.log"));
                format!(
                    "n{i}.log (tail):\n{}",
                    crate::python_clients::log_tail(&log)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bench JSON");
    assert!(j["ops"].as_u64().unwrap_or(0) >= 3000, "{j}");
    assert_eq!(j["addr"], "embedded gateway", "{j}");
    // Every key was preloaded, so every get hits.
    assert_eq!(j["get_hit_ratio"].as_f64(), Some(1.0), "{j}");
    let after: u64 = addrs
        .iter()
        .map(|a| counter(&node_stats(a.0), "direct_puts"))
        .sum();
    // Preload (300) and about half of 3000 (at random) are sets, each written to two owners
    // directly.
    assert!(
        after - before >= 2 * (300 + 1200),
        "direct puts {before} -> {after}"
    );
    // The native protocol over the same kind of in-process connection.
    let out = Command::new(bin("k2hdkc"))
        .args(["bench", "--join", &seed.to_string(), "--secret-file"])
        .arg(secret())
        .args([
            "--protocol",
            "native",
            "--keys",
            "300",
            "--requests",
            "1000",
        ])
        .args(["-c", "2", "-p", "4", "--ratio", "1:1", "--json"])
        .output()
        .expect("run k2hdkc bench");
    assert!(
        out.status.success(),
        "bench --join --protocol native failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bench JSON");
    assert_eq!(j["get_hit_ratio"].as_f64(), Some(1.0), "{j}");
    let mut c = Mc::connect(addrs[1].1).expect("n2");
    for i in (0..300).step_by(29) {
        let v = c
            .get(&format!("{i:0>16}"))
            .expect("get")
            .unwrap_or_default();
        assert!(
            v == "v".repeat(100) || v == "x".repeat(100),
            "key {i}: {v:?}"
        );
    }
    let wrong = dir.path().join("wrong-secret");
    std::fs::write(&wrong, "not-the-secret-of-this-cluster-at-all\n").expect("write");
    let out = bench(&wrong);
    assert!(!out.status.success(), "bench with a wrong secret succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("could not reach"), "{err}");
}

/// A gateway batch keeps its order when its sets go through the primary: with history on,
/// every node refuses a set written straight to it (the record needs its old state), so a
/// gateway set would fall back to the primary after the rest of the batch ran there. A set
/// followed in the batch by another request of its key therefore goes through the primary in
/// line: a get after it sees it, an append after it extends it, a second set of the key wins.
#[test]
fn gateway_batch_keeps_order_when_sets_go_through_the_primary() {
    let dir = system_tests::test_dir();
    let conf = dir.path().join("history.toml");
    std::fs::write(&conf, "[storage]\nhistory = 2\n").expect("config");
    let conf = conf.to_string_lossy().to_string();
    let addrs: Vec<(SocketAddr, SocketAddr)> = (0..3).map(|_| (free_addr(), free_addr())).collect();
    let seed = addrs[0].0;
    let _procs = memory_nodes(dir.path(), &addrs, &["--config", &conf]);
    form_cluster(seed, 3);
    let (_gw, gw_mc) = start_gateway(dir.path(), seed);
    let mut c = Mc::connect(gw_mc).expect("gateway");
    // The gateway may need a moment to learn the layout.
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.set("warm", "up").map_or(true, |r| r != "STORED") {
        assert!(Instant::now() < deadline, "the gateway never stored a key");
        std::thread::sleep(Duration::from_millis(200));
        c = Mc::connect(gw_mc).expect("gateway");
    }
    for i in 0..20 {
        let (a, b) = (format!("a{i}"), format!("b{i}"));
        let batch = format!(
            "set k{i} 0 0 {la}\r\n{a}\r\nget k{i}\r\nappend k{i} 0 0 1\r\nx\r\nget k{i}\r\n\
             set j{i} 0 0 {la}\r\n{a}\r\nset j{i} 0 0 {lb}\r\n{b}\r\nget j{i}\r\n",
            la = a.len(),
            lb = b.len()
        );
        c.w.write_all(batch.as_bytes()).expect("send");
        let mut got = Vec::new();
        for _ in 0..13 {
            match c.line() {
                Ok(l) => got.push(l),
                Err(e) => panic!("batch {i}: after {got:?}: {e}"),
            }
        }
        let ax = format!("{a}x");
        let want = vec![
            "STORED".to_string(),
            format!("VALUE k{i} 0 {}", a.len()),
            a.clone(),
            "END".into(),
            "STORED".into(),
            format!("VALUE k{i} 0 {}", ax.len()),
            ax,
            "END".into(),
            "STORED".into(),
            "STORED".into(),
            format!("VALUE j{i} 0 {}", b.len()),
            b.clone(),
            "END".into(),
        ];
        assert_eq!(got, want, "batch {i}");
    }
    // A set alone in its batch is refused by the primary, falls back and is still stored.
    assert_eq!(c.set("alone", "v").expect("set"), "STORED");
    assert_eq!(c.get("alone").expect("get"), Some("v".to_string()));
}

/// Mutual TLS on the native port: nodes, the gateway and `ctl` present certificates from the
/// cluster CA; `ctl` without a certificate, or with one from another CA, is refused during the
/// handshake, and memcached clients of the gateway notice nothing. Needs the `openssl` command
/// (skipped with a message otherwise).
/// With the `openssl` command, make in `d` two CAs (`ca`, `other`) and a key and certificate
/// signed by each (`node` by `ca`, `stranger` by `other`); false without the command.
fn make_certs(d: &Path) -> bool {
    let sh = |args: &[String]| {
        Command::new("openssl")
            .args(args)
            .current_dir(d)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<String>>();
    let ec = v(&[
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ]);
    let mut ok = true;
    for (ca, who) in [("ca", "node"), ("other", "stranger")] {
        let mut a = v(&["req", "-x509"]);
        a.extend(ec.clone());
        a.extend(v(&[
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.pem"),
        ]));
        a.extend(v(&["-days", "2", "-subj", "/CN=test-ca"]));
        ok &= sh(&a);
        let mut r = v(&["req"]);
        r.extend(ec.clone());
        r.extend(v(&[
            "-keyout",
            &format!("{who}.key"),
            "-out",
            &format!("{who}.csr"),
        ]));
        r.extend(v(&["-subj", "/CN=k2hdkc"]));
        ok &= sh(&r);
        ok &= sh(&v(&[
            "x509",
            "-req",
            "-in",
            &format!("{who}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{who}.pem"),
            "-days",
            "2",
        ]));
    }
    ok
}

#[test]
fn tls_cluster_refuses_strangers() {
    let dir = system_tests::test_dir();
    let d = dir.path();
    if !make_certs(d) {
        eprintln!(
            "skipped: tls_cluster_refuses_strangers needs the openssl command to make certificates"
        );
        return;
    }
    let p = |f: &str| d.join(f).to_string_lossy().to_string();
    let tls = |who: &str| -> Vec<String> {
        vec![
            "--tls-ca".into(),
            p("ca.pem"),
            "--tls-cert".into(),
            p(&format!("{who}.pem")),
            "--tls-key".into(),
            p(&format!("{who}.key")),
        ]
    };
    let addrs: Vec<(SocketAddr, SocketAddr)> = (0..3).map(|_| (free_addr(), free_addr())).collect();
    let seed = addrs[0].0;
    let _procs: Vec<Proc> = (0..3)
        .map(|i| {
            let name = format!("n{}", i + 1);
            let mut args = server_args(
                &name,
                &["--storage", "memory"],
                addrs[i].0,
                addrs[i].1,
                seed,
                &[],
            );
            args.extend(tls("node"));
            let pr = Proc::start(&bin("k2hdkc"), &args, Some(&d.join(format!("{name}.log"))));
            assert!(
                wait_listening(addrs[i].0, Duration::from_secs(10)),
                "{name}"
            );
            pr
        })
        .collect();
    let ctl_as = |who: Option<&str>, args: &[&str]| {
        let mut c = Command::new(bin("k2hdkc"));
        c.arg("ctl")
            .arg(seed.to_string())
            .args(args)
            .args(["--timeout", "20"]);
        c.arg("--secret-file").arg(secret());
        c.env_remove("K2HDKC_TLS_CA")
            .env_remove("K2HDKC_TLS_CERT")
            .env_remove("K2HDKC_TLS_KEY");
        if let Some(w) = who {
            c.args(tls(w));
        }
        c.output().expect("run k2hdkc ctl")
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = ctl_as(Some("node"), &["status", "--json"]);
        let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        if s["nodes"].as_array().map_or(0, Vec::len) == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nodes did not join over TLS: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let o = ctl_as(Some("node"), &["attach", "--wait"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Strangers are refused: no certificate, or one from another CA.
    for who in [None, Some("stranger")] {
        let o = ctl_as(who, &["status"]);
        assert!(
            !o.status.success(),
            "ctl as {who:?} got in: {}",
            String::from_utf8_lossy(&o.stdout)
        );
    }
    let log = std::fs::read_to_string(d.join("n1.log")).unwrap_or_default();
    assert!(
        log.contains("refused a connection without a valid cluster certificate"),
        "{log}"
    );
    // A gateway with the cluster's certificate serves plain memcached clients.
    let gw_mc = free_addr();
    let mut gargs: Vec<String> = vec![
        "gateway".into(),
        "--join".into(),
        seed.to_string(),
        "--memcached-listen".into(),
        gw_mc.to_string(),
        "--secret-file".into(),
        secret().to_string_lossy().to_string(),
    ];
    gargs.extend(tls("node"));
    let _gw = Proc::start(&bin("k2hdkc"), &gargs, Some(&d.join("gateway.log")));
    assert!(wait_listening(gw_mc, Duration::from_secs(10)));
    let stored = (0..200)
        .filter(|i| {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(mut c) = Mc::connect(gw_mc)
                    && c.set(&format!("t{i}"), "v").is_ok_and(|r| r == "STORED")
                {
                    return true;
                }
                if Instant::now() > deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        .count();
    assert_eq!(stored, 200);
    let mut c = Mc::connect(addrs[1].1).expect("n2");
    assert_eq!(c.get("t42").expect("get"), Some("v".into()));
}

/// TLS on the memcached port: a node with `--memcached-tls-cert/-key` serves TLS clients
/// (`k2hdkc bench --tls-ca`) and answers nothing to a plain one; a client trusting another CA
/// is refused; with `--memcached-tls-client-ca` a client must also present a certificate
/// from that CA. Needs the `openssl` command (skipped with a message otherwise).
#[test]
fn memcached_tls_is_required_when_configured() {
    let dir = system_tests::test_dir();
    let d = dir.path();
    if !make_certs(d) {
        eprintln!(
            "skipped: memcached_tls_is_required_when_configured needs the openssl command to make certificates"
        );
        return;
    }
    let p = |f: &str| d.join(f).to_string_lossy().to_string();
    let start = |extra: &[String], log: &str| {
        let mc = free_addr();
        let mut args: Vec<String> = vec![
            "server".into(),
            "--storage".into(),
            "memory".into(),
            "--memcached-listen".into(),
            mc.to_string(),
            "--memcached-tls-cert".into(),
            p("node.pem"),
            "--memcached-tls-key".into(),
            p("node.key"),
        ];
        args.extend(extra.iter().cloned());
        let pr = Proc::start(&bin("k2hdkc"), &args, Some(&d.join(log)));
        assert!(wait_listening(mc, Duration::from_secs(10)), "{log}");
        (pr, mc)
    };
    let bench = |addr: SocketAddr, tls: &[String]| {
        let o = Command::new(bin("k2hdkc"))
            .arg("bench")
            .arg(addr.to_string())
            .args([
                "--keys",
                "200",
                "--duration",
                "1",
                "-c",
                "2",
                "-p",
                "4",
                "--json",
            ])
            .args(tls)
            .output()
            .expect("run k2hdkc bench");
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        (
            o.status.success(),
            j,
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    let (_server, mc) = start(&[], "tls.log");
    let (ok, j, err) = bench(mc, &["--tls-ca".into(), p("ca.pem")]);
    assert!(ok, "bench over TLS failed: {err}");
    assert!(j["ops"].as_u64().unwrap_or(0) > 100, "{j}");
    // A plain client gets no answer: the port speaks only TLS.
    let mut plain = TcpStream::connect(mc).expect("connect");
    plain
        .set_read_timeout(Some(Duration::from_secs(12)))
        .unwrap();
    let _ = plain.write_all(b"version\r\n");
    let mut got = Vec::new();
    let _ = std::io::Read::read_to_end(&mut plain, &mut got);
    assert!(
        !String::from_utf8_lossy(&got).contains("VERSION"),
        "a plain client was served: {got:?}"
    );
    // A client that trusts another CA refuses the server.
    let (ok, _, _) = bench(mc, &["--tls-ca".into(), p("other.pem")]);
    assert!(!ok, "a client trusting another CA connected");
    // Client certificates required.
    let (_server2, mc2) = start(
        &["--memcached-tls-client-ca".into(), p("ca.pem")],
        "tls-mutual.log",
    );
    let (ok, _, _) = bench(mc2, &["--tls-ca".into(), p("ca.pem")]);
    assert!(!ok, "a client without a certificate got in");
    let stranger = [
        "--tls-ca".to_string(),
        p("ca.pem"),
        "--tls-cert".into(),
        p("stranger.pem"),
        "--tls-key".into(),
        p("stranger.key"),
    ];
    let (ok, _, _) = bench(mc2, &stranger);
    assert!(!ok, "a client with another CA's certificate got in");
    let node = [
        "--tls-ca".to_string(),
        p("ca.pem"),
        "--tls-cert".into(),
        p("node.pem"),
        "--tls-key".into(),
        p("node.key"),
    ];
    let (ok, j, err) = bench(mc2, &node);
    assert!(ok, "bench with a client certificate failed: {err}");
    assert!(j["ops"].as_u64().unwrap_or(0) > 100, "{j}");
    let log = std::fs::read_to_string(d.join("tls-mutual.log")).unwrap_or_default();
    assert!(
        log.contains("refused a client without TLS or a valid certificate"),
        "{log}"
    );
}

/// A node brought back from an old copy of its disk (fsync=always, so it asks for nothing on
/// restart, and the others' streams believe it has everything) lacks what was written since
/// the copy. `ctl verify` sees the difference and anti-entropy (every 2 s here) has the
/// primaries resend the differing partitions until the copies agree again.
/// Three file-mode nodes (fsync=always) whose n3 is then put back on an old copy of its disk:
/// it holds `a000..a299 = old` while the others hold `a000..a299` and `b000..b299` = `new`, and
/// with fsync=always it asks for nothing on restart (the others' streams believe it has
/// everything). `extra` goes to every node.
struct StaleCluster {
    _dir: tempfile::TempDir,
    procs: Vec<Proc>,
    addrs: Vec<(SocketAddr, SocketAddr)>,
}

fn items_of(addr: SocketAddr) -> u64 {
    node_stats(addr)["cluster"]["items"].as_u64().unwrap_or(0)
}

fn wait_items(addr: SocketAddr, n: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while items_of(addr) != n {
        assert!(
            Instant::now() < deadline,
            "{what}: {addr} holds {}",
            items_of(addr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Start file-mode node `n{i+1}` of the test cluster at `addrs` (native, memcached; the first
/// is the seed), with its data and log in `d`, the fsync policy and `extra` flags.
fn start_file_node(
    d: &Path,
    addrs: &[(SocketAddr, SocketAddr)],
    i: usize,
    fsync: &str,
    extra: &[&str],
) -> Proc {
    let name = format!("n{}", i + 1);
    let data = d.join(&name).to_string_lossy().to_string();
    let storage = ["--storage", "file", "--fsync", fsync, "--data-dir", &data];
    let args = server_args(&name, &storage, addrs[i].0, addrs[i].1, addrs[0].0, extra);
    let p = Proc::start(&bin("k2hdkc"), &args, Some(&d.join(format!("{name}.log"))));
    assert!(
        wait_listening(addrs[i].0, Duration::from_secs(10)),
        "{name}"
    );
    p
}

/// Keys a stale cluster's copies agree on.
const STALE_SAME: u64 = 5000;

/// Three file nodes where n3 runs on an old copy of its disk: it has the 300 `a` keys at
/// `old` where the others have `new`, lacks the 300 `b` keys, and agrees on [`STALE_SAME`]
/// `c` keys.
fn stale_cluster(extra: &[&str]) -> StaleCluster {
    let dir = system_tests::test_dir();
    let d = dir.path().to_path_buf();
    let addrs: Vec<(SocketAddr, SocketAddr)> = (0..3).map(|_| (free_addr(), free_addr())).collect();
    let seed = addrs[0].0;
    let start = |i: usize| start_file_node(&d, &addrs, i, "always", extra);
    let mut procs: Vec<Proc> = (0..3).map(start).collect();
    form_cluster(seed, 3);
    let keys = |p: &'static str, v: &'static str| {
        (0..300).map(move |i| (format!("{p}{i:03}"), v.to_string()))
    };
    // Keys every copy agrees on, beside the ones that will differ.
    let same = (0..STALE_SAME).map(|i| (format!("c{i:05}"), "same".to_string()));
    assert_eq!(load(addrs[0].1, same), STALE_SAME as usize);
    assert_eq!(load(addrs[0].1, keys("a", "old")), 300);
    wait_items(addrs[2].0, STALE_SAME + 300, "first writes");
    // Copy n3's disk while it is stopped, bring it back, write more, then restore the copy.
    procs[2].terminate(Duration::from_secs(10));
    let copy = d.join("n3-copy");
    assert!(
        Command::new("cp")
            .arg("-a")
            .arg(d.join("n3"))
            .arg(&copy)
            .status()
            .unwrap()
            .success()
    );
    procs[2] = start(2);
    wait_status(seed, "n3 back", Duration::from_secs(30), |s| {
        nodes_in(s).all(|n| n["live"] == "UP")
    });
    assert_eq!(
        load(addrs[0].1, keys("a", "new").chain(keys("b", "new"))),
        600
    );
    wait_items(addrs[2].0, STALE_SAME + 600, "second writes");
    procs[2].terminate(Duration::from_secs(10));
    std::fs::remove_dir_all(d.join("n3")).unwrap();
    std::fs::rename(&copy, d.join("n3")).unwrap();
    procs[2] = start(2);
    wait_caught_up(seed, "n3 back on its old disk");
    StaleCluster {
        _dir: dir,
        procs,
        addrs,
    }
}

#[test]
fn anti_entropy_repairs_a_stale_disk() {
    let c = stale_cluster(&["--anti-entropy-secs", "2"]);
    let (addrs, seed) = (&c.addrs, c.addrs[0].0);
    // Nothing else repairs it (no reads here): only the anti-entropy rounds bring n3 back to
    // all its keys.
    wait_items(addrs[2].0, STALE_SAME + 600, "anti-entropy");
    let sum = |k: &str| -> u64 {
        (0..3)
            .map(|i| node_stats(addrs[i].0)["cluster"][k].as_u64().unwrap_or(0))
            .sum()
    };
    let (repairs, records) = (sum("anti_entropy_repairs"), sum("anti_entropy_records"));
    assert!(repairs > 0, "n3 was repaired without anti-entropy");
    // 600 keys differ, in about 450 partitions (whole, they made 5,562 records in one
    // round). Leaf by leaf, n1 and n2 send n3 about the 600 differing keys each, n3 sends
    // them its 300 old ones each, and n1 and n2 exchange nothing; a second round may repair
    // what was younger than the digests' five seconds at the first (seen: 1,947-2,596).
    eprintln!(
        "anti-entropy: {repairs} differing partitions, {records} records sent for 600 differing keys of {}",
        STALE_SAME + 600
    );
    assert!(
        (600..4200).contains(&records),
        "anti-entropy sent {records} records for 600 differing keys"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = ctl(seed, &["verify", "--json"]);
        let j: serde_json::Value = serde_json::from_str(&v).expect("verify JSON");
        if j["differ"].as_array().is_some_and(Vec::is_empty) && j["compared"] == 1024 {
            break;
        }
        assert!(Instant::now() < deadline, "copies still differ: {v}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut m = Mc::connect(addrs[2].1).expect("n3");
    assert_eq!(m.get("b123").expect("get"), Some("new".into()));
    assert_eq!(m.get("a123").expect("get"), Some("new".into()));
    drop(c.procs);
}

/// Reads every `a`/`b` key through `addr`; returns how many did not read `new`.
fn stale_reads(addr: SocketAddr) -> usize {
    let mut m = Mc::connect(addr).expect("connect");
    (0..300)
        .flat_map(|i| [format!("a{i:03}"), format!("b{i:03}")])
        .filter(|k| m.get(k).expect("get").as_deref() != Some("new"))
        .count()
}

#[test]
fn quorum_reads_repair_a_stale_copy() {
    // No anti-entropy: only reads can repair n3.
    let c = stale_cluster(&["--anti-entropy-secs", "0"]);
    let (addrs, seed) = (&c.addrs, c.addrs[0].0);
    let quorum = |r: &str| {
        ctl(
            seed,
            &[
                "set-replicas",
                "3",
                "--write-quorum",
                "2",
                "--read-quorum",
                r,
            ],
        );
        wait_status(seed, "read quorum", Duration::from_secs(20), |s| {
            s["read_quorum"].as_u64() == r.parse().ok()
        });
    };
    // R = 1: reads of keys that n3 leads see its stale copy (old values and misses).
    quorum("1");
    let before = stale_reads(addrs[0].1);
    assert!(
        before > 0,
        "n3 served no stale copy: the test shows nothing"
    );
    assert!(items_of(addrs[2].0) < STALE_SAME + 600);
    // R = 2: every read compares two copies and returns the newest; the copies that were
    // behind are repaired along the way.
    quorum("2");
    assert_eq!(
        stale_reads(addrs[0].1),
        0,
        "a quorum read returned a stale value"
    );
    assert_eq!(
        stale_reads(addrs[1].1),
        0,
        "a quorum read returned a stale value"
    );
    let repairs: u64 = (0..3)
        .map(|i| {
            node_stats(addrs[i].0)["cluster"]["read_repairs"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum();
    assert!(repairs > 0, "no read repair counted");
    // n3 itself now answers with the new values even at R = 1 where it leads, and holds
    // more than before.
    quorum("1");
    let mut m = Mc::connect(addrs[2].1).expect("n3");
    let fresh = (0..300)
        .filter(|i| m.get(&format!("b{i:03}")).expect("get").as_deref() == Some("new"))
        .count();
    assert!(
        fresh > 100,
        "n3 holds {fresh} of the 300 b keys after read repair"
    );
    eprintln!(
        "stale reads at R=1: {before}; read repairs: {repairs}; n3 holds {} items",
        items_of(addrs[2].0)
    );
    drop(c.procs);
}
