//! Helpers shared by the store's integration tests.
#![allow(dead_code)]

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use kiln_cache::{Digest, ImageRecord, Store};

/// A temp directory holding a store (`store/`) and, beside it, a sentinel directory that no operation on the
/// store may touch.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub store: Store,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("kiln-cache-test")
            .tempdir()
            .expect("tempdir");
        let sentinel = dir.path().join("sentinel");
        std::fs::create_dir(&sentinel).expect("mkdir sentinel");
        std::fs::write(sentinel.join("secret"), b"original").expect("write sentinel");
        let store = Store::open(&dir.path().join("store")).expect("open store");
        Env { dir, store }
    }

    pub fn base(&self) -> &Path {
        self.dir.path()
    }

    pub fn sentinel(&self) -> PathBuf {
        self.dir.path().join("sentinel")
    }

    /// Fails if anything appeared next to the store or the sentinel changed in any way.
    pub fn assert_outside_untouched(&self) {
        let mut names: Vec<String> = std::fs::read_dir(self.base())
            .expect("list base")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["sentinel", "store"],
            "something was created next to the store"
        );
        let mut inside: Vec<String> = std::fs::read_dir(self.sentinel())
            .expect("list sentinel")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        inside.sort();
        assert_eq!(inside, ["secret"], "something was created in the sentinel dir");
        let secret = self.sentinel().join("secret");
        assert_eq!(std::fs::read(&secret).expect("read secret"), b"original");
        let meta = std::fs::symlink_metadata(&secret).expect("stat secret");
        assert_eq!(meta.nlink(), 1, "the sentinel file gained a hardlink");
        assert_eq!(meta.mode() & 0o7777, 0o644, "the sentinel file's mode changed");
    }

    /// Nothing of a failed unpack is left in ROOT/tmp or ROOT/snapshots.
    pub fn assert_no_leftovers(&self) {
        for sub in ["tmp", "snapshots"] {
            let dir = self.store.root().join(sub);
            let left: Vec<_> = std::fs::read_dir(&dir).expect("list").collect();
            assert!(left.is_empty(), "{sub}/ is not empty: {left:?}");
        }
    }
}

/// One tar entry, written with raw header bytes so hostile names (`..`, absolute) survive.
pub struct E<'a> {
    pub name: &'a [u8],
    pub kind: tar::EntryType,
    pub link: &'a [u8],
    pub data: &'a [u8],
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub dev: (u32, u32),
    pub pax: Vec<(&'a str, &'a [u8])>,
}

impl<'a> E<'a> {
    pub fn file(name: &'a str, data: &'a [u8]) -> E<'a> {
        E {
            data,
            ..E::new(name, tar::EntryType::Regular)
        }
    }
    pub fn dir(name: &'a str) -> E<'a> {
        E {
            mode: 0o755,
            ..E::new(name, tar::EntryType::Directory)
        }
    }
    pub fn symlink(name: &'a str, target: &'a str) -> E<'a> {
        E {
            link: target.as_bytes(),
            mode: 0o777,
            ..E::new(name, tar::EntryType::Symlink)
        }
    }
    pub fn hardlink(name: &'a str, target: &'a str) -> E<'a> {
        E {
            link: target.as_bytes(),
            ..E::new(name, tar::EntryType::Link)
        }
    }
    pub fn new(name: &'a str, kind: tar::EntryType) -> E<'a> {
        E {
            name: name.as_bytes(),
            kind,
            link: b"",
            data: b"",
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 1_600_000_000,
            dev: (0, 0),
            pax: Vec::new(),
        }
    }
}

pub fn tar(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        if !e.pax.is_empty() {
            b.append_pax_extensions(e.pax.iter().map(|(k, v)| (*k, *v)))
                .expect("pax");
        }
        let mut h = tar::Header::new_gnu();
        assert!(
            e.name.len() < 100 && e.link.len() < 100,
            "test names must fit the header"
        );
        h.as_old_mut().name[..e.name.len()].copy_from_slice(e.name);
        h.as_old_mut().linkname[..e.link.len()].copy_from_slice(e.link);
        h.set_entry_type(e.kind);
        h.set_size(e.data.len() as u64);
        h.set_mode(e.mode);
        h.set_uid(e.uid);
        h.set_gid(e.gid);
        h.set_mtime(e.mtime);
        h.set_device_major(e.dev.0).expect("major");
        h.set_device_minor(e.dev.1).expect("minor");
        h.set_cksum();
        b.append(&h, e.data).expect("append");
    }
    b.into_inner().expect("finish tar")
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).expect("gzip");
    enc.finish().expect("gzip")
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).expect("zstd")
}

pub const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const TAR_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const ZSTD_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// A stored single-layer image.
pub struct Image {
    pub manifest: Digest,
    pub config: Digest,
    pub layer: Digest,
    pub diff_id: Digest,
}

/// Stores a gzip layer holding `files`, a config and a manifest (no tag).
pub fn store_image(store: &Store, files: &[(&str, &[u8])]) -> Image {
    let entries: Vec<E> = files.iter().map(|(n, d)| E::file(n, d)).collect();
    let raw = tar(&entries);
    let diff_id = Digest::of(&raw);
    let layer = store.put_bytes(&gzip(&raw)).expect("put layer");
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]},
    });
    let config_bytes = serde_json::to_vec(&config).expect("json");
    let config = store.put_bytes(&config_bytes).expect("put config");
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": config_bytes.len()},
        "layers": [{"mediaType": GZIP_LAYER, "digest": layer.to_string(), "size": store.blob_size(&layer).expect("size")}],
    });
    let manifest = store
        .put_bytes(&serde_json::to_vec(&manifest).expect("json"))
        .expect("put manifest");
    Image {
        manifest,
        config,
        layer,
        diff_id,
    }
}

pub fn record(digest: Digest) -> ImageRecord {
    ImageRecord {
        digest,
        media_type: MANIFEST.to_owned(),
        platforms: Vec::new(),
        created: 1,
    }
}
