//! Disk use, prune and check.

mod common;

use common::{E, Env, GZIP_LAYER, INDEX, MANIFEST, gzip, record, store_image, tar};
use kiln_cache::{CacheRecord, Digest, LeaseResource, SnapshotId, Store};

fn cache_record(blobs: Vec<Digest>, snapshots: Vec<SnapshotId>, last_used: u64) -> CacheRecord {
    CacheRecord {
        result: serde_json::json!({}),
        blobs,
        snapshots,
        created: last_used,
        last_used,
        inputs: None,
        imported_from: None,
    }
}

fn blobs(store: &Store) -> Vec<Digest> {
    let mut out: Vec<Digest> = std::fs::read_dir(store.root().join("blobs/sha256"))
        .expect("list")
        .map(|e| Digest::from_hex(&e.expect("entry").file_name().to_string_lossy()).expect("digest name"))
        .collect();
    out.sort();
    out
}

/// A snapshot holding `files`, unpacked from a stored gzip layer.
fn snapshot_of(store: &Store, files: &[(&str, &[u8])]) -> (Digest, SnapshotId) {
    let entries: Vec<E> = files.iter().map(|(n, d)| E::file(n, d)).collect();
    let layer = store.put_bytes(&gzip(&tar(&entries))).expect("put");
    (layer, store.unpack_layer(&layer, GZIP_LAYER).expect("unpack"))
}

#[test]
fn prune_keeps_what_images_refer_to_and_removes_the_rest() {
    let env = Env::new();
    let s = &env.store;
    let img = store_image(s, &[("etc/os-release", b"kiln")]);
    let snap = s.unpack_layer(&img.layer, GZIP_LAYER).expect("unpack");
    s.tag_image("app:1", &record(img.manifest)).expect("tag");
    let junk = s.put_bytes(b"nobody refers to me").expect("put");
    let (junk_layer, junk_snap) = snapshot_of(s, &[("junk", b"j")]);
    let junk_sizes = s.blob_size(&junk).expect("size") + s.blob_size(&junk_layer).expect("size") + 1;

    let report = s.prune(false, None).expect("prune");
    let mut removed = report.blobs.clone();
    removed.sort();
    let mut expected = vec![junk, junk_layer];
    expected.sort();
    assert_eq!(removed, expected);
    assert_eq!(report.snapshots, vec![junk_snap.clone()]);
    assert_eq!(report.bytes_freed, junk_sizes);
    let mut kept = vec![img.manifest, img.config, img.layer];
    kept.sort();
    assert_eq!(blobs(s), kept);
    assert!(s.snapshot_path(&snap).join("etc/os-release").is_file());
    assert!(!s.root().join("snapshots").join(junk_snap.as_str()).exists());
    assert_eq!(s.snapshot(&junk_snap).expect("db"), None);
    assert_eq!(s.blob_meta(&junk_layer).expect("db"), None);
    assert!(s.check().expect("check").is_ok());

    // Nothing left to do the second time.
    assert_eq!(s.prune(false, None).expect("prune").blobs, vec![]);

    s.untag("app:1").expect("untag");
    let report = s.prune(false, None).expect("prune");
    assert_eq!(report.blobs.len(), 3);
    assert_eq!(report.snapshots, vec![snap]);
    assert!(blobs(s).is_empty());
    assert_eq!(
        std::fs::read_dir(s.root().join("snapshots"))
            .expect("list")
            .count(),
        0
    );
    assert_eq!(std::fs::read_dir(s.root().join("tmp")).expect("list").count(), 0);
    let report = s.check().expect("check");
    assert!(report.is_ok() && report.warnings.is_empty(), "{report:?}");
}

#[test]
fn an_index_keeps_its_stored_manifests_and_tolerates_unpulled_platforms() {
    let env = Env::new();
    let s = &env.store;
    let amd = store_image(s, &[("amd", b"64")]);
    let absent = Digest::of(b"arm64 manifest that was never pulled");
    let index = serde_json::json!({
        "schemaVersion": 2, "mediaType": INDEX,
        "manifests": [
            {"mediaType": MANIFEST, "digest": amd.manifest.to_string(), "size": 1, "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": MANIFEST, "digest": absent.to_string(), "size": 1, "platform": {"os": "linux", "architecture": "arm64"}},
        ],
    });
    let index = s
        .put_bytes(&serde_json::to_vec(&index).expect("json"))
        .expect("put");
    let mut rec = record(index);
    rec.media_type = INDEX.into();
    s.tag_image("multi:latest", &rec).expect("tag");
    let snap = s.unpack_layer(&amd.layer, GZIP_LAYER).expect("unpack");

    let report = s.prune(false, None).expect("prune");
    assert!(
        report.blobs.is_empty() && report.snapshots.is_empty(),
        "{report:?}"
    );
    assert!(s.snapshot_path(&snap).is_dir());
    assert!(s.check().expect("check").is_ok());
}

