//! Multi-platform builds, the exporters of `-o`, and reproducible builds (issue 5), checked with real
//! clients.

mod common;

use common::*;
use std::process::Command;

fn skopeo(args: &[&str]) -> serde_json::Value {
    let out = Command::new("skopeo").args(args).output().expect("skopeo runs");
    assert!(out.status.success(), "skopeo {args:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("skopeo prints JSON")
}

const CROSS: &str = "\
FROM --platform=$BUILDPLATFORM busybox AS tools
RUN uname -m > /build-arch
FROM busybox
ARG TARGETPLATFORM
COPY --from=tools /build-arch /build-arch
RUN uname -m > /arch && echo $TARGETPLATFORM > /platform
";

#[test]
#[cfg_attr(
    kiln_unprivileged,
    ignore = "needs root: builds mount overlayfs and run RUN steps in namespaces"
)]
fn multi_platform_build_shares_the_build_platform_stage_and_emulates_arm64() {
    let env = Env::multiarch();
    let ctx = env.context("cross", &[("Dockerfile", CROSS)]);
    let progress = env.build_ok(&ctx, &["--platform", "linux/amd64,linux/arm64", "-t", "multi"]);
    let shared_runs = steps(&progress)
        .iter()
        .filter(|(name, state)| name.contains("uname -m > /build-arch") && *state == "DONE")
        .count();
    assert_eq!(
        shared_runs, 1,
        "the --platform=$BUILDPLATFORM stage is solved once:\n{progress}"
    );

    let arm = env.kiln(&[
        "run",
        "--platform",
        "linux/arm64",
        "multi",
        "cat",
        "/arch",
        "/platform",
        "/build-arch",
    ]);
    assert!(arm.status.success(), "{}", stderr(&arm));
    assert_eq!(stdout(&arm), "aarch64\nlinux/arm64\nx86_64\n");
    assert_eq!(
        env.run("multi", &["cat", "/arch", "/platform"]),
        "x86_64\nlinux/amd64\n"
    );

    let images = stdout(&env.kiln(&["images"]));
    let rows: Vec<&str> = images.lines().filter(|l| l.starts_with("multi")).collect();
    assert_eq!(rows.len(), 1, "one entry for a multi-platform image:\n{images}");
    assert!(
        rows[0].contains("linux/amd64") && rows[0].contains("linux/arm64"),
        "{images}"
    );
    let inspect = stdout(&env.kiln(&["inspect", "multi"]));
    assert!(
        inspect.contains("arm64") && inspect.contains("amd64"),
        "{inspect}"
    );
}

#[test]
#[cfg_attr(
    kiln_unprivileged,
    ignore = "needs root: builds mount overlayfs and run RUN steps in namespaces"
)]
fn oci_output_of_a_multi_platform_build_is_an_index_skopeo_reads() {
    let env = Env::multiarch();
    let ctx = env.context("cross-oci", &[("Dockerfile", CROSS)]);
    let archive = env.work.join("multi.tar");
    let output = format!("type=oci,dest={}", archive.display());
    env.build_ok(
        &ctx,
        &[
            "--platform",
            "linux/amd64,linux/arm64",
            "-o",
            &output,
            "-t",
            "multi:oci",
        ],
    );
    let reference = format!("oci-archive:{}", archive.display());
    let index = skopeo(&["inspect", "--raw", &reference]);
    let platforms: Vec<String> = index["manifests"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|e| e["platform"]["architecture"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(platforms, ["amd64", "arm64"], "{index}");
    for arch in ["amd64", "arm64"] {
        let image = skopeo(&["--override-arch", arch, "inspect", &reference]);
        assert_eq!(image["Architecture"], serde_json::json!(arch));
    }
}

#[test]
#[cfg_attr(
    kiln_unprivileged,
    ignore = "needs root: builds mount overlayfs and run RUN steps in namespaces"
)]
fn reproducible_builds_give_identical_digests_on_different_stores_at_different_times() {
    let dockerfile = "\
FROM busybox AS build
RUN mkdir -p /out && echo made > /out/file && ln -s file /out/link && touch /out/empty
FROM busybox
COPY --from=build /out /out
RUN echo second-layer > /second
CMD [\"cat\", \"/out/file\"]
";
    let mut digests = Vec::new();
    for attempt in 0..2 {
        let env = Env::multiarch();
        let ctx = env.context("repro", &[("Dockerfile", dockerfile)]);
        let meta = env.work.join("meta.json");
        let archive = env.work.join("repro.tar");
        let output = format!("type=oci,dest={}", archive.display());
        env.build_ok(
            &ctx,
            &[
                "--platform",
                "linux/amd64,linux/arm64",
                "--build-arg",
                "SOURCE_DATE_EPOCH=1700000000",
                "-o",
                &output,
                "--metadata-file",
                meta.to_str().unwrap_or_default(),
            ],
        );
        let metadata: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&meta).expect("metadata file")).expect("metadata JSON");
        digests.push(metadata["containerimage.digest"].clone());
        let image = skopeo(&[
            "inspect",
            "--override-arch",
            "arm64",
            &format!("oci-archive:{}", archive.display()),
        ]);
        assert_eq!(
            image["Created"],
            serde_json::json!("2023-11-14T22:13:20Z"),
            "{image}"
        );
        if attempt == 0 {
            // Different wall-clock times for the second build's files.
            std::thread::sleep(std::time::Duration::from_millis(1100));
        }
    }
    assert!(
        digests[0].as_str().is_some_and(|d| d.starts_with("sha256:")),
        "{digests:?}"
    );
    assert_eq!(digests[0], digests[1]);
}

