//! Archives: a streaming, versioned, checksummed export of a store (K2HASH's `ar put/load`),
//! the basis of DBaaS backup and restore.
//!
//! Format 1:
//! ```text
//! header  "K2HDKCAR" | version u16 | 0u16 | 0u32 | created_ms u64 | since.ts u64 | since.node u32 | 0u32
//! frames  len u32 | crc32 u32 | payload: one change of records/queue items (tombstones included)
//! footer  a frame whose payload is 0xFD | records u64 | queue_items u64 | crc32 of all entry frames u32
//! ```
//! A reader rejects a bad header, a bad frame checksum, a missing footer (a truncated file) or a
//! footer whose counts or running checksum disagree. An export is fuzzy (shard by shard, each
//! record at a state no older than the export's start); an import applies each record only if
//! it is newer than what the store holds, unless told to overwrite.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::Path;

use crate::change::{Change, Op};
use crate::clock::Version;
use crate::error::{Error, Result};
use crate::file::{Frame, put_frame, read_frame};
use crate::store::Store;

const MAGIC: &[u8; 8] = b"K2HDKCAR";
/// Archive format version written by this build.
pub const ARCHIVE_VERSION: u16 = 1;
const HEADER_LEN: usize = 40;
const FOOTER_TAG: u8 = 0xFD;

/// What an archive holds or what an import did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ArchiveStats {
    /// Records (tombstones included).
    pub records: u64,
    /// Queue items.
    pub queue_items: u64,
    /// Bytes of the archive.
    pub bytes: u64,
    /// Entries actually applied (import only).
    pub applied: u64,
    /// Only changes newer than this version are included.
    #[serde(skip)]
    pub since: Version,
}

fn count(c: &Change, st: &mut ArchiveStats) {
    for op in &c.ops {
        match op {
            Op::Put(_) => st.records += 1,
            Op::QueuePut { .. } => st.queue_items += 1,
            _ => {}
        }
    }
}

impl Store {
    /// Write every record and queue item newer than `since` (everything with `None`) to `w`.
    /// `progress` is called with the number of entries written so far.
    pub fn export(
        &self,
        w: &mut dyn Write,
        since: Option<Version>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<ArchiveStats> {
        let since = since.unwrap_or(Version::ZERO);
        let mut h = Vec::with_capacity(HEADER_LEN);
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&ARCHIVE_VERSION.to_le_bytes());
        h.extend_from_slice(&[0u8; 6]);
        h.extend_from_slice(&self.inner.hlc.clock().now_ms().to_le_bytes());
        h.extend_from_slice(&since.ts.to_le_bytes());
        h.extend_from_slice(&since.node.to_le_bytes());
        h.extend_from_slice(&[0u8; 4]);
        w.write_all(&h).map_err(|e| Error::io("write archive", e))?;
        let mut st = ArchiveStats {
            bytes: HEADER_LEN as u64,
            since,
            ..Default::default()
        };
        let mut crc = crc32fast::Hasher::new();
        let mut frame = Vec::new();
        let mut n = 0u64;
        self.for_each_state(since, &mut |c| {
            frame.clear();
            put_frame(&mut frame, |o| c.encode(o));
            crc.update(&frame);
            w.write_all(&frame)
                .map_err(|e| Error::io("write archive", e))?;
            st.bytes += frame.len() as u64;
            count(&c, &mut st);
            n += 1;
            if n.is_multiple_of(1024) {
                progress(n);
            }
            Ok(())
        })?;
        frame.clear();
        let sum = crc.finalize();
        put_frame(&mut frame, |o| {
            o.push(FOOTER_TAG);
            o.extend_from_slice(&st.records.to_le_bytes());
            o.extend_from_slice(&st.queue_items.to_le_bytes());
            o.extend_from_slice(&sum.to_le_bytes());
        });
        w.write_all(&frame)
            .and_then(|_| w.flush())
            .map_err(|e| Error::io("write archive", e))?;
        st.bytes += frame.len() as u64;
        progress(n);
        Ok(st)
    }

