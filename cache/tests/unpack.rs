//! Unpacking layers: formats, diff_ids, and everything a layer can hold.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt};

use common::{E, Env, GZIP_LAYER, TAR_LAYER, ZSTD_LAYER, gzip, tar, zstd};
use kiln_cache::{Compression, Digest, Error, SnapshotId};
use tar::EntryType;

fn xattr(path: &std::path::Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    let n = rustix::fs::lgetxattr(path, name, &mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

fn sample_layer() -> Vec<u8> {
    tar(&[
        E::dir("etc/"),
        E::file("etc/hostname", b"kiln\n"),
        E::file("bin/sh", b"#!shell"),
    ])
}

#[test]
fn gzip_zstd_and_plain_layers_give_one_snapshot_with_the_tar_digest_as_diff_id() {
    let env = Env::new();
    let s = &env.store;
    let raw = sample_layer();
    let diff_id = Digest::of(&raw);

    let gz = s.put_bytes(&gzip(&raw)).expect("put");
    let id = s.unpack_layer(&gz, GZIP_LAYER).expect("unpack gzip");
    assert_eq!(id, SnapshotId::for_diff_id(&diff_id));
    let fs = s.snapshot_path(&id);
    assert_eq!(std::fs::read(fs.join("etc/hostname")).expect("read"), b"kiln\n");
    assert_eq!(std::fs::read(fs.join("bin/sh")).expect("read"), b"#!shell");

    let rec = s.snapshot(&id).expect("db").expect("record");
    assert_eq!(rec.diff_id, Some(diff_id));
    assert_eq!(rec.size, 5 + 7);
    assert_eq!(s.snapshot_for_diff_id(&diff_id).expect("db"), Some(id.clone()));
    let meta = s.blob_meta(&gz).expect("db").expect("meta");
    assert_eq!(meta.diff_id, Some(diff_id));
    assert_eq!(meta.compression, Some(Compression::Gzip));
    assert_eq!(meta.media_type.as_deref(), Some(GZIP_LAYER));

    // The same layer compressed otherwise maps onto the same snapshot, and both blobs are indexed.
    let zs = s.put_bytes(&zstd(&raw)).expect("put");
    assert_eq!(s.unpack_layer(&zs, ZSTD_LAYER).expect("unpack zstd"), id);
    let plain = s.put_bytes(&raw).expect("put");
    assert_eq!(s.unpack_layer(&plain, TAR_LAYER).expect("unpack tar"), id);
    let mut blobs: Vec<Digest> = s
        .blobs_for_diff_id(&diff_id)
        .expect("db")
        .into_iter()
        .map(|(d, _)| d)
        .collect();
    blobs.sort();
    let mut expected = vec![gz, zs, plain];
    expected.sort();
    assert_eq!(blobs, expected);
    assert_eq!(
        s.blob_meta(&zs).expect("db").expect("meta").compression,
        Some(Compression::Zstd)
    );
    assert_eq!(s.list_snapshots().expect("db").len(), 1);
    assert!(s.check().expect("check").is_ok());
}

#[test]
fn compression_is_detected_from_content_not_only_media_type() {
    let env = Env::new();
    let s = &env.store;
    let raw = sample_layer();
    // A zstd blob labelled gzip (mislabelled registries exist): the magic bytes decide.
    let zs = s.put_bytes(&zstd(&raw)).expect("put");
    let id = s.unpack_layer(&zs, GZIP_LAYER).expect("unpack");
    assert_eq!(id, SnapshotId::for_diff_id(&Digest::of(&raw)));
    assert_eq!(
        s.blob_meta(&zs).expect("db").expect("meta").compression,
        Some(Compression::Zstd)
    );
    assert_eq!(
        Compression::from_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip").expect("docker"),
        Compression::Gzip
    );
}

#[test]
fn non_layer_media_type_is_refused() {
    let env = Env::new();
    let d = env.store.put_bytes(&sample_layer()).expect("put");
    let err = env
        .store
        .unpack_layer(&d, "application/vnd.oci.image.config.v1+json")
        .expect_err("config");
    assert!(
        matches!(err, Error::UnsupportedMediaType(ref m) if m.contains("config")),
        "{err}"
    );
}

#[test]
fn second_unpack_reuses_the_snapshot_without_reading_the_blob() {
    let env = Env::new();
    let s = &env.store;
    let gz = s.put_bytes(&gzip(&sample_layer())).expect("put");
    let id = s.unpack_layer(&gz, GZIP_LAYER).expect("unpack");
    let marker = s.snapshot_path(&id).join("marker");
    std::fs::write(&marker, b"x").expect("marker");
    assert_eq!(s.unpack_layer(&gz, GZIP_LAYER).expect("again"), id);
    assert!(marker.exists(), "the snapshot was unpacked again");
}

#[test]
fn corrupt_or_truncated_blob_fails_and_leaves_nothing() {
    let env = Env::new();
    let s = &env.store;
    let gz = gzip(&sample_layer());
    let d = s.put_bytes(&gz).expect("put");
    // Truncated: the gzip stream ends early.
    std::fs::write(s.blob_path(&d), &gz[..gz.len() / 2]).expect("truncate");
    let err = s.unpack_layer(&d, GZIP_LAYER).expect_err("truncated");
    assert!(err.to_string().contains(&d.to_string()), "{err}");
    env.assert_no_leftovers();
    // Same length, other bytes: caught by the blob digest check even if it unpacks.
    let raw = tar(&[E::file("other", b"12345")]);
    let d2 = s.put_bytes(&raw).expect("put");
    let mut evil = tar(&[E::file("other", b"54321")]);
    evil.resize(raw.len(), 0);
    std::fs::write(s.blob_path(&d2), &evil).expect("corrupt");
    let err = s.unpack_layer(&d2, TAR_LAYER).expect_err("corrupt");
    assert!(
        matches!(err, Error::CorruptBlob { digest, .. } if digest == d2),
        "{err}"
    );
    env.assert_no_leftovers();
    assert!(s.list_snapshots().expect("db").is_empty());
}

#[test]
fn garbage_instead_of_tar_is_an_error_naming_the_blob() {
    let env = Env::new();
    let s = &env.store;
    let d = s.put_bytes(&gzip(b"this is not a tar archive but it is long enough to be read as a header block ...................................................................................................................................................................................................................................................................................................................................................................................................................................................................")).expect("put");
    let err = s.unpack_layer(&d, GZIP_LAYER).expect_err("garbage");
    assert!(err.to_string().contains(&d.to_string()), "{err}");
    env.assert_no_leftovers();
}

#[test]
fn whiteouts_become_overlay_whiteouts_and_opaque_dirs() {
    let env = Env::new();
    let s = &env.store;
    let raw = tar(&[
        E::dir("etc/"),
        E::file("etc/.wh.removed", b""),
        E::dir("var/cache/"),
        E::file("var/cache/.wh..wh..opq", b""),
        E::file("var/cache/new", b"n"),
        E::file(".wh.gone", b""),
        E::file("keep", b"k"),
        // A whiteout of a name this layer also has: the layer's own entry wins.
        E::file(".wh.keep", b""),
        E::file(".wh..wh.plnk", b""),
    ]);
    let d = s.put_bytes(&raw).expect("put");
    let fs = s.snapshot_path(&s.unpack_layer(&d, TAR_LAYER).expect("unpack"));
    for w in [fs.join("etc/removed"), fs.join("gone")] {
        let m = std::fs::symlink_metadata(&w).expect("whiteout exists");
        assert!(m.file_type().is_char_device(), "{w:?} is not a char device");
        assert_eq!(m.rdev(), 0, "{w:?} is not 0/0");
    }
    assert!(!fs.join("etc/.wh.removed").exists());
    assert!(!fs.join(".wh..wh.plnk").exists());
    assert_eq!(
        xattr(&fs.join("var/cache"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(xattr(&fs.join("var"), "trusted.overlay.opaque"), None);
    assert!(!fs.join("var/cache/.wh..wh..opq").exists());
    assert_eq!(std::fs::read(fs.join("var/cache/new")).expect("new"), b"n");
    assert_eq!(std::fs::read(fs.join("keep")).expect("keep"), b"k");
}

#[test]
fn modes_owners_times_links_and_special_files_are_kept() {
    let env = Env::new();
    let s = &env.store;
    let raw = tar(&[
        E {
            mode: 0o750,
            uid: 1000,
            gid: 1001,
            mtime: 1_500_000_000,
            ..E::dir("home/")
        },
        E {
            mode: 0o4755,
            uid: 1234,
            gid: 5678,
            mtime: 1_234_567_890,
            ..E::file("home/suid", b"bin")
        },
        E {
            uid: 42,
            gid: 43,
            ..E::symlink("home/link", "/does/not/exist")
        },
        E::hardlink("home/hard", "home/suid"),
        E {
            mode: 0o620,
            dev: (1, 3),
            ..E::new("dev/null", EntryType::Char)
        },
        E {
            mode: 0o660,
            dev: (7, 0),
            ..E::new("dev/loop0", EntryType::Block)
        },
        E {
            mode: 0o600,
            ..E::new("run/fifo", EntryType::Fifo)
        },
        E {
            mode: 0o1777,
            ..E::dir("tmp/")
        },
        E::file("tmp/x", b"x"),
    ]);
    let d = s.put_bytes(&gzip(&raw)).expect("put");
    let fs = s.snapshot_path(&s.unpack_layer(&d, GZIP_LAYER).expect("unpack"));
    let stat = |p: &str| std::fs::symlink_metadata(fs.join(p)).expect(p);

    let home = stat("home");
    assert_eq!(
        (home.mode() & 0o7777, home.uid(), home.gid()),
        (0o750, 1000, 1001)
    );
    // Directory times are set after their contents, so adding entries did not change them.
    assert_eq!(home.mtime(), 1_500_000_000);
    let suid = stat("home/suid");
    assert_eq!(
        (suid.mode() & 0o7777, suid.uid(), suid.gid()),
        (0o4755, 1234, 5678)
    );
    assert_eq!(suid.mtime(), 1_234_567_890);
    assert_eq!(suid.nlink(), 2);
    assert_eq!(stat("home/hard").ino(), suid.ino());
    let link = stat("home/link");
    assert!(link.file_type().is_symlink());
    assert_eq!((link.uid(), link.gid()), (42, 43));
    assert_eq!(
        std::fs::read_link(fs.join("home/link"))
            .expect("readlink")
            .to_str(),
        Some("/does/not/exist")
    );
    let null = stat("dev/null");
    assert!(null.file_type().is_char_device());
    assert_eq!(
        (null.rdev(), null.mode() & 0o7777),
        (rustix::fs::makedev(1, 3), 0o620)
    );
    let lp = stat("dev/loop0");
    assert!(lp.file_type().is_block_device());
    assert_eq!(lp.rdev(), rustix::fs::makedev(7, 0));
    assert!(stat("run/fifo").file_type().is_fifo());
    assert_eq!(stat("tmp").mode() & 0o7777, 0o1777);
}

#[test]
fn pax_xattrs_owners_and_subsecond_times_are_applied() {
    let env = Env::new();
    let s = &env.store;
    let raw = tar(&[
        E {
            pax: vec![
                ("SCHILY.xattr.user.kiln", b"hello"),
                ("SCHILY.xattr.trusted.kiln", b"t"),
                (
                    "SCHILY.xattr.security.capability",
                    b"\x01\x00\x00\x02\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
                ),
                // An overlay attribute in a layer would change how the snapshot stacks: dropped.
                ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
                ("uid", b"3000000"),
                ("gid", b"3000001"),
                ("mtime", b"1700000000.25"),
            ],
            ..E::file("bin/ping", b"ping")
        },
        E {
            pax: vec![("SCHILY.xattr.user.dir", b"d")],
            ..E::dir("data/")
        },
    ]);
    let d = s.put_bytes(&raw).expect("put");
    let fs = s.snapshot_path(&s.unpack_layer(&d, TAR_LAYER).expect("unpack"));
    let ping = fs.join("bin/ping");
    assert_eq!(xattr(&ping, "user.kiln").as_deref(), Some(&b"hello"[..]));
    assert_eq!(xattr(&ping, "trusted.kiln").as_deref(), Some(&b"t"[..]));
    assert!(
        xattr(&ping, "security.capability").is_some(),
        "file capability lost (set before chown?)"
    );
    assert_eq!(xattr(&ping, "trusted.overlay.redirect"), None);
    assert_eq!(xattr(&fs.join("data"), "user.dir").as_deref(), Some(&b"d"[..]));
    let m = std::fs::metadata(&ping).expect("stat");
    assert_eq!((m.uid(), m.gid()), (3_000_000, 3_000_001));
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_700_000_000, 250_000_000));
}

#[test]
fn later_entries_replace_earlier_ones() {
    let env = Env::new();
    let s = &env.store;
    let raw = tar(&[
        E::file("a", b"first"),
        E::file("a", b"second"),
        E::dir("b/"),
        E::file("b/inner", b"i"),
        // A file over a directory replaces the whole directory.
        E::file("b", b"now a file"),
        E::symlink("c", "a"),
        E::dir("c/"),
    ]);
    let d = s.put_bytes(&raw).expect("put");
    let fs = s.snapshot_path(&s.unpack_layer(&d, TAR_LAYER).expect("unpack"));
    assert_eq!(std::fs::read(fs.join("a")).expect("a"), b"second");
    assert_eq!(std::fs::read(fs.join("b")).expect("b"), b"now a file");
    assert!(std::fs::symlink_metadata(fs.join("c")).expect("c").is_dir());
}

#[test]
fn concurrent_unpacks_of_one_layer_share_one_snapshot() {
    let env = Env::new();
    let raw = sample_layer();
    let d = env.store.put_bytes(&gzip(&raw)).expect("put");
    let ids: Vec<SnapshotId> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let store = kiln_cache::Store::open(env.store.root()).expect("open");
                scope.spawn(move || store.unpack_layer(&d, GZIP_LAYER).expect("unpack"))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    assert!(ids.iter().all(|id| *id == ids[0]));
    assert_eq!(
        std::fs::read_dir(env.store.root().join("snapshots"))
            .expect("list")
            .count(),
        1
    );
    assert_eq!(
        std::fs::read_dir(env.store.root().join("tmp"))
            .expect("list")
            .count(),
        0
    );
}

#[test]
fn a_damaged_snapshot_is_unpacked_again() {
    let env = Env::new();
    let s = &env.store;
    let gz = s.put_bytes(&gzip(&sample_layer())).expect("put");
    let id = s.unpack_layer(&gz, GZIP_LAYER).expect("unpack");
    std::fs::remove_dir_all(s.snapshot_path(&id)).expect("damage");
    assert!(!s.check().expect("check").is_ok());
    assert_eq!(s.unpack_layer(&gz, GZIP_LAYER).expect("unpack again"), id);
    assert_eq!(
        std::fs::read(s.snapshot_path(&id).join("bin/sh")).expect("read"),
        b"#!shell"
    );
    let report = s.check().expect("check");
    assert!(report.is_ok() && report.warnings.is_empty(), "{report:?}");
}

#[test]
fn an_archive_bigger_than_the_disk_is_refused_before_it_is_written() {
    let env = Env::new();
    let s = &env.store;
    // One file claiming a petabyte: a gzip bomb's shape, without the gigabytes of zeros to make it.
    let mut header = tar::Header::new_gnu();
    header.set_path("zeros").expect("path");
    header.set_size(1 << 50);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(EntryType::Regular);
    header.set_cksum();
    let mut bomb = header.as_bytes().to_vec();
    bomb.extend(vec![0u8; 4096]);
    let d = s.put_bytes(&gzip(&bomb)).expect("put");
    let err = s
        .unpack_layer(&d, GZIP_LAYER)
        .expect_err("a petabyte does not fit");
    let msg = err.to_string();
    assert!(
        msg.contains("zeros") && msg.contains("decompression bomb"),
        "{msg}"
    );
    env.assert_no_leftovers();
    assert!(s.list_snapshots().expect("db").is_empty());
}
