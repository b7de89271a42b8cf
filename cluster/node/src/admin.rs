//! The admin HTTP listener: `/health` (200 while serving), `/status` (JSON: version, uptime,
//! storage and engine counters, listeners), `/metrics` (Prometheus text) and `/archive`
//! (GET: this node's store as a storage archive; POST: import one, newer versions win) for
//! backup and restore by the guest agent.
//!
//! `/archive` moves all data, so it needs `Authorization: Bearer <cluster secret>` when the
//! node has a secret; without one it is served to loopback peers only.

use std::sync::Arc;

use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::server::Shared;

async fn health(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    if s.shutting_down() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else {
        (StatusCode::OK, "ok\n")
    }
}

async fn status(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    let st = s.store.stats();
    axum::Json(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": s.metrics.uptime_secs(),
        "storage": {
            "mode": st.engine.engine,
            "items": st.records,
            "tombstones": st.tombstones,
            "item_bytes": st.record_bytes,
            "queues": st.queues,
            "queue_items": st.queue_items,
            "last_seq": st.last_seq,
            "engine": st.engine,
        },
        "connections": s.metrics.curr_connections.load(std::sync::atomic::Ordering::Relaxed),
        "listen": s.listen_json(),
    }))
}

async fn metrics(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    let mut body = s.metrics.render(&s.store.stats());
    if let Some(c) = &s.cluster {
        body.push_str(&c.render_metrics());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

/// Largest archive `POST /archive` takes in one request.
pub const MAX_IMPORT_BYTES: usize = 4 << 30;

/// Whether the caller may move data: the secret as bearer token, or loopback without a secret.
fn archive_allowed(s: &Shared, peer: SocketAddr, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let secret = match &s.config.cluster.secret_file {
        Some(p) => match std::fs::read(p) {
            Ok(b) => Some(b.trim_ascii().to_vec()),
            Err(e) => {
                return Err(Box::new(
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("reading the cluster secret: {e}\n"),
                    )
                        .into_response(),
                ));
            }
        },
        None => None,
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::as_bytes);
    let ok = match (&secret, given) {
        (Some(want), Some(got)) => {
            want.len() == got.len() && openssl::memcmp::eq(want.as_slice(), got)
        }
        (Some(_), None) => false,
        (None, _) => peer.ip().is_loopback(),
    };
    if ok {
        Ok(())
    } else {
        Err(Box::new(
            (
                StatusCode::FORBIDDEN,
                "archive access needs the cluster secret as bearer token\n",
            )
                .into_response(),
        ))
    }
}

async fn archive_get(
    State(s): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = archive_allowed(&s, peer, &headers) {
        return *r;
    }
    let store = s.store.clone();
    let r = tokio::task::spawn_blocking(move || {
        let mut buf = Vec::new();
        store
            .export(&mut buf, None, &mut |_| {})
            .map(|st| (buf, st))
    })
    .await;
    match r {
        Ok(Ok((buf, st))) => {
            tracing::info!(records = st.records, bytes = st.bytes, "archive exported");
            (
                [
                    (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                    (
                        header::HeaderName::from_static("x-archive-records"),
                        st.records.to_string(),
                    ),
                ],
                buf,
            )
                .into_response()
        }
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("export: {e}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("export: {e}\n")).into_response(),
    }
}

async fn archive_post(
    State(s): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = archive_allowed(&s, peer, &headers) {
        return *r;
    }
    let store = s.store.clone();
    let r = tokio::task::spawn_blocking(move || {
        let mut rd: &[u8] = &body;
        store.import(&mut rd, false, &mut |_| {})
    })
    .await;
    match r {
        Ok(Ok(st)) => {
            tracing::info!(
                records = st.records,
                applied = st.applied,
                "archive imported"
            );
            axum::Json(serde_json::json!(st)).into_response()
        }
        // A damaged or foreign archive is the caller's fault: say what is wrong with it.
        Ok(Err(e)) => (StatusCode::BAD_REQUEST, format!("import: {e}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("import: {e}\n")).into_response(),
    }
}

/// The admin router (serve with `into_make_service_with_connect_info::<SocketAddr>()`).
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route(
            "/archive",
            get(archive_get)
                .post(archive_post)
                .layer(DefaultBodyLimit::max(MAX_IMPORT_BYTES)),
        )
        .with_state(shared)
}
