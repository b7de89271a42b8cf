//! The network seam: how connections are made and accepted.
//!
//! Everything in the cluster that talks to another process (clients, peers, tools, and the
//! servers' listeners) goes through a [`Transport`]. [`Tcp`] is the real network; the
//! deterministic simulation in `cluster/node/tests` plugs in a simulated one, so the same
//! replication and membership code runs there under simulated time, crashes and partitions.
//!
//! Invariant: a [`BoxStream`] is a reliable, ordered byte stream (TCP semantics); TLS, when
//! configured, runs on top of whatever stream the transport gives.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

/// The reading half of a stream.
pub type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The writing half of a stream.
pub type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// A connected byte stream.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {
    /// Split into a reading and a writing half: owned halves for TCP (no lock between the
    /// reading and the writing task), a shared lock for other streams.
    fn split(self: Box<Self>) -> (ReadHalf, WriteHalf);
    /// The TCP socket underneath, when there is one (for socket options).
    fn tcp(&self) -> Option<&tokio::net::TcpStream>;
}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {
    fn tcp(&self) -> Option<&tokio::net::TcpStream> {
        (self as &dyn std::any::Any).downcast_ref::<tokio::net::TcpStream>()
    }

    fn split(self: Box<Self>) -> (ReadHalf, WriteHalf) {
        let any: Box<dyn std::any::Any> = self;
        match any.downcast::<tokio::net::TcpStream>() {
            Ok(t) => {
                let (r, w) = t.into_split();
                (Box::new(r), Box::new(w))
            }
            Err(any) => {
                let t = any.downcast::<T>().expect("the stream's own type");
                let (r, w) = tokio::io::split(*t);
                (Box::new(r), Box::new(w))
            }
        }
    }
}

/// A boxed [`Stream`].
pub type BoxStream = Box<dyn Stream>;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Makes connections and listeners.
pub trait Transport: Send + Sync + 'static {
    /// Connect to `addr`.
    fn connect(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<BoxStream>>;
    /// Listen on `addr` (port 0: any free port).
    fn bind(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn Listener>>>;
    /// Whether blocking work (opening a store, scanning it) should run in place instead of
    /// on a blocking thread: a simulation must not let real threads decide the order of
    /// events.
    fn inline_blocking(&self) -> bool {
        false
    }
}

/// Accepts connections.
pub trait Listener: Send + 'static {
    /// The next connection and its peer address.
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxStream, SocketAddr)>>;
    /// The bound address.
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// A shared transport.
#[derive(Clone)]
pub struct Net(pub Arc<dyn Transport>);

impl fmt::Debug for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Net")
    }
}

impl Default for Net {
    fn default() -> Self {
        Net(Arc::new(Tcp))
    }
}

impl std::ops::Deref for Net {
    type Target = dyn Transport;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

/// The real network: tokio TCP, with Nagle off (requests are small and pipelined).
#[derive(Debug, Clone, Copy, Default)]
pub struct Tcp;

struct TcpListener(tokio::net::TcpListener);

impl Transport for Tcp {
    fn connect(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<BoxStream>> {
        Box::pin(async move {
            let s = tokio::net::TcpStream::connect(addr).await?;
            let _ = s.set_nodelay(true);
            Ok(Box::new(s) as BoxStream)
        })
    }

    fn bind(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn Listener>>> {
        Box::pin(async move {
            let l = tokio::net::TcpListener::bind(addr).await?;
            Ok(Box::new(TcpListener(l)) as Box<dyn Listener>)
        })
    }
}

impl Listener for TcpListener {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxStream, SocketAddr)>> {
        Box::pin(async move {
            let (s, peer) = self.0.accept().await?;
            let _ = s.set_nodelay(true);
            Ok((Box::new(s) as BoxStream, peer))
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}
