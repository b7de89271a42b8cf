//! `k2hdkc shell ADDR`: the k2hdkclinetool of this system. Interactive with line editing and
//! history, or non-interactive with `-c CMD` (repeatable), `--run FILE`, or commands on stdin.
//! Every data-model operation has a command; `--json` prints one JSON object per command.
//!
//! Arguments are split on blanks; "double quotes" allow blanks and the escapes `\n \r \t \\ \"
//! \xNN`, 'single quotes' take bytes as they are. Options are `name=value` words (`pass=`,
//! `expire=`, `flags=`, `parent=`, `limit=`). In scripts a failed command is reported and the
//! run goes on; the exit status is 1 if any command failed.

use std::io::{BufRead, IsTerminal};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use k2hdkc_client::{Client, ClientConfig, Expiry, SetMode, WriteOptions};
use serde_json::{Value as Json, json};

/// Arguments of `k2hdkc shell`.
#[derive(clap::Args, Debug)]
pub struct ShellArgs {
    /// Server native-protocol address, e.g. 127.0.0.1:8020.
    pub addr: SocketAddr,
    /// Run this command and exit (repeatable; run in order).
    #[arg(short = 'c', long = "command")]
    pub commands: Vec<String>,
    /// Run the commands of this file (one per line, `#` comments) and exit.
    #[arg(long = "run", short = 'f')]
    pub run: Option<PathBuf>,
    /// Print each result as one JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// Seconds to wait for each reply.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
    /// Command history file for interactive use.
    #[arg(long, env = "K2HDKC_SHELL_HISTORY")]
    pub history_file: Option<PathBuf>,
}

/// Split a command line into words (see the module docs for quoting).
pub fn split(line: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut words = Vec::new();
    let mut cur: Option<Vec<u8>> = None;
    let mut it = line.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            c if c.is_whitespace() => {
                if let Some(w) = cur.take() {
                    words.push(w);
                }
            }
            '\'' => {
                let w = cur.get_or_insert_with(Vec::new);
                loop {
                    match it.next() {
                        Some('\'') => break,
                        Some(c) => w.extend_from_slice(c.to_string().as_bytes()),
                        None => bail!("unterminated single quote"),
                    }
                }
            }
            '"' => {
                let w = cur.get_or_insert_with(Vec::new);
                loop {
                    match it.next() {
                        Some('"') => break,
                        Some('\\') => match it.next() {
                            Some('n') => w.push(b'\n'),
                            Some('r') => w.push(b'\r'),
                            Some('t') => w.push(b'\t'),
                            Some('0') => w.push(0),
                            Some('x') => {
                                let h: String = [it.next(), it.next()].iter().flatten().collect();
                                let b = u8::from_str_radix(&h, 16).map_err(|_| {
                                    anyhow!("bad escape \\x{h}: need two hex digits")
                                })?;
                                w.push(b);
                            }
                            Some(c) => w.extend_from_slice(c.to_string().as_bytes()),
                            None => bail!("unterminated double quote"),
                        },
                        Some(c) => w.extend_from_slice(c.to_string().as_bytes()),
                        None => bail!("unterminated double quote"),
                    }
                }
            }
            c => cur
                .get_or_insert_with(Vec::new)
                .extend_from_slice(c.to_string().as_bytes()),
        }
    }
    if let Some(w) = cur {
        words.push(w);
    }
    Ok(words)
}

/// Bytes for people: text as is, other bytes as `\xNN`.
pub fn show(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len());
    for chunk in b.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => s.push_str("\\\\"),
                '\n' => s.push_str("\\n"),
                '\r' => s.push_str("\\r"),
                '\t' => s.push_str("\\t"),
                c if c.is_control() => s.push_str(&format!("\\x{:02x}", c as u32)),
                c => s.push(c),
            }
        }
        for b in chunk.invalid() {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s
}

/// A command's words: positional arguments and `name=value` options.
struct Words {
    pos: Vec<Vec<u8>>,
    opts: Vec<(String, Vec<u8>)>,
}

const OPTION_NAMES: &[&str] = &["pass", "expire", "flags", "parent", "limit", "cas"];

