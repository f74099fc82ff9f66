//! Image records, blob metadata, cache records and leases in the database.

mod common;

use common::{Env, INDEX, record};
use kiln_cache::{
    BlobMeta, CacheRecord, Compression, Digest, Error, LeaseId, LeaseResource, Platform, SnapshotId,
};

#[test]
fn tag_get_list_untag_and_find_by_digest() {
    let env = Env::new();
    let s = &env.store;
    let a = Digest::of(b"a");
    let b = Digest::of(b"b");
    assert_eq!(
        s.tag_image("docker.io/library/busybox:latest", &record(a))
            .expect("tag"),
        None
    );
    assert_eq!(s.tag_image("busybox:1", &record(a)).expect("tag"), None);
    let mut multi = record(b);
    multi.media_type = INDEX.to_owned();
    multi.platforms = vec![
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        },
        Platform {
            os: "linux".into(),
            architecture: "arm".into(),
            variant: Some("v7".into()),
        },
    ];
    assert_eq!(s.tag_image("multi:latest", &multi).expect("tag"), None);
    assert_eq!(multi.platforms[1].to_string(), "linux/arm/v7");

    assert_eq!(s.get_image("multi:latest").expect("get"), Some(multi.clone()));
    assert_eq!(s.get_image("nope").expect("get"), None);
    let names: Vec<String> = s
        .list_images()
        .expect("list")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        names,
        ["busybox:1", "docker.io/library/busybox:latest", "multi:latest"]
    );
    let by_a: Vec<String> = s
        .images_by_digest(&a)
        .expect("by digest")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(by_a, ["busybox:1", "docker.io/library/busybox:latest"]);

    // Retagging returns the previous record.
    assert_eq!(
        s.tag_image("busybox:1", &record(b)).expect("retag"),
        Some(record(a))
    );
    assert_eq!(s.untag("busybox:1").expect("untag"), Some(record(b)));
    assert_eq!(s.untag("busybox:1").expect("untag again"), None);
    assert_eq!(s.list_images().expect("list").len(), 2);
}

#[test]
fn bad_names_are_refused_clearly() {
    let env = Env::new();
    let s = &env.store;
    for name in ["", "has space", "tab\there", "nl\n"] {
        let err = s.tag_image(name, &record(Digest::of(b"x"))).expect_err(name);
        assert!(
            matches!(
                err,
                Error::InvalidName {
                    what: "image name",
                    ..
                }
            ),
            "{name:?}: {err}"
        );
    }
    for id in ["", "../x", "a/b", ".hidden", "-flag", &"x".repeat(129)] {
        let err = SnapshotId::new(id).expect_err(id);
        assert!(err.to_string().contains("snapshot id"), "{err}");
    }
    assert!(SnapshotId::new("abc-1.2_3").is_ok());
    assert!(serde_json::from_str::<SnapshotId>("\"../etc\"").is_err());
    assert!(s.put_cache_record("", &cache_record(vec![], vec![])).is_err());
}

#[test]
fn blob_meta_keeps_the_diff_id_index_in_step() {
    let env = Env::new();
    let s = &env.store;
    let blob = Digest::of(b"blob");
    let diff1 = Digest::of(b"diff1");
    let diff2 = Digest::of(b"diff2");
    let meta = |diff| BlobMeta {
        media_type: Some(common::GZIP_LAYER.into()),
        diff_id: Some(diff),
        compression: Some(Compression::Gzip),
        ..BlobMeta::default()
    };
    s.set_blob_meta(&blob, &meta(diff1)).expect("set");
    assert_eq!(s.blob_meta(&blob).expect("get"), Some(meta(diff1)));
    assert_eq!(
        s.blobs_for_diff_id(&diff1).expect("index"),
        vec![(blob, meta(diff1))]
    );
    // Changing the diff_id moves the index entry.
    s.set_blob_meta(&blob, &meta(diff2)).expect("set");
    assert!(s.blobs_for_diff_id(&diff1).expect("index").is_empty());
    assert_eq!(s.blobs_for_diff_id(&diff2).expect("index").len(), 1);
    assert_eq!(s.blob_meta(&Digest::of(b"other")).expect("get"), None);
}

fn cache_record(blobs: Vec<Digest>, snapshots: Vec<SnapshotId>) -> CacheRecord {
    CacheRecord {
        result: serde_json::json!({"out": 1}),
        blobs,
        snapshots,
        created: 5,
        last_used: 6,
        inputs: None,
        imported_from: None,
    }
}

