//! The real Python memcached clients, pymemcache and python-memcached (from PyPI), run
//! `tests/python/memcache_clients.py` against `k2hdkc server --storage memory`, over its TCP
//! port and then over its Unix socket (`--memcached-socket`). The clients live
//! in a venv outside the work tree that `scripts/setup.sh` makes: `$K2HDKC_VENV`, by default
//! `$HOME/.cache/k2hdkc/venv`. Skipped, with a message, where the venv or a client is missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use system_tests::{Proc, bin, free_addr, wait_listening};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/python/memcache_clients.py");

/// The venv's interpreter, as `scripts/setup.sh` places it, if `modules` import there.
pub fn venv_python(modules: &str) -> Result<PathBuf, String> {
    let venv = match std::env::var_os("K2HDKC_VENV").filter(|v| !v.is_empty()) {
        Some(v) => PathBuf::from(v),
        None => match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
            Some(home) => Path::new(&home).join(".cache/k2hdkc/venv"),
            None => return Err("neither K2HDKC_VENV nor HOME is set".into()),
        },
    };
    let python = venv.join("bin/python");
    if !python.exists() {
        return Err(format!(
            "no venv at {} (scripts/setup.sh makes it)",
            venv.display()
        ));
    }
    let out = Command::new(&python)
        .args(["-c", &format!("import {modules}")])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().next_back().unwrap_or("").trim().to_string();
        return Err(format!(
            "{modules} does not import in {} ({last}); run scripts/setup.sh",
            python.display()
        ));
    }
    Ok(python)
}

/// The last lines of the server's log, for a failure message.
pub fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[test]
fn python_memcached_clients_pass_every_check() {
    let python = match venv_python("pymemcache, memcache") {
        Ok(p) => p,
        Err(reason) => {
            eprintln!("SKIP python_memcached_clients_pass_every_check: {reason}");
            return;
        }
    };
    let tmp = tempfile::tempdir().expect("temporary directory");
    let log = tmp.path().join("server.log");
    let addr = free_addr();
    let sock = tmp.path().join("mc.sock");
    let sock = sock.to_str().expect("a UTF-8 temporary path");
    let args: Vec<String> = [
        "server",
        "--storage",
        "memory",
        "--memcached-listen",
        &addr.to_string(),
        "--memcached-socket",
        sock,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut server = Proc::start(&bin("k2hdkc"), &args, Some(&log));
    assert!(
        wait_listening(addr, Duration::from_secs(20)),
        "server did not start:\n{}",
        log_tail(&log)
    );
    // The TCP port, then the Unix socket (`--memcached-socket`; the clients' `unix:` servers).
    let port = addr.port().to_string();
    for (label, target) in [
        ("tcp", ["--host", "127.0.0.1", "--port", &port].as_slice()),
        ("unix socket", ["--socket", sock].as_slice()),
    ] {
        let out = Command::new("timeout")
            .arg("180")
            .arg(&python)
            .arg(SCRIPT)
            .args(target)
            .output()
            .unwrap_or_else(|e| panic!("run timeout 180 {} {SCRIPT}: {e}", python.display()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{SCRIPT} over {label} failed ({}):\n{stdout}{stderr}\nserver log (tail):\n{}",
            out.status,
            log_tail(&log)
        );
        let summaries: Vec<&str> = stdout
            .lines()
            .filter(|l| l.contains(" checks passed"))
            .collect();
        for client in ["pymemcache:", "python-memcached:"] {
            assert!(
                summaries.iter().any(|l| l.starts_with(client)),
                "no summary line for {client} over {label}\n{stdout}{stderr}"
            );
        }
        for line in &summaries {
            eprintln!("{label}: {line}");
        }
    }
    assert!(server.running(), "the server exited during the run");
    assert!(server.terminate(Duration::from_secs(10)));
}
