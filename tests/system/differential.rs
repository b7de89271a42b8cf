//! Differential test against memcached: replays the scripts in `tests/data/differential/` step
//! by step against Debian's `memcached` (the reference) and `k2hdkc server --storage memory`,
//! and checks that both servers answer every step of the text, meta and binary protocols with
//! the same bytes once cas uniques are normalised. Skipped, with a message, where memcached is
//! not installed. The scripts were checked against memcached 1.6.18 (Debian 12) replaying them
//! against itself; other versions answer some steps differently (newer ones accept the meta
//! `E` flag and `md x`, for example).
//!
//! # Script format
//!
//! Every `*.txt` file is one script, replayed over one connection per server (a new one after
//! a step that closed the connection or timed out). Lines starting with `#` and blank lines are
//! comments; `@protocol text` (the default) or `@protocol binary` picks the protocol. Every
//! other line is one step, sent in one write:
//!
//! * text and meta: the request bytes themselves. The file's newline is not sent; the escapes
//!   `\r`, `\n`, `\t`, `\s` (space), `\\`, `\{` and `\xHH` spell out bytes.
//! * binary: packets separated by ` ; `. A packet is an opcode name (see `OPCODES`) or number
//!   (`0x41`) followed by `name=value` fields: `k` (key) and `v` (value), escaped as above;
//!   `flags`, `exp`, `delta`, `init`, `level`, the extras of the opcodes that take them
//!   (default 0, `delta` 1; a negative `exp` is sent as its 32-bit two's complement; `flush`
//!   sends extras only with `exp`); `x`, the extras in hex instead (`x=` for none); `cas`; `o`,
//!   the opaque (default: the step's number); and the header overrides `magic`, `dt`, `vb`,
//!   `klen`, `xlen`, `blen`. Numbers are decimal or `0x` hex. `raw hex=<hex>` sends bytes as
//!   they are; `_` in hex is ignored.
//!
//! In both, `{rep:N:S}` stands for `S` repeated `N` times, `{cas:last}` for the real cas unique
//! (of the server at hand) that was normalised last, and `{cas:C41}` for the real value behind
//! the placeholder `C41`.
//!
//! # Reading a step's reply
//!
//! After each step the harness sends a sentinel and reads up to its answer: `mn\r\n`, answered
//! `MN\r\n` (the step's own `mn` commands are counted, and the data blocks of `VALUE` and `VA`
//! replies are skipped, so a value may contain anything), or a binary NOOP with the opaque
//! `0xd1ffd1ff`. End of stream or a reset also ends the reply, recorded as `<closed>`; no
//! sentinel answer within 5 s is recorded as `<timeout>`. Either way the next step reconnects.
//!
//! # Normalisation
//!
//! cas uniques differ by design: memcached counts from 1, k2hdkc uses hybrid logical clock
//! timestamps. Every non-zero cas a server shows (the fifth token of a `VALUE` line, a
//! `c<digits>` token of a meta reply line, bytes 16..24 of a binary response header) becomes
//! `C<line>`: the script line of the step whose reply showed that value first (`C<line>.2`,
//! `C<line>.3` for further new values in the same reply). Names are kept per script and per
//! server, so "the same cas as before" is still compared, and an extra cas on one side does not
//! rename all later ones. Replies are compared as escaped text (`\r\n` shown as such; binary
//! responses as one decoded header and body per line).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use system_tests::{Proc, bin, free_addr, wait_listening};

/// Opaque of the NOOP sent after every binary step; scripts must not use it.
const SENTINEL_OPAQUE: u32 = 0xd1ff_d1ff;
/// Bound on every connect, read and write.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on reading the reply of one step.
const STEP_DEADLINE: Duration = Duration::from_secs(30);
/// Largest reply of one step that is read; the scripts stay far below.
const MAX_REPLY: usize = 16 << 20;
/// Characters of a request or reply shown in a failure message.
const SHOW: usize = 1200;
/// Most mismatches described in a failure message.
const MAX_REPORTED: usize = 200;
/// Binary response header length.
const HEADER_LEN: usize = 24;

