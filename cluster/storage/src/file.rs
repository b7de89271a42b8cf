//! The file engine: a checksummed append-only log with group commit, compacted into snapshots.
//!
//! Files in the data directory (all start with a 24-byte header: magic, format version, generation):
//! - `log-<generation>.k2l`: changes appended since generation `generation` began;
//! - `snap-<generation>.k2s`: the whole state as it was at some moment after `log-<generation>` began,
//!   ending with a footer frame; written as `.tmp`, fsynced, then renamed;
//! - `LOCK`: held with an exclusive file lock while the store is open.
//!
//! Every entry is a frame `len u32 | crc32 u32 | payload`. State after a crash is the newest
//! *complete* snapshot `snap-G` followed by every `log-g` with `g >= G`, in order. Changes are
//! states, not deltas (see [`crate::change`]), so replaying a log over a snapshot that already
//! holds part of it is exact. Older files are deleted only after a newer snapshot is durable.
//!
//! Crash safety: a frame is acknowledged (with `fsync = always`) only after the file holding it
//! was fsynced; a crash can only leave a torn frame at the tail of the newest log, which
//! recovery detects by length or checksum and truncates (the cut bytes are kept beside the log
//! as `*.torn-<offset>`). A bad frame in an older log or a damaged snapshot is reported as
//! corruption, never skipped silently. New files and renames are made durable by fsyncing the
//! directory.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::change::Change;
use crate::engine::{Engine, EngineStats, SnapshotSink, Ticket};
use crate::error::{Error, Result};

const LOG_MAGIC: &[u8; 8] = b"K2HDKCLG";
const SNAP_MAGIC: &[u8; 8] = b"K2HDKCSN";
/// On-disk format version written by this build.
pub const FORMAT_VERSION: u16 = 1;
const HEADER_LEN: u64 = 24;
const FOOTER_TAG: u8 = 0xFE;
/// Upper bound on one frame, so a corrupt length cannot make us allocate without limit.
pub(crate) const MAX_FRAME: usize = 1 << 30;
/// Appenders flush themselves when this much is buffered (back-pressure).
const MAX_BUFFERED: usize = 8 << 20;

/// When the log is fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Before every acknowledgement (group commit shares one fsync among concurrent writers).
    Always,
    /// Written within a few milliseconds, fsynced at least this often.
    Batch(Duration),
    /// Written within a few milliseconds, fsynced only at compaction and close.
    Never,
}

impl Default for Fsync {
    fn default() -> Self {
        Fsync::Batch(Duration::from_millis(10))
    }
}

impl FromStr for Fsync {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(Fsync::Always),
            "never" => Ok(Fsync::Never),
            "batch" => Ok(Fsync::default()),
            _ => match s.strip_prefix("batch:") {
                Some(ms) => match ms.trim_end_matches("ms").parse::<u64>() {
                    Ok(ms) if (1..=60_000).contains(&ms) => {
                        Ok(Fsync::Batch(Duration::from_millis(ms)))
                    }
                    _ => Err(format!(
                        "bad batch interval in {s:?}: want batch:<1..60000 ms>"
                    )),
                },
                None => Err(format!(
                    "bad fsync policy {s:?}: want always | batch[:<ms>] | never"
                )),
            },
        }
    }
}

impl std::fmt::Display for Fsync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fsync::Always => f.write_str("always"),
            Fsync::Never => f.write_str("never"),
            Fsync::Batch(d) => write!(f, "batch:{}", d.as_millis()),
        }
    }
}

/// Options of the file engine.
#[derive(Debug, Clone)]
pub struct FileOptions {
    /// Data directory (created if missing).
    pub dir: PathBuf,
    /// Fsync policy.
    pub fsync: Fsync,
    /// Compact when the current log is larger than this and than the last snapshot.
    pub compaction_min_bytes: u64,
    /// Delete the directory at close (the temporary mode).
    pub remove_on_close: bool,
}

