//! Typed async client of the K2HR3-compatible service (`k2hdkc-dbaas k2hr3 serve`, or a real
//! K2HR3 API): user and role tokens, roles and their hosts, policies, resources, the list API,
//! userdata/extdata. Used by the guest agent, by slave bootstrap and by the `k2hr3` command
//! ([`cli`]).
//!
//! Every call has a timeout; calls that change nothing, or change it idempotently (GET, HEAD,
//! PUT, DELETE), are retried with backoff on connection failures and on 429/5xx answers; POST
//! is retried only when the connection could not be made (nothing was sent). Errors keep the
//! service's own `message`.

pub mod cli;

use std::net::IpAddr;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// What a call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The base URL or an argument is not usable.
    #[error("{0}")]
    Invalid(String),
    /// The service could not be reached (after retries).
    #[error("K2HR3 API {url}: {source}")]
    Transport {
        /// The request URL (without query).
        url: String,
        /// What failed.
        source: reqwest::Error,
    },
    /// The service answered with an error.
    #[error("K2HR3 API {url}: {status}: {message}")]
    Api {
        /// The request URL (without query).
        url: String,
        /// HTTP status.
        status: u16,
        /// The service's `message`.
        message: String,
    },
    /// The answer was not what the API promises.
    #[error("K2HR3 API {url}: unexpected answer: {what}")]
    Decode {
        /// The request URL.
        url: String,
        /// What was wrong.
        what: String,
    },
}

impl Error {
    /// The HTTP status, for API errors.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Which token goes into `x-auth-token`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// None: the service authorises by source address (a host of the role).
    None,
    /// A user token (`U=`).
    User(String),
    /// A role token (`R=`).
    Role(String),
}

/// Connection settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Per-request timeout.
    pub timeout: Duration,
    /// Retries after the first attempt.
    pub retries: u32,
    /// First backoff (doubles, capped at 5 s).
    pub backoff: Duration,
    /// Source address of requests (the service records a registering host by it).
    pub source_ip: Option<IpAddr>,
    /// Accept self-signed certificates (like k2hr3client's allow_self_signed_cert).
    pub insecure_tls: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            timeout: Duration::from_secs(10),
            retries: 3,
            backoff: Duration::from_millis(200),
            source_ip: None,
            insecure_tls: false,
        }
    }
}

/// A host entry of a role.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    /// Host name or IP address.
    pub host: String,
    /// Port (0 = any).
    pub port: u16,
    /// Container unique key (e.g. the instance id).
    pub cuk: String,
    /// Free text (K2HDKC DBaaS uses `openstack-auto-v1`).
    pub extra: String,
    /// Free text (e.g. the node name).
    pub tag: String,
    /// Inbound address, if any.
    pub inboundip: String,
    /// Outbound address, if any.
    pub outboundip: String,
}

impl Host {
    /// Parse K2HR3's `host port cuk extra tag inboundip outboundip` line.
    pub fn parse(line: &str) -> Host {
        let mut f = line.split(' ');
        let mut next = || f.next().unwrap_or("").to_string();
        let host = next();
        let port = next().parse().unwrap_or(0);
        Host {
            host,
            port,
            cuk: next(),
            extra: next(),
            tag: next(),
            inboundip: next(),
            outboundip: next(),
        }
    }
}

/// A role as the service shows it (hosts of alias roles included when expanded).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Role {
    /// Policy YRNs.
    pub policies: Vec<String>,
    /// Alias role YRNs.
    pub aliases: Vec<String>,
    /// Hosts registered by name.
    pub hostnames: Vec<Host>,
    /// Hosts registered by address.
    pub ips: Vec<Host>,
}

/// A new role token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleToken {
    /// The token.
    pub token: String,
    /// The sealed path for userdata/extdata.
    pub registerpath: String,
}

