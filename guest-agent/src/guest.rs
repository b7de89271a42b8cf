//! The guest itself: its persisted state, the Trove guest API methods it implements, the
//! service status it reports, the loop that keeps the cluster file current from K2HR3, and
//! the heartbeat loop. Transports ([`crate::transport`]) deliver requests to
//! [`Guest::dispatch`] and carry heartbeats out through a [`crate::transport::Conductor`].
//!
//! Invariants: `prepare` runs once per host (a second one is acknowledged and ignored, so a
//! control plane that resumes a task may resend it); the state file is replaced atomically;
//! every method either answers or fails with an oslo-shaped [`Failure`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::{Mutex, watch};

use crate::config::Config;
use crate::oslo::{Failure, sent_now};
use crate::supervisor::{Spec, State, Supervisor};
use crate::transport::Conductor;

/// What survives an agent restart.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Persisted {
    format: u32,
    prepared: bool,
    /// `prepare` named a cluster: report "instance ready" until `cluster_complete`.
    cluster_member: bool,
    completed: bool,
    /// `stop_db` was asked: stay stopped across agent restarts.
    stopped: bool,
    failed: Option<String>,
    overrides: Map<String, Value>,
}

const STATE_FORMAT: u32 = 1;

/// One host's guest.
pub struct Guest {
    cfg: Config,
    key: Option<String>,
    secret: Option<String>,
    sup: Supervisor,
    st: Mutex<Persisted>,
    preparing: std::sync::atomic::AtomicBool,
    conductor: Arc<dyn Conductor>,
    rendered: watch::Receiver<u64>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Guest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guest")
            .field("id", &self.cfg.instance_id)
            .finish()
    }
}

fn conf_path(cfg: &Config) -> PathBuf {
    cfg.data_dir.join("chmpx.ini")
}

fn state_path(cfg: &Config) -> PathBuf {
    cfg.data_dir.join("guest-state.json")
}

fn write_atomic(p: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = p.with_extension("tmp");
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, p)
}

impl Guest {
    /// Open the guest's state and start its background loops (rendering, heartbeats); the
    /// server starts if an earlier `prepare` finished and no `stop_db` is in force.
    pub async fn start(cfg: Config, conductor: Arc<dyn Conductor>) -> anyhow::Result<Arc<Guest>> {
        std::fs::create_dir_all(&cfg.data_dir)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", cfg.data_dir.display()))?;
        let key = cfg.rpc_key()?;
        let secret = match &cfg.secret_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        let st: Persisted = match std::fs::read(state_path(&cfg)) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| anyhow::anyhow!("{}: {e}", state_path(&cfg).display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Persisted {
                format: STATE_FORMAT,
                ..Persisted::default()
            },
            Err(e) => anyhow::bail!("{}: {e}", state_path(&cfg).display()),
        };
        if st.format > STATE_FORMAT {
            anyhow::bail!(
                "{}: state format {} is newer than this agent ({STATE_FORMAT})",
                state_path(&cfg).display(),
                st.format
            );
        }
        let mut args: Vec<String> = vec![
            "server".into(),
            "--chmpx-conf".into(),
            conf_path(&cfg).display().to_string(),
            "--cuk".into(),
            cfg.instance_id.clone(),
            "--storage".into(),
            "file".into(),
            "--data-dir".into(),
            cfg.data_dir.join("node").display().to_string(),
        ];
        if let Some(s) = &cfg.secret_file {
            args.push("--secret-file".into());
            args.push(s.display().to_string());
        }
        args.extend(cfg.server_args.iter().cloned());
        let sup = Supervisor::new(Spec {
            bin: cfg.k2hdkc_bin.clone(),
            args,
            log: cfg.data_dir.join("k2hdkc-server.log"),
        });
        let (rtx, rrx) = watch::channel(0u64);
        tokio::spawn(render_loop(cfg.clone(), rtx));
        let run_now = st.prepared && !st.stopped && st.failed.is_none();
        let g = Arc::new(Guest {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(600))
                .build()
                .map_err(|e| anyhow::anyhow!("HTTP client: {e}"))?,
            cfg,
            key,
            secret,
            sup,
            st: Mutex::new(st),
            preparing: false.into(),
            conductor,
            rendered: rrx,
        });
        if run_now {
            let g2 = g.clone();
            tokio::spawn(async move {
                g2.wait_rendered(Duration::from_secs(120)).await;
                g2.sup.want(true).await;
            });
        }
        tokio::spawn(heartbeat_loop(g.clone()));
        Ok(g)
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The per-instance key.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// Stop the server (agent shutdown): graceful, bounded.
    pub async fn shutdown(&self) {
        self.sup.want(false).await;
    }

