//! Policies, resources and the list API, and the access check: a role reads (writes) a
//! resource when one of its policies — its own, its parent roles', or its aliases' — allows
//! `read` (`write`) on the resource or a resource above it, and none denies it. Reading with
//! a role token (or tokenless as a host of the role) expands the resource's template with its
//! keys (a child's keys over its parents') and the role host lists and resources it names.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::roles::{host_json, with_aliases};
use super::{Caller, Peer, Q, St, Svc, body_json, caller, ok, own, peer_ip, str_list};
use crate::db::{Policy, Resource, now};
use crate::error::{R3Error, R3Result, bad};
use crate::pyval;
use crate::template;
use crate::yrn::{Kind, Yrn};

/// The action YRNs.
const READ: &str = "yrn:yahoo::::action:read";
const WRITE: &str = "yrn:yahoo::::action:write";

fn action(a: &str) -> R3Result<String> {
    match a.trim().to_ascii_lowercase().as_str() {
        "read" | READ => Ok(READ.into()),
        "write" | WRITE => Ok(WRITE.into()),
        other => Err(bad(format!("action {other:?} is not read or write"))),
    }
}

// ---- policies

async fn policy_create(svc: &Svc, who: &Caller, p: &Value) -> R3Result<Response> {
    let (_, tenant) = who.scoped()?;
    let name = p["name"]
        .as_str()
        .filter(|s| !s.is_empty() && *s != "None")
        .ok_or_else(|| bad("a policy needs a name"))?;
    let y = own(name, tenant, Kind::Policy)?;
    let effect = p["effect"].as_str().unwrap_or("deny").to_ascii_lowercase();
    if effect != "allow" && effect != "deny" {
        return Err(bad("effect must be allow or deny"));
    }
    let actions = str_list(&p["action"], "action")?
        .iter()
        .map(|a| action(a))
        .collect::<R3Result<Vec<_>>>()?;
    let resources = str_list(&p["resource"], "resource")?
        .iter()
        .map(|r| own(r, tenant, Kind::Resource).map(|y| y.to_string()))
        .collect::<R3Result<Vec<_>>>()?;
    let aliases = str_list(&p["alias"], "alias")?
        .iter()
        .map(|a| own(a, tenant, Kind::Policy).map(|y| y.to_string()))
        .collect::<R3Result<Vec<_>>>()?;
    svc.db
        .put_policy(
            &y.tenant,
            &Policy {
                yrn: y.to_string(),
                effect,
                actions,
                resources,
                aliases,
            },
        )
        .await?;
    tracing::info!(policy = %y, "policy created or updated");
    Ok(ok(StatusCode::CREATED, json!({})))
}

/// POST /v1/policy `{"policy": {"name", "effect", "action", "resource", "condition", "alias"}}`.
pub async fn policy_post(s: St, h: HeaderMap, body: Bytes) -> R3Result<Response> {
    let who = caller(&s, &h).await?;
    let b = body_json(&body)?;
    if !b["policy"].is_object() {
        return Err(bad("the body needs {\"policy\": {...}}"));
    }
    policy_create(&s, &who, &b["policy"]).await
}

/// PUT /v1/policy?name=&effect=&action=&resource=&alias=.
pub async fn policy_put(s: St, h: HeaderMap, q: Q) -> R3Result<Response> {
    let who = caller(&s, &h).await?;
    let mut p = Map::new();
    for k in ["name", "effect", "action", "resource", "alias"] {
        if let Some(v) = pyval::opt(q.get(k)) {
            p.insert(k.into(), json!(v));
        }
    }
    policy_create(&s, &who, &Value::Object(p)).await
}

/// GET /v1/policy/<policy>.
pub async fn policy_get(s: St, h: HeaderMap, Path(name): Path<String>) -> R3Result<Response> {
    let who = caller(&s, &h).await?;
    let (_, tenant) = who.scoped()?;
    let y = own(&name, tenant, Kind::Policy)?.to_string();
    let p =
        s.db.policy(&y)
            .await?
            .ok_or_else(|| R3Error::NotFound(format!("no policy {y}")))?;
    Ok(ok(
        StatusCode::OK,
        json!({"policy": {"name": y, "effect": p.effect, "action": p.actions, "resource": p.resources,
                          "condition": null, "alias": p.aliases}}),
    ))
}

