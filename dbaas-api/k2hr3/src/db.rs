//! The service's state in SQL (the only module with SQL in it): SQLite by default,
//! PostgreSQL when the URL says so, through sqlx's `Any` driver with `$n` placeholders that
//! both accept. Everything is TEXT or BIGINT (the `Any` driver decodes nothing else on both);
//! lists and maps are JSON text; absent optional fields are empty strings.
//!
//! Invariants: the schema carries a version (`r3_schema`), migrated forward at open and
//! refused when newer than this build; token rows hold a hash of the token (lookups) and the
//! token sealed under the service key (listing), never the plain token.

use serde_json::Value;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::error::{R3Error, R3Result};

/// Schema version of this build.
pub const SCHEMA_VERSION: i64 = 1;

const SCHEMA_V1: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS r3_tenants (name TEXT PRIMARY KEY, id TEXT NOT NULL, display TEXT NOT NULL, description TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS r3_users (name TEXT PRIMARY KEY, password TEXT NOT NULL, created BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS r3_tenant_users (tenant TEXT NOT NULL, user_name TEXT NOT NULL, PRIMARY KEY (tenant, user_name))",
    "CREATE TABLE IF NOT EXISTS r3_tokens (hash TEXT PRIMARY KEY, kind TEXT NOT NULL, user_name TEXT NOT NULL, tenant TEXT NOT NULL, role TEXT NOT NULL, created BIGINT NOT NULL, expire BIGINT NOT NULL, sealed TEXT NOT NULL, info TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS r3_tokens_role ON r3_tokens (role)",
    "CREATE TABLE IF NOT EXISTS r3_roles (yrn TEXT PRIMARY KEY, tenant TEXT NOT NULL, policies TEXT NOT NULL, aliases TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS r3_hosts (role TEXT NOT NULL, host TEXT NOT NULL, is_ip BIGINT NOT NULL, port BIGINT NOT NULL, cuk TEXT NOT NULL, extra TEXT NOT NULL, tag TEXT NOT NULL, inboundip TEXT NOT NULL, outboundip TEXT NOT NULL, created BIGINT NOT NULL, PRIMARY KEY (role, host, port, cuk))",
    "CREATE TABLE IF NOT EXISTS r3_policies (yrn TEXT PRIMARY KEY, tenant TEXT NOT NULL, effect TEXT NOT NULL, actions TEXT NOT NULL, resources TEXT NOT NULL, aliases TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS r3_resources (yrn TEXT PRIMARY KEY, tenant TEXT NOT NULL, rtype TEXT NOT NULL, data TEXT NOT NULL, rkeys TEXT NOT NULL, aliases TEXT NOT NULL, expire BIGINT NOT NULL)",
];

/// A host of a role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Host name or IP address.
    pub host: String,
    /// Whether `host` is an IP address.
    pub is_ip: bool,
    /// Port (0 = any).
    pub port: i64,
    /// Container unique key (instance id), "" when none.
    pub cuk: String,
    /// `openstack-auto-v1` etc.
    pub extra: String,
    /// Free text (the DBaaS puts the FQDN here).
    pub tag: String,
    /// Address seen from inside (NAT).
    pub inboundip: String,
    /// Address seen from outside (NAT).
    pub outboundip: String,
}

/// A role.
#[derive(Debug, Clone)]
pub struct Role {
    /// Its YRN.
    pub yrn: String,
    /// Policy YRNs.
    pub policies: Vec<String>,
    /// Role YRNs it includes.
    pub aliases: Vec<String>,
}

/// A policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Its YRN.
    pub yrn: String,
    /// allow | deny.
    pub effect: String,
    /// Action YRNs.
    pub actions: Vec<String>,
    /// Resource YRNs.
    pub resources: Vec<String>,
    /// Policy YRNs it includes.
    pub aliases: Vec<String>,
}

/// A resource.
#[derive(Debug, Clone)]
pub struct Resource {
    /// Its YRN.
    pub yrn: String,
    /// string | object.
    pub rtype: String,
    /// The data (a JSON text for objects).
    pub data: String,
    /// Keys.
    pub keys: serde_json::Map<String, Value>,
    /// Resource YRNs it includes.
    pub aliases: Vec<String>,
    /// Unix seconds after which it is gone (0 = never).
    pub expire: i64,
}

