//! User tokens from OpenStack Keystone (v3), when `keystone_url` is configured: an
//! `x-auth-token` the service does not know is validated with Keystone
//! (`GET /v3/auth/tokens`, the token validating itself), and the user's projects
//! (`GET /v3/auth/projects`) become its tenants here. Only then does the service issue its own
//! user token; the Keystone token itself is never stored.

use std::time::Duration;

use serde_json::Value;

use crate::error::{R3Error, R3Result};

/// A Keystone user and the names of its projects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeystoneUser {
    /// The user's name.
    pub name: String,
    /// Project names (the tenants it may scope to).
    pub projects: Vec<String>,
    /// The same projects' ids (Trove puts the id in its URLs).
    pub project_ids: Vec<String>,
    /// The project the token is scoped to: (id, name).
    pub scope: Option<(String, String)>,
    /// The token's role names in that scope.
    pub roles: Vec<String>,
}

/// Validates tokens against one Keystone.
#[derive(Debug, Clone)]
pub struct Keystone {
    url: String,
    http: reqwest::Client,
}

impl Keystone {
    /// A validator for the Keystone at `url` (`http(s)://host:port[/identity]`, no `/v3`).
    pub fn new(url: &str) -> R3Result<Keystone> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| R3Error::Internal(format!("Keystone client: {e}")))?;
        Ok(Keystone {
            url: url.trim_end_matches('/').to_string(),
            http,
        })
    }

    async fn get(&self, path: &str, token: &str) -> R3Result<Value> {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .header("X-Auth-Token", token)
            .header("X-Subject-Token", token)
            .send()
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "Keystone is unreachable");
                R3Error::Internal("Keystone is unreachable".into())
            })?;
        match r.status().as_u16() {
            200 => r
                .json::<Value>()
                .await
                .map_err(|e| R3Error::Internal(format!("Keystone answered no JSON: {e}"))),
            401 | 403 | 404 => Err(R3Error::Unauthorized(
                "Keystone does not accept the token".into(),
            )),
            s => {
                tracing::warn!(status = s, path, "Keystone failed");
                Err(R3Error::Internal(format!("Keystone answered {s}")))
            }
        }
    }

    /// The user behind a Keystone token, or 401.
    pub async fn validate(&self, token: &str) -> R3Result<KeystoneUser> {
        let t = self.get("/v3/auth/tokens", token).await?;
        let name = t["token"]["user"]["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| R3Error::Internal("Keystone's token has no user name".into()))?
            .to_string();
        let mut projects: Vec<String> = Vec::new();
        let mut project_ids: Vec<String> = Vec::new();
        let mut add = |p: &Value| {
            if let Some(n) = p["name"].as_str()
                && !projects.iter().any(|x| x == n)
            {
                projects.push(n.to_string());
            }
            if let Some(i) = p["id"].as_str()
                && !project_ids.iter().any(|x| x == i)
            {
                project_ids.push(i.to_string());
            }
        };
        let scope = match (
            t["token"]["project"]["id"].as_str(),
            t["token"]["project"]["name"].as_str(),
        ) {
            (Some(i), Some(n)) => Some((i.to_string(), n.to_string())),
            _ => None,
        };
        let roles = t["token"]["roles"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["name"].as_str().map(str::to_string))
            .collect();
        add(&t["token"]["project"]);
        let list = self.get("/v3/auth/projects", token).await?;
        for p in list["projects"].as_array().into_iter().flatten() {
            add(p);
        }
        Ok(KeystoneUser {
            name,
            projects,
            project_ids,
            scope,
            roles,
        })
    }
}
