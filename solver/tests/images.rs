//! Pulling, resolving and unpacking base images against a real docker-registry, skopeo and umoci, and
//! against a fake registry that misbehaves.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use kiln_cache::Store;
use kiln_exporter::ArchiveFormat;
use kiln_registry::{Platform, Reference, RegistryClient, RegistryConfig};
use kiln_solver::images::{self, PullProgress};
use kiln_testutil::fake::{FakeRegistry, Request, Response};
use kiln_testutil::{OciLayout, Registry, busybox_oci_layout};

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A client that reads credentials from `docker_config` only, never the machine's.
fn client(docker_config: &Path) -> RegistryClient {
    RegistryClient::new(RegistryConfig {
        docker_config_dir: Some(docker_config.to_path_buf()),
        ..RegistryConfig::default()
    })
    .expect("registry client")
}

fn reference(s: &str) -> Reference {
    Reference::parse(s).expect("valid reference")
}

fn amd64() -> Platform {
    "linux/amd64".parse().unwrap()
}

/// Pushes the layout to `REGISTRY/repo:tag` with skopeo.
fn skopeo_push(layout: &OciLayout, dest: &str) {
    run(
        "skopeo",
        &[
            "copy",
            "-q",
            "--dest-tls-verify=false",
            &layout.skopeo_ref(),
            &format!("docker://{dest}"),
        ],
    );
}

/// Nothing named, nothing leased, nothing referenced that is missing or corrupt.
fn assert_untouched(store: &Store) {
    assert!(store.list_images().unwrap().is_empty(), "an image was recorded");
    assert!(store.list_leases().unwrap().is_empty(), "a lease was left behind");
    let report = store.check().unwrap();
    assert!(report.is_ok(), "store check: {:?}", report.errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulled_layers_unpack_to_what_umoci_unpacks_from_the_saved_archive() {
    let reg = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let layout = busybox_oci_layout(&tmp.path().join("layout"), "amd64").unwrap();
    let name = format!("{}/base:latest", reg.addr());
    skopeo_push(&layout, &name);

    let store = Store::open(&tmp.path().join("root")).unwrap();
    let mut events = Vec::new();
    let pulled = images::pull(&store, &client(tmp.path()), &reference(&name), &[], |e| events.push(e))
        .await
        .unwrap();
    assert_eq!(pulled.name, name);
    assert_eq!(pulled.digest.to_string(), layout.manifest_digest);
    assert!(events.contains(&PullProgress::Downloaded {
        digest: layout.layer_digest.parse().unwrap(),
        size: layout.layer_size
    }));

    let image = images::local_image(&store, &name, &amd64()).unwrap().expect("pulled image");
    assert_eq!(image.config_digest.to_string(), layout.config_digest);
    let snapshots = images::materialize(&store, &image).unwrap();
    assert_eq!(snapshots.len(), 1);
    // Unpacking again finds the snapshot.
    assert_eq!(images::materialize(&store, &image).unwrap(), snapshots);

    let archive = tmp.path().join("image.tar");
    let file = std::fs::File::create(&archive).unwrap();
    kiln_exporter::save(&store, &[name.clone()], file, ArchiveFormat::Oci).unwrap();
    let oci_dir = tmp.path().join("oci");
    std::fs::create_dir(&oci_dir).unwrap();
    run("tar", &["xf", archive.to_str().unwrap(), "-C", oci_dir.to_str().unwrap()]);
    let bundle = tmp.path().join("bundle");
    run(
        "umoci",
        &[
            "unpack",
            "--rootless",
            "--image",
            &format!("{}:{name}", oci_dir.display()),
            bundle.to_str().unwrap(),
        ],
    );
    let ours = tree(&store.snapshot_path(&snapshots[0]));
    let theirs = tree(&bundle.join("rootfs"));
    assert!(ours.len() > 10, "{ours:?}");
    assert_eq!(ours, theirs);
}

/// name → (kind, mode, size, link target, content) for every entry under `root`.
fn tree(root: &Path) -> BTreeMap<String, (char, u32, u64, Option<String>, Option<Vec<u8>>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let name = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let mode = meta.permissions().mode() & 0o7777;
            let value = if meta.is_dir() {
                stack.push(path.clone());
                ('d', mode, 0, None, None)
            } else if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).unwrap().to_string_lossy().into_owned();
                ('l', 0, 0, Some(target), None)
            } else {
                ('f', mode, meta.size(), None, Some(std::fs::read(&path).unwrap()))
            };
            out.insert(name, value);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_use_the_stored_image_and_pull_only_when_asked() {
    let reg = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let layout = busybox_oci_layout(&tmp.path().join("layout"), "amd64").unwrap();
    let name = format!("{}/base:1", reg.addr());
    skopeo_push(&layout, &name);
    let store = Store::open(&tmp.path().join("root")).unwrap();
    let registry = client(tmp.path());
    let r = reference(&name);

    let pulled = images::resolve_for_build(&store, &registry, &r, &amd64(), false).await.unwrap();
    assert_eq!(pulled.manifest_digest.to_string(), layout.manifest_digest);
    assert_eq!(pulled.layers.len(), 1);
    assert_eq!(pulled.diff_ids[0].to_string(), layout.diff_id);

    // The registry is gone: the stored image is still found, a forced pull fails naming the reference.
    drop(reg);
    let lease = store.create_lease().unwrap();
    let leased = store.with_lease(&lease);
    let local = images::resolve_for_build(&leased, &registry, &r, &amd64(), false).await.unwrap();
    assert_eq!(local, pulled);
    let leases = store.list_leases().unwrap();
    assert_eq!(leases[0].1.resources.len(), 3, "manifest, config and layer are leased");
    let err = images::resolve_for_build(&store, &registry, &r, &amd64(), true)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&name), "{err}");

    // An image for another platform is not used for this one.
    let arm: Platform = "linux/arm64".parse().unwrap();
    assert_eq!(images::local_image(&store, &name, &arm).unwrap(), None);
}

