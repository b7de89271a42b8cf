//! Wire protocols of a k2hdkc node: the memcached text, meta and binary protocols and the
//! versioned native protocol. Parsers here never panic on hostile input (issue 3).

pub mod memcached;
pub mod native;
