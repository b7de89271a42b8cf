//! Cluster tools: `ctl` (kumoctl / chmpxlinetool), `stat` (kumostat), `top` (kumotop),
//! `hash` (kumohash) and `dev-cluster` (every daemon on one host).

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand};
use k2hdkc_client::{Client, ClientConfig};
use k2hdkc_layout::{Change, Layout, partition_of};
use k2hdkc_node::cluster::call_client;
use serde_json::{Value as Json, json};

async fn client(addr: SocketAddr, timeout: Duration) -> anyhow::Result<Client> {
    let mut cfg = ClientConfig::new(addr);
    cfg.connections = 1;
    cfg.request_timeout = timeout;
    cfg.tls = TLS.get().cloned().flatten();
    Client::connect(cfg)
        .await
        .with_context(|| format!("cannot reach {addr}"))
}

/// TLS of this command's connections (set once from `--tls-*` or `K2HDKC_TLS_*`).
static TLS: std::sync::OnceLock<Option<k2hdkc_client::TlsConnector>> = std::sync::OnceLock::new();

/// The cluster credential of this command (set once from `--secret-file`).
static TOKEN: std::sync::OnceLock<Option<Vec<u8>>> = std::sync::OnceLock::new();

/// How tools prove they belong to the cluster.
#[derive(Args, Clone)]
pub struct AuthArgs {
    /// File holding the cluster secret (as given to the servers' cluster.secret_file).
    #[arg(long, env = "K2HDKC_SECRET_FILE", global = true)]
    pub secret_file: Option<PathBuf>,
    /// Cluster name (the credential is bound to it).
    #[arg(long = "cluster", default_value = "k2hdkc", global = true)]
    pub cluster_name: String,
    /// Cluster CA (PEM), when the nodes require TLS; with --tls-cert and --tls-key.
    #[arg(long, env = "K2HDKC_TLS_CA", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// This tool's certificate (PEM), signed by the cluster CA.
    #[arg(long, env = "K2HDKC_TLS_CERT", global = true)]
    pub tls_cert: Option<PathBuf>,
    /// This tool's private key (PEM).
    #[arg(long, env = "K2HDKC_TLS_KEY", global = true)]
    pub tls_key: Option<PathBuf>,
}

impl AuthArgs {
    fn install(&self) -> anyhow::Result<()> {
        let cc = k2hdkc_node::config::ClusterConfig {
            secret_file: self.secret_file.clone(),
            cluster: self.cluster_name.clone(),
            ..Default::default()
        };
        let t = cc.token().context("cluster secret")?;
        let _ = TOKEN.set(t);
        let tls = match (&self.tls_ca, &self.tls_cert, &self.tls_key) {
            (Some(ca), Some(cert), Some(key)) => Some(
                k2hdkc_client::TlsFiles {
                    ca: ca.clone(),
                    cert: cert.clone(),
                    key: key.clone(),
                    min_version: None,
                }
                .connector()
                .map_err(|e| anyhow!("TLS: {e}"))?,
            ),
            (None, None, None) => None,
            _ => bail!("--tls-ca, --tls-cert and --tls-key go together"),
        };
        let _ = TLS.set(tls);
        Ok(())
    }
}

async fn call(c: &Client, req: Json, timeout: Duration) -> anyhow::Result<Json> {
    let token = TOKEN.get().and_then(|t| t.as_deref());
    call_client(c, &req, token, timeout)
        .await
        .map_err(|e| anyhow!(e))
}

/// `k2hdkc ctl ADDR COMMAND`.
#[derive(Args)]
pub struct CtlArgs {
    /// Native address of any server node.
    pub addr: SocketAddr,
    /// What to do.
    #[command(subcommand)]
    pub cmd: CtlCmd,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to wait for each answer.
    #[arg(long, default_value_t = 10, global = true)]
    pub timeout: u64,
    /// Credentials.
    #[command(flatten)]
    pub auth: AuthArgs,
}