impl Words {
    fn new(words: Vec<Vec<u8>>) -> Words {
        let mut pos = Vec::new();
        let mut opts = Vec::new();
        for w in words {
            if let Some(i) = w.iter().position(|b| *b == b'=') {
                let name = String::from_utf8_lossy(&w[..i]).to_string();
                if OPTION_NAMES.contains(&name.as_str()) {
                    opts.push((name, w[i + 1..].to_vec()));
                    continue;
                }
            }
            pos.push(w);
        }
        Words { pos, opts }
    }

    fn opt(&self, name: &str) -> Option<&[u8]> {
        self.opts
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    fn opt_num<T: std::str::FromStr>(&self, name: &str) -> anyhow::Result<Option<T>> {
        self.opt(name)
            .map(|v| {
                std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| anyhow!("{name}= needs a number"))
            })
            .transpose()
    }

    fn arg(&self, i: usize, what: &str) -> anyhow::Result<&[u8]> {
        self.pos
            .get(i)
            .map(|v| v.as_slice())
            .ok_or_else(|| anyhow!("missing {what}"))
    }

    fn num<T: std::str::FromStr>(&self, i: usize, what: &str) -> anyhow::Result<T> {
        let v = self.arg(i, what)?;
        std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("{what} must be a number, not {:?}", show(v)))
    }

    fn word(&self, i: usize) -> Option<String> {
        self.pos
            .get(i)
            .map(|w| String::from_utf8_lossy(w).to_lowercase())
    }

    fn expire(&self) -> anyhow::Result<Expiry> {
        Ok(match self.opt_num::<u32>("expire")? {
            None => Expiry::Default,
            Some(0) => Expiry::Never,
            Some(s) => Expiry::After(s),
        })
    }

    fn write_opts(&self, mode: SetMode) -> anyhow::Result<WriteOptions> {
        Ok(WriteOptions {
            mode,
            flags: self.opt_num("flags")?,
            expire: self.expire()?,
            pass: self.opt("pass").map(|p| p.to_vec()),
            encrypt: None,
            cas: self.opt_num("cas")?,
        })
    }
}

/// What a command produced: text for people, JSON for scripts.
struct Out {
    text: String,
    json: Json,
}

fn out(text: impl Into<String>, json: Json) -> Out {
    Out {
        text: text.into(),
        json,
    }
}

fn bytes_json(b: &[u8]) -> Json {
    match std::str::from_utf8(b) {
        Ok(s) => json!(s),
        Err(_) => json!({ "hex": b.iter().map(|x| format!("{x:02x}")).collect::<String>() }),
    }
}

fn expiry_text(e: Expiry) -> String {
    match e {
        Expiry::At(t) => format!("at {t}"),
        Expiry::Never => "never".into(),
        other => format!("{other:?}"),
    }
}

fn expiry_json(e: Expiry) -> Json {
    match e {
        Expiry::At(t) => json!(t),
        _ => json!(0),
    }
}

/// The value of the literal word "null": an empty value (as in k2hdkclinetool).
fn value_of(v: &[u8]) -> &[u8] {
    if v == b"null" { b"" } else { v }
}

fn width_of(cmd: &str) -> anyhow::Result<u8> {
    match cmd {
        "cas" | "cas8" => Ok(8),
        "cas16" => Ok(16),
        "cas32" => Ok(32),
        "cas64" => Ok(64),
        _ => bail!("unknown counter command {cmd}"),
    }
}

const HELP: &str = "\
commands (aliases in brackets; options are name=value):
  print [p] KEY [all] [pass=P]        value, flags, cas, expiry (all: also sub-keys)
  directprint [dp] KEY LEN OFFSET     LEN bytes from OFFSET
  printattr [pa] KEY                  every attribute
  set [s] KEY VALUE [pass= expire= flags= cas=]   (VALUE null = empty)
  add | replace | append | prepend KEY VALUE [options]
  directset [dset] KEY VALUE OFFSET   overwrite from OFFSET
  fill [f] PREFIX VALUE COUNT         set PREFIX0..PREFIX<COUNT-1>
  fillsub [fs] PARENT PREFIX VALUE COUNT
  rm [del] KEY [all]                  delete (all: with every sub-key below)
  setsub [ss] PARENT KEY [VALUE]      add a sub-key (and write it)
  rmsub [delsub] PARENT KEY|all [rmsub]  unlist (rmsub: also delete the child)
  subkeys [sk] KEY                    list sub-keys
  rename [ren] KEY NEWKEY [parent=P] [pass=P]
  touch KEY SECONDS                   new expiry (0 = never)
  incr | decr KEY [N]                 memcached decimal arithmetic
  queue [que] NAME push fifo|lifo VALUE [pass= expire=]
  queue NAME pop|peek [pass=] | remove COUNT | len
  keyqueue [kque] NAME push fifo|lifo KEY VALUE [pass= expire=]
  keyqueue NAME pop|peek [pass=] | remove COUNT | len
  cas8|cas16|cas32|cas64 init KEY [VALUE] | get KEY | set KEY OLD NEW | add KEY DELTA
  cas increment|decrement KEY         width taken from the stored counter
  scan [PREFIX] [limit=N]             keys in order (all pages)
  versions KEY [pass=P]               previous values kept for KEY
  status                              server version and statistics
  flushall                            remove every key
  echo TEXT | sleep SECONDS | history | help | quit";

