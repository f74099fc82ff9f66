//! Layer compression is lazy (issue 5): `kiln build` keeps the build's own layers uncompressed in the store,
//! and whatever ships the image compresses them, once per (diff_id, compression, level): a push (checked
//! by skopeo and umoci against a real registry), an OCI output. An explicit `compression=` still
//! compresses at build time.

mod common;

use common::*;
use kiln_cache::{Compression, Digest, Store};
use std::path::Path;
use std::process::Command;

const OCI_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const OCI_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const OCI_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const DOCKER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
const DOCKER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

fn run_tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", stderr(&out));
    stdout(&out)
}

fn skopeo(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&run_tool("skopeo", args)).expect("skopeo prints JSON")
}

/// The manifest (or index) a registry serves for `reference`.
fn registry_raw(reference: &str) -> serde_json::Value {
    skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{reference}"),
    ])
}

fn layer_types(manifest: &serde_json::Value) -> Vec<String> {
    manifest["layers"]
        .as_array()
        .expect("a manifest with layers")
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn inspect(env: &Env, image: &str) -> serde_json::Value {
    let out = env.kiln(&["inspect", image]);
    assert!(out.status.success(), "inspect {image}: {}", stderr(&out));
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).expect("inspect prints JSON");
    all[0].clone()
}

/// The last diff_id of the image: the build's own layer in these tests.
fn top_diff_id(inspected: &serde_json::Value) -> Digest {
    inspected["RootFS"]["Layers"]
        .as_array()
        .and_then(|l| l.last())
        .and_then(|d| d.as_str())
        .expect("diff_ids")
        .parse()
        .expect("a digest")
}

/// The compressions the store holds blobs of `diff_id` in.
fn stored_compressions(env: &Env, diff_id: &Digest) -> Vec<Option<Compression>> {
    let store = Store::open(&env.root).expect("open the store");
    let mut out: Vec<_> = store
        .blobs_for_diff_id(diff_id)
        .expect("the diff_id index")
        .into_iter()
        .filter(|(digest, _)| store.has_blob(digest).unwrap_or(false))
        .map(|(_, meta)| meta.compression)
        .collect();
    out.sort_by_key(|c| format!("{c:?}"));
    out
}

/// Runs kiln with the exporter's debug log on; returns the output and how many layers it compressed.
fn kiln_counting(env: &Env, args: &[&str]) -> (std::process::Output, usize) {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("--root")
        .arg(&env.root)
        .args(args)
        .env("KILN_LOG", "kiln_exporter=debug")
        .output()
        .expect("kiln runs");
    assert!(out.status.success(), "kiln {args:?}: {}", stderr(&out));
    let compressed = stderr(&out).matches("compressed a layer").count();
    (out, compressed)
}

fn blob_count(env: &Env) -> usize {
    std::fs::read_dir(env.root.join("blobs/sha256"))
        .expect("the blob directory")
        .count()
}

