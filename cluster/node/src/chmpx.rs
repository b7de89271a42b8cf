//! Cluster configuration in the CHMPX form: one file (INI, YAML or JSON) with the sections
//! `GLOBAL`, `SVRNODE` (one per server node), `SLVNODE` (client hosts) and `K2HDKC`, describing
//! a whole cluster, so the control plane can generate one file for every node.
//!
//! Owns: parsing the three syntaxes into one document, validating it into [`ChmpxConfig`],
//! finding which server entry is this node, and applying it to a [`ServerConfig`]. The file is
//! re-read while the node runs (see `server.rs`); [`ChmpxConfig::desired`] is what a re-read
//! hands to the cluster, which then attaches, detaches and re-replicates to match (this is how
//! the DBaaS grows and shrinks a cluster).
//!
//! Invariants: every key is one CHMPX/K2HDKC knows (ours or accepted and ignored; a typo is an
//! error, not silence); a file that does not validate changes nothing; server ids are unique.
//!
//! Mapping: `GROUP` is the cluster name; `MODE` SERVER or SLAVE (a gateway); `REPLICA` counts
//! copies beyond the first (CHMPX's meaning), so `REPLICA = 2` is N = 3; `PORT` is the native
//! (cluster) port, `CTLPORT` the admin HTTP port; a node is `NAME:PORT`, named by
//! `CUSTOM_ID_SEED`, else its `CUK`, else `NAME:CTLPORT`; `AUTOMERGE` attaches listed nodes and
//! completes movements without `ctl`. Extensions (not in CHMPX): `WRITE_QUORUM`,
//! `READ_QUORUM`, `MEMCACHED_PORT` (GLOBAL or per server), `ZONE` and `CAPACITY` per server.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value as Json};

use crate::config::{ConfigError, ServerConfig, StorageMode};

/// `MODE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A server node (holds data).
    Server,
    /// A slave: a gateway on a client host.
    Slave,
}

/// One `SVRNODE` (after `NAME` expansion).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerNode {
    /// Host name or address.
    pub host: String,
    /// Native (cluster) port.
    pub port: u16,
    /// Admin HTTP port.
    pub ctlport: u16,
    /// memcached port, if the node serves one.
    pub memcached_port: Option<u16>,
    /// Instance id.
    pub cuk: Option<String>,
    /// Node name in the layout.
    pub id: String,
    /// Failure domain.
    pub zone: Option<String>,
    /// Relative capacity.
    pub capacity: Option<u32>,
}

impl ServerNode {
    /// Native address `host:port`.
    pub fn addr(&self) -> String {
        join_host_port(&self.host, self.port)
    }
}

/// One `SLVNODE`: which client hosts may connect to the servers' cluster port (gateways and
/// native clients; see [`Admission`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlaveNode {
    /// Host name, address or pattern.
    pub name: String,
    /// Control port.
    pub ctlport: Option<u16>,
    /// Instance id (pattern allowed).
    pub cuk: Option<String>,
}

/// The `K2HDKC` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct K2hdkcSection {
    /// `K2HTYPE`.
    pub storage: Option<StorageMode>,
    /// `K2HFILE`: the data directory (a `.k2h` file path names its directory).
    pub data_dir: Option<PathBuf>,
    /// `PASSPHRASES` (repeatable).
    pub pass_phrases: Vec<String>,
    /// `PASSFILE`.
    pub pass_file: Option<PathBuf>,
    /// `EXPIRE`, seconds.
    pub expire: Option<u32>,
    /// `HISTORY`.
    pub history: Option<bool>,
}

/// A validated CHMPX-style cluster description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChmpxConfig {
    /// `GROUP`.
    pub group: String,
    /// `MODE`, if given.
    pub mode: Option<Mode>,
    /// Copies in all (`REPLICA` + 1), if given.
    pub replicas: Option<u8>,
    /// `WRITE_QUORUM`.
    pub write_quorum: Option<u8>,
    /// `READ_QUORUM`.
    pub read_quorum: Option<u8>,
    /// `AUTOMERGE`, if given.
    pub automerge: Option<bool>,
    /// `SSL = yes` with its files.
    pub tls: Option<ChmpxTls>,
    /// `SELFCTLPORT`.
    pub self_ctlport: Option<u16>,
    /// `SELFCUK`.
    pub self_cuk: Option<String>,
    /// `MEMCACHED_PORT` for every node without its own.
    pub memcached_port: Option<u16>,
    /// Server nodes, in file order (the first one starts the cluster).
    pub servers: Vec<ServerNode>,
    /// Slave entries.
    pub slaves: Vec<SlaveNode>,
    /// The `K2HDKC` section.
    pub k2hdkc: K2hdkcSection,
}

/// GLOBAL's TLS settings: `CAPATH` (a PEM file of the cluster CA), `SERVER_CERT` /
/// `SERVER_PRIKEY` (what servers present), `SLAVE_CERT` / `SLAVE_PRIKEY` (what gateways
/// present), `SSL_MIN_VER`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChmpxTls {
    /// CA file.
    pub ca: PathBuf,
    /// Server certificate and key.
    pub server: Option<(PathBuf, PathBuf)>,
    /// Slave (gateway) certificate and key.
    pub slave: Option<(PathBuf, PathBuf)>,
    /// "1.3" for TLSv1.3 only.
    pub min_version: Option<String>,
}

/// What a re-read file asks of the running cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// Server node names that should be in service.
    pub servers: Vec<String>,
    /// Their native addresses (seeds for gateways and joins).
    pub addrs: Vec<String>,
    /// (replicas, write quorum, read quorum), if the file sets replicas.
    pub replication: Option<(u8, u8, u8)>,
    /// Attach listed nodes and drop unlisted ones without `ctl`.
    pub automerge: bool,
}

/// How the file says which entry is this node (CLI flags first, then `SELFCUK`/`SELFCTLPORT`).
#[derive(Debug, Clone, Default)]
pub struct SelfSelector {
    /// Instance id.
    pub cuk: Option<String>,
    /// Control port.
    pub ctlport: Option<u16>,
    /// Node name.
    pub name: Option<String>,
}

fn invalid(path: &str, msg: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid(format!("{path}: {msg}"))
}

