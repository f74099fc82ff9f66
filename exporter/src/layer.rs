//! Layer tars of overlay diff directories (a snapshot's upperdir), byte-for-byte deterministic.
//!
//! What makes the bytes a function of the tree alone:
//! - entries in depth-first order, each directory's names sorted by their bytes, a directory before its
//!   contents; no entry for the root (its attributes are the lower layers');
//! - ustar headers with only mode (permission and set-id bits), uid, gid, size, mtime (whole seconds) and,
//!   for devices, major and minor; uname, gname, atime and ctime are never written;
//! - PAX records only where ustar has no room (names or link targets over 100 bytes, ids or sizes out of
//!   octal range) and for xattrs, sorted by key, in a PAX header whose own fields are all zero;
//! - hardlinks by inode: the first name in walk order carries the content, later names link to it.
//!
//! Overlay's own markers become OCI's: a whiteout (a character device 0/0) is a `.wh.NAME` entry, and an
//! opaque directory (xattr `trusted.overlay.opaque=y`) is its directory entry followed by `.wh..wh..opq`.

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use tar::{EntryType, Header};

use crate::error::{Error, Result};

/// How a layer tar is made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LayerOptions {
    /// SOURCE_DATE_EPOCH: mtimes newer than this are written as this; older ones stay (BuildKit's
    /// rewrite-timestamp clamps, it does not set).
    pub source_date_epoch: Option<u64>,
}

/// What a layer tar holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TarSummary {
    /// Entries (files, directories, links, devices, whiteouts, opaque markers), PAX headers not counted. Zero
    /// means the step changed nothing.
    pub entries: u64,
}

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// Overlay xattrs that move content elsewhere: a tar of the upperdir alone would be wrong. kiln mounts with
/// `redirect_dir=off,metacopy=off`, so meeting one means the directory was not made by kiln's overlay.
const CONTENT_ELSEWHERE_XATTRS: &[&str] = &["trusted.overlay.redirect", "trusted.overlay.metacopy"];
/// Largest values the ustar numeric fields hold in octal (8-byte ids, 12-byte size and mtime).
const MAX_USTAR_ID: u64 = 0o7777777;
const MAX_USTAR_NUM: u64 = 0o77777777777;

/// Writes the layer tar of `diff_dir` to `w` (ending with the two zero blocks) and says what it held.
pub fn layer_tar(diff_dir: &Path, w: impl Write, opts: &LayerOptions) -> Result<TarSummary> {
    let meta = lstat(diff_dir)?;
    if !meta.is_dir() {
        return Err(Error::invalid(
            format!("layer directory {}", diff_dir.display()),
            "not a directory",
        ));
    }
    let mut tar = TarWriter {
        builder: tar::Builder::new(w),
        epoch: opts.source_date_epoch,
        first_names: HashMap::new(),
        entries: 0,
    };
    // A root made opaque hides every lower layer.
    if is_opaque(&xattrs(diff_dir)?) {
        tar.marker(b"", &meta, diff_dir)?;
    }
    // An explicit stack, not recursion: a step can create directories deeper than any thread stack.
    let mut stack = Vec::new();
    push_children(&mut stack, b"", diff_dir)?;
    while let Some((name, path)) = stack.pop() {
        if tar.entry(&name, &path)? {
            push_children(&mut stack, &name, &path)?;
        }
    }
    let mut builder = tar.builder;
    builder.finish().map_err(Error::io(format!(
        "write the layer tar of {}",
        diff_dir.display()
    )))?;
    Ok(TarSummary { entries: tar.entries })
}