impl FileOptions {
    /// Defaults for a directory.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileOptions {
            dir: dir.into(),
            fsync: Fsync::default(),
            compaction_min_bytes: 64 << 20,
            remove_on_close: false,
        }
    }
}

struct LogBuf {
    buf: Vec<u8>,
    /// Total bytes ever appended (the log sequence number).
    appended: u64,
    failed: Option<String>,
}

struct Io {
    file: Option<File>,
    generation: u64,
    written: u64,
    synced: u64,
    last_sync: Instant,
}

struct Shared {
    opts: FileOptions,
    st: Mutex<LogBuf>,
    io: Mutex<Io>,
    synced_lsn: AtomicU64,
    cur_bytes: AtomicU64,
    last_snapshot_bytes: AtomicU64,
    fsyncs: AtomicU64,
    compactions: AtomicU64,
    stop: Mutex<bool>,
    stop_cv: Condvar,
}

/// The file engine. See the module docs.
pub struct FileEngine {
    shared: Arc<Shared>,
    flusher: Mutex<Option<JoinHandle<()>>>,
    lock: Mutex<Option<File>>,
}

impl std::fmt::Debug for FileEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileEngine")
            .field("dir", &self.shared.opts.dir)
            .finish()
    }
}

fn log_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("log-{generation:016}.k2l"))
}
fn snap_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("snap-{generation:016}.k2s"))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("fsync directory {}", dir.display()), e))
}

fn header(magic: &[u8; 8], generation: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(magic);
    h[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&generation.to_le_bytes());
    h
}

fn check_header(h: &[u8], magic: &[u8; 8], what: &'static str) -> Result<u64> {
    if &h[..8] != magic {
        return Err(Error::Corrupt(format!("{what}: bad magic")));
    }
    let v = u16::from_le_bytes([h[8], h[9]]);
    if v > FORMAT_VERSION {
        return Err(Error::UnsupportedVersion {
            what,
            found: v,
            supported: FORMAT_VERSION,
        });
    }
    Ok(u64::from_le_bytes(h[16..24].try_into().expect("8")))
}