/// `ctl` commands.
#[derive(Subcommand)]
pub enum CtlCmd {
    /// Nodes, their states (CHMPX style), partitions and data movement.
    Status,
    /// Put every recognised node (or only NAMES) into service; data moves to them.
    Attach {
        /// Node names (default: all recognised ones).
        names: Vec<String>,
        /// Wait until the data movement completes, with a progress bar.
        #[arg(long)]
        wait: bool,
    },
    /// Take a node out of service: its data moves away, then it leaves.
    Detach {
        /// Node name.
        name: String,
        /// Wait until the data movement completes.
        #[arg(long)]
        wait: bool,
    },
    /// Forget a dead node now; the remaining replicas re-create its copies.
    Remove {
        /// Node name.
        name: String,
        /// Wait until the data movement completes.
        #[arg(long)]
        wait: bool,
    },
    /// Replication factor and quorums.
    SetReplicas {
        /// Copies of each key.
        replicas: u8,
        /// Acknowledgements a write waits for (default: a majority).
        #[arg(long)]
        write_quorum: Option<u8>,
        /// Replies a read waits for (default: a majority).
        #[arg(long)]
        read_quorum: Option<u8>,
    },
    /// Capacity (weight) or zone of a node.
    SetNode {
        /// Node name.
        name: String,
        /// Relative capacity.
        #[arg(long)]
        capacity: Option<u32>,
        /// Failure domain.
        #[arg(long)]
        zone: Option<String>,
    },
    /// Finish a data movement now (normally automatic).
    Complete,
    /// The layout as JSON.
    Layout,
    /// Compare every partition's copies across its live owners (digests of versions older
    /// than 5 s); exits with 1 when some differ.
    Verify,
}

fn print_status(s: &Json) {
    println!(
        "cluster {}  layout version {}  replicas {} (effective {})  quorum W={} R={}  partitions {}{}",
        s["cluster"].as_str().unwrap_or("?"),
        s["version"],
        s["replicas"],
        s["effective_replicas"],
        s["write_quorum"],
        s["read_quorum"],
        s["partitions"],
        if s["moving"] == json!(true) {
            format!("  MOVING ({} partitions)", s["moving_partitions"])
        } else {
            String::new()
        }
    );
    println!(
        "{:<12} {:<22} {:<22} {:<6} {:<12} {:<7} {:<8} {:>6} {:>6} {:>9} {:>9}",
        "NAME",
        "ADDR",
        "MEMCACHED",
        "LIVE",
        "RING",
        "ACTION",
        "OPERATE",
        "PARTS",
        "PRIMS",
        "ITEMS",
        "MOVED"
    );
    for n in s["nodes"].as_array().into_iter().flatten() {
        let tr = &n["transfers"];
        let moved = match (tr["done"].as_u64(), tr["total"].as_u64()) {
            (Some(d), Some(t)) if t > 0 => format!("{d}/{t}"),
            _ => "-".into(),
        };
        println!(
            "{:<12} {:<22} {:<22} {:<6} {:<12} {:<7} {:<8} {:>6} {:>6} {:>9} {:>9}",
            n["name"].as_str().unwrap_or("?"),
            n["addr"].as_str().unwrap_or("?"),
            n["memcached"].as_str().unwrap_or("-"),
            n["live"].as_str().unwrap_or("?"),
            n["ring"].as_str().unwrap_or("?"),
            n["action"].as_str().unwrap_or("?"),
            n["operate"].as_str().unwrap_or("?"),
            n["partitions"].to_string(),
            n["primaries"].to_string(),
            n["items"].as_u64().map_or("-".into(), |v| v.to_string()),
            moved
        );
    }
}

