//! Roles and their hosts: create/update roles (policies, aliases), read them (hosts as
//! K2HR3's space-separated strings), add and remove hosts as a user, register and unregister
//! the caller's own address with a role token or (for removal by instance id) without one,
//! and the notification listeners' delete-by-cuk across roles.

use std::net::IpAddr;

use axum::body::Bytes;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Caller, Peer, Q, St, Svc, body_json, caller, ok, own, own_role, peer_ip, str_list};
use crate::db::{Host, Role};
use crate::error::{R3Error, R3Result, bad};
use crate::pyval;
use crate::yrn::{Kind, Yrn};

fn field(v: &Value, what: &str) -> R3Result<String> {
    let s = match v {
        Value::Null => String::new(),
        Value::String(s) if s == "None" || s == "null" => String::new(),
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return Err(bad(format!("host field {what} must be a string"))),
    };
    if s.len() > 255 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad(format!(
            "host field {what} must be at most 255 characters without spaces"
        )));
    }
    Ok(s)
}

fn port_of(v: &Value) -> R3Result<i64> {
    let p = match v {
        Value::Null => return Ok(0),
        Value::Number(n) => n.as_i64(),
        Value::String(s) => match s.trim() {
            "" | "*" | "None" | "null" => Some(0),
            s => s.parse::<i64>().ok(),
        },
        _ => None,
    };
    p.filter(|p| (0..=65_535).contains(p))
        .ok_or_else(|| bad("port must be a number from 0 (any) to 65535"))
}

/// A host from a JSON object (`host` given by the caller, or `self_ip` for registration).
fn host_from(v: &Value, self_ip: Option<IpAddr>) -> R3Result<Host> {
    if !v.is_object() {
        return Err(bad(
            "a host must be an object {host, port, cuk, extra, tag, inboundip, outboundip}",
        ));
    }
    let host = match self_ip {
        Some(ip) => ip.to_string(),
        None => {
            let h = field(&v["host"], "host")?;
            if h.is_empty() {
                return Err(bad("a host needs a host name or IP address"));
            }
            h
        }
    };
    Ok(Host {
        is_ip: host.parse::<IpAddr>().is_ok(),
        host,
        port: port_of(&v["port"])?,
        cuk: field(&v["cuk"], "cuk")?,
        extra: field(&v["extra"], "extra")?,
        tag: field(&v["tag"], "tag")?,
        inboundip: field(&v["inboundip"], "inboundip")?,
        outboundip: field(&v["outboundip"], "outboundip")?,
    })
}

fn params_obj(q: &Q) -> Value {
    let mut m = serde_json::Map::new();
    for k in [
        "host",
        "port",
        "cuk",
        "extra",
        "tag",
        "inboundip",
        "outboundip",
    ] {
        if let Some(v) = pyval::opt(q.get(k)) {
            m.insert(k.into(), json!(v));
        }
    }
    Value::Object(m)
}

/// K2HR3's host string: `host port cuk extra tag inboundip outboundip`.
pub fn host_string(h: &Host) -> String {
    [
        h.host.as_str(),
        &h.port.to_string(),
        &h.cuk,
        &h.extra,
        &h.tag,
        &h.inboundip,
        &h.outboundip,
    ]
    .join(" ")
    .trim_end()
    .to_string()
}

/// The template view of a host.
pub fn host_json(h: &Host) -> Value {
    let o = |s: &str| if s.is_empty() { Value::Null } else { json!(s) };
    json!({"host": h.host, "port": h.port, "cuk": o(&h.cuk), "extra": o(&h.extra), "tag": o(&h.tag),
           "inboundip": o(&h.inboundip), "outboundip": o(&h.outboundip)})
}

async fn create(
    svc: &Svc,
    who: &Caller,
    name: &str,
    policies: Vec<String>,
    aliases: Vec<String>,
) -> R3Result<Response> {
    let (_, tenant) = who.scoped()?;
    let y = own(name, tenant, Kind::Role)?;
    let policies = policies
        .iter()
        .map(|p| own(p, tenant, Kind::Policy).map(|y| y.to_string()))
        .collect::<R3Result<Vec<_>>>()?;
    let aliases = aliases
        .iter()
        .map(|a| own(a, tenant, Kind::Role).map(|y| y.to_string()))
        .collect::<R3Result<Vec<_>>>()?;
    if aliases.contains(&y.to_string()) {
        return Err(bad("a role cannot be its own alias"));
    }
    svc.db
        .put_role(
            &y.tenant,
            &Role {
                yrn: y.to_string(),
                policies,
                aliases,
            },
        )
        .await?;
    tracing::info!(role = %y, "role created or updated");
    Ok(ok(StatusCode::CREATED, json!({})))
}

/// POST /v1/role `{"role": {"name", "policies", "alias"}}`.
pub async fn create_post(s: St, h: HeaderMap, body: Bytes) -> R3Result<Response> {
    let who = caller(&s, &h).await?;
    let b = body_json(&body)?;
    let r = &b["role"];
    let Some(name) = r["name"].as_str() else {
        return Err(bad("the body needs {\"role\": {\"name\": ...}}"));
    };
    let policies = str_list(&r["policies"], "policies")?;
    let aliases = str_list(&r["alias"], "alias")?;
    create(&s, &who, name, policies, aliases).await
}

