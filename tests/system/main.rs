//! System tests across processes, with real binaries on 127.0.0.1.

mod memcapable;
mod server_crash;
mod tools;