/// Keys of GLOBAL that CHMPX defines and this implementation accepts without using them (its
/// own message queues, thread and socket tuning, and the internal K2HASH of chmpx).
const GLOBAL_IGNORED: &[&str] = &[
    "FILEVERSION",
    "DATE",
    "DELIVERMODE",
    "CHMPXIDTYPE",
    "MAXCHMPX",
    "MAXMQSERVER",
    "MAXMQCLIENT",
    "MQPERATTACH",
    "MAXQPERSERVERMQ",
    "MAXQPERCLIENTMQ",
    "MAXMQPERCLIENT",
    "MAXHISTLOG",
    "RWTIMEOUT",
    "RETRYCNT",
    "CONTIMEOUT",
    "MQRWTIMEOUT",
    "MQRETRYCNT",
    "MQACK",
    "SOCKTHREADCNT",
    "MQTHREADCNT",
    "MAXSOCKPOOL",
    "SOCKPOOLTIMEOUT",
    "DOMERGE",
    "MERGETIMEOUT",
    "K2HFULLMAP",
    "K2HMASKBIT",
    "K2HCMASKBIT",
    "K2HMAXELE",
    "SSL_VERIFY_PEER",
    "NSSDB_DIR",
];
const GLOBAL_USED: &[&str] = &[
    "GROUP",
    "MODE",
    "REPLICA",
    "WRITE_QUORUM",
    "READ_QUORUM",
    "PORT",
    "CTLPORT",
    "SELFCTLPORT",
    "SELFCUK",
    "AUTOMERGE",
    "MEMCACHED_PORT",
    "SSL",
    "SSL_MIN_VER",
    "CAPATH",
    "SERVER_CERT",
    "SERVER_PRIKEY",
    "SLAVE_CERT",
    "SLAVE_PRIKEY",
];
const SVRNODE_KEYS: &[&str] = &[
    "NAME",
    "PORT",
    "CTLPORT",
    "CUK",
    "CUSTOM_ID_SEED",
    "MEMCACHED_PORT",
    "ZONE",
    "CAPACITY",
    "ENDPOINTS",
    "CTLENDPOINTS",
    "FORWARD_PEERS",
    "REVERSE_PEERS",
    "SSL",
    "SSL_VERIFY_PEER",
    "CAPATH",
    "SERVER_CERT",
    "SERVER_PRIKEY",
    "SLAVE_CERT",
    "SLAVE_PRIKEY",
];
const SLVNODE_KEYS: &[&str] = &[
    "NAME",
    "CTLPORT",
    "CUK",
    "ENDPOINTS",
    "CTLENDPOINTS",
    "FORWARD_PEERS",
    "REVERSE_PEERS",
    "CUSTOM_ID_SEED",
    "CAPATH",
    "SLAVE_CERT",
    "SLAVE_PRIKEY",
];
const K2HDKC_USED: &[&str] = &[
    "K2HTYPE",
    "K2HFILE",
    "PASSPHRASES",
    "PASSFILE",
    "EXPIRE",
    "HISTORY",
];
const K2HDKC_IGNORED: &[&str] = &[
    "RCVTIMEOUT",
    "SVRNODEINI",
    "REPLCLUSTERINI",
    "DTORTHREADCNT",
    "DTORCTP",
    "K2HFULLMAP",
    "K2HINIT",
    "K2HMASKBIT",
    "K2HCMASKBIT",
    "K2HMAXELE",
    "K2HPAGESIZE",
    "ATTRPLUGIN",
    "MINTHREAD",
    "MAXTHREAD",
    "REDUCETIME",
];

/// The syntax of a configuration text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    /// `[SECTION]` and `KEY = value` lines.
    Ini,
    /// YAML.
    Yaml,
    /// JSON.
    Json,
}

impl Syntax {
    /// By file extension, else by the first meaningful character.
    pub fn guess(path: Option<&Path>, text: &str) -> Syntax {
        match path
            .and_then(|p| p.extension())
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref()
        {
            Some("ini" | "conf" | "cfg") => return Syntax::Ini,
            Some("yaml" | "yml") => return Syntax::Yaml,
            Some("json") => return Syntax::Json,
            _ => {}
        }
        let first = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
            .unwrap_or("");
        if first.starts_with('{') {
            Syntax::Json
        } else if first.starts_with('[') {
            Syntax::Ini
        } else {
            Syntax::Yaml
        }
    }
}

/// Read and validate a file.
pub fn load(path: &Path) -> Result<ChmpxConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, Syntax::guess(Some(path), &text))
        .map_err(|e| ConfigError::Invalid(format!("{}: {e}", path.display())))
}

/// Parse and validate a text.
pub fn parse(text: &str, syntax: Syntax) -> Result<ChmpxConfig, ConfigError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let doc = match syntax {
        Syntax::Ini => parse_ini(text)?,
        Syntax::Json => {
            serde_json::from_str(text).map_err(|e| ConfigError::Invalid(format!("JSON: {e}")))?
        }
        Syntax::Yaml => yaml_doc(text)?,
    };
    from_doc(&doc)
}

/// INI: `[SECTION]` headers (a repeated SVRNODE/SLVNODE header starts another entry),
/// `KEY = value`, `#` and `;` comments; a key given twice in a section becomes a list.
fn parse_ini(text: &str) -> Result<Json, ConfigError> {
    let mut doc = Map::new();
    let mut current: Option<(String, Map<String, Json>)> = None;
    let flush = |doc: &mut Map<String, Json>, cur: Option<(String, Map<String, Json>)>| {
        let Some((name, body)) = cur else { return };
        match name.as_str() {
            "SVRNODE" | "SLVNODE" => {
                let list = doc.entry(name).or_insert_with(|| Json::Array(Vec::new()));
                if let Json::Array(a) = list {
                    a.push(Json::Object(body));
                }
            }
            _ => {
                let sec = doc.entry(name).or_insert_with(|| Json::Object(Map::new()));
                if let Json::Object(m) = sec {
                    m.extend(body);
                }
            }
        }
    };
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let Some(name) = rest.strip_suffix(']') else {
                return Err(ConfigError::Invalid(format!(
                    "line {}: a section header needs a closing ]",
                    n + 1
                )));
            };
            flush(&mut doc, current.take());
            current = Some((name.trim().to_ascii_uppercase(), Map::new()));
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(ConfigError::Invalid(format!(
                "line {}: expected KEY = value, got {line:?}",
                n + 1
            )));
        };
        let Some((_, body)) = current.as_mut() else {
            return Err(ConfigError::Invalid(format!(
                "line {}: {line:?} is outside any [SECTION]",
                n + 1
            )));
        };
        let key = k.trim().to_ascii_uppercase();
        let val = Json::String(v.trim().to_string());
        match body.get_mut(&key) {
            Some(Json::Array(a)) => a.push(val),
            Some(old) => {
                let first = old.take();
                *old = Json::Array(vec![first, val]);
            }
            None => {
                body.insert(key, val);
            }
        }
    }
    flush(&mut doc, current.take());
    Ok(Json::Object(doc))
}

