//! The server's configuration: one serde struct, read from TOML, overridden by command-line
//! flags, validated before anything starts. `deploy/config/k2hdkc-server.toml` is the
//! commented example; a test parses it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k2hdkc_storage::{EngineConfig, FileOptions, Fsync, HookConfig, KeyringConfig, StoreConfig};
use serde::{Deserialize, Serialize};

/// Errors found in a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML did not parse or has unknown fields.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<toml::de::Error>,
    },
    /// A value is out of range or inconsistent with another.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Storage mode of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StorageMode {
    /// Nothing survives a restart.
    #[default]
    Memory,
    /// Crash-safe files in `data_dir`.
    File,
    /// Files in a temporary directory removed at shutdown.
    Temporary,
}

impl std::str::FromStr for StorageMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "memory" => Ok(StorageMode::Memory),
            "file" => Ok(StorageMode::File),
            "temporary" => Ok(StorageMode::Temporary),
            _ => Err(format!(
                "unknown storage mode {s:?}: want memory | file | temporary"
            )),
        }
    }
}

/// `[storage]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// memory | file | temporary.
    pub mode: StorageMode,
    /// Data directory (file mode).
    pub data_dir: Option<PathBuf>,
    /// always | batch[:<ms>] | never.
    pub fsync: String,
    /// Largest value in bytes (1 MiB default, at most 64 MiB).
    pub max_value_bytes: usize,
    /// Default TTL in seconds for writes without one (0 = never).
    pub default_ttl_secs: u32,
    /// How long delete tombstones are kept.
    pub tombstone_grace_secs: u32,
    /// Previous versions kept per key.
    pub history: usize,
    /// Compact the log when it exceeds this many bytes (and the last snapshot).
    pub compaction_min_bytes: u64,
    /// Pass phrases for encryption at rest; the first is the default.
    pub pass_phrases: Vec<String>,
    /// Files whose contents are keys (HKDF); used after the pass phrases.
    pub key_files: Vec<PathBuf>,
    /// Encrypt every value with the default pass phrase unless a request says otherwise.
    pub encrypt_by_default: bool,
    /// PBKDF2 iterations for pass phrases.
    pub pbkdf2_iterations: u32,
    /// The transaction hook.
    pub hook: Option<HookConfig>,
    /// This node's id in versions.
    pub node_id: u32,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            mode: StorageMode::Memory,
            data_dir: None,
            fsync: "batch".into(),
            max_value_bytes: 1 << 20,
            default_ttl_secs: 0,
            tombstone_grace_secs: 3600,
            history: 0,
            compaction_min_bytes: 64 << 20,
            pass_phrases: Vec::new(),
            key_files: Vec::new(),
            encrypt_by_default: false,
            pbkdf2_iterations: 210_000,
            hook: None,
            node_id: 0,
        }
    }
}

/// `[listen]`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// memcached protocols (text, meta, binary), e.g. "127.0.0.1:11211".
    pub memcached: Option<SocketAddr>,
    /// memcached protocols on a Unix socket (memcached's `-s`), for clients on the same host
    /// as a gateway, with no network port. Plain, never TLS: the socket file's permissions
    /// (0660, so the owner and its group) decide who may connect.
    pub memcached_socket: Option<PathBuf>,
    /// Native protocol.
    pub native: Option<SocketAddr>,
    /// Admin HTTP (/health, /status, /metrics).
    pub admin: Option<SocketAddr>,
    /// TLS on the memcached port (`[listen.memcached_tls]`): when set, the port speaks only
    /// TLS, so clients are required to use it.
    pub memcached_tls: Option<ClientTlsConfig>,
}

/// `[listen.memcached_tls]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsConfig {
    /// The port's certificate chain (PEM), which clients verify.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA (PEM).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Lowest TLS version: "1.2" (default) or "1.3".
    #[serde(default)]
    pub min_version: Option<String>,
}

impl ClientTlsConfig {
    /// The acceptor (reads and checks the files).
    pub fn acceptor(&self) -> Result<k2hdkc_client::TlsAcceptor, String> {
        k2hdkc_client::tls::client_port_acceptor(
            &self.cert,
            &self.key,
            self.client_ca.as_deref(),
            self.min_version.as_deref(),
        )
    }
}

