//! Layer tars and layer blobs of snapshots: determinism, overlay markers, metadata, round trips through the
//! store's unpacker, and reuse.

mod build_support;

use std::collections::BTreeMap;
use std::path::Path;

use build_support::{
    Env, Node, dir, file, layer_bytes, listing, mknod, set_xattr, symlink, tar_entries, whiteout,
};
use kiln_cache::{Digest, SnapshotId, Store};
use kiln_exporter::export::{Compression, empty_tar_diff_id, export_layer, layer_media_type};
use kiln_exporter::layer::{LayerOptions, layer_tar};
use rustix::fs::FileType;

const EPOCH: u64 = 1_700_000_000;
const OLD: i64 = 1_000_000_000;
const LONG_DIR: &str = "long/dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd";

/// The tree every determinism test uses. `newer` is the mtime of the files "the step wrote" (after EPOCH);
/// `reverse` creates everything in the opposite order.
fn tree(root: &Path, newer: i64, reverse: bool) {
    let long_file = format!("{LONG_DIR}/{}", "f".repeat(200));
    let mut files: Vec<(String, &[u8], u32, i64)> = vec![
        ("a/b/file".into(), b"hello", 0o644, newer),
        ("a/exec".into(), b"#!/bin/sh\n", 0o4755, newer + 1),
        ("old".into(), b"from before the epoch", 0o600, OLD),
        ("opaque/new".into(), b"only this", 0o644, newer),
        ("bigid".into(), b"owned by a large uid", 0o644, newer),
        (long_file, b"deep", 0o644, newer),
        ("z/empty".into(), b"", 0o644, newer),
    ];
    if reverse {
        files.reverse();
    }
    for (name, data, mode, mtime) in &files {
        file(root, name, data, *mode, *mtime);
    }
    std::os::unix::fs::chown(root.join("a/exec"), Some(1000), Some(1000)).expect("chown");
    std::os::unix::fs::chown(root.join("bigid"), Some(3_000_000), Some(3_000_001)).expect("chown");
    std::fs::hard_link(root.join("a/b/file"), root.join("a/link")).expect("hardlink");
    symlink(root, "sym", "a/b/file", newer);
    symlink(root, "longsym", &"t".repeat(300), newer);
    mknod(root, "pipe", FileType::Fifo, 0, 0, newer);
    mknod(root, "null", FileType::CharacterDevice, 1, 3, newer);
    mknod(root, "blk", FileType::BlockDevice, 7, 0, OLD);
    whiteout(root, "gone", newer);
    whiteout(root, "a/gone-too", newer);
    set_xattr(&root.join("a/b/file"), "user.kiln", b"v1");
    set_xattr(
        &root.join("a"),
        "trusted.overlay.origin",
        b"\x00overlay bookkeeping",
    );
    set_xattr(&root.join("opaque"), "trusted.overlay.opaque", b"y");
    // A socket is not content: it must not show up.
    std::os::unix::net::UnixListener::bind(root.join("socket")).expect("bind socket");
    // Directories last, deepest first: creating their children moved their mtimes.
    let mut dirs: Vec<(&str, u32)> = vec![
        ("a", 0o755),
        ("a/b", 0o700),
        ("opaque", 0o755),
        ("z", 0o1777),
        (LONG_DIR, 0o755),
        ("long", 0o755),
    ];
    dirs.sort_by_key(|(d, _)| std::cmp::Reverse(d.len()));
    for (d, mode) in dirs {
        dir(root, d, mode, newer);
    }
}

fn tar_of(dir: &Path, epoch: Option<u64>) -> Vec<u8> {
    let mut out = Vec::new();
    let summary = layer_tar(
        dir,
        &mut out,
        &LayerOptions {
            source_date_epoch: epoch,
        },
    )
    .expect("layer tar");
    assert!(summary.entries > 0);
    out
}

#[test]
fn the_same_tree_made_twice_gives_the_same_bytes_with_source_date_epoch() {
    let (one, two) = (Env::new(), Env::new());
    let s1 = one.snapshot(None, |root| tree(root, 2_000_000_000, false));
    let s2 = two.snapshot(None, |root| tree(root, 2_100_000_000, true));
    let (d1, d2) = (one.store.snapshot_path(&s1), two.store.snapshot_path(&s2));

    assert_eq!(tar_of(&d1, Some(EPOCH)), tar_of(&d2, Some(EPOCH)));
    // The files' own times differ, so without the clamp so do the tars.
    assert_ne!(tar_of(&d1, None), tar_of(&d2, None));
    // And writing the same tree twice gives the same bytes.
    assert_eq!(tar_of(&d1, None), tar_of(&d1, None));

    for compression in [Compression::Gzip, Compression::Zstd, Compression::None] {
        let l1 = export_layer(&one.store, &s1, compression, None, Some(EPOCH)).expect("export");
        let l2 = export_layer(&two.store, &s2, compression, None, Some(EPOCH)).expect("export");
        assert_eq!(l1, l2, "{compression:?}");
        assert_eq!(
            std::fs::read(one.store.blob_path(&l1.digest)).expect("read"),
            std::fs::read(two.store.blob_path(&l2.digest)).expect("read")
        );
        assert!(!l1.empty);
    }
}

