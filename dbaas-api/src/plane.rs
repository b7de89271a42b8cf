//! The orchestration of the control plane: K2HR3 objects per cluster, guest RPC, and the
//! persisted tasks that build, grow, shrink, back up and delete clusters.
//!
//! Every task is a sequence of idempotent steps that re-read their state from the database,
//! so a task resumed after a control-plane restart (or retried) converges instead of doubling
//! anything: K2HR3 writes replace, hosts are added only when absent, a live guest is adopted,
//! `prepare` is ignored by a guest that already has it, leases are per instance.
//!
//! K2HR3 layout per cluster `<r3>` (its name; a standalone instance's id) in the project's
//! tenant: roles `<r3>`, `<r3>/server`, `<r3>/slave`; resources `<r3>/server` and
//! `<r3>/slave` (the CHMPX cluster file as a template over the server role's hosts, so a
//! host added or removed reaches every node and slave); policy `<r3>` (read both); role
//! tokens for the two child roles. The control plane alone adds and removes server hosts, in
//! member order: the first member started the cluster.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k2hdkc_k2hr3::crypto::Keys;
use serde_json::{Map, Value, json};
use tokio::sync::Mutex;

use crate::compute::{BootSpec, Compute, GUEST_RPC_PORT};
use crate::error::{TroveError, TroveResult};
use crate::model::{Backup, Cluster, Configuration, Instance};
use crate::store::{Db, TaskRow, now};

/// What the plane needs to know about its surroundings.
#[derive(Debug, Clone)]
pub struct PlaneConfig {
    /// The control plane's own URL (heartbeats from local guests).
    pub conductor_url: String,
    /// The K2HR3 API as guests reach it.
    pub k2hr3_url: String,
    /// Where backups are kept.
    pub backup_dir: PathBuf,
    /// State directory (the K2HR3 service user's password).
    pub data_dir: PathBuf,
    /// Bound on waits for guests (seconds).
    pub guest_timeout_secs: u64,
    /// Local hosts get addresses 127.<block>.x.y.
    pub address_block: u8,
}

/// The control plane's core.
pub struct Plane {
    pub db: Db,
    pub keys: Keys,
    pub compute: Arc<dyn Compute>,
    pub backups: Arc<dyn crate::backup_store::BackupStore>,
    pub r3svc: k2hdkc_k2hr3::Service,
    pub cfg: PlaneConfig,
    http: reqwest::Client,
    running: Mutex<HashSet<String>>,
    r3_password: String,
    /// Per tenant: the service user's token and when it was issued (a login is a PBKDF2 run
    /// on the service side; tasks make many K2HR3 calls).
    r3_tokens: Mutex<HashMap<String, (String, Instant)>>,
}

impl std::fmt::Debug for Plane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plane")
            .field("compute", &self.compute.name())
            .finish()
    }
}

const R3_USER: &str = "k2hdkc-dbaas";

/// A fresh random id (UUID v4 text).
pub fn new_id() -> String {
    let mut b = [0u8; 16];
    openssl::rand::rand_bytes(&mut b).expect("random");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// A random alphanumeric secret of `n` characters.
pub fn new_secret(n: usize) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut b = vec![0u8; n];
    openssl::rand::rand_bytes(&mut b).expect("random");
    b.iter()
        .map(|x| A[(*x as usize) % A.len()] as char)
        .collect()
}

/// The K2HR3 tenant of a project.
pub fn tenant_of(project: &str) -> String {
    project.to_ascii_lowercase()
}

/// The name a cluster's K2HR3 objects carry.
pub fn r3_name(c: &Cluster) -> String {
    if c.hidden {
        format!("instance-{}", c.id)
    } else {
        c.name.clone()
    }
}