/// A token row.
#[derive(Debug, Clone)]
pub struct Token {
    /// Hash of the token.
    pub hash: String,
    /// "U" or "R".
    pub kind: String,
    /// The user who made it.
    pub user: String,
    /// Tenant of a scoped user token or of a role token ("" for unscoped).
    pub tenant: String,
    /// Role YRN of a role token.
    pub role: String,
    /// Unix seconds.
    pub created: i64,
    /// Unix seconds after which it is refused (0 = never).
    pub expire: i64,
    /// The token, sealed.
    pub sealed: String,
    /// JSON: hostname, ip, port, cuk of who asked for it.
    pub info: Value,
}

/// A tenant.
#[derive(Debug, Clone)]
pub struct Tenant {
    /// Name.
    pub name: String,
    /// Id.
    pub id: String,
    /// Display name.
    pub display: String,
    /// Description.
    pub description: String,
}

fn json_list(s: &str) -> Vec<String> {
    serde_json::from_str(s).unwrap_or_default()
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("JSON")
}

/// Unix seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The database.
#[derive(Clone, Debug)]
pub struct Db {
    pool: AnyPool,
}

fn host_of(r: &AnyRow) -> R3Result<Host> {
    Ok(Host {
        host: r.try_get("host")?,
        is_ip: r.try_get::<i64, _>("is_ip")? != 0,
        port: r.try_get("port")?,
        cuk: r.try_get("cuk")?,
        extra: r.try_get("extra")?,
        tag: r.try_get("tag")?,
        inboundip: r.try_get("inboundip")?,
        outboundip: r.try_get("outboundip")?,
    })
}

fn token_of(r: &AnyRow) -> R3Result<Token> {
    Ok(Token {
        hash: r.try_get("hash")?,
        kind: r.try_get("kind")?,
        user: r.try_get("user_name")?,
        tenant: r.try_get("tenant")?,
        role: r.try_get("role")?,
        created: r.try_get("created")?,
        expire: r.try_get("expire")?,
        sealed: r.try_get("sealed")?,
        info: serde_json::from_str(&r.try_get::<String, _>("info")?).unwrap_or(Value::Null),
    })
}

