//! Property tests of placement and layout changes.

use k2hdkc_layout::{
    Action, Assignment, Candidate, Change, Layout, LayoutError, Node, PARTITIONS, Ring, assign,
    quotas,
};
use proptest::prelude::*;

fn cands<'a>(caps: &[u32], zones: &'a [String]) -> Vec<Candidate<'a>> {
    caps.iter()
        .zip(zones)
        .map(|(&capacity, z)| Candidate { zone: z, capacity })
        .collect()
}

fn counts(a: &Assignment, n: usize) -> (Vec<usize>, Vec<usize>) {
    let mut held = vec![0; n];
    let mut prim = vec![0; n];
    for owners in a {
        for &o in owners {
            held[usize::from(o)] += 1;
        }
        if let Some(&f) = owners.first() {
            prim[usize::from(f)] += 1;
        }
    }
    (held, prim)
}

/// Slots (partition, node) present in `b` but not in `a`: the copies that must be moved.
fn moved(a: &Assignment, b: &Assignment, map_a_to_b: &dyn Fn(u16) -> Option<u16>) -> usize {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let x: Vec<u16> = x.iter().filter_map(|&o| map_a_to_b(o)).collect();
            y.iter().filter(|o| !x.contains(o)).count()
        })
        .sum()
}

/// The fewest copies any assignment meeting the new quotas must move: every node that grows
/// receives its growth.
fn least_moves(before: &Assignment, caps: &[u32], zones: &[String], r: usize) -> usize {
    let (quota, _) = quotas(&cands(caps, zones), r, PARTITIONS);
    let (held, _) = counts(before, caps.len());
    quota
        .iter()
        .zip(&held)
        .map(|(q, h)| q.saturating_sub(*h))
        .sum()
}

/// Allowed movement over the lower bound: 1.1x (the goal) without zone constraints.
/// When replicas must sit in distinct zones, a change that shifts the zones' shares forces
/// extra copies to move (a grown node may only take partitions whose other owners are in other
/// zones), so the bound is looser there.
fn bound(zone_count: usize, r: usize) -> f64 {
    if zone_count >= r && r > 1 { 1.35 } else { 1.1 }
}

/// Checks every guarantee of a single assignment.
fn check(caps: &[u32], zones: &[String], r: usize, a: &Assignment) -> Result<(), TestCaseError> {
    let c = cands(caps, zones);
    let live: Vec<usize> = (0..caps.len()).filter(|&i| caps[i] > 0).collect();
    let want = r.min(live.len());
    let mut zs: Vec<&String> = live.iter().map(|&i| &zones[i]).collect();
    zs.sort();
    zs.dedup();
    let strict = want > 1 && zs.len() >= want;
    prop_assert_eq!(a.len(), PARTITIONS);
    for (p, owners) in a.iter().enumerate() {
        prop_assert_eq!(owners.len(), want, "partition {} owners {:?}", p, owners);
        for (k, &o) in owners.iter().enumerate() {
            prop_assert!(caps[usize::from(o)] > 0);
            prop_assert!(!owners[..k].contains(&o));
            if strict {
                prop_assert!(
                    owners[..k]
                        .iter()
                        .all(|&x| zones[usize::from(x)] != zones[usize::from(o)]),
                    "partition {} has two owners in one zone: {:?}",
                    p,
                    owners
                );
            }
        }
    }
    let (quota, prim_quota) = quotas(&c, r, PARTITIONS);
    let (held, prim) = counts(a, caps.len());
    prop_assert_eq!(&held, &quota, "slots per node follow the quotas");
    // Quotas are the capacity share, capped at one copy per partition: an uncapped node is
    // within 10% (or one slot) of its ideal share among the uncapped ones.
    let capped: Vec<bool> = quota.iter().map(|&q| q == PARTITIONS).collect();
    let free_slots: usize = (0..caps.len())
        .filter(|&i| !capped[i])
        .map(|i| quota[i])
        .sum();
    let free_cap: u64 = (0..caps.len())
        .filter(|&i| !capped[i])
        .map(|i| u64::from(caps[i]))
        .sum();
    if !strict {
        for i in live.iter().copied().filter(|&i| !capped[i]) {
            let ideal = free_slots as f64 * f64::from(caps[i]) / free_cap as f64;
            prop_assert!(
                (quota[i] as f64 - ideal).abs() <= (ideal * 0.1).max(1.0),
                "node {} quota {} ideal {}",
                i,
                quota[i],
                ideal
            );
        }
    }
    // Primaries: within 10% (plus a few slots of rounding) of their capacity share, for nodes
    // that own enough partitions to be primary that often.
    let total_cap: u64 = live.iter().map(|&i| u64::from(caps[i])).sum();
    for &i in &live {
        let ideal = PARTITIONS as f64 * f64::from(caps[i]) / total_cap as f64;
        if (held[i] as f64) < ideal * 1.5 {
            continue;
        }
        prop_assert!(
            (prim[i] as f64 - ideal).abs() <= ideal * 0.1 + 3.0,
            "node {} primaries {} ideal {} (quota {})",
            i,
            prim[i],
            ideal,
            prim_quota[i]
        );
    }
    Ok(())
}

