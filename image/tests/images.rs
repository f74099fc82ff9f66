//! Pulling, resolving and unpacking base images against a real docker-registry, skopeo and umoci, and
//! against a fake registry that misbehaves.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use kiln_cache::Store;
use kiln_exporter::ArchiveFormat;
use kiln_image::{self as images, PullProgress};
use kiln_registry::{Platform, Reference, RegistryClient, RegistryConfig};
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
    let pulled = images::pull(&store, &client(tmp.path()), &reference(&name), &[], |e| {
        events.push(e)
    })
    .await
    .unwrap();
    assert_eq!(pulled.name, name);
    assert_eq!(pulled.digest.to_string(), layout.manifest_digest);
    assert!(events.contains(&PullProgress::Downloaded {
        digest: layout.layer_digest.parse().unwrap(),
        size: layout.layer_size
    }));

    let image = images::local_image(&store, &name, &amd64())
        .unwrap()
        .expect("pulled image");
    assert_eq!(image.config_digest.to_string(), layout.config_digest);
    let snapshots = images::materialize(&store, &image).unwrap();
    assert_eq!(snapshots.len(), 1);
    // Unpacking again finds the snapshot.
    assert_eq!(images::materialize(&store, &image).unwrap(), snapshots);

    let archive = tmp.path().join("image.tar");
    let file = std::fs::File::create(&archive).unwrap();
    kiln_exporter::save(&store, std::slice::from_ref(&name), file, ArchiveFormat::Oci).unwrap();
    let oci_dir = tmp.path().join("oci");
    std::fs::create_dir(&oci_dir).unwrap();
    run(
        "tar",
        &["xf", archive.to_str().unwrap(), "-C", oci_dir.to_str().unwrap()],
    );
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

/// What a tree comparison looks at: (kind, mode, size, link target, content).
type Entry = (char, u32, u64, Option<String>, Option<Vec<u8>>);

/// name → entry for every entry under `root`.
fn tree(root: &Path) -> BTreeMap<String, Entry> {
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

    let pulled = images::resolve_for_build(&store, &registry, &r, &amd64(), false)
        .await
        .unwrap();
    assert_eq!(pulled.manifest_digest.to_string(), layout.manifest_digest);
    assert_eq!(pulled.layers.len(), 1);
    assert_eq!(pulled.diff_ids[0].to_string(), layout.diff_id);

    // The registry is gone: the stored image is still found, a forced pull fails naming the reference.
    drop(reg);
    let lease = store.create_lease().unwrap();
    let leased = store.with_lease(&lease);
    let local = images::resolve_for_build(&leased, &registry, &r, &amd64(), false)
        .await
        .unwrap();
    assert_eq!(local, pulled);
    let leases = store.list_leases().unwrap();
    assert_eq!(
        leases[0].1.resources.len(),
        3,
        "manifest, config and layer are leased"
    );
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
                vec![
                    config_clone(&config),
                    (layout.layer_digest.clone(), Response::ok(corrupt)),
                ],
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
            assert_eq!(
                fake.count("GET /v2/img/blobs/sha256:"),
                1,
                "only the config was fetched"
            );
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

/// docker before 25 saved `<id>/layer.tar` per layer, linked a repeated layer to its first copy, and kept v1
/// metadata (`<id>/json`, `<id>/VERSION`) beside it; `docker load` also takes the archive gzipped.
#[test]
fn legacy_docker_archives_with_linked_layers_load_and_unpack() {
    use std::io::Read;
    let tmp = tempfile::tempdir().unwrap();
    let layout = busybox_oci_layout(&tmp.path().join("layout"), "amd64").unwrap();
    let mut layer = Vec::new();
    flate2::read::GzDecoder::new(&std::fs::read(layout.blob_path(&layout.layer_digest)).unwrap()[..])
        .read_to_end(&mut layer)
        .unwrap();
    let mut config: serde_json::Value = serde_json::from_slice(&layout.config).unwrap();
    config["rootfs"]["diff_ids"] = serde_json::json!([layout.diff_id, layout.diff_id]);
    let config = serde_json::to_vec(&config).unwrap();
    let config_hex = kiln_testutil::sha256_digest(&config)[7..].to_owned();
    let manifest = serde_json::json!([{
        "Config": format!("{config_hex}.json"),
        "RepoTags": ["legacy:1"],
        "Layers": ["aaa/layer.tar", "bbb/layer.tar"],
    }]);

    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    let mut add = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        builder.append_data(&mut h, path, data).unwrap();
    };
    add("aaa/VERSION", b"1.0");
    add("aaa/json", b"{}");
    add("aaa/layer.tar", &layer);
    add(&format!("{config_hex}.json"), &config);
    add("manifest.json", manifest.to_string().as_bytes());
    add("repositories", br#"{"legacy":{"1":"bbb"}}"#);
    let mut link = tar::Header::new_ustar();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_size(0);
    builder
        .append_link(&mut link, "bbb/layer.tar", "../aaa/layer.tar")
        .unwrap();
    let archive = tmp.path().join("legacy.tar.gz");
    std::fs::write(&archive, builder.into_inner().unwrap().finish().unwrap()).unwrap();

    let store = Store::open(&tmp.path().join("root")).unwrap();
    let loaded = images::load_archive(&store, &archive).unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].names, ["docker.io/library/legacy:1"]);
    assert_eq!(loaded[0].id.to_string(), format!("sha256:{config_hex}"));
    let image = images::local_image(&store, "legacy:1", &amd64())
        .unwrap()
        .unwrap();
    assert_eq!(image.layers.len(), 2);
    assert_eq!(image.layers[0], image.layers[1]);
    assert_eq!(
        image.layers[0].0.to_string(),
        layout.diff_id,
        "kept uncompressed, as archived"
    );
    let snapshots = images::materialize(&store, &image).unwrap();
    assert!(store.snapshot_path(&snapshots[0]).join("bin/busybox").is_file());
    // The same image by ID, as a build names an image loaded without a name.
    let by_id = images::local_image(&store, &loaded[0].id.to_string(), &amd64()).unwrap();
    assert_eq!(by_id.map(|i| i.config_digest), Some(loaded[0].id));
    assert!(store.check().unwrap().is_ok());

    // A layer that is not what the config says is refused, and nothing is named.
    let other = tempfile::tempdir().unwrap();
    let store = Store::open(&other.path().join("root")).unwrap();
    let mut bad = config.clone();
    let pos = bad.windows(7).position(|w| w == b"sha256:").unwrap() + 7;
    bad[pos] = if bad[pos] == b'0' { b'1' } else { b'0' };
    let manifest = serde_json::json!([{"Config": "c.json", "RepoTags": ["bad:1"], "Layers": ["aaa/layer.tar", "aaa/layer.tar"]}]);
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data) in [
        ("aaa/layer.tar", &layer[..]),
        ("c.json", &bad[..]),
        ("manifest.json", manifest.to_string().as_bytes()),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        builder.append_data(&mut h, path, data).unwrap();
    }
    let archive = other.path().join("bad.tar");
    std::fs::write(&archive, builder.into_inner().unwrap()).unwrap();
    let err = images::load_archive(&store, &archive).unwrap_err().to_string();
    assert!(
        err.contains("bad.tar") && err.contains("the config says"),
        "{err}"
    );
    assert_untouched(&store);
}

