//! Async client for k2hdkc nodes over the native protocol: a pool of multiplexed connections,
//! pipelining (concurrent calls share connections and writes; [`Pipeline`] sends a batch in one
//! write), per-request timeouts and a typed method for every operation of the data model.
//!
//! ```no_run
//! # async fn demo() -> Result<(), k2hdkc_client::ClientError> {
//! use k2hdkc_client::{Client, ClientConfig, Expiry, WriteOptions};
//!
//! let client = Client::connect(ClientConfig::new("127.0.0.1:8020".parse().unwrap())).await?;
//! client.set(b"greeting", b"hello").await?;
//! assert_eq!(client.get(b"greeting").await?.unwrap().value, b"hello");
//!
//! // Conditional and expiring writes.
//! let opts = WriteOptions { expire: Expiry::After(60), ..WriteOptions::add() };
//! client.set_with(b"session", b"token", &opts).await?;
//!
//! // Sub-keys, queues and counters.
//! client.add_subkey(b"user", b"user/1", Some(b"alice")).await?;
//! client.queue_push(b"jobs", b"job-1").await?;
//! client.counter_init(b"hits", 64, 0).await?;
//! client.counter_add(b"hits", 64, 1).await?;
//!
//! // Many requests, one round trip.
//! let mut p = client.pipeline();
//! for i in 0..100 {
//!     p.set(format!("k{i}").as_bytes(), b"v");
//! }
//! for r in p.run().await? {
//!     r?;
//! }
//! # Ok(()) }
//! ```

mod conn;
pub mod tls;
pub mod transport;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use k2hdkc_proto::native::{self as wire};
pub use k2hdkc_proto::native::{Args, Expiry, Op, Reply, Status};
pub use tls::{TlsAcceptor, TlsConnector, TlsFiles};
use tokio::sync::oneshot;
pub use transport::{BoxStream, Listener, Net, Tcp, Transport};

use conn::{Batch, Conn};

/// Errors of the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached.
    #[error("cannot connect to {addr}: {message}")]
    Connect {
        /// Server address.
        addr: SocketAddr,
        /// Why.
        message: String,
        /// The server's host refused the connection (nothing listens on the port: its
        /// process is gone), rather than not answering in time (a link or host that is
        /// down) or failing the TLS handshake.
        refused: bool,
    },
    /// No reply within the request timeout (the request may still take effect).
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The connection failed while the request was in flight.
    #[error("connection error: {0}")]
    Io(String),
    /// The connection was closed before the reply came.
    #[error("connection closed")]
    Closed,
    /// The server sent something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server refused the request.
    #[error("{status}: {message}")]
    Server {
        /// Result code.
        status: Status,
        /// The server's explanation.
        message: String,
    },
    /// A bad argument, found before sending.
    #[error("invalid argument: {0}")]
    Invalid(String),
}

impl ClientError {
    /// The server's status, for refusals.
    pub fn status(&self) -> Option<Status> {
        match self {
            ClientError::Server { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the request may be retried on another connection or node: the request
    /// never reached a server, or the server said it was unavailable.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ClientError::Connect { .. } | ClientError::Closed | ClientError::Io(_)
        ) || self.status() == Some(Status::Unavailable)
    }
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Server native-protocol address.
    pub addr: SocketAddr,
    /// Connections in the pool (each is multiplexed).
    pub connections: usize,
    /// Time allowed to connect.
    pub connect_timeout: Duration,
    /// Time allowed for each reply.
    pub request_timeout: Duration,
    /// Largest reply accepted.
    pub max_reply_bytes: usize,
    /// TLS (mutual, with the cluster's CA), when the server requires it.
    pub tls: Option<TlsConnector>,
    /// How connections are made (TCP unless a simulation says otherwise).
    pub net: Net,
}

impl ClientConfig {
    /// Defaults for `addr`: 2 connections, 3 s to connect, 5 s per request, 80 MiB replies.
    pub fn new(addr: SocketAddr) -> ClientConfig {
        ClientConfig {
            addr,
            connections: 2,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(5),
            max_reply_bytes: 80 << 20,
            tls: None,
            net: Net::default(),
        }
    }
}

/// A value read with its attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The value.
    pub value: Vec<u8>,
    /// Client flags.
    pub flags: u32,
    /// cas unique, for [`WriteOptions::cas`].
    pub cas: u64,
    /// Expiry: [`Expiry::Never`] or [`Expiry::At`].
    pub expire: Expiry,
}