#[test]
#[cfg_attr(
    kiln_unprivileged,
    ignore = "needs root: builds mount overlayfs and run RUN steps in namespaces"
)]
fn filesystem_and_archive_outputs() {
    let env = Env::new();
    let ctx = env.context(
        "outputs",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN mkdir /data && echo hi > /data/hello && rm /bin/wc\n",
        )],
    );
    let local = env.work.join("local-out");
    let tarball = env.work.join("fs.tar");
    let docker = env.work.join("docker.tar");
    let zstd = env.work.join("zstd.tar");
    env.build_ok(
        &ctx,
        &[
            "-o",
            &format!("type=local,dest={}", local.display()),
            "-o",
            &format!("type=tar,dest={}", tarball.display()),
            "-o",
            &format!("type=docker,dest={}", docker.display()),
            "-o",
            &format!("type=oci,dest={},compression=zstd", zstd.display()),
            "-t",
            "outputs:1",
        ],
    );
    assert_eq!(
        std::fs::read_to_string(local.join("data/hello")).expect("local output"),
        "hi\n"
    );
    assert!(local.join("bin/busybox").is_file());
    assert!(
        !local.join("bin/wc").exists(),
        "whiteouts apply to the merged tree"
    );

    let listing = Command::new("tar")
        .arg("-tf")
        .arg(&tarball)
        .output()
        .expect("tar");
    let names = String::from_utf8_lossy(&listing.stdout);
    assert!(
        names.lines().any(|l| l.trim_start_matches("./") == "data/hello"),
        "{names}"
    );
    assert!(
        !names.lines().any(|l| l.contains(".wh.") || l.ends_with("bin/wc")),
        "{names}"
    );

    let image = skopeo(&["inspect", &format!("docker-archive:{}", docker.display())]);
    assert_eq!(image["Layers"].as_array().map(Vec::len), Some(2), "{image}");
    let raw = skopeo(&["inspect", "--raw", &format!("oci-archive:{}", zstd.display())]);
    let media: Vec<&str> = raw["layers"]
        .as_array()
        .map(|l| l.iter().filter_map(|x| x["mediaType"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        media,
        [
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.oci.image.layer.v1.tar+zstd"
        ],
        "the base layer is reused as it is, the build's own layer is zstd"
    );
    let forced = env.work.join("forced.tar");
    env.build_ok(
        &ctx,
        &[
            "-o",
            &format!(
                "type=oci,dest={},compression=zstd,force-compression=true",
                forced.display()
            ),
        ],
    );
    let raw = skopeo(&["inspect", "--raw", &format!("oci-archive:{}", forced.display())]);
    let media: Vec<&str> = raw["layers"]
        .as_array()
        .map(|l| l.iter().filter_map(|x| x["mediaType"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        media.len() == 2 && media.iter().all(|m| m.ends_with("+zstd")),
        "{media:?}"
    );
}

#[test]
#[cfg_attr(
    kiln_unprivileged,
    ignore = "needs root: builds mount overlayfs and run RUN steps in namespaces"
)]
fn push_of_a_multi_platform_image_is_pulled_back_by_skopeo_for_each_platform() {
    let env = Env::multiarch();
    let registry = kiln_testutil::Registry::start();
    let ctx = env.context("cross-push", &[("Dockerfile", CROSS)]);
    let name = format!("{}/cross:1", registry.addr());
    env.build_ok(
        &ctx,
        &["--platform", "linux/amd64,linux/arm64", "-t", &name, "--push"],
    );
    for arch in ["amd64", "arm64"] {
        let image = skopeo(&[
            "--override-arch",
            arch,
            "inspect",
            "--tls-verify=false",
            &format!("docker://{name}"),
        ]);
        assert_eq!(image["Architecture"], serde_json::json!(arch), "{image}");
    }
}

#[test]
#[cfg_attr(
    kiln_unprivileged,
    ignore = "needs root: builds mount overlayfs and run RUN steps in namespaces"
)]
fn run_for_an_unregistered_architecture_says_how_to_register_qemu() {
    let env = Env::new();
    let ctx = env.context(
        "noemu",
        &[("Dockerfile", "FROM scratch\nCOPY Dockerfile /\nRUN true\n")],
    );
    // CI registers QEMU for aarch64 only; skip if someone registered s390x on this machine.
    if std::path::Path::new("/proc/sys/fs/binfmt_misc/qemu-s390x").exists() {
        return;
    }
    let out = env.build(&ctx, &["--platform", "linux/s390x"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("qemu-user-static") && err.contains("binfmt"),
        "{err}"
    );
    // A build without RUN needs no emulation.
    let ctx = env.context(
        "noemu-copy",
        &[("Dockerfile", "FROM scratch\nCOPY Dockerfile /\n")],
    );
    let out = env.build(&ctx, &["--platform", "linux/s390x"]);
    assert!(out.status.success(), "{}", stderr(&out));
}
