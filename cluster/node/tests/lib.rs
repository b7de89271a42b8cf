//! Integration tests of the server node: the example configuration, and the memcached
//! protocols against a server on 127.0.0.1 port 0.

mod config;
mod memcached;
mod native;
mod sim;
