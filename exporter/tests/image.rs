//! Images, indexes and tags built from snapshots, checked by real clients: the store's output is written as an
//! OCI layout and read by `skopeo inspect` and `umoci unpack`.

mod build_support;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use build_support::{
    Env, busybox_base, dir, dir_transport, file, image_layout, index_layout, is_canonical_json, run,
    set_xattr, snapshot, whiteout,
};
use kiln_cache::{Digest, SnapshotId, Store};
use kiln_exporter::export::Compression;
use kiln_exporter::image::{BaseImage, BuiltImage, ImageOptions, build_image, build_index, tag};
use kiln_llb::Platform;
use kiln_llb::image::{HealthConfig, History, ImageConfig, ImageInfo};
use serde_json::{Value, json};

const EPOCH: u64 = 1_700_000_000;
const CREATED: &str = "2023-11-14T22:13:20Z";

fn base(env: &Env) -> BaseImage {
    busybox_base(env)
}

/// Three build steps on the base: add files and delete a base file; change nothing; replace a directory.
/// `newer` is when "the steps ran" (mtimes of what they wrote).
fn steps(store: &Store, newer: i64) -> Vec<SnapshotId> {
    let one = snapshot(store, None, |root| {
        dir(root, "app", 0o755, newer);
        file(root, "app/hello.txt", b"hi\n", 0o644, newer);
        file(root, "data/old.txt", b"old", 0o644, newer);
        // The whiteout's parent is a copied-up directory, as overlayfs leaves it.
        let etc = dir(root, "etc", 0o755, newer);
        whiteout(&etc, "group", newer);
        dir(root, "etc", 0o755, newer);
        dir(root, "data", 0o755, newer);
        dir(root, "app", 0o755, newer);
    });
    let two = snapshot(store, Some(&one), |_| {});
    let three = snapshot(store, Some(&two), |root| {
        file(root, "app/run.sh", b"#!/bin/sh\necho run\n", 0o755, newer);
        file(root, "data/new.txt", b"new", 0o644, newer);
        let data = dir(root, "data", 0o755, newer);
        set_xattr(&data, "trusted.overlay.opaque", b"y");
        dir(root, "app", 0o755, newer);
    });
    vec![one, two, three]
}

fn info() -> ImageInfo {
    let history = |created_by: &str, empty_layer| History {
        created_by: created_by.into(),
        comment: "buildkit.dockerfile.v0".into(),
        empty_layer,
    };
    ImageInfo {
        config: ImageConfig {
            user: "nobody".into(),
            exposed_ports: BTreeSet::from(["80/tcp".to_owned()]),
            env: vec![
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                "GREETING=hi".into(),
            ],
            entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
            cmd: Some(vec!["echo hi".into()]),
            volumes: BTreeSet::from(["/data".to_owned()]),
            working_dir: "/app".into(),
            labels: BTreeMap::from([("a".to_owned(), "1".to_owned())]),
            stop_signal: Some("SIGTERM".into()),
            healthcheck: Some(HealthConfig {
                test: vec!["CMD-SHELL".into(), "true".into()],
                interval: 30_000_000_000,
                retries: 3,
                ..HealthConfig::default()
            }),
            on_build: vec!["RUN echo child".into()],
            shell: Some(vec!["/bin/sh".into(), "-c".into()]),
            args_escaped: true,
        },
        author: Some("Jane <jane@example.com>".into()),
        history: vec![
            history("ENV GREETING=hi", true),
            history("COPY . /app # buildkit", false),
            history("RUN true # buildkit", false),
            history("RUN make # buildkit", false),
        ],
    }
}

fn opts() -> ImageOptions {
    ImageOptions {
        source_date_epoch: Some(EPOCH),
        labels: BTreeMap::from([("b".to_owned(), "2".to_owned())]),
        annotations: BTreeMap::from([(
            "org.opencontainers.image.title".to_owned(),
            "kiln test".to_owned(),
        )]),
        ..ImageOptions::default()
    }
}

fn amd64() -> Platform {
    Platform::parse("linux/amd64").expect("platform")
}

fn build(env: &Env, newer: i64, opts: &ImageOptions) -> BuiltImage {
    let base = base(env);
    let snapshots = steps(&env.store, newer);
    build_image(&env.store, &base, &snapshots, &info(), &amd64(), opts).expect("build image")
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("json")
}