impl Plane {
    /// Make the plane; the K2HR3 service user's password lives in `cfg.data_dir`.
    pub fn new(
        db: Db,
        keys: Keys,
        compute: Arc<dyn Compute>,
        backups: Arc<dyn crate::backup_store::BackupStore>,
        r3svc: k2hdkc_k2hr3::Service,
        cfg: PlaneConfig,
    ) -> TroveResult<Plane> {
        let pw_file = cfg.data_dir.join("k2hr3-service-user");
        let pw = match std::fs::read_to_string(&pw_file) {
            Ok(s) if s.trim().len() >= 16 => s.trim().to_string(),
            _ => {
                let s = new_secret(32);
                write_private(&pw_file, &s)
                    .map_err(|e| TroveError::Internal(format!("{}: {e}", pw_file.display())))?;
                s
            }
        };
        Ok(Plane {
            db,
            keys,
            compute,
            backups,
            r3svc,
            cfg,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(200))
                .build()
                .map_err(|e| TroveError::Internal(format!("HTTP client: {e}")))?,
            running: Mutex::new(HashSet::new()),
            r3_password: pw,
            r3_tokens: Mutex::new(HashMap::new()),
        })
    }

    /// Seal a secret for storage (bound to what it belongs to).
    pub fn seal(&self, plain: &str, aad: &str) -> String {
        self.keys.seal(plain, aad)
    }

    /// Open a sealed secret.
    pub fn open(&self, sealed: &str, aad: &str) -> TroveResult<String> {
        self.keys.open(sealed, aad).ok_or_else(|| {
            TroveError::Internal(format!(
                "a stored secret of {aad} does not open with this key"
            ))
        })
    }

    // ---- K2HR3

    async fn r3(&self, project: &str) -> TroveResult<k2hr3_client::Client> {
        // Reused well inside the service's user-token lifetime (a day by default).
        const REUSE: Duration = Duration::from_secs(1800);
        let tenant = tenant_of(project);
        let anon = k2hr3_client::Client::new(
            &self.cfg.k2hr3_url,
            k2hr3_client::Auth::None,
            Default::default(),
        )?;
        let mut t = self.r3_tokens.lock().await;
        if let Some((tok, at)) = t.get(&tenant)
            && at.elapsed() < REUSE
        {
            return Ok(anon.with_auth(k2hr3_client::Auth::User(tok.clone())));
        }
        if !t.contains_key(&tenant) {
            let mut all: Vec<String> = t.keys().cloned().collect();
            all.push(tenant.clone());
            self.r3svc
                .add_user(R3_USER, &self.r3_password, &all)
                .await
                .map_err(|e| TroveError::Internal(format!("K2HR3 service user: {e}")))?;
        }
        let tok = anon
            .user_token(R3_USER, &self.r3_password, Some(&tenant))
            .await?;
        t.insert(tenant, (tok.clone(), Instant::now()));
        Ok(anon.with_auth(k2hr3_client::Auth::User(tok)))
    }

    /// The cluster file template of a cluster (`mode` SERVER or SLAVE).
    fn template(&self, c: &Cluster, conf: Option<&Configuration>, mode: &str) -> String {
        let v = |k: &str| conf.and_then(|c| c.values.get(k)).cloned();
        let default_n = if c.hidden { 1 } else { 3 };
        let n = v("replicas")
            .and_then(|x| x.as_i64())
            .unwrap_or(default_n)
            .max(1);
        let w = v("write_quorum")
            .and_then(|x| x.as_i64())
            .unwrap_or(if c.hidden { 1 } else { 2 })
            .clamp(1, n);
        let r = v("read_quorum")
            .and_then(|x| x.as_i64())
            .unwrap_or(if c.hidden { 1 } else { 2 })
            .clamp(1, n);
        let automerge = v("automerge")
            .map(|x| x.as_bool().unwrap_or(x.as_i64() == Some(1)))
            .unwrap_or(true);
        let role = format!(
            "yrn:yahoo:::{}:role:{}/server",
            tenant_of(&c.project),
            r3_name(c)
        );
        let slaves = format!(
            "yrn:yahoo:::{}:role:{}/slave",
            tenant_of(&c.project),
            r3_name(c)
        );
        format!(
            "{{{{#!k2hr3template }}}}\n# k2hdkc cluster {id} ({name}), rendered by K2HR3 for each reader\n\
             [GLOBAL]\nFILEVERSION = 1\nGROUP = {id}\nMODE = {mode}\nDELIVERMODE = hash\n\
             REPLICA = {rep}\nWRITE_QUORUM = {w}\nREAD_QUORUM = {r}\nPORT = 8020\nCTLPORT = 8021\n\
             MEMCACHED_PORT = 11211\nAUTOMERGE = {am}\nSSL = no\n\
             {{{{ %s% = %{role}/hosts/ip% }}}}{{{{ foreach %k% in %s% }}}}{{{{ %h% = %s%{{%k%}} }}}}\
             [SVRNODE]\nNAME = {{{{= %h%{{'host'}} }}}}\nCUK = {{{{= %h%{{'cuk'}} }}}}\n{{{{ done }}}}\
             [SLVNODE]\nNAME = 127.0.0.1\nCTLPORT = 8031\n\
             {{{{ %g% = %{slaves}/hosts/ip% }}}}{{{{ foreach %k% in %g% }}}}{{{{ %v% = %g%{{%k%}} }}}}\
             [SLVNODE]\nNAME = {{{{= %v%{{'host'}} }}}}\nCTLPORT = 8031\n{{{{ done }}}}",
            id = c.id,
            name = c.name,
            rep = n - 1,
            am = if automerge { "on" } else { "off" },
        )
    }

    /// Create or refresh every K2HR3 object of `c`; returns the cluster with its role tokens.
    pub async fn ensure_r3(&self, cid: &str) -> TroveResult<Cluster> {
        let c = self.doc::<Cluster>(cid).await?;
        let conf = match &c.configuration_id {
            Some(id) => self.db.get_any::<Configuration>(id).await?,
            None => None,
        };
        let u = self.r3(&c.project).await?;
        let n = r3_name(&c);
        let t = tenant_of(&c.project);
        for (res, mode) in [("server", "SERVER"), ("slave", "SLAVE")] {
            u.create_resource(&k2hr3_client::ResourceSpec {
                name: format!("{n}/{res}"),
                rtype: "string".into(),
                data: json!(self.template(&c, conf.as_ref(), mode)),
                ..Default::default()
            })
            .await?;
        }
        u.create_policy(&k2hr3_client::PolicySpec {
            name: n.clone(),
            effect: "allow".into(),
            action: vec!["yrn:yahoo::::action:read".into()],
            resource: vec![
                format!("yrn:yahoo:::{t}:resource:{n}/server"),
                format!("yrn:yahoo:::{t}:resource:{n}/slave"),
            ],
            alias: vec![],
        })
        .await?;
        u.create_role(&n, &[format!("yrn:yahoo:::{t}:policy:{n}")], &[])
            .await?;
        // Child roles: reading under the parent's policy; hosts kept when they exist.
        for child in ["server", "slave"] {
            let name = format!("{n}/{child}");
            if u.role(&name, false).await.is_err() {
                u.create_role(&name, &[], &[]).await?;
            }
        }
        let mut server_token = c.server_token.clone();
        let mut slave_token = c.slave_token.clone();
        if server_token.is_empty() {
            let tok = u.role_token(&format!("{n}/server"), Some(0)).await?;
            server_token = self.seal(&tok.token, &format!("cluster/{}/server", c.id));
        }
        if slave_token.is_empty() {
            let tok = u.role_token(&format!("{n}/slave"), Some(0)).await?;
            slave_token = self.seal(&tok.token, &format!("cluster/{}/slave", c.id));
        }
        let (c, ()) = self
            .db
            .update::<Cluster, ()>(cid, |c| {
                c.server_token = server_token;
                c.slave_token = slave_token;
                c.updated = now();
                Ok(())
            })
            .await?;
        Ok(c)
    }

    /// Add `inst` to its cluster's server role unless it is there.
    async fn ensure_host(&self, c: &Cluster, inst: &Instance) -> TroveResult<()> {
        let u = self.r3(&c.project).await?;
        let role = format!("{}/server", r3_name(c));
        let r = u.role(&role, false).await?;
        if r.ips.iter().chain(&r.hostnames).any(|h| h.cuk == inst.id) {
            return Ok(());
        }
        u.add_host(
            &role,
            &k2hr3_client::Host {
                host: inst.ip.clone(),
                port: 0,
                cuk: inst.id.clone(),
                extra: "openstack-auto-v1".into(),
                tag: inst.name.clone(),
                ..Default::default()
            },
        )
        .await?;
        Ok(())
    }

    async fn remove_host(&self, c: &Cluster, inst: &Instance) -> TroveResult<()> {
        let u = self.r3(&c.project).await?;
        let role = format!("{}/server", r3_name(c));
        let r = u.role(&role, false).await?;
        for h in r
            .ips
            .iter()
            .chain(&r.hostnames)
            .filter(|h| h.cuk == inst.id)
        {
            u.delete_host(&role, &h.host, Some(h.port), Some(&h.cuk))
                .await?;
        }
        Ok(())
    }

    async fn drop_r3(&self, c: &Cluster) -> TroveResult<()> {
        let u = self.r3(&c.project).await?;
        let n = r3_name(c);
        for role in [format!("{n}/server"), format!("{n}/slave"), n.clone()] {
            ignore_404(u.delete_role(&role).await)?;
        }
        for res in [format!("{n}/server"), format!("{n}/slave")] {
            ignore_404(u.delete_resource(&res).await)?;
        }
        ignore_404(u.delete_policy(&n).await)?;
        Ok(())
    }

    /// The slave role token of a cluster (for slave user-data).
    pub async fn slave_token(&self, c: &Cluster) -> TroveResult<String> {
        let c = if c.slave_token.is_empty() {
            self.ensure_r3(&c.id).await?
        } else {
            c.clone()
        };
        self.open(&c.slave_token, &format!("cluster/{}/slave", c.id))
    }

    // ---- guest RPC (direct transport)

    /// Call `method` on the guest of `inst`; `Err` carries the guest's failure message.
    pub async fn guest_call(
        &self,
        inst: &Instance,
        method: &str,
        args: Value,
        cast: bool,
    ) -> TroveResult<Value> {
        let key = self.open(&inst.rpc_key, &format!("instance/{}", inst.id))?;
        let url = format!("http://{}:{GUEST_RPC_PORT}/rpc", inst.ip);
        let r = self
            .http
            .post(&url)
            .bearer_auth(key)
            .json(&json!({ "method": method, "args": args, "cast": cast }))
            .send()
            .await
            .map_err(|e| TroveError::Unavailable(format!("guest {} ({method}): {e}", inst.id)))?;
        let v: Value = r
            .json()
            .await
            .map_err(|e| TroveError::Unavailable(format!("guest {} ({method}): {e}", inst.id)))?;
        if !v["failure"].is_null() {
            return Err(TroveError::Unprocessable(format!(
                "An error occurred communicating with the guest: {}",
                v["failure"]["message"]
                    .as_str()
                    .unwrap_or("unknown failure")
            )));
        }
        Ok(v["result"].clone())
    }

    /// A heartbeat from a guest (direct conductor). `key` is the caller's bearer token.
    pub async fn heartbeat(&self, key: &str, args: &Value) -> TroveResult<()> {
        let id = args["instance_id"].as_str().unwrap_or_default().to_string();
        let inst = self.authed_instance(&id, key).await?;
        let sent = args["sent"].as_f64().unwrap_or(0.0);
        let status = args["payload"]["service_status"]
            .as_str()
            .unwrap_or("unknown")
            .to_string();
        if sent <= inst.heartbeat_sent {
            // Trove's conductor drops messages not newer than the last one.
            return Ok(());
        }
        self.db
            .update::<Instance, ()>(&id, |i| {
                if sent > i.heartbeat_sent {
                    i.heartbeat_sent = sent;
                    i.heartbeat_at = now();
                    i.service_status = status;
                }
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn authed_instance(&self, id: &str, key: &str) -> TroveResult<Instance> {
        let inst: Instance = self
            .db
            .get_any(id)
            .await?
            .filter(|i: &Instance| !i.deleted)
            .ok_or_else(|| TroveError::NotFound(format!("instance {id}")))?;
        let want = self.open(&inst.rpc_key, &format!("instance/{}", inst.id))?;
        if want.len() != key.len() || !openssl::memcmp::eq(want.as_bytes(), key.as_bytes()) {
            return Err(TroveError::Unauthorized("not this instance's key".into()));
        }
        Ok(inst)
    }

    /// `update_backup` from a guest.
    pub async fn update_backup(&self, key: &str, args: &Value) -> TroveResult<()> {
        let id = args["instance_id"].as_str().unwrap_or_default().to_string();
        let inst = self.authed_instance(&id, key).await?;
        let bid = args["backup_id"].as_str().unwrap_or_default().to_string();
        let state = args["state"].as_str().unwrap_or("FAILED").to_string();
        let size = args["size"].as_f64();
        self.db
            .update::<Backup, ()>(&bid, |b| {
                if b.cluster_id != inst.cluster_id {
                    return Err(TroveError::Forbidden(
                        "not a backup of this instance's cluster".into(),
                    ));
                }
                b.members.insert(inst.id.clone(), state.clone());
                if let Some(s) = size {
                    b.size = Some(b.size.unwrap_or(0.0) + s);
                }
                b.updated = now();
                Ok(())
            })
            .await?;
        Ok(())
    }

    // ---- tasks

    /// Record a task and start it.
    pub async fn start_task(
        self: &Arc<Self>,
        kind: &str,
        target: &str,
        doc: Value,
    ) -> TroveResult<String> {
        let id = new_id();
        self.db.add_task(&id, kind, target, &doc).await?;
        let p = self.clone();
        let row = TaskRow {
            id: id.clone(),
            kind: kind.into(),
            target: target.into(),
            status: "pending".into(),
            error: String::new(),
            doc,
            created: now(),
        };
        tokio::spawn(async move { p.run_task(row).await });
        Ok(id)
    }

    /// Resume every unfinished task (after a restart).
    pub async fn resume(self: &Arc<Self>) -> TroveResult<usize> {
        let open = self.db.open_tasks().await?;
        let n = open.len();
        for t in open {
            tracing::info!(
                task = t.id,
                kind = t.kind,
                target = t.target,
                "resuming task"
            );
            let p = self.clone();
            tokio::spawn(async move { p.run_task(t).await });
        }
        Ok(n)
    }

    async fn run_task(self: Arc<Self>, t: TaskRow) {
        if !self.running.lock().await.insert(t.id.clone()) {
            return;
        }
        let _ = self.db.set_task(&t.id, "running", "", &t.doc).await;
        let r = match t.kind.as_str() {
            "create_cluster" => self.task_create(&t.target).await,
            "grow_cluster" => self.task_grow(&t.target, &t.doc).await,
            "shrink_cluster" => self.task_shrink(&t.target, &t.doc).await,
            "delete_cluster" => self.task_delete(&t.target).await,
            "backup" => self.task_backup(&t.target).await,
            "restart_instance" => self.task_restart(&t.target).await,
            "update_configuration" => self.ensure_r3(&t.target).await.map(drop),
            other => Err(TroveError::Internal(format!("unknown task kind {other}"))),
        };
        match r {
            Ok(()) => {
                tracing::info!(task = t.id, kind = t.kind, target = t.target, "task done");
                let _ = self.db.set_task(&t.id, "done", "", &t.doc).await;
            }
            Err(e) => {
                tracing::error!(task = t.id, kind = t.kind, target = t.target, error = %e, "task failed");
                let _ = self
                    .db
                    .set_task(&t.id, "failed", &e.to_string(), &t.doc)
                    .await;
                self.task_failed(&t.kind, &t.target, &e.to_string()).await;
            }
        }
        self.running.lock().await.remove(&t.id);
    }

    async fn task_failed(&self, kind: &str, target: &str, err: &str) {
        match kind {
            "create_cluster" | "grow_cluster" | "shrink_cluster" | "delete_cluster" => {
                let members = self
                    .db
                    .get_any::<Cluster>(target)
                    .await
                    .ok()
                    .flatten()
                    .map(|c| c.members)
                    .unwrap_or_default();
                for m in members {
                    let _ = self
                        .db
                        .update::<Instance, ()>(&m, |i| {
                            if i.task != "NONE" {
                                i.task = "ERROR".into();
                                i.fault = Some(err.to_string());
                            }
                            Ok(())
                        })
                        .await;
                }
                let _ = self
                    .db
                    .update::<Cluster, ()>(target, |c| {
                        c.task = "NONE".into();
                        c.fault = Some(err.to_string());
                        Ok(())
                    })
                    .await;
            }
            "backup" => {
                let _ = self
                    .db
                    .update::<Backup, ()>(target, |b| {
                        b.status = "FAILED".into();
                        Ok(())
                    })
                    .await;
            }
            "restart_instance" => {
                let _ = self
                    .db
                    .update::<Instance, ()>(target, |i| {
                        i.task = "NONE".into();
                        i.fault = Some(err.to_string());
                        Ok(())
                    })
                    .await;
            }
            _ => {}
        }
    }

    fn guest_wait(&self) -> Duration {
        Duration::from_secs(self.cfg.guest_timeout_secs)
    }

    /// Lease an address, register the host in K2HR3, boot it; returns the instance as stored.
    async fn provision(&self, c: &Cluster, id: &str) -> TroveResult<Instance> {
        let inst = self.doc::<Instance>(id).await?;
        let leases = self.compute.leases_addresses();
        let ip = if !leases || !inst.ip.is_empty() {
            inst.ip.clone()
        } else {
            let last = self.db.last_lease().await?;
            let compute = self.compute.clone();
            let ip =
                self.db
                    .lease(
                        id,
                        match self.compute.address_pool() {
                            Some(pool) => Box::new(pool.into_iter())
                                as Box<dyn Iterator<Item = String> + Send>,
                            None => Box::new(crate::compute::local_candidates(
                                [127, self.cfg.address_block],
                                last.as_deref(),
                            )),
                        },
                        |ip| compute.address_usable(ip),
                    )
                    .await?
                    .ok_or_else(|| {
                        TroveError::OverLimit("no free address is left for a new host".into())
                    })?;
            self.db
                .update::<Instance, ()>(id, |i| {
                    i.ip = ip.clone();
                    Ok(())
                })
                .await?;
            ip
        };
        let inst = Instance {
            ip: ip.clone(),
            ..inst
        };
        // A leased address is known before the host exists: register it first, so the
        // cluster file lists it when the host starts. A cloud's address comes with the host.
        if leases {
            self.ensure_host(c, &inst).await?;
        }
        let spec = BootSpec {
            instance_id: inst.id.clone(),
            ip,
            flavor_id: inst.flavor_id.clone(),
            volume_size: inst.volume_size,
            rpc_key: self.open(&inst.rpc_key, &format!("instance/{}", inst.id))?,
            secret: self.open(&c.secret, &format!("cluster/{}", c.id))?,
            k2hr3_url: self.cfg.k2hr3_url.clone(),
            role_token: self.open(&c.server_token, &format!("cluster/{}/server", c.id))?,
            resource: format!(
                "yrn:yahoo:::{}:resource:{}/server",
                tenant_of(&c.project),
                r3_name(c)
            ),
            conductor_url: self.cfg.conductor_url.clone(),
        };
        let b = self.compute.boot(&spec, inst.server.as_deref()).await?;
        let (inst, ()) = self
            .db
            .update::<Instance, ()>(id, |i| {
                i.server = Some(b.server.clone());
                i.ip = b.ip.clone();
                i.updated = now();
                Ok(())
            })
            .await?;
        if !leases {
            self.ensure_host(c, &inst).await?;
        }
        Ok(inst)
    }

    async fn wait_ping(&self, inst: &Instance) -> TroveResult<()> {
        let t0 = Instant::now();
        let mut last = String::new();
        while t0.elapsed() < self.guest_wait() {
            match self.guest_call(inst, "rpc_ping", json!({}), false).await {
                Ok(_) => return Ok(()),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Err(TroveError::Unavailable(format!(
            "guest {} did not answer within {:?}: {last}",
            inst.id,
            self.guest_wait()
        )))
    }

    /// Wait until every instance of `ids` reports one of `want` (fails on `failed to spawn`).
    async fn wait_status(&self, ids: &[String], want: &[&str]) -> TroveResult<()> {
        let t0 = Instant::now();
        while t0.elapsed() < self.guest_wait() * 2 {
            let mut all = true;
            for id in ids {
                let i = self.doc::<Instance>(id).await?;
                if i.service_status == "failed to spawn" {
                    return Err(TroveError::Internal(format!(
                        "instance {id}: the guest failed to prepare"
                    )));
                }
                if !want.contains(&i.service_status.as_str()) {
                    all = false;
                }
            }
            if all {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Err(TroveError::Unavailable(format!(
            "instances did not reach {want:?} within {:?}",
            self.guest_wait() * 2
        )))
    }

    /// Boot, prepare and complete `ids` (members of `cid`), then mark them ready.
    async fn bring_up(&self, cid: &str, ids: &[String]) -> TroveResult<()> {
        let c = self.ensure_r3(cid).await?;
        // Register every host first: the cluster file must list all of them before the first
        // node starts, so they form one cluster.
        let mut insts = Vec::new();
        for id in ids {
            insts.push(self.provision(&c, id).await?);
        }
        for i in &insts {
            self.wait_ping(i).await?;
        }
        for i in &insts {
            let mut args = json!({
                "packages": [], "databases": [], "memory_mb": 0, "users": [],
                "device_path": null, "mount_point": null, "backup_info": null,
                "config_contents": null, "root_password": null, "overrides": null,
                "cluster_config": if c.hidden { Value::Null } else { json!({"id": c.id, "instance_type": "member"}) },
                "snapshot": null, "modules": [], "ds_version": crate::model::VERSION_NAME,
            });
            if let Some(b) = &i.restore_backup {
                let loc = self.cfg.backup_dir.join(b);
                self.backups.fetch(b, &loc).await?;
                args["backup_info"] = json!({"id": b, "location": loc.display().to_string(), "type": "k2hdkc-archive"});
            }
            self.guest_call(i, "prepare", args, true).await?;
        }
        let ready: &[&str] = if c.hidden {
            &["healthy"]
        } else {
            &["instance ready", "healthy"]
        };
        self.wait_status(ids, ready).await?;
        if !c.hidden {
            for i in &insts {
                self.guest_call(i, "cluster_complete", json!({}), false)
                    .await?;
            }
            self.wait_status(ids, &["healthy"]).await?;
        }
        for id in ids {
            self.db
                .update::<Instance, ()>(id, |i| {
                    i.task = "NONE".into();
                    i.fault = None;
                    i.updated = now();
                    Ok(())
                })
                .await?;
        }
        Ok(())
    }

    /// A stored document that must exist (a task's target).
    async fn doc<T: crate::store::Doc>(&self, id: &str) -> TroveResult<T> {
        self.db
            .get_any(id)
            .await?
            .ok_or_else(|| TroveError::NotFound(format!("{} {id}", T::KIND)))
    }

    /// A cluster's task is over: back to NONE, fault cleared, after `f`.
    async fn cluster_done(
        &self,
        cid: &str,
        f: impl FnOnce(&mut Cluster) + Send,
    ) -> TroveResult<()> {
        self.db
            .update::<Cluster, ()>(cid, |c| {
                f(c);
                c.task = "NONE".into();
                c.fault = None;
                c.updated = now();
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// Stop and remove an instance's host, give back its address, mark it deleted.
    async fn retire(&self, id: &str) -> TroveResult<()> {
        let Some(i) = self.db.get_any::<Instance>(id).await? else {
            return Ok(());
        };
        self.compute.destroy(&i.id, i.server.as_deref()).await?;
        self.db.release(&i.id).await?;
        self.db
            .update::<Instance, ()>(id, |i| {
                i.deleted = true;
                i.updated = now();
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn task_create(&self, cid: &str) -> TroveResult<()> {
        let c = self.doc::<Cluster>(cid).await?;
        self.bring_up(cid, &c.members).await?;
        // Healthy guests are not yet a serving cluster: wait until every member is in
        // service and nothing moves, so ACTIVE means writes succeed.
        self.wait_layout(cid, &c.members, &[]).await?;
        self.cluster_done(cid, |_| {}).await?;
        Ok(())
    }

    /// Ask a live member for the cluster's status (`k2hdkc ctl status --json`).
    async fn cluster_status(&self, c: &Cluster, skip: &[String]) -> TroveResult<Value> {
        let mut last = None;
        for m in c.members.iter().filter(|m| !skip.contains(m)) {
            if let Some(i) = self.db.get_any::<Instance>(m).await? {
                match self
                    .guest_call(&i, "cluster_status", json!({}), false)
                    .await
                {
                    Ok(v) => return Ok(v),
                    Err(e) => last = Some(e),
                }
            }
        }
        Err(last.unwrap_or_else(|| TroveError::Unavailable("no member answers".into())))
    }

    /// Wait until the layout lists exactly `want` (by node name = instance id) and nothing moves.
    async fn wait_layout(&self, cid: &str, want: &[String], skip: &[String]) -> TroveResult<()> {
        let t0 = Instant::now();
        let limit = self.guest_wait() * 5;
        let mut last = Value::Null;
        while t0.elapsed() < limit {
            let c = self.doc::<Cluster>(cid).await?;
            if let Ok(st) = self.cluster_status(&c, skip).await {
                let nodes: HashSet<String> = st["nodes"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter(|n| n["ring"] == "SERVICE IN" && n["action"] == "n/a")
                            .filter_map(|n| n["name"].as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                let want: HashSet<String> = want.iter().cloned().collect();
                let moving = st["moving"].as_bool().unwrap_or(false);
                if nodes == want && !moving {
                    return Ok(());
                }
                last = st;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(TroveError::Unavailable(format!(
            "the cluster layout did not settle within {limit:?}; last status: {last}"
        )))
    }

    async fn task_grow(&self, cid: &str, doc: &Value) -> TroveResult<()> {
        let new: Vec<String> = serde_json::from_value(doc["instances"].clone()).unwrap_or_default();
        self.bring_up(cid, &new).await?;
        let c = self.doc::<Cluster>(cid).await?;
        self.wait_layout(cid, &c.members, &[]).await?;
        self.cluster_done(cid, |_| {}).await?;
        Ok(())
    }

    async fn task_shrink(&self, cid: &str, doc: &Value) -> TroveResult<()> {
        let victims: Vec<String> =
            serde_json::from_value(doc["instances"].clone()).unwrap_or_default();
        let c = self.doc::<Cluster>(cid).await?;
        for v in &victims {
            if let Some(i) = self.db.get_any::<Instance>(v).await? {
                self.remove_host(&c, &i).await?;
            }
        }
        let keep: Vec<String> = c
            .members
            .iter()
            .filter(|m| !victims.contains(m))
            .cloned()
            .collect();
        // The leader detaches the unlisted nodes once their data has moved away.
        self.wait_layout(cid, &keep, &victims).await?;
        for v in &victims {
            self.retire(v).await?;
        }
        self.cluster_done(cid, |c| c.members.retain(|m| !victims.contains(m)))
            .await?;
        Ok(())
    }

    async fn task_delete(&self, cid: &str) -> TroveResult<()> {
        let c = self.doc::<Cluster>(cid).await?;
        for m in &c.members {
            self.retire(m).await?;
        }
        self.drop_r3(&c).await?;
        self.db
            .update::<Cluster, ()>(cid, |c| {
                c.deleted = true;
                c.updated = now();
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn task_backup(&self, bid: &str) -> TroveResult<()> {
        let b = self.doc::<Backup>(bid).await?;
        let c: Cluster = self
            .db
            .get_any(&b.cluster_id)
            .await?
            .ok_or_else(|| TroveError::NotFound(format!("cluster {}", b.cluster_id)))?;
        let dir = self.cfg.backup_dir.join(bid);
        std::fs::create_dir_all(&dir)
            .map_err(|e| TroveError::Internal(format!("{}: {e}", dir.display())))?;
        self.db
            .update::<Backup, ()>(bid, |b| {
                b.status = "BUILDING".into();
                b.location = dir.display().to_string();
                b.updated = now();
                Ok(())
            })
            .await?;
        let b = self.doc::<Backup>(bid).await?;
        // Every member's archive: with N < node count no single node holds every key.
        for m in &c.members {
            if b.members.get(m).is_some_and(|s| s == "COMPLETED") {
                continue;
            }
            let i = self.doc::<Instance>(m).await?;
            self.guest_call(
                &i,
                "create_backup",
                json!({"backup_info": {"id": bid, "name": b.name, "description": b.description,
                        "instance_id": b.instance_id, "location": dir.display().to_string(),
                        "backup_type": "k2hdkc-archive", "checksum": null, "parent": null,
                        "datastore": crate::model::DATASTORE, "datastore_version": crate::model::VERSION_NAME}}),
                true,
            )
            .await?;
        }
        let t0 = Instant::now();
        while t0.elapsed() < self.guest_wait() * 5 {
            let b = self.doc::<Backup>(bid).await?;
            if c.members
                .iter()
                .any(|m| b.members.get(m).is_some_and(|s| s == "FAILED"))
            {
                return Err(TroveError::Internal("a member's archive failed".into()));
            }
            if c.members
                .iter()
                .all(|m| b.members.get(m).is_some_and(|s| s == "COMPLETED"))
            {
                let loc = self.backups.store(bid, &dir).await?;
                self.db
                    .update::<Backup, ()>(bid, |b| {
                        b.status = "COMPLETED".into();
                        b.location = loc;
                        b.updated = now();
                        Ok(())
                    })
                    .await?;
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Err(TroveError::Unavailable(
            "the members' archives did not complete in time".into(),
        ))
    }

    async fn task_restart(&self, id: &str) -> TroveResult<()> {
        let i = self.doc::<Instance>(id).await?;
        self.guest_call(&i, "restart", json!({}), false).await?;
        self.db
            .update::<Instance, ()>(id, |i| {
                i.task = "NONE".into();
                i.updated = now();
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// Whether a backup of instance `id`'s cluster is running.
    pub async fn backing_up(&self, cluster_id: &str) -> TroveResult<bool> {
        Ok(self
            .db
            .tasks_of_kind_running("backup")
            .await?
            .iter()
            .any(|t| t.doc["cluster_id"] == cluster_id))
    }

    /// Make sure every live host runs (after a control-plane or machine restart).
    pub async fn adopt_hosts(self: &Arc<Self>) -> TroveResult<usize> {
        let mut n = 0;
        for c in self.db.list::<Cluster>(None).await? {
            if c.task != "NONE" || c.server_token.is_empty() {
                continue;
            }
            for m in &c.members {
                let Some(i) = self.db.get::<Instance>(None, m).await? else {
                    continue;
                };
                if i.server.as_deref().is_some_and(|s| !s.is_empty()) {
                    let up = match &i.server {
                        Some(s) => self.compute.is_up(s).await,
                        None => false,
                    };
                    if !up {
                        tracing::warn!(instance = i.id, "host is down; starting it again");
                        self.provision(&c, &i.id).await?;
                        n += 1;
                    }
                }
            }
        }
        Ok(n)
    }

    /// The members' guests and K2HR3 entries are gone: for tests and `cluster show`.
    pub async fn members(&self, c: &Cluster) -> TroveResult<Vec<Instance>> {
        let mut v = Vec::new();
        for m in &c.members {
            if let Some(i) = self.db.get_any::<Instance>(m).await? {
                v.push(i);
            }
        }
        Ok(v)
    }

    /// Task rows of a target (newest first).
    pub async fn tasks(&self, target: &str) -> TroveResult<Vec<TaskRow>> {
        self.db.tasks_of(target).await
    }

    /// Whether the host of `i` is up.
    pub async fn host_up(&self, i: &Instance) -> bool {
        match &i.server {
            Some(s) => self.compute.is_up(s).await,
            None => false,
        }
    }

    /// Fields used by `update_configuration`.
    pub fn merge_values(
        base: &Map<String, Value>,
        extra: &Map<String, Value>,
    ) -> Map<String, Value> {
        let mut m = base.clone();
        m.extend(extra.clone());
        m
    }
}

fn ignore_404(r: k2hr3_client::Result<()>) -> TroveResult<()> {
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.status() == Some(404) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Write a 0600 file atomically.
pub fn write_private(p: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d)?;
    }
    let tmp = p.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, p)
}