/// Binary opcodes by name.
const OPCODES: &[(&str, u8)] = &[
    ("get", 0x00),
    ("set", 0x01),
    ("add", 0x02),
    ("replace", 0x03),
    ("delete", 0x04),
    ("incr", 0x05),
    ("decr", 0x06),
    ("quit", 0x07),
    ("flush", 0x08),
    ("getq", 0x09),
    ("noop", 0x0a),
    ("version", 0x0b),
    ("getk", 0x0c),
    ("getkq", 0x0d),
    ("append", 0x0e),
    ("prepend", 0x0f),
    ("stat", 0x10),
    ("setq", 0x11),
    ("addq", 0x12),
    ("replaceq", 0x13),
    ("deleteq", 0x14),
    ("incrq", 0x15),
    ("decrq", 0x16),
    ("quitq", 0x17),
    ("flushq", 0x18),
    ("appendq", 0x19),
    ("prependq", 0x1a),
    ("verbosity", 0x1b),
    ("touch", 0x1c),
    ("gat", 0x1d),
    ("gatq", 0x1e),
    ("sasl_list", 0x20),
    ("sasl_auth", 0x21),
    ("sasl_step", 0x22),
    ("gatk", 0x23),
    ("gatkq", 0x24),
];

/// Fields every binary packet may carry.
const COMMON_FIELDS: &[&str] = &[
    "k", "v", "x", "cas", "o", "magic", "dt", "vb", "klen", "xlen", "blen",
];

/// Meta reply codes whose lines may carry a `c<cas>` token.
const META_CODES: [&[u8]; 7] = [b"VA", b"HD", b"EN", b"NF", b"NS", b"EX", b"MN"];

#[test]
fn replies_match_memcached_byte_for_byte() {
    let Some(memcached) = find_memcached() else {
        eprintln!(
            "SKIP replies_match_memcached_byte_for_byte: memcached is not installed \
             (apt-get install memcached)"
        );
        return;
    };
    let scripts = load_scripts(&Path::new(env!("CARGO_MANIFEST_DIR")).join("data/differential"));
    let version = Command::new(&memcached)
        .arg("-V")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "memcached".to_string());
    let tmp = tempfile::tempdir().unwrap();

    let reference_addr = free_addr();
    let mut args: Vec<String> = ["-U", "0", "-l", "127.0.0.1", "-p"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(reference_addr.port().to_string());
    if running_as_root() {
        args.extend(["-u".to_string(), "nobody".to_string()]);
    }
    let mut reference = Proc::start(&memcached, &args, Some(&tmp.path().join("memcached.log")));

    let ours_addr = free_addr();
    assert_ne!(
        reference_addr, ours_addr,
        "free_addr returned the same port twice"
    );
    let args: Vec<String> = [
        "server",
        "--storage",
        "memory",
        "--memcached-listen",
        &ours_addr.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut ours = Proc::start(&bin("k2hdkc"), &args, Some(&tmp.path().join("k2hdkc.log")));

    assert!(
        wait_listening(reference_addr, Duration::from_secs(20)),
        "memcached did not start: {}",
        reference.what
    );
    assert!(
        wait_listening(ours_addr, Duration::from_secs(20)),
        "k2hdkc did not start: {}",
        ours.what
    );

    let mut mismatches = Vec::new();
    let mut steps = 0;
    for script in &scripts {
        let before = mismatches.len();
        replay(script, reference_addr, ours_addr, &mut mismatches);
        steps += script.steps.len();
        eprintln!(
            "differential ({version}): {}: {} steps, {} differ",
            script.name,
            script.steps.len(),
            mismatches.len() - before
        );
    }
    let ours_alive = ours.running();
    let ours_exited = ours.terminate(Duration::from_secs(10));
    reference.terminate(Duration::from_secs(5));

    assert!(
        mismatches.is_empty(),
        "{} of {steps} steps answer differently from {version}{}:\n\n{}",
        mismatches.len(),
        if mismatches.len() > MAX_REPORTED {
            format!(" (the first {MAX_REPORTED} are shown)")
        } else {
            String::new()
        },
        mismatches[..mismatches.len().min(MAX_REPORTED)].join("\n\n")
    );
    assert!(ours_alive, "k2hdkc exited during the replay");
    assert!(ours_exited, "k2hdkc did not exit on SIGTERM");
}

/// `/usr/bin/memcached`, or `memcached` on `PATH`.
fn find_memcached() -> Option<PathBuf> {
    let debian = PathBuf::from("/usr/bin/memcached");
    if debian.is_file() {
        return Some(debian);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("memcached"))
        .find(|p| p.is_file())
}

/// Whether this process runs with effective uid 0 (memcached then needs `-u`).
fn running_as_root() -> bool {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status")
        && let Some(uids) = status.lines().find(|l| l.starts_with("Uid:"))
    {
        // Uid: real effective saved filesystem
        return uids.split_whitespace().nth(2) == Some("0");
    }
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// One script file.
struct Script {
    name: String,
    binary: bool,
    steps: Vec<Step>,
}

/// One step: a script line that is not a comment or directive.
struct Step {
    /// 1-based line number in the script file.
    line: usize,
    text: String,
}

/// All `*.txt` scripts of `dir`, in file name order.
fn load_scripts(dir: &Path) -> Vec<Script> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no scripts in {}", dir.display());
    paths.iter().map(|p| parse_script(p)).collect()
}

fn parse_script(path: &Path) -> Script {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut binary = false;
    let mut steps = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(protocol) = line.strip_prefix("@protocol ") {
            binary = match protocol.trim() {
                "text" => false,
                "binary" => true,
                other => panic!("{name}:{}: unknown protocol {other:?}", index + 1),
            };
            continue;
        }
        steps.push(Step {
            line: index + 1,
            text: line.to_string(),
        });
    }
    assert!(!steps.is_empty(), "{name}: no steps");
    Script {
        name,
        binary,
        steps,
    }
}