impl Db {
    /// Connect to `url` (`sqlite://PATH?mode=rwc` or `postgres://...`) and migrate.
    pub async fn open(url: &str) -> R3Result<Db> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        let mut o = AnyPoolOptions::new().max_connections(if sqlite { 1 } else { 8 });
        if sqlite {
            // One connection: an in-memory SQLite database exists once per connection, and
            // SQLite serialises writers anyway.
            o = o.idle_timeout(None).max_lifetime(None);
        }
        let pool = o.connect(url).await?;
        if sqlite {
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await
                .ok();
            sqlx::query("PRAGMA busy_timeout = 5000")
                .execute(&pool)
                .await
                .ok();
        }
        let db = Db { pool };
        db.migrate().await?;
        Ok(db)
    }

    async fn migrate(&self) -> R3Result<()> {
        sqlx::query("CREATE TABLE IF NOT EXISTS r3_schema (version BIGINT NOT NULL)")
            .execute(&self.pool)
            .await?;
        let v: Option<i64> = sqlx::query("SELECT MAX(version) AS v FROM r3_schema")
            .fetch_one(&self.pool)
            .await?
            .try_get("v")
            .ok();
        let v = v.unwrap_or(0);
        if v > SCHEMA_VERSION {
            return Err(R3Error::Internal(format!(
                "the K2HR3 database has schema version {v}; this build knows up to {SCHEMA_VERSION}"
            )));
        }
        if v < 1 {
            for s in SCHEMA_V1 {
                sqlx::query(*s).execute(&self.pool).await?;
            }
            sqlx::query("INSERT INTO r3_schema (version) VALUES ($1)")
                .bind(1i64)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    // ---- tenants and users

    /// Create the tenant if it does not exist.
    pub async fn ensure_tenant(&self, name: &str) -> R3Result<()> {
        sqlx::query("INSERT INTO r3_tenants (name, id, display, description) VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .bind(crate::crypto::random_token()[..32].to_string())
            .bind(name)
            .bind(format!("tenant {name}"))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Tenants of a user.
    pub async fn tenants_of(&self, user: &str) -> R3Result<Vec<Tenant>> {
        let rows = sqlx::query("SELECT t.name, t.id, t.display, t.description FROM r3_tenants t JOIN r3_tenant_users u ON u.tenant = t.name WHERE u.user_name = $1 ORDER BY t.name")
            .bind(user)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Tenant {
                    name: r.try_get("name")?,
                    id: r.try_get("id")?,
                    display: r.try_get("display")?,
                    description: r.try_get("description")?,
                })
            })
            .collect()
    }

    /// Add or update a local user and put it into `tenants`.
    pub async fn put_user(
        &self,
        name: &str,
        password_hash: &str,
        tenants: &[String],
    ) -> R3Result<()> {
        sqlx::query("INSERT INTO r3_users (name, password, created) VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE SET password = excluded.password")
            .bind(name)
            .bind(password_hash)
            .bind(now())
            .execute(&self.pool)
            .await?;
        self.add_memberships(name, tenants).await?;
        Ok(())
    }

    /// Make `name` a member of `tenants` (created as needed).
    async fn add_memberships(&self, name: &str, tenants: &[String]) -> R3Result<()> {
        for t in tenants {
            self.ensure_tenant(t).await?;
            sqlx::query("INSERT INTO r3_tenant_users (tenant, user_name) VALUES ($1, $2) ON CONFLICT (tenant, user_name) DO NOTHING")
                .bind(t)
                .bind(name)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// Make `name` (an external user: no password that could ever match) a member of
    /// `tenants`, keeping a local user's password if there is one.
    pub async fn link_user(&self, name: &str, tenants: &[String]) -> R3Result<()> {
        sqlx::query("INSERT INTO r3_users (name, password, created) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .bind("!external")
            .bind(now())
            .execute(&self.pool)
            .await?;
        self.add_memberships(name, tenants).await?;
        Ok(())
    }

    /// A user's password hash.
    pub async fn user_password(&self, name: &str) -> R3Result<Option<String>> {
        Ok(sqlx::query("SELECT password FROM r3_users WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.try_get("password"))
            .transpose()?)
    }

    /// Users with their tenants.
    pub async fn users(&self) -> R3Result<Vec<(String, Vec<String>)>> {
        let rows = sqlx::query("SELECT name FROM r3_users ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::new();
        for r in rows {
            let n: String = r.try_get("name")?;
            let t = self
                .tenants_of(&n)
                .await?
                .into_iter()
                .map(|t| t.name)
                .collect();
            out.push((n, t));
        }
        Ok(out)
    }

    /// Remove a user and its tokens; false when there was none.
    pub async fn delete_user(&self, name: &str) -> R3Result<bool> {
        let n = sqlx::query("DELETE FROM r3_users WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM r3_tenant_users WHERE user_name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM r3_tokens WHERE user_name = $1 AND kind = 'U'")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(n > 0)
    }

    // ---- tokens

    /// Store a token.
    pub async fn put_token(&self, t: &Token) -> R3Result<()> {
        sqlx::query("INSERT INTO r3_tokens (hash, kind, user_name, tenant, role, created, expire, sealed, info) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)")
            .bind(&t.hash)
            .bind(&t.kind)
            .bind(&t.user)
            .bind(&t.tenant)
            .bind(&t.role)
            .bind(t.created)
            .bind(t.expire)
            .bind(&t.sealed)
            .bind(to_json(&t.info))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A token by hash (expired ones are deleted and not returned).
    pub async fn token(&self, hash: &str) -> R3Result<Option<Token>> {
        let Some(r) = sqlx::query("SELECT * FROM r3_tokens WHERE hash = $1")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let t = token_of(&r)?;
        if t.expire != 0 && t.expire < now() {
            self.delete_token(hash).await?;
            return Ok(None);
        }
        Ok(Some(t))
    }

    /// Role tokens of a role (live ones).
    pub async fn role_tokens(&self, role: &str) -> R3Result<Vec<Token>> {
        let rows =
            sqlx::query("SELECT * FROM r3_tokens WHERE role = $1 AND kind = 'R' ORDER BY created")
                .bind(role)
                .fetch_all(&self.pool)
                .await?;
        let now = now();
        Ok(rows
            .iter()
            .map(token_of)
            .collect::<R3Result<Vec<_>>>()?
            .into_iter()
            .filter(|t| t.expire == 0 || t.expire >= now)
            .collect())
    }

    /// Revoke a token.
    pub async fn delete_token(&self, hash: &str) -> R3Result<bool> {
        Ok(sqlx::query("DELETE FROM r3_tokens WHERE hash = $1")
            .bind(hash)
            .execute(&self.pool)
            .await?
            .rows_affected()
            > 0)
    }

    // ---- roles and hosts

    /// Create or update a role.
    pub async fn put_role(&self, tenant: &str, r: &Role) -> R3Result<()> {
        sqlx::query("INSERT INTO r3_roles (yrn, tenant, policies, aliases) VALUES ($1, $2, $3, $4) ON CONFLICT (yrn) DO UPDATE SET policies = excluded.policies, aliases = excluded.aliases")
            .bind(&r.yrn)
            .bind(tenant)
            .bind(to_json(&r.policies))
            .bind(to_json(&r.aliases))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A role.
    pub async fn role(&self, yrn: &str) -> R3Result<Option<Role>> {
        let Some(r) = sqlx::query("SELECT * FROM r3_roles WHERE yrn = $1")
            .bind(yrn)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(Role {
            yrn: r.try_get("yrn")?,
            policies: json_list(&r.try_get::<String, _>("policies")?),
            aliases: json_list(&r.try_get::<String, _>("aliases")?),
        }))
    }

    /// Delete a role with everything below it (child roles, hosts, role tokens).
    pub async fn delete_role(&self, yrn: &str) -> R3Result<bool> {
        // A prefix test with substr, not LIKE: names may contain `_` and `%`.
        let below = format!("{yrn}/");
        let len = below.chars().count() as i64;
        let n = sqlx::query(
            "DELETE FROM r3_roles WHERE yrn = $1 OR substr(yrn, 1, CAST($3 AS INTEGER)) = $2",
        )
        .bind(yrn)
        .bind(&below)
        .bind(len)
        .execute(&self.pool)
        .await?
        .rows_affected();
        sqlx::query(
            "DELETE FROM r3_hosts WHERE role = $1 OR substr(role, 1, CAST($3 AS INTEGER)) = $2",
        )
        .bind(yrn)
        .bind(&below)
        .bind(len)
        .execute(&self.pool)
        .await?;
        sqlx::query(
            "DELETE FROM r3_tokens WHERE kind = 'R' AND (role = $1 OR substr(role, 1, CAST($3 AS INTEGER)) = $2)",
        )
        .bind(yrn)
        .bind(&below)
        .bind(len)
        .execute(&self.pool)
        .await?;
        Ok(n > 0)
    }

    /// Add (or update) a host of a role.
    pub async fn put_host(&self, role: &str, h: &Host) -> R3Result<()> {
        sqlx::query("INSERT INTO r3_hosts (role, host, is_ip, port, cuk, extra, tag, inboundip, outboundip, created) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (role, host, port, cuk) DO UPDATE SET extra = excluded.extra, tag = excluded.tag, inboundip = excluded.inboundip, outboundip = excluded.outboundip")
            .bind(role)
            .bind(&h.host)
            .bind(i64::from(h.is_ip))
            .bind(h.port)
            .bind(&h.cuk)
            .bind(&h.extra)
            .bind(&h.tag)
            .bind(&h.inboundip)
            .bind(&h.outboundip)
            .bind(now())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Hosts of a role, in registration order.
    pub async fn hosts(&self, role: &str) -> R3Result<Vec<Host>> {
        let rows =
            sqlx::query("SELECT * FROM r3_hosts WHERE role = $1 ORDER BY created, host, port, cuk")
                .bind(role)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(host_of).collect()
    }

    /// Remove the hosts of `role` that match (`None` matches anything); how many went.
    pub async fn delete_hosts(
        &self,
        role: &str,
        host: Option<&str>,
        port: Option<i64>,
        cuk: Option<&str>,
    ) -> R3Result<u64> {
        let mut n = 0;
        for h in self.hosts(role).await? {
            if host.is_some_and(|x| x != h.host)
                || port.is_some_and(|p| p != 0 && p != h.port)
                || cuk.is_some_and(|c| c != h.cuk)
            {
                continue;
            }
            n += sqlx::query(
                "DELETE FROM r3_hosts WHERE role = $1 AND host = $2 AND port = $3 AND cuk = $4",
            )
            .bind(role)
            .bind(&h.host)
            .bind(h.port)
            .bind(&h.cuk)
            .execute(&self.pool)
            .await?
            .rows_affected();
        }
        Ok(n)
    }

    /// Remove every host with `cuk` (and, when given, one of `ips`) from every role (of
    /// `tenant` only, when given).
    pub async fn delete_hosts_by_cuk(
        &self,
        cuk: &str,
        ips: &[String],
        tenant: Option<&str>,
    ) -> R3Result<u64> {
        let rows = sqlx::query("SELECT * FROM r3_hosts WHERE cuk = $1")
            .bind(cuk)
            .fetch_all(&self.pool)
            .await?;
        let mut n = 0;
        for r in rows {
            let role: String = r.try_get("role")?;
            let h = host_of(&r)?;
            if !ips.is_empty() && !ips.contains(&h.host) {
                continue;
            }
            if let Some(t) = tenant
                && crate::yrn::Yrn::parse(&role).ok().map(|y| y.tenant)
                    != Some(t.to_ascii_lowercase())
            {
                continue;
            }
            n += self
                .delete_hosts(&role, Some(&h.host), Some(h.port), Some(cuk))
                .await?;
        }
        Ok(n)
    }

    // ---- policies

    /// Create or update a policy.
    pub async fn put_policy(&self, tenant: &str, p: &Policy) -> R3Result<()> {
        sqlx::query("INSERT INTO r3_policies (yrn, tenant, effect, actions, resources, aliases) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (yrn) DO UPDATE SET effect = excluded.effect, actions = excluded.actions, resources = excluded.resources, aliases = excluded.aliases")
            .bind(&p.yrn)
            .bind(tenant)
            .bind(&p.effect)
            .bind(to_json(&p.actions))
            .bind(to_json(&p.resources))
            .bind(to_json(&p.aliases))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A policy.
    pub async fn policy(&self, yrn: &str) -> R3Result<Option<Policy>> {
        let Some(r) = sqlx::query("SELECT * FROM r3_policies WHERE yrn = $1")
            .bind(yrn)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(Policy {
            yrn: r.try_get("yrn")?,
            effect: r.try_get("effect")?,
            actions: json_list(&r.try_get::<String, _>("actions")?),
            resources: json_list(&r.try_get::<String, _>("resources")?),
            aliases: json_list(&r.try_get::<String, _>("aliases")?),
        }))
    }

    /// Delete a policy.
    pub async fn delete_policy(&self, yrn: &str) -> R3Result<bool> {
        Ok(sqlx::query("DELETE FROM r3_policies WHERE yrn = $1")
            .bind(yrn)
            .execute(&self.pool)
            .await?
            .rows_affected()
            > 0)
    }

    // ---- resources

    /// Create or update a resource.
    pub async fn put_resource(&self, tenant: &str, r: &Resource) -> R3Result<()> {
        sqlx::query("INSERT INTO r3_resources (yrn, tenant, rtype, data, rkeys, aliases, expire) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (yrn) DO UPDATE SET rtype = excluded.rtype, data = excluded.data, rkeys = excluded.rkeys, aliases = excluded.aliases, expire = excluded.expire")
            .bind(&r.yrn)
            .bind(tenant)
            .bind(&r.rtype)
            .bind(&r.data)
            .bind(to_json(&r.keys))
            .bind(to_json(&r.aliases))
            .bind(r.expire)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A resource (an expired one is not returned).
    pub async fn resource(&self, yrn: &str) -> R3Result<Option<Resource>> {
        let Some(r) = sqlx::query("SELECT * FROM r3_resources WHERE yrn = $1")
            .bind(yrn)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let res = Resource {
            yrn: r.try_get("yrn")?,
            rtype: r.try_get("rtype")?,
            data: r.try_get("data")?,
            keys: serde_json::from_str(&r.try_get::<String, _>("rkeys")?).unwrap_or_default(),
            aliases: json_list(&r.try_get::<String, _>("aliases")?),
            expire: r.try_get("expire")?,
        };
        if res.expire != 0 && res.expire < now() {
            return Ok(None);
        }
        Ok(Some(res))
    }

    /// Delete a resource and everything below it.
    pub async fn delete_resource(&self, yrn: &str) -> R3Result<bool> {
        Ok(sqlx::query(
            "DELETE FROM r3_resources WHERE yrn = $1 OR substr(yrn, 1, CAST($3 AS INTEGER)) = $2",
        )
        .bind(yrn)
        .bind(format!("{yrn}/"))
        .bind(format!("{yrn}/").chars().count() as i64)
        .execute(&self.pool)
        .await?
        .rows_affected()
            > 0)
    }

    /// The YRNs in `table` (roles, policies, resources) of a tenant starting with `prefix`.
    pub async fn names(&self, table: &str, tenant: &str, prefix: &str) -> R3Result<Vec<String>> {
        let t = match table {
            "role" => "r3_roles",
            "policy" => "r3_policies",
            "resource" => "r3_resources",
            other => {
                return Err(R3Error::BadRequest(format!(
                    "nothing to list under {other:?}"
                )));
            }
        };
        // `t` is one of three fixed names above, never input.
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT yrn FROM {t} WHERE tenant = $1 AND substr(yrn, 1, CAST($3 AS INTEGER)) = $2 ORDER BY yrn"
        )))
        .bind(tenant)
        .bind(prefix)
        .bind(prefix.chars().count() as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(r.try_get("yrn")?)).collect()
    }
}
