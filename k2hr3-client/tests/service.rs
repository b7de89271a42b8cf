//! The K2HR3-compatible service driven by this crate's client, one suite run on each storage
//! backend: SQLite (always) and PostgreSQL (when `DATABASE_URL` names one; a fresh database
//! is created for the run and dropped after it; skipped with a message otherwise). The
//! service runs in-process on 127.0.0.1:0.

use std::net::SocketAddr;
use std::time::Duration;

use k2hdkc_k2hr3::{Config, Service};
use k2hr3_client::{Auth, Client, Error, Host, Options, PolicySpec, ResourceSpec};
use serde_json::{Value, json};

struct Running {
    base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let r = tokio::time::timeout(Duration::from_secs(10), &mut self.task).await;
        assert!(
            matches!(r, Ok(Ok(Ok(())))),
            "the service did not stop cleanly: {r:?}"
        );
    }
}

async fn start(dir: &std::path::Path, db: Option<String>) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    let mut cfg = Config {
        listen: addr,
        data_dir: dir.to_path_buf(),
        database_url: db,
        delete_by_cuk_from: vec!["127.0.0.1".parse().expect("ip")],
        ..Config::default()
    };
    cfg.role_token_secs = 3600;
    let svc = Service::open(cfg).await.expect("open the service");
    svc.add_user("alice", "alice-password", &["tenant-a".into()])
        .await
        .expect("alice");
    svc.add_user("bob", "bob-password-2", &["tenant-b".into()])
        .await
        .expect("bob");
    assert!(
        svc.add_user("carol", "short", &["tenant-a".into()])
            .await
            .is_err(),
        "a short password is refused"
    );
    assert!(
        svc.add_user("bad name", "long-enough", &["t".into()])
            .await
            .is_err()
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        svc.serve(listener, async move {
            let _ = rx.await;
        })
        .await
    });
    Running {
        base: format!("http://{addr}"),
        stop: Some(tx),
        task,
    }
}

fn opts() -> Options {
    Options {
        timeout: Duration::from_secs(10),
        retries: 1,
        backoff: Duration::from_millis(50),
        ..Options::default()
    }
}

fn status(e: &Error) -> u16 {
    e.status()
        .unwrap_or_else(|| panic!("expected an API error, got {e}"))
}