/// Wait until the layout no longer moves data, drawing a progress bar.
async fn wait_settled(c: &Client, timeout: Duration, limit: Duration) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    let mut total_seen = 0u64;
    loop {
        let s = call(c, json!({"method": "status"}), timeout).await?;
        if s["moving"] != json!(true) {
            eprintln!(
                "\rdata movement complete (layout version {})          ",
                s["version"]
            );
            return Ok(());
        }
        let (mut done, mut total) = (0u64, 0u64);
        for n in s["nodes"].as_array().into_iter().flatten() {
            done += n["transfers"]["done"].as_u64().unwrap_or(0);
            total += n["transfers"]["total"].as_u64().unwrap_or(0);
        }
        total_seen = total_seen.max(total);
        let pct = (done * 100).checked_div(total_seen).unwrap_or(0).min(100);
        let bar = "#".repeat((pct / 4) as usize);
        eprint!("\rmoving data [{bar:<25}] {pct:>3}% ({done}/{total_seen} partition copies)");
        let _ = std::io::stderr().flush();
        if start.elapsed() > limit {
            eprintln!();
            bail!("data is still moving after {limit:?}; see `k2hdkc ctl ADDR status`");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Run `ctl`.
pub async fn ctl(a: CtlArgs) -> anyhow::Result<()> {
    a.auth.install()?;
    let t = Duration::from_secs(a.timeout.max(1));
    let c = client(a.addr, t).await?;
    let change = |ch: Change| json!({"method": "change", "change": ch});
    let (req, wait) = match &a.cmd {
        CtlCmd::Status => {
            let s = call(&c, json!({"method": "status"}), t).await?;
            if a.json {
                println!("{s}");
            } else {
                print_status(&s);
            }
            return Ok(());
        }
        CtlCmd::Layout => {
            let s = call(&c, json!({"method": "layout"}), t).await?;
            println!("{}", s["layout"]);
            return Ok(());
        }
        CtlCmd::Verify => {
            let s = call(&c, json!({"method": "verify"}), t).await?;
            if s["ok"] != json!(true) {
                bail!("{}", s["error"].as_str().unwrap_or("verify failed"));
            }
            let differ = s["differ"].as_array().cloned().unwrap_or_default();
            if a.json {
                println!("{s}");
            } else {
                println!(
                    "layout version {}: {} partitions compared, {} differ",
                    s["version"],
                    s["compared"],
                    differ.len()
                );
                for d in &differ {
                    println!("  partition {} owners {}", d["partition"], d["owners"]);
                }
                for k in s["skipped"].as_array().into_iter().flatten() {
                    println!("  skipped {}: {}", k["node"], k["error"]);
                }
            }
            if !differ.is_empty() {
                std::process::exit(1);
            }
            return Ok(());
        }
        CtlCmd::Attach { names, wait } => (
            change(Change::Attach {
                names: names.clone(),
            }),
            *wait,
        ),
        CtlCmd::Detach { name, wait } => (change(Change::Detach { name: name.clone() }), *wait),
        CtlCmd::Remove { name, wait } => (change(Change::Remove { name: name.clone() }), *wait),
        CtlCmd::SetReplicas {
            replicas,
            write_quorum,
            read_quorum,
        } => {
            let maj = replicas / 2 + 1;
            (
                change(Change::SetReplication {
                    replicas: *replicas,
                    write_quorum: write_quorum.unwrap_or(maj),
                    read_quorum: read_quorum.unwrap_or(maj),
                }),
                false,
            )
        }
        CtlCmd::SetNode {
            name,
            capacity,
            zone,
        } => (
            change(Change::SetNode {
                name: name.clone(),
                capacity: *capacity,
                zone: zone.clone(),
            }),
            false,
        ),
        CtlCmd::Complete => (change(Change::Complete), false),
    };
    let r = call(&c, req, t).await?;
    if a.json {
        println!("{r}");
    } else {
        println!("SUCCEED: layout version {}", r["version"]);
    }
    if wait {
        wait_settled(&c, t, Duration::from_secs(3600)).await?;
    }
    Ok(())
}

/// `k2hdkc stat ADDR [WHAT]`.
#[derive(Args)]
pub struct StatArgs {
    /// Native address of a node.
    pub addr: SocketAddr,
    /// items | all (kumostat's keywords; `items` prints the common counters).
    #[arg(default_value = "items")]
    pub what: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Credentials.
    #[command(flatten)]
    pub auth: AuthArgs,
}

/// Run `stat`.
pub async fn stat(a: StatArgs) -> anyhow::Result<()> {
    a.auth.install()?;
    let t = Duration::from_secs(5);
    let c = client(a.addr, t).await?;
    let stats = c.stats().await.map_err(|e| anyhow!("{e}"))?;
    let cluster = call(&c, json!({"method": "stats"}), t).await.ok();
    if a.json {
        println!("{}", json!({"stats": stats, "cluster": cluster}));
        return Ok(());
    }
    let keys: &[&str] = match a.what.as_str() {
        "items" => &[
            "uptime",
            "version",
            "curr_items",
            "cmd_get",
            "cmd_set",
            "get_hits",
            "get_misses",
            "curr_connections",
            "bytes",
        ],
        "all" => &[],
        other => bail!("unknown stat {other:?}: want items | all"),
    };
    let obj = stats.as_object().cloned().unwrap_or_default();
    for (k, v) in &obj {
        if keys.is_empty() || keys.contains(&k.as_str()) {
            println!(
                "{k:<20} {}",
                v.as_str().map_or(v.to_string(), str::to_string)
            );
        }
    }
    if let Some(cl) = cluster {
        for k in [
            "node",
            "version",
            "forwarded",
            "direct_sets",
            "direct_fallbacks",
            "direct_puts",
            "quorum_failures",
            "replicated",
            "imported",
        ] {
            println!("{:<20} {}", format!("cluster_{k}"), cl[k]);
        }
    }
    Ok(())
}

/// `k2hdkc top --join ADDR`.
#[derive(Args)]
pub struct TopArgs {
    /// Native address of any node.
    #[arg(long)]
    pub join: SocketAddr,
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 1.0)]
    pub interval: f64,
    /// Refreshes before exiting (0 = until interrupted).
    #[arg(long, default_value_t = 0)]
    pub count: u64,
    /// Credentials.
    #[command(flatten)]
    pub auth: AuthArgs,
}