/// PUT /v1/role?name=&policies=&alias=.
pub async fn create_put(s: St, h: HeaderMap, q: Q) -> R3Result<Response> {
    let who = caller(&s, &h).await?;
    let name = pyval::opt(q.get("name")).ok_or_else(|| bad("PUT /v1/role needs name="))?;
    create(
        &s,
        &who,
        &name,
        pyval::list(q.get("policies")),
        pyval::list(q.get("alias")),
    )
    .await
}

/// The role with its aliases (and theirs), bounded, without repeats.
pub async fn with_aliases(svc: &Svc, y: &str) -> R3Result<Vec<Role>> {
    let mut out: Vec<Role> = Vec::new();
    let mut todo = vec![y.to_string()];
    while let Some(n) = todo.pop() {
        if out.iter().any(|r| r.yrn == n) || out.len() >= 32 {
            continue;
        }
        if let Some(r) = svc.db.role(&n).await? {
            todo.extend(r.aliases.iter().cloned());
            out.push(r);
        }
    }
    Ok(out)
}

/// GET /v1/role/<role>?expand=: policies, aliases, hosts.
pub async fn get(s: St, h: HeaderMap, Path(role): Path<String>, q: Q) -> R3Result<Response> {
    let who = caller(&s, &h).await?;
    let y = match &who {
        Caller::Role { role: mine, .. } => own_role(&role, mine, "read")?,
        _ => {
            let (_, tenant) = who.scoped()?;
            own(&role, tenant, Kind::Role)?
        }
    };
    let ys = y.to_string();
    let Some(r) = s.db.role(&ys).await? else {
        return Err(R3Error::NotFound(format!("no role {ys}")));
    };
    let roles = if pyval::flag(q.get("expand"), true) {
        with_aliases(&s, &ys).await?
    } else {
        vec![r.clone()]
    };
    let (mut policies, mut names, mut ips) = (Vec::new(), Vec::new(), Vec::new());
    for r in &roles {
        for p in &r.policies {
            if !policies.contains(p) {
                policies.push(p.clone());
            }
        }
        for h in s.db.hosts(&r.yrn).await? {
            let line = host_string(&h);
            let list = if h.is_ip { &mut ips } else { &mut names };
            if !list.contains(&line) {
                list.push(line);
            }
        }
    }
    Ok(ok(
        StatusCode::OK,
        json!({"role": {"policies": policies, "aliases": r.aliases, "hosts": {"hostnames": names, "ips": ips}}}),
    ))
}

/// Add hosts: a user adds what it names; a role token adds the caller's own address.
async fn add_hosts(
    svc: &Svc,
    who: &Caller,
    peer: IpAddr,
    role: &str,
    hosts: Vec<Value>,
    clear_names: bool,
    clear_ips: bool,
) -> R3Result<Response> {
    let (y, self_ip) = match who {
        Caller::Role { role: mine, .. } => (own_role(role, mine, "register into")?, Some(peer)),
        _ => {
            let (_, tenant) = who.scoped()?;
            (own(role, tenant, Kind::Role)?, None)
        }
    };
    let ys = y.to_string();
    if svc.db.role(&ys).await?.is_none() {
        return Err(R3Error::NotFound(format!("no role {ys}")));
    }
    let hosts: Vec<Host> = hosts
        .iter()
        .map(|v| host_from(v, self_ip))
        .collect::<R3Result<_>>()?;
    if hosts.is_empty() {
        return Err(bad("no host given"));
    }
    if clear_names || clear_ips {
        for h in svc.db.hosts(&ys).await? {
            if (h.is_ip && clear_ips) || (!h.is_ip && clear_names) {
                svc.db
                    .delete_hosts(&ys, Some(&h.host), Some(h.port), Some(&h.cuk))
                    .await?;
            }
        }
    }
    for h in &hosts {
        svc.db.put_host(&ys, h).await?;
        tracing::info!(role = %ys, host = %h.host, port = h.port, cuk = %h.cuk, "host added");
    }
    Ok(ok(StatusCode::CREATED, json!({})))
}

/// POST /v1/role/<role> `{"host": {..} | [..], "clear_hostname", "clear_ips"}`.
pub async fn hosts_post(
    s: St,
    p: Peer,
    h: HeaderMap,
    Path(role): Path<String>,
    body: Bytes,
) -> R3Result<Response> {
    let who = caller(&s, &h).await?;
    let b = body_json(&body)?;
    let hosts = match (&who, &b["host"]) {
        (_, Value::Array(a)) => a.clone(),
        (_, v @ Value::Object(_)) => vec![v.clone()],
        (Caller::Role { .. }, Value::Null) => vec![json!({})],
        _ => return Err(bad("the body needs {\"host\": {...}} or a list of hosts")),
    };
    let flag = |k: &str| b[k] == json!(true) || b[k] == json!("true");
    add_hosts(
        &s,
        &who,
        peer_ip(&p.0),
        &role,
        hosts,
        flag("clear_hostname"),
        flag("clear_ips"),
    )
    .await
}