/// YAML into the same document as INI: every scalar kept as its source text (so `CUK: 0001`
/// or a pass phrase `0123` stay what they say; numbers and yes/no are read later, as for INI).
fn yaml_doc(text: &str) -> Result<Json, ConfigError> {
    use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
    use yaml_rust2::scanner::Marker;
    enum Frame {
        Seq(Vec<Json>),
        Map(Map<String, Json>, Option<String>),
    }
    #[derive(Default)]
    struct Builder {
        stack: Vec<Frame>,
        root: Option<Json>,
        error: Option<String>,
    }
    impl Builder {
        fn value(&mut self, v: Json) {
            match self.stack.last_mut() {
                None => {
                    if self.root.is_none() {
                        self.root = Some(v);
                    }
                }
                Some(Frame::Seq(items)) => items.push(v),
                Some(Frame::Map(m, key)) => match key.take() {
                    None => match v {
                        Json::String(k) => *key = Some(k),
                        _ => self.error = Some("YAML: keys must be plain text".into()),
                    },
                    Some(k) => {
                        m.insert(k, v);
                    }
                },
            }
        }
    }
    impl MarkedEventReceiver for Builder {
        fn on_event(&mut self, ev: Event, _mark: Marker) {
            match ev {
                Event::Scalar(s, ..) => self.value(Json::String(s)),
                Event::SequenceStart(..) => self.stack.push(Frame::Seq(Vec::new())),
                Event::MappingStart(..) => self.stack.push(Frame::Map(Map::new(), None)),
                Event::SequenceEnd | Event::MappingEnd => {
                    let v = match self.stack.pop() {
                        Some(Frame::Seq(items)) => Json::Array(items),
                        Some(Frame::Map(m, _)) => Json::Object(m),
                        None => return,
                    };
                    self.value(v);
                }
                Event::Alias(_) => self.error = Some("YAML: aliases are not supported".into()),
                _ => {}
            }
        }
    }
    let mut b = Builder::default();
    Parser::new_from_str(text)
        .load(&mut b, false)
        .map_err(|e| ConfigError::Invalid(format!("YAML: {e}")))?;
    if let Some(e) = b.error {
        return Err(ConfigError::Invalid(e));
    }
    b.root
        .ok_or_else(|| ConfigError::Invalid("YAML: empty document".into()))
}

/// A section's keys, upper-cased, checked against what this section may hold.
fn section(v: &Json, path: &str, known: &[&[&str]]) -> Result<Map<String, Json>, ConfigError> {
    let Json::Object(m) = v else {
        return Err(invalid(path, "must be a section of KEY = value"));
    };
    let mut out = Map::new();
    for (k, v) in m {
        let key = k.to_ascii_uppercase();
        if !known.iter().any(|l| l.contains(&key.as_str())) {
            return Err(invalid(path, format!("unknown key {k}")));
        }
        out.insert(key, v.clone());
    }
    Ok(out)
}

fn text(m: &Map<String, Json>, k: &str, path: &str) -> Result<Option<String>, ConfigError> {
    Ok(match m.get(k) {
        None | Some(Json::Null) => None,
        Some(Json::String(s)) if s.is_empty() => None,
        Some(Json::String(s)) => Some(s.clone()),
        Some(Json::Number(n)) => Some(n.to_string()),
        Some(Json::Bool(b)) => Some(if *b { "yes" } else { "no" }.into()),
        Some(_) => return Err(invalid(path, format!("{k} must be a single value"))),
    })
}

fn texts(m: &Map<String, Json>, k: &str, path: &str) -> Result<Vec<String>, ConfigError> {
    match m.get(k) {
        Some(Json::Array(a)) => a
            .iter()
            .map(|v| match v {
                Json::String(s) => Ok(s.clone()),
                Json::Number(n) => Ok(n.to_string()),
                _ => Err(invalid(path, format!("{k} entries must be text"))),
            })
            .collect(),
        _ => Ok(text(m, k, path)?.into_iter().collect()),
    }
}

fn number<T: std::str::FromStr>(
    m: &Map<String, Json>,
    k: &str,
    path: &str,
) -> Result<Option<T>, ConfigError> {
    text(m, k, path)?
        .map(|s| {
            s.trim()
                .parse::<T>()
                .map_err(|_| invalid(path, format!("{k} = {s:?} is not a valid number here")))
        })
        .transpose()
}

fn flag(m: &Map<String, Json>, k: &str, path: &str) -> Result<Option<bool>, ConfigError> {
    text(m, k, path)?
        .map(|s| match s.trim().to_ascii_uppercase().as_str() {
            "Y" | "YES" | "ON" | "TRUE" | "1" => Ok(true),
            "N" | "NO" | "OFF" | "FALSE" | "0" => Ok(false),
            _ => Err(invalid(path, format!("{k} = {s:?}: use yes or no"))),
        })
        .transpose()
}

