//! The `k2hdkc` command: parses arguments, sets up logging, and calls one `run` per subcommand.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use k2hdkc_node::{ServerConfig, StorageMode};

mod bench;
mod shell;

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
    /// Native protocol listener, e.g. 127.0.0.1:8020.
    #[arg(long)]
    native_listen: Option<SocketAddr>,
    /// Admin HTTP listener (/health, /status, /metrics), e.g. 127.0.0.1:8021.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Largest value in bytes.
    #[arg(long)]
    max_value_bytes: Option<usize>,
    /// Most client connections at once.
    #[arg(long)]
    max_connections: Option<usize>,
    /// Log format: human | json.
    #[arg(long)]
    log_format: Option<String>,
    /// Check the configuration and exit.
    #[arg(long)]
    check_config: bool,
}

impl ServerArgs {
    fn config(&self) -> anyhow::Result<ServerConfig> {
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
        if let Some(v) = &self.log_format {
            c.log.format = v.clone();
        }
        c.validate()?;
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Server(a) => {
            let config = a.config().context("configuration")?;
            if a.check_config {
                println!("configuration ok");
                return Ok(());
            }
            init_tracing(&config.log.format, &config.log.level);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(k2hdkc_node::run(config))?;
        }
        Cmd::Bench(a) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(a.threads.max(1))
                .enable_all()
                .build()?;
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
