//! `kiln build` end to end: real builds FROM a busybox-static image loaded into a fresh store, run with the
//! real sandbox, checked with `kiln run`, `kiln inspect` and real clients (skopeo, umoci).

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

#[test]
#[cfg_attr(
    kiln_unprivileged,
    ignore = "needs root: builds mount overlayfs and run RUN steps in namespaces"
)]
fn multi_stage_with_copy_from_user_workdir_env_and_args() {
    let env = Env::new();
    let ctx = env.context(
        "multistage",
        &[(
            "Dockerfile",
            "FROM busybox AS build\n\
             ARG MSG=default\n\
             ENV GREETING=\"$MSG from build\"\n\
             WORKDIR /work\n\
             RUN echo \"$GREETING\" > out.txt && id -u > uid.txt\n\
             FROM busybox\n\
             RUN echo 'app:x:1000:1000::/home/app:/bin/sh' >> /etc/passwd && echo 'app:x:1000:' >> /etc/group\n\
             USER app\n\
             WORKDIR /home/app\n\
             COPY --from=build /work/out.txt ./\n\
             RUN id -u > me.txt; pwd > where.txt\n\
             ENV MODE=prod\n\
             CMD [\"cat\", \"out.txt\"]\n",
        )],
    );
    env.build_ok(&ctx, &["-t", "multi", "--build-arg", "MSG=hello"]);
    assert_eq!(env.run("multi", &[]), "hello from build\n");
    assert_eq!(
        env.run("multi", &["cat", "me.txt", "where.txt"]),
        "1000\n/home/app\n"
    );
    assert_eq!(
        env.run("multi", &["sh", "-c", "echo $MODE; echo ${GREETING:-unset}"]),
        "prod\nunset\n"
    );

    let out = env.kiln(&["inspect", "multi"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let inspect: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("inspect JSON");
    let text = inspect.to_string();
    assert!(text.contains("\"User\":\"app\""), "{text}");
    assert!(text.contains("\"WorkingDir\":\"/home/app\""), "{text}");
    assert!(text.contains("MODE=prod"), "{text}");
}

#[test]
#[cfg_attr(
    kiln_unprivileged,
    ignore = "needs root: builds mount overlayfs and run RUN steps in namespaces"
)]
fn run_deleting_base_files_leaves_whiteouts() {
    let env = Env::new();
    let ctx = env.context(
        "whiteout",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN rm /bin/wc && mkdir -p /d/sub && touch /d/sub/f\nRUN rm -r /d/sub\n",
        )],
    );
    env.build_ok(&ctx, &["-t", "wh"]);
    let out = env.run(
        "wh",
        &["sh", "-c", "ls /bin/wc 2>/dev/null || echo gone; ls -a /d"],
    );
    assert_eq!(out, "gone\n.\n..\n");
}

#[test]
#[cfg_attr(
    kiln_unprivileged,
    ignore = "needs root: builds mount overlayfs and run RUN steps in namespaces"
)]
fn failed_step_reports_instruction_line_exit_code_and_output() {
    let env = Env::new();
    let ctx = env.context(
        "failing",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN echo first > /first\nRUN echo about to fail && exit 3\nRUN echo never\n",
        )],
    );
    let out = env.build(&ctx, &["-t", "broken"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("exit code: 3"), "{err}");
    assert!(err.contains("Dockerfile:3"), "{err}");
    assert!(err.contains("about to fail"), "{err}");
    assert!(err.contains(">>> RUN echo about to fail && exit 3"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // The step that finished stays cached.
    let again = stderr(&env.build(&ctx, &["-t", "broken"]));
    assert!(cached(&again, "RUN echo first"), "{again}");
    let images = stdout(&env.kiln(&["images"]));
    assert!(
        !images.contains("broken"),
        "a failed build tags nothing: {images}"
    );
}

#[test]
#[cfg_attr(
    kiln_unprivileged,
    ignore = "needs root: builds mount overlayfs and run RUN steps in namespaces"
)]
fn independent_stages_run_concurrently() {
    let env = Env::new();
    // Each stage announces itself in a shared cache mount and waits (up to 30 s) to see the other: they only
    // both finish with "overlap" if they ran at the same time. Sequential runs would record "alone".
    let id = format!("sync-{}", std::process::id());
    let stage = |me: &str, other: &str| {
        format!(
            "FROM busybox AS {me}\n\
             RUN --mount=type=cache,id={id},target=/sync touch /sync/{me}; \
             i=0; while [ ! -e /sync/{other} ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; \
             if [ -e /sync/{other} ]; then echo overlap > /result; else echo alone > /result; fi\n"
        )
    };
    let dockerfile = format!(
        "{}{}FROM busybox\nCOPY --from=a /result /a\nCOPY --from=b /result /b\n",
        stage("a", "b"),
        stage("b", "a")
    );
    let ctx = env.context("parallel", &[("Dockerfile", &dockerfile)]);
    env.build_ok(&ctx, &["-t", "par", "--max-parallelism", "2"]);
    assert_eq!(env.run("par", &["cat", "/a", "/b"]), "overlap\noverlap\n");
}

