//! The `k2hdkc-dbaas` configuration: one TOML file, one struct, validated before anything
//! starts. Flags override the file. The K2HR3 service shares the control plane's data
//! directory and database (its tables are prefixed `r3_`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Everything `k2hdkc-dbaas` reads from its config file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// State: the SQLite database (unless `database_url`), the service key.
    pub data_dir: Option<PathBuf>,
    /// `sqlite://PATH?mode=rwc` or `postgres://...`; default SQLite `dbaas.db` in `data_dir`.
    pub database_url: Option<String>,
    /// The K2HR3-compatible service.
    pub k2hr3: k2hdkc_k2hr3::Config,
    /// The Trove-compatible API and its compute driver.
    pub trove: TroveConfig,
}

/// The Trove API, its auth and where hosts come from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TroveConfig {
    /// Where the Trove v1.0 API listens.
    pub listen: SocketAddr,
    /// The URL clients and guests reach the API at (default `http://<listen>`).
    pub public_url: Option<String>,
    /// `noauth`, `token:SECRET`, `keystone` (uses `keystone_url`) or `keystone:URL`.
    pub auth: String,
    /// Keystone (v3, without /v3) for `auth = "keystone"`; default `k2hr3.keystone_url`.
    pub keystone_url: Option<String>,
    /// The compute driver: `local` (guest processes on this machine, one loopback address
    /// each) or `openstack` (Nova servers from a guest image, `[trove.openstack]`).
    pub compute: String,
    /// Where `k2hdkc` and `k2hdkc-guest-agent` are (default: next to this binary).
    pub bin_dir: Option<PathBuf>,
    /// Bound on each wait for a guest (seconds); long steps wait a small multiple of it.
    pub guest_timeout_secs: u64,
    /// The project `--quickstart` creates its cluster in.
    pub quickstart_project: String,
    /// The local driver gives hosts the loopback addresses 127.<address_block>.x.y (two
    /// control planes on one machine need different blocks).
    pub address_block: u8,
    /// The openstack driver's cloud, image, network and flavors.
    pub openstack: crate::openstack::OpenStackConfig,
    /// Where backups are kept: the data directory (default) or an S3-compatible store.
    pub backup_store: crate::backup_store::BackupStoreConfig,
    /// The local driver's fixed host pool (addresses, optionally in network namespaces);
    /// empty: a loopback address per host from `address_block`.
    pub local_hosts: Vec<crate::compute::LocalHost>,
}

impl Default for TroveConfig {
    fn default() -> TroveConfig {
        TroveConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8779)),
            public_url: None,
            auth: "noauth".into(),
            keystone_url: None,
            compute: "local".into(),
            bin_dir: None,
            guest_timeout_secs: 120,
            quickstart_project: "demo".into(),
            address_block: 77,
            openstack: Default::default(),
            backup_store: Default::default(),
            local_hosts: Vec::new(),
        }
    }
}

/// Where state lives when neither the file nor a flag says.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/k2hdkc-dbaas";

impl Config {
    /// Read and validate `path`.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        let c: Config =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        c.validate()?;
        Ok(c)
    }

    /// Check what can be checked before opening anything.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut k = self.k2hr3.clone();
        k.data_dir = self.data_dir();
        k.database_url = Some(self.database_url());
        k.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        let t = &self.trove;
        let auth: crate::api::AuthSpec = t
            .auth
            .parse()
            .map_err(|e| anyhow::anyhow!("trove.auth: {e}"))?;
        if auth == crate::api::AuthSpec::Keystone(None)
            && t.keystone_url.is_none()
            && self.k2hr3.keystone_url.is_none()
        {
            anyhow::bail!(
                "trove.auth = \"keystone\" needs trove.keystone_url (or k2hr3.keystone_url)"
            );
        }
        if let Some(u) = &t.public_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            anyhow::bail!("trove.public_url {u:?}: want http(s)://host:port");
        }
        match t.compute.as_str() {
            "local" => {}
            "openstack" => t.openstack.validate().map_err(|e| anyhow::anyhow!(e))?,
            other => anyhow::bail!("trove.compute {other:?}: the drivers are local and openstack"),
        }
        if !(5..=3600).contains(&t.guest_timeout_secs) {
            anyhow::bail!("trove.guest_timeout_secs must be from 5 to 3600");
        }
        if t.quickstart_project.is_empty()
            || !t
                .quickstart_project
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            anyhow::bail!("trove.quickstart_project must be letters, digits, '-' or '_'");
        }
        t.backup_store.validate().map_err(|e| anyhow::anyhow!(e))?;
        for h in &t.local_hosts {
            if h.ip.parse::<std::net::IpAddr>().is_err() {
                anyhow::bail!("trove.local_hosts: {:?} is not an IP address", h.ip);
            }
        }
        if t.address_block == 0 {
            anyhow::bail!("trove.address_block must be from 1 to 255 (127.0.0.x is this host's)");
        }
        if self.k2hr3.listen == t.listen && t.listen.port() != 0 {
            anyhow::bail!("trove.listen and k2hr3.listen are both {}", t.listen);
        }
        Ok(())
    }

    /// The Trove API's public URL.
    pub fn trove_url(&self, bound: SocketAddr) -> String {
        self.trove
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{bound}"))
            .trim_end_matches('/')
            .to_string()
    }

    /// The data directory in effect.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
    }

    /// The database URL in effect.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(u) => u.clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir().join("dbaas.db").display()
            ),
        }
    }

    /// The K2HR3 service's configuration, with the shared directory and database.
    pub fn k2hr3(&self) -> k2hdkc_k2hr3::Config {
        let mut k = self.k2hr3.clone();
        k.data_dir = self.data_dir();
        k.database_url = Some(self.database_url());
        k
    }
}

#[cfg(test)]
mod tests {
    use super::Config;

    #[test]
    fn the_deploy_example_parses_and_validates() {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/config/k2hdkc-dbaas.toml");
        let c = Config::load(&p).expect("deploy/config/k2hdkc-dbaas.toml");
        assert_eq!(c.k2hr3.listen.port(), 18080);
        assert_eq!(c.k2hr3.delete_by_cuk_from.len(), 1);
        assert!(c.k2hr3.extdata.contains_key("trove"));
        assert_eq!(c.trove.listen.port(), 8779);
        assert_eq!(c.trove.auth, "noauth");
        assert!(
            c.database_url()
                .starts_with("sqlite:///var/lib/k2hdkc-dbaas/")
        );
    }

    #[test]
    fn bad_values_are_refused_with_their_name() {
        for (text, want) in [
            ("[k2hr3]\nrole_token_secs = 0\n", "role_token_secs"),
            ("database_url = \"mysql://x\"\n", "database_url"),
            ("[k2hr3]\npublic_url = \"ftp://x\"\n", "public_url"),
            ("[k2hr3]\nlisten = \"nowhere\"\n", "listen"),
            ("unknown = 1\n", "unknown"),
            ("[trove]\nauth = \"basic\"\n", "trove.auth"),
            ("[trove]\nauth = \"keystone\"\n", "keystone_url"),
            ("[trove]\ncompute = \"xen\"\n", "trove.compute"),
            (
                "[trove]\ncompute = \"openstack\"\n",
                "trove.openstack.auth_url",
            ),
            ("[trove]\nguest_timeout_secs = 1\n", "guest_timeout_secs"),
        ] {
            let dir = tempfile::tempdir().expect("tempdir");
            let p = dir.path().join("c.toml");
            std::fs::write(&p, text).expect("write");
            let e = Config::load(&p).expect_err(text).to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