/// The shell session.
pub struct Shell {
    client: Client,
    history: Vec<String>,
}

impl Shell {
    async fn exec(&mut self, words: Vec<Vec<u8>>) -> anyhow::Result<Option<Out>> {
        let Some(first) = words.first() else {
            return Ok(None);
        };
        let cmd = String::from_utf8_lossy(first).to_lowercase();
        let w = Words::new(words[1..].to_vec());
        let c = &self.client;
        let pass = w.opt("pass");
        let r = match cmd.as_str() {
            "help" | "h" | "?" => out(HELP, json!(HELP)),
            "echo" => {
                let t: Vec<String> = w.pos.iter().map(|p| show(p)).collect();
                out(t.join(" "), json!(t.join(" ")))
            }
            "sleep" => {
                let s: f64 = w.num(0, "seconds")?;
                if !(0.0..=3600.0).contains(&s) {
                    bail!("sleep takes 0 to 3600 seconds");
                }
                tokio::time::sleep(Duration::from_secs_f64(s)).await;
                out("", Json::Null)
            }
            "history" => {
                let t: Vec<String> = self
                    .history
                    .iter()
                    .enumerate()
                    .map(|(i, h)| format!("{:>4}  {h}", i + 1))
                    .collect();
                out(t.join("\n"), json!(self.history))
            }
            "print" | "p" | "get" => {
                let key = w.arg(0, "KEY")?;
                match c.get_with_pass(key, pass).await? {
                    None => out("(not found)", Json::Null),
                    Some(it) => {
                        let mut text = format!(
                            "{} => {}  (flags {}, cas {}, expires {})",
                            show(key),
                            show(&it.value),
                            it.flags,
                            it.cas,
                            expiry_text(it.expire)
                        );
                        let mut j = json!({
                            "key": bytes_json(key), "value": bytes_json(&it.value),
                            "flags": it.flags, "cas": it.cas, "expire": expiry_json(it.expire),
                        });
                        if w.word(1).as_deref() == Some("all") {
                            let subs = c.subkeys(key).await?.unwrap_or_default();
                            for s in &subs {
                                let v = c.get_with_pass(s, pass).await?;
                                text.push_str(&format!(
                                    "\n  + {} => {}",
                                    show(s),
                                    v.map_or("(not found)".into(), |v| show(&v.value))
                                ));
                            }
                            j["subkeys"] = subs.iter().map(|s| bytes_json(s)).collect();
                        }
                        out(text, j)
                    }
                }
            }
            "directprint" | "dp" => {
                let key = w.arg(0, "KEY")?;
                let len: u64 = w.num(1, "LEN")?;
                let off: u64 = w.num(2, "OFFSET")?;
                match c.read_at(key, off, Some(len), pass).await? {
                    None => out("(not found)", Json::Null),
                    Some(v) => out(show(&v), bytes_json(&v)),
                }
            }
            "printattr" | "pa" | "attrs" => {
                let key = w.arg(0, "KEY")?;
                match c.attrs(key).await? {
                    None => out("(not found)", Json::Null),
                    Some(a) => {
                        let j = json!({
                            "kind": a.kind, "flags": a.flags, "cas": a.cas,
                            "version": format!("{}.{}@{}", a.version.0 >> 16, a.version.0 & 0xffff, a.version.1),
                            "expire": expiry_json(a.expire), "created": a.created,
                            "modified_ms": a.modified_ms, "encrypted": a.encrypted,
                            "stored_len": a.stored_len, "subkeys": a.subkeys, "history": a.history,
                        });
                        let text = j
                            .as_object()
                            .map(|o| {
                                o.iter()
                                    .map(|(k, v)| format!("{k:>12}: {v}"))
                                    .collect::<Vec<_>>()
                                    .join("\n")
                            })
                            .unwrap_or_default();
                        out(text, j)
                    }
                }
            }
            "set" | "s" | "add" | "replace" | "append" | "prepend" => {
                let mode = match cmd.as_str() {
                    "add" => SetMode::Add,
                    "replace" => SetMode::Replace,
                    "append" => SetMode::Append,
                    "prepend" => SetMode::Prepend,
                    _ => SetMode::Set,
                };
                let key = w.arg(0, "KEY")?;
                let val = value_of(w.arg(1, "VALUE")?);
                let cas = c.set_with(key, val, &w.write_opts(mode)?).await?;
                out(format!("stored (cas {cas})"), json!({ "cas": cas }))
            }
            "directset" | "dset" => {
                let key = w.arg(0, "KEY")?;
                let val = w.arg(1, "VALUE")?;
                let off: u64 = w.num(2, "OFFSET")?;
                let cas = c
                    .write_at(key, off, val, &w.write_opts(SetMode::Set)?)
                    .await?;
                out(format!("stored (cas {cas})"), json!({ "cas": cas }))
            }
            "fill" | "f" => {
                let prefix = w.arg(0, "PREFIX")?;
                let val = value_of(w.arg(1, "VALUE")?);
                let n: u64 = w.num(2, "COUNT")?;
                let mut done = 0u64;
                for chunk in (0..n).collect::<Vec<_>>().chunks(256) {
                    let mut p = c.pipeline();
                    for i in chunk {
                        let mut k = prefix.to_vec();
                        k.extend_from_slice(i.to_string().as_bytes());
                        p.set(&k, val);
                    }
                    for r in p.run().await? {
                        let r = r?;
                        if r.status() != Some(k2hdkc_client::Status::Ok) {
                            bail!("fill stopped after {done} keys: {:?}", r.message);
                        }
                        done += 1;
                    }
                }
                out(format!("{done} keys set"), json!({ "count": done }))
            }
            "fillsub" | "fs" => {
                let parent = w.arg(0, "PARENT")?;
                let prefix = w.arg(1, "PREFIX")?;
                let val = value_of(w.arg(2, "VALUE")?);
                let n: u64 = w.num(3, "COUNT")?;
                for i in 0..n {
                    let mut k = prefix.to_vec();
                    k.extend_from_slice(i.to_string().as_bytes());
                    c.add_subkey(parent, &k, Some(val)).await?;
                }
                out(format!("{n} sub-keys set"), json!({ "count": n }))
            }
            "rm" | "del" | "delete" => {
                let key = w.arg(0, "KEY")?;
                if w.word(1).as_deref() == Some("all") {
                    let n = c.delete_tree(key).await?;
                    out(format!("{n} keys deleted"), json!({ "count": n }))
                } else if c.delete(key).await? {
                    out("deleted", json!({ "deleted": true }))
                } else {
                    out("(not found)", json!({ "deleted": false }))
                }
            }
            "setsub" | "ss" => {
                let parent = w.arg(0, "PARENT")?;
                let key = w.arg(1, "KEY")?;
                let val = w.pos.get(2).map(|v| value_of(v));
                let opts = w.write_opts(SetMode::Set)?;
                c.add_subkey_with(parent, key, val, &opts).await?;
                out("sub-key added", json!({ "ok": true }))
            }
            "rmsub" | "delsub" => {
                let parent = w.arg(0, "PARENT")?;
                let which = w.arg(1, "KEY or all")?;
                let del_child = w.word(2).as_deref() == Some("rmsub");
                if which == b"all" {
                    let subs = c.subkeys(parent).await?.unwrap_or_default();
                    for s in &subs {
                        c.remove_subkey(parent, s, del_child).await?;
                    }
                    out(
                        format!("{} sub-keys removed", subs.len()),
                        json!({ "count": subs.len() }),
                    )
                } else if c.remove_subkey(parent, which, del_child).await? {
                    out("sub-key removed", json!({ "removed": true }))
                } else {
                    out("(not a sub-key)", json!({ "removed": false }))
                }
            }
            "subkeys" | "sk" => {
                let key = w.arg(0, "KEY")?;
                match c.subkeys(key).await? {
                    None => out("(not found)", Json::Null),
                    Some(s) => out(
                        s.iter().map(|k| show(k)).collect::<Vec<_>>().join("\n"),
                        s.iter().map(|k| bytes_json(k)).collect(),
                    ),
                }
            }
            "rename" | "ren" => {
                let from = w.arg(0, "KEY")?;
                let to = w.arg(1, "NEWKEY")?;
                c.rename(from, to, w.opt("parent"), pass).await?;
                out("renamed", json!({ "ok": true }))
            }
            "touch" => {
                let key = w.arg(0, "KEY")?;
                let s: u32 = w.num(1, "SECONDS")?;
                let e = if s == 0 {
                    Expiry::Never
                } else {
                    Expiry::After(s)
                };
                if c.touch(key, e).await? {
                    out("touched", json!({ "touched": true }))
                } else {
                    out("(not found)", json!({ "touched": false }))
                }
            }
            "incr" | "decr" => {
                let key = w.arg(0, "KEY")?;
                let n: u64 = if w.pos.len() > 1 { w.num(1, "N")? } else { 1 };
                let r = if cmd == "incr" {
                    c.incr(key, n).await?
                } else {
                    c.decr(key, n).await?
                };
                match r {
                    None => out("(not found)", Json::Null),
                    Some(v) => out(v.to_string(), json!(v)),
                }
            }
            "queue" | "que" | "keyqueue" | "kque" => self.queue(&cmd, &w).await?,
            "cas" | "cas8" | "cas16" | "cas32" | "cas64" => self.counter(&cmd, &w).await?,
            "scan" => {
                let prefix = w.pos.first().map(|p| p.as_slice()).unwrap_or_default();
                let max: usize = w.opt_num("limit")?.unwrap_or(usize::MAX);
                let mut keys = Vec::new();
                let mut after: Option<Vec<u8>> = None;
                while keys.len() < max {
                    let page = c
                        .scan(
                            prefix,
                            after.as_deref(),
                            (max - keys.len()).min(1000) as u32,
                        )
                        .await?;
                    keys.extend(page.keys);
                    after = page.next;
                    if after.is_none() {
                        break;
                    }
                }
                keys.truncate(max);
                let mut text: Vec<String> = keys.iter().map(|k| show(k)).collect();
                text.push(format!("({} keys)", keys.len()));
                out(
                    text.join("\n"),
                    keys.iter().map(|k| bytes_json(k)).collect(),
                )
            }
            "versions" => {
                let key = w.arg(0, "KEY")?;
                let h = c.history(key, pass).await?;
                let text: Vec<String> = h
                    .iter()
                    .map(|((ts, node), v)| {
                        format!("{}.{}@{node}  {}", ts >> 16, ts & 0xffff, show(v))
                    })
                    .collect();
                let j: Json = h
                    .iter()
                    .map(
                        |((ts, node), v)| json!({ "ts": ts, "node": node, "value": bytes_json(v) }),
                    )
                    .collect();
                out(
                    if text.is_empty() {
                        "(no previous versions)".into()
                    } else {
                        text.join("\n")
                    },
                    j,
                )
            }
            "status" | "stat" | "stats" => {
                let (version, proto) = c.hello().await?;
                let stats = c.stats().await?;
                let mut text = format!(
                    "server {} at {} (native protocol v{proto})",
                    version,
                    c.addr()
                );
                if let Some(o) = stats.as_object() {
                    for (k, v) in o {
                        text.push_str(&format!(
                            "\n{k:>24}: {}",
                            v.as_str().unwrap_or(&v.to_string())
                        ));
                    }
                }
                out(
                    text,
                    json!({ "version": version, "protocol": proto, "stats": stats }),
                )
            }
            "flushall" => {
                let n = c.flush_all().await?;
                out(format!("{n} keys removed"), json!({ "count": n }))
            }
            other => bail!("unknown command {other:?} (try help)"),
        };
        Ok(Some(r))
    }

