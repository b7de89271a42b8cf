//! The Trove v1.0 REST API (`/v1.0/{project}/...`) over [`Plane`], the guest conductor
//! endpoints (`/guest/v1/...`) and the OpenAPI document.
//!
//! Invariants: every error leaves as Trove fault JSON ([`TroveError`]); unknown ids *and
//! names* are 404, since the CLI resolves names by a GET that must 404 and then a list; a
//! request is checked against the auth mode before any handler runs, and a token's project
//! must be the one in the path; requests only record intent and start persisted tasks, so a
//! response never waits on a guest.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};

use crate::error::{TroveError, TroveResult};
use crate::model::{
    self, Backup, Cluster, Configuration, DATASTORE, DATASTORE_ID, FLAVORS, Instance, PARAMETERS,
    VERSION_ID, VERSION_NAME, iso,
};
use crate::plane::{Plane, new_id, new_secret};
use crate::store::now;

/// Who may call the API.
#[derive(Clone)]
pub enum Auth {
    /// Anyone (a trusted network, tests); `X-Auth-Token` is ignored.
    NoAuth,
    /// One static admin token (`OS_AUTH_TYPE=admin_token`).
    Token(String),
    /// Keystone v3: the token's projects must include the path's project; `mgmt/` needs the
    /// `admin` project.
    Keystone(k2hdkc_k2hr3::keystone::Keystone),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Auth::NoAuth => "noauth",
            Auth::Token(_) => "token:***",
            Auth::Keystone(_) => "keystone",
        })
    }
}

/// An `--auth` value: `noauth`, `token:SECRET`, `keystone` (needs a Keystone URL) or
/// `keystone:URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthSpec {
    NoAuth,
    Token(String),
    Keystone(Option<String>),
}

impl FromStr for AuthSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<AuthSpec, String> {
        match s {
            "noauth" | "none" => Ok(AuthSpec::NoAuth),
            "keystone" => Ok(AuthSpec::Keystone(None)),
            _ => {
                if let Some(t) = s.strip_prefix("token:") {
                    if t.len() < 8 {
                        return Err("token:SECRET needs a secret of at least 8 characters".into());
                    }
                    Ok(AuthSpec::Token(t.to_string()))
                } else if let Some(u) = s.strip_prefix("keystone:") {
                    Ok(AuthSpec::Keystone(Some(u.to_string())))
                } else {
                    Err(format!(
                        "auth {s:?}: want noauth, token:SECRET, keystone or keystone:URL"
                    ))
                }
            }
        }
    }
}

/// The API's shared state.
#[derive(Clone)]
pub struct Api {
    pub plane: Arc<Plane>,
    pub auth: Auth,
    /// Base URL for `links` (`http://host:port`).
    pub base: String,
}

type P = Path<BTreeMap<String, String>>;
type Q = Query<BTreeMap<String, String>>;
type R = TroveResult<Response>;

fn ok(v: Value) -> R {
    Ok((StatusCode::OK, axum::Json(v)).into_response())
}

fn accepted(v: Option<Value>) -> R {
    Ok(match v {
        Some(v) => (StatusCode::ACCEPTED, axum::Json(v)).into_response(),
        None => StatusCode::ACCEPTED.into_response(),
    })
}

fn body(b: &Bytes) -> TroveResult<Value> {
    if b.is_empty() {
        return Err(TroveError::BadRequest("the request has no body".into()));
    }
    serde_json::from_slice(b)
        .map_err(|e| TroveError::BadRequest(format!("the request body is not JSON: {e}")))
}

fn arg<'a>(p: &'a BTreeMap<String, String>, k: &str) -> &'a str {
    p.get(k).map_or("", String::as_str)
}

/// Build the router.
pub fn router(api: Api) -> Router {
    let v = "/v1.0/{project}";
    let r = Router::new()
        .route(&format!("{v}/datastores"), get(datastores))
        .route(&format!("{v}/datastores/{{ds}}"), get(datastore))
        .route(&format!("{v}/datastores/{{ds}}/versions"), get(versions))
        .route(
            &format!("{v}/datastores/{{ds}}/versions/{{ver}}"),
            get(version),
        )
        .route(&format!("{v}/datastores/versions/{{ver}}"), get(version))
        .route(
            &format!("{v}/datastores/{{ds}}/versions/{{ver}}/flavors"),
            get(flavors),
        )
        .route(
            &format!("{v}/datastores/{{ds}}/versions/{{ver}}/volume-types"),
            get(volume_types),
        )
        .route(
            &format!("{v}/datastores/{{ds}}/versions/{{ver}}/parameters"),
            get(parameters),
        )
        .route(
            &format!("{v}/datastores/{{ds}}/versions/{{ver}}/parameters/{{name}}"),
            get(parameter),
        )
        .route(
            &format!("{v}/datastores/versions/{{ver}}/parameters"),
            get(parameters),
        )
        .route(
            &format!("{v}/datastores/versions/{{ver}}/parameters/{{name}}"),
            get(parameter),
        )
        .route(&format!("{v}/flavors"), get(flavors))
        .route(&format!("{v}/flavors/{{id}}"), get(flavor))
        .route(
            &format!("{v}/instances"),
            get(instances).post(instance_create),
        )
        .route(&format!("{v}/instances/detail"), get(instances))
        .route(
            &format!("{v}/instances/{{id}}"),
            get(instance_show)
                .put(instance_update)
                .patch(instance_update)
                .delete(instance_delete),
        )
        .route(
            &format!("{v}/instances/{{id}}/action"),
            post(instance_action),
        )
        .route(
            &format!("{v}/instances/{{id}}/backups"),
            get(instance_backups),
        )
        .route(
            &format!("{v}/instances/{{id}}/configuration"),
            get(instance_configuration),
        )
        .route(
            &format!("{v}/instances/{{id}}/log"),
            get(log_list).post(log_action),
        )
        .route(&format!("{v}/clusters"), get(clusters).post(cluster_create))
        .route(
            &format!("{v}/clusters/{{id}}"),
            get(cluster_show)
                .post(cluster_action)
                .delete(cluster_delete),
        )
        .route(
            &format!("{v}/clusters/{{id}}/instances/{{iid}}"),
            get(cluster_instance),
        )
        .route(
            &format!("{v}/clusters/{{id}}/slave-userdata"),
            get(slave_userdata),
        )
        .route(&format!("{v}/backups"), get(backups).post(backup_create))
        .route(
            &format!("{v}/backups/{{id}}"),
            get(backup_show).delete(backup_delete),
        )
        .route(
            &format!("{v}/configurations"),
            get(configurations).post(configuration_create),
        )
        .route(
            &format!("{v}/configurations/{{id}}"),
            get(configuration_show)
                .put(configuration_put)
                .patch(configuration_patch)
                .delete(configuration_delete),
        )
        .route(
            &format!("{v}/configurations/{{id}}/instances"),
            get(configuration_instances),
        )
        .route(&format!("{v}/limits"), get(limits))
        .route(
            &format!("{v}/mgmt/quotas/{{target}}"),
            get(quota_show).put(quota_update),
        )
        .route(&format!("{v}/mgmt/instances"), get(mgmt_instances))
        .route(&format!("{v}/mgmt/clusters"), get(mgmt_clusters))
        .layer(axum::middleware::from_fn_with_state(
            api.clone(),
            authenticate,
        ));
    Router::new()
        .route("/", get(versions_doc))
        .route("/v1.0", get(version_doc))
        .route("/v1.0/", get(version_doc))
        .route("/openapi.json", get(openapi))
        .route("/guest/v1/{method}", post(guest_cast))
        .merge(r)
        .fallback(|| async { TroveError::NotFound("no such resource".into()) })
        .with_state(api)
}

