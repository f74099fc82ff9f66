//! The image commands as users run them, against a real docker-registry, skopeo and umoci: each test gets
//! its own `--root` and docker config.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use kiln_cache::Store;
use kiln_testutil::fake::{FakeRegistry, Response};
use kiln_testutil::{OciLayout, Registry, busybox_index_layout, busybox_oci_layout, sha256_digest};

struct Kiln {
    dir: tempfile::TempDir,
}

impl Kiln {
    fn new() -> Kiln {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("docker")).expect("docker config dir");
        Kiln { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn run(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("--root")
            .arg(self.root())
            .args(args)
            .env("DOCKER_CONFIG", self.path("docker"))
            .env_remove("KILN_INSECURE_REGISTRIES")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kiln runs");
        let mut input = child.stdin.take().expect("stdin");
        input.write_all(stdin).expect("write stdin");
        drop(input);
        child.wait_with_output().expect("kiln finishes")
    }

    /// Runs kiln and returns its stdout, failing the test if kiln fails.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args, b"");
        assert!(
            out.status.success(),
            "kiln {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs kiln expecting it to fail and returns its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args, b"");
        assert!(
            !out.status.success(),
            "kiln {args:?} succeeded:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn images_json(&self) -> Vec<serde_json::Value> {
        self.ok(&["images", "--format", "json"])
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect()
    }

    fn assert_store_ok(&self) {
        let report = Store::open(&self.root()).unwrap().check().unwrap();
        assert!(report.is_ok(), "{:?}", report.errors);
    }
}

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

fn skopeo_json(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&run("skopeo", args)).expect("skopeo prints JSON")
}

fn skopeo_push(from: &str, dest: &str, extra: &[&str]) {
    let dest = format!("docker://{dest}");
    let mut args = vec!["copy", "-q", "--dest-tls-verify=false"];
    args.extend_from_slice(extra);
    args.extend([from, dest.as_str()]);
    run("skopeo", &args);
}

fn short(digest: &str) -> String {
    digest.trim_start_matches("sha256:")[..12].to_owned()
}

/// A copy of `base` in `dir` whose config carries `label` (so its ID differs, its layer does not).
fn labelled_layout(base: &OciLayout, dir: &Path, label: &str) -> (PathBuf, String) {
    let mut config: serde_json::Value = serde_json::from_slice(&base.config).unwrap();
    config["config"]["Labels"] = serde_json::json!({ "variant": label });
    let config = serde_json::to_vec(&config).unwrap();
    let config_digest = sha256_digest(&config);
    let mut manifest: serde_json::Value = serde_json::from_slice(&base.manifest).unwrap();
    manifest["config"]["digest"] = config_digest.clone().into();
    manifest["config"]["size"] = config.len().into();
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let manifest_digest = sha256_digest(&manifest);
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    for (digest, bytes) in [
        (&config_digest, config.clone()),
        (&manifest_digest, manifest.clone()),
        (
            &base.layer_digest,
            std::fs::read(base.blob_path(&base.layer_digest)).unwrap(),
        ),
    ] {
        std::fs::write(blobs.join(digest.trim_start_matches("sha256:")), bytes).unwrap();
    }
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest,
        "size": manifest.len(),
        "annotations": {"org.opencontainers.image.ref.name": "latest"},
    }]});
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    (dir.to_path_buf(), config_digest)
}

