//! The memcached front-end against an in-process server on 127.0.0.1, port 0.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use k2hdkc_node::{Server, ServerConfig};

struct Running {
    rt: tokio::runtime::Runtime,
    server: Option<Server>,
    addr: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            let _ = self.rt.block_on(s.shutdown());
        }
    }
}

fn start(f: impl FnOnce(&mut ServerConfig)) -> Running {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut c = ServerConfig::default();
    c.listen.memcached = Some("127.0.0.1:0".parse().unwrap());
    c.listen.admin = Some("127.0.0.1:0".parse().unwrap());
    c.storage.max_value_bytes = 64 << 10;
    c.limits.max_request_bytes = 128 << 10;
    f(&mut c);
    let server = rt.block_on(Server::start(c)).unwrap();
    let addr = server.addr("memcached").unwrap();
    let admin = server.addr("admin").unwrap();
    Running {
        rt,
        server: Some(server),
        addr,
        admin,
    }
}

/// A client connection: TCP, or a Unix socket ([`Conn::unix`]).
struct Conn<S = TcpStream>(S);

impl Conn {
    fn new(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Conn(s)
    }
}

impl Conn<std::os::unix::net::UnixStream> {
    fn unix(path: &std::path::Path) -> std::io::Result<Self> {
        let s = std::os::unix::net::UnixStream::connect(path)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(Conn(s))
    }
}

impl<S: Read + Write> Conn<S> {
    fn send(&mut self, b: &[u8]) {
        self.0.write_all(b).unwrap();
    }
    /// Read until the reply ends with `end` (or time out).
    fn read_until(&mut self, end: &[u8]) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        while !got.ends_with(end) {
            match self.0.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => panic!("read failed after {:?}: {e}", String::from_utf8_lossy(&got)),
            }
        }
        got
    }
    fn cmd(&mut self, c: &str, end: &str) -> String {
        self.send(c.as_bytes());
        String::from_utf8(self.read_until(end.as_bytes())).unwrap()
    }
    fn read_exact(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        self.0.read_exact(&mut v).unwrap();
        v
    }
}

