//! Partition assignment: owners per partition from capacities and zones.
//!
//! Guarantees (checked by the property tests in `tests/layout.rs`):
//! - Every partition gets `min(replicas, nodes with capacity)` distinct owners.
//! - With at least as many zones as replicas, the owners of a partition are in distinct zones;
//!   a zone then holds at most one copy of each partition.
//! - Each node holds its capacity share of the `partitions x replicas` slots, rounded (never
//!   more than one copy per partition: a share above that is spread over the others).
//! - Close to the previous assignment: an owner keeps a partition unless its new share is
//!   smaller than what it held, so one change moves about the ideal fraction of the slots.
//! - The first owner of a partition is its primary; primaries are spread by capacity too (they
//!   are recomputed each time: leading a partition moves no data).
//! - Deterministic: the same inputs give the same output on every node and build.

use crate::fmix64;

/// Index of a node in the layout's node list.
pub type NodeIdx = u16;

/// For every partition, its owners in preference order (primary first).
pub type Assignment = Vec<Vec<NodeIdx>>;

/// A node as the assignment sees it. Capacity 0 means "holds nothing" (out of service,
/// leaving, or not yet attached).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate<'a> {
    /// Failure domain.
    pub zone: &'a str,
    /// Relative capacity (weight).
    pub capacity: u32,
}

/// Pseudo-random but fixed rank of node `i` for partition `p`, for tie-breaks that spread.
fn rank(p: usize, i: usize) -> u64 {
    fmix64(((p as u64) << 20) ^ (i as u64) ^ 0x9e37_79b9_7f4a_7c15)
}

/// Split `total` units over `weights` in proportion, no share above `cap`, rounding by the
/// largest remainder (ties to the lower index). The shares sum to `min(total, cap * n_weighted)`.
fn waterfill(total: usize, weights: &[u64], cap: usize) -> Vec<usize> {
    let n = weights.len();
    let mut share = vec![0usize; n];
    let mut fixed = vec![false; n];
    let mut left = total;
    loop {
        let sum: u128 = (0..n)
            .filter(|&i| !fixed[i])
            .map(|i| u128::from(weights[i]))
            .sum();
        if sum == 0 || left == 0 {
            break;
        }
        // Anyone whose proportional share reaches the cap gets the cap; redo the rest.
        let mut capped = false;
        for i in 0..n {
            if !fixed[i]
                && weights[i] > 0
                && (left as u128) * u128::from(weights[i]) >= (cap as u128) * sum
            {
                share[i] = cap;
                fixed[i] = true;
                left = left.saturating_sub(cap);
                capped = true;
            }
        }
        if capped {
            continue;
        }
        let mut rems: Vec<(u128, usize)> = Vec::new();
        let mut given = 0usize;
        for i in (0..n).filter(|&i| !fixed[i] && weights[i] > 0) {
            let num = (left as u128) * u128::from(weights[i]);
            share[i] = (num / sum) as usize;
            given += share[i];
            rems.push((num % sum, i));
        }
        rems.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for &(_, i) in rems.iter().take(left - given) {
            share[i] += 1;
        }
        break;
    }
    share
}

