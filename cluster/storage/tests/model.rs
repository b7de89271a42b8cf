//! Property test: random operation sequences run against a store and against a plain model;
//! every answer and the final state must agree, and for the file engine the state must be the
//! same again after a restart.

use std::collections::{BTreeMap, HashMap, VecDeque};

use k2hdkc_storage::{
    DeleteOutcome, Error, Expire, QueueOpts, SetMode, SetOutcome, Store, WriteOpts,
};
use proptest::prelude::*;

use crate::harness::{Harness, Kind};

#[derive(Debug, Clone)]
enum Op {
    Set(u8, Vec<u8>),
    Add(u8, Vec<u8>),
    Replace(u8, Vec<u8>),
    Append(u8, Vec<u8>),
    Delete(u8),
    WriteAt(u8, usize, Vec<u8>),
    Rename(u8, u8),
    AddSub(u8, u8),
    RmSub(u8, u8, bool),
    DelTree(u8),
    Push(u8, Vec<u8>, bool),
    Pop(u8),
    CtrInit(u8, u64),
    CtrAdd(u8, i64),
    Advance(u8),
    Expiring(u8, u8),
}

fn key(i: u8) -> Vec<u8> {
    format!("key{}", i % 6).into_bytes()
}

fn op() -> impl Strategy<Value = Op> {
    let v = proptest::collection::vec(any::<u8>(), 0..12);
    prop_oneof![
        (any::<u8>(), v.clone()).prop_map(|(k, v)| Op::Set(k, v)),
        (any::<u8>(), v.clone()).prop_map(|(k, v)| Op::Add(k, v)),
        (any::<u8>(), v.clone()).prop_map(|(k, v)| Op::Replace(k, v)),
        (any::<u8>(), v.clone()).prop_map(|(k, v)| Op::Append(k, v)),
        any::<u8>().prop_map(Op::Delete),
        (any::<u8>(), 0usize..16, v.clone()).prop_map(|(k, o, v)| Op::WriteAt(k, o, v)),
        (any::<u8>(), any::<u8>()).prop_map(|(a, b)| Op::Rename(a, b)),
        (any::<u8>(), any::<u8>()).prop_map(|(a, b)| Op::AddSub(a, b)),
        (any::<u8>(), any::<u8>(), any::<bool>()).prop_map(|(a, b, d)| Op::RmSub(a, b, d)),
        any::<u8>().prop_map(Op::DelTree),
        (any::<u8>(), v, any::<bool>()).prop_map(|(q, v, f)| Op::Push(q % 2, v, f)),
        any::<u8>().prop_map(|q| Op::Pop(q % 2)),
        (any::<u8>(), 0u64..300).prop_map(|(k, n)| Op::CtrInit(k, n)),
        (any::<u8>(), -300i64..300).prop_map(|(k, d)| Op::CtrAdd(k, d)),
        (1u8..5).prop_map(Op::Advance),
        (any::<u8>(), 1u8..5).prop_map(|(k, s)| Op::Expiring(k, s)),
    ]
}

#[derive(Debug, Clone, PartialEq)]
enum MVal {
    Bytes(Vec<u8>),
    Ctr(u64),
}

#[derive(Debug, Clone)]
struct MRec {
    val: MVal,
    subs: Vec<Vec<u8>>,
    expire: u64,
}

#[derive(Default)]
struct Model {
    recs: BTreeMap<Vec<u8>, MRec>,
    queues: HashMap<u8, VecDeque<Vec<u8>>>,
    now: u64,
}

impl Model {
    fn live(&self, k: &[u8]) -> Option<&MRec> {
        self.recs
            .get(k)
            .filter(|r| r.expire == 0 || r.expire > self.now)
    }
    fn gc(&mut self) {
        let now = self.now;
        self.recs.retain(|_, r| r.expire == 0 || r.expire > now);
    }
}

