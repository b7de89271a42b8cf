//! The `k2hdkc` command: parses arguments, sets up logging, and calls one `run` per subcommand.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use k2hdkc_node::{ServerConfig, StorageMode};

mod bench;
mod cluster_cmds;
mod shell;

/// jemalloc instead of glibc's malloc: a node's request path allocates per request (frames,
/// replies, feed entries), and glibc's allocator was a fifth of a cluster node's CPU in a
/// profile. jemalloc beat both glibc and mimalloc on a single node's pipelined sets, where
/// mimalloc lost a fifth (see docs/performance.md).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "k2hdkc",
    version,
    about = "k2hdkc: a distributed key-value store in the spirit of K2HDKC"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a server node (memcached and native protocols).
    Server(ServerArgs),
    /// Load generator (memcached or native protocol): ops/s and latency percentiles.
    Bench(bench::BenchArgs),
    /// Interactive or scripted shell over the native protocol (like k2hdkclinetool).
    Shell(shell::ShellArgs),
    /// A gateway (K2HDKC slave node): memcached and native clients, routed to the owners.
    Gateway(ServerArgs),
    /// Cluster control: status, attach, detach, remove, set-replicas (like kumoctl).
    Ctl(cluster_cmds::CtlArgs),
    /// A node's counters (like kumostat).
    Stat(cluster_cmds::StatArgs),
    /// Live per-node load (like kumotop).
    Top(cluster_cmds::TopArgs),
    /// Which nodes own a key (like kumohash).
    Hash(cluster_cmds::HashArgs),
    /// Start every daemon of a cluster on this host, for trying it out.
    DevCluster(cluster_cmds::DevClusterArgs),
}

/// Flags override the config file.
#[derive(Args)]
struct ServerArgs {
    /// TOML configuration file (see deploy/config/k2hdkc-server.toml).
    #[arg(long, short = 'c', env = "K2HDKC_CONFIG")]
    config: Option<PathBuf>,
    /// memory | file | temporary.
    #[arg(long)]
    storage: Option<StorageMode>,
    /// Data directory (file mode).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// always | batch[:<ms>] | never.
    #[arg(long)]
    fsync: Option<String>,
    /// memcached listener, e.g. 127.0.0.1:11211.
    #[arg(long)]
    memcached_listen: Option<SocketAddr>,
    /// memcached listener on a Unix socket (memcached's -s), for clients on the same host.
    #[arg(long)]
    memcached_socket: Option<PathBuf>,
    /// Native protocol listener, e.g. 127.0.0.1:8020 (`--listen` in a cluster: peers use it).
    #[arg(long, visible_alias = "listen")]
    native_listen: Option<SocketAddr>,
    /// This node's unique name in the cluster.
    #[arg(long)]
    name: Option<String>,
    /// Native address of a cluster node to join through (repeatable, or comma-separated); a
    /// node that names itself starts the cluster.
    #[arg(long, value_delimiter = ',')]
    join: Vec<String>,
    /// Cluster name (nodes of other clusters are refused).
    #[arg(long)]
    cluster: Option<String>,
    /// Failure domain of this node.
    #[arg(long)]
    zone: Option<String>,
    /// Relative capacity (weight) of this node.
    #[arg(long)]
    capacity: Option<u32>,
    /// File holding the cluster secret (nodes, gateways and tools must share it).
    #[arg(long, env = "K2HDKC_SECRET_FILE")]
    secret_file: Option<PathBuf>,
    /// Admin HTTP listener (/health, /status, /metrics), e.g. 127.0.0.1:8021.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Largest value in bytes.
    #[arg(long)]
    max_value_bytes: Option<usize>,
    /// Most client connections at once.
    #[arg(long)]
    max_connections: Option<usize>,
    /// A CHMPX-style description of the whole cluster (INI, YAML or JSON with GLOBAL,
    /// SVRNODE, SLVNODE, K2HDKC); re-read when it changes.
    #[arg(long, visible_alias = "conf")]
    chmpx_conf: Option<PathBuf>,
    /// Mutual TLS on the native port: the cluster CA (PEM); needs --tls-cert and --tls-key.
    #[arg(long, env = "K2HDKC_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM), signed by the cluster CA.
    #[arg(long, env = "K2HDKC_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, env = "K2HDKC_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Lowest TLS version: 1.2 (default) or 1.3.
    #[arg(long, env = "K2HDKC_TLS_MIN_VERSION")]
    tls_min_version: Option<String>,
    /// Gateway only: send every set through the key's primary, not to the owners directly
    /// (`cluster.direct_writes = false`; see docs/cluster.md).
    #[arg(long)]
    no_direct_writes: bool,
    /// TLS on the memcached port (clients must use it): the port's certificate (PEM).
    #[arg(long)]
    memcached_tls_cert: Option<PathBuf>,
    /// The memcached port's private key (PEM).
    #[arg(long)]
    memcached_tls_key: Option<PathBuf>,
    /// Require memcached clients to present a certificate signed by this CA (PEM).
    #[arg(long)]
    memcached_tls_client_ca: Option<PathBuf>,
    /// Seconds between anti-entropy rounds (0 = never).
    #[arg(long)]
    anti_entropy_secs: Option<u64>,
    /// Which SVRNODE of --chmpx-conf is this node: its CTLPORT.
    #[arg(long)]
    ctlport: Option<u16>,
    /// Which SVRNODE of --chmpx-conf is this node: its CUK.
    #[arg(long)]
    cuk: Option<String>,
    /// Worker threads (0 = one per CPU core; 1 when several daemons share few cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Log format: human | json.
    #[arg(long)]
    log_format: Option<String>,
    /// Check the configuration and exit.
    #[arg(long)]
    check_config: bool,
}