/// Replays `script` against both servers, step by step, and records every step whose
/// normalised replies differ.
fn replay(script: &Script, reference: SocketAddr, ours: SocketAddr, mismatches: &mut Vec<String>) {
    let mut reference = Side::new(reference);
    let mut ours = Side::new(ours);
    for (index, step) in script.steps.iter().enumerate() {
        let expected = reference.run(script, index, step).unwrap_or_else(|e| {
            panic!(
                "{} line {}: the reference memcached cannot run this step: {e}",
                script.name, step.line
            )
        });
        let actual = ours
            .run(script, index, step)
            .unwrap_or_else(|e| format!("<{e}>"));
        if expected != actual {
            mismatches.push(describe(script, index, step, &expected, &actual));
        }
    }
}

/// A failure message for one step: where, what was sent, and both replies.
fn describe(script: &Script, index: usize, step: &Step, expected: &str, actual: &str) -> String {
    let at = expected
        .chars()
        .zip(actual.chars())
        .take_while(|(a, b)| a == b)
        .count();
    // Binary replies have one line per packet: indent the continuation lines.
    let show = |s: &str| clip(s.trim_end_matches('\n'), at).replace('\n', "\n             ");
    format!(
        "{} step {} (line {}): {}\n  memcached: {}\n  k2hdkc:    {}\n  (first difference at \
         character {at})",
        script.name,
        index + 1,
        step.line,
        clip(&step.text, 0),
        show(expected),
        show(actual)
    )
}

/// At most `SHOW` characters of `s`, starting a little before `around` when `s` is long.
fn clip(s: &str, around: usize) -> String {
    let total = s.chars().count();
    if total <= SHOW {
        return s.to_string();
    }
    let start = around.saturating_sub(SHOW / 4).min(total - SHOW);
    let mut out = String::new();
    if start > 0 {
        let _ = write!(out, "[{start} characters]...");
    }
    out.extend(s.chars().skip(start).take(SHOW));
    let rest = total - start - SHOW;
    if rest > 0 {
        let _ = write!(out, "...[{rest} characters]");
    }
    out
}

/// Names for the cas uniques one server showed during one script.
#[derive(Default)]
struct CasNames {
    names: HashMap<u64, String>,
    values: HashMap<String, u64>,
    last: Option<u64>,
    /// Script line of the step whose reply is being normalised.
    line: usize,
    /// New values seen in that reply so far.
    new_in_step: usize,
}

impl CasNames {
    fn start_step(&mut self, line: usize) {
        self.line = line;
        self.new_in_step = 0;
    }

    /// The placeholder for `cas`, named after the current step if it is new.
    fn name(&mut self, cas: u64) -> String {
        self.last = Some(cas);
        if let Some(name) = self.names.get(&cas) {
            return name.clone();
        }
        self.new_in_step += 1;
        let name = if self.new_in_step == 1 {
            format!("C{}", self.line)
        } else {
            format!("C{}.{}", self.line, self.new_in_step)
        };
        self.names.insert(cas, name.clone());
        self.values.insert(name.clone(), cas);
        name
    }

