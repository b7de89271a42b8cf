//! The HTTP API under `/v1`, with K2HR3's shapes: every answer is JSON with `result` and
//! `message` (errors through [`R3Error`]), `x-auth-token` carries `U=` user tokens (the prefix
//! is optional) or `R=` role tokens, and some calls are authorised by the caller's source
//! address being a host of the role. HEAD answers like GET without a body, with 204 for
//! success (k2hr3client sends its deletes as HEAD: they change nothing).
//!
//! Owns: authentication of a request ([`Caller`]), tenant isolation (a caller only ever sees
//! its own tenant; a role token only its role's resources), and the routing table.

mod resources;
mod roles;
mod tokens;

pub use tokens::iso;
mod userdata;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::Config;
use crate::crypto::{Keys, hash_token};
use crate::db::{Db, Token};
use crate::error::{R3Error, R3Result, bad};
use crate::pyval;
use crate::yrn::{Kind, Yrn};

/// Shared state of the service.
#[derive(Debug)]
pub struct Svc {
    /// The database.
    pub db: Db,
    /// The service key.
    pub keys: Keys,
    /// The configuration.
    pub cfg: Config,
    /// Keystone, when configured.
    pub keystone: Option<crate::keystone::Keystone>,
}

/// The state handlers get.
pub type St = axum::extract::State<Arc<Svc>>;
/// Query parameters.
pub type Q = axum::extract::Query<HashMap<String, String>>;
/// The peer address.
pub type Peer = ConnectInfo<SocketAddr>;

/// Who is asking.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No token.
    Anon,
    /// A user token; `tenant` when scoped.
    User {
        /// User name.
        user: String,
        /// Scoped tenant.
        tenant: Option<String>,
    },
    /// A role token.
    Role {
        /// Its role.
        role: Yrn,
        /// Its row.
        token: Box<Token>,
    },
}

impl Caller {
    /// The scoped user's name and tenant, or 401/403.
    pub fn scoped(&self) -> R3Result<(&str, &str)> {
        match self {
            Caller::User {
                user,
                tenant: Some(t),
                ..
            } => Ok((user, t)),
            Caller::User { tenant: None, .. } => Err(R3Error::Forbidden(
                "this needs a scoped user token (POST /v1/user/tokens with a tenantName)".into(),
            )),
            Caller::Role { .. } => Err(R3Error::Forbidden(
                "a role token cannot do this; use a scoped user token".into(),
            )),
            Caller::Anon => Err(R3Error::Unauthorized(
                "no x-auth-token: this needs a scoped user token".into(),
            )),
        }
    }
}

/// Authenticate the request's `x-auth-token` (absent = anonymous; unknown = 401).
pub async fn caller(svc: &Svc, headers: &HeaderMap) -> R3Result<Caller> {
    let Some(v) = headers.get("x-auth-token") else {
        return Ok(Caller::Anon);
    };
    let v = v
        .to_str()
        .map_err(|_| R3Error::Unauthorized("x-auth-token is not text".into()))?
        .trim();
    let (kind, tok) = if let Some(t) = v.strip_prefix("R=") {
        ("R", t)
    } else {
        ("U", v.strip_prefix("U=").unwrap_or(v))
    };
    if tok.is_empty() {
        return Err(R3Error::Unauthorized("x-auth-token is empty".into()));
    }
    let t = svc
        .db
        .token(&hash_token(tok))
        .await?
        .filter(|t| t.kind == kind)
        .ok_or_else(|| R3Error::Unauthorized("the token is unknown, expired or revoked".into()))?;
    if kind == "R" {
        let role = Yrn::parse(&t.role).map_err(|_| R3Error::Internal("bad role token".into()))?;
        return Ok(Caller::Role {
            role,
            token: Box::new(t),
        });
    }
    Ok(Caller::User {
        user: t.user.clone(),
        tenant: (!t.tenant.is_empty()).then(|| t.tenant.clone()),
    })
}

/// Like [`caller`], but an unknown user token is tried with Keystone (when configured); a
/// token it accepts is an unscoped caller whose tenants are its Keystone projects.
pub async fn caller_or_keystone(svc: &Svc, headers: &HeaderMap) -> R3Result<Caller> {
    match caller(svc, headers).await {
        Err(R3Error::Unauthorized(m)) => {
            let Some(ks) = &svc.keystone else {
                return Err(R3Error::Unauthorized(m));
            };
            let v = headers
                .get("x-auth-token")
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .unwrap_or("");
            if v.starts_with("R=") || v.is_empty() {
                return Err(R3Error::Unauthorized(m));
            }
            let tok = v.strip_prefix("U=").unwrap_or(v);
            let u = ks.validate(tok).await?;
            let tenants: Vec<String> = u.projects.iter().map(|p| p.to_ascii_lowercase()).collect();
            svc.db.link_user(&u.name, &tenants).await?;
            tracing::info!(user = %u.name, projects = ?u.projects, "Keystone token accepted");
            Ok(Caller::User {
                user: u.name,
                tenant: None,
            })
        }
        other => other,
    }
}

/// `{"result": true, "message": null}` plus `extra`'s fields, with `status`.
pub fn ok(status: StatusCode, extra: Value) -> Response {
    let mut body = json!({"result": true, "message": null});
    if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
        b.extend(e);
    }
    (status, axum::Json(body)).into_response()
}