/// `[limits]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Connections served at once; more are closed at once with an error.
    pub max_connections: usize,
    /// Close connections idle this long (0 = never).
    pub idle_timeout_secs: u64,
    /// Largest request (command line plus data) in bytes.
    pub max_request_bytes: usize,
    /// Most keys in one multi-get.
    pub max_keys_per_get: usize,
    /// Worker threads (0 = one per CPU core). Several daemons sharing a few cores (a dev
    /// cluster, a test host) spend less CPU per request with 1: fewer cross-thread wake-ups.
    pub threads: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 4096,
            idle_timeout_secs: 0,
            max_request_bytes: 2 << 20,
            max_keys_per_get: 16384,
            threads: 0,
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// human | json.
    pub format: String,
    /// A tracing filter, e.g. "info" or "k2hdkc_node=debug".
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: "human".into(),
            level: "info".into(),
        }
    }
}

/// `[cluster]`: membership. A node with no `join` addresses (and not a gateway) runs alone.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This node's unique name (`--name`); defaults to its native address.
    pub name: Option<String>,
    /// Cluster name; nodes of another cluster are refused.
    pub cluster: String,
    /// Native addresses of nodes to join through (`--join`); a node may list itself, which
    /// starts a new cluster when nobody else answers.
    pub join: Vec<String>,
    /// Serve as a gateway (K2HDKC slave): route every request to its owners, hold no data.
    pub gateway: bool,
    /// A gateway sends plain sets to the key's primary and the replicas its write quorum
    /// needs at once, with a version it chose, instead of through the primary (one network
    /// hop less per set); the primary still decides (see docs/cluster.md). Off: every
    /// request goes through the primary.
    pub direct_writes: bool,
    /// Failure domain of this node (replicas go to distinct zones).
    pub zone: String,
    /// Relative capacity (weight) of this node.
    pub capacity: u32,
    /// Interval of heartbeats to every peer, in milliseconds.
    pub heartbeat_ms: u64,
    /// A peer is down after this long without an answer, in milliseconds.
    pub failure_timeout_ms: u64,
    /// Longest wait for replicas or a forwarded request, in milliseconds.
    pub request_timeout_ms: u64,
    /// Complete data movements automatically once every transfer is done (CHMPX AUTOMERGE).
    pub auto_complete: bool,
    /// Every this many seconds the leading node compares the copies of every partition
    /// (`ctl verify`) and has the owners of each differing partition exchange their records
    /// newer than the tombstone grace time (0 = never).
    pub anti_entropy_secs: u64,
    /// File holding the cluster secret: nodes, gateways and `ctl` prove they know it (an
    /// HMAC-SHA256 token derived from it travels, never the secret); requests between nodes
    /// without it are refused. Without a secret, cluster traffic is not authenticated.
    pub secret_file: Option<PathBuf>,
    /// A CHMPX-style description of the whole cluster (INI, YAML or JSON; see `chmpx`). It
    /// sets the cluster name, this node's name and listeners, the nodes to join and the
    /// replication; it is re-read every `config_poll_ms` and the cluster follows it.
    pub chmpx_file: Option<PathBuf>,
    /// Which SVRNODE entry is this node: its CTLPORT (`--ctlport`, CHMPX's `-ctlport`).
    pub self_ctlport: Option<u16>,
    /// Which SVRNODE entry is this node: its CUK (`--cuk`).
    pub self_cuk: Option<String>,
    /// How often `chmpx_file` is checked for changes, in milliseconds.
    pub config_poll_ms: u64,
    /// Mutual TLS on the native port (`[cluster.tls]`): nodes, gateways and tools present
    /// certificates signed by one cluster CA; connections without one are refused.
    pub tls: Option<TlsConfig>,
}

/// `[cluster.tls]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// CA certificate (PEM) that signs every node's, gateway's and tool's certificate.
    pub ca: PathBuf,
    /// This node's certificate chain (PEM).
    pub cert: PathBuf,
    /// This node's private key (PEM).
    pub key: PathBuf,
    /// Lowest TLS version: "1.2" (default) or "1.3".
    #[serde(default)]
    pub min_version: Option<String>,
}

