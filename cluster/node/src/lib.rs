//! A k2hdkc server node: the memcached front-end (text, meta and binary protocols, detected per
//! connection) and the native front-end over the storage engine, an admin HTTP listener, limits
//! and clean shutdown; cluster membership, routing and replication (`cluster`), and the
//! CHMPX-style cluster description (`chmpx`).

pub mod access;
pub mod admin;
pub mod chmpx;
pub mod cluster;
pub mod config;
pub mod memcached;
pub mod meta;
pub mod metrics;
pub mod native;
pub(crate) mod routing;
pub mod server;

pub use config::{ConfigError, ServerConfig, StorageMode};
pub use server::{Env, Server, ServerError, run};