#[test]
#[cfg_attr(
    kiln_unprivileged,
    ignore = "needs root: builds mount overlayfs and run RUN steps in namespaces"
)]
fn unchanged_rebuild_runs_nothing_and_a_changed_file_reruns_only_what_reads_it() {
    let env = Env::new();
    let ctx = env.context(
        "caching",
        &[
            (
                "Dockerfile",
                "FROM busybox\nCOPY a.txt /a.txt\nRUN cat /a.txt > /a2\nCOPY src/ /src/\nRUN cat /src/b.txt > /b2\n",
            ),
            ("a.txt", "a1"),
            ("src/b.txt", "b1"),
            ("docs/readme", "docs1"),
        ],
    );
    let first = env.build_ok(&ctx, &["-t", "cache"]);
    assert!(
        ran(&first, "RUN cat /a.txt") && ran(&first, "RUN cat /src/b.txt"),
        "{first}"
    );

    let second = env.build_ok(&ctx, &["-t", "cache"]);
    assert!(
        !steps(&second).iter().any(|(_, state)| *state == "DONE"),
        "nothing may run:\n{second}"
    );

    // A file no COPY reads changes nothing.
    std::fs::write(ctx.join("docs/readme"), "docs2").expect("write");
    let third = env.build_ok(&ctx, &["-t", "cache"]);
    assert!(
        !steps(&third).iter().any(|(_, state)| *state == "DONE"),
        "docs/ is not read:\n{third}"
    );

    std::fs::write(ctx.join("src/b.txt"), "b2").expect("write");
    let fourth = env.build_ok(&ctx, &["-t", "cache"]);
    assert!(
        !ran(&fourth, "COPY a.txt") && !ran(&fourth, "RUN cat /a.txt"),
        "{fourth}"
    );
    assert!(
        ran(&fourth, "COPY src/") && ran(&fourth, "RUN cat /src/b.txt"),
        "{fourth}"
    );
    assert_eq!(env.run("cache", &["cat", "/a2", "/b2"]), "a1b2");
}

#[test]
#[cfg_attr(
    kiln_unprivileged,
    ignore = "needs root: builds mount overlayfs and run RUN steps in namespaces"
)]
fn target_builds_never_touch_unneeded_stages() {
    let env = Env::new();
    let ctx = env.context(
        "target",
        &[(
            "Dockerfile",
            "FROM nosuch.invalid/missing:1 AS broken-base\nRUN echo never\n\
             FROM busybox AS failing\nRUN exit 1\n\
             FROM busybox AS wanted\nRUN echo wanted > /w\n\
             FROM busybox\nCOPY --from=failing /x /x\n",
        )],
    );
    let out = env.build_ok(&ctx, &["--target", "wanted", "-t", "wanted"]);
    assert!(
        !out.contains("exit 1") && !out.contains("nosuch.invalid"),
        "{out}"
    );
    assert_eq!(env.run("wanted", &["cat", "/w"]), "wanted\n");
}

