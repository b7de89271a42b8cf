//! The node-side `k2hr3` command: what K2HR3's `k2hr3-init.sh` and `k2hr3_get_resource` do.
//!
//! `register` reads the instance id, registers this host in a role with a role token and saves
//! the API URL, role, token and cuk in a state directory (files of mode 0600, like
//! `/etc/antpickax/k2hr3-*`). `get-resource` reads the role's resource with that token,
//! substitutes `__SELF_INSTANCE_ID__`, and rewrites the output file (atomically, by rename)
//! only when the text changed, then runs the reload command; `--watch` repeats that every
//! interval until SIGTERM/SIGINT. `unregister` removes this host's entry and the state.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use crate::{Auth, Client, Options};

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "k2hr3",
    version,
    about = "Register a node host with the K2HR3-compatible service and keep its configuration current"
)]
pub struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Register this host in a role with a role token; save what the other commands need.
    Register(RegisterArgs),
    /// Read the role's resource into a file (and keep it current with --watch).
    GetResource(GetArgs),
    /// Remove this host from its role and forget the saved state.
    Unregister(UnregisterArgs),
}

#[derive(Debug, Args)]
struct Common {
    /// Where the state files are (k2hr3-api-uri, k2hr3-role-name, k2hr3-role-token, k2hr3-cuk).
    #[arg(long, default_value = "/etc/antpickax")]
    state_dir: PathBuf,
    /// Request timeout, seconds.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    /// Retries of a failed request.
    #[arg(long, default_value_t = 3)]
    retries: u32,
    /// Accept a self-signed certificate of the API.
    #[arg(long)]
    insecure: bool,
}

#[derive(Debug, Args)]
struct RegisterArgs {
    #[command(flatten)]
    common: Common,
    /// The API, e.g. http://10.0.0.2:18080.
    #[arg(long)]
    api: String,
    /// The role (YRN, or path within the token's tenant).
    #[arg(long)]
    role: String,
    /// The role token.
    #[arg(
        long,
        conflicts_with = "token_file",
        required_unless_present = "token_file"
    )]
    token: Option<String>,
    /// A file holding the role token.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// This host's unique key; default: the instance id.
    #[arg(long)]
    cuk: Option<String>,
    /// Where cloud-init keeps the instance id.
    #[arg(long, default_value = "/var/lib/cloud/data/instance-id")]
    instance_id_file: PathBuf,
    /// The port to register (0 = any).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Free text stored with the host.
    #[arg(long, default_value = "openstack-auto-v1")]
    extra: String,
    /// Tag stored with the host (default: the host name).
    #[arg(long)]
    tag: Option<String>,
    /// Source address of requests (the service registers the host by it).
    #[arg(long)]
    source_ip: Option<IpAddr>,
}

#[derive(Debug, Args)]
struct GetArgs {
    #[command(flatten)]
    common: Common,
    /// The resource (YRN or path); default: the one named like the role.
    #[arg(long)]
    resource: Option<String>,
    /// The file to write.
    #[arg(long)]
    output: PathBuf,
    /// Keep polling and rewrite the file whenever the resource changes.
    #[arg(long)]
    watch: bool,
    /// Seconds between polls with --watch.
    #[arg(long, default_value_t = 10.0)]
    interval: f64,
    /// Stop after this many polls (0 = never).
    #[arg(long, default_value_t = 0)]
    max_polls: u64,
    /// Shell command run after each change (K2HR3_OUTPUT names the file).
    #[arg(long)]
    reload: Option<String>,
    /// Mode of the written file (octal).
    #[arg(long, default_value = "600")]
    mode: String,
}

#[derive(Debug, Args)]
struct UnregisterArgs {
    #[command(flatten)]
    common: Common,
    /// Keep the state files.
    #[arg(long)]
    keep_state: bool,
}

/// What `register` saves.
#[derive(Debug, Clone)]
struct State {
    api: String,
    role: String,
    token: String,
    cuk: String,
    port: u16,
    source_ip: Option<IpAddr>,
}

const FILES: [&str; 6] = [
    "k2hr3-api-uri",
    "k2hr3-role-name",
    "k2hr3-role-token",
    "k2hr3-cuk",
    "k2hr3-port",
    "k2hr3-source-ip",
];

impl State {
    fn save(&self, dir: &Path) -> anyhow::Result<()> {
        create_private_dir(dir)?;
        let src = self.source_ip.map(|i| i.to_string()).unwrap_or_default();
        let port = self.port.to_string();
        for (name, v) in
            FILES
                .iter()
                .zip([&self.api, &self.role, &self.token, &self.cuk, &port, &src])
        {
            write_atomic(&dir.join(name), v.as_bytes(), 0o600)?;
        }
        Ok(())
    }

    fn load(dir: &Path) -> anyhow::Result<State> {
        let read = |n: &str| -> anyhow::Result<String> {
            let p = dir.join(n);
            Ok(std::fs::read_to_string(&p)
                .with_context(|| format!("reading {} (run `k2hr3 register` first)", p.display()))?
                .trim()
                .to_string())
        };
        let opt = |n: &str| {
            std::fs::read_to_string(dir.join(n))
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        let src = opt("k2hr3-source-ip");
        Ok(State {
            api: read("k2hr3-api-uri")?,
            role: read("k2hr3-role-name")?,
            token: read("k2hr3-role-token")?,
            cuk: read("k2hr3-cuk")?,
            port: opt("k2hr3-port").parse().unwrap_or(0),
            source_ip: if src.is_empty() {
                None
            } else {
                Some(
                    src.parse()
                        .with_context(|| format!("k2hr3-source-ip {src:?}"))?,
                )
            },
        })
    }

    fn client(&self, c: &Common) -> anyhow::Result<Client> {
        Ok(Client::new(
            &self.api,
            Auth::Role(self.token.clone()),
            Options {
                timeout: Duration::from_secs(c.timeout.max(1)),
                retries: c.retries,
                source_ip: self.source_ip,
                insecure_tls: c.insecure,
                ..Options::default()
            },
        )?)
    }
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(())
}

/// Write `data` to `path` through a temporary file in the same directory and a rename, so a
/// reader sees the old or the new file, never half of one.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    drop(f);
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// Run one command to completion.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Register(a) => register(a).await,
            Cmd::GetResource(a) => get_resource(a).await,
            Cmd::Unregister(a) => unregister(a).await,
        }
    })
}