#[test]
fn cache_records_keep_content_until_pruned_with_all() {
    let env = Env::new();
    let s = &env.store;
    let (layer, snap) = snapshot_of(s, &[("built", b"by a RUN step")]);
    s.put_cache_record("k1", &cache_record(vec![layer], vec![snap.clone()], 10))
        .expect("record");

    let report = s.prune(false, None).expect("prune");
    assert!(
        report.blobs.is_empty() && report.snapshots.is_empty() && report.cache_records.is_empty(),
        "{report:?}"
    );

    let report = s.prune(true, None).expect("prune all");
    assert_eq!(report.cache_records, vec!["k1".to_owned()]);
    assert_eq!(report.blobs, vec![layer]);
    assert_eq!(report.snapshots, vec![snap]);
    assert!(s.list_cache_records().expect("list").is_empty());
}

#[test]
fn keep_storage_drops_least_recently_used_records_first() {
    let env = Env::new();
    let s = &env.store;
    let old = s.put_bytes(&vec![1u8; 1000]).expect("put");
    let mid = s.put_bytes(&vec![2u8; 1000]).expect("put");
    let new = s.put_bytes(&vec![3u8; 1000]).expect("put");
    s.put_cache_record("old", &cache_record(vec![old], vec![], 1))
        .expect("record");
    s.put_cache_record("new", &cache_record(vec![new], vec![], 3))
        .expect("record");
    s.put_cache_record("mid", &cache_record(vec![mid], vec![], 2))
        .expect("record");

    let report = s.prune(false, Some(2500)).expect("prune");
    assert_eq!(report.cache_records, vec!["old".to_owned()]);
    assert_eq!(report.blobs, vec![old]);
    assert_eq!(report.bytes_freed, 1000);

    let report = s.prune(false, Some(1000)).expect("prune");
    assert_eq!(report.cache_records, vec!["mid".to_owned()]);
    let report = s.prune(false, Some(0)).expect("prune");
    assert_eq!(report.cache_records, vec!["new".to_owned()]);
    assert!(blobs(s).is_empty());
}

#[test]
fn live_leases_protect_content_and_records() {
    let env = Env::new();
    let s = &env.store;
    let lease = s.create_lease().expect("lease");
    let leased = s.with_lease(&lease);
    let blob = leased.put_bytes(b"in use by a build").expect("put");
    let (_, snap) = {
        let entries = [E::file("f", b"x")];
        let layer = leased.put_bytes(&tar(&entries)).expect("put");
        (
            layer,
            leased.unpack_layer(&layer, common::TAR_LAYER).expect("unpack"),
        )
    };
    leased
        .put_cache_record("k", &cache_record(vec![], vec![], 1))
        .expect("record");

    let report = s.prune(true, Some(0)).expect("prune");
    assert!(
        report.blobs.is_empty() && report.snapshots.is_empty() && report.cache_records.is_empty(),
        "{report:?}"
    );
    let lease_rec = &s.list_leases().expect("list")[0].1;
    assert!(
        lease_rec
            .resources
            .contains(&LeaseResource::Snapshot(snap.clone()))
    );

    s.release_lease(&lease).expect("release");
    let report = s.prune(true, None).expect("prune");
    assert_eq!(report.blobs.len(), 2);
    assert!(report.blobs.contains(&blob));
    assert_eq!(report.snapshots, vec![snap]);
    assert_eq!(report.cache_records, vec!["k".to_owned()]);
}

