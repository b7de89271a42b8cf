//! Server lifecycle: open the store, bind the listeners, serve connections under the limits,
//! and on SIGTERM/SIGINT stop accepting, let connections finish their current batch, then
//! flush and close the store.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k2hdkc_client::{BoxStream, Listener, Net};
use k2hdkc_storage::Store;
use tokio::sync::watch;

use crate::config::{ConfigError, ServerConfig};
use crate::metrics::Metrics;

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store failed to open or close.
    #[error("storage: {0}")]
    Storage(#[from] k2hdkc_storage::Error),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The Unix socket could not be bound (or another server holds it).
    #[error("cannot listen on {}: {source}", path.display())]
    BindSocket {
        /// Socket path.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signal(std::io::Error),
}

/// State shared by every connection.
pub struct Shared {
    /// The node's store.
    pub store: Store,
    /// Counters.
    pub metrics: Metrics,
    /// The configuration in force.
    pub config: ServerConfig,
    /// Whether mutating calls may block on fsync (file mode with fsync=always).
    pub blocking_writes: bool,
    /// Fetch hints and stale / recache marks of the meta protocol.
    pub access: crate::access::Access,
    /// Cluster membership and routing, when the node is part of a cluster.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// TLS of the native listener (mutual, `[cluster.tls]`).
    pub tls: Option<k2hdkc_client::TlsAcceptor>,
    /// TLS of the memcached listener (`[listen.memcached_tls]`).
    pub client_tls: Option<k2hdkc_client::TlsAcceptor>,
    /// Which hosts may connect to the native port (a server node's `SVRNODE`/`SLVNODE`).
    pub gate: Arc<crate::chmpx::Gate>,
    shutting_down: AtomicBool,
    /// Addresses actually bound (port 0 resolved), by listener name.
    bound: std::sync::Mutex<Vec<(&'static str, SocketAddr)>>,
}

impl Shared {
    /// Whether shutdown has begun.
    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// The listeners as JSON.
    pub fn listen_json(&self) -> serde_json::Value {
        let b = self.bound.lock().expect("lock");
        serde_json::Value::Object(
            b.iter()
                .map(|(k, a)| (k.to_string(), a.to_string().into()))
                .collect(),
        )
    }
}

/// A running server.
pub struct Server {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    inline_blocking: bool,
}

impl Server {
    /// Open the store and bind every configured listener.
    pub async fn start(config: ServerConfig) -> Result<Server, ServerError> {
        Server::start_with(config, Env::default()).await
    }

    /// [`Server::start`] on the given network and clock (the real ones, or a simulation's).
    pub async fn start_with(config: ServerConfig, env: Env) -> Result<Server, ServerError> {
        config.validate()?;
        let net = env.net;
        let mut sc = config.store_config()?;
        if let Some(c) = env.clock {
            sc.clock = c;
        }
        if net.inline_blocking() {
            // No background thread in a simulation: expiry and compaction happen on access.
            sc.maintenance_interval = None;
        }
        let blocking_writes = matches!(&sc.engine, k2hdkc_storage::EngineConfig::File(o) if o.fsync == k2hdkc_storage::Fsync::Always)
            || matches!(&sc.engine, k2hdkc_storage::EngineConfig::Temporary { fsync, .. } if *fsync == k2hdkc_storage::Fsync::Always);
        // Only a multi-threaded runtime has other threads to move the waiting to (with one
        // thread, a blocking write holds up everything anyway).
        let blocking_writes = blocking_writes
            && tokio::runtime::Handle::current().runtime_flavor()
                == tokio::runtime::RuntimeFlavor::MultiThread;
        let store = if net.inline_blocking() {
            Store::open(sc)?
        } else {
            tokio::task::spawn_blocking(move || Store::open(sc))
                .await
                .expect("open task")?
        };
        // Bind first: a cluster node advertises its bound native address.
        let mem_l = match config.listen.memcached {
            Some(a) => Some(bind(&net, a).await?),
            None => None,
        };
        let nat_l = match config.listen.native {
            Some(a) => Some(bind(&net, a).await?),
            None => None,
        };
        let sock_l = match &config.listen.memcached_socket {
            Some(p) => Some(bind_socket(p)?),
            None => None,
        };
        let (tls_acceptor, tls_connector) = match &config.cluster.tls {
            Some(t) => {
                let f = t.files();
                let bad = |e: String| {
                    ServerError::Config(ConfigError::Invalid(format!("cluster.tls: {e}")))
                };
                (
                    Some(f.acceptor().map_err(bad)?),
                    Some(f.connector().map_err(bad)?),
                )
            }
            None => (None, None),
        };
        let client_tls = match &config.listen.memcached_tls {
            Some(t) => Some(t.acceptor().map_err(|e| {
                ServerError::Config(ConfigError::Invalid(format!("listen.memcached_tls: {e}")))
            })?),
            None => None,
        };
        if config.cluster.enabled() && !config.cluster.gateway {
            store.set_tombstone_absent(true);
        }
        let cluster = if config.cluster.enabled() {
            let addr = nat_l
                .as_ref()
                .and_then(|l| l.local_addr().ok())
                .map(|a| a.to_string())
                .unwrap_or_default();
            let mut cc = config.cluster.clone();
            // A join list naming the configured address with port 0 cannot be right; the
            // bound address is what peers will use.
            let name = config.cluster.name.clone().unwrap_or_else(|| addr.clone());
            cc.name = Some(name.clone());
            let memcached = mem_l
                .as_ref()
                .and_then(|l| l.local_addr().ok())
                .map(|a| a.to_string());
            let state_dir = match config.storage.mode {
                crate::config::StorageMode::File => {
                    config.storage.data_dir.as_ref().map(|d| d.join("cluster"))
                }
                _ => None,
            };
            let token = config.cluster.token()?;
            if token.is_none() {
                tracing::warn!(
                    "no cluster.secret_file: cluster traffic is not authenticated (fine on one \
                     host for trying things out; set a secret on real networks)"
                );
            }
            let c = crate::cluster::Cluster::new(
                cc,
                token,
                name,
                addr,
                memcached,
                crate::cluster::LocalStore {
                    store: store.clone(),
                    state_dir,
                    acks_durable: config.storage.mode == crate::config::StorageMode::File
                        && config.storage.fsync == "always",
                },
                net.clone(),
            )
            .map_err(|e| ServerError::Config(ConfigError::Invalid(e)))?;
            if let Some(t) = tls_connector {
                c.set_tls(t);
            }
            Some(c)
        } else {
            None
        };
        // A server node started from a cluster description admits only its hosts to the
        // native port (CHMPX's SVRNODE/SLVNODE), from the first connection on; a gateway's
        // native port serves its own host's clients.
        let gate = Arc::new(crate::chmpx::Gate::default());
        let chmpx_file = config
            .cluster
            .chmpx_file
            .clone()
            .filter(|_| cluster.as_ref().is_some_and(|c| !c.gateway()));
        if let Some(path) = &chmpx_file {
            let c = crate::chmpx::load(path)?;
            gate.set(crate::chmpx::Admission::new(&c));
        }
        let shared = Arc::new(Shared {
            store,
            metrics: Metrics::default(),
            config: config.clone(),
            blocking_writes,
            access: Default::default(),
            cluster: cluster.clone(),
            tls: tls_acceptor,
            client_tls,
            gate: gate.clone(),
            shutting_down: AtomicBool::new(false),
            bound: Default::default(),
        });
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        if let Some(l) = mem_l {
            let addr = l.local_addr().expect("bound");
            shared.bound.lock().expect("lock").push(("memcached", addr));
            tracing::info!(%addr, "memcached listener ready");
            tasks.push(tokio::spawn(accept_loop(
                l,
                shared.clone(),
                stop_rx.clone(),
                Proto::Memcached,
            )));
        }
        if let Some(l) = sock_l {
            tracing::info!(path = %l.path.display(), "memcached socket ready");
            tasks.push(tokio::spawn(accept_loop(
                Box::new(l),
                shared.clone(),
                stop_rx.clone(),
                Proto::Memcached,
            )));
        }
        if let Some(l) = nat_l {
            let addr = l.local_addr().expect("bound");
            shared.bound.lock().expect("lock").push(("native", addr));
            tracing::info!(%addr, "native listener ready");
            tasks.push(tokio::spawn(accept_loop(
                l,
                shared.clone(),
                stop_rx.clone(),
                Proto::Native,
            )));
        }
        if let Some(c) = &cluster {
            tracing::info!(node = %c.me, addr = %c.addr, gateway = c.gateway(), "cluster mode");
            let c1 = c.clone();
            tokio::spawn(async move { c1.join().await });
            tokio::spawn(c.clone().run());
            if let Some(path) = config.cluster.chmpx_file.clone() {
                tokio::spawn(crate::cluster::watch_chmpx(
                    c.clone(),
                    chmpx_file.as_ref().map(|_| gate.clone()),
                    path,
                    Duration::from_millis(config.cluster.config_poll_ms.max(100)),
                ));
            }
        }
        if let Some(addr) = config.listen.admin {
            // The admin API is HTTP for operators and monitoring: always the real network.
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind { addr, source })?;
            shared
                .bound
                .lock()
                .expect("lock")
                .push(("admin", l.local_addr().unwrap_or(addr)));
            tracing::info!(addr = %l.local_addr().unwrap_or(addr), "admin listener ready");
            let app = crate::admin::router(shared.clone());
            let mut rx = stop_rx.clone();
            tasks.push(tokio::spawn(async move {
                let r = axum::serve(l, app.into_make_service_with_connect_info::<SocketAddr>())
                    .with_graceful_shutdown(async move { stopped(&mut rx).await })
                    .await;
                if let Err(e) = r {
                    tracing::error!(error = %e, "admin listener failed");
                }
            }));
        }
        Ok(Server {
            shared,
            stop,
            tasks,
            inline_blocking: net.inline_blocking(),
        })
    }

    /// The bound address of a listener ("memcached", "native", "admin").
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.shared
            .bound
            .lock()
            .expect("lock")
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, a)| *a)
    }

    /// A client connection from inside this process: the stream is served like a connection
    /// accepted on the memcached listener (text or binary memcached, told apart by the first
    /// byte) or, with `native`, on the native one, under the same limits, but crosses no
    /// socket. A gateway started this way is K2HDKC's slave node inside the client's own
    /// process: a request reaches the owners one process hop sooner than through a gateway
    /// daemon (`k2hdkc bench --join`).
    pub fn connect_local(&self, native: bool) -> BoxStream {
        let (client, server) = tokio::io::duplex(LOCAL_PIPE_BYTES);
        let shared = self.shared.clone();
        let m = &shared.metrics;
        if m.curr_connections.load(Ordering::Relaxed) as usize
            >= shared.config.limits.max_connections
        {
            m.rejected_connections.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(reject(Box::new(server)));
            return Box::new(client);
        }
        m.curr_connections.fetch_add(1, Ordering::Relaxed);
        m.total_connections.fetch_add(1, Ordering::Relaxed);
        let stop = self.stop.subscribe();
        tokio::spawn(async move {
            if let Err(e) = crate::memcached::serve(server, shared.clone(), stop, native).await {
                tracing::debug!(error = %e, "local connection ended with an error");
            }
            shared
                .metrics
                .curr_connections
                .fetch_sub(1, Ordering::Relaxed);
        });
        Box::new(client)
    }

    /// Wait until this cluster member has a layout under which every partition has an owner
    /// to send requests to (a gateway that has joined), for at most `within`; false if it
    /// still has not, or the server is not a cluster member.
    pub async fn wait_routable(&self, within: Duration) -> bool {
        let Some(c) = &self.shared.cluster else {
            return false;
        };
        let until = tokio::time::Instant::now() + within;
        loop {
            if c.routes_everything() {
                return true;
            }
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Shared state (for tests and tools).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stop accepting, give connections a moment, then flush and close the store.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        if let Some(c) = &self.shared.cluster {
            c.shutdown();
            // A clean restart resends nothing its streams delivered.
            c.save_streams(&c.layout(), true).await;
        }
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        // Connections notice the stop signal after their current batch.
        for _ in 0..50 {
            if self.shared.metrics.curr_connections.load(Ordering::Relaxed) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let store = self.shared.store.clone();
        if self.inline_blocking {
            store.close()?;
        } else {
            tokio::task::spawn_blocking(move || store.close())
                .await
                .expect("close task")?;
        }
        tracing::info!("store flushed and closed");
        Ok(())
    }
}

/// Bytes in flight each way on an in-process connection before the writer waits.
const LOCAL_PIPE_BYTES: usize = 256 << 10;

/// What a server runs on: the network and the wall clock (the real ones by default; a
/// simulation gives its own).
#[derive(Clone, Default)]
pub struct Env {
    /// How connections are made and accepted.
    pub net: Net,
    /// The wall clock of the store (and so of versions, expiry and the cluster's timers that
    /// compare wall time); the system clock when `None`.
    pub clock: Option<Arc<dyn k2hdkc_storage::Clock>>,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env").field("clock", &self.clock).finish()
    }
}