/// The JSON body (none = null); malformed JSON is a 400.
pub fn body_json(b: &Bytes) -> R3Result<Value> {
    if b.iter().all(|c| c.is_ascii_whitespace()) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(b).map_err(|e| bad(format!("the body is not valid JSON: {e}")))
}

/// A list of strings in a body (a JSON array, or one string: a JSON/Python list literal or
/// a comma list); absent = empty.
pub fn str_list(v: &Value, what: &str) -> R3Result<Vec<String>> {
    match v {
        Value::Null => Ok(vec![]),
        Value::String(s) => Ok(pyval::list(Some(s))),
        Value::Array(a) => a
            .iter()
            .filter(|x| !x.is_null())
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad(format!("{what} must be a list of strings")))
            })
            .collect(),
        _ => Err(bad(format!("{what} must be a list of strings"))),
    }
}

/// A role, resource or policy named by `name` (a YRN or a path) in the caller's tenant.
pub fn own(name: &str, tenant: &str, kind: Kind) -> R3Result<Yrn> {
    let y = Yrn::resolve(name, tenant, kind)?;
    if y.tenant != tenant.to_ascii_lowercase() {
        return Err(R3Error::Forbidden(format!("{y} belongs to another tenant")));
    }
    Ok(y)
}

/// The role `name` for a role token of `mine`: its own role only, else 403 saying what the
/// token `cannot` do.
pub fn own_role(name: &str, mine: &Yrn, cannot: &str) -> R3Result<Yrn> {
    let y = own(name, &mine.tenant, Kind::Role)?;
    if y != *mine {
        return Err(R3Error::Forbidden(format!(
            "a role token of {mine} cannot {cannot} {y}"
        )));
    }
    Ok(y)
}

/// The caller's address as hosts record it (IPv4-mapped IPv6 shown as IPv4).
pub fn peer_ip(p: &SocketAddr) -> IpAddr {
    match p.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// HEAD: no body, 204 where GET says 200.
async fn head_is_204(req: Request, next: Next) -> Response {
    let head = req.method() == Method::HEAD;
    let r = next.run(req).await;
    if head && r.status() == StatusCode::OK {
        return StatusCode::NO_CONTENT.into_response();
    }
    r
}

async fn root() -> Response {
    (StatusCode::OK, axum::Json(json!({"version": ["v1"]}))).into_response()
}

async fn v1() -> Response {
    let m = |v: &[&str]| json!(v);
    (
        StatusCode::OK,
        axum::Json(json!({"version": {
            "/v1/user/tokens": m(&["HEAD", "PUT", "POST", "GET"]),
            "/v1/role": m(&["HEAD", "PUT", "POST", "GET", "DELETE"]),
            "/v1/resource": m(&["HEAD", "PUT", "POST", "GET", "DELETE"]),
            "/v1/policy": m(&["HEAD", "PUT", "POST", "GET", "DELETE"]),
            "/v1/list": m(&["HEAD", "GET"]),
            "/v1/tenant": m(&["HEAD", "GET"]),
            "/v1/userdata": m(&["GET"]),
            "/v1/extdata": m(&["GET"]),
        }})),
    )
        .into_response()
}

async fn openapi() -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        include_str!("openapi.json"),
    )
        .into_response()
}

async fn not_found() -> Response {
    R3Error::NotFound("no such endpoint".into()).into_response()
}

/// The router (serve it with `into_make_service_with_connect_info::<SocketAddr>()`).
pub fn router(svc: Arc<Svc>) -> Router {
    use axum::routing::{delete, post};
    Router::new()
        .route("/", get(root))
        .route("/v1", get(v1))
        .route("/openapi.json", get(openapi))
        .route(
            "/v1/user/tokens",
            post(tokens::user_post)
                .put(tokens::user_put)
                .get(tokens::user_get),
        )
        .route(
            "/v1/role",
            post(roles::create_post)
                .put(roles::create_put)
                .head(roles::delete_by_cuk_head)
                .delete(roles::delete_by_cuk),
        )
        .route("/v1/role/token/list/{*role}", get(tokens::role_token_list))
        .route(
            "/v1/role/token/{*role}",
            get(tokens::role_token_get)
                .head(tokens::role_token_head)
                .delete(tokens::role_token_delete),
        )
        .route(
            "/v1/role/{*role}",
            get(roles::get)
                .post(roles::hosts_post)
                .put(roles::hosts_put)
                .delete(roles::delete),
        )
        .route(
            "/v1/policy",
            post(resources::policy_post).put(resources::policy_put),
        )
        .route(
            "/v1/policy/{*policy}",
            get(resources::policy_get).delete(resources::policy_delete),
        )
        .route(
            "/v1/resource",
            post(resources::resource_post).put(resources::resource_put),
        )
        .route(
            "/v1/resource/{*resource}",
            get(resources::resource_get)
                .post(resources::resource_post_path)
                .put(resources::resource_put_path)
                .delete(resources::resource_delete),
        )
        .route("/v1/list/{*what}", get(resources::list))
        .route("/v1/tenant", get(tokens::tenants))
        .route("/v1/userdata/{*path}", get(userdata::userdata))
        .route("/v1/extdata/{name}/{*path}", get(userdata::extdata))
        .route("/v1/debug/verify", delete(not_found))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(head_is_204))
        .layer(axum::extract::DefaultBodyLimit::max(4 << 20))
        .with_state(svc)
}