#[test]
fn gzip_headers_carry_no_name_or_time() {
    let env = Env::new();
    let s = env.snapshot(None, |root| {
        file(root, "f", b"x", 0o644, 2_000_000_000);
    });
    let layer = export_layer(&env.store, &s, Compression::Gzip, Some(9), None).expect("export");
    let blob = std::fs::read(env.store.blob_path(&layer.digest)).expect("read");
    // ID1 ID2 CM FLG MTIME(4) XFL OS: no FNAME/FCOMMENT flags, mtime 0, OS "unknown".
    assert_eq!(&blob[..4], &[0x1f, 0x8b, 8, 0]);
    assert_eq!(&blob[4..8], &[0, 0, 0, 0]);
    assert_eq!(blob[9], 255);
}

#[test]
fn entries_are_sorted_with_ustar_headers_and_pax_only_where_needed() {
    let env = Env::new();
    let s = env.snapshot(None, |root| tree(root, 2_000_000_000, false));
    let tar = tar_of(&env.store.snapshot_path(&s), Some(EPOCH));
    let entries = tar_entries(&tar);
    let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
    let long_file = format!("{LONG_DIR}/{}", "f".repeat(200));
    let long_dir = format!("{LONG_DIR}/");
    assert_eq!(
        names,
        [
            "a/",
            "a/b/",
            "a/b/file",
            "a/exec",
            "a/.wh.gone-too",
            "a/link",
            "bigid",
            "blk",
            ".wh.gone",
            "long/",
            &long_dir,
            &long_file,
            "longsym",
            "null",
            "old",
            "opaque/",
            "opaque/.wh..wh..opq",
            "opaque/new",
            "pipe",
            "sym",
            "z/",
            "z/empty",
        ]
    );
    let by_name: BTreeMap<&str, _> = entries.iter().map(|e| (e.0.as_str(), e)).collect();
    let kind = |n: &str| by_name[n].1;
    let pax = |n: &str| by_name[n].4.clone();
    assert_eq!(kind("a/link"), tar::EntryType::Link);
    assert_eq!(by_name["a/link"].3, "a/b/file");
    assert_eq!(kind("sym"), tar::EntryType::Symlink);
    assert_eq!(kind("pipe"), tar::EntryType::Fifo);
    assert_eq!(kind("null"), tar::EntryType::Char);
    assert_eq!(kind("blk"), tar::EntryType::Block);
    assert_eq!(kind(".wh.gone"), tar::EntryType::Regular);
    assert_eq!(pax(&long_file), ["path"]);
    assert_eq!(pax("longsym"), ["linkpath"]);
    assert_eq!(by_name["longsym"].3, "t".repeat(300));
    assert_eq!(pax("bigid"), ["gid", "uid"]);
    // Only user xattrs: overlay's own are either markers or dropped.
    assert_eq!(pax("a/b/file"), ["SCHILY.xattr.user.kiln"]);
    assert!(pax("a/").is_empty() && pax("opaque/").is_empty() && pax("old").is_empty());

    // Clamped, not set: newer mtimes become the epoch, older ones stay.
    for (name, _, mtime, _, _) in &entries {
        let want = if name == "old" || name == "blk" {
            OLD as u64
        } else {
            EPOCH
        };
        assert_eq!(*mtime, want, "{name}");
    }
    let unclamped = tar_entries(&tar_of(&env.store.snapshot_path(&s), None));
    assert_eq!(
        unclamped.iter().find(|e| e.0 == "a/exec").expect("exec").2,
        2_000_000_001
    );

    // uname/gname stay empty, atime/ctime are never written.
    let mut archive = tar::Archive::new(&tar[..]);
    for entry in archive.entries().expect("entries") {
        let entry = entry.expect("entry");
        let h = entry.header();
        assert!(h.as_ustar().is_some(), "not a ustar header");
        assert_eq!(h.username_bytes(), Some(&b""[..]));
        assert_eq!(h.groupname_bytes(), Some(&b""[..]));
    }
}

/// The original's listing as an unpack must reproduce it: whiteouts compared by what they are, overlay
/// bookkeeping other than opacity dropped.
fn expected_after_unpack(mut nodes: BTreeMap<String, Node>) -> BTreeMap<String, Node> {
    nodes.remove("socket");
    for node in nodes.values_mut() {
        node.xattrs
            .retain(|k, _| !k.starts_with("trusted.overlay.") || k == "trusted.overlay.opaque");
    }
    nodes
}

