//! Helpers for the image-building tests: stores, snapshot trees with exact metadata, a comparable listing of
//! a tree, and an OCI layout written from the store for real clients (skopeo, umoci) to read.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_cache::{Digest, SnapshotId, Store};
use kiln_exporter::image::{BaseImage, BuiltImage, BuiltIndex};
use rustix::fs::{AtFlags, FileType, Mode, Timespec, Timestamps, XattrFlags};

pub struct Env {
    pub dir: tempfile::TempDir,
    pub store: Store,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("kiln-exporter-test")
            .tempdir()
            .expect("tempdir");
        let store = Store::open(&dir.path().join("store")).expect("open store");
        Env { dir, store }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn snapshot(&self, parent: Option<&SnapshotId>, fill: impl FnOnce(&Path)) -> SnapshotId {
        snapshot(&self.store, parent, fill)
    }

    /// Blob files in the store.
    pub fn blob_count(&self) -> usize {
        std::fs::read_dir(self.store.root().join("blobs/sha256"))
            .expect("list blobs")
            .count()
    }
}

/// The busybox test image, imported into the store as a pulled base would be.
pub fn busybox_base(env: &Env) -> BaseImage {
    let layout =
        kiln_testutil::busybox_oci_layout(&env.path("base-layout"), "amd64").expect("busybox layout");
    for (digest, bytes) in layout.blobs().expect("blobs") {
        let stored = env.store.put_bytes(&bytes).expect("put");
        assert_eq!(stored.to_string(), digest);
    }
    let manifest: Digest = layout.manifest_digest.parse().expect("digest");
    BaseImage::from_store(&env.store, &manifest).expect("base image")
}

/// Commits a snapshot whose upperdir `fill` writes.
pub fn snapshot(store: &Store, parent: Option<&SnapshotId>, fill: impl FnOnce(&Path)) -> SnapshotId {
    let p = store.prepare_snapshot().expect("prepare");
    fill(&p.upper);
    store.commit_snapshot(p, parent).expect("commit")
}

/// Writes a file with `mode` and `mtime`.
pub fn file(root: &Path, name: &str, data: &[u8], mode: u32, mtime: i64) -> PathBuf {
    let path = root.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("mkdir parents");
    }
    std::fs::write(&path, data).expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    set_mtime(&path, mtime);
    path
}

pub fn dir(root: &Path, name: &str, mode: u32, mtime: i64) -> PathBuf {
    let path = root.join(name);
    std::fs::create_dir_all(&path).expect("mkdir");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    set_mtime(&path, mtime);
    path
}

pub fn symlink(root: &Path, name: &str, target: &str, mtime: i64) -> PathBuf {
    let path = root.join(name);
    std::os::unix::fs::symlink(target, &path).expect("symlink");
    set_mtime(&path, mtime);
    path
}

/// An overlay whiteout: a character device 0/0.
pub fn whiteout(root: &Path, name: &str, mtime: i64) -> PathBuf {
    mknod(root, name, FileType::CharacterDevice, 0, 0, mtime)
}

pub fn mknod(root: &Path, name: &str, kind: FileType, major: u32, minor: u32, mtime: i64) -> PathBuf {
    let path = root.join(name);
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &path,
        kind,
        Mode::from_raw_mode(0o640),
        rustix::fs::makedev(major, minor),
    )
    .unwrap_or_else(|e| panic!("mknod {}: {e} (the tests run as root)", path.display()));
    set_mtime(&path, mtime);
    path
}

pub fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path, name, value, XattrFlags::empty()).unwrap_or_else(|e| {
        panic!(
            "setxattr {name} on {}: {e} (the tests run as root)",
            path.display()
        )
    });
}

pub fn set_mtime(path: &Path, secs: i64) {
    let t = Timespec {
        tv_sec: secs,
        tv_nsec: 123_456_789,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &Timestamps {
            last_access: t,
            last_modification: t,
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .expect("utimensat");
}

/// Everything about one file that a layer carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub kind: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub content: Vec<u8>,
    pub rdev: u64,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// The first path (in sorted order) of the same inode, for files with several names.
    pub same_as: Option<String>,
}

/// A listing of `root` (the root itself left out) by relative path; mtimes in whole seconds.
pub fn listing(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), String> = BTreeMap::new();
    list_into(root, root, &mut out, &mut inodes);
    out
}

