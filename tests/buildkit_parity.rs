//! Behaviour checked against docker 20.10's BuildKit: the same Dockerfiles were built with
//! `DOCKER_BUILDKIT=1 docker build` and compared file by file (bench/compare-semantics.sh and its cases in
//! bench/semantics/cases); the expected values below are what BuildKit produced. These tests need no docker: they
//! build with kiln FROM the busybox image of `common::Env` (whose /etc/passwd has root and nobody, as the peers'
//! base had) and look at the result with `kiln run` and `kiln inspect`.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

/// `stat` of each path in the image: `PATH TYPE MODE UID:GID` lines (symlinks not followed).
fn stat(env: &Env, image: &str, paths: &[&str]) -> Vec<String> {
    let mut cmd = vec!["stat", "-c", "%n %F %a %u:%g"];
    cmd.extend_from_slice(paths);
    env.run(image, &cmd).lines().map(str::to_string).collect()
}

fn inspect(env: &Env, image: &str) -> serde_json::Value {
    let out = env.kiln(&["inspect", image]);
    assert!(out.status.success(), "inspect: {}", stderr(&out));
    let value: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("inspect JSON");
    match value {
        serde_json::Value::Array(mut items) if !items.is_empty() => items.swap_remove(0),
        other => other,
    }
}

/// The runtime config (`Config`) of `kiln inspect`'s entry.
fn config_doc(inspect: &serde_json::Value) -> serde_json::Value {
    inspect["Config"].clone()
}

/// The image's last `n` history entries (the build's), `created_by` with ` (empty)` for an empty layer.
fn build_history(inspect: &serde_json::Value, n: usize) -> Vec<String> {
    let history = inspect["ImageConfig"]["history"]
        .as_array()
        .unwrap_or_else(|| panic!("no history in {inspect}"));
    history[history.len().saturating_sub(n)..]
        .iter()
        .map(|h| {
            let text = h["created_by"].as_str().unwrap_or_default();
            let empty = h["empty_layer"].as_bool().unwrap_or(false);
            format!("{text}{}", if empty { " (empty)" } else { "" })
        })
        .collect()
}

#[test]
#[cfg_attr(
    kiln_unprivileged,
    ignore = "needs root: builds mount overlayfs and run RUN steps in namespaces"
)]
fn arg_and_env_scoping_as_run_sees_it() {
    let env = Env::new();
    let ctx = env.context(
        "scoping",
        &[(
            "Dockerfile",
            "ARG GV=global\nARG GONLY=gonly\n\
             FROM busybox AS base\nARG GV\nARG NOVAL\nARG X=argx\nARG D=${X}-derived\nENV Y=envy\nARG Y=argy\n\
             ARG Z=argz\nENV Z=envz\nWORKDIR /w-$Y-$Z\n\
             RUN echo \"GV=$GV GONLY=${GONLY:-unset} NOVAL=${NOVAL-unset} X=$X D=$D Y=$Y Z=$Z\" > /args.txt\n\
             FROM base AS child\n\
             RUN echo \"X=${X-unset} Y=$Y GV=${GV-unset} D=${D-unset}\" > /child.txt\n\
             ARG X\nARG GONLY\nRUN echo \"X=${X-unset} GONLY=${GONLY-unset}\" > /child2.txt\n",
        )],
    );
    env.build_ok(&ctx, &["-t", "scoping", "--build-arg", "X=cli"]);
    // Exactly BuildKit's files: an ARG after an ENV of the same name wins in RUN (Y=argy), an ENV after an ARG
    // wins (Z=envz); a stage built FROM another keeps its ARG values, with its ENV applied over them (Y=envy).
    assert_eq!(
        env.run("scoping", &["cat", "/args.txt", "/child.txt", "/child2.txt"]),
        "GV=global GONLY=unset NOVAL=unset X=cli D=cli-derived Y=argy Z=envz\n\
         X=cli Y=envy GV=global D=cli-derived\n\
         X=cli GONLY=gonly\n"
    );
    assert_eq!(env.run("scoping", &["sh", "-c", "pwd"]), "/w-argy-envz\n");
    let config = config_doc(&inspect(&env, "scoping"));
    let envs = config["Env"].to_string();
    assert!(
        envs.contains("\"Y=envy\"") && envs.contains("\"Z=envz\""),
        "{envs}"
    );
    assert!(!envs.contains("X="), "ARGs stay out of the config: {envs}");
}