fn normalize_whiteouts(nodes: &mut BTreeMap<String, Node>) {
    for node in nodes.values_mut() {
        if node.kind == "char" && node.rdev == 0 {
            node.mode = 0;
            node.mtime = 0;
        }
    }
}

/// Unpacks a stored blob in a fresh store (this one would hand back the snapshot it came from).
fn unpack_elsewhere(from: &Store, digest: &Digest, media_type: &str) -> (Env, SnapshotId) {
    let other = Env::new();
    let bytes = std::fs::read(from.blob_path(digest)).expect("read blob");
    let copy = other.store.put_bytes(&bytes).expect("put");
    let id = other.store.unpack_layer(&copy, media_type).expect("unpack");
    (other, id)
}

#[test]
fn a_layer_unpacks_to_the_same_tree() {
    let env = Env::new();
    let s = env.snapshot(None, |root| tree(root, 2_000_000_000, false));
    for compression in [Compression::Gzip, Compression::Zstd] {
        let layer = export_layer(&env.store, &s, compression, None, None).expect("export");
        let (other, unpacked) =
            unpack_elsewhere(&env.store, &layer.digest, layer_media_type(compression, true));
        let mut want = expected_after_unpack(listing(&env.store.snapshot_path(&s)));
        let mut got = listing(&other.store.snapshot_path(&unpacked));
        normalize_whiteouts(&mut want);
        normalize_whiteouts(&mut got);
        assert_eq!(got, want, "{compression:?}");
        assert_eq!(got["a/link"].same_as.as_deref(), Some("a/b/file"));
        assert_eq!(got["bigid"].uid, 3_000_000);
        assert_eq!(
            got["opaque"].xattrs.get("trusted.overlay.opaque"),
            Some(&b"y".to_vec())
        );
        // And the store agrees on the diff_id it computed while unpacking.
        let record = other.store.snapshot(&unpacked).expect("db").expect("record");
        assert_eq!(record.diff_id, Some(layer.diff_id));
    }
}

#[test]
fn an_opaque_root_is_a_top_level_marker() {
    let env = Env::new();
    let s = env.snapshot(None, |root| set_xattr(root, "trusted.overlay.opaque", b"y"));
    let tar = tar_of(&env.store.snapshot_path(&s), None);
    let names: Vec<String> = tar_entries(&tar).into_iter().map(|e| e.0).collect();
    assert_eq!(names, [".wh..wh..opq"]);
}

#[test]
fn an_unchanged_snapshot_is_an_empty_layer() {
    let env = Env::new();
    let s = env.snapshot(None, |_| {});
    let layer = export_layer(&env.store, &s, Compression::Gzip, None, None).expect("export");
    assert!(layer.empty);
    assert_eq!(layer.diff_id, empty_tar_diff_id());
    assert_eq!(layer_bytes(&env.store, &layer.digest), vec![0u8; 1024]);
    // Found again through the recorded diff_id, still empty.
    assert!(
        export_layer(&env.store, &s, Compression::Gzip, None, None)
            .expect("export")
            .empty
    );
}

#[test]
fn names_and_xattrs_a_layer_cannot_hold_are_refused() {
    let env = Env::new();
    let s = env.snapshot(None, |root| {
        file(root, "dir/.wh.sneaky", b"", 0o644, OLD);
    });
    let err = export_layer(&env.store, &s, Compression::Gzip, None, None).expect_err("a .wh. name");
    assert!(err.to_string().contains(".wh.sneaky"), "{err}");

    let s = env.snapshot(None, |root| {
        let d = dir(root, "moved", 0o755, OLD);
        set_xattr(&d, "trusted.overlay.redirect", b"/elsewhere");
    });
    let err = export_layer(&env.store, &s, Compression::Gzip, None, None).expect_err("a redirect");
    assert!(err.to_string().contains("trusted.overlay.redirect"), "{err}");
    // Failed exports leave no temp files behind.
    assert!(
        std::fs::read_dir(env.store.root().join("tmp"))
            .expect("list")
            .next()
            .is_none()
    );
}

