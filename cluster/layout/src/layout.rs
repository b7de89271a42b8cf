//! The versioned cluster layout and its changes.
//!
//! Invariants (checked by [`Layout::validate`], which [`Layout::from_json`] and
//! [`Layout::apply`] run):
//! - node names and addresses are unique; `assignment` (and `previous`, if any) has
//!   [`PARTITIONS`] entries of distinct, in-range node indices;
//! - `1 <= write_quorum, read_quorum <= replicas`;
//! - every change bumps `version` by one, so two layouts with the same version and cluster are
//!   the same layout (consensus decides which change gets a version).
//!
//! Node states follow CHMPX: `ring` is SERVICE IN / SERVICE OUT, `action` is ADD / DELETE while
//! data moves to or away from the node; liveness (UP / DOWN) is observed at run time and is not
//! part of the layout. While `previous` is set, data is moving from the previous owners to the
//! current ones: writes go to both sets, reads prefer the current one.

use serde::{Deserialize, Serialize};

use crate::assign::{Assignment, Candidate, NodeIdx, assign};
use crate::{FORMAT_VERSION, LayoutError, PARTITIONS, partition_of};

/// Ring state of a node (CHMPX's RING field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ring {
    /// Holds and serves data.
    ServiceIn,
    /// Known to the cluster but holds no data (joined, not yet attached; or suspended).
    ServiceOut,
}

/// Pending action of a node (CHMPX's ACTION field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Nothing pending.
    None,
    /// Attached: data is moving to it.
    Add,
    /// Detached: data is moving away; it leaves when the movement completes.
    Delete,
}

/// One server node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Unique name (`--name`).
    pub name: String,
    /// Native-protocol address peers and gateways use.
    pub addr: String,
    /// memcached address, if it serves memcached clients.
    #[serde(default)]
    pub memcached: Option<String>,
    /// Failure domain; replicas go to distinct zones when there are enough.
    #[serde(default = "default_zone")]
    pub zone: String,
    /// Relative capacity (weight); 0 holds nothing.
    #[serde(default = "default_capacity")]
    pub capacity: u32,
    /// Ring state.
    pub ring: Ring,
    /// Pending action.
    pub action: Action,
}

fn default_zone() -> String {
    "default".into()
}

fn default_capacity() -> u32 {
    100
}

impl Node {
    /// A new node as it joins: known, not in service.
    pub fn joining(name: impl Into<String>, addr: impl Into<String>) -> Node {
        Node {
            name: name.into(),
            addr: addr.into(),
            memcached: None,
            zone: default_zone(),
            capacity: default_capacity(),
            ring: Ring::ServiceOut,
            action: Action::None,
        }
    }

    /// Whether the current assignment gives it data.
    pub fn holds_data(&self) -> bool {
        self.ring == Ring::ServiceIn && self.action != Action::Delete && self.capacity > 0
    }

    /// CHMPX's status text, e.g. `[SERVICE IN][n/a]`.
    pub fn status_text(&self) -> String {
        let ring = match self.ring {
            Ring::ServiceIn => "SERVICE IN",
            Ring::ServiceOut => "SERVICE OUT",
        };
        let action = match self.action {
            Action::None => "n/a",
            Action::Add => "ADD",
            Action::Delete => "DELETE",
        };
        format!("[{ring}][{action}]")
    }
}

/// A change to the layout (what `k2hdkc ctl` asks for).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// A node introduces itself (`--join`); it is recognised but holds no data yet. A node
    /// that is already known under this name updates its addresses.
    Join {
        /// The node.
        node: Node,
    },
    /// Put every recognised (SERVICE OUT) node, or only the named ones, into service.
    Attach {
        /// Nodes to attach; empty for all recognised ones.
        names: Vec<String>,
    },
    /// Take a node out of service: its data moves away, then it leaves.
    Detach {
        /// The node.
        name: String,
    },
    /// Forget a node at once (it is dead): the remaining replicas re-create its copies.
    Remove {
        /// The node.
        name: String,
    },
    /// Replication factor and quorums.
    SetReplication {
        /// Copies of each partition.
        replicas: u8,
        /// Acknowledgements a write waits for.
        write_quorum: u8,
        /// Replies a read waits for.
        read_quorum: u8,
    },
    /// A node's capacity (weight) or zone.
    SetNode {
        /// The node.
        name: String,
        /// New capacity, if given.
        capacity: Option<u32>,
        /// New zone, if given.
        zone: Option<String>,
    },
    /// The data movement is done: forget the previous assignment, finish ADD and DELETE.
    Complete,
}

