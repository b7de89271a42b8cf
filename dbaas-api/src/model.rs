//! The control plane's objects (stored as documents, [`crate::store`]) and the fixed catalog:
//! the `k2hdkc` datastore, its version, the local flavors and the configuration parameters.
//! Trove's status derivation lives here too, so the API and the CLI agree on it.
//!
//! A standalone instance is a one-member cluster marked `hidden`: provisioning, backup and
//! restore have one code path; hidden clusters are never listed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::store::Doc;

/// The datastore's type name.
pub const DATASTORE: &str = "k2hdkc";
/// Its stable id.
pub const DATASTORE_ID: &str = "a2d6f1c4-0c7e-4b5e-9a61-6b2d0c1e2f01";
/// The one version's stable id.
pub const VERSION_ID: &str = "d1c0e8b2-5f4a-4c3b-8e2d-7a9b6c5d4e01";
/// The one version's name.
pub const VERSION_NAME: &str = env!("CARGO_PKG_VERSION");

/// Seconds without a heartbeat after which a guest counts as unreachable (Trove's
/// `agent_heartbeat_expiry`).
pub const HEARTBEAT_EXPIRY: i64 = 90;

/// One host of a cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Instance {
    pub id: String,
    pub project: String,
    pub name: String,
    pub cluster_id: String,
    pub flavor_id: String,
    pub volume_size: u32,
    /// Loopback address (local) or the server's address: where clients connect.
    #[serde(default)]
    pub ip: String,
    /// Trove task: BUILDING, NONE, REBOOTING, RESIZING, DELETING, ERROR.
    pub task: String,
    /// The guest's last service status description (`healthy`, `instance ready`, ...).
    pub service_status: String,
    /// The guest's `sent` of the last accepted heartbeat.
    #[serde(default)]
    pub heartbeat_sent: f64,
    /// When we received it.
    #[serde(default)]
    pub heartbeat_at: i64,
    pub created: i64,
    pub updated: i64,
    #[serde(default)]
    pub deleted: bool,
    /// The per-instance RPC key, sealed with the control plane's key.
    pub rpc_key: String,
    /// The compute driver's handle (local: pid; openstack: server id).
    #[serde(default)]
    pub server: Option<String>,
    #[serde(default)]
    pub fault: Option<String>,
    /// A backup to restore at prepare.
    #[serde(default)]
    pub restore_backup: Option<String>,
    #[serde(default)]
    pub configuration_id: Option<String>,
}

/// A cluster (or a standalone instance's hidden one).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cluster {
    pub id: String,
    pub project: String,
    pub name: String,
    #[serde(default)]
    pub hidden: bool,
    /// Trove cluster task name: BUILDING, NONE, GROWING_CLUSTER, SHRINKING_CLUSTER, DELETING.
    pub task: String,
    /// Member instance ids, in K2HR3 order (the first started the cluster).
    pub members: Vec<String>,
    /// The cluster secret, sealed.
    pub secret: String,
    /// Role token of `<cluster>/server`, sealed (empty until made).
    #[serde(default)]
    pub server_token: String,
    /// Role token of `<cluster>/slave`, sealed (empty until made).
    #[serde(default)]
    pub slave_token: String,
    #[serde(default)]
    pub configuration_id: Option<String>,
    pub created: i64,
    pub updated: i64,
    #[serde(default)]
    pub deleted: bool,
    #[serde(default)]
    pub fault: Option<String>,
}

/// A backup: one archive per member, in one directory of the backup store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Backup {
    pub id: String,
    pub project: String,
    pub name: String,
    pub description: String,
    pub instance_id: String,
    pub cluster_id: String,
    /// NEW, BUILDING, COMPLETED, FAILED, DELETE_FAILED.
    pub status: String,
    /// Per-member state from `update_backup`.
    #[serde(default)]
    pub members: BTreeMap<String, String>,
    /// Size in GB (Trove's unit), summed over members.
    #[serde(default)]
    pub size: Option<f64>,
    #[serde(default)]
    pub location: String,
    pub created: i64,
    pub updated: i64,
    #[serde(default)]
    pub deleted: bool,
    #[serde(default)]
    pub parent_id: Option<String>,
}

/// A configuration group: values of [`PARAMETERS`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Configuration {
    pub id: String,
    pub project: String,
    pub name: String,
    pub description: String,
    pub values: Map<String, Value>,
    pub created: i64,
    pub updated: i64,
    #[serde(default)]
    pub deleted: bool,
}