#[test]
fn a_layer_is_never_compressed_twice() {
    let env = Env::new();
    let s = env.snapshot(None, |root| {
        file(root, "data", &vec![42u8; 100_000], 0o644, 2_000_000_000);
    });
    let first = export_layer(&env.store, &s, Compression::Gzip, None, None).expect("export");
    let blobs = env.blob_count();
    // Same settings: the recorded blob, nothing written (not even a temp file: the files are not read).
    std::fs::remove_file(env.store.snapshot_path(&s).join("data")).expect("rm");
    let again = export_layer(&env.store, &s, Compression::Gzip, Some(6), None).expect("reuse");
    assert_eq!(again, first, "level 6 is gzip's default");
    assert_eq!(env.blob_count(), blobs);
    file(
        &env.store.snapshot_path(&s),
        "data",
        &vec![42u8; 100_000],
        0o644,
        2_000_000_000,
    );

    // Other settings are other blobs, each made once.
    let zstd = export_layer(&env.store, &s, Compression::Zstd, Some(19), None).expect("zstd");
    assert_eq!(zstd.diff_id, first.diff_id);
    assert_ne!(zstd.digest, first.digest);
    assert_eq!(env.blob_count(), blobs + 1);
    assert_eq!(
        export_layer(&env.store, &s, Compression::Zstd, Some(19), None).expect("reuse"),
        zstd
    );
    assert_eq!(env.blob_count(), blobs + 1);
    let best = export_layer(&env.store, &s, Compression::Gzip, Some(9), None).expect("gzip 9");
    assert_ne!(best.digest, first.digest);
    assert_eq!(env.blob_count(), blobs + 2);

    // An epoch changes the tar, so the diff_id; the snapshot remembers both.
    let clamped = export_layer(&env.store, &s, Compression::Gzip, None, Some(EPOCH)).expect("clamped");
    assert_ne!(clamped.diff_id, first.diff_id);
    assert_eq!(
        env.store.snapshot_diff_id(&s, None).expect("db"),
        Some(first.diff_id)
    );
    assert_eq!(
        env.store.snapshot_diff_id(&s, Some(EPOCH)).expect("db"),
        Some(clamped.diff_id)
    );
    let blobs = env.blob_count();
    export_layer(&env.store, &s, Compression::Gzip, None, Some(EPOCH)).expect("reuse");
    export_layer(&env.store, &s, Compression::Gzip, None, None).expect("reuse");
    assert_eq!(env.blob_count(), blobs);

    let plain = export_layer(&env.store, &s, Compression::None, Some(3), None).expect("uncompressed");
    assert_eq!(plain.digest, plain.diff_id);
    assert_eq!(plain.diff_id, first.diff_id);

    let meta = env.store.blob_meta(&best.digest).expect("db").expect("meta");
    assert_eq!(
        (meta.diff_id, meta.compression, meta.compression_level),
        (Some(first.diff_id), Some(Compression::Gzip), Some(9))
    );
    assert!(export_layer(&env.store, &s, Compression::Gzip, Some(10), None).is_err());
    assert!(export_layer(&env.store, &s, Compression::Zstd, Some(23), None).is_err());
    let report = env.store.check().expect("check");
    assert!(report.is_ok() && report.warnings.is_empty(), "{report:?}");
}

#[test]
fn a_real_overlay_upperdir_becomes_whiteouts_and_opaque_markers() {
    let env = Env::new();
    let lower = env.snapshot(None, |root| {
        file(root, "f1", b"1", 0o644, OLD);
        file(root, "f2", b"2", 0o644, OLD);
        file(root, "d/old", b"old", 0o644, OLD);
        file(root, "keep", b"k", 0o644, OLD);
    });
    let p = env.store.prepare_snapshot().expect("prepare");
    let merged = env.path("merged");
    std::fs::create_dir(&merged).expect("mkdir");
    let options = format!(
        "lowerdir={},upperdir={},workdir={},redirect_dir=off,metacopy=off,index=off",
        env.store.snapshot_path(&lower).display(),
        p.upper.display(),
        p.work.display()
    );
    // A private mount namespace: the overlay disappears with the shell, whatever happens.
    let script = format!(
        "mount -t overlay overlay -o {options} {m} && rm {m}/f1 {m}/f2 && rm -r {m}/d && mkdir {m}/d && echo new > {m}/d/new",
        m = merged.display()
    );
    build_support::run("unshare", &["-m", "sh", "-c", &script]);
    let top = env.store.commit_snapshot(p, Some(&lower)).expect("commit");
    // overlayfs links every whiteout to one shared inode: they must still be whiteouts, not hardlinks.
    let upper = env.store.snapshot_path(&top);
    use std::os::unix::fs::MetadataExt;
    assert!(std::fs::symlink_metadata(upper.join("f1")).expect("stat").nlink() >= 2);

    let tar = tar_of(&upper, Some(EPOCH));
    let names: Vec<(String, tar::EntryType)> = tar_entries(&tar).into_iter().map(|e| (e.0, e.1)).collect();
    let reg = tar::EntryType::Regular;
    assert_eq!(
        names,
        [
            ("d/".into(), tar::EntryType::Directory),
            ("d/.wh..wh..opq".into(), reg),
            ("d/new".into(), reg),
            (".wh.f1".into(), reg),
            (".wh.f2".into(), reg),
        ]
    );
}
