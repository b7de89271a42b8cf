//! deploy/: every systemd unit is sandboxed and restarts, and its ExecStart is a command line
//! our binaries accept (run with `--help` appended: clap refuses unknown flags first).

use std::path::Path;
use std::process::Command;

use system_tests::bin;

fn units() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd");
    let mut v: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("deploy/systemd")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".service"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read_to_string(e.path()).expect("unit"),
            )
        })
        .collect();
    v.sort();
    v
}

fn value<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .collect()
}

#[test]
fn systemd_units_are_sandboxed_and_their_commands_parse() {
    let units = units();
    let names: Vec<&str> = units.iter().map(|(n, _)| n.as_str()).collect();
    for want in [
        "k2hdkc-server.service",
        "k2hdkc-gateway.service",
        "k2hdkc-guest-agent.service",
        "k2hdkc-dbaas.service",
        "k2hr3-get-resource.service",
    ] {
        assert!(names.contains(&want), "deploy/systemd/{want} is missing");
    }
    for (name, u) in &units {
        for section in ["[Unit]", "[Service]", "[Install]"] {
            assert!(u.contains(section), "{name}: no {section}");
        }
        assert_eq!(value(u, "NoNewPrivileges"), ["yes"], "{name}");
        assert!(
            !value(u, "ProtectSystem").is_empty(),
            "{name}: ProtectSystem"
        );
        assert!(!value(u, "Restart").is_empty(), "{name}: Restart");
        let exec = value(u, "ExecStart");
        assert_eq!(exec.len(), 1, "{name}: one ExecStart");
        let mut words: Vec<String> = exec[0]
            .split_whitespace()
            .map(|w| w.replace("${CREDENTIALS_DIRECTORY}", "/run/credentials/x"))
            .collect();
        let prog = words.remove(0);
        let prog = prog.strip_prefix("/usr/bin/").unwrap_or_else(|| {
            panic!("{name}: ExecStart runs {prog}, not one of ours in /usr/bin")
        });
        words.push("--help".into());
        let out = Command::new(bin(prog))
            .args(&words)
            .output()
            .expect("run the ExecStart");
        assert!(
            out.status.success(),
            "{name}: `{prog} {}` is refused: {}",
            words.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(stop) = value(u, "ExecStopPost").first() {
            let mut w: Vec<String> = stop.split_whitespace().map(String::from).collect();
            let p = w.remove(0);
            w.push("--help".into());
            let out = Command::new(bin(p.trim_start_matches("/usr/bin/")))
                .args(&w)
                .output()
                .expect("ExecStopPost");
            assert!(out.status.success(), "{name}: ExecStopPost refused");
        }
    }
}

#[test]
fn deploy_scripts_are_valid_shell_and_answer_help() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    for s in [
        "openstack/setup-openstack.sh",
        "trove/register-datastore.sh",
    ] {
        let p = root.join(s);
        let out = Command::new("bash")
            .arg("-n")
            .arg(&p)
            .output()
            .expect("bash -n");
        assert!(
            out.status.success(),
            "{s}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(&p).expect("script");
        assert!(
            text.starts_with("#!/usr/bin/env bash\n") && text.contains("set -euo pipefail"),
            "{s}"
        );
    }
    let rules: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("trove/validation-rules.json")).expect("rules"),
    )
    .expect("validation-rules.json is JSON");
    let names: Vec<&str> = rules["configuration-parameters"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["replicas", "write_quorum", "read_quorum", "automerge"],
        "the same parameters as the API's"
    );
}