#[test]
fn cache_records_round_trip() {
    let env = Env::new();
    let s = &env.store;
    let rec = cache_record(vec![Digest::of(b"x")], vec![SnapshotId::new("abc").expect("id")]);
    s.put_cache_record("key-1", &rec).expect("put");
    assert_eq!(s.get_cache_record("key-1").expect("get"), Some(rec.clone()));
    assert_eq!(
        s.list_cache_records().expect("list"),
        vec![("key-1".to_owned(), rec.clone())]
    );
    assert_eq!(s.remove_cache_record("key-1").expect("remove"), Some(rec));
    assert_eq!(s.get_cache_record("key-1").expect("get"), None);
}

#[test]
fn leases_record_what_is_written_through_them() {
    let env = Env::new();
    let s = &env.store;
    let lease = s.create_lease().expect("lease");
    let leased = s.with_lease(&lease);
    let blob = leased.put_bytes(b"leased").expect("put");
    leased
        .put_cache_record("k", &cache_record(vec![], vec![]))
        .expect("record");
    let snap = SnapshotId::new("manual").expect("id");
    s.lease_add(&lease, LeaseResource::Snapshot(snap.clone()))
        .expect("add");
    // Adding twice keeps one entry.
    s.lease_add(&lease, LeaseResource::Blob(blob)).expect("add again");

    let leases = s.list_leases().expect("list");
    assert_eq!(leases.len(), 1);
    let (id, l) = &leases[0];
    assert_eq!(id, &lease);
    assert_eq!(l.holder.pid, std::process::id());
    assert!(l.holder.is_alive());
    assert_eq!(
        l.resources,
        vec![
            LeaseResource::Blob(blob),
            LeaseResource::CacheRecord("k".into()),
            LeaseResource::Snapshot(snap)
        ]
    );
    s.release_lease(&lease).expect("release");
    assert!(s.list_leases().expect("list").is_empty());
    // Writing through a released lease fails and says which.
    let err = leased.put_bytes(b"after release").expect_err("released");
    assert!(
        matches!(&err, Error::LeaseNotFound(l) if l == lease.as_str()),
        "{err}"
    );
    let bogus = LeaseId::new("nope").expect("id");
    assert!(s.lease_add(&bogus, LeaseResource::Blob(blob)).is_err());
}

#[test]
fn redb_refuses_a_second_open_even_in_one_process() {
    // Why the store opens the database per operation under its own blocking lock: redb's lock is a
    // non-blocking exclusive flock per open, so a second open fails at once instead of waiting.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x.redb");
    let first = redb::Database::create(&path).expect("first open");
    let second = redb::Database::create(&path);
    assert!(
        matches!(second, Err(redb::DatabaseError::DatabaseAlreadyOpen)),
        "{:?}",
        second.err()
    );
    drop(first);
    redb::Database::create(&path).expect("open after close");
}

#[test]
fn two_handles_in_one_process_work_concurrently() {
    let env = Env::new();
    let root = env.store.root().to_owned();
    std::thread::scope(|scope| {
        for t in 0..4 {
            let root = root.clone();
            scope.spawn(move || {
                let s = kiln_cache::Store::open(&root).expect("open");
                for i in 0..20 {
                    let d = s.put_bytes(format!("{t}-{i}").as_bytes()).expect("put");
                    s.tag_image(&format!("t{t}:{i}"), &record(d)).expect("tag");
                    s.list_images().expect("list");
                }
            });
        }
    });
    assert_eq!(env.store.list_images().expect("list").len(), 80);
}

/// Reads go through a view of the database file that writes nothing, so they cost no fsync and many can run
/// at once; the file must come out of any number of them byte for byte as the last commit left it.
#[test]
fn reads_leave_the_database_file_as_it_was() {
    let env = Env::new();
    let s = &env.store;
    let a = Digest::of(b"a");
    s.tag_image("app:1", &record(a)).expect("tag");
    let db = s.root().join("db.redb");
    let before = std::fs::read(&db).expect("read db");
    // Bytes alone cannot tell: an ordinary open and clean close writes the header back as it was. The
    // modification time tells whether anything was written at all.
    let written_at = std::fs::metadata(&db)
        .and_then(|m| m.modified())
        .expect("stat db");
    std::thread::sleep(std::time::Duration::from_millis(20));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let store = s.clone();
            std::thread::spawn(move || {
                for _ in 0..20 {
                    assert!(store.get_image("app:1").expect("get").is_some());
                    assert!(!store.list_images().expect("list").is_empty());
                }
            })
        })
        .collect();
    for reader in readers {
        reader.join().expect("reader thread");
    }
    assert!(
        std::fs::read(&db).expect("read db") == before,
        "a read changed the database file"
    );
    assert_eq!(
        std::fs::metadata(&db)
            .and_then(|m| m.modified())
            .expect("stat db"),
        written_at,
        "a read wrote to the database file"
    );
    s.tag_image("app:2", &record(a)).expect("a write after the reads");
    assert!(s.get_image("app:2").expect("get").is_some());
}
