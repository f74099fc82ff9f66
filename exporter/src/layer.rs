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
//!
//! The walk (order, links, sockets, overlay semantics) is [`crate::tree`]'s; [`merged_tar`] writes the
//! merged view of a layer chain with the same headers, for the `type=tar` output.

use std::fs::Metadata;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

use crate::error::{Error, Result};
use crate::tree::{Kind, Node, Tree, content, content_xattrs};

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
/// Largest values the ustar numeric fields hold in octal (8-byte ids, 12-byte size and mtime).
const MAX_USTAR_ID: u64 = 0o7777777;
const MAX_USTAR_NUM: u64 = 0o77777777777;

/// Writes the layer tar of `diff_dir` to `w` (ending with the two zero blocks) and says what it held.
pub fn layer_tar(diff_dir: &Path, w: impl Write, opts: &LayerOptions) -> Result<TarSummary> {
    write_tree(
        &Tree::diff(diff_dir),
        w,
        opts.source_date_epoch,
        true,
        &format!("the layer tar of {}", diff_dir.display()),
    )
}

/// Writes the filesystem that the diff directories `layers` (bottom first) show merged, as a tar with the
/// same deterministic headers as a layer's, and no overlay markers: what is deleted or hidden is left out.
pub fn merged_tar(layers: &[PathBuf], w: impl Write, source_date_epoch: Option<u64>) -> Result<TarSummary> {
    write_tree(
        &Tree::merged(layers),
        w,
        source_date_epoch,
        false,
        "the filesystem tar",
    )
}

fn write_tree(tree: &Tree, w: impl Write, epoch: Option<u64>, layer: bool, what: &str) -> Result<TarSummary> {
    let mut tar = TarWriter {
        builder: tar::Builder::new(w),
        epoch,
        layer,
        entries: 0,
    };
    tree.walk(|node| tar.node(node))?;
    let mut builder = tar.builder;
    builder.finish().map_err(Error::io(format!("write {what}")))?;
    Ok(TarSummary { entries: tar.entries })
}

struct TarWriter<W: Write> {
    builder: tar::Builder<W>,
    epoch: Option<u64>,
    /// Writing one layer's diff, where `.wh.` names are markers; in a merged filesystem they are plain names.
    layer: bool,
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

    /// PAX records for the xattrs an image keeps.
    fn xattrs(&mut self, node: &Node) -> Result<()> {
        for (key, value) in content_xattrs(&node.xattrs, &node.path)? {
            self.pax.push((format!("SCHILY.xattr.{key}"), value.clone()));
        }
        Ok(())
    }
}

impl<W: Write> TarWriter<W> {
    /// Writes the entry of one name of the tree.
    fn node(&mut self, node: &Node) -> Result<()> {
        let (name, path, meta) = (node.name.as_slice(), node.path.as_path(), &node.meta);
        if name.is_empty() {
            // No entry for the root, only the marker of an opaque one: it hides every lower layer.
            if node.kind == (Kind::Dir { opaque: true }) {
                self.marker(b"", meta, path)?;
            }
            return Ok(());
        }
        let base = node.base();
        if self.layer && node.kind != Kind::Whiteout && base.starts_with(WHITEOUT_PREFIX) {
            return Err(Error::invalid(
                format!("file {}", path.display()),
                "a name starting with .wh. cannot be stored in a layer: OCI reads it as a whiteout",
            ));
        }
        let mtime = self.mtime(meta);
        let ft = meta.file_type();
        let mut e;
        match &node.kind {
            Kind::Whiteout => {
                let parent = &name[..name.len() - base.len()];
                let mut wh = parent.to_vec();
                wh.extend_from_slice(WHITEOUT_PREFIX);
                wh.extend_from_slice(base);
                e = Entry::new(EntryType::Regular, &wh);
                e.number("mtime", mtime, MAX_USTAR_NUM, Header::set_mtime);
                return self.append(e, io::empty(), path);
            }
            Kind::Link { first } => {
                e = Entry::new(EntryType::Link, name);
                e.owner_and_time(meta, mtime);
                e.link(first);
                return self.append(e, io::empty(), path);
            }
            Kind::Dir { opaque } => {
                let mut dir_name = name.to_vec();
                dir_name.push(b'/');
                e = Entry::new(EntryType::Directory, &dir_name);
                e.owner_and_time(meta, mtime);
                e.xattrs(node)?;
                self.append(e, io::empty(), path)?;
                if *opaque {
                    self.marker(name, meta, path)?;
                }
                return Ok(());
            }
            Kind::Other => {}
        }
        if ft.is_file() {
            e = Entry::new(EntryType::Regular, name);
            e.owner_and_time(meta, mtime);
            e.size(meta.len());
            e.xattrs(node)?;
            return self.append(e, content(node)?, path);
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
        e.owner_and_time(meta, mtime);
        e.xattrs(node)?;
        self.append(e, io::empty(), path)
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