#[test]
fn images_travel_between_skopeo_and_kiln_and_present_blobs_are_not_fetched_again() {
    let reg = Registry::start_with_access_log();
    let other = Registry::start();
    let kiln = Kiln::new();
    let amd = busybox_oci_layout(&kiln.path("amd64"), "amd64").unwrap();
    // Same layer (the host's busybox), another config.
    let arm = busybox_oci_layout(&kiln.path("arm64"), "arm64").unwrap();
    assert_eq!(amd.layer_digest, arm.layer_digest);
    let base = format!("{}/base:latest", reg.addr());
    let base_arm = format!("{}/base:arm", reg.addr());
    skopeo_push(&amd.skopeo_ref(), &base, &[]);
    skopeo_push(&arm.skopeo_ref(), &base_arm, &[]);

    let out = kiln.ok(&["pull", &format!("{}/base", reg.addr())]);
    assert!(out.contains("Using default tag: latest"), "{out}");
    assert!(
        out.contains(&format!("{}: Pull complete", short(&amd.layer_digest))),
        "{out}"
    );
    assert!(out.contains(&format!("Digest: {}", amd.manifest_digest)), "{out}");
    assert!(out.contains("Status: Downloaded newer image for"), "{out}");
    assert_eq!(out.lines().last(), Some(base.as_str()));

    let out = kiln.ok(&["pull", "--platform", "linux/arm64", &base_arm]);
    assert!(
        out.contains(&format!("{}: Already exists", short(&arm.layer_digest))),
        "{out}"
    );
    let layer_gets = reg
        .requests()
        .iter()
        .filter(|r| *r == &format!("GET /v2/base/blobs/{}", amd.layer_digest))
        .count();
    assert_eq!(layer_gets, 1, "{:?}", reg.requests());
    let out = kiln.ok(&["pull", &base]);
    assert!(out.contains("Status: Image is up to date for"), "{out}");

    // kiln → registry: within the registry the blobs are mounted, to another one they are uploaded.
    let copy = format!("{}/copy:v1", reg.addr());
    kiln.ok(&["tag", &base, &copy]);
    let out = kiln.ok(&["push", &copy]);
    assert!(
        out.contains(&format!("The push refers to repository [{}/copy]", reg.addr())),
        "{out}"
    );
    assert!(out.contains("Mounted from base"), "{out}");
    assert!(
        out.contains(&format!(
            "v1: digest: {} size: {}",
            amd.manifest_digest, amd.manifest_size
        )),
        "{out}"
    );
    let elsewhere = format!("{}/up:1", other.addr());
    kiln.ok(&["tag", &base, &elsewhere]);
    let out = kiln.ok(&["push", &elsewhere]);
    assert!(
        out.contains(&format!("{}: Pushed", short(&amd.layer_digest))),
        "{out}"
    );
    let out = kiln.ok(&["push", &elsewhere]);
    assert!(out.contains("Layer already exists"), "{out}");

    for pushed in [&copy, &elsewhere] {
        let inspect = skopeo_json(&["inspect", "--tls-verify=false", &format!("docker://{pushed}")]);
        assert_eq!(inspect["Digest"], amd.manifest_digest.as_str());
        let dir = kiln.path("back");
        run(
            "skopeo",
            &[
                "copy",
                "-q",
                "--src-tls-verify=false",
                &format!("docker://{pushed}"),
                &format!("oci:{}:back", dir.display()),
            ],
        );
    }
    kiln.assert_store_ok();
}

