//! A real oslo.messaging peer (Python, PyPI) as Trove's taskmanager and conductor, through
//! the machine's RabbitMQ (`AMQP_URL`), against `k2hdkc-guest-agent` with the amqp
//! transport: `prepare` cast, heartbeats on the conductor topic, `rpc_ping`,
//! `get_filesystem_stats`, `restart` and an unknown method; with secure RPC on and off. The
//! guest's cluster file comes from a K2HR3 service, as on a real node.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use system_tests::{Proc, bin, test_dir};

use crate::k2hr3::{add_user, start_service};
use crate::python_clients::{log_tail, venv_python};
use crate::trove::Reaper;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/python/oslo_guest.py");

/// Each guest its own conductor topic: queue names are global in RabbitMQ, and heartbeats of
/// an earlier run's guest may still wait in a shared one.
fn conductor_topic(id: &str) -> String {
    format!("trove-conductor-{id}")
}

/// oslo.messaging's rabbit URL for lapin's amqp URL (same broker, same vhost).
fn oslo_url(amqp: &str) -> String {
    let rest = amqp.strip_prefix("amqp://").unwrap_or(amqp);
    let rest = rest
        .strip_suffix("/%2f")
        .or_else(|| rest.strip_suffix("/%2F"))
        .unwrap_or(rest);
    format!("rabbit://{}/", rest.trim_end_matches('/'))
}

#[allow(clippy::too_many_arguments)]
fn guest_config(
    dir: &Path,
    id: &str,
    ip: &str,
    r3: &str,
    token: &str,
    resource: &str,
    amqp: &str,
    exchange: &str,
    key: Option<&str>,
) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).expect("guest dir");
    std::fs::write(dir.join("role-token"), token).expect("token");
    std::fs::write(
        dir.join("cluster.secret"),
        "oslo-test-cluster-secret-0123456789",
    )
    .expect("secret");
    let key_line = match key {
        Some(k) => {
            std::fs::write(dir.join("guest.key"), k).expect("key");
            format!(
                "rpc_key_file = {:?}\n",
                dir.join("guest.key").display().to_string()
            )
        }
        None => String::new(),
    };
    let cfg = format!(
        "instance_id = {id:?}\nip = {ip:?}\ndata_dir = {:?}\nk2hdkc_bin = {:?}\nsecret_file = {:?}\n{key_line}\
         heartbeat_secs = 1.0\nserver_args = [\"--threads\", \"1\"]\n\n\
         [k2hr3]\nurl = {r3:?}\nrole_token_file = {:?}\nresource = {resource:?}\npoll_secs = 1.0\n\n\
         [rpc]\ntransport = \"amqp\"\namqp_url = {amqp:?}\ncontrol_exchange = {exchange:?}\n\
         conductor_topic = {:?}\n",
        dir.join("data").display().to_string(),
        bin("k2hdkc").display().to_string(),
        dir.join("cluster.secret").display().to_string(),
        dir.join("role-token").display().to_string(),
        conductor_topic(id),
    );
    let p = dir.join("guest.toml");
    std::fs::write(&p, cfg).expect("guest.toml");
    p
}