fn list_into(
    root: &Path,
    dir: &Path,
    out: &mut BTreeMap<String, Node>,
    inodes: &mut BTreeMap<(u64, u64), String>,
) {
    use std::os::unix::fs::FileTypeExt;
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for name in names {
        let path = dir.join(&name);
        let rel = path
            .strip_prefix(root)
            .expect("under root")
            .to_string_lossy()
            .into_owned();
        let meta = std::fs::symlink_metadata(&path).expect("lstat");
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_file() {
            "file"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_char_device() {
            "char"
        } else if ft.is_block_device() {
            "block"
        } else if ft.is_fifo() {
            "fifo"
        } else {
            "other"
        };
        let content = if ft.is_file() {
            std::fs::read(&path).expect("read")
        } else if ft.is_symlink() {
            std::fs::read_link(&path)
                .expect("readlink")
                .as_os_str()
                .as_bytes()
                .to_vec()
        } else {
            Vec::new()
        };
        let same_as = if !ft.is_dir() && meta.nlink() > 1 {
            let first = inodes
                .entry((meta.dev(), meta.ino()))
                .or_insert_with(|| rel.clone());
            (*first != rel).then(|| first.clone())
        } else {
            None
        };
        out.insert(
            rel,
            Node {
                kind: kind.into(),
                mode: if ft.is_symlink() { 0 } else { meta.mode() & 0o7777 },
                uid: meta.uid(),
                gid: meta.gid(),
                mtime: meta.mtime(),
                content,
                rdev: meta.rdev(),
                xattrs: xattrs(&path),
                same_as,
            },
        );
        if ft.is_dir() {
            list_into(root, &path, out, inodes);
        }
    }
}

pub fn xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut names = vec![0u8; 4096];
    let n = rustix::fs::llistxattr(path, &mut names[..]).expect("listxattr");
    let mut out = BTreeMap::new();
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8(name.to_vec()).expect("utf-8 xattr name");
        let mut value = vec![0u8; 4096];
        let m = rustix::fs::lgetxattr(path, name.as_str(), &mut value[..]).expect("getxattr");
        value.truncate(m);
        out.insert(name, value);
    }
    out
}

/// The entries of an uncompressed tar: (path, type, mtime, link target, PAX keys).
pub fn tar_entries(tar: &[u8]) -> Vec<(String, tar::EntryType, u64, String, Vec<String>)> {
    let mut archive = tar::Archive::new(tar);
    let mut out = Vec::new();
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let link = entry
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned())
            .unwrap_or_default();
        let mut pax = Vec::new();
        if let Some(exts) = entry.pax_extensions().expect("pax") {
            for ext in exts {
                pax.push(ext.expect("pax record").key().expect("utf-8 key").to_owned());
            }
        }
        let h = entry.header();
        out.push((path, h.entry_type(), h.mtime().expect("mtime"), link, pax));
    }
    out
}

/// Decompresses a stored layer blob.
pub fn layer_bytes(store: &Store, digest: &Digest) -> Vec<u8> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut store.open_layer_tar(digest).expect("open layer"), &mut out)
        .expect("decompress");
    out
}

/// Copies a stored blob into an OCI layout's blob directory.
fn copy_blob(store: &Store, layout: &Path, digest: &Digest) {
    let to = layout.join("blobs/sha256").join(digest.hex());
    std::fs::copy(store.blob_path(digest), to).expect("copy blob");
}

fn write_layout(layout: &Path, top: serde_json::Value) {
    std::fs::create_dir_all(layout.join("blobs/sha256")).expect("mkdir layout");
    std::fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("oci-layout");
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [top]});
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).expect("json"),
    )
    .expect("index.json");
}

fn copy_image(store: &Store, layout: &Path, image: &BuiltImage) {
    copy_blob(store, layout, &image.manifest_digest);
    copy_blob(store, layout, &image.config_digest);
    for layer in &image.layers {
        copy_blob(store, layout, &layer.digest);
    }
}

