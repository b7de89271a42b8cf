//! The admin HTTP listener: `/health` (200 while serving), `/status` (JSON: version, uptime,
//! storage and engine counters, listeners) and `/metrics` (Prometheus text).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
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

/// The admin router.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(shared)
}
