//! ROOT/context-index: the persisted stat indexes of build contexts (context-relative path → stat key →
//! blake3 of the file's content), one file per context directory, so that an unchanged context is re-checked
//! with stats alone. The store owns the area (du counts it, prune frees it, check verifies it); the context
//! hasher (`kiln_solver::context`) decides what goes in.
//!
//! The file is a private cache, never an authority: it ends with a blake3 of everything before it, and any
//! mismatch (wrong magic or version, another context, a truncated or corrupt file) makes the whole index be
//! ignored. Entries are only trusted when every field of the stat key still matches.
//!
//! ```text
//! "kiln-context-index\0" u32(version) i64(reference.sec) u32(reference.nsec) u64(len) root-path
//! u64(count) { u32(len) path u64(dev) u64(ino) u64(size) i64 u32 (mtime) i64 u32 (ctime)
//!              u32(mode) u32(uid) u32(gid) raw32(content) }^count
//! raw32(blake3 of all the above)
//! ```

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use kiln_fsutil::stat::{Meta, Ts};

use crate::Store;

const MAGIC: &[u8] = b"kiln-context-index\0";
const VERSION: u32 = 1;
/// The fixed part of one entry, to bound `count` before allocating for it.
const ENTRY_FIXED: usize = 4 + 8 * 3 + 12 * 2 + 4 * 3 + 32;

/// The stat fields that, unchanged, let us reuse a content hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatKey {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime: Ts,
    pub ctime: Ts,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl StatKey {
    pub fn of(meta: &Meta) -> StatKey {
        StatKey {
            dev: meta.dev,
            ino: meta.ino,
            size: meta.size,
            mtime: meta.mtime,
            ctime: meta.ctime,
            mode: meta.mode,
            uid: meta.uid,
            gid: meta.gid,
        }
    }

    /// git's racy-clean rule: a file changed at or after `reference` may change again within the same
    /// timestamp granule without its stat showing it, so its recorded hash cannot be trusted later.
    pub fn is_racy(&self, reference: Ts) -> bool {
        self.mtime >= reference || self.ctime >= reference
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Entry {
    pub key: StatKey,
    pub content: blake3::Hash,
}

pub fn encode(root: &[u8], reference: Ts, entries: &[(&Vec<u8>, &Entry)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + root.len() + entries.len() * (ENTRY_FIXED + 40));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&reference.sec.to_le_bytes());
    out.extend_from_slice(&reference.nsec.to_le_bytes());
    out.extend_from_slice(&(root.len() as u64).to_le_bytes());
    out.extend_from_slice(root);
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for (path, entry) in entries {
        let k = &entry.key;
        out.extend_from_slice(&(path.len() as u32).to_le_bytes());
        out.extend_from_slice(path);
        for v in [k.dev, k.ino, k.size] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for t in [k.mtime, k.ctime] {
            out.extend_from_slice(&t.sec.to_le_bytes());
            out.extend_from_slice(&t.nsec.to_le_bytes());
        }
        for v in [k.mode, k.uid, k.gid] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(entry.content.as_bytes());
    }
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    out
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("truncated".to_string());
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn ts(&mut self) -> Result<Ts, String> {
        let sec = i64::from_le_bytes(self.array()?);
        let nsec = self.u32()?;
        Ok(Ts { sec, nsec })
    }
}

impl Store {
    /// ROOT/context-index, where the context hasher keeps one index file per context directory.
    pub fn context_index_dir(&self) -> std::path::PathBuf {
        self.root().join("context-index")
    }
}

/// Checks an index file as far as the store can without its context: its checksum, magic and version.
/// Returns the context directory it belongs to; `Err` says why it cannot be trusted.
pub fn inspect(bytes: &[u8]) -> Result<Vec<u8>, String> {
    header(bytes).map(|(_, _, root)| root.to_vec())
}

/// The checked header: a reader of the entries, the racy-clean reference and the context directory.
fn header(bytes: &[u8]) -> Result<(Reader<'_>, Ts, &[u8]), String> {
    let body_len = bytes.len().checked_sub(32).ok_or("truncated")?;
    let (body, sum) = bytes.split_at(body_len);
    if blake3::hash(body).as_bytes() != sum {
        return Err("checksum mismatch (corrupt or truncated)".to_string());
    }
    let mut r = Reader(body);
    if r.take(MAGIC.len())? != MAGIC {
        return Err("not a context index".to_string());
    }
    let version = r.u32()?;
    if version != VERSION {
        return Err(format!("index version {version}, expected {VERSION}"));
    }
    let reference = r.ts()?;
    let root_len = usize::try_from(r.u64()?).map_err(|_| "bad root length")?;
    let root = r.take(root_len)?;
    Ok((r, reference, root))
}

/// Parses and checks an index file; `Err` says why it is not to be trusted. Racily clean entries (see
/// [`StatKey::is_racy`]) are dropped here, so they are re-read on the next hash.
pub fn decode(bytes: &[u8], root: &[u8]) -> Result<HashMap<Vec<u8>, Entry>, String> {
    let (mut r, reference, indexed_root) = header(bytes)?;
    if indexed_root != root {
        return Err("index belongs to another context directory".to_string());
    }
    let count = usize::try_from(r.u64()?).map_err(|_| "bad entry count")?;
    if count > r.0.len() / ENTRY_FIXED {
        return Err("entry count exceeds file size".to_string());
    }
    let mut entries = HashMap::with_capacity(count);
    for _ in 0..count {
        let path_len = r.u32()? as usize;
        let path = r.take(path_len)?.to_vec();
        let key = StatKey {
            dev: r.u64()?,
            ino: r.u64()?,
            size: r.u64()?,
            mtime: r.ts()?,
            ctime: r.ts()?,
            mode: r.u32()?,
            uid: r.u32()?,
            gid: r.u32()?,
        };
        let content = blake3::Hash::from_bytes(r.array()?);
        if !key.is_racy(reference) {
            entries.insert(path, Entry { key, content });
        }
    }
    if !r.0.is_empty() {
        return Err("trailing bytes".to_string());
    }
    Ok(entries)
}

/// Writes `bytes` to `path` so that readers see the old file or the whole new one, even across a crash:
/// a temporary file in the same directory, fsync, rename, fsync of the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.tmp-{}-{seq}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
