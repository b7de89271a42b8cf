//! Slave (client host) user-data: a cloud-init document that makes a booted VM a K2HDKC
//! slave of one cluster with nothing configured by hand. It registers the host in
//! `<cluster>/slave` with the slave role token (`k2hr3 register`, the instance id from
//! cloud-init as its CUK), writes the gateway's cluster file from the slave resource and keeps
//! it current (`k2hr3 get-resource --watch`; the gateway re-reads a changed file, so grow and
//! shrink reach it without a restart), runs `k2hdkc gateway` under systemd with a memcached
//! port on the host, and unregisters when the watcher stops (shutdown).
//!
//! Invariant: secrets (role token, cluster secret) are only in 0600 files, written base64 so
//! they never appear in cloud-init's logs of the document's text.

/// What a slave needs.
#[derive(Debug, Clone)]
pub struct SlaveSpec {
    /// The cluster's name (for comments and unit descriptions).
    pub cluster: String,
    /// The K2HR3 API as client hosts reach it.
    pub k2hr3_url: String,
    /// `yrn:yahoo:::<tenant>:role:<cluster>/slave`.
    pub role: String,
    /// The slave role token.
    pub role_token: String,
    /// `yrn:yahoo:::<tenant>:resource:<cluster>/slave`.
    pub resource: String,
    /// The cluster secret (gateways prove it to nodes).
    pub secret: String,
    /// Where the gateway's memcached port listens on the host.
    pub memcached_listen: String,
    /// Seconds between reads of the resource.
    pub poll_secs: u32,
}

fn b64(s: &str) -> String {
    openssl::base64::encode_block(s.as_bytes())
}

fn file(out: &mut String, path: &str, perm: &str, content: &str) {
    out.push_str(&format!(
        "  - path: {path}\n    permissions: '{perm}'\n    owner: root:root\n    encoding: b64\n    content: {}\n",
        b64(content)
    ));
}

/// The cloud-init document.
pub fn slave_user_data(s: &SlaveSpec) -> String {
    let watcher = format!(
        "[Unit]\nDescription=k2hdkc slave: follow cluster {c} from K2HR3\nAfter=network-online.target\nWants=network-online.target\n\n\
         [Service]\nType=exec\n\
         ExecStart=/usr/bin/k2hr3 get-resource --watch --interval {p} --resource {r} --output /etc/k2hdkc/slave.ini --mode 644\n\
         ExecStopPost=/usr/bin/k2hr3 unregister --keep-state\n\
         Restart=always\nRestartSec=5\nNoNewPrivileges=yes\nProtectSystem=full\nPrivateTmp=yes\n\n\
         [Install]\nWantedBy=multi-user.target\n",
        c = s.cluster,
        p = s.poll_secs.max(1),
        r = s.resource,
    );
    let gateway = format!(
        "[Unit]\nDescription=k2hdkc slave gateway of cluster {c}\nAfter=k2hdkc-slave-config.service\nRequires=k2hdkc-slave-config.service\n\n\
         [Service]\nType=exec\n\
         ExecStart=/usr/bin/k2hdkc gateway --chmpx-conf /etc/k2hdkc/slave.ini --secret-file ${{CREDENTIALS_DIRECTORY}}/cluster.secret --memcached-listen {m}\n\
         Restart=always\nRestartSec=2\nDynamicUser=yes\nNoNewPrivileges=yes\nProtectSystem=strict\nProtectHome=yes\nPrivateTmp=yes\n\
         LoadCredential=cluster.secret:/etc/k2hdkc/cluster.secret\n\n\
         [Install]\nWantedBy=multi-user.target\n",
        c = s.cluster,
        m = s.memcached_listen,
    );
    let mut out = format!(
        "#cloud-config\n# k2hdkc slave host of cluster {} (from k2hdkc-dbaas cluster slave-userdata)\nwrite_files:\n",
        s.cluster
    );
    file(
        &mut out,
        "/etc/antpickax/slave-role-token",
        "0600",
        &s.role_token,
    );
    file(&mut out, "/etc/k2hdkc/cluster.secret", "0600", &s.secret);
    file(
        &mut out,
        "/etc/systemd/system/k2hdkc-slave-config.service",
        "0644",
        &watcher,
    );
    file(
        &mut out,
        "/etc/systemd/system/k2hdkc-gateway.service",
        "0644",
        &gateway,
    );
    out.push_str(&format!(
        "runcmd:\n\
         \x20 - [/usr/bin/k2hr3, register, --api, {api}, --role, {role}, --token-file, /etc/antpickax/slave-role-token]\n\
         \x20 - [/usr/bin/k2hr3, get-resource, --resource, {res}, --output, /etc/k2hdkc/slave.ini, --mode, '644']\n\
         \x20 - [systemctl, daemon-reload]\n\
         \x20 - [systemctl, enable, --now, k2hdkc-slave-config.service, k2hdkc-gateway.service]\n",
        api = yaml(&s.k2hr3_url),
        role = yaml(&s.role),
        res = yaml(&s.resource),
    ));
    out
}

