//! Agreement on layout versions: one single-decree Paxos instance per version.
//!
//! Version `v + 1` is decided by a majority of the voters of layout `v` (its SERVICE IN nodes,
//! or every known node while none is in service). A proposer first gets promises for a ballot
//! higher than any seen, adopts the highest-ballot value already accepted by the promisers (so
//! a value that may have been chosen is never replaced), then asks the voters to accept it; a
//! majority of acceptances decides the version, which is then announced to every node. Two
//! operators changing the layout at once therefore get two consecutive versions, never two
//! different layouts under one version.
//!
//! This module holds the acceptor's state and the pure decisions; the messages travel in
//! `Op::Cluster` requests (see `super`). The state is persisted before any reply that depends
//! on it, so a restarted acceptor keeps its promises.

use std::path::{Path, PathBuf};

use k2hdkc_layout::{Layout, Ring};
use serde::{Deserialize, Serialize};

/// A ballot: a round number, then the proposer's name to break ties.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Ballot {
    /// Round.
    pub round: u64,
    /// Proposer.
    pub node: String,
}

/// An acceptor's state for the next undecided version.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Acceptor {
    /// The version this state is about (committed version + 1).
    pub version: u64,
    /// Highest ballot promised for `version`.
    pub promised: Ballot,
    /// Value accepted for `version`, with its ballot.
    pub accepted: Option<(Ballot, Layout)>,
    /// Highest round seen in any ballot (proposals start above it).
    pub max_round: u64,
}

/// Answer to a prepare.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Promise {
    /// Whether the promise is given.
    pub ok: bool,
    /// The acceptor's committed layout version (a proposer that is behind catches up).
    pub committed: u64,
    /// A value accepted earlier for this version.
    pub accepted: Option<(Ballot, Layout)>,
    /// Highest round the acceptor has seen.
    pub max_round: u64,
}

impl Acceptor {
    /// Forget the state of decided versions once `committed` is installed.
    pub fn advance(&mut self, committed: u64) {
        if self.version <= committed {
            self.version = committed + 1;
            self.promised = Ballot::default();
            self.accepted = None;
        }
    }

    /// Phase 1: promise not to accept ballots below `b` for `version`.
    pub fn prepare(&mut self, committed: u64, version: u64, b: &Ballot) -> Promise {
        self.advance(committed);
        self.max_round = self.max_round.max(b.round);
        let ok = version == self.version && *b > self.promised;
        if ok {
            self.promised = b.clone();
        }
        Promise {
            ok,
            committed,
            accepted: if ok { self.accepted.clone() } else { None },
            max_round: self.max_round,
        }
    }

    /// Phase 2: accept `value` under `b` unless a higher ballot was promised.
    pub fn accept(&mut self, committed: u64, version: u64, b: &Ballot, value: &Layout) -> bool {
        self.advance(committed);
        self.max_round = self.max_round.max(b.round);
        if version != self.version || *b < self.promised || value.version != version {
            return false;
        }
        self.promised = b.clone();
        self.accepted = Some((b.clone(), value.clone()));
        true
    }
}

/// The nodes whose majority decides the version after `l`: its SERVICE IN nodes, or every
/// known node while none is in service.
pub fn voters(l: &Layout) -> Vec<String> {
    let inn: Vec<String> = l
        .nodes
        .iter()
        .filter(|n| n.ring == Ring::ServiceIn)
        .map(|n| n.name.clone())
        .collect();
    if inn.is_empty() {
        l.nodes.iter().map(|n| n.name.clone()).collect()
    } else {
        inn
    }
}

/// Among promises, the accepted value with the highest ballot.
pub fn adopt(promises: &[Promise]) -> Option<Layout> {
    promises
        .iter()
        .filter_map(|p| p.accepted.as_ref())
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, l)| l.clone())
}

/// Where a node keeps its cluster state (layout and acceptor), if it keeps any on disk.
#[derive(Debug, Clone)]
pub struct StateDir(pub Option<PathBuf>);

