//! Hostile Dockerfiles and contexts, end to end through `kiln build`: each test crafts the input an attack
//! needs and asserts that the host's sentinel stays unread and untouched. SECURITY.md maps claims to these.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Env, stderr, stdout};

/// A file outside every context, with content no test writes anywhere else.
fn sentinel(env: &Env) -> (std::path::PathBuf, &'static str) {
    let dir = env.work.join("outside");
    std::fs::create_dir_all(&dir).unwrap();
    let text = "HOST-SENTINEL-7f3a";
    std::fs::write(dir.join("sentinel.txt"), text).unwrap();
    (dir, text)
}

/// Every file under `dir`, decompressed where it is gzip, that contains `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    let script = "find \"$1\" -type f | while read -r f; do \
                  if zcat -f \"$f\" 2>/dev/null | grep -q -a -F \"$2\"; then echo \"$f\"; fi; done";
    let out = Command::new("sh")
        .args(["-c", script, "sh"])
        .arg(dir)
        .arg(needle)
        .output()
        .expect("sh");
    stdout(&out).lines().map(str::to_string).collect()
}

#[test]
fn copy_sources_never_leave_the_context() {
    let env = Env::new();
    let (outside, text) = sentinel(&env);
    let ctx = env.context("escape-src", &[("Dockerfile", "FROM busybox\n")]);
    std::os::unix::fs::symlink(&outside, ctx.join("outdir")).unwrap();
    std::os::unix::fs::symlink("../outside/sentinel.txt", ctx.join("uplink")).unwrap();
    std::os::unix::fs::symlink(outside.join("sentinel.txt"), ctx.join("abslink")).unwrap();
    std::os::unix::fs::symlink("loop2", ctx.join("loop1")).unwrap();
    std::os::unix::fs::symlink("loop1", ctx.join("loop2")).unwrap();
    for copy in [
        "COPY ../outside/sentinel.txt /got",
        "COPY outdir/sentinel.txt /got",
        "COPY outdir/* /got/",
        "COPY uplink /got",
        "COPY abslink /got",
        "COPY loop1 /got",
        "ADD outdir/sentinel.txt /got",
        "COPY --parents outdir/sentinel.txt /got/",
    ] {
        std::fs::write(ctx.join("Dockerfile"), format!("FROM busybox\n{copy}\n")).unwrap();
        let out = env.build(&ctx, &["-t", "escape-src"]);
        let err = stderr(&out);
        assert!(!err.contains(text), "{copy}: {err}");
        if out.status.success() {
            let seen = env.run("escape-src", &["sh", "-c", "cat /got /got/* 2>/dev/null; true"]);
            assert!(!seen.contains(text), "{copy} copied the host's file");
        }
    }
}

#[test]
fn copy_destinations_through_symlinks_in_the_image_stay_in_the_image() {
    let env = Env::new();
    let marker = format!("kiln-pwn-{}", std::process::id());
    let dockerfile = format!(
        "FROM busybox\n\
         RUN ln -s / /x && mkdir -p /deep/er && ln -s ../../../../.. /deep/er/up && mkdir -p /tmp\n\
         COPY f /x/tmp/{marker}\n\
         COPY f /deep/er/up/{marker}\n\
         COPY --from=busybox /bin/busybox /x/tmp/{marker}.bin\n"
    );
    let ctx = env.context("escape-dst", &[("Dockerfile", &dockerfile), ("f", "payload\n")]);
    env.build_ok(&ctx, &["-t", "escape-dst"]);
    for host in [
        format!("/tmp/{marker}"),
        format!("/{marker}"),
        format!("/tmp/{marker}.bin"),
    ] {
        assert!(!Path::new(&host).exists(), "{host} was written on the host");
    }
    let seen = env.run(
        "escape-dst",
        &[
            "sh",
            "-c",
            &format!("cat /tmp/{marker} /{marker}; test -x /tmp/{marker}.bin && echo bin"),
        ],
    );
    assert_eq!(seen, "payload\npayload\nbin\n");
}