/// Append one frame holding `payload` to `out`.
pub(crate) fn put_frame(out: &mut Vec<u8>, payload_writer: impl FnOnce(&mut Vec<u8>)) {
    let at = out.len();
    out.extend_from_slice(&[0u8; 8]);
    payload_writer(out);
    let len = (out.len() - at - 8) as u32;
    let crc = crc32fast::hash(&out[at + 8..]);
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
    out[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Result of reading one frame.
pub(crate) enum Frame {
    Ok(Vec<u8>),
    /// Clean end of input.
    End,
    /// Short or failing checksum: a torn or damaged frame.
    Bad(String),
}

/// Read one frame from a reader.
pub(crate) fn read_frame<R: Read + ?Sized>(r: &mut R) -> Result<Frame> {
    let mut h = [0u8; 8];
    let mut got = 0;
    while got < 8 {
        match r.read(&mut h[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("read frame", e)),
        }
    }
    if got == 0 {
        return Ok(Frame::End);
    }
    if got < 8 {
        return Ok(Frame::Bad("short frame header".into()));
    }
    let len = u32::from_le_bytes(h[..4].try_into().expect("4")) as usize;
    let crc = u32::from_le_bytes(h[4..].try_into().expect("4"));
    if len == 0 || len > MAX_FRAME {
        return Ok(Frame::Bad(format!("frame length {len}")));
    }
    let mut payload = Vec::new();
    r.take(len as u64)
        .read_to_end(&mut payload)
        .map_err(|e| Error::io("read frame", e))?;
    if payload.len() < len {
        return Ok(Frame::Bad("short frame".into()));
    }
    if crc32fast::hash(&payload) != crc {
        return Ok(Frame::Bad("frame checksum mismatch".into()));
    }
    Ok(Frame::Ok(payload))
}

impl FileEngine {
    /// Open (or create) the data directory and lock it. Call [`Engine::recover`] next.
    pub fn open(opts: FileOptions) -> Result<FileEngine> {
        let dir = opts.dir.clone();
        fs::create_dir_all(&dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("LOCK"))
            .map_err(|e| Error::io("open LOCK", e))?;
        // A process forked by another thread (between fork and exec) briefly holds a copy of
        // the lock's descriptor, so a just-released lock can look taken: retry for a second.
        let mut tries = 0;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if tries < 50 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(std::fs::TryLockError::WouldBlock) => return Err(Error::Locked(dir)),
                Err(std::fs::TryLockError::Error(e)) => return Err(Error::io("lock LOCK", e)),
            }
        }
        let shared = Arc::new(Shared {
            opts,
            st: Mutex::new(LogBuf {
                buf: Vec::with_capacity(1 << 20),
                appended: 0,
                failed: None,
            }),
            io: Mutex::new(Io {
                file: None,
                generation: 0,
                written: 0,
                synced: 0,
                last_sync: Instant::now(),
            }),
            synced_lsn: AtomicU64::new(0),
            cur_bytes: AtomicU64::new(0),
            last_snapshot_bytes: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            compactions: AtomicU64::new(0),
            stop: Mutex::new(false),
            stop_cv: Condvar::new(),
        });
        Ok(FileEngine {
            shared,
            flusher: Mutex::new(None),
            lock: Mutex::new(Some(lock)),
        })
    }

    fn start_flusher(&self) {
        let tick = match self.shared.opts.fsync {
            Fsync::Always => return,
            Fsync::Batch(d) => d.min(Duration::from_millis(2)),
            Fsync::Never => Duration::from_millis(2),
        };
        let sh = self.shared.clone();
        let h = std::thread::Builder::new()
            .name("k2hdkc-log-flush".into())
            .spawn(move || {
                loop {
                    {
                        let mut stop = sh.stop.lock();
                        if *stop {
                            return;
                        }
                        sh.stop_cv.wait_for(&mut stop, tick);
                        if *stop {
                            return;
                        }
                    }
                    let due = match sh.opts.fsync {
                        Fsync::Batch(d) => sh.io.lock().last_sync.elapsed() >= d,
                        _ => false,
                    };
                    if let Err(e) = sh.flush(due) {
                        tracing::error!(error = %e, "log flush failed; the store refuses writes");
                        return;
                    }
                }
            })
            .expect("spawn flusher thread");
        *self.flusher.lock() = Some(h);
    }
}

impl Shared {
    fn poison(&self, msg: String) -> Error {
        self.st.lock().failed = Some(msg.clone());
        Error::Closed(msg)
    }

    fn flush(&self, sync: bool) -> Result<()> {
        let mut io = self.io.lock();
        self.flush_locked(&mut io, sync)
    }

    fn flush_locked(&self, io: &mut Io, sync: bool) -> Result<()> {
        let (mut buf, upto) = {
            let mut st = self.st.lock();
            if let Some(f) = &st.failed {
                return Err(Error::Closed(f.clone()));
            }
            if st.buf.is_empty() {
                (Vec::new(), st.appended)
            } else {
                let cap = st.buf.capacity().min(4 << 20);
                (
                    std::mem::replace(&mut st.buf, Vec::with_capacity(cap)),
                    st.appended,
                )
            }
        };
        let Some(file) = io.file.as_mut() else {
            return Err(Error::Closed("log is not open".into()));
        };
        if !buf.is_empty() {
            if let Err(e) = file.write_all(&buf) {
                return Err(self.poison(format!("log write failed: {e}")));
            }
            io.written = upto;
            self.cur_bytes
                .fetch_add(buf.len() as u64, Ordering::Relaxed);
            buf.clear();
        }
        if sync && io.synced < io.written {
            if let Err(e) = file.sync_data() {
                return Err(self.poison(format!("log fsync failed: {e}")));
            }
            io.synced = io.written;
            io.last_sync = Instant::now();
            self.fsyncs.fetch_add(1, Ordering::Relaxed);
            self.synced_lsn.store(io.synced, Ordering::Release);
        }
        Ok(())
    }

