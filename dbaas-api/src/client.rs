//! `k2hdkc-dbaas cluster ...`: the Trove API from the command line, for people without the
//! OpenStack CLI. Every command is a plain Trove v1.0 call (so it works against any
//! compatible endpoint); `--wait` polls with a progress bar until the task is done; tables
//! by default, the API's JSON with `--json`.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::model::{DATASTORE, VERSION_NAME};

/// Where the API is and who we are.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// The Trove API (without /v1.0).
    #[arg(
        long,
        env = "K2HDKC_DBAAS_URL",
        default_value = "http://127.0.0.1:8779",
        global = true
    )]
    url: String,
    /// The project (tenant) id in the path.
    #[arg(long, env = "OS_PROJECT_ID", default_value = "demo", global = true)]
    project: String,
    /// X-Auth-Token (the server's token:SECRET, or a Keystone token).
    #[arg(long, env = "OS_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// How long `--wait` waits (seconds).
    #[arg(long, default_value_t = 900, global = true)]
    wait_secs: u64,
    #[command(subcommand)]
    cmd: ClusterCmd,
}

#[derive(Debug, Subcommand)]
enum ClusterCmd {
    /// Create a cluster.
    Create {
        name: String,
        /// Number of members.
        #[arg(long, default_value_t = 3)]
        size: u32,
        /// Flavor id of every member.
        #[arg(long, default_value = "1")]
        flavor: String,
        /// Volume size (GB) of every member.
        #[arg(long, default_value_t = 1)]
        volume: u32,
        /// A configuration group id.
        #[arg(long)]
        configuration: Option<String>,
        /// Wait until it is ACTIVE, then print connection details.
        #[arg(long)]
        wait: bool,
    },
    /// List clusters.
    List,
    /// Show a cluster (name or id) and its members.
    Show { cluster: String },
    /// Add members.
    Grow {
        cluster: String,
        #[arg(long, default_value_t = 1)]
        count: u32,
        #[arg(long, default_value = "1")]
        flavor: String,
        #[arg(long, default_value_t = 1)]
        volume: u32,
        #[arg(long)]
        wait: bool,
    },
    /// Remove members (the newest ones unless --instance names them); their data moves first.
    Shrink {
        cluster: String,
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Member ids or names to remove (repeatable).
        #[arg(long)]
        instance: Vec<String>,
        #[arg(long)]
        wait: bool,
    },
    /// Back up a cluster (every member's archive).
    Backup {
        cluster: String,
        /// Backup name (default: <cluster>-<time>).
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        wait: bool,
    },
    /// Restore a backup into a new single-node instance.
    Restore {
        /// Backup id or name.
        backup: String,
        /// Name of the new instance.
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "1")]
        flavor: String,
        #[arg(long, default_value_t = 1)]
        volume: u32,
        #[arg(long)]
        wait: bool,
    },
    /// Print the cloud-init user-data that makes a VM a slave (gateway) of the cluster.
    SlaveUserdata {
        cluster: String,
        /// The gateway's memcached listener on the client host.
        #[arg(long, default_value = "127.0.0.1:11211")]
        memcached: String,
        /// Write it to this file (0600) instead of stdout.
        #[arg(long)]
        output: Option<std::path::PathBuf>,
    },
    /// Delete a cluster and its hosts.
    Delete {
        cluster: String,
        #[arg(long)]
        wait: bool,
    },
}

struct Http {
    c: reqwest::Client,
    base: String,
    token: Option<String>,
}

/// The message of a Trove fault body (`{"badRequest": {"message": ...}}`).
fn fault_message(v: &Value) -> Option<String> {
    v.as_object()
        .and_then(|o| o.values().next())
        .and_then(|f| f["message"].as_str())
        .map(str::to_string)
}