#[test]
fn mount_sources_never_leave_their_filesystem() {
    let env = Env::new();
    let (outside, text) = sentinel(&env);
    let stage = format!(
        "FROM busybox AS stage\nRUN ln -s / /l && ln -s {} /o && echo from-the-stage > /marker\nFROM busybox\n",
        outside.display()
    );
    let ctx = env.context(
        "escape-mount",
        &[(
            "Dockerfile",
            &format!("{stage}RUN --mount=type=bind,from=stage,source=/l,target=/m cat /m/marker > /seen\n"),
        )],
    );
    env.build_ok(&ctx, &["-t", "escape-mount"]);
    assert_eq!(
        env.run("escape-mount", &["cat", "/seen"]),
        "from-the-stage\n",
        "/l is the stage's own root"
    );
    // /o names the host's directory, which the stage does not have: the mount fails or shows nothing.
    let through = format!(
        "{stage}RUN --mount=type=bind,from=stage,source=/o,target=/m sh -c 'cat /m/sentinel.txt; true' > /o-seen\n"
    );
    std::fs::write(ctx.join("Dockerfile"), through).unwrap();
    let out = env.build(&ctx, &["-t", "escape-mount"]);
    assert!(!stderr(&out).contains(text));
    if out.status.success() {
        assert!(!env.run("escape-mount", &["cat", "/o-seen"]).contains(text));
    }
    std::os::unix::fs::symlink(&outside, ctx.join("outdir")).unwrap();
    for source in ["../../outside", "outdir", "../outside/sentinel.txt"] {
        let dockerfile = format!(
            "FROM busybox\nRUN --mount=type=bind,source={source},target=/m sh -c 'cat /m/sentinel.txt /m; true'\n"
        );
        std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
        let out = env.build(&ctx, &["--no-cache"]);
        assert!(!stderr(&out).contains(text), "{source}: {}", stderr(&out));
    }
}

#[test]
fn secret_values_appear_nowhere_after_the_build() {
    let env = Env::new();
    let file_secret = "FILE-SECRET-91c2";
    let env_secret = "ENV-SECRET-44d8";
    let secret_file = env.work.join("token.txt");
    std::fs::write(&secret_file, file_secret).unwrap();
    let dockerfile = "FROM busybox\n\
        RUN --mount=type=secret,id=token --mount=type=secret,id=key,env=KEY \
            sh -c 'test -s /run/secrets/token && test -n \"$KEY\" && echo used > /used'\n\
        RUN --mount=type=secret,id=token,required=true --mount=type=cache,target=/c sh -c 'wc -c < /run/secrets/token > /c/len'\n";
    let ctx = env.context("secret-scan", &[("Dockerfile", dockerfile)]);
    let metadata = env.work.join("metadata.json");
    let cache = env.work.join("exported-cache");
    let token = format!("id=token,src={}", secret_file.display());
    let cache_to = format!("type=local,dest={},mode=max,cache-mounts=true", cache.display());
    for progress in ["--progress=plain", "--progress=rawjson"] {
        let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("--root")
            .arg(&env.root)
            .args([
                "build",
                progress,
                "-t",
                "secret-scan",
                "--no-cache",
                "--secret",
                &token,
            ])
            .args(["--secret", "id=key,env=KILN_KEY", "--metadata-file"])
            .arg(&metadata)
            .args(["--cache-to", &cache_to])
            .arg(&ctx)
            .env("KILN_KEY", env_secret)
            .output()
            .expect("kiln runs");
        let shown = format!("{}{}", stdout(&out), stderr(&out));
        if progress == "--progress=rawjson" && !out.status.success() && shown.contains("rawjson") {
            // A progress mode this kiln does not have; the plain run covered the rest.
            continue;
        }
        assert!(out.status.success(), "{shown}");
        for value in [file_secret, env_secret] {
            assert!(!shown.contains(value), "{progress} output shows a secret");
        }
    }
    assert_eq!(env.run("secret-scan", &["cat", "/used"]), "used\n");
    let inspect = env.kiln(&["inspect", "secret-scan"]);
    let saved = env.work.join("image.tar");
    let save = env.kiln(&["save", "-o", saved.to_str().unwrap(), "secret-scan"]);
    assert!(save.status.success(), "{}", stderr(&save));
    let unpacked = env.work.join("image");
    std::fs::create_dir_all(&unpacked).unwrap();
    let tar = Command::new("tar")
        .arg("-xf")
        .arg(&saved)
        .arg("-C")
        .arg(&unpacked)
        .status()
        .unwrap();
    assert!(tar.success());
    for value in [file_secret, env_secret] {
        assert!(!stdout(&inspect).contains(value));
        for dir in [&env.root, &cache, &unpacked] {
            assert_eq!(
                files_containing(dir, value),
                Vec::<String>::new(),
                "{value} under {}",
                dir.display()
            );
        }
        assert_eq!(files_containing(&metadata, value), Vec::<String>::new());
    }
}

