//! A `k2hdkc server --storage file --fsync always` keeps every acknowledged write across kill -9
//! and restart (issue 2's check, through the memcached protocol).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use system_tests::{Proc, bin, free_addr, wait_listening};

fn start(dir: &std::path::Path, addr: SocketAddr, log: &std::path::Path) -> Proc {
    let args: Vec<String> = [
        "server",
        "--storage",
        "file",
        "--data-dir",
        dir.to_str().unwrap(),
        "--fsync",
        "always",
        "--memcached-listen",
        &addr.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let p = Proc::start(&bin("k2hdkc"), &args, Some(log));
    assert!(
        wait_listening(addr, Duration::from_secs(20)),
        "server did not start; see {}",
        log.display()
    );
    p
}

fn get(r: &mut BufReader<TcpStream>, w: &mut TcpStream, key: &str) -> Option<String> {
    w.write_all(format!("get {key}\r\n").as_bytes()).unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    if line == "END\r\n" {
        return None;
    }
    let mut data = String::new();
    r.read_line(&mut data).unwrap();
    let mut end = String::new();
    r.read_line(&mut end).unwrap();
    assert_eq!(end, "END\r\n");
    Some(data.trim_end().to_string())
}

#[test]
fn kill_9_keeps_every_acknowledged_write() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let log = tmp.path().join("server.log");
    let addr = free_addr();
    let mut rng = fastrand::Rng::with_seed(7);
    let acked: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let mut total = 0;
    for round in 0..5 {
        let mut server = start(&dir, addr, &log);
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..3)
            .map(|t| {
                let acked = acked.clone();
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let Ok(mut w) = TcpStream::connect(addr) else {
                        return 0;
                    };
                    let mut r = BufReader::new(w.try_clone().unwrap());
                    let mut n = 0;
                    for i in 0.. {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let key = format!("r{round}-t{t}-{i}");
                        let val = format!("{key}-value");
                        if w.write_all(
                            format!("set {key} 0 0 {}\r\n{val}\r\n", val.len()).as_bytes(),
                        )
                        .is_err()
                        {
                            break;
                        }
                        let mut line = String::new();
                        match r.read_line(&mut line) {
                            Ok(n) if n > 0 && line == "STORED\r\n" => {
                                acked.lock().unwrap().insert(key, val);
                            }
                            _ => break,
                        }
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(rng.u64(200..800)));
        server.kill9();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            total += w.join().unwrap();
        }
        // Restart on the same directory and read everything back.
        let mut server = start(&dir, addr, &log);
        let mut w = TcpStream::connect(addr).unwrap();
        w.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut r = BufReader::new(w.try_clone().unwrap());
        let acked = acked.lock().unwrap();
        for (k, v) in acked.iter() {
            assert_eq!(
                get(&mut r, &mut w, k).as_deref(),
                Some(v.as_str()),
                "round {round}: acknowledged {k} lost"
            );
        }
        assert!(
            server.terminate(Duration::from_secs(10)),
            "clean shutdown on SIGTERM"
        );
    }
    assert!(total > 50, "the writers wrote: {total}");
    eprintln!("server kill -9: 5 rounds, {total} acknowledged sets, none lost");
}
