//! The subcommands of `k2hdkc-dbaas`. Each prints results on stdout (a server prints one
//! `... listening on http://ADDR` line per listener once it accepts, which tests and scripts
//! wait for) and errors on stderr with a non-zero exit.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use k2hdkc_k2hr3::Service;

use crate::config::Config;

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "k2hdkc-dbaas",
    version,
    about = "k2hdkc DBaaS: the control plane and the K2HR3-compatible service"
)]
pub struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the DBaaS: the Trove-compatible API, the K2HR3-compatible service and the
    /// compute driver (`--quickstart` also builds a ready 3-node cluster).
    Serve(ServeArgs),
    /// Manage clusters through the API (for use without the OpenStack CLI).
    Cluster(crate::client::ClusterArgs),
    /// The K2HR3-compatible service on its own, and its local users.
    K2hr3 {
        #[command(subcommand)]
        cmd: K2hr3Cmd,
    },
}

#[derive(Debug, Subcommand)]
enum K2hr3Cmd {
    /// Serve only the K2HR3-compatible API.
    Serve(K2hr3ServeArgs),
    /// Local users (for use without Keystone).
    User {
        #[command(subcommand)]
        cmd: UserCmd,
    },
}

#[derive(Debug, Subcommand)]
enum UserCmd {
    /// Add a user, or replace its password and add tenants.
    Add {
        /// User name.
        name: String,
        /// A tenant the user belongs to (repeatable; created as needed).
        #[arg(long, required = true)]
        tenant: Vec<String>,
        /// Read the password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        common: Common,
    },
    /// List users and their tenants.
    List {
        #[command(flatten)]
        common: Common,
    },
    /// Delete a user (its tokens stop working).
    Delete {
        /// User name.
        name: String,
        #[command(flatten)]
        common: Common,
    },
}

/// Where the state is; flags override the config file.
#[derive(Debug, Args)]
struct Common {
    /// TOML configuration file (see deploy/config/k2hdkc-dbaas.toml).
    #[arg(long, short = 'c', env = "K2HDKC_DBAAS_CONFIG")]
    config: Option<PathBuf>,
    /// State directory (SQLite database, service key).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Database URL (sqlite://... or postgres://...); default SQLite in the data directory.
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
}

#[derive(Debug, Args)]
struct K2hr3ServeArgs {
    #[command(flatten)]
    common: Common,
    /// Address of the K2HR3-compatible API (default 127.0.0.1:18080).
    #[arg(long, visible_alias = "k2hr3-listen")]
    listen: Option<SocketAddr>,
    /// URL nodes reach the K2HR3 API at (default http://<listen>).
    #[arg(long)]
    public_url: Option<String>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    common: Common,
    /// Address of the Trove v1.0 API (default 127.0.0.1:8779).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Address of the K2HR3-compatible API (default 127.0.0.1:18080).
    #[arg(long)]
    k2hr3_listen: Option<SocketAddr>,
    /// URL guests and nodes reach the K2HR3 API at (default http://<k2hr3-listen>).
    #[arg(long)]
    k2hr3_public_url: Option<String>,
    /// URL clients and guests reach the Trove API at (default http://<listen>).
    #[arg(long)]
    public_url: Option<String>,
    /// Who may call the Trove API: noauth, token:SECRET, keystone or keystone:URL.
    #[arg(long)]
    auth: Option<String>,
    /// Where k2hdkc and k2hdkc-guest-agent are (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Local hosts get the addresses 127.<N>.x.y (default 77).
    #[arg(long)]
    address_block: Option<u8>,
    /// Create a 3-node cluster `quickstart` if the quickstart project has none, wait until it
    /// is ACTIVE (with a progress bar) and print how to use it.
    #[arg(long)]
    quickstart: bool,
}