/// Resolves once the stop flag is set (or its sender is gone).
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn bind(net: &Net, addr: SocketAddr) -> Result<Box<dyn Listener>, ServerError> {
    net.bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

/// The memcached listener on a Unix socket (`listen.memcached_socket`). Dropped (when its
/// accept loop ends), it removes its file, unless another server has put its own there since.
struct SocketListener {
    l: tokio::net::UnixListener,
    path: std::path::PathBuf,
    /// Device and inode of the file this listener made.
    ident: (u64, u64),
    /// `PATH.lock`, locked for as long as this listener lives (dropped after the socket
    /// file is removed): two servers started on one path at once cannot both take over a
    /// stale file and then remove each other's.
    _lock: std::fs::File,
}

fn file_ident(path: &std::path::Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(path)?;
    Ok((m.dev(), m.ino()))
}

impl Drop for SocketListener {
    fn drop(&mut self) {
        if file_ident(&self.path).is_ok_and(|id| id == self.ident) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Bind `path`, taking over a socket file a stopped server left behind (connecting to it is
/// refused) but never one a running server listens on, nor a file that is not a socket.
fn bind_socket(path: &std::path::Path) -> Result<SocketListener, ServerError> {
    use std::io::{Error, ErrorKind};
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let err = |source| ServerError::BindSocket {
        path: path.to_path_buf(),
        source,
    };
    // The lock file is left in place when the server stops: removing it would let a server
    // that opened it just before lock a file nobody else sees.
    let lock_path = {
        let mut p = path.as_os_str().to_owned();
        p.push(".lock");
        std::path::PathBuf::from(p)
    };
    let lock = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(err)?
    };
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(err(Error::new(
                ErrorKind::AddrInUse,
                format!(
                    "another server listens on it (it holds {})",
                    lock_path.display()
                ),
            )));
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(err(e)),
    }
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_socket() {
            return Err(err(Error::new(
                ErrorKind::AlreadyExists,
                "the path exists and is not a socket",
            )));
        }
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(err(Error::new(
                    ErrorKind::AddrInUse,
                    "another server listens on it",
                )));
            }
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                match std::fs::remove_file(path) {
                    Err(e) if e.kind() != ErrorKind::NotFound => return Err(err(e)),
                    _ => {}
                }
            }
            Err(e) => {
                return Err(err(Error::new(
                    e.kind(),
                    format!("cannot tell whether a server listens on it: {e}"),
                )));
            }
        }
    }
    // Made 0660 before it listens: no client connects while the umask's mode applies.
    let s =
        socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).map_err(err)?;
    s.bind(&socket2::SockAddr::unix(path).map_err(err)?)
        .map_err(err)?;
    let ident = file_ident(path).map_err(err)?;
    let listener = (|| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
        s.listen(1024)?;
        s.set_nonblocking(true)?;
        tokio::net::UnixListener::from_std(s.into())
    })();
    match listener {
        Ok(l) => Ok(SocketListener {
            l,
            path: path.to_path_buf(),
            ident,
            _lock: lock,
        }),
        Err(e) => {
            let _ = std::fs::remove_file(path);
            Err(err(e))
        }
    }
}

