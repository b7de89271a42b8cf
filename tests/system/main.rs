//! System tests across processes, with real binaries on 127.0.0.1.

mod cluster;
mod deploy;
mod differential;
mod k2hr3;
mod memcapable;
mod multihost;
mod oslo;
mod python_clients;
mod server_crash;
mod tools;
mod trove;