/// Expand CHMPX name patterns: `srv[1-3].x` is srv1.x, srv2.x, srv3.x; `[a,b]` lists.
pub fn expand(name: &str) -> Result<Vec<String>, String> {
    let Some(open) = name.find('[') else {
        return Ok(vec![name.to_string()]);
    };
    let close = name[open..]
        .find(']')
        .map(|i| open + i)
        .ok_or_else(|| format!("{name:?}: [ without ]"))?;
    let (head, inner, tail) = (&name[..open], &name[open + 1..close], &name[close + 1..]);
    let mut alts = Vec::new();
    for part in inner.split(',') {
        let part = part.trim();
        match part.split_once('-') {
            Some((a, b)) if a.parse::<u32>().is_ok() && b.parse::<u32>().is_ok() => {
                let (a, b) = (a.parse::<u32>().expect("n"), b.parse::<u32>().expect("n"));
                if a > b || b - a > 1024 {
                    return Err(format!("{name:?}: bad range {part}"));
                }
                alts.extend((a..=b).map(|i| i.to_string()));
            }
            _ if part.is_empty() => return Err(format!("{name:?}: empty alternative")),
            _ => alts.push(part.to_string()),
        }
    }
    let rests = expand(tail)?;
    let mut out = Vec::new();
    for a in &alts {
        for rest in &rests {
            out.push(format!("{head}{a}{rest}"));
        }
    }
    Ok(out)
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn from_doc(doc: &Json) -> Result<ChmpxConfig, ConfigError> {
    let Json::Object(top) = doc else {
        return Err(ConfigError::Invalid(
            "the configuration must have sections GLOBAL, SVRNODE, SLVNODE, K2HDKC".into(),
        ));
    };
    for k in top.keys() {
        if !["GLOBAL", "SVRNODE", "SLVNODE", "K2HDKC"].contains(&k.to_ascii_uppercase().as_str()) {
            return Err(ConfigError::Invalid(format!(
                "unknown section {k} (expected GLOBAL, SVRNODE, SLVNODE, K2HDKC)"
            )));
        }
    }
    let get = |name: &str| {
        top.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    };
    let g = section(
        get("GLOBAL").ok_or_else(|| ConfigError::Invalid("GLOBAL section is missing".into()))?,
        "GLOBAL",
        &[GLOBAL_USED, GLOBAL_IGNORED],
    )?;
    let group = text(&g, "GROUP", "GLOBAL")?
        .ok_or_else(|| invalid("GLOBAL", "GROUP (the cluster name) is required"))?;
    let mode = text(&g, "MODE", "GLOBAL")?
        .map(|m| match m.to_ascii_uppercase().as_str() {
            "SERVER" => Ok(Mode::Server),
            "SLAVE" => Ok(Mode::Slave),
            _ => Err(invalid(
                "GLOBAL",
                format!("MODE = {m:?}: use SERVER or SLAVE"),
            )),
        })
        .transpose()?;
    let automerge = flag(&g, "AUTOMERGE", "GLOBAL")?;
    let tls = if flag(&g, "SSL", "GLOBAL")? == Some(true) {
        let need = |k: &str| {
            text(&g, k, "GLOBAL")?
                .map(PathBuf::from)
                .ok_or_else(|| invalid("GLOBAL", format!("SSL = yes needs {k}")))
        };
        let min_version = match text(&g, "SSL_MIN_VER", "GLOBAL")?
            .map(|v| v.to_ascii_uppercase())
            .as_deref()
        {
            None | Some("DEFAULT") | Some("TLSV1.2") => None,
            Some("TLSV1.3") => Some("1.3".to_string()),
            Some(v) => {
                return Err(invalid(
                    "GLOBAL",
                    format!("SSL_MIN_VER = {v}: this implementation speaks TLSv1.2 and TLSv1.3"),
                ));
            }
        };
        let opt = |k: &str| text(&g, k, "GLOBAL").map(|v| v.map(PathBuf::from));
        Some(ChmpxTls {
            ca: need("CAPATH")?,
            server: opt("SERVER_CERT")?.zip(opt("SERVER_PRIKEY")?),
            slave: opt("SLAVE_CERT")?.zip(opt("SLAVE_PRIKEY")?),
            min_version,
        })
    } else {
        None
    };
    let replica: Option<u8> = number(&g, "REPLICA", "GLOBAL")?;
    let replicas = replica
        .map(|r| {
            r.checked_add(1)
                .filter(|n| *n <= 16)
                .ok_or_else(|| invalid("GLOBAL", "REPLICA must be at most 15"))
        })
        .transpose()?;
    let write_quorum: Option<u8> = number(&g, "WRITE_QUORUM", "GLOBAL")?;
    let read_quorum: Option<u8> = number(&g, "READ_QUORUM", "GLOBAL")?;
    for (k, q) in [("WRITE_QUORUM", write_quorum), ("READ_QUORUM", read_quorum)] {
        if let Some(q) = q
            && (q == 0 || replicas.is_some_and(|n| q > n))
        {
            return Err(invalid(
                "GLOBAL",
                format!("{k} = {q} must be between 1 and the copies (REPLICA + 1)"),
            ));
        }
    }
    let port: Option<u16> = number(&g, "PORT", "GLOBAL")?;
    let ctlport: Option<u16> = number(&g, "CTLPORT", "GLOBAL")?;
    let memcached_port: Option<u16> = number(&g, "MEMCACHED_PORT", "GLOBAL")?;

    let mut servers = Vec::new();
    let list = |v: Option<&Json>| -> Vec<Json> {
        match v {
            Some(Json::Array(a)) => a.clone(),
            Some(o @ Json::Object(_)) => vec![o.clone()],
            _ => Vec::new(),
        }
    };
    for (i, s) in list(get("SVRNODE")).iter().enumerate() {
        let path = format!("SVRNODE #{}", i + 1);
        let m = section(s, &path, &[SVRNODE_KEYS])?;
        if flag(&m, "SSL", &path)? == Some(true) && tls.is_none() {
            return Err(invalid(
                &path,
                "SSL = yes on one server: set SSL, CAPATH and the certificates in GLOBAL (all \
                 nodes of a cluster speak TLS or none does)",
            ));
        }
        let name = text(&m, "NAME", &path)?.ok_or_else(|| invalid(&path, "NAME is required"))?;
        let port = number(&m, "PORT", &path)?
            .or(port)
            .ok_or_else(|| invalid(&path, "PORT is required (here or in GLOBAL)"))?;
        let ctl = number(&m, "CTLPORT", &path)?
            .or(ctlport)
            .ok_or_else(|| invalid(&path, "CTLPORT is required (here or in GLOBAL)"))?;
        let mc = number(&m, "MEMCACHED_PORT", &path)?.or(memcached_port);
        let cuk = text(&m, "CUK", &path)?;
        let seed = text(&m, "CUSTOM_ID_SEED", &path)?;
        let zone = text(&m, "ZONE", &path)?;
        let capacity = number(&m, "CAPACITY", &path)?;
        let hosts = expand(&name).map_err(|e| invalid(&path, e))?;
        if hosts.len() > 1 && (cuk.is_some() || seed.is_some()) {
            return Err(invalid(
                &path,
                "a NAME pattern cannot share one CUK or CUSTOM_ID_SEED",
            ));
        }
        for host in hosts {
            let id = seed
                .clone()
                .or_else(|| cuk.clone())
                .unwrap_or_else(|| join_host_port(&host, ctl));
            servers.push(ServerNode {
                host,
                port,
                ctlport: ctl,
                memcached_port: mc,
                cuk: cuk.clone(),
                id,
                zone: zone.clone(),
                capacity,
            });
        }
    }
    let mut seen = BTreeSet::new();
    for s in &servers {
        if !seen.insert(s.id.clone()) {
            return Err(ConfigError::Invalid(format!(
                "SVRNODE: two servers are named {:?} (give each a CUSTOM_ID_SEED or CUK)",
                s.id
            )));
        }
    }
    let mut seen = BTreeSet::new();
    for s in &servers {
        if !seen.insert(s.addr()) {
            return Err(ConfigError::Invalid(format!(
                "SVRNODE: two servers use {}",
                s.addr()
            )));
        }
    }
    let mut slaves = Vec::new();
    for (i, s) in list(get("SLVNODE")).iter().enumerate() {
        let path = format!("SLVNODE #{}", i + 1);
        let m = section(s, &path, &[SLVNODE_KEYS])?;
        let name = text(&m, "NAME", &path)?.ok_or_else(|| invalid(&path, "NAME is required"))?;
        slave_pattern(&name).map_err(|e| invalid(&path, e))?;
        slaves.push(SlaveNode {
            name,
            ctlport: number(&m, "CTLPORT", &path)?,
            cuk: text(&m, "CUK", &path)?,
        });
    }
    let mut k2hdkc = K2hdkcSection::default();
    if let Some(k) = get("K2HDKC") {
        let m = section(k, "K2HDKC", &[K2HDKC_USED, K2HDKC_IGNORED])?;
        k2hdkc.storage = text(&m, "K2HTYPE", "K2HDKC")?
            .map(|t| match t.to_ascii_uppercase().as_str() {
                "M" | "MEM" | "MEMORY" => Ok(StorageMode::Memory),
                "F" | "FILE" => Ok(StorageMode::File),
                "T" | "TEMP" | "TEMPORARY" => Ok(StorageMode::Temporary),
                _ => Err(invalid(
                    "K2HDKC",
                    format!("K2HTYPE = {t:?}: use MEMORY, FILE or TEMP"),
                )),
            })
            .transpose()?;
        k2hdkc.data_dir = text(&m, "K2HFILE", "K2HDKC")?.map(|f| {
            let p = PathBuf::from(f);
            if p.extension().is_some_and(|e| e == "k2h") {
                p.parent().map(Path::to_path_buf).unwrap_or(p)
            } else {
                p
            }
        });
        k2hdkc.pass_phrases = texts(&m, "PASSPHRASES", "K2HDKC")?;
        k2hdkc.pass_file = text(&m, "PASSFILE", "K2HDKC")?.map(PathBuf::from);
        k2hdkc.expire = number(&m, "EXPIRE", "K2HDKC")?;
        k2hdkc.history = flag(&m, "HISTORY", "K2HDKC")?;
    }
    if mode != Some(Mode::Slave) && servers.is_empty() {
        return Err(ConfigError::Invalid(
            "SVRNODE: at least one server node is required".into(),
        ));
    }
    Ok(ChmpxConfig {
        group,
        mode,
        replicas,
        write_quorum,
        read_quorum,
        automerge,
        tls,
        self_ctlport: number(&g, "SELFCTLPORT", "GLOBAL")?,
        self_cuk: text(&g, "SELFCUK", "GLOBAL")?,
        memcached_port,
        servers,
        slaves,
        k2hdkc,
    })
}

/// If the configuration names a CHMPX file, read it and apply it (see [`ChmpxConfig::apply`]).
pub fn apply_file(cfg: &mut ServerConfig) -> Result<Option<ChmpxConfig>, ConfigError> {
    let Some(path) = cfg.cluster.chmpx_file.clone() else {
        return Ok(None);
    };
    let c = load(&path)?;
    let sel = SelfSelector {
        cuk: cfg.cluster.self_cuk.clone(),
        ctlport: cfg.cluster.self_ctlport,
        name: cfg.cluster.name.clone(),
    };
    c.apply(cfg, &sel)
        .map_err(|e| ConfigError::Invalid(format!("{}: {e}", path.display())))?;
    Ok(Some(c))
}

/// A `SLVNODE` `NAME` as CHMPX reads it: a POSIX extended regular expression searched for
/// (not anchored) in the peer's names, so `[.]*` admits every host and `^10\.1\.` one subnet
/// (a plain host name or address is taken exactly; see [`Admission`]).
fn slave_pattern(name: &str) -> Result<regex_lite::Regex, String> {
    regex_lite::Regex::new(name).map_err(|e| format!("NAME {name:?} is not a valid pattern: {e}"))
}

/// Which hosts may connect to a server node's cluster (native) port, as CHMPX allows: the
/// hosts of `SVRNODE` and those matching a `SLVNODE` name.
///
/// Invariants: built from a validated file, with names resolved once per (re-)read, so the
/// accept path only does set lookups and pattern searches. A peer is admitted when its
/// address is one a `SVRNODE` host or a plain `SLVNODE` name (letters, digits, `.-_:`)
/// resolved to, or when a `SLVNODE` pattern matches its address text (or `localhost`, for a
/// loopback peer). Unlike CHMPX, plain names are not also searched as patterns (so
/// `10.0.0.5` does not admit 10.0.0.50), and no reverse lookup is made (CHMPX also matches
/// the peer's reverse-resolved name): patterns should be written over addresses.
#[derive(Debug, Default)]
pub struct Admission {
    /// Addresses of the servers and of plain slave host names.
    known: std::collections::HashSet<IpAddr>,
    /// Slave name patterns.
    patterns: Vec<regex_lite::Regex>,
}

impl Admission {
    /// The hosts the description admits. Names are resolved here (a blocking lookup); one that
    /// does not resolve admits nothing until a later read.
    pub fn new(c: &ChmpxConfig) -> Admission {
        let mut a = Admission::default();
        let add_host = |a: &mut Admission, host: &str| {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if let Ok(ip) = host.parse::<IpAddr>() {
                a.known.insert(ip.to_canonical());
            } else if let Ok(addrs) = (host, 0).to_socket_addrs() {
                a.known.extend(addrs.map(|s| s.ip().to_canonical()));
            } else {
                tracing::warn!(host, "cannot resolve a host of the cluster description");
            }
        };
        for s in &c.servers {
            add_host(&mut a, &s.host);
        }
        for s in &c.slaves {
            let plain = s
                .name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '-' | '_' | ':'));
            if plain {
                // Exactly the host's addresses: as a pattern "10.0.0.5" would also match
                // 10.0.0.50 and 110.0.0.5.
                add_host(&mut a, &s.name);
            } else if let Ok(p) = slave_pattern(&s.name) {
                // Validated when the file was read.
                a.patterns.push(p);
            }
        }
        a
    }

    /// Whether a peer at `ip` may connect.
    pub fn admits(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        if self.known.contains(&ip) {
            return true;
        }
        if self.patterns.is_empty() {
            return false;
        }
        let text = ip.to_string();
        self.patterns
            .iter()
            .any(|p| p.is_match(&text) || (ip.is_loopback() && p.is_match("localhost")))
    }
}