/// All attributes of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attrs {
    /// Kind of data ("value", "8-bit counter" .. "64-bit counter").
    pub kind: String,
    /// Client flags.
    pub flags: u32,
    /// cas unique.
    pub cas: u64,
    /// Version: HLC timestamp and origin node.
    pub version: (u64, u32),
    /// Expiry.
    pub expire: Expiry,
    /// Creation time, unix seconds.
    pub created: u32,
    /// Last modification, unix milliseconds.
    pub modified_ms: u64,
    /// Stored encrypted.
    pub encrypted: bool,
    /// Stored length.
    pub stored_len: u64,
    /// Number of sub-keys.
    pub subkeys: u64,
    /// Number of history entries.
    pub history: u64,
}

/// An item taken from or seen in a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueItem {
    /// The key of a key-queue item.
    pub key: Option<Vec<u8>>,
    /// The value.
    pub value: Vec<u8>,
}

/// One page of a key scan.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScanPage {
    /// Keys in ascending byte order.
    pub keys: Vec<Vec<u8>>,
    /// Cursor of the next page; `None` at the end.
    pub next: Option<Vec<u8>>,
}

/// How a write treats an existing value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SetMode {
    /// Unconditionally.
    #[default]
    Set = 0,
    /// Only if absent.
    Add = 1,
    /// Only if present.
    Replace = 2,
    /// Append to an existing value.
    Append = 3,
    /// Prepend to an existing value.
    Prepend = 4,
}

/// Options of a write.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// Condition on the existing value.
    pub mode: SetMode,
    /// Client flags (`None` keeps the current ones).
    pub flags: Option<u32>,
    /// Expiry.
    pub expire: Expiry,
    /// Pass phrase: the value is encrypted with it.
    pub pass: Option<Vec<u8>>,
    /// Force encryption on or off (`None`: the server's default).
    pub encrypt: Option<bool>,
    /// Only write if the cas unique is still this.
    pub cas: Option<u64>,
}

impl WriteOptions {
    /// Only if absent.
    pub fn add() -> Self {
        WriteOptions {
            mode: SetMode::Add,
            ..Default::default()
        }
    }

    /// Only if present.
    pub fn replace() -> Self {
        WriteOptions {
            mode: SetMode::Replace,
            ..Default::default()
        }
    }

    /// Only if unchanged since it was read with this cas.
    pub fn cas(cas: u64) -> Self {
        WriteOptions {
            cas: Some(cas),
            ..Default::default()
        }
    }

    fn apply<'a>(&'a self, a: &mut Args<'a>) {
        a.mode = (self.mode != SetMode::Set).then_some(self.mode as u8);
        a.flags = self.flags;
        a.expire = (self.expire != Expiry::Default).then_some(self.expire);
        a.pass = self.pass.as_deref();
        a.encrypt = self.encrypt;
        a.cas = self.cas;
    }
}

struct Inner {
    cfg: ClientConfig,
    slots: Vec<tokio::sync::Mutex<Option<Arc<Conn>>>>,
    next_slot: AtomicUsize,
    next_id: AtomicU32,
}

/// A pooled, pipelining client of one node. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.inner.cfg.addr)
            .finish()
    }
}

fn key_args(key: &[u8]) -> Args<'_> {
    Args {
        key: Some(key),
        ..Default::default()
    }
}

fn refused(r: &Reply) -> ClientError {
    ClientError::Server {
        status: r.status().unwrap_or(Status::ServerError),
        message: r
            .message
            .clone()
            .unwrap_or_else(|| format!("status {}", r.status)),
    }
}

/// `Ok(None)` for `NotFound`, the reply for `Ok`, an error otherwise.
fn found(r: Reply) -> Result<Option<Reply>, ClientError> {
    match r.status() {
        Some(Status::Ok) => Ok(Some(r)),
        Some(Status::NotFound) => Ok(None),
        _ => Err(refused(&r)),
    }
}

