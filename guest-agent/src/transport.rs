//! How requests reach the guest and casts leave it. Two implementations of each seam:
//!
//! - [`Conductor`] (guest to control plane): [`HttpConductor`] posts to the control plane's
//!   `/guest/v1/<method>` with the per-instance key as bearer token; [`AmqpConductor`] casts
//!   to the `trove-conductor` topic in the oslo envelope with secure RPC, as Trove's guest does.
//! - serving: [`serve_direct`] answers `POST /rpc` (`{"method","args"}`, bearer key) with
//!   `{"result","failure"}`; [`serve_amqp`] consumes `guestagent.<id>` (topic, server and
//!   fanout queues, declared as Trove's rabbit driver does) and replies to `_reply_q`.
//!
//! Invariant: casts are acknowledged before they run (a long `prepare` never blocks the
//! queue); calls are acknowledged after their reply is published, so a crash mid-call makes
//! the broker redeliver rather than lose it.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::{Map, Value, json};

use crate::config::Config;
use crate::guest::Guest;
use crate::oslo;
use crate::secure::Key;

/// A boxed future (the seams are used as trait objects).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Casts from the guest to whoever plays Trove's conductor.
pub trait Conductor: Send + Sync {
    /// Send `method(args)`; no answer is expected.
    fn cast(&self, method: &str, args: Map<String, Value>) -> BoxFuture<'_, anyhow::Result<()>>;
}

/// The control plane over HTTP (local driver).
#[derive(Debug)]
pub struct HttpConductor {
    url: Option<String>,
    key: String,
    http: reqwest::Client,
}

impl HttpConductor {
    /// Casts go to `url` (none: they are dropped, for a guest without a control plane).
    pub fn new(url: Option<String>, key: String) -> HttpConductor {
        HttpConductor {
            url: url.map(|u| u.trim_end_matches('/').to_string()),
            key,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("HTTP client"),
        }
    }
}

impl Conductor for HttpConductor {
    fn cast(&self, method: &str, args: Map<String, Value>) -> BoxFuture<'_, anyhow::Result<()>> {
        let method = method.to_string();
        Box::pin(async move {
            let Some(base) = &self.url else {
                return Ok(());
            };
            let r = self
                .http
                .post(format!("{base}/guest/v1/{method}"))
                .bearer_auth(&self.key)
                .json(&Value::Object(args))
                .send()
                .await?;
            if !r.status().is_success() {
                anyhow::bail!("{method}: {}", r.status());
            }
            Ok(())
        })
    }
}

/// Trove's conductor over RabbitMQ.
pub struct AmqpConductor {
    channel: lapin::Channel,
    exchange: String,
    topic: String,
    instance_id: String,
    key: Option<Key>,
}

impl std::fmt::Debug for AmqpConductor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpConductor")
            .field("topic", &self.topic)
            .finish()
    }
}

impl Conductor for AmqpConductor {
    fn cast(&self, method: &str, args: Map<String, Value>) -> BoxFuture<'_, anyhow::Result<()>> {
        let body = oslo::conductor_cast(method, &args, &self.instance_id, self.key.as_ref());
        Box::pin(async move {
            self.channel
                .basic_publish(
                    self.exchange.as_str().into(),
                    self.topic.as_str().into(),
                    lapin::options::BasicPublishOptions::default(),
                    &body,
                    lapin::BasicProperties::default()
                        .with_content_type("application/json".into())
                        .with_content_encoding("utf-8".into()),
                )
                .await?
                .await?;
            Ok(())
        })
    }
}

/// The agent's command line.
#[derive(Debug, clap::Parser)]
#[command(
    name = "k2hdkc-guest-agent",
    version,
    about = "k2hdkc guest agent: supervises the node, answers Trove guest RPC"
)]
pub struct Args {
    /// Configuration file (see deploy/config/k2hdkc-guest-agent.toml).
    #[arg(long, short = 'c', env = "K2HDKC_GUEST_CONFIG")]
    pub config: PathBuf,
}

