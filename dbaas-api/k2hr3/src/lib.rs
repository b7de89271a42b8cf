//! A K2HR3-compatible RBAC and resource service (what K2HR3 API does for K2HDKC DBaaS):
//! tenants and local users, user tokens, roles with hosts, policies, resources whose string
//! data is a template expanded per reader, role tokens, host registration with a role token,
//! userdata/extdata for cloud-init, and the list API, under `/v1` with K2HR3's JSON shapes.
//!
//! Layers: [`yrn`] (names), [`crypto`] (tokens, hashes, sealing), [`pyval`] (query values),
//! [`template`] (the template language), [`db`] (the only place SQL lives), [`api`] (HTTP).
//! [`Config`] is validated before anything is opened; [`Service::open`] then owns the database
//! and the service key (a 0600 file in the data directory: it seals secrets and registerpaths).

pub mod api;
pub mod crypto;
pub mod db;
pub mod error;
pub mod keystone;
pub mod pyval;
pub mod template;
pub mod yrn;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use error::{R3Error, R3Result};

/// The service's configuration (the `[k2hr3]` section of the `k2hdkc-dbaas` config).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the API listens (K2HR3 API's usual port is 18080).
    pub listen: SocketAddr,
    /// Holds the service key and, by default, the SQLite database. Set by the binary from
    /// its own data directory, not from the section.
    #[serde(skip)]
    pub data_dir: PathBuf,
    /// `sqlite://...` or `postgres://...`; default: `k2hr3.db` in `data_dir`. Set by the
    /// binary (the control plane's database), not from the section.
    #[serde(skip)]
    pub database_url: Option<String>,
    /// The URL nodes reach the API at (put into userdata); default `http://<listen>`.
    pub public_url: Option<String>,
    /// Lifetime of user tokens, seconds.
    pub user_token_secs: u64,
    /// Default lifetime of role tokens, seconds (a request may ask for another, or 0 = never).
    pub role_token_secs: u64,
    /// Source addresses allowed to delete hosts by cuk without a token (cloud notification
    /// listeners, every tenant); scoped users may always remove hosts of their own tenant.
    pub delete_by_cuk_from: Vec<IpAddr>,
    /// Named extdata templates (`GET /v1/extdata/<name>/<registerpath>`).
    pub extdata: BTreeMap<String, ExtData>,
    /// OpenStack Keystone (`http(s)://host:port`, without `/v3`): user tokens may then be made
    /// from Keystone tokens; its projects are the user's tenants.
    pub keystone_url: Option<String>,
}

/// One extdata entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtData {
    /// Only requests with exactly this User-Agent are served.
    pub useragent: String,
    /// Content-Type of the answer.
    pub contenttype: String,
    /// The template; default: the built-in registration script.
    #[serde(default)]
    pub template_file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Config {
        let mut extdata = BTreeMap::new();
        extdata.insert(
            "trove".to_string(),
            ExtData {
                useragent: "extdata_k2hr3_trove".into(),
                contenttype: "text/x-shellscript".into(),
                template_file: None,
            },
        );
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 18080)),
            data_dir: PathBuf::from("k2hr3-data"),
            database_url: None,
            public_url: None,
            user_token_secs: 86_400,
            role_token_secs: 86_400,
            delete_by_cuk_from: Vec::new(),
            extdata,
            keystone_url: None,
        }
    }
}

