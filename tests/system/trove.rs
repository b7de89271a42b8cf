//! The DBaaS end to end with real clients: `k2hdkc-dbaas serve` on a fresh data directory,
//! the real OpenStack CLI (`tests/python/trove_cli.py`: `openstack database ...` in
//! admin_token mode, pymemcache at the instances' ip:11211) through create, grow, shrink,
//! backup, restore and delete, on SQLite and on PostgreSQL (`DATABASE_URL`); and the control
//! plane killed with -9 in the middle of a cluster create, then started again.
//!
//! Each test gets its own 127.N.x.y block for its hosts, and a reaper that SIGKILLs every
//! process whose command line names its directory (guests run in their own process groups
//! and outlive the control plane by design), so nothing is left behind when a check fails.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use system_tests::{Proc, bin, free_addr, test_dir, wait_listening};

use crate::python_clients::{log_tail, venv_python};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/python/trove_cli.py");
pub const TOKEN: &str = "system-test-admin-token";

/// Pids (other than `except`) whose command line mentions `dir`.
pub fn processes_under(dir: &Path, except: &[u32]) -> Vec<(u32, String)> {
    let needle = dir.display().to_string();
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || except.contains(&pid) {
            continue;
        }
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = state
            .rsplit_once(") ")
            .is_some_and(|(_, r)| r.starts_with('Z'));
        if cmd.contains(&needle) && !zombie {
            v.push((pid, cmd));
        }
    }
    v
}