fn ok(r: Reply) -> Result<Reply, ClientError> {
    match r.status() {
        Some(Status::Ok) => Ok(r),
        _ => Err(refused(&r)),
    }
}

fn need_count(r: &Reply) -> Result<u64, ClientError> {
    r.count
        .ok_or_else(|| ClientError::Protocol("reply without a count".into()))
}

fn item_of(mut r: Reply) -> Result<Item, ClientError> {
    Ok(Item {
        value: r
            .values
            .pop()
            .ok_or_else(|| ClientError::Protocol("reply without a value".into()))?,
        flags: r.flags.unwrap_or(0),
        cas: r.cas.unwrap_or(0),
        expire: r.expire.unwrap_or(Expiry::Never),
    })
}

impl Client {
    /// Connect the first pooled connection (the rest connect on first use).
    pub async fn connect(cfg: ClientConfig) -> Result<Client, ClientError> {
        let c = Client::lazy(cfg);
        c.conn().await?;
        Ok(c)
    }

    /// A client that connects on first use (and reconnects after a failure): for peers that
    /// may be down when the client is made.
    pub fn lazy(cfg: ClientConfig) -> Client {
        let n = cfg.connections.max(1);
        Client {
            inner: Arc::new(Inner {
                slots: (0..n).map(|_| tokio::sync::Mutex::new(None)).collect(),
                cfg,
                next_slot: AtomicUsize::new(0),
                next_id: AtomicU32::new(1),
            }),
        }
    }