    /// Create log `generation` with a durable header, and make it the append target.
    fn start_log(&self, io: &mut Io, generation: u64) -> Result<()> {
        let dir = &self.opts.dir;
        let p = log_path(dir, generation);
        let made = (|| {
            let mut f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&p)
                .map_err(|e| Error::io(format!("create {}", p.display()), e))?;
            f.write_all(&header(LOG_MAGIC, generation))
                .and_then(|_| f.sync_all())
                .map_err(|e| Error::io(format!("write {}", p.display()), e))?;
            sync_dir(dir)?;
            Ok(f)
        })();
        let f = match made {
            Ok(f) => f,
            Err(e) => {
                // A half-made newer log would make the current one look old to recovery.
                let _ = fs::remove_file(&p);
                let _ = sync_dir(dir);
                return Err(e);
            }
        };
        io.file = Some(f);
        io.generation = generation;
        self.cur_bytes.store(HEADER_LEN, Ordering::Relaxed);
        Ok(())
    }
}

/// Replays one file's frames; returns the offset of the end of the last good frame and the
/// reason reading stopped early, if it did.
fn replay_file(
    path: &Path,
    magic: &[u8; 8],
    what: &'static str,
    f: &mut dyn FnMut(Vec<u8>) -> Result<()>,
) -> Result<(u64, Option<String>)> {
    let file = File::open(path).map_err(|e| Error::io(format!("open {}", path.display()), e))?;
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut h = [0u8; HEADER_LEN as usize];
    if let Err(e) = r.read_exact(&mut h) {
        return if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Ok((0, Some("torn header".into())))
        } else {
            Err(Error::io(format!("read {}", path.display()), e))
        };
    }
    check_header(&h, magic, what)?;
    let mut pos = HEADER_LEN;
    loop {
        match read_frame(&mut r)? {
            Frame::End => return Ok((pos, None)),
            Frame::Bad(why) => return Ok((pos, Some(why))),
            Frame::Ok(p) => {
                pos += 8 + p.len() as u64;
                f(p)?;
            }
        }
    }
}