impl TlsConfig {
    /// As the client library takes it.
    pub fn files(&self) -> k2hdkc_client::TlsFiles {
        k2hdkc_client::TlsFiles {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            min_version: self.min_version.clone(),
        }
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            name: None,
            cluster: "k2hdkc".into(),
            join: Vec::new(),
            gateway: false,
            direct_writes: true,
            zone: "default".into(),
            capacity: 100,
            heartbeat_ms: 500,
            failure_timeout_ms: 3000,
            request_timeout_ms: 5000,
            auto_complete: true,
            anti_entropy_secs: 60,
            secret_file: None,
            chmpx_file: None,
            self_ctlport: None,
            self_cuk: None,
            config_poll_ms: 1000,
            tls: None,
        }
    }
}

impl ClusterConfig {
    /// Whether this node takes part in a cluster.
    pub fn enabled(&self) -> bool {
        self.gateway || !self.join.is_empty()
    }

    /// The token that authenticates cluster traffic, from `secret_file` (`None` without one).
    pub fn token(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        let Some(p) = &self.secret_file else {
            return Ok(None);
        };
        let secret = std::fs::read(p).map_err(|source| ConfigError::Read {
            path: p.clone(),
            source,
        })?;
        let secret = secret.trim_ascii();
        if secret.len() < 16 {
            return Err(ConfigError::Invalid(format!(
                "{}: a cluster secret needs at least 16 bytes",
                p.display()
            )));
        }
        Ok(Some(cluster_token(secret, &self.cluster)))
    }
}

/// The credential derived from a cluster secret: hex HMAC-SHA256 over the cluster name, so the
/// secret itself never crosses the network and differs per cluster.
pub fn cluster_token(secret: &[u8], cluster: &str) -> Vec<u8> {
    use openssl::{hash::MessageDigest, pkey::PKey, sign::Signer};
    let key = PKey::hmac(secret).expect("HMAC key");
    let mut s = Signer::new(MessageDigest::sha256(), &key).expect("HMAC signer");
    s.update(b"k2hdkc-cluster-v1:").expect("HMAC update");
    s.update(cluster.as_bytes()).expect("HMAC update");
    let mac = s.sign_to_vec().expect("HMAC");
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .into_bytes()
}

/// The whole server configuration.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Storage engine settings.
    pub storage: StorageConfig,
    /// Listeners.
    pub listen: ListenConfig,
    /// Limits.
    pub limits: LimitsConfig,
    /// Logging.
    pub log: LogConfig,
    /// Cluster membership.
    pub cluster: ClusterConfig,
}