    /// The real value behind `last` or a placeholder.
    fn resolve(&self, what: &str) -> Result<u64, String> {
        if what == "last" {
            return self
                .last
                .ok_or_else(|| "{cas:last} before any cas was seen".to_string());
        }
        self.values
            .get(what)
            .copied()
            .ok_or_else(|| format!("no cas was named {what}"))
    }
}

/// One server as seen by one script: its connection and its cas names.
struct Side {
    addr: SocketAddr,
    conn: Option<Conn>,
    cas: CasNames,
}

struct Conn {
    stream: TcpStream,
    /// Bytes read after the previous step's sentinel answer.
    pending: Vec<u8>,
}

/// How the reply of a step ended.
enum End {
    Sentinel,
    Closed,
    Timeout,
}

impl Side {
    fn new(addr: SocketAddr) -> Side {
        Side {
            addr,
            conn: None,
            cas: CasNames::default(),
        }
    }

    /// Sends step `index` of `script` and returns its normalised reply; `Err` when the step
    /// could not be sent (a cas placeholder this server never showed, a bad script line, no
    /// connection).
    fn run(&mut self, script: &Script, index: usize, step: &Step) -> Result<String, String> {
        let request = if script.binary {
            let number = u32::try_from(index + 1).map_err(|_| "too many steps".to_string())?;
            build_packets(&step.text, number, &self.cas)
        } else {
            expand(&step.text, &self.cas)
        }
        .map_err(|e| format!("step not sent: {e}"))?;
        let (reply, end) = self.exchange(&request, script.binary)?;
        self.cas.start_step(step.line);
        let mut normalised = if script.binary {
            normalise_binary(&reply, &mut self.cas)
        } else {
            normalise_text(&reply, &mut self.cas)
        };
        match end {
            End::Sentinel => {}
            End::Closed => normalised.push_str("<closed>"),
            End::Timeout => normalised.push_str("<timeout>"),
        }
        Ok(normalised)
    }

    /// Sends `request` followed by the sentinel and reads the reply up to the sentinel's answer
    /// (which is not part of the returned reply), the end of the stream, or a timeout. The
    /// connection is dropped unless the sentinel was answered.
    fn exchange(&mut self, request: &[u8], binary: bool) -> Result<(Vec<u8>, End), String> {
        if self.conn.is_none() {
            self.conn = Some(connect(self.addr)?);
        }
        let conn = self.conn.as_mut().expect("connected above");
        let mut out = request.to_vec();
        if binary {
            out.extend_from_slice(&binary_sentinel());
        } else {
            out.extend_from_slice(b"mn\r\n");
        }
        // A server may close the connection before it has read everything; what it answered
        // before that is still read below.
        let _ = conn.stream.write_all(&out);
        let mn_needed = if binary { 0 } else { count_mn(request) + 1 };
        let mut buf = std::mem::take(&mut conn.pending);
        let mut chunk = vec![0u8; 64 * 1024];
        let deadline = Instant::now() + STEP_DEADLINE;
        let end = loop {
            let found = if binary {
                binary_reply_end(&buf)
            } else {
                text_reply_end(&buf, mn_needed)
            };
            if let Some((reply_end, consumed)) = found {
                conn.pending = buf.split_off(consumed);
                buf.truncate(reply_end);
                return Ok((buf, End::Sentinel));
            }
            if Instant::now() >= deadline || buf.len() > MAX_REPLY {
                break End::Timeout;
            }
            match conn.stream.read(&mut chunk) {
                Ok(0) => break End::Closed,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    break End::Timeout;
                }
                Err(_) => break End::Closed,
            }
        };
        self.conn = None;
        Ok((buf, end))
    }
}

fn connect(addr: SocketAddr) -> Result<Conn, String> {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
        .and_then(|()| stream.set_nodelay(true))
        .map_err(|e| format!("configure the connection to {addr}: {e}"))?;
    Ok(Conn {
        stream,
        pending: Vec::new(),
    })
}

/// A binary NOOP request with `SENTINEL_OPAQUE`.
fn binary_sentinel() -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0] = 0x80;
    h[1] = 0x0a;
    h[12..16].copy_from_slice(&SENTINEL_OPAQUE.to_be_bytes());
    h
}

/// How many `mn` commands a text request contains (each is answered `MN`).
fn count_mn(request: &[u8]) -> usize {
    request
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| *l == b"mn" || l.starts_with(b"mn "))
        .count()
}

/// One line of a text reply (without its `\r\n`) and the data block that follows it.
struct TextFrame {
    line: Range<usize>,
    data: Range<usize>,
}

