//! The k2hdkc guest agent: runs on every node host of a DBaaS cluster.
//!
//! [`config`] is the one configuration; [`supervisor`] keeps the host's `k2hdkc server`
//! running; [`guest`] holds the Trove guest API methods, the service status, the K2HR3
//! follower that keeps the cluster file current and the heartbeats; [`oslo`] and [`secure`]
//! are the oslo.messaging envelope and Trove's secure RPC; [`transport`] moves requests in
//! and casts out, over HTTP (`direct`, the local driver) or RabbitMQ (`amqp`, real Trove).

pub mod config;
pub mod guest;
pub mod oslo;
pub mod secure;
pub mod supervisor;
pub mod transport;

pub use config::Config;
