use k2hdkc_node::{ServerConfig, StorageMode};

#[test]
fn the_deploy_example_parses_and_validates() {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/config/k2hdkc-server.toml");
    let c = ServerConfig::from_file(&p).unwrap();
    c.validate().unwrap();
    assert_eq!(c.storage.mode, StorageMode::File);
    assert_eq!(c.listen.memcached.unwrap().port(), 11211);
    c.store_config().unwrap();
    // The example runs alone; its [cluster] section documents the settings.
    assert!(!c.cluster.enabled());
    assert_eq!(c.cluster.cluster, "k2hdkc");
    assert_eq!(c.cluster.failure_timeout_ms, 3000);
    assert_eq!(c.cluster.token().unwrap(), None);
    // The same file turned into a cluster node validates too.
    let mut joined = c.clone();
    joined.cluster.join = vec!["127.0.0.1:8020".into()];
    joined.storage.node_id = 0;
    joined.validate().unwrap();
    assert_ne!(joined.node_id(), 0);
}

#[test]
fn bad_cluster_settings_are_refused() {
    let parse = |s: &str| toml::from_str::<ServerConfig>(s).unwrap();
    let base = "[listen]\nmemcached = \"127.0.0.1:1\"\n";
    let c = parse(&format!("{base}[cluster]\njoin = [\"127.0.0.1:2\"]\n"));
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .contains("listen.native")
    );
    let c = parse(&format!(
        "{base}native = \"127.0.0.1:3\"\n[cluster]\ngateway = true\n"
    ));
    assert!(c.validate().unwrap_err().to_string().contains("join"));
    let c = parse(&format!(
        "{base}native = \"127.0.0.1:3\"\n[cluster]\njoin = [\"x:1\"]\nheartbeat_ms = 500\nfailure_timeout_ms = 600\n"
    ));
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .contains("failure_timeout_ms")
    );
    // A secret that is too short is refused when it is read.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("s");
    std::fs::write(&f, "short").unwrap();
    let mut c = parse(base);
    c.cluster.secret_file = Some(f.clone());
    assert!(
        c.cluster
            .token()
            .unwrap_err()
            .to_string()
            .contains("16 bytes")
    );
    std::fs::write(&f, "a-long-enough-cluster-secret\n").unwrap();
    let t1 = c.cluster.token().unwrap().unwrap();
    c.cluster.cluster = "other".into();
    let t2 = c.cluster.token().unwrap().unwrap();
    assert_ne!(t1, t2, "the credential is bound to the cluster name");
    assert_eq!(t1.len(), 64);
}

#[test]
fn bad_configurations_are_refused_with_a_reason() {
    let parse = |s: &str| toml::from_str::<ServerConfig>(s);
    assert!(parse("[storage]\nmode = \"disk\"\n").is_err());
    assert!(parse("[storage]\nunknown_field = 1\n").is_err());
    let c = parse("[storage]\nmode = \"file\"\n[listen]\nmemcached = \"127.0.0.1:1\"\n").unwrap();
    assert!(c.validate().unwrap_err().to_string().contains("data_dir"));
    let c =
        parse("[storage]\nfsync = \"sometimes\"\n[listen]\nmemcached = \"127.0.0.1:1\"\n").unwrap();
    assert!(c.validate().is_err());
    let c = parse("[listen]\n").unwrap();
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .contains("nothing to serve")
    );
}

#[test]
fn the_deploy_chmpx_example_parses_and_applies() {
    use k2hdkc_node::chmpx::{self, SelfSelector};
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/config/k2hdkc-cluster.ini");
    let c = chmpx::load(&p).unwrap();
    assert_eq!(c.group, "k2hdkc");
    assert_eq!(c.replication(), Some((3, 2, 2)));
    assert_eq!(c.servers.len(), 3);
    assert_eq!(c.servers[0].addr(), "10.0.0.11:8020");
    assert_eq!(c.servers[1].id, "node-2");
    assert_eq!(c.desired().servers, ["node-1", "node-2", "node-3"]);
    // Applied as the node whose CUK is the second one (its address is not on this host, so
    // only the name and cluster settings are checked, not the listeners).
    let me = c
        .find_self(&SelfSelector {
            cuk: Some("3f0c2a9e-0002".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(me.zone.as_deref(), Some("rack-b"));
    assert_eq!(me.memcached_port, Some(11211));
    // The same file as a slave makes a gateway that knows every server.
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("MODE            = SERVER", "MODE            = SLAVE");
    let slave = chmpx::parse(&text, chmpx::Syntax::Ini).unwrap();
    let mut gw = ServerConfig::default();
    slave.apply(&mut gw, &SelfSelector::default()).unwrap();
    assert!(gw.cluster.gateway);
    assert_eq!(gw.cluster.join.len(), 3);
    assert_eq!(gw.listen.memcached.unwrap().port(), 11211);
}
