//! The guest agent's one configuration file (TOML; `deploy/config/k2hdkc-guest-agent.toml` is
//! the commented example), validated before anything starts. The control plane writes it for
//! the local driver; cloud-init writes it on real hosts (Trove's `guest_info.conf` carries the
//! same facts: guest id, key, datastore).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Everything the agent reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Trove's guest id (the instance id); also the node's CUK in the cluster file.
    pub instance_id: String,
    /// The address this host's node listens on (where clients connect).
    pub ip: IpAddr,
    /// Where the agent keeps the node's data, rendered config and its own state.
    pub data_dir: PathBuf,
    /// The `k2hdkc` binary.
    #[serde(default = "default_k2hdkc")]
    pub k2hdkc_bin: PathBuf,
    /// Ports of the node (they are in the cluster file too; used for health and backups).
    #[serde(default)]
    pub ports: Ports,
    /// The cluster secret file handed to `k2hdkc server --secret-file`.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// File with the per-instance key (Trove's `instance_rpc_encr_key`): seals RPC with
    /// secure RPC on, and authenticates the direct transport.
    #[serde(default)]
    pub rpc_key_file: Option<PathBuf>,
    /// Where the cluster file comes from.
    pub k2hr3: K2hr3,
    /// How RPC arrives and heartbeats leave.
    pub rpc: Rpc,
    /// Seconds between heartbeats (Trove: `report_interval`, 30).
    #[serde(default = "default_heartbeat")]
    pub heartbeat_secs: f64,
    /// Extra `k2hdkc server` arguments (e.g. `--fsync always`).
    #[serde(default)]
    pub server_args: Vec<String>,
}

/// The node's ports (CHMPX PORT, CTLPORT and our MEMCACHED_PORT).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ports {
    /// Native protocol (peers, gateways).
    pub native: u16,
    /// Admin HTTP (`/health`, `/archive`).
    pub admin: u16,
    /// memcached clients.
    pub memcached: u16,
}

impl Default for Ports {
    fn default() -> Ports {
        Ports {
            native: 8020,
            admin: 8021,
            memcached: 11211,
        }
    }
}

/// The K2HR3 resource that holds this cluster's file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K2hr3 {
    /// The API (`http://host:18080`).
    pub url: String,
    /// File holding the role token of `<cluster>/server`.
    pub role_token_file: PathBuf,
    /// The resource YRN to read (`yrn:yahoo:::<tenant>:resource:<cluster>/server`).
    pub resource: String,
    /// Seconds between polls for changes.
    #[serde(default = "default_poll")]
    pub poll_secs: f64,
}

/// The RPC transport.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rpc {
    /// `direct` (HTTP, for the local driver) or `amqp` (oslo.messaging over RabbitMQ).
    pub transport: String,
    /// direct: where the agent listens for calls.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// direct: the control plane's URL for heartbeats (`http://127.0.0.1:8779`).
    #[serde(default)]
    pub conductor_url: Option<String>,
    /// amqp: `amqp://user:pass@host:5672/%2f`.
    #[serde(default)]
    pub amqp_url: Option<String>,
    /// amqp: the control exchange (Trove deployments set `trove`).
    #[serde(default = "default_exchange")]
    pub control_exchange: String,
    /// amqp: the conductor's topic.
    #[serde(default = "default_conductor")]
    pub conductor_topic: String,
}

fn default_k2hdkc() -> PathBuf {
    PathBuf::from("/usr/bin/k2hdkc")
}
fn default_heartbeat() -> f64 {
    10.0
}
fn default_poll() -> f64 {
    2.0
}
fn default_exchange() -> String {
    "trove".into()
}
fn default_conductor() -> String {
    "trove-conductor".into()
}

