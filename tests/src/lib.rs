//! Harness for the system tests: find the workspace's binaries, pick free loopback ports, run
//! child processes that are killed (by pid) when the test ends, even when it fails.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of a workspace binary built next to this test executable (`scripts/test.sh` builds
/// them first with `cargo build --workspace --bins`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/system-<hash> -> target/<profile>/<name>
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        p.display()
    );
    p
}

/// A loopback address with a port that was free a moment ago.
///
/// Taken below the kernel's ephemeral range: a port from `bind(:0)` is an ephemeral one, and a
/// server started on it seconds later can find it taken by the local end of some other test's
/// outgoing connection (seen in CI: a node that "did not start"). Each call of a process
/// moves on to the next port (from a start that differs per process), checked by binding it.
pub fn free_addr() -> SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let lowest_ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (lo, hi) = (10_000u32, lowest_ephemeral.min(65_536));
    if hi > lo + 1000 {
        let span = hi - lo;
        // Spread processes over the range: a test binary's runs do not share a counter.
        let _ = NEXT.compare_exchange(
            0,
            1 + (std::process::id().wrapping_mul(7919) % span),
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        for _ in 0..2000 {
            let port = lo + NEXT.fetch_add(1, Ordering::SeqCst) % span;
            if let Ok(l) = TcpListener::bind(("127.0.0.1", port as u16)) {
                return l.local_addr().expect("local addr");
            }
        }
    }
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr")
}