    async fn queue(&self, cmd: &str, w: &Words) -> anyhow::Result<Out> {
        let c = &self.client;
        let keyed = cmd.starts_with('k');
        let name = w.arg(0, "NAME")?;
        let pass = w.opt("pass");
        let verb = w
            .word(1)
            .ok_or_else(|| anyhow!("missing push|pop|peek|remove|len"))?;
        Ok(match verb.as_str() {
            "push" => {
                let fifo = match w.word(2).as_deref() {
                    Some("fifo") => true,
                    Some("lifo") => false,
                    _ => bail!("push needs fifo or lifo"),
                };
                let (key, val) = if keyed {
                    (Some(w.arg(3, "KEY")?), w.arg(4, "VALUE")?)
                } else {
                    (None, w.arg(3, "VALUE")?)
                };
                let n = c
                    .queue_push_with(name, key, value_of(val), fifo, w.expire()?, pass)
                    .await?;
                out(format!("pushed ({n} items)"), json!({ "length": n }))
            }
            "pop" | "peek" => {
                let item = if verb == "pop" {
                    c.queue_pop(name, pass).await?
                } else {
                    c.queue_peek(name, pass).await?
                };
                match item {
                    None => out("(empty)", Json::Null),
                    Some(it) => match &it.key {
                        Some(k) => out(
                            format!("{} => {}", show(k), show(&it.value)),
                            json!({ "key": bytes_json(k), "value": bytes_json(&it.value) }),
                        ),
                        None => out(show(&it.value), json!({ "value": bytes_json(&it.value) })),
                    },
                }
            }
            "remove" | "rm" => {
                let n: u64 = w.num(2, "COUNT")?;
                let r = c.queue_remove(name, n).await?;
                out(format!("{r} items removed"), json!({ "count": r }))
            }
            "len" | "count" => {
                let n = c.queue_len(name).await?;
                out(n.to_string(), json!(n))
            }
            other => bail!("unknown queue verb {other:?}: push, pop, peek, remove or len"),
        })
    }