/// The admission in force on a server node: none (every host may connect) until a cluster
/// description is read, then the latest read's.
#[derive(Debug, Default)]
pub struct Gate(std::sync::RwLock<Option<Admission>>);

impl Gate {
    /// Put a new admission in force.
    pub fn set(&self, a: Admission) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(a);
    }

    /// Whether a peer at `ip` may connect.
    pub fn admits(&self, ip: IpAddr) -> bool {
        match &*self.0.read().unwrap_or_else(|e| e.into_inner()) {
            None => true,
            Some(a) => a.admits(ip),
        }
    }
}

/// Whether an address belongs to this host (it can be bound).
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

fn resolve(host: &str, port: u16) -> Option<SocketAddr> {
    (host, port).to_socket_addrs().ok()?.next()
}

impl ChmpxConfig {
    /// The replication the file asks for: N from `REPLICA`, quorums from the extensions or a
    /// majority of N.
    pub fn replication(&self) -> Option<(u8, u8, u8)> {
        let n = self.replicas?;
        let majority = n / 2 + 1;
        Some((
            n,
            self.write_quorum.unwrap_or(majority).min(n),
            self.read_quorum.unwrap_or(majority).min(n),
        ))
    }

    /// What a (re-)read file asks of the running cluster.
    pub fn desired(&self) -> Desired {
        Desired {
            servers: self.servers.iter().map(|s| s.id.clone()).collect(),
            addrs: self.servers.iter().map(ServerNode::addr).collect(),
            replication: self.replication(),
            automerge: self.automerge.unwrap_or(true),
        }
    }