#[test]
fn login_gives_access_to_a_registry_with_basic_auth() {
    let reg = Registry::start_with_htpasswd("alice", "s3cret");
    let kiln = Kiln::new();
    let layout = busybox_oci_layout(&kiln.path("layout"), "amd64").unwrap();
    let private = format!("{}/private:latest", reg.addr());
    skopeo_push(&layout.skopeo_ref(), &private, &["--dest-creds=alice:s3cret"]);

    let err = kiln.fails(&["pull", &private]);
    assert!(err.contains("unauthorized") && err.contains(&private), "{err}");
    assert!(err.contains(&format!("kiln login {}", reg.addr())), "{err}");
    let err = kiln.fails(&["login", "-u", "alice", "-p", "wrong", reg.addr()]);
    assert!(err.contains("invalid username or password"), "{err}");

    let out = kiln.run(
        &["login", "-u", "alice", "--password-stdin", reg.addr()],
        b"s3cret\n",
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Login Succeeded\n");
    let config = std::fs::read_to_string(kiln.path("docker/config.json")).unwrap();
    assert!(config.contains(reg.addr()), "{config}");

    kiln.ok(&["pull", &private]);
    let pushed = format!("{}/pushed:1", reg.addr());
    kiln.ok(&["tag", &private, &pushed]);
    kiln.ok(&["push", &pushed]);
    let inspect = skopeo_json(&[
        "inspect",
        "--tls-verify=false",
        "--creds=alice:s3cret",
        &format!("docker://{pushed}"),
    ]);
    assert_eq!(inspect["Digest"], layout.manifest_digest.as_str());

    assert_eq!(
        kiln.ok(&["logout", reg.addr()]),
        format!("Removing login credentials for {}\n", reg.addr())
    );
    assert_eq!(
        kiln.ok(&["logout", reg.addr()]),
        format!("Not logged in to {}\n", reg.addr())
    );
    let err = kiln.fails(&["pull", &private]);
    assert!(err.contains("unauthorized"), "{err}");
}

#[test]
fn a_two_platform_index_is_pulled_per_platform_and_listed_once() {
    let reg = Registry::start();
    let kiln = Kiln::new();
    let index = busybox_index_layout(&kiln.path("index"), &["amd64", "arm64"]).unwrap();
    let (amd, arm) = (&index.images[0], &index.images[1]);
    let multi = format!("{}/multi:latest", reg.addr());
    skopeo_push(&index.skopeo_ref(), &multi, &["--all"]);

    kiln.ok(&["pull", "--platform", "linux/arm64", &multi]);
    let images = kiln.images_json();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0]["Platforms"], serde_json::json!(["linux/arm64"]));
    assert_eq!(images[0]["ID"], short(&arm.config_digest));
    // Pushing what is there: the one platform's manifest.
    let partial = format!("{}/partial:1", reg.addr());
    kiln.ok(&["tag", &multi, &partial]);
    let out = kiln.ok(&["push", &partial]);
    assert!(
        out.contains(&format!("1: digest: {}", arm.manifest_digest)),
        "{out}"
    );

    // The default is the host's platform (amd64 here), added to what is there.
    kiln.ok(&["pull", &multi]);
    let images = kiln.images_json();
    let entry = images.iter().find(|i| i["Name"] == multi.as_str()).unwrap();
    assert_eq!(
        entry["Platforms"],
        serde_json::json!(["linux/amd64", "linux/arm64"])
    );
    assert_eq!(entry["ID"], short(&index.index_digest));
    let table = kiln.ok(&["images"]);
    assert!(table.lines().next().unwrap().ends_with("PLATFORMS"), "{table}");
    assert!(table.contains("linux/amd64,linux/arm64"), "{table}");

    let inspect: serde_json::Value = serde_json::from_str(&kiln.ok(&["inspect", &multi])).unwrap();
    assert_eq!(inspect[0]["Id"], index.index_digest.as_str());
    assert_eq!(inspect[0]["Manifests"].as_array().unwrap().len(), 2);
    assert_eq!(inspect[0]["Index"]["manifests"].as_array().unwrap().len(), 2);

    // The whole index goes out again, and an OCI archive holds it.
    let again = format!("{}/again:1", reg.addr());
    kiln.ok(&["tag", &multi, &again]);
    let out = kiln.ok(&["push", &again]);
    assert!(
        out.contains(&format!("1: digest: {}", index.index_digest)),
        "{out}"
    );
    let archive = kiln.path("multi.tar");
    kiln.ok(&["save", "--format", "oci", "-o", archive.to_str().unwrap(), &multi]);
    let raw = skopeo_json(&["inspect", "--raw", &format!("oci-archive:{}", archive.display())]);
    assert_eq!(raw["manifests"].as_array().unwrap().len(), 2);
    let _ = amd;
    kiln.assert_store_ok();
}