async fn authenticate(State(api): State<Api>, req: Request, next: Next) -> Response {
    match check_auth(&api, req.headers(), req.uri().path()).await {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

async fn check_auth(api: &Api, h: &HeaderMap, path: &str) -> TroveResult<()> {
    let mut seg = path.trim_start_matches('/').split('/');
    let _v = seg.next();
    let project = seg.next().unwrap_or_default();
    let admin = seg.next() == Some("mgmt");
    let token = h.get("x-auth-token").and_then(|v| v.to_str().ok());
    match &api.auth {
        Auth::NoAuth => Ok(()),
        Auth::Token(want) => match token {
            Some(t)
                if t.len() == want.len() && openssl::memcmp::eq(t.as_bytes(), want.as_bytes()) =>
            {
                Ok(())
            }
            Some(_) => Err(TroveError::Unauthorized(
                "the X-Auth-Token is not valid".into(),
            )),
            None => Err(TroveError::Unauthorized(
                "an X-Auth-Token is required".into(),
            )),
        },
        Auth::Keystone(ks) => {
            let t = token
                .ok_or_else(|| TroveError::Unauthorized("an X-Auth-Token is required".into()))?;
            let user = ks.validate(t).await.map_err(|e| {
                TroveError::Unauthorized(format!("Keystone refused the token: {e}"))
            })?;
            // As Trove's TenantBasedAuth: the path's project is the token's scope (its id,
            // or its name); membership of other projects does not count.
            let scoped = user
                .scope
                .as_ref()
                .is_some_and(|(id, name)| id == project || name == project);
            if !scoped {
                return Err(TroveError::Forbidden(format!(
                    "the token of {} is not scoped to project {project}",
                    user.name
                )));
            }
            if admin && !user.roles.iter().any(|r| r == "admin") {
                return Err(TroveError::Forbidden(
                    "mgmt/ calls need the admin role".into(),
                ));
            }
            Ok(())
        }
    }
}

// ---- versions, OpenAPI

async fn versions_doc(State(api): State<Api>) -> R {
    ok(json!({"versions": [version_entry(&api)]}))
}

async fn version_doc(State(api): State<Api>) -> R {
    ok(json!({"version": version_entry(&api)}))
}

fn version_entry(api: &Api) -> Value {
    json!({"id": "v1.0", "status": "CURRENT", "updated": "2012-08-01T00:00:00Z",
           "links": [{"href": format!("{}/v1.0/", api.base), "rel": "self"}]})
}

/// Every route, for the OpenAPI document: (method, path, summary).
const ROUTES: &[(&str, &str, &str)] = &[
    ("get", "/", "API versions"),
    ("get", "/v1.0/{project}/datastores", "List datastores"),
    (
        "get",
        "/v1.0/{project}/datastores/{ds}",
        "Show a datastore (id or name)",
    ),
    (
        "get",
        "/v1.0/{project}/datastores/{ds}/versions",
        "List datastore versions",
    ),
    (
        "get",
        "/v1.0/{project}/datastores/{ds}/versions/{ver}",
        "Show a datastore version",
    ),
    (
        "get",
        "/v1.0/{project}/datastores/{ds}/versions/{ver}/flavors",
        "Flavors for a version",
    ),
    (
        "get",
        "/v1.0/{project}/datastores/{ds}/versions/{ver}/parameters",
        "Configuration parameters",
    ),
    ("get", "/v1.0/{project}/flavors", "List flavors"),
    ("get", "/v1.0/{project}/flavors/{id}", "Show a flavor"),
    (
        "get",
        "/v1.0/{project}/instances",
        "List instances (limit, marker, include_clustered)",
    ),
    (
        "post",
        "/v1.0/{project}/instances",
        "Create an instance (restorePoint restores a backup)",
    ),
    ("get", "/v1.0/{project}/instances/{id}", "Show an instance"),
    (
        "put",
        "/v1.0/{project}/instances/{id}",
        "Rename, attach or detach a configuration",
    ),
    (
        "delete",
        "/v1.0/{project}/instances/{id}",
        "Delete an instance",
    ),
    (
        "post",
        "/v1.0/{project}/instances/{id}/action",
        "restart, resize, reset_status",
    ),
    (
        "get",
        "/v1.0/{project}/instances/{id}/backups",
        "Backups of an instance",
    ),
    (
        "get",
        "/v1.0/{project}/instances/{id}/configuration",
        "Effective configuration",
    ),
    ("get", "/v1.0/{project}/instances/{id}/log", "Guest logs"),
    ("get", "/v1.0/{project}/clusters", "List clusters"),
    ("post", "/v1.0/{project}/clusters", "Create a cluster"),
    ("get", "/v1.0/{project}/clusters/{id}", "Show a cluster"),
    (
        "post",
        "/v1.0/{project}/clusters/{id}",
        "grow, shrink, reset-status",
    ),
    (
        "delete",
        "/v1.0/{project}/clusters/{id}",
        "Delete a cluster",
    ),
    (
        "get",
        "/v1.0/{project}/backups",
        "List backups (instance_id, limit, marker)",
    ),
    (
        "post",
        "/v1.0/{project}/backups",
        "Back up an instance's cluster",
    ),
    ("get", "/v1.0/{project}/backups/{id}", "Show a backup"),
    ("delete", "/v1.0/{project}/backups/{id}", "Delete a backup"),
    (
        "get",
        "/v1.0/{project}/configurations",
        "List configuration groups",
    ),
    (
        "post",
        "/v1.0/{project}/configurations",
        "Create a configuration group",
    ),
    (
        "get",
        "/v1.0/{project}/configurations/{id}",
        "Show a configuration group",
    ),
    (
        "put",
        "/v1.0/{project}/configurations/{id}",
        "Replace its values",
    ),
    (
        "patch",
        "/v1.0/{project}/configurations/{id}",
        "Change some values",
    ),
    (
        "delete",
        "/v1.0/{project}/configurations/{id}",
        "Delete a configuration group",
    ),
    ("get", "/v1.0/{project}/limits", "Absolute limits"),
    (
        "get",
        "/v1.0/{project}/mgmt/quotas/{target}",
        "Quotas of a project (admin)",
    ),
    (
        "put",
        "/v1.0/{project}/mgmt/quotas/{target}",
        "Set quotas (admin)",
    ),
    (
        "post",
        "/guest/v1/{method}",
        "Conductor calls from guests (heartbeat, update_backup)",
    ),
];

async fn openapi() -> R {
    let mut paths = Map::new();
    for (m, p, s) in ROUTES {
        let e = paths.entry(p.to_string()).or_insert_with(|| json!({}));
        e[*m] = json!({"summary": s, "responses": {"default": {"description": "Trove JSON; errors as {\"<fault>\":{\"code\",\"message\"}}"}}});
    }
    ok(json!({
        "openapi": "3.0.3",
        "info": {"title": "k2hdkc DBaaS (Trove v1.0 compatible)", "version": VERSION_NAME},
        "components": {"securitySchemes": {"token": {"type": "apiKey", "in": "header", "name": "X-Auth-Token"}}},
        "security": [{"token": []}],
        "paths": paths,
    }))
}

// ---- datastores and flavors

fn version_view(api: &Api, project: &str, with_ds: bool) -> Value {
    let mut v = json!({"id": VERSION_ID, "name": VERSION_NAME, "version": VERSION_NAME, "active": true,
        "links": model::links(&api.base, project, "datastores/versions", VERSION_ID)});
    if with_ds {
        v["datastore"] = json!(DATASTORE_ID);
        v["image_tags"] = json!([]);
        v["packages"] = json!("");
        v["image"] = json!("");
        v["registry_ext"] = json!("");
        v["repl_strategy"] = json!("");
    }
    v
}

fn datastore_view(api: &Api, project: &str) -> Value {
    json!({"id": DATASTORE_ID, "name": DATASTORE, "default_version": VERSION_ID,
           "links": model::links(&api.base, project, "datastores", DATASTORE_ID),
           "versions": [version_view(api, project, false)]})
}

fn check_ds(ds: &str) -> TroveResult<()> {
    if ds == DATASTORE || ds == DATASTORE_ID {
        Ok(())
    } else {
        Err(TroveError::NotFound(format!(
            "Datastore '{ds}' cannot be found."
        )))
    }
}

fn check_version(v: &str) -> TroveResult<()> {
    if v == VERSION_NAME || v == VERSION_ID {
        Ok(())
    } else {
        Err(TroveError::NotFound(format!(
            "Datastore version '{v}' cannot be found."
        )))
    }
}

async fn datastores(State(api): State<Api>, Path(p): P) -> R {
    ok(json!({"datastores": [datastore_view(&api, arg(&p, "project"))]}))
}

async fn datastore(State(api): State<Api>, Path(p): P) -> R {
    check_ds(arg(&p, "ds"))?;
    ok(json!({"datastore": datastore_view(&api, arg(&p, "project"))}))
}

async fn versions(State(api): State<Api>, Path(p): P) -> R {
    check_ds(arg(&p, "ds"))?;
    ok(json!({"versions": [version_view(&api, arg(&p, "project"), true)]}))
}

async fn version(State(api): State<Api>, Path(p): P) -> R {
    if let Some(ds) = p.get("ds") {
        check_ds(ds)?;
    }
    check_version(arg(&p, "ver"))?;
    ok(json!({"version": version_view(&api, arg(&p, "project"), true)}))
}

fn flavor_view(api: &Api, project: &str, f: &model::Flavor) -> Value {
    json!({"id": f.id, "str_id": f.id.to_string(), "name": f.name, "ram": f.ram, "vcpus": f.vcpus,
           "disk": f.disk, "ephemeral": 0,
           "links": model::links(&api.base, project, "flavors", &f.id.to_string())})
}

async fn flavors(State(api): State<Api>, Path(p): P) -> R {
    if let Some(ds) = p.get("ds") {
        check_ds(ds)?;
        check_version(arg(&p, "ver"))?;
    }
    let project = arg(&p, "project");
    ok(
        json!({"flavors": FLAVORS.iter().map(|f| flavor_view(&api, project, f)).collect::<Vec<_>>()}),
    )
}

async fn flavor(State(api): State<Api>, Path(p): P) -> R {
    let id = arg(&p, "id");
    let f = model::flavor(id)
        .ok_or_else(|| TroveError::NotFound(format!("Flavor {id} could not be found.")))?;
    ok(json!({"flavor": flavor_view(&api, arg(&p, "project"), &f)}))
}

async fn volume_types() -> R {
    ok(json!({"volume_types": []}))
}

fn param_view(x: &model::Param) -> Value {
    let mut v = json!({"name": x.name, "type": x.kind, "restart_required": x.restart_required,
                       "datastore_version_id": VERSION_ID, "description": x.description});
    if x.kind == "integer" {
        v["min"] = json!(x.min);
        v["max"] = json!(x.max);
    }
    v
}

async fn parameters(Path(p): P) -> R {
    if let Some(ds) = p.get("ds") {
        check_ds(ds)?;
    }
    check_version(arg(&p, "ver"))?;
    ok(json!({"configuration-parameters": PARAMETERS.iter().map(param_view).collect::<Vec<_>>()}))
}

async fn parameter(Path(p): P) -> R {
    check_version(arg(&p, "ver"))?;
    let name = arg(&p, "name");
    let x = PARAMETERS
        .iter()
        .find(|x| x.name == name)
        .ok_or_else(|| TroveError::NotFound(format!("No configuration parameter {name}")))?;
    ok(param_view(x))
}

// ---- helpers for documents

async fn find<T: crate::store::Doc>(
    api: &Api,
    project: &str,
    id: &str,
    what: &str,
) -> TroveResult<T> {
    api.plane
        .db
        .get::<T>(Some(project), id)
        .await?
        .ok_or_else(|| TroveError::NotFound(format!("{what} {id} could not be found.")))
}

async fn cluster_of(api: &Api, i: &Instance) -> TroveResult<Cluster> {
    api.plane
        .db
        .get_any::<Cluster>(&i.cluster_id)
        .await?
        .ok_or_else(|| TroveError::Internal(format!("instance {} has no cluster", i.id)))
}

/// Apply `limit`/`marker` and build Trove's `links` (a `next` link when more remain).
fn page<T: crate::store::Doc>(
    api: &Api,
    project: &str,
    res: &str,
    q: &BTreeMap<String, String>,
    items: Vec<T>,
) -> TroveResult<(Vec<T>, Value)> {
    let start = match q.get("marker") {
        Some(m) => items
            .iter()
            .position(|d| d.id() == m)
            .map(|i| i + 1)
            .ok_or_else(|| TroveError::BadRequest(format!("marker {m} is not a listed id")))?,
        None => 0,
    };
    let limit = match q.get("limit") {
        Some(l) => l.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
            TroveError::BadRequest(format!("limit {l:?} is not a positive integer"))
        })?,
        None => usize::MAX,
    };
    let rest: Vec<T> = items.into_iter().skip(start).collect();
    let more = rest.len() > limit;
    let page: Vec<T> = rest.into_iter().take(limit).collect();
    let links = match (more, page.last()) {
        (true, Some(last)) => json!([{"rel": "next",
            "href": format!("{}/v1.0/{project}/{res}?limit={limit}&marker={}", api.base, last.id())}]),
        _ => json!([]),
    };
    Ok((page, links))
}