#[test]
fn du_reports_per_image_per_record_and_shared_parts() {
    let env = Env::new();
    let s = &env.store;
    let a = store_image(s, &[("shared", b"same layer")]);
    s.tag_image("a:1", &record(a.manifest)).expect("tag");
    s.tag_image("a:alias", &record(a.manifest)).expect("tag");
    let snap = s.unpack_layer(&a.layer, GZIP_LAYER).expect("unpack");
    let b = store_image(s, &[("only-b", b"bbbb")]);
    s.tag_image("b:1", &record(b.manifest)).expect("tag");
    let rec_blob = s.put_bytes(&[7u8; 300]).expect("put");
    s.put_cache_record("rec", &cache_record(vec![rec_blob], vec![], 9))
        .expect("record");
    let junk = s.put_bytes(&[0u8; 50]).expect("put");

    let size = |d: &Digest| s.blob_size(d).expect("size");
    let snap_size = s.snapshot(&snap).expect("db").expect("rec").size;
    assert_eq!(snap_size, 10);
    let du = s.du().expect("du");
    let a_total = size(&a.manifest) + size(&a.config) + size(&a.layer) + snap_size;
    let b_total = size(&b.manifest) + size(&b.config) + size(&b.layer);
    let usage: Vec<(String, u64, u64)> = du
        .images
        .iter()
        .map(|i| (i.name.clone(), i.size, i.unique_size))
        .collect();
    // Two names for one image share everything; b is all its own.
    assert_eq!(
        usage,
        vec![
            ("a:1".into(), a_total, 0),
            ("a:alias".into(), a_total, 0),
            ("b:1".into(), b_total, b_total)
        ]
    );
    assert_eq!(du.cache_records.len(), 1);
    assert_eq!(
        (
            du.cache_records[0].size,
            du.cache_records[0].unique_size,
            du.cache_records[0].in_use
        ),
        (300, 300, false)
    );
    assert_eq!(du.snapshots.len(), 1);
    assert!(du.snapshots[0].referenced);
    assert_eq!(du.snapshots_bytes, snap_size);
    assert_eq!(du.blobs_bytes, a_total - snap_size + b_total + 300 + 50);
    assert_eq!(du.reclaimable_bytes, 50);
    let freed = s.prune(false, None).expect("prune");
    assert_eq!((freed.blobs, freed.bytes_freed), (vec![junk], 50));
}

#[test]
fn prune_refuses_to_guess_when_a_manifest_is_unreadable() {
    let env = Env::new();
    let s = &env.store;
    let img = store_image(s, &[("f", b"x")]);
    s.tag_image("broken:1", &record(img.manifest)).expect("tag");
    std::fs::write(s.blob_path(&img.manifest), b"{ not json").expect("corrupt");
    let err = s.prune(false, None).expect_err("unreadable manifest");
    assert!(err.to_string().contains(&img.manifest.to_string()), "{err}");
    assert!(s.has_blob(&img.layer).expect("has") && s.has_blob(&img.config).expect("has"));
    let report = s.check().expect("check");
    assert!(
        report
            .errors
            .iter()
            .any(|f| f.subject == format!("blob {}", img.manifest)),
        "{report:?}"
    );
}

#[test]
fn check_reports_missing_and_corrupt_content() {
    let env = Env::new();
    let s = &env.store;
    let img = store_image(s, &[("f", b"x")]);
    s.tag_image("app:1", &record(img.manifest)).expect("tag");
    let snap = s.unpack_layer(&img.layer, GZIP_LAYER).expect("unpack");
    let report = s.check().expect("check");
    assert!(report.is_ok() && report.warnings.is_empty(), "{report:?}");

    std::fs::write(s.blob_path(&img.config), b"tampered").expect("corrupt");
    std::fs::remove_file(s.blob_path(&img.layer)).expect("rm layer");
    std::fs::remove_dir_all(s.root().join("snapshots").join(snap.as_str())).expect("rm snapshot");
    s.put_cache_record("k", &cache_record(vec![Digest::of(b"gone")], vec![], 1))
        .expect("record");
    let report = s.check().expect("check");
    let text: Vec<String> = report.errors.iter().map(|f| f.to_string()).collect();
    let has = |needle: &str| text.iter().any(|t| t.contains(needle));
    assert!(
        has(&format!("blob {}: content hashes to", img.config)),
        "{text:#?}"
    );
    assert!(
        has(&format!("blob {}: has metadata but no file", img.layer)),
        "{text:#?}"
    );
    assert!(
        has(&format!(
            "layer {} of manifest {} is missing",
            img.layer, img.manifest
        )),
        "{text:#?}"
    );
    assert!(has(&format!("snapshot {snap}: directory")), "{text:#?}");
    assert!(has("cache record \"k\""), "{text:#?}");
}

#[test]
fn leftovers_of_a_crash_are_warnings_that_prune_clears() {
    let env = Env::new();
    let s = &env.store;
    let img = store_image(s, &[("f", b"x")]);
    s.tag_image("app:1", &record(img.manifest)).expect("tag");
    // What a crash can leave: a snapshot directory renamed in but not recorded, a half-written blob and an
    // unpack directory of a dead process, and a blob file whose records a prune had already deleted.
    let orphan = s.root().join("snapshots").join("deadbeef");
    std::fs::create_dir_all(orphan.join("fs/usr")).expect("orphan");
    let dead = dead_pid();
    let stale_blob = s.root().join("tmp").join(format!("{dead}-1-0.blob"));
    std::fs::write(&stale_blob, b"half").expect("stale");
    let stale_dir = s.root().join("tmp").join(format!("{dead}-1-1.unpack"));
    std::fs::create_dir_all(stale_dir.join("fs/etc")).expect("stale dir");
    let unreferenced = s.put_bytes(b"records gone").expect("put");
    // Work in progress of this (live) process must survive.
    let mut live = s.blob_writer().expect("writer");
    std::io::Write::write_all(&mut live, b"in progress").expect("write");

    let report = s.check().expect("check");
    assert!(report.is_ok(), "{report:?}");
    let subjects: Vec<&str> = report.warnings.iter().map(|f| f.subject.as_str()).collect();
    assert!(subjects.contains(&"snapshots/deadbeef"), "{subjects:?}");
    assert!(
        subjects.iter().filter(|w| w.starts_with("tmp/")).count() == 2,
        "{subjects:?}"
    );

    let report = s.prune(false, None).expect("prune");
    assert_eq!(report.temp_entries, 2);
    assert_eq!(report.blobs, vec![unreferenced]);
    assert_eq!(report.snapshots, vec![SnapshotId::new("deadbeef").expect("id")]);
    assert!(!orphan.exists() && !stale_blob.exists() && !stale_dir.exists());
    let info = live
        .commit(None)
        .expect("the live writer's temp file survived the prune");
    assert_eq!(info.digest, Digest::of(b"in progress"));
    let report = s.check().expect("check");
    assert!(report.is_ok() && report.warnings.is_empty(), "{report:?}");
}