macro_rules! doc {
    ($t:ty, $k:literal) => {
        impl Doc for $t {
            const KIND: &'static str = $k;
            fn id(&self) -> &str {
                &self.id
            }
            fn project(&self) -> &str {
                &self.project
            }
            fn name(&self) -> &str {
                &self.name
            }
            fn deleted(&self) -> bool {
                self.deleted
            }
            fn created(&self) -> i64 {
                self.created
            }
        }
    };
}
doc!(Instance, "instance");
doc!(Cluster, "cluster");
doc!(Backup, "backup");
doc!(Configuration, "configuration");

/// A flavor of the local catalog.
#[derive(Debug, Clone, Copy)]
pub struct Flavor {
    pub id: u32,
    pub name: &'static str,
    pub ram: u32,
    pub vcpus: u32,
    pub disk: u32,
}

/// The local driver's flavors.
pub const FLAVORS: &[Flavor] = &[
    Flavor {
        id: 1,
        name: "k2hdkc.small",
        ram: 512,
        vcpus: 1,
        disk: 1,
    },
    Flavor {
        id: 2,
        name: "k2hdkc.medium",
        ram: 1024,
        vcpus: 1,
        disk: 2,
    },
    Flavor {
        id: 3,
        name: "k2hdkc.large",
        ram: 2048,
        vcpus: 2,
        disk: 4,
    },
];

/// A flavor by id (`"1"`) or name.
pub fn flavor(id: &str) -> Option<Flavor> {
    FLAVORS
        .iter()
        .copied()
        .find(|f| f.id.to_string() == id || f.name == id)
}

/// A configuration parameter.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    pub kind: &'static str,
    pub min: i64,
    pub max: i64,
    pub restart_required: bool,
    pub description: &'static str,
}

/// What a configuration group may set: the cluster file's GLOBAL values.
pub const PARAMETERS: &[Param] = &[
    Param {
        name: "replicas",
        kind: "integer",
        min: 1,
        max: 9,
        restart_required: false,
        description: "copies of each key (N), capped by the node count",
    },
    Param {
        name: "write_quorum",
        kind: "integer",
        min: 1,
        max: 9,
        restart_required: false,
        description: "replicas that acknowledge a write (W)",
    },
    Param {
        name: "read_quorum",
        kind: "integer",
        min: 1,
        max: 9,
        restart_required: false,
        description: "replicas asked on a read (R)",
    },
    Param {
        name: "automerge",
        kind: "boolean",
        min: 0,
        max: 1,
        restart_required: false,
        description: "membership follows the cluster file automatically",
    },
];

