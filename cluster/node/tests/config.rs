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