/// DELETE /v1/policy/<policy>.
pub async fn policy_delete(s: St, h: HeaderMap, Path(name): Path<String>) -> R3Result<Response> {
    let who = caller(&s, &h).await?;
    let (_, tenant) = who.scoped()?;
    let y = own(&name, tenant, Kind::Policy)?.to_string();
    if !s.db.delete_policy(&y).await? {
        return Err(R3Error::NotFound(format!("no policy {y}")));
    }
    tracing::info!(policy = %y, "policy deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Whether `role` may do `act` (READ/WRITE) on `res`.
pub async fn allowed(svc: &Svc, role: &Yrn, res: &Yrn, act: &str) -> R3Result<bool> {
    if role.tenant != res.tenant {
        return Ok(false);
    }
    // The role, its parents, and the aliases of each.
    let mut roles = Vec::new();
    let mut r = Some(role.clone());
    while let Some(y) = r {
        for x in with_aliases(svc, &y.to_string()).await? {
            if !roles.iter().any(|o: &crate::db::Role| o.yrn == x.yrn) {
                roles.push(x);
            }
        }
        r = y.parent();
    }
    let mut names: Vec<String> = roles.iter().flat_map(|r| r.policies.clone()).collect();
    let mut seen = Vec::new();
    let (mut allow, mut deny) = (false, false);
    let target = res.to_string();
    while let Some(n) = names.pop() {
        if seen.contains(&n) || seen.len() >= 256 {
            continue;
        }
        seen.push(n.clone());
        let Some(p) = svc.db.policy(&n).await? else {
            continue;
        };
        names.extend(p.aliases.iter().cloned());
        if !p.actions.iter().any(|a| a == act) {
            continue;
        }
        let covers = p
            .resources
            .iter()
            .any(|r| *r == target || target.starts_with(&format!("{r}/")));
        if covers {
            if p.effect == "allow" {
                allow = true;
            } else {
                deny = true;
            }
        }
    }
    Ok(allow && !deny)
}

// ---- resources

fn data_of(rtype: &str, v: &Value) -> R3Result<String> {
    match (rtype, v) {
        ("string" | "object", Value::Null) => Ok(String::new()),
        ("string", Value::String(s)) => Ok(s.clone()),
        ("string", other) => Ok(other.to_string()),
        ("object", Value::String(s)) if s.is_empty() || s == "None" => Ok(String::new()),
        ("object", Value::String(s)) => {
            let v = pyval::literal(s)
                .filter(Value::is_object)
                .ok_or_else(|| bad("data of an object resource must be a JSON object"))?;
            Ok(v.to_string())
        }
        ("object", v @ Value::Object(_)) => Ok(v.to_string()),
        ("object", _) => Err(bad("data of an object resource must be a JSON object")),
        (t, _) => Err(bad(format!("type {t:?} is not string or object"))),
    }
}

fn keys_of(v: &Value) -> R3Result<Map<String, Value>> {
    match v {
        Value::Null => Ok(Map::new()),
        Value::Object(m) => Ok(m.clone()),
        Value::String(s) if s.is_empty() || s == "None" => Ok(Map::new()),
        Value::String(s) => match pyval::literal(s) {
            Some(Value::Object(m)) => Ok(m),
            _ => Err(bad("keys must be an object of names and values")),
        },
        _ => Err(bad("keys must be an object of names and values")),
    }
}

async fn resource_create(
    svc: &Svc,
    who: &Caller,
    path: Option<&str>,
    r: &Value,
) -> R3Result<Response> {
    let name = path
        .map(str::to_string)
        .or_else(|| r["name"].as_str().map(str::to_string))
        .filter(|s| !s.is_empty() && s != "None")
        .ok_or_else(|| bad("a resource needs a name"))?;
    let y = match who {
        Caller::Role { role, .. } => {
            let y = own(&name, &role.tenant, Kind::Resource)?;
            if !allowed(svc, role, &y, WRITE).await? {
                return Err(R3Error::Forbidden(format!("{role} may not write {y}")));
            }
            y
        }
        _ => {
            let (_, tenant) = who.scoped()?;
            own(&name, tenant, Kind::Resource)?
        }
    };
    let rtype = r["type"].as_str().unwrap_or("string").to_ascii_lowercase();
    let data = data_of(&rtype, &r["data"])?;
    if data.len() > 1 << 20 {
        return Err(bad("resource data is limited to 1 MiB"));
    }
    // A template that cannot parse would fail every reader later: refuse it now.
    if rtype == "string" && template::is_template(&data) {
        template::check(&data).map_err(|e| bad(format!("resource {y}: {e}")))?;
    }
    let keys = keys_of(&r["keys"])?;
    let aliases = str_list(&r["alias"], "alias")?
        .iter()
        .map(|a| own(a, &y.tenant, Kind::Resource).map(|y| y.to_string()))
        .collect::<R3Result<Vec<_>>>()?;
    let expire = match &r["expire"] {
        Value::Null => 0,
        v => {
            let secs = v
                .as_i64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .filter(|s| *s >= 0)
                .ok_or_else(|| bad("expire must be seconds (0 = never)"))?;
            if secs == 0 { 0 } else { now() + secs }
        }
    };
    svc.db
        .put_resource(
            &y.tenant,
            &Resource {
                yrn: y.to_string(),
                rtype,
                data,
                keys,
                aliases,
                expire,
            },
        )
        .await?;
    tracing::info!(resource = %y, "resource created or updated");
    Ok(ok(StatusCode::CREATED, json!({})))
}

fn query_resource(q: &Q) -> Value {
    let mut m = Map::new();
    for k in ["name", "type", "data", "keys", "alias", "expire"] {
        if let Some(v) = pyval::opt(q.get(k)) {
            m.insert(k.into(), json!(v));
        }
    }
    Value::Object(m)
}

/// POST /v1/resource `{"resource": {"name", "type", "data", "keys", "alias", "expire"}}`.
pub async fn resource_post(s: St, h: HeaderMap, body: Bytes) -> R3Result<Response> {
    let who = caller(&s, &h).await?;
    let b = body_json(&body)?;
    if !b["resource"].is_object() {
        return Err(bad("the body needs {\"resource\": {...}}"));
    }
    resource_create(&s, &who, None, &b["resource"]).await
}

/// PUT /v1/resource?name=&type=&data=&keys=&alias=.
pub async fn resource_put(s: St, h: HeaderMap, q: Q) -> R3Result<Response> {
    let who = caller(&s, &h).await?;
    resource_create(&s, &who, None, &query_resource(&q)).await
}

/// POST /v1/resource/<path> (a role token with write permission, or a user).
pub async fn resource_post_path(
    s: St,
    h: HeaderMap,
    Path(p): Path<String>,
    body: Bytes,
) -> R3Result<Response> {
    let who = caller(&s, &h).await?;
    let b = body_json(&body)?;
    if !b["resource"].is_object() {
        return Err(bad("the body needs {\"resource\": {...}}"));
    }
    resource_create(&s, &who, Some(&p), &b["resource"]).await
}

/// PUT /v1/resource/<path>?type=&data=&keys=.
pub async fn resource_put_path(
    s: St,
    h: HeaderMap,
    Path(p): Path<String>,
    q: Q,
) -> R3Result<Response> {
    let who = caller(&s, &h).await?;
    resource_create(&s, &who, Some(&p), &query_resource(&q)).await
}

fn data_value(r: &Resource) -> Value {
    if r.rtype == "object" {
        serde_json::from_str(&r.data).unwrap_or(Value::Null)
    } else {
        json!(r.data)
    }
}

/// The resource with what it inherits: data from the nearest resource above that has some
/// (when it has none), keys of the ones above under its own.
async fn effective(svc: &Svc, y: &Yrn) -> R3Result<Option<Resource>> {
    let Some(mut r) = svc.db.resource(&y.to_string()).await? else {
        return Ok(None);
    };
    let mut up = y.parent();
    let mut keys = r.keys.clone();
    while let Some(p) = up {
        if let Some(pr) = svc.db.resource(&p.to_string()).await? {
            if r.data.is_empty() {
                r.data = pr.data.clone();
                r.rtype = pr.rtype.clone();
            }
            for (k, v) in pr.keys {
                keys.entry(k).or_insert(v);
            }
        }
        up = p.parent();
    }
    r.keys = keys;
    Ok(Some(r))
}

/// The template variables of a read of `r` by a reader in `tenant`.
async fn template_vars(svc: &Svc, r: &Resource, tenant: &str) -> R3Result<HashMap<String, Value>> {
    let mut vars: HashMap<String, Value> =
        r.keys.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    for name in template::variables(&r.data) {
        if !name.starts_with("yrn:") || vars.contains_key(&name) {
            continue;
        }
        // `...:role:<r>/hosts/ip|name|all` are host maps; a resource YRN is its data.
        let (base, which) = match ["/hosts/ip", "/hosts/name", "/hosts/all"]
            .iter()
            .find(|s| name.ends_with(**s))
        {
            Some(s) => (&name[..name.len() - s.len()], Some(&s[7..])),
            None => (name.as_str(), None),
        };
        let Ok(y) = Yrn::parse(base) else { continue };
        if y.tenant != tenant {
            // Another tenant's data is never visible; the variable stays null.
            continue;
        }
        let v = match (y.kind, which) {
            (Kind::Role, Some(w)) => {
                let mut m = Map::new();
                for h in svc.db.hosts(&y.to_string()).await? {
                    if (w == "ip" && !h.is_ip) || (w == "name" && h.is_ip) {
                        continue;
                    }
                    m.insert(format!("{},{},{}", h.host, h.port, h.cuk), host_json(&h));
                }
                Value::Object(m)
            }
            (Kind::Resource, None) => match svc.db.resource(&y.to_string()).await? {
                Some(x) => data_value(&x),
                None => Value::Null,
            },
            _ => continue,
        };
        vars.insert(name.clone(), v);
    }
    Ok(vars)
}

/// GET /v1/resource/<path>: a user sees the stored resource; a role token (or a host of
/// `role=` without a token) the template-expanded data, or `type=keys` (`keyname=`).
pub async fn resource_get(
    s: St,
    p: Peer,
    h: HeaderMap,
    Path(path): Path<String>,
    q: Q,
) -> R3Result<Response> {
    let who = caller(&s, &h).await?;
    let reader: Yrn = match &who {
        Caller::User { .. } => {
            let (_, tenant) = who.scoped()?;
            let y = own(&path, tenant, Kind::Resource)?;
            let r =
                s.db.resource(&y.to_string())
                    .await?
                    .ok_or_else(|| R3Error::NotFound(format!("no resource {y}")))?;
            let o = if r.rtype == "object" {
                data_value(&r)
            } else {
                Value::Null
            };
            let st = if r.rtype == "object" {
                Value::Null
            } else {
                json!(r.data)
            };
            return Ok(ok(
                StatusCode::OK,
                json!({"resource": {"string": st, "object": o, "keys": r.keys, "aliases": r.aliases,
                                    "expire": if r.expire == 0 { Value::Null } else { json!(r.expire) }}}),
            ));
        }
        Caller::Role { role, .. } => role.clone(),
        Caller::Anon => {
            let role = pyval::opt(q.get("role")).ok_or_else(|| {
                R3Error::Unauthorized("give a token, or role= (a role YRN) as a host of it".into())
            })?;
            let y = Yrn::parse(&role)?;
            if y.kind != Kind::Role {
                return Err(bad("role= must be a role YRN"));
            }
            let ip = peer_ip(&p.0).to_string();
            let cuk = pyval::opt(q.get("cuk"));
            let member =
                s.db.hosts(&y.to_string())
                    .await?
                    .iter()
                    .any(|h| h.host == ip && cuk.as_ref().is_none_or(|c| *c == h.cuk));
            if !member {
                return Err(R3Error::Unauthorized(format!("{ip} is not a host of {y}")));
            }
            y
        }
    };
    let y = own(&path, &reader.tenant, Kind::Resource)?;
    if !allowed(&s, &reader, &y, READ).await? {
        return Err(R3Error::Forbidden(format!("{reader} may not read {y}")));
    }
    let r = effective(&s, &y)
        .await?
        .ok_or_else(|| R3Error::NotFound(format!("no resource {y}")))?;
    let want = pyval::opt(q.get("type")).unwrap_or_else(|| "anytype".into());
    let out = match want.as_str() {
        "keys" => match pyval::opt(q.get("keyname").or(q.get("keys"))) {
            Some(k) => r
                .keys
                .get(&k)
                .cloned()
                .ok_or_else(|| R3Error::NotFound(format!("{y} has no key {k}")))?,
            None => Value::Object(r.keys.clone()),
        },
        "object" if r.rtype != "object" => {
            return Err(R3Error::NotFound(format!("{y} holds no object")));
        }
        "string" if r.rtype == "object" => {
            return Err(R3Error::NotFound(format!("{y} holds no string")));
        }
        "string" | "object" | "anytype" => {
            if r.rtype == "object" {
                data_value(&r)
            } else if template::is_template(&r.data) {
                let mut vars = template_vars(&s, &r, &reader.tenant).await?;
                let text = template::expand(&r.data, &mut vars)
                    .map_err(|e| bad(format!("resource {y}: {e}")))?;
                json!(text)
            } else {
                json!(r.data)
            }
        }
        other => return Err(bad(format!("type {other:?} is not string, object or keys"))),
    };
    Ok(ok(StatusCode::OK, json!({"resource": out})))
}

/// DELETE /v1/resource/<path>?type=anytype|string|object|keys|aliases&keynames=&aliases=.
pub async fn resource_delete(
    s: St,
    h: HeaderMap,
    Path(path): Path<String>,
    q: Q,
) -> R3Result<Response> {
    let who = caller(&s, &h).await?;
    let y = match &who {
        Caller::Role { role, .. } => {
            let y = own(&path, &role.tenant, Kind::Resource)?;
            if !allowed(&s, role, &y, WRITE).await? {
                return Err(R3Error::Forbidden(format!("{role} may not write {y}")));
            }
            y
        }
        _ => {
            let (_, tenant) = who.scoped()?;
            own(&path, tenant, Kind::Resource)?
        }
    };
    let ys = y.to_string();
    let kind = pyval::opt(q.get("type")).unwrap_or_else(|| "anytype".into());
    if kind == "anytype" && q.get("keynames").is_none() && q.get("aliases").is_none() {
        if !s.db.delete_resource(&ys).await? {
            return Err(R3Error::NotFound(format!("no resource {ys}")));
        }
        tracing::info!(resource = %ys, "resource deleted");
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let mut r =
        s.db.resource(&ys)
            .await?
            .ok_or_else(|| R3Error::NotFound(format!("no resource {ys}")))?;
    match kind.as_str() {
        "string" | "object" => r.data.clear(),
        "keys" | "anytype" | "aliases" => {
            for k in pyval::list(q.get("keynames")) {
                r.keys.remove(&k);
            }
            let gone = pyval::list(q.get("aliases"));
            r.aliases.retain(|a| !gone.contains(a));
        }
        other => {
            return Err(bad(format!(
                "type {other:?} is not anytype, string, object, keys or aliases"
            )));
        }
    }
    s.db.put_resource(&y.tenant, &r).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---- list

fn tree(names: &[String], prefix: &str) -> Value {
    // Children of `prefix` (a YRN ending in ':' or '/').
    let mut kids: Vec<String> = Vec::new();
    for n in names {
        if let Some(rest) = n.strip_prefix(prefix) {
            let head = rest.split('/').next().unwrap_or(rest);
            if !head.is_empty() && !kids.iter().any(|k| k == head) {
                kids.push(head.to_string());
            }
        }
    }
    Value::Array(
        kids.iter()
            .map(|k| json!({"name": k, "children": tree(names, &format!("{prefix}{k}/"))}))
            .collect(),
    )
}

/// GET /v1/list/{role|resource|policy}[/<root>]: the tree of names.
pub async fn list(s: St, h: HeaderMap, Path(what): Path<String>) -> R3Result<Response> {
    let who = caller(&s, &h).await?;
    let (_, tenant) = who.scoped()?;
    let (kind, root) = match what.split_once('/') {
        Some((k, r)) => (k.to_string(), Some(r.trim_matches('/').to_string())),
        None => (what.clone(), None),
    };
    let k = match kind.as_str() {
        "role" => Kind::Role,
        "resource" => Kind::Resource,
        "policy" => Kind::Policy,
        other => {
            return Err(bad(format!(
                "can list role, resource or policy, not {other:?}"
            )));
        }
    };
    let base = format!(
        "yrn:yahoo:::{}:{}:",
        tenant.to_ascii_lowercase(),
        k.as_str()
    );
    let prefix = match &root {
        Some(r) if !r.is_empty() => {
            crate::yrn::check_path(r)?;
            format!("{base}{r}/")
        }
        _ => base.clone(),
    };
    let names =
        s.db.names(k.as_str(), &tenant.to_ascii_lowercase(), &base)
            .await?;
    Ok(ok(
        StatusCode::OK,
        json!({"children": tree(&names, &prefix)}),
    ))
}