fn int_of(v: &Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
}

fn flavor_ref(v: &Value) -> TroveResult<String> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Null => return Err(TroveError::BadRequest("flavorRef is required".into())),
        _ => {
            return Err(TroveError::BadRequest(
                "flavorRef must be a string or an integer".into(),
            ));
        }
    };
    let f = model::flavor(&s)
        .ok_or_else(|| TroveError::NotFound(format!("Flavor {s} could not be found.")))?;
    Ok(f.id.to_string())
}

fn volume_size(v: &Value) -> TroveResult<u32> {
    match &v["size"] {
        Value::Null if v.is_null() => Ok(1),
        s => int_of(s)
            .filter(|n| (1..=10_000).contains(n))
            .map(|n| n as u32)
            .ok_or_else(|| {
                TroveError::BadRequest(format!(
                    "volume size {s} must be an integer from 1 to 10000"
                ))
            }),
    }
}

fn check_datastore(v: &Value) -> TroveResult<()> {
    if v.is_null() {
        return Ok(());
    }
    if let Some(t) = v["type"].as_str() {
        check_ds(t)?;
    }
    if let Some(ver) = v["version"].as_str() {
        check_version(ver)?;
    }
    Ok(())
}

/// Names become K2HR3 role names: keep them to a safe alphabet.
fn check_name(what: &str, n: &str) -> TroveResult<()> {
    let okc = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if n.is_empty()
        || n.len() > 64
        || !n.chars().all(okc)
        || !n.starts_with(|c: char| c.is_ascii_alphanumeric())
    {
        return Err(TroveError::BadRequest(format!(
            "{what} name {n:?} must be 1 to 64 letters, digits, '-', '_' or '.', starting with a letter or digit"
        )));
    }
    Ok(())
}

const DEFAULT_QUOTAS: &[(&str, i64)] = &[("instances", 20), ("backups", 50), ("volumes", 200)];

async fn quota(api: &Api, project: &str, res: &str) -> TroveResult<i64> {
    let set = api.plane.db.quotas(project).await?;
    Ok(set
        .iter()
        .find(|(r, _)| r == res)
        .map(|(_, h)| *h)
        .or_else(|| {
            DEFAULT_QUOTAS
                .iter()
                .find(|(r, _)| *r == res)
                .map(|(_, h)| *h)
        })
        .unwrap_or(-1))
}

async fn usage(api: &Api, project: &str) -> TroveResult<BTreeMap<&'static str, i64>> {
    let inst = api.plane.db.list::<Instance>(Some(project)).await?;
    let backups = api.plane.db.list::<Backup>(Some(project)).await?;
    Ok(BTreeMap::from([
        ("instances", inst.len() as i64),
        (
            "volumes",
            inst.iter().map(|i| i64::from(i.volume_size)).sum(),
        ),
        ("backups", backups.len() as i64),
    ]))
}

async fn check_quota(
    api: &Api,
    project: &str,
    instances: i64,
    volumes: i64,
    backups: i64,
) -> TroveResult<()> {
    let used = usage(api, project).await?;
    for (res, more) in [
        ("instances", instances),
        ("volumes", volumes),
        ("backups", backups),
    ] {
        if more == 0 {
            continue;
        }
        let limit = quota(api, project, res).await?;
        if limit >= 0 && used[res] + more > limit {
            return Err(TroveError::OverLimit(format!(
                "Quota exceeded for resources: ['{res}'] ({} in use, {more} asked, limit {limit})",
                used[res]
            )));
        }
    }
    Ok(())
}

// ---- instance views

async fn instance_view(
    api: &Api,
    i: &Instance,
    c: Option<&Cluster>,
    detail: bool,
) -> TroveResult<Value> {
    let n = now();
    let up = api.plane.host_up(i).await;
    let backing = api.plane.backing_up(&i.cluster_id).await?;
    let project = &i.project;
    let mut v = json!({
        "id": i.id, "name": i.name,
        "status": i.status(n, up, backing),
        "operating_status": i.operating_status(n, up),
        "links": model::links(&api.base, project, "instances", &i.id),
        "flavor": {"id": i.flavor_id, "links": model::links(&api.base, project, "flavors", &i.flavor_id)},
        "datastore": {"type": DATASTORE, "version": VERSION_NAME},
        "region": "RegionOne",
        "access": {"is_public": false},
        "volume": {"size": i.volume_size},
    });
    if !i.ip.is_empty() {
        v["ip"] = json!([i.ip]);
        v["addresses"] = json!([{"address": i.ip, "type": "private", "network": "local"}]);
    }
    if let Some(c) = c
        && !c.hidden
    {
        v["cluster_id"] = json!(c.id);
    }
    if detail {
        v["created"] = json!(iso(i.created));
        v["updated"] = json!(iso(i.updated));
        v["service_status_updated"] = json!(iso(if i.heartbeat_at > 0 {
            i.heartbeat_at
        } else {
            i.updated
        }));
        v["datastore"]["version_number"] = json!(VERSION_NAME);
        let conf = i
            .configuration_id
            .clone()
            .or_else(|| c.and_then(|c| c.configuration_id.clone()));
        if let Some(cid) = conf
            && let Some(cf) = api.plane.db.get_any::<Configuration>(&cid).await?
        {
            v["configuration"] = json!({"id": cf.id, "name": cf.name,
                "links": model::links(&api.base, project, "configurations", &cf.id)});
        }
        if let Some(f) = i.fault.as_ref().or(c.and_then(|c| c.fault.as_ref())) {
            v["fault"] = json!({"message": f, "created": iso(i.updated), "details": f});
        }
        if let Some(b) = &i.restore_backup {
            v["restored_from_backup"] = json!(b);
        }
    }
    Ok(v)
}

async fn instances(State(api): State<Api>, Path(p): P, Query(q): Q) -> R {
    let project = arg(&p, "project");
    let clustered = q
        .get("include_clustered")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let mut list = Vec::new();
    for i in api.plane.db.list::<Instance>(Some(project)).await? {
        let c = cluster_of(&api, &i).await?;
        if c.hidden || clustered {
            list.push((i, c));
        }
    }
    let ids: Vec<Instance> = list.iter().map(|(i, _)| i.clone()).collect();
    let (pg, links) = page(&api, project, "instances", &q, ids)?;
    let mut out = Vec::new();
    for i in &pg {
        let c = list.iter().find(|(x, _)| x.id == i.id).map(|(_, c)| c);
        out.push(instance_view(&api, i, c, false).await?);
    }
    ok(json!({"instances": out, "links": links}))
}

async fn mgmt_instances(State(api): State<Api>) -> R {
    let mut out = Vec::new();
    for i in api.plane.db.list::<Instance>(None).await? {
        let c = cluster_of(&api, &i).await?;
        let mut v = instance_view(&api, &i, Some(&c), false).await?;
        v["tenant_id"] = json!(i.project);
        v["server_id"] = json!(i.server);
        out.push(v);
    }
    ok(json!({"instances": out, "links": []}))
}

async fn instance_show(State(api): State<Api>, Path(p): P) -> R {
    let i: Instance = find(&api, arg(&p, "project"), arg(&p, "id"), "Instance").await?;
    let c = cluster_of(&api, &i).await?;
    ok(json!({"instance": instance_view(&api, &i, Some(&c), true).await?}))
}

fn new_instance(
    project: &str,
    cluster: &str,
    name: String,
    flavor: String,
    size: u32,
) -> (Instance, String) {
    let id = new_id();
    let key = new_secret(32);
    let t = now();
    (
        Instance {
            id: id.clone(),
            project: project.into(),
            name,
            cluster_id: cluster.into(),
            flavor_id: flavor,
            volume_size: size,
            ip: String::new(),
            task: "BUILDING".into(),
            service_status: "new".into(),
            heartbeat_sent: 0.0,
            heartbeat_at: 0,
            created: t,
            updated: t,
            deleted: false,
            rpc_key: String::new(),
            server: None,
            fault: None,
            restore_backup: None,
            configuration_id: None,
        },
        key,
    )
}

fn new_cluster(api: &Api, project: &str, name: &str, hidden: bool) -> Cluster {
    let id = new_id();
    let t = now();
    Cluster {
        secret: api.plane.seal(&new_secret(48), &format!("cluster/{id}")),
        id,
        project: project.into(),
        name: name.into(),
        hidden,
        task: "BUILDING".into(),
        members: vec![],
        server_token: String::new(),
        slave_token: String::new(),
        configuration_id: None,
        created: t,
        updated: t,
        deleted: false,
        fault: None,
    }
}

async fn configuration_ref(api: &Api, project: &str, v: &Value) -> TroveResult<Option<String>> {
    match v {
        Value::Null => Ok(None),
        Value::String(id) => {
            let c: Configuration = find(api, project, id, "Configuration group").await?;
            Ok(Some(c.id))
        }
        _ => Err(TroveError::BadRequest(
            "configuration must be a configuration group id".into(),
        )),
    }
}