/// Splits the complete part of a text reply into lines, each with the data block that follows
/// a `VALUE` or `VA` line; returns the frames and where the incomplete rest begins.
fn text_frames(buf: &[u8]) -> (Vec<TextFrame>, usize) {
    let mut frames = Vec::new();
    let mut pos = 0;
    while let Some(cr) = find(&buf[pos..], b"\r\n") {
        let line = pos..pos + cr;
        let after = line.end + 2;
        let end = match data_block_len(&buf[line.clone()]) {
            Some(len) => after.saturating_add(len).saturating_add(2),
            None => after,
        };
        if end > buf.len() {
            break;
        }
        frames.push(TextFrame {
            line,
            data: after..end,
        });
        pos = end;
    }
    (frames, pos)
}

/// Length of the data block announced by a `VALUE <key> <flags> <bytes>` or `VA <size>` line,
/// without its `\r\n`.
fn data_block_len(line: &[u8]) -> Option<usize> {
    let mut tokens = line.split(|&b| b == b' ');
    let index = match tokens.next()? {
        b"VALUE" => 2,
        b"VA" => 0,
        _ => return None,
    };
    let len = digits(tokens.nth(index)?)?;
    usize::try_from(len).ok()
}

/// Where the reply ends and the sentinel's `MN\r\n` (the `needed`-th `MN` line) ends.
fn text_reply_end(buf: &[u8], needed: usize) -> Option<(usize, usize)> {
    let (frames, _) = text_frames(buf);
    frames
        .iter()
        .filter(|f| &buf[f.line.clone()] == b"MN")
        .nth(needed - 1)
        .map(|f| (f.line.start, f.data.end))
}

/// Splits the complete part of a binary reply into response packets; returns them and where
/// the rest (an incomplete packet, or bytes that are not a response) begins.
fn binary_frames(buf: &[u8]) -> (Vec<Range<usize>>, usize) {
    let mut frames = Vec::new();
    let mut pos = 0;
    while let Some(h) = buf.get(pos..pos + HEADER_LEN) {
        if h[0] != 0x81 {
            break;
        }
        let body = u32::from_be_bytes([h[8], h[9], h[10], h[11]]) as usize;
        let end = pos.saturating_add(HEADER_LEN).saturating_add(body);
        if end > buf.len() {
            break;
        }
        frames.push(pos..end);
        pos = end;
    }
    (frames, pos)
}

/// Where the reply ends and the sentinel NOOP's response ends.
fn binary_reply_end(buf: &[u8]) -> Option<(usize, usize)> {
    let (frames, _) = binary_frames(buf);
    frames
        .into_iter()
        .find(|f| {
            let h = &buf[f.start..f.start + HEADER_LEN];
            h[1] == 0x0a && u32::from_be_bytes([h[12], h[13], h[14], h[15]]) == SENTINEL_OPAQUE
        })
        .map(|f| (f.start, f.end))
}

/// A text reply with its cas uniques replaced by placeholders, escaped.
fn normalise_text(reply: &[u8], cas: &mut CasNames) -> String {
    let (frames, rest) = text_frames(reply);
    let mut out = String::new();
    for frame in &frames {
        let mut tokens: Vec<Vec<u8>> = reply[frame.line.clone()]
            .split(|&b| b == b' ')
            .map(<[u8]>::to_vec)
            .collect();
        let code = tokens[0].clone();
        if code == b"VALUE" && tokens.len() == 5 {
            if let Some(value) = digits(&tokens[4]) {
                tokens[4] = cas.name(value).into_bytes();
            }
        } else if META_CODES.contains(&code.as_slice()) {
            for token in tokens.iter_mut().skip(1) {
                if let Some(value) = token.strip_prefix(b"c").and_then(digits)
                    && value != 0
                {
                    *token = format!("c{}", cas.name(value)).into_bytes();
                }
            }
        }
        out.push_str(&escape(&tokens.join(&b' ')));
        out.push_str("\\r\\n");
        out.push_str(&escape(&reply[frame.data.clone()]));
    }
    out.push_str(&escape(&reply[rest..]));
    out
}

