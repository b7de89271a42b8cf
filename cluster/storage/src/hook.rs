//! The transaction hook (K2HDKC's k2htpdtor): every change that passes a filter becomes one
//! JSON line (see [`crate::Change::to_json`]) appended to a file and/or written to the stdin
//! of an external program.
//!
//! Delivery: lines follow the change sequence. With a file, a restarted store resumes after the
//! last line already in the file, so a restart neither repeats nor skips changes the feed
//! still holds. If the hook falls further behind than the feed keeps, it writes a
//! `{"format":1,"gap":{"from":A,"to":B}}` line instead of silently skipping. A program that
//! exits or fails is restarted after a second and gets the batch again (at-least-once).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::change::{ChangeFilter, ChangeKind};
use crate::error::{Error, Result};
use crate::store::Store;

/// Configuration of the transaction hook.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookConfig {
    /// Append lines to this file.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Start this program (argv) and write lines to its stdin.
    #[serde(default)]
    pub program: Option<Vec<String>>,
    /// Only changes touching keys with this prefix.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Only these kinds of change.
    #[serde(default)]
    pub kinds: Option<Vec<ChangeKind>>,
}

impl HookConfig {
    /// Check the configuration.
    pub fn validate(&self) -> Result<()> {
        if self.file.is_none() && self.program.is_none() {
            return Err(Error::InvalidArgument(
                "hook needs a file or a program".into(),
            ));
        }
        if self
            .program
            .as_ref()
            .is_some_and(|p| p.is_empty() || p[0].is_empty())
        {
            return Err(Error::InvalidArgument("hook program is empty".into()));
        }
        Ok(())
    }

    fn filter(&self) -> ChangeFilter {
        ChangeFilter {
            prefix: self.prefix.as_ref().map(|p| p.as_bytes().to_vec()),
            kinds: self.kinds.clone(),
        }
    }
}

/// The sequence number after the last complete line of an existing hook file.
fn resume_point(path: &Path) -> Option<u64> {
    let f = File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let mut r = BufReader::new(f);
    // Lines are short unless values are large; read the tail generously.
    let start = len.saturating_sub(4 << 20);
    r.seek(SeekFrom::Start(start)).ok()?;
    let mut last = None;
    for line in r.lines().map_while(|l| l.ok()) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
            if let Some(s) = v.get("seq").and_then(|s| s.as_u64()) {
                last = Some(s + 1);
            } else if let Some(to) = v.pointer("/gap/to").and_then(|s| s.as_u64()) {
                last = Some(to);
            }
        }
    }
    last
}

struct Program {
    argv: Vec<String>,
    child: Option<Child>,
}

impl Program {
    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.child.is_none() {
            let child = Command::new(&self.argv[0])
                .args(&self.argv[1..])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()?;
            self.child = Some(child);
        }
        let child = self.child.as_mut().expect("spawned");
        let r = child
            .stdin
            .as_mut()
            .expect("piped stdin")
            .write_all(bytes)
            .and_then(|_| child.stdin.as_mut().expect("piped stdin").flush());
        if r.is_err() {
            self.stop();
        }
        r
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Closing stdin is the program's signal to finish; give it a moment before a kill.
            drop(c.stdin.take());
            for _ in 0..20 {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Start the hook thread of `store`.
pub(crate) fn start(store: &Store, cfg: HookConfig) -> Result<()> {
    cfg.validate()?;
    let mut file = match &cfg.file {
        Some(p) => Some(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| Error::io(format!("open hook file {}", p.display()), e))?,
        ),
        None => None,
    };
    let mut cursor = cfg
        .file
        .as_deref()
        .and_then(resume_point)
        .unwrap_or_else(|| store.last_seq() + 1);
    let filter = cfg.filter();
    let mut program = cfg
        .program
        .clone()
        .map(|argv| Program { argv, child: None });
    let weak = std::sync::Arc::downgrade(&store.inner);
    let h = std::thread::Builder::new()
        .name("k2hdkc-hook".into())
        .spawn(move || {
            let mut out = Vec::new();
            loop {
                let Some(inner) = weak.upgrade() else { break };
                let s = Store { inner };
                if s.stopping() {
                    break;
                }
                out.clear();
                let next = match s.feed_read(cursor, &filter, 1024) {
                    Ok(b) => {
                        for c in &b.changes {
                            serde_json::to_writer(&mut out, &c.to_json()).expect("json to memory");
                            out.push(b'\n');
                        }
                        b.next_seq
                    }
                    Err(Error::FeedTruncated { oldest }) => {
                        tracing::warn!(
                            from = cursor,
                            to = oldest,
                            "hook fell behind the change feed"
                        );
                        let gap =
                            serde_json::json!({"format": 1, "gap": {"from": cursor, "to": oldest}});
                        serde_json::to_writer(&mut out, &gap).expect("json to memory");
                        out.push(b'\n');
                        oldest
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "hook cannot read the change feed");
                        break;
                    }
                };
                if next == cursor {
                    s.feed_wait(cursor, Duration::from_millis(200));
                    continue;
                }
                if !out.is_empty() {
                    if let Some(p) = program.as_mut()
                        && let Err(e) = p.send(&out)
                    {
                        tracing::warn!(error = %e, "hook program failed; restarting it in 1s");
                        if s.sleep(Duration::from_secs(1)) {
                            break;
                        }
                        continue;
                    }
                    if let Some(f) = file.as_mut()
                        && let Err(e) = f.write_all(&out)
                    {
                        tracing::warn!(error = %e, "hook file write failed; retrying in 1s");
                        if s.sleep(Duration::from_secs(1)) {
                            break;
                        }
                        continue;
                    }
                }
                cursor = next;
            }
            if let Some(f) = file.as_mut() {
                let _ = f.sync_data();
            }
            if let Some(p) = program.as_mut() {
                p.stop();
            }
        })
        .map_err(|e| Error::io("spawn hook thread", e))?;
    store.inner_workers_push(h);
    Ok(())
}