fn list_gens(dir: &Path) -> Result<(Vec<u64>, Vec<u64>)> {
    let mut logs = Vec::new();
    let mut snaps = Vec::new();
    for e in fs::read_dir(dir).map_err(|e| Error::io(format!("list {}", dir.display()), e))? {
        let e = e.map_err(|e| Error::io("list data dir", e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".tmp") {
            // An interrupted snapshot; the previous one and its logs are still there.
            let _ = fs::remove_file(e.path());
        } else if let Some(g) = name
            .strip_prefix("log-")
            .and_then(|s| s.strip_suffix(".k2l"))
        {
            if let Ok(g) = g.parse() {
                logs.push(g);
            }
        } else if let Some(g) = name
            .strip_prefix("snap-")
            .and_then(|s| s.strip_suffix(".k2s"))
            && let Ok(g) = g.parse()
        {
            snaps.push(g);
        }
    }
    logs.sort_unstable();
    snaps.sort_unstable();
    Ok((logs, snaps))
}

/// Checks a snapshot end to end; returns its footer's last sequence number.
fn validate_snapshot(path: &Path) -> Result<Option<u64>> {
    let mut footer = None;
    let mut count = 0u64;
    let (_, bad) = replay_file(path, SNAP_MAGIC, "snapshot", &mut |p| {
        if p.first() == Some(&FOOTER_TAG) && p.len() == 17 {
            footer = Some((
                u64::from_le_bytes(p[1..9].try_into().expect("8")),
                u64::from_le_bytes(p[9..17].try_into().expect("8")),
            ));
        } else {
            footer = None;
            count += 1;
        }
        Ok(())
    })?;
    Ok(match (bad, footer) {
        (None, Some((n, seq))) if n == count => Some(seq),
        _ => None,
    })
}

impl Engine for FileEngine {
    fn name(&self) -> &'static str {
        if self.shared.opts.remove_on_close {
            "temporary"
        } else {
            "file"
        }
    }

    fn recover(&self, apply: &mut dyn FnMut(Change) -> Result<()>) -> Result<u64> {
        let sh = &self.shared;
        let dir = sh.opts.dir.clone();
        let (logs, snaps) = list_gens(&dir)?;
        let mut last_seq = 0u64;
        // A snapshot is renamed into place only once complete and fsynced, so the newest one
        // failing its checks is damage, not a crash: refuse rather than lose what it held.
        let base = snaps.last().copied();
        if let Some(g) = base {
            let p = snap_path(&dir, g);
            match validate_snapshot(&p)? {
                Some(seq) => last_seq = seq,
                None => {
                    return Err(Error::Corrupt(format!(
                        "snapshot {} is damaged",
                        p.display()
                    )));
                }
            }
        }
        let start = base.or(logs.first().copied()).unwrap_or(1);
        if let Some(g) = base {
            let p = snap_path(&dir, g);
            let size = fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            sh.last_snapshot_bytes.store(size, Ordering::Relaxed);
            replay_file(&p, SNAP_MAGIC, "snapshot", &mut |p| {
                if p.first() == Some(&FOOTER_TAG) {
                    return Ok(());
                }
                apply(Change::decode(&p)?)
            })?;
        }
        // Files older than the base are leftovers of an interrupted clean-up.
        for &g in logs.iter().filter(|&&g| g < start) {
            let _ = fs::remove_file(log_path(&dir, g));
        }
        for &g in snaps.iter().filter(|&&g| g < start) {
            let _ = fs::remove_file(snap_path(&dir, g));
        }
        let live: Vec<u64> = logs.iter().copied().filter(|&g| g >= start).collect();
        let mut io = sh.io.lock();
        for (i, &g) in live.iter().enumerate() {
            let p = log_path(&dir, g);
            let last = i + 1 == live.len();
            let (end, bad) = replay_file(&p, LOG_MAGIC, "log", &mut |p| {
                let c = Change::decode(&p)?;
                last_seq = last_seq.max(c.seq);
                apply(c)
            })?;
            if let Some(why) = bad {
                if !last {
                    return Err(Error::Corrupt(format!(
                        "{} is damaged at byte {end} ({why}) and is not the newest log",
                        p.display()
                    )));
                }
                if end == 0 {
                    // The header itself was torn while the generation was being created.
                    tracing::warn!(file = %p.display(), "recreating log with a torn header");
                    sh.start_log(&mut io, g)?;
                    continue;
                }
                let len = fs::metadata(&p).map(|m| m.len()).unwrap_or(end);
                // Keep the unreadable tail beside the log for inspection instead of discarding it.
                let side = p.with_extension(format!("k2l.torn-{end}"));
                let mut src = File::open(&p).map_err(|e| Error::io("open log", e))?;
                src.seek(SeekFrom::Start(end))
                    .map_err(|e| Error::io("seek log", e))?;
                let mut dst = File::create(&side)
                    .map_err(|e| Error::io(format!("create {}", side.display()), e))?;
                std::io::copy(&mut src, &mut dst)
                    .and_then(|_| dst.sync_all())
                    .map_err(|e| Error::io(format!("write {}", side.display()), e))?;
                tracing::warn!(file = %p.display(), offset = end, dropped = len - end, reason = %why,
                    saved = %side.display(), "truncating a torn tail left by a crash");
                let f = OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .map_err(|e| Error::io("open log", e))?;
                f.set_len(end)
                    .and_then(|_| f.sync_all())
                    .map_err(|e| Error::io("truncate log", e))?;
            }
            if last {
                let mut f = OpenOptions::new()
                    .append(true)
                    .open(&p)
                    .map_err(|e| Error::io(format!("open {}", p.display()), e))?;
                let len = f
                    .seek(SeekFrom::End(0))
                    .map_err(|e| Error::io("seek log", e))?;
                io.file = Some(f);
                io.generation = g;
                sh.cur_bytes.store(len, Ordering::Relaxed);
            }
        }
        if io.file.is_none() {
            sh.start_log(&mut io, start)?;
        }
        drop(io);
        self.start_flusher();
        Ok(last_seq)
    }

    fn append(&self, change: &Change) -> Result<Ticket> {
        let mut st = self.shared.st.lock();
        if let Some(f) = &st.failed {
            return Err(Error::Closed(f.clone()));
        }
        let before = st.buf.len();
        put_frame(&mut st.buf, |out| change.encode(out));
        let len = st.buf.len() - before;
        if len - 8 > MAX_FRAME {
            // Could not be read back: refuse it whole, without poisoning the log.
            st.buf.truncate(before);
            return Err(Error::TooLarge {
                what: crate::error::Limit::Value,
                size: len,
                max: MAX_FRAME,
            });
        }
        st.appended += len as u64;
        Ok(Ticket(st.appended))
    }

    fn commit(&self, ticket: Ticket) -> Result<()> {
        let sh = &self.shared;
        match sh.opts.fsync {
            Fsync::Always => {
                if sh.synced_lsn.load(Ordering::Acquire) >= ticket.0 {
                    return Ok(());
                }
                // Whoever holds the io lock is flushing; when we get it, our bytes are either
                // already synced or still buffered, and one fsync covers every waiter's bytes.
                let mut io = sh.io.lock();
                if io.synced >= ticket.0 {
                    return Ok(());
                }
                sh.flush_locked(&mut io, true)
            }
            _ => {
                let big = sh.st.lock().buf.len() > MAX_BUFFERED;
                if big { sh.flush(false) } else { Ok(()) }
            }
        }
    }

    fn sync(&self) -> Result<()> {
        self.shared.flush(true)
    }

    fn wants_compaction(&self) -> bool {
        let sh = &self.shared;
        let cur = sh.cur_bytes.load(Ordering::Relaxed);
        cur > sh.opts.compaction_min_bytes && cur > sh.last_snapshot_bytes.load(Ordering::Relaxed)
    }

    fn begin_compaction(&self) -> Result<Option<Box<dyn SnapshotSink>>> {
        let sh = &self.shared;
        let mut io = sh.io.lock();
        sh.flush_locked(&mut io, true)?;
        let generation = io.generation + 1;
        sh.start_log(&mut io, generation)?;
        let tmp = snap_path(&sh.opts.dir, generation).with_extension("k2s.tmp");
        let f =
            File::create(&tmp).map_err(|e| Error::io(format!("create {}", tmp.display()), e))?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        w.write_all(&header(SNAP_MAGIC, generation))
            .map_err(|e| Error::io("write snapshot", e))?;
        Ok(Some(Box::new(SnapWriter {
            shared: sh.clone(),
            w,
            tmp,
            generation,
            count: 0,
            frame: Vec::new(),
        })))
    }

    fn stats(&self) -> EngineStats {
        let sh = &self.shared;
        // Lock order is io before st (see flush_locked): take each alone, never both.
        let generation = sh.io.lock().generation;
        let appended = sh.st.lock().appended;
        EngineStats {
            engine: self.name(),
            log_bytes_appended: appended,
            log_bytes_current: sh.cur_bytes.load(Ordering::Relaxed),
            fsyncs: sh.fsyncs.load(Ordering::Relaxed),
            compactions: sh.compactions.load(Ordering::Relaxed),
            generation,
        }
    }

    fn close(&self) -> Result<()> {
        {
            *self.shared.stop.lock() = true;
            self.shared.stop_cv.notify_all();
        }
        if let Some(h) = self.flusher.lock().take() {
            let _ = h.join();
        }
        let r = {
            let mut io = self.shared.io.lock();
            let r = if io.file.is_some() {
                self.shared.flush_locked(&mut io, true)
            } else {
                Ok(())
            };
            io.file = None;
            r
        };
        if let Some(lock) = self.lock.lock().take() {
            drop(lock);
            if self.shared.opts.remove_on_close {
                let _ = fs::remove_dir_all(&self.shared.opts.dir);
            }
        }
        match r {
            Err(Error::Closed(m)) if m == "log is not open" => Ok(()),
            r => r,
        }
    }
}