#[test]
fn text_protocol_commands() {
    let s = start(|_| {});
    let mut c = Conn::new(s.addr);
    assert_eq!(c.cmd("set a 5 0 3\r\nabc\r\n", "\r\n"), "STORED\r\n");
    assert_eq!(
        c.cmd("get a\r\n", "END\r\n"),
        "VALUE a 5 3\r\nabc\r\nEND\r\n"
    );
    assert_eq!(
        c.cmd("get nope a nope\r\n", "END\r\n"),
        "VALUE a 5 3\r\nabc\r\nEND\r\n"
    );
    let gets = c.cmd("gets a\r\n", "END\r\n");
    let cas: u64 = gets.split_whitespace().nth(4).unwrap().parse().unwrap();
    assert_eq!(
        c.cmd(&format!("cas a 0 0 1 {}\r\nx\r\n", cas + 1), "\r\n"),
        "EXISTS\r\n"
    );
    assert_eq!(
        c.cmd(&format!("cas a 0 0 1 {cas}\r\nx\r\n"), "\r\n"),
        "STORED\r\n"
    );
    assert_eq!(c.cmd("cas zz 0 0 1 5\r\nx\r\n", "\r\n"), "NOT_FOUND\r\n");
    assert_eq!(c.cmd("add a 0 0 1\r\ny\r\n", "\r\n"), "NOT_STORED\r\n");
    assert_eq!(c.cmd("replace b 0 0 1\r\ny\r\n", "\r\n"), "NOT_STORED\r\n");
    assert_eq!(c.cmd("append a 9 9 2\r\n>>\r\n", "\r\n"), "STORED\r\n");
    assert_eq!(c.cmd("prepend a 0 0 2\r\n<<\r\n", "\r\n"), "STORED\r\n");
    assert_eq!(
        c.cmd("get a\r\n", "END\r\n"),
        "VALUE a 0 5\r\n<<x>>\r\nEND\r\n"
    );
    assert_eq!(c.cmd("set n 0 0 2\r\n10\r\n", "\r\n"), "STORED\r\n");
    assert_eq!(c.cmd("incr n 5\r\n", "\r\n"), "15\r\n");
    assert_eq!(c.cmd("decr n 100\r\n", "\r\n"), "0\r\n");
    assert_eq!(
        c.cmd("incr a 1\r\n", "\r\n"),
        "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
    );
    assert_eq!(c.cmd("incr missing 1\r\n", "\r\n"), "NOT_FOUND\r\n");
    assert_eq!(c.cmd("touch a 100\r\n", "\r\n"), "TOUCHED\r\n");
    assert_eq!(c.cmd("touch missing 100\r\n", "\r\n"), "NOT_FOUND\r\n");
    assert_eq!(
        c.cmd("gat 100 a\r\n", "END\r\n"),
        "VALUE a 0 5\r\n<<x>>\r\nEND\r\n"
    );
    assert_eq!(c.cmd("delete a\r\n", "\r\n"), "DELETED\r\n");
    assert_eq!(c.cmd("delete a\r\n", "\r\n"), "NOT_FOUND\r\n");
    assert_eq!(c.cmd("set neg 0 -1 1\r\nx\r\n", "\r\n"), "STORED\r\n");
    assert_eq!(c.cmd("get neg\r\n", "END\r\n"), "END\r\n");
    // noreply: nothing comes back, the next command still answers.
    c.send(b"set q 0 0 1 noreply\r\nq\r\ndelete nothing noreply\r\n");
    assert_eq!(c.cmd("get q\r\n", "END\r\n"), "VALUE q 0 1\r\nq\r\nEND\r\n");
    assert!(c.cmd("version\r\n", "\r\n").starts_with("VERSION "));
    assert_eq!(c.cmd("verbosity 1\r\n", "\r\n"), "OK\r\n");
    let stats = c.cmd("stats\r\n", "END\r\n");
    assert!(stats.contains("STAT get_hits ") && stats.contains("STAT curr_items "));
    assert_eq!(c.cmd("flush_all\r\n", "\r\n"), "OK\r\n");
    assert_eq!(c.cmd("get q\r\n", "END\r\n"), "END\r\n");
    c.send(b"quit\r\n");
    assert_eq!(c.read_until(b"never"), b"");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let s = start(|_| {});
    let mut c = Conn::new(s.addr);
    let mut req = Vec::new();
    for i in 0..500 {
        req.extend_from_slice(
            format!("set k{i} {i} 0 {}\r\nv{i}\r\n", format!("v{i}").len()).as_bytes(),
        );
    }
    for i in 0..500 {
        req.extend_from_slice(format!("get k{i}\r\n").as_bytes());
    }
    c.send(&req);
    let mut want = String::new();
    for _ in 0..500 {
        want.push_str("STORED\r\n");
    }
    for i in 0..500 {
        want.push_str(&format!(
            "VALUE k{i} {i} {}\r\nv{i}\r\nEND\r\n",
            format!("v{i}").len()
        ));
    }
    let got = c.read_until(b"VALUE k499 499 4\r\nv499\r\nEND\r\n");
    assert_eq!(String::from_utf8(got).unwrap(), want);
}