/// A policy to create.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PolicySpec {
    /// Name or YRN.
    pub name: String,
    /// `allow` or `deny`.
    pub effect: String,
    /// Action YRNs (`yrn:yahoo::::action:read` / `write`).
    pub action: Vec<String>,
    /// Resource YRNs.
    pub resource: Vec<String>,
    /// Alias policies.
    pub alias: Vec<String>,
}

/// A resource to create or replace.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ResourceSpec {
    /// Name or YRN.
    pub name: String,
    /// `string` or `object`.
    #[serde(rename = "type")]
    pub rtype: String,
    /// The data (a string, possibly a template; or any JSON for objects).
    pub data: Value,
    /// Keys (template variables).
    pub keys: serde_json::Map<String, Value>,
    /// Alias resources.
    pub alias: Vec<String>,
    /// Seconds until it expires (none = never).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expire: Option<u64>,
}

/// A client bound to one API and one token.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    auth: Auth,
    http: reqwest::Client,
    opts: Options,
}

impl Client {
    /// A client of the API at `base` (`http(s)://host:port`, no path).
    pub fn new(base: &str, auth: Auth, opts: Options) -> Result<Client> {
        let base = base.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::Invalid(format!(
                "K2HR3 API URL {base:?}: want http(s)://host:port"
            )));
        }
        let mut b = reqwest::Client::builder()
            .timeout(opts.timeout)
            .connect_timeout(opts.timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("k2hr3-client-rs/", env!("CARGO_PKG_VERSION")))
            .danger_accept_invalid_certs(opts.insecure_tls);
        if let Some(ip) = opts.source_ip {
            b = b.local_address(ip);
        }
        let http = b
            .build()
            .map_err(|e| Error::Invalid(format!("HTTP client: {e}")))?;
        Ok(Client {
            base,
            auth,
            http,
            opts,
        })
    }

    /// The same client with another token.
    pub fn with_auth(&self, auth: Auth) -> Client {
        Client {
            auth,
            ..self.clone()
        }
    }

    /// The API base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// One call: `path` is below the base (starting with `/`), `query` pairs are encoded here.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<(StatusCode, Vec<u8>)> {
        let url = format!("{}{}", self.base, path);
        let idempotent = method != Method::POST;
        let mut attempt = 0u32;
        loop {
            let mut rq = self.http.request(method.clone(), &url);
            if !query.is_empty() {
                rq = rq.query(query);
            }
            match &self.auth {
                Auth::None => {}
                Auth::User(t) => rq = rq.header("x-auth-token", format!("U={t}")),
                Auth::Role(t) => rq = rq.header("x-auth-token", format!("R={t}")),
            }
            for (k, v) in headers {
                rq = rq.header(*k, *v);
            }
            if let Some(b) = body {
                rq = rq.json(b);
            }
            let retry_ok = attempt < self.opts.retries;
            match rq.send().await {
                Ok(r) => {
                    let st = r.status();
                    let transient = st == StatusCode::TOO_MANY_REQUESTS || st.is_server_error();
                    if transient && idempotent && retry_ok {
                        tracing::debug!(%url, status = %st, attempt, "retrying");
                    } else {
                        let bytes = r.bytes().await.map_err(|source| Error::Transport {
                            url: url.clone(),
                            source,
                        })?;
                        if st.is_success() {
                            return Ok((st, bytes.to_vec()));
                        }
                        let message = serde_json::from_slice::<Value>(&bytes)
                            .ok()
                            .and_then(|v| v["message"].as_str().map(str::to_string))
                            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
                        return Err(Error::Api {
                            url,
                            status: st.as_u16(),
                            message,
                        });
                    }
                }
                Err(e) => {
                    let unsent = e.is_connect();
                    if !(retry_ok && (idempotent || unsent)) {
                        return Err(Error::Transport { url, source: e });
                    }
                    tracing::debug!(%url, error = %e, attempt, "retrying");
                }
            }
            let wait = self
                .opts
                .backoff
                .saturating_mul(1 << attempt.min(5))
                .min(Duration::from_secs(5));
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    async fn json(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Value> {
        let (_, bytes) = self.call(method, path, query, body, &[]).await?;
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| Error::Decode {
            url: format!("{}{path}", self.base),
            what: format!("not JSON: {e}"),
        })?;
        if v["result"] == json!(false) {
            return Err(Error::Api {
                url: format!("{}{path}", self.base),
                status: 200,
                message: v["message"].as_str().unwrap_or("result false").to_string(),
            });
        }
        Ok(v)
    }

    fn field<'a>(&self, v: &'a Value, path: &str, key: &str) -> Result<&'a Value> {
        let f = &v[key];
        if f.is_null() {
            return Err(Error::Decode {
                url: format!("{}{path}", self.base),
                what: format!("no {key:?} in {v}"),
            });
        }
        Ok(f)
    }

    fn string(&self, v: &Value, path: &str, key: &str) -> Result<String> {
        self.field(v, path, key)?
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| Error::Decode {
                url: format!("{}{path}", self.base),
                what: format!("{key:?} is not a string"),
            })
    }

    // ---- tokens

    /// A user token from a user name and password: scoped to `tenant` when given.
    pub async fn user_token(
        &self,
        user: &str,
        password: &str,
        tenant: Option<&str>,
    ) -> Result<String> {
        let mut auth = json!({"passwordCredentials": {"username": user, "password": password}});
        if let Some(t) = tenant {
            auth["tenantName"] = json!(t);
        }
        let v = self
            .with_auth(Auth::None)
            .json(
                Method::POST,
                "/v1/user/tokens",
                &[],
                Some(&json!({ "auth": auth })),
            )
            .await?;
        self.string(&v, "/v1/user/tokens", "token")
    }

    /// A token scoped to `tenant` from this client's (unscoped or Keystone) user token.
    pub async fn scoped_token(&self, tenant: &str) -> Result<String> {
        let v = self
            .json(
                Method::POST,
                "/v1/user/tokens",
                &[],
                Some(&json!({"auth": {"tenantName": tenant}})),
            )
            .await?;
        self.string(&v, "/v1/user/tokens", "token")
    }

    /// The user token's user, whether it is scoped, and its tenants.
    pub async fn token_info(&self) -> Result<Value> {
        self.json(Method::GET, "/v1/user/tokens", &[], None).await
    }

    /// A new role token of `role` (`expire` seconds; 0 = never; none = the service default).
    pub async fn role_token(&self, role: &str, expire: Option<u64>) -> Result<RoleToken> {
        let path = format!("/v1/role/token/{role}");
        let q: Vec<(&str, String)> = expire
            .map(|e| ("expire", e.to_string()))
            .into_iter()
            .collect();
        let v = self.json(Method::GET, &path, &q, None).await?;
        Ok(RoleToken {
            token: self.string(&v, &path, "token")?,
            registerpath: self.string(&v, &path, "registerpath")?,
        })
    }

    /// The role's live tokens: token → details (with `registerpath`).
    pub async fn role_tokens(&self, role: &str) -> Result<serde_json::Map<String, Value>> {
        let path = format!("/v1/role/token/list/{role}");
        let v = self
            .json(Method::GET, &path, &[("expand", "true".into())], None)
            .await?;
        Ok(self
            .field(&v, &path, "tokens")?
            .as_object()
            .cloned()
            .unwrap_or_default())
    }

    /// Revoke a role token.
    pub async fn revoke_role_token(&self, token: &str) -> Result<()> {
        self.json(
            Method::DELETE,
            &format!("/v1/role/token/{token}"),
            &[],
            None,
        )
        .await
        .map(drop)
    }

    // ---- roles

    /// Create or update a role.
    pub async fn create_role(
        &self,
        name: &str,
        policies: &[String],
        aliases: &[String],
    ) -> Result<()> {
        let b = json!({"role": {"name": name, "policies": policies, "alias": aliases}});
        self.json(Method::POST, "/v1/role", &[], Some(&b))
            .await
            .map(drop)
    }

    /// A role (with its aliases' hosts when `expand`).
    pub async fn role(&self, name: &str, expand: bool) -> Result<Role> {
        let path = format!("/v1/role/{name}");
        let v = self
            .json(Method::GET, &path, &[("expand", expand.to_string())], None)
            .await?;
        let r = self.field(&v, &path, "role")?;
        let strings = |x: &Value| -> Vec<String> {
            x.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let hosts =
            |x: &Value| -> Vec<Host> { strings(x).iter().map(|l| Host::parse(l)).collect() };
        Ok(Role {
            policies: strings(&r["policies"]),
            aliases: strings(&r["aliases"]),
            hostnames: hosts(&r["hosts"]["hostnames"]),
            ips: hosts(&r["hosts"]["ips"]),
        })
    }

    /// Delete a role (and its hosts and tokens).
    pub async fn delete_role(&self, name: &str) -> Result<()> {
        self.json(Method::DELETE, &format!("/v1/role/{name}"), &[], None)
            .await
            .map(drop)
    }

    /// Add a host to a role (user token).
    pub async fn add_host(&self, role: &str, h: &Host) -> Result<()> {
        let b = json!({"host": {"host": h.host, "port": h.port, "cuk": h.cuk, "extra": h.extra,
                                 "tag": h.tag, "inboundip": h.inboundip, "outboundip": h.outboundip}});
        self.json(Method::POST, &format!("/v1/role/{role}"), &[], Some(&b))
            .await
            .map(drop)
    }

    /// Remove hosts of a role matching the given fields (user token).
    pub async fn delete_host(
        &self,
        role: &str,
        host: &str,
        port: Option<u16>,
        cuk: Option<&str>,
    ) -> Result<()> {
        let mut q = vec![("host", host.to_string())];
        if let Some(p) = port {
            q.push(("port", p.to_string()));
        }
        if let Some(c) = cuk {
            q.push(("cuk", c.to_string()));
        }
        self.json(Method::DELETE, &format!("/v1/role/{role}"), &q, None)
            .await
            .map(drop)
    }

    /// Register the calling host (its source address) in `role` (role token, or none).
    pub async fn register(
        &self,
        role: &str,
        port: u16,
        cuk: &str,
        extra: &str,
        tag: &str,
    ) -> Result<()> {
        let q = vec![
            ("port", port.to_string()),
            ("cuk", cuk.to_string()),
            ("extra", extra.to_string()),
            ("tag", tag.to_string()),
        ];
        self.json(Method::PUT, &format!("/v1/role/{role}"), &q, None)
            .await
            .map(drop)
    }

    /// Remove the calling host's entry (source address and `cuk`) from `role`.
    pub async fn unregister(&self, role: &str, port: Option<u16>, cuk: &str) -> Result<()> {
        let mut q = vec![("cuk", cuk.to_string())];
        if let Some(p) = port {
            q.push(("port", p.to_string()));
        }
        self.json(Method::DELETE, &format!("/v1/role/{role}"), &q, None)
            .await
            .map(drop)
    }

    /// Remove every host with `cuk` (what a cloud notification listener does).
    pub async fn delete_by_cuk(&self, cuk: &str) -> Result<()> {
        self.json(
            Method::DELETE,
            "/v1/role",
            &[("cuk", cuk.to_string())],
            None,
        )
        .await
        .map(drop)
    }

    // ---- policies

    /// Create or update a policy.
    pub async fn create_policy(&self, p: &PolicySpec) -> Result<()> {
        self.json(
            Method::POST,
            "/v1/policy",
            &[],
            Some(&json!({ "policy": p })),
        )
        .await
        .map(drop)
    }

    /// A policy.
    pub async fn policy(&self, name: &str) -> Result<Value> {
        let path = format!("/v1/policy/{name}");
        let v = self.json(Method::GET, &path, &[], None).await?;
        Ok(self.field(&v, &path, "policy")?.clone())
    }

    /// Delete a policy.
    pub async fn delete_policy(&self, name: &str) -> Result<()> {
        self.json(Method::DELETE, &format!("/v1/policy/{name}"), &[], None)
            .await
            .map(drop)
    }

    // ---- resources

    /// Create or replace a resource.
    pub async fn create_resource(&self, r: &ResourceSpec) -> Result<()> {
        self.json(
            Method::POST,
            "/v1/resource",
            &[],
            Some(&json!({ "resource": r })),
        )
        .await
        .map(drop)
    }

    /// A resource as stored (user token): `string`, `object`, `keys`, `aliases`, `expire`.
    pub async fn resource(&self, name: &str) -> Result<Value> {
        let path = format!("/v1/resource/{name}");
        let v = self.json(Method::GET, &path, &[], None).await?;
        Ok(self.field(&v, &path, "resource")?.clone())
    }

    /// A resource's data as its reader sees it (role token, or none with `role` and `cuk`:
    /// by source address): templates expanded.
    pub async fn read_resource(
        &self,
        yrn: &str,
        role: Option<&str>,
        cuk: Option<&str>,
    ) -> Result<Value> {
        let path = format!("/v1/resource/{yrn}");
        let mut q = Vec::new();
        if let Some(r) = role {
            q.push(("role", r.to_string()));
        }
        if let Some(c) = cuk {
            q.push(("cuk", c.to_string()));
        }
        let v = self.json(Method::GET, &path, &q, None).await?;
        Ok(v["resource"].clone())
    }

    /// One key of a resource (role token).
    pub async fn resource_key(&self, yrn: &str, key: &str) -> Result<Value> {
        let path = format!("/v1/resource/{yrn}");
        let q = vec![("type", "keys".to_string()), ("keyname", key.to_string())];
        let v = self.json(Method::GET, &path, &q, None).await?;
        Ok(v["resource"].clone())
    }

    /// Delete a resource.
    pub async fn delete_resource(&self, name: &str) -> Result<()> {
        self.json(Method::DELETE, &format!("/v1/resource/{name}"), &[], None)
            .await
            .map(drop)
    }

    // ---- the rest

    /// Names under `kind` (`role`, `resource`, `policy`), as a tree of `{name, children}`.
    pub async fn list(&self, kind: &str) -> Result<Value> {
        let path = format!("/v1/list/{kind}");
        let v = self.json(Method::GET, &path, &[], None).await?;
        Ok(v["children"].clone())
    }

    /// The cloud-init user-data for a registerpath (gzip is not asked for).
    pub async fn userdata(&self, registerpath: &str) -> Result<Vec<u8>> {
        let (_, b) = self
            .with_auth(Auth::None)
            .call(
                Method::GET,
                &format!("/v1/userdata/{registerpath}"),
                &[],
                None,
                &[("user-agent", "Cloud-Init k2hr3-client-rs")],
            )
            .await?;
        Ok(b)
    }

    /// A named extdata template for a registerpath, as `user_agent`.
    pub async fn extdata(
        &self,
        name: &str,
        registerpath: &str,
        user_agent: &str,
    ) -> Result<Vec<u8>> {
        let (_, b) = self
            .with_auth(Auth::None)
            .call(
                Method::GET,
                &format!("/v1/extdata/{name}/{registerpath}"),
                &[],
                None,
                &[("user-agent", user_agent)],
            )
            .await?;
        Ok(b)
    }

    /// The API's version document.
    pub async fn version(&self) -> Result<Value> {
        self.json(Method::GET, "/v1", &[], None).await
    }
}

#[cfg(test)]
mod tests {
    use super::Host;

    #[test]
    fn host_lines_parse_with_empty_fields() {
        let h = Host::parse("10.0.0.1 8020 cuk-1  tag-1");
        assert_eq!(h.host, "10.0.0.1");
        assert_eq!(h.port, 8020);
        assert_eq!(h.cuk, "cuk-1");
        assert_eq!(h.extra, "");
        assert_eq!(h.tag, "tag-1");
        assert_eq!(Host::parse("h").port, 0);
    }
}