    /// The server entry that is this node.
    pub fn find_self(&self, sel: &SelfSelector) -> Result<&ServerNode, ConfigError> {
        let cuk = sel.cuk.as_ref().or(self.self_cuk.as_ref());
        let ctl = sel.ctlport.or(self.self_ctlport);
        let mut c: Vec<&ServerNode> = self.servers.iter().collect();
        if let Some(name) = &sel.name {
            c.retain(|s| &s.id == name);
        }
        if let Some(cuk) = cuk {
            c.retain(|s| s.cuk.as_ref() == Some(cuk));
        }
        if let Some(p) = ctl {
            c.retain(|s| s.ctlport == p);
        }
        if c.len() > 1 {
            c.retain(|s| resolve(&s.host, s.port).is_some_and(|a| is_local(a.ip())));
        }
        match c.as_slice() {
            [one] => Ok(one),
            [] => Err(ConfigError::Invalid(format!(
                "no SVRNODE entry is this node (looked for{}{}{}); give --ctlport, --cuk or \
                 --name, or SELFCTLPORT / SELFCUK in GLOBAL",
                sel.name
                    .as_ref()
                    .map_or(String::new(), |n| format!(" name {n}")),
                cuk.map_or(String::new(), |c| format!(" cuk {c}")),
                ctl.map_or(String::new(), |p| format!(" ctlport {p}")),
            ))),
            many => Err(ConfigError::Invalid(format!(
                "{} SVRNODE entries could be this node ({}); give --ctlport, --cuk or --name",
                many.len(),
                many.iter()
                    .map(|s| s.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Apply the description to a node's configuration (settings given on the command line
    /// before this call win where they conflict: listeners, storage mode and directory).
    pub fn apply(&self, cfg: &mut ServerConfig, sel: &SelfSelector) -> Result<(), ConfigError> {
        cfg.cluster.cluster = self.group.clone();
        if let Some(a) = self.automerge {
            cfg.cluster.auto_complete = a;
        }
        let addrs: Vec<String> = self.servers.iter().map(ServerNode::addr).collect();
        let slave = self.mode == Some(Mode::Slave) || cfg.cluster.gateway;
        if let Some(t) = &self.tls
            && cfg.cluster.tls.is_none()
        {
            let (which, pair) = if slave {
                ("SLAVE_CERT and SLAVE_PRIKEY", &t.slave)
            } else {
                ("SERVER_CERT and SERVER_PRIKEY", &t.server)
            };
            let (cert, key) = pair
                .clone()
                .ok_or_else(|| invalid("GLOBAL", format!("SSL = yes needs {which} here")))?;
            cfg.cluster.tls = Some(crate::config::TlsConfig {
                ca: t.ca.clone(),
                cert,
                key,
                min_version: t.min_version.clone(),
            });
        }
        if slave {
            cfg.cluster.gateway = true;
            cfg.cluster.join = addrs;
            if cfg.listen.memcached.is_none()
                && let Some(p) = self.memcached_port
            {
                cfg.listen.memcached = Some(SocketAddr::from(([127, 0, 0, 1], p)));
            }
            return Ok(());
        }
        let me = self.find_self(sel)?;
        let resolved = resolve(&me.host, me.port).ok_or_else(|| {
            ConfigError::Invalid(format!("SVRNODE {}: cannot resolve {}", me.id, me.host))
        })?;
        cfg.cluster.name = Some(me.id.clone());
        if let Some(z) = &me.zone {
            cfg.cluster.zone = z.clone();
        }
        if let Some(c) = me.capacity {
            cfg.cluster.capacity = c;
        }
        if cfg.listen.native.is_none() {
            cfg.listen.native = Some(resolved);
        }
        if cfg.listen.admin.is_none() {
            cfg.listen.admin = Some(SocketAddr::new(resolved.ip(), me.ctlport));
        }
        if cfg.listen.memcached.is_none()
            && let Some(p) = me.memcached_port
        {
            cfg.listen.memcached = Some(SocketAddr::new(resolved.ip(), p));
        }
        // The first server starts the cluster; the others only join through it (and the
        // rest), so several nodes starting at once form one cluster, not several.
        let mine = me.addr();
        cfg.cluster.join = addrs
            .iter()
            .enumerate()
            .filter(|(i, a)| *i == 0 || **a != mine)
            .map(|(_, a)| a.clone())
            .collect();
        let k = &self.k2hdkc;
        if let Some(m) = k.storage {
            cfg.storage.mode = m;
        }
        if cfg.storage.data_dir.is_none() {
            cfg.storage.data_dir = k.data_dir.clone();
        }
        if !k.pass_phrases.is_empty() {
            cfg.storage.pass_phrases = k.pass_phrases.clone();
        }
        if let Some(f) = &k.pass_file {
            cfg.storage.key_files.push(f.clone());
        }
        if let Some(e) = k.expire {
            cfg.storage.default_ttl_secs = e;
        }
        if let Some(h) = k.history {
            cfg.storage.history = if h { cfg.storage.history.max(8) } else { 0 };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INI: &str = "
# a 3-node cluster
[GLOBAL]
FILEVERSION = 1
GROUP = demo
MODE = SERVER
DELIVERMODE = hash
REPLICA = 2
PORT = 8020
CTLPORT = 8021
MEMCACHED_PORT = 11211
AUTOMERGE = on
[SVRNODE]
NAME = 127.0.0.1
PORT = 18020
CTLPORT = 18021
CUSTOM_ID_SEED = n1
[SVRNODE]
NAME = 127.0.0.1
PORT = 18022
CTLPORT = 18023
CUSTOM_ID_SEED = n2
[SVRNODE]
NAME = 10.0.0.[3-4]
[SLVNODE]
NAME = [.]*
CTLPORT = 8031
[K2HDKC]
K2HTYPE = file
K2HFILE = /var/lib/k2hdkc/data.k2h
PASSPHRASES = one
PASSPHRASES = two
EXPIRE = 60
MAXTHREAD = 20
";

    #[test]
    fn ini_yaml_and_json_say_the_same() {
        let ini = parse(INI, Syntax::Ini).unwrap();
        assert_eq!(ini.group, "demo");
        assert_eq!(ini.replication(), Some((3, 2, 2)));
        assert_eq!(ini.servers.len(), 4);
        assert_eq!(ini.servers[2].addr(), "10.0.0.3:8020");
        assert_eq!(ini.servers[3].id, "10.0.0.4:8021");
        assert_eq!(ini.servers[0].memcached_port, Some(11211));
        assert_eq!(ini.k2hdkc.pass_phrases, vec!["one", "two"]);
        assert_eq!(ini.k2hdkc.data_dir, Some(PathBuf::from("/var/lib/k2hdkc")));
        assert_eq!(ini.slaves[0].name, "[.]*");
        let yaml = "
GLOBAL:
  GROUP: demo
  MODE: SERVER
  REPLICA: 2
  PORT: 8020
  CTLPORT: 8021
  MEMCACHED_PORT: 11211
  AUTOMERGE: true
SVRNODE:
  - NAME: 127.0.0.1
    PORT: 18020
    CTLPORT: 18021
    CUSTOM_ID_SEED: n1
  - NAME: 127.0.0.1
    PORT: 18022
    CTLPORT: 18023
    CUSTOM_ID_SEED: n2
  - NAME: '10.0.0.[3-4]'
SLVNODE:
  - NAME: '[.]*'
    CTLPORT: 8031
K2HDKC:
  K2HTYPE: file
  K2HFILE: /var/lib/k2hdkc/data.k2h
  PASSPHRASES: [one, two]
  EXPIRE: 60
";
        assert_eq!(parse(yaml, Syntax::Yaml).unwrap(), ini);
        // Scalars keep their text: a CUK of 0001 is not the number 1.
        let zeros = parse(
            &yaml.replace("CUSTOM_ID_SEED: n1", "CUK: 0001"),
            Syntax::Yaml,
        )
        .unwrap();
        assert_eq!(zeros.servers[0].cuk.as_deref(), Some("0001"));
        let json = r#"{"GLOBAL": {"GROUP": "demo", "MODE": "SERVER", "REPLICA": 2, "PORT": 8020,
            "CTLPORT": 8021, "MEMCACHED_PORT": 11211, "AUTOMERGE": "on"},
          "SVRNODE": [{"NAME": "127.0.0.1", "PORT": 18020, "CTLPORT": 18021, "CUSTOM_ID_SEED": "n1"},
                      {"NAME": "127.0.0.1", "PORT": 18022, "CTLPORT": 18023, "CUSTOM_ID_SEED": "n2"},
                      {"NAME": "10.0.0.[3-4]"}],
          "SLVNODE": [{"NAME": "[.]*", "CTLPORT": 8031}],
          "K2HDKC": {"K2HTYPE": "file", "K2HFILE": "/var/lib/k2hdkc/data.k2h",
                     "PASSPHRASES": ["one", "two"], "EXPIRE": 60}}"#;
        assert_eq!(parse(json, Syntax::Json).unwrap(), ini);
        assert_eq!(Syntax::guess(None, json), Syntax::Json);
        assert_eq!(Syntax::guess(None, INI), Syntax::Ini);
        assert_eq!(Syntax::guess(None, yaml), Syntax::Yaml);
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let cases = [
            (
                "[GLOBAL]\nGROUP = x\nPROT = 1\n[SVRNODE]\nNAME=a\nPORT=1\nCTLPORT=2\n",
                "unknown key PROT",
            ),
            ("[GLOBAL]\nMODE = SERVER\n", "GROUP"),
            ("[GLOBAL]\nGROUP = x\n", "at least one server"),
            (
                "[GLOBAL]\nGROUP = x\n[SVRNODE]\nNAME = a\n",
                "PORT is required",
            ),
            ("[GLOBAL]\nGROUP = x\nPORT = 99999\n", "not a valid number"),
            ("[GLOBAL]\nGROUP = x\nSSL = yes\n", "needs CAPATH"),
            (
                "[GLOBAL]\nGROUP = x\nSSL = yes\nCAPATH = /ca.pem\nSSL_MIN_VER = TLSV1.0\n",
                "TLSv1.2 and TLSv1.3",
            ),
            ("[GLOBAL]\nGROUP = x\nAUTOMERGE = maybe\n", "yes or no"),
            (
                "[GLOBAL]\nGROUP = x\nREPLICA = 1\nWRITE_QUORUM = 3\n",
                "WRITE_QUORUM",
            ),
            ("GROUP = x\n", "outside any"),
            ("[GLOBAL\n", "closing"),
            ("[OTHER]\nA = 1\n", "unknown section"),
            (
                "[GLOBAL]\nGROUP = x\nPORT = 1\nCTLPORT = 2\n[SVRNODE]\nNAME = a\n[SVRNODE]\nNAME = a\n",
                "two servers",
            ),
            ("[GLOBAL]\nGROUP = x\n[K2HDKC]\nK2HTYPE = disk\n", "K2HTYPE"),
        ];
        for (text, want) in cases {
            let e = parse(text, Syntax::Ini).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        assert!(parse("{", Syntax::Json).is_err());
        assert!(parse("GLOBAL: [", Syntax::Yaml).is_err());
    }

    #[test]
    fn names_expand() {
        assert_eq!(
            expand("srv[1-3].x").unwrap(),
            ["srv1.x", "srv2.x", "srv3.x"]
        );
        assert_eq!(expand("[a,b]-[1-2]").unwrap(), ["a-1", "a-2", "b-1", "b-2"]);
        assert_eq!(expand("plain").unwrap(), ["plain"]);
        assert!(expand("x[1-").is_err());
        assert!(expand("x[3-1]").is_err());
    }

    #[test]
    fn this_node_is_found_and_applied() {
        let c = parse(INI, Syntax::Ini).unwrap();
        let sel = SelfSelector {
            ctlport: Some(18023),
            ..Default::default()
        };
        let mut cfg = ServerConfig::default();
        c.apply(&mut cfg, &sel).unwrap();
        assert_eq!(cfg.cluster.name.as_deref(), Some("n2"));
        assert_eq!(cfg.cluster.cluster, "demo");
        assert_eq!(cfg.listen.native, Some("127.0.0.1:18022".parse().unwrap()));
        assert_eq!(cfg.listen.admin, Some("127.0.0.1:18023".parse().unwrap()));
        assert_eq!(
            cfg.listen.memcached,
            Some("127.0.0.1:11211".parse().unwrap())
        );
        // n2 joins through the others, never through itself.
        assert_eq!(
            cfg.cluster.join,
            ["127.0.0.1:18020", "10.0.0.3:8020", "10.0.0.4:8020"]
        );
        assert_eq!(cfg.storage.mode, StorageMode::File);
        assert_eq!(cfg.storage.default_ttl_secs, 60);
        // The first server may start the cluster.
        let mut first = ServerConfig::default();
        c.apply(
            &mut first,
            &SelfSelector {
                name: Some("n1".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(first.cluster.join[0], "127.0.0.1:18020");
        // Two local entries and nothing to tell them apart.
        let e = c
            .apply(&mut ServerConfig::default(), &SelfSelector::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("could be this node"), "{e}");
        // A slave file makes a gateway that knows every server.
        let mut gw = ServerConfig::default();
        let slave = parse(&INI.replace("MODE = SERVER", "MODE = SLAVE"), Syntax::Ini).unwrap();
        slave.apply(&mut gw, &SelfSelector::default()).unwrap();
        assert!(gw.cluster.gateway);
        assert_eq!(gw.cluster.join.len(), 4);
        assert_eq!(
            c.desired().servers,
            ["n1", "n2", "10.0.0.3:8021", "10.0.0.4:8021"]
        );
        // CHMPX's SSL keys become the node's TLS (servers and slaves use their own pair).
        let ssl = INI.replace(
            "AUTOMERGE = on",
            "AUTOMERGE = on\nSSL = yes\nCAPATH = /etc/k2hdkc/ca.pem\nSERVER_CERT = /s.pem\n\
             SERVER_PRIKEY = /s.key\nSLAVE_CERT = /g.pem\nSLAVE_PRIKEY = /g.key\nSSL_MIN_VER = TLSv1.3",
        );
        let t = parse(&ssl, Syntax::Ini).unwrap();
        let mut cfg = ServerConfig::default();
        t.apply(&mut cfg, &sel).unwrap();
        let tls = cfg.cluster.tls.unwrap();
        assert_eq!(tls.cert, PathBuf::from("/s.pem"));
        assert_eq!(tls.min_version.as_deref(), Some("1.3"));
        let mut gw = ServerConfig::default();
        parse(&ssl.replace("MODE = SERVER", "MODE = SLAVE"), Syntax::Ini)
            .unwrap()
            .apply(&mut gw, &SelfSelector::default())
            .unwrap();
        assert_eq!(gw.cluster.tls.unwrap().key, PathBuf::from("/g.key"));
    }

    #[test]
    fn only_servers_and_matching_slaves_are_admitted() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // Every host, as the DBaaS and CHMPX's examples write it.
        let any = Admission::new(&parse(INI, Syntax::Ini).unwrap());
        for a in ["10.9.8.7", "::1", "192.168.0.1"] {
            assert!(any.admits(ip(a)), "{a}");
        }
        let only = |slaves: &str| {
            let text = INI.replace("[SLVNODE]\nNAME = [.]*\n", slaves);
            Admission::new(&parse(&text, Syntax::Ini).unwrap())
        };
        // Servers (expanded names), an anchored address pattern, a plain address, localhost.
        let a = only(
            "[SLVNODE]\nNAME = ^192\\.168\\.1\\.\n[SLVNODE]\nNAME = 172.16.0.9\n\
             [SLVNODE]\nNAME = ^localhost$\n",
        );
        for (host, admitted) in [
            ("127.0.0.1", true),
            ("10.0.0.3", true),
            ("10.0.0.4", true),
            ("10.0.0.5", false),
            ("192.168.1.20", true),
            ("192.168.10.1", false),
            ("10.192.168.1", false),
            ("172.16.0.9", true),
            ("::ffff:172.16.0.9", true),
            ("172.16.0.90", false),
            ("::1", true),
            ("127.0.0.2", true),
            ("8.8.8.8", false),
        ] {
            assert_eq!(a.admits(ip(host)), admitted, "{host}");
        }
        // Without the localhost pattern, another loopback address is a stranger.
        let b = only("[SLVNODE]\nNAME = ^10\\.1\\.2\\.3$\n");
        assert!(b.admits(ip("10.1.2.3")) && b.admits(ip("127.0.0.1")));
        assert!(!b.admits(ip("127.0.0.2")) && !b.admits(ip("10.1.2.30")));
        // A pattern that does not compile is an error of the file, not a silent "no one".
        let e = parse(&INI.replace("NAME = [.]*", "NAME = ([a-z"), Syntax::Ini).unwrap_err();
        assert!(e.to_string().contains("SLVNODE #1"), "{e}");
        // No description read yet: the gate lets everyone in; then the latest one counts.
        let g = Gate::default();
        assert!(g.admits(ip("8.8.8.8")));
        g.set(only("[SLVNODE]\nNAME = ^10\\.1\\.\n"));
        assert!(!g.admits(ip("8.8.8.8")) && g.admits(ip("10.1.0.1")));
    }
}