/// Pushes the children of `dir` so that they pop in ascending byte order.
fn push_children(stack: &mut Vec<(Vec<u8>, PathBuf)>, prefix: &[u8], dir: &Path) -> Result<()> {
    let list_err = || Error::io(format!("list {}", dir.display()));
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(list_err())? {
        names.push(entry.map_err(list_err())?.file_name());
    }
    names.sort_by(|a, b| b.as_bytes().cmp(a.as_bytes()));
    for name in names {
        let mut tar_name = prefix.to_vec();
        if !tar_name.is_empty() {
            tar_name.push(b'/');
        }
        tar_name.extend_from_slice(name.as_bytes());
        stack.push((tar_name, dir.join(name)));
    }
    Ok(())
}

struct TarWriter<W: Write> {
    builder: tar::Builder<W>,
    epoch: Option<u64>,
    /// (dev, ino) of files with several names → the name the first was written under.
    first_names: HashMap<(u64, u64), Vec<u8>>,
    entries: u64,
}

/// A header being filled in, with the PAX records it needs.
struct Entry {
    header: Header,
    pax: Vec<(String, Vec<u8>)>,
}

impl Entry {
    /// A header with every numeric field written as octal zero (not left as NUL bytes), to be overridden.
    fn new(kind: EntryType, name: &[u8]) -> Entry {
        let mut e = Entry {
            header: Header::new_ustar(),
            pax: Vec::new(),
        };
        e.header.set_entry_type(kind);
        e.header.set_mode(0);
        e.header.set_uid(0);
        e.header.set_gid(0);
        e.header.set_size(0);
        e.header.set_mtime(0);
        // Infallible on a ustar header (only old-style headers lack the fields).
        let _ = e.header.set_device_major(0);
        let _ = e.header.set_device_minor(0);
        let field = &mut e.header.as_old_mut().name;
        if name.len() <= field.len() {
            field[..name.len()].copy_from_slice(name);
        } else {
            // Readers take the PAX path; the truncated header name is only what PAX-blind readers see.
            let n = field.len();
            field.copy_from_slice(&name[..n]);
            e.pax.push(("path".into(), name.to_vec()));
        }
        e
    }

    fn link(&mut self, target: &[u8]) {
        let field = &mut self.header.as_old_mut().linkname;
        if target.len() <= field.len() {
            field[..target.len()].copy_from_slice(target);
        } else {
            let n = field.len();
            field.copy_from_slice(&target[..n]);
            self.pax.push(("linkpath".into(), target.to_vec()));
        }
    }

    /// Mode, owner and mtime; uname and gname stay empty.
    fn owner_and_time(&mut self, meta: &Metadata, mtime: u64) {
        self.header.set_mode(meta.mode() & 0o7777);
        self.number("uid", u64::from(meta.uid()), MAX_USTAR_ID, Header::set_uid);
        self.number("gid", u64::from(meta.gid()), MAX_USTAR_ID, Header::set_gid);
        self.number("mtime", mtime, MAX_USTAR_NUM, Header::set_mtime);
    }

    fn size(&mut self, size: u64) {
        self.number("size", size, MAX_USTAR_NUM, Header::set_size);
    }

    /// Sets a numeric field, moving it to a PAX record when octal cannot hold it (as Go's archive/tar does,
    /// rather than the GNU base-256 encoding that strict ustar readers reject).
    fn number(&mut self, key: &str, value: u64, max: u64, set: fn(&mut Header, u64)) {
        if value > max {
            set(&mut self.header, 0);
            self.pax.push((key.into(), value.to_string().into_bytes()));
        } else {
            set(&mut self.header, value);
        }
    }

    /// PAX records for the xattrs an image keeps; refuses the ones that say the content is elsewhere.
    fn xattrs(&mut self, xattrs: &[(String, Vec<u8>)], path: &Path) -> Result<()> {
        for (key, value) in xattrs {
            if CONTENT_ELSEWHERE_XATTRS.contains(&key.as_str()) {
                return Err(Error::invalid(
                    format!("file {}", path.display()),
                    format!(
                        "has overlayfs xattr {key}: its content lives in a lower layer (mounted with redirect_dir or metacopy on)"
                    ),
                ));
            }
            // Overlay's bookkeeping is expressed by whiteout entries or means nothing in an image; an SELinux
            // label is the building host's, and would make the layer differ between machines.
            if key.starts_with("trusted.overlay.") || key == "security.selinux" {
                continue;
            }
            self.pax.push((format!("SCHILY.xattr.{key}"), value.clone()));
        }
        Ok(())
    }
}