    /// Export into a file, fsynced before it is renamed into place.
    pub fn export_file(
        &self,
        path: &Path,
        since: Option<Version>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<ArchiveStats> {
        let tmp = path.with_extension("partial");
        let f =
            File::create(&tmp).map_err(|e| Error::io(format!("create {}", tmp.display()), e))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        let st = self.export(&mut w, since, progress)?;
        let f = w
            .into_inner()
            .map_err(|e| Error::io("flush archive", e.into_error()))?;
        f.sync_all().map_err(|e| Error::io("fsync archive", e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io("rename archive", e))?;
        Ok(st)
    }

    /// Load an archive, streaming; see the module docs for what is applied. A damaged archive
    /// fails at the damage, after applying what came before it: use [`Store::import_file`]
    /// (which verifies first) when all-or-nothing matters.
    pub fn import(
        &self,
        r: &mut dyn Read,
        overwrite: bool,
        progress: &mut dyn FnMut(u64),
    ) -> Result<ArchiveStats> {
        read_archive(r, &mut |batch, st| {
            st.applied += self.import_changes(batch, overwrite)? as u64;
            progress(st.records + st.queue_items);
            Ok(())
        })
    }

    /// Verify a whole archive file, then import it.
    pub fn import_file(
        &self,
        path: &Path,
        overwrite: bool,
        progress: &mut dyn FnMut(u64),
    ) -> Result<ArchiveStats> {
        let open =
            || File::open(path).map_err(|e| Error::io(format!("open {}", path.display()), e));
        verify_archive(&mut BufReader::new(open()?))?;
        self.import(
            &mut BufReader::with_capacity(1 << 20, open()?),
            overwrite,
            progress,
        )
    }
}

/// Check an archive end to end without applying it.
pub fn verify_archive(r: &mut dyn Read) -> Result<ArchiveStats> {
    read_archive(r, &mut |_, _| Ok(()))
}

fn read_archive(
    r: &mut dyn Read,
    sink: &mut dyn FnMut(Vec<Change>, &mut ArchiveStats) -> Result<()>,
) -> Result<ArchiveStats> {
    let mut h = [0u8; HEADER_LEN];
    r.read_exact(&mut h)
        .map_err(|_| Error::Corrupt("archive header is short".into()))?;
    if &h[..8] != MAGIC {
        return Err(Error::Corrupt("not a k2hdkc archive".into()));
    }
    let v = u16::from_le_bytes([h[8], h[9]]);
    if v > ARCHIVE_VERSION {
        return Err(Error::UnsupportedVersion {
            what: "archive",
            found: v,
            supported: ARCHIVE_VERSION,
        });
    }
    let since = Version {
        ts: u64::from_le_bytes(h[24..32].try_into().expect("8")),
        node: u32::from_le_bytes(h[32..36].try_into().expect("4")),
    };
    let mut st = ArchiveStats {
        bytes: HEADER_LEN as u64,
        since,
        ..Default::default()
    };
    let mut crc = crc32fast::Hasher::new();
    let mut batch = Vec::new();
    loop {
        match read_frame(r)? {
            Frame::End => return Err(Error::Corrupt("archive is truncated (no footer)".into())),
            Frame::Bad(why) => return Err(Error::Corrupt(format!("archive entry damaged: {why}"))),
            Frame::Ok(p) => {
                st.bytes += 8 + p.len() as u64;
                if p.first() == Some(&FOOTER_TAG) {
                    if p.len() != 21 {
                        return Err(Error::Corrupt("archive footer".into()));
                    }
                    let records = u64::from_le_bytes(p[1..9].try_into().expect("8"));
                    let items = u64::from_le_bytes(p[9..17].try_into().expect("8"));
                    let sum = u32::from_le_bytes(p[17..21].try_into().expect("4"));
                    if records != st.records
                        || items != st.queue_items
                        || sum != crc.clone().finalize()
                    {
                        return Err(Error::Corrupt(
                            "archive footer does not match its entries".into(),
                        ));
                    }
                    let mut trailing = [0u8; 1];
                    if r.read(&mut trailing)
                        .map_err(|e| Error::io("read archive", e))?
                        != 0
                    {
                        return Err(Error::Corrupt("bytes after the archive footer".into()));
                    }
                    if !batch.is_empty() {
                        sink(std::mem::take(&mut batch), &mut st)?;
                    }
                    return Ok(st);
                }
                let len = (p.len() as u32).to_le_bytes();
                let sum = crc32fast::hash(&p).to_le_bytes();
                crc.update(&len);
                crc.update(&sum);
                crc.update(&p);
                let c = Change::decode(&p)?;
                count(&c, &mut st);
                batch.push(c);
                if batch.len() >= 1024 {
                    sink(std::mem::take(&mut batch), &mut st)?;
                }
            }
        }
    }
}