impl Config {
    /// Check everything that can be checked before opening anything.
    pub fn validate(&self) -> Result<(), String> {
        if self.data_dir.as_os_str().is_empty() {
            return Err("k2hr3.data_dir is empty".into());
        }
        if let Some(u) = &self.database_url
            && !(u.starts_with("sqlite:")
                || u.starts_with("postgres://")
                || u.starts_with("postgresql://"))
        {
            return Err(format!(
                "k2hr3.database_url {u:?}: use sqlite://PATH or postgres://..."
            ));
        }
        if let Some(u) = &self.public_url
            && (!(u.starts_with("http://") || u.starts_with("https://")) || u.ends_with('/'))
        {
            return Err(format!(
                "k2hr3.public_url {u:?}: want http(s)://host:port without a trailing /"
            ));
        }
        if let Some(u) = &self.keystone_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err(format!(
                "k2hr3.keystone_url {u:?}: want http(s)://host:port"
            ));
        }
        for (what, v) in [
            ("user_token_secs", self.user_token_secs),
            ("role_token_secs", self.role_token_secs),
        ] {
            if v == 0 || v > 10 * 365 * 86_400 {
                return Err(format!("k2hr3.{what} = {v}: want 1 second .. 10 years"));
            }
        }
        for (name, e) in &self.extdata {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(format!("k2hr3.extdata {name:?}: names are [A-Za-z0-9_-]+"));
            }
            if e.useragent.is_empty() || e.contenttype.is_empty() {
                return Err(format!(
                    "k2hr3.extdata.{name}: useragent and contenttype are required"
                ));
            }
        }
        Ok(())
    }

    /// The database URL in effect.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(u) => u.clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("k2hr3.db").display()
            ),
        }
    }

    /// The URL nodes are told to use.
    pub fn public_url(&self) -> String {
        match &self.public_url {
            Some(u) => u.clone(),
            None => format!("http://{}", self.listen),
        }
    }
}

/// An opened service: database, key and configuration.
#[derive(Debug, Clone)]
pub struct Service {
    svc: Arc<api::Svc>,
}

impl Service {
    /// Validate `cfg`, create the data directory, open (and migrate) the database and load or
    /// create the service key.
    pub async fn open(cfg: Config) -> R3Result<Service> {
        cfg.validate().map_err(R3Error::BadRequest)?;
        std::fs::create_dir_all(&cfg.data_dir)
            .map_err(|e| R3Error::Internal(format!("creating {}: {e}", cfg.data_dir.display())))?;
        let keys = crypto::Keys::load_or_create(&cfg.data_dir.join("k2hr3.key"))
            .map_err(|e| R3Error::Internal(format!("service key: {e}")))?;
        let db = db::Db::open(&cfg.database_url()).await?;
        let keystone = cfg
            .keystone_url
            .as_deref()
            .map(keystone::Keystone::new)
            .transpose()?;
        Ok(Service {
            svc: Arc::new(api::Svc {
                db,
                keys,
                cfg,
                keystone,
            }),
        })
    }

    /// The database (for local administration).
    pub fn db(&self) -> &db::Db {
        &self.svc.db
    }

    /// The configuration in effect.
    pub fn config(&self) -> &Config {
        &self.svc.cfg
    }

    /// The HTTP router (serve with `into_make_service_with_connect_info::<SocketAddr>()`).
    pub fn router(&self) -> axum::Router {
        api::router(self.svc.clone())
    }

    /// Serve on an already bound listener until `shutdown` completes.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(
            listener,
            self.router()
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
    }

    /// Add or replace a local user with a password and its tenants (created as needed).
    pub async fn add_user(&self, name: &str, password: &str, tenants: &[String]) -> R3Result<()> {
        check_name("user", name)?;
        if password.len() < 8 {
            return Err(R3Error::BadRequest(
                "a password has at least 8 characters".into(),
            ));
        }
        for t in tenants {
            check_name("tenant", t)?;
        }
        if tenants.is_empty() {
            return Err(R3Error::BadRequest(
                "a user needs at least one tenant".into(),
            ));
        }
        // YRNs carry tenants in lower case.
        let tenants: Vec<String> = tenants.iter().map(|t| t.to_ascii_lowercase()).collect();
        self.svc
            .db
            .put_user(name, &crypto::hash_password(password), &tenants)
            .await
    }
}

/// User and tenant names: what fits into a YRN segment.
fn check_name(what: &str, n: &str) -> R3Result<()> {
    if n.is_empty()
        || n.len() > 64
        || !n
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@'))
    {
        return Err(R3Error::BadRequest(format!(
            "{what} name {n:?}: want 1-64 of [A-Za-z0-9_.@-]"
        )));
    }
    Ok(())
}
