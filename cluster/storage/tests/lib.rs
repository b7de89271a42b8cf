//! Integration tests of the storage engine (one test binary for the crate):
//! - `conformance`: one suite run against every engine;
//! - `model`: random operation sequences compared with a simple model (proptest);
//! - `durability`: restart, compaction, torn tails, corruption, archives, the hook;
//! - `crash`: a child process writing with `fsync = always` is killed with SIGKILL many times.

mod conformance;
mod crash;
mod durability;
mod harness;
mod model;
