//! The cluster layout: which nodes own which keys.
//!
//! - A key belongs to one of [`PARTITIONS`] fixed partitions ([`partition_of`]): the top
//!   [`PARTITION_BITS`] bits of a stable 64-bit hash. The hash never changes between versions
//!   (it is part of the on-disk and on-wire contract), so every node and client agrees.
//! - [`assign()`] maps partitions to owner lists (primary first) from node capacities and zones,
//!   deterministically and close to the previous assignment, so a change moves about the ideal
//!   share of data (see its documentation for the guarantees the property tests check).
//! - [`Layout`] is the versioned whole: nodes and their CHMPX-style states, replication factor
//!   and quorums, the current assignment and, while data moves, the previous one. It is changed
//!   only through [`Layout::apply`], which validates and bumps the version; agreeing on versions
//!   is the job of the cluster's consensus, not of this crate.
//!
//! Everything here is pure: no I/O, no clocks, no randomness.

mod assign;
mod error;
mod layout;

pub use assign::{Assignment, Candidate, NodeIdx, assign, quotas};
pub use error::LayoutError;
pub use layout::{Action, Change, Layout, Node, Owners, Ring};

/// Bits of a key hash that select its partition.
pub const PARTITION_BITS: u32 = 10;
/// Number of partitions (2^[`PARTITION_BITS`]).
pub const PARTITIONS: usize = 1 << PARTITION_BITS;
/// Format version of a serialized [`Layout`].
pub const FORMAT_VERSION: u32 = 1;

/// Stable 64-bit hash of a key: FNV-1a (K2HASH's key hash) followed by a 64-bit finaliser, so
/// that the top bits used for partitions are well mixed even for short, similar keys.
pub fn key_hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    fmix64(h)
}

/// The partition of a key.
pub fn partition_of(key: &[u8]) -> usize {
    (key_hash(key) >> (64 - PARTITION_BITS)) as usize
}

/// MurmurHash3's 64-bit finaliser: a bijection that spreads every input bit over the output.
pub(crate) fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable() {
        // Part of the wire and disk contract: these values must never change.
        assert_eq!(key_hash(b""), fmix64(0xcbf2_9ce4_8422_2325));
        assert_eq!(partition_of(b"key-1"), partition_of(b"key-1"));
        let spread: std::collections::HashSet<usize> = (0..10_000)
            .map(|i| partition_of(format!("k{i}").as_bytes()))
            .collect();
        assert!(spread.len() > PARTITIONS * 9 / 10, "{}", spread.len());
        assert!(spread.iter().all(|&p| p < PARTITIONS));
    }
}