#[test]
#[cfg_attr(
    kiln_unprivileged,
    ignore = "needs root: builds mount overlayfs and run RUN steps in namespaces"
)]
fn workdir_creates_directories_owned_by_the_user() {
    let env = Env::new();
    let ctx = env.context(
        "workdir",
        &[(
            "Dockerfile",
            "FROM busybox\n\
             RUN echo 'app:x:1000:1000::/home/app:/bin/sh' >> /etc/passwd && echo 'app:x:1000:' >> /etc/group\n\
             WORKDIR /\nWORKDIR /tmp\nWORKDIR /root-made/dir\nUSER app\nWORKDIR /home/app/sub\nWORKDIR rel/deeper\n\
             WORKDIR /tmp\nUSER 2000:3000\nWORKDIR /numeric/dir\nUSER nobody\nWORKDIR /srv\n",
        )],
    );
    env.build_ok(&ctx, &["-t", "workdirs"]);
    assert_eq!(
        stat(
            &env,
            "workdirs",
            &[
                "/tmp",
                "/root-made",
                "/root-made/dir",
                "/home",
                "/home/app",
                "/home/app/sub",
                "/home/app/sub/rel/deeper",
                "/numeric",
                "/numeric/dir",
                "/srv",
            ]
        ),
        [
            "/tmp directory 1777 0:0",
            "/root-made directory 755 0:0",
            "/root-made/dir directory 755 0:0",
            "/home directory 755 1000:1000",
            "/home/app directory 755 1000:1000",
            "/home/app/sub directory 755 1000:1000",
            "/home/app/sub/rel/deeper directory 755 1000:1000",
            "/numeric directory 755 2000:3000",
            "/numeric/dir directory 755 2000:3000",
            "/srv directory 755 65534:65534",
        ]
    );
}

#[test]
#[cfg_attr(
    kiln_unprivileged,
    ignore = "needs root: builds mount overlayfs and run RUN steps in namespaces"
)]
fn copy_owners_of_files_and_the_directories_it_creates() {
    let env = Env::new();
    let ctx = env.context(
        "chown",
        &[
            (
                "Dockerfile",
                "FROM busybox\n\
                 RUN echo 'app:x:1000:1000::/home/app:/bin/sh' >> /etc/passwd && echo 'app:x:1000:' >> /etc/group\n\
                 COPY f.txt /new/a/b/\n\
                 COPY --chown=1000:1000 f.txt /chowned/x/y/\n\
                 COPY --chown=app dir /appdir/nested/\n\
                 COPY --chown=app:app f.txt /tmp/f.txt\n\
                 COPY --chmod=700 f.txt /modes/\n\
                 USER app\n\
                 COPY f.txt /asuser/p/\n\
                 WORKDIR /wd-as-user\n\
                 COPY f.txt sub/\n",
            ),
            ("f.txt", "f\n"),
            ("dir/one", "one\n"),
            ("dir/sub/two", "two\n"),
        ],
    );
    env.build_ok(&ctx, &["-t", "chowns"]);
    assert_eq!(
        stat(
            &env,
            "chowns",
            &[
                "/new",
                "/new/a/b",
                "/new/a/b/f.txt",
                "/chowned",
                "/chowned/x/y",
                "/chowned/x/y/f.txt",
                "/appdir",
                "/appdir/nested",
                "/appdir/nested/one",
                "/appdir/nested/sub",
                "/appdir/nested/sub/two",
                "/tmp",
                "/tmp/f.txt",
                "/modes",
                "/modes/f.txt",
                "/asuser",
                "/asuser/p/f.txt",
                "/wd-as-user",
                "/wd-as-user/sub",
                "/wd-as-user/sub/f.txt",
            ]
        ),
        [
            // Parents COPY creates are root's 0755, or --chown's owner when there is one; USER plays no part.
            "/new directory 755 0:0",
            "/new/a/b directory 755 0:0",
            "/new/a/b/f.txt regular file 644 0:0",
            "/chowned directory 755 1000:1000",
            "/chowned/x/y directory 755 1000:1000",
            "/chowned/x/y/f.txt regular file 644 1000:1000",
            "/appdir directory 755 1000:1000",
            "/appdir/nested directory 755 1000:1000",
            "/appdir/nested/one regular file 644 1000:1000",
            "/appdir/nested/sub directory 755 1000:1000",
            "/appdir/nested/sub/two regular file 644 1000:1000",
            "/tmp directory 1777 0:0",
            "/tmp/f.txt regular file 644 1000:1000",
            "/modes directory 755 0:0",
            "/modes/f.txt regular file 700 0:0",
            "/asuser directory 755 0:0",
            "/asuser/p/f.txt regular file 644 0:0",
            "/wd-as-user directory 755 1000:1000",
            "/wd-as-user/sub directory 755 0:0",
            "/wd-as-user/sub/f.txt regular file 644 0:0",
        ]
    );
}

