//! `RUN --mount`, `--network` and `--security` end to end, through `kiln build`: what a step sees, what it
//! can reach, and what never leaves it (writes to a bind mount, secret values).

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

use common::{Env, stderr};

fn build_with_env(env: &Env, context: &Path, args: &[&str], vars: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("--root")
        .arg(&env.root)
        .args(["build", "--progress=plain"])
        .args(args)
        .arg(context)
        .envs(vars.iter().copied())
        .output()
        .expect("kiln runs")
}

fn cat(env: &Env, image: &str, files: &str) -> String {
    env.run(image, &["sh", "-c", &format!("cat {files}")])
}

#[test]
fn bind_mounts_of_the_context_hide_ignored_files_and_never_write_to_it() {
    let env = Env::new();
    let dockerfile = "FROM busybox\n\
        RUN --mount=type=bind,target=/ctx,rw sh -c 'ls -A /ctx > /listing; ls -A /ctx/logs > /logs; \
            echo changed > /ctx/a.txt; rm /ctx/Dockerfile; touch /ctx/new; cat /ctx/a.txt > /wrote'\n\
        RUN --mount=type=bind,target=/ctx cat /ctx/a.txt > /second-look\n\
        RUN --mount=type=tmpfs,target=/m/sub --mount=type=bind,target=/m sh -c 'ls -A /m/sub | wc -l > /inner; cat /m/a.txt > /outer'\n";
    let ctx = env.context(
        "bind-ctx",
        &[
            ("Dockerfile", dockerfile),
            (".dockerignore", "secret.txt\nlogs\n!logs/keep.txt\n"),
            ("a.txt", "original\n"),
            ("secret.txt", "do not show\n"),
            ("logs/x.log", "noise\n"),
            ("logs/keep.txt", "kept\n"),
            ("sub/file", "in the context\n"),
        ],
    );
    env.build_ok(&ctx, &["-t", "bind"]);
    assert_eq!(
        cat(&env, "bind", "/listing /logs"),
        ".dockerignore\nDockerfile\na.txt\nlogs\nsub\nkeep.txt\n",
        "ignored files are not in the mount"
    );
    assert_eq!(cat(&env, "bind", "/wrote /second-look"), "changed\noriginal\n");
    assert_eq!(std::fs::read_to_string(ctx.join("a.txt")).unwrap(), "original\n");
    assert!(
        ctx.join("Dockerfile").is_file() && !ctx.join("new").exists(),
        "a write reached the context"
    );
    assert_eq!(
        cat(&env, "bind", "/inner /outer"),
        "0\noriginal\n",
        "mounts go in by target, a directory before what is mounted inside it"
    );

    // A writable single file is a copy; the directories above hidden files keep their own owner and mode.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(ctx.join("logs"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let dockerfile = "FROM busybox\n\
        RUN --mount=type=bind,source=a.txt,target=/f,rw sh -c 'echo more >> /f && cat /f' > /file-rw\n\
        USER 1000\n\
        RUN --mount=type=bind,target=/ctx,rw sh -c 'stat -c %a /ctx/logs; touch /ctx/logs/new && echo wrote' > /tmp/meta\n";
    std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    env.build_ok(&ctx, &["-t", "bind"]);
    assert_eq!(
        cat(&env, "bind", "/file-rw /tmp/meta"),
        "original\nmore\n777\nwrote\n"
    );
    assert_eq!(std::fs::read_to_string(ctx.join("a.txt")).unwrap(), "original\n");
    assert!(!ctx.join("logs/new").exists());

    // An ignored file is not in the context for a mount's source either, nor behind a symlink to it.
    std::os::unix::fs::symlink("secret.txt", ctx.join("link")).unwrap();
    for source in ["secret.txt", "link", "logs/x.log"] {
        let dockerfile = format!("FROM busybox\nRUN --mount=type=bind,source={source},target=/s cat /s\n");
        std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
        let out = env.build(&ctx, &[]);
        assert!(!out.status.success(), "{source}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("excluded from the context"),
            "{}",
            stderr(&out)
        );
        assert!(!stderr(&out).contains("do not show") && !stderr(&out).contains("noise"));
    }
}