/// PUT /v1/role/<role>?host=&port=&cuk=&extra=&tag=&inboundip=&outboundip=.
pub async fn hosts_put(
    s: St,
    p: Peer,
    h: HeaderMap,
    Path(role): Path<String>,
    q: Q,
) -> R3Result<Response> {
    let who = caller(&s, &h).await?;
    add_hosts(
        &s,
        &who,
        peer_ip(&p.0),
        &role,
        vec![params_obj(&q)],
        pyval::flag(q.get("clear_hostname"), false),
        pyval::flag(q.get("clear_ips"), false),
    )
    .await
}

/// DELETE /v1/role/<role>: the role (user, no host parameters), some of its hosts (user with
/// host/port/cuk), the caller's own address (role token), or the caller's own address with
/// `cuk` (no token: what an instance does when it stops).
pub async fn delete(
    s: St,
    p: Peer,
    h: HeaderMap,
    Path(role): Path<String>,
    q: Q,
) -> R3Result<Response> {
    let who = caller(&s, &h).await?;
    let ip = peer_ip(&p.0).to_string();
    let port = match pyval::opt(q.get("port")) {
        Some(v) => Some(port_of(&json!(v))?),
        None => None,
    };
    let cuk = pyval::opt(q.get("cuk"));
    let (ys, n) = match &who {
        Caller::Role { role: mine, .. } => {
            let ys = own_role(&role, mine, "change")?.to_string();
            let n =
                s.db.delete_hosts(&ys, Some(&ip), port, cuk.as_deref())
                    .await?;
            (ys, n)
        }
        Caller::Anon => {
            let y = Yrn::parse(&role).map_err(|_| {
                R3Error::Unauthorized("without a token, name the role by its full YRN".into())
            })?;
            let Some(c) = cuk else {
                return Err(R3Error::Unauthorized(
                    "without a token, only a host's own entry can be removed, named by cuk".into(),
                ));
            };
            let ys = y.to_string();
            let n = s.db.delete_hosts(&ys, Some(&ip), port, Some(&c)).await?;
            (ys, n)
        }
        Caller::User { .. } => {
            let (_, tenant) = who.scoped()?;
            let ys = own(&role, tenant, Kind::Role)?.to_string();
            let host = pyval::opt(q.get("host"));
            if host.is_none() && port.is_none() && cuk.is_none() {
                if !s.db.delete_role(&ys).await? {
                    return Err(R3Error::NotFound(format!("no role {ys}")));
                }
                tracing::info!(role = %ys, "role deleted");
                return Ok(StatusCode::NO_CONTENT.into_response());
            }
            let n =
                s.db.delete_hosts(&ys, host.as_deref(), port, cuk.as_deref())
                    .await?;
            (ys, n)
        }
    };
    if n == 0 {
        return Err(R3Error::NotFound(format!("no such host in {ys}")));
    }
    tracing::info!(role = %ys, removed = n, "hosts removed");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// DELETE /v1/role?cuk=&host=[ips]: remove an instance from every role (cloud notification
/// listeners); allowed only from the configured addresses.
pub async fn delete_by_cuk(s: St, p: Peer, h: HeaderMap, q: Q) -> R3Result<Response> {
    let tenant = delete_by_cuk_scope(&s, &p, &h).await?;
    let cuk = pyval::opt(q.get("cuk")).ok_or_else(|| bad("DELETE /v1/role needs cuk="))?;
    let ips = pyval::list(q.get("host"));
    let n =
        s.db.delete_hosts_by_cuk(&cuk, &ips, tenant.as_deref())
            .await?;
    tracing::info!(%cuk, removed = n, "hosts removed by cuk");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Who may remove hosts by cuk: a listed source address (a cloud notification listener:
/// every tenant) or a scoped user (its tenant only). `Some(tenant)` limits the removal.
async fn delete_by_cuk_scope(s: &Svc, p: &Peer, h: &HeaderMap) -> R3Result<Option<String>> {
    let ip = super::peer_ip(&p.0);
    match caller(s, h).await? {
        Caller::Anon if s.cfg.delete_by_cuk_from.contains(&ip) => Ok(None),
        Caller::Anon => Err(R3Error::Forbidden(format!(
            "{ip} may not remove hosts by cuk without a token (see delete_by_cuk_from)"
        ))),
        who => Ok(Some(who.scoped()?.1.to_string())),
    }
}

/// HEAD /v1/role?cuk=: checks the caller could remove by cuk; removes nothing.
pub async fn delete_by_cuk_head(s: St, p: Peer, h: HeaderMap, q: Q) -> R3Result<Response> {
    delete_by_cuk_scope(&s, &p, &h).await?;
    pyval::opt(q.get("cuk")).ok_or_else(|| bad("/v1/role needs cuk="))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