/// Load the configuration and run until SIGTERM/SIGINT (then stop the server gracefully).
pub fn run(args: Args) -> anyhow::Result<()> {
    let cfg = Config::load(&args.config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        let key = cfg.rpc_key()?;
        let guest = match cfg.rpc.transport.as_str() {
            "direct" => {
                let key = key.clone().context("rpc_key_file is required")?;
                let c = Arc::new(HttpConductor::new(cfg.rpc.conductor_url.clone(), key));
                let g = Guest::start(cfg.clone(), c).await?;
                let listen = cfg.rpc.listen.context("rpc.listen is required")?;
                let l = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("binding the RPC listener to {listen}"))?;
                println!("guest agent listening on http://{}", l.local_addr()?);
                tokio::spawn(serve_direct(l, g.clone()));
                g
            }
            _ => {
                let url = cfg
                    .rpc
                    .amqp_url
                    .clone()
                    .context("rpc.amqp_url is required")?;
                let conn = connect_amqp(&url).await?;
                let ch = conn.create_channel().await.context("AMQP channel")?;
                let c = Arc::new(AmqpConductor {
                    channel: ch,
                    exchange: cfg.rpc.control_exchange.clone(),
                    topic: cfg.rpc.conductor_topic.clone(),
                    instance_id: cfg.instance_id.clone(),
                    key: key.as_deref().map(Key::new),
                });
                let g = Guest::start(cfg.clone(), c).await?;
                serve_amqp(&conn, g.clone()).await?;
                println!("guest agent consuming guestagent.{}", cfg.instance_id);
                // The connection must outlive the consumers.
                std::mem::forget(conn);
                g
            }
        };
        shutdown_signal().await;
        tracing::info!("stopping");
        guest.shutdown().await;
        Ok(())
    })
}

async fn connect_amqp(url: &str) -> anyhow::Result<lapin::Connection> {
    let mut last = None;
    for _ in 0..30 {
        match lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await {
            Ok(c) => return Ok(c),
            Err(e) => {
                tracing::warn!(error = %e, "RabbitMQ not reachable yet");
                last = Some(e);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    Err(anyhow::anyhow!(
        "connecting to RabbitMQ: {}",
        last.map(|e| e.to_string()).unwrap_or_default()
    ))
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// Serve `POST /rpc` on `l` until the process ends.
pub async fn serve_direct(l: tokio::net::TcpListener, g: Arc<Guest>) {
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::IntoResponse;

    async fn rpc(
        State(g): State<Arc<Guest>>,
        headers: HeaderMap,
        body: axum::body::Bytes,
    ) -> axum::response::Response {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let want = g.key().unwrap_or("");
        if want.is_empty()
            || want.len() != given.len()
            || !openssl::memcmp::eq(want.as_bytes(), given.as_bytes())
        {
            return (StatusCode::UNAUTHORIZED, axum::Json(json!({"failure": {"class": "Unauthorized", "message": "a valid instance key is required"}}))).into_response();
        }
        let req: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return (StatusCode::BAD_REQUEST, axum::Json(json!({"failure": {"class": "ValueError", "message": format!("not JSON: {e}")}}))).into_response();
            }
        };
        let Some(method) = req["method"].as_str().map(str::to_string) else {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"failure": {"class": "ValueError", "message": "no method"}})),
            )
                .into_response();
        };
        let args = req["args"].as_object().cloned().unwrap_or_default();
        if req["cast"] == true {
            let g = g.clone();
            tokio::spawn(async move {
                if let Err(f) = g.dispatch(&method, args).await {
                    tracing::warn!(method, error = %f.message, "cast failed");
                }
            });
            return (
                StatusCode::ACCEPTED,
                axum::Json(json!({"result": null, "failure": null})),
            )
                .into_response();
        }
        match g.dispatch(&method, args).await {
            Ok(v) => axum::Json(json!({"result": v, "failure": null})).into_response(),
            Err(f) => axum::Json(json!({"result": null, "failure": {"class": f.class, "module": f.module, "message": f.message}})).into_response(),
        }
    }
    let app = axum::Router::new()
        .route("/rpc", axum::routing::post(rpc))
        .with_state(g);
    if let Err(e) = axum::serve(l, app).await {
        tracing::error!(error = %e, "RPC listener failed");
    }
}