#[test]
#[cfg_attr(
    kiln_unprivileged,
    ignore = "needs root: builds mount overlayfs and run RUN steps in namespaces"
)]
fn copy_and_add_rules() {
    let env = Env::new();
    let ctx = env.context(
        "copyrules",
        &[
            (
                "Dockerfile",
                "FROM busybox\n\
                 COPY *.txt /multi/\n\
                 COPY dir /contents\n\
                 COPY dir/one single-renamed\n\
                 COPY --chown=65534:65534 --chmod=0600 dir/one /owned\n\
                 ADD archive.tar /extracted/\n\
                 COPY link-to-dir /via-link\n\
                 COPY . /all\n",
            ),
            ("x.txt", "x"),
            ("y.txt", "y"),
            ("dir/one", "1"),
            ("dir/nested/two", "2"),
            ("secret.key", "do not copy"),
            (".dockerignore", "secret.key\n"),
        ],
    );
    std::os::unix::fs::symlink("dir", ctx.join("link-to-dir")).expect("symlink");
    // A tar to auto-extract.
    let tar_path = ctx.join("archive.tar");
    let mut builder = tar::Builder::new(std::fs::File::create(&tar_path).expect("tar file"));
    let mut header = tar::Header::new_gnu();
    header.set_size(8);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(946_684_800);
    header.set_cksum();
    builder
        .append_data(&mut header, "inside/file", &b"unpacked"[..])
        .expect("tar entry");
    builder.finish().expect("tar finish");
    drop(builder);

    env.build_ok(&ctx, &["-t", "copies"]);
    let check = |cmd: &str| env.run("copies", &["sh", "-c", cmd]);
    assert_eq!(check("cat /multi/x.txt /multi/y.txt"), "xy");
    assert_eq!(
        check("cat /contents/one /contents/nested/two; ls /contents"),
        "12nested\none\n"
    );
    assert_eq!(check("cat /single-renamed"), "1");
    assert_eq!(check("stat -c '%u:%g %a' /owned"), "65534:65534 600\n");
    assert_eq!(check("cat /extracted/inside/file"), "unpacked");
    assert_eq!(check("cat /via-link/one"), "1");
    assert_eq!(
        check("ls /all/secret.key 2>/dev/null || echo ignored"),
        "ignored\n"
    );
    assert_eq!(check("stat -c '%u:%g' /all/x.txt"), "0:0\n");
}

#[test]
#[cfg_attr(
    kiln_unprivileged,
    ignore = "needs root: builds mount overlayfs and run RUN steps in namespaces"
)]
fn built_images_are_valid_for_real_clients() {
    let env = Env::new();
    let ctx = env.context(
        "clients",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN echo made > /made\nCMD [\"cat\", \"/made\"]\n",
        )],
    );
    env.build_ok(&ctx, &["-t", "valid:1"]);
    let archive = env.work.join("valid.tar");
    let out = env.kiln(&[
        "save",
        "--format",
        "oci",
        "-o",
        archive.to_str().unwrap_or_default(),
        "valid:1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let inspect = Command::new("skopeo")
        .args(["inspect", &format!("oci-archive:{}", archive.display())])
        .output()
        .expect("skopeo runs");
    assert!(inspect.status.success(), "skopeo: {}", stderr(&inspect));
    let json: serde_json::Value = serde_json::from_slice(&inspect.stdout).expect("skopeo JSON");
    assert_eq!(json["Layers"].as_array().map(Vec::len), Some(2), "{json}");

    let layout = env.work.join("valid-layout");
    std::fs::create_dir_all(&layout).expect("layout dir");
    let untar = Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&layout)
        .status()
        .expect("tar");
    assert!(untar.success());
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index.json"))
            .expect("index JSON");
    let tag = index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .unwrap_or("latest")
        .to_string();
    let bundle = env.work.join("bundle");
    let unpack = Command::new("umoci")
        .args(["unpack", "--image", &format!("{}:{tag}", layout.display())])
        .arg(&bundle)
        .output()
        .expect("umoci runs");
    assert!(unpack.status.success(), "umoci: {}", stderr(&unpack));
    assert_eq!(
        std::fs::read_to_string(bundle.join("rootfs/made")).expect("made"),
        "made\n"
    );
    assert!(bundle.join("rootfs/bin/busybox").is_file());
}