impl Common {
    fn config(&self) -> anyhow::Result<Config> {
        let mut c = match &self.config {
            Some(p) => Config::load(p)?,
            None => Config::default(),
        };
        if let Some(d) = &self.data_dir {
            c.data_dir = Some(d.clone());
        }
        if let Some(u) = &self.database_url {
            c.database_url = Some(u.clone());
        }
        c.validate()?;
        Ok(c)
    }
}

/// Run one command to completion.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Serve(a) => serve(a).await,
            Cmd::Cluster(a) => crate::client::run(a).await,
            Cmd::K2hr3 {
                cmd: K2hr3Cmd::Serve(a),
            } => serve_k2hr3(a).await,
            Cmd::K2hr3 {
                cmd: K2hr3Cmd::User { cmd },
            } => user(cmd).await,
        }
    })
}

async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let mut c = a.common.config()?;
    if let Some(l) = a.listen {
        c.trove.listen = l;
    }
    if let Some(l) = a.k2hr3_listen {
        c.k2hr3.listen = l;
    }
    if let Some(u) = a.k2hr3_public_url {
        c.k2hr3.public_url = Some(u);
    }
    if let Some(u) = a.public_url {
        c.trove.public_url = Some(u);
    }
    if let Some(x) = a.auth {
        c.trove.auth = x;
    }
    if let Some(b) = a.bin_dir {
        c.trove.bin_dir = Some(b);
    }
    if let Some(b) = a.address_block {
        c.trove.address_block = b;
    }
    c.validate()?;
    crate::server::run(c, a.quickstart, shutdown_signal()).await
}

async fn serve_k2hr3(a: K2hr3ServeArgs) -> anyhow::Result<()> {
    let mut c = a.common.config()?;
    if let Some(l) = a.listen {
        c.k2hr3.listen = l;
    }
    if let Some(u) = a.public_url {
        c.k2hr3.public_url = Some(u);
    }
    let mut k = c.k2hr3();
    let listener = tokio::net::TcpListener::bind(k.listen)
        .await
        .with_context(|| format!("binding the K2HR3 API to {}", k.listen))?;
    let bound = listener.local_addr()?;
    if k.listen.port() == 0 {
        // Port 0 asked the kernel for one: tell nodes the real one.
        k.listen = bound;
    }
    let svc = Service::open(k)
        .await
        .context("opening the K2HR3 service")?;
    println!("k2hr3 API listening on http://{bound}");
    tracing::info!(%bound, db = %redact(&c.database_url()), "k2hr3 API started");
    svc.serve(listener, shutdown_signal())
        .await
        .context("serving the K2HR3 API")?;
    tracing::info!("stopped");
    Ok(())
}

/// A database URL without its password, for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => match url[s + 3..at].find(':') {
            Some(c) => format!("{}:***{}", &url[..s + 3 + c], &url[at..]),
            None => url.to_string(),
        },
        _ => url.to_string(),
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

async fn user(cmd: UserCmd) -> anyhow::Result<()> {
    match cmd {
        UserCmd::Add {
            name,
            tenant,
            password_stdin,
            common,
        } => {
            if !password_stdin {
                anyhow::bail!("give the password on stdin with --password-stdin");
            }
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("reading the password from stdin")?;
            let pw = line.trim_end_matches(['\r', '\n']);
            let svc = Service::open(common.config()?.k2hr3()).await?;
            svc.add_user(&name, pw, &tenant).await?;
            println!("user {name} added to {}", tenant.join(", "));
        }
        UserCmd::List { common } => {
            let svc = Service::open(common.config()?.k2hr3()).await?;
            println!("{:<24} TENANTS", "USER");
            for (u, ts) in svc.db().users().await? {
                println!("{u:<24} {}", ts.join(","));
            }
        }
        UserCmd::Delete { name, common } => {
            let svc = Service::open(common.config()?.k2hr3()).await?;
            if !svc.db().delete_user(&name).await? {
                anyhow::bail!("no user {name:?}");
            }
            println!("user {name} deleted");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_not_logged() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite:///x/y.db"), "sqlite:///x/y.db");
    }
}