impl StateDir {
    fn write(&self, name: &str, text: &str) -> std::io::Result<()> {
        let Some(dir) = &self.0 else {
            return Ok(());
        };
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, dir.join(name))?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    fn read(dir: &Path, name: &str) -> Option<String> {
        std::fs::read_to_string(dir.join(name)).ok()
    }

    /// Persist the committed layout.
    pub fn save_layout(&self, l: &Layout) -> std::io::Result<()> {
        self.write("layout.json", &l.to_json())
    }

    /// Persist the acceptor state.
    pub fn save_acceptor(&self, a: &Acceptor) -> std::io::Result<()> {
        self.write(
            "acceptor.json",
            &serde_json::to_string(a).expect("acceptor serializes"),
        )
    }

    /// Persist where the replication streams resume after a restart (see
    /// `Cluster::save_streams`).
    pub fn save_streams(&self, text: &str) -> std::io::Result<()> {
        self.write("streams.json", text)
    }

    /// The persisted stream positions, if any.
    pub fn load_streams(&self) -> Option<String> {
        Self::read(self.0.as_ref()?, "streams.json")
    }

    /// The persisted layout and acceptor, if any (an unreadable layout is an error: a node
    /// must not forget the cluster it belongs to).
    pub fn load(&self) -> Result<(Option<Layout>, Acceptor), String> {
        let Some(dir) = &self.0 else {
            return Ok((None, Acceptor::default()));
        };
        let layout = match Self::read(dir, "layout.json") {
            Some(t) => Some(
                Layout::from_json(&t)
                    .map_err(|e| format!("{}: {e}", dir.join("layout.json").display()))?,
            ),
            None => None,
        };
        let acceptor = match Self::read(dir, "acceptor.json") {
            Some(t) => serde_json::from_str(&t)
                .map_err(|e| format!("{}: {e}", dir.join("acceptor.json").display()))?,
            None => Acceptor::default(),
        };
        Ok((layout, acceptor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(round: u64, node: &str) -> Ballot {
        Ballot {
            round,
            node: node.into(),
        }
    }

    fn layout(version: u64) -> Layout {
        let mut l = Layout::new("t");
        l.version = version;
        l
    }

    #[test]
    fn acceptor_keeps_its_promises() {
        let mut a = Acceptor::default();
        let p = a.prepare(4, 5, &b(1, "x"));
        assert!(p.ok && p.accepted.is_none());
        // A lower or equal ballot is refused afterwards.
        assert!(!a.prepare(4, 5, &b(1, "a")).ok);
        assert!(!a.accept(4, 5, &b(0, "z"), &layout(5)));
        assert!(a.accept(4, 5, &b(1, "x"), &layout(5)));
        // A later proposer learns the accepted value and must adopt it.
        let p = a.prepare(4, 5, &b(2, "y"));
        assert!(p.ok);
        assert_eq!(adopt(&[p]).unwrap().version, 5);
        // A stale proposer (wrong version) is told the committed version.
        let p = a.prepare(4, 7, &b(9, "y"));
        assert!(!p.ok && p.committed == 4);
        // Once version 5 is committed, the state moves on.
        assert!(a.prepare(5, 6, &b(1, "x")).ok);
        assert!(
            !a.accept(5, 6, &b(1, "x"), &layout(5)),
            "value must carry the version"
        );
    }

    #[test]
    fn adopt_takes_the_highest_ballot() {
        let p = |r: u64, v: u64| Promise {
            ok: true,
            committed: 0,
            accepted: Some((b(r, "n"), layout(v))),
            max_round: r,
        };
        let none = Promise {
            ok: true,
            committed: 0,
            accepted: None,
            max_round: 0,
        };
        assert_eq!(
            adopt(&[p(1, 10), p(3, 30), none, p(2, 20)])
                .unwrap()
                .version,
            30
        );
        assert!(adopt(&[]).is_none());
    }
}