async fn register(a: RegisterArgs) -> anyhow::Result<()> {
    let token = match (&a.token, &a.token_file) {
        (Some(t), _) => t.trim().to_string(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("reading {}", f.display()))?
            .trim()
            .to_string(),
        (None, None) => bail!("give --token or --token-file"),
    };
    if token.is_empty() {
        bail!("the role token is empty");
    }
    let cuk = match &a.cuk {
        Some(c) => c.clone(),
        None => std::fs::read_to_string(&a.instance_id_file)
            .with_context(|| {
                format!(
                    "reading the instance id from {} (or give --cuk)",
                    a.instance_id_file.display()
                )
            })?
            .trim()
            .to_string(),
    };
    if cuk.is_empty() || cuk.contains(char::is_whitespace) {
        bail!("the cuk {cuk:?} must be one word");
    }
    let tag = a.tag.clone().unwrap_or_else(hostname);
    let st = State {
        api: a.api.trim_end_matches('/').to_string(),
        role: a.role.clone(),
        token,
        cuk,
        port: a.port,
        source_ip: a.source_ip,
    };
    st.client(&a.common)?
        .register(&st.role, st.port, &st.cuk, &a.extra, &tag)
        .await?;
    st.save(&a.common.state_dir)?;
    println!("registered {} in {} (cuk {})", tag, st.role, st.cuk);
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// The resource named like the role: `...:role:P` → `...:resource:P`, a path stays a path.
fn default_resource(role: &str) -> String {
    role.replacen(":role:", ":resource:", 1)
}

async fn get_resource(a: GetArgs) -> anyhow::Result<()> {
    let st = State::load(&a.common.state_dir)?;
    let client = st.client(&a.common)?;
    let resource = a
        .resource
        .clone()
        .unwrap_or_else(|| default_resource(&st.role));
    let mode = u32::from_str_radix(&a.mode, 8)
        .with_context(|| format!("--mode {:?} is not octal", a.mode))?;
    if !(a.interval.is_finite() && a.interval >= 0.05) {
        bail!("--interval must be at least 0.05 seconds");
    }
    let interval = Duration::from_secs_f64(a.interval);
    let mut polls = 0u64;
    let mut stop = std::pin::pin!(shutdown());
    loop {
        polls += 1;
        match poll_once(&client, &st, &resource, &a.output, mode).await {
            Ok(true) => {
                println!("{} updated from {resource}", a.output.display());
                if let Some(cmd) = &a.reload {
                    reload(cmd, &a.output).await;
                }
            }
            Ok(false) => tracing::debug!(resource, "unchanged"),
            Err(e) if a.watch => tracing::warn!("{e:#}"),
            Err(e) => return Err(e),
        }
        if !a.watch || (a.max_polls != 0 && polls >= a.max_polls) {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = &mut stop => return Ok(()),
        }
    }
}

/// One read; true when the file was (re)written.
async fn poll_once(
    client: &Client,
    st: &State,
    resource: &str,
    out: &Path,
    mode: u32,
) -> anyhow::Result<bool> {
    let v = client.read_resource(resource, None, None).await?;
    let mut text = match v {
        serde_json::Value::String(s) => s,
        serde_json::Value::Null => bail!("{resource} has no data"),
        other => serde_json::to_string_pretty(&other)? + "\n",
    };
    text = text.replace("__SELF_INSTANCE_ID__", &st.cuk);
    if std::fs::read(out).ok().as_deref() == Some(text.as_bytes()) {
        return Ok(false);
    }
    write_atomic(out, text.as_bytes(), mode)?;
    Ok(true)
}

async fn reload(cmd: &str, out: &Path) {
    let r = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("K2HR3_OUTPUT", out)
        .status()
        .await;
    match r {
        Ok(s) if s.success() => tracing::info!(cmd, "reloaded"),
        Ok(s) => tracing::warn!(cmd, status = %s, "the reload command failed"),
        Err(e) => tracing::warn!(cmd, error = %e, "the reload command did not start"),
    }
}

async fn shutdown() {
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

async fn unregister(a: UnregisterArgs) -> anyhow::Result<()> {
    let st = State::load(&a.common.state_dir)?;
    let port = (st.port != 0).then_some(st.port);
    match st
        .client(&a.common)?
        .unregister(&st.role, port, &st.cuk)
        .await
    {
        Ok(()) => println!("unregistered cuk {} from {}", st.cuk, st.role),
        // Already gone (e.g. removed by a notification listener): nothing left to do.
        Err(e) if e.status() == Some(404) => println!("cuk {} was not in {}", st.cuk, st.role),
        Err(e) => return Err(e.into()),
    }
    if !a.keep_state {
        for n in FILES {
            let _ = std::fs::remove_file(a.common.state_dir.join(n));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn resource_defaults_to_the_role_name() {
        assert_eq!(
            super::default_resource("yrn:yahoo:::t:role:c/server"),
            "yrn:yahoo:::t:resource:c/server"
        );
        assert_eq!(super::default_resource("c/slave"), "c/slave");
    }
}
