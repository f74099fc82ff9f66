//! Build snapshots: prepare, commit, diff_ids, and what crashes at each step of a commit leave behind. Crash
//! tests re-execute this binary: the `child_*` tests are ignored in normal runs and do their part only when
//! the parent sets KILN_CACHE_TEST_ROOT.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Env, record};
use kiln_cache::{Digest, Error, SnapshotId, Store};

const ROOT_VAR: &str = "KILN_CACHE_TEST_ROOT";

fn child_root() -> Option<PathBuf> {
    std::env::var_os(ROOT_VAR).map(PathBuf::from)
}

/// Runs the ignored test `test` in a child process on `root`, with `env` set; returns its exit code.
fn run_child(test: &str, root: &Path, env: &[(&str, &str)]) -> i32 {
    let mut cmd = Command::new(std::env::current_exe().expect("current exe"));
    cmd.args(["--exact", test, "--ignored", "--nocapture", "--test-threads=1"])
        .env(ROOT_VAR, root)
        .stdout(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.status()
        .expect("run child")
        .code()
        .expect("child exited by a signal")
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn assert_clean(s: &Store) {
    let report = s.check().expect("check");
    assert!(report.is_ok() && report.warnings.is_empty(), "{report:?}");
}

/// A prepared upperdir with a few files, one of them hardlinked.
fn write_files(upper: &Path, tag: &str) {
    std::fs::create_dir(upper.join("etc")).expect("mkdir");
    std::fs::write(upper.join("etc/hostname"), tag).expect("write");
    std::fs::write(upper.join("big"), vec![7u8; 1000]).expect("write");
    std::fs::hard_link(upper.join("big"), upper.join("big-link")).expect("link");
}

#[test]
fn prepare_gives_empty_dirs_in_the_store_tmp() {
    let env = Env::new();
    let s = &env.store;
    let p = s.prepare_snapshot().expect("prepare");
    let tmp = s.root().join("tmp");
    for dir in [&p.upper, &p.work] {
        assert!(dir.starts_with(&tmp), "{} is not under ROOT/tmp", dir.display());
        assert!(entries(dir).is_empty());
        assert_eq!(
            std::fs::metadata(dir).expect("stat").dev(),
            std::fs::metadata(s.root()).expect("stat").dev(),
            "overlayfs needs the upper and work dirs on the store's filesystem"
        );
    }
    assert_eq!(p.upper.parent(), p.work.parent());
    assert_eq!(std::fs::metadata(&p.upper).expect("stat").mode() & 0o7777, 0o755);
    // A live process's prepared dir is not a leftover.
    assert_eq!(s.prune(false, None).expect("prune").temp_entries, 0);
    assert!(p.upper.is_dir());
    assert_clean(s);

    let dir = p.upper.parent().expect("parent").to_owned();
    drop(p);
    assert!(!dir.exists(), "dropping an uncommitted snapshot removes it");
    assert!(entries(&tmp).is_empty());
}

#[test]
fn commit_moves_the_upper_dir_into_a_leased_snapshot() {
    let env = Env::new();
    let lease = env.store.create_lease().expect("lease");
    let s = env.store.with_lease(&lease);
    let p = s.prepare_snapshot().expect("prepare");
    write_files(&p.upper, "one");
    std::fs::create_dir(p.work.join("work")).expect("overlay makes this");
    let base = s.commit_snapshot(p, None).expect("commit");
    assert!(base.as_str().starts_with("build-"), "{base}");

    let fs = s.snapshot_path(&base);
    assert_eq!(std::fs::read(fs.join("etc/hostname")).expect("read"), b"one");
    assert_eq!(
        std::fs::metadata(fs.join("big")).expect("stat").ino(),
        std::fs::metadata(fs.join("big-link")).expect("stat").ino()
    );
    assert_eq!(
        entries(fs.parent().expect("parent")),
        ["fs"],
        "the work dir is gone"
    );
    assert!(entries(&s.root().join("tmp")).is_empty());
    let rec = s.snapshot(&base).expect("db").expect("record");
    assert_eq!((rec.parent, rec.diff_id, rec.size), (None, None, 3 + 1000));

    let p = s.prepare_snapshot().expect("prepare");
    std::fs::write(p.upper.join("top"), b"t").expect("write");
    let top = s.commit_snapshot(p, Some(&base)).expect("commit");
    assert_ne!(top, base);
    assert_eq!(
        s.snapshot(&top).expect("db").expect("record").parent,
        Some(base.clone())
    );
    assert_clean(&s);

    // Leased: a prune keeps both; released, nothing keeps them.
    assert!(s.prune(false, None).expect("prune").snapshots.is_empty());
    s.release_lease(&lease).expect("release");
    let mut pruned = s.prune(false, None).expect("prune").snapshots;
    pruned.sort();
    let mut both = vec![base, top];
    both.sort();
    assert_eq!(pruned, both);
    assert!(entries(&s.root().join("snapshots")).is_empty());
    assert_clean(&s);
}

#[test]
fn a_leased_child_keeps_its_unleased_parent() {
    let env = Env::new();
    let s = &env.store;
    let p = s.prepare_snapshot().expect("prepare");
    let parent = s.commit_snapshot(p, None).expect("commit");
    let leased = s.with_lease(&s.create_lease().expect("lease"));
    let p = leased.prepare_snapshot().expect("prepare");
    let child = leased.commit_snapshot(p, Some(&parent)).expect("commit");
    assert!(s.prune(false, None).expect("prune").snapshots.is_empty());
    assert!(s.snapshot_path(&parent).is_dir() && s.snapshot_path(&child).is_dir());
}

#[test]
fn commit_on_a_missing_parent_fails_and_leaves_nothing() {
    let env = Env::new();
    let s = &env.store;
    let p = s.prepare_snapshot().expect("prepare");
    std::fs::write(p.upper.join("f"), b"x").expect("write");
    let missing = SnapshotId::new("build-0000").expect("id");
    match s.commit_snapshot(p, Some(&missing)) {
        Err(Error::SnapshotNotFound { what, id }) => {
            assert_eq!((what, id.as_str()), ("parent snapshot", "build-0000"));
        }
        other => panic!("expected a missing parent, got {other:?}"),
    }
    env.assert_no_leftovers();
    assert!(s.list_snapshots().expect("list").is_empty());
}

#[test]
fn a_commit_is_all_or_nothing_to_a_concurrent_reader() {
    let env = Env::new();
    let lease = env.store.create_lease().expect("lease");
    let s = env.store.with_lease(&lease);
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for i in 0..12 {
                let p = s.prepare_snapshot().expect("prepare");
                std::fs::write(p.upper.join("data"), format!("{i}")).expect("write");
                s.commit_snapshot(p, None).expect("commit");
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let snapshots = s.root().join("snapshots");
        let mut seen = 0;
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            // A recorded snapshot is complete, and so is any snapshot directory at all.
            for (id, _) in s.list_snapshots().expect("list") {
                assert!(
                    s.snapshot_path(&id).join("data").is_file(),
                    "{id} recorded before its files"
                );
            }
            for name in entries(&snapshots) {
                let data = snapshots.join(&name).join("fs/data");
                // Pruned in between is fine; half there is not.
                if snapshots.join(&name).exists() {
                    assert!(data.is_file(), "{name} visible before its files");
                    seen += 1;
                }
            }
        }
        assert!(seen > 0 || s.list_snapshots().expect("list").len() == 12);
    });
    assert_eq!(s.list_snapshots().expect("list").len(), 12);
    assert_clean(&s);
}