#[test]
fn bad_input_gets_memcached_errors_and_the_connection_stays_usable() {
    let s = start(|_| {});
    let mut c = Conn::new(s.addr);
    assert_eq!(c.cmd("bogus\r\n", "\r\n"), "ERROR\r\n");
    // What follows a bad chunk ("f\r\n") is parsed as a command, as memcached does.
    assert_eq!(
        c.cmd("set k 0 0 3\r\nabcdef\r\n", "\nERROR\r\n"),
        "CLIENT_ERROR bad data chunk\r\nERROR\r\n"
    );
    c.send(b"get k\r\n");
    let r = String::from_utf8(c.read_until(b"END\r\n")).unwrap();
    assert!(r.ends_with("END\r\n"), "{r}");
    // Too large: the declared data is swallowed, even when it arrives later.
    c.send(b"set big 0 0 100000\r\n");
    assert_eq!(
        String::from_utf8(c.read_until(b"\r\n")).unwrap(),
        "SERVER_ERROR object too large for cache\r\n"
    );
    c.send(&vec![b'x'; 100_002]);
    assert_eq!(c.cmd("set ok 0 0 2\r\nhi\r\n", "\r\n"), "STORED\r\n");
    assert_eq!(
        c.cmd("get ok\r\n", "END\r\n"),
        "VALUE ok 0 2\r\nhi\r\nEND\r\n"
    );
    let long_key = "k".repeat(251);
    assert!(
        c.cmd(&format!("get {long_key}\r\n"), "\r\n")
            .starts_with("CLIENT_ERROR")
    );
    assert!(
        c.cmd("set k abc 0 1\r\nx\r\n", "\r\n")
            .starts_with("CLIENT_ERROR")
    );
    assert_eq!(
        c.cmd("incr ok notanumber\r\n", "\r\n"),
        "CLIENT_ERROR invalid numeric delta argument\r\n"
    );
    // A line that never ends is cut off, without harm to others.
    let mut slow = Conn::new(s.addr);
    slow.send(b"get aaaaaaaa");
    let mut other = Conn::new(s.addr);
    assert_eq!(
        other.cmd("get ok\r\n", "END\r\n"),
        "VALUE ok 0 2\r\nhi\r\nEND\r\n"
    );
    let mut flood = Conn::new(s.addr);
    flood.send(&vec![b'a'; 10_000]);
    assert_eq!(
        flood.read_until(b"never"),
        b"",
        "closed without a reply, as memcached does"
    );
    // Random garbage on many connections never takes the server down.
    let mut rng = 0x1234_5678_u64;
    for _ in 0..20 {
        let mut g = Conn::new(s.addr);
        let junk: Vec<u8> = (0..4096)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng as u8
            })
            .collect();
        let _ = g.0.write_all(&junk);
    }
    assert_eq!(
        other.cmd("get ok\r\n", "END\r\n"),
        "VALUE ok 0 2\r\nhi\r\nEND\r\n"
    );
}

fn bin_req(op: u8, opaque: u32, cas: u64, extras: &[u8], key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    k2hdkc_proto::memcached::binary::write_request(&mut v, op, opaque, cas, extras, key, value);
    v
}

fn bin_resp(c: &mut Conn) -> (u8, u16, u32, u64, Vec<u8>, Vec<u8>, Vec<u8>) {
    let h = c.read_exact(24);
    assert_eq!(h[0], 0x81);
    let keylen = u16::from_be_bytes([h[2], h[3]]) as usize;
    let extlen = h[4] as usize;
    let status = u16::from_be_bytes([h[6], h[7]]);
    let body = u32::from_be_bytes(h[8..12].try_into().unwrap()) as usize;
    let opaque = u32::from_be_bytes(h[12..16].try_into().unwrap());
    let cas = u64::from_be_bytes(h[16..24].try_into().unwrap());
    let b = c.read_exact(body);
    (
        h[1],
        status,
        opaque,
        cas,
        b[..extlen].to_vec(),
        b[extlen..extlen + keylen].to_vec(),
        b[extlen + keylen..].to_vec(),
    )
}