/// Serves `manifests` (repository path and tag → body) and `blobs` (digest → body) like a registry.
fn fake_registry(manifests: Vec<(String, Vec<u8>)>, blobs: Vec<(String, Response)>) -> FakeRegistry {
    let blobs: Vec<(String, Response)> = blobs;
    let blobs = std::sync::Arc::new(blobs);
    FakeRegistry::registry(move |req: &Request| {
        for (path, body) in &manifests {
            if req.path == format!("/v2/{path}") {
                return Response::ok(body.clone())
                    .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
                    .header("Docker-Content-Digest", &kiln_testutil::sha256_digest(body));
            }
        }
        for (digest, resp) in blobs.iter() {
            if req.path.ends_with(&format!("/blobs/{digest}")) {
                return Response {
                    status: resp.status,
                    headers: resp.headers.clone(),
                    body: resp.body.clone(),
                    content_length: resp.content_length,
                };
            }
        }
        Response::status(
            404,
            r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
        )
        .header("Content-Type", "application/json")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_registries_give_clear_errors_and_leave_the_store_clean() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = busybox_oci_layout(&tmp.path().join("layout"), "amd64").unwrap();
    let layer = std::fs::read(layout.blob_path(&layout.layer_digest)).unwrap();
    let mut corrupt = layer.clone();
    let middle = corrupt.len() / 2;
    corrupt[middle] ^= 0xff;
    let mut two_layers: serde_json::Value = serde_json::from_slice(&layout.manifest).unwrap();
    let first = two_layers["layers"][0].clone();
    two_layers["layers"].as_array_mut().unwrap().push(first);
    let config = (layout.config_digest.clone(), Response::ok(layout.config.clone()));

    let cases: Vec<(&str, FakeRegistry, &str)> = vec![
        (
            "mismatch",
            fake_registry(
                vec![("img/manifests/mismatch".into(), layout.manifest.clone())],
                vec![config_clone(&config), (layout.layer_digest.clone(), Response::ok(corrupt))],
            ),
            "digest mismatch",
        ),
        (
            "truncated",
            fake_registry(
                vec![("img/manifests/truncated".into(), layout.manifest.clone())],
                vec![
                    config_clone(&config),
                    (
                        layout.layer_digest.clone(),
                        Response {
                            content_length: Some(layer.len()),
                            ..Response::ok(layer[..middle].to_vec())
                        },
                    ),
                ],
            ),
            "truncated blob",
        ),
        (
            "missing",
            fake_registry(Vec::new(), Vec::new()),
            "manifest unknown",
        ),
        (
            "malformed",
            fake_registry(
                vec![("img/manifests/malformed".into(), b"{not json".to_vec())],
                Vec::new(),
            ),
            "malformed manifest",
        ),
        (
            "layers",
            fake_registry(
                vec![(
                    "img/manifests/layers".into(),
                    serde_json::to_vec(&two_layers).unwrap(),
                )],
                vec![config_clone(&config)],
            ),
            "lists 2 layers but its config",
        ),
    ];
    for (tag, fake, expected) in cases {
        let store = Store::open(&tmp.path().join(format!("root-{tag}"))).unwrap();
        let r = reference(&format!("{}/img:{tag}", fake.addr()));
        let err = images::pull(&store, &client(tmp.path()), &r, &[], |_| {})
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{tag}: {err}");
        assert!(err.contains(&format!("{}/img", fake.addr())), "{tag}: {err}");
        assert_untouched(&store);
        if tag == "layers" {
            assert_eq!(fake.count("GET /v2/img/blobs/sha256:"), 1, "only the config was fetched");
        }
    }
}

fn config_clone(config: &(String, Response)) -> (String, Response) {
    (config.0.clone(), Response::ok(config.1.body.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_refused_clearly() {
    let reg = Registry::start_with_htpasswd("alice", "s3cret");
    let tmp = tempfile::tempdir().unwrap();
    let layout = busybox_oci_layout(&tmp.path().join("layout"), "amd64").unwrap();
    let name = format!("{}/private:latest", reg.addr());
    run(
        "skopeo",
        &[
            "copy",
            "-q",
            "--dest-tls-verify=false",
            "--dest-creds=alice:s3cret",
            &layout.skopeo_ref(),
            &format!("docker://{name}"),
        ],
    );
    let config_dir = tmp.path().join("docker");
    std::fs::create_dir(&config_dir).unwrap();
    std::fs::write(
        config_dir.join("config.json"),
        serde_json::json!({"auths": {reg.addr(): {"auth": "YWxpY2U6d3Jvbmc="}}}).to_string(),
    )
    .unwrap();
    let store = Store::open(&tmp.path().join("root")).unwrap();
    let err = images::pull(&store, &client(&config_dir), &reference(&name), &[], |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("unauthorized") && err.contains(&name), "{err}");
    assert_untouched(&store);

    let good = tmp.path().join("good");
    std::fs::create_dir(&good).unwrap();
    client(&good).login(reg.addr(), "alice", "s3cret").await.unwrap();
    images::pull(&store, &client(&good), &reference(&name), &[], |_| {})
        .await
        .unwrap();
    assert_eq!(store.list_images().unwrap().len(), 1);
}