#[test]
fn archives_load_and_save_in_both_formats() {
    let kiln = Kiln::new();
    let layout = busybox_oci_layout(&kiln.path("layout"), "amd64").unwrap();
    let docker_tar = kiln.path("docker.tar");
    let oci_tar = kiln.path("oci.tar");
    run(
        "skopeo",
        &[
            "copy",
            "-q",
            &layout.skopeo_ref(),
            &format!("docker-archive:{}:example.com/bb:1", docker_tar.display()),
        ],
    );
    run(
        "skopeo",
        &[
            "copy",
            "-q",
            &layout.skopeo_ref(),
            &format!("oci-archive:{}:example.com/bb:2", oci_tar.display()),
        ],
    );

    let out = kiln.ok(&["load", "-i", docker_tar.to_str().unwrap()]);
    assert_eq!(out, "Loaded image: example.com/bb:1\n");
    let out = kiln.ok(&["load", "-i", oci_tar.to_str().unwrap()]);
    assert_eq!(out, "Loaded image: example.com/bb:2\n");
    // The layout names its image only `latest`, a tag without a repository.
    let out = kiln.ok(&["load", "-i", layout.dir.to_str().unwrap()]);
    assert_eq!(out, format!("Loaded image ID: {}\n", layout.config_digest));
    let out = kiln.run(&["load"], &std::fs::read(&docker_tar).unwrap());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Loaded image: example.com/bb:1\n"
    );
    let images = kiln.images_json();
    assert_eq!(images.len(), 2, "{images:?}");
    assert!(
        images.iter().all(|i| i["ID"] == short(&layout.config_digest)),
        "{images:?}"
    );

    let oci_out = kiln.path("saved-oci.tar");
    kiln.ok(&[
        "save",
        "--format",
        "oci",
        "-o",
        oci_out.to_str().unwrap(),
        "example.com/bb:2",
    ]);
    let inspect = skopeo_json(&["inspect", &format!("oci-archive:{}", oci_out.display())]);
    assert_eq!(inspect["Digest"], layout.manifest_digest.as_str());
    let docker_out = kiln.path("saved-docker.tar");
    kiln.ok(&[
        "save",
        "-o",
        docker_out.to_str().unwrap(),
        "example.com/bb:1",
        "example.com/bb:2",
    ]);
    let inspect = skopeo_json(&["inspect", &format!("docker-archive:{}", docker_out.display())]);
    assert_eq!(inspect["Layers"][0], layout.diff_id.as_str(), "{inspect}");
    let manifest: serde_json::Value = serde_json::from_str(&run(
        "tar",
        &["xOf", docker_out.to_str().unwrap(), "manifest.json"],
    ))
    .unwrap();
    assert_eq!(
        manifest[0]["RepoTags"],
        serde_json::json!(["example.com/bb:1", "example.com/bb:2"])
    );
    assert_eq!(
        manifest[0]["Config"],
        format!(
            "blobs/sha256/{}",
            layout.config_digest.trim_start_matches("sha256:")
        )
    );

    // Saving is deterministic, and what is saved loads into another store.
    let again = kiln.path("again.tar");
    kiln.ok(&[
        "save",
        "-o",
        again.to_str().unwrap(),
        "example.com/bb:1",
        "example.com/bb:2",
    ]);
    assert!(std::fs::read(&again).unwrap() == std::fs::read(&docker_out).unwrap());
    let fresh = Kiln::new();
    let out = fresh.ok(&["load", "-i", docker_out.to_str().unwrap()]);
    assert_eq!(
        out,
        "Loaded image: example.com/bb:1\nLoaded image: example.com/bb:2\n"
    );
    let out = fresh.ok(&["load", "-i", oci_out.to_str().unwrap()]);
    assert_eq!(out, "Loaded image: example.com/bb:2\n");
    fresh.assert_store_ok();
    kiln.assert_store_ok();
}

#[test]
fn broken_archives_load_nothing() {
    let kiln = Kiln::new();
    let layout = busybox_oci_layout(&kiln.path("layout"), "amd64").unwrap();
    let layer = layout.blob_path(&layout.layer_digest);
    let mut bytes = std::fs::read(&layer).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&layer, bytes).unwrap();
    let err = kiln.fails(&["load", "-i", layout.dir.to_str().unwrap()]);
    assert!(err.contains("digest mismatch") && err.contains("layout"), "{err}");

    std::fs::write(kiln.path("junk.tar"), b"this is not a tar archive at all").unwrap();
    let err = kiln.fails(&["load", "-i", kiln.path("junk.tar").to_str().unwrap()]);
    assert!(err.contains("junk.tar"), "{err}");
    assert!(kiln.images_json().is_empty());
    kiln.assert_store_ok();
}