fn small_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

impl ServerArgs {
    fn config(&self) -> anyhow::Result<ServerConfig> {
        let mut c = self.config_unvalidated()?;
        k2hdkc_node::chmpx::apply_file(&mut c)?;
        c.validate()?;
        Ok(c)
    }

    fn config_unvalidated(&self) -> anyhow::Result<ServerConfig> {
        let mut c = match &self.config {
            Some(p) => ServerConfig::from_file(p)?,
            None => ServerConfig::default(),
        };
        if let Some(v) = self.storage {
            c.storage.mode = v;
        }
        if let Some(v) = &self.data_dir {
            c.storage.data_dir = Some(v.clone());
        }
        if let Some(v) = &self.fsync {
            c.storage.fsync = v.clone();
        }
        if let Some(v) = self.memcached_listen {
            c.listen.memcached = Some(v);
        }
        if let Some(v) = &self.memcached_socket {
            c.listen.memcached_socket = Some(v.clone());
        }
        if let Some(v) = self.native_listen {
            c.listen.native = Some(v);
        }
        if let Some(v) = self.admin_listen {
            c.listen.admin = Some(v);
        }
        if let Some(v) = self.max_value_bytes {
            c.storage.max_value_bytes = v;
            c.limits.max_request_bytes = c.limits.max_request_bytes.max(v + 4096);
        }
        if let Some(v) = self.max_connections {
            c.limits.max_connections = v;
        }
        if let Some(v) = self.threads {
            c.limits.threads = v;
        }
        if let Some(v) = &self.chmpx_conf {
            c.cluster.chmpx_file = Some(v.clone());
        }
        if let Some(v) = self.ctlport {
            c.cluster.self_ctlport = Some(v);
        }
        if let Some(v) = self.anti_entropy_secs {
            c.cluster.anti_entropy_secs = v;
        }
        match (&self.tls_ca, &self.tls_cert, &self.tls_key) {
            (Some(ca), Some(cert), Some(key)) => {
                c.cluster.tls = Some(k2hdkc_node::config::TlsConfig {
                    ca: ca.clone(),
                    cert: cert.clone(),
                    key: key.clone(),
                    min_version: self.tls_min_version.clone(),
                });
            }
            (None, None, None) => {}
            _ => anyhow::bail!("--tls-ca, --tls-cert and --tls-key go together"),
        }
        match (&self.memcached_tls_cert, &self.memcached_tls_key) {
            (Some(cert), Some(key)) => {
                c.listen.memcached_tls = Some(k2hdkc_node::config::ClientTlsConfig {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: self.memcached_tls_client_ca.clone(),
                    min_version: self.tls_min_version.clone(),
                });
            }
            (None, None) if self.memcached_tls_client_ca.is_none() => {}
            _ => anyhow::bail!(
                "--memcached-tls-cert and --memcached-tls-key go together (--memcached-tls-client-ca needs both)"
            ),
        }
        if let Some(v) = &self.cuk {
            c.cluster.self_cuk = Some(v.clone());
        }
        if let Some(v) = &self.log_format {
            c.log.format = v.clone();
        }
        if let Some(v) = &self.name {
            c.cluster.name = Some(v.clone());
        }
        if !self.join.is_empty() {
            c.cluster.join = self.join.clone();
        }
        if let Some(v) = &self.cluster {
            c.cluster.cluster = v.clone();
        }
        if let Some(v) = &self.zone {
            c.cluster.zone = v.clone();
        }
        if let Some(v) = self.capacity {
            c.cluster.capacity = v;
        }
        if let Some(v) = &self.secret_file {
            c.cluster.secret_file = Some(v.clone());
        }
        Ok(c)
    }
}