/// Slots each node should hold: `(owner slots, primary slots)` per node, for `partitions`
/// partitions of `replicas` copies.
pub fn quotas(
    cands: &[Candidate<'_>],
    replicas: usize,
    partitions: usize,
) -> (Vec<usize>, Vec<usize>) {
    let live: Vec<usize> = (0..cands.len())
        .filter(|&i| cands[i].capacity > 0)
        .collect();
    let r = replicas.min(live.len());
    let weights: Vec<u64> = cands.iter().map(|c| u64::from(c.capacity)).collect();
    let primaries = waterfill(partitions, &weights, partitions);
    let mut zones: Vec<&str> = live.iter().map(|&i| cands[i].zone).collect();
    zones.sort_unstable();
    zones.dedup();
    let owners = if r > 0 && zones.len() >= r && zones.len() > 1 {
        // Each zone holds at most one copy of a partition: share slots by zone first.
        let zone_w: Vec<u64> = zones
            .iter()
            .map(|z| {
                live.iter()
                    .filter(|&&i| cands[i].zone == *z)
                    .map(|&i| weights[i])
                    .sum()
            })
            .collect();
        let per_zone = waterfill(partitions * r, &zone_w, partitions);
        let mut q = vec![0usize; cands.len()];
        for (zi, z) in zones.iter().enumerate() {
            let members: Vec<usize> = live
                .iter()
                .copied()
                .filter(|&i| cands[i].zone == *z)
                .collect();
            let w: Vec<u64> = members.iter().map(|&i| weights[i]).collect();
            for (k, s) in waterfill(per_zone[zi], &w, partitions)
                .into_iter()
                .enumerate()
            {
                q[members[k]] = s;
            }
        }
        q
    } else {
        waterfill(partitions * r, &weights, partitions)
    };
    (owners, primaries)
}

/// Assign `partitions` partitions to `replicas` owners each, staying close to `prev` (an
/// assignment over the same node indices; entries for nodes that now have no capacity are
/// dropped). See the module documentation for the guarantees.
pub fn assign(
    cands: &[Candidate<'_>],
    replicas: usize,
    partitions: usize,
    prev: Option<&Assignment>,
) -> Assignment {
    let n = cands.len();
    let live = cands.iter().filter(|c| c.capacity > 0).count();
    let r = replicas.min(live);
    let (quota, prim_quota) = quotas(cands, replicas, partitions);
    let mut zones: Vec<&str> = cands
        .iter()
        .filter(|c| c.capacity > 0)
        .map(|c| c.zone)
        .collect();
    zones.sort_unstable();
    zones.dedup();
    let strict = r > 1 && zones.len() >= r;
    let zone_ok = |owners: &[NodeIdx], i: usize| {
        !strict
            || owners
                .iter()
                .all(|&o| cands[usize::from(o)].zone != cands[i].zone)
    };

    // 1. Keep previous owners that may still hold data, up to r and one per zone.
    let mut owners: Assignment = (0..partitions)
        .map(|p| {
            let mut keep: Vec<NodeIdx> = Vec::with_capacity(r);
            for &o in prev
                .and_then(|a| a.get(p))
                .map_or(&[][..], |v| v.as_slice())
            {
                let i = usize::from(o);
                if i < n
                    && quota[i] > 0
                    && keep.len() < r
                    && !keep.contains(&o)
                    && zone_ok(&keep, i)
                {
                    keep.push(o);
                }
            }
            keep
        })
        .collect();
    // 2. A node above its quota gives up its excess partitions (a fixed pseudo-random choice).
    let mut held = vec![0usize; n];
    for o in owners.iter().flatten() {
        held[usize::from(*o)] += 1;
    }
    // Give up partitions that some node with room can take and that have not lost an owner
    // yet; otherwise the fill has to swap, and every swap moves one more copy. The nodes give
    // up one partition per round, each taking first the partitions that few other shrinking
    // nodes could give up; when a node finds none, another node that took one of its
    // partitions switches to a different one (one augmenting step).
    let receivers: Vec<usize> = (0..n).filter(|&i| held[i] < quota[i]).collect();
    let good = |owners: &Assignment, p: usize, i: usize| {
        let rest: Vec<NodeIdx> = owners[p]
            .iter()
            .copied()
            .filter(|&o| usize::from(o) != i)
            .collect();
        let takers = receivers
            .iter()
            .filter(|&&j| !rest.contains(&(j as NodeIdx)) && zone_ok(&rest, j))
            .count();
        takers > r - owners[p].len()
    };
    let mut excess: Vec<usize> = (0..n).map(|i| held[i].saturating_sub(quota[i])).collect();
    let mut dropped_by: Vec<Vec<usize>> = vec![Vec::new(); partitions];
    while excess.iter().any(|&e| e > 0) {
        for i in 0..n {
            if excess[i] == 0 {
                continue;
            }
            let mine: Vec<usize> = (0..partitions)
                .filter(|&p| owners[p].contains(&(i as NodeIdx)))
                .collect();
            let best = mine
                .iter()
                .filter(|&&p| good(&owners, p, i))
                .map(|&p| {
                    let others = owners[p]
                        .iter()
                        .filter(|&&o| usize::from(o) != i && excess[usize::from(o)] > 0)
                        .count();
                    (r - owners[p].len(), others, rank(p, i), p)
                })
                .min()
                .map(|t| t.3);
            let chosen = best
                .or_else(|| {
                    // Augment: a partition of mine that j gave up; j gives up another instead.
                    for &p in &mine {
                        for j in dropped_by[p].clone() {
                            if j == i || owners[p].len() >= r {
                                continue;
                            }
                            let alt = (0..partitions).find(|&q| {
                                q != p && owners[q].contains(&(j as NodeIdx)) && good(&owners, q, j)
                            });
                            if let Some(q) = alt {
                                owners[p].push(j as NodeIdx);
                                dropped_by[p].retain(|&x| x != j);
                                if good(&owners, p, i) {
                                    owners[q].retain(|&o| usize::from(o) != j);
                                    dropped_by[q].push(j);
                                    return Some(p);
                                }
                                // Undo: it did not help.
                                owners[p].retain(|&o| usize::from(o) != j);
                                dropped_by[p].push(j);
                            }
                        }
                    }
                    None
                })
                .or_else(|| {
                    mine.iter()
                        .copied()
                        .min_by_key(|&p| (r - owners[p].len(), rank(p, i)))
                });
            if let Some(p) = chosen {
                owners[p].retain(|&o| usize::from(o) != i);
                dropped_by[p].push(i);
            }
            excess[i] -= 1;
            held[i] -= 1;
        }
    }
    // 3. Fill the holes, emptiest partitions first, each from the node with the most room.
    let mut room: Vec<usize> = (0..n).map(|i| quota[i] - held[i]).collect();
    let mut order: Vec<usize> = (0..partitions).collect();
    order.sort_by_key(|&p| (owners[p].len(), p));
    for &p in &order {
        while owners[p].len() < r {
            let best = (0..n)
                .filter(|&i| {
                    room[i] > 0 && !owners[p].contains(&(i as NodeIdx)) && zone_ok(&owners[p], i)
                })
                .max_by_key(|&i| (room[i], rank(p, i)));
            match best {
                Some(i) => {
                    owners[p].push(i as NodeIdx);
                    room[i] -= 1;
                }
                None => {
                    if !repair(cands, &mut owners, &mut room, p, strict) {
                        break;
                    }
                }
            }
        }
    }
    // 4. Primaries: partitions in a fixed pseudo-random order, each led by the owner furthest
    //    below its primary quota. Leading moves no data, so this need not be sticky.
    let mut prim = vec![0usize; n];
    let mut order: Vec<usize> = (0..partitions).collect();
    order.sort_by_key(|&p| rank(p, n));
    for &p in &order {
        // The owner whose primary quota is least filled (as a fraction), so small nodes get
        // their few primaries spread over the whole range.
        let Some(k) = (0..owners[p].len()).min_by_key(|&k| {
            let i = usize::from(owners[p][k]);
            (
                ((prim[i] as u128 + 1) << 32) / (prim_quota[i].max(1) as u128),
                rank(p, i),
            )
        }) else {
            continue;
        };
        owners[p][..=k].rotate_right(1);
        prim[usize::from(owners[p][0])] += 1;
    }
    owners
}

/// Partition `p` needs another owner but every node with room already owns it (or sits in one
/// of its zones). Swap: some partition `q` hands an owner `x` to `p` and takes a node `y` with
/// room instead. Returns whether `p` gained an owner.
fn repair(
    cands: &[Candidate<'_>],
    owners: &mut Assignment,
    room: &mut [usize],
    p: usize,
    strict: bool,
) -> bool {
    let fits = |set: &[NodeIdx], skip: Option<NodeIdx>, i: usize| {
        !set.contains(&(i as NodeIdx))
            && (!strict
                || set
                    .iter()
                    .filter(|&&o| Some(o) != skip)
                    .all(|&o| cands[usize::from(o)].zone != cands[i].zone))
    };
    let with_room: Vec<usize> = (0..cands.len()).filter(|&i| room[i] > 0).collect();
    for q in 0..owners.len() {
        if q == p {
            continue;
        }
        for k in 0..owners[q].len() {
            let x = owners[q][k];
            if !fits(&owners[p], None, usize::from(x)) {
                continue;
            }
            for &y in &with_room {
                if fits(&owners[q], Some(x), y) {
                    owners[q][k] = y as NodeIdx;
                    owners[p].push(x);
                    room[y] -= 1;
                    return true;
                }
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waterfill_caps_and_rounds() {
        assert_eq!(waterfill(10, &[1, 1, 1], 10), vec![4, 3, 3]);
        assert_eq!(waterfill(10, &[8, 1, 1], 5), vec![5, 3, 2]);
        assert_eq!(waterfill(9, &[1, 0, 1], 10), vec![5, 0, 4]);
        assert_eq!(waterfill(30, &[1, 1], 10), vec![10, 10]);
        assert_eq!(waterfill(0, &[1, 1], 10), vec![0, 0]);
    }
}