/// An index of which only some platforms were pulled goes out as an index of those platforms: a registry
/// or archive would refuse one that refers to content it does not get.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partly_pulled_index_is_pushed_and_saved_with_the_platforms_present() {
    let reg = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let index =
        kiln_testutil::busybox_index_layout(&tmp.path().join("index"), &["amd64", "arm64", "arm"]).unwrap();
    let name = format!("{}/three:latest", reg.addr());
    run(
        "skopeo",
        &[
            "copy",
            "-q",
            "--all",
            "--dest-tls-verify=false",
            &index.skopeo_ref(),
            &format!("docker://{name}"),
        ],
    );
    let store = Store::open(&tmp.path().join("root")).unwrap();
    let registry = client(tmp.path());
    let two: Vec<Platform> = vec!["linux/arm64".parse().unwrap(), "linux/arm/v7".parse().unwrap()];
    let pulled = images::pull(&store, &registry, &reference(&name), &two, |_| {})
        .await
        .unwrap();
    assert_eq!(pulled.digest.to_string(), index.index_digest);
    assert_eq!(pulled.manifests.len(), 2);

    let target = reference(&format!("{}/two:1", reg.addr()));
    let pushed = kiln_exporter::push(&store, &registry, &name, &target, |_| {})
        .await
        .unwrap();
    assert_ne!(pushed.to_string(), index.index_digest);
    let raw: serde_json::Value = serde_json::from_str(&run(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{target}"),
        ],
    ))
    .unwrap();
    let digests: Vec<&str> = raw["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap())
        .collect();
    assert_eq!(
        digests,
        [
            index.images[1].manifest_digest.as_str(),
            index.images[2].manifest_digest.as_str()
        ]
    );

    let archive = tmp.path().join("two.tar");
    kiln_exporter::save(
        &store,
        std::slice::from_ref(&name),
        std::fs::File::create(&archive).unwrap(),
        ArchiveFormat::Oci,
    )
    .unwrap();
    let raw: serde_json::Value = serde_json::from_str(&run(
        "skopeo",
        &["inspect", "--raw", &format!("oci-archive:{}", archive.display())],
    ))
    .unwrap();
    assert_eq!(raw["manifests"].as_array().unwrap().len(), 2);
    // Docker archives hold one platform; on an amd64 host neither is the host's.
    if Platform::host() == amd64() {
        let err = kiln_exporter::save(&store, &[name], std::io::sink(), ArchiveFormat::Docker)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--format oci") && err.contains("linux/arm64"),
            "{err}"
        );
    }
}
