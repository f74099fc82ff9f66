//! The canonical byte encoding behind every context hash.
//!
//! These bytes are cache keys shared between machines and kiln versions, so they are written out field by
//! field (fixed-width little-endian integers, `u64` length prefixes before every variable-length field)
//! rather than through a serialization crate whose output could move. Any change here must change the
//! version tags below and the golden test in `solver/tests/context.rs`.
//!
//! ```text
//! node      := str("kiln.context.node.v1") u8(kind) u32(st_mode) u32(uid) u32(gid) u64(size)
//!              bytes(link target) u64(rdev) body
//! body      := bytes(blake3(content))                       regular file
//!            | bytes("")                                     symlink, device, fifo, socket
//!            | u64(n) { bytes(name) raw32(child node) }^n    directory, children sorted by name bytes
//! selection := str("kiln.context.selection.v1") u8(follow) u64(n) { str(exclude) }^n
//!              u64(m) { str(pattern) ( u8(0) | u8(1) u64(k) { bytes(path) raw32(node) }^k ) }^m
//! bytes(x)  := u64(len(x)) x
//! ```
//!
//! `size` is the file size for regular files and 0 otherwise (a directory's size depends on the
//! filesystem, a symlink's is its target's length, already encoded); `rdev` is 0 except for devices.

use kiln_fsutil::stat::{Kind, Meta};

const NODE_TAG: &str = "kiln.context.node.v1";
const SELECTION_TAG: &str = "kiln.context.selection.v1";

pub(super) struct Encoder(blake3::Hasher);

impl Encoder {
    fn new(tag: &str) -> Self {
        let mut enc = Encoder(blake3::Hasher::new());
        enc.bytes(tag.as_bytes());
        enc
    }

    pub(super) fn u8(&mut self, v: u8) {
        self.0.update(&[v]);
    }

    pub(super) fn u32(&mut self, v: u32) {
        self.0.update(&v.to_le_bytes());
    }

    pub(super) fn u64(&mut self, v: u64) {
        self.0.update(&v.to_le_bytes());
    }

    pub(super) fn bytes(&mut self, v: &[u8]) {
        self.u64(v.len() as u64);
        self.0.update(v);
    }

    pub(super) fn raw(&mut self, hash: &blake3::Hash) {
        self.0.update(hash.as_bytes());
    }

    pub(super) fn finish(&self) -> blake3::Hash {
        self.0.finalize()
    }
}

fn node_header(meta: &Meta, link: &[u8]) -> Encoder {
    let kind = meta.kind();
    let mut enc = Encoder::new(NODE_TAG);
    enc.u8(kind.tag());
    enc.u32(meta.mode);
    enc.u32(meta.uid);
    enc.u32(meta.gid);
    enc.u64(if kind == Kind::File { meta.size } else { 0 });
    enc.bytes(link);
    enc.u64(if matches!(kind, Kind::CharDevice | Kind::BlockDevice) {
        meta.rdev
    } else {
        0
    });
    enc
}

/// A non-directory node; `content` is the blake3 of a regular file's bytes.
pub(super) fn leaf(meta: &Meta, link: &[u8], content: Option<&blake3::Hash>) -> blake3::Hash {
    let mut enc = node_header(meta, link);
    match content {
        Some(hash) => enc.bytes(hash.as_bytes()),
        None => enc.bytes(b""),
    }
    enc.finish()
}

/// A directory node over its visible children, which must already be sorted by name.
pub(super) fn dir(meta: &Meta, children: &[(Vec<u8>, blake3::Hash)]) -> blake3::Hash {
    let mut enc = node_header(meta, b"");
    enc.u64(children.len() as u64);
    for (name, hash) in children {
        enc.bytes(name);
        enc.raw(hash);
    }
    enc.finish()
}

pub(super) fn selection(follow_symlinks: bool, exclude: &[String]) -> Encoder {
    let mut enc = Encoder::new(SELECTION_TAG);
    enc.u8(follow_symlinks as u8);
    enc.u64(exclude.len() as u64);
    for pattern in exclude {
        enc.bytes(pattern.as_bytes());
    }
    enc
}
