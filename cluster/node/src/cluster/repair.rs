//! Quorum reads and read repair.
//!
//! A read runs at its partition's primary, which holds every acknowledged write once its
//! hand-over rules have run (see `super`). With a read quorum `R > 1` (or a native read at
//! `Level` all) the primary also asks `R - 1` other live owners (every live owner for all)
//! for their version of the key before it answers, so a copy that missed something is seen:
//!
//! - an owner with a **newer** version sends its record along; the primary imports it
//!   (last-writer-wins, so it then streams to the other owners like any change) and runs the
//!   read again, so the reply carries the newest version any of the `R` copies had;
//! - an owner with an **older** version (or none) is sent the primary's record, unless the
//!   primary's version is younger than [`REPAIR_AFTER_MS`]: such a difference is most likely
//!   a write still travelling in the primary's own replication stream;
//! - too few owners answer: the read fails with "read quorum not reached" (text multi-key
//!   retrievals read that key as a miss, as for any owner that does not answer).
//!
//! All checks of one client batch travel in one `Op::Check` request per owner. Requests and
//! replies carry [`CHECK_FORMAT`]; other formats are refused.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use k2hdkc_layout::Layout;
use k2hdkc_proto::native::{Args, Op, Status};
use k2hdkc_storage::{Change, Version};

use super::{Cluster, Peer, replicate};

/// Format of `Op::Check` payloads.
pub const CHECK_FORMAT: u8 = 1;

/// A primary's copy younger than this is not pushed to an owner that is behind: the
/// primary's stream is most likely delivering it.
pub const REPAIR_AFTER_MS: u64 = 2_000;

/// A read that ran here and awaits the other owners' versions.
#[derive(Debug, Clone)]
pub struct Read {
    /// The key.
    pub key: Vec<u8>,
    /// This node's version of it when the read ran (`Version::ZERO`: none).
    pub version: Version,
    /// Ask every live owner (`Level` all) instead of `R - 1` of them.
    pub all: bool,
}

/// What the other owners said about a [`Read`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nobody has a newer version: the reply stands.
    Current,
    /// A newer version was imported here: run the read again.
    Stale,
    /// Too few owners answered.
    Failed(String),
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(b: &mut &[u8]) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&c, rest) = b.split_first().ok_or("check payload cut short")?;
        *b = rest;
        v |= u64::from(c & 0x7f) << shift;
        if c & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("check payload has an over-long number".into())
}

fn put_version(out: &mut Vec<u8>, v: Version) {
    out.extend_from_slice(&v.ts.to_le_bytes());
    out.extend_from_slice(&v.node.to_le_bytes());
}

fn get_version(b: &mut &[u8]) -> Result<Version, String> {
    if b.len() < 12 {
        return Err("check payload cut short".into());
    }
    let ts = u64::from_le_bytes(b[..8].try_into().expect("8"));
    let node = u32::from_le_bytes(b[8..12].try_into().expect("4"));
    *b = &b[12..];
    Ok(Version { ts, node })
}

fn check_format(b: &mut &[u8]) -> Result<usize, String> {
    let (&f, rest) = b.split_first().ok_or("empty check payload")?;
    if f != CHECK_FORMAT {
        return Err(format!(
            "check payload format {f} is not spoken here (this node speaks {CHECK_FORMAT})"
        ));
    }
    *b = rest;
    let n = get_varint(b)?;
    usize::try_from(n)
        .ok()
        .filter(|&n| n <= b.len())
        .ok_or_else(|| "check payload counts more entries than it holds".into())
}

/// A check request: keys with the sender's versions.
pub fn encode_request<'a>(items: impl ExactSizeIterator<Item = (&'a [u8], Version)>) -> Vec<u8> {
    let mut out = vec![CHECK_FORMAT];
    put_varint(&mut out, items.len() as u64);
    for (k, v) in items {
        put_varint(&mut out, k.len() as u64);
        out.extend_from_slice(k);
        put_version(&mut out, v);
    }
    out
}

/// Read a check request.
pub fn decode_request(mut b: &[u8]) -> Result<Vec<(&[u8], Version)>, String> {
    let n = check_format(&mut b)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let len = usize::try_from(get_varint(&mut b)?).map_err(|_| "key length")?;
        if len > b.len() {
            return Err("check payload cut short".into());
        }
        let (k, rest) = b.split_at(len);
        b = rest;
        out.push((k, get_version(&mut b)?));
    }
    if !b.is_empty() {
        return Err("trailing bytes after a check payload".into());
    }
    Ok(out)
}

