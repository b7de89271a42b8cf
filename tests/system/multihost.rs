//! The DBaaS across hosts: every server host and the slave host in its own network namespace
//! (veth to a bridge, made by the test as root; skipped with a message otherwise). The control
//! plane runs on the bridge's address with the local driver's host pool naming one namespace
//! per host; the slave boots from the cluster's slave user-data (its commands run in the slave's
//! namespace, with a fake cloud-init instance id), serves memcached, and follows a grow and a
//! shrink; one server host's link is cut during writes through the slave and healed, and every
//! acknowledged write is read back.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use system_tests::{NetLab, Proc, bin, free_addr, test_dir, wait_listening};

use crate::python_clients::log_tail;
use crate::trove::{Reaper, SlaveVm, TOKEN, svrnodes, wait_svrnodes};

fn set_get(addr: SocketAddr, key: &str, val: &str) -> std::io::Result<bool> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("set {key} 0 0 {}\r\n{val}\r\n", val.len()).as_bytes())?;
    let mut rd = BufReader::new(&s);
    let mut line = String::new();
    rd.read_line(&mut line)?;
    Ok(line == "STORED\r\n")
}

fn get(addr: SocketAddr, key: &str) -> std::io::Result<Option<String>> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("get {key}\r\n").as_bytes())?;
    let mut rd = BufReader::new(&s);
    let mut line = String::new();
    rd.read_line(&mut line)?;
    if line == "END\r\n" {
        return Ok(None);
    }
    let mut v = String::new();
    rd.read_line(&mut v)?;
    let mut end = String::new();
    rd.read_line(&mut end)?;
    Ok(Some(v.trim_end().to_string()))
}

