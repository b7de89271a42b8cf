//! `k2hdkc-dbaas serve`: the K2HR3 service, the store, the compute driver, the plane and the
//! Trove API in one process, plus `--quickstart`.
//!
//! Order matters: both listeners are bound first (so a port clash fails before anything is
//! touched), then unfinished tasks resume and dead local hosts are started again; only then
//! are the `listening` lines printed, which scripts and tests wait for.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use tokio::sync::watch;

use crate::api::{Api, Auth, AuthSpec};
use crate::compute::Local;
use crate::config::Config;
use crate::model::{Cluster, DATASTORE, Instance, VERSION_NAME};
use crate::plane::{Plane, PlaneConfig};
use crate::store::{Db, now};

/// Run until `shutdown` resolves.
pub async fn run(
    c: Config,
    quickstart: bool,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let data = c.data_dir();
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let trove_l = tokio::net::TcpListener::bind(c.trove.listen)
        .await
        .with_context(|| format!("binding the Trove API to {}", c.trove.listen))?;
    let r3_l = tokio::net::TcpListener::bind(c.k2hr3.listen)
        .await
        .with_context(|| format!("binding the K2HR3 API to {}", c.k2hr3.listen))?;
    let trove_at = trove_l.local_addr()?;
    let r3_at = r3_l.local_addr()?;
    let mut k = c.k2hr3();
    if k.listen.port() == 0 {
        k.listen = r3_at;
    }
    let svc = k2hdkc_k2hr3::Service::open(k)
        .await
        .context("opening the K2HR3 service")?;
    let r3_url = svc.config().public_url();
    let db = Db::open(&c.database_url())
        .await
        .context("opening the control-plane database")?;
    let keys = k2hdkc_k2hr3::crypto::Keys::load_or_create(&data.join("dbaas.key"))
        .context("the control plane's key")?;
    let bin_dir = match &c.trove.bin_dir {
        Some(b) => b.clone(),
        None => std::env::current_exe()
            .context("finding this binary")?
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default(),
    };
    for b in ["k2hdkc", "k2hdkc-guest-agent"] {
        if c.trove.compute == "local" && !bin_dir.join(b).exists() {
            anyhow::bail!(
                "{} is missing: build the workspace binaries (cargo build --bins) or set --bin-dir",
                bin_dir.join(b).display()
            );
        }
    }
    let compute: Arc<dyn crate::compute::Compute> = match c.trove.compute.as_str() {
        "openstack" => Arc::new(
            crate::openstack::OpenStack::new(c.trove.openstack.clone())
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        ),
        _ => {
            Arc::new(Local::new(data.join("hosts"), bin_dir).with_pool(c.trove.local_hosts.clone()))
        }
    };
    let base = c.trove_url(trove_at);
    let plane = Arc::new(
        Plane::new(
            db,
            keys,
            compute,
            c.trove
                .backup_store
                .open()
                .map_err(|e| anyhow::anyhow!("{e}"))?,
            svc.clone(),
            PlaneConfig {
                conductor_url: base.clone(),
                k2hr3_url: r3_url.clone(),
                backup_dir: data.join("backups"),
                data_dir: data.clone(),
                guest_timeout_secs: c.trove.guest_timeout_secs,
                address_block: c.trove.address_block,
            },
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    let auth = match c
        .trove
        .auth
        .parse::<AuthSpec>()
        .map_err(|e| anyhow::anyhow!(e))?
    {
        AuthSpec::NoAuth => Auth::NoAuth,
        AuthSpec::Token(t) => Auth::Token(t),
        AuthSpec::Keystone(u) => {
            let u = u
                .or_else(|| c.trove.keystone_url.clone())
                .or_else(|| c.k2hr3.keystone_url.clone())
                .context("keystone auth needs a Keystone URL")?;
            Auth::Keystone(
                k2hdkc_k2hr3::keystone::Keystone::new(&u).map_err(|e| anyhow::anyhow!("{e}"))?,
            )
        }
    };
    let api = Api {
        plane: plane.clone(),
        auth,
        base: base.clone(),
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let r3_task = {
        let svc = svc.clone();
        let rx = stop_rx.clone();
        tokio::spawn(async move { svc.serve(r3_l, stopped(rx)).await })
    };
    let trove_task = {
        let app = crate::api::router(api.clone());
        let rx = stop_rx.clone();
        tokio::spawn(async move {
            axum::serve(trove_l, app)
                .with_graceful_shutdown(stopped(rx))
                .await
        })
    };
    let resumed = plane.resume().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let adopted = plane
        .adopt_hosts()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if resumed + adopted > 0 {
        tracing::info!(
            resumed,
            restarted_hosts = adopted,
            "picked up where the last run stopped"
        );
    }
    println!("k2hr3 API listening on http://{r3_at}");
    println!("trove API listening on http://{trove_at}");
    let _ = std::io::stdout().flush();
    tracing::info!(trove = %trove_at, k2hr3 = %r3_at, db = %crate::cli::redact(&c.database_url()), auth = ?api.auth, "control plane started");

    let qs = if quickstart {
        let api = api.clone();
        let project = c.trove.quickstart_project.clone();
        let timeout = Duration::from_secs(c.trove.guest_timeout_secs * 6);
        let token = match &c.trove.auth {
            a if a.starts_with("token:") => Some(a["token:".len()..].to_string()),
            _ => None,
        };
        Some(tokio::spawn(async move {
            match quickstart_cluster(&api, &project, timeout).await {
                Ok(c) => print_usage(&api, &project, &c, token.as_deref(), &r3_url).await,
                Err(e) => eprintln!("quickstart: {e:#}"),
            }
        }))
    } else {
        None
    };

    shutdown.await;
    tracing::info!("stopping (guests keep running; the next start adopts them)");
    if let Some(q) = qs {
        q.abort();
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), trove_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), r3_task).await;
    Ok(())
}

/// The quickstart cluster: made unless the project has one, then waited for.
async fn quickstart_cluster(api: &Api, project: &str, limit: Duration) -> anyhow::Result<Cluster> {
    let e = |e: crate::error::TroveError| anyhow::anyhow!("{e}");
    let existing = api
        .plane
        .db
        .list::<Cluster>(Some(project))
        .await
        .map_err(e)?
        .into_iter()
        .find(|c| !c.hidden);
    let c = match existing {
        Some(c) => {
            eprintln!(
                "quickstart: project {project} already has cluster {} ({})",
                c.name, c.id
            );
            c
        }
        None => {
            eprintln!(
                "quickstart: creating the 3-node cluster \"quickstart\" in project {project}"
            );
            let member = json!({"flavorRef": "1", "volume": {"size": 1}});
            crate::api::create_cluster(
                api,
                project,
                "quickstart",
                &json!({"type": DATASTORE, "version": VERSION_NAME}),
                &json!([member, member, member]),
                &serde_json::Value::Null,
            )
            .await
            .map_err(e)?
        }
    };
    let t0 = Instant::now();
    let mut last = String::new();
    loop {
        let c: Cluster = api
            .plane
            .db
            .get_any(&c.id)
            .await
            .map_err(e)?
            .context("the cluster vanished")?;
        let members = api.plane.members(&c).await.map_err(e)?;
        let n = now();
        let mut ready = 0;
        for i in &members {
            if i.status(n, api.plane.host_up(i).await, false) == "ACTIVE" {
                ready += 1;
            }
        }
        let total = members.len().max(1);
        let bar = "#".repeat(ready * 25 / total);
        let line = format!(
            "\rquickstart [{bar:<25}] {ready}/{total} members ACTIVE, task {}   ",
            c.task
        );
        if line != last {
            eprint!("{line}");
            let _ = std::io::stderr().flush();
            last = line;
        }
        if c.task == "NONE" && ready == total {
            eprintln!();
            return Ok(c);
        }
        if let Some(f) = &c.fault
            && c.task == "NONE"
        {
            eprintln!();
            anyhow::bail!("the cluster failed: {f}");
        }
        if t0.elapsed() > limit {
            eprintln!();
            anyhow::bail!(
                "the cluster is not ACTIVE after {limit:?}; see `k2hdkc-dbaas cluster show {}`",
                c.name
            );
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
}

async fn print_usage(api: &Api, project: &str, c: &Cluster, token: Option<&str>, r3_url: &str) {
    let members: Vec<Instance> = api.plane.members(c).await.unwrap_or_default();
    let ips: Vec<String> = members.iter().map(|i| format!("{}:11211", i.ip)).collect();
    let mut out = String::new();
    out.push_str(&format!("cluster {} ({}) is ACTIVE\n", c.name, c.id));
    out.push_str(&format!("  memcached: {}\n", ips.join(" ")));
    if let Some(first) = members.first() {
        out.push_str(&format!(
            "  try:       bash -c 'exec 3<>/dev/tcp/{}/11211; printf \"set k 0 0 2\\r\\nhi\\r\\nget k\\r\\nquit\\r\\n\" >&3; cat <&3'\n",
            first.ip
        ));
    }
    out.push_str("  openstack CLI (python-openstackclient + python-troveclient):\n");
    match token {
        Some(t) => out.push_str(&format!(
            "    export OS_AUTH_TYPE=admin_token OS_TOKEN={t}\n"
        )),
        None => out.push_str("    export OS_AUTH_TYPE=none\n"),
    }
    out.push_str(&format!(
        "    export OS_ENDPOINT={}/v1.0/{project}\n",
        api.base
    ));
    out.push_str(&format!("    openstack database cluster show {}\n", c.name));
    out.push_str(&format!(
        "  this CLI:  k2hdkc-dbaas cluster --url {} --project {project} show {}\n",
        api.base, c.name
    ));
    out.push_str(&format!(
        "  slave hosts: K2HR3 role {}/slave in tenant {} at {r3_url}\n",
        c.name,
        crate::plane::tenant_of(project)
    ));
    print!("{out}");
    let _ = std::io::stdout().flush();
}