/// The versions of a check reply.
pub fn encode_versions(vs: &[Version]) -> Vec<u8> {
    let mut out = vec![CHECK_FORMAT];
    put_varint(&mut out, vs.len() as u64);
    for &v in vs {
        put_version(&mut out, v);
    }
    out
}

/// Read the versions of a check reply.
pub fn decode_versions(mut b: &[u8]) -> Result<Vec<Version>, String> {
    let n = check_format(&mut b)?;
    let out = (0..n)
        .map(|_| get_version(&mut b))
        .collect::<Result<Vec<_>, _>>()?;
    if !b.is_empty() {
        return Err("trailing bytes after check versions".into());
    }
    Ok(out)
}

/// Answer a check on this node: its versions of the keys, and its records that are newer
/// than the sender's (as a replication batch).
pub fn answer(cluster: &Cluster, payload: &[u8]) -> Result<(Vec<u8>, Option<Vec<u8>>), String> {
    let items = decode_request(payload)?;
    let mut versions = Vec::with_capacity(items.len());
    let mut newer: Vec<Change> = Vec::new();
    for (key, theirs) in items {
        let mine = cluster.store.record_version(key).unwrap_or(Version::ZERO);
        if mine > theirs
            && let Some(c) = cluster.store.record_state(key)
        {
            newer.push(c);
        }
        versions.push(mine);
    }
    let batch = (!newer.is_empty()).then(|| replicate::encode_batch(&newer));
    Ok((encode_versions(&versions), batch))
}

/// The owners (other than this node) a read of partition `p` asks, or why it cannot be
/// served at its quorum.
fn askees(cluster: &Cluster, l: &Layout, p: usize, all: bool) -> Result<Vec<Arc<Peer>>, String> {
    let list = l.owners_of_partition(p).serving();
    let live: Vec<Arc<Peer>> = list
        .iter()
        .map(|&i| &l.node(i).addr)
        .filter(|a| **a != cluster.addr)
        .map(|a| cluster.peer(a))
        .filter(|p| p.routable())
        .collect();
    if all {
        return Ok(live);
    }
    let need = l
        .effective_read_quorum()
        .min(list.len().max(1))
        .saturating_sub(1);
    if live.len() < need {
        return Err(format!(
            "read quorum not reached: partition {p} has {} of {} copies up",
            live.len() + 1,
            need + 1
        ));
    }
    Ok(live.into_iter().take(need).collect())
}

/// How many copies besides this node's a read at `level` (native: 0 default, 1 one, 2
/// quorum, 3 all) compares: none means the read needs no check.
pub fn wanted(cluster: &Cluster, level: u8) -> bool {
    if cluster.gateway() {
        return false;
    }
    match level {
        1 => false,
        3 => true,
        _ => cluster.layout().effective_read_quorum() > 1,
    }
}

