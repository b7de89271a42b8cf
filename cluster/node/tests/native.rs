//! The native protocol and the client library against an in-process server on 127.0.0.1,
//! port 0: every operation of the data model, structured errors, pipelining, limits and
//! hostile frames.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use k2hdkc_client::{Client, ClientConfig, ClientError, Expiry, Op, Status, WriteOptions};
use k2hdkc_node::{Server, ServerConfig};
use k2hdkc_proto::native::{self as wire, Args, FrameParse, MAGIC_RESPONSE, Reply};

async fn start(f: impl FnOnce(&mut ServerConfig)) -> (Server, SocketAddr) {
    let mut c = ServerConfig::default();
    c.listen.native = Some("127.0.0.1:0".parse().unwrap());
    c.storage.max_value_bytes = 64 << 10;
    c.limits.max_request_bytes = 128 << 10;
    f(&mut c);
    let server = Server::start(c).await.unwrap();
    let addr = server.addr("native").unwrap();
    (server, addr)
}

async fn client(addr: SocketAddr) -> Client {
    Client::connect(ClientConfig::new(addr)).await.unwrap()
}

fn status(e: ClientError) -> Status {
    e.status()
        .unwrap_or_else(|| panic!("not a server refusal: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_and_attributes() {
    let (server, addr) = start(|_| {}).await;
    let c = client(addr).await;
    let (version, proto) = c.hello().await.unwrap();
    assert!(version.contains("k2hdkc"), "{version}");
    assert_eq!(proto, 1);

    assert_eq!(c.get(b"nothing").await.unwrap(), None);
    let cas = c.set(b"k", b"hello").await.unwrap();
    let it = c.get(b"k").await.unwrap().unwrap();
    assert_eq!(
        (it.value.as_slice(), it.cas, it.expire),
        (&b"hello"[..], cas, Expiry::Never)
    );

    // Conditions.
    let e = c
        .set_with(b"k", b"x", &WriteOptions::add())
        .await
        .unwrap_err();
    assert_eq!(status(e), Status::NotStored);
    let e = c
        .set_with(b"absent", b"x", &WriteOptions::replace())
        .await
        .unwrap_err();
    assert_eq!(status(e), Status::NotStored);
    let e = c
        .set_with(b"k", b"x", &WriteOptions::cas(cas + 1))
        .await
        .unwrap_err();
    assert_eq!(status(e), Status::Exists);
    let cas2 = c
        .set_with(b"k", b"hello!", &WriteOptions::cas(cas))
        .await
        .unwrap();
    assert!(cas2 > cas);
    let opts = WriteOptions {
        mode: k2hdkc_client::SetMode::Append,
        ..Default::default()
    };
    c.set_with(b"k", b" world", &opts).await.unwrap();
    let opts = WriteOptions {
        mode: k2hdkc_client::SetMode::Prepend,
        flags: Some(42),
        ..Default::default()
    };
    c.set_with(b"k", b">", &opts).await.unwrap();
    let it = c.get(b"k").await.unwrap().unwrap();
    assert_eq!((it.value.as_slice(), it.flags), (&b">hello! world"[..], 42));

    // Partial read and write.
    assert_eq!(
        c.read_at(b"k", 1, Some(5), None).await.unwrap().unwrap(),
        b"hello"
    );
    c.write_at(b"k", 1, b"HELLO", &WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(
        c.read_at(b"k", 0, None, None).await.unwrap().unwrap(),
        b">HELLO! world"
    );
    assert_eq!(c.read_at(b"missing", 0, None, None).await.unwrap(), None);

    // Attributes and expiry.
    let a = c.attrs(b"k").await.unwrap().unwrap();
    assert_eq!(
        (a.kind.as_str(), a.flags, a.encrypted),
        ("value", 42, false)
    );
    assert!(a.version.0 > 0 && a.modified_ms > 0 && a.created > 0);
    assert!(c.touch(b"k", Expiry::After(100)).await.unwrap());
    let it = c
        .get_and_touch(b"k", Expiry::After(200))
        .await
        .unwrap()
        .unwrap();
    let Expiry::At(t) = it.expire else {
        panic!("{:?}", it.expire)
    };
    assert!(t > 1_700_000_000);
    assert!(!c.touch(b"missing", Expiry::Never).await.unwrap());
    c.set_with(
        b"gone",
        b"v",
        &WriteOptions {
            expire: Expiry::At(1),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(c.get(b"gone").await.unwrap(), None);

    // Encryption with a pass phrase.
    let enc = WriteOptions {
        pass: Some(b"secret".to_vec()),
        ..Default::default()
    };
    c.set_with(b"enc", b"plain", &enc).await.unwrap();
    assert_eq!(
        status(c.get(b"enc").await.unwrap_err()),
        Status::BadPassPhrase
    );
    let it = c
        .get_with_pass(b"enc", Some(b"secret"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(it.value, b"plain");
    assert!(c.attrs(b"enc").await.unwrap().unwrap().encrypted);

    // Decimal incr/decr.
    c.set(b"n", b"10").await.unwrap();
    assert_eq!(c.incr(b"n", 5).await.unwrap(), Some(15));
    assert_eq!(c.decr(b"n", 20).await.unwrap(), Some(0));
    assert_eq!(c.incr(b"none", 1).await.unwrap(), None);
    assert_eq!(
        status(c.incr(b"k", 1).await.unwrap_err()),
        Status::NotNumeric
    );

    // Delete, with cas.
    let cas = c.set(b"d", b"v").await.unwrap();
    assert_eq!(
        status(c.delete_cas(b"d", cas + 1).await.unwrap_err()),
        Status::Exists
    );
    assert!(c.delete_cas(b"d", cas).await.unwrap());
    assert!(!c.delete(b"d").await.unwrap());

    // Limits.
    let big = vec![b'x'; (64 << 10) + 1];
    assert_eq!(
        status(c.set(b"big", &big).await.unwrap_err()),
        Status::TooLarge
    );
    let long_key = vec![b'k'; 70_000];
    assert_eq!(
        status(c.set(&long_key, b"v").await.unwrap_err()),
        Status::TooLarge
    );

    let stats = c.stats().await.unwrap();
    assert!(
        stats["cmd_get"].as_str().is_some() || stats["cmd_get"].is_number(),
        "{stats}"
    );
    drop(c);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subkeys_queues_counters_scan() {
    let (server, addr) = start(|_| {}).await;
    let c = client(addr).await;

    // Sub-keys, atomic child writes, rename, recursive delete.
    c.set(b"p", b"parent").await.unwrap();
    c.add_subkey(b"p", b"p/1", Some(b"one")).await.unwrap();
    c.add_subkey(b"p", b"p/2", Some(b"two")).await.unwrap();
    c.add_subkey(b"p/1", b"p/1/a", Some(b"deep")).await.unwrap();
    assert_eq!(
        c.subkeys(b"p").await.unwrap().unwrap(),
        vec![b"p/1".to_vec(), b"p/2".to_vec()]
    );
    assert_eq!(c.subkeys(b"nope").await.unwrap(), None);
    c.rename(b"p/2", b"p/two", Some(b"p"), None).await.unwrap();
    assert_eq!(c.get(b"p/two").await.unwrap().unwrap().value, b"two");
    assert_eq!(
        c.subkeys(b"p").await.unwrap().unwrap(),
        vec![b"p/1".to_vec(), b"p/two".to_vec()]
    );
    assert!(c.remove_subkey(b"p", b"p/two", true).await.unwrap());
    assert!(!c.remove_subkey(b"p", b"p/two", true).await.unwrap());
    assert_eq!(c.get(b"p/two").await.unwrap(), None);
    c.set_subkeys(b"q", &[b"x", b"y"]).await.unwrap();
    assert_eq!(c.subkeys(b"q").await.unwrap().unwrap().len(), 2);
    assert!(c.clear_subkeys(b"q").await.unwrap());
    assert_eq!(c.subkeys(b"q").await.unwrap().unwrap().len(), 0);
    assert_eq!(c.delete_tree(b"p").await.unwrap(), 3);
    assert_eq!(c.get(b"p/1/a").await.unwrap(), None);
    let e = c.add_subkey(b"s", b"s", Some(b"v")).await.unwrap_err();
    assert_eq!(status(e), Status::InvalidArgument);

    // Queues: FIFO, LIFO, key-queues, pass phrases.
    for v in [&b"a"[..], b"b", b"c"] {
        c.queue_push(b"fifo", v).await.unwrap();
    }
    c.queue_push_with(b"fifo", None, b"first", false, Expiry::Default, None)
        .await
        .unwrap();
    assert_eq!(c.queue_len(b"fifo").await.unwrap(), 4);
    assert_eq!(
        c.queue_peek(b"fifo", None).await.unwrap().unwrap().value,
        b"first"
    );
    assert_eq!(
        c.queue_pop(b"fifo", None).await.unwrap().unwrap().value,
        b"first"
    );
    assert_eq!(
        c.queue_pop(b"fifo", None).await.unwrap().unwrap().value,
        b"a"
    );
    assert_eq!(c.queue_remove(b"fifo", 1).await.unwrap(), 1);
    assert_eq!(
        c.queue_pop(b"fifo", None).await.unwrap().unwrap().value,
        b"c"
    );
    assert_eq!(c.queue_pop(b"fifo", None).await.unwrap(), None);
    c.queue_push_with(
        b"kq",
        Some(b"item-key"),
        b"v",
        true,
        Expiry::Default,
        Some(b"pw"),
    )
    .await
    .unwrap();
    let e = c.queue_pop(b"kq", None).await.unwrap_err();
    assert_eq!(status(e), Status::BadPassPhrase);
    let it = c.queue_pop(b"kq", Some(b"pw")).await.unwrap().unwrap();
    assert_eq!(
        (it.key.as_deref(), it.value.as_slice()),
        (Some(&b"item-key"[..]), &b"v"[..])
    );
    c.set(b"plain", b"v").await.unwrap();
    let e = c.counter_get(b"plain", 64).await.unwrap_err();
    assert_eq!(status(e), Status::NotSameType);

    // Counters of every width.
    for w in [8u8, 16, 32, 64] {
        let k = format!("ctr{w}");
        c.counter_init(k.as_bytes(), w, 1).await.unwrap();
        assert_eq!(
            c.counter_add(k.as_bytes(), w, -2).await.unwrap(),
            u64::MAX >> (64 - w)
        );
        assert!(!c.counter_cas(k.as_bytes(), w, 5, 6).await.unwrap());
        assert!(
            c.counter_cas(k.as_bytes(), w, u64::MAX >> (64 - w), 7)
                .await
                .unwrap()
        );
        assert_eq!(c.counter_get(k.as_bytes(), w).await.unwrap(), Some(7));
    }
    let e = c.counter_init(b"c9", 9, 0).await.unwrap_err();
    assert_eq!(status(e), Status::InvalidArgument);
    let e = c.counter_init(b"c8", 8, 256).await.unwrap_err();
    assert_eq!(status(e), Status::InvalidArgument);
    assert_eq!(c.counter_get(b"nothing", 64).await.unwrap(), None);
    let e = c.counter_add(b"ctr8", 16, 1).await.unwrap_err();
    assert_eq!(status(e), Status::NotSameType);

    // Scans with a cursor.
    for i in 0..25 {
        c.set(format!("scan/{i:02}").as_bytes(), b"v")
            .await
            .unwrap();
    }
    let mut all = Vec::new();
    let mut after = None;
    for _ in 0..10 {
        let page = c.scan(b"scan/", after.as_deref(), 10).await.unwrap();
        all.extend(page.keys);
        after = page.next;
        if after.is_none() {
            break;
        }
    }
    let want: Vec<Vec<u8>> = (0..25)
        .map(|i| format!("scan/{i:02}").into_bytes())
        .collect();
    assert_eq!(all, want);

    // History is empty unless the store keeps versions.
    assert!(c.history(b"scan/00", None).await.unwrap().is_empty());
    assert!(c.flush_all().await.unwrap() > 0);
    assert_eq!(c.get(b"scan/00").await.unwrap(), None);
    drop(c);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelining_and_concurrency() {
    let (server, addr) = start(|_| {}).await;
    let c = client(addr).await;
    let mut p = c.pipeline();
    for i in 0..2000 {
        p.set(format!("k{i}").as_bytes(), format!("v{i}").as_bytes());
    }
    p.get(b"k1999").delete(b"k0").get(b"k0");
    let replies = p.run().await.unwrap();
    assert_eq!(replies.len(), 2003);
    assert!(
        replies[..2001]
            .iter()
            .all(|r| r.as_ref().unwrap().status() == Some(Status::Ok))
    );
    assert_eq!(replies[2000].as_ref().unwrap().values[0], b"v1999");
    assert_eq!(
        replies[2002].as_ref().unwrap().status(),
        Some(Status::NotFound)
    );

    // Many tasks share the pool; every reply reaches its own caller.
    let mut tasks = Vec::new();
    for t in 0..8 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..300 {
                let k = format!("t{t}-{i}");
                c.set(k.as_bytes(), k.as_bytes()).await.unwrap();
                assert_eq!(
                    c.get(k.as_bytes()).await.unwrap().unwrap().value,
                    k.as_bytes()
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    drop(c);
    server.shutdown().await.unwrap();
}

/// Send raw bytes; read replies until `n` frames came or the server closed.
fn raw(addr: SocketAddr, bytes: &[u8], n: usize) -> (Vec<Reply>, bool) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut buf = Vec::new();
    let mut replies = Vec::new();
    let mut closed = false;
    let mut chunk = [0u8; 65536];
    for _ in 0..1000 {
        let mut used = 0;
        while let FrameParse::Frame { header, body } =
            wire::parse_frame(&buf[used..], MAGIC_RESPONSE, 1 << 24)
        {
            used += wire::HEADER_LEN + body.len();
            replies.push(Reply::decode(&header, body).unwrap());
        }
        buf.drain(..used);
        if replies.len() >= n {
            break;
        }
        match s.read(&mut chunk) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
            Err(e) => panic!("read: {e} after {} replies", replies.len()),
        }
    }
    (replies, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_get_structured_errors() {
    let (server, addr) = start(|_| {}).await;
    tokio::task::spawn_blocking(move || {
        let key = |k: &'static [u8]| Args {
            key: Some(k),
            ..Default::default()
        };
        let mut b = Vec::new();
        // Unknown op, bad field, missing key, wrong version, then a good request.
        wire::write_request(&mut b, Op::Noop, 0, 1, &Args::default());
        b[2] = 0xEE;
        let mut f = Vec::new();
        wire::write_request(&mut f, Op::Get, 0, 2, &Args::default());
        f.extend_from_slice(&[4, 0, 0, 0, 1, 9]); // Flags of one byte
        let len = (f.len() - wire::HEADER_LEN) as u32;
        f[8..12].copy_from_slice(&len.to_be_bytes());
        b.extend_from_slice(&f);
        wire::write_request(&mut b, Op::Get, 0, 3, &Args::default());
        let mut v = Vec::new();
        wire::write_request(&mut v, Op::Get, 0, 4, &key(b"x"));
        v[1] = 9;
        b.extend_from_slice(&v);
        // A quiet success sends nothing; a quiet failure is answered.
        wire::write_request(
            &mut b,
            Op::Set,
            wire::FLAG_QUIET,
            5,
            &Args {
                value: Some(b"v"),
                ..key(b"q")
            },
        );
        wire::write_request(&mut b, Op::Get, wire::FLAG_QUIET, 6, &key(b"absent"));
        wire::write_request(&mut b, Op::Get, 0, 7, &key(b"q"));
        let (r, closed) = raw(addr, &b, 6);
        assert!(!closed);
        let got: Vec<_> = r.iter().map(|r| (r.id, r.status())).collect();
        assert_eq!(
            got,
            vec![
                (1, Some(Status::BadRequest)),
                (2, Some(Status::BadRequest)),
                (3, Some(Status::BadRequest)),
                (4, Some(Status::UnsupportedVersion)),
                (6, Some(Status::NotFound)),
                (7, Some(Status::Ok)),
            ]
        );
        assert!(r[0].message.as_deref().unwrap().contains("unknown op"));
        assert!(r[1].message.as_deref().unwrap().contains("must be 4 bytes"));
        assert!(
            r[2].message
                .as_deref()
                .unwrap()
                .contains("missing field Key")
        );

        // A frame over the limit is refused and skipped, and the connection goes on.
        let mut b = Vec::new();
        let big = vec![b'x'; 512 << 10];
        wire::write_request(
            &mut b,
            Op::Set,
            0,
            8,
            &Args {
                value: Some(&big),
                ..key(b"big")
            },
        );
        wire::write_request(&mut b, Op::Noop, 0, 9, &Args::default());
        let (r, closed) = raw(addr, &b, 2);
        assert!(!closed);
        assert_eq!(r[0].status(), Some(Status::TooLarge));
        assert_eq!((r[1].id, r[1].status()), (9, Some(Status::Ok)));

        // A declared length of 4 GiB does not make the server wait for or buffer it.
        let mut b = Vec::new();
        wire::write_request(&mut b, Op::Noop, 0, 10, &Args::default());
        b[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        let (r, _) = raw(addr, &b, 1);
        assert_eq!(r[0].status(), Some(Status::TooLarge));

        // Garbage: one error, then the server closes the connection.
        let (r, closed) = raw(addr, b"get foo\r\n", 1);
        assert_eq!(r[0].status(), Some(Status::BadRequest));
        let (_, closed2) = raw(addr, b"get foo\r\n", 2);
        assert!(closed || closed2);
    })
    .await
    .unwrap();
    // The server is still healthy.
    let c = client(addr).await;
    c.set(b"after", b"ok").await.unwrap();
    drop(c);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_and_reconnect() {
    // Nothing listens on a port we just freed.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = l.local_addr().unwrap();
    drop(l);
    let e = Client::connect(ClientConfig::new(dead)).await.unwrap_err();
    assert!(matches!(e, ClientError::Connect { .. }), "{e}");
    assert!(e.is_retryable());

    // A server that accepts and never answers: the request times out.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let saddr = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut socks = Vec::new();
        for _ in 0..4 {
            if let Ok((s, _)) = silent.accept().await {
                socks.push(s);
            }
        }
    });
    let mut cfg = ClientConfig::new(saddr);
    cfg.request_timeout = Duration::from_millis(200);
    let c = Client::connect(cfg).await.unwrap();
    assert!(matches!(
        c.get(b"k").await.unwrap_err(),
        ClientError::Timeout(_)
    ));
    hold.abort();

    // A restarted server is reconnected to transparently.
    let (server, addr) = start(|_| {}).await;
    let c = client(addr).await;
    c.set(b"k", b"v").await.unwrap();
    server.shutdown().await.unwrap();
    let e = c.get(b"k").await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    let (server, addr2) = start(|c| c.listen.native = Some(addr)).await;
    assert_eq!(addr2, addr);
    let mut ok = false;
    for _ in 0..4 {
        if c.set(b"k2", b"v").await.is_ok() {
            ok = true;
            break;
        }
    }
    assert!(ok, "the pool did not reconnect");
    drop(c);
    server.shutdown().await.unwrap();
}

/// A `Noop` from a connection whose source address is `src`: the reply, or how it failed.
async fn noop_from(src: [u8; 4], addr: SocketAddr) -> Result<Reply, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    s.bind(SocketAddr::from((src, 0)))
        .map_err(|e| e.to_string())?;
    let mut st = s.connect(addr).await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    wire::write_request(&mut out, Op::Noop, 0, 7, &Args::default());
    st.write_all(&out).await.map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    for _ in 0..100 {
        if let FrameParse::Frame { header, body } = wire::parse_frame(&buf, MAGIC_RESPONSE, 1 << 20)
        {
            return Reply::decode(&header, body).map_err(|e| e.to_string());
        }
        match tokio::time::timeout(Duration::from_secs(5), st.read_buf(&mut buf)).await {
            Ok(Ok(0)) => return Err("closed".into()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("no reply".into()),
        }
    }
    Err("no whole reply".into())
}

/// A server started from a CHMPX description admits to its native port only the hosts of
/// SVRNODE and those SLVNODE's names match, answers a stranger's first request with
/// `Refused`, and follows a rewritten file (a broken one changes nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_listed_hosts_reach_a_server_started_from_a_cluster_description() {
    let dir = tempfile::tempdir().unwrap();
    let free = || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (port, ctl) = (free(), free());
    let conf = dir.path().join("cluster.ini");
    let write = |slave: &str| {
        let text = format!(
            "[GLOBAL]\nFILEVERSION = 1\nGROUP = gate\nMODE = SERVER\nREPLICA = 0\n\
             [SVRNODE]\nNAME = 127.0.0.1\nPORT = {port}\nCTLPORT = {ctl}\nCUSTOM_ID_SEED = n1\n\
             [SLVNODE]\nNAME = {slave}\n"
        );
        let tmp = conf.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &conf).unwrap();
    };
    write(r"^127\.0\.0\.3$");
    let mut c = ServerConfig::default();
    c.cluster.chmpx_file = Some(conf.clone());
    c.cluster.self_ctlport = Some(ctl);
    c.cluster.config_poll_ms = 100;
    k2hdkc_node::chmpx::apply_file(&mut c).unwrap();
    let server = Server::start(c).await.unwrap();
    let addr = server.addr("native").unwrap();
    let status = |r: &Result<Reply, String>| r.as_ref().map(|r| r.status).unwrap_or(u8::MAX);
    let (ok, refused) = (Status::Ok as u8, Status::Refused as u8);

    // The server's own host (SVRNODE) and the listed slave are served; another is not.
    assert_eq!(status(&noop_from([127, 0, 0, 1], addr).await), ok);
    assert_eq!(status(&noop_from([127, 0, 0, 3], addr).await), ok);
    let r = noop_from([127, 0, 0, 2], addr).await;
    assert_eq!(status(&r), refused, "{r:?}");
    let m = r.unwrap().message.unwrap_or_default();
    assert!(m.contains("SLVNODE"), "{m}");
    let c = client(addr).await;
    // The node forms its one-node cluster in the background.
    let mut stored = Err(ClientError::Closed);
    for _ in 0..200 {
        stored = c.set(b"k", b"v").await;
        if stored.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stored.unwrap();

    // A rewritten file moves the admission within a few polls.
    write(r"^127\.0\.0\.2$");
    let mut moved = false;
    for _ in 0..100 {
        if status(&noop_from([127, 0, 0, 2], addr).await) == ok {
            moved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(moved, "127.0.0.2 was not admitted after the file changed");
    assert_eq!(status(&noop_from([127, 0, 0, 3], addr).await), refused);

    // A file whose pattern does not compile changes nothing.
    write("([a-z");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(status(&noop_from([127, 0, 0, 2], addr).await), ok);
    assert_eq!(status(&noop_from([127, 0, 0, 3], addr).await), refused);
    assert_eq!(c.get(b"k").await.unwrap().unwrap().value, b"v");
    drop(c);
    server.shutdown().await.unwrap();
}
