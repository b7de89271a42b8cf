//! Compute drivers: where an instance's host comes from. [`Compute`] is the seam; [`Local`]
//! runs each instance as a `k2hdkc-guest-agent` process on this machine with its own
//! loopback address (127/8 is all loopback on Linux, so every node keeps the standard ports
//! 8020/8021/11211 and the instance `ip` is where memcached clients connect).
//!
//! Invariants: `boot` is idempotent for an instance (a live host is adopted, not doubled); a
//! host handle names a pid *and* the instance, so a recycled pid is never mistaken for a
//! guest (or signalled); guests outlive a control-plane restart (their own process group).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, Instant};

use crate::error::{TroveError, TroveResult};

/// A boxed future (drivers are trait objects).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Everything a host needs to come up as a member of its cluster.
#[derive(Debug, Clone)]
pub struct BootSpec {
    /// Instance id (guest id, the node's CUK).
    pub instance_id: String,
    /// Address to use (local driver: leased by the control plane).
    pub ip: String,
    /// Flavor id.
    pub flavor_id: String,
    /// Data volume size (GB).
    pub volume_size: u32,
    /// The per-instance RPC key.
    pub rpc_key: String,
    /// The cluster secret.
    pub secret: String,
    /// The K2HR3 API URL.
    pub k2hr3_url: String,
    /// Role token of `<cluster>/server`.
    pub role_token: String,
    /// Resource YRN holding the cluster file.
    pub resource: String,
    /// Where the guest sends heartbeats (the control plane's URL).
    pub conductor_url: String,
}

/// A booted host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Booted {
    /// The driver's handle.
    pub server: String,
    /// Where clients connect.
    pub ip: String,
    /// Where the control plane calls the guest (direct transport).
    pub rpc: SocketAddr,
}

/// The seam between the control plane and whatever provides hosts.
pub trait Compute: Send + Sync {
    /// The driver's name (`local`, `openstack`).
    fn name(&self) -> &'static str;
    /// Make sure the host of `spec` runs; adopt `existing` when it is still alive.
    fn boot<'a>(
        &'a self,
        spec: &'a BootSpec,
        existing: Option<&'a str>,
    ) -> BoxFuture<'a, TroveResult<Booted>>;
    /// Whether the host is up.
    fn is_up<'a>(&'a self, server: &'a str) -> BoxFuture<'a, bool>;
    /// Stop and remove the host and its disk (idempotent).
    fn destroy<'a>(
        &'a self,
        instance_id: &'a str,
        server: Option<&'a str>,
    ) -> BoxFuture<'a, TroveResult<()>>;
    /// Whether `ip` can be given to a new host (local: nothing listens on its ports).
    fn address_usable(&self, ip: &str) -> bool;
    /// Whether the control plane leases addresses for this driver's hosts (local), or the
    /// driver reports the address a host got (a cloud's network assigns it).
    fn leases_addresses(&self) -> bool {
        true
    }
    /// A fixed list of addresses to lease from, instead of the loopback block.
    fn address_pool(&self) -> Option<Vec<String>> {
        None
    }
}

/// The RPC port of a local guest.
pub const GUEST_RPC_PORT: u16 = 8029;
const PORTS: [u16; 4] = [8020, 8021, 11211, GUEST_RPC_PORT];

/// Guests as processes on this machine.
#[derive(Debug, Clone)]
pub struct Local {
    hosts: PathBuf,
    bin_dir: PathBuf,
    pool: Vec<LocalHost>,
}

/// A host of the local driver's fixed pool: an address of this machine, or one inside a
/// network namespace the guest is started in (`ip netns exec`), which is how the multi-host
/// tests give every instance its own network stack.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalHost {
    /// The host's address (where its node listens and clients connect).
    pub ip: String,
    /// The network namespace holding `ip`, if not this one.
    #[serde(default)]
    pub netns: Option<String>,
}

impl Local {
    /// Hosts live under `hosts`; `k2hdkc` and `k2hdkc-guest-agent` are in `bin_dir`.
    pub fn new(hosts: PathBuf, bin_dir: PathBuf) -> Local {
        Local {
            hosts,
            bin_dir,
            pool: Vec::new(),
        }
    }

    /// Hand out only the hosts of `pool` instead of loopback addresses.
    pub fn with_pool(mut self, pool: Vec<LocalHost>) -> Local {
        self.pool = pool;
        self
    }

    fn host_dir(&self, id: &str) -> PathBuf {
        self.hosts.join(id)
    }