#[test]
fn diff_ids_are_recorded_per_epoch() {
    let env = Env::new();
    let s = &env.store;
    let p = s.prepare_snapshot().expect("prepare");
    let id = s.commit_snapshot(p, None).expect("commit");
    let (plain, clamped, other) = (Digest::of(b"plain"), Digest::of(b"clamped"), Digest::of(b"other"));
    assert_eq!(s.snapshot_diff_id(&id, None).expect("get"), None);

    s.set_snapshot_diff_id(&id, Some(100), &clamped).expect("set");
    assert_eq!(s.snapshot_diff_id(&id, Some(100)).expect("get"), Some(clamped));
    assert_eq!(s.snapshot_diff_id(&id, None).expect("get"), None);
    assert_eq!(s.snapshot_diff_id(&id, Some(101)).expect("get"), None);
    // A clamped tar is not the snapshot's own content; it does not name the snapshot.
    assert_eq!(s.snapshot(&id).expect("db").expect("record").diff_id, None);

    s.set_snapshot_diff_id(&id, None, &plain).expect("set");
    assert_eq!(s.snapshot_diff_id(&id, None).expect("get"), Some(plain));
    assert_eq!(s.snapshot(&id).expect("db").expect("record").diff_id, Some(plain));
    assert_eq!(s.snapshot_for_diff_id(&plain).expect("index"), Some(id.clone()));
    s.set_snapshot_diff_id(&id, Some(100), &other).expect("replace");
    assert_eq!(s.snapshot_diff_id(&id, Some(100)).expect("get"), Some(other));
    assert_eq!(
        s.snapshot(&id).expect("db").expect("record").tar_diff_ids.len(),
        2
    );
    assert_clean(s);

    let missing = SnapshotId::new("build-missing").expect("id");
    assert!(matches!(
        s.set_snapshot_diff_id(&missing, None, &plain),
        Err(Error::SnapshotNotFound { .. })
    ));

    // An image whose config lists the diff_id keeps the snapshot.
    let config = serde_json::json!({"rootfs": {"type": "layers", "diff_ids": [plain.to_string()]}});
    let config = s
        .put_bytes(&serde_json::to_vec(&config).expect("json"))
        .expect("put");
    let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": common::MANIFEST,
        "config": {"digest": config.to_string()}, "layers": []});
    let manifest = s
        .put_bytes(&serde_json::to_vec(&manifest).expect("json"))
        .expect("put");
    s.tag_image("app:1", &record(manifest)).expect("tag");
    assert!(s.prune(false, None).expect("prune").snapshots.is_empty());
    s.untag("app:1").expect("untag");
    assert_eq!(s.prune(false, None).expect("prune").snapshots, vec![id]);
    assert_eq!(s.snapshot_for_diff_id(&plain).expect("index"), None);
    assert_clean(s);
}