async fn raw(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    let c = reqwest::Client::new();
    let mut rq = c.request(method.parse().expect("method"), format!("{base}{path}"));
    if let Some(t) = token {
        rq = rq.header("x-auth-token", t);
    }
    if let Some(b) = body {
        rq = rq
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let r = rq.send().await.expect("request");
    let st = r.status().as_u16();
    let text = r.text().await.expect("body");
    (
        st,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

const TEMPLATE: &str = "{{#!k2hr3template }}\n[GLOBAL]\nGROUP = {{= %cluster-name% }}\nREPLICA = {{= %replicas% + 1 }}\n{{ %s% = %yrn:yahoo:::tenant-a:role:c1/server/hosts/ip% }}\n{{ foreach %k% in %s% }}\n{{ %h% = %s%{%k%} }}\n[SVRNODE]\nNAME = {{= %h%{'host'} }}\nCUK = {{= %h%{'cuk'} }}\n{{ done }}\nSELF = __SELF_INSTANCE_ID__\n";

/// The suite: every P0 capability and every refusal, against one running service.
async fn suite(base: &str) {
    let anon = Client::new(base, Auth::None, opts()).expect("client");
    assert!(anon.version().await.expect("version")["version"].is_object());

    // Tokens.
    let unscoped = anon
        .user_token("alice", "alice-password", None)
        .await
        .expect("unscoped");
    let u0 = anon.with_auth(Auth::User(unscoped.clone()));
    assert_eq!(u0.token_info().await.expect("info")["scoped"], json!(false));
    let e = u0
        .create_role("x", &[], &[])
        .await
        .expect_err("an unscoped token cannot create");
    assert_eq!(status(&e), 403, "{e}");
    let scoped = u0.scoped_token("tenant-a").await.expect("scope the token");
    let a = anon.with_auth(Auth::User(scoped));
    let info = a.token_info().await.expect("info");
    assert_eq!(info["scoped"], json!(true));
    assert_eq!(info["tenants"][0]["name"], json!("tenant-a"));
    let e = anon
        .user_token("alice", "wrong", Some("tenant-a"))
        .await
        .expect_err("wrong password");
    assert_eq!(status(&e), 401);
    let e = anon
        .user_token("alice", "alice-password", Some("tenant-b"))
        .await
        .expect_err("not her tenant");
    assert!(matches!(status(&e), 401 | 403), "{e}");
    let e = anon
        .with_auth(Auth::User("f".repeat(64)))
        .token_info()
        .await
        .expect_err("unknown token");
    assert_eq!(status(&e), 401);
    let b = anon.with_auth(Auth::User(
        anon.user_token("bob", "bob-password-2", Some("tenant-b"))
            .await
            .expect("bob"),
    ));

    // A resource with keys, a policy, roles.
    let mut keys = serde_json::Map::new();
    keys.insert("cluster-name".into(), json!("c1"));
    keys.insert("replicas".into(), json!(2));
    a.create_resource(&ResourceSpec {
        name: "c1/server".into(),
        rtype: "string".into(),
        data: json!(TEMPLATE),
        keys,
        ..ResourceSpec::default()
    })
    .await
    .expect("resource");
    let r = a.resource("c1/server").await.expect("read resource");
    assert_eq!(r["keys"]["replicas"], json!(2));
    assert!(
        r["string"]
            .as_str()
            .expect("string")
            .contains("k2hr3template")
    );
    a.create_resource(&ResourceSpec {
        name: "secret".into(),
        rtype: "object".into(),
        data: json!({"k": "v"}),
        ..ResourceSpec::default()
    })
    .await
    .expect("a second resource");
    a.create_policy(&PolicySpec {
        name: "c1-read".into(),
        effect: "allow".into(),
        action: vec!["yrn:yahoo::::action:read".into()],
        resource: vec!["yrn:yahoo:::tenant-a:resource:c1/server".into()],
        alias: vec![],
    })
    .await
    .expect("policy");
    assert_eq!(
        a.policy("c1-read").await.expect("policy")["effect"],
        json!("allow")
    );
    let e = a
        .create_policy(&PolicySpec {
            name: "p2".into(),
            effect: "perhaps".into(),
            action: vec!["yrn:yahoo::::action:read".into()],
            ..PolicySpec::default()
        })
        .await
        .expect_err("bad effect");
    assert_eq!(status(&e), 400, "{e}");
    let pol = vec!["yrn:yahoo:::tenant-a:policy:c1-read".to_string()];
    a.create_role("c1", &[], &[]).await.expect("role c1");
    a.create_role("c1/server", &pol, &[])
        .await
        .expect("role c1/server");
    a.create_role("c1/slave", &pol, &[])
        .await
        .expect("role c1/slave");
    a.create_role("other", &[], &[])
        .await
        .expect("a role without policies");
    let e = a
        .create_role("c1/x", &["yrn:yahoo:::tenant-b:policy:p".into()], &[])
        .await
        .expect_err("foreign policy");
    assert_eq!(status(&e), 403, "{e}");

    // Hosts: added by the user, and registered with a role token.
    a.add_host(
        "c1/server",
        &Host {
            host: "10.0.0.5".into(),
            port: 8020,
            cuk: "vm-5".into(),
            tag: "n5".into(),
            ..Host::default()
        },
    )
    .await
    .expect("add host");
    let e = a
        .add_host(
            "c1/server",
            &Host {
                host: "10.0.0.6".into(),
                port: 8020,
                cuk: "has space".into(),
                ..Host::default()
            },
        )
        .await
        .expect_err("a cuk with a space");
    assert_eq!(status(&e), 400, "{e}");
    let rt = a
        .role_token("c1/server", Some(0))
        .await
        .expect("role token");
    assert!(rt.token.len() >= 32 && !rt.registerpath.is_empty());
    let tokens = a.role_tokens("c1/server").await.expect("list");
    assert!(tokens.contains_key(&rt.token), "{tokens:?}");
    // A registerpath is sealed with a fresh salt each time: the listed one differs from the
    // issued one, and both open to the same role and token.
    let listed = tokens[&rt.token]["registerpath"]
        .as_str()
        .expect("registerpath")
        .to_string();
    for p in [&listed, &rt.registerpath] {
        let ud = anon.userdata(p).await.expect("userdata of a registerpath");
        assert!(String::from_utf8_lossy(&ud).contains(&rt.token));
    }
    let r = anon.with_auth(Auth::Role(rt.token.clone()));
    r.register("c1/server", 8020, "vm-self", "k2hdkc", "self")
        .await
        .expect("register");
    let role = a.role("c1/server", true).await.expect("role");
    assert_eq!(role.policies, pol);
    let cuks: Vec<&str> = role.ips.iter().map(|h| h.cuk.as_str()).collect();
    assert_eq!(cuks.len(), 2, "{role:?}");
    assert!(
        cuks.contains(&"vm-5") && cuks.contains(&"vm-self"),
        "{role:?}"
    );
    assert!(
        role.ips
            .iter()
            .any(|h| h.host == "127.0.0.1" && h.tag == "self")
    );

    // An alias role shares its hosts when expanded, and a child role reads what its parent's
    // policies allow.
    a.create_role("gw", &[], &["yrn:yahoo:::tenant-a:role:c1/server".into()])
        .await
        .expect("alias role");
    let gw = a.role("gw", true).await.expect("expanded alias");
    assert_eq!(gw.ips.len(), 2, "{gw:?}");
    assert!(a.role("gw", false).await.expect("alias").ips.is_empty());
    let e = a
        .create_role("gw2", &[], &["yrn:yahoo:::tenant-b:role:x".into()])
        .await
        .expect_err("foreign alias");
    assert_eq!(status(&e), 403, "{e}");
    a.create_role("c1/server/child", &[], &[])
        .await
        .expect("child role");
    let child = a
        .role_token("c1/server/child", None)
        .await
        .expect("child token");
    let text_child = anon
        .with_auth(Auth::Role(child.token.clone()))
        .read_resource("c1/server", None, None)
        .await
        .expect("a child role inherits its parent's policies");
    assert!(
        text_child
            .as_str()
            .is_some_and(|t| t.contains("GROUP = c1")),
        "{text_child}"
    );
    a.delete_role("gw").await.expect("delete alias role");

    // The expanded resource, by role token and by source address.
    let text = r
        .read_resource("yrn:yahoo:::tenant-a:resource:c1/server", None, None)
        .await
        .expect("expanded");
    let text = text.as_str().expect("a string");
    for want in [
        "GROUP = c1",
        "REPLICA = 3",
        "NAME = 10.0.0.5",
        "CUK = vm-5",
        "NAME = 127.0.0.1",
        "CUK = vm-self",
        "SELF = __SELF_INSTANCE_ID__",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
    assert!(!text.contains("{{"), "{text}");
    assert_eq!(
        r.resource_key("c1/server", "cluster-name")
            .await
            .expect("key"),
        json!("c1")
    );
    let by_ip = anon
        .read_resource(
            "yrn:yahoo:::tenant-a:resource:c1/server",
            Some("yrn:yahoo:::tenant-a:role:c1/server"),
            Some("vm-self"),
        )
        .await
        .expect("tokenless read by a host of the role");
    assert_eq!(by_ip.as_str(), Some(text));
    let e = anon
        .read_resource("c1/server", Some("yrn:yahoo:::tenant-a:role:other"), None)
        .await
        .expect_err("not a host of that role");
    assert_eq!(status(&e), 401, "{e}");

    // Refusals: another role's token, another tenant, wrong kinds of token.
    let ot = a.role_token("other", None).await.expect("token of other");
    let o = anon.with_auth(Auth::Role(ot.token.clone()));
    let e = o
        .read_resource("c1/server", None, None)
        .await
        .expect_err("cross-role read");
    assert_eq!(status(&e), 403, "{e}");
    let e = o
        .role("c1/server", false)
        .await
        .expect_err("cross-role role read");
    assert_eq!(status(&e), 403, "{e}");
    let e = r
        .read_resource("secret", None, None)
        .await
        .expect_err("no policy for it");
    assert_eq!(status(&e), 403, "{e}");
    let e = r
        .read_resource("yrn:yahoo:::tenant-b:resource:c1/server", None, None)
        .await
        .expect_err("cross-tenant");
    assert_eq!(status(&e), 403, "{e}");
    let e = r
        .register("c1/slave", 0, "vm-x", "", "")
        .await
        .expect_err("register into another role");
    assert_eq!(status(&e), 403, "{e}");
    let e = r
        .role_token("c1/slave", None)
        .await
        .expect_err("a token of another role");
    assert_eq!(status(&e), 403, "{e}");
    let e = b
        .resource("yrn:yahoo:::tenant-a:resource:c1/server")
        .await
        .expect_err("bob reads alice's");
    assert_eq!(status(&e), 403, "{e}");
    let e = b
        .role("yrn:yahoo:::tenant-a:role:c1/server", false)
        .await
        .expect_err("bob reads alice's role");
    assert_eq!(status(&e), 403, "{e}");
    assert_eq!(b.list("role").await.expect("bob's list"), json!([]));
    let e = r
        .create_role("c9", &[], &[])
        .await
        .expect_err("a role token cannot create roles");
    assert_eq!(status(&e), 403, "{e}");

    // Malformed input: 400 with a message, never 500.
    let utok = format!(
        "U={}",
        anon.user_token("alice", "alice-password", Some("tenant-a"))
            .await
            .expect("token")
    );
    for (method, path, body) in [
        ("POST", "/v1/role", "{not json"),
        ("POST", "/v1/role", "[1,2]"),
        ("POST", "/v1/role", "{\"role\": {\"name\": 5}}"),
        (
            "POST",
            "/v1/resource",
            "{\"resource\": {\"name\": \"r\", \"type\": \"bogus\"}}",
        ),
        ("POST", "/v1/policy", "{\"policy\": {}}"),
        ("POST", "/v1/user/tokens", "{\"auth\": 7}"),
        (
            "POST",
            "/v1/role/c1/server",
            "{\"host\": {\"host\": \"h\", \"port\": 99999}}",
        ),
        ("GET", "/v1/role/token/c1/server?expire=-5", ""),
        (
            "POST",
            "/v1/resource",
            "{\"resource\": {\"name\": \"bad//name\", \"type\": \"string\", \"data\": \"x\"}}",
        ),
        (
            "POST",
            "/v1/resource",
            "{\"resource\": {\"name\": \"t\", \"type\": \"string\", \"data\": \"{{#!k2hr3template }}{{ if 1 }}\"}}",
        ),
    ] {
        let (st, v) = raw(
            base,
            method,
            path,
            Some(&utok),
            (!body.is_empty()).then_some(body),
        )
        .await;
        assert_eq!(st, 400, "{method} {path} {body}: {st} {v}");
        assert_eq!(v["result"], json!(false), "{v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }
    let (st, v) = raw(base, "GET", "/v1/nothing-here", None, None).await;
    assert_eq!((st, &v["result"]), (404, &json!(false)), "{v}");
    let (st, v) = raw(base, "GET", "/openapi.json", None, None).await;
    assert_eq!(st, 200);
    assert!(v["paths"]["/v1/role/{role}"].is_object(), "{v}");

    // userdata and extdata.
    let ud = anon.userdata(&rt.registerpath).await.expect("userdata");
    let ud = String::from_utf8(ud).expect("text");
    assert!(
        ud.contains("multipart/mixed")
            && ud.contains("#cloud-config")
            && ud.contains("text/x-shellscript"),
        "{ud}"
    );
    assert!(
        ud.contains(&rt.token) && ud.contains("yrn:yahoo:::tenant-a:role:c1/server"),
        "{ud}"
    );
    let (st, _) = raw(
        base,
        "GET",
        &format!("/v1/userdata/{}", rt.registerpath),
        None,
        None,
    )
    .await;
    assert_eq!(st, 400, "userdata needs the cloud-init User-Agent");
    let e = anon
        .userdata("AAAA")
        .await
        .expect_err("forged registerpath");
    assert_eq!(status(&e), 403);
    let ext = anon
        .extdata("trove", &rt.registerpath, "extdata_k2hr3_trove")
        .await
        .expect("extdata");
    assert!(String::from_utf8_lossy(&ext).contains(&rt.token));
    let e = anon
        .extdata("trove", &rt.registerpath, "curl")
        .await
        .expect_err("wrong agent");
    assert_eq!(status(&e), 400);
    let gz = reqwest::Client::new()
        .get(format!("{base}/v1/userdata/{}", rt.registerpath))
        .header("user-agent", "Cloud-Init 22.4")
        .header("accept-encoding", "gzip")
        .send()
        .await
        .expect("gzip userdata");
    assert_eq!(
        gz.headers().get("content-encoding").map(|v| v.as_bytes()),
        Some(&b"gzip"[..])
    );
    let body = gz.bytes().await.expect("body");
    assert_eq!(&body[..2], &[0x1f, 0x8b], "a gzip stream");

    // The list API.
    let tree = a.list("role").await.expect("list roles");
    let c1 = tree
        .as_array()
        .expect("array")
        .iter()
        .find(|n| n["name"] == "c1")
        .expect("c1 listed");
    let kids: Vec<&str> = c1["children"]
        .as_array()
        .expect("kids")
        .iter()
        .filter_map(|k| k["name"].as_str())
        .collect();
    assert_eq!(kids, ["server", "slave"]);

    // Unregister (role token), delete by cuk (listener address), expiry and revocation.
    r.unregister("c1/server", None, "vm-self")
        .await
        .expect("unregister");
    let role = a.role("c1/server", false).await.expect("role");
    assert_eq!(role.ips.len(), 1, "{role:?}");
    anon.delete_by_cuk("vm-5").await.expect("delete by cuk");
    assert!(
        a.role("c1/server", false)
            .await
            .expect("role")
            .ips
            .is_empty()
    );
    let short = a
        .role_token("c1/server", Some(1))
        .await
        .expect("short token");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let e = anon
        .with_auth(Auth::Role(short.token.clone()))
        .read_resource("c1/server", None, None)
        .await
        .expect_err("expired");
    assert_eq!(status(&e), 401, "{e}");
    a.revoke_role_token(&rt.token).await.expect("revoke");
    let e = r
        .read_resource("c1/server", None, None)
        .await
        .expect_err("revoked");
    assert_eq!(status(&e), 401, "{e}");
    let e = anon
        .userdata(&rt.registerpath)
        .await
        .expect_err("revoked registerpath");
    assert_eq!(status(&e), 403, "{e}");

    // Delete everything.
    for role in ["c1/server/child", "c1/server", "c1/slave", "c1", "other"] {
        a.delete_role(role)
            .await
            .unwrap_or_else(|e| panic!("delete role {role}: {e}"));
    }
    let e = a.delete_role("c1").await.expect_err("gone");
    assert_eq!(status(&e), 404);
    let e = o
        .read_resource("c1/server", None, None)
        .await
        .expect_err("tokens of a deleted role");
    assert_eq!(status(&e), 401, "{e}");
    a.delete_policy("c1-read").await.expect("delete policy");
    a.delete_resource("c1/server")
        .await
        .expect("delete resource");
    a.delete_resource("secret").await.expect("delete resource");
    assert_eq!(a.list("resource").await.expect("list"), json!([]));
    assert_eq!(a.list("role").await.expect("list"), json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = start(dir.path(), None).await;
    suite(&s.base).await;
    s.stop().await;
    // State survives a restart: the user still logs in, the key still opens sealed tokens.
    let s = start(dir.path(), None).await;
    let anon = Client::new(&s.base, Auth::None, opts()).expect("client");
    anon.user_token("alice", "alice-password", Some("tenant-a"))
        .await
        .expect("after restart");
    s.stop().await;
    let key = std::fs::metadata(dir.path().join("k2hr3.key")).expect("key file");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        key.permissions().mode() & 0o777,
        0o600,
        "the service key is private"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_on_postgresql() {
    let Some(url) = std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| u.starts_with("postgres"))
    else {
        eprintln!("SKIP suite_on_postgresql: DATABASE_URL does not name a PostgreSQL database");
        return;
    };
    use sqlx::Connection;
    let name = format!("k2hr3_test_{}_{}", std::process::id(), fastrand_suffix());
    let mut admin = match sqlx::PgConnection::connect(&url).await {
        Ok(c) => c,
        Err(e) => panic!("DATABASE_URL is set but PostgreSQL is not reachable: {e}"),
    };
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("create database");
    let base = url
        .rsplit_once('/')
        .map(|(b, _)| b)
        .expect("a database URL with /db");
    let dir = tempfile::tempdir().expect("tempdir");
    let s = start(dir.path(), Some(format!("{base}/{name}"))).await;
    let r = tokio::spawn({
        let b = s.base.clone();
        async move { suite(&b).await }
    })
    .await;
    s.stop().await;
    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await;
    if let Err(e) = r {
        std::panic::resume_unwind(e.into_panic());
    }
}

fn fastrand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64 % 1_000_000_007)
        .unwrap_or(0)
}

/// A stand-in Keystone v3: `ks-good` is alice's token with projects tenant-k and ops.
async fn fake_keystone() -> (String, tokio::task::JoinHandle<()>) {
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::get;
    let good =
        |h: &HeaderMap| h.get("x-auth-token").and_then(|v| v.to_str().ok()) == Some("ks-good");
    let app = axum::Router::new()
        .route(
            "/v3/auth/tokens",
            get(move |h: HeaderMap| async move {
                let subject_ok = h.get("x-subject-token").and_then(|v| v.to_str().ok()) == Some("ks-good");
                if good(&h) && subject_ok {
                    (StatusCode::OK, axum::Json(json!({"token": {"user": {"name": "ks-alice", "domain": {"name": "Default"}},
                        "project": {"name": "tenant-k"}, "expires_at": "2099-01-01T00:00:00Z"}})))
                } else {
                    (StatusCode::NOT_FOUND, axum::Json(json!({"error": {"code": 404}})))
                }
            }),
        )
        .route(
            "/v3/auth/projects",
            get(move |h: HeaderMap| async move {
                if good(&h) {
                    (StatusCode::OK, axum::Json(json!({"projects": [{"name": "tenant-k"}, {"name": "ops"}]})))
                } else {
                    (StatusCode::UNAUTHORIZED, axum::Json(json!({"error": {"code": 401}})))
                }
            }),
        );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    let task = tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    (url, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keystone_tokens_become_user_tokens() {
    let (ks, ks_task) = fake_keystone().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let svc = Service::open(Config {
        listen: addr,
        data_dir: dir.path().to_path_buf(),
        keystone_url: Some(ks),
        ..Config::default()
    })
    .await
    .expect("open");
    let task = tokio::spawn(async move { svc.serve(listener, std::future::pending()).await });
    let base = format!("http://{addr}");
    let os = Client::new(&base, Auth::User("ks-good".into()), opts()).expect("client");
    let scoped = os
        .scoped_token("tenant-k")
        .await
        .expect("a scoped token from a Keystone token");
    let u = os.with_auth(Auth::User(scoped));
    let info = u.token_info().await.expect("info");
    assert_eq!(info["user"], json!("ks-alice"));
    u.create_role("from-keystone", &[], &[])
        .await
        .expect("the scoped token works");
    let e = os
        .scoped_token("not-mine")
        .await
        .expect_err("not a project of the user");
    assert_eq!(status(&e), 403, "{e}");
    let bad = os.with_auth(Auth::User("ks-forged".into()));
    let e = bad
        .scoped_token("tenant-k")
        .await
        .expect_err("Keystone refuses it");
    assert_eq!(status(&e), 401, "{e}");
    // The Keystone token itself is not a token of this service.
    let e = os.token_info().await.expect_err("not stored");
    assert_eq!(status(&e), 401, "{e}");
    let e = os
        .with_auth(Auth::User("ks-good".into()))
        .user_token("ks-alice", "!external", Some("tenant-k"))
        .await;
    assert_eq!(
        status(&e.expect_err("no password login for Keystone users")),
        401
    );
    task.abort();
    ks_task.abort();
}
