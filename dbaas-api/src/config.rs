//! The `k2hdkc-dbaas` configuration: one TOML file, one struct, validated before anything
//! starts. Flags override the file. The K2HR3 service shares the control plane's data
//! directory and database (its tables are prefixed `r3_`).

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
        k.validate().map_err(|e| anyhow::anyhow!("{e}"))
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
        ] {
            let dir = tempfile::tempdir().expect("tempdir");
            let p = dir.path().join("c.toml");
            std::fs::write(&p, text).expect("write");
            let e = Config::load(&p).expect_err(text).to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
