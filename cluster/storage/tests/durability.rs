//! File-engine durability: torn tails at every offset, garbage, damage, locking, versions,
//! automatic compaction, and the transaction hook across restarts.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k2hdkc_storage::{
    ChangeKind, EngineConfig, Error, FileOptions, Fsync, HookConfig, SetMode, Store, StoreConfig,
    WriteOpts,
};

fn cfg(dir: &Path) -> StoreConfig {
    let mut o = FileOptions::new(dir);
    o.fsync = Fsync::Never;
    StoreConfig {
        engine: EngineConfig::File(o),
        maintenance_interval: None,
        shards: 4,
        ..StoreConfig::memory()
    }
}

fn logs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "k2l"))
        .collect();
    v.sort();
    v
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "LOCK" {
            fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn put(s: &Store, i: usize) {
    s.set(
        format!("k{i:03}").as_bytes(),
        format!("value-{i}").as_bytes(),
        SetMode::Set,
        &WriteOpts::default(),
    )
    .unwrap();
}

/// Which prefix k000..k{n-1} the store holds; fails if it is not a prefix.
fn prefix_len(s: &Store, max: usize) -> usize {
    let n = (0..max)
        .take_while(|i| s.contains(format!("k{i:03}").as_bytes()))
        .count();
    for i in n..max {
        assert!(
            !s.contains(format!("k{i:03}").as_bytes()),
            "k{i} present after a gap at {n}"
        );
    }
    for i in 0..n {
        let v = s
            .get(format!("k{i:03}").as_bytes(), None)
            .unwrap()
            .unwrap()
            .data;
        assert_eq!(v, format!("value-{i}").as_bytes());
    }
    n
}

#[test]
fn torn_tail_at_every_offset_recovers_a_prefix() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let s = Store::open(cfg(&dir)).unwrap();
    const N: usize = 60;
    for i in 0..N {
        put(&s, i);
    }
    s.close().unwrap();
    drop(s);
    let log = logs(&dir).pop().unwrap();
    let full = fs::read(&log).unwrap();
    let mut last = 0;
    let mut cuts = 0;
    for cut in (0..=full.len()).step_by(7).chain([full.len() - 1]) {
        let d = tmp.path().join(format!("cut{cut}"));
        copy_dir(&dir, &d);
        fs::write(d.join(log.file_name().unwrap()), &full[..cut]).unwrap();
        let s = Store::open(cfg(&d)).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let n = prefix_len(&s, N);
        assert!(n >= last, "a longer log never recovers less");
        last = n;
        // The store is writable after recovery, and that write survives.
        s.set(b"after", b"recovery", SetMode::Set, &WriteOpts::default())
            .unwrap();
        s.close().unwrap();
        drop(s);
        let s = Store::open(cfg(&d)).unwrap();
        assert!(s.contains(b"after"));
        assert_eq!(prefix_len(&s, N), n);
        drop(s);
        fs::remove_dir_all(&d).unwrap();
        cuts += 1;
    }
    assert_eq!(
        last,
        N - 1,
        "the last cut removes one byte of the last record only"
    );
    assert!(cuts > 100);
}

#[test]
fn garbage_after_the_tail_is_cut_and_kept_aside() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let s = Store::open(cfg(&dir)).unwrap();
    for i in 0..20 {
        put(&s, i);
    }
    s.close().unwrap();
    drop(s);
    let log = logs(&dir).pop().unwrap();
    let mut f = fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::io::Write::write_all(&mut f, &[0xAB; 333]).unwrap();
    drop(f);
    let s = Store::open(cfg(&dir)).unwrap();
    assert_eq!(prefix_len(&s, 20), 20);
    let side: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".torn-"))
        .collect();
    assert_eq!(side.len(), 1);
    assert_eq!(fs::metadata(dir.join(&side[0])).unwrap().len(), 333);
}