async fn instance_create(State(api): State<Api>, Path(p): P, b: Bytes) -> R {
    let project = arg(&p, "project");
    let b = body(&b)?;
    let req = &b["instance"];
    if !req.is_object() {
        return Err(TroveError::BadRequest(
            "the body needs an \"instance\" object".into(),
        ));
    }
    let name = req["name"]
        .as_str()
        .ok_or_else(|| TroveError::BadRequest("instance name is required".into()))?;
    check_name("instance", name)?;
    let flavor = flavor_ref(&req["flavorRef"])?;
    let size = volume_size(&req["volume"])?;
    check_datastore(&req["datastore"])?;
    if !req["replica_of"].is_null() || req["replica_count"].as_i64().is_some_and(|n| n > 0) {
        return Err(TroveError::BadRequest(
            "k2hdkc replicates inside a cluster; create a cluster instead of replicas".into(),
        ));
    }
    let conf = configuration_ref(&api, project, &req["configuration"]).await?;
    let restore = match &req["restorePoint"]["backupRef"] {
        Value::Null => None,
        Value::String(id) => {
            let bk: Backup = find(&api, project, id, "Backup").await?;
            if bk.status != "COMPLETED" {
                return Err(TroveError::Conflict(format!(
                    "Backup {id} is {} and cannot be restored yet.",
                    bk.status
                )));
            }
            Some(bk.id)
        }
        _ => {
            return Err(TroveError::BadRequest(
                "restorePoint.backupRef must be a backup id".into(),
            ));
        }
    };
    check_quota(&api, project, 1, i64::from(size), 0).await?;
    let mut c = new_cluster(&api, project, name, true);
    c.configuration_id = conf.clone();
    let (mut i, key) = new_instance(project, &c.id, name.to_string(), flavor, size);
    i.rpc_key = api.plane.seal(&key, &format!("instance/{}", i.id));
    i.restore_backup = restore;
    i.configuration_id = conf;
    c.members.push(i.id.clone());
    api.plane.db.insert(&i).await?;
    api.plane.db.insert(&c).await?;
    api.plane
        .start_task("create_cluster", &c.id, json!({}))
        .await?;
    ok(json!({"instance": instance_view(&api, &i, Some(&c), true).await?}))
}

async fn instance_delete(State(api): State<Api>, Path(p): P) -> R {
    let i: Instance = find(&api, arg(&p, "project"), arg(&p, "id"), "Instance").await?;
    let c = cluster_of(&api, &i).await?;
    if !c.hidden {
        return Err(TroveError::BadRequest(
            "Operation not supported for instances that are part of a cluster (shrink the cluster instead).".into(),
        ));
    }
    delete_cluster(&api, &c).await?;
    accepted(None)
}

async fn delete_cluster(api: &Api, c: &Cluster) -> TroveResult<()> {
    if c.task == "DELETING" {
        return Ok(());
    }
    if c.task != "NONE" && c.task != "BUILDING" {
        return Err(TroveError::Unprocessable(format!(
            "cluster {} is busy ({}); wait for it or reset its status",
            c.name, c.task
        )));
    }
    for m in &c.members {
        api.plane
            .db
            .update::<Instance, ()>(m, |i| {
                i.task = "DELETING".into();
                i.updated = now();
                Ok(())
            })
            .await?;
    }
    api.plane
        .db
        .update::<Cluster, ()>(&c.id, |c| {
            c.task = "DELETING".into();
            c.updated = now();
            Ok(())
        })
        .await?;
    api.plane
        .start_task("delete_cluster", &c.id, json!({}))
        .await?;
    Ok(())
}

async fn instance_action(State(api): State<Api>, Path(p): P, b: Bytes) -> R {
    let i: Instance = find(&api, arg(&p, "project"), arg(&p, "id"), "Instance").await?;
    let b = body(&b)?;
    let (action, args) = b.as_object().and_then(|o| o.iter().next()).ok_or_else(|| {
        TroveError::BadRequest("an action body has one key: restart, resize or reset_status".into())
    })?;
    match action.as_str() {
        "restart" => {
            if i.task != "NONE" {
                return Err(TroveError::Unprocessable(format!(
                    "Instance {} is busy ({}).",
                    i.id, i.task
                )));
            }
            api.plane
                .db
                .update::<Instance, ()>(&i.id, |i| {
                    i.task = "REBOOTING".into();
                    i.updated = now();
                    Ok(())
                })
                .await?;
            api.plane
                .start_task("restart_instance", &i.id, json!({}))
                .await?;
        }
        "resize" => {
            if i.task != "NONE" {
                return Err(TroveError::Unprocessable(format!(
                    "Instance {} is busy ({}).",
                    i.id, i.task
                )));
            }
            let (flavor, size) = if !args["flavorRef"].is_null() {
                (Some(flavor_ref(&args["flavorRef"])?), None)
            } else if !args["volume"].is_null() {
                let s = volume_size(&args["volume"])?;
                if s <= i.volume_size {
                    return Err(TroveError::BadRequest(format!(
                        "The new volume 'size' must be larger than the current volume size of '{}'.",
                        i.volume_size
                    )));
                }
                check_quota(&api, &i.project, 0, i64::from(s - i.volume_size), 0).await?;
                (None, Some(s))
            } else {
                return Err(TroveError::BadRequest(
                    "resize needs flavorRef or volume.size".into(),
                ));
            };
            // Local hosts share this machine: a flavor or volume is a label and a quota
            // figure, with nothing to move, so the change is immediate.
            api.plane
                .db
                .update::<Instance, ()>(&i.id, |i| {
                    if let Some(f) = flavor {
                        i.flavor_id = f;
                    }
                    if let Some(s) = size {
                        i.volume_size = s;
                    }
                    i.updated = now();
                    Ok(())
                })
                .await?;
        }
        "reset_status" => {
            api.plane
                .db
                .update::<Instance, ()>(&i.id, |i| {
                    if i.task != "DELETING" {
                        i.task = "NONE".into();
                    }
                    i.fault = None;
                    i.updated = now();
                    Ok(())
                })
                .await?;
        }
        other => {
            return Err(TroveError::BadRequest(format!(
                "action {other:?} is not supported (restart, resize, reset_status)"
            )));
        }
    }
    accepted(None)
}

async fn instance_update(State(api): State<Api>, Path(p): P, b: Bytes) -> R {
    let project = arg(&p, "project");
    let i: Instance = find(&api, project, arg(&p, "id"), "Instance").await?;
    let b = body(&b)?;
    let req = b["instance"]
        .as_object()
        .ok_or_else(|| TroveError::BadRequest("the body needs an \"instance\" object".into()))?;
    if let Some(n) = req.get("name").and_then(Value::as_str) {
        check_name("instance", n)?;
        let n = n.to_string();
        api.plane
            .db
            .update::<Instance, ()>(&i.id, |i| {
                i.name = n;
                i.updated = now();
                Ok(())
            })
            .await?;
    }
    if let Some(cv) = req.get("configuration") {
        let conf = configuration_ref(&api, project, cv).await?;
        attach(&api, &i.cluster_id, conf).await?;
    }
    accepted(None)
}

/// Attach (or detach, `None`) a configuration to a whole cluster: its members share one
/// cluster file.
async fn attach(api: &Api, cluster_id: &str, conf: Option<String>) -> TroveResult<()> {
    let c: Cluster = api
        .plane
        .db
        .get_any(cluster_id)
        .await?
        .ok_or_else(|| TroveError::NotFound(format!("cluster {cluster_id}")))?;
    for m in &c.members {
        let conf = conf.clone();
        api.plane
            .db
            .update::<Instance, ()>(m, |i| {
                i.configuration_id = conf;
                i.updated = now();
                Ok(())
            })
            .await?;
    }
    api.plane
        .db
        .update::<Cluster, ()>(cluster_id, |c| {
            c.configuration_id = conf;
            c.updated = now();
            Ok(())
        })
        .await?;
    api.plane
        .start_task("update_configuration", cluster_id, json!({}))
        .await?;
    Ok(())
}

async fn instance_configuration(State(api): State<Api>, Path(p): P) -> R {
    let project = arg(&p, "project");
    let i: Instance = find(&api, project, arg(&p, "id"), "Instance").await?;
    let c = cluster_of(&api, &i).await?;
    let (n, q) = if c.hidden { (1, 1) } else { (3, 2) };
    let mut m = Map::new();
    m.insert("replicas".into(), json!(n));
    m.insert("write_quorum".into(), json!(q));
    m.insert("read_quorum".into(), json!(q));
    m.insert("automerge".into(), json!(true));
    if let Some(cid) = &c.configuration_id
        && let Some(cf) = api.plane.db.get_any::<Configuration>(cid).await?
    {
        m = Plane::merge_values(&m, &cf.values);
    }
    ok(json!({"instance": {"configuration": m}}))
}

async fn log_list(State(api): State<Api>, Path(p): P) -> R {
    let i: Instance = find(&api, arg(&p, "project"), arg(&p, "id"), "Instance").await?;
    let logs = api
        .plane
        .guest_call(&i, "guest_log_list", json!({}), false)
        .await
        .unwrap_or_else(|_| json!([{"name": "guest", "type": "SYS", "status": "Unavailable"}]));
    ok(json!({"logs": logs}))
}

async fn log_action(State(api): State<Api>, Path(p): P, b: Bytes) -> R {
    let i: Instance = find(&api, arg(&p, "project"), arg(&p, "id"), "Instance").await?;
    let b = body(&b)?;
    let name = b["name"]
        .as_str()
        .ok_or_else(|| TroveError::BadRequest("log name is required".into()))?;
    let logs = api
        .plane
        .guest_call(&i, "guest_log_list", json!({}), false)
        .await?;
    let log = logs
        .as_array()
        .and_then(|a| a.iter().find(|l| l["name"] == name))
        .cloned()
        .ok_or_else(|| TroveError::NotFound(format!("No such log {name}")))?;
    ok(json!({"log": log}))
}

// ---- clusters