/// The owners of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owners<'a> {
    /// The partition.
    pub partition: usize,
    /// Current owners, primary first.
    pub current: &'a [NodeIdx],
    /// Owners before the movement in progress, if any.
    pub previous: Option<&'a [NodeIdx]>,
}

impl<'a> Owners<'a> {
    /// The owners that serve requests, primary first: the previous ones while data moves
    /// (they hold all of it; the new ones may not yet).
    pub fn serving(&self) -> &'a [NodeIdx] {
        self.previous.unwrap_or(self.current)
    }

    /// Whether `node` is in the [`Owners::write_set`] (without building it).
    pub fn writes_to(&self, node: NodeIdx) -> bool {
        self.current.contains(&node) || self.previous.is_some_and(|p| p.contains(&node))
    }

    /// Every node a write must reach: current owners, then previous ones not among them.
    pub fn write_set(&self) -> Vec<NodeIdx> {
        let mut all = self.current.to_vec();
        for &o in self.previous.unwrap_or_default() {
            if !all.contains(&o) {
                all.push(o);
            }
        }
        all
    }
}

/// The versioned cluster layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// Serialization format ([`FORMAT_VERSION`]).
    pub format: u32,
    /// Cluster name; nodes of another cluster are refused.
    pub cluster: String,
    /// Bumped by every change.
    pub version: u64,
    /// Copies of each partition (capped by the nodes in service).
    pub replicas: u8,
    /// Acknowledgements a write waits for.
    pub write_quorum: u8,
    /// Replies a read waits for.
    pub read_quorum: u8,
    /// Every known node.
    pub nodes: Vec<Node>,
    /// Owners of each partition.
    pub assignment: Assignment,
    /// Owners before the data movement in progress.
    #[serde(default)]
    pub previous: Option<Assignment>,
}

impl Layout {
    /// An empty layout (version 0): replicas 3, quorums 2/2, as the defaults.
    pub fn new(cluster: impl Into<String>) -> Layout {
        Layout {
            format: FORMAT_VERSION,
            cluster: cluster.into(),
            version: 0,
            replicas: 3,
            write_quorum: 2,
            read_quorum: 2,
            nodes: Vec::new(),
            assignment: vec![Vec::new(); PARTITIONS],
            previous: None,
        }
    }

    /// Copies actually kept: `replicas` capped by the nodes holding data.
    pub fn effective_replicas(&self) -> usize {
        usize::from(self.replicas).min(self.nodes.iter().filter(|n| n.holds_data()).count())
    }

    /// Acknowledgements a write needs: `write_quorum` capped by the effective replicas.
    pub fn effective_write_quorum(&self) -> usize {
        usize::from(self.write_quorum)
            .min(self.effective_replicas())
            .max(1)
    }

    /// Replies a read needs: `read_quorum` capped by the effective replicas.
    pub fn effective_read_quorum(&self) -> usize {
        usize::from(self.read_quorum)
            .min(self.effective_replicas())
            .max(1)
    }

    /// Index of the node with this name.
    pub fn index_of(&self, name: &str) -> Option<NodeIdx> {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .map(|i| i as NodeIdx)
    }

    /// The node at an index.
    pub fn node(&self, i: NodeIdx) -> &Node {
        &self.nodes[usize::from(i)]
    }

