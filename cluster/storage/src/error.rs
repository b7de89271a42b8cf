//! The storage error type. Every failure a caller can act on has its own variant, in the spirit
//! of K2HDKC's result sub-codes (NODATA, NOTSAMEVAL, NOTSAMEDATATYPE, ...). Outcomes that are
//! normal answers of an operation (an `add` on an existing key, a cas mismatch) are *not*
//! errors: they are returned as [`crate::SetOutcome`] values, as memcached does.

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a value of a given size exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The key length limit (65,535 bytes).
    Key,
    /// The configured maximum value size.
    Value,
}

/// Errors of the storage engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key (or queue, or counter) does not exist.
    #[error("no such key")]
    NotFound,
    /// A compare-and-set saw a different current value.
    #[error("current value is not the expected one")]
    NotSameValue,
    /// The record holds a different kind of data than the operation works on.
    #[error("record is a {found}, operation needs a {expected}")]
    NotSameType {
        /// What the operation needs.
        expected: &'static str,
        /// What the record holds.
        found: &'static str,
    },
    /// A memcached-style incr/decr on a value that is not a decimal number.
    #[error("cannot increment or decrement non-numeric value")]
    NotNumeric,
    /// A key or value is over its limit.
    #[error("{what:?} of {size} bytes is over the limit of {max} bytes")]
    TooLarge {
        /// Which limit.
        what: Limit,
        /// The offered size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The value is encrypted and no pass phrase given or registered decrypts it.
    #[error("bad or missing pass phrase")]
    BadPassPhrase,
    /// A caller-supplied argument is out of range or malformed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Persisted or imported data failed its checks.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The data was written by a newer, unknown format version.
    #[error("unsupported format version {found} in {what} (this build reads up to {supported})")]
    UnsupportedVersion {
        /// Which file kind.
        what: &'static str,
        /// Version found.
        found: u16,
        /// Highest version this build reads.
        supported: u16,
    },
    /// A change-feed reader asked for changes older than the feed still holds.
    #[error("change feed starts at {oldest}; resynchronise from a state scan")]
    FeedTruncated {
        /// Oldest sequence number still held.
        oldest: u64,
    },
    /// Another process holds the data directory.
    #[error("data directory {0} is in use by another process")]
    Locked(PathBuf),
    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What failed.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The crypto library failed (not a wrong pass phrase).
    #[error("crypto: {0}")]
    Crypto(String),
    /// The store was closed, or a previous fatal write error poisoned it.
    #[error("store is closed or failed: {0}")]
    Closed(String),
}

impl Error {
    /// Wrap an I/O error with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// A short stable code, for wire formats and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Error::NotFound => "not_found",
            Error::NotSameValue => "not_same_value",
            Error::NotSameType { .. } => "not_same_type",
            Error::NotNumeric => "not_numeric",
            Error::TooLarge { .. } => "too_large",
            Error::BadPassPhrase => "bad_pass_phrase",
            Error::InvalidArgument(_) => "invalid_argument",
            Error::Corrupt(_) => "corrupt",
            Error::UnsupportedVersion { .. } => "unsupported_version",
            Error::FeedTruncated { .. } => "feed_truncated",
            Error::Locked(_) => "locked",
            Error::Io { .. } => "io",
            Error::Crypto(_) => "crypto",
            Error::Closed(_) => "closed",
        }
    }
}

impl From<openssl::error::ErrorStack> for Error {
    fn from(e: openssl::error::ErrorStack) -> Self {
        Error::Crypto(e.to_string())
    }
}