#[test]
fn secrets_as_files_and_variables_stay_out_of_the_image_and_the_key() {
    let env = Env::new();
    let dockerfile = "FROM busybox\nENV TOKEN=placeholder\n\
        RUN --mount=type=secret,id=token,env=TOKEN sh -c 'printf %s \"$TOKEN\" | wc -c > /env-len; \
            ls /run/secrets 2>/dev/null | wc -l > /files'\n\
        RUN --mount=type=secret,source=token,target=/s/tok,mode=0440,uid=1,gid=2 stat -c '%a %u %g %s' /s/tok > /tok\n\
        RUN --mount=type=secret,id=sub/name sh -c 'wc -c < /run/secrets/name > /by-basename'\n\
        RUN --mount=type=secret,id=absent sh -c 'test -e /run/secrets/absent && echo there || echo none' > /absent\n";
    let ctx = env.context("secrets", &[("Dockerfile", dockerfile)]);
    let value = "s3cr3t-value";
    let args = [
        "-t",
        "secrets",
        "--secret",
        "id=token,env=KILN_T",
        "--secret",
        "id=sub/name,env=KILN_T",
    ];
    let out = build_with_env(&env, &ctx, &args, &[("KILN_T", value)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        cat(&env, "secrets", "/env-len /files /tok /by-basename /absent"),
        "12\n0\n440 1 2 12\n12\nnone\n"
    );
    // Another value: the same steps, from the cache (as BuildKit: only the id is in the key).
    let out = build_with_env(&env, &ctx, &args, &[("KILN_T", "another-value")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let progress = stderr(&out);
    let steps = common::steps(&progress);
    assert!(
        !steps.is_empty() && steps.iter().all(|(_, state)| *state == "CACHED"),
        "{progress}"
    );
    let image = env.work.join("secrets.tar");
    let save = env.kiln(&["save", "-o", image.to_str().unwrap(), "secrets"]);
    assert!(save.status.success(), "{}", stderr(&save));
    let unpacked = Command::new("sh")
        .arg("-c")
        .arg(format!("tar -xOf {} | zcat -f", image.display()))
        .output()
        .expect("tar");
    assert!(
        !String::from_utf8_lossy(&unpacked.stdout).contains(value),
        "the secret is in the image"
    );
    let inspect = env.kiln(&["inspect", "secrets"]);
    assert!(!String::from_utf8_lossy(&inspect.stdout).contains(value));

    let required = env.context(
        "secret-required",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN --mount=type=secret,id=absent,required=true true\n",
        )],
    );
    let out = env.build(&required, &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("absent"), "{}", stderr(&out));
}

#[test]
fn a_cache_mount_is_named_by_its_cleaned_target() {
    let env = Env::new();
    let dockerfile = "FROM busybox\n\
        RUN --mount=type=cache,target=/var/cache/x/ sh -c 'echo kept > /var/cache/x/f'\n\
        RUN --mount=type=cache,target=/var/cache/x cat /var/cache/x/f > /seen\n\
        RUN --mount=type=cache,id=/var/cache/x,target=/a,sharing=locked \
            --mount=type=cache,id=/var/cache/x,target=/b,sharing=locked cat /b/f > /twice\n";
    let ctx = env.context("cache-id", &[("Dockerfile", dockerfile)]);
    env.build_ok(&ctx, &["-t", "cache-id"]);
    assert_eq!(
        cat(&env, "cache-id", "/seen /twice"),
        "kept\nkept\n",
        "one cache mounted twice in one step"
    );
    let du = env.kiln(&["du", "-v"]);
    assert!(
        common::stdout(&du).contains("/var/cache/x"),
        "{}",
        common::stdout(&du)
    );
    let prune = env.kiln(&["prune", "-f", "--filter", "type=cache-mount"]);
    assert!(prune.status.success(), "{}", stderr(&prune));
    assert_eq!(
        common::stdout(&prune).lines().next(),
        Some("Deleted cache mount: /var/cache/x")
    );
    assert!(!common::stdout(&env.kiln(&["du", "-v"])).contains("/var/cache/x"));
    assert_eq!(
        cat(&env, "cache-id", "/seen"),
        "kept\n",
        "images and their layers stay"
    );
    let bad = env.kiln(&["prune", "-f", "--filter", "until=24h"]);
    assert!(
        !bad.status.success() && stderr(&bad).contains("type=cache-mount"),
        "{}",
        stderr(&bad)
    );
}

#[test]
fn a_new_cache_mount_starts_as_a_copy_of_its_from_source() {
    let env = Env::new();
    let dockerfile = "FROM busybox AS seed\n\
        RUN mkdir -p /deps && echo from-the-stage > /deps/a\n\
        FROM busybox\n\
        RUN --mount=type=cache,id=seeded,from=seed,source=/deps,target=/c sh -c 'cat /c/a > /first; echo mine > /c/b'\n\
        RUN --mount=type=cache,id=seeded,from=seed,source=/deps,target=/c,ro ls /c > /listing\n";
    let ctx = env.context("cache-from", &[("Dockerfile", dockerfile)]);
    env.build_ok(&ctx, &["-t", "cache-from"]);
    assert_eq!(
        cat(&env, "cache-from", "/first /listing"),
        "from-the-stage\na\nb\n"
    );
    let layer_listing = env.run("cache-from", &["sh", "-c", "test -e /c/a || echo clean"]);
    assert_eq!(
        layer_listing, "clean\n",
        "the cache's contents are not in a layer"
    );
}

/// A service on the host's loopback, such as a cloud metadata proxy or a database only for local use.
fn loopback_service() -> (u16, std::thread::JoinHandle<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    listener.set_nonblocking(false).expect("blocking");
    let handle = std::thread::spawn(move || {
        let mut served = 0;
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            served += 1;
            let _ = conn.write_all(b"host service\n");
            if served == 1 {
                break;
            }
        }
        served
    });
    (port, handle)
}