fn yaml(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialise")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn example() -> SlaveSpec {
        SlaveSpec {
            cluster: "c1".into(),
            k2hr3_url: "http://10.0.0.2:18080".into(),
            role: "yrn:yahoo:::demo:role:c1/slave".into(),
            role_token: "example-role-token".into(),
            resource: "yrn:yahoo:::demo:resource:c1/slave".into(),
            secret: "example-cluster-secret-0123456789".into(),
            memcached_listen: "127.0.0.1:11211".into(),
            poll_secs: 10,
        }
    }

    fn example_server() -> crate::compute::BootSpec {
        crate::compute::BootSpec {
            instance_id: "3f0c2a9e-0001-4000-8000-000000000001".into(),
            ip: String::new(),
            flavor_id: "1".into(),
            volume_size: 1,
            rpc_key: "example-rpc-key".into(),
            secret: "example-cluster-secret-0123456789".into(),
            k2hr3_url: "http://10.0.0.2:18080".into(),
            role_token: "example-role-token".into(),
            resource: "yrn:yahoo:::demo:resource:c1/server".into(),
            conductor_url: "http://10.0.0.2:8779".into(),
        }
    }

    fn deploy(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/cloud-init")
            .join(name)
    }

    /// The rendered examples in deploy/cloud-init/ are what this code renders (regenerate
    /// with `K2HDKC_WRITE_EXAMPLES=1 cargo test -p k2hdkc-dbaas userdata`).
    #[test]
    fn deploy_examples_are_current() {
        for (name, text) in [
            ("slave.example.yaml", slave_user_data(&example())),
            (
                "server.example.yaml",
                crate::openstack::server_user_data(&example_server()),
            ),
        ] {
            let p = deploy(name);
            if std::env::var_os("K2HDKC_WRITE_EXAMPLES").is_some() {
                std::fs::write(&p, &text).expect("write example");
            }
            let on_disk = std::fs::read_to_string(&p).unwrap_or_default();
            assert_eq!(on_disk, text, "{} is stale", p.display());
        }
    }

    /// `cloud-init schema` (Debian's cloud-init) accepts both documents.
    #[test]
    fn cloud_init_schema_accepts_them() {
        let Ok(out) = std::process::Command::new("cloud-init")
            .arg("--version")
            .output()
        else {
            eprintln!(
                "SKIP cloud_init_schema_accepts_them: cloud-init is not installed (apt-get install cloud-init)"
            );
            return;
        };
        assert!(out.status.success());
        for name in ["slave.example.yaml", "server.example.yaml"] {
            let out = std::process::Command::new("cloud-init")
                .args(["schema", "--config-file"])
                .arg(deploy(name))
                .output()
                .expect("cloud-init schema");
            assert!(
                out.status.success(),
                "{name}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    #[test]
    fn secrets_are_only_in_private_files() {
        let ud = slave_user_data(&example());
        assert!(ud.starts_with("#cloud-config\n"));
        assert!(!ud.contains("example-role-token") && !ud.contains("example-cluster-secret"));
        assert_eq!(ud.matches("permissions: '0600'").count(), 2);
        assert!(ud.contains("k2hdkc-gateway.service"));
    }
}