#[test]
fn damage_that_is_not_a_torn_tail_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let s = Store::open(cfg(&dir)).unwrap();
    for i in 0..20 {
        put(&s, i);
    }
    assert!(s.compact().unwrap());
    for i in 20..30 {
        put(&s, i);
    }
    s.close().unwrap();
    drop(s);
    // A damaged snapshot.
    let snap: PathBuf = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "k2s"))
        .unwrap();
    let good = fs::read(&snap).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 1;
    fs::write(&snap, &bad).unwrap();
    assert!(matches!(Store::open(cfg(&dir)), Err(Error::Corrupt(_))));
    fs::write(&snap, &good).unwrap();
    // A damaged older log (a crash between rotation and snapshot leaves two logs).
    let d2 = tmp.path().join("two-logs");
    let s = Store::open(cfg(&d2)).unwrap();
    put(&s, 0);
    s.close().unwrap();
    drop(s);
    let first = logs(&d2).pop().unwrap();
    let bytes = fs::read(&first).unwrap();
    let second = d2.join("log-0000000000000002.k2l");
    let mut hdr = bytes[..24].to_vec();
    hdr[16] = 2;
    fs::write(&second, &hdr).unwrap();
    let mut damaged = bytes.clone();
    let n = damaged.len();
    damaged[n - 3] ^= 0xff;
    fs::write(&first, &damaged).unwrap();
    assert!(matches!(Store::open(cfg(&d2)), Err(Error::Corrupt(_))));
    fs::write(&first, &bytes).unwrap();
    let s = Store::open(cfg(&d2)).unwrap();
    assert_eq!(prefix_len(&s, 1), 1);
    drop(s);
    // Everything is fine again with the good snapshot.
    let s = Store::open(cfg(&dir)).unwrap();
    assert_eq!(prefix_len(&s, 30), 30);
}

#[test]
fn interrupted_snapshot_and_torn_new_log_header_are_harmless() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let s = Store::open(cfg(&dir)).unwrap();
    for i in 0..10 {
        put(&s, i);
    }
    s.close().unwrap();
    drop(s);
    fs::write(
        dir.join("snap-0000000000000002.k2s.tmp"),
        b"half a snapshot",
    )
    .unwrap();
    fs::write(dir.join("log-0000000000000002.k2l"), b"K2HDK").unwrap();
    let s = Store::open(cfg(&dir)).unwrap();
    assert_eq!(prefix_len(&s, 10), 10);
    put(&s, 10);
    s.close().unwrap();
    drop(s);
    assert!(!dir.join("snap-0000000000000002.k2s.tmp").exists());
    let s = Store::open(cfg(&dir)).unwrap();
    assert_eq!(prefix_len(&s, 11), 11);
}

#[test]
fn a_data_dir_is_locked_and_versions_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let s = Store::open(cfg(&dir)).unwrap();
    assert!(matches!(Store::open(cfg(&dir)), Err(Error::Locked(_))));
    put(&s, 0);
    s.close().unwrap();
    drop(s);
    let log = logs(&dir).pop().unwrap();
    let mut b = fs::read(&log).unwrap();
    b[8] = 99;
    fs::write(&log, &b).unwrap();
    match Store::open(cfg(&dir)) {
        Err(Error::UnsupportedVersion { found: 99, .. }) => {}
        other => panic!("expected a version error, got {other:?}"),
    }
    b[0] = b'X';
    b[8] = 1;
    fs::write(&log, &b).unwrap();
    assert!(matches!(Store::open(cfg(&dir)), Err(Error::Corrupt(_))));
}