/// Kills what a test's control plane started, even when the test fails.
pub struct Reaper(pub PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        for _ in 0..3 {
            let left = processes_under(&self.0, &[]);
            if left.is_empty() {
                return;
            }
            for (pid, _) in left {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

struct Plane {
    proc: Proc,
    trove: SocketAddr,
    log: PathBuf,
}

fn start_plane(
    dir: &Path,
    db: Option<&str>,
    block: u8,
    trove: SocketAddr,
    k2hr3: SocketAddr,
) -> Plane {
    start_plane_with(dir, db, block, trove, k2hr3, &[])
}

fn start_plane_with(
    dir: &Path,
    db: Option<&str>,
    block: u8,
    trove: SocketAddr,
    k2hr3: SocketAddr,
    extra: &[String],
) -> Plane {
    let log = dir.join("dbaas.log");
    let mut args: Vec<String> = [
        "serve",
        "--data-dir",
        &dir.join("state").display().to_string(),
        "--listen",
        &trove.to_string(),
        "--k2hr3-listen",
        &k2hr3.to_string(),
        "--auth",
        &format!("token:{TOKEN}"),
        "--address-block",
        &block.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    match db {
        Some(u) => args.extend(["--database-url".into(), u.into()]),
        None => args.extend([
            "--database-url".into(),
            format!("sqlite://{}?mode=rwc", dir.join("state/dbaas.db").display()),
        ]),
    }
    args.extend(extra.iter().cloned());
    std::fs::create_dir_all(dir.join("state")).expect("state dir");
    let proc = Proc::start(&bin("k2hdkc-dbaas"), &args, Some(&log));
    assert!(
        wait_listening(trove, Duration::from_secs(30)),
        "k2hdkc-dbaas did not start:\n{}",
        log_tail(&log)
    );
    Plane { proc, trove, log }
}

impl Plane {
    fn pid(&self) -> u32 {
        self.proc.pid().unwrap_or(0)
    }
}

fn nothing_listens(ips: &[String]) -> Vec<String> {
    let mut open = Vec::new();
    for ip in ips {
        for port in [8020u16, 8021, 8029, 11211] {
            let a: SocketAddr = format!("{ip}:{port}").parse().expect("addr");
            if TcpStream::connect_timeout(&a, Duration::from_millis(300)).is_ok() {
                open.push(a.to_string());
            }
        }
    }
    open
}

/// moto's S3 server from the venv, when scripts/setup.sh installed it.
fn moto_server() -> Option<PathBuf> {
    let py = venv_python("moto").ok()?;
    let p = py.parent()?.join("moto_server");
    p.exists().then_some(p)
}

fn openstack_flow(name: &str, db: Option<&str>, block: u8, s3: bool) {
    let python = match venv_python("openstackclient, troveclient, pymemcache") {
        Ok(p) => p,
        Err(reason) => {
            eprintln!("SKIP {name}: {reason}");
            return;
        }
    };
    let dir = test_dir();
    let _reaper = Reaper(dir.path().to_path_buf());
    // With s3, backups go to a real S3 implementation (moto) instead of the data directory.
    let mut extra = Vec::new();
    let mut _moto = None;
    let s3 = s3
        && {
            match moto_server() {
                Some(m) => {
                    let port = free_addr().port();
                    _moto = Some(Proc::start(
                        &m,
                        &[
                            "-H".into(),
                            "127.0.0.1".into(),
                            "-p".into(),
                            port.to_string(),
                        ],
                        None,
                    ));
                    let a: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
                    assert!(
                        wait_listening(a, Duration::from_secs(30)),
                        "moto_server did not start"
                    );
                    std::fs::write(dir.path().join("s3-secret"), "e2e-secret-key\n")
                        .expect("secret");
                    let cfg = dir.path().join("dbaas.toml");
                    std::fs::write(
                    &cfg,
                    format!(
                        "[trove.backup_store]\nkind = \"s3\"\nendpoint = \"http://{a}\"\nbucket = \"k2hdkc-e2e\"\n\
                         access_key = \"testing\"\nsecret_key_file = {:?}\n",
                        dir.path().join("s3-secret").display().to_string()
                    ),
                )
                .expect("config");
                    extra = vec!["--config".into(), cfg.display().to_string()];
                    true
                }
                None => {
                    eprintln!(
                        "{name}: no moto_server in the venv; backups stay in the local store"
                    );
                    false
                }
            }
        };
    let mut plane = start_plane_with(dir.path(), db, block, free_addr(), free_addr(), &extra);
    let project = format!("p{}{}", std::process::id(), block);
    let endpoint = format!("http://{}/v1.0/{project}", plane.trove);
    let t0 = Instant::now();
    let out = Command::new(&python)
        .arg(SCRIPT)
        .arg(&endpoint)
        .arg(TOKEN)
        .current_dir(dir.path())
        .env("HOME", dir.path())
        .output()
        .expect("run trove_cli.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("all trove checks passed"),
        "{name}: the OpenStack CLI flow failed\nstdout:\n{stdout}\nstderr:\n{stderr}\ncontrol plane:\n{}",
        log_tail(&plane.log)
    );
    for l in stdout.lines().filter(|l| l.starts_with("STEP")) {
        eprintln!("{name}: {l}");
    }
    eprintln!("{name}: whole flow {:.1}s", t0.elapsed().as_secs_f64());
    if s3 {
        assert!(
            stdout.contains("at s3://k2hdkc-e2e/"),
            "{name}: the backup is not in the S3 store:\n{stdout}"
        );
    }
    // Deleted means gone: no guest or node process, no port on any address it had.
    let ips: Vec<String> = stdout
        .lines()
        .find_map(|l| l.strip_prefix("IPS "))
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    assert!(ips.len() >= 5, "{name}: addresses seen: {ips:?}");
    let t = Instant::now();
    let mut left = processes_under(dir.path(), &[plane.pid()]);
    while !left.is_empty() && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(200));
        left = processes_under(dir.path(), &[plane.pid()]);
    }
    assert!(
        left.is_empty(),
        "{name}: processes left after delete: {left:?}"
    );
    let open = nothing_listens(&ips);
    assert!(
        open.is_empty(),
        "{name}: ports still open after delete: {open:?}"
    );
    assert!(
        plane.proc.terminate(Duration::from_secs(15)),
        "{name}: the control plane did not stop on SIGTERM"
    );
}

#[test]
fn openstack_cli_drives_a_cluster_on_sqlite() {
    openstack_flow("openstack_cli_drives_a_cluster_on_sqlite", None, 78, false);
}

#[test]
fn openstack_cli_drives_a_cluster_on_postgresql() {
    let name = "openstack_cli_drives_a_cluster_on_postgresql";
    let Some(url) = std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| u.starts_with("postgres"))
    else {
        eprintln!("SKIP {name}: DATABASE_URL does not name a PostgreSQL database");
        return;
    };
    let db = format!("trove_test_{}_{}", std::process::id(), fastrand::u32(..));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let admin = rt.block_on(async {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("DATABASE_URL is set but PostgreSQL is not reachable: {e}"));
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
            .execute(&mut c)
            .await
            .expect("create database");
        c
    });
    let base = url
        .rsplit_once('/')
        .map(|(b, _)| b.to_string())
        .expect("a URL with /db");
    let r =
        std::panic::catch_unwind(|| openstack_flow(name, Some(&format!("{base}/{db}")), 79, true));
    rt.block_on(async move {
        let mut admin = admin;
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE {db} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await;
    });
    if let Err(e) = r {
        std::panic::resume_unwind(e);
    }
}

