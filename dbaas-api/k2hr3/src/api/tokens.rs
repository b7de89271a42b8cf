//! User tokens (from a local user's credentials, or scoping an unscoped token to a tenant)
//! and role tokens (issued to a scoped user of the role's tenant, re-issued to a role token
//! of the role, or issued tokenless to a host of the role; listed with their registerpaths;
//! revoked).

use axum::body::Bytes;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Caller, Peer, Q, St, Svc, body_json, caller, ok, own, own_role, peer_ip};
use crate::crypto::{hash_token, random_token, verify_password};
use crate::db::{Token, now};
use crate::error::{R3Error, R3Result, bad};
use crate::pyval;
use crate::yrn::{Kind, Yrn};

/// Longest role token lifetime (K2HR3's registration tokens: ten years).
const MAX_ROLE_TOKEN_SECS: u64 = 315_360_000;

/// `YYYY-MM-DDTHH:MM:SSZ` of unix seconds.
pub fn iso(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

async fn issue_user_token(
    svc: &Svc,
    who: &Caller,
    user: Option<String>,
    password: Option<String>,
    tenant: Option<String>,
) -> R3Result<Response> {
    let user = match (user, password) {
        (Some(u), Some(p)) => {
            let good = match svc.db.user_password(&u).await? {
                Some(h) => verify_password(&p, &h),
                None => {
                    // Same work for unknown users, so timing does not tell them apart.
                    let _ = verify_password(&p, crate::crypto::UNKNOWN_USER_HASH);
                    false
                }
            };
            if !good {
                return Err(R3Error::Unauthorized(
                    "invalid user name or pass phrase".into(),
                ));
            }
            u
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(bad(
                "a user name needs a pass phrase, and a pass phrase a user name",
            ));
        }
        (None, None) => match who {
            Caller::User { user, .. } => user.clone(),
            Caller::Role { .. } => {
                return Err(R3Error::Forbidden(
                    "a role token cannot make user tokens".into(),
                ));
            }
            Caller::Anon => {
                return Err(R3Error::Unauthorized(
                    "give credentials (passwordCredentials) or an unscoped user token".into(),
                ));
            }
        },
    };
    let tenant = tenant.map(|t| t.to_ascii_lowercase());
    if let Some(t) = &tenant {
        let mine = svc.db.tenants_of(&user).await?;
        if !mine.iter().any(|x| x.name == *t) {
            return Err(R3Error::Forbidden(format!(
                "user {user} is not a member of tenant {t}"
            )));
        }
    }
    let tok = random_token();
    let now = now();
    svc.db
        .put_token(&Token {
            hash: hash_token(&tok),
            kind: "U".into(),
            user: user.clone(),
            tenant: tenant.clone().unwrap_or_default(),
            role: String::new(),
            created: now,
            expire: now + svc.cfg.user_token_secs as i64,
            sealed: String::new(),
            info: Value::Null,
        })
        .await?;
    tracing::info!(%user, tenant = ?tenant, "user token issued");
    Ok(ok(
        StatusCode::CREATED,
        json!({"scoped": tenant.is_some(), "token": tok}),
    ))
}

fn text(v: &Value) -> Option<String> {
    v.as_str()
        .map(str::to_string)
        .filter(|s| !s.is_empty() && s != "None")
}

/// POST /v1/user/tokens `{"auth": {"tenantName", "passwordCredentials": {"username",
/// "password"}}}` (k2hr3client puts the real values in `auth.user` / `auth.password`).
pub async fn user_post(s: St, h: HeaderMap, body: Bytes) -> R3Result<Response> {
    let who = super::caller_or_keystone(&s, &h).await?;
    let b = body_json(&body)?;
    let auth = b.get("auth").cloned().unwrap_or(Value::Null);
    if !b.is_null() && !auth.is_object() {
        return Err(bad("the body needs an \"auth\" object"));
    }
    let pc = &auth["passwordCredentials"];
    let user = text(&auth["user"]).or_else(|| text(&pc["username"]));
    let password = text(&auth["password"]).or_else(|| text(&pc["password"]));
    let tenant = text(&auth["tenantName"]).or_else(|| text(&auth["tenantId"]));
    issue_user_token(&s, &who, user, password, tenant).await
}

/// PUT /v1/user/tokens?username=&password=&tenantname= (`user=` too).
pub async fn user_put(s: St, h: HeaderMap, q: Q) -> R3Result<Response> {
    let who = super::caller_or_keystone(&s, &h).await?;
    let user = pyval::opt(q.get("username").or(q.get("user")));
    let password = pyval::opt(q.get("password"));
    let tenant = pyval::opt(q.get("tenantname").or(q.get("tenant")));
    issue_user_token(&s, &who, user, password, tenant).await
}

/// GET (and HEAD) /v1/user/tokens: the token's user and tenants.
pub async fn user_get(s: St, h: HeaderMap) -> R3Result<Response> {
    match caller(&s, &h).await? {
        Caller::User { user, tenant, .. } => {
            let tenants = s.db.tenants_of(&user).await?;
            let list: Vec<Value> = tenants
                .iter()
                .filter(|t| tenant.as_ref().is_none_or(|x| *x == t.name))
                .map(|t| json!({"name": t.name, "display": t.display, "id": t.id, "description": t.description}))
                .collect();
            Ok(ok(
                StatusCode::OK,
                json!({"scoped": tenant.is_some(), "user": user, "tenants": list}),
            ))
        }
        Caller::Role { .. } => Err(R3Error::Unauthorized("that is a role token".into())),
        Caller::Anon => Err(R3Error::Unauthorized("no x-auth-token".into())),
    }
}

/// GET /v1/tenant: the caller's tenants.
pub async fn tenants(s: St, h: HeaderMap, q: Q) -> R3Result<Response> {
    let Caller::User { user, .. } = caller(&s, &h).await? else {
        return Err(R3Error::Unauthorized("this needs a user token".into()));
    };
    let t = s.db.tenants_of(&user).await?;
    let list: Vec<Value> = if pyval::flag(q.get("expand"), false) {
        t.iter()
            .map(|t| json!({"name": t.name, "id": t.id, "display": t.display, "desc": t.description}))
            .collect()
    } else {
        t.iter().map(|t| json!(t.name)).collect()
    };
    Ok(ok(StatusCode::OK, json!({"tenants": list})))
}

/// GET /v1/role/token/<role>?expire=SECS: a new role token and its registerpath.
pub async fn role_token_get(
    s: St,
    p: Peer,
    h: HeaderMap,
    Path(role): Path<String>,
    q: Q,
) -> R3Result<Response> {
    let who = caller(&s, &h).await?;
    let ip = peer_ip(&p.0).to_string();
    let (yrn, user, info) = match &who {
        Caller::User { .. } => {
            let (user, tenant) = who.scoped()?;
            (own(&role, tenant, Kind::Role)?, user.to_string(), json!({}))
        }
        Caller::Role { role: mine, token } => {
            let y = own_role(&role, mine, "get a token of")?;
            // Re-issuing with a role token replaces it.
            s.db.delete_token(&token.hash).await?;
            (y, token.user.clone(), json!({"ip": ip}))
        }
        Caller::Anon => {
            let y = Yrn::parse(&role).map_err(|_| {
                R3Error::Unauthorized("without a token, name the role by its full YRN".into())
            })?;
            let cuk = pyval::opt(q.get("cuk"));
            let port = pyval::opt(q.get("port")).and_then(|p| p.parse::<i64>().ok());
            let member = s.db.hosts(&y.to_string()).await?.iter().any(|h| {
                h.host == ip
                    && cuk.as_ref().is_none_or(|c| *c == h.cuk)
                    && port.is_none_or(|p| h.port == 0 || p == h.port)
            });
            if !member {
                return Err(R3Error::Unauthorized(format!("{ip} is not a host of {y}")));
            }
            (
                y,
                String::new(),
                json!({"ip": ip, "cuk": cuk, "port": port}),
            )
        }
    };
    if s.db.role(&yrn.to_string()).await?.is_none() {
        return Err(R3Error::NotFound(format!("no role {yrn}")));
    }
    let secs = match pyval::opt(q.get("expire")) {
        None => s.cfg.role_token_secs,
        Some(e) => e
            .parse::<u64>()
            .ok()
            .filter(|e| *e <= MAX_ROLE_TOKEN_SECS)
            .ok_or_else(|| {
                bad(format!(
                    "expire must be seconds from 0 (never) to {MAX_ROLE_TOKEN_SECS}"
                ))
            })?,
    };
    let tok = random_token();
    let now = now();
    let role_s = yrn.to_string();
    s.db.put_token(&Token {
        hash: hash_token(&tok),
        kind: "R".into(),
        user,
        tenant: yrn.tenant.clone(),
        role: role_s.clone(),
        created: now,
        expire: if secs == 0 { 0 } else { now + secs as i64 },
        sealed: s.keys.seal(&tok, &role_s),
        info,
    })
    .await?;
    let registerpath = s
        .keys
        .registerpath(&json!({"role": role_s, "token": tok}).to_string());
    tracing::info!(role = %role_s, "role token issued");
    Ok(ok(
        StatusCode::OK,
        json!({"token": tok, "registerpath": registerpath}),
    ))
}

/// HEAD /v1/role/token/<token or role>: validates without issuing anything. 204 when the
/// path is a live role token the caller may see (its tenant's, or the caller's own role
/// token), or a role the caller could get a token of. (k2hr3client sends its role-token
/// deletes as HEAD to this path.)
pub async fn role_token_head(s: St, h: HeaderMap, Path(path): Path<String>) -> R3Result<Response> {
    let who = caller(&s, &h).await?;
    let hash = hash_token(path.strip_prefix("R=").unwrap_or(&path));
    if let Some(t) = s.db.token(&hash).await?.filter(|t| t.kind == "R") {
        let visible = match &who {
            Caller::User {
                tenant: Some(tn), ..
            } => t.tenant == tn.to_ascii_lowercase(),
            Caller::Role { token, .. } => token.hash == t.hash,
            _ => false,
        };
        return if visible {
            Ok(StatusCode::NO_CONTENT.into_response())
        } else {
            Err(R3Error::Forbidden("that role token is not yours".into()))
        };
    }
    let yrn = match &who {
        Caller::Role { role: mine, .. } => own_role(&path, mine, "validate")?,
        _ => {
            let (_, tenant) = who.scoped()?;
            own(&path, tenant, Kind::Role)?
        }
    };
    if s.db.role(&yrn.to_string()).await?.is_none() {
        return Err(R3Error::NotFound(format!("no role or role token {path:?}")));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// GET /v1/role/token/list/<role>?expand=true: the role's live tokens.
pub async fn role_token_list(
    s: St,
    h: HeaderMap,
    Path(role): Path<String>,
    q: Q,
) -> R3Result<Response> {
    let who = caller(&s, &h).await?;
    let (_, tenant) = who.scoped()?;
    let yrn = own(&role, tenant, Kind::Role)?.to_string();
    if s.db.role(&yrn).await?.is_none() {
        return Err(R3Error::NotFound(format!("no role {yrn}")));
    }
    let tokens = s.db.role_tokens(&yrn).await?;
    let expand = pyval::flag(q.get("expand"), true);
    let mut map = serde_json::Map::new();
    let mut list = Vec::new();
    for t in tokens {
        let Some(tok) = s.keys.open(&t.sealed, &yrn) else {
            continue;
        };
        if expand {
            let registerpath = s
                .keys
                .registerpath(&json!({"role": yrn, "token": tok}).to_string());
            map.insert(
                tok,
                json!({
                    "date": iso(t.created),
                    "expire": if t.expire == 0 { Value::Null } else { json!(iso(t.expire)) },
                    "user": t.user,
                    "hostname": t.info.get("hostname").cloned().unwrap_or(Value::Null),
                    "ip": t.info.get("ip").cloned().unwrap_or(Value::Null),
                    "port": t.info.get("port").cloned().unwrap_or(json!(0)),
                    "cuk": t.info.get("cuk").cloned().unwrap_or(Value::Null),
                    "registerpath": registerpath,
                }),
            );
        } else {
            list.push(json!(tok));
        }
    }
    let tokens = if expand {
        Value::Object(map)
    } else {
        json!(list)
    };
    Ok(ok(StatusCode::OK, json!({"tokens": tokens})))
}

/// DELETE /v1/role/token/<token>: revoke a role token of the caller's tenant.
pub async fn role_token_delete(
    s: St,
    h: HeaderMap,
    Path(token): Path<String>,
) -> R3Result<Response> {
    let who = caller(&s, &h).await?;
    let (_, tenant) = who.scoped()?;
    let hash = hash_token(token.strip_prefix("R=").unwrap_or(&token));
    let t =
        s.db.token(&hash)
            .await?
            .filter(|t| t.kind == "R")
            .ok_or_else(|| R3Error::NotFound("no such role token".into()))?;
    if t.tenant != tenant.to_ascii_lowercase() {
        return Err(R3Error::Forbidden(
            "that role token belongs to another tenant".into(),
        ));
    }
    s.db.delete_token(&hash).await?;
    tracing::info!(role = %t.role, "role token revoked");
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    #[test]
    fn iso_dates() {
        assert_eq!(super::iso(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::iso(1_796_428_800), "2026-12-05T00:00:00Z");
        assert_eq!(super::iso(951_782_400 + 86_399), "2000-02-29T23:59:59Z");
    }
}