/// Run `top`: per-node operations per second, items, connections.
pub async fn top(a: TopArgs) -> anyhow::Result<()> {
    a.auth.install()?;
    let t = Duration::from_secs(5);
    let seed = client(a.join, t).await?;
    let mut prev: std::collections::HashMap<String, (u64, u64)> = Default::default();
    let interval = Duration::from_secs_f64(a.interval.max(0.1));
    let mut n = 0u64;
    loop {
        let s = call(&seed, json!({"method": "status"}), t).await?;
        let mut rows = Vec::new();
        for node in s["nodes"].as_array().into_iter().flatten() {
            let name = node["name"].as_str().unwrap_or("?").to_string();
            let addr: Option<SocketAddr> = node["addr"].as_str().and_then(|x| x.parse().ok());
            let st = match addr {
                Some(ad) if node["live"] == json!("UP") => match client(ad, t).await {
                    Ok(c) => c.stats().await.ok(),
                    Err(_) => None,
                },
                _ => None,
            };
            let num = |k: &str| {
                st.as_ref()
                    .and_then(|s| {
                        s[k].as_str()
                            .and_then(|v| v.parse::<u64>().ok())
                            .or(s[k].as_u64())
                    })
                    .unwrap_or(0)
            };
            let (g, s2) = (num("cmd_get"), num("cmd_set"));
            let (pg, ps) = prev.get(&name).copied().unwrap_or((g, s2));
            prev.insert(name.clone(), (g, s2));
            let secs = a.interval.max(0.1);
            rows.push(format!(
                "{:<12} {:<6} {:>10.0} {:>10.0} {:>10} {:>6}",
                name,
                node["live"].as_str().unwrap_or("?"),
                (g - pg.min(g)) as f64 / secs,
                (s2 - ps.min(s2)) as f64 / secs,
                num("curr_items"),
                num("curr_connections"),
            ));
        }
        print!("\x1b[2J\x1b[H");
        println!(
            "k2hdkc top  cluster {}  layout v{}",
            s["cluster"].as_str().unwrap_or("?"),
            s["version"]
        );
        println!(
            "{:<12} {:<6} {:>10} {:>10} {:>10} {:>6}",
            "NODE", "LIVE", "GET/s", "SET/s", "ITEMS", "CONNS"
        );
        for r in rows {
            println!("{r}");
        }
        n += 1;
        if a.count > 0 && n >= a.count {
            return Ok(());
        }
        tokio::time::sleep(interval).await;
    }
}