    async fn save(&self, st: &Persisted) {
        let b = serde_json::to_vec_pretty(st).expect("state serialises");
        if let Err(e) = write_atomic(&state_path(&self.cfg), &b) {
            tracing::error!(error = %e, "cannot save the guest state");
        }
    }

    async fn wait_rendered(&self, within: Duration) -> bool {
        let mut r = self.rendered.clone();
        let end = tokio::time::Instant::now() + within;
        loop {
            if *r.borrow_and_update() > 0 {
                return true;
            }
            match tokio::time::timeout_at(end, r.changed()).await {
                Ok(Ok(())) => {}
                _ => return false,
            }
        }
    }

    fn admin_url(&self, path: &str) -> String {
        format!(
            "http://{}{path}",
            std::net::SocketAddr::new(self.cfg.ip, self.cfg.ports.admin)
        )
    }

    async fn healthy(&self) -> bool {
        if !matches!(self.sup.state(), State::Running(_)) {
            return false;
        }
        matches!(
            self.http
                .get(self.admin_url("/health"))
                .timeout(Duration::from_secs(2))
                .send()
                .await,
            Ok(r) if r.status().is_success()
        )
    }

    async fn wait_healthy(&self, within: Duration) -> bool {
        let end = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < end {
            if self.healthy().await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    }

    /// The Trove service status description in force.
    pub async fn status(&self) -> &'static str {
        let st = self.st.lock().await.clone();
        if st.failed.is_some() {
            return "failed to spawn";
        }
        if self.preparing.load(std::sync::atomic::Ordering::Relaxed) {
            return "building";
        }
        if !st.prepared {
            return "new";
        }
        if st.stopped || !self.sup.wanted() {
            return "shutdown";
        }
        match self.sup.state() {
            State::Backoff => "crashed",
            State::Stopped => "shutdown",
            State::Running(_) => {
                if !self.healthy().await {
                    "running"
                } else if st.cluster_member && !st.completed {
                    "instance ready"
                } else {
                    "healthy"
                }
            }
        }
    }

    async fn send_heartbeat(&self) {
        let status = self.status().await;
        let mut args = Map::new();
        args.insert("instance_id".into(), self.cfg.instance_id.clone().into());
        args.insert("payload".into(), json!({ "service_status": status }));
        args.insert("sent".into(), json!(sent_now()));
        if let Err(e) = self.conductor.cast("heartbeat", args).await {
            tracing::warn!(error = %e, "heartbeat not sent");
        }
    }