#[test]
#[cfg_attr(
    kiln_unprivileged,
    ignore = "needs root: builds mount overlayfs and run RUN steps in namespaces"
)]
fn iidfile_and_metadata_file() {
    let env = Env::new();
    let ctx = env.context("meta", &[("Dockerfile", "FROM busybox\nLABEL a=b\n")]);
    let iid = env.work.join("iid");
    let meta = env.work.join("meta.json");
    env.build_ok(
        &ctx,
        &[
            "-t",
            "meta",
            "--iidfile",
            iid.to_str().unwrap_or_default(),
            "--metadata-file",
            meta.to_str().unwrap_or_default(),
            "--label",
            "c=d",
        ],
    );
    let id = std::fs::read_to_string(&iid).expect("iidfile");
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id}");
    let metadata: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&meta).expect("metadata")).expect("JSON");
    assert_eq!(metadata["containerimage.config.digest"], serde_json::json!(id));
    assert!(
        metadata["containerimage.digest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:"))
    );
    let inspect = stdout(&env.kiln(&["inspect", "meta"]));
    assert!(
        inspect.contains("\"a\":\"b\"") || inspect.contains("\"a\": \"b\""),
        "{inspect}"
    );
    assert!(
        inspect.contains("\"c\":\"d\"") || inspect.contains("\"c\": \"d\""),
        "{inspect}"
    );
}

#[test]
#[cfg_attr(
    kiln_unprivileged,
    ignore = "needs root: builds mount overlayfs and run RUN steps in namespaces"
)]
fn the_readme_example_builds_and_runs() {
    let env = Env::new();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let base = env.work.join("example-base");
    let made = Command::new("bash")
        .arg(repo.join("examples/make-base.sh"))
        .arg(&base)
        .output()
        .expect("bash");
    assert!(made.status.success(), "{}", stderr(&made));
    let context = format!("busybox={}", base.display());
    env.build_ok(
        &repo.join("examples/hello"),
        &["-t", "hello", "--build-context", &context],
    );
    let out = env.run("hello", &[]);
    assert!(out.starts_with("hello from kiln (built on "), "{out}");
}

/// Serves `body` over plain HTTP on a loopback port for as long as the test runs.
fn serve(body: &'static [u8]) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream
                .write_all(head.as_bytes())
                .and_then(|()| stream.write_all(body));
        }
    });
    format!("http://{addr}")
}

#[test]
#[cfg_attr(
    kiln_unprivileged,
    ignore = "needs root: builds mount overlayfs and run RUN steps in namespaces"
)]
fn add_from_a_url_verifies_its_checksum() {
    let env = Env::new();
    let url = serve(b"remote content\n");
    let good = kiln_testutil::sha256_digest(b"remote content\n");
    let wrong = kiln_testutil::sha256_digest(b"something else");
    let ctx = env.context(
        "addurl",
        &[(
            "Dockerfile",
            &format!("FROM busybox\nADD --checksum={good} {url}/files/data.txt /dl/\n"),
        )],
    );
    env.build_ok(&ctx, &["-t", "addurl"]);
    assert_eq!(
        env.run(
            "addurl",
            &["sh", "-c", "cat /dl/data.txt; stat -c %a /dl/data.txt"]
        ),
        "remote content\n600\n"
    );

    let bad = env.context(
        "addurl-bad",
        &[(
            "Dockerfile",
            &format!("FROM busybox\nADD --checksum={wrong} {url}/files/data.txt /dl/\n"),
        )],
    );
    let out = env.build(&bad, &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("checksum mismatch"), "{}", stderr(&out));
}

#[test]
#[cfg_attr(
    kiln_unprivileged,
    ignore = "needs root: builds mount overlayfs and run RUN steps in namespaces"
)]
fn named_contexts_from_images_and_oci_layouts() {
    let env = Env::new();
    let layout = env.work.join("named-layout");
    kiln_testutil::busybox_oci_layout(&layout, "amd64").expect("layout");
    let ctx = env.context(
        "named",
        &[(
            "Dockerfile",
            "FROM base AS from-layout\nRUN echo layout > /origin\n\
             FROM other\nCOPY --from=from-layout /origin /origin\nRUN cat /origin > /copied\n",
        )],
    );
    let base = format!("base=oci-layout://{}", layout.display());
    env.build_ok(
        &ctx,
        &[
            "-t",
            "named",
            "--build-context",
            &base,
            "--build-context",
            "other=docker-image://busybox:latest",
        ],
    );
    assert_eq!(env.run("named", &["cat", "/copied"]), "layout\n");
}