fn zones_of(n: usize, zone_count: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("z{}", i % zone_count.max(1)))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn fresh_assignment_meets_every_guarantee(
        caps in prop::collection::vec(prop_oneof![3 => 100u32..=100, 1 => 1u32..400, 1 => Just(0u32)], 1..12),
        zone_count in 1usize..5,
        r in 1usize..5,
    ) {
        let zones = zones_of(caps.len(), zone_count);
        let a = assign(&cands(&caps, &zones), r, PARTITIONS, None);
        check(&caps, &zones, r, &a)?;
        // Deterministic.
        prop_assert_eq!(a, assign(&cands(&caps, &zones), r, PARTITIONS, None));
    }

    #[test]
    fn adding_a_node_moves_about_its_share(k in 1usize..10, r in 1usize..4, zone_count in 1usize..4) {
        let caps = vec![100u32; k];
        let zones = zones_of(k + 1, zone_count);
        let before = assign(&cands(&caps, &zones[..k]), r, PARTITIONS, None);
        let caps2 = vec![100u32; k + 1];
        let after = assign(&cands(&caps2, &zones), r, PARTITIONS, Some(&before));
        check(&caps2, &zones, r, &after)?;
        let ideal = least_moves(&before, &caps2, &zones, r);
        let m = moved(&before, &after, &|o| Some(o));
        prop_assert!(m as f64 <= ideal as f64 * bound(zone_count, r) + 1.0, "moved {} ideal {}", m, ideal);
    }

    #[test]
    fn removing_a_node_moves_only_its_copies(k in 2usize..10, r in 1usize..4, gone in 0usize..10, zone_count in 1usize..4) {
        let gone = gone % k;
        let caps = vec![100u32; k];
        let zones = zones_of(k, zone_count);
        let before = assign(&cands(&caps, &zones), r, PARTITIONS, None);
        let mut caps2 = caps.clone();
        caps2[gone] = 0;
        let after = assign(&cands(&caps2, &zones), r, PARTITIONS, Some(&before));
        check(&caps2, &zones, r, &after)?;
        let ideal = least_moves(&before, &caps2, &zones, r);
        let m = moved(&before, &after, &|o| Some(o));
        prop_assert!(m as f64 <= ideal as f64 * bound(zone_count, r) + 1.0, "moved {} ideal {}", m, ideal);
    }

    #[test]
    fn changing_a_weight_keeps_the_rest(k in 2usize..8, r in 1usize..4, who in 0usize..8, cap in 1u32..400) {
        let who = who % k;
        let caps = vec![100u32; k];
        let zones = zones_of(k, 1);
        let before = assign(&cands(&caps, &zones), r, PARTITIONS, None);
        let mut caps2 = caps.clone();
        caps2[who] = cap;
        let after = assign(&cands(&caps2, &zones), r, PARTITIONS, Some(&before));
        check(&caps2, &zones, r, &after)?;
        let ideal = least_moves(&before, &caps2, &zones, r);
        let m = moved(&before, &after, &|o| Some(o));
        prop_assert!(m as f64 <= ideal as f64 * bound(1, r) + 1.0, "moved {} ideal {}", m, ideal);
    }

    #[test]
    fn random_change_sequences_keep_a_valid_layout(ops in prop::collection::vec((0u8..7, 0usize..6, 1u8..5), 1..25)) {
        let mut l = Layout::new("test");
        for (op, who, n) in ops {
            let name = format!("n{who}");
            let change = match op {
                0 | 1 => Change::Join { node: Node::joining(&name, format!("127.0.0.1:{}", 8000 + who)) },
                2 => Change::Attach { names: vec![] },
                3 => Change::Detach { name },
                4 => Change::Complete,
                5 => Change::SetReplication { replicas: n, write_quorum: n.div_ceil(2), read_quorum: n.div_ceil(2) },
                _ => Change::Remove { name },
            };
            match l.apply(&change) {
                Ok(next) => {
                    prop_assert_eq!(next.version, l.version + 1);
                    next.validate().map_err(|e| TestCaseError::fail(e.to_string()))?;
                    let back = Layout::from_json(&next.to_json()).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(&back, &next);
                    // Every partition is owned by as many nodes as the layout promises.
                    let r = next.effective_replicas();
                    prop_assert!(next.assignment.iter().all(|o| o.len() == r));
                    prop_assert!(next.assignment.iter().flatten().all(|&o| next.node(o).holds_data()));
                    l = next;
                }
                Err(e) => {
                    // Refusals are typed, and leave the layout as it was.
                    prop_assert!(!matches!(e, LayoutError::Corrupt(_)), "{e}");
                }
            }
        }
    }
}

