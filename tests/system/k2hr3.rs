//! The K2HR3-compatible service of `k2hdkc-dbaas` with real clients: the Python k2hr3client
//! (PyPI 1.1.3, from the venv `scripts/setup.sh` makes; skipped with a message without it)
//! runs `tests/python/k2hr3_client.py` against `k2hdkc-dbaas serve` on a fresh data
//! directory with one local user made by `k2hdkc-dbaas k2hr3 user add`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use system_tests::{Proc, bin, free_addr, wait_listening};

use crate::python_clients::{log_tail, venv_python};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/python/k2hr3_client.py");

/// `k2hdkc-dbaas k2hr3 user add NAME --tenant T --password-stdin --data-dir DIR`.
pub fn add_user(dir: &Path, name: &str, tenant: &str, password: &str) {
    let mut c = Command::new(bin("k2hdkc-dbaas"))
        .args([
            "k2hr3",
            "user",
            "add",
            name,
            "--tenant",
            tenant,
            "--password-stdin",
            "--data-dir",
        ])
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start k2hdkc-dbaas k2hr3 user add");
    c.stdin
        .take()
        .expect("stdin")
        .write_all(format!("{password}\n").as_bytes())
        .expect("write the password");
    let out = c.wait_with_output().expect("user add");
    assert!(
        out.status.success(),
        "user add failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `k2hdkc-dbaas serve` (or `k2hr3 serve`) on a free loopback port of `dir`.
pub fn start_service(dir: &Path, standalone: bool) -> (Proc, SocketAddr) {
    let addr = free_addr();
    let mut args: Vec<String> = if standalone {
        vec!["k2hr3".into(), "serve".into()]
    } else {
        vec!["serve".into()]
    };
    args.extend([
        "--data-dir".into(),
        dir.display().to_string(),
        "--listen".into(),
        addr.to_string(),
    ]);
    let log = dir.join("dbaas.log");
    let p = Proc::start(&bin("k2hdkc-dbaas"), &args, Some(&log));
    assert!(
        wait_listening(addr, Duration::from_secs(20)),
        "k2hdkc-dbaas did not start:\n{}",
        log_tail(&log)
    );
    (p, addr)
}

#[test]
fn python_k2hr3client_drives_the_whole_flow() {
    let python = match venv_python("k2hr3client") {
        Ok(p) => p,
        Err(reason) => {
            eprintln!("SKIP python_k2hr3client_drives_the_whole_flow: {reason}");
            return;
        }
    };
    let tmp = tempfile::tempdir().expect("temporary directory");
    let dir = tmp.path().join("dbaas");
    add_user(&dir, "alice", "demo", "alice-password-1");
    let (mut svc, addr) = start_service(&dir, false);
    // k2hr3client reads k2hr3client.ini from the working directory first: run it in an
    // empty one so nothing on this machine changes what it does.
    let out = Command::new("timeout")
        .arg("120")
        .arg(&python)
        .arg(SCRIPT)
        .arg(format!("http://{addr}"))
        .args(["alice", "alice-password-1", "demo"])
        .current_dir(tmp.path())
        .output()
        .expect("run the k2hr3client script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("all k2hr3client checks passed"),
        "{SCRIPT} failed ({}):\n{stdout}{stderr}\nservice log (tail):\n{}",
        out.status,
        log_tail(&dir.join("dbaas.log"))
    );
    let steps = stdout.lines().filter(|l| l.starts_with("ok ")).count();
    eprintln!("k2hr3client: {steps} steps passed");
    assert!(svc.running(), "the service exited during the run");
    assert!(
        svc.terminate(Duration::from_secs(10)),
        "the service did not stop on SIGTERM"
    );
}
