//! The `k2hdkc shell` and `k2hdkc bench` tools against a real `k2hdkc server` process, and the
//! server's JSON log format.

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::Duration;

use system_tests::{Proc, bin, free_addr, wait_listening};

struct Server {
    proc: Proc,
    native: SocketAddr,
    memcached: SocketAddr,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn server(extra: &[&str]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let (native, memcached) = (free_addr(), free_addr());
    let mut args: Vec<String> = vec![
        "server".into(),
        "--storage".into(),
        "memory".into(),
        "--native-listen".into(),
        native.to_string(),
        "--memcached-listen".into(),
        memcached.to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let proc = Proc::start(&bin("k2hdkc"), &args, Some(&log));
    assert!(
        wait_listening(native, Duration::from_secs(20)),
        "server did not start"
    );
    assert!(wait_listening(memcached, Duration::from_secs(5)));
    Server {
        proc,
        native,
        memcached,
        log,
        _dir: dir,
    }
}

fn k2hdkc(args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut cmd = Command::new("timeout");
    cmd.arg("120").arg(bin("k2hdkc")).args(args);
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .stdin(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn json_lines(o: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

#[test]
fn shell_runs_every_kind_of_command() {
    let mut s = server(&[]);
    let addr = s.native.to_string();
    let script = "\
# a script file: comments and blank lines are skipped

set greeting \"hello world\" flags=7 expire=600
print greeting
printattr greeting
append greeting !
directprint greeting 5 6
directset greeting WORLD 6
setsub parent parent/a 1
setsub parent parent/b 2
print parent all
rename parent/b parent/c parent=parent
subkeys parent
rmsub parent parent/c rmsub
queue jobs push fifo first
queue jobs push fifo second
queue jobs len
queue jobs pop
keyqueue kq push lifo item-key item-value
keyqueue kq pop
cas32 init hits 10
cas32 add hits 5
cas32 set hits 15 100
cas increment hits
cas32 get hits
set n 41
incr n
fill bulk/ v 500
scan bulk/ limit=3
rm parent all
print parent
";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("script.k2h");
    std::fs::write(&file, script).unwrap();
    let o = k2hdkc(
        &["shell", &addr, "--json", "--run", file.to_str().unwrap()],
        None,
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "shell failed: {stderr}");
    let r = json_lines(&o);
    let by_cmd = |c: &str| {
        r.iter()
            .find(|j| j["command"] == c)
            .unwrap_or_else(|| panic!("no result for {c}: {r:?}"))["result"]
            .clone()
    };
    assert!(r.iter().all(|j| j["ok"] == true), "{r:?}");
    assert_eq!(by_cmd("print greeting")["value"], "hello world");
    assert_eq!(by_cmd("print greeting")["flags"], 7);
    assert_eq!(by_cmd("printattr greeting")["kind"], "value");
    assert_eq!(by_cmd("directprint greeting 5 6"), "world");
    assert_eq!(
        by_cmd("print parent all")["subkeys"],
        serde_json::json!(["parent/a", "parent/b"])
    );
    assert_eq!(
        by_cmd("subkeys parent"),
        serde_json::json!(["parent/a", "parent/c"])
    );
    assert_eq!(by_cmd("queue jobs len"), 2);
    assert_eq!(by_cmd("queue jobs pop")["value"], "first");
    assert_eq!(by_cmd("keyqueue kq pop")["key"], "item-key");
    assert_eq!(by_cmd("cas32 add hits 5"), 15);
    assert_eq!(by_cmd("cas increment hits"), 101);
    assert_eq!(by_cmd("cas32 get hits"), 101);
    assert_eq!(by_cmd("incr n"), 42);
    assert_eq!(by_cmd("fill bulk/ v 500")["count"], 500);
    assert_eq!(
        by_cmd("scan bulk/ limit=3"),
        serde_json::json!(["bulk/0", "bulk/1", "bulk/10"])
    );
    assert_eq!(by_cmd("rm parent all")["count"], 2);
    assert_eq!(by_cmd("print parent"), serde_json::Value::Null);

    // -c commands, readable output, and a failing command makes the exit status 1.
    let o = k2hdkc(
        &[
            "shell",
            &addr,
            "-c",
            "print greeting",
            "-c",
            "cas8 set hits 1 2",
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("greeting => hello WORLD!"), "{out}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("error:"));

    // Commands on stdin; a bad command is a structured error.
    let o = k2hdkc(&["shell", &addr, "--json"], Some("nonsense\nstatus\n"));
    let r = json_lines(&o);
    assert_eq!(r[0]["ok"], false);
    assert!(r[0]["error"].as_str().unwrap().contains("unknown command"));
    assert_eq!(r[1]["result"]["protocol"], 1);
    assert!(s.proc.terminate(Duration::from_secs(10)));
}

#[test]
fn bench_speaks_both_protocols_and_logs_are_json() {
    let sock_dir = tempfile::tempdir().unwrap();
    let sock = sock_dir.path().join("mc.sock");
    let sock = sock.to_str().unwrap();
    let mut s = server(&["--log-format", "json", "--memcached-socket", sock]);
    // The memcached socket (`--memcached-socket`, bench `--socket`) beside the two ports.
    let targets = [
        ("native", vec![s.native.to_string()]),
        ("memcached", vec![s.memcached.to_string()]),
        ("memcached", vec!["--socket".to_string(), sock.to_string()]),
    ];
    for (proto, target) in &targets {
        let mut args: Vec<&str> = vec!["bench"];
        args.extend(target.iter().map(|t| t.as_str()));
        args.extend([
            "--protocol",
            proto,
            "-c",
            "2",
            "-p",
            "8",
            "-n",
            "4000",
            "--keys",
            "500",
            "--json",
        ]);
        let o = k2hdkc(&args, None);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let j = &json_lines(&o)[0];
        assert_eq!(j["protocol"], *proto);
        let ops = j["ops"].as_u64().unwrap();
        assert!((4000..=4016).contains(&ops), "{j}");
        assert_eq!(j["get_hit_ratio"], 1.0, "{j}");
        assert!(
            j["latency_us"]["p99"].as_u64().unwrap() >= j["latency_us"]["p50"].as_u64().unwrap()
        );
    }
    // A bench against a closed port fails with a message, not a hang.
    let o = k2hdkc(
        &["bench", &free_addr().to_string(), "-n", "10", "--keys", "1"],
        None,
    );
    assert!(!o.status.success());
    assert!(s.proc.terminate(Duration::from_secs(10)));
    let log = std::fs::read_to_string(&s.log).unwrap();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "too few log lines: {log}");
    for l in &lines {
        let j: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("log line is not JSON: {l}: {e}"));
        assert!(j["level"].is_string() && j["timestamp"].is_string(), "{l}");
    }
    assert!(log.contains("SIGTERM"), "{log}");
}

/// Stops a process with SIGTERM when dropped, also when the test fails: dev-cluster then stops
/// the daemons it started (SIGKILL would leave them running).
struct Graceful(Proc);

impl Drop for Graceful {
    fn drop(&mut self) {
        self.0.terminate(Duration::from_secs(20));
    }
}

/// `count` consecutive loopback ports starting at an even port, all free a moment ago.
fn free_range(count: u16) -> u16 {
    for _ in 0..200 {
        let base = 20000 + 2 * fastrand::u16(0..15000);
        let free = (0..count).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no free range of {count} ports");
}

/// Send memcached text and read until `until` appears (bounded).
fn mc(addr: SocketAddr, req: &str, until: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(until) {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn dev_cluster_hash_stat_top() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_range(8);
    let mem = free_range(4);
    let gw = mem + 3;
    let log = dir.path().join("dev-cluster.log");
    let args: Vec<String> = [
        "dev-cluster",
        "--nodes",
        "3",
        "--storage",
        "memory",
        "--data-dir",
        &dir.path().join("data").to_string_lossy(),
        "--base-port",
        &base.to_string(),
        "--memcached-base-port",
        &mem.to_string(),
        "--gateway-port",
        &gw.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut dev = Graceful(Proc::start(&bin("k2hdkc"), &args, Some(&log)));
    let dev = &mut dev.0;
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("cluster ready")
    {
        assert!(
            dev.running(),
            "dev-cluster exited: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(
            std::time::Instant::now() < deadline,
            "dev-cluster not ready"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let gw_addr: SocketAddr = format!("127.0.0.1:{gw}").parse().unwrap();
    assert!(wait_listening(gw_addr, Duration::from_secs(10)));
    let r = mc(gw_addr, "set devkey 0 0 5\r\nhello\r\n", "\r\n");
    assert_eq!(r, "STORED\r\n");
    for i in 0..3 {
        let a: SocketAddr = format!("127.0.0.1:{}", mem + i).parse().unwrap();
        let r = mc(a, "get devkey\r\n", "END\r\n");
        assert_eq!(r, "VALUE devkey 0 5\r\nhello\r\nEND\r\n", "node {i}");
    }
    let seed = format!("127.0.0.1:{base}");
    let out = run(&["hash", "--join", &seed, "devkey", "--json"]);
    let j: serde_json::Value = serde_json::from_str(out.trim()).expect("hash JSON");
    assert_eq!(j["owners"].as_array().map(Vec::len), Some(3), "{j}");
    let out = run(&["stat", &seed, "items"]);
    assert!(
        out.contains("curr_items") && out.contains("cluster_version"),
        "{out}"
    );
    let out = run(&["top", "--join", &seed, "--count", "1", "--interval", "0.2"]);
    assert_eq!(out.matches("UP").count(), 3, "{out}");
    let out = run(&["ctl", &seed, "status"]);
    assert_eq!(out.matches("SERVICE IN").count(), 3, "{out}");
    // SIGTERM stops dev-cluster and every daemon it started.
    assert!(
        dev.terminate(Duration::from_secs(20)),
        "dev-cluster did not stop"
    );
    let stopped = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        std::net::TcpStream::connect(format!("127.0.0.1:{base}")).is_err()
            && std::net::TcpStream::connect(gw_addr).is_err()
    });
    assert!(stopped, "nodes still listening after dev-cluster stopped");
}

fn run(args: &[&str]) -> String {
    let out = Command::new(bin("k2hdkc")).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "k2hdkc {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
