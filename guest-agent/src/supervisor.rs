//! Supervision of this host's `k2hdkc server`: one child at a time, started when wanted,
//! restarted with exponential backoff (0.5 s doubling to 30 s, reset after a minute of good
//! running) when it dies, stopped gracefully (SIGTERM, then SIGKILL after a grace time).
//!
//! Invariant: at most one child runs; `want(false)` returns only once the child has exited;
//! the agent never signals a pid it did not start.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, watch};

/// What the supervisor reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not wanted, not running.
    Stopped,
    /// Running (pid).
    Running(u32),
    /// Died; waiting to restart.
    Backoff,
}

/// How to run the server.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The binary.
    pub bin: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its log file (appended).
    pub log: PathBuf,
}

/// The supervisor handle.
#[derive(Debug, Clone)]
pub struct Supervisor {
    want: watch::Sender<bool>,
    state: watch::Receiver<State>,
    restarts: Arc<std::sync::atomic::AtomicU64>,
    lock: Arc<Mutex<()>>,
}

const GRACE: Duration = Duration::from_secs(20);

impl Supervisor {
    /// Start supervising (nothing runs until [`Supervisor::want`]`(true)`).
    pub fn new(spec: Spec) -> Supervisor {
        let (want_tx, want_rx) = watch::channel(false);
        let (state_tx, state_rx) = watch::channel(State::Stopped);
        let restarts = Arc::new(std::sync::atomic::AtomicU64::new(0));
        tokio::spawn(run(spec, want_rx, state_tx, restarts.clone()));
        Supervisor {
            want: want_tx,
            state: state_rx,
            restarts,
            lock: Arc::new(Mutex::new(())),
        }
    }

    /// Ask for the server to run or not; with `false`, wait (bounded) until it has exited.
    pub async fn want(&self, on: bool) {
        let _g = self.lock.lock().await;
        self.want.send_replace(on);
        let mut st = self.state.clone();
        let deadline = Instant::now() + GRACE + Duration::from_secs(5);
        while Instant::now() < deadline {
            let s = *st.borrow_and_update();
            let done = if on {
                matches!(s, State::Running(_) | State::Backoff)
            } else {
                s == State::Stopped
            };
            if done {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), st.changed()).await;
        }
    }

    /// Whether it is wanted.
    pub fn wanted(&self) -> bool {
        *self.want.borrow()
    }

    /// The current state.
    pub fn state(&self) -> State {
        *self.state.borrow()
    }

    /// Restarts after crashes so far.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stop and start again.
    pub async fn restart(&self) {
        self.want(false).await;
        self.want(true).await;
    }
}

fn signal(pid: u32, sig: rustix::process::Signal) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

async fn run(
    spec: Spec,
    mut want: watch::Receiver<bool>,
    state: watch::Sender<State>,
    restarts: Arc<std::sync::atomic::AtomicU64>,
) {
    let mut backoff = Duration::from_millis(500);
    loop {
        // Wait until wanted.
        while !*want.borrow_and_update() {
            if want.changed().await.is_err() {
                return;
            }
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log);
        let (out, err) = match log.and_then(|f| Ok((f.try_clone()?, f))) {
            Ok((a, b)) => (Stdio::from(a), Stdio::from(b)),
            Err(e) => {
                tracing::error!(log = %spec.log.display(), error = %e, "cannot open the server log");
                (Stdio::null(), Stdio::null())
            }
        };
        let child = tokio::process::Command::new(&spec.bin)
            .args(&spec.args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(bin = %spec.bin.display(), error = %e, "cannot start k2hdkc server");
                state.send_replace(State::Backoff);
                wait_or_unwanted(&mut want, backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                if !*want.borrow() {
                    state.send_replace(State::Stopped);
                }
                continue;
            }
        };
        let pid = child.id().unwrap_or(0);
        let started = Instant::now();
        tracing::info!(pid, "k2hdkc server started");
        state.send_replace(State::Running(pid));
        let unwanted = loop {
            tokio::select! {
                r = child.wait() => {
                    tracing::warn!(pid, status = ?r.ok(), "k2hdkc server exited");
                    break false;
                }
                c = want.changed() => {
                    if c.is_err() || !*want.borrow() { break true; }
                }
            }
        };
        if unwanted {
            signal(pid, rustix::process::Signal::TERM);
            if tokio::time::timeout(GRACE, child.wait()).await.is_err() {
                tracing::warn!(pid, "k2hdkc server ignored SIGTERM; killing it");
                let _ = child.kill().await;
            }
            tracing::info!(pid, "k2hdkc server stopped");
            state.send_replace(State::Stopped);
            backoff = Duration::from_millis(500);
            continue;
        }
        if started.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_millis(500);
        }
        restarts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        state.send_replace(State::Backoff);
        wait_or_unwanted(&mut want, backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
        if !*want.borrow() {
            state.send_replace(State::Stopped);
        }
    }
}

async fn wait_or_unwanted(want: &mut watch::Receiver<bool>, d: Duration) {
    let end = tokio::time::Instant::now() + d;
    while *want.borrow() {
        match tokio::time::timeout_at(end, want.changed()).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}