/// Wait until something accepts connections at `addr`.
pub fn wait_listening(addr: SocketAddr, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

/// A child process killed with SIGKILL when dropped.
pub struct Proc {
    child: Option<Child>,
    /// What was started, for messages.
    pub what: String,
}

impl Proc {
    /// Start `bin` with `args`; stdout and stderr go to `log` (or are discarded).
    pub fn start(bin: &PathBuf, args: &[String], log: Option<&std::path::Path>) -> Proc {
        let mut cmd = Command::new(bin);
        cmd.args(args).stdin(Stdio::null());
        match log {
            Some(p) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .expect("log file");
                cmd.stdout(f.try_clone().expect("dup")).stderr(f);
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        Proc {
            child: Some(child),
            what: format!("{} {}", bin.display(), args.join(" ")),
        }
    }

    /// The child's pid while it is ours.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait up to `within`; SIGKILL after that. Returns whether it exited by itself.
    pub fn terminate(&mut self, within: Duration) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    /// Send a signal (e.g. "STOP", "CONT") to it; false if it is not running.
    pub fn signal(&mut self, sig: &str) -> bool {
        let Some(c) = self.child.as_ref() else {
            return false;
        };
        Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(c.id().to_string())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Hosts in network namespaces: each host is a namespace with its own address on a bridge
/// that the test creates (the bridge also has an address in the test's namespace, so the test
/// reaches every host as a client). A host's link can be cut and healed. Needs root (and
/// `ip`); [`NetLab::new`] returns `None` with the reason otherwise. Dropping it deletes the
/// namespaces (their processes must be stopped first: keep the `Proc`s declared after it) and
/// the bridge; namespaces left by a test process that died are removed by the next one.
pub struct NetLab {
    tag: String,
    subnet: [u8; 3],
    hosts: usize,
    // One lab at a time in this process: the labs' tests cut links and time failure
    // detection, and two of them sharing the two cores skew each other's timing.
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

static LAB_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Prefix of everything a [`NetLab`] creates: `k2t<pid>x<n>`.
const LAB_PREFIX: &str = "k2t";

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl NetLab {
    /// Make `hosts` hosts, or say why not.
    pub fn new(hosts: usize) -> Result<NetLab, String> {
        static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        if !is_root() {
            return Err("not root: network namespaces need CAP_NET_ADMIN".into());
        }
        assert!((1..=200).contains(&hosts));
        let guard = LAB_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        Self::sweep();
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let pid = std::process::id();
        // Interface names are at most 15 bytes: k2t + 5 digits + x + counter + host suffix.
        let tag = format!("{LAB_PREFIX}{}x{n}", pid % 100_000);
        let third = ((pid as usize * 7 + n as usize * 13) % 200 + 20) as u8;
        let lab = NetLab {
            tag,
            subnet: [10, 233, third],
            hosts,
            _one_at_a_time: guard,
        };
        // On an error the half-built lab is dropped, which deletes what was made.
        lab.build()?;
        Ok(lab)
    }

    fn bridge(&self) -> String {
        format!("{}b", self.tag)
    }

    fn veth(&self, i: usize) -> String {
        format!("{}v{i}", self.tag)
    }

    /// Namespace of host `i`.
    pub fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.tag)
    }

    /// Address of host `i`.
    pub fn addr(&self, i: usize) -> std::net::IpAddr {
        let [a, b, c] = self.subnet;
        std::net::IpAddr::from([a, b, c, i as u8 + 1])
    }

    fn build(&self) -> Result<(), String> {
        let [a, b, c] = self.subnet;
        let br = self.bridge();
        ip(&["link", "add", &br, "type", "bridge"])?;
        ip(&["link", "set", &br, "up"])?;
        ip(&["addr", "add", &format!("{a}.{b}.{c}.254/24"), "dev", &br])?;
        for i in 0..self.hosts {
            let (ns, v, inner) = (self.ns(i), self.veth(i), format!("{}i{i}", self.tag));
            ip(&["netns", "add", &ns])?;
            ip(&["link", "add", &v, "type", "veth", "peer", "name", &inner])?;
            ip(&["link", "set", &inner, "netns", &ns])?;
            ip(&["link", "set", &v, "master", &br])?;
            ip(&["link", "set", &v, "up"])?;
            ip(&["-n", &ns, "link", "set", &inner, "name", "eth0"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", self.addr(i)),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// Cut host `i` off the network (its link goes down; packets to and from it are lost).
    pub fn cut(&self, i: usize) {
        ip(&["link", "set", &self.veth(i), "down"]).expect("cut");
    }

    /// Reconnect host `i`.
    pub fn heal(&self, i: usize) {
        ip(&["link", "set", &self.veth(i), "up"]).expect("heal");
    }

    /// Cut only the link between hosts `i` and `j`: each drops what it would send to the
    /// other (a blackhole route), while both still reach every other host.
    pub fn cut_link(&self, i: usize, j: usize) {
        for (from, to) in [(i, j), (j, i)] {
            let dst = format!("{}/32", self.addr(to));
            ip(&["-n", &self.ns(from), "route", "add", "blackhole", &dst]).expect("cut link");
        }
    }

    /// Restore the link [`NetLab::cut_link`] cut.
    pub fn heal_link(&self, i: usize, j: usize) {
        for (from, to) in [(i, j), (j, i)] {
            let dst = format!("{}/32", self.addr(to));
            ip(&["-n", &self.ns(from), "route", "del", "blackhole", &dst]).expect("heal link");
        }
    }

    /// Start `bin args` inside host `i`.
    pub fn start(
        &self,
        i: usize,
        bin: &std::path::Path,
        args: &[String],
        log: Option<&std::path::Path>,
    ) -> Proc {
        let mut all = vec![
            "netns".to_string(),
            "exec".into(),
            self.ns(i),
            bin.display().to_string(),
        ];
        all.extend(args.iter().cloned());
        // `ip netns exec` replaces itself with the program: the pid is the program's.
        let mut p = Proc::start(&PathBuf::from("ip"), &all, log);
        p.what = format!("{} (in {})", p.what, self.ns(i));
        p
    }

    /// Delete what test processes that no longer run left behind.
    fn sweep() {
        let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
            return;
        };
        // Names hold the low 5 digits of the creating pid: a namespace is stale when no
        // running process has a pid ending so (at worst a stale one survives a while).
        let running: std::collections::HashSet<String> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|p| p.parse::<u32>().ok())
            .map(|p| (p % 100_000).to_string())
            .collect();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            let Some(rest) = name.strip_prefix(LAB_PREFIX) else {
                continue;
            };
            let (Some(pid5), Some(cut)) = (rest.split('x').next(), name.rfind('n')) else {
                continue;
            };
            if !running.contains(pid5) {
                let _ = ip(&["netns", "del", name]);
                let _ = ip(&["link", "del", &format!("{}b", &name[..cut])]);
            }
        }
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        for i in 0..self.hosts {
            let _ = ip(&["netns", "del", &self.ns(i)]);
            let _ = ip(&["link", "del", &self.veth(i)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// A scratch directory for a test; with `K2HDKC_KEEP_TEST_DIRS=1` it is kept (and printed) so
/// the logs of a failed run can be read.
pub fn test_dir() -> tempfile::TempDir {
    let keep = std::env::var_os("K2HDKC_KEEP_TEST_DIRS").is_some_and(|v| v == "1");
    let d = tempfile::Builder::new()
        .prefix("k2hdkc-test-")
        .disable_cleanup(keep)
        .tempdir()
        .expect("tempdir");
    if keep {
        eprintln!("test directory kept: {}", d.path().display());
    }
    d
}