/// Copies `reference` from the registry to an OCI layout and unpacks it with umoci; returns the rootfs.
fn pull_and_unpack(env: &Env, reference: &str, extra: &[&str], name: &str) -> std::path::PathBuf {
    let layout = env.work.join(format!("{name}-layout"));
    let mut args = extra.to_vec();
    let src = format!("docker://{reference}");
    let dest = format!("oci:{}:{name}", layout.display());
    args.extend(["copy", "-q", "--src-tls-verify=false", &src, &dest]);
    run_tool("skopeo", &args);
    let bundle = env.work.join(format!("{name}-bundle"));
    let image = format!("{}:{name}", layout.display());
    run_tool(
        "umoci",
        &["unpack", "--image", &image, bundle.to_str().unwrap_or_default()],
    );
    bundle.join("rootfs")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// 256 KiB that gzip shrinks to almost nothing: the stored and the pushed layer sizes tell them apart.
fn big_file() -> String {
    "kiln compresses lazily\n".repeat(256 * 1024 / 23)
}

#[test]
#[cfg_attr(
    kiln_unprivileged,
    ignore = "needs root: builds mount overlayfs and run RUN steps in namespaces"
)]
fn build_keeps_layers_uncompressed_and_push_compresses_them_once() {
    let env = Env::new();
    let big = big_file();
    let ctx = env.context(
        "lazy",
        &[
            ("Dockerfile", "FROM busybox\nCOPY hello.txt big.txt /\n"),
            ("hello.txt", "hello from kiln\n"),
            ("big.txt", &big),
        ],
    );
    let (_, compressed) = kiln_counting(&env, &["build", "-t", "lazy", ctx.to_str().unwrap_or_default()]);
    assert_eq!(compressed, 0, "a build into the store compresses nothing");

    // In the store: the base layer as it came (gzip), the build's own uncompressed, and no gzip of it.
    let local = inspect(&env, "lazy");
    assert_eq!(layer_types(&local["Manifest"]), [OCI_GZIP, OCI_TAR], "{local:#}");
    let own = top_diff_id(&local);
    assert_eq!(
        local["Manifest"]["layers"][1]["digest"],
        own.to_string(),
        "an uncompressed blob is its diff_id"
    );
    assert_eq!(stored_compressions(&env, &own), [Some(Compression::None)]);
    // `kiln images` and `kiln du` count what the store holds: the uncompressed layer.
    let size = local["Size"].as_u64().expect("Size");
    assert!(size > big.len() as u64, "size {size}");
    let images = stdout(&env.kiln(&["images"]));
    assert!(images.lines().any(|l| l.starts_with("lazy ")), "{images}");
    let du = env.kiln(&["du"]);
    assert!(du.status.success(), "{}", stderr(&du));

    // A push compresses the layer (gzip) and sends a manifest that names it; the config does not change.
    let registry = kiln_testutil::Registry::start();
    let first = format!("{}/lazy:1", registry.addr());
    assert!(env.kiln(&["tag", "lazy", &first]).status.success());
    let blobs_before = blob_count(&env);
    let (out, compressed) = kiln_counting(&env, &["push", &first]);
    assert_eq!(compressed, 1, "{}", stderr(&out));
    let pushed = registry_raw(&first);
    assert_eq!(layer_types(&pushed), [OCI_GZIP, OCI_GZIP], "{pushed:#}");
    assert_eq!(pushed["config"]["digest"], local["Id"], "{pushed:#}");
    assert_eq!(pushed["layers"][0], local["Manifest"]["layers"][0]);
    assert!(
        pushed["layers"][1]["size"].as_u64().expect("size") < big.len() as u64 / 10,
        "{pushed:#}"
    );
    let digest = skopeo(&["inspect", "--tls-verify=false", &format!("docker://{first}")])["Digest"]
        .as_str()
        .expect("Digest")
        .to_owned();
    assert_ne!(digest, local["Descriptor"]["digest"].as_str().expect("digest"));
    assert!(
        stdout(&out).contains(&format!("1: digest: {digest} ")),
        "kiln push prints the pushed digest:\n{}",
        stdout(&out)
    );
    // The gzip blob and the rewritten manifest are stored: two blobs more.
    assert_eq!(blob_count(&env), blobs_before + 2);
    assert_eq!(
        stored_compressions(&env, &own),
        [Some(Compression::Gzip), Some(Compression::None)]
    );
    // The local image is what it was.
    assert_eq!(
        layer_types(&inspect(&env, "lazy")["Manifest"]),
        [OCI_GZIP, OCI_TAR]
    );

    // Real clients pull it back.
    let rootfs = pull_and_unpack(&env, &first, &[], "first");
    assert_eq!(read(&rootfs.join("hello.txt")), "hello from kiln\n");
    assert_eq!(read(&rootfs.join("big.txt")), big);
    assert!(rootfs.join("bin/busybox").is_file());

    // Pushing again under another tag compresses nothing and writes nothing: the registry has every blob.
    let second = format!("{}/lazy:2", registry.addr());
    assert!(env.kiln(&["tag", "lazy", &second]).status.success());
    let (out, compressed) = kiln_counting(&env, &["push", &second]);
    assert_eq!(compressed, 0, "{}", stderr(&out));
    assert_eq!(blob_count(&env), blobs_before + 2);
    let text = stdout(&out);
    assert_eq!(text.matches("Layer already exists").count(), 3, "{text}");
    assert!(!text.contains(": Pushed"), "{text}");
    assert!(text.contains(&format!("2: digest: {digest} ")), "{text}");
    assert_eq!(registry_raw(&second), pushed);
}