    async fn counter(&self, cmd: &str, w: &Words) -> anyhow::Result<Out> {
        let c = &self.client;
        let verb = w
            .word(0)
            .ok_or_else(|| anyhow!("missing init|get|set|add"))?;
        let key = w.arg(1, "KEY")?;
        if cmd == "cas" && (verb == "increment" || verb == "decrement") {
            let kind = c
                .attrs(key)
                .await?
                .ok_or_else(|| anyhow!("no such counter"))?
                .kind;
            // Kind names are "8-bit counter" .. "64-bit counter".
            let width: u8 = kind
                .strip_suffix("-bit counter")
                .and_then(|b| b.parse().ok())
                .ok_or_else(|| anyhow!("{} is a {kind}, not a counter", show(key)))?;
            let d = if verb == "increment" { 1 } else { -1 };
            let v = c.counter_add(key, width, d).await?;
            return Ok(out(v.to_string(), json!(v)));
        }
        let width = width_of(cmd)?;
        Ok(match verb.as_str() {
            "init" => {
                let v: u64 = if w.pos.len() > 2 {
                    w.num(2, "VALUE")?
                } else {
                    0
                };
                c.counter_init(key, width, v).await?;
                out(v.to_string(), json!(v))
            }
            "get" => match c.counter_get(key, width).await? {
                None => out("(not found)", Json::Null),
                Some(v) => out(v.to_string(), json!(v)),
            },
            "set" => {
                let old: u64 = w.num(2, "OLD")?;
                let new: u64 = w.num(3, "NEW")?;
                if c.counter_cas(key, width, old, new).await? {
                    out(new.to_string(), json!({ "swapped": true, "value": new }))
                } else {
                    bail!("not swapped: the counter is not {old}")
                }
            }
            "add" => {
                let d: i64 = w.num(2, "DELTA")?;
                let v = c.counter_add(key, width, d).await?;
                out(v.to_string(), json!(v))
            }
            other => bail!("unknown counter verb {other:?}: init, get, set or add"),
        })
    }