/// A binary reply as one line per response packet, its cas replaced by a placeholder; bytes
/// that are not a complete response are shown in hex.
fn normalise_binary(reply: &[u8], cas: &mut CasNames) -> String {
    let (frames, rest) = binary_frames(reply);
    let mut out = String::new();
    for frame in frames {
        let (h, body) = reply[frame].split_at(HEADER_LEN);
        let key_len = usize::from(u16::from_be_bytes([h[2], h[3]]));
        let extras_len = usize::from(h[4]);
        let status = u16::from_be_bytes([h[6], h[7]]);
        let opaque = u32::from_be_bytes([h[12], h[13], h[14], h[15]]);
        let unique = u64::from_be_bytes([h[16], h[17], h[18], h[19], h[20], h[21], h[22], h[23]]);
        let unique = if unique == 0 {
            "0".to_string()
        } else {
            cas.name(unique)
        };
        let (extras, key, value) = if extras_len + key_len <= body.len() {
            let (extras, rest) = body.split_at(extras_len);
            let (key, value) = rest.split_at(key_len);
            (extras, key, value)
        } else {
            (&[][..], &[][..], body)
        };
        let _ = writeln!(
            out,
            "[{:02x} op={:02x} status={status:04x} klen={key_len} xlen={extras_len} dt={:02x} \
             blen={} opaque={opaque:08x} cas={unique} x={} k={} v={}]",
            h[0],
            h[1],
            h[5],
            body.len(),
            hex(extras),
            escape(key),
            escape(value)
        );
    }
    if rest < reply.len() {
        let _ = write!(out, "raw={}", hex(&reply[rest..]));
    }
    out
}

/// The bytes of a text step: escapes and substitutions resolved.
fn expand(text: &str, cas: &CasNames) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        rest = &rest[c.len_utf8()..];
        match c {
            '\\' => {
                let e = rest.chars().next().ok_or("a trailing backslash")?;
                rest = &rest[e.len_utf8()..];
                match e {
                    'r' => out.push(b'\r'),
                    'n' => out.push(b'\n'),
                    't' => out.push(b'\t'),
                    's' => out.push(b' '),
                    '\\' => out.push(b'\\'),
                    '{' => out.push(b'{'),
                    'x' => {
                        let pair = rest.get(..2).ok_or("a short \\x escape")?;
                        let byte = u8::from_str_radix(pair, 16)
                            .map_err(|_| format!("a bad escape \\x{pair}"))?;
                        out.push(byte);
                        rest = &rest[2..];
                    }
                    other => return Err(format!("an unknown escape \\{other}")),
                }
            }
            '{' => {
                let close = rest.find('}').ok_or("an unterminated {")?;
                let body = &rest[..close];
                rest = &rest[close + 1..];
                if let Some(what) = body.strip_prefix("cas:") {
                    out.extend_from_slice(cas.resolve(what)?.to_string().as_bytes());
                } else if let Some(spec) = body.strip_prefix("rep:") {
                    let (count, pattern) = spec
                        .split_once(':')
                        .ok_or_else(|| format!("a bad {{{body}}}"))?;
                    let count: usize = count
                        .parse()
                        .map_err(|_| format!("a bad count in {{{body}}}"))?;
                    out.extend_from_slice(pattern.repeat(count).as_bytes());
                } else {
                    return Err(format!("an unknown substitution {{{body}}}"));
                }
            }
            c => {
                let mut utf8 = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
        }
    }
    Ok(out)
}