async fn cluster_view(api: &Api, c: &Cluster, detail: bool) -> TroveResult<Value> {
    let (tid, desc) = model::cluster_task_id(&c.task);
    let mut insts = Vec::new();
    let mut ips = Vec::new();
    for i in api.plane.members(c).await? {
        if i.deleted {
            continue;
        }
        let mut v = json!({"id": i.id, "name": i.name, "type": "member",
            "links": model::links(&api.base, &c.project, "instances", &i.id)});
        if detail {
            let full = instance_view(api, &i, Some(c), false).await?;
            for k in [
                "status",
                "operating_status",
                "volume",
                "flavor",
                "ip",
                "addresses",
            ] {
                if !full[k].is_null() {
                    v[k] = full[k].clone();
                }
            }
        }
        if !i.ip.is_empty() {
            ips.push(json!(i.ip));
        }
        insts.push(v);
    }
    let mut v = json!({
        "id": c.id, "name": c.name,
        "task": {"id": tid, "name": c.task, "description": desc},
        "created": iso(c.created), "updated": iso(c.updated),
        "links": model::links(&api.base, &c.project, "clusters", &c.id),
        "datastore": {"type": DATASTORE, "version": VERSION_NAME},
        "instances": insts,
        "ip": ips,
    });
    if let Some(cf) = &c.configuration_id {
        v["configuration"] = json!(cf);
    }
    if let Some(f) = &c.fault {
        v["fault"] = json!({"message": f, "created": iso(c.updated)});
    }
    Ok(v)
}

async fn clusters(State(api): State<Api>, Path(p): P, Query(q): Q) -> R {
    list_clusters(&api, &p, &q, false).await
}

async fn mgmt_clusters(State(api): State<Api>, Path(p): P, Query(q): Q) -> R {
    list_clusters(&api, &p, &q, true).await
}

async fn list_clusters(
    api: &Api,
    p: &BTreeMap<String, String>,
    q: &BTreeMap<String, String>,
    admin: bool,
) -> R {
    let api = api.clone();
    let project = arg(p, "project");
    let all: Vec<Cluster> = api
        .plane
        .db
        .list::<Cluster>(if admin { None } else { Some(project) })
        .await?;
    let all: Vec<Cluster> = all.into_iter().filter(|c| !c.hidden).collect();
    let (pg, links) = page(&api, project, "clusters", q, all)?;
    let mut out = Vec::new();
    for c in &pg {
        out.push(cluster_view(&api, c, false).await?);
    }
    ok(json!({"clusters": out, "links": links}))
}

async fn find_cluster(api: &Api, project: &str, id: &str) -> TroveResult<Cluster> {
    let c: Cluster = find(api, project, id, "Cluster").await?;
    if c.hidden {
        return Err(TroveError::NotFound(format!(
            "Cluster {id} could not be found."
        )));
    }
    Ok(c)
}

async fn cluster_show(State(api): State<Api>, Path(p): P) -> R {
    let c = find_cluster(&api, arg(&p, "project"), arg(&p, "id")).await?;
    ok(json!({"cluster": cluster_view(&api, &c, true).await?}))
}

/// The cloud-init user-data that makes a VM a slave (gateway) of the cluster; `memcached`
/// sets the gateway's listener on the client host (default 127.0.0.1:11211).
async fn slave_userdata(State(api): State<Api>, Path(p): P, Query(q): Q) -> R {
    let c = find_cluster(&api, arg(&p, "project"), arg(&p, "id")).await?;
    let listen = q.get("memcached").map_or("127.0.0.1:11211", String::as_str);
    if listen.parse::<std::net::SocketAddr>().is_err() {
        return Err(TroveError::BadRequest(format!(
            "memcached={listen:?}: want ADDR:PORT"
        )));
    }
    let token = api.plane.slave_token(&c).await?;
    let secret = api.plane.open(&c.secret, &format!("cluster/{}", c.id))?;
    let tenant = crate::plane::tenant_of(&c.project);
    let n = crate::plane::r3_name(&c);
    let doc = crate::userdata::slave_user_data(&crate::userdata::SlaveSpec {
        cluster: c.name.clone(),
        k2hr3_url: api.plane.cfg.k2hr3_url.clone(),
        role: format!("yrn:yahoo:::{tenant}:role:{n}/slave"),
        role_token: token,
        resource: format!("yrn:yahoo:::{tenant}:resource:{n}/slave"),
        secret,
        memcached_listen: listen.to_string(),
        poll_secs: 10,
    });
    Ok(([(header::CONTENT_TYPE, "text/cloud-config")], doc).into_response())
}

async fn cluster_instance(State(api): State<Api>, Path(p): P) -> R {
    let project = arg(&p, "project");
    let c = find_cluster(&api, project, arg(&p, "id")).await?;
    let iid = arg(&p, "iid");
    if !c.members.iter().any(|m| m == iid) {
        return Err(TroveError::NotFound(format!(
            "Instance {iid} is not in cluster {}.",
            c.id
        )));
    }
    let i: Instance = find(&api, project, iid, "Instance").await?;
    ok(json!({"instance": instance_view(&api, &i, Some(&c), true).await?}))
}

/// Parse the members of a create or grow request.
fn member_specs(items: &Value, what: &str) -> TroveResult<Vec<(Option<String>, String, u32)>> {
    let a = items.as_array().filter(|a| !a.is_empty()).ok_or_else(|| {
        TroveError::BadRequest(format!("{what} needs a non-empty list of instances"))
    })?;
    if a.len() > 64 {
        return Err(TroveError::BadRequest(format!(
            "{what}: at most 64 instances at once"
        )));
    }
    a.iter()
        .map(|x| {
            let t = &x["type"];
            let member = t.is_null()
                || t == "member"
                || t.as_array()
                    .is_some_and(|a| a.iter().all(|e| e == "member"));
            if !member {
                return Err(TroveError::BadRequest(format!(
                    "instance type {t} is not supported; k2hdkc clusters have members only"
                )));
            }
            let name = match x["name"].as_str() {
                Some(n) => {
                    check_name("instance", n)?;
                    Some(n.to_string())
                }
                None => None,
            };
            Ok((
                name,
                flavor_ref(&x["flavorRef"])?,
                volume_size(&x["volume"])?,
            ))
        })
        .collect()
}

async fn cluster_create(State(api): State<Api>, Path(p): P, b: Bytes) -> R {
    let project = arg(&p, "project");
    let b = body(&b)?;
    let req = &b["cluster"];
    let name = req["name"]
        .as_str()
        .ok_or_else(|| TroveError::BadRequest("cluster name is required".into()))?;
    let c = create_cluster(
        &api,
        project,
        name,
        &req["datastore"],
        &req["instances"],
        &req["configuration"],
    )
    .await?;
    ok(json!({"cluster": cluster_view(&api, &c, true).await?}))
}

/// Record a new cluster and start building it (the API and the quickstart share this).
pub async fn create_cluster(
    api: &Api,
    project: &str,
    name: &str,
    datastore: &Value,
    instances: &Value,
    configuration: &Value,
) -> TroveResult<Cluster> {
    check_name("cluster", name)?;
    if datastore.is_null() {
        return Err(TroveError::BadRequest(
            "cluster datastore {type, version} is required".into(),
        ));
    }
    check_datastore(datastore)?;
    let specs = member_specs(instances, "cluster create")?;
    if api
        .plane
        .db
        .list::<Cluster>(Some(project))
        .await?
        .iter()
        .any(|c| !c.hidden && c.name == name)
    {
        return Err(TroveError::Conflict(format!(
            "A cluster named {name} already exists in this project."
        )));
    }
    let conf = configuration_ref(api, project, configuration).await?;
    let vols: i64 = specs.iter().map(|s| i64::from(s.2)).sum();
    check_quota(api, project, specs.len() as i64, vols, 0).await?;
    let mut c = new_cluster(api, project, name, false);
    c.configuration_id = conf.clone();
    let mut insts = Vec::new();
    for (k, (n, f, s)) in specs.into_iter().enumerate() {
        let (mut i, key) = new_instance(
            project,
            &c.id,
            n.unwrap_or_else(|| format!("{name}-member-{}", k + 1)),
            f,
            s,
        );
        i.rpc_key = api.plane.seal(&key, &format!("instance/{}", i.id));
        i.configuration_id = conf.clone();
        c.members.push(i.id.clone());
        insts.push(i);
    }
    for i in &insts {
        api.plane.db.insert(i).await?;
    }
    api.plane.db.insert(&c).await?;
    api.plane
        .start_task("create_cluster", &c.id, json!({}))
        .await?;
    Ok(c)
}

async fn cluster_action(State(api): State<Api>, Path(p): P, b: Bytes) -> R {
    let project = arg(&p, "project");
    let c = find_cluster(&api, project, arg(&p, "id")).await?;
    let b = body(&b)?;
    let (action, args) = b.as_object().and_then(|o| o.iter().next()).ok_or_else(|| {
        TroveError::BadRequest("an action body has one key: grow, shrink or reset-status".into())
    })?;
    let c = match action.as_str() {
        "grow" => grow_cluster(&api, &c, args).await?,
        "shrink" => shrink_cluster(&api, &c, args).await?,
        "reset-status" | "reset_status" => {
            for m in &c.members {
                api.plane
                    .db
                    .update::<Instance, ()>(m, |i| {
                        if i.task != "DELETING" {
                            i.task = "NONE".into();
                        }
                        Ok(())
                    })
                    .await?;
            }
            api.plane
                .db
                .update::<Cluster, ()>(&c.id, |c| {
                    if c.task != "DELETING" {
                        c.task = "NONE".into();
                    }
                    c.fault = None;
                    c.updated = now();
                    Ok(())
                })
                .await?
                .0
        }
        "upgrade" => {
            return Err(TroveError::BadRequest(
                "this control plane runs one k2hdkc version; upgrade is not supported".into(),
            ));
        }
        other => {
            return Err(TroveError::BadRequest(format!(
                "cluster action {other:?} is not supported (grow, shrink, reset-status)"
            )));
        }
    };
    accepted(Some(
        json!({"cluster": cluster_view(&api, &c, false).await?}),
    ))
}