fn run(kind: Kind, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let h = Harness::new(kind);
    let s = h.open();
    let mut m = Model {
        now: crate::harness::T0 / 1000,
        ..Default::default()
    };
    let w = WriteOpts::default();
    for op in ops {
        m.gc();
        match op {
            Op::Set(k, v) => {
                let k = key(k);
                prop_assert!(
                    matches!(
                        s.set(&k, &v, SetMode::Set, &w).unwrap(),
                        SetOutcome::Stored { .. }
                    ),
                    "unexpected result"
                );
                let subs = m.live(&k).map(|r| r.subs.clone()).unwrap_or_default();
                m.recs.insert(
                    k,
                    MRec {
                        val: MVal::Bytes(v),
                        subs,
                        expire: 0,
                    },
                );
            }
            Op::Add(k, v) => {
                let k = key(k);
                let r = s.set(&k, &v, SetMode::Add, &w).unwrap();
                if m.live(&k).is_some() {
                    prop_assert_eq!(r, SetOutcome::NotStored);
                } else {
                    prop_assert!(matches!(r, SetOutcome::Stored { .. }), "unexpected result");
                    m.recs.insert(
                        k,
                        MRec {
                            val: MVal::Bytes(v),
                            subs: vec![],
                            expire: 0,
                        },
                    );
                }
            }
            Op::Replace(k, v) => {
                let k = key(k);
                let r = s.set(&k, &v, SetMode::Replace, &w).unwrap();
                match m.recs.get_mut(&k) {
                    Some(rec) => {
                        prop_assert!(matches!(r, SetOutcome::Stored { .. }), "unexpected result");
                        rec.val = MVal::Bytes(v);
                        rec.expire = 0;
                    }
                    None => prop_assert_eq!(r, SetOutcome::NotStored),
                }
            }
            Op::Append(k, v) => {
                let k = key(k);
                let r = s.set(&k, &v, SetMode::Append, &w);
                match m.recs.get_mut(&k) {
                    Some(MRec {
                        val: MVal::Bytes(b),
                        ..
                    }) => {
                        prop_assert!(
                            matches!(r.unwrap(), SetOutcome::Stored { .. }),
                            "unexpected result"
                        );
                        b.extend_from_slice(&v);
                    }
                    Some(_) => prop_assert!(
                        matches!(r, Err(Error::NotSameType { .. })),
                        "unexpected result"
                    ),
                    None => prop_assert_eq!(r.unwrap(), SetOutcome::NotStored),
                }
            }
            Op::Delete(k) => {
                let k = key(k);
                let r = s.delete(&k, None).unwrap();
                prop_assert_eq!(
                    r,
                    if m.recs.remove(&k).is_some() {
                        DeleteOutcome::Deleted
                    } else {
                        DeleteOutcome::NotFound
                    }
                );
            }
            Op::WriteAt(k, off, v) => {
                let k = key(k);
                let r = s.write_at(&k, off, &v, &w);
                match m.recs.get_mut(&k) {
                    Some(MRec {
                        val: MVal::Ctr(_), ..
                    }) => prop_assert!(r.is_err()),
                    Some(MRec {
                        val: MVal::Bytes(b),
                        ..
                    }) => {
                        r.unwrap();
                        if b.len() < off + v.len() {
                            b.resize(off + v.len(), 0);
                        }
                        b[off..off + v.len()].copy_from_slice(&v);
                    }
                    None => {
                        r.unwrap();
                        let mut b = vec![0; off];
                        b.extend_from_slice(&v);
                        m.recs.insert(
                            k,
                            MRec {
                                val: MVal::Bytes(b),
                                subs: vec![],
                                expire: 0,
                            },
                        );
                    }
                }
            }
            Op::Rename(a, b) => {
                let (a, b) = (key(a), key(b));
                let r = s.rename(&a, &b, None, None);
                if a == b {
                    prop_assert_eq!(r.is_ok(), m.recs.contains_key(&a));
                } else if let Some(rec) = m.recs.remove(&a) {
                    r.unwrap();
                    m.recs.insert(b, rec);
                } else {
                    prop_assert!(matches!(r, Err(Error::NotFound)), "unexpected result");
                }
            }
            Op::AddSub(p, c) => {
                let (p, c) = (key(p), key(c));
                s.add_subkey(&p, &c, None).unwrap();
                let rec = m.recs.entry(p).or_insert(MRec {
                    val: MVal::Bytes(vec![]),
                    subs: vec![],
                    expire: 0,
                });
                if !rec.subs.contains(&c) {
                    rec.subs.push(c);
                }
            }
            Op::RmSub(p, c, del) => {
                let (p, c) = (key(p), key(c));
                let r = s.remove_subkey(&p, &c, del);
                match m.recs.get_mut(&p) {
                    None => prop_assert!(matches!(r, Err(Error::NotFound)), "unexpected result"),
                    Some(rec) => {
                        let listed = rec.subs.contains(&c);
                        rec.subs.retain(|x| x != &c);
                        prop_assert_eq!(r.unwrap(), listed);
                        if del {
                            m.recs.remove(&c);
                        }
                    }
                }
            }
            Op::DelTree(k) => {
                let k = key(k);
                let mut stack = vec![k.clone()];
                let mut seen = std::collections::HashSet::new();
                let mut n = 0;
                while let Some(x) = stack.pop() {
                    if !seen.insert(x.clone()) {
                        continue;
                    }
                    if let Some(r) = m.recs.remove(&x) {
                        n += 1;
                        stack.extend(r.subs);
                    }
                }
                prop_assert_eq!(s.delete_recursive(&k).unwrap(), n);
            }
            Op::Push(q, v, fifo) => {
                s.queue_push(&[b'q', q], None, &v, fifo, &QueueOpts::default())
                    .unwrap();
                let dq = m.queues.entry(q).or_default();
                if fifo {
                    dq.push_back(v)
                } else {
                    dq.push_front(v)
                }
            }
            Op::Pop(q) => {
                let got = s.queue_pop(&[b'q', q], None).unwrap().map(|p| p.value);
                prop_assert_eq!(got, m.queues.entry(q).or_default().pop_front());
            }
            Op::CtrInit(k, n) => {
                let k = key(k);
                s.counter_init(&k, 16, n, Expire::Never).unwrap();
                let subs = m.live(&k).map(|r| r.subs.clone()).unwrap_or_default();
                m.recs.insert(
                    k,
                    MRec {
                        val: MVal::Ctr(n),
                        subs,
                        expire: 0,
                    },
                );
            }
            Op::CtrAdd(k, d) => {
                let k = key(k);
                let r = s.counter_add(&k, 16, d);
                match m.recs.get_mut(&k) {
                    Some(MRec {
                        val: MVal::Ctr(c), ..
                    }) => {
                        *c = c.wrapping_add(d as u64) & 0xffff;
                        prop_assert_eq!(r.unwrap(), *c);
                    }
                    Some(_) => prop_assert!(
                        matches!(r, Err(Error::NotSameType { .. })),
                        "unexpected result"
                    ),
                    None => prop_assert!(matches!(r, Err(Error::NotFound)), "unexpected result"),
                }
            }
            Op::Advance(secs) => {
                h.advance_secs(secs as u64);
                m.now += secs as u64;
                if secs % 2 == 0 {
                    s.sweep_now().unwrap();
                }
            }
            Op::Expiring(k, secs) => {
                let k = key(k);
                s.set(
                    &k,
                    b"temp",
                    SetMode::Set,
                    &WriteOpts {
                        expire: Expire::After(secs as u32),
                        ..w
                    },
                )
                .unwrap();
                let subs = m.live(&k).map(|r| r.subs.clone()).unwrap_or_default();
                m.recs.insert(
                    k,
                    MRec {
                        val: MVal::Bytes(b"temp".to_vec()),
                        subs,
                        expire: m.now + secs as u64,
                    },
                );
            }
        }
    }
    m.gc();
    let check = |s: &Store| -> Result<(), TestCaseError> {
        for i in 0..6u8 {
            let k = key(i);
            let got = s.get(&k, None).unwrap();
            match m.recs.get(&k) {
                None => prop_assert!(
                    got.is_none(),
                    "{:?} should be absent",
                    String::from_utf8_lossy(&k)
                ),
                Some(rec) => {
                    let got = got.unwrap();
                    match &rec.val {
                        MVal::Bytes(b) => prop_assert_eq!(&got.data, b),
                        MVal::Ctr(c) => prop_assert_eq!(s.counter_get(&k, 16).unwrap(), Some(*c)),
                    }
                    prop_assert_eq!(&s.subkeys(&k).unwrap().unwrap(), &rec.subs);
                }
            }
        }
        for q in 0..2u8 {
            prop_assert_eq!(
                s.queue_len(&[b'q', q]).unwrap(),
                m.queues.get(&q).map_or(0, |d| d.len())
            );
        }
        Ok(())
    };
    check(&s)?;
    if h.durable() {
        let s = h.reopen(s);
        check(&s)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn memory_engine_matches_the_model(ops in proptest::collection::vec(op(), 1..80)) {
        run(Kind::Memory, ops)?;
    }

    #[test]
    fn file_engine_matches_the_model_across_restarts(ops in proptest::collection::vec(op(), 1..80)) {
        run(Kind::File, ops)?;
    }
}