#[test]
fn binary_protocol_commands() {
    let s = start(|_| {});
    let mut c = Conn::new(s.addr);
    let mut extras = Vec::new();
    extras.extend_from_slice(&7u32.to_be_bytes());
    extras.extend_from_slice(&0u32.to_be_bytes());
    c.send(&bin_req(0x01, 1, 0, &extras, b"k", b"value"));
    let (op, st, opq, cas, ..) = bin_resp(&mut c);
    assert_eq!((op, st, opq), (0x01, 0, 1));
    assert!(cas > 0);
    c.send(&bin_req(0x0c, 2, 0, &[], b"k", b""));
    let (op, st, _, _, ex, key, val) = bin_resp(&mut c);
    assert_eq!(
        (op, st, ex, key, val),
        (
            0x0c,
            0,
            7u32.to_be_bytes().to_vec(),
            b"k".to_vec(),
            b"value".to_vec()
        )
    );
    // Quiet get miss is silent; noop flushes.
    c.send(&bin_req(0x09, 3, 0, &[], b"missing", b""));
    c.send(&bin_req(0x0a, 4, 0, &[], b"", b""));
    let (op, st, opq, ..) = bin_resp(&mut c);
    assert_eq!((op, st, opq), (0x0a, 0, 4));
    // add on existing: exists; get miss: not found with text.
    c.send(&bin_req(0x02, 5, 0, &extras, b"k", b"x"));
    assert_eq!(bin_resp(&mut c).1, 2);
    c.send(&bin_req(0x00, 6, 0, &[], b"missing", b""));
    let (_, st, _, _, _, _, val) = bin_resp(&mut c);
    assert_eq!((st, val), (1, b"Not found".to_vec()));
    // incr with initial value, then again.
    let mut ar = Vec::new();
    ar.extend_from_slice(&5u64.to_be_bytes());
    ar.extend_from_slice(&100u64.to_be_bytes());
    ar.extend_from_slice(&0u32.to_be_bytes());
    c.send(&bin_req(0x05, 7, 0, &ar, b"ctr", b""));
    let (_, st, _, _, _, _, val) = bin_resp(&mut c);
    assert_eq!((st, u64::from_be_bytes(val.try_into().unwrap())), (0, 100));
    c.send(&bin_req(0x05, 8, 0, &ar, b"ctr", b""));
    let (_, st, _, _, _, _, val) = bin_resp(&mut c);
    assert_eq!((st, u64::from_be_bytes(val.try_into().unwrap())), (0, 105));
    // Delete, version, stats.
    c.send(&bin_req(0x04, 9, 0, &[], b"k", b""));
    assert_eq!(bin_resp(&mut c).1, 0);
    c.send(&bin_req(0x04, 10, 0, &[], b"k", b""));
    assert_eq!(bin_resp(&mut c).1, 1);
    c.send(&bin_req(0x0b, 11, 0, &[], b"", b""));
    assert!(
        String::from_utf8(bin_resp(&mut c).6)
            .unwrap()
            .contains("k2hdkc")
    );
    c.send(&bin_req(0x10, 12, 0, &[], b"", b""));
    let mut n = 0;
    loop {
        let (op, _, _, _, _, key, _) = bin_resp(&mut c);
        assert_eq!(op, 0x10);
        if key.is_empty() {
            break;
        }
        n += 1;
    }
    assert!(n > 5);
    // Invalid arguments close the connection after the error.
    c.send(&bin_req(0x00, 13, 0, &[1, 2, 3, 4], b"k", b""));
    assert_eq!(bin_resp(&mut c).1, 4);
}