/// Check configuration values against [`PARAMETERS`].
pub fn check_values(values: &Map<String, Value>) -> Result<(), String> {
    for (k, v) in values {
        let Some(p) = PARAMETERS.iter().find(|p| p.name == k) else {
            return Err(format!(
                "the parameter {k:?} is not a k2hdkc parameter (known: {})",
                PARAMETERS
                    .iter()
                    .map(|p| p.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        match p.kind {
            "integer" => match v.as_i64() {
                Some(n) if (p.min..=p.max).contains(&n) => {}
                _ => {
                    return Err(format!(
                        "{k} must be an integer from {} to {}",
                        p.min, p.max
                    ));
                }
            },
            _ => {
                if !(v.is_boolean() || v.as_i64().is_some_and(|n| n == 0 || n == 1)) {
                    return Err(format!("{k} must be true or false"));
                }
            }
        }
    }
    Ok(())
}

/// Trove's naive ISO time.
pub fn iso(t: i64) -> String {
    let mut s = k2hdkc_k2hr3::api::iso(t);
    s.pop(); // Trove's times are naive: no `Z`.
    s
}

/// Trove's `links` for a resource.
pub fn links(base: &str, project: &str, res: &str, id: &str) -> Value {
    json!([
        { "href": format!("{base}/v1.0/{project}/{res}/{id}"), "rel": "self" },
        { "href": format!("{base}/{res}/{id}"), "rel": "bookmark" },
    ])
}

impl Instance {
    /// Whether the last heartbeat is recent.
    pub fn heartbeat_fresh(&self, now: i64) -> bool {
        self.heartbeat_at > 0 && now - self.heartbeat_at <= HEARTBEAT_EXPIRY
    }

    /// Trove's `status` (`InstanceStatus`), given whether its host is up and whether a
    /// backup of it runs.
    pub fn status(&self, now: i64, host_up: bool, backing_up: bool) -> &'static str {
        match self.task.as_str() {
            "BUILDING" => "BUILD",
            "DELETING" => "SHUTDOWN",
            "REBOOTING" => "REBOOT",
            "RESIZING" => "RESIZE",
            "ERROR" => "ERROR",
            _ if backing_up => "BACKUP",
            _ if !host_up => "SHUTDOWN",
            _ => match self.operating_status(now, host_up) {
                "SHUTDOWN" => "SHUTDOWN",
                "FAILED" | "ERROR" => "ERROR",
                _ => "ACTIVE",
            },
        }
    }

    /// Trove's `operating_status`: the service status's API name, `""` while a task runs.
    pub fn operating_status(&self, now: i64, host_up: bool) -> &'static str {
        if self.task != "NONE" || !host_up {
            return "";
        }
        if !self.heartbeat_fresh(now) {
            return "ERROR";
        }
        match self.service_status.as_str() {
            "healthy" => "HEALTHY",
            "running" => "ACTIVE",
            "shutdown" | "crashed" | "paused" => "SHUTDOWN",
            "failed to spawn" => "FAILED",
            "building" | "instance ready" => "BUILD",
            "new" => "NEW",
            "restart required" => "RESTART_REQUIRED",
            "restarting" | "upgrading" => "RESTARTING",
            "blocked" => "BLOCKED",
            _ => "ERROR",
        }
    }
}

/// Trove's cluster task id for a task name.
pub fn cluster_task_id(name: &str) -> (u32, &'static str) {
    match name {
        "NONE" => (1, "No tasks for the cluster."),
        "BUILDING" => (2, "Building the initial cluster."),
        "DELETING" => (3, "Deleting the cluster."),
        "GROWING_CLUSTER" => (5, "Increasing the size of the cluster."),
        "SHRINKING_CLUSTER" => (6, "Decreasing the size of the cluster."),
        "RESTARTING_CLUSTER" => (8, "Restarting the cluster."),
        "UPDATING_CLUSTER" => (9, "Updating the cluster."),
        _ => (1, "No tasks for the cluster."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_times_are_naive_utc() {
        assert_eq!(iso(0), "1970-01-01T00:00:00");
        assert_eq!(iso(1_714_557_600), "2024-05-01T10:00:00");
        assert_eq!(iso(951_782_400), "2000-02-29T00:00:00");
    }

    #[test]
    fn configuration_values_are_checked() {
        let ok: Map<String, Value> =
            serde_json::from_str(r#"{"replicas":3,"write_quorum":2,"automerge":true}"#).unwrap();
        assert!(check_values(&ok).is_ok());
        for bad in [
            r#"{"max_connections":1}"#,
            r#"{"replicas":0}"#,
            r#"{"replicas":"3"}"#,
            r#"{"automerge":"yes"}"#,
        ] {
            let v: Map<String, Value> = serde_json::from_str(bad).unwrap();
            assert!(check_values(&v).is_err(), "{bad}");
        }
    }

    #[test]
    fn status_follows_trove() {
        let mut i = Instance {
            id: "i".into(),
            project: "p".into(),
            name: "n".into(),
            cluster_id: "c".into(),
            flavor_id: "1".into(),
            volume_size: 1,
            ip: String::new(),
            task: "BUILDING".into(),
            service_status: "new".into(),
            heartbeat_sent: 0.0,
            heartbeat_at: 0,
            created: 0,
            updated: 0,
            deleted: false,
            rpc_key: String::new(),
            server: None,
            fault: None,
            restore_backup: None,
            configuration_id: None,
        };
        assert_eq!(i.status(100, true, false), "BUILD");
        assert_eq!(i.operating_status(100, true), "");
        i.task = "NONE".into();
        i.service_status = "healthy".into();
        i.heartbeat_at = 95;
        assert_eq!(
            (i.status(100, true, false), i.operating_status(100, true)),
            ("ACTIVE", "HEALTHY")
        );
        assert_eq!(i.status(100, true, true), "BACKUP");
        assert_eq!(i.status(100, false, false), "SHUTDOWN");
        // stale heartbeat
        assert_eq!(i.status(1000, true, false), "ERROR");
        i.heartbeat_at = 995;
        i.service_status = "shutdown".into();
        assert_eq!(i.status(1000, true, false), "SHUTDOWN");
    }
}