    /// Run one line; prints the result. Returns Ok(false) on `quit`, Err on a failed command.
    pub async fn line(&mut self, line: &str, json_out: bool) -> anyhow::Result<bool> {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return Ok(true);
        }
        let line = match line.strip_prefix('!') {
            Some(n) => {
                let i: usize = n.parse().context("!N re-runs history entry N")?;
                self.history
                    .get(i.wrapping_sub(1))
                    .cloned()
                    .ok_or_else(|| anyhow!("no history entry {i}"))?
            }
            None => line.to_string(),
        };
        if matches!(line.as_str(), "quit" | "exit" | "q") {
            return Ok(false);
        }
        self.history.push(line.clone());
        let r = match split(&line) {
            Ok(words) => self.exec(words).await,
            Err(e) => Err(e),
        };
        match r {
            Ok(None) => {}
            Ok(Some(o)) => {
                if json_out {
                    println!(
                        "{}",
                        json!({ "command": line, "ok": true, "result": o.json })
                    );
                } else if !o.text.is_empty() {
                    println!("{}", o.text);
                }
            }
            Err(e) => {
                if json_out {
                    let mut j = json!({ "command": line, "ok": false, "error": e.to_string() });
                    if let Some(s) = e
                        .downcast_ref::<k2hdkc_client::ClientError>()
                        .and_then(|c| c.status())
                    {
                        j["status"] = json!(s.name());
                    }
                    println!("{j}");
                } else {
                    eprintln!("error: {e}");
                }
                return Err(e);
            }
        }
        Ok(true)
    }
}