#[test]
fn admin_listener_serves_health_status_and_metrics() {
    let s = start(|_| {});
    let mut c = Conn::new(s.addr);
    assert_eq!(c.cmd("set a 0 0 1\r\nx\r\n", "\r\n"), "STORED\r\n");
    let get = |path: &str| {
        let mut h = Conn::new(s.admin);
        h.send(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes());
        String::from_utf8(h.read_until(b"never")).unwrap()
    };
    assert!(get("/health").starts_with("HTTP/1.1 200"));
    let status = get("/status");
    assert!(status.contains("\"items\":1"), "{status}");
    let metrics = get("/metrics");
    assert!(
        metrics.contains("k2hdkc_commands_total{cmd=\"set\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("k2hdkc_request_duration_microseconds_count"));
}

#[test]
fn connection_limit_refuses_with_an_error() {
    let s = start(|c| c.limits.max_connections = 2);
    let mut a = Conn::new(s.addr);
    let mut b = Conn::new(s.addr);
    assert!(a.cmd("version\r\n", "\r\n").starts_with("VERSION"));
    assert!(b.cmd("version\r\n", "\r\n").starts_with("VERSION"));
    let mut c = Conn::new(s.addr);
    assert_eq!(
        String::from_utf8(c.read_until(b"\r\n")).unwrap(),
        "SERVER_ERROR too many open connections\r\n"
    );
    drop(a);
    std::thread::sleep(Duration::from_millis(100));
    let mut d = Conn::new(s.addr);
    assert!(d.cmd("version\r\n", "\r\n").starts_with("VERSION"));
}

/// `listen.memcached_socket`: the memcached protocols on a Unix socket (0660), beside the TCP
/// port and sharing its store; a second server cannot take a socket the first listens on, a
/// socket file left behind by a stopped server is taken over, a path that is not a socket is
/// refused, and shutdown removes the file (only its own).
#[test]
fn memcached_on_a_unix_socket() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mc.sock");
    let p = path.clone();
    let r = start(move |c| c.listen.memcached_socket = Some(p));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let mut u = Conn::unix(&path).unwrap();
    assert_eq!(
        u.cmd("set k 3 0 2\r\nhi\r\nget k\r\n", "END\r\n"),
        "STORED\r\nVALUE k 3 2\r\nhi\r\nEND\r\n"
    );
    // The same store over TCP.
    let mut t = Conn::new(r.addr);
    assert_eq!(
        t.cmd("get k\r\n", "END\r\n"),
        "VALUE k 3 2\r\nhi\r\nEND\r\n"
    );
    // Bad input gets the protocol's error on the socket too.
    let bad = u.cmd("set k 0 0 abc\r\n", "\r\n");
    assert!(bad.starts_with("CLIENT_ERROR"), "{bad:?}");

    // Worker threads serve the second server's connections while this thread talks to it.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let second = |p: std::path::PathBuf| {
        let mut c = ServerConfig::default();
        c.listen.memcached_socket = Some(p);
        rt.block_on(Server::start(c))
    };
    let e = second(path.clone()).err().expect("the socket is in use");
    assert!(e.to_string().contains("another server listens"), "{e}");
    drop(u);
    drop(r);
    assert!(!path.exists(), "shutdown removes the socket file");

    // A socket file whose server is gone (killed, say) is taken over.
    let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
    drop(stale);
    assert!(path.exists());
    let s = second(path.clone()).expect("a stale socket is taken over");
    let mut u = Conn::unix(&path).unwrap();
    assert!(u.cmd("version\r\n", "\r\n").starts_with("VERSION "));
    drop(u);
    // While it runs, it holds PATH.lock: a second server is refused even where the socket
    // file is gone (two servers starting at once cannot both take a stale file over).
    std::fs::remove_file(&path).unwrap();
    let e = second(path.clone()).err().expect("the lock is held");
    assert!(e.to_string().contains("mc.sock.lock"), "{e}");
    // A server stopping does not remove a socket file something else has made since.
    let other = std::os::unix::net::UnixListener::bind(&path).unwrap();
    rt.block_on(s.shutdown()).unwrap();
    assert!(path.exists(), "a file the server did not make stays");
    drop(other);
    // Once it stopped, the lock is free: the next server takes the stale file over.
    let next = second(path.clone()).expect("the lock is free again");
    let mut u = Conn::unix(&path).unwrap();
    assert!(u.cmd("version\r\n", "\r\n").starts_with("VERSION "));
    drop(u);
    rt.block_on(next.shutdown()).unwrap();
    assert!(!path.exists());

    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, b"keep me").unwrap();
    let e = second(file.clone()).err().expect("not a socket");
    assert!(e.to_string().contains("not a socket"), "{e}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
}