fn umoci_unpack(layout: &Path, tag: &str, bundle: &Path) {
    let image = format!("{}:{tag}", layout.display());
    run(
        "umoci",
        &["unpack", "--image", &image, &bundle.display().to_string()],
    );
}

#[test]
fn a_built_image_is_read_by_skopeo_and_unpacked_by_umoci() {
    let env = Env::new();
    let built = build(&env, 2_000_000_000, &opts());
    assert!(
        is_canonical_json(&built.config),
        "{}",
        String::from_utf8_lossy(&built.config)
    );
    assert!(is_canonical_json(&built.manifest));
    assert_eq!(Digest::of(&built.config), built.config_digest);
    assert_eq!(Digest::of(&built.manifest), built.manifest_digest);
    assert_eq!(built.media_type, "application/vnd.oci.image.manifest.v1+json");

    let config = json_of(&built.config);
    // The test base image is deterministic: a second copy has the config the store holds.
    let base_config = json_of(
        &kiln_testutil::busybox_oci_layout(&env.path("again"), "amd64")
            .expect("layout")
            .config,
    );
    assert_eq!(config["created"], CREATED);
    assert_eq!(
        (config["architecture"].as_str(), config["os"].as_str()),
        (Some("amd64"), Some("linux"))
    );
    assert!(config.get("variant").is_none());
    assert_eq!(
        config["config"],
        json!({
            "User": "nobody",
            "ExposedPorts": {"80/tcp": {}},
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "GREETING=hi"],
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["echo hi"],
            "Volumes": {"/data": {}},
            "WorkingDir": "/app",
            "Labels": {"a": "1", "b": "2"},
            "StopSignal": "SIGTERM",
            "Healthcheck": {"Test": ["CMD-SHELL", "true"], "Interval": 30_000_000_000u64, "Retries": 3},
            "OnBuild": ["RUN echo child"],
            "Shell": ["/bin/sh", "-c"],
            "ArgsEscaped": true,
        })
    );
    assert_eq!(config["author"], "Jane <jane@example.com>");
    // The base's layer and history first, as they were; the RUN that changed nothing keeps an empty-tar
    // layer, as BuildKit writes it.
    let diff_ids = config["rootfs"]["diff_ids"].as_array().expect("diff_ids");
    assert_eq!(config["rootfs"]["type"], "layers");
    assert_eq!(diff_ids.len(), 4);
    assert_eq!(
        diff_ids[2],
        json!(kiln_exporter::export::empty_tar_diff_id().to_string())
    );
    assert_eq!(diff_ids[0], base_config["rootfs"]["diff_ids"][0]);
    let history = config["history"].as_array().expect("history");
    assert_eq!(history[0], base_config["history"][0]);
    assert_eq!(
        history[1..],
        [
            json!({"created": CREATED, "created_by": "ENV GREETING=hi", "comment": "buildkit.dockerfile.v0", "empty_layer": true}),
            json!({"created": CREATED, "created_by": "COPY . /app # buildkit", "comment": "buildkit.dockerfile.v0"}),
            json!({"created": CREATED, "created_by": "RUN true # buildkit", "comment": "buildkit.dockerfile.v0"}),
            json!({"created": CREATED, "created_by": "RUN make # buildkit", "comment": "buildkit.dockerfile.v0"}),
        ]
    );
    let manifest = json_of(&built.manifest);
    assert_eq!(
        manifest["annotations"]["org.opencontainers.image.title"],
        "kiln test"
    );
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    let layer_types: Vec<&str> = built.layers.iter().map(|l| l.media_type.as_str()).collect();
    assert_eq!(layer_types, ["application/vnd.oci.image.layer.v1.tar+gzip"; 4]);

    let layout = env.path("layout");
    image_layout(&env.store, &layout, &built, "test");
    let reference = format!("oci:{}:test", layout.display());
    let inspect = json_of(run("skopeo", &["inspect", &reference]).as_bytes());
    assert_eq!(inspect["Digest"], built.manifest_digest.to_string());
    assert_eq!(inspect["Architecture"], "amd64");
    assert_eq!(inspect["Layers"].as_array().map(Vec::len), Some(4));
    assert_eq!(inspect["Labels"], json!({"a": "1", "b": "2"}));
    let skopeo_config = json_of(run("skopeo", &["inspect", "--config", &reference]).as_bytes());
    assert_eq!(skopeo_config["config"]["Cmd"], json!(["echo hi"]));

    let bundle = env.path("bundle");
    umoci_unpack(&layout, "test", &bundle);
    let rootfs = bundle.join("rootfs");
    assert!(rootfs.join("bin/busybox").is_file(), "the base layer is there");
    assert!(rootfs.join("etc/passwd").is_file());
    assert!(
        !rootfs.join("etc/group").exists(),
        "the whiteout deleted a base file"
    );
    assert_eq!(
        std::fs::read(rootfs.join("app/hello.txt")).expect("read"),
        b"hi\n"
    );
    let run_sh = std::fs::metadata(rootfs.join("app/run.sh")).expect("stat");
    assert_eq!(run_sh.permissions().mode() & 0o7777, 0o755);
    assert!(rootfs.join("data/new.txt").is_file());
    assert!(
        !rootfs.join("data/old.txt").exists(),
        "the opaque directory hid the earlier layer's file"
    );
    let runtime = json_of(&std::fs::read(bundle.join("config.json")).expect("config.json"));
    assert_eq!(runtime["process"]["args"], json!(["/bin/sh", "-c", "echo hi"]));
    assert_eq!(runtime["process"]["cwd"], "/app");
    assert_eq!(
        runtime["process"]["user"]["uid"], 65534,
        "USER nobody resolved in the image's passwd"
    );
    let env_vars = runtime["process"]["env"].as_array().expect("env");
    assert!(env_vars.contains(&json!("GREETING=hi")), "{env_vars:?}");
}