    /// Run one method. `Ok(Value)` is the result (null for methods without one).
    pub async fn dispatch(
        self: &Arc<Self>,
        method: &str,
        args: Map<String, Value>,
    ) -> Result<Value, Failure> {
        tracing::debug!(method, "rpc");
        match method {
            "rpc_ping" => Ok(json!(true)),
            "prepare" => self.prepare(args).await,
            "get_filesystem_stats" => self.fs_stats(),
            "restart" => {
                self.need_prepared().await?;
                {
                    let mut st = self.st.lock().await;
                    st.stopped = false;
                    self.save(&st).await;
                }
                self.sup.restart().await;
                if !self.wait_healthy(Duration::from_secs(120)).await {
                    return Err(Failure::new(
                        "GuestError",
                        "k2hdkc server did not come back after restart",
                    ));
                }
                self.send_heartbeat().await;
                Ok(Value::Null)
            }
            "stop_db" => {
                self.need_prepared().await?;
                {
                    let mut st = self.st.lock().await;
                    st.stopped = true;
                    self.save(&st).await;
                }
                self.sup.want(false).await;
                self.send_heartbeat().await;
                Ok(Value::Null)
            }
            "start_db_with_conf_changes" | "start_db" => {
                self.need_prepared().await?;
                {
                    let mut st = self.st.lock().await;
                    st.stopped = false;
                    self.save(&st).await;
                }
                self.sup.want(true).await;
                if !self.wait_healthy(Duration::from_secs(120)).await {
                    return Err(Failure::new("GuestError", "k2hdkc server did not start"));
                }
                self.send_heartbeat().await;
                Ok(Value::Null)
            }
            "update_overrides" | "apply_overrides" => {
                let mut st = self.st.lock().await;
                if let Some(o) = args.get("overrides").and_then(Value::as_object) {
                    if args.get("remove").and_then(Value::as_bool) == Some(true) {
                        for k in o.keys() {
                            st.overrides.remove(k);
                        }
                    } else {
                        st.overrides.extend(o.clone());
                    }
                }
                self.save(&st).await;
                Ok(Value::Null)
            }
            "reset_configuration" => {
                let mut st = self.st.lock().await;
                st.overrides.clear();
                self.save(&st).await;
                Ok(Value::Null)
            }
            "cluster_complete" => {
                self.need_prepared().await?;
                {
                    let mut st = self.st.lock().await;
                    st.completed = true;
                    self.save(&st).await;
                }
                self.send_heartbeat().await;
                Ok(Value::Null)
            }
            "create_backup" => self.create_backup(args).await,
            "get_hwinfo" => Ok(hwinfo()),
            "get_diagnostics" => Ok(self.diagnostics()),
            "guest_log_list" => Ok(self.logs()),
            "resize_fs" | "mount_volume" | "unmount_volume" => {
                // The local driver's volume is a directory; on real hosts cloud-init mounts it.
                Ok(Value::Null)
            }
            "get_node_ip" => Ok(json!(self.cfg.ip.to_string())),
            "cluster_status" => self.cluster_status().await,
            other => Err(Failure {
                class: "NoSuchMethod".into(),
                module: "oslo_messaging.rpc.dispatcher".into(),
                message: format!("Endpoint does not support RPC method {other}"),
            }),
        }
    }

    async fn need_prepared(&self) -> Result<(), Failure> {
        if self.st.lock().await.prepared {
            Ok(())
        } else {
            Err(Failure::new("GuestError", "the guest is not prepared yet"))
        }
    }