    fn write_secret(p: &Path, text: &str) -> std::io::Result<()> {
        let tmp = p.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&tmp, p)
    }

    fn render(&self, spec: &BootSpec, dir: &Path) -> TroveResult<PathBuf> {
        let io = |e: std::io::Error| TroveError::Internal(format!("host {}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(io)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        Self::write_secret(&dir.join("guest.key"), &spec.rpc_key).map_err(io)?;
        Self::write_secret(&dir.join("cluster.secret"), &spec.secret).map_err(io)?;
        Self::write_secret(&dir.join("role-token"), &spec.role_token).map_err(io)?;
        let q = |s: &str| toml_string(s);
        let cfg = format!(
            "# written by the k2hdkc-dbaas local compute driver\n\
             instance_id = {}\nip = {}\ndata_dir = {}\nk2hdkc_bin = {}\n\
             secret_file = {}\nrpc_key_file = {}\nheartbeat_secs = 2.0\n\
             server_args = [\"--threads\", \"1\"]\n\n\
             [k2hr3]\nurl = {}\nrole_token_file = {}\nresource = {}\npoll_secs = 1.0\n\n\
             [rpc]\ntransport = \"direct\"\nlisten = {}\nconductor_url = {}\n",
            q(&spec.instance_id),
            q(&spec.ip),
            q(&dir.join("data").display().to_string()),
            q(&self.bin_dir.join("k2hdkc").display().to_string()),
            q(&dir.join("cluster.secret").display().to_string()),
            q(&dir.join("guest.key").display().to_string()),
            q(&spec.k2hr3_url),
            q(&dir.join("role-token").display().to_string()),
            q(&spec.resource),
            q(&format!("{}:{GUEST_RPC_PORT}", spec.ip)),
            q(&spec.conductor_url),
        );
        let p = dir.join("guest.toml");
        Self::write_secret(&p, &cfg).map_err(io)?;
        Ok(p)
    }
}

fn toml_string(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialise")
}

/// `local:<pid>:<instance>` handles.
fn parse_handle(h: &str) -> Option<(u32, &str)> {
    let rest = h.strip_prefix("local:")?;
    let (pid, id) = rest.split_once(':')?;
    Some((pid.parse().ok()?, id))
}

/// Whether `pid` is the guest of `instance` (not a recycled pid, not a zombie).
fn guest_alive(pid: u32, instance: &str) -> bool {
    let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let cmd = String::from_utf8_lossy(&cmd);
    if !(cmd.contains("k2hdkc-guest-agent") && cmd.contains(instance)) {
        return false;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the parenthesised command name.
    let state = stat
        .rsplit_once(") ")
        .map(|(_, r)| r.chars().next().unwrap_or('?'));
    !matches!(state, Some('Z') | Some('X') | None)
}

/// The live guest process of `instance`, found by its command line.
fn find_guest(instance: &str) -> Option<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| *p != me)
        .find(|p| guest_alive(*p, instance))
}

fn signal(pid: u32, sig: rustix::process::Signal) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