/// Check `reads` (run here) against the other owners; one verdict per read.
pub async fn check(cluster: &Arc<Cluster>, reads: &[Read]) -> Vec<Verdict> {
    let l = cluster.layout();
    let mut verdicts = vec![Verdict::Current; reads.len()];
    let mut groups: BTreeMap<String, (Arc<Peer>, Vec<usize>)> = BTreeMap::new();
    for (i, r) in reads.iter().enumerate() {
        let p = k2hdkc_layout::partition_of(&r.key);
        match askees(cluster, &l, p, r.all) {
            Ok(peers) => {
                for peer in peers {
                    groups
                        .entry(peer.addr.clone())
                        .or_insert_with(|| (peer, Vec::new()))
                        .1
                        .push(i);
                }
            }
            Err(e) => verdicts[i] = Verdict::Failed(e),
        }
    }
    if groups.is_empty() {
        return verdicts;
    }
    cluster
        .stats
        .read_checks
        .fetch_add(reads.len() as u64, Relaxed);
    // This node's versions now, before the answers import anything: an owner's copy newer
    // than what a read saw but not newer than these was written here after the read ran (a
    // later request of the same client batch, say); the read was current when it ran, and
    // running it again would answer it with a write that comes after it.
    let here: Vec<Version> = reads
        .iter()
        .map(|r| cluster.store.record_version(&r.key).unwrap_or_default())
        .collect();
    let mut set = tokio::task::JoinSet::new();
    for (_, (peer, idx)) in groups {
        let c = cluster.clone();
        let items: Vec<(Vec<u8>, Version)> = idx
            .iter()
            .map(|&i| (reads[i].key.clone(), reads[i].version))
            .collect();
        set.spawn(async move {
            let r = ask(&c, &peer, &items).await;
            (peer, idx, items, r)
        });
    }
    let now = cluster.store.now_ms();
    while let Some(joined) = set.join_next().await {
        let Ok((peer, idx, items, r)) = joined else {
            continue;
        };
        match r {
            Err(e) => {
                for &i in &idx {
                    if !matches!(verdicts[i], Verdict::Failed(_)) {
                        verdicts[i] = Verdict::Failed(format!(
                            "read quorum not reached: {} did not answer ({e})",
                            peer.addr
                        ));
                    }
                }
            }
            Ok(theirs) => {
                let mut behind = Vec::new();
                for ((&i, (key, mine)), their) in idx.iter().zip(&items).zip(theirs) {
                    if their > *mine && their > here[i] {
                        if verdicts[i] == Verdict::Current {
                            verdicts[i] = Verdict::Stale;
                        }
                    } else if their < *mine
                        && mine.millis().saturating_add(REPAIR_AFTER_MS) < now
                        && let Some(state) = cluster.store.record_state(key)
                    {
                        behind.push(state);
                    }
                }
                if !behind.is_empty() {
                    cluster
                        .stats
                        .read_repairs
                        .fetch_add(behind.len() as u64, Relaxed);
                    let c = cluster.clone();
                    tokio::spawn(async move {
                        if let Err(e) = replicate::send_all(&c, &peer, &behind).await {
                            tracing::debug!(peer = %peer.addr, error = %e, "read repair failed");
                        }
                    });
                }
            }
        }
    }
    verdicts
}

/// One `Op::Check` to `peer`; imports the newer records it sends and returns its versions.
async fn ask(
    cluster: &Cluster,
    peer: &Peer,
    items: &[(Vec<u8>, Version)],
) -> Result<Vec<Version>, String> {
    let payload = encode_request(items.iter().map(|(k, v)| (k.as_slice(), *v)));
    let args = Args {
        value: Some(&payload),
        pass: cluster.token.as_deref(),
        ..Default::default()
    };
    let r = tokio::time::timeout(
        cluster.request_timeout(),
        peer.forwards.request(Op::Check, &args),
    )
    .await
    .map_err(|_| "no answer in time".to_string())?
    .map_err(|e| e.to_string())?;
    if r.status() != Some(Status::Ok) {
        return Err(r.message.unwrap_or_else(|| "check refused".into()));
    }
    let versions = decode_versions(r.values.first().map_or(&[][..], Vec::as_slice))?;
    if versions.len() != items.len() {
        return Err(format!(
            "{} versions for {} keys",
            versions.len(),
            items.len()
        ));
    }
    if let Some(batch) = r.values.get(1) {
        let changes = replicate::decode_batch(batch)?;
        let n = cluster
            .store
            .import_changes(changes, false)
            .map_err(|e| e.to_string())?;
        cluster.stats.read_repairs.fetch_add(n as u64, Relaxed);
    }
    Ok(versions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_refuse_garbage() {
        let v = |ts, node| Version { ts, node };
        let keys: Vec<(&[u8], Version)> = vec![
            (b"a", v(5, 1)),
            (b"", Version::ZERO),
            (b"k3", v(u64::MAX, 7)),
        ];
        let b = encode_request(keys.iter().copied());
        assert_eq!(decode_request(&b).unwrap(), keys);
        let vs = vec![v(1, 2), Version::ZERO];
        assert_eq!(decode_versions(&encode_versions(&vs)).unwrap(), vs);
        for cut in 0..b.len() {
            assert!(decode_request(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut other = b.clone();
        other[0] = 9;
        assert!(decode_request(&other).unwrap_err().contains("format 9"));
        let mut long = b.clone();
        long.push(0);
        assert!(decode_request(&long).is_err());
        // A count larger than the payload is refused before anything is allocated.
        assert!(decode_versions(&[CHECK_FORMAT, 0xff, 0xff, 0xff, 0x7f]).is_err());
    }
}