#[test]
fn the_same_build_in_two_stores_at_different_times_has_one_digest() {
    let (one, two) = (Env::new(), Env::new());
    let a = build(&one, 2_000_000_000, &opts());
    let b = build(&two, 2_100_000_000, &opts());
    assert_eq!(a.config, b.config);
    assert_eq!(a.manifest_digest, b.manifest_digest);
    // Again in the same store: everything is found, nothing is written.
    let blobs = one.blob_count();
    let again = build_image(
        &one.store,
        &base(&one),
        &steps(&one.store, 2_200_000_000),
        &info(),
        &amd64(),
        &opts(),
    )
    .expect("rebuild");
    assert_eq!(again.manifest_digest, a.manifest_digest);
    assert_eq!(one.blob_count(), blobs);
}

#[test]
fn docker_media_types_when_asked_and_oci_when_zstd_needs_them() {
    let env = Env::new();
    let docker = ImageOptions {
        oci_mediatypes: false,
        ..ImageOptions {
            annotations: BTreeMap::new(),
            ..opts()
        }
    };
    let built = build(&env, 2_000_000_000, &docker);
    assert_eq!(
        built.media_type,
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    let manifest = json_of(&built.manifest);
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.docker.container.image.v1+json"
    );
    assert!(manifest.get("annotations").is_none());
    let layer_types: Vec<&str> = built.layers.iter().map(|l| l.media_type.as_str()).collect();
    // The base's OCI gzip layer is the same blob under docker's name for it.
    assert_eq!(
        layer_types,
        ["application/vnd.docker.image.rootfs.diff.tar.gzip"; 4]
    );
    let out = env.path("docker-dir");
    dir_transport(&env.store, &out, &built);
    let reference = format!("dir:{}", out.display());
    let inspect = json_of(run("skopeo", &["inspect", &reference]).as_bytes());
    assert_eq!(inspect["Digest"], built.manifest_digest.to_string());
    assert_eq!(inspect["Layers"].as_array().map(Vec::len), Some(4));
    assert_eq!(inspect["Labels"], json!({"a": "1", "b": "2"}));
    // skopeo converts it to an OCI image, which umoci then unpacks: the docker manifest's content is whole.
    let converted = env.path("converted");
    let target = format!("oci:{}:docker", converted.display());
    run("skopeo", &["copy", "--format", "oci", &reference, &target]);
    let bundle = env.path("docker-bundle");
    umoci_unpack(&converted, "docker", &bundle);
    assert_eq!(
        std::fs::read(bundle.join("rootfs/app/hello.txt")).expect("read"),
        b"hi\n"
    );

    let zstd = ImageOptions {
        compression: Compression::Zstd,
        ..docker
    };
    let built = build(&env, 2_000_000_000, &zstd);
    assert_eq!(built.media_type, "application/vnd.oci.image.manifest.v1+json");
    let layer_types: Vec<&str> = built.layers.iter().map(|l| l.media_type.as_str()).collect();
    assert_eq!(
        layer_types,
        [
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.oci.image.layer.v1.tar+zstd",
            "application/vnd.oci.image.layer.v1.tar+zstd",
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ]
    );
}

