//! The Trove v1.0 compatible control plane and the K2HR3-style service.
//!
//! [`config`] is the binary's one configuration; [`cli`] holds the subcommands, each a `run`
//! the thin `main.rs` calls. The K2HR3 service itself is the `k2hdkc-k2hr3` crate.

pub mod cli;
pub mod config;
