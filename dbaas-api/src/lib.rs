//! The Trove v1.0 compatible control plane and the K2HR3-style service.
//!
//! Layers, each depending only on those above it: [`config`] (the binary's one
//! configuration), [`error`] (Trove faults), [`model`] (the stored objects and the fixed
//! catalog), [`store`] (sqlx, the only SQL), [`compute`] and [`openstack`] (where hosts come from), [`backup_store`] (where backups are kept),
//! [`plane`] (K2HR3 objects, guest RPC, persisted tasks), [`api`] (the Trove REST API),
//! [`server`] (wiring it all together), and [`cli`]/[`client`] (the subcommands). The K2HR3
//! service itself is the `k2hdkc-k2hr3` crate.

pub mod api;
pub mod backup_store;
pub mod cli;
pub mod client;
pub mod compute;
pub mod config;
pub mod error;
pub mod model;
pub mod openstack;
pub mod plane;
pub mod server;
pub mod store;
pub mod userdata;