fn dbaas_cli(trove: SocketAddr, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin("k2hdkc-dbaas"))
        .arg("cluster")
        .args([
            "--url",
            &format!("http://{trove}"),
            "--project",
            "crash",
            "--token",
            TOKEN,
        ])
        .args(args)
        .output()
        .expect("run k2hdkc-dbaas cluster");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_control_plane_killed_mid_create_finishes_the_cluster() {
    let dir = test_dir();
    let _reaper = Reaper(dir.path().to_path_buf());
    let (trove, k2hr3) = (free_addr(), free_addr());
    let mut plane = start_plane(dir.path(), None, 80, trove, k2hr3);
    let (ok, _, err) = dbaas_cli(trove, &["create", "c2", "--size", "3"]);
    assert!(ok, "cluster create: {err}");
    // Kill it as soon as the first host is up: the other two are not booted yet.
    let t0 = Instant::now();
    let mut hosts = 0;
    while t0.elapsed() < Duration::from_secs(60) {
        hosts = processes_under(dir.path(), &[plane.pid()])
            .iter()
            .filter(|(_, c)| c.contains("k2hdkc-guest-agent"))
            .count();
        if hosts > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    plane.proc.kill9();
    assert!(hosts > 0, "no host was started:\n{}", log_tail(&plane.log));
    eprintln!("killed the control plane with {hosts} of 3 hosts started");
    let first_log = std::fs::read_to_string(&plane.log).unwrap_or_default();
    assert!(
        !first_log.contains("task done"),
        "the create finished before the kill; the test proved nothing"
    );
    let mut plane = start_plane(dir.path(), None, 80, trove, k2hr3);
    let (ok, out, err) = dbaas_cli(trove, &["--wait-secs", "300", "show", "c2", "--json"]);
    assert!(ok, "show: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("show --json");
    let id = v["id"].as_str().expect("id").to_string();
    // Wait for it with the CLI's own --wait path (grow by 0 is refused, so poll show).
    let t0 = Instant::now();
    let mut last = v;
    while t0.elapsed() < Duration::from_secs(300) {
        let (_, out, _) = dbaas_cli(trove, &["show", &id, "--json"]);
        last = serde_json::from_str(&out).unwrap_or(serde_json::Value::Null);
        let members = last["instances"].as_array().cloned().unwrap_or_default();
        if last["task"]["name"] == "NONE"
            && members.len() == 3
            && members.iter().all(|m| m["status"] == "ACTIVE")
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let members = last["instances"].as_array().cloned().unwrap_or_default();
    assert!(
        last["task"]["name"] == "NONE"
            && members.len() == 3
            && members.iter().all(|m| m["status"] == "ACTIVE"),
        "the cluster did not finish after the restart: {last}\n{}",
        log_tail(&plane.log)
    );
    let log = std::fs::read_to_string(&plane.log).unwrap_or_default();
    assert!(
        log.contains("resuming task"),
        "the restarted control plane did not resume the task:\n{}",
        log_tail(&plane.log)
    );
    // Exactly one guest per member: the resumed task adopted the hosts it had started.
    let guests = processes_under(dir.path(), &[plane.pid()])
        .into_iter()
        .filter(|(_, c)| c.contains("k2hdkc-guest-agent"))
        .count();
    assert_eq!(guests, 3, "guest processes after the resumed create");
    // It serves: a key written at one member is read at another.
    let ips: Vec<String> = last["ip"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i.as_str().map(str::to_string))
        .collect();
    assert_eq!(ips.len(), 3, "{last}");
    memcached_set_get(&ips[0], &ips[2]);
    let (ok, _, err) = dbaas_cli(trove, &["delete", "c2", "--wait", "--wait-secs", "120"]);
    assert!(ok, "delete: {err}");
    let t = Instant::now();
    let mut left = processes_under(dir.path(), &[plane.pid()]);
    while !left.is_empty() && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(200));
        left = processes_under(dir.path(), &[plane.pid()]);
    }
    assert!(left.is_empty(), "processes left after delete: {left:?}");
    assert!(nothing_listens(&ips).is_empty());
    assert!(plane.proc.terminate(Duration::from_secs(15)));
}

fn memcached_set_get(a: &str, b: &str) {
    use std::io::{BufRead, BufReader, Write};
    let mut w = TcpStream::connect(format!("{a}:11211")).expect("connect");
    w.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    w.write_all(b"set crash-key 0 0 5\r\nhello\r\n")
        .expect("write");
    let mut line = String::new();
    BufReader::new(&w).read_line(&mut line).expect("read");
    assert_eq!(line, "STORED\r\n");
    let mut r = TcpStream::connect(format!("{b}:11211")).expect("connect");
    r.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    r.write_all(b"get crash-key\r\n").expect("write");
    let mut rd = BufReader::new(&r);
    let mut got = String::new();
    for _ in 0..3 {
        rd.read_line(&mut got).expect("read");
    }
    assert_eq!(got, "VALUE crash-key 0 5\r\nhello\r\nEND\r\n");
}

/// The README's main command: `serve --quickstart` builds a ready 3-node cluster and says
/// where it is.
#[test]
fn quickstart_builds_a_ready_cluster_and_prints_how_to_use_it() {
    let dir = test_dir();
    let _reaper = Reaper(dir.path().to_path_buf());
    let (trove, k2hr3) = (free_addr(), free_addr());
    let log = dir.path().join("quickstart.log");
    let args: Vec<String> = [
        "serve",
        "--data-dir",
        &dir.path().join("state").display().to_string(),
        "--listen",
        &trove.to_string(),
        "--k2hr3-listen",
        &k2hr3.to_string(),
        "--address-block",
        "82",
        "--quickstart",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut plane = Proc::start(&bin("k2hdkc-dbaas"), &args, Some(&log));
    let t0 = Instant::now();
    let mut text = String::new();
    while t0.elapsed() < Duration::from_secs(300) {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("OS_ENDPOINT=") || text.contains("quickstart: ") && text.contains("failed")
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        text.contains("cluster quickstart (") && text.contains("is ACTIVE"),
        "no quickstart summary:\n{}",
        log_tail(&log)
    );
    assert!(
        text.contains(&format!("OS_ENDPOINT=http://{trove}/v1.0/demo")),
        "{text}"
    );
    assert!(
        text.contains("quickstart [#########################] 3/3 members ACTIVE"),
        "no finished progress bar:\n{text}"
    );
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("memcached:"))
        .expect("memcached line");
    let addrs: Vec<String> = line
        .split_whitespace()
        .skip(1)
        .map(|a| a.trim_end_matches(":11211").to_string())
        .collect();
    assert_eq!(addrs.len(), 3, "{line}");
    memcached_set_get(&addrs[0], &addrs[1]);
    // A second start finds the cluster and does not build another.
    plane.kill9();
    let before = processes_under(dir.path(), &[]).len();
    let mut plane = Proc::start(&bin("k2hdkc-dbaas"), &args, Some(&log));
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(120) {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.matches("OS_ENDPOINT=").count() >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        text.contains("already has cluster quickstart"),
        "{}",
        log_tail(&log)
    );
    assert_eq!(
        processes_under(dir.path(), &[plane.pid().unwrap_or(0)]).len(),
        before,
        "the restart started new hosts"
    );
    let out = Command::new(bin("k2hdkc-dbaas"))
        .args([
            "cluster",
            "--url",
            &format!("http://{trove}"),
            "delete",
            "quickstart",
            "--wait",
            "--wait-secs",
            "120",
        ])
        .output()
        .expect("cluster delete");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(plane.terminate(Duration::from_secs(15)));
}

/// `write_files` (path, content) of a user-data document.
type Files = Vec<(String, Vec<u8>)>;

/// The files and commands of a cloud-init document as this crate renders it.
pub fn parse_user_data(doc: &str) -> (Files, Vec<Vec<String>>) {
    let mut files = Vec::new();
    let mut path = None;
    let mut cmds = Vec::new();
    for l in doc.lines() {
        let t = l.trim();
        if let Some(p) = t.strip_prefix("- path: ") {
            path = Some(p.to_string());
        } else if let Some(c) = t.strip_prefix("content: ") {
            let bytes = decode_b64(c);
            files.push((path.take().expect("a path before content"), bytes));
        } else if let Some(c) = t.strip_prefix("- [").and_then(|c| c.strip_suffix(']')) {
            cmds.push(
                c.split(", ")
                    .map(|a| {
                        serde_json::from_str::<String>(a)
                            .unwrap_or_else(|_| a.trim_matches('\'').to_string())
                    })
                    .collect(),
            );
        }
    }
    (files, cmds)
}

fn decode_b64(s: &str) -> Vec<u8> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = A.iter().position(|x| *x == c).expect("base64") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

pub fn arg_after<'a>(cmd: &'a [String], flag: &str) -> &'a str {
    cmd.iter()
        .position(|a| a == flag)
        .and_then(|i| cmd.get(i + 1))
        .map(String::as_str)
        .expect(flag)
}