fn idle(c: &Cluster) -> TroveResult<()> {
    if c.task != "NONE" {
        return Err(TroveError::Unprocessable(format!(
            "Cluster {} is busy ({}); try again when its task is NONE.",
            c.name, c.task
        )));
    }
    Ok(())
}

/// Add members to a cluster and start the grow task.
pub async fn grow_cluster(api: &Api, c: &Cluster, items: &Value) -> TroveResult<Cluster> {
    idle(c)?;
    let specs = member_specs(items, "grow")?;
    let vols: i64 = specs.iter().map(|s| i64::from(s.2)).sum();
    check_quota(api, &c.project, specs.len() as i64, vols, 0).await?;
    let used: Vec<String> = api
        .plane
        .members(c)
        .await?
        .into_iter()
        .map(|i| i.name)
        .collect();
    let mut next = c.members.len() + 1;
    let mut ids = Vec::new();
    for (n, f, s) in specs {
        let n = n.unwrap_or_else(|| {
            loop {
                let n = format!("{}-member-{next}", c.name);
                next += 1;
                if !used.contains(&n) {
                    break n;
                }
            }
        });
        let (mut i, key) = new_instance(&c.project, &c.id, n, f, s);
        i.rpc_key = api.plane.seal(&key, &format!("instance/{}", i.id));
        i.configuration_id = c.configuration_id.clone();
        api.plane.db.insert(&i).await?;
        ids.push(i.id);
    }
    let add = ids.clone();
    let (c, ()) = api
        .plane
        .db
        .update::<Cluster, ()>(&c.id, |c| {
            if c.task != "NONE" {
                return Err(TroveError::Unprocessable(format!(
                    "Cluster {} is busy ({}).",
                    c.name, c.task
                )));
            }
            c.members.extend(add);
            c.task = "GROWING_CLUSTER".into();
            c.updated = now();
            Ok(())
        })
        .await?;
    api.plane
        .start_task("grow_cluster", &c.id, json!({"instances": ids}))
        .await?;
    Ok(c)
}

/// Take members out of a cluster (their data moves first) and start the shrink task.
pub async fn shrink_cluster(api: &Api, c: &Cluster, items: &Value) -> TroveResult<Cluster> {
    idle(c)?;
    let a = items.as_array().filter(|a| !a.is_empty()).ok_or_else(|| {
        TroveError::BadRequest("shrink needs a non-empty list of {\"id\"}".into())
    })?;
    let mut victims = Vec::new();
    for x in a {
        let id = x["id"]
            .as_str()
            .ok_or_else(|| TroveError::BadRequest("shrink items need an id".into()))?;
        if !c.members.iter().any(|m| m == id) {
            return Err(TroveError::NotFound(format!(
                "Instance {id} is not a member of cluster {}.",
                c.name
            )));
        }
        if !victims.iter().any(|v| v == id) {
            victims.push(id.to_string());
        }
    }
    if victims.len() >= c.members.len() {
        return Err(TroveError::BadRequest(
            "a shrink must leave at least one member; delete the cluster instead".into(),
        ));
    }
    let v2 = victims.clone();
    let (c, ()) = api
        .plane
        .db
        .update::<Cluster, ()>(&c.id, |c| {
            if c.task != "NONE" {
                return Err(TroveError::Unprocessable(format!(
                    "Cluster {} is busy ({}).",
                    c.name, c.task
                )));
            }
            c.task = "SHRINKING_CLUSTER".into();
            c.updated = now();
            Ok(())
        })
        .await?;
    for v in &v2 {
        api.plane
            .db
            .update::<Instance, ()>(v, |i| {
                i.task = "DELETING".into();
                Ok(())
            })
            .await?;
    }
    api.plane
        .start_task("shrink_cluster", &c.id, json!({"instances": victims}))
        .await?;
    Ok(c)
}

async fn cluster_delete(State(api): State<Api>, Path(p): P) -> R {
    let c = find_cluster(&api, arg(&p, "project"), arg(&p, "id")).await?;
    delete_cluster(&api, &c).await?;
    accepted(None)
}

// ---- backups

fn backup_view(api: &Api, b: &Backup) -> Value {
    json!({
        "id": b.id, "name": b.name, "description": b.description,
        "locationRef": if b.location.is_empty() { Value::Null } else { json!(b.location) },
        "instance_id": b.instance_id, "created": iso(b.created), "updated": iso(b.updated),
        "size": b.size, "status": b.status, "parent_id": b.parent_id, "project_id": b.project,
        "storage_driver": api.plane.backups.name(),
        "datastore": {"type": DATASTORE, "version": VERSION_NAME, "version_id": VERSION_ID},
        "links": model::links(&api.base, &b.project, "backups", &b.id),
    })
}

async fn backups(State(api): State<Api>, Path(p): P, Query(q): Q) -> R {
    let project = arg(&p, "project");
    let mut all = api.plane.db.list::<Backup>(Some(project)).await?;
    if let Some(iid) = q.get("instance_id").or(p.get("id")) {
        all.retain(|b| &b.instance_id == iid);
    }
    if let Some(ds) = q.get("datastore") {
        check_ds(ds)?;
    }
    let (pg, links) = page(&api, project, "backups", &q, all)?;
    ok(
        json!({"backups": pg.iter().map(|b| backup_view(&api, b)).collect::<Vec<_>>(), "links": links}),
    )
}

async fn instance_backups(State(api): State<Api>, Path(p): P, q: Q) -> R {
    let _: Instance = find(&api, arg(&p, "project"), arg(&p, "id"), "Instance").await?;
    backups(State(api), Path(p), q).await
}

async fn backup_show(State(api): State<Api>, Path(p): P) -> R {
    let b: Backup = find(&api, arg(&p, "project"), arg(&p, "id"), "Backup").await?;
    ok(json!({"backup": backup_view(&api, &b)}))
}

async fn backup_create(State(api): State<Api>, Path(p): P, b: Bytes) -> R {
    let project = arg(&p, "project");
    let b = body(&b)?;
    let req = &b["backup"];
    let name = req["name"]
        .as_str()
        .ok_or_else(|| TroveError::BadRequest("backup name is required".into()))?;
    if name.is_empty() || name.len() > 255 {
        return Err(TroveError::BadRequest(
            "backup name must be 1 to 255 characters".into(),
        ));
    }
    let iid = req["instance"]
        .as_str()
        .ok_or_else(|| TroveError::BadRequest("backup instance is required".into()))?;
    if req["incremental"].as_i64().unwrap_or(0) != 0
        || req["incremental"] == true
        || !req["parent_id"].is_null()
    {
        return Err(TroveError::BadRequest(
            "k2hdkc backups are full archives; incremental backups are not supported".into(),
        ));
    }
    if !req["swift_container"].is_null() {
        return Err(TroveError::BadRequest(
            "this control plane keeps backups in its local store; swift_container is not supported"
                .into(),
        ));
    }
    let i = match api.plane.db.get::<Instance>(Some(project), iid).await? {
        Some(i) => i,
        None => {
            // The CLI sends what the user typed: accept a name too.
            let all = api.plane.db.list::<Instance>(Some(project)).await?;
            let mut m = all.into_iter().filter(|i| i.name == iid);
            match (m.next(), m.next()) {
                (Some(i), None) => i,
                (Some(_), Some(_)) => {
                    return Err(TroveError::BadRequest(format!(
                        "more than one instance is named {iid}; use its id"
                    )));
                }
                _ => {
                    return Err(TroveError::NotFound(format!(
                        "Instance {iid} could not be found."
                    )));
                }
            }
        }
    };
    let c = cluster_of(&api, &i).await?;
    if c.task != "NONE" || i.task != "NONE" {
        return Err(TroveError::Unprocessable(format!(
            "Instance {} is busy; back it up when it is ACTIVE.",
            i.id
        )));
    }
    if api.plane.backing_up(&c.id).await? {
        return Err(TroveError::Unprocessable(
            "a backup of this cluster is already running".into(),
        ));
    }
    check_quota(&api, project, 0, 0, 1).await?;
    let t = now();
    let bk = Backup {
        id: new_id(),
        project: project.into(),
        name: name.into(),
        description: req["description"].as_str().unwrap_or_default().into(),
        instance_id: i.id.clone(),
        cluster_id: c.id.clone(),
        status: "NEW".into(),
        members: BTreeMap::new(),
        size: None,
        location: String::new(),
        created: t,
        updated: t,
        deleted: false,
        parent_id: None,
    };
    api.plane.db.insert(&bk).await?;
    api.plane
        .start_task("backup", &bk.id, json!({"cluster_id": c.id}))
        .await?;
    accepted(Some(json!({"backup": backup_view(&api, &bk)})))
}

async fn backup_delete(State(api): State<Api>, Path(p): P) -> R {
    let b: Backup = find(&api, arg(&p, "project"), arg(&p, "id"), "Backup").await?;
    if matches!(b.status.as_str(), "NEW" | "BUILDING") {
        return Err(TroveError::Conflict(format!(
            "Backup {} is still {}; delete it when it is done.",
            b.id, b.status
        )));
    }
    let dir = api.plane.cfg.backup_dir.join(&b.id);
    api.plane.backups.delete(&b.id, &dir).await?;
    api.plane
        .db
        .update::<Backup, ()>(&b.id, |b| {
            b.deleted = true;
            b.updated = now();
            Ok(())
        })
        .await?;
    accepted(None)
}

// ---- configuration groups

async fn configuration_view(api: &Api, c: &Configuration, detail: bool) -> TroveResult<Value> {
    let mut v = json!({
        "id": c.id, "name": c.name, "description": c.description,
        "created": iso(c.created), "updated": iso(c.updated),
        "datastore_version_id": VERSION_ID, "datastore_name": DATASTORE,
        "datastore_version_name": VERSION_NAME,
        "links": model::links(&api.base, &c.project, "configurations", &c.id),
    });
    if detail {
        v["values"] = Value::Object(c.values.clone());
        v["datastore_version_number"] = json!(VERSION_NAME);
        v["instance_count"] = json!(attached(api, c).await?.len());
    }
    Ok(v)
}