#[test]
fn force_compression_recompresses_base_layers_once() {
    let env = Env::new();
    let forced = ImageOptions {
        compression: Compression::Zstd,
        force_compression: true,
        ..opts()
    };
    let built = build(&env, 2_000_000_000, &forced);
    let base = base(&env);
    assert_ne!(built.layers[0].digest, base.layers[0].digest);
    assert_eq!(
        built.layers[0].media_type,
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    let config = json_of(&built.config);
    assert_eq!(
        config["rootfs"]["diff_ids"][0],
        base.layers[0].diff_id.to_string()
    );
    let layout = env.path("zstd-layout");
    image_layout(&env.store, &layout, &built, "zstd");
    let inspect = json_of(run("skopeo", &["inspect", &format!("oci:{}:zstd", layout.display())]).as_bytes());
    assert_eq!(inspect["Layers"][0], built.layers[0].digest.to_string());
    // umoci 0.4 predates zstd layers; the store's unpacker reads the converted base layer instead.
    let other = Env::new();
    let blob = std::fs::read(env.store.blob_path(&built.layers[0].digest)).expect("read");
    let copy = other.store.put_bytes(&blob).expect("put");
    let unpacked = other
        .store
        .unpack_layer(&copy, &built.layers[0].media_type)
        .expect("unpack");
    assert!(other.store.snapshot_path(&unpacked).join("bin/busybox").is_file());
    let record = other.store.snapshot(&unpacked).expect("db").expect("record");
    assert_eq!(record.diff_id, Some(base.layers[0].diff_id));

    let blobs = env.blob_count();
    let again = build_image(
        &env.store,
        &base,
        &steps(&env.store, 2_000_000_000),
        &info(),
        &amd64(),
        &forced,
    )
    .expect("rebuild");
    assert_eq!(again.manifest_digest, built.manifest_digest);
    assert_eq!(env.blob_count(), blobs, "the converted base layer was reused");
}

#[test]
fn an_index_over_platforms_is_read_per_platform() {
    let env = Env::new();
    let base = base(&env);
    let snapshots = steps(&env.store, 2_000_000_000);
    let images: Vec<BuiltImage> = ["linux/amd64", "linux/arm64", "linux/arm/v7"]
        .iter()
        .map(|p| {
            let platform = Platform::parse(p).expect("platform");
            build_image(&env.store, &base, &snapshots, &info(), &platform, &opts()).expect("build")
        })
        .collect();
    let annotations = BTreeMap::from([(
        "org.opencontainers.image.description".to_owned(),
        "multi".to_owned(),
    )]);
    let index = build_index(&env.store, &images, true, &annotations).expect("index");
    assert!(is_canonical_json(&index.index));
    assert_eq!(index.media_type, "application/vnd.oci.image.index.v1+json");
    let parsed = json_of(&index.index);
    assert_eq!(
        parsed["manifests"][2]["platform"],
        json!({"architecture": "arm", "os": "linux", "variant": "v7"})
    );
    assert_eq!(
        parsed["annotations"]["org.opencontainers.image.description"],
        "multi"
    );
    let arm = json_of(&images[2].config);
    assert_eq!(arm["variant"], "v7");

    let layout = env.path("index-layout");
    index_layout(&env.store, &layout, &index, &images, "multi");
    let reference = format!("oci:{}:multi", layout.display());
    let raw = run("skopeo", &["inspect", "--raw", &reference]);
    assert_eq!(Digest::of(raw.as_bytes()), index.digest);
    for (arch, image) in [("amd64", &images[0]), ("arm64", &images[1])] {
        let inspect = json_of(run("skopeo", &["--override-arch", arch, "inspect", &reference]).as_bytes());
        assert_eq!(inspect["Architecture"], arch);
        // skopeo names the digest of what the reference points at (the index); the config is the platform's.
        assert_eq!(inspect["Digest"], index.digest.to_string());
        let config = run(
            "skopeo",
            &[
                "--override-arch",
                arch,
                "inspect",
                "--config",
                "--raw",
                &reference,
            ],
        );
        assert_eq!(config.as_bytes(), image.config);
    }

    let err = build_index(
        &env.store,
        &[images[0].clone(), images[0].clone()],
        true,
        &BTreeMap::new(),
    )
    .expect_err("a platform twice");
    assert!(err.to_string().contains("linux/amd64"), "{err}");
    // Docker's manifest list when nothing needs OCI types.
    let docker = ImageOptions {
        oci_mediatypes: false,
        annotations: BTreeMap::new(),
        ..opts()
    };
    let docker_images: Vec<BuiltImage> = [amd64(), Platform::parse("linux/arm64").expect("platform")]
        .iter()
        .map(|p| build_image(&env.store, &base, &snapshots, &info(), p, &docker).expect("build"))
        .collect();
    let list = build_index(&env.store, &docker_images, false, &BTreeMap::new()).expect("list");
    assert_eq!(
        list.media_type,
        "application/vnd.docker.distribution.manifest.list.v2+json"
    );
}

#[test]
fn tags_are_docker_names_and_keep_the_image() {
    let env = Env::new();
    let built = build(&env, 2_000_000_000, &opts());
    let name = tag(&env.store, "app:dev", (&built).into()).expect("tag");
    assert_eq!(name, "docker.io/library/app:dev");
    let record = env.store.get_image(&name).expect("db").expect("record");
    assert_eq!(record.digest, built.manifest_digest);
    assert_eq!(record.media_type, built.media_type);
    assert_eq!(record.platforms.len(), 1);
    let parts = kiln_image::stored::name_parts(&name).expect("parts");
    assert_eq!(
        (parts.repository.as_str(), parts.tag.as_deref()),
        ("app", Some("dev"))
    );
    assert_eq!(
        tag(&env.store, "localhost:5000/x", (&built).into()).expect("tag"),
        "localhost:5000/x:latest"
    );
    let pinned = format!("app@{}", built.manifest_digest);
    assert!(tag(&env.store, &pinned, (&built).into()).is_err());
    assert!(tag(&env.store, "App:dev", (&built).into()).is_err());

    let index = build_index(&env.store, std::slice::from_ref(&built), true, &BTreeMap::new()).expect("index");
    tag(&env.store, "multi", (&index).into()).expect("tag index");

    // The tags keep everything the images need; what only the build made goes.
    env.store.prune(false, None).expect("prune");
    let report = env.store.check().expect("check");
    assert!(report.is_ok() && report.warnings.is_empty(), "{report:?}");
    for layer in &built.layers {
        assert!(
            env.store.has_blob(&layer.digest).expect("has"),
            "{}",
            layer.digest
        );
    }
    let layout = env.path("tagged");
    image_layout(&env.store, &layout, &built, "t");
    run("skopeo", &["inspect", &format!("oci:{}:t", layout.display())]);
}

#[test]
fn a_leased_build_survives_a_concurrent_prune_until_tagged() {
    let env = Env::new();
    let lease = env.store.create_lease().expect("lease");
    let leased = env.store.with_lease(&lease);
    // The base comes in unleased, as a pulled image whose tag was removed meanwhile would be.
    let base = base(&env);
    let snapshots = steps(&leased, 2_000_000_000);
    let built = build_image(&leased, &base, &snapshots, &info(), &amd64(), &opts()).expect("build");
    env.store.prune(false, None).expect("prune");
    let mut needed = vec![built.manifest_digest, built.config_digest];
    needed.extend(built.layers.iter().map(|l| l.digest));
    for digest in needed {
        assert!(env.store.has_blob(&digest).expect("has"), "{digest} was pruned");
    }
    tag(&env.store, "kept", (&built).into()).expect("tag");
    env.store.release_lease(&lease).expect("release");
    env.store.prune(false, None).expect("prune");
    let report = env.store.check().expect("check");
    assert!(report.is_ok() && report.warnings.is_empty(), "{report:?}");
}