impl Config {
    /// Read and validate `path`.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        let c: Config =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        c.validate()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(c)
    }

    /// Check everything that can be checked before starting.
    pub fn validate(&self) -> Result<(), String> {
        let id_ok = !self.instance_id.is_empty()
            && self.instance_id.len() <= 64
            && self
                .instance_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !id_ok {
            return Err(format!(
                "instance_id {:?}: want 1-64 of [A-Za-z0-9_-]",
                self.instance_id
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err("data_dir is empty".into());
        }
        if !(0.05..=3600.0).contains(&self.heartbeat_secs) {
            return Err(format!(
                "heartbeat_secs = {}: want 0.05 .. 3600",
                self.heartbeat_secs
            ));
        }
        if !(0.05..=3600.0).contains(&self.k2hr3.poll_secs) {
            return Err(format!(
                "k2hr3.poll_secs = {}: want 0.05 .. 3600",
                self.k2hr3.poll_secs
            ));
        }
        if !(self.k2hr3.url.starts_with("http://") || self.k2hr3.url.starts_with("https://")) {
            return Err(format!(
                "k2hr3.url {:?}: want http(s)://host:port",
                self.k2hr3.url
            ));
        }
        if !self.k2hr3.resource.starts_with("yrn:yahoo:") {
            return Err(format!(
                "k2hr3.resource {:?}: want a resource YRN",
                self.k2hr3.resource
            ));
        }
        let p = self.ports;
        if p.native == 0 || p.admin == 0 || p.memcached == 0 {
            return Err("ports: 0 is not a port here".into());
        }
        match self.rpc.transport.as_str() {
            "direct" => {
                if self.rpc.listen.is_none() {
                    return Err("rpc.listen is required with transport = \"direct\"".into());
                }
                if self.rpc_key_file.is_none() {
                    return Err(
                        "rpc_key_file is required with transport = \"direct\" (it authenticates calls)"
                            .into(),
                    );
                }
                if let Some(u) = &self.rpc.conductor_url
                    && !(u.starts_with("http://") || u.starts_with("https://"))
                {
                    return Err(format!("rpc.conductor_url {u:?}: want http(s)://host:port"));
                }
            }
            "amqp" => match &self.rpc.amqp_url {
                Some(u) if u.starts_with("amqp://") || u.starts_with("amqps://") => {}
                Some(u) => return Err(format!("rpc.amqp_url {u:?}: want amqp://...")),
                None => return Err("rpc.amqp_url is required with transport = \"amqp\"".into()),
            },
            t => return Err(format!("rpc.transport {t:?}: want \"direct\" or \"amqp\"")),
        }
        Ok(())
    }

    /// The per-instance key, if configured.
    pub fn rpc_key(&self) -> anyhow::Result<Option<String>> {
        match &self.rpc_key_file {
            None => Ok(None),
            Some(p) => {
                let k = std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))?;
                let k = k.trim().to_string();
                if k.len() < 16 {
                    anyhow::bail!("{}: an RPC key has at least 16 characters", p.display());
                }
                Ok(Some(k))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Config;

    #[test]
    fn the_deploy_example_parses_and_validates() {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/config/k2hdkc-guest-agent.toml");
        let c = Config::load(&p).expect("deploy/config/k2hdkc-guest-agent.toml");
        assert_eq!(c.rpc.transport, "amqp");
        assert_eq!(c.rpc.control_exchange, "trove");
        assert_eq!(c.ports.memcached, 11211);
        let t = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/trove/guest-agent-amqp.toml");
        let c = Config::load(&t).expect("deploy/trove/guest-agent-amqp.toml");
        assert_eq!(
            (c.rpc.transport.as_str(), c.rpc.conductor_topic.as_str()),
            ("amqp", "trove-conductor")
        );
    }

    #[test]
    fn bad_values_are_refused_with_their_name() {
        let base = "instance_id = \"i-1\"\nip = \"127.0.0.2\"\ndata_dir = \"/tmp/x\"\n\
                    [k2hr3]\nurl = \"http://127.0.0.1:18080\"\nrole_token_file = \"/t\"\n\
                    resource = \"yrn:yahoo:::t:resource:c/server\"\n";
        let ok = format!("{base}[rpc]\ntransport = \"direct\"\nlisten = \"127.0.0.2:8029\"\n");
        let ok = ok.replace("data_dir", "rpc_key_file = \"/k\"\ndata_dir");
        assert!(toml::from_str::<Config>(&ok).unwrap().validate().is_ok());
        for (text, want) in [
            (ok.replace("i-1", "a b"), "instance_id"),
            (ok.replace("direct", "carrier-pigeon"), "rpc.transport"),
            (ok.replace("listen = \"127.0.0.2:8029\"", ""), "rpc.listen"),
            (ok.replace("http://127.0.0.1:18080", "ftp://x"), "k2hr3.url"),
            (
                ok.replace("yrn:yahoo:::t:resource:c/server", "c/server"),
                "k2hr3.resource",
            ),
            (
                format!("{base}[rpc]\ntransport = \"amqp\"\n"),
                "rpc.amqp_url",
            ),
        ] {
            let e = match toml::from_str::<Config>(&text) {
                Ok(c) => c.validate().unwrap_err(),
                Err(e) => e.to_string(),
            };
            assert!(e.contains(want), "{want}: {e}");
        }
        assert!(toml::from_str::<Config>(&format!("{ok}bogus = 1\n")).is_err());
    }
}