async fn attached(api: &Api, c: &Configuration) -> TroveResult<Vec<Instance>> {
    Ok(api
        .plane
        .db
        .list::<Instance>(Some(&c.project))
        .await?
        .into_iter()
        .filter(|i| i.configuration_id.as_deref() == Some(c.id.as_str()))
        .collect())
}

async fn configurations(State(api): State<Api>, Path(p): P, Query(q): Q) -> R {
    let project = arg(&p, "project");
    let all = api.plane.db.list::<Configuration>(Some(project)).await?;
    let (pg, links) = page(&api, project, "configurations", &q, all)?;
    let mut out = Vec::new();
    for c in &pg {
        out.push(configuration_view(&api, c, false).await?);
    }
    ok(json!({"configurations": out, "links": links}))
}

async fn configuration_show(State(api): State<Api>, Path(p): P) -> R {
    let c: Configuration = find(
        &api,
        arg(&p, "project"),
        arg(&p, "id"),
        "Configuration group",
    )
    .await?;
    ok(json!({"configuration": configuration_view(&api, &c, true).await?}))
}

fn values_of(v: &Value) -> TroveResult<Map<String, Value>> {
    let m = v
        .as_object()
        .cloned()
        .ok_or_else(|| TroveError::BadRequest("configuration values must be an object".into()))?;
    model::check_values(&m).map_err(TroveError::BadRequest)?;
    Ok(m)
}

async fn configuration_create(State(api): State<Api>, Path(p): P, b: Bytes) -> R {
    let project = arg(&p, "project");
    let b = body(&b)?;
    let req = &b["configuration"];
    let name = req["name"]
        .as_str()
        .ok_or_else(|| TroveError::BadRequest("configuration name is required".into()))?;
    if name.is_empty() || name.len() > 255 {
        return Err(TroveError::BadRequest(
            "configuration name must be 1 to 255 characters".into(),
        ));
    }
    check_datastore(&req["datastore"])?;
    let values = values_of(&req["values"])?;
    let t = now();
    let c = Configuration {
        id: new_id(),
        project: project.into(),
        name: name.into(),
        description: req["description"].as_str().unwrap_or_default().into(),
        values,
        created: t,
        updated: t,
        deleted: false,
    };
    api.plane.db.insert(&c).await?;
    ok(json!({"configuration": configuration_view(&api, &c, true).await?}))
}

async fn configuration_change(
    api: &Api,
    p: &BTreeMap<String, String>,
    b: &Bytes,
    replace: bool,
) -> R {
    let c: Configuration =
        find(api, arg(p, "project"), arg(p, "id"), "Configuration group").await?;
    let b = body(b)?;
    let req = &b["configuration"];
    let values = values_of(&req["values"])?;
    let (c, ()) = api
        .plane
        .db
        .update::<Configuration, ()>(&c.id, |c| {
            c.values = if replace {
                values
            } else {
                Plane::merge_values(&c.values, &values)
            };
            if let Some(n) = req["name"].as_str() {
                c.name = n.into();
            }
            if let Some(d) = req["description"].as_str() {
                c.description = d.into();
            }
            c.updated = now();
            Ok(())
        })
        .await?;
    // Every cluster using it gets a re-rendered cluster file; nodes follow it live.
    let mut done = std::collections::HashSet::new();
    for i in attached(api, &c).await? {
        if done.insert(i.cluster_id.clone()) {
            api.plane
                .start_task("update_configuration", &i.cluster_id, json!({}))
                .await?;
        }
    }
    accepted(None)
}

async fn configuration_put(State(api): State<Api>, Path(p): P, b: Bytes) -> R {
    configuration_change(&api, &p, &b, true).await
}

async fn configuration_patch(State(api): State<Api>, Path(p): P, b: Bytes) -> R {
    configuration_change(&api, &p, &b, false).await
}

async fn configuration_delete(State(api): State<Api>, Path(p): P) -> R {
    let c: Configuration = find(
        &api,
        arg(&p, "project"),
        arg(&p, "id"),
        "Configuration group",
    )
    .await?;
    let n = attached(&api, &c).await?.len();
    if n > 0 {
        return Err(TroveError::BadRequest(format!(
            "Configuration group {} is attached to {n} instance(s); detach it first.",
            c.id
        )));
    }
    api.plane
        .db
        .update::<Configuration, ()>(&c.id, |c| {
            c.deleted = true;
            c.updated = now();
            Ok(())
        })
        .await?;
    accepted(None)
}

async fn configuration_instances(State(api): State<Api>, Path(p): P) -> R {
    let c: Configuration = find(
        &api,
        arg(&p, "project"),
        arg(&p, "id"),
        "Configuration group",
    )
    .await?;
    let list: Vec<Value> = attached(&api, &c)
        .await?
        .iter()
        .map(|i| json!({"id": i.id, "name": i.name}))
        .collect();
    ok(json!({"instances": list, "links": []}))
}

// ---- quotas and limits

async fn quota_list(api: &Api, project: &str) -> TroveResult<Vec<Value>> {
    let used = usage(api, project).await?;
    let mut out = Vec::new();
    for (res, _) in DEFAULT_QUOTAS {
        out.push(json!({"resource": res, "in_use": used[res], "reserved": 0, "limit": quota(api, project, res).await?}));
    }
    Ok(out)
}

async fn quota_show(State(api): State<Api>, Path(p): P) -> R {
    ok(json!({"quotas": quota_list(&api, arg(&p, "target")).await?}))
}

async fn quota_update(State(api): State<Api>, Path(p): P, b: Bytes) -> R {
    let target = arg(&p, "target");
    let b = body(&b)?;
    let q = b["quotas"]
        .as_object()
        .ok_or_else(|| TroveError::BadRequest("the body needs a \"quotas\" object".into()))?;
    let mut out = Map::new();
    for (k, v) in q {
        if !DEFAULT_QUOTAS.iter().any(|(r, _)| r == k) {
            return Err(TroveError::BadRequest(format!(
                "unknown quota resource {k:?} (instances, backups, volumes)"
            )));
        }
        let n = int_of(v)
            .filter(|n| *n >= -1)
            .ok_or_else(|| TroveError::BadRequest(format!("quota {k} must be an integer >= -1")))?;
        api.plane.db.set_quota(target, k, n).await?;
        out.insert(k.clone(), json!(n));
    }
    ok(json!({"quotas": out}))
}

async fn limits(State(api): State<Api>, Path(p): P) -> R {
    let project = arg(&p, "project");
    ok(json!({"limits": [{
        "verb": "ABSOLUTE",
        "max_instances": quota(&api, project, "instances").await?,
        "max_backups": quota(&api, project, "backups").await?,
        "max_volumes": quota(&api, project, "volumes").await?,
    }]}))
}

// ---- the direct conductor