#[test]
#[cfg_attr(
    kiln_unprivileged,
    ignore = "needs root: builds mount overlayfs and run RUN steps in namespaces"
)]
fn docker_media_types_stay_docker_when_pushed() {
    let env = Env::new();
    let ctx = env.context(
        "docker-types",
        &[
            ("Dockerfile", "FROM busybox\nCOPY hello.txt /\n"),
            ("hello.txt", "docker types\n"),
        ],
    );
    env.build_ok(&ctx, &["-o", "type=image,name=dt,oci-mediatypes=false"]);
    let local = inspect(&env, "dt");
    assert_eq!(
        local["Manifest"]["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(layer_types(&local["Manifest"]), [DOCKER_GZIP, DOCKER_TAR]);

    let registry = kiln_testutil::Registry::start();
    let target = format!("{}/dt:1", registry.addr());
    assert!(env.kiln(&["tag", "dt", &target]).status.success());
    let out = env.kiln(&["push", &target]);
    assert!(out.status.success(), "push: {}", stderr(&out));
    let pushed = registry_raw(&target);
    assert_eq!(
        pushed["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(layer_types(&pushed), [DOCKER_GZIP, DOCKER_GZIP]);
    let rootfs = pull_and_unpack(&env, &target, &[], "dt");
    assert_eq!(read(&rootfs.join("hello.txt")), "docker types\n");
}

#[test]
#[cfg_attr(
    kiln_unprivileged,
    ignore = "needs root: builds mount overlayfs and run RUN steps in namespaces"
)]
fn a_multi_platform_image_is_pushed_compressed_and_pulled_per_platform() {
    let env = Env::multiarch();
    let ctx = env.context(
        "multi-lazy",
        &[
            (
                "Dockerfile",
                "FROM busybox\nARG TARGETARCH\nCOPY $TARGETARCH.txt /arch.txt\nCOPY shared.txt /\n",
            ),
            ("amd64.txt", "amd64\n"),
            ("arm64.txt", "arm64\n"),
            ("shared.txt", "the same on every platform\n"),
        ],
    );
    env.build_ok(&ctx, &["--platform", "linux/amd64,linux/arm64", "-t", "multi"]);
    let local = inspect(&env, "multi");
    let local_index = local["Index"].clone();
    assert_eq!(local_index["manifests"].as_array().map(Vec::len), Some(2));

    let registry = kiln_testutil::Registry::start();
    let target = format!("{}/multi:1", registry.addr());
    assert!(env.kiln(&["tag", "multi", &target]).status.success());
    let blobs_before = blob_count(&env);
    let (out, compressed) = kiln_counting(&env, &["push", &target]);

    let index = registry_raw(&target);
    assert_eq!(index["mediaType"], "application/vnd.oci.image.index.v1+json");
    let children = index["manifests"].as_array().expect("manifests").clone();
    assert_eq!(children.len(), 2, "{index:#}");
    for (child, old) in children
        .iter()
        .zip(local_index["manifests"].as_array().expect("local"))
    {
        assert_eq!(child["platform"], old["platform"]);
        assert_ne!(
            child["digest"], old["digest"],
            "the child manifests are rewritten"
        );
        let digest = child["digest"].as_str().expect("digest");
        let manifest = registry_raw(&format!("{}/multi@{digest}", registry.addr()));
        assert_eq!(
            layer_types(&manifest),
            [OCI_GZIP, OCI_GZIP, OCI_GZIP],
            "{manifest:#}"
        );
    }
    // Per platform: two own layers each, the shared.txt layer the same diff_id on both; each compressed
    // once. Plus two manifests and the index.
    assert_eq!(compressed, 3, "{}", stderr(&out));
    assert_eq!(blob_count(&env), blobs_before + 3 + 3);
    // Once more, to another repository: nothing to compress, the index digest is the same.
    let again = format!("{}/again:1", registry.addr());
    assert!(env.kiln(&["tag", "multi", &again]).status.success());
    let (_, compressed) = kiln_counting(&env, &["push", &again]);
    assert_eq!(compressed, 0);
    assert_eq!(registry_raw(&again), index);

    for arch in ["amd64", "arm64"] {
        let image = skopeo(&[
            "--override-arch",
            arch,
            "inspect",
            "--tls-verify=false",
            &format!("docker://{target}"),
        ]);
        assert_eq!(image["Architecture"], arch, "{image}");
        let rootfs = pull_and_unpack(&env, &target, &["--override-arch", arch], arch);
        assert_eq!(read(&rootfs.join("arch.txt")), format!("{arch}\n"));
        assert_eq!(read(&rootfs.join("shared.txt")), "the same on every platform\n");
    }
}

#[test]
#[cfg_attr(
    kiln_unprivileged,
    ignore = "needs root: builds mount overlayfs and run RUN steps in namespaces"
)]
fn an_explicit_compression_is_applied_at_build_time() {
    let env = Env::new();
    let ctx = env.context(
        "explicit",
        &[
            ("Dockerfile", "FROM busybox\nCOPY hello.txt /\n"),
            ("hello.txt", "explicit\n"),
        ],
    );
    env.build_ok(&ctx, &["-o", "type=image,name=z,compression=zstd"]);
    let z = inspect(&env, "z");
    assert_eq!(layer_types(&z["Manifest"]), [OCI_GZIP, OCI_ZSTD]);
    let own = top_diff_id(&z);
    assert_eq!(stored_compressions(&env, &own), [Some(Compression::Zstd)]);

    // `--push` compresses at build time (gzip); compression=uncompressed is pushed as asked.
    let registry = kiln_testutil::Registry::start();
    let gz = format!("{}/explicit:gz", registry.addr());
    env.build_ok(&ctx, &["-t", &gz, "--push"]);
    assert_eq!(layer_types(&inspect(&env, &gz)["Manifest"]), [OCI_GZIP, OCI_GZIP]);
    assert_eq!(layer_types(&registry_raw(&gz)), [OCI_GZIP, OCI_GZIP]);
    let plain = format!("{}/explicit:plain", registry.addr());
    env.build_ok(
        &ctx,
        &[
            "-o",
            &format!("type=image,name={plain},push=true,compression=uncompressed"),
        ],
    );
    assert_eq!(layer_types(&registry_raw(&plain)), [OCI_GZIP, OCI_TAR]);
    assert_eq!(
        stored_compressions(&env, &own),
        [
            Some(Compression::Gzip),
            Some(Compression::None),
            Some(Compression::Zstd)
        ]
    );
}