#[test]
fn an_unpacked_layer_keeps_its_place_in_the_diff_id_index() {
    let env = Env::new();
    let s = &env.store;
    let layer = s
        .put_bytes(&common::tar(&[common::E::file("a", b"a")]))
        .expect("put");
    let unpacked = s.unpack_layer(&layer, common::TAR_LAYER).expect("unpack");
    let diff_id = s
        .snapshot(&unpacked)
        .expect("db")
        .expect("record")
        .diff_id
        .expect("diff_id");
    let p = s.prepare_snapshot().expect("prepare");
    let built = s.commit_snapshot(p, None).expect("commit");
    s.set_snapshot_diff_id(&built, None, &diff_id).expect("set");
    assert_eq!(s.snapshot_for_diff_id(&diff_id).expect("index"), Some(unpacked));
    assert_clean(s);
}

#[test]
#[ignore = "run by a_dead_process_prepared_snapshot_is_pruned"]
fn child_prepares_and_dies() {
    let Some(root) = child_root() else { return };
    let s = Store::open(&root).expect("open");
    let p = s.prepare_snapshot().expect("prepare");
    write_files(&p.upper, "half done");
    // No drop: as if the build were killed mid-step.
    std::process::exit(0);
}

#[test]
fn a_dead_process_prepared_snapshot_is_pruned() {
    let env = Env::new();
    let s = &env.store;
    assert_eq!(run_child("child_prepares_and_dies", s.root(), &[]), 0);
    let mine = s.prepare_snapshot().expect("prepare");
    let tmp = s.root().join("tmp");
    assert_eq!(entries(&tmp).len(), 2);
    let report = s.check().expect("check");
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.warnings.len(), 1, "{report:?}");
    assert!(report.warnings[0].message.contains("gone"), "{report:?}");

    assert_eq!(s.prune(false, None).expect("prune").temp_entries, 1);
    assert!(
        mine.upper.is_dir(),
        "prune removed a live process's prepared snapshot"
    );
    assert_eq!(entries(&tmp).len(), 1);
    drop(mine);
    assert_clean(s);
}

#[test]
#[ignore = "run by a_crash_anywhere_in_a_commit_leaves_a_consistent_store"]
fn child_commits() {
    let Some(root) = child_root() else { return };
    let s = Store::open(&root).expect("open");
    let s = s.with_lease(&s.create_lease().expect("lease"));
    let p = s.prepare_snapshot().expect("prepare");
    write_files(&p.upper, "crash");
    std::fs::create_dir(p.work.join("work")).expect("mkdir");
    s.commit_snapshot(p, None).expect("commit");
}

#[cfg(debug_assertions)]
#[test]
fn a_crash_anywhere_in_a_commit_leaves_a_consistent_store() {
    for point in ["snapshot-before-rename", "snapshot-renamed", "snapshot-recorded"] {
        let env = Env::new();
        let s = &env.store;
        let code = run_child("child_commits", s.root(), &[("KILN_CACHE_CRASH_AT", point)]);
        assert_eq!(code, 86, "{point}: the child did not stop at the crash point");
        let recorded = s.list_snapshots().expect("the store stays readable");
        assert_eq!(
            recorded.len(),
            usize::from(point == "snapshot-recorded"),
            "{point}"
        );
        for (id, _) in &recorded {
            assert!(s.snapshot_path(id).join("etc/hostname").is_file(), "{point}");
        }
        let report = s.check().expect("check");
        assert!(report.is_ok(), "{point}: {report:?}");
        assert!(!report.warnings.is_empty(), "{point}: a dead lease at least");
        s.prune(false, None).expect("prune");
        let report = s.check().expect("check");
        assert!(
            report.is_ok() && report.warnings.is_empty(),
            "{point}: {report:?}"
        );
        for sub in ["tmp", "snapshots"] {
            assert!(
                entries(&s.root().join(sub)).is_empty(),
                "{point}: {sub}/ not cleared"
            );
        }
    }
}