#[test]
#[cfg_attr(
    kiln_unprivileged,
    ignore = "needs root: builds mount overlayfs and run RUN steps in namespaces"
)]
fn copy_from_a_stage_keeps_owners_and_modes_unless_chown() {
    let env = Env::new();
    let ctx = env.context(
        "from",
        &[(
            "Dockerfile",
            "FROM busybox AS src\n\
             RUN mkdir -p /out/sub && echo a > /out/a && echo b > /out/sub/b && chown -R 1000:1000 /out \
              && chown 2000:2001 /out/sub/b && chmod 0600 /out/a && ln -s a /out/link && chmod 1777 /out/sub \
              && chmod 4755 /out/sub/b\n\
             FROM busybox\n\
             COPY --from=src /out /keep/\n\
             COPY --from=src /out/sub/b /keepfile\n\
             COPY --from=src --chown=5:6 /out /reset/\n\
             COPY --from=src /out/link /linkcopy\n\
             COPY --from=src /out/sub /parentless/deep/\n",
        )],
    );
    env.build_ok(&ctx, &["-t", "fromstage"]);
    assert_eq!(
        stat(
            &env,
            "fromstage",
            &[
                "/keep",
                "/keep/a",
                "/keep/link",
                "/keep/sub",
                "/keep/sub/b",
                "/keepfile",
                "/reset",
                "/reset/a",
                "/reset/link",
                "/reset/sub",
                "/reset/sub/b",
                "/linkcopy",
                "/parentless",
                "/parentless/deep",
                "/parentless/deep/b",
            ]
        ),
        [
            // The destination directory is made anew (root's, 0755); what is copied keeps owner and mode,
            // setuid and sticky bits included.
            "/keep directory 755 0:0",
            "/keep/a regular file 600 1000:1000",
            "/keep/link symbolic link 777 0:0",
            "/keep/sub directory 1777 1000:1000",
            "/keep/sub/b regular file 4755 2000:2001",
            "/keepfile regular file 4755 2000:2001",
            // --chown takes everything, the destination and symlinks too, and keeps the modes.
            "/reset directory 755 5:6",
            "/reset/a regular file 600 5:6",
            "/reset/link symbolic link 777 5:6",
            "/reset/sub directory 1777 5:6",
            "/reset/sub/b regular file 4755 5:6",
            // A symlink named as the source is followed.
            "/linkcopy regular file 600 1000:1000",
            "/parentless directory 755 0:0",
            "/parentless/deep directory 755 0:0",
            "/parentless/deep/b regular file 4755 2000:2001",
        ]
    );
}

#[test]
#[cfg_attr(
    kiln_unprivileged,
    ignore = "needs root: builds mount overlayfs and run RUN steps in namespaces"
)]
fn add_extracts_a_local_tar_gz_with_its_owners_and_modes() {
    let env = Env::new();
    let ctx = env.context(
        "add",
        &[(
            "Dockerfile",
            "FROM busybox\nADD archive.tar.gz /x/\nADD archive.tar.gz /y\nADD notarchive.txt /n/\n",
        )],
    );
    std::fs::write(ctx.join("notarchive.txt"), "not an archive\n").expect("file");
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |name: &str, kind: tar::EntryType, mode: u32, owner: u64, data: &[u8], link: &str| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(owner);
        header.set_gid(owner + 1);
        header.set_mtime(1_600_000_000);
        header.set_size(data.len() as u64);
        if !link.is_empty() {
            header.set_link_name(link).expect("link name");
        }
        header.set_path(name).expect("path");
        header.set_cksum();
        tar.append(&header, data).expect("append");
    };
    add("top/", tar::EntryType::Directory, 0o750, 123, b"", "");
    add("top/file", tar::EntryType::Regular, 0o640, 123, b"hello\n", "");
    add("top/exec", tar::EntryType::Regular, 0o755, 0, b"#!/bin/sh\n", "");
    add("top/sym", tar::EntryType::Symlink, 0o777, 123, b"", "file");
    add(
        "implicit/parent/file",
        tar::EntryType::Regular,
        0o644,
        9,
        b"deep\n",
        "",
    );
    let bytes = tar.into_inner().expect("tar");
    std::fs::write(ctx.join("archive.tar"), bytes).expect("tar file");
    let status = Command::new("gzip")
        .args(["-n", "archive.tar"])
        .current_dir(&ctx)
        .status()
        .expect("gzip runs");
    assert!(status.success() && Path::new(&ctx.join("archive.tar.gz")).is_file());

    env.build_ok(&ctx, &["-t", "added"]);
    assert_eq!(
        stat(
            &env,
            "added",
            &[
                "/x",
                "/x/top",
                "/x/top/file",
                "/x/top/exec",
                "/x/top/sym",
                "/x/implicit",
                "/x/implicit/parent",
                "/x/implicit/parent/file",
                "/y/top/file",
                "/n/notarchive.txt",
            ]
        ),
        [
            "/x directory 755 0:0",
            "/x/top directory 750 123:124",
            "/x/top/file regular file 640 123:124",
            "/x/top/exec regular file 755 0:1",
            "/x/top/sym symbolic link 777 123:124",
            // Directories the archive does not list are made root's 0755.
            "/x/implicit directory 755 0:0",
            "/x/implicit/parent directory 755 0:0",
            "/x/implicit/parent/file regular file 644 9:10",
            // Without a trailing slash the destination is a directory all the same.
            "/y/top/file regular file 640 123:124",
            "/n/notarchive.txt regular file 644 0:0",
        ]
    );
}