#[test]
fn slave_and_servers_on_separate_hosts_survive_a_partition_and_follow_scaling() {
    let name = "slave_and_servers_on_separate_hosts_survive_a_partition_and_follow_scaling";
    let lab = match NetLab::new(5) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("SKIP {name}: {e}");
            return;
        }
    };
    let dir = test_dir();
    let _reaper = Reaper(dir.path().to_path_buf());
    let bridge = match lab.addr(0) {
        IpAddr::V4(a) => {
            let o = a.octets();
            IpAddr::from([o[0], o[1], o[2], 254])
        }
        IpAddr::V6(_) => unreachable!("the lab is IPv4"),
    };
    let trove = SocketAddr::new(bridge, free_addr().port());
    let k2hr3 = SocketAddr::new(bridge, free_addr().port());
    let mut pool = String::new();
    for i in 0..4 {
        pool.push_str(&format!(
            "[[trove.local_hosts]]\nip = \"{}\"\nnetns = \"{}\"\n",
            lab.addr(i),
            lab.ns(i)
        ));
    }
    let cfg = dir.path().join("dbaas.toml");
    std::fs::write(&cfg, pool).expect("config");
    let log = dir.path().join("dbaas.log");
    let args: Vec<String> = [
        "serve",
        "--config",
        &cfg.display().to_string(),
        "--data-dir",
        &dir.path().join("state").display().to_string(),
        "--listen",
        &trove.to_string(),
        "--k2hr3-listen",
        &k2hr3.to_string(),
        "--auth",
        &format!("token:{TOKEN}"),
    ]
    .map(String::from)
    .to_vec();
    let mut plane = Proc::start(&bin("k2hdkc-dbaas"), &args, Some(&log));
    assert!(
        wait_listening(trove, Duration::from_secs(30)),
        "control plane:\n{}",
        log_tail(&log)
    );
    let cli = |args: &[&str]| {
        let out = Command::new(bin("k2hdkc-dbaas"))
            .arg("cluster")
            .args([
                "--url",
                &format!("http://{trove}"),
                "--project",
                "mh",
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
            "{args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            log_tail(&log)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let shown = cli(&["create", "m1", "--size", "3", "--wait"]);
    for i in 0..3 {
        assert!(
            shown.contains(&lab.addr(i).to_string()),
            "member on host {i}: {shown}"
        );
    }
    // The slave host.
    let ud = dir.path().join("slave.yaml");
    let memcached = SocketAddr::new(lab.addr(4), 11211);
    cli(&[
        "slave-userdata",
        "m1",
        "--output",
        &ud.display().to_string(),
        "--memcached",
        &memcached.to_string(),
    ]);
    let vm = dir.path().join("slave-vm");
    let slave = SlaveVm::new(
        &std::fs::read_to_string(&ud).expect("user-data"),
        &vm,
        "slave-vm-ns4",
    );
    let slave_ns = lab.ns(4);
    let in_slave = |args: Vec<String>| slave.k2hr3(Some(&slave_ns), args);
    in_slave(slave.register_args());
    in_slave(slave.get_args(false));
    let ini = slave.ini.clone();
    assert_eq!(svrnodes(&ini), 3);
    let _watch = lab.start(
        4,
        &bin("k2hr3"),
        &slave.get_args(true),
        Some(&vm.join("watch.log")),
    );
    let gw_log = vm.join("gateway.log");
    let native = SocketAddr::new(lab.addr(4), 8030).to_string();
    let _gw = lab.start(
        4,
        &bin("k2hdkc"),
        &slave.gateway_args(&memcached.to_string(), &native),
        Some(&gw_log),
    );
    assert!(
        wait_listening(memcached, Duration::from_secs(30)),
        "gateway:\n{}",
        log_tail(&gw_log)
    );

    // Writes through the slave while server host 1 is cut off and healed.
    let acked = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let (mut tried, stop) = (0u64, Arc::new(AtomicBool::new(false)));
    let writer = {
        let (acked, stop) = (acked.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            let mut failed = 0u64;
            while !stop.load(Ordering::SeqCst) && n < 100_000 {
                let (k, v) = (format!("mh-{n}"), format!("v{n}"));
                match set_get(memcached, &k, &v) {
                    Ok(true) => acked.lock().unwrap().push((k, v)),
                    _ => failed += 1,
                }
                n += 1;
            }
            (n, failed)
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    lab.cut(1);
    std::thread::sleep(Duration::from_secs(5));
    lab.heal(1);
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::SeqCst);
    let (n, failed) = writer.join().expect("writer");
    tried += n;
    let acked = acked.lock().unwrap().clone();
    assert!(!acked.is_empty());
    let mut lost = Vec::new();
    for (k, v) in &acked {
        let t0 = Instant::now();
        loop {
            match get(memcached, k) {
                Ok(Some(got)) if &got == v => break,
                other if t0.elapsed() > Duration::from_secs(20) => {
                    lost.push((k.clone(), format!("{other:?}")));
                    break;
                }
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
    eprintln!(
        "{name}: partition of host 1 for 5 s: {tried} writes tried, {} acknowledged, {failed} failed; {} lost",
        acked.len(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "acknowledged writes lost after the heal: {:?}",
        &lost[..lost.len().min(5)]
    );

    // Scaling reaches the slave within one poll interval of the task's end; the control
    // plane's host restarts (kill -9) in the middle of the grow.
    cli(&["grow", "m1"]);
    let t0 = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains(&lab.addr(3).to_string())
        && t0.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    plane.kill9();
    let before = std::fs::read_to_string(&log).unwrap_or_default();
    // Only the create had finished: the grow was cut in the middle.
    assert_eq!(
        before.matches("task done").count(),
        1,
        "the grow finished before the kill"
    );
    let mut plane = Proc::start(&bin("k2hdkc-dbaas"), &args, Some(&log));
    assert!(
        wait_listening(trove, Duration::from_secs(30)),
        "control plane restart:\n{}",
        log_tail(&log)
    );
    let t1 = Instant::now();
    loop {
        let v: serde_json::Value =
            serde_json::from_str(&cli(&["show", "m1", "--json"])).expect("show --json");
        let members = v["instances"].as_array().cloned().unwrap_or_default();
        if v["task"]["name"] == "NONE"
            && members.len() == 4
            && members.iter().all(|m| m["status"] == "ACTIVE")
        {
            break;
        }
        assert!(
            t1.elapsed() < Duration::from_secs(300),
            "the grow did not finish after the restart: {v}\n{}",
            log_tail(&log)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("resuming task"),
        "the grow was not resumed"
    );
    eprintln!(
        "{name}: control plane killed during the grow, restarted, grow finished {:.1}s later",
        t1.elapsed().as_secs_f64()
    );
    eprintln!(
        "{name}: slave followed the grow {:.1}s after it finished",
        wait_svrnodes(&ini, 4, "grow")
    );
    for i in 0..50 {
        assert!(
            set_get(memcached, &format!("after-grow-{i}"), "x").unwrap_or(false)
                || set_get(memcached, &format!("after-grow-{i}"), "x").unwrap_or(false),
            "write after grow failed twice"
        );
    }
    cli(&["shrink", "m1", "--wait"]);
    eprintln!(
        "{name}: slave followed the shrink {:.1}s after it finished",
        wait_svrnodes(&ini, 3, "shrink")
    );
    for i in 0..50 {
        assert!(
            set_get(memcached, &format!("after-shrink-{i}"), "x").unwrap_or(false)
                || set_get(memcached, &format!("after-shrink-{i}"), "x").unwrap_or(false),
            "write after shrink failed twice"
        );
    }
    for (k, v) in acked.iter().step_by(50) {
        assert_eq!(
            get(memcached, k).ok().flatten().as_deref(),
            Some(v.as_str()),
            "{k} after grow and shrink"
        );
    }
    in_slave(slave.unregister_args());
    cli(&["delete", "m1", "--wait"]);
    assert!(plane.terminate(Duration::from_secs(15)));
}