/// The pid of a process that has exited.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().expect("spawn true");
    let pid = child.id();
    child.wait().expect("wait");
    pid
}

#[test]
fn cache_mounts_are_a_store_area_du_counts_and_prune_all_frees_unless_in_use() {
    use kiln_cache::MountSharing;
    let env = Env::new();
    let s = &env.store;
    let held = s
        .cache_mount("/root/.cache", MountSharing::Shared, None)
        .expect("cache mount");
    std::fs::write(held.path.join("pkg"), vec![7u8; 4096]).expect("write into the mount");
    let other = s
        .cache_mount("apt", MountSharing::Exclusive, Some((1000, 1000, 0o700)))
        .expect("cache mount");
    let meta = std::fs::metadata(&other.path).expect("stat");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (1000, 1000, 0o700)
    );
    drop(other);

    let usage = s.du().expect("du");
    let ids: Vec<(&str, bool)> = usage
        .cache_mounts
        .iter()
        .map(|m| (m.id.as_str(), m.in_use))
        .collect();
    assert!(
        ids.contains(&("/root/.cache", true)) && ids.contains(&("apt", false)),
        "{ids:?}"
    );
    assert!(usage.cache_mounts_bytes >= 4096);

    // A plain prune keeps cache mounts; --all drops those no step holds.
    assert!(s.prune(false, None).expect("prune").cache_mounts.is_empty());
    let report = s.prune(true, None).expect("prune --all");
    assert_eq!(report.cache_mounts, vec!["apt".to_string()]);
    assert!(held.path.join("pkg").is_file(), "a mount in use stays");
    drop(held);
    let report = s.prune(true, None).expect("prune --all");
    assert_eq!(report.cache_mounts, vec!["/root/.cache".to_string()]);
    assert!(s.du().expect("du").cache_mounts.is_empty());
    assert!(s.check().expect("check").warnings.is_empty());
}

#[test]
fn context_indexes_are_a_store_area_check_verifies_and_prune_frees() {
    let env = Env::new();
    let s = &env.store;
    let dir = s.context_index_dir();
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("broken.idx"), b"not an index").expect("write");
    let report = s.check().expect("check");
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.subject == "context-index/broken.idx"),
        "{:?}",
        report.warnings
    );
    assert!(s.du().expect("du").context_index_bytes > 0);
    assert_eq!(s.prune(false, None).expect("prune").context_indexes, 1);
    assert!(s.check().expect("check").warnings.is_empty());
}

#[test]
fn a_busy_private_cache_mount_gives_the_next_user_a_scratch_dir_of_its_own() {
    use kiln_cache::MountSharing;
    let env = Env::new();
    let s = &env.store;
    let first = s
        .cache_mount("go", MountSharing::Private, None)
        .expect("cache mount");
    std::fs::write(first.path.join("built"), "x").expect("write into the mount");
    // Busy: no waiting, an empty directory with the mount's owner instead.
    let second = s
        .cache_mount("go", MountSharing::Private, Some((7, 8, 0o750)))
        .expect("cache mount");
    assert_ne!(second.path, first.path);
    assert_eq!(std::fs::read_dir(&second.path).expect("read").count(), 0);
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&second.path).expect("stat");
    assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o7777), (7, 8, 0o750));
    let scratch = second.path.clone();
    drop(second);
    assert!(!scratch.exists(), "the stand-in goes with its step");
    drop(first);
    // Free again: the next user gets the mount itself, contents and all.
    let again = s
        .cache_mount("go", MountSharing::Private, None)
        .expect("cache mount");
    assert!(again.path.join("built").is_file());
    drop(again);
    assert!(s.check().expect("check").warnings.is_empty());
}