impl Drop for FileEngine {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

struct SnapWriter {
    shared: Arc<Shared>,
    w: BufWriter<File>,
    tmp: PathBuf,
    generation: u64,
    count: u64,
    frame: Vec<u8>,
}

impl SnapshotSink for SnapWriter {
    fn write(&mut self, change: &Change) -> Result<()> {
        self.frame.clear();
        put_frame(&mut self.frame, |o| change.encode(o));
        if self.frame.len() - 8 > MAX_FRAME {
            return Err(Error::TooLarge {
                what: crate::error::Limit::Value,
                size: self.frame.len(),
                max: MAX_FRAME,
            });
        }
        self.count += 1;
        self.w
            .write_all(&self.frame)
            .map_err(|e| Error::io("write snapshot", e))
    }

    fn finish(mut self: Box<Self>, last_seq: u64) -> Result<()> {
        self.frame.clear();
        let (count, generation) = (self.count, self.generation);
        put_frame(&mut self.frame, |o| {
            o.push(FOOTER_TAG);
            o.extend_from_slice(&count.to_le_bytes());
            o.extend_from_slice(&last_seq.to_le_bytes());
        });
        let frame = std::mem::take(&mut self.frame);
        self.w
            .write_all(&frame)
            .map_err(|e| Error::io("write snapshot", e))?;
        let f = self
            .w
            .into_inner()
            .map_err(|e| Error::io("flush snapshot", e.into_error()))?;
        f.sync_all().map_err(|e| Error::io("fsync snapshot", e))?;
        let size = f.metadata().map(|m| m.len()).unwrap_or(0);
        drop(f);
        let dir = self.shared.opts.dir.clone();
        let dst = snap_path(&dir, generation);
        fs::rename(&self.tmp, &dst).map_err(|e| Error::io("rename snapshot", e))?;
        sync_dir(&dir)?;
        let (logs, snaps) = list_gens(&dir)?;
        for g in logs.into_iter().filter(|&g| g < generation) {
            let _ = fs::remove_file(log_path(&dir, g));
        }
        for g in snaps.into_iter().filter(|&g| g < generation) {
            let _ = fs::remove_file(snap_path(&dir, g));
        }
        self.shared
            .last_snapshot_bytes
            .store(size, Ordering::Relaxed);
        self.shared.compactions.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsync_policy_parsing() {
        assert_eq!("always".parse::<Fsync>().unwrap(), Fsync::Always);
        assert_eq!("never".parse::<Fsync>().unwrap(), Fsync::Never);
        assert_eq!(
            "batch:25".parse::<Fsync>().unwrap(),
            Fsync::Batch(Duration::from_millis(25))
        );
        assert_eq!("batch".parse::<Fsync>().unwrap(), Fsync::default());
        assert!("batch:0".parse::<Fsync>().is_err());
        assert!("sometimes".parse::<Fsync>().is_err());
        assert_eq!(
            Fsync::Batch(Duration::from_millis(7)).to_string(),
            "batch:7"
        );
    }

    #[test]
    fn frames_detect_damage() {
        let mut buf = Vec::new();
        put_frame(&mut buf, |o| o.extend_from_slice(b"hello"));
        let mut r = &buf[..];
        assert!(matches!(read_frame(&mut r).unwrap(), Frame::Ok(p) if p == b"hello"));
        assert!(matches!(read_frame(&mut r).unwrap(), Frame::End));
        let mut bad = buf.clone();
        bad[10] ^= 1;
        assert!(matches!(read_frame(&mut &bad[..]).unwrap(), Frame::Bad(_)));
        assert!(matches!(
            read_frame(&mut &buf[..buf.len() - 1]).unwrap(),
            Frame::Bad(_)
        ));
        assert!(matches!(read_frame(&mut &buf[..3]).unwrap(), Frame::Bad(_)));
    }
}