#[test]
#[cfg_attr(
    kiln_unprivileged,
    ignore = "needs root: builds mount overlayfs and run RUN steps in namespaces"
)]
fn a_failing_step_stops_the_build_without_waiting_for_its_siblings() {
    let env = Env::new();
    // The slow sibling would leave a mark in its cache mount if it ever finished; a sleep no other test uses
    // finds its process afterwards.
    let ctx = env.context(
        "failfast",
        &[(
            "Dockerfile",
            "FROM busybox AS slow\nRUN --mount=type=cache,id=failfast,target=/mark sleep 47.25 && touch /mark/finished\n\
             FROM busybox AS broken\nRUN sleep 1 && exit 7\n\
             FROM busybox\nCOPY --from=slow /etc/passwd /a\nCOPY --from=broken /etc/passwd /b\n",
        )],
    );
    let out = env.build(&ctx, &["--max-parallelism", "2"]);
    assert!(!out.status.success());
    let progress = stderr(&out);
    assert!(progress.contains("exit code: 7"), "{progress}");
    let sleeping = || {
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .any(|p| {
                std::fs::read(p.path().join("cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains("47.25"))
            })
    };
    let mut gone = false;
    for _ in 0..50 {
        if !sleeping() {
            gone = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        gone,
        "the sandbox of the sibling step is still running after kiln exited"
    );
    let finished = walk(&env.root.join("cache-mounts"))
        .into_iter()
        .any(|p| p.ends_with("finished"));
    assert!(
        !finished,
        "kiln waited for the sibling step to finish:\n{progress}"
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

#[test]
#[cfg_attr(
    kiln_unprivileged,
    ignore = "needs root: builds mount overlayfs and run RUN steps in namespaces"
)]
fn no_cache_and_no_cache_filter_rerun_what_they_name() {
    let env = Env::new();
    let ctx = env.context(
        "nocache",
        &[(
            "Dockerfile",
            "FROM busybox AS deps\nRUN echo deps > /deps\nFROM busybox\nCOPY --from=deps /deps /deps\nRUN echo final > /final\n",
        )],
    );
    env.build_ok(&ctx, &[]);
    let filtered = env.build_ok(&ctx, &["--no-cache-filter", "deps"]);
    // The stage runs again, and so does what is built on it (its output may have changed).
    assert!(
        ran(&filtered, "RUN echo deps") && ran(&filtered, "RUN echo final"),
        "{filtered}"
    );
    let all = env.build_ok(&ctx, &["--no-cache"]);
    assert!(ran(&all, "RUN echo deps") && ran(&all, "RUN echo final"), "{all}");
    let again = env.build_ok(&ctx, &[]);
    assert!(
        !ran(&again, "RUN echo deps") && !ran(&again, "RUN echo final"),
        "{again}"
    );
}

#[test]
#[cfg_attr(
    kiln_unprivileged,
    ignore = "needs root: builds mount overlayfs and run RUN steps in namespaces"
)]
fn secrets_reach_run_but_not_the_image_nor_the_disk_after_the_build() {
    let env = Env::new();
    let ctx = env.context(
        "secret",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN --mount=type=secret,id=token,required=true wc -c < /run/secrets/token > /seen-length\n",
        )],
    );
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("--root")
        .arg(&env.root)
        .args([
            "build",
            "--progress=plain",
            "-t",
            "secret",
            "--secret",
            "id=token,env=KILN_TEST_TOKEN",
        ])
        .arg(&ctx)
        .env("KILN_TEST_TOKEN", "s3cr3t-value")
        .output()
        .expect("kiln runs");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        env.run(
            "secret",
            &[
                "sh",
                "-c",
                "cat /seen-length; ls /run/secrets 2>/dev/null | wc -l"
            ]
        )
        .split_whitespace()
        .collect::<Vec<_>>(),
        ["12", "0"]
    );
    let pid_files: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .expect("temp dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("kiln-secret-"))
        .filter(|e| std::fs::read(e.path()).is_ok_and(|c| c == b"s3cr3t-value"))
        .collect();
    assert!(pid_files.is_empty(), "the secret stayed on disk: {pid_files:?}");
    let saved = env.work.join("secret.tar");
    let save = env.kiln(&["save", "-o", saved.to_str().unwrap_or_default(), "secret"]);
    assert!(save.status.success(), "{}", stderr(&save));
    let listing = Command::new("tar").arg("-xOf").arg(&saved).output().expect("tar");
    assert!(
        !String::from_utf8_lossy(&listing.stdout).contains("s3cr3t-value"),
        "the secret is in the image"
    );
}
