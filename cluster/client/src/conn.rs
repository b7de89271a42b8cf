//! One multiplexed connection: any number of callers send frames through a writer task that
//! batches them into one write; a reader task hands replies back in order.
//!
//! Invariants: a waiter is queued before its frame can reach the socket, so replies (which the
//! server sends in request order) always find their waiter at the front of the queue; reading
//! and writing are separate tasks, so a deep pipeline can never deadlock with a server that is
//! blocked writing replies; when either task ends, every queued waiter gets an error and the
//! connection is marked dead so the pool replaces it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use k2hdkc_proto::native::{self as wire, FrameParse, HEADER_LEN, MAGIC_RESPONSE, Reply};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::ClientError;

/// A request's id, where its reply goes, and when it was queued.
type Waiter = (
    u32,
    oneshot::Sender<Result<Reply, ClientError>>,
    tokio::time::Instant,
);

/// Frames to send and their waiters, in order.
pub(crate) struct Batch {
    pub bytes: Vec<u8>,
    pub waiters: Vec<Waiter>,
}

struct Shared {
    pending: Mutex<VecDeque<Waiter>>,
    dead: AtomicBool,
}

impl Shared {
    fn fail_all(&self, e: &ClientError) {
        self.dead.store(true, Ordering::SeqCst);
        let waiters: Vec<_> = self.pending.lock().drain(..).collect();
        for (_, tx, _) in waiters {
            let _ = tx.send(Err(e.clone()));
        }
    }
}

/// A live connection.
pub(crate) struct Conn {
    tx: mpsc::UnboundedSender<Batch>,
    shared: Arc<Shared>,
    tasks: [tokio::task::AbortHandle; 2],
    /// A second handle on the TCP socket (none on other transports), so [`Conn::kill`] can
    /// make its close discard what the kernel still holds to send.
    socket: Mutex<Option<socket2::Socket>>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // The writer ends on its own once every sender is gone; the reader may wait on a
        // silent socket forever.
        self.tasks[1].abort();
    }
}

impl Conn {
    /// Connect to `addr`. On TCP, the kernel gives up on data unacknowledged for
    /// `user_timeout` (TCP_USER_TIMEOUT): requests sent into a cut link are dropped with the
    /// connection instead of arriving after the heal, long after their sender gave up.
    pub async fn connect(
        addr: SocketAddr,
        max_reply: usize,
        tls: Option<&crate::TlsConnector>,
        net: &crate::Net,
        user_timeout: std::time::Duration,
    ) -> Result<Conn, ClientError> {
        let sock = net.connect(addr).await.map_err(|e| ClientError::Connect {
            addr,
            message: e.to_string(),
            refused: e.kind() == std::io::ErrorKind::ConnectionRefused,
        })?;
        // `(*sock)`: through the trait object to the stream's own `tcp` (on the box itself
        // the blanket impl would look for a TcpStream in the box, and never find one).
        let socket = (*sock).tcp().and_then(|t| {
            let r = socket2::SockRef::from(t);
            let _ = r.set_tcp_user_timeout(Some(user_timeout));
            r.try_clone().ok()
        });
        let shared = Arc::new(Shared {
            pending: Mutex::new(VecDeque::new()),
            dead: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let tasks = match tls {
            None => {
                let (rd, wr) = sock.split();
                spawn_io(rd, wr, rx, &shared, max_reply)
            }
            Some(t) => {
                let s = t
                    .connect(sock)
                    .await
                    .map_err(|message| ClientError::Connect {
                        addr,
                        message,
                        refused: false,
                    })?;
                let (rd, wr) = tokio::io::split(s);
                spawn_io(rd, wr, rx, &shared, max_reply)
            }
        };
        Ok(Conn {
            tx,
            shared,
            tasks,
            socket: Mutex::new(socket),
        })
    }

    /// Give up on this connection: a request on it got no reply in time, and replies come
    /// in order, so nothing queued behind it will be answered either (a peer that stopped,
    /// or a link that silently drops). Every waiter gets `e`, the socket is closed, and the
    /// pool opens a new connection for the next request.
    pub fn kill(&self, e: &ClientError) {
        self.shared.fail_all(e);
        if let Some(s) = self.socket.lock().take() {
            // Requests still in the kernel's send queue were given up on: with linger 0 the
            // close resets the connection and drops them, where a plain close would keep
            // sending them (a peer behind a cut link would run them after the heal).
            let _ = s.set_linger(Some(std::time::Duration::ZERO));
        }
        for t in &self.tasks {
            t.abort();
        }
    }

    /// Whether the oldest request still waiting was sent longer than `limit` ago: its
    /// caller may have stopped waiting (its own timeout), but the connection is stuck.
    pub fn stuck(&self, limit: std::time::Duration) -> bool {
        self.shared
            .pending
            .lock()
            .front()
            .is_some_and(|w| w.2.elapsed() > limit)
    }

    pub fn is_dead(&self) -> bool {
        self.shared.dead.load(Ordering::SeqCst)
    }

    pub fn send(&self, batch: Batch) -> Result<(), ClientError> {
        if self.is_dead() {
            return Err(ClientError::Closed);
        }
        self.tx.send(batch).map_err(|_| ClientError::Closed)
    }
}

/// The writer and reader tasks of a connection's two halves.
fn spawn_io<R, W>(
    rd: R,
    wr: W,
    rx: mpsc::UnboundedReceiver<Batch>,
    shared: &Arc<Shared>,
    max_reply: usize,
) -> [tokio::task::AbortHandle; 2]
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    [
        tokio::spawn(writer(wr, rx, shared.clone())).abort_handle(),
        tokio::spawn(reader(rd, shared.clone(), max_reply)).abort_handle(),
    ]
}

async fn writer<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::UnboundedReceiver<Batch>,
    shared: Arc<Shared>,
) {
    let mut out = Vec::with_capacity(16 << 10);
    while let Some(first) = rx.recv().await {
        {
            let mut p = shared.pending.lock();
            p.extend(first.waiters);
            out.extend_from_slice(&first.bytes);
            // Whatever else is queued goes in the same write.
            while out.len() < (1 << 20) {
                let Ok(b) = rx.try_recv() else { break };
                p.extend(b.waiters);
                out.extend_from_slice(&b.bytes);
            }
        }
        if shared.dead.load(Ordering::SeqCst) {
            break;
        }
        if let Err(e) = wr.write_all(&out).await {
            shared.fail_all(&ClientError::Io(e.to_string()));
            return;
        }
        out.clear();
        if out.capacity() > 1 << 20 {
            out.shrink_to(16 << 10);
        }
    }
    // Every handle is gone (or the reader died): let the server see the end.
    let _ = wr.shutdown().await;
    shared.fail_all(&ClientError::Closed);
}