/// Declare Trove's guest queues on `conn` and consume them.
pub async fn serve_amqp(conn: &lapin::Connection, g: Arc<Guest>) -> anyhow::Result<()> {
    use lapin::options::{
        BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    };
    use lapin::types::{AMQPValue, FieldTable};
    let cfg = g.config().clone();
    let topic = format!("guestagent.{}", cfg.instance_id);
    let server_q = format!("{topic}.{}", cfg.instance_id);
    let fanout_x = format!("{topic}_fanout");
    let fanout_q = format!("{fanout_x}_{}", rand_hex());
    let ch = conn.create_channel().await?;
    ch.exchange_declare(
        cfg.rpc.control_exchange.as_str().into(),
        lapin::ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .context("declaring the control exchange")?;
    ch.exchange_declare(
        fanout_x.as_str().into(),
        lapin::ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await?;
    for q in [&topic, &server_q] {
        ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("declaring {q}"))?;
        ch.queue_bind(
            q.as_str().into(),
            cfg.rpc.control_exchange.as_str().into(),
            q.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    }
    let mut fa = FieldTable::default();
    fa.insert("x-expires".into(), AMQPValue::LongInt(1_800_000));
    ch.queue_declare(fanout_q.as_str().into(), QueueDeclareOptions::default(), fa)
        .await?;
    ch.queue_bind(
        fanout_q.as_str().into(),
        fanout_x.as_str().into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let key = g.key().map(Key::new);
    for q in [&topic, &server_q, &fanout_q] {
        let consumer = ch
            .basic_consume(
                q.as_str().into(),
                format!("k2hdkc-guest-{}", rand_hex()).as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let g = g.clone();
        let ch2 = ch.clone();
        let key = key.clone();
        consumer.set_delegate(move |d: lapin::message::DeliveryResult| {
            let g = g.clone();
            let ch = ch2.clone();
            let key = key.clone();
            async move {
                let Ok(Some(d)) = d else { return };
                handle_delivery(&g, &ch, key.as_ref(), d).await;
            }
        });
    }
    Ok(())
}

async fn handle_delivery(
    g: &Arc<Guest>,
    ch: &lapin::Channel,
    key: Option<&Key>,
    d: lapin::message::Delivery,
) {
    use lapin::options::BasicAckOptions;
    let req = match oslo::decode(&d.data, key) {
        Ok(r) => r,
        Err(e) => {
            // Undecodable: nothing can answer it; drop it rather than redeliver forever.
            tracing::warn!(error = %e, "dropping an RPC message");
            let _ = d.ack(BasicAckOptions::default()).await;
            return;
        }
    };
    match (&req.msg_id, &req.reply_q) {
        (Some(msg_id), Some(reply_q)) => {
            let out = g.dispatch(&req.method, req.args.clone()).await;
            let body = oslo::reply(msg_id, &out, key);
            let r = ch
                .basic_publish(
                    "".into(),
                    reply_q.as_str().into(),
                    lapin::options::BasicPublishOptions::default(),
                    &body,
                    lapin::BasicProperties::default().with_content_type("application/json".into()),
                )
                .await;
            if let Err(e) = r {
                tracing::warn!(error = %e, method = req.method, "reply not sent");
            }
            let _ = d.ack(BasicAckOptions::default()).await;
        }
        _ => {
            let _ = d.ack(BasicAckOptions::default()).await;
            let g = g.clone();
            tokio::spawn(async move {
                if let Err(f) = g.dispatch(&req.method, req.args).await {
                    tracing::warn!(method = req.method, error = %f.message, "cast failed");
                }
            });
        }
    }
}

fn rand_hex() -> String {
    let mut b = [0u8; 16];
    openssl::rand::rand_bytes(&mut b).expect("random");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The address the direct transport of `cfg` answers on.
pub fn direct_addr(cfg: &Config) -> Option<SocketAddr> {
    cfg.rpc.listen
}