/// `k2hdkc hash --join ADDR KEY...`.
#[derive(Args)]
pub struct HashArgs {
    /// Native address of any node.
    #[arg(long)]
    pub join: SocketAddr,
    /// Keys.
    #[arg(required = true)]
    pub keys: Vec<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Credentials.
    #[command(flatten)]
    pub auth: AuthArgs,
}

/// Run `hash`: the partition and owners of each key.
pub async fn hash(a: HashArgs) -> anyhow::Result<()> {
    a.auth.install()?;
    let t = Duration::from_secs(5);
    let c = client(a.join, t).await?;
    let r = call(&c, json!({"method": "layout"}), t).await?;
    let l: Layout = serde_json::from_value(r["layout"].clone()).context("layout")?;
    for k in &a.keys {
        let o = l.owners(k.as_bytes());
        let names = |v: &[u16]| -> Vec<Json> {
            v.iter()
                .map(|&i| json!({"name": l.node(i).name, "addr": l.node(i).addr}))
                .collect()
        };
        if a.json {
            println!(
                "{}",
                json!({"key": k, "partition": partition_of(k.as_bytes()),
                       "owners": names(o.current), "previous": o.previous.map(names)})
            );
        } else {
            let show = |v: &[u16]| {
                v.iter()
                    .map(|&i| format!("{} ({})", l.node(i).name, l.node(i).addr))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            println!(
                "{k}: partition {} -> {}",
                partition_of(k.as_bytes()),
                show(o.current)
            );
            if let Some(p) = o.previous {
                println!("    (moving; previously {})", show(p));
            }
        }
    }
    Ok(())
}

/// `k2hdkc dev-cluster --nodes N --data-dir DIR`.
#[derive(Args)]
pub struct DevClusterArgs {
    /// Server nodes to start.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Parent directory of the nodes' data directories (created).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// memory | file.
    #[arg(long, default_value = "file")]
    pub storage: String,
    /// First native port; node i listens on base + 2i (native) and base + 2i + 1 (admin).
    #[arg(long, default_value_t = 8020)]
    pub base_port: u16,
    /// First memcached port; node i listens on it + i.
    #[arg(long, default_value_t = 11301)]
    pub memcached_base_port: u16,
    /// Also start a gateway with memcached on this port.
    #[arg(long)]
    pub gateway_port: Option<u16>,
    /// Replicas (capped by the node count).
    #[arg(long, default_value_t = 3)]
    pub replicas: u8,
    /// Exit once the cluster is up (leave the daemons running) instead of waiting for Ctrl-C.
    #[arg(long)]
    pub detach: bool,
}

/// Run `dev-cluster`.
pub async fn dev_cluster(a: DevClusterArgs) -> anyhow::Result<()> {
    if a.nodes == 0 || a.nodes > 64 {
        bail!("--nodes must be 1..=64");
    }
    let exe = std::env::current_exe().context("own executable")?;
    std::fs::create_dir_all(&a.data_dir)
        .with_context(|| format!("create {}", a.data_dir.display()))?;
    let native = |i: usize| format!("127.0.0.1:{}", a.base_port as usize + 2 * i);
    let seed = native(0);
    let mut children = Vec::new();
    for i in 0..a.nodes {
        let name = format!("n{}", i + 1);
        let dir = a.data_dir.join(&name);
        let log = std::fs::File::create(a.data_dir.join(format!("{name}.log")))?;
        let child = std::process::Command::new(&exe)
            .args(["server", "--name", &name, "--storage", &a.storage])
            .args(["--data-dir", &dir.to_string_lossy()])
            .args(["--listen", &native(i)])
            .args([
                "--memcached-listen",
                &format!("127.0.0.1:{}", a.memcached_base_port as usize + i),
            ])
            .args([
                "--admin-listen",
                &format!("127.0.0.1:{}", a.base_port as usize + 2 * i + 1),
            ])
            .args(["--join", &seed])
            // All daemons share this host's cores: one worker each wastes less CPU.
            .args(["--threads", "1"])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {name}"))?;
        eprintln!(
            "started {name} (pid {}) native {} memcached 127.0.0.1:{}",
            child.id(),
            native(i),
            a.memcached_base_port as usize + i
        );
        children.push(child);
    }
    let guard = Children(children);
    let t = Duration::from_secs(5);
    let c = {
        let mut last = None;
        let mut got = None;
        for _ in 0..100 {
            match client(seed.parse()?, t).await {
                Ok(c) => {
                    got = Some(c);
                    break;
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        got.ok_or_else(|| last.unwrap_or_else(|| anyhow!("no answer")))?
    };
    // Wait until every node joined, then attach them all.
    for _ in 0..200 {
        let s = call(&c, json!({"method": "status"}), t).await?;
        if s["nodes"].as_array().map_or(0, Vec::len) >= a.nodes {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = a.replicas.min(a.nodes as u8).max(1);
    let _ = call(&c, json!({"method": "change", "change": Change::SetReplication { replicas: r, write_quorum: r / 2 + 1, read_quorum: r / 2 + 1 }}), t).await;
    call(
        &c,
        json!({"method": "change", "change": Change::Attach { names: vec![] }}),
        t,
    )
    .await?;
    wait_settled(&c, t, Duration::from_secs(120)).await?;
    let mut gw = None;
    if let Some(p) = a.gateway_port {
        let want = call(&c, json!({"method": "layout"}), t).await?["layout"]["version"]
            .as_u64()
            .unwrap_or(0);
        let log = std::fs::File::create(a.data_dir.join("gateway.log"))?;
        let mut child = std::process::Command::new(&exe)
            .args([
                "gateway",
                "--join",
                &seed,
                "--memcached-listen",
                &format!("127.0.0.1:{p}"),
            ])
            .args([
                "--native-listen",
                &format!("127.0.0.1:{}", a.base_port as usize + 2 * a.nodes),
            ])
            .args(["--threads", "1"])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        eprintln!(
            "started gateway (pid {}) memcached 127.0.0.1:{p}",
            child.id()
        );
        // Ready once the gateway has the current layout. A loaded host (a test suite on two
        // cores) can take many seconds to start it, so the wait is long; a gateway that
        // exits is reported at once, with the end of its log.
        let gw_native: SocketAddr =
            format!("127.0.0.1:{}", a.base_port as usize + 2 * a.nodes).parse()?;
        let gw_log = a.data_dir.join("gateway.log");
        let log_tail = || {
            let text = std::fs::read_to_string(&gw_log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(g) = client(gw_native, t).await
                && let Ok(h) = call(&g, json!({"method": "hello"}), t).await
                && h["version"].as_u64().unwrap_or(0) >= want
            {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                bail!(
                    "the gateway exited ({status}); {}:\n{}",
                    gw_log.display(),
                    log_tail()
                );
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the gateway did not load layout version {want} within 60 s; {}:\n{}",
                    gw_log.display(),
                    log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        gw = Some(child);
    }
    let s = call(&c, json!({"method": "status"}), t).await?;
    print_status(&s);
    if a.detach {
        std::mem::forget(guard);
        if let Some(g) = gw {
            std::mem::forget(g);
        }
        return Ok(());
    }
    eprintln!("cluster ready; Ctrl-C (or SIGTERM) stops every node");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    if let Some(mut g) = gw {
        let _ = g.kill();
        let _ = g.wait();
    }
    drop(guard);
    Ok(())
}

/// Child processes stopped (SIGKILL after SIGTERM grace) when dropped.
struct Children(Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
        for c in &mut self.0 {
            for _ in 0..50 {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