pub fn svrnodes(ini: &Path) -> usize {
    std::fs::read_to_string(ini)
        .unwrap_or_default()
        .matches("[SVRNODE]")
        .count()
}

/// Wait (bounded) until the slave's file lists `n` server nodes; the seconds it took.
pub fn wait_svrnodes(ini: &Path, n: usize, what: &str) -> f64 {
    let t0 = Instant::now();
    while svrnodes(ini) != n && t0.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        svrnodes(ini),
        n,
        "the slave's cluster file did not follow the {what}"
    );
    t0.elapsed().as_secs_f64()
}

/// A slave host made from its user-data: the write_files under `vm` (by file name), a fake
/// cloud-init instance id, and the k2hr3 and gateway command lines of its runcmd and units.
pub struct SlaveVm {
    pub state: String,
    pub resource: String,
    pub ini: PathBuf,
    pub secret: PathBuf,
    register: Vec<String>,
}

impl SlaveVm {
    pub fn new(doc: &str, vm: &Path, instance_id: &str) -> SlaveVm {
        let (files, cmds) = parse_user_data(doc);
        std::fs::create_dir_all(vm).expect("vm dir");
        let local = |p: &str| vm.join(p.rsplit('/').next().expect("file name"));
        for (p, content) in &files {
            std::fs::write(local(p), content).expect("write_files");
        }
        std::fs::write(vm.join("instance-id"), format!("{instance_id}\n")).expect("instance id");
        let state = vm.join("antpickax").display().to_string();
        let reg = cmds
            .iter()
            .find(|c| c.iter().any(|a| a == "register"))
            .expect("a register command");
        let get = cmds
            .iter()
            .find(|c| c.iter().any(|a| a == "get-resource"))
            .expect("a get-resource command");
        let register = [
            "register",
            "--state-dir",
            &state,
            "--api",
            arg_after(reg, "--api"),
            "--role",
            arg_after(reg, "--role"),
            "--token-file",
            &local(arg_after(reg, "--token-file")).display().to_string(),
            "--instance-id-file",
            &vm.join("instance-id").display().to_string(),
        ]
        .map(String::from)
        .to_vec();
        SlaveVm {
            resource: arg_after(get, "--resource").to_string(),
            ini: vm.join("slave.ini"),
            secret: local("/etc/k2hdkc/cluster.secret"),
            state,
            register,
        }
    }