impl ServerConfig {
    /// Read a TOML file.
    pub fn from_file(path: &Path) -> Result<ServerConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source: Box::new(source),
        })
    }

    /// Check ranges and combinations.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.into()));
        let s = &self.storage;
        if s.mode == StorageMode::File && s.data_dir.is_none() {
            return bad("storage.mode = \"file\" needs storage.data_dir (--data-dir)");
        }
        s.fsync.parse::<Fsync>().map_err(ConfigError::Invalid)?;
        if let Some(t) = &self.cluster.tls {
            // Both sides are built now, so unreadable or mismatched files stop the start.
            let f = t.files();
            f.acceptor()
                .and_then(|_| f.connector())
                .map_err(|e| ConfigError::Invalid(format!("cluster.tls: {e}")))?;
        }
        if let Some(t) = &self.listen.memcached_tls {
            if self.listen.memcached.is_none() {
                return bad("listen.memcached_tls needs listen.memcached (--memcached-listen)");
            }
            t.acceptor()
                .map_err(|e| ConfigError::Invalid(format!("listen.memcached_tls: {e}")))?;
        }
        if s.max_value_bytes == 0 || s.max_value_bytes > k2hdkc_storage::MAX_VALUE_CEILING {
            return bad("storage.max_value_bytes must be between 1 and 67108864");
        }
        if s.encrypt_by_default && s.pass_phrases.is_empty() && s.key_files.is_empty() {
            return bad("storage.encrypt_by_default needs a pass phrase or key file");
        }
        if s.pbkdf2_iterations < 1000 {
            return bad("storage.pbkdf2_iterations must be at least 1000");
        }
        if self.listen.memcached.is_none()
            && self.listen.native.is_none()
            && self.listen.memcached_socket.is_none()
        {
            return bad(
                "nothing to serve: give listen.memcached (--memcached-listen), listen.memcached_socket or listen.native",
            );
        }
        if let Some(p) = &self.listen.memcached_socket
            && (p.as_os_str().is_empty() || p.as_os_str().len() > 100)
        {
            // sun_path holds 108 bytes; a longer path fails at bind with a vaguer error.
            return bad("listen.memcached_socket must be a path of 1 to 100 bytes");
        }
        let l = &self.limits;
        if l.max_connections == 0 || l.max_request_bytes < 1024 || l.max_keys_per_get == 0 {
            return bad("limits must be positive (max_request_bytes at least 1024)");
        }
        if l.max_request_bytes < s.max_value_bytes {
            return bad("limits.max_request_bytes must be at least storage.max_value_bytes");
        }
        if !matches!(self.log.format.as_str(), "human" | "json") {
            return bad("log.format must be human or json");
        }
        if let Some(h) = &s.hook {
            h.validate()
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        }
        let c = &self.cluster;
        if c.enabled() {
            if self.listen.native.is_none() {
                return bad("a cluster node needs listen.native (--listen / --native-listen)");
            }
            if c.join.is_empty() {
                return bad("a gateway needs cluster.join (--join) to find the cluster");
            }
            for a in &c.join {
                if !a.contains(':') {
                    return bad("cluster.join entries are host:port native addresses");
                }
            }
            if c.name.as_ref().is_some_and(|n| {
                n.is_empty() || n.len() > 128 || n.chars().any(|ch| ch.is_whitespace())
            }) {
                return bad("cluster.name is 1-128 characters without spaces");
            }
            if c.cluster.is_empty() || c.zone.is_empty() {
                return bad("cluster.cluster and cluster.zone must not be empty");
            }
            if c.heartbeat_ms == 0 || c.failure_timeout_ms < 2 * c.heartbeat_ms {
                return bad("cluster.failure_timeout_ms must be at least twice heartbeat_ms");
            }
            if c.request_timeout_ms < 100 {
                return bad("cluster.request_timeout_ms must be at least 100");
            }
        }
        Ok(())
    }

    /// This node's name in a cluster: `cluster.name`, else its native address.
    pub fn node_name(&self) -> String {
        self.cluster.name.clone().unwrap_or_else(|| {
            self.listen
                .native
                .map_or_else(|| "k2hdkc".into(), |a| a.to_string())
        })
    }

    /// The origin id stamped on versions: `storage.node_id`, or in a cluster a non-zero hash
    /// of the node name (last-writer-wins breaks ties between nodes by it).
    pub fn node_id(&self) -> u32 {
        if self.storage.node_id != 0 || !self.cluster.enabled() {
            return self.storage.node_id;
        }
        let h = k2hdkc_layout::key_hash(self.node_name().as_bytes());
        (h as u32).max(1)
    }

    /// The storage configuration for [`k2hdkc_storage::Store::open`].
    pub fn store_config(&self) -> Result<StoreConfig, ConfigError> {
        let s = &self.storage;
        let fsync: Fsync = s.fsync.parse().map_err(ConfigError::Invalid)?;
        let engine = match s.mode {
            StorageMode::Memory => EngineConfig::Memory,
            StorageMode::File => {
                let mut o = FileOptions::new(s.data_dir.clone().expect("validated"));
                o.fsync = fsync;
                o.compaction_min_bytes = s.compaction_min_bytes;
                EngineConfig::File(o)
            }
            StorageMode::Temporary => EngineConfig::Temporary {
                parent: s.data_dir.clone(),
                fsync,
            },
        };
        let mut key_material = Vec::new();
        for p in &s.key_files {
            key_material.push(std::fs::read(p).map_err(|source| ConfigError::Read {
                path: p.clone(),
                source,
            })?);
        }
        let has_key = !s.pass_phrases.is_empty() || !key_material.is_empty();
        Ok(StoreConfig {
            engine,
            node_id: self.node_id(),
            max_value_len: s.max_value_bytes,
            default_ttl_secs: s.default_ttl_secs,
            tombstone_grace_secs: s.tombstone_grace_secs,
            history: s.history,
            keyring: KeyringConfig {
                phrases: s.pass_phrases.clone(),
                key_material,
                default: has_key.then_some(0),
                iterations: Some(s.pbkdf2_iterations),
            },
            encrypt_by_default: s.encrypt_by_default,
            hook: s.hook.clone(),
            maintenance_interval: Some(Duration::from_secs(1)),
            ..StoreConfig::memory()
        })
    }
}