fn three_nodes() -> Layout {
    let mut l = Layout::new("c");
    for i in 1..=3 {
        l = l
            .apply(&Change::Join {
                node: Node::joining(format!("n{i}"), format!("127.0.0.1:80{i:02}")),
            })
            .unwrap();
    }
    l.apply(&Change::Attach { names: vec![] }).unwrap()
}

#[test]
fn attach_detach_complete_cycle() {
    let l = three_nodes();
    assert_eq!(l.version, 4);
    assert!(!l.moving(), "the first attach has nothing to move");
    assert!(
        l.nodes
            .iter()
            .all(|n| n.ring == Ring::ServiceIn && n.action == Action::None)
    );
    assert_eq!(l.effective_replicas(), 3);
    // A fourth node: recognised, then attached; data moves.
    let l = l
        .apply(&Change::Join {
            node: Node::joining("n4", "127.0.0.1:8004"),
        })
        .unwrap();
    assert_eq!(l.nodes[3].status_text(), "[SERVICE OUT][n/a]");
    let l = l.apply(&Change::Attach { names: vec![] }).unwrap();
    assert!(l.moving());
    assert_eq!(l.nodes[3].status_text(), "[SERVICE IN][ADD]");
    let moving = l.moving_partitions().len();
    assert!(moving > 0 && moving < PARTITIONS);
    // Writes reach old and new owners while moving.
    let o = l.owners(b"some key");
    assert!(o.write_set().len() >= o.current.len());
    let l = l.apply(&Change::Complete).unwrap();
    assert!(!l.moving() && l.nodes.iter().all(|n| n.action == Action::None));
    // Detach n2: it keeps its data until the movement completes, then leaves.
    let l = l.apply(&Change::Detach { name: "n2".into() }).unwrap();
    let n2 = l.index_of("n2").unwrap();
    assert!(l.assignment.iter().flatten().all(|&o| o != n2));
    assert!(
        l.previous
            .as_ref()
            .unwrap()
            .iter()
            .flatten()
            .any(|&o| o == n2)
    );
    let l = l.apply(&Change::Complete).unwrap();
    assert_eq!(l.index_of("n2"), None);
    assert_eq!(l.nodes.len(), 3);
    assert_eq!(
        l.apply(&Change::Complete),
        Err(LayoutError::NoChange("no data movement in progress".into()))
    );
}

#[test]
fn bad_changes_are_refused() {
    let l = three_nodes();
    assert!(matches!(
        l.apply(&Change::SetReplication {
            replicas: 2,
            write_quorum: 3,
            read_quorum: 1
        }),
        Err(LayoutError::InvalidReplication(_))
    ));
    assert_eq!(
        l.apply(&Change::Detach {
            name: "nope".into()
        }),
        Err(LayoutError::UnknownNode("nope".into()))
    );
    assert!(matches!(
        l.apply(&Change::Join {
            node: Node::joining("other", "127.0.0.1:8001")
        }),
        Err(LayoutError::DuplicateNode(_))
    ));
    assert!(matches!(
        l.apply(&Change::Join {
            node: Node::joining("bad name", "127.0.0.1:9")
        }),
        Err(LayoutError::InvalidNode { .. })
    ));
    let mut newer = l.clone();
    newer.format = 2;
    assert!(matches!(
        Layout::from_json(&newer.to_json()),
        Err(LayoutError::UnsupportedFormat { found: 2, .. })
    ));
    let mut broken = l.clone();
    broken.assignment[5] = vec![0, 0];
    assert!(matches!(
        Layout::from_json(&broken.to_json()),
        Err(LayoutError::Corrupt(_))
    ));
}

#[test]
fn one_replica_four_nodes_moves_a_quarter() {
    // The check: with one replica, attaching a 4th node to 3 moves <= 1.1 x 1/4 of keys.
    let mut l = three_nodes()
        .apply(&Change::SetReplication {
            replicas: 1,
            write_quorum: 1,
            read_quorum: 1,
        })
        .unwrap();
    if l.moving() {
        l = l.apply(&Change::Complete).unwrap();
    }
    let keys: Vec<String> = (0..100_000).map(|i| format!("key:{i}")).collect();
    let owner = |l: &Layout, k: &str| l.node(l.owners(k.as_bytes()).current[0]).name.clone();
    let before: Vec<String> = keys.iter().map(|k| owner(&l, k)).collect();
    let l = l
        .apply(&Change::Join {
            node: Node::joining("n4", "127.0.0.1:8004"),
        })
        .unwrap()
        .apply(&Change::Attach { names: vec![] })
        .unwrap();
    let moved = keys
        .iter()
        .zip(&before)
        .filter(|(k, b)| owner(&l, k) != **b)
        .count();
    let fraction = moved as f64 / keys.len() as f64;
    assert!(fraction <= 0.25 * 1.1, "moved {fraction}");
    assert!(fraction >= 0.25 * 0.9, "moved {fraction}");
}