#[test]
#[cfg_attr(
    kiln_unprivileged,
    ignore = "needs root: builds mount overlayfs and run RUN steps in namespaces"
)]
fn wildcards_that_match_nothing_copy_nothing() {
    let env = Env::new();
    let ctx = env.context(
        "nomatch",
        &[
            (
                "Dockerfile",
                "FROM busybox\nCOPY nomatch* /d/\nCOPY f.txt nomatch* /e/\n",
            ),
            ("f.txt", "f\n"),
        ],
    );
    env.build_ok(&ctx, &["-t", "nomatch"]);
    assert_eq!(
        env.run(
            "nomatch",
            &["sh", "-c", "ls /e; ls -d /d 2>/dev/null || echo no-d"]
        ),
        "f.txt\nno-d\n"
    );
    // A missing source without wildcards is still an error.
    let ctx = env.context(
        "missing",
        &[("Dockerfile", "FROM busybox\nCOPY missing.txt /d/\n")],
    );
    assert!(!env.build(&ctx, &[]).status.success());
}

#[test]
#[cfg_attr(
    kiln_unprivileged,
    ignore = "needs root: builds mount overlayfs and run RUN steps in namespaces"
)]
fn history_and_config_entries() {
    let env = Env::new();
    let ctx = env.context(
        "history",
        &[
            (
                "Dockerfile",
                "FROM busybox AS src\nRUN echo x > /x\n\
                 FROM busybox\nWORKDIR /\nWORKDIR /app\nEXPOSE 8080 443/tcp 53/udp\nONBUILD RUN echo hi\n\
                 ARG OWNER=1234\nCOPY --chown=${OWNER} f.txt /c/$OWNER/\nCOPY --from=src /x /y\n\
                 STOPSIGNAL SIGUSR1\nVOLUME /data\nLABEL a=1 \"b c\"=\"d e\"\nUSER 1000\n\
                 ENTRYPOINT [\"/bin/echo\"]\n",
            ),
            ("f.txt", "f\n"),
        ],
    );
    env.build_ok(&ctx, &["-t", "hist"]);
    let doc = inspect(&env, "hist");
    let config = config_doc(&doc);
    assert_eq!(config["WorkingDir"], "/app");
    assert_eq!(config["User"], "1000");
    assert_eq!(config["StopSignal"], "SIGUSR1");
    assert_eq!(config["OnBuild"], serde_json::json!(["RUN echo hi"]));
    assert_eq!(config["Entrypoint"], serde_json::json!(["/bin/echo"]));
    // The base's CMD ["/bin/sh"] goes with an ENTRYPOINT set in the stage.
    assert!(config.get("Cmd").is_none_or(|c| c.is_null()), "{config}");
    assert_eq!(config["Labels"], serde_json::json!({"a": "1", "b c": "d e"}));
    let expected = [
        // No layer for WORKDIR /, no entry for ONBUILD, COPY without --from: as BuildKit 20.10 wrote them.
        "WORKDIR / (empty)",
        "WORKDIR /app",
        // 20.10 writes `EXPOSE map[443/tcp:{} 53/udp:{} 8080/tcp:{}]`, current BuildKit the list as written.
        "EXPOSE [8080/tcp 443/tcp 53/udp] (empty)",
        "ARG OWNER=1234 (empty)",
        // 20.10 leaves --chown out (`COPY f.txt /c/1234/`); current BuildKit writes it, expanded.
        "COPY --chown=1234 f.txt /c/1234/ # buildkit",
        "COPY /x /y # buildkit",
        "STOPSIGNAL SIGUSR1 (empty)",
        "VOLUME [/data] (empty)",
        "LABEL a=1 b c=d e (empty)",
        "USER 1000 (empty)",
        "ENTRYPOINT [\"/bin/echo\"] (empty)",
    ];
    assert_eq!(build_history(&doc, expected.len()), expected, "{doc}");
}