#[test]
fn tags_by_id_prefix_rmi_refusal_prune_and_du() {
    let kiln = Kiln::new();
    let base = busybox_oci_layout(&kiln.path("base"), "amd64").unwrap();
    kiln.ok(&["load", "-i", base.dir.to_str().unwrap()]);
    let table = kiln.ok(&["images"]);
    assert!(
        table.starts_with("REPOSITORY   TAG      IMAGE ID       CREATED"),
        "{table}"
    );
    assert!(table.contains("<none>       <none>   "), "{table}");

    let id = base.config_digest.trim_start_matches("sha256:");
    kiln.ok(&["tag", &id[..5], "a:1"]);
    kiln.ok(&["tag", &base.config_digest, "b:1"]);
    let table = kiln.ok(&["images"]);
    assert!(
        !table.contains("<none>"),
        "a named image is not <none> any more:\n{table}"
    );
    assert_eq!(kiln.ok(&["images", "-q"]), format!("{0}\n{0}\n", &id[..12]));
    assert_eq!(kiln.ok(&["images", "-q", "a"]), format!("{}\n", &id[..12]));

    let err = kiln.fails(&["rmi", &id[..8]]);
    assert!(err.contains("must be forced") && err.contains("a:1"), "{err}");
    assert_eq!(kiln.ok(&["rmi", "a:1"]), "Untagged: a:1\n");
    assert_eq!(
        kiln.ok(&["rmi", "-f", &id[..8]]),
        format!("Untagged: b:1\nDeleted: {}\n", base.config_digest)
    );
    assert!(kiln.fails(&["rmi", "a:1"]).contains("no such image: a:1"));

    // Two images whose IDs start alike: a short prefix is ambiguous.
    let (one_dir, one) = labelled_layout(&base, &kiln.path("one"), "0");
    let (two_dir, two) = (1..)
        .map(|i| labelled_layout(&base, &kiln.path(&format!("two-{i}")), &i.to_string()))
        .find(|(_, d)| d[7..8] == one[7..8])
        .unwrap();
    kiln.ok(&["load", "-i", one_dir.to_str().unwrap()]);
    kiln.ok(&["load", "-i", two_dir.to_str().unwrap()]);
    let err = kiln.fails(&["tag", &one[7..8], "x:1"]);
    assert!(
        err.contains("ambiguous") && err.contains(&one) && err.contains(&two),
        "{err}"
    );
    kiln.ok(&["tag", &one, "keep:1"]);
    kiln.ok(&["tag", &two, "drop:1"]);

    let du = kiln.ok(&["du", "-v"]);
    assert!(du.contains("keep:1") && du.contains("drop:1"), "{du}");
    assert!(du.contains("Reclaimable:") && du.contains("Total:"), "{du}");
    kiln.ok(&["rmi", "drop:1"]);
    let out = kiln.ok(&["prune", "-f"]);
    assert!(out.contains(&format!("Deleted: {two}")), "{out}");
    assert!(out.contains(&format!("Deleted: {}", base.config_digest)), "{out}");
    assert!(
        !out.contains(&base.layer_digest),
        "the layer is still needed:\n{out}"
    );
    assert!(!out.contains("Total reclaimed space: 0B"), "{out}");
    let out = kiln.ok(&["prune", "-f"]);
    assert!(out.ends_with("Total reclaimed space: 0B\n"), "{out}");
    let archive = kiln.path("keep.tar");
    kiln.ok(&["save", "-o", archive.to_str().unwrap(), "keep:1"]);
    let store = Store::open(&kiln.root()).unwrap();
    assert!(store.has_blob(&base.layer_digest.parse().unwrap()).unwrap());
    kiln.assert_store_ok();
}

#[test]
fn registry_errors_name_the_reference_and_record_nothing() {
    let fake = FakeRegistry::registry(|_| {
        Response::status(
            404,
            r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
        )
        .header("Content-Type", "application/json")
    });
    let kiln = Kiln::new();
    let name = format!("{}/nothing:here", fake.addr());
    let err = kiln.fails(&["pull", &name]);
    assert!(err.contains(&format!("manifest unknown: {name}")), "{err}");
    let err = kiln.fails(&["push", &name]);
    assert!(err.contains("no such image"), "{err}");
    assert!(kiln.fails(&["pull", "Not/Valid"]).contains("lowercase"));
    assert!(kiln.images_json().is_empty());
    kiln.assert_store_ok();
}