/// An OCI layout at `layout` holding `image` tagged `tag`.
pub fn image_layout(store: &Store, layout: &Path, image: &BuiltImage, tag: &str) {
    write_layout(
        layout,
        serde_json::json!({"mediaType": image.media_type, "digest": image.manifest_digest.to_string(),
            "size": image.manifest.len(), "annotations": {"org.opencontainers.image.ref.name": tag}}),
    );
    copy_image(store, layout, image);
}

/// An OCI layout at `layout` holding the index and its images, tagged `tag`.
pub fn index_layout(store: &Store, layout: &Path, index: &BuiltIndex, images: &[BuiltImage], tag: &str) {
    write_layout(
        layout,
        serde_json::json!({"mediaType": index.media_type, "digest": index.digest.to_string(),
            "size": index.index.len(), "annotations": {"org.opencontainers.image.ref.name": tag}}),
    );
    copy_blob(store, layout, &index.digest);
    for image in images {
        copy_image(store, layout, image);
    }
}

/// A containers-image `dir:` transport directory holding `image`: the one layout skopeo reads docker
/// schema 2 manifests from (its `oci:` transport looks for OCI manifests only).
pub fn dir_transport(store: &Store, out: &Path, image: &BuiltImage) {
    std::fs::create_dir_all(out).expect("mkdir");
    std::fs::write(out.join("version"), "Directory Transport Version: 1.1\n").expect("version");
    std::fs::write(out.join("manifest.json"), &image.manifest).expect("manifest");
    for digest in std::iter::once(&image.config_digest).chain(image.layers.iter().map(|l| &l.digest)) {
        std::fs::copy(store.blob_path(digest), out.join(digest.hex())).expect("copy blob");
    }
}

/// Runs a client tool and returns its stdout; panics with its stderr when it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program} (installed by .ci/run): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Whether `bytes` are JSON with every object's keys in sorted order and no whitespace between tokens.
pub fn is_canonical_json(bytes: &[u8]) -> bool {
    let value: serde_json::Value = serde_json::from_slice(bytes).expect("json");
    kiln_exporter::canonical::to_vec(&value) == bytes && keys_sorted(bytes)
}

/// Checks key order on the bytes as they stream by, independently of how serde_json's Map orders keys.
fn keys_sorted(bytes: &[u8]) -> bool {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let ordered: OrderedCheck = serde::Deserialize::deserialize(&mut de).expect("json");
    ordered.0
}

/// Deserializes any JSON, recording whether every object's keys came in ascending byte order.
struct OrderedCheck(bool);

impl<'de> serde::Deserialize<'de> for OrderedCheck {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = OrderedCheck;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<OrderedCheck, A::Error> {
                let mut ok = true;
                let mut last: Option<String> = None;
                while let Some(key) = map.next_key::<String>()? {
                    if last.as_ref().is_some_and(|l| l.as_bytes() >= key.as_bytes()) {
                        ok = false;
                    }
                    ok &= map.next_value::<OrderedCheck>()?.0;
                    last = Some(key);
                }
                Ok(OrderedCheck(ok))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<OrderedCheck, A::Error> {
                let mut ok = true;
                while let Some(item) = seq.next_element::<OrderedCheck>()? {
                    ok &= item.0;
                }
                Ok(OrderedCheck(ok))
            }
            fn visit_bool<E>(self, _: bool) -> Result<OrderedCheck, E> {
                Ok(OrderedCheck(true))
            }
            fn visit_i64<E>(self, _: i64) -> Result<OrderedCheck, E> {
                Ok(OrderedCheck(true))
            }
            fn visit_u64<E>(self, _: u64) -> Result<OrderedCheck, E> {
                Ok(OrderedCheck(true))
            }
            fn visit_f64<E>(self, _: f64) -> Result<OrderedCheck, E> {
                Ok(OrderedCheck(true))
            }
            fn visit_str<E>(self, _: &str) -> Result<OrderedCheck, E> {
                Ok(OrderedCheck(true))
            }
            fn visit_unit<E>(self) -> Result<OrderedCheck, E> {
                Ok(OrderedCheck(true))
            }
        }
        d.deserialize_any(V)
    }
}