#[test]
fn oslo_messaging_drives_the_guest_agent_over_rabbitmq() {
    let name = "oslo_messaging_drives_the_guest_agent_over_rabbitmq";
    let Some(amqp) = std::env::var("AMQP_URL")
        .ok()
        .filter(|u| u.starts_with("amqp"))
    else {
        eprintln!("SKIP {name}: AMQP_URL is not set");
        return;
    };
    let python = match venv_python("oslo_messaging, cryptography") {
        Ok(p) => p,
        Err(reason) => {
            eprintln!("SKIP {name}: {reason}");
            return;
        }
    };
    use k2hr3_client::{Auth, Client, Options, PolicySpec, ResourceSpec};
    let tmp = test_dir();
    let _reaper = Reaper(tmp.path().to_path_buf());
    let r3dir = tmp.path().join("k2hr3");
    add_user(&r3dir, "ops", "t1", "ops-password-1");
    let (mut svc, addr) = start_service(&r3dir, true);
    let api = format!("http://{addr}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let run = std::process::id();
    for (n, secure) in [(2u8, true), (3u8, false)] {
        let id = format!("oslo-{run}-{n}");
        let ip = format!("127.81.{}.{n}", run % 200);
        let cluster = format!("g{n}");
        let ini = format!(
            "[GLOBAL]\nFILEVERSION = 1\nGROUP = {cluster}\nMODE = SERVER\nDELIVERMODE = hash\nREPLICA = 0\n\
             PORT = 8020\nCTLPORT = 8021\nMEMCACHED_PORT = 11211\nAUTOMERGE = on\nSSL = no\n\
             [SVRNODE]\nNAME = {ip}\nCUK = {id}\n"
        );
        let token = rt
            .block_on(async {
                let anon = Client::new(&api, Auth::None, Options::default())?;
                let u = anon.with_auth(Auth::User(
                    anon.user_token("ops", "ops-password-1", Some("t1")).await?,
                ));
                u.create_resource(&ResourceSpec {
                    name: format!("{cluster}/server"),
                    rtype: "string".into(),
                    data: serde_json::json!(ini),
                    ..ResourceSpec::default()
                })
                .await?;
                u.create_policy(&PolicySpec {
                    name: cluster.clone(),
                    effect: "allow".into(),
                    action: vec!["yrn:yahoo::::action:read".into()],
                    resource: vec![format!("yrn:yahoo:::t1:resource:{cluster}/server")],
                    alias: vec![],
                })
                .await?;
                u.create_role(
                    &format!("{cluster}/server"),
                    &[format!("yrn:yahoo:::t1:policy:{cluster}")],
                    &[],
                )
                .await?;
                u.role_token(&format!("{cluster}/server"), Some(0)).await
            })
            .expect("K2HR3 role for the guest")
            .token;
        let key = secure.then(|| format!("k{run}{n}abcdefghijklmnopqrstuvwxyz0123"));
        let exchange = format!("trove-test-{run}");
        let gdir = tmp.path().join(&id);
        let cfg = guest_config(
            &gdir,
            &id,
            &ip,
            &api,
            &token,
            &format!("yrn:yahoo:::t1:resource:{cluster}/server"),
            &amqp,
            &exchange,
            key.as_deref(),
        );
        let log = gdir.join("guest.log");
        let mut guest = Proc::start(
            &bin("k2hdkc-guest-agent"),
            &["--config".into(), cfg.display().to_string()],
            Some(&log),
        );
        let out = Command::new(&python)
            .arg(SCRIPT)
            .args([
                oslo_url(&amqp),
                exchange,
                id.clone(),
                key.clone().unwrap_or_default(),
                conductor_topic(&id),
            ])
            .current_dir(tmp.path())
            .output()
            .expect("run oslo_guest.py");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("all oslo checks passed"),
            "{name} (secure {secure}):\nstdout:\n{stdout}\nstderr:\n{}\nguest:\n{}",
            String::from_utf8_lossy(&out.stderr),
            log_tail(&log)
        );
        for l in stdout.lines().filter(|l| l.starts_with("STEP")) {
            eprintln!("{name} (secure {secure}): {l}");
        }
        assert!(
            guest.terminate(Duration::from_secs(30)),
            "the guest did not stop on SIGTERM"
        );
    }
    assert!(svc.terminate(Duration::from_secs(10)));
}

#[test]
fn oslo_urls_follow_the_amqp_url() {
    assert_eq!(
        oslo_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
        "rabbit://guest:guest@127.0.0.1:5672/"
    );
    assert_eq!(oslo_url("amqp://u:p@h:5672"), "rabbit://u:p@h:5672/");
}