async fn guest_cast(
    State(api): State<Api>,
    Path(method): Path<String>,
    h: HeaderMap,
    b: Bytes,
) -> R {
    let key = h
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            TroveError::Unauthorized("the instance key is required as bearer token".into())
        })?;
    let args = body(&b)?;
    match method.as_str() {
        "heartbeat" => api.plane.heartbeat(key, &args).await?,
        "update_backup" => api.plane.update_backup(key, &args).await?,
        other => return Err(TroveError::NotFound(format!("no conductor method {other}"))),
    }
    accepted(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The API over a real plane (SQLite, K2HR3 service, local driver without binaries: no
    /// host ever boots here), on a loopback port.
    async fn serve(auth: Auth) -> (String, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let r3cfg = k2hdkc_k2hr3::Config {
            data_dir: dir.path().to_path_buf(),
            database_url: Some(url.clone()),
            ..Default::default()
        };
        let svc = k2hdkc_k2hr3::Service::open(r3cfg).await.expect("k2hr3");
        let db = crate::store::Db::open(&url).await.expect("db");
        let keys = k2hdkc_k2hr3::crypto::Keys::load_or_create(&dir.path().join("k")).expect("keys");
        let compute = Arc::new(crate::compute::Local::new(
            dir.path().join("hosts"),
            dir.path().join("no-bin"),
        ));
        let plane = Plane::new(
            db,
            keys,
            compute,
            Arc::new(crate::backup_store::LocalDir),
            svc,
            crate::plane::PlaneConfig {
                conductor_url: "http://127.0.0.1:9".into(),
                k2hr3_url: "http://127.0.0.1:9".into(),
                backup_dir: dir.path().join("backups"),
                data_dir: dir.path().to_path_buf(),
                guest_timeout_secs: 5,
                address_block: 90,
            },
        )
        .expect("plane");
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", l.local_addr().expect("addr"));
        let app = router(Api {
            plane: Arc::new(plane),
            auth,
            base: base.clone(),
        });
        tokio::spawn(async move { axum::serve(l, app).await });
        (base, dir)
    }

    async fn call(
        m: reqwest::Method,
        url: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, Value) {
        let mut r = reqwest::Client::new().request(m, url);
        if let Some(t) = token {
            r = r.header("x-auth-token", t);
        }
        if let Some(b) = body {
            r = r
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = r.send().await.expect("request");
        let code = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            code,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    fn fault(v: &Value) -> (&str, i64) {
        let (k, f) = v
            .as_object()
            .and_then(|o| o.iter().next())
            .expect("a fault object");
        assert!(f["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        (k.as_str(), f["code"].as_i64().unwrap_or(0))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_input_gets_trove_faults() {
        use reqwest::Method as M;
        let (base, _dir) = serve(Auth::Token("test-token-123".into())).await;
        let t = Some("test-token-123");
        let p = format!("{base}/v1.0/p1");
        let (c, v) = call(M::GET, &format!("{p}/instances"), None, None).await;
        assert_eq!((c, fault(&v)), (401, ("unauthorized", 401)));
        let (c, v) = call(
            M::GET,
            &format!("{p}/instances"),
            Some("wrong-token-1"),
            None,
        )
        .await;
        assert_eq!((c, fault(&v).0), (401, "unauthorized"));
        let (c, v) = call(M::GET, &format!("{p}/instances"), t, None).await;
        assert_eq!((c, v), (200, json!({"instances": [], "links": []})));
        let (c, v) = call(M::GET, &format!("{p}/clusters/no-such"), t, None).await;
        assert_eq!((c, fault(&v)), (404, ("itemNotFound", 404)));
        let (c, v) = call(M::GET, &format!("{p}/no/such/route"), t, None).await;
        assert_eq!((c, fault(&v).0), (404, "itemNotFound"));
        let (c, v) = call(M::POST, &format!("{p}/clusters"), t, Some("{not json")).await;
        assert_eq!((c, fault(&v).0), (400, "badRequest"));
        let ds = r#""datastore":{"type":"k2hdkc","version":"0.1.0"}"#;
        for (body, code, name) in [
            (format!(r#"{{"cluster":{{"name":"c1",{ds},"instances":[{{"flavorRef":"9"}}]}}}}"#), 404, "itemNotFound"),
            (format!(r#"{{"cluster":{{"name":"c1",{ds},"instances":[{{"flavorRef":"1","volume":{{"size":0}}}}]}}}}"#), 400, "badRequest"),
            (format!(r#"{{"cluster":{{"name":"a/b",{ds},"instances":[{{"flavorRef":"1"}}]}}}}"#), 400, "badRequest"),
            (r#"{"cluster":{"name":"c1","datastore":{"type":"mysql","version":"8"},"instances":[{"flavorRef":"1"}]}}"#.into(), 404, "itemNotFound"),
            (format!(r#"{{"cluster":{{"name":"c1",{ds},"instances":[]}}}}"#), 400, "badRequest"),
            (format!(r#"{{"cluster":{{"name":"c1",{ds},"instances":[{{"flavorRef":"1","type":"query_router"}}]}}}}"#), 400, "badRequest"),
        ] {
            let (c, v) = call(M::POST, &format!("{p}/clusters"), t, Some(&body)).await;
            assert_eq!((c, fault(&v).0), (code, name), "{body}: {v}");
        }
        let (c, v) = call(
            M::POST,
            &format!("{p}/configurations"),
            t,
            Some(r#"{"configuration":{"name":"x","values":{"max_connections":1}}}"#),
        )
        .await;
        assert_eq!((c, fault(&v).0), (400, "badRequest"));
        assert!(
            v["badRequest"]["message"]
                .as_str()
                .unwrap()
                .contains("max_connections"),
            "{v}"
        );
        // Quotas: admin sets 2 instances; a 3-member cluster is over it.
        let (c, _) = call(
            M::PUT,
            &format!("{p}/mgmt/quotas/p1"),
            t,
            Some(r#"{"quotas":{"instances":2}}"#),
        )
        .await;
        assert_eq!(c, 200);
        let body = format!(
            r#"{{"cluster":{{"name":"c1",{ds},"instances":[{{"flavorRef":"1"}},{{"flavorRef":"1"}},{{"flavorRef":"1"}}]}}}}"#
        );
        let (c, v) = call(M::POST, &format!("{p}/clusters"), t, Some(&body)).await;
        assert_eq!((c, fault(&v)), (413, ("overLimit", 413)));
        let (_, v) = call(M::GET, &format!("{p}/mgmt/quotas/p1"), t, None).await;
        assert!(
            v["quotas"]
                .as_array()
                .unwrap()
                .iter()
                .any(|q| q["resource"] == "instances" && q["limit"] == 2),
            "{v}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn catalog_and_pagination_follow_trove() {
        use reqwest::Method as M;
        let (base, _dir) = serve(Auth::NoAuth).await;
        let p = format!("{base}/v1.0/p1");
        let (_, v) = call(M::GET, &format!("{base}/"), None, None).await;
        assert_eq!(v["versions"][0]["id"], "v1.0");
        let (_, v) = call(M::GET, &format!("{p}/datastores/k2hdkc"), None, None).await;
        assert_eq!(
            v["datastore"]["default_version"],
            v["datastore"]["versions"][0]["id"]
        );
        let (_, v) = call(
            M::GET,
            &format!("{p}/datastores/k2hdkc/versions/{VERSION_NAME}"),
            None,
            None,
        )
        .await;
        assert_eq!(v["version"]["id"], VERSION_ID);
        let (c, _) = call(M::GET, &format!("{p}/datastores/redis"), None, None).await;
        assert_eq!(c, 404);
        let (_, v) = call(M::GET, &format!("{p}/flavors/1"), None, None).await;
        assert_eq!(
            (v["flavor"]["id"].clone(), v["flavor"]["str_id"].clone()),
            (json!(1), json!("1"))
        );
        let (_, v) = call(M::GET, &format!("{base}/openapi.json"), None, None).await;
        assert!(
            v["paths"]["/v1.0/{project}/clusters"]["post"].is_object(),
            "{v}"
        );
        for n in 0..3 {
            let (c, v) = call(
                M::POST,
                &format!("{p}/configurations"),
                None,
                Some(&format!(
                    r#"{{"configuration":{{"name":"cfg{n}","values":{{"replicas":2}}}}}}"#
                )),
            )
            .await;
            assert_eq!(c, 200, "{v}");
            assert_eq!(v["configuration"]["datastore_version_id"], VERSION_ID);
        }
        let (_, v) = call(M::GET, &format!("{p}/configurations?limit=2"), None, None).await;
        assert_eq!(v["configurations"].as_array().unwrap().len(), 2);
        let next = v["links"][0]["href"]
            .as_str()
            .expect("a next link")
            .to_string();
        assert_eq!(v["links"][0]["rel"], "next");
        let (_, v) = call(M::GET, &next, None, None).await;
        assert_eq!(v["configurations"].as_array().unwrap().len(), 1);
        assert_eq!(v["links"], json!([]));
        let (c, v) = call(M::GET, &format!("{p}/configurations?limit=x"), None, None).await;
        assert_eq!((c, fault(&v).0), (400, "badRequest"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keystone_tokens_are_scoped_to_the_path_project() {
        use reqwest::Method as M;
        // A Keystone v3 stub: the token "good" is scoped to project pid1 (demo) as member;
        // its user is also in pid2; "admin-tok" has the admin role.
        let ks = axum::Router::new()
            .route("/v3/auth/tokens", get(|h: HeaderMap| async move {
                let t = h.get("x-subject-token").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
                let role = match t.as_str() { "good" => "member", "admin-tok" => "admin", _ => return StatusCode::NOT_FOUND.into_response() };
                axum::Json(json!({"token": {"user": {"name": "alice", "id": "u1"},
                    "project": {"id": "pid1", "name": "demo"}, "roles": [{"name": role}]}})).into_response()
            }))
            .route("/v3/auth/projects", get(|| async {
                axum::Json(json!({"projects": [{"id": "pid1", "name": "demo"}, {"id": "pid2", "name": "other"}]}))
            }));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let ks_url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, ks).await });
        let (base, _dir) = serve(Auth::Keystone(
            k2hdkc_k2hr3::keystone::Keystone::new(&ks_url).unwrap(),
        ))
        .await;
        let ok = |c: u16| c == 200;
        assert!(ok(call(
            M::GET,
            &format!("{base}/v1.0/pid1/instances"),
            Some("good"),
            None
        )
        .await
        .0));
        assert!(ok(call(
            M::GET,
            &format!("{base}/v1.0/demo/instances"),
            Some("good"),
            None
        )
        .await
        .0));
        let (c, v) = call(
            M::GET,
            &format!("{base}/v1.0/pid2/instances"),
            Some("good"),
            None,
        )
        .await;
        assert_eq!(
            (c, fault(&v).0),
            (403, "forbidden"),
            "membership of another project is not its scope"
        );
        let (c, v) = call(
            M::GET,
            &format!("{base}/v1.0/pid1/instances"),
            Some("stolen"),
            None,
        )
        .await;
        assert_eq!((c, fault(&v).0), (401, "unauthorized"));
        let (c, _) = call(
            M::GET,
            &format!("{base}/v1.0/pid1/mgmt/quotas/pid1"),
            Some("good"),
            None,
        )
        .await;
        assert_eq!(c, 403, "mgmt/ needs the admin role");
        let (c, _) = call(
            M::GET,
            &format!("{base}/v1.0/pid1/mgmt/quotas/pid1"),
            Some("admin-tok"),
            None,
        )
        .await;
        assert_eq!(c, 200);
    }

    #[test]
    fn auth_specs_parse() {
        assert_eq!("noauth".parse::<AuthSpec>(), Ok(AuthSpec::NoAuth));
        assert_eq!(
            "token:s3cret-token".parse::<AuthSpec>(),
            Ok(AuthSpec::Token("s3cret-token".into()))
        );
        assert_eq!("keystone".parse::<AuthSpec>(), Ok(AuthSpec::Keystone(None)));
        assert_eq!(
            "keystone:http://127.0.0.1:5000".parse::<AuthSpec>(),
            Ok(AuthSpec::Keystone(Some("http://127.0.0.1:5000".into())))
        );
        assert!("token:short".parse::<AuthSpec>().is_err());
        assert!("basic".parse::<AuthSpec>().is_err());
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("cluster", "c1").is_ok());
        assert!(check_name("cluster", "c1-member_2.x").is_ok());
        for bad in ["", "-x", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_name("cluster", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn member_specs_accept_strings_and_ints() {
        let v = json!([{"flavorRef": "1", "volume": {"size": "1"}},
                       {"flavorRef": 2, "volume": {"size": 2}, "type": ["member"], "name": "n2"}]);
        let s = member_specs(&v, "create").unwrap();
        assert_eq!(
            s,
            vec![(None, "1".into(), 1), (Some("n2".into()), "2".into(), 2)]
        );
        assert!(member_specs(&json!([{"flavorRef": "9"}]), "create").is_err());
        assert!(
            member_specs(
                &json!([{"flavorRef": "1", "volume": {"size": 0}}]),
                "create"
            )
            .is_err()
        );
        assert!(
            member_specs(
                &json!([{"flavorRef": "1", "type": "query_router"}]),
                "create"
            )
            .is_err()
        );
        assert!(member_specs(&json!([]), "create").is_err());
    }
}