impl Listener for SocketListener {
    fn accept(
        &mut self,
    ) -> k2hdkc_client::transport::BoxFuture<'_, std::io::Result<(BoxStream, SocketAddr)>> {
        Box::pin(async move {
            let (s, _) = self.l.accept().await?;
            // A local client: the address only feeds the native port's host check and logs.
            let local = SocketAddr::from(([127, 0, 0, 1], 0));
            Ok((Box::new(s) as BoxStream, local))
        })
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Err(std::io::Error::other(
            "a Unix socket has no network address",
        ))
    }
}

#[derive(Debug, Clone, Copy)]
enum Proto {
    Memcached,
    Native,
}

async fn accept_loop(
    mut l: Box<dyn Listener>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    proto: Proto,
) {
    let refusing = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    loop {
        let (sock, peer) = tokio::select! {
            r = l.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => return,
        };
        let m = &shared.metrics;
        if m.curr_connections.load(Ordering::Relaxed) as usize
            >= shared.config.limits.max_connections
        {
            m.rejected_connections.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(reject(sock));
            continue;
        }
        if matches!(proto, Proto::Native) && !shared.gate.admits(peer.ip()) {
            m.rejected_connections.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, "refused a host not listed in SVRNODE or SLVNODE");
            // Each answer waits up to 5 s for the stranger's first request: a bounded few,
            // beyond them the connection is just closed.
            if refusing.load(Ordering::Relaxed) < MAX_REFUSING {
                refusing.fetch_add(1, Ordering::Relaxed);
                let (tls, refusing) = (shared.tls.is_some(), refusing.clone());
                tokio::spawn(async move {
                    refuse(sock, tls).await;
                    refusing.fetch_sub(1, Ordering::Relaxed);
                });
            }
            continue;
        }
        m.curr_connections.fetch_add(1, Ordering::Relaxed);
        m.total_connections.fetch_add(1, Ordering::Relaxed);
        let shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let (tls, native) = match proto {
                Proto::Memcached => (shared.client_tls.clone(), false),
                Proto::Native => (shared.tls.clone(), true),
            };
            let r = match tls {
                None => crate::memcached::serve(sock, shared.clone(), stop, native).await,
                Some(t) => {
                    match tokio::time::timeout(Duration::from_secs(10), t.accept(sock)).await {
                        Ok(Ok(s)) => crate::memcached::serve(s, shared.clone(), stop, native).await,
                        Ok(Err(e)) if native => {
                            tracing::warn!(%peer, error = %e, "refused a connection without a valid cluster certificate");
                            Ok(())
                        }
                        Ok(Err(e)) => {
                            tracing::info!(%peer, error = %e, "refused a client without TLS or a valid certificate");
                            Ok(())
                        }
                        Err(_) => {
                            tracing::warn!(%peer, "TLS handshake timed out");
                            Ok(())
                        }
                    }
                }
            };
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            shared
                .metrics
                .curr_connections
                .fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn reject(mut sock: BoxStream) {
    use tokio::io::AsyncWriteExt;
    let _ = sock
        .write_all(b"SERVER_ERROR too many open connections\r\n")
        .await;
    let _ = sock.shutdown().await;
}

/// Most refused connections answered at once (see `accept_loop`).
const MAX_REFUSING: usize = 64;

/// Answer the first request of a refused native peer with `Refused`, then close (over TLS
/// the peer could not read a plain reply: close at once).
async fn refuse(mut sock: BoxStream, tls: bool) {
    use k2hdkc_proto::native as wire;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if !tls {
        let mut h = [0u8; wire::HEADER_LEN];
        if let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_secs(5), sock.read_exact(&mut h)).await
            && h[0] == wire::MAGIC_REQUEST
            && let Some(header) = wire::Header::parse(&h)
        {
            let mut out = Vec::new();
            wire::write_error(
                &mut out,
                wire::Status::Refused,
                header.id,
                "this host is not listed in the cluster's SVRNODE or SLVNODE",
            );
            let _ = sock.write_all(&out).await;
        }
    }
    let _ = sock.shutdown().await;
}

/// Run a server until SIGTERM or SIGINT.
pub async fn run(config: ServerConfig) -> Result<(), ServerError> {
    let server = Server::start(config).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(ServerError::Signal)?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
    server.shutdown().await
}
