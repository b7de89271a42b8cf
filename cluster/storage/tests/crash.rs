//! Crash test: a child process writes with `fsync = always` and reports each acknowledged write
//! on stdout; the parent kills it with SIGKILL at a random moment, reopens the store, and checks
//! that every acknowledged write is there and the store opens cleanly. Repeated many times
//! (`K2HDKC_CRASH_ROUNDS`, default 25) on the same directory, so recovery of recovered logs and
//! compaction mid-run are exercised too.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use k2hdkc_storage::{
    EngineConfig, Expire, FileOptions, Fsync, QueueOpts, SetMode, Store, StoreConfig, WriteOpts,
};

const CHILD_ENV: &str = "K2HDKC_CRASH_CHILD_DIR";

fn config(dir: &str, fsync: Fsync) -> StoreConfig {
    let mut o = FileOptions::new(dir);
    o.fsync = fsync;
    // Small, so that compactions happen between and during rounds.
    o.compaction_min_bytes = 256 << 10;
    StoreConfig {
        engine: EngineConfig::File(o),
        maintenance_interval: Some(Duration::from_millis(50)),
        ..StoreConfig::memory()
    }
}

/// The writer. Runs only when the parent starts this test binary with the env var set.
#[test]
#[ignore = "child process of crash::kill_9_never_loses_an_acknowledged_write"]
fn child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let round: u64 = std::env::var("K2HDKC_CRASH_ROUND")
        .unwrap()
        .parse()
        .unwrap();
    let store = Store::open(config(&dir, Fsync::Always)).expect("child opens the store");
    let stdout = std::sync::Arc::new(std::sync::Mutex::new(std::io::stdout()));
    println!("ready");
    let threads: Vec<_> = (0..3u64)
        .map(|t| {
            let store = store.clone();
            let out = stdout.clone();
            std::thread::spawn(move || {
                for i in 0u64.. {
                    let line = match i % 4 {
                        0 | 1 => {
                            let k = format!("r{round}-t{t}-{i}");
                            let v = format!("{k}-{}", "x".repeat((i % 200) as usize));
                            store
                                .set(
                                    k.as_bytes(),
                                    v.as_bytes(),
                                    SetMode::Set,
                                    &WriteOpts::default(),
                                )
                                .unwrap();
                            format!("{t} {i} set {k} {}", v.len())
                        }
                        2 => {
                            let n = store.counter_add(b"ctr", 64, 1).unwrap();
                            format!("{t} {i} ctr {n}")
                        }
                        _ => {
                            let k = format!("r{round}-t{t}-{}", i - 3);
                            store.delete(k.as_bytes(), None).unwrap();
                            format!("{t} {i} del {k}")
                        }
                    };
                    use std::io::Write;
                    let mut o = out.lock().unwrap();
                    writeln!(o, "{line}").unwrap();
                    o.flush().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn kill_9_never_loses_an_acknowledged_write() {
    let rounds: u64 = std::env::var("K2HDKC_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let dir_s = dir.to_str().unwrap().to_string();
    {
        let s = Store::open(config(&dir_s, Fsync::Always)).unwrap();
        s.counter_init(b"ctr", 64, 0, Expire::Never).unwrap();
        s.queue_push(b"marker", None, b"kept", true, &QueueOpts::default())
            .unwrap();
        s.close().unwrap();
    }
    let exe = std::env::current_exe().unwrap();
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    // Acknowledged state across all rounds: key -> Some(len) when set, None when deleted.
    let mut acked: HashMap<String, Option<usize>> = HashMap::new();
    let mut ctr_acked = 0u64;
    let mut total_acks = 0usize;
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .args([
                "crash::child_writer",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &dir_s)
            .env("K2HDKC_CRASH_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Wait until the child is writing, then kill it at a random moment.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut ready = false;
        while !ready && Instant::now() < deadline {
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
                // libtest may print "test NAME ... " on the same line first.
                ready = l.ends_with("ready");
            }
        }
        assert!(ready, "child did not start");
        std::thread::sleep(Duration::from_millis(rng.u64(20..300)));
        child.kill().unwrap();
        child.wait().unwrap();
        reader.join().unwrap();
        let mut last_i: HashMap<u64, u64> = HashMap::new();
        for line in rx.try_iter() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(t), Some(i)) = (
                f.first().and_then(|t| t.parse().ok()),
                f.get(1).and_then(|i| i.parse().ok()),
            ) else {
                continue;
            };
            last_i.insert(t, i);
            match &f[2..] {
                ["set", k, n] => {
                    acked.insert(k.to_string(), Some(n.parse().unwrap()));
                }
                ["del", k] => {
                    acked.insert(k.to_string(), None);
                }
                ["ctr", n] => ctr_acked = ctr_acked.max(n.parse().unwrap()),
                _ => continue,
            }
            total_acks += 1;
        }
        // Each writer may have finished one more operation than it reported. If that was a
        // delete, the key it deletes may be gone although its set was reported.
        let in_flight_deletes: Vec<String> = (0..3u64)
            .filter_map(|t| {
                let next = last_i.get(&t).map_or(0, |i| i + 1);
                (next % 4 == 3).then(|| format!("r{round}-t{t}-{}", next - 3))
            })
            .collect();
        // Reopen: it must open cleanly and hold every acknowledged write.
        let s = Store::open(config(&dir_s, Fsync::Always))
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        for (k, want) in acked.iter_mut() {
            let got = s.get(k.as_bytes(), None).unwrap().map(|v| v.data);
            match want {
                Some(_) if got.is_none() && in_flight_deletes.contains(k) => *want = None,
                Some(n) => {
                    let v = got.unwrap_or_else(|| panic!("round {round}: acknowledged {k} lost"));
                    assert_eq!(v.len(), *n);
                    assert!(
                        v.starts_with(k.as_bytes()),
                        "round {round}: {k} holds another value"
                    );
                }
                None => assert!(
                    got.is_none(),
                    "round {round}: acknowledged delete of {k} lost"
                ),
            }
        }
        let ctr = s.counter_get(b"ctr", 64).unwrap().unwrap();
        // Each of the 3 writers may have one increment durable but not yet reported.
        assert!(
            ctr >= ctr_acked && ctr <= ctr_acked + 3,
            "round {round}: counter {ctr} vs acked {ctr_acked}"
        );
        ctr_acked = ctr;
        assert_eq!(
            s.queue_peek(b"marker", None).unwrap().unwrap().value,
            b"kept"
        );
        s.close().unwrap();
    }
    assert!(
        total_acks > rounds as usize * 5,
        "the children wrote something: {total_acks}"
    );
    eprintln!("crash test: {rounds} SIGKILL rounds, {total_acks} acknowledged writes, all present");
}