impl<W: Write> TarWriter<W> {
    /// Writes the entry for `path`; returns whether it is a directory to descend into.
    fn entry(&mut self, name: &[u8], path: &Path) -> Result<bool> {
        let meta = lstat(path)?;
        let ft = meta.file_type();
        if ft.is_socket() {
            // A socket is a live endpoint, not content; docker and BuildKit leave them out too.
            return Ok(false);
        }
        let base = name.rsplit(|b| *b == b'/').next().unwrap_or(name);
        if ft.is_char_device() && meta.rdev() == 0 {
            // Before the hardlink check: overlayfs links whiteouts to one shared inode.
            let parent = &name[..name.len() - base.len()];
            let mut wh = parent.to_vec();
            wh.extend_from_slice(WHITEOUT_PREFIX);
            wh.extend_from_slice(base);
            let mut e = Entry::new(EntryType::Regular, &wh);
            e.number("mtime", self.mtime(&meta), MAX_USTAR_NUM, Header::set_mtime);
            self.append(e, io::empty(), path)?;
            return Ok(false);
        }
        if base.starts_with(WHITEOUT_PREFIX) {
            return Err(Error::invalid(
                format!("file {}", path.display()),
                "a name starting with .wh. cannot be stored in a layer: OCI reads it as a whiteout",
            ));
        }
        let mtime = self.mtime(&meta);
        if !ft.is_dir() && meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = self.first_names.get(&key).cloned() {
                let mut e = Entry::new(EntryType::Link, name);
                e.owner_and_time(&meta, mtime);
                e.link(&first);
                self.append(e, io::empty(), path)?;
                return Ok(false);
            }
            self.first_names.insert(key, name.to_vec());
        }
        let xattrs = xattrs(path)?;
        if ft.is_dir() {
            let mut dir_name = name.to_vec();
            dir_name.push(b'/');
            let mut e = Entry::new(EntryType::Directory, &dir_name);
            e.owner_and_time(&meta, mtime);
            e.xattrs(&xattrs, path)?;
            self.append(e, io::empty(), path)?;
            if is_opaque(&xattrs) {
                self.marker(name, &meta, path)?;
            }
            return Ok(true);
        }
        let mut e;
        if ft.is_file() {
            e = Entry::new(EntryType::Regular, name);
            e.owner_and_time(&meta, mtime);
            e.size(meta.len());
            e.xattrs(&xattrs, path)?;
            let file = open_nofollow(path)?;
            let content = Exact {
                inner: file.take(meta.len()),
                left: meta.len(),
            };
            self.append(e, content, path)?;
            return Ok(false);
        }
        if ft.is_symlink() {
            let target =
                std::fs::read_link(path).map_err(Error::io(format!("read link {}", path.display())))?;
            e = Entry::new(EntryType::Symlink, name);
            e.link(target.as_os_str().as_bytes());
        } else if ft.is_fifo() {
            e = Entry::new(EntryType::Fifo, name);
        } else if ft.is_char_device() || ft.is_block_device() {
            let kind = if ft.is_char_device() {
                EntryType::Char
            } else {
                EntryType::Block
            };
            e = Entry::new(kind, name);
            let rdev = meta.rdev();
            let set = e
                .header
                .set_device_major(rustix::fs::major(rdev))
                .and_then(|()| e.header.set_device_minor(rustix::fs::minor(rdev)));
            set.map_err(Error::io(format!("device numbers of {}", path.display())))?;
        } else {
            return Err(Error::invalid(
                format!("file {}", path.display()),
                format!("unsupported file type {ft:?}"),
            ));
        }
        e.owner_and_time(&meta, mtime);
        e.xattrs(&xattrs, path)?;
        self.append(e, io::empty(), path)?;
        Ok(false)
    }

    /// The `.wh..wh..opq` entry that makes directory `dir` (a tar name, empty for the root) opaque.
    fn marker(&mut self, dir: &[u8], meta: &Metadata, path: &Path) -> Result<()> {
        let mut name = dir.to_vec();
        if !name.is_empty() {
            name.push(b'/');
        }
        name.extend_from_slice(OPAQUE_MARKER);
        let mut e = Entry::new(EntryType::Regular, &name);
        e.number("mtime", self.mtime(meta), MAX_USTAR_NUM, Header::set_mtime);
        self.append(e, io::empty(), path)
    }

    fn append(&mut self, mut e: Entry, content: impl Read, path: &Path) -> Result<()> {
        let err = || Error::io(format!("archive {}", path.display()));
        if !e.pax.is_empty() {
            e.pax.sort();
            self.builder
                .append_pax_extensions(e.pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .map_err(err())?;
        }
        e.header.set_cksum();
        self.builder.append(&e.header, content).map_err(err())?;
        self.entries += 1;
        Ok(())
    }

    fn mtime(&self, meta: &Metadata) -> u64 {
        // Before 1970 is not representable in ustar; such a file is written as of the epoch's start.
        let own = u64::try_from(meta.mtime()).unwrap_or(0);
        self.epoch.map_or(own, |epoch| own.min(epoch))
    }
}

