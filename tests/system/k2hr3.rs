//! The K2HR3-compatible service of `k2hdkc-dbaas` with real clients: the Python k2hr3client
//! (PyPI 1.1.3, from the venv `scripts/setup.sh` makes; skipped with a message without it)
//! runs `tests/python/k2hr3_client.py` against `k2hdkc-dbaas serve` on a fresh data
//! directory with one local user made by `k2hdkc-dbaas k2hr3 user add`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use system_tests::{Proc, bin, free_addr, wait_listening};

use crate::python_clients::{log_tail, venv_python};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/python/k2hr3_client.py");

/// Each test's own SQLite database (a `DATABASE_URL` in the environment is for the tests
/// that ask for PostgreSQL, not for these).
pub fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}?mode=rwc", dir.join("dbaas.db").display())
}

/// `k2hdkc-dbaas k2hr3 user add NAME --tenant T --password-stdin --data-dir DIR`.
pub fn add_user(dir: &Path, name: &str, tenant: &str, password: &str) {
    let mut c = Command::new(bin("k2hdkc-dbaas"))
        .args([
            "k2hr3",
            "user",
            "add",
            name,
            "--tenant",
            tenant,
            "--password-stdin",
            "--data-dir",
        ])
        .arg(dir)
        .arg("--database-url")
        .arg(sqlite_url(dir))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start k2hdkc-dbaas k2hr3 user add");
    c.stdin
        .take()
        .expect("stdin")
        .write_all(format!("{password}\n").as_bytes())
        .expect("write the password");
    let out = c.wait_with_output().expect("user add");
    assert!(
        out.status.success(),
        "user add failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `k2hdkc-dbaas serve` (or `k2hr3 serve`) on a free loopback port of `dir`.
pub fn start_service(dir: &Path, standalone: bool) -> (Proc, SocketAddr) {
    let addr = free_addr();
    let mut args: Vec<String> = if standalone {
        vec!["k2hr3".into(), "serve".into()]
    } else {
        vec!["serve".into()]
    };
    args.extend([
        "--data-dir".into(),
        dir.display().to_string(),
        "--database-url".into(),
        sqlite_url(dir),
    ]);
    if standalone {
        args.extend(["--listen".into(), addr.to_string()]);
    } else {
        // The whole control plane: the Trove API on its own port, K2HR3 on `addr`.
        args.extend([
            "--k2hr3-listen".into(),
            addr.to_string(),
            "--listen".into(),
            free_addr().to_string(),
        ]);
    }
    let log = dir.join("dbaas.log");
    let p = Proc::start(&bin("k2hdkc-dbaas"), &args, Some(&log));
    assert!(
        wait_listening(addr, Duration::from_secs(20)),
        "k2hdkc-dbaas did not start:\n{}",
        log_tail(&log)
    );
    (p, addr)
}

#[test]
fn python_k2hr3client_drives_the_whole_flow() {
    let python = match venv_python("k2hr3client") {
        Ok(p) => p,
        Err(reason) => {
            eprintln!("SKIP python_k2hr3client_drives_the_whole_flow: {reason}");
            return;
        }
    };
    let tmp = tempfile::tempdir().expect("temporary directory");
    let dir = tmp.path().join("dbaas");
    add_user(&dir, "alice", "demo", "alice-password-1");
    let (mut svc, addr) = start_service(&dir, false);
    // k2hr3client reads k2hr3client.ini from the working directory first: run it in an
    // empty one so nothing on this machine changes what it does.
    let out = Command::new("timeout")
        .arg("120")
        .arg(&python)
        .arg(SCRIPT)
        .arg(format!("http://{addr}"))
        .args(["alice", "alice-password-1", "demo"])
        .current_dir(tmp.path())
        .output()
        .expect("run the k2hr3client script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("all k2hr3client checks passed"),
        "{SCRIPT} failed ({}):\n{stdout}{stderr}\nservice log (tail):\n{}",
        out.status,
        log_tail(&dir.join("dbaas.log"))
    );
    let steps = stdout.lines().filter(|l| l.starts_with("ok ")).count();
    eprintln!("k2hr3client: {steps} steps passed");
    assert!(svc.running(), "the service exited during the run");
    assert!(
        svc.terminate(Duration::from_secs(10)),
        "the service did not stop on SIGTERM"
    );
}

/// Poll `f` until `pred` holds for its text or `within` passes; the time it took.
fn wait_file(f: &Path, within: Duration, pred: impl Fn(&str) -> bool) -> Option<Duration> {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < within {
        if std::fs::read_to_string(f).is_ok_and(|t| pred(&t)) {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn run_k2hr3(args: &[&str]) -> String {
    let out = Command::new(bin("k2hr3"))
        .args(args)
        .output()
        .expect("run k2hr3");
    assert!(
        out.status.success(),
        "k2hr3 {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn k2hr3_command_registers_and_follows_membership() {
    use k2hr3_client::{Auth, Client, Host, Options, PolicySpec, ResourceSpec};
    let tmp = tempfile::tempdir().expect("temporary directory");
    let dir = tmp.path().join("dbaas");
    add_user(&dir, "ops", "t1", "ops-password-1");
    let (mut svc, addr) = start_service(&dir, true);
    let api = format!("http://{addr}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let anon = Client::new(&api, Auth::None, Options::default()).expect("client");
    let user = rt
        .block_on(anon.user_token("ops", "ops-password-1", Some("t1")))
        .expect("user token");
    let u = anon.with_auth(Auth::User(user));
    let role = "yrn:yahoo:::t1:role:c1/server";
    let token = rt
        .block_on(async {
            let tpl = "{{#!k2hr3template }}\n# me: __SELF_INSTANCE_ID__\n{{ %s% = %yrn:yahoo:::t1:role:c1/server/hosts/ip% }}{{ foreach %k% in %s% }}{{ %h% = %s%{%k%} }}server {{= %h%{'host'} }} {{= %h%{'cuk'} }}\n{{ done }}";
            u.create_resource(&ResourceSpec {
                name: "c1/server".into(),
                rtype: "string".into(),
                data: serde_json::json!(tpl),
                ..ResourceSpec::default()
            })
            .await?;
            u.create_policy(&PolicySpec {
                name: "c1".into(),
                effect: "allow".into(),
                action: vec!["yrn:yahoo::::action:read".into()],
                resource: vec!["yrn:yahoo:::t1:resource:c1/server".into()],
                alias: vec![],
            })
            .await?;
            u.create_role("c1/server", &["yrn:yahoo:::t1:policy:c1".into()], &[]).await?;
            u.role_token("c1/server", Some(0)).await
        })
        .expect("set up the role")
        .token;

    // register: what k2hr3-init.sh does, with the instance id from cloud-init's file.
    let state = tmp.path().join("antpickax");
    let iid = tmp.path().join("instance-id");
    std::fs::write(&iid, "vm-self\n").expect("instance id");
    let out = run_k2hr3(&[
        "register",
        "--api",
        &api,
        "--role",
        role,
        "--token",
        &token,
        "--instance-id-file",
        iid.to_str().expect("path"),
        "--state-dir",
        state.to_str().expect("path"),
        "--tag",
        "n1",
    ]);
    assert!(out.contains("registered"), "{out}");
    let hosts = rt.block_on(u.role("c1/server", false)).expect("role").ips;
    assert_eq!(hosts.len(), 1, "{hosts:?}");
    assert_eq!(
        (
            hosts[0].host.as_str(),
            hosts[0].cuk.as_str(),
            hosts[0].tag.as_str()
        ),
        ("127.0.0.1", "vm-self", "n1")
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(state.join("k2hr3-role-token"))
        .expect("token file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the saved role token is private");

    // get-resource --watch: the file follows the role's hosts within one poll interval.
    let conf = tmp.path().join("k2hdkc.ini");
    let reloads = tmp.path().join("reloads");
    let interval = Duration::from_secs(1);
    let log = tmp.path().join("watch.log");
    let reload_cmd = format!("echo \"$K2HR3_OUTPUT\" >> {}", reloads.display());
    let watch_args: Vec<String> = [
        "get-resource",
        "--state-dir",
        state.to_str().expect("path"),
        "--output",
        conf.to_str().expect("path"),
        "--watch",
        "--interval",
        "1",
        "--reload",
        &reload_cmd,
        "--max-polls",
        "600",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut watch = Proc::start(&bin("k2hr3"), &watch_args, Some(&log));
    let first = wait_file(&conf, Duration::from_secs(10), |t| {
        t.contains("server 127.0.0.1 vm-self")
    });
    assert!(
        first.is_some(),
        "the first config never appeared:\n{}",
        log_tail(&log)
    );
    let text = std::fs::read_to_string(&conf).expect("config");
    assert!(
        text.contains("# me: vm-self") && !text.contains("__SELF_INSTANCE_ID__"),
        "{text}"
    );
    // Slack over one interval: the poll's own request and this test's 20 ms file polling.
    let bound = interval + Duration::from_millis(900);
    rt.block_on(u.add_host(
        "c1/server",
        &Host {
            host: "10.0.0.9".into(),
            port: 8020,
            cuk: "vm-9".into(),
            ..Host::default()
        },
    ))
    .expect("add a host");
    let added = wait_file(&conf, bound, |t| t.contains("server 10.0.0.9 vm-9"));
    assert!(
        added.is_some(),
        "the added host did not reach the file within {bound:?}:\n{}",
        log_tail(&log)
    );
    rt.block_on(u.delete_host("c1/server", "10.0.0.9", Some(8020), Some("vm-9")))
        .expect("remove the host");
    let removed = wait_file(&conf, bound, |t| {
        !t.contains("vm-9") && t.contains("vm-self")
    });
    assert!(
        removed.is_some(),
        "the removed host stayed in the file beyond {bound:?}:\n{}",
        log_tail(&log)
    );
    eprintln!(
        "k2hr3 get-resource --interval 1: host added -> file after {added:?}, removed -> file after {removed:?}"
    );
    // Unchanged resource: no rewrite, no reload (three changes so far: first, add, remove).
    std::thread::sleep(interval * 2 + Duration::from_millis(200));
    let n = std::fs::read_to_string(&reloads)
        .unwrap_or_default()
        .lines()
        .count();
    assert_eq!(
        n,
        3,
        "one reload per change, none without:\n{}",
        log_tail(&log)
    );
    assert!(watch.running(), "the watcher exited:\n{}", log_tail(&log));
    assert!(
        watch.terminate(Duration::from_secs(5)),
        "the watcher ignored SIGTERM"
    );

    // unregister: the host leaves the role and the state is forgotten.
    let out = run_k2hr3(&["unregister", "--state-dir", state.to_str().expect("path")]);
    assert!(out.contains("unregistered"), "{out}");
    assert!(
        rt.block_on(u.role("c1/server", false))
            .expect("role")
            .ips
            .is_empty()
    );
    assert!(!state.join("k2hr3-role-token").exists());
    assert!(svc.terminate(Duration::from_secs(10)));
}
