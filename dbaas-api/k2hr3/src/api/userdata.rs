//! cloud-init documents for instances that register themselves: `userdata` (a multipart
//! document with a cloud-config part and the registration script; only for a User-Agent that
//! contains "Cloud-Init"; gzip when accepted) and `extdata` (a named, configured template
//! expanded with the role's name, tenant, token and the API address; only for the
//! configured User-Agent). Both take a registerpath, which carries the role and a role token
//! sealed under the service key: a stale or forged one is refused.

use std::collections::HashMap;
use std::io::Write;

use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{St, Svc};
use crate::crypto::hash_token;
use crate::error::{R3Error, R3Result, bad};
use crate::template;

/// The registration script's template (K2HR3 template language): what k2hr3-init.sh does.
pub const INIT_SCRIPT: &str = include_str!("k2hr3-init.sh.templ");

/// Role and token inside a registerpath, checked against the database.
async fn open(svc: &Svc, path: &str) -> R3Result<(String, String)> {
    let refuse = || R3Error::Forbidden("the registerpath is not valid".into());
    let j = svc.keys.open_registerpath(path).ok_or_else(refuse)?;
    let v: Value = serde_json::from_str(&j).map_err(|_| refuse())?;
    let (Some(role), Some(tok)) = (v["role"].as_str(), v["token"].as_str()) else {
        return Err(refuse());
    };
    let t = svc
        .db
        .token(&hash_token(tok))
        .await?
        .filter(|t| t.kind == "R" && t.role == role)
        .ok_or_else(|| {
            R3Error::Forbidden("the registerpath's role token is expired or revoked".into())
        })?;
    Ok((t.role, tok.to_string()))
}

fn vars(svc: &Svc, role: &str, tok: &str) -> HashMap<String, Value> {
    let y = crate::yrn::Yrn::parse(role).ok();
    let mut m = HashMap::new();
    m.insert(
        "K2HR3_ROLE_NAME".into(),
        json!(y.as_ref().map_or(role.to_string(), |y| y.path.clone())),
    );
    m.insert("K2HR3_ROLE_YRN".into(), json!(role));
    m.insert(
        "K2HR3_ROLE_TENANT".into(),
        json!(y.as_ref().map_or(String::new(), |y| y.tenant.clone())),
    );
    m.insert("K2HR3_ROLE_TOKEN".into(), json!(tok));
    m.insert("K2HR3_API_HOST_URI".into(), json!(svc.cfg.public_url()));
    m.insert("K2HR3_ERROR_MSG".into(), json!(""));
    m
}

fn ua(h: &HeaderMap) -> &str {
    h.get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn maybe_gzip(h: &HeaderMap, ctype: &str, body: String) -> Response {
    let gz = h
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    if gz {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        if e.write_all(body.as_bytes()).is_ok()
            && let Ok(b) = e.finish()
        {
            return (
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, ctype.to_string()),
                    (header::CONTENT_ENCODING, "gzip".into()),
                ],
                b,
            )
                .into_response();
        }
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, ctype.to_string())],
        body,
    )
        .into_response()
}

/// The registration script for `role` with `tok`.
pub fn init_script(svc: &Svc, role: &str, tok: &str) -> R3Result<String> {
    let mut v = vars(svc, role, tok);
    template::expand(INIT_SCRIPT, &mut v).map_err(|e| R3Error::Internal(e.to_string()))
}

/// GET /v1/userdata/<registerpath>.
pub async fn userdata(s: St, h: HeaderMap, Path(path): Path<String>) -> R3Result<Response> {
    if !ua(&h).contains("Cloud-Init") {
        return Err(bad(
            "userdata is served to cloud-init only (User-Agent: Cloud-Init)",
        ));
    }
    let (role, tok) = open(&s, &path).await?;
    let script = init_script(&s, &role, &tok)?;
    let b = "==K2HR3USERDATA==";
    // The script also lands in /usr/local/sbin so that shutdown can run `k2hr3-init.sh stop`
    // (unregister); the shell-script part runs it once at first boot.
    let cloud_config = format!(
        "#cloud-config\n# Written by the K2HR3 service for {role}.\nwrite_files:\n  - path: /usr/local/sbin/k2hr3-init.sh\n    permissions: '0700'\n    encoding: b64\n    content: {}\n",
        openssl::base64::encode_block(script.as_bytes())
    );
    let body = format!(
        "Content-Type: multipart/mixed; boundary=\"{b}\"\nMIME-Version: 1.0\n\n--{b}\nContent-Type: text/cloud-config; charset=\"us-ascii\"\nMIME-Version: 1.0\nContent-Transfer-Encoding: 7bit\nContent-Disposition: attachment; filename=\"cloud-config.txt\"\n\n{cloud_config}\n--{b}\nContent-Type: text/x-shellscript; charset=\"us-ascii\"\nMIME-Version: 1.0\nContent-Transfer-Encoding: 7bit\nContent-Disposition: attachment; filename=\"k2hr3-init.sh\"\n\n{script}\n--{b}--\n"
    );
    Ok(maybe_gzip(
        &h,
        &format!("multipart/mixed; boundary=\"{b}\""),
        body,
    ))
}

/// GET /v1/extdata/<name>/<registerpath>.
pub async fn extdata(
    s: St,
    h: HeaderMap,
    Path((name, path)): Path<(String, String)>,
) -> R3Result<Response> {
    let e = s
        .cfg
        .extdata
        .get(&name)
        .ok_or_else(|| R3Error::NotFound(format!("no extdata {name:?}")))?;
    if ua(&h) != e.useragent {
        return Err(bad(format!(
            "extdata {name} is served to User-Agent {:?} only",
            e.useragent
        )));
    }
    let (role, tok) = open(&s, &path).await?;
    let tpl = match &e.template_file {
        Some(f) => std::fs::read_to_string(f)
            .map_err(|err| R3Error::Internal(format!("extdata {name}: {}: {err}", f.display())))?,
        None => INIT_SCRIPT.to_string(),
    };
    let mut v = vars(&s, &role, &tok);
    let body = template::expand(&tpl, &mut v)
        .map_err(|err| R3Error::Internal(format!("extdata {name}: {err}")))?;
    Ok(maybe_gzip(&h, &e.contenttype, body))
}
