//! Several kiln processes on one store root. The test binary re-executes itself: the `child_*` tests are
//! ignored in normal runs and do their part only when the parent sets KILN_CACHE_TEST_ROOT.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use common::{E, Env, TAR_LAYER, record, tar};
use kiln_cache::{CacheRecord, Digest, Store};

const ROOT_VAR: &str = "KILN_CACHE_TEST_ROOT";
const ID_VAR: &str = "KILN_CACHE_TEST_CHILD";
const ROUNDS: usize = 8;

fn spawn_child(test: &str, root: &Path, id: usize) -> Child {
    Command::new(std::env::current_exe().expect("current exe"))
        .args(["--exact", test, "--ignored", "--nocapture", "--test-threads=1"])
        .env(ROOT_VAR, root)
        .env(ID_VAR, id.to_string())
        // The child's own test summary would read like this binary's; its panics still reach stderr.
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn child")
}

/// Stores a manifest listing `blob` as its only layer, so an image record can keep it.
fn manifest_for(s: &Store, blob: Digest) -> Digest {
    let m = serde_json::json!({"schemaVersion": 2, "mediaType": common::MANIFEST, "layers": [{"digest": blob.to_string()}]});
    s.put_bytes(&serde_json::to_vec(&m).expect("json"))
        .expect("put manifest")
}

fn child_env() -> Option<(PathBuf, usize)> {
    let root = std::env::var_os(ROOT_VAR)?;
    let id = std::env::var(ID_VAR).ok()?.parse().ok()?;
    Some((PathBuf::from(root), id))
}

#[test]
#[ignore = "run by concurrent_processes_share_one_store"]
fn child_writer() {
    let Some((root, id)) = child_env() else { return };
    let s = Store::open(&root).expect("child open");
    let lease = s.create_lease().expect("lease");
    let leased = s.with_lease(&lease);
    for i in 0..ROUNDS {
        let d = leased
            .put_bytes(format!("child {id} blob {i}").as_bytes())
            .expect("put");
        s.tag_image(&format!("c{id}:{i}"), &record(manifest_for(&leased, d)))
            .expect("tag");
        let rec = CacheRecord {
            result: serde_json::json!({"i": i}),
            blobs: vec![d],
            snapshots: vec![],
            created: 1,
            last_used: 1,
            inputs: None,
            imported_from: None,
        };
        leased
            .put_cache_record(&format!("c{id}-{i}"), &rec)
            .expect("record");
        // Shared content too: every child writes and unpacks the same layer.
        let layer = leased
            .put_bytes(&tar(&[E::file("shared", b"same for all")]))
            .expect("put layer");
        leased.unpack_layer(&layer, TAR_LAYER).expect("unpack");
        s.list_images().expect("list");
        s.prune(false, None).expect("prune while others write");
    }
    s.release_lease(&lease).expect("release");
}

#[test]
fn concurrent_processes_share_one_store() {
    let env = Env::new();
    let root = env.store.root().to_owned();
    let children: Vec<Child> = (0..4).map(|id| spawn_child("child_writer", &root, id)).collect();
    for mut c in children {
        assert!(c.wait().expect("wait").success(), "a child failed");
    }
    let s = &env.store;
    let images = s.list_images().expect("list");
    assert_eq!(images.len(), 4 * ROUNDS);
    for (name, rec) in &images {
        // Each image's blobs survived the other processes' prunes (they were leased until tagged).
        let manifest: serde_json::Value =
            serde_json::from_slice(&s.read_blob(&rec.digest).expect("manifest")).expect("json");
        let layer: Digest = manifest["layers"][0]["digest"]
            .as_str()
            .expect("digest")
            .parse()
            .expect("digest");
        assert!(s.has_blob(&layer).expect("has"), "{name} lost its blob");
    }
    assert_eq!(s.list_cache_records().expect("list").len(), 4 * ROUNDS);
    assert_eq!(s.list_snapshots().expect("list").len(), 1);
    let report = s.check().expect("check");
    assert!(report.is_ok() && report.warnings.is_empty(), "{report:?}");
}

#[test]
#[ignore = "run by a_dead_process_lease_expires"]
fn child_leaser() {
    let Some((root, _)) = child_env() else { return };
    let s = Store::open(&root).expect("child open");
    let lease = s.create_lease().expect("lease");
    s.with_lease(&lease)
        .put_bytes(b"written by a build that crashed")
        .expect("put");
    // Exits without releasing: as a crashed build would.
}

#[test]
fn a_dead_process_lease_expires() {
    let env = Env::new();
    let s = &env.store;
    assert!(
        spawn_child("child_leaser", s.root(), 0)
            .wait()
            .expect("wait")
            .success()
    );
    let leases = s.list_leases().expect("list");
    assert_eq!(leases.len(), 1);
    assert!(!leases[0].1.holder.is_alive());
    let report = s.prune(false, None).expect("prune");
    assert_eq!(report.leases, vec![leases[0].0.to_string()]);
    assert_eq!(report.blobs, vec![Digest::of(b"written by a build that crashed")]);
    assert!(s.list_leases().expect("list").is_empty());
}

#[test]
#[ignore = "run by killed_mid_work_leaves_a_consistent_store"]
fn child_churn() {
    let Some((root, id)) = child_env() else { return };
    let s = Store::open(&root).expect("child open");
    // Unleased content could be pruned by the other child between its write and its use.
    let s = s.with_lease(&s.create_lease().expect("lease"));
    for i in 0.. {
        let big = vec![(i % 251) as u8; 256 * 1024];
        let d = s.put_bytes(&big).expect("put");
        let layer = s
            .put_bytes(&tar(&[
                E::file("a", &big),
                E::file("b/c", b"x"),
                E::hardlink("d", "a"),
            ]))
            .expect("put layer");
        s.unpack_layer(&layer, TAR_LAYER).expect("unpack");
        if i % 2 == 0 {
            s.tag_image(&format!("churn{id}:{i}"), &record(manifest_for(&s, d)))
                .expect("tag");
        } else {
            s.untag(&format!("churn{id}:{}", i - 1)).expect("untag");
        }
        s.prune(false, None).expect("prune");
    }
}

#[test]
fn killed_mid_work_leaves_a_consistent_store() {
    let env = Env::new();
    let s = &env.store;
    for (round, delay_ms) in [150u64, 400, 900].into_iter().enumerate() {
        let mut children: Vec<Child> = (0..2)
            .map(|id| spawn_child("child_churn", s.root(), round * 2 + id))
            .collect();
        std::thread::sleep(Duration::from_millis(delay_ms));
        for c in &mut children {
            c.kill().expect("SIGKILL");
            c.wait().expect("reap");
        }
        let report = s.check().expect("check after kill");
        assert!(report.is_ok(), "round {round}: {report:?}");
        // The store keeps working and the next prune clears what the kill left behind.
        s.put_bytes(b"still works").expect("put");
        s.prune(false, None).expect("prune after kill");
        let report = s.check().expect("check after prune");
        assert!(
            report.is_ok() && report.warnings.is_empty(),
            "round {round}: {report:?}"
        );
    }
}