    /// The server address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.cfg.addr
    }

    /// A connection of the pool, within the connect timeout in all (waiting for the slot
    /// included: callers queue there while another one connects to a peer that does not
    /// answer). Nothing is sent before this returns, so a timeout here is safe to retry
    /// elsewhere.
    async fn conn(&self) -> Result<Arc<Conn>, ClientError> {
        let cfg = &self.inner.cfg;
        let i = self.inner.next_slot.fetch_add(1, Ordering::Relaxed) % self.inner.slots.len();
        // The usual case, without a timer: the slot is free and its connection healthy.
        if let Ok(slot) = self.inner.slots[i].try_lock()
            && let Some(c) = slot.as_ref()
            && !c.is_dead()
            && !c.stuck(cfg.request_timeout)
        {
            return Ok(c.clone());
        }
        tokio::time::timeout(cfg.connect_timeout, self.conn_slot(i))
            .await
            .map_err(|_| ClientError::Connect {
                addr: cfg.addr,
                message: format!("no connection within {:?}", cfg.connect_timeout),
                refused: false,
            })?
    }

    async fn conn_slot(&self, i: usize) -> Result<Arc<Conn>, ClientError> {
        let mut slot = self.inner.slots[i].lock().await;
        let cfg = &self.inner.cfg;
        if let Some(c) = slot.as_ref() {
            if c.stuck(cfg.request_timeout) {
                // Replies come in order: nothing more will come on this one (a stopped
                // peer, a link that drops silently). Start over on a new connection.
                c.kill(&ClientError::Timeout(cfg.request_timeout));
            } else if !c.is_dead() {
                return Ok(c.clone());
            }
        }
        let c = Conn::connect(
            cfg.addr,
            cfg.max_reply_bytes,
            cfg.tls.as_ref(),
            &cfg.net,
            cfg.request_timeout,
        )
        .await?;
        let c = Arc::new(c);
        *slot = Some(c.clone());
        Ok(c)
    }

    fn id(&self) -> u32 {
        // 0 is kept for replies the server cannot attribute.
        loop {
            let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                return id;
            }
        }
    }

    /// Send one request and wait for its reply, whatever its status.
    pub async fn request(&self, op: Op, args: &Args<'_>) -> Result<Reply, ClientError> {
        let mut p = self.pipeline();
        p.push(op, args);
        p.run().await?.pop().expect("one reply per request")
    }

    /// Start a batch of requests sent in one write.
    pub fn pipeline(&self) -> Pipeline<'_> {
        Pipeline {
            client: self,
            bytes: Vec::new(),
            ids: Vec::new(),
        }
    }

    /// The server's version text and protocol version.
    pub async fn hello(&self) -> Result<(String, u64), ClientError> {
        let r = ok(self.request(Op::Hello, &Args::default()).await?)?;
        Ok((r.message.unwrap_or_default(), r.count.unwrap_or(0)))
    }

    /// Server statistics as JSON.
    pub async fn stats(&self) -> Result<serde_json::Value, ClientError> {
        let r = ok(self.request(Op::Stats, &Args::default()).await?)?;
        serde_json::from_str(r.message.as_deref().unwrap_or("{}"))
            .map_err(|e| ClientError::Protocol(format!("bad stats JSON: {e}")))
    }

    /// Read a value.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Item>, ClientError> {
        self.get_with_pass(key, None).await
    }

    /// Read a value encrypted with a pass phrase.
    pub async fn get_with_pass(
        &self,
        key: &[u8],
        pass: Option<&[u8]>,
    ) -> Result<Option<Item>, ClientError> {
        let a = Args {
            pass,
            ..key_args(key)
        };
        found(self.request(Op::Get, &a).await?)?
            .map(item_of)
            .transpose()
    }

    /// All attributes of a key.
    pub async fn attrs(&self, key: &[u8]) -> Result<Option<Attrs>, ClientError> {
        let Some(r) = found(self.request(Op::Attrs, &key_args(key)).await?)? else {
            return Ok(None);
        };
        Ok(Some(Attrs {
            kind: r.kind.unwrap_or_default(),
            flags: r.flags.unwrap_or(0),
            cas: r.cas.unwrap_or(0),
            version: r.versions.first().copied().unwrap_or((0, 0)),
            expire: r.expire.unwrap_or(Expiry::Never),
            created: r.created.unwrap_or(0),
            modified_ms: r.modified.unwrap_or(0),
            encrypted: r.encrypted.unwrap_or(false),
            stored_len: r.stored_len.unwrap_or(0),
            subkeys: r.subkey_count.unwrap_or(0),
            history: r.history_count.unwrap_or(0),
        }))
    }

    /// Read `len` bytes (to the end when `None`) from `offset`.
    pub async fn read_at(
        &self,
        key: &[u8],
        offset: u64,
        len: Option<u64>,
        pass: Option<&[u8]>,
    ) -> Result<Option<Vec<u8>>, ClientError> {
        let a = Args {
            offset: Some(offset),
            length: len,
            pass,
            ..key_args(key)
        };
        Ok(found(self.request(Op::ReadAt, &a).await?)?.and_then(|mut r| r.values.pop()))
    }

    /// Previous versions kept for a key, oldest first.
    pub async fn history(
        &self,
        key: &[u8],
        pass: Option<&[u8]>,
    ) -> Result<Vec<((u64, u32), Vec<u8>)>, ClientError> {
        let a = Args {
            pass,
            ..key_args(key)
        };
        let r = ok(self.request(Op::History, &a).await?)?;
        Ok(r.versions.into_iter().zip(r.values).collect())
    }

    /// Write a value unconditionally; returns the new cas unique.
    pub async fn set(&self, key: &[u8], value: &[u8]) -> Result<u64, ClientError> {
        self.set_with(key, value, &WriteOptions::default()).await
    }

    /// Write a value with options; a failed condition is a [`ClientError::Server`] with
    /// `NotStored`, `Exists` or `NotFound`.
    pub async fn set_with(
        &self,
        key: &[u8],
        value: &[u8],
        opts: &WriteOptions,
    ) -> Result<u64, ClientError> {
        let mut a = Args {
            value: Some(value),
            ..key_args(key)
        };
        opts.apply(&mut a);
        let r = ok(self.request(Op::Set, &a).await?)?;
        Ok(r.cas.unwrap_or(0))
    }

    /// Overwrite part of a value at `offset` (zero-filled if it is shorter).
    pub async fn write_at(
        &self,
        key: &[u8],
        offset: u64,
        data: &[u8],
        opts: &WriteOptions,
    ) -> Result<u64, ClientError> {
        let mut a = Args {
            value: Some(data),
            ..key_args(key)
        };
        opts.apply(&mut a);
        a.mode = None;
        a.offset = Some(offset);
        let r = ok(self.request(Op::WriteAt, &a).await?)?;
        Ok(r.cas.unwrap_or(0))
    }

    /// Delete a key; `false` when there was none.
    pub async fn delete(&self, key: &[u8]) -> Result<bool, ClientError> {
        Ok(found(self.request(Op::Delete, &key_args(key)).await?)?.is_some())
    }

    /// Delete a key only if its cas unique is still `cas`.
    pub async fn delete_cas(&self, key: &[u8], cas: u64) -> Result<bool, ClientError> {
        let a = Args {
            cas: Some(cas),
            ..key_args(key)
        };
        Ok(found(self.request(Op::Delete, &a).await?)?.is_some())
    }

    /// Delete a key and every sub-key below it; returns how many keys went.
    pub async fn delete_tree(&self, key: &[u8]) -> Result<u64, ClientError> {
        let r = ok(self.request(Op::DeleteTree, &key_args(key)).await?)?;
        need_count(&r)
    }

    /// Change a key's expiry; `false` when there is no such key.
    pub async fn touch(&self, key: &[u8], expire: Expiry) -> Result<bool, ClientError> {
        let a = Args {
            expire: Some(expire),
            ..key_args(key)
        };
        Ok(found(self.request(Op::Touch, &a).await?)?.is_some())
    }

    /// Change a key's expiry and read it.
    pub async fn get_and_touch(
        &self,
        key: &[u8],
        expire: Expiry,
    ) -> Result<Option<Item>, ClientError> {
        let a = Args {
            expire: Some(expire),
            want_value: Some(true),
            ..key_args(key)
        };
        found(self.request(Op::Touch, &a).await?)?
            .map(item_of)
            .transpose()
    }

    /// memcached-style decimal increment; `None` when absent.
    pub async fn incr(&self, key: &[u8], delta: u64) -> Result<Option<u64>, ClientError> {
        self.arith(Op::Incr, key, delta).await
    }

    /// memcached-style decimal decrement (stops at 0); `None` when absent.
    pub async fn decr(&self, key: &[u8], delta: u64) -> Result<Option<u64>, ClientError> {
        self.arith(Op::Decr, key, delta).await
    }

    async fn arith(&self, op: Op, key: &[u8], delta: u64) -> Result<Option<u64>, ClientError> {
        let a = Args {
            delta: Some(delta),
            ..key_args(key)
        };
        found(self.request(op, &a).await?)?
            .map(|r| need_count(&r))
            .transpose()
    }

    /// The sub-keys of a key; `None` when the key is absent.
    pub async fn subkeys(&self, key: &[u8]) -> Result<Option<Vec<Vec<u8>>>, ClientError> {
        Ok(found(self.request(Op::Subkeys, &key_args(key)).await?)?.map(|r| r.children))
    }

    /// Replace a key's sub-key list.
    pub async fn set_subkeys(&self, key: &[u8], children: &[&[u8]]) -> Result<(), ClientError> {
        let a = Args {
            children: children.to_vec(),
            ..key_args(key)
        };
        ok(self.request(Op::SetSubkeys, &a).await?).map(drop)
    }

    /// Empty a key's sub-key list; `false` when the key is absent.
    pub async fn clear_subkeys(&self, key: &[u8]) -> Result<bool, ClientError> {
        Ok(found(self.request(Op::ClearSubkeys, &key_args(key)).await?)?.is_some())
    }

    /// Add `child` under `parent`, writing the child's value in the same atomic change.
    pub async fn add_subkey(
        &self,
        parent: &[u8],
        child: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), ClientError> {
        self.add_subkey_with(parent, child, value, &WriteOptions::default())
            .await
    }

    /// [`Client::add_subkey`] with write options for the child.
    pub async fn add_subkey_with(
        &self,
        parent: &[u8],
        child: &[u8],
        value: Option<&[u8]>,
        opts: &WriteOptions,
    ) -> Result<(), ClientError> {
        let mut a = Args {
            children: vec![child],
            value,
            ..key_args(parent)
        };
        opts.apply(&mut a);
        a.mode = None;
        a.cas = None;
        ok(self.request(Op::AddSubkey, &a).await?).map(drop)
    }

    /// Remove `child` from `parent`'s list (and delete it with `delete_child`); `false` when
    /// it was not listed.
    pub async fn remove_subkey(
        &self,
        parent: &[u8],
        child: &[u8],
        delete_child: bool,
    ) -> Result<bool, ClientError> {
        let a = Args {
            children: vec![child],
            delete_child: Some(delete_child),
            ..key_args(parent)
        };
        Ok(found(self.request(Op::RemoveSubkey, &a).await?)?.is_some())
    }

    /// Rename a key, updating `parent`'s sub-key list if given.
    pub async fn rename(
        &self,
        from: &[u8],
        to: &[u8],
        parent: Option<&[u8]>,
        pass: Option<&[u8]>,
    ) -> Result<(), ClientError> {
        let a = Args {
            to: Some(to),
            parent,
            pass,
            ..key_args(from)
        };
        ok(self.request(Op::Rename, &a).await?).map(drop)
    }

    /// Push at the back of a queue (FIFO); returns the queue length.
    pub async fn queue_push(&self, queue: &[u8], value: &[u8]) -> Result<u64, ClientError> {
        self.queue_push_with(queue, None, value, true, Expiry::Default, None)
            .await
    }

    /// Push with every option: a key-queue item key, back (`fifo`) or front, expiry, pass.
    pub async fn queue_push_with(
        &self,
        queue: &[u8],
        item_key: Option<&[u8]>,
        value: &[u8],
        fifo: bool,
        expire: Expiry,
        pass: Option<&[u8]>,
    ) -> Result<u64, ClientError> {
        let a = Args {
            value: Some(value),
            item_key,
            fifo: Some(fifo),
            expire: (expire != Expiry::Default).then_some(expire),
            pass,
            ..key_args(queue)
        };
        need_count(&ok(self.request(Op::QueuePush, &a).await?)?)
    }

    /// Take the front item; `None` when the queue is empty.
    pub async fn queue_pop(
        &self,
        queue: &[u8],
        pass: Option<&[u8]>,
    ) -> Result<Option<QueueItem>, ClientError> {
        self.queue_take(Op::QueuePop, queue, pass).await
    }

    /// Look at the front item without taking it.
    pub async fn queue_peek(
        &self,
        queue: &[u8],
        pass: Option<&[u8]>,
    ) -> Result<Option<QueueItem>, ClientError> {
        self.queue_take(Op::QueuePeek, queue, pass).await
    }

    async fn queue_take(
        &self,
        op: Op,
        queue: &[u8],
        pass: Option<&[u8]>,
    ) -> Result<Option<QueueItem>, ClientError> {
        let a = Args {
            pass,
            ..key_args(queue)
        };
        let Some(mut r) = found(self.request(op, &a).await?)? else {
            return Ok(None);
        };
        Ok(Some(QueueItem {
            value: r
                .values
                .pop()
                .ok_or_else(|| ClientError::Protocol("queue item without a value".into()))?,
            key: r.item_key,
        }))
    }

    /// Drop up to `count` items from the front; returns how many went.
    pub async fn queue_remove(&self, queue: &[u8], count: u64) -> Result<u64, ClientError> {
        let a = Args {
            count: Some(count),
            ..key_args(queue)
        };
        need_count(&ok(self.request(Op::QueueRemove, &a).await?)?)
    }

    /// Items in a queue.
    pub async fn queue_len(&self, queue: &[u8]) -> Result<u64, ClientError> {
        need_count(&ok(self.request(Op::QueueLen, &key_args(queue)).await?)?)
    }

    /// Create or overwrite a counter of `width` bits (8, 16, 32, 64).
    pub async fn counter_init(&self, key: &[u8], width: u8, value: u64) -> Result<(), ClientError> {
        let a = Args {
            width: Some(width),
            new: Some(value),
            ..key_args(key)
        };
        ok(self.request(Op::CounterInit, &a).await?).map(drop)
    }

    /// A counter's value; `None` when absent.
    pub async fn counter_get(&self, key: &[u8], width: u8) -> Result<Option<u64>, ClientError> {
        let a = Args {
            width: Some(width),
            ..key_args(key)
        };
        found(self.request(Op::CounterGet, &a).await?)?
            .map(|r| need_count(&r))
            .transpose()
    }

    /// Set a counter to `new` only if it is `old`; `false` if it was something else.
    pub async fn counter_cas(
        &self,
        key: &[u8],
        width: u8,
        old: u64,
        new: u64,
    ) -> Result<bool, ClientError> {
        let a = Args {
            width: Some(width),
            old: Some(old),
            new: Some(new),
            ..key_args(key)
        };
        let r = self.request(Op::CounterCas, &a).await?;
        match r.status() {
            Some(Status::Ok) => Ok(true),
            Some(Status::NotSameValue) => Ok(false),
            _ => Err(refused(&r)),
        }
    }

    /// Add `delta` (negative subtracts, wrapping at the width); returns the new value.
    pub async fn counter_add(&self, key: &[u8], width: u8, delta: i64) -> Result<u64, ClientError> {
        let a = Args {
            width: Some(width),
            delta: Some(delta as u64),
            ..key_args(key)
        };
        need_count(&ok(self.request(Op::CounterAdd, &a).await?)?)
    }

    /// One page of keys starting with `prefix`, after the cursor `after`.
    pub async fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: u32,
    ) -> Result<ScanPage, ClientError> {
        let a = Args {
            prefix: Some(prefix),
            after,
            limit: Some(limit),
            ..Default::default()
        };
        let r = ok(self.request(Op::Scan, &a).await?)?;
        Ok(ScanPage {
            keys: r.keys,
            next: r.next,
        })
    }

    /// Remove every key; returns how many went.
    pub async fn flush_all(&self) -> Result<u64, ClientError> {
        need_count(&ok(self.request(Op::FlushAll, &Args::default()).await?)?)
    }
}

