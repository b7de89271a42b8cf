//! Errors of layout changes and of reading a serialized layout.

/// Why a layout change or a serialized layout was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// No node of this name is in the layout.
    #[error("unknown node {0:?}")]
    UnknownNode(String),
    /// A node of this name (or address) is already in the layout.
    #[error("node {0:?} is already in the layout")]
    DuplicateNode(String),
    /// Replicas and quorums that cannot work together.
    #[error("invalid replication: {0}")]
    InvalidReplication(String),
    /// A node description that cannot be used.
    #[error("invalid node {name:?}: {reason}")]
    InvalidNode {
        /// The node.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The change would leave no node in service.
    #[error("no node would be in service")]
    NoNodes,
    /// The change needs the data movement in progress to finish first.
    #[error("a data movement is in progress (layout version {0}); wait for it or complete it")]
    Busy(u64),
    /// The change makes no difference.
    #[error("nothing to change: {0}")]
    NoChange(String),
    /// A serialized layout that is not readable or not consistent.
    #[error("bad layout: {0}")]
    Corrupt(String),
    /// A serialized layout in a format this build does not read.
    #[error("layout format {found} is not supported (this build reads format {supported})")]
    UnsupportedFormat {
        /// Format found.
        found: u32,
        /// Format this build reads.
        supported: u32,
    },
}