    /// Run `k2hr3 args` on the slave host (inside network namespace `netns` when given) and
    /// check that it succeeded.
    pub fn k2hr3(&self, netns: Option<&str>, args: Vec<String>) {
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin("k2hr3"));
                c
            }
            None => Command::new(bin("k2hr3")),
        };
        let out = cmd.args(&args).output().expect("k2hr3 on the slave host");
        assert!(
            out.status.success(),
            "k2hr3 {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `k2hr3 register` as the runcmd does it.
    pub fn register_args(&self) -> Vec<String> {
        self.register.clone()
    }

    /// `k2hr3 get-resource` once, or following the resource (`watch`).
    pub fn get_args(&self, watch: bool) -> Vec<String> {
        let mut v = [
            "get-resource",
            "--state-dir",
            &self.state,
            "--resource",
            &self.resource,
            "--output",
            &self.ini.display().to_string(),
            "--mode",
            "644",
        ]
        .map(String::from)
        .to_vec();
        if watch {
            v.extend(["--watch", "--interval", "1"].map(String::from));
        }
        v
    }

    /// `k2hdkc gateway` as its unit runs it.
    pub fn gateway_args(&self, memcached: &str, native: &str) -> Vec<String> {
        [
            "gateway",
            "--chmpx-conf",
            &self.ini.display().to_string(),
            "--secret-file",
            &self.secret.display().to_string(),
            "--memcached-listen",
            memcached,
            "--native-listen",
            native,
        ]
        .map(String::from)
        .to_vec()
    }

    pub fn unregister_args(&self) -> Vec<String> {
        ["unregister", "--state-dir", &self.state]
            .map(String::from)
            .to_vec()
    }
}