fn init_tracing(format: &str, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().init()
    } else {
        b.init()
    }
}

/// Run a server or gateway until it is stopped (or only report that the config is valid).
fn serve(config: ServerConfig, check_only: bool) -> anyhow::Result<()> {
    if check_only {
        println!("configuration ok");
        return Ok(());
    }
    init_tracing(&config.log.format, &config.log.level);
    // One thread: a current-thread runtime, which wakes tasks without the work-stealing
    // scheduler's cross-thread handoffs (where five daemons share two cores, each wake-up
    // counts).
    let mut b = if config.limits.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if config.limits.threads > 0 {
            b.worker_threads(config.limits.threads);
        }
        b
    };
    let rt = b.enable_all().build()?;
    rt.block_on(k2hdkc_node::run(config))?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Server(a) => {
            let config = a.config().context("configuration")?;
            serve(config, a.check_config)?;
        }
        Cmd::Gateway(a) => {
            let mut config = a.config_unvalidated().context("configuration")?;
            config.cluster.gateway = true;
            if a.no_direct_writes {
                config.cluster.direct_writes = false;
            }
            k2hdkc_node::chmpx::apply_file(&mut config).context("configuration")?;
            config.storage.mode = StorageMode::Memory;
            if config.listen.native.is_none() {
                // Peers never call a gateway; it needs a native address only as its identity.
                config.listen.native = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
            }
            config.validate().context("configuration")?;
            serve(config, a.check_config)?;
        }
        Cmd::Ctl(a) => small_runtime()?.block_on(cluster_cmds::ctl(a))?,
        Cmd::Stat(a) => small_runtime()?.block_on(cluster_cmds::stat(a))?,
        Cmd::Top(a) => small_runtime()?.block_on(cluster_cmds::top(a))?,
        Cmd::Hash(a) => small_runtime()?.block_on(cluster_cmds::hash(a))?,
        Cmd::DevCluster(a) => {
            init_tracing("human", "warn");
            small_runtime()?.block_on(cluster_cmds::dev_cluster(a))?
        }
        Cmd::Bench(a) => {
            if !a.join.is_empty() {
                // The embedded gateway's warnings (a refused join, say) say why it cannot route.
                init_tracing("human", "warn");
            }
            // An embedded gateway on one thread shares a current-thread runtime with the load,
            // as a gateway daemon with `--threads 1` does: a request then crosses no thread.
            let mut b = if a.threads == 1 && !a.join.is_empty() {
                tokio::runtime::Builder::new_current_thread()
            } else {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(a.threads.max(1));
                b
            };
            let rt = b.enable_all().build()?;
            rt.block_on(bench::run(a))?;
        }
        Cmd::Shell(a) => {
            init_tracing("human", "warn");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let code = rt.block_on(shell::run(a))?;
            std::process::exit(code);
        }
    }
    Ok(())
}