/// A batch of requests sent in one write; replies come back in order.
pub struct Pipeline<'c> {
    client: &'c Client,
    bytes: Vec<u8>,
    ids: Vec<u32>,
}

impl Pipeline<'_> {
    /// Queue any request.
    pub fn push(&mut self, op: Op, args: &Args<'_>) -> &mut Self {
        let id = self.client.id();
        wire::write_request(&mut self.bytes, op, 0, id, args);
        self.ids.push(id);
        self
    }

    /// Queue a plain set.
    pub fn set(&mut self, key: &[u8], value: &[u8]) -> &mut Self {
        self.push(
            Op::Set,
            &Args {
                value: Some(value),
                ..key_args(key)
            },
        )
    }

    /// Queue a get.
    pub fn get(&mut self, key: &[u8]) -> &mut Self {
        self.push(Op::Get, &key_args(key))
    }

    /// Queue a delete.
    pub fn delete(&mut self, key: &[u8]) -> &mut Self {
        self.push(Op::Delete, &key_args(key))
    }

    /// Requests queued.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Send everything and wait for every reply (each with its own status), within the
    /// request timeout.
    pub async fn run(self) -> Result<Vec<Result<Reply, ClientError>>, ClientError> {
        if self.ids.is_empty() {
            return Ok(Vec::new());
        }
        let conn = self.client.conn().await?;
        let mut rxs = Vec::with_capacity(self.ids.len());
        let mut waiters = Vec::with_capacity(self.ids.len());
        for id in self.ids {
            let (tx, rx) = oneshot::channel();
            waiters.push((id, tx, tokio::time::Instant::now()));
            rxs.push(rx);
        }
        conn.send(Batch {
            bytes: self.bytes,
            waiters,
        })?;
        let limit = self.client.inner.cfg.request_timeout;
        let all = async {
            let mut out = Vec::with_capacity(rxs.len());
            for rx in rxs {
                out.push(rx.await.unwrap_or(Err(ClientError::Closed)));
            }
            out
        };
        tokio::time::timeout(limit, all).await.map_err(|_| {
            let e = ClientError::Timeout(limit);
            conn.kill(&e);
            e
        })
    }
}