/// The bytes of a binary step: its packets, `step` being the default opaque.
fn build_packets(text: &str, step: u32, cas: &CasNames) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for packet in text.split(" ; ") {
        let mut tokens = packet.split_whitespace();
        let name = tokens.next().ok_or("an empty packet")?;
        let mut fields: HashMap<&str, Vec<u8>> = HashMap::new();
        for token in tokens {
            let (field, value) = token
                .split_once('=')
                .ok_or_else(|| format!("{token:?} is not name=value"))?;
            if fields.insert(field, expand(value, cas)?).is_some() {
                return Err(format!("{field} is given twice"));
            }
        }
        if name == "raw" {
            if fields.keys().any(|&f| f != "hex") {
                return Err("raw takes only hex=".to_string());
            }
            out.extend(parse_hex(fields.get("hex").map_or(&[][..], Vec::as_slice))?);
            continue;
        }
        let op = opcode(name)?;
        let extras_fields: &[&str] = match op {
            0x01..=0x03 | 0x11..=0x13 => &["flags", "exp"],
            0x05 | 0x06 | 0x15 | 0x16 => &["delta", "init", "exp"],
            0x08 | 0x18 | 0x1c..=0x1e | 0x23 | 0x24 => &["exp"],
            0x1b => &["level"],
            _ => &[],
        };
        if let Some(field) = fields
            .keys()
            .find(|f| !COMMON_FIELDS.contains(*f) && !extras_fields.contains(*f))
        {
            return Err(format!("{name} takes no field {field}"));
        }
        let num = |field: &str, default: u64, width: usize| -> Result<Vec<u8>, String> {
            let value = match fields.get(field) {
                Some(raw) => parse_number(raw, width).map_err(|e| format!("{field}: {e}"))?,
                None => default,
            };
            Ok(value.to_be_bytes()[8 - width..].to_vec())
        };
        let extras = match fields.get("x") {
            Some(_) if extras_fields.iter().any(|f| fields.contains_key(f)) => {
                return Err(format!("{name}: x= replaces {}", extras_fields.join(", ")));
            }
            Some(x) => parse_hex(x)?,
            None => match op {
                0x01..=0x03 | 0x11..=0x13 => [num("flags", 0, 4)?, num("exp", 0, 4)?].concat(),
                0x05 | 0x06 | 0x15 | 0x16 => {
                    [num("delta", 1, 8)?, num("init", 0, 8)?, num("exp", 0, 4)?].concat()
                }
                0x08 | 0x18 if !fields.contains_key("exp") => Vec::new(),
                0x08 | 0x18 | 0x1c..=0x1e | 0x23 | 0x24 => num("exp", 0, 4)?,
                0x1b => num("level", 0, 4)?,
                _ => Vec::new(),
            },
        };
        let key = fields.get("k").cloned().unwrap_or_default();
        let value = fields.get("v").cloned().unwrap_or_default();
        let body_len = extras.len() + key.len() + value.len();
        out.extend(num("magic", 0x80, 1)?);
        out.push(op);
        out.extend(num("klen", key.len() as u64, 2)?);
        out.extend(num("xlen", extras.len() as u64, 1)?);
        out.extend(num("dt", 0, 1)?);
        out.extend(num("vb", 0, 2)?);
        out.extend(num("blen", body_len as u64, 4)?);
        out.extend(num("o", u64::from(step), 4)?);
        out.extend(num("cas", 0, 8)?);
        out.extend(extras);
        out.extend(key);
        out.extend(value);
    }
    Ok(out)
}

fn opcode(name: &str) -> Result<u8, String> {
    if let Some(hex) = name.strip_prefix("0x") {
        return u8::from_str_radix(hex, 16).map_err(|_| format!("a bad opcode {name}"));
    }
    OPCODES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|&(_, op)| op)
        .ok_or_else(|| format!("an unknown opcode {name}"))
}

/// A decimal or `0x` hex number that fits `width` bytes; negative numbers are taken as two's
/// complement.
fn parse_number(raw: &[u8], width: usize) -> Result<u64, String> {
    let text = std::str::from_utf8(raw).map_err(|_| "not UTF-8".to_string())?;
    let (negative, magnitude) = match text.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, text),
    };
    let magnitude = match magnitude.strip_prefix("0x") {
        Some(h) => i128::from_str_radix(h, 16),
        None => magnitude.parse::<i128>(),
    }
    .map_err(|_| format!("{text:?} is not a number"))?;
    let bits = 8 * u32::try_from(width).map_err(|_| "too wide".to_string())?;
    let span = 1i128 << bits;
    let value = if negative { -magnitude } else { magnitude };
    if value >= span || value < -(span / 2) {
        return Err(format!("{text} does not fit {width} bytes"));
    }
    let value = if value < 0 { value + span } else { value };
    u64::try_from(value).map_err(|_| format!("{text} does not fit {width} bytes"))
}

/// Bytes from hex digits; `_` is ignored.
fn parse_hex(raw: &[u8]) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = raw.iter().copied().filter(|&b| b != b'_').collect();
    if !digits.len().is_multiple_of(2) {
        return Err("an odd number of hex digits".to_string());
    }
    digits
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| format!("bad hex {:?}", String::from_utf8_lossy(pair)))
        })
        .collect()
}

/// A token of ASCII digits as a number.
fn digits(token: &[u8]) -> Option<u64> {
    if token.is_empty() || !token.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(token).ok()?.parse().ok()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Printable ASCII as is; `\r`, `\n`, `\\` and other bytes escaped.
fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\r' => out.push_str("\\r"),
            b'\n' => out.push_str("\\n"),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(char::from(b)),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}