#[test]
fn steps_cannot_reach_the_hosts_loopback_unless_allowed_the_host_network() {
    let env = Env::new();
    let (port, service) = loopback_service();
    let probe = format!("nc -w 3 127.0.0.1 {port} </dev/null > /reply 2>&1 || true");
    let ctx = env.context(
        "net-default",
        &[("Dockerfile", &format!("FROM busybox\nRUN {probe}\n"))],
    );
    env.build_ok(&ctx, &["-t", "net-default"]);
    assert!(!cat(&env, "net-default", "/reply").contains("host service"));

    let host = env.context(
        "net-host",
        &[(
            "Dockerfile",
            &format!(
                "FROM busybox\nRUN --network=host sh -c '{}'\n",
                probe.replace('\'', "")
            ),
        )],
    );
    let out = env.build(&host, &["-t", "net-host"]);
    assert!(!out.status.success(), "the host network without the entitlement");
    let err = stderr(&out);
    assert!(
        err.contains("Dockerfile:2:") && err.contains("--allow network.host"),
        "{err}"
    );
    assert!(
        !err.contains("#1 "),
        "nothing may run before the entitlement check: {err}"
    );

    env.build_ok(&host, &["-t", "net-host", "--allow", "network.host"]);
    assert_eq!(cat(&env, "net-host", "/reply"), "host service\n");
    assert_eq!(
        service.join().expect("service"),
        1,
        "only the allowed step got through"
    );
}

#[test]
fn insecure_steps_need_the_entitlement_and_get_the_whole_machine() {
    let env = Env::new();
    let ctx = env.context(
        "insecure",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN grep Seccomp: /proc/self/status > /sandboxed\n\
             RUN --security=insecure sh -c 'grep Seccomp: /proc/self/status; mkdir -p /mnt; \
                 mount -t tmpfs none /mnt && echo mounted' > /insecure\n",
        )],
    );
    let out = env.build(&ctx, &["-t", "insecure"]);
    assert!(
        stderr(&out).contains("--allow security.insecure"),
        "{}",
        stderr(&out)
    );
    env.build_ok(&ctx, &["-t", "insecure", "--allow", "security.insecure"]);
    assert_eq!(cat(&env, "insecure", "/sandboxed"), "Seccomp:\t2\n");
    assert_eq!(cat(&env, "insecure", "/insecure"), "Seccomp:\t0\nmounted\n");
}

/// A context holding the host's `ssh-add` with the libraries it links, so a step can ask an agent the way
/// `git` over ssh does.
fn context_with_ssh_add(env: &Env, name: &str, dockerfile: &str) -> std::path::PathBuf {
    let ctx = env.context(name, &[("Dockerfile", dockerfile)]);
    let ldd = Command::new("ldd").arg("/usr/bin/ssh-add").output().expect("ldd");
    let libs = String::from_utf8_lossy(&ldd.stdout).into_owned();
    let files = libs
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .chain(["/usr/bin/ssh-add"]);
    for file in files {
        let into = ctx.join("sshroot").join(file.trim_start_matches('/'));
        std::fs::create_dir_all(into.parent().unwrap()).unwrap();
        std::fs::copy(file, &into).unwrap_or_else(|e| panic!("copying {file}: {e}"));
    }
    ctx
}