async fn reader<R: AsyncRead + Unpin>(mut rd: R, shared: Arc<Shared>, max_reply: usize) {
    let mut buf: Vec<u8> = Vec::with_capacity(16 << 10);
    let err = loop {
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 << 10);
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) => break ClientError::Closed,
            Ok(_) => {}
            Err(e) => break ClientError::Io(e.to_string()),
        }
        let mut used = 0;
        let failed = loop {
            match wire::parse_frame(&buf[used..], MAGIC_RESPONSE, max_reply) {
                FrameParse::Incomplete => break None,
                FrameParse::Frame { header, body } => {
                    used += HEADER_LEN + body.len();
                    let Some((id, tx, _)) = shared.pending.lock().pop_front() else {
                        break Some(ClientError::Protocol(format!(
                            "reply {} without a request",
                            header.id
                        )));
                    };
                    if id != header.id && header.id != 0 {
                        let _ = tx.send(Err(ClientError::Protocol("reply out of order".into())));
                        break Some(ClientError::Protocol(format!(
                            "reply for request {} where {id} was expected",
                            header.id
                        )));
                    }
                    let r = Reply::decode(&header, body)
                        .map_err(|e| ClientError::Protocol(format!("bad reply: {e}")));
                    let _ = tx.send(r);
                }
                FrameParse::TooLarge { header, .. } => {
                    break Some(ClientError::Protocol(format!(
                        "reply of {} bytes is over the limit of {max_reply}",
                        header.body_len
                    )));
                }
                FrameParse::BadMagic(b) => {
                    break Some(ClientError::Protocol(format!(
                        "bad magic byte 0x{b:02x} in a reply: is this a k2hdkc native port?"
                    )));
                }
            }
        };
        buf.drain(..used);
        if let Some(e) = failed {
            break e;
        }
    };
    shared.fail_all(&err);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// On TCP, the connection gets TCP_USER_TIMEOUT and a handle that `kill` resets through.
    #[tokio::test]
    async fn tcp_connections_get_a_user_timeout_and_reset_on_kill() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accept = tokio::spawn(async move { l.accept().await.unwrap().0 });
        let net = crate::Net::default();
        let c = Conn::connect(addr, 1 << 20, None, &net, Duration::from_millis(1234))
            .await
            .unwrap();
        let mut server = accept.await.unwrap();
        {
            let s = c.socket.lock();
            let s = s.as_ref().expect("a socket handle on TCP");
            assert_eq!(
                s.tcp_user_timeout().unwrap(),
                Some(Duration::from_millis(1234))
            );
            assert_eq!(s.linger().unwrap(), None);
        }
        c.kill(&ClientError::Closed);
        assert!(c.socket.lock().is_none());
        // The client's close was a reset (linger 0, which also discards whatever the kernel
        // still held to send: requests stuck behind a cut link). After an orderly close the
        // server's first write would still succeed (the client's kernel answers it with a
        // reset); after a reset the server's socket is closed and the write fails at once.
        let mut b = [0u8; 8];
        let eof = tokio::time::timeout(Duration::from_secs(5), server.read(&mut b)).await;
        assert!(matches!(eof, Ok(Ok(0))), "{eof:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            server.write_all(b"x").await.is_err(),
            "the server could still write: the close was not a reset"
        );
    }
}