#[test]
fn automatic_compaction_bounds_the_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut c = cfg(&dir);
    if let EngineConfig::File(o) = &mut c.engine {
        o.compaction_min_bytes = 64 << 10;
    }
    c.maintenance_interval = Some(Duration::from_millis(20));
    let s = Store::open(c.clone()).unwrap();
    for round in 0..40 {
        for i in 0..100 {
            s.set(
                format!("k{i:03}").as_bytes(),
                format!("round {round} value {i:0>40}").as_bytes(),
                SetMode::Set,
                &WriteOpts::default(),
            )
            .unwrap();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.stats().engine.compactions == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        s.stats().engine.compactions >= 1,
        "the maintenance worker compacts"
    );
    let total: u64 = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(
        total < 600 << 10,
        "files shrank to about the live data: {total} bytes"
    );
    s.close().unwrap();
    drop(s);
    let s = Store::open(c).unwrap();
    for i in 0..100 {
        let v = s
            .get(format!("k{i:03}").as_bytes(), None)
            .unwrap()
            .unwrap()
            .data;
        assert!(
            v.starts_with(b"round 39 "),
            "latest round survives compaction"
        );
    }
}

#[test]
fn fsync_always_groups_commits_of_concurrent_writers() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = cfg(&tmp.path().join("data"));
    if let EngineConfig::File(o) = &mut c.engine {
        o.fsync = Fsync::Always;
    }
    let s = Store::open(c.clone()).unwrap();
    let hs: Vec<_> = (0..4)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    s.set(
                        format!("t{t}-{i}").as_bytes(),
                        b"v",
                        SetMode::Set,
                        &WriteOpts::default(),
                    )
                    .unwrap();
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    let st = s.stats();
    assert!(
        st.engine.fsyncs >= 1 && st.engine.fsyncs <= 200,
        "one fsync per write at most: {}",
        st.engine.fsyncs
    );
    // No close: an fsync=always store has everything on disk already.
    let dir = tmp.path().join("copy");
    copy_dir(&tmp.path().join("data"), &dir);
    drop(s);
    let s = Store::open(cfg(&dir)).unwrap();
    assert_eq!(s.stats().records, 200);
}

fn read_lines(p: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn transaction_hook_writes_json_lines_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let out = tmp.path().join("hook.jsonl");
    let piped = tmp.path().join("piped.jsonl");
    let mut c = cfg(&dir);
    c.hook = Some(HookConfig {
        file: Some(out.clone()),
        program: Some(vec![
            "sh".into(),
            "-c".into(),
            format!("cat >> {}", piped.display()),
        ]),
        prefix: Some("app:".into()),
        kinds: Some(vec![ChangeKind::Set, ChangeKind::Delete]),
    });
    let wait_for = |p: &Path, n: usize| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while read_lines(p).len() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        read_lines(p)
    };
    let s = Store::open(c.clone()).unwrap();
    s.set(b"app:1", b"hello", SetMode::Set, &WriteOpts::default())
        .unwrap();
    s.set(b"other", b"skip", SetMode::Set, &WriteOpts::default())
        .unwrap();
    s.counter_init(b"app:ctr", 8, 1, k2hdkc_storage::Expire::Never)
        .unwrap();
    s.delete(b"app:1", None).unwrap();
    let lines = wait_for(&out, 2);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["kind"], "set");
    assert_eq!(lines[0]["ops"][0]["key"]["text"], "app:1");
    assert_eq!(lines[0]["ops"][0]["value"]["text"], "hello");
    assert_eq!(lines[1]["kind"], "delete");
    assert_eq!(lines[1]["ops"][0]["op"], "tombstone");
    assert!(lines[0]["seq"].as_u64() < lines[1]["seq"].as_u64());
    assert_eq!(wait_for(&piped, 2).len(), 2);
    s.close().unwrap();
    drop(s);
    // A restart resumes after the last line: nothing repeated, nothing skipped.
    let s = Store::open(c).unwrap();
    s.set(b"app:2", b"again", SetMode::Set, &WriteOpts::default())
        .unwrap();
    let lines = wait_for(&out, 3);
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2]["ops"][0]["key"]["text"], "app:2");
    s.close().unwrap();
    let bad = HookConfig {
        file: None,
        program: None,
        prefix: None,
        kinds: None,
    };
    assert!(bad.validate().is_err());
}
