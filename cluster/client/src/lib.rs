//! Async client library for k2hdkc nodes (native protocol, pooling, pipelining) and, later, the
//! cluster-aware router (issues 3 and 4).