#[test]
#[cfg_attr(
    kiln_unprivileged,
    ignore = "needs root: builds mount overlayfs and run RUN steps in namespaces"
)]
fn exports_of_an_image_built_on_a_lazy_base_compress_its_layers() {
    let env = Env::new();
    let base_ctx = env.context(
        "lazy-base",
        &[
            ("Dockerfile", "FROM busybox\nCOPY base.txt /\n"),
            ("base.txt", "base\n"),
        ],
    );
    env.build_ok(&base_ctx, &["-t", "lazybase"]);
    let base = inspect(&env, "lazybase");
    assert_eq!(layer_types(&base["Manifest"]), [OCI_GZIP, OCI_TAR]);

    // `kiln save`: an OCI archive keeps the uncompressed layer (valid OCI), a docker archive has tars anyway.
    let oci = env.work.join("lazybase-oci.tar");
    let docker = env.work.join("lazybase-docker.tar");
    for (format, path) in [("oci", &oci), ("docker", &docker)] {
        let out = env.kiln(&[
            "save",
            "--format",
            format,
            "-o",
            path.to_str().unwrap_or_default(),
            "lazybase",
        ]);
        assert!(out.status.success(), "save: {}", stderr(&out));
    }
    let raw = skopeo(&["inspect", "--raw", &format!("oci-archive:{}", oci.display())]);
    assert_eq!(layer_types(&raw), [OCI_GZIP, OCI_TAR]);
    let saved = skopeo(&["inspect", &format!("docker-archive:{}", docker.display())]);
    assert_eq!(saved["Layers"].as_array().map(Vec::len), Some(2), "{saved}");

    // A build on top of it that writes an OCI archive compresses the base's uncompressed layer too.
    let ctx = env.context(
        "on-lazy",
        &[
            ("Dockerfile", "FROM lazybase\nCOPY top.txt /\n"),
            ("top.txt", "top\n"),
        ],
    );
    let archive = env.work.join("on-lazy.tar");
    let dest = format!("type=oci,dest={}", archive.display());
    let (_, compressed) = kiln_counting(&env, &["build", "-o", &dest, ctx.to_str().unwrap_or_default()]);
    assert_eq!(compressed, 2, "the base's uncompressed layer and the build's own");
    let raw = skopeo(&["inspect", "--raw", &format!("oci-archive:{}", archive.display())]);
    assert_eq!(layer_types(&raw), [OCI_GZIP, OCI_GZIP, OCI_GZIP]);
    // ...once: the gzip of lazybase's layer is the one such blob.
    let base_own = top_diff_id(&base);
    assert_eq!(
        stored_compressions(&env, &base_own),
        [Some(Compression::Gzip), Some(Compression::None)]
    );
}

#[test]
#[cfg_attr(
    kiln_unprivileged,
    ignore = "needs root: builds mount overlayfs and run RUN steps in namespaces"
)]
fn pushing_a_stored_build_gives_the_digest_build_push_gives() {
    let env = Env::new();
    let ctx = env.context(
        "same-digest",
        &[
            ("Dockerfile", "FROM busybox\nCOPY hello.txt /\n"),
            ("hello.txt", "same either way\n"),
        ],
    );
    let epoch = ["--build-arg", "SOURCE_DATE_EPOCH=1700000000"];
    let registry = kiln_testutil::Registry::start();
    let later = format!("{}/same:later", registry.addr());
    let at_once = format!("{}/same:at-once", registry.addr());
    env.build_ok(&ctx, &[&epoch[..], &["-t", &later]].concat());
    let out = env.kiln(&["push", "-q", &later]);
    assert!(out.status.success(), "push: {}", stderr(&out));
    let pushed_later = stdout(&out).trim().to_owned();
    let progress = env.build_ok(&ctx, &[&epoch[..], &["-t", &at_once, "--push"]].concat());
    assert!(
        progress.contains(&format!("Pushed {at_once}@{pushed_later}")),
        "{progress}"
    );
    assert_eq!(registry_raw(&later), registry_raw(&at_once));
}