    async fn prepare(self: &Arc<Self>, args: Map<String, Value>) -> Result<Value, Failure> {
        {
            let st = self.st.lock().await;
            if st.prepared || self.preparing.load(std::sync::atomic::Ordering::Relaxed) {
                tracing::info!("prepare again: already prepared or preparing; ignored");
                return Ok(Value::Null);
            }
            self.preparing
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        self.send_heartbeat().await;
        let r = self.do_prepare(&args).await;
        let mut st = self.st.lock().await;
        match &r {
            Ok(()) => {
                st.prepared = true;
                st.failed = None;
            }
            Err(e) => {
                tracing::error!(error = %e.message, "prepare failed");
                st.failed = Some(e.message.clone());
            }
        }
        self.save(&st).await;
        drop(st);
        self.preparing
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self.send_heartbeat().await;
        r.map(|()| Value::Null)
    }

    async fn do_prepare(&self, args: &Map<String, Value>) -> Result<(), Failure> {
        {
            let mut st = self.st.lock().await;
            st.cluster_member = args.get("cluster_config").is_some_and(|c| c.is_object());
            if let Some(o) = args.get("overrides").and_then(Value::as_object) {
                st.overrides = o.clone();
            }
            self.save(&st).await;
        }
        if !self.wait_rendered(Duration::from_secs(120)).await {
            return Err(Failure::new(
                "GuestError",
                "the cluster configuration could not be read from K2HR3 within 120 s",
            ));
        }
        self.sup.want(true).await;
        if !self.wait_healthy(Duration::from_secs(120)).await {
            return Err(Failure::new(
                "GuestError",
                "k2hdkc server did not become healthy within 120 s",
            ));
        }
        if let Some(loc) = args
            .get("backup_info")
            .and_then(|b| b.get("location"))
            .and_then(Value::as_str)
        {
            self.restore(Path::new(loc)).await?;
        }
        Ok(())
    }

    /// Import every member archive of a backup directory (or one archive file).
    async fn restore(&self, loc: &Path) -> Result<(), Failure> {
        let files: Vec<PathBuf> = if loc.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(loc)
                .map_err(|e| Failure::new("GuestError", format!("backup {}: {e}", loc.display())))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "archive"))
                .collect();
            v.sort();
            v
        } else {
            vec![loc.to_path_buf()]
        };
        if files.is_empty() {
            return Err(Failure::new(
                "GuestError",
                format!("backup {}: no archives", loc.display()),
            ));
        }
        for f in files {
            let body = tokio::fs::read(&f)
                .await
                .map_err(|e| Failure::new("GuestError", format!("reading {}: {e}", f.display())))?;
            let mut req = self.http.post(self.admin_url("/archive")).body(body);
            if let Some(s) = &self.secret {
                req = req.bearer_auth(s);
            }
            let r = req.send().await.map_err(|e| {
                Failure::new("GuestError", format!("restoring {}: {e}", f.display()))
            })?;
            let status = r.status();
            let text = r.text().await.unwrap_or_default();
            if !status.is_success() {
                return Err(Failure::new(
                    "GuestError",
                    format!("restoring {}: {status}: {}", f.display(), text.trim()),
                ));
            }
            tracing::info!(file = %f.display(), stats = %text, "restored");
        }
        Ok(())
    }

    async fn create_backup(self: &Arc<Self>, args: Map<String, Value>) -> Result<Value, Failure> {
        let info = args.get("backup_info").cloned().unwrap_or(Value::Null);
        let id = info["id"].as_str().unwrap_or_default().to_string();
        let Some(loc) = info["location"].as_str().map(PathBuf::from) else {
            return Err(Failure::new(
                "GuestError",
                "backup_info.location (a directory on this host) is required",
            ));
        };
        self.need_prepared().await?;
        let g = self.clone();
        // A cast: the outcome travels as update_backup, as Trove's conductor expects.
        tokio::spawn(async move {
            g.backup_state(&id, "BUILDING", None).await;
            let r = g.do_backup(&loc).await;
            match r {
                Ok((size, sum, path)) => {
                    g.backup_state(&id, "COMPLETED", Some((size, sum, path)))
                        .await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "backup failed");
                    g.backup_state(&id, "FAILED", None).await;
                }
            }
        });
        Ok(Value::Null)
    }

    async fn do_backup(&self, dir: &Path) -> anyhow::Result<(f64, String, String)> {
        tokio::fs::create_dir_all(dir).await?;
        let mut req = self.http.get(self.admin_url("/archive"));
        if let Some(s) = &self.secret {
            req = req.bearer_auth(s);
        }
        let r = req.send().await?;
        if !r.status().is_success() {
            anyhow::bail!(
                "{}: {}",
                r.status(),
                r.text().await.unwrap_or_default().trim()
            );
        }
        let body = r.bytes().await?;
        let path = dir.join(format!("{}.archive", self.cfg.instance_id));
        let tmp = path.with_extension("partial");
        tokio::fs::write(&tmp, &body).await?;
        tokio::fs::rename(&tmp, &path).await?;
        let sum = openssl::hash::hash(openssl::hash::MessageDigest::md5(), &body)?
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok((
            body.len() as f64 / (1024.0 * 1024.0 * 1024.0),
            sum,
            path.display().to_string(),
        ))
    }

    async fn backup_state(&self, id: &str, state: &str, done: Option<(f64, String, String)>) {
        let mut args = Map::new();
        args.insert("instance_id".into(), self.cfg.instance_id.clone().into());
        args.insert("backup_id".into(), id.into());
        args.insert("sent".into(), json!(sent_now()));
        args.insert("state".into(), state.into());
        if let Some((size, sum, loc)) = done {
            args.insert("size".into(), json!(size));
            args.insert("checksum".into(), sum.into());
            args.insert("location".into(), loc.into());
            args.insert("success".into(), json!(true));
        } else if state == "FAILED" {
            args.insert("success".into(), json!(false));
        }
        if let Err(e) = self.conductor.cast("update_backup", args).await {
            tracing::warn!(error = %e, "update_backup not sent");
        }
    }

    fn fs_stats(&self) -> Result<Value, Failure> {
        let s = rustix::fs::statvfs(&self.cfg.data_dir).map_err(|e| {
            Failure::new(
                "GuestError",
                format!("statvfs {}: {e}", self.cfg.data_dir.display()),
            )
        })?;
        let bs = s.f_frsize.max(1);
        let gb =
            |blocks: u64| (blocks as f64 * bs as f64 / (1u64 << 30) as f64 * 100.0).round() / 100.0;
        Ok(json!({
            "block_size": bs,
            "total_blocks": s.f_blocks,
            "free_blocks": s.f_bavail,
            "total": gb(s.f_blocks),
            "free": gb(s.f_bavail),
            "used": gb(s.f_blocks.saturating_sub(s.f_bfree)),
            "mgr_extra_info": {},
        }))
    }

    fn diagnostics(&self) -> Value {
        let pid = match self.sup.state() {
            State::Running(p) => p,
            _ => return json!({ "version": env!("CARGO_PKG_VERSION"), "running": false }),
        };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |k: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|r| r.trim().split(' ').next()?.parse().ok())
                .unwrap_or(0)
        };
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "running": true,
            "pid": pid,
            "restarts": self.sup.restarts(),
            "fd_size": field("FDSize:"),
            "vm_size": field("VmSize:"),
            "vm_peak": field("VmPeak:"),
            "vm_rss": field("VmRSS:"),
            "vm_hwm": field("VmHWM:"),
            "threads": field("Threads:"),
        })
    }

    fn logs(&self) -> Value {
        let size = |p: PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        json!([
            { "name": "k2hdkc-server", "type": "SYS", "status": "Ready", "published": 0,
              "pending": size(self.cfg.data_dir.join("k2hdkc-server.log")),
              "container": null, "prefix": null, "metafile": null },
        ])
    }

    async fn cluster_status(&self) -> Result<Value, Failure> {
        let addr = std::net::SocketAddr::new(self.cfg.ip, self.cfg.ports.native);
        let mut c = tokio::process::Command::new(&self.cfg.k2hdkc_bin);
        c.args(["ctl", &addr.to_string(), "status", "--json"]);
        if let Some(s) = &self.cfg.secret_file {
            c.arg("--secret-file").arg(s);
            // The credential is bound to the cluster's name: the GROUP of its cluster file.
            let ini =
                std::fs::read_to_string(self.cfg.data_dir.join("chmpx.ini")).unwrap_or_default();
            if let Some(g) = ini_group(&ini) {
                c.arg("--cluster").arg(g);
            }
        }
        let out = tokio::time::timeout(Duration::from_secs(20), c.output())
            .await
            .map_err(|_| Failure::new("GuestError", "k2hdkc ctl status timed out"))?
            .map_err(|e| Failure::new("GuestError", format!("k2hdkc ctl: {e}")))?;
        if !out.status.success() {
            return Err(Failure::new(
                "GuestError",
                format!(
                    "k2hdkc ctl status: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        serde_json::from_slice(&out.stdout)
            .map_err(|e| Failure::new("GuestError", format!("k2hdkc ctl status output: {e}")))
    }
}

fn hwinfo() -> Value {
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let total = mem
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.trim().split(' ').next()?.parse::<u64>().ok())
        .unwrap_or(0);
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    json!({ "mem_total": total, "num_cpus": cpus })
}

/// Keep `chmpx.ini` equal to the K2HR3 resource as this host reads it; bump `tx` on every
/// write (the server notices the file itself).
async fn render_loop(cfg: Config, tx: watch::Sender<u64>) {
    let path = conf_path(&cfg);
    let mut last: Option<String> = std::fs::read_to_string(&path).ok();
    let mut n = 0u64;
    if last.is_some() {
        // A file from before an agent restart is good until K2HR3 says otherwise.
        n = 1;
        tx.send_replace(n);
    }
    let mut warned = false;
    loop {
        let r = async {
            let token = std::fs::read_to_string(&cfg.k2hr3.role_token_file)
                .map_err(|e| anyhow::anyhow!("{}: {e}", cfg.k2hr3.role_token_file.display()))?;
            let c = k2hr3_client::Client::new(
                &cfg.k2hr3.url,
                k2hr3_client::Auth::Role(token.trim().to_string()),
                k2hr3_client::Options {
                    retries: 1,
                    timeout: Duration::from_secs(5),
                    ..Default::default()
                },
            )?;
            let v = c.read_resource(&cfg.k2hr3.resource, None, None).await?;
            match v {
                Value::String(s) => Ok(s),
                other => anyhow::bail!("resource {} is not a string: {other}", cfg.k2hr3.resource),
            }
        }
        .await;
        match r {
            Ok(text) => {
                warned = false;
                let text = text.replace("__SELF_INSTANCE_ID__", &cfg.instance_id);
                if last.as_deref() != Some(text.as_str()) {
                    match write_atomic(&path, text.as_bytes()) {
                        Ok(()) => {
                            tracing::info!(file = %path.display(), "cluster file updated from K2HR3");
                            last = Some(text);
                        }
                        Err(e) => tracing::error!(error = %e, "cannot write the cluster file"),
                    }
                }
                if last.is_some() && n == 0 {
                    n = 1;
                    tx.send_replace(n);
                }
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(error = %e, "cannot read the cluster file from K2HR3 (retrying)");
                    warned = true;
                }
            }
        }
        tokio::time::sleep(Duration::from_secs_f64(cfg.k2hr3.poll_secs)).await;
    }
}

async fn heartbeat_loop(g: Arc<Guest>) {
    loop {
        let prepared = {
            let st = g.st.lock().await;
            st.prepared || st.failed.is_some()
        };
        if prepared {
            g.send_heartbeat().await;
        }
        tokio::time::sleep(Duration::from_secs_f64(g.cfg.heartbeat_secs)).await;
    }
}

/// The `GROUP` of a CHMPX-style cluster file's `[GLOBAL]` section.
fn ini_group(ini: &str) -> Option<String> {
    let mut global = false;
    for l in ini.lines().map(str::trim) {
        if l.starts_with('[') {
            global = l.eq_ignore_ascii_case("[GLOBAL]");
        } else if global
            && let Some((k, v)) = l.split_once('=')
            && k.trim().eq_ignore_ascii_case("GROUP")
        {
            return Some(v.trim().to_string());
        }
    }
    None
}

#[cfg(test)]
mod group_tests {
    #[test]
    fn the_group_comes_from_global() {
        let ini = "# x\n[GLOBAL]\nFILEVERSION = 1\nGROUP = c-1\n[SVRNODE]\nGROUP = no\n";
        assert_eq!(super::ini_group(ini).as_deref(), Some("c-1"));
        assert_eq!(super::ini_group("[SVRNODE]\nGROUP = no\n"), None);
    }
}