/// Run the shell; returns the process exit code.
pub async fn run(a: ShellArgs) -> anyhow::Result<i32> {
    let mut cfg = ClientConfig::new(a.addr);
    cfg.connections = 1;
    cfg.request_timeout = Duration::from_secs(a.timeout.max(1));
    // A cluster that requires TLS: K2HDKC_TLS_CA / _CERT / _KEY name the files.
    if let Some(f) = k2hdkc_client::TlsFiles::from_env() {
        cfg.tls = Some(f.connector().map_err(|e| anyhow::anyhow!("TLS: {e}"))?);
    }
    let client = Client::connect(cfg).await?;
    let mut sh = Shell {
        client,
        history: Vec::new(),
    };
    let mut failed = 0usize;
    let mut script: Vec<String> = a.commands.clone();
    if let Some(p) = &a.run {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        script.extend(text.lines().map(str::to_string));
    }
    let interactive = script.is_empty() && std::io::stdin().is_terminal();
    if !script.is_empty() || !interactive {
        if script.is_empty() {
            for l in std::io::stdin().lock().lines() {
                script.push(l.context("reading stdin")?);
            }
        }
        for l in &script {
            match sh.line(l, a.json).await {
                Ok(true) => {}
                Ok(false) => break,
                Err(_) => failed += 1,
            }
        }
        return Ok(i32::from(failed > 0));
    }
    interactive_loop(&mut sh, &a).await
}

async fn interactive_loop(sh: &mut Shell, a: &ShellArgs) -> anyhow::Result<i32> {
    use rustyline::error::ReadlineError;
    let mut ed = rustyline::DefaultEditor::new().context("terminal")?;
    let hist = a.history_file.clone().or_else(|| {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".k2hdkc_shell_history"))
    });
    if let Some(h) = &hist {
        let _ = ed.load_history(h);
    }
    println!(
        "k2hdkc shell connected to {} (help for commands, quit to leave)",
        a.addr
    );
    loop {
        match ed.readline("k2hdkc> ") {
            Ok(l) => {
                if !l.trim().is_empty() {
                    let _ = ed.add_history_entry(l.as_str());
                }
                match sh.line(&l, a.json).await {
                    Ok(true) | Err(_) => {}
                    Ok(false) => break,
                }
            }
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(h) = &hist {
        let _ = ed.save_history(h);
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitting_and_quoting() {
        let w = split(r#"set "a b" 'c\d' x"\x41\n"y  "#).unwrap();
        assert_eq!(
            w,
            vec![
                b"set".to_vec(),
                b"a b".to_vec(),
                b"c\\d".to_vec(),
                b"xA\ny".to_vec()
            ]
        );
        assert!(split("set \"open").is_err());
        assert!(split("set \"\\xZZ\"").is_err());
        assert_eq!(split("").unwrap(), Vec::<Vec<u8>>::new());
        assert_eq!(split("k \"\"").unwrap(), vec![b"k".to_vec(), Vec::new()]);
    }

    #[test]
    fn showing_bytes() {
        assert_eq!(show(b"plain"), "plain");
        assert_eq!(show(b"a\nb\x00\xff"), "a\\nb\\x00\\xff");
    }

    #[test]
    fn options_are_split_from_arguments() {
        let w = Words::new(split("k v pass=pw expire=10 other=1").unwrap());
        assert_eq!(
            w.pos,
            vec![b"k".to_vec(), b"v".to_vec(), b"other=1".to_vec()]
        );
        assert_eq!(w.opt("pass"), Some(&b"pw"[..]));
        assert_eq!(w.expire().unwrap(), Expiry::After(10));
        assert!(Words::new(split("expire=x").unwrap()).expire().is_err());
    }
}