/// A slave host from `cluster slave-userdata`: its runcmd (k2hr3 register, get-resource) and
/// services (the --watch follower and `k2hdkc gateway`) run here as the VM would run them,
/// with a fake cloud-init instance id; the gateway serves memcached and follows a grow and a
/// shrink through the re-read cluster file.
#[test]
fn slave_user_data_bootstraps_a_gateway_that_follows_grow_and_shrink() {
    let dir = test_dir();
    let _reaper = Reaper(dir.path().to_path_buf());
    let (trove, k2hr3) = (free_addr(), free_addr());
    let mut plane = start_plane(dir.path(), None, 83, trove, k2hr3);
    let cli = |args: &[&str]| {
        let out = Command::new(bin("k2hdkc-dbaas"))
            .arg("cluster")
            .args([
                "--url",
                &format!("http://{trove}"),
                "--project",
                "slv",
                "--token",
                TOKEN,
                "--wait-secs",
                "300",
            ])
            .args(args)
            .output()
            .expect("k2hdkc-dbaas cluster");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    cli(&["create", "s1", "--size", "3", "--wait"]);
    let ud = dir.path().join("slave.yaml");
    cli(&[
        "slave-userdata",
        "s1",
        "--output",
        &ud.display().to_string(),
        "--memcached",
        "127.0.0.1:11311",
    ]);
    let doc = std::fs::read_to_string(&ud).expect("user-data");
    let vm = dir.path().join("vm");
    let slave = SlaveVm::new(&doc, &vm, "slave-vm-1");
    let run = |args: Vec<String>| slave.k2hr3(None, args);
    run(slave.register_args());
    run(slave.get_args(false));
    let ini = slave.ini.clone();
    let text = std::fs::read_to_string(&ini).unwrap_or_default();
    assert_eq!(svrnodes(&ini), 3, "{text}");
    // The servers admit their own host and the registered slave host, not every host.
    assert_eq!(text.matches("[SLVNODE]").count(), 2, "{text}");
    assert!(!text.contains("[.]*"), "{text}");
    let _watch = Proc::start(
        &bin("k2hr3"),
        &slave.get_args(true),
        Some(&vm.join("watch.log")),
    );
    let gw_log = vm.join("gateway.log");
    let _gw = Proc::start(
        &bin("k2hdkc"),
        &slave.gateway_args("127.0.0.1:11311", &free_addr().to_string()),
        Some(&gw_log),
    );
    let gw: SocketAddr = "127.0.0.1:11311".parse().expect("addr");
    assert!(
        wait_listening(gw, Duration::from_secs(30)),
        "gateway:\n{}",
        log_tail(&gw_log)
    );
    let through_gateway = |key: &str| {
        use std::io::{BufRead, BufReader, Write};
        let t0 = Instant::now();
        loop {
            let r = (|| -> std::io::Result<String> {
                let mut s = TcpStream::connect(gw)?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                s.write_all(format!("set {key} 0 0 2\r\nok\r\nget {key}\r\n").as_bytes())?;
                let mut rd = BufReader::new(&s);
                let mut all = String::new();
                for _ in 0..4 {
                    rd.read_line(&mut all)?;
                }
                Ok(all)
            })();
            match r {
                Ok(a) if a == format!("STORED\r\nVALUE {key} 0 2\r\nok\r\nEND\r\n") => return,
                other if t0.elapsed() > Duration::from_secs(30) => panic!(
                    "{key} through the gateway: {other:?}\n{}",
                    log_tail(&gw_log)
                ),
                _ => std::thread::sleep(Duration::from_millis(300)),
            }
        }
    };
    through_gateway("slave-k1");
    for (what, members) in [("grow", 4), ("shrink", 3)] {
        cli(&[what, "s1", "--wait"]);
        eprintln!(
            "slave file followed the {what} in {:.1}s",
            wait_svrnodes(&ini, members, what)
        );
        for n in 0..20 {
            through_gateway(&format!("slave-{what}-{n}"));
        }
    }
    run(slave.unregister_args());
    cli(&["delete", "s1", "--wait"]);
    assert!(plane.proc.terminate(Duration::from_secs(15)));
}
