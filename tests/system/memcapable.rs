//! Debian's `memccapable` (libmemcached-tools) runs its text and binary protocol tests against
//! `k2hdkc server --storage memory`. Skipped, with a message, where the tool is not installed.

use std::process::Command;
use std::time::Duration;

use system_tests::{Proc, bin, free_addr, wait_listening};

#[test]
fn memccapable_passes_every_test() {
    if Command::new("memccapable").arg("--help").output().is_err() {
        eprintln!(
            "SKIP memccapable_passes_every_test: memccapable is not installed (apt-get install libmemcached-tools)"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("server.log");
    let addr = free_addr();
    let args: Vec<String> = [
        "server",
        "--storage",
        "memory",
        "--memcached-listen",
        &addr.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut server = Proc::start(&bin("k2hdkc"), &args, Some(&log));
    assert!(
        wait_listening(addr, Duration::from_secs(20)),
        "server did not start"
    );
    let out = Command::new("timeout")
        .args([
            "120",
            "memccapable",
            "-h",
            "127.0.0.1",
            "-p",
            &addr.port().to_string(),
        ])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let passed = text.matches("[pass]").count();
    assert!(
        out.status.success() && text.contains("All tests passed"),
        "memccapable failed:\n{text}"
    );
    assert!(
        passed >= 50,
        "expected the full text and binary suites, saw {passed} passes:\n{text}"
    );
    eprintln!("memccapable: {passed} tests passed");
    assert!(server.terminate(Duration::from_secs(10)));
}