/// Reads exactly `left` bytes: a file that shrank since it was measured would otherwise leave the archive
/// short of what its header promised.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the file shrank while being archived ({} bytes missing)",
                    self.left
                ),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn lstat(path: &Path) -> Result<Metadata> {
    std::fs::symlink_metadata(path).map_err(Error::io(format!("stat {}", path.display())))
}

fn open_nofollow(path: &Path) -> Result<File> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io(format!("open {}", path.display()))(e.into()))?;
    Ok(File::from(fd))
}

fn is_opaque(xattrs: &[(String, Vec<u8>)]) -> bool {
    xattrs.iter().any(|(k, v)| k == OPAQUE_XATTR && v == b"y")
}

/// The extended attributes of `path` itself (not a symlink's target), sorted by name.
fn xattrs(path: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let err = |what: &str, e: Errno| Error::io(format!("{what} of {}", path.display()))(e.into());
    let names = match read_sized(
        || rustix::fs::llistxattr_query(path),
        |buf| rustix::fs::llistxattr(path, buf),
    ) {
        Ok(names) => names,
        // A filesystem without xattrs has none to archive.
        Err(Errno::NOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(err("list xattrs", e)),
    };
    let mut out = Vec::new();
    for raw in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = std::str::from_utf8(raw).map_err(|_| {
            Error::invalid(
                format!("file {}", path.display()),
                format!("xattr name {:?} is not UTF-8", String::from_utf8_lossy(raw)),
            )
        })?;
        match read_sized(
            || rustix::fs::lgetxattr_query(path, name),
            |buf| rustix::fs::lgetxattr(path, name, buf),
        ) {
            Ok(value) => out.push((name.to_owned(), value)),
            // Removed between the listing and the read.
            Err(Errno::NODATA) => {}
            Err(e) => return Err(err(&format!("read xattr {name}"), e)),
        }
    }
    out.sort();
    Ok(out)
}

/// Asks a value's size, then reads it (listxattr, getxattr), again if it grew in between.
fn read_sized(
    query: impl Fn() -> rustix::io::Result<usize>,
    fill: impl Fn(&mut [u8]) -> rustix::io::Result<usize>,
) -> rustix::io::Result<Vec<u8>> {
    loop {
        let mut buf = vec![0u8; query()?];
        if buf.is_empty() {
            return Ok(buf);
        }
        match fill(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}