fn keygen(dir: &Path, name: &str, kind: &str) -> String {
    let key = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", kind, "-N", "", "-C", name, "-f"])
        .arg(&key)
        .output()
        .expect("ssh-keygen (openssh-client) must be installed");
    assert!(out.status.success(), "{}", stderr(&out));
    let fingerprint = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(key.with_extension("pub"))
        .output()
        .unwrap();
    common::stdout(&fingerprint).trim().to_string()
}

/// A real ssh-agent for the test, killed when dropped.
struct Agent {
    socket: std::path::PathBuf,
    child: std::process::Child,
}

impl Agent {
    fn start(dir: &Path) -> Agent {
        let socket = dir.join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .spawn()
            .expect("ssh-agent");
        while !socket.exists() {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Agent { socket, child }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn ssh_mounts_reach_a_forwarded_agent_and_keys_served_from_memory() {
    let env = Env::new();
    let keys = env.work.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let ed25519 = keygen(&keys, "deploy", "ed25519");
    let rsa = keygen(&keys, "legacy", "rsa");
    let forwarded = keygen(&keys, "personal", "ed25519");
    let agent = Agent::start(&keys);
    let add = Command::new("ssh-add")
        .arg(keys.join("personal"))
        .env("SSH_AUTH_SOCK", &agent.socket)
        .output()
        .unwrap();
    assert!(add.status.success(), "{}", stderr(&add));

    let dockerfile = "FROM busybox\nCOPY sshroot/ /\nCOPY keys/*.pub /keys/\n\
        RUN --mount=type=ssh sh -c 'echo $SSH_AUTH_SOCK; ssh-add -l' > /forwarded\n\
        RUN --mount=type=ssh,id=deploy,uid=1000,mode=0600 sh -c 'stat -c \"%u %a\" $SSH_AUTH_SOCK; ssh-add -l; \
            ssh-add -T /keys/deploy.pub && ssh-add -T /keys/legacy.pub && echo signed' > /served\n\
        RUN --mount=type=ssh,id=deploy,target=/agent --mount=type=ssh,id=default sh -c 'echo $SSH_AUTH_SOCK; ls /run/buildkit' > /two\n\
        RUN --mount=type=ssh sh -c 'ssh-add -D; ssh-add -x </dev/null; true'\n";
    let ctx = context_with_ssh_add(&env, "ssh", dockerfile);
    std::fs::create_dir_all(ctx.join("keys")).unwrap();
    for key in ["deploy", "legacy"] {
        std::fs::copy(
            keys.join(format!("{key}.pub")),
            ctx.join(format!("keys/{key}.pub")),
        )
        .unwrap();
    }
    let deploy = format!(
        "deploy={},{}",
        keys.join("deploy").display(),
        keys.join("legacy").display()
    );
    let socket = agent.socket.to_str().unwrap().to_string();
    let out = build_with_env(
        &env,
        &ctx,
        &["-t", "ssh", "--ssh", "default", "--ssh", &deploy],
        &[("SSH_AUTH_SOCK", &socket)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        cat(&env, "ssh", "/forwarded"),
        format!("/run/buildkit/ssh_agent.0\n{forwarded}\n")
    );
    assert_eq!(
        cat(&env, "ssh", "/served"),
        format!("1000 600\n{ed25519}\n{rsa}\nsigned\n")
    );
    assert_eq!(cat(&env, "ssh", "/two"), "/agent\nssh_agent.1\n");
    assert_eq!(
        env.run(
            "ssh",
            &["sh", "-c", "test -e /run || test -e /agent || echo clean"]
        ),
        "clean\n",
        "mount points do not stay in the image"
    );

    // The step could neither empty nor lock the user's agent.
    let listed = Command::new("ssh-add")
        .arg("-l")
        .env("SSH_AUTH_SOCK", &agent.socket)
        .output()
        .unwrap();
    assert_eq!(common::stdout(&listed).trim(), forwarded, "{}", stderr(&listed));

    let required = env.context(
        "ssh-required",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN --mount=type=ssh,required=true true\n",
        )],
    );
    let out = env.build(&required, &[]);
    assert!(!out.status.success(), "no agent given");
    assert!(stderr(&out).contains("--ssh"), "{}", stderr(&out));
}
