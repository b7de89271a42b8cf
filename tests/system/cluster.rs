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

use system_tests::{Proc, bin, free_addr, wait_listening};

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
    let args: Vec<String> = [
        "server",
        "--name",
        name,
        "--storage",
        "file",
        "--fsync",
        "batch",
        "--data-dir",
        &dir.join(name).to_string_lossy(),
        "--listen",
        &native.to_string(),
        "--memcached-listen",
        &memcached.to_string(),
        "--join",
        &seed.to_string(),
        "--secret-file",
        &dir.join("secret").to_string_lossy(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
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

/// The cluster secret shared by nodes, gateway and tools in this test.
static SECRET: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

fn ctl(addr: SocketAddr, args: &[&str]) -> String {
    let out = Command::new(bin("k2hdkc"))
        .arg("ctl")
        .arg(addr.to_string())
        .args(args)
        .args(["--timeout", "20"])
        .arg("--secret-file")
        .arg(SECRET.get().expect("secret"))
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

#[derive(Default)]
struct Tally {
    ok: u64,
    failed: u64,
    /// key -> last acknowledged value.
    acked: std::collections::BTreeMap<String, String>,
    /// Increments acknowledged.
    incrs: u64,
}

#[test]
fn writes_survive_kill_attach_and_detach() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, format!("test-secret-{}\n", fastrand::u64(..))).expect("secret");
    SECRET.set(secret.clone()).expect("set once");
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
    assert!(
        s["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["ring"] == "SERVICE IN")
    );

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
    std::thread::sleep(Duration::from_millis(500));

    // The writer: sets of fresh keys, overwrites of a few hot keys, and counter increments.
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let tally = tally.clone();
        let stop = stop.clone();
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
                    (format!("hot{}", i % 7), format!("v{i}"))
                } else {
                    (format!("key{i}"), format!("value-{i}"))
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
                        mc = None;
                    }
                }
            }
        })
    };

    std::thread::sleep(Duration::from_secs(2));
    // Kill -9 a node under load, then bring it back.
    nodes[1].proc.kill9();
    std::thread::sleep(Duration::from_secs(4));
    let n2 = &nodes[1];
    let restarted = start_node(dir.path(), "n2", n2.native, n2.memcached, seed);
    nodes[1] = restarted;
    wait_status(seed, "n2 up again", Duration::from_secs(20), |s| {
        s["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["live"] == "UP")
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
    let names: Vec<&str> = s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 3, "n3 left: {s}");
    assert!(!names.contains(&"n3"), "{s}");
    assert_eq!(s["moving"], false, "{s}");

    // Every acknowledged write reads back with its last acknowledged value, through the
    // gateway and through every remaining node.
    let t = tally.lock().unwrap();
    let total = t.ok + t.failed;
    eprintln!(
        "cluster load: {} ok, {} failed ({:.3}% ok), {} keys, {} increments",
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
    let mut readers = vec![gw_mc];
    readers.extend(nodes.iter().filter(|n| n.name != "n3").map(|n| n.memcached));
    for addr in readers {
        let mut c = Mc::connect(addr).expect("connect for reads");
        let mut lost = Vec::new();
        for (k, v) in &t.acked {
            match c.get(k) {
                Ok(Some(got)) if got == *v => {}
                other => lost.push(format!("{k}: want {v}, got {other:?}")),
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
            counter >= t.incrs,
            "counter is {counter} but {} increments were acknowledged",
            t.incrs
        );
    }
    // The detached node's process can stop now; the others stop when dropped.
    for n in &mut nodes {
        if n.name == "n3" {
            n.proc.terminate(Duration::from_secs(5));
        }
    }
}