    /// Owners of a partition.
    pub fn owners_of_partition(&self, partition: usize) -> Owners<'_> {
        Owners {
            partition,
            current: &self.assignment[partition],
            previous: self.previous.as_ref().map(|p| p[partition].as_slice()),
        }
    }

    /// Owners of a key.
    pub fn owners(&self, key: &[u8]) -> Owners<'_> {
        self.owners_of_partition(partition_of(key))
    }

    /// Whether data is moving (a previous assignment is kept).
    pub fn moving(&self) -> bool {
        self.previous.is_some()
    }

    /// Partitions whose owner set differs between the previous and current assignment.
    pub fn moving_partitions(&self) -> Vec<usize> {
        match &self.previous {
            None => Vec::new(),
            Some(prev) => (0..PARTITIONS)
                .filter(|&p| {
                    let mut a = prev[p].clone();
                    let mut b = self.assignment[p].clone();
                    a.sort_unstable();
                    b.sort_unstable();
                    a != b
                })
                .collect(),
        }
    }

    /// Apply a change: the new layout has `version + 1`. The current one is left as it was.
    pub fn apply(&self, change: &Change) -> Result<Layout, LayoutError> {
        let mut next = self.clone();
        next.version = self.version + 1;
        let mut reassign = false;
        match change {
            Change::Join { node } => {
                check_node(node)?;
                if let Some(other) = self
                    .nodes
                    .iter()
                    .find(|n| n.name != node.name && n.addr == node.addr)
                {
                    return Err(LayoutError::DuplicateNode(format!(
                        "{} (address {} is used by {})",
                        node.name, node.addr, other.name
                    )));
                }
                match next.nodes.iter_mut().find(|n| n.name == node.name) {
                    Some(n) => {
                        if n.addr == node.addr && n.memcached == node.memcached {
                            return Err(LayoutError::NoChange(format!(
                                "{} is already known at {}",
                                node.name, node.addr
                            )));
                        }
                        n.addr = node.addr.clone();
                        n.memcached = node.memcached.clone();
                    }
                    None => {
                        let mut n = node.clone();
                        n.ring = Ring::ServiceOut;
                        n.action = Action::None;
                        next.nodes.push(n);
                    }
                }
            }
            Change::Attach { names } => {
                for name in names {
                    if self.index_of(name).is_none() {
                        return Err(LayoutError::UnknownNode(name.clone()));
                    }
                }
                let mut any = false;
                for n in &mut next.nodes {
                    if n.ring == Ring::ServiceOut && (names.is_empty() || names.contains(&n.name)) {
                        n.ring = Ring::ServiceIn;
                        // The very first nodes have nothing to receive.
                        n.action = if self.effective_replicas() == 0 {
                            Action::None
                        } else {
                            Action::Add
                        };
                        any = true;
                    }
                }
                if !any {
                    return Err(LayoutError::NoChange("no recognised node to attach".into()));
                }
                reassign = true;
            }
            Change::Detach { name } => {
                let i = self
                    .index_of(name)
                    .ok_or_else(|| LayoutError::UnknownNode(name.clone()))?;
                let n = &mut next.nodes[usize::from(i)];
                match (n.ring, n.action) {
                    (_, Action::Delete) => {
                        return Err(LayoutError::NoChange(format!("{name} is already leaving")));
                    }
                    // Never held data: it can go at once.
                    (Ring::ServiceOut, _) => {
                        next.remove_node(i);
                    }
                    (Ring::ServiceIn, _) => {
                        n.action = Action::Delete;
                        reassign = true;
                    }
                }
            }
            Change::Remove { name } => {
                let i = self
                    .index_of(name)
                    .ok_or_else(|| LayoutError::UnknownNode(name.clone()))?;
                next.remove_node(i);
                reassign = true;
            }
            Change::SetReplication {
                replicas,
                write_quorum,
                read_quorum,
            } => {
                if *replicas == 0
                    || *write_quorum == 0
                    || *read_quorum == 0
                    || write_quorum > replicas
                    || read_quorum > replicas
                {
                    return Err(LayoutError::InvalidReplication(format!(
                        "replicas {replicas}, write quorum {write_quorum}, read quorum \
                         {read_quorum}: need 1 <= quorums <= replicas"
                    )));
                }
                next.replicas = *replicas;
                next.write_quorum = *write_quorum;
                next.read_quorum = *read_quorum;
                reassign = next.replicas != self.replicas;
            }
            Change::SetNode {
                name,
                capacity,
                zone,
            } => {
                let i = self
                    .index_of(name)
                    .ok_or_else(|| LayoutError::UnknownNode(name.clone()))?;
                let n = &mut next.nodes[usize::from(i)];
                if let Some(c) = capacity {
                    n.capacity = *c;
                }
                if let Some(z) = zone {
                    n.zone = z.clone();
                }
                check_node(n)?;
                reassign = true;
            }
            Change::Complete => {
                if !self.moving() && !self.nodes.iter().any(|n| n.action != Action::None) {
                    return Err(LayoutError::NoChange("no data movement in progress".into()));
                }
                next.previous = None;
                while let Some(i) = next.nodes.iter().position(|n| n.action == Action::Delete) {
                    next.remove_node(i as NodeIdx);
                }
                for n in &mut next.nodes {
                    n.action = Action::None;
                }
            }
        }
        if reassign {
            if next.nodes.iter().all(|n| !n.holds_data()) && self.effective_replicas() > 0 {
                return Err(LayoutError::NoNodes);
            }
            let cands: Vec<Candidate<'_>> = next
                .nodes
                .iter()
                .map(|n| Candidate {
                    zone: &n.zone,
                    capacity: if n.holds_data() { n.capacity } else { 0 },
                })
                .collect();
            let fresh = assign(
                &cands,
                usize::from(next.replicas),
                PARTITIONS,
                Some(&next.assignment),
            );
            // Keep the oldest previous assignment: writes made during an earlier movement
            // reached it, so it still holds everything the new owners need.
            if next.previous.is_none() && next.assignment.iter().any(|o| !o.is_empty()) {
                next.previous = Some(std::mem::take(&mut next.assignment));
            }
            next.assignment = fresh;
            if next.previous.as_ref() == Some(&next.assignment) {
                next.previous = None;
            }
        }
        next.validate()?;
        Ok(next)
    }

    /// Drop node `i`, renumbering the assignments.
    fn remove_node(&mut self, i: NodeIdx) {
        self.nodes.remove(usize::from(i));
        let fix = |a: &mut Assignment| {
            for owners in a.iter_mut() {
                owners.retain(|&o| o != i);
                for o in owners.iter_mut() {
                    if *o > i {
                        *o -= 1;
                    }
                }
            }
        };
        fix(&mut self.assignment);
        if let Some(p) = &mut self.previous {
            fix(p);
            if p.iter().all(|o| o.is_empty()) {
                self.previous = None;
            }
        }
    }

    /// Check the invariants of the module documentation.
    pub fn validate(&self) -> Result<(), LayoutError> {
        let bad = |m: String| Err(LayoutError::Corrupt(m));
        if self.format != FORMAT_VERSION {
            return Err(LayoutError::UnsupportedFormat {
                found: self.format,
                supported: FORMAT_VERSION,
            });
        }
        if self.replicas == 0
            || self.write_quorum == 0
            || self.read_quorum == 0
            || self.write_quorum > self.replicas
            || self.read_quorum > self.replicas
        {
            return bad(format!(
                "replicas {} with quorums {}/{}",
                self.replicas, self.write_quorum, self.read_quorum
            ));
        }
        if self.nodes.len() > usize::from(NodeIdx::MAX) {
            return bad(format!("{} nodes", self.nodes.len()));
        }
        for (k, n) in self.nodes.iter().enumerate() {
            check_node(n)?;
            if self.nodes[..k]
                .iter()
                .any(|m| m.name == n.name || m.addr == n.addr)
            {
                return Err(LayoutError::DuplicateNode(n.name.clone()));
            }
        }
        let check = |a: &Assignment, what: &str| -> Result<(), LayoutError> {
            if a.len() != PARTITIONS {
                return bad(format!(
                    "{what} has {} partitions, not {PARTITIONS}",
                    a.len()
                ));
            }
            for (p, owners) in a.iter().enumerate() {
                for (k, &o) in owners.iter().enumerate() {
                    if usize::from(o) >= self.nodes.len() || owners[..k].contains(&o) {
                        return bad(format!("{what}: partition {p} has owners {owners:?}"));
                    }
                }
            }
            Ok(())
        };
        check(&self.assignment, "assignment")?;
        if let Some(p) = &self.previous {
            check(p, "previous assignment")?;
        }
        Ok(())
    }

    /// The layout as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a layout always serializes")
    }

    /// Read and validate a layout written by [`Layout::to_json`].
    pub fn from_json(s: &str) -> Result<Layout, LayoutError> {
        let v: serde_json::Value =
            serde_json::from_str(s).map_err(|e| LayoutError::Corrupt(e.to_string()))?;
        // Check the format first, so a newer layout gets a clear error, not a field error.
        let format = v.get("format").and_then(|f| f.as_u64()).unwrap_or(0);
        if format != u64::from(FORMAT_VERSION) {
            return Err(LayoutError::UnsupportedFormat {
                found: u32::try_from(format).unwrap_or(u32::MAX),
                supported: FORMAT_VERSION,
            });
        }
        let l: Layout =
            serde_json::from_value(v).map_err(|e| LayoutError::Corrupt(e.to_string()))?;
        l.validate()?;
        Ok(l)
    }
}

fn check_node(n: &Node) -> Result<(), LayoutError> {
    let bad = |reason: &str| {
        Err(LayoutError::InvalidNode {
            name: n.name.clone(),
            reason: reason.into(),
        })
    };
    if n.name.is_empty()
        || n.name.len() > 128
        || n.name.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return bad("a name is 1-128 characters without spaces");
    }
    if n.addr.parse::<std::net::SocketAddr>().is_err() && !n.addr.contains(':') {
        return bad("the address must be host:port");
    }
    if n.zone.is_empty() {
        return bad("the zone must not be empty");
    }
    Ok(())
}
