//! The engine conformance suite: every case runs against the memory, file and temporary
//! engines; cases that restart the store check persistence where the engine is durable.

use std::sync::Arc;

use k2hdkc_storage::{
    ChangeFilter, ChangeKind, DeleteOutcome, Error, Expire, Kind as RecKind, Limit, QueueOpts,
    SetMode, SetOutcome, Store, Version, Versioned, WriteOpts,
};

use crate::harness::{Harness, Kind, T0, dump};

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod memory { $( #[test] fn $case() { super::$case(&crate::harness::Harness::new(crate::harness::Kind::Memory)) } )* }
        mod file { $( #[test] fn $case() { super::$case(&crate::harness::Harness::new(crate::harness::Kind::File)) } )* }
        mod temporary { $( #[test] fn $case() { super::$case(&crate::harness::Harness::new(crate::harness::Kind::Temporary)) } )* }
    };
}

conformance!(
    set_get_delete,
    deletes_of_absent_keys_leave_tombstones_when_asked,
    conditional_writes,
    limits_are_errors,
    partial_read_write,
    ttl_tombstones_and_purge,
    subkeys_and_rename,
    recursive_delete_survives_cycles,
    queues_fifo_lifo_and_keyqueues,
    counters,
    memcached_incr_decr,
    encryption,
    history_of_versions,
    scans_page_in_order,
    change_feed,
    versioned_sets,
    archive_round_trip,
    flush_all_leaves_tombstones,
    concurrent_updates_lose_nothing,
    restart_keeps_everything,
);

const W: WriteOpts<'static> = WriteOpts {
    flags: None,
    expire: Expire::Default,
    pass: None,
    encrypt: None,
    cas: None,
};

fn set(s: &Store, k: &[u8], v: &[u8]) -> u64 {
    match s.set(k, v, SetMode::Set, &W).unwrap() {
        SetOutcome::Stored { cas } => cas,
        o => panic!("set {k:?}: {o:?}"),
    }
}

fn val(s: &Store, k: &[u8]) -> Option<Vec<u8>> {
    s.get(k, None).unwrap().map(|v| v.data)
}

fn set_get_delete(h: &Harness) {
    let s = h.open();
    assert_eq!(val(&s, b"a"), None);
    let c1 = set(&s, b"a", b"one");
    let v = s.get(b"a", None).unwrap().unwrap();
    assert_eq!(
        (v.data.as_slice(), v.flags, v.cas, v.kind),
        (&b"one"[..], 0, c1, RecKind::Value)
    );
    assert_eq!(v.created, (T0 / 1000) as u32);
    let opts = WriteOpts {
        flags: Some(0xfeed_beef),
        ..W
    };
    let SetOutcome::Stored { cas: c2 } = s.set(b"a", b"two", SetMode::Set, &opts).unwrap() else {
        panic!()
    };
    assert!(c2 > c1, "cas must change on every write");
    let v = s.get(b"a", None).unwrap().unwrap();
    assert_eq!((v.data.as_slice(), v.flags), (&b"two"[..], 0xfeed_beef));
    assert!(s.contains(b"a"));
    let attrs = s.attrs(b"a").unwrap().unwrap();
    assert_eq!(
        (attrs.flags, attrs.cas, attrs.stored_len, attrs.kind),
        (0xfeed_beef, c2, 3, "value")
    );
    assert_eq!(s.delete(b"a", None).unwrap(), DeleteOutcome::Deleted);
    assert_eq!(val(&s, b"a"), None);
    assert_eq!(s.delete(b"a", None).unwrap(), DeleteOutcome::NotFound);
    assert!(s.attrs(b"a").unwrap().is_none());
    // Binary keys and values, empty value.
    let k = [0u8, 255, 10, 13, 32];
    set(&s, &k, &[0, 0, 1]);
    assert_eq!(val(&s, &k).unwrap(), vec![0, 0, 1]);
    set(&s, b"empty", b"");
    assert_eq!(val(&s, b"empty").unwrap(), b"");
    let mut n = 0;
    assert_eq!(
        s.get_with(b"empty", None, |v| {
            n = v.data.len();
            7
        })
        .unwrap(),
        Some(7)
    );
    assert_eq!(n, 0);
}

/// A cluster's primary deletes keys it lacks with a tombstone all the same (a replica may
/// hold a copy it missed); a store on its own writes nothing for them.
fn deletes_of_absent_keys_leave_tombstones_when_asked(h: &Harness) {
    let s = h.open();
    let before = s.last_seq();
    assert_eq!(s.delete(b"never", None).unwrap(), DeleteOutcome::NotFound);
    assert_eq!(s.last_seq(), before, "nothing written by default");
    assert_eq!(s.record_version(b"never"), None);
    s.set_tombstone_absent(true);
    assert_eq!(s.delete(b"never", None).unwrap(), DeleteOutcome::NotFound);
    let v = s.record_version(b"never").expect("a tombstone");
    assert!(v > Version::ZERO);
    assert_eq!(val(&s, b"never"), None);
    // It supersedes an older copy imported later: the key stays deleted.
    let older = Version {
        ts: v.ts - (1 << 16),
        node: 9,
    };
    assert!(matches!(
        s.set_versioned(b"never", b"stale copy", 0, Expire::Default, older, true)
            .unwrap(),
        Versioned::Stale(_)
    ));
    assert_eq!(val(&s, b"never"), None);
    // A compare-and-delete of a key that is not there still writes nothing.
    let n = s.last_seq();
    assert_eq!(
        s.delete(b"other", Some(5)).unwrap(),
        DeleteOutcome::NotFound
    );
    assert_eq!(s.last_seq(), n);
}

fn conditional_writes(h: &Harness) {
    let s = h.open();
    assert_eq!(
        s.set(b"k", b"x", SetMode::Replace, &W).unwrap(),
        SetOutcome::NotStored
    );
    assert_eq!(
        s.set(b"k", b"x", SetMode::Append, &W).unwrap(),
        SetOutcome::NotStored
    );
    assert_eq!(
        s.set(b"k", b"x", SetMode::Prepend, &W).unwrap(),
        SetOutcome::NotStored
    );
    assert!(matches!(
        s.set(b"k", b"mid", SetMode::Add, &W).unwrap(),
        SetOutcome::Stored { .. }
    ));
    assert_eq!(
        s.set(b"k", b"again", SetMode::Add, &W).unwrap(),
        SetOutcome::NotStored
    );
    let flagged = WriteOpts {
        flags: Some(9),
        expire: Expire::After(100),
        ..W
    };
    s.set(b"k", b"mid", SetMode::Replace, &flagged).unwrap();
    s.set(b"k", b"-end", SetMode::Append, &W).unwrap();
    s.set(b"k", b"start-", SetMode::Prepend, &W).unwrap();
    let v = s.get(b"k", None).unwrap().unwrap();
    assert_eq!(v.data, b"start-mid-end");
    // Append and prepend keep flags and expiry.
    assert_eq!(v.flags, 9);
    assert_eq!(v.expire, (T0 / 1000) as u32 + 100);
    // Check-and-set.
    let bad = WriteOpts {
        cas: Some(v.cas + 1),
        ..W
    };
    assert_eq!(
        s.set(b"k", b"x", SetMode::Set, &bad).unwrap(),
        SetOutcome::Exists
    );
    let good = WriteOpts {
        cas: Some(v.cas),
        ..W
    };
    assert!(matches!(
        s.set(b"k", b"cas", SetMode::Set, &good).unwrap(),
        SetOutcome::Stored { .. }
    ));
    assert_eq!(
        s.set(b"missing", b"x", SetMode::Set, &good).unwrap(),
        SetOutcome::NotFound
    );
    let cas = s.get(b"k", None).unwrap().unwrap().cas;
    assert_eq!(
        s.delete(b"k", Some(cas + 1)).unwrap(),
        DeleteOutcome::Exists
    );
    assert_eq!(s.delete(b"k", Some(cas)).unwrap(), DeleteOutcome::Deleted);
    // add succeeds over a deleted key.
    assert!(matches!(
        s.set(b"k", b"new", SetMode::Add, &W).unwrap(),
        SetOutcome::Stored { .. }
    ));
    // Append to a counter is a type error.
    s.counter_init(b"ctr", 32, 1, Expire::Never).unwrap();
    assert!(matches!(
        s.set(b"ctr", b"x", SetMode::Append, &W),
        Err(Error::NotSameType { .. })
    ));
}

fn limits_are_errors(h: &Harness) {
    let s = h.open_with(|c| c.max_value_len = 1000);
    assert!(matches!(
        s.set(b"", b"v", SetMode::Set, &W),
        Err(Error::InvalidArgument(_))
    ));
    let long = vec![b'k'; 65_536];
    assert!(matches!(
        s.set(&long, b"v", SetMode::Set, &W),
        Err(Error::TooLarge {
            what: Limit::Key,
            ..
        })
    ));
    set(&s, &long[..65_535], b"longest key");
    assert_eq!(val(&s, &long[..65_535]).unwrap(), b"longest key");
    assert!(matches!(
        s.set(b"k", &[0; 1001], SetMode::Set, &W),
        Err(Error::TooLarge {
            what: Limit::Value,
            ..
        })
    ));
    set(&s, b"k", &[1; 1000]);
    assert!(matches!(
        s.set(b"k", b"x", SetMode::Append, &W),
        Err(Error::TooLarge { .. })
    ));
    assert!(matches!(
        s.write_at(b"k", 2000, b"x", &W),
        Err(Error::TooLarge { .. })
    ));
    assert!(matches!(
        s.write_at(b"k", usize::MAX, b"xx", &W),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        s.scan(b"", None, 0),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        s.counter_init(b"c", 12, 0, Expire::Never),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        s.counter_init(b"c", 8, 256, Expire::Never),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(
        val(&s, b"k").unwrap().len(),
        1000,
        "failed writes change nothing"
    );
    let mut c = h.config();
    c.max_value_len = 65 << 20;
    assert!(Store::open(c).is_err());
}

fn partial_read_write(h: &Harness) {
    let s = h.open();
    s.write_at(b"p", 4, b"abc", &W).unwrap();
    assert_eq!(val(&s, b"p").unwrap(), b"\0\0\0\0abc");
    s.write_at(b"p", 1, b"XY", &W).unwrap();
    assert_eq!(val(&s, b"p").unwrap(), b"\0XY\0abc");
    assert_eq!(s.read_at(b"p", 1, Some(2), None).unwrap().unwrap(), b"XY");
    assert_eq!(s.read_at(b"p", 5, None, None).unwrap().unwrap(), b"bc");
    assert_eq!(s.read_at(b"p", 50, Some(5), None).unwrap().unwrap(), b"");
    assert_eq!(
        s.read_at(b"p", 6, Some(usize::MAX), None).unwrap().unwrap(),
        b"c"
    );
    assert_eq!(s.read_at(b"none", 0, None, None).unwrap(), None);
}

fn ttl_tombstones_and_purge(h: &Harness) {
    let s = h.open_with(|c| c.tombstone_grace_secs = 60);
    let now = (T0 / 1000) as u32;
    s.set(
        b"t",
        b"v",
        SetMode::Set,
        &WriteOpts {
            expire: Expire::After(10),
            ..W
        },
    )
    .unwrap();
    s.set(
        b"past",
        b"v",
        SetMode::Set,
        &WriteOpts {
            expire: Expire::At(now - 5),
            ..W
        },
    )
    .unwrap();
    assert_eq!(
        val(&s, b"past"),
        None,
        "an expiry in the past is invisible at once"
    );
    set(&s, b"forever", b"v");
    h.advance_secs(9);
    assert!(s.contains(b"t"));
    // touch moves the expiry and keeps the cas unique (it is not a write of the value).
    let cas = s.get(b"t", None).unwrap().unwrap().cas;
    let touched = s
        .touch(b"t", Expire::After(5), false, None)
        .unwrap()
        .unwrap();
    assert_eq!(touched.cas, cas);
    assert_eq!(s.get(b"t", None).unwrap().unwrap().cas, cas);
    h.advance_secs(3);
    assert!(s.contains(b"t"));
    let v = s
        .touch(b"t", Expire::After(2), true, None)
        .unwrap()
        .unwrap();
    assert_eq!(v.data, b"v");
    h.advance_secs(3);
    assert_eq!(
        val(&s, b"t"),
        None,
        "expired records are invisible before any sweep"
    );
    assert_eq!(
        s.set(b"t", b"x", SetMode::Replace, &W).unwrap(),
        SetOutcome::NotStored
    );
    let st = s.sweep_now().unwrap();
    assert_eq!(st.expired, 2);
    assert_eq!(s.stats().tombstones, 2);
    let feed = s
        .feed_read(
            1,
            &ChangeFilter {
                prefix: None,
                kinds: Some(vec![ChangeKind::Expire]),
            },
            100,
        )
        .unwrap();
    assert_eq!(feed.changes.iter().map(|c| c.ops.len()).sum::<usize>(), 2);
    h.advance_secs(61);
    assert_eq!(s.sweep_now().unwrap().purged, 2);
    let st = s.stats();
    assert_eq!((st.tombstones, st.records), (0, 1));
    // Default TTL.
    let s2 = h.open_with(|c| {
        c.default_ttl_secs = 30;
        if let k2hdkc_storage::EngineConfig::File(o) = &mut c.engine {
            o.dir = o.dir.with_extension("ttl");
        }
    });
    s2.set(b"d", b"v", SetMode::Set, &W).unwrap();
    assert_eq!(
        s2.get(b"d", None).unwrap().unwrap().expire,
        (h.clock.now_ms() / 1000) as u32 + 30
    );
    s2.set(
        b"n",
        b"v",
        SetMode::Set,
        &WriteOpts {
            expire: Expire::Never,
            ..W
        },
    )
    .unwrap();
    assert_eq!(s2.get(b"n", None).unwrap().unwrap().expire, 0);
}

use k2hdkc_storage::Clock;

fn subkeys_and_rename(h: &Harness) {
    let s = h.open();
    s.add_subkey(b"parent", b"c1", Some((b"child one", &W)))
        .unwrap();
    s.add_subkey(b"parent", b"c2", None).unwrap();
    s.add_subkey(b"parent", b"c1", None).unwrap();
    assert_eq!(
        s.subkeys(b"parent").unwrap().unwrap(),
        vec![b"c1".to_vec(), b"c2".to_vec()]
    );
    assert_eq!(val(&s, b"c1").unwrap(), b"child one");
    assert_eq!(
        val(&s, b"parent").unwrap(),
        b"",
        "the parent was created empty"
    );
    // Setting the parent's value keeps its sub-keys.
    set(&s, b"parent", b"pv");
    assert_eq!(s.subkeys(b"parent").unwrap().unwrap().len(), 2);
    assert!(s.remove_subkey(b"parent", b"c1", true).unwrap());
    assert_eq!(val(&s, b"c1"), None);
    assert!(!s.remove_subkey(b"parent", b"zz", false).unwrap());
    assert!(matches!(
        s.remove_subkey(b"nobody", b"c2", false),
        Err(Error::NotFound)
    ));
    s.set_subkeys(b"parent", &[b"x", b"y", b"z"]).unwrap();
    assert_eq!(s.subkeys(b"parent").unwrap().unwrap().len(), 3);
    assert!(s.set_subkeys(b"parent", &[b"x", b"x"]).is_err());
    // Rename keeps value, flags and sub-keys, and updates the parent's list.
    s.add_subkey(
        b"root",
        b"old",
        Some((
            b"payload",
            &WriteOpts {
                flags: Some(5),
                ..W
            },
        )),
    )
    .unwrap();
    s.add_subkey(b"old", b"grandchild", None).unwrap();
    s.rename(b"old", b"new", Some(b"root"), None).unwrap();
    assert_eq!(val(&s, b"old"), None);
    let v = s.get(b"new", None).unwrap().unwrap();
    assert_eq!((v.data.as_slice(), v.flags), (&b"payload"[..], 5));
    assert_eq!(
        s.subkeys(b"new").unwrap().unwrap(),
        vec![b"grandchild".to_vec()]
    );
    assert_eq!(s.subkeys(b"root").unwrap().unwrap(), vec![b"new".to_vec()]);
    assert!(matches!(
        s.rename(b"old", b"x", None, None),
        Err(Error::NotFound)
    ));
    // A parent that is also the source or target, or a key written as its own child, is refused
    // (it would silently lose the moved value or the child write).
    assert!(matches!(
        s.rename(b"new", b"other", Some(b"new"), None),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        s.rename(b"new", b"other", Some(b"other"), None),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        s.add_subkey(b"self", b"self", Some((b"v", &W))),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(val(&s, b"new").unwrap(), b"payload");
    assert!(s.clear_subkeys(b"root").unwrap());
    assert_eq!(s.subkeys(b"root").unwrap().unwrap(), Vec::<Vec<u8>>::new());
    assert!(!s.clear_subkeys(b"nothing").unwrap());
    assert_eq!(s.subkeys(b"nothing").unwrap(), None);
}

fn recursive_delete_survives_cycles(h: &Harness) {
    let s = h.open();
    s.add_subkey(b"a", b"b", Some((b"1", &W))).unwrap();
    s.add_subkey(b"b", b"c", Some((b"2", &W))).unwrap();
    s.add_subkey(b"c", b"a", None).unwrap();
    s.add_subkey(b"b", b"missing-child", None).unwrap();
    set(&s, b"unrelated", b"stay");
    assert_eq!(s.delete_recursive(b"a").unwrap(), 3);
    for k in [&b"a"[..], b"b", b"c"] {
        assert_eq!(val(&s, k), None);
    }
    assert_eq!(val(&s, b"unrelated").unwrap(), b"stay");
    assert_eq!(s.delete_recursive(b"a").unwrap(), 0);
}

fn queues_fifo_lifo_and_keyqueues(h: &Harness) {
    let s = h.open();
    let q = QueueOpts::default();
    for i in 0..5u8 {
        assert_eq!(
            s.queue_push(b"fifo", None, &[i], true, &q).unwrap(),
            i as usize + 1
        );
        s.queue_push(b"lifo", None, &[i], false, &q).unwrap();
    }
    assert_eq!(s.queue_len(b"fifo").unwrap(), 5);
    assert_eq!(s.queue_peek(b"fifo", None).unwrap().unwrap().value, vec![0]);
    let pops: Vec<u8> = (0..5)
        .map(|_| s.queue_pop(b"fifo", None).unwrap().unwrap().value[0])
        .collect();
    assert_eq!(pops, vec![0, 1, 2, 3, 4]);
    let pops: Vec<u8> = (0..5)
        .map(|_| s.queue_pop(b"lifo", None).unwrap().unwrap().value[0])
        .collect();
    assert_eq!(pops, vec![4, 3, 2, 1, 0]);
    assert_eq!(s.queue_pop(b"fifo", None).unwrap(), None);
    assert_eq!(s.queue_len(b"fifo").unwrap(), 0);
    // Key-queue.
    s.queue_push(b"kq", Some(b"k1"), b"v1", true, &q).unwrap();
    s.queue_push(b"kq", Some(b"k2"), b"v2", true, &q).unwrap();
    let p = s.queue_pop(b"kq", None).unwrap().unwrap();
    assert_eq!((p.key.unwrap(), p.value), (b"k1".to_vec(), b"v1".to_vec()));
    // Remove N, expiring items.
    for i in 0..4u8 {
        s.queue_push(b"r", None, &[i], true, &q).unwrap();
    }
    assert_eq!(s.queue_remove(b"r", 3).unwrap(), 3);
    assert_eq!(s.queue_pop(b"r", None).unwrap().unwrap().value, vec![3]);
    s.queue_push(
        b"ttl",
        None,
        b"short",
        true,
        &QueueOpts {
            expire: Expire::After(5),
            ..q
        },
    )
    .unwrap();
    s.queue_push(b"ttl", None, b"long", true, &q).unwrap();
    h.advance_secs(6);
    assert_eq!(s.queue_len(b"ttl").unwrap(), 1);
    assert_eq!(s.queue_pop(b"ttl", None).unwrap().unwrap().value, b"long");
    // Queue names are not keys.
    s.queue_push(b"shared-name", None, b"q", true, &q).unwrap();
    assert_eq!(val(&s, b"shared-name"), None);
    // Encrypted item: the wrong phrase fails and leaves the item in place.
    let enc = QueueOpts {
        pass: Some(b"queue phrase"),
        ..q
    };
    s.queue_push(b"secret-q", Some(b"k"), b"hidden", true, &enc)
        .unwrap();
    assert!(matches!(
        s.queue_pop(b"secret-q", Some(b"wrong")),
        Err(Error::BadPassPhrase)
    ));
    assert!(matches!(
        s.queue_pop(b"secret-q", None),
        Err(Error::BadPassPhrase)
    ));
    assert_eq!(s.queue_len(b"secret-q").unwrap(), 1);
    assert_eq!(
        s.queue_pop(b"secret-q", Some(b"queue phrase"))
            .unwrap()
            .unwrap()
            .value,
        b"hidden"
    );
}

fn counters(h: &Harness) {
    let s = h.open();
    for w in [8u8, 16, 32, 64] {
        let k = format!("c{w}");
        let k = k.as_bytes();
        assert!(matches!(s.counter_add(k, w, 1), Err(Error::NotFound)));
        s.counter_init(k, w, 5, Expire::Never).unwrap();
        assert_eq!(s.counter_get(k, w).unwrap(), Some(5));
        assert_eq!(s.counter_add(k, w, 10).unwrap(), 15);
        assert_eq!(
            s.counter_add(k, w, -20).unwrap(),
            (15u64.wrapping_sub(20)) & mask(w)
        );
        s.counter_cas(k, w, s.counter_get(k, w).unwrap().unwrap(), 7)
            .unwrap();
        assert!(matches!(
            s.counter_cas(k, w, 8, 9),
            Err(Error::NotSameValue)
        ));
        assert_eq!(s.counter_get(k, w).unwrap(), Some(7));
        let other = if w == 64 { 8 } else { w * 2 };
        assert!(matches!(
            s.counter_get(k, other),
            Err(Error::NotSameType { .. })
        ));
        assert!(matches!(
            s.counter_add(k, other, 1),
            Err(Error::NotSameType { .. })
        ));
    }
    s.counter_init(b"wrap", 8, 255, Expire::Never).unwrap();
    assert_eq!(s.counter_add(b"wrap", 8, 1).unwrap(), 0);
    s.counter_init(b"max", 64, u64::MAX, Expire::Never).unwrap();
    assert_eq!(s.counter_add(b"max", 64, 2).unwrap(), 1);
    set(&s, b"plain", b"1");
    assert!(matches!(
        s.counter_get(b"plain", 64),
        Err(Error::NotSameType { .. })
    ));
    assert_eq!(s.counter_get(b"none", 64).unwrap(), None);
    assert_eq!(
        s.get(b"c16", None).unwrap().unwrap().kind,
        RecKind::Counter16
    );
}

fn mask(w: u8) -> u64 {
    if w == 64 { u64::MAX } else { (1 << w) - 1 }
}

fn memcached_incr_decr(h: &Harness) {
    let s = h.open();
    assert_eq!(s.incr_decimal(b"n", 1, false).unwrap(), None);
    s.set(
        b"n",
        b"10",
        SetMode::Set,
        &WriteOpts {
            flags: Some(3),
            ..W
        },
    )
    .unwrap();
    assert_eq!(s.incr_decimal(b"n", 5, false).unwrap().unwrap().0, 15);
    assert_eq!(
        s.incr_decimal(b"n", 100, true).unwrap().unwrap().0,
        0,
        "decr stops at zero"
    );
    s.set(b"n", b"18446744073709551615", SetMode::Set, &W)
        .unwrap();
    assert_eq!(
        s.incr_decimal(b"n", 2, false).unwrap().unwrap().0,
        1,
        "incr wraps at 2^64"
    );
    // A shorter result keeps the value's width, padded with spaces (as memcached does).
    assert_eq!(val(&s, b"n").unwrap(), b"1                   ");
    assert_eq!(s.incr_decimal(b"n", 9, false).unwrap().unwrap().0, 10);
    set(&s, b"n", b" +7 x");
    assert_eq!(s.incr_decimal(b"n", 1, false).unwrap().unwrap().0, 8);
    assert_eq!(val(&s, b"n").unwrap(), b"8    ");
    set(&s, b"text", b"12a");
    assert!(matches!(
        s.incr_decimal(b"text", 1, false),
        Err(Error::NotNumeric)
    ));
    set(&s, b"big", b"184467440737095516150");
    assert!(matches!(
        s.incr_decimal(b"big", 1, false),
        Err(Error::NotNumeric)
    ));
    set(&s, b"empty", b"");
    assert!(matches!(
        s.incr_decimal(b"empty", 1, false),
        Err(Error::NotNumeric)
    ));
}

fn encryption(h: &Harness) {
    let s = h.open();
    let with_pass = WriteOpts {
        pass: Some(b"per request"),
        ..W
    };
    s.set(b"e1", b"top secret", SetMode::Set, &with_pass)
        .unwrap();
    let a = s.attrs(b"e1").unwrap().unwrap();
    assert!(a.encrypted);
    assert!(a.stored_len > 10);
    assert!(matches!(s.get(b"e1", None), Err(Error::BadPassPhrase)));
    assert!(matches!(
        s.get(b"e1", Some(b"wrong")),
        Err(Error::BadPassPhrase)
    ));
    assert_eq!(
        s.get(b"e1", Some(b"per request")).unwrap().unwrap().data,
        b"top secret"
    );
    // Append keeps the encryption and needs the phrase.
    assert!(matches!(
        s.set(b"e1", b"!", SetMode::Append, &W),
        Err(Error::BadPassPhrase)
    ));
    s.set(b"e1", b"!", SetMode::Append, &with_pass).unwrap();
    assert_eq!(
        s.get(b"e1", Some(b"per request")).unwrap().unwrap().data,
        b"top secret!"
    );
    // The registered default key: transparent for readers without a phrase.
    s.set(
        b"e2",
        b"by default key",
        SetMode::Set,
        &WriteOpts {
            encrypt: Some(true),
            ..W
        },
    )
    .unwrap();
    assert!(s.attrs(b"e2").unwrap().unwrap().encrypted);
    assert_eq!(val(&s, b"e2").unwrap(), b"by default key");
    s.write_at(b"e2", 0, b"BY", &W).unwrap();
    assert_eq!(val(&s, b"e2").unwrap(), b"BY default key");
    assert!(s.attrs(b"e2").unwrap().unwrap().encrypted);
    // Rename re-seals for the new key.
    s.rename(b"e1", b"e1-renamed", None, Some(b"per request"))
        .unwrap();
    assert_eq!(
        s.get(b"e1-renamed", Some(b"per request"))
            .unwrap()
            .unwrap()
            .data,
        b"top secret!"
    );
    assert!(matches!(
        s.rename(b"e1-renamed", b"e3", None, None),
        Err(Error::BadPassPhrase)
    ));
    // Encryption never leaks into the change feed.
    let f = s.feed_read(1, &ChangeFilter::default(), 1000).unwrap();
    let text: String = f.changes.iter().map(|c| c.to_json().to_string()).collect();
    assert!(!text.contains("top secret") && !text.contains("default key"));
    // encrypt_by_default needs a default key; with one, plain writes are sealed.
    let mut bad = h.config();
    bad.keyring.default = None;
    bad.encrypt_by_default = true;
    assert!(Store::open(bad).is_err());
    drop(s);
    let s = h.open_with(|c| {
        c.encrypt_by_default = true;
        if let k2hdkc_storage::EngineConfig::File(o) = &mut c.engine {
            o.dir = o.dir.with_extension("enc");
        }
    });
    set(&s, b"auto", b"sealed");
    assert!(s.attrs(b"auto").unwrap().unwrap().encrypted);
    s.set(
        b"clear",
        b"x",
        SetMode::Set,
        &WriteOpts {
            encrypt: Some(false),
            ..W
        },
    )
    .unwrap();
    assert!(!s.attrs(b"clear").unwrap().unwrap().encrypted);
}

fn history_of_versions(h: &Harness) {
    let s = h.open_with(|c| c.history = 2);
    for v in [&b"v1"[..], b"v2", b"v3", b"v4"] {
        set(&s, b"h", v);
    }
    let hist: Vec<Vec<u8>> = s
        .history(b"h", None)
        .unwrap()
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(hist, vec![b"v3".to_vec(), b"v2".to_vec()]);
    assert_eq!(val(&s, b"h").unwrap(), b"v4");
    assert_eq!(s.attrs(b"h").unwrap().unwrap().history, 2);
}

fn scans_page_in_order(h: &Harness) {
    let s = h.open();
    for i in 0..250 {
        set(&s, format!("user:{i:04}").as_bytes(), b"x");
    }
    set(&s, b"other", b"x");
    s.delete(b"user:0100", None).unwrap();
    let mut all = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    for _ in 0..10 {
        let page = s.scan(b"user:", after.as_deref(), 100).unwrap();
        all.extend(page.keys);
        after = page.next;
        if after.is_none() {
            break;
        }
    }
    let want: Vec<Vec<u8>> = (0..250)
        .filter(|i| *i != 100)
        .map(|i| format!("user:{i:04}").into_bytes())
        .collect();
    assert_eq!(all, want);
    assert_eq!(s.scan(b"zzz", None, 10).unwrap(), Default::default());
}

/// `set_versioned`: a gateway's plain set, applied only when newer, refused where the record
/// needs more than the request.
fn versioned_sets(h: &Harness) {
    let s = h.open();
    let v1 = s.next_version();
    let start = s.last_seq() + 1;
    assert!(matches!(
        s.set_versioned(b"k", b"one", 7, Expire::Default, v1, false)
            .unwrap(),
        Versioned::Applied { .. }
    ));
    let got = s.get(b"k", None).unwrap().unwrap();
    assert_eq!(
        (got.data.as_slice(), got.flags, got.version),
        (&b"one"[..], 7, v1)
    );
    // The same or an older version changes nothing and says what is here.
    assert_eq!(
        s.set_versioned(b"k", b"old", 0, Expire::Default, v1, false)
            .unwrap(),
        Versioned::Stale(v1)
    );
    // The clock passed the version it was given: a local write after it is newer.
    let cas = set(&s, b"k", b"two");
    assert!(cas > v1.ts);
    let newer = Version {
        ts: cas + (1 << 20),
        node: 9,
    };
    assert!(matches!(
        s.set_versioned(b"k", b"three", 0, Expire::After(100), newer, true)
            .unwrap(),
        Versioned::Applied { .. }
    ));
    assert_eq!(val(&s, b"k").unwrap(), b"three");
    let kinds: Vec<ChangeKind> = s
        .feed_read(start, &ChangeFilter::default(), 10)
        .unwrap()
        .changes
        .iter()
        .map(|c| c.kind)
        .collect();
    assert_eq!(
        kinds,
        vec![ChangeKind::Set, ChangeKind::Set, ChangeKind::Import]
    );
    // A key with sub-keys needs its old record: not written this way.
    s.set_subkeys(b"p", &[b"c"]).unwrap();
    let v = s.next_version();
    assert_eq!(
        s.set_versioned(b"p", b"x", 0, Expire::Default, v, false)
            .unwrap(),
        Versioned::Ineligible
    );
    assert!(s.get(b"p", None).unwrap().is_none_or(|v| v.data != b"x"));
    // Neither is anything in a store that keeps history.
    drop(s);
    let s = h.open_with(|c| c.history = 2);
    let v = s.next_version();
    assert_eq!(
        s.set_versioned(b"h", b"x", 0, Expire::Default, v, false)
            .unwrap(),
        Versioned::Ineligible
    );
}

fn change_feed(h: &Harness) {
    let s = h.open();
    let start = s.last_seq() + 1;
    set(&s, b"app:1", b"a");
    set(&s, b"sys:1", b"b");
    s.delete(b"app:1", None).unwrap();
    s.queue_push(b"app:q", None, b"i", true, &QueueOpts::default())
        .unwrap();
    let all = s.feed_read(start, &ChangeFilter::default(), 100).unwrap();
    let kinds: Vec<ChangeKind> = all.changes.iter().map(|c| c.kind).collect();
    assert_eq!(
        kinds,
        vec![
            ChangeKind::Set,
            ChangeKind::Set,
            ChangeKind::Delete,
            ChangeKind::QueuePush
        ]
    );
    assert!(
        all.changes
            .windows(2)
            .all(|w| w[0].seq + 1 == w[1].seq && w[0].version < w[1].version)
    );
    assert_eq!(all.next_seq, s.last_seq() + 1);
    let app = ChangeFilter {
        prefix: Some(b"app:".to_vec()),
        kinds: None,
    };
    assert_eq!(s.feed_read(start, &app, 100).unwrap().changes.len(), 3);
    let dels = ChangeFilter {
        prefix: None,
        kinds: Some(vec![ChangeKind::Delete]),
    };
    assert_eq!(s.feed_read(start, &dels, 100).unwrap().changes.len(), 1);
    // Resume in small steps.
    let b1 = s.feed_read(start, &ChangeFilter::default(), 2).unwrap();
    let b2 = s
        .feed_read(b1.next_seq, &ChangeFilter::default(), 2)
        .unwrap();
    assert_eq!(b1.changes.len() + b2.changes.len(), 4);
    assert!(!s.feed_wait(s.last_seq() + 1, std::time::Duration::from_millis(10)));
    // A tiny feed truncates, and the state scan is the way back.
    drop(s);
    let s = h.open_with(|c| {
        c.feed_capacity_bytes = 600;
        if let k2hdkc_storage::EngineConfig::File(o) = &mut c.engine {
            o.dir = o.dir.with_extension("feed");
        }
    });
    for i in 0..50 {
        set(&s, format!("k{i}").as_bytes(), b"0123456789");
    }
    assert!(matches!(
        s.feed_read(1, &ChangeFilter::default(), 10),
        Err(Error::FeedTruncated { .. })
    ));
    let state = s.changes_since_version(k2hdkc_storage::Version::ZERO, &ChangeFilter::default());
    assert_eq!(state.len(), 50);
    assert!(state.windows(2).all(|w| w[0].version < w[1].version));
    let mid = state[24].version;
    assert_eq!(
        s.changes_since_version(mid, &ChangeFilter::default()).len(),
        25
    );
}

fn archive_round_trip(h: &Harness) {
    let s = h.open();
    for i in 0..300 {
        set(
            &s,
            format!("k{i}").as_bytes(),
            format!("value {i}").as_bytes(),
        );
    }
    s.delete(b"k7", None).unwrap();
    s.add_subkey(b"k1", b"k2", None).unwrap();
    s.counter_init(b"ctr", 16, 300, Expire::Never).unwrap();
    s.queue_push(b"q", Some(b"qk"), b"qv", true, &QueueOpts::default())
        .unwrap();
    s.set(
        b"enc",
        b"sealed",
        SetMode::Set,
        &WriteOpts {
            pass: Some(b"pp"),
            ..W
        },
    )
    .unwrap();
    let mut buf = Vec::new();
    let mut ticks = 0;
    let st = s.export(&mut buf, None, &mut |_| ticks += 1).unwrap();
    // 300 keys (one now a tombstone), the counter and the encrypted value.
    assert_eq!((st.records, st.queue_items), (302, 1));
    assert!(ticks >= 1);
    let h2 = Harness::new(h.kind);
    let t = h2.open();
    let got = t.import(&mut &buf[..], false, &mut |_| {}).unwrap();
    assert_eq!(got.applied, 303);
    assert_eq!(dump(&s), dump(&t));
    assert_eq!(t.get(b"enc", Some(b"pp")).unwrap().unwrap().data, b"sealed");
    assert_eq!(t.counter_get(b"ctr", 16).unwrap(), Some(300));
    // Importing again applies nothing older.
    assert_eq!(
        t.import(&mut &buf[..], false, &mut |_| {}).unwrap().applied,
        0
    );
    // Incremental: only what changed since a version.
    let since = s.get(b"k299", None).unwrap().unwrap().version;
    set(&s, b"k3", b"changed");
    let mut inc = Vec::new();
    // The tombstone of k7, k1 (sub-key), the counter, the encrypted value and k3.
    assert_eq!(
        s.export(&mut inc, Some(since), &mut |_| {})
            .unwrap()
            .records,
        5
    );
    t.import(&mut &inc[..], false, &mut |_| {}).unwrap();
    assert_eq!(val(&t, b"k3").unwrap(), b"changed");
    // Damage anywhere is refused.
    for at in [0, 5, 45, buf.len() / 2, buf.len() - 3] {
        let mut bad = buf.clone();
        bad[at] ^= 0x40;
        assert!(
            k2hdkc_storage::verify_archive(&mut &bad[..]).is_err(),
            "flip at {at}"
        );
    }
    assert!(k2hdkc_storage::verify_archive(&mut &buf[..buf.len() - 10]).is_err());
    let mut extra = buf.clone();
    extra.push(0);
    assert!(k2hdkc_storage::verify_archive(&mut &extra[..]).is_err());
    let path = h2.dir.path().join("backup.k2ar");
    s.export_file(&path, None, &mut |_| {}).unwrap();
    let u = Harness::new(h.kind);
    let u = u.open();
    u.import_file(&path, true, &mut |_| {}).unwrap();
    assert_eq!(dump(&s), dump(&u));
}

fn flush_all_leaves_tombstones(h: &Harness) {
    let s = h.open();
    for i in 0..100 {
        set(&s, format!("k{i}").as_bytes(), b"v");
    }
    s.queue_push(b"q", None, b"v", true, &QueueOpts::default())
        .unwrap();
    assert_eq!(s.flush_all().unwrap(), 100);
    assert_eq!(val(&s, b"k1"), None);
    assert_eq!(s.stats().tombstones, 100);
    assert_eq!(s.queue_len(b"q").unwrap(), 1, "queues are not flushed");
    assert_eq!(s.flush_all().unwrap(), 0);
}

fn concurrent_updates_lose_nothing(h: &Harness) {
    let s = Arc::new(h.open());
    s.counter_init(b"ctr", 64, 0, Expire::Never).unwrap();
    set(&s, b"dec", b"0");
    set(&s, b"app", b"");
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..500u32 {
                    s.counter_add(b"ctr", 64, 1).unwrap();
                    s.incr_decimal(b"dec", 1, false).unwrap();
                    s.queue_push(
                        b"q",
                        None,
                        &(t * 1000 + i).to_le_bytes(),
                        true,
                        &QueueOpts::default(),
                    )
                    .unwrap();
                    s.set(b"app", &[t as u8], SetMode::Append, &W).unwrap();
                    if i % 3 == 0 {
                        s.add_subkey(b"parent", format!("c{t}-{i}").as_bytes(), None)
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(s.counter_get(b"ctr", 64).unwrap(), Some(2000));
    assert_eq!(val(&s, b"dec").unwrap(), b"2000");
    assert_eq!(val(&s, b"app").unwrap().len(), 2000);
    assert_eq!(s.subkeys(b"parent").unwrap().unwrap().len(), 4 * 167);
    let mut seen = std::collections::HashSet::new();
    while let Some(p) = s.queue_pop(b"q", None).unwrap() {
        assert!(seen.insert(p.value), "an item popped twice");
    }
    assert_eq!(seen.len(), 2000);
}

fn restart_keeps_everything(h: &Harness) {
    let s = h.open_with(|c| c.history = 1);
    for i in 0..200 {
        set(&s, format!("k{i}").as_bytes(), format!("v{i}").as_bytes());
    }
    s.delete(b"k5", None).unwrap();
    s.rename(b"k6", b"k6b", None, None).unwrap();
    s.add_subkey(b"k1", b"k2", None).unwrap();
    s.counter_init(b"c", 32, 41, Expire::Never).unwrap();
    s.counter_add(b"c", 32, 1).unwrap();
    s.queue_push(b"q", None, b"first", true, &QueueOpts::default())
        .unwrap();
    s.queue_push(b"q", None, b"second", true, &QueueOpts::default())
        .unwrap();
    s.queue_pop(b"q", None).unwrap();
    s.set(
        b"enc",
        b"secret",
        SetMode::Set,
        &WriteOpts {
            encrypt: Some(true),
            ..W
        },
    )
    .unwrap();
    set(&s, b"k9", b"v9b");
    let before = dump(&s);
    let seq = s.last_seq();
    let s = h.reopen(s);
    if !h.durable() {
        assert_eq!(s.stats().records, 0, "{:?} keeps nothing", h.kind);
        return;
    }
    assert_eq!(dump(&s), before);
    assert_eq!(s.last_seq(), seq);
    assert_eq!(s.counter_get(b"c", 32).unwrap(), Some(42));
    assert_eq!(s.queue_pop(b"q", None).unwrap().unwrap().value, b"second");
    assert_eq!(val(&s, b"enc").unwrap(), b"secret");
    assert_eq!(s.history(b"k9", None).unwrap()[0].1, b"v9");
    // New writes after a restart get newer versions than anything before.
    let old = s.get(b"k9", None).unwrap().unwrap().version;
    set(&s, b"k9", b"v9c");
    assert!(s.get(b"k9", None).unwrap().unwrap().version > old);
    // And after a compaction too.
    assert!(s.compact().unwrap());
    set(&s, b"after-compaction", b"x");
    let before = dump(&s);
    let s = h.reopen(s);
    assert_eq!(dump(&s), before);
    assert_eq!(
        s.stats().engine.compactions,
        0,
        "a fresh process counts its own"
    );
    let _ = Kind::Memory;
}