impl Compute for Local {
    fn name(&self) -> &'static str {
        "local"
    }

    fn boot<'a>(
        &'a self,
        spec: &'a BootSpec,
        existing: Option<&'a str>,
    ) -> BoxFuture<'a, TroveResult<Booted>> {
        Box::pin(async move {
            let rpc: SocketAddr = format!("{}:{GUEST_RPC_PORT}", spec.ip)
                .parse()
                .map_err(|e| TroveError::Internal(format!("address {}: {e}", spec.ip)))?;
            if let Some(h) = existing
                && let Some((pid, id)) = parse_handle(h)
                && id == spec.instance_id
                && guest_alive(pid, id)
            {
                return Ok(Booted {
                    server: h.to_string(),
                    ip: spec.ip.clone(),
                    rpc,
                });
            }
            // A guest started before a control-plane crash, whose handle was never stored.
            if let Some(pid) = find_guest(&spec.instance_id) {
                return Ok(Booted {
                    server: format!("local:{pid}:{}", spec.instance_id),
                    ip: spec.ip.clone(),
                    rpc,
                });
            }
            let dir = self.host_dir(&spec.instance_id);
            let cfg = self.render(spec, &dir)?;
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("guest.log"))
                .map_err(|e| TroveError::Internal(format!("guest log: {e}")))?;
            let err = log
                .try_clone()
                .map_err(|e| TroveError::Internal(e.to_string()))?;
            let bin = self.bin_dir.join("k2hdkc-guest-agent");
            let netns = self
                .pool
                .iter()
                .find(|h| h.ip == spec.ip)
                .and_then(|h| h.netns.clone());
            let mut cmd = match &netns {
                // `ip netns exec` execs the guest: the pid and command line are the guest's.
                Some(ns) => {
                    let mut c = std::process::Command::new("ip");
                    c.args(["netns", "exec", ns]).arg(&bin);
                    c
                }
                None => std::process::Command::new(&bin),
            };
            let mut child = cmd
                .arg("--config")
                .arg(&cfg)
                .stdin(std::process::Stdio::null())
                .stdout(log)
                .stderr(err)
                // Its own group: a terminal's ^C to the control plane does not reach it, and
                // it survives the control plane (tasks adopt it after a restart).
                .process_group(0)
                .spawn()
                .map_err(|e| TroveError::Internal(format!("starting {}: {e}", bin.display())))?;
            let pid = child.id();
            // Reap it when it exits, so it never lingers as a zombie.
            std::thread::spawn(move || {
                let _ = child.wait();
            });
            tracing::info!(
                instance = spec.instance_id,
                pid,
                ip = spec.ip,
                "local host started"
            );
            Ok(Booted {
                server: format!("local:{pid}:{}", spec.instance_id),
                ip: spec.ip.clone(),
                rpc,
            })
        })
    }

    fn is_up<'a>(&'a self, server: &'a str) -> BoxFuture<'a, bool> {
        Box::pin(async move { parse_handle(server).is_some_and(|(pid, id)| guest_alive(pid, id)) })
    }

    fn destroy<'a>(
        &'a self,
        instance_id: &'a str,
        server: Option<&'a str>,
    ) -> BoxFuture<'a, TroveResult<()>> {
        Box::pin(async move {
            let pid = server
                .and_then(parse_handle)
                .filter(|(pid, id)| *id == instance_id && guest_alive(*pid, id))
                .map(|(pid, _)| pid)
                .or_else(|| find_guest(instance_id));
            if let Some(pid) = pid {
                let id = instance_id;
                signal(pid, rustix::process::Signal::TERM);
                let t0 = Instant::now();
                while guest_alive(pid, id) && t0.elapsed() < Duration::from_secs(40) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                if guest_alive(pid, id) {
                    tracing::warn!(pid, instance = id, "guest ignored SIGTERM; killing it");
                    signal(pid, rustix::process::Signal::KILL);
                }
            }
            let dir = self.host_dir(instance_id);
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|e| {
                    TroveError::Internal(format!("removing {}: {e}", dir.display()))
                })?;
            }
            Ok(())
        })
    }

    fn address_pool(&self) -> Option<Vec<String>> {
        (!self.pool.is_empty()).then(|| self.pool.iter().map(|h| h.ip.clone()).collect())
    }

    fn address_usable(&self, ip: &str) -> bool {
        if let Some(h) = self.pool.iter().find(|h| h.ip == ip)
            && h.netns.is_some()
        {
            // Its ports are in another network stack; the lease table keeps it unique.
            return true;
        }
        let Ok(ip) = ip.parse::<IpAddr>() else {
            return false;
        };
        PORTS
            .iter()
            .all(|p| std::net::TcpListener::bind(SocketAddr::new(ip, *p)).is_ok())
    }
}

/// The loopback addresses the local driver hands out, in order after `last`.
pub fn local_candidates(base: [u8; 2], last: Option<&str>) -> impl Iterator<Item = String> {
    let all = (0u32..=255)
        .flat_map(move |c| (2u32..=254).map(move |d| format!("127.{}.{}.{}", base[1], c, d)));
    let all: Vec<String> = all.collect();
    let start = last
        .and_then(|l| all.iter().position(|a| a == l))
        .map_or(0, |i| i + 1);
    let n = all.len();
    (0..n).map(move |k| all[(start + k) % n].clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_continue_after_the_last_lease_and_wrap() {
        let v: Vec<String> = local_candidates([127, 77], Some("127.77.0.3"))
            .take(2)
            .collect();
        assert_eq!(v, ["127.77.0.4", "127.77.0.5"]);
        let v: Vec<String> = local_candidates([127, 77], None).take(1).collect();
        assert_eq!(v, ["127.77.0.2"]);
        let v: Vec<String> = local_candidates([127, 77], Some("127.77.255.254"))
            .take(1)
            .collect();
        assert_eq!(v, ["127.77.0.2"]);
    }

    #[test]
    fn handles_name_pid_and_instance() {
        assert_eq!(parse_handle("local:42:abc"), Some((42, "abc")));
        assert_eq!(parse_handle("nova:x"), None);
        // Our own pid is not a guest.
        assert!(!guest_alive(std::process::id(), "abc"));
    }
}