#[test]
fn an_add_archive_that_would_fill_the_disk_is_refused_with_a_clear_error() {
    let env = Env::new();
    let ctx = env.context("bomb", &[("Dockerfile", "FROM busybox\nADD bomb.tar.gz /\n")]);
    let mut header = tar::Header::new_gnu();
    header.set_path("zeros").unwrap();
    header.set_size(1 << 50);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let mut bomb = header.as_bytes().to_vec();
    bomb.extend(vec![0u8; 4096]);
    std::fs::write(ctx.join("bomb.tar"), &bomb).unwrap();
    assert!(
        Command::new("gzip")
            .arg(ctx.join("bomb.tar"))
            .status()
            .unwrap()
            .success()
    );
    let out = env.build(&ctx, &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("zeros") && err.contains("decompression bomb"),
        "{err}"
    );
    // The store is left sound and usable: the next build works.
    let check = env.kiln(&["store", "check"]);
    assert!(check.status.success(), "{}{}", stdout(&check), stderr(&check));
    std::fs::write(ctx.join("Dockerfile"), "FROM busybox\nCOPY Dockerfile /\n").unwrap();
    env.build_ok(&ctx, &[]);

    // And the check does see damage: a blob whose bytes changed.
    let blobs = env.root.join("blobs/sha256");
    let blob = std::fs::read_dir(&blobs)
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    std::fs::write(&blob, b"tampered").unwrap();
    let check = env.kiln(&["store", "check"]);
    assert!(!check.status.success());
    assert!(
        stdout(&check).contains("error: blob sha256:"),
        "{}",
        stdout(&check)
    );
    let quick = env.kiln(&["store", "check", "--quick"]);
    assert!(
        quick.status.success(),
        "--quick does not read blobs: {}",
        stdout(&quick)
    );
    let repair = env.kiln(&["store", "check", "--repair"]);
    assert!(repair.status.success(), "{}{}", stdout(&repair), stderr(&repair));
    assert!(
        stdout(&repair).contains("removed: corrupt blob sha256:"),
        "{}",
        stdout(&repair)
    );
    assert!(
        env.kiln(&["store", "check"]).status.success(),
        "sound after the repair"
    );
    // What the damage took is built (or loaded) again.
    let layout = env.work.join("busybox-again");
    kiln_testutil::busybox_oci_layout(&layout, "amd64").unwrap();
    env.load_as(&layout, "busybox:latest");
    env.build_ok(&ctx, &[]);
}

#[test]
fn a_stage_whose_files_are_symlinks_out_gives_copy_nothing_of_the_host() {
    let env = Env::new();
    let (outside, text) = sentinel(&env);
    let dockerfile = format!(
        "FROM busybox AS stage\nRUN ln -s {dir}/sentinel.txt /l && ln -s {dir} /d && ln -s / /root-link\n\
         FROM busybox\nCOPY --from=stage /l /got\n",
        dir = outside.display()
    );
    let ctx = env.context("stage-links", &[("Dockerfile", &dockerfile)]);
    for copy in [
        "COPY --from=stage /l /got",
        "COPY --from=stage /d/sentinel.txt /got",
        &format!(
            "COPY --from=stage /root-link{}/sentinel.txt /got",
            outside.display()
        ),
    ] {
        let body = dockerfile.replace("COPY --from=stage /l /got", copy);
        std::fs::write(ctx.join("Dockerfile"), body).unwrap();
        let out = env.build(&ctx, &["-t", "stage-links"]);
        assert!(!stderr(&out).contains(text), "{copy}");
        if out.status.success() {
            let seen = env.run("stage-links", &["sh", "-c", "cat /got 2>/dev/null; true"]);
            assert!(!seen.contains(text), "{copy} copied the host's file");
        }
    }
}

#[test]
fn a_registry_password_appears_nowhere_but_the_docker_config() {
    let password = "hunter2-REGISTRY-PASSWORD";
    let registry = kiln_testutil::Registry::start_with_htpasswd("kiln", password);
    let env = Env::new();
    let docker_config = env.work.join("docker-config");
    let kiln = |args: &[&str], stdin: Option<&str>| {
        use std::io::Write as _;
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("--root")
            .arg(&env.root)
            .args(args)
            .env("DOCKER_CONFIG", &docker_config)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("kiln runs");
        if let Some(input) = stdin {
            child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        }
        drop(child.stdin.take());
        child.wait_with_output().unwrap()
    };
    let wrong = kiln(
        &["login", "-u", "kiln", "--password-stdin", registry.addr()],
        Some("wrong-one"),
    );
    assert!(!wrong.status.success());
    let login = kiln(
        &["login", "-u", "kiln", "--password-stdin", registry.addr()],
        Some(password),
    );
    assert!(login.status.success(), "{}", stderr(&login));
    let ctx = env.context(
        "pushed",
        &[("Dockerfile", "FROM busybox\nRUN echo built > /built\n")],
    );
    let image = format!("{}/pushed:1", registry.addr());
    let cache = format!("type=registry,ref={}/pushed:cache,mode=max", registry.addr());
    let build = kiln(
        &[
            "build",
            "--progress=plain",
            "-t",
            &image,
            "--push",
            "--cache-to",
            &cache,
            ctx.to_str().unwrap(),
        ],
        None,
    );
    assert!(build.status.success(), "{}", stderr(&build));
    let pull = kiln(&["pull", &image], None);
    assert!(pull.status.success(), "{}", stderr(&pull));
    for out in [&wrong, &login, &build, &pull] {
        let shown = format!("{}{}", stdout(out), stderr(out));
        assert!(!shown.contains(password), "output shows the password: {shown}");
    }
    assert_eq!(files_containing(&env.root, password), Vec::<String>::new());
}