impl Http {
    /// Send a request (with the token, a JSON body if any, asking for JSON if `json`); the
    /// status and the body text.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        json: bool,
    ) -> anyhow::Result<(u16, String)> {
        let mut r = self.c.request(method, format!("{}{path}", self.base));
        if json {
            r = r.header("accept", "application/json");
        }
        if let Some(t) = &self.token {
            r = r.header("x-auth-token", t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r
            .send()
            .await
            .with_context(|| format!("calling {}{path}", self.base))?;
        let code = resp.status().as_u16();
        Ok((code, resp.text().await.unwrap_or_default()))
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let (code, text) = self.send(method, path, body, true).await?;
        let v: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok((code, v))
    }

    async fn ok(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let (code, v) = self.call(method, path, body).await?;
        if code >= 400 {
            let msg = fault_message(&v).unwrap_or_else(|| v.to_string());
            bail!("{msg} (HTTP {code})");
        }
        Ok(v)
    }

    /// A text resource (errors as for JSON calls).
    async fn text(&self, path: &str) -> anyhow::Result<String> {
        let (code, text) = self.send(reqwest::Method::GET, path, None, false).await?;
        if code >= 400 {
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let msg = fault_message(&v).unwrap_or(text);
            bail!("{msg} (HTTP {code})");
        }
        Ok(text)
    }

    /// A cluster by id or name (as the OpenStack CLI resolves it).
    async fn cluster(&self, key: &str) -> anyhow::Result<Value> {
        let (code, v) = self
            .call(reqwest::Method::GET, &format!("/clusters/{key}"), None)
            .await?;
        if code < 400 {
            return Ok(v["cluster"].clone());
        }
        let list = self.ok(reqwest::Method::GET, "/clusters", None).await?;
        let m: Vec<&Value> = list["clusters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["name"] == key)
            .collect();
        match m.as_slice() {
            [one] => {
                let id = one["id"].as_str().unwrap_or_default();
                Ok(self
                    .ok(reqwest::Method::GET, &format!("/clusters/{id}"), None)
                    .await?["cluster"]
                    .clone())
            }
            [] => bail!("no cluster {key:?}"),
            _ => bail!("more than one cluster is named {key:?}; use its id"),
        }
    }
}

/// Run a `cluster` subcommand.
pub async fn run(a: ClusterArgs) -> anyhow::Result<()> {
    let h = Http {
        c: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?,
        base: format!("{}/v1.0/{}", a.url.trim_end_matches('/'), a.project),
        token: a.token.clone(),
    };
    let limit = Duration::from_secs(a.wait_secs.max(1));
    let member =
        |flavor: &str, volume: u32| json!({"flavorRef": flavor, "volume": {"size": volume}});
    use reqwest::Method;
    match &a.cmd {
        ClusterCmd::Create {
            name,
            size,
            flavor,
            volume,
            configuration,
            wait,
        } => {
            if *size == 0 {
                bail!("--size must be at least 1");
            }
            let mut body = json!({"cluster": {"name": name, "datastore": {"type": DATASTORE, "version": VERSION_NAME},
                "instances": (0..*size).map(|_| member(flavor, *volume)).collect::<Vec<_>>()}});
            if let Some(c) = configuration {
                body["cluster"]["configuration"] = json!(c);
            }
            let v = h.ok(Method::POST, "/clusters", Some(body)).await?;
            let id = v["cluster"]["id"].as_str().unwrap_or_default().to_string();
            if *wait {
                wait_active(&h, &id, limit).await?;
            }
            show(&h, &id, a.json).await?;
        }
        ClusterCmd::List => {
            let v = h.ok(Method::GET, "/clusters", None).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&v["clusters"])?);
            } else {
                println!(
                    "{:<36}  {:<20}  {:<18}  {:>7}  IPS",
                    "ID", "NAME", "TASK", "MEMBERS"
                );
                for c in v["clusters"].as_array().into_iter().flatten() {
                    println!(
                        "{:<36}  {:<20}  {:<18}  {:>7}  {}",
                        s(&c["id"]),
                        s(&c["name"]),
                        s(&c["task"]["name"]),
                        c["instances"].as_array().map_or(0, Vec::len),
                        ips(c)
                    );
                }
            }
        }
        ClusterCmd::Show { cluster } => {
            let c = h.cluster(cluster).await?;
            show(&h, s(&c["id"]), a.json).await?;
        }
        ClusterCmd::Grow {
            cluster,
            count,
            flavor,
            volume,
            wait,
        } => {
            let c = h.cluster(cluster).await?;
            let id = s(&c["id"]).to_string();
            let items: Vec<Value> = (0..*count).map(|_| member(flavor, *volume)).collect();
            resize(&h, &id, json!({"grow": items}), *wait, limit, a.json).await?;
        }
        ClusterCmd::Shrink {
            cluster,
            count,
            instance,
            wait,
        } => {
            let c = h.cluster(cluster).await?;
            let id = s(&c["id"]).to_string();
            let members: Vec<&Value> = c["instances"].as_array().into_iter().flatten().collect();
            let victims: Vec<String> = if instance.is_empty() {
                members
                    .iter()
                    .rev()
                    .take(*count as usize)
                    .map(|m| s(&m["id"]).to_string())
                    .collect()
            } else {
                instance
                    .iter()
                    .map(|k| {
                        members
                            .iter()
                            .find(|m| m["id"] == k.as_str() || m["name"] == k.as_str())
                            .map(|m| s(&m["id"]).to_string())
                            .with_context(|| format!("{k:?} is not a member of {cluster}"))
                    })
                    .collect::<anyhow::Result<_>>()?
            };
            let items: Vec<Value> = victims.iter().map(|v| json!({"id": v})).collect();
            resize(&h, &id, json!({"shrink": items}), *wait, limit, a.json).await?;
        }
        ClusterCmd::Backup {
            cluster,
            name,
            wait,
        } => {
            let c = h.cluster(cluster).await?;
            let first = c["instances"][0]["id"]
                .as_str()
                .context("the cluster has no members")?
                .to_string();
            let name = name.clone().unwrap_or_else(|| {
                format!(
                    "{}-{}",
                    s(&c["name"]),
                    crate::model::iso(crate::store::now()).replace(':', "")
                )
            });
            let v = h
                .ok(
                    Method::POST,
                    "/backups",
                    Some(json!({"backup": {"name": name, "instance": first, "incremental": 0}})),
                )
                .await?;
            let bid = s(&v["backup"]["id"]).to_string();
            let b = if *wait {
                wait_status(
                    &h,
                    &format!("/backups/{bid}"),
                    "backup",
                    "COMPLETED",
                    "FAILED",
                    limit,
                )
                .await?
            } else {
                v["backup"].clone()
            };
            print_backup(&b, a.json)?;
        }
        ClusterCmd::Restore {
            backup,
            name,
            flavor,
            volume,
            wait,
        } => {
            let (code, b) = h
                .call(Method::GET, &format!("/backups/{backup}"), None)
                .await?;
            let bid = if code < 400 {
                s(&b["backup"]["id"]).to_string()
            } else {
                let list = h.ok(Method::GET, "/backups", None).await?;
                list["backups"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|b| b["name"] == backup.as_str())
                    .map(|b| s(&b["id"]).to_string())
                    .with_context(|| format!("no backup {backup:?}"))?
            };
            let v = h
                .ok(
                    Method::POST,
                    "/instances",
                    Some(json!({"instance": {"name": name, "flavorRef": flavor, "volume": {"size": volume},
                        "datastore": {"type": DATASTORE, "version": VERSION_NAME},
                        "restorePoint": {"backupRef": bid}}})),
                )
                .await?;
            let iid = s(&v["instance"]["id"]).to_string();
            let i = if *wait {
                wait_status(
                    &h,
                    &format!("/instances/{iid}"),
                    "instance",
                    "ACTIVE",
                    "ERROR",
                    limit,
                )
                .await?
            } else {
                v["instance"].clone()
            };
            if a.json {
                println!("{}", serde_json::to_string_pretty(&i)?);
            } else {
                println!(
                    "instance {} ({}) {}  memcached {}",
                    s(&i["name"]),
                    s(&i["id"]),
                    s(&i["status"]),
                    ips(&i)
                );
            }
        }
        ClusterCmd::SlaveUserdata {
            cluster,
            memcached,
            output,
        } => {
            let c = h.cluster(cluster).await?;
            let doc = h
                .text(&format!(
                    "/clusters/{}/slave-userdata?memcached={memcached}",
                    s(&c["id"])
                ))
                .await?;
            match output {
                Some(p) => {
                    use std::os::unix::fs::OpenOptionsExt;
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(p)
                        .with_context(|| format!("writing {}", p.display()))?;
                    f.write_all(doc.as_bytes())?;
                    eprintln!(
                        "slave user-data of {} written to {} (it holds secrets)",
                        s(&c["name"]),
                        p.display()
                    );
                }
                None => print!("{doc}"),
            }
        }
        ClusterCmd::Delete { cluster, wait } => {
            let c = h.cluster(cluster).await?;
            let id = s(&c["id"]).to_string();
            h.ok(Method::DELETE, &format!("/clusters/{id}"), None)
                .await?;
            if *wait {
                let t0 = Instant::now();
                loop {
                    let (code, v) = h
                        .call(Method::GET, &format!("/clusters/{id}"), None)
                        .await?;
                    if code == 404 {
                        break;
                    }
                    progress(
                        &format!(
                            "deleting {} (task {})",
                            s(&c["name"]),
                            s(&v["cluster"]["task"]["name"])
                        ),
                        0,
                        1,
                    );
                    if t0.elapsed() > limit {
                        eprintln!();
                        bail!("cluster {id} is still there after {limit:?}");
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                eprintln!();
            }
            println!("cluster {} deleted", s(&c["name"]));
        }
    }
    Ok(())
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn ips(v: &Value) -> String {
    v["ip"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect::<Vec<_>>()
        .join(",")
}

fn progress(what: &str, done: usize, total: usize) {
    let total = total.max(1);
    let bar = "#".repeat(done.min(total) * 25 / total);
    eprint!("\r{what} [{bar:<25}] {done}/{total}   ");
    let _ = std::io::stderr().flush();
}

/// Post a grow or shrink `action` to cluster `id`, wait for it if asked, and show the result.
async fn resize(
    h: &Http,
    id: &str,
    action: Value,
    wait: bool,
    limit: Duration,
    as_json: bool,
) -> anyhow::Result<()> {
    h.ok(
        reqwest::Method::POST,
        &format!("/clusters/{id}"),
        Some(action),
    )
    .await?;
    if wait {
        wait_active(h, id, limit).await?;
    }
    show(h, id, as_json).await
}

async fn wait_active(h: &Http, id: &str, limit: Duration) -> anyhow::Result<()> {
    let t0 = Instant::now();
    loop {
        let c = h
            .ok(reqwest::Method::GET, &format!("/clusters/{id}"), None)
            .await?["cluster"]
            .clone();
        let members: Vec<&Value> = c["instances"].as_array().into_iter().flatten().collect();
        let ready = members.iter().filter(|m| m["status"] == "ACTIVE").count();
        let task = s(&c["task"]["name"]).to_string();
        progress(&format!("{} {task}", s(&c["name"])), ready, members.len());
        if task == "NONE" {
            if !c["fault"].is_null() {
                eprintln!();
                bail!(
                    "the cluster's last task failed: {}",
                    s(&c["fault"]["message"])
                );
            }
            if ready == members.len() {
                eprintln!();
                return Ok(());
            }
        }
        if t0.elapsed() > limit {
            eprintln!();
            bail!(
                "cluster {id} is not ACTIVE after {limit:?} (task {task}, {ready}/{} members ACTIVE)",
                members.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Poll `path` until its `key` object's status is `done` (an error on `failed`), with a bar.
async fn wait_status(
    h: &Http,
    path: &str,
    key: &str,
    done: &str,
    failed: &str,
    limit: Duration,
) -> anyhow::Result<Value> {
    let t0 = Instant::now();
    loop {
        let o = h.ok(reqwest::Method::GET, path, None).await?[key].clone();
        let st = s(&o["status"]).to_string();
        progress(
            &format!("{key} {} {st}", s(&o["name"])),
            usize::from(st == done),
            1,
        );
        if st == done {
            eprintln!();
            return Ok(o);
        }
        if st == failed {
            eprintln!();
            bail!(
                "{key} {} is {st}: {}",
                s(&o["id"]),
                s(&o["fault"]["message"])
            );
        }
        if t0.elapsed() > limit {
            eprintln!();
            bail!("{key} {} is {st} after {limit:?}", s(&o["id"]));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn print_backup(b: &Value, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        println!("{}", serde_json::to_string_pretty(b)?);
    } else {
        println!(
            "backup {} ({}) {}  size {} GB  at {}",
            s(&b["name"]),
            s(&b["id"]),
            s(&b["status"]),
            b["size"],
            s(&b["locationRef"])
        );
    }
    Ok(())
}

async fn show(h: &Http, id: &str, as_json: bool) -> anyhow::Result<()> {
    let c = h
        .ok(reqwest::Method::GET, &format!("/clusters/{id}"), None)
        .await?["cluster"]
        .clone();
    if as_json {
        println!("{}", serde_json::to_string_pretty(&c)?);
        return Ok(());
    }
    println!("cluster   {} ({})", s(&c["name"]), s(&c["id"]));
    println!("task      {}", s(&c["task"]["name"]));
    if !c["fault"].is_null() {
        println!("fault     {}", s(&c["fault"]["message"]));
    }
    println!(
        "memcached {}",
        c["ip"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|i| format!("{i}:11211"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "{:<36}  {:<24}  {:<10}  {:<16}  FLAVOR",
        "MEMBER", "NAME", "STATUS", "IP"
    );
    for m in c["instances"].as_array().into_iter().flatten() {
        println!(
            "{:<36}  {:<24}  {:<10}  {:<16}  {}",
            s(&m["id"]),
            s(&m["name"]),
            s(&m["status"]),
            ips(m),
            s(&m["flavor"]["id"])
        );
    }
    Ok(())
}
