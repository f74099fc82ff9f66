//! The RUN sandbox, for real: namespaces, overlayfs, pivot_root. Needs root (CI runs the tests as root); built
//! by another user, the tests that need it are ignored with the reason (see build.rs). The rootfs is made from the host's
//! busybox-static.

use std::collections::BTreeSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use kiln_sandbox::{
    ExecMount, ExecSpec, Network, OutputStream, RunStatus, Sandbox, SandboxError, Security, check_emulation,
};

const BUSYBOX: &str = "/bin/busybox";
const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "ls", "id", "hostname", "rm", "mkdir", "touch", "sleep", "uname", "ip", "env",
    "pwd", "wc", "kill", "grep", "stat", "test", "true", "mount", "head", "sort", "nc", "unshare", "linux32",
    "mknod",
];
/// No test command takes more than a second or two; this only keeps a broken sandbox from hanging CI.
const TIMEOUT: Duration = Duration::from_secs(60);

struct TempDir(PathBuf);

/// Where fixtures go: the temp dir, unless that is itself an overlayfs (tests running inside a container),
/// which cannot hold an overlay's upper dir; /dev/shm (tmpfs) can.
fn test_base() -> PathBuf {
    const OVERLAYFS_SUPER_MAGIC: u64 = 0x794c_7630;
    let base = std::env::temp_dir();
    match rustix::fs::statfs(&base) {
        Ok(fs) if u64::try_from(fs.f_type) == Ok(OVERLAYFS_SUPER_MAGIC) => PathBuf::from("/dev/shm"),
        _ => base,
    }
}

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = test_base().join(format!("kiln-sandbox-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating the test's temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A busybox rootfs in `dir`. No /proc, /dev, /sys or /etc/hosts: the sandbox must create (and afterwards
/// remove) those mount points itself.
fn busybox_rootfs(dir: &Path) {
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::copy(BUSYBOX, dir.join("bin/busybox")).expect("this test needs busybox-static at /bin/busybox");
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\n\
         nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n\
         app:x:1000:1000:app:/home/app:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("etc/group"),
        "root:x:0:\napp:x:1000:\nextra:x:2000:app\nnogroup:x:65534:\n",
    )
    .unwrap();
    std::fs::write(dir.join("etc/lowerfile"), "from the lower dir\n").unwrap();
}

struct Fixture {
    tmp: TempDir,
}

impl Fixture {
    fn new(name: &str) -> Self {
        let tmp = TempDir::new(name);
        busybox_rootfs(&tmp.0.join("lower"));
        for d in ["upper", "work"] {
            std::fs::create_dir(tmp.0.join(d)).unwrap();
        }
        Self { tmp }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.0.join(name)
    }

    fn upper(&self) -> PathBuf {
        self.path("upper")
    }

    fn spec(&self, script: &str) -> ExecSpec {
        ExecSpec {
            lower_dirs: vec![self.path("lower")],
            upper_dir: self.upper(),
            work_dir: self.path("work"),
            args: vec!["sh".into(), "-c".into(), script.into()],
            env: vec!["PATH=/bin".into()],
            ..Default::default()
        }
    }

    /// Everything in the upper dir, relative paths.
    fn upper_entries(&self) -> BTreeSet<String> {
        fn walk(base: &Path, dir: &Path, out: &mut BTreeSet<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let entry = entry.unwrap();
                let path = entry.path();
                out.insert(path.strip_prefix(base).unwrap().to_string_lossy().into_owned());
                if entry.file_type().unwrap().is_dir() {
                    walk(base, &path, out);
                }
            }
        }
        let mut out = BTreeSet::new();
        walk(&self.upper(), &self.upper(), &mut out);
        out
    }
}

struct Output {
    status: RunStatus,
    stdout: String,
    stderr: String,
}

fn sandbox() -> Sandbox {
    Sandbox::with_helper(env!("CARGO_BIN_EXE_kiln-sandbox-test-helper"))
}

/// Runs with a deadline, on another thread (the sandbox call itself blocks until the command is done).
fn try_run(spec: &ExecSpec) -> Result<Output, SandboxError> {
    let spec = spec.clone();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let result = sandbox().run(&spec, &mut |stream, chunk| match stream {
            OutputStream::Stdout => stdout.extend_from_slice(chunk),
            OutputStream::Stderr => stderr.extend_from_slice(chunk),
        });
        let _ = tx.send(result.map(|status| Output {
            status,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }));
    });
    rx.recv_timeout(TIMEOUT)
        .expect("the sandbox did not finish in time")
}

fn run(spec: &ExecSpec) -> Output {
    let out = try_run(spec).unwrap_or_else(|e| panic!("sandbox failed: {e}"));
    assert!(
        out.status.success(),
        "command failed with {:?}; stdout {:?} stderr {:?}",
        out.status,
        out.stdout,
        out.stderr
    );
    out
}

#[test]
#[cfg_attr(kiln_unprivileged, ignore = "needs root: namespaces and overlayfs")]
fn output_and_exit_codes() {
    let fx = Fixture::new("exit");
    let out = run(&fx.spec("echo hello; echo oops >&2"));
    assert_eq!((out.stdout.as_str(), out.stderr.as_str()), ("hello\n", "oops\n"));
    assert_eq!(
        out.status,
        RunStatus {
            code: 0,
            signal: None
        }
    );

    let out = try_run(&fx.spec("echo partial; exit 3")).unwrap();
    assert_eq!(
        out.status,
        RunStatus {
            code: 3,
            signal: None
        }
    );
    assert_eq!(out.stdout, "partial\n");

    // A child killed by a signal (PID 1 itself ignores signals it has no handler for, as in docker build).
    let out = try_run(&fx.spec("sh -c 'kill -9 $$'; echo \"status $?\"")).unwrap();
    assert_eq!(out.stdout, "status 137\n");
    let out = try_run(&fx.spec("kill -9 $$")).unwrap();
    assert_eq!(
        out.status,
        RunStatus {
            code: 0,
            signal: None
        },
        "PID 1 cannot be killed from inside"
    );
}

#[test]
#[cfg_attr(kiln_unprivileged, ignore = "needs root: namespaces and overlayfs")]
fn command_is_pid_1_and_init_mode_reaps_and_reports_signals() {
    let fx = Fixture::new("pid1");
    assert_eq!(run(&fx.spec("echo $$")).stdout, "1\n");

    let mut spec = fx.spec("echo $$; kill -TERM $$; sleep 5");
    spec.init = true;
    let out = try_run(&spec).unwrap();
    assert_eq!(out.stdout, "2\n");
    assert_eq!(
        out.status,
        RunStatus {
            code: 128 + 15,
            signal: Some(15)
        }
    );

    // An orphan is reaped by init rather than left a zombie.
    let mut spec = fx.spec("sh -c 'sleep 0.2 & exit 0'; sleep 1; grep -l zombie /proc/[0-9]*/status | wc -l");
    spec.init = true;
    assert_eq!(run(&spec).stdout.trim(), "0");
}

/// The helper kiln spawned (a child of this test process) for the sandbox whose command line has `marker`.
fn helper_running(marker: &str) -> Option<rustix::process::Pid> {
    let ppid = |pid: u32| -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(") ")?.1.split_whitespace().nth(1)?.parse().ok()
    };
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(mut pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmdline).contains(marker) {
            continue;
        }
        while let Some(parent) = ppid(pid) {
            if parent == std::process::id() {
                return rustix::process::Pid::from_raw(pid as i32);
            }
            if parent <= 1 {
                break;
            }
            pid = parent;
        }
    }
    None
}

#[test]
#[cfg_attr(kiln_unprivileged, ignore = "needs root: namespaces and overlayfs")]
fn signals_from_kiln_reach_the_command() {
    let fx = Fixture::new("signals");
    for init in [false, true] {
        let marker = format!("kiln-signal-test-{init}");
        let mut spec = fx.spec(&format!(
            "trap 'echo got TERM; exit 5' TERM; : {marker}; echo ready; sleep 30 & wait"
        ));
        spec.init = init;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut stdout = String::new();
            let result = sandbox().run(&spec, &mut |_, chunk| {
                stdout.push_str(&String::from_utf8_lossy(chunk));
                if String::from_utf8_lossy(chunk).contains("ready") {
                    let helper = helper_running(&marker).expect("the sandbox helper is running");
                    rustix::process::kill_process(helper, rustix::process::Signal::TERM).unwrap();
                }
            });
            let _ = tx.send((result.map_err(|e| e.to_string()), stdout));
        });
        let (result, stdout) = rx
            .recv_timeout(TIMEOUT)
            .expect("the sandbox did not finish in time");
        assert_eq!(
            result,
            Ok(RunStatus {
                code: 5,
                signal: None
            }),
            "init: {init}"
        );
        assert_eq!(stdout, "ready\ngot TERM\n", "init: {init}");
    }
}

#[test]
#[cfg_attr(kiln_unprivileged, ignore = "needs root: namespaces and overlayfs")]
fn the_sandbox_dies_with_kiln() {
    use std::io::BufRead;
    let fx = Fixture::new("orphan");
    for (init, user) in [(false, "nobody"), (true, "")] {
        let marker = format!("kiln-orphan-test-{init}");
        let mut spec = fx.spec(&format!(": {marker}; echo ready; sleep 30; echo survived"));
        spec.init = init;
        spec.user = user.into();
        let spec_file = fx.path("spec.json");
        std::fs::write(&spec_file, serde_json::to_vec(&spec).unwrap()).unwrap();
        // A stand-in for kiln, running the sandbox with its own binary as the helper.
        let mut kiln = std::process::Command::new(env!("CARGO_BIN_EXE_kiln-sandbox-test-helper"))
            .arg("run-spec")
            .arg(&spec_file)
            // Killed, it cannot remove its scratch dir: keep that inside the fixture.
            .env("TMPDIR", &fx.tmp.0)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        std::io::BufReader::new(kiln.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert_eq!(first, "ready\n");
        kiln.kill().unwrap();
        kiln.wait().unwrap();
        let running = || {
            std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
                let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                String::from_utf8_lossy(&cmdline).contains(&marker)
            })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while running() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            !running(),
            "the sandbox outlived kiln (init: {init}, user: {user:?})"
        );
    }
}

#[test]
#[cfg_attr(kiln_unprivileged, ignore = "needs root: namespaces and overlayfs")]
fn attached_run_returns_the_exit_code() {
    let fx = Fixture::new("attached");
    let spec = fx.spec("echo attached > /out; exit 7");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(sandbox().run_attached(&spec).map_err(|e| e.to_string()));
    });
    assert_eq!(
        rx.recv_timeout(TIMEOUT)
            .expect("the sandbox did not finish in time"),
        Ok(7)
    );
    assert_eq!(
        std::fs::read_to_string(fx.upper().join("out")).unwrap(),
        "attached\n"
    );
    assert_eq!(fx.upper_entries(), BTreeSet::from(["out".to_string()]));
}

#[test]
#[cfg_attr(kiln_unprivileged, ignore = "needs root: namespaces and overlayfs")]
fn hostname_devices_proc() {
    let fx = Fixture::new("basics");
    let out = run(&fx.spec("hostname; cat /etc/hostname"));
    assert_eq!(out.stdout, "buildkitsandbox\nbuildkitsandbox\n");
    let mut spec = fx.spec("hostname; grep myhost /etc/hosts");
    spec.hostname = "myhost".into();
    spec.extra_hosts = vec!["db:10.0.0.7".into(), "v6:fd00::1".into()];
    let out = run(&spec);
    assert_eq!(out.stdout, "myhost\n127.0.0.1\tlocalhost myhost\n");
    let out = run(&{
        let mut s = spec.clone();
        s.args[2] = "cat /etc/hosts".into();
        s
    });
    assert!(
        out.stdout.contains("10.0.0.7\tdb\n") && out.stdout.contains("fd00::1\tv6\n"),
        "{}",
        out.stdout
    );

    let out = run(&fx.spec(
        "echo x > /dev/null && head -c 4 /dev/zero | wc -c && head -c 16 /dev/urandom | wc -c \
         && head -c 3 /dev/random | wc -c && test -c /dev/full && test -c /dev/tty && test -d /dev/pts \
         && test -d /dev/shm && test -L /dev/ptmx && echo ok",
    ));
    assert_eq!(out.stdout, "4\n16\n3\nok\n");
    let out = run(&fx.spec(
        "cat /proc/self/stat | wc -l; ls /proc/1/ns >/dev/null && echo proc; test -d /sys/kernel && echo sys",
    ));
    assert_eq!(out.stdout, "1\nproc\nsys\n");
    // The kernel's knobs are read-only, what could leak host details masked (where this kernel has them).
    let out =
        run(&fx
            .spec("grep -c ' /proc/sys ro,' /proc/self/mountinfo; grep -c ' /sys ro,' /proc/self/mountinfo"));
    assert_eq!(out.stdout, "1\n1\n");
    if Path::new("/proc/timer_list").exists() {
        assert_eq!(run(&fx.spec("wc -c < /proc/timer_list")).stdout, "0\n");
    }
    if Path::new("/sys/firmware").exists() {
        assert_eq!(run(&fx.spec("ls /sys/firmware | wc -l")).stdout, "0\n");
    }
}

fn interfaces(stdout: &str) -> BTreeSet<String> {
    stdout
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(name, _)| name.trim().to_string())
        .filter(|n| !n.contains('|'))
        .collect()
}

/// What root in a step may and may not do: docker's default capabilities and its seccomp profile, so that
/// neither a new user namespace (which would hand back every capability) nor the mount API, the keyring or
/// kernel settings are within reach; `--security=insecure` lifts all of it.
#[test]
#[cfg_attr(kiln_unprivileged, ignore = "needs root: namespaces and overlayfs")]
fn sandboxed_root_is_confined_and_insecure_root_is_not() {
    let fx = Fixture::new("seccomp");
    let script = "grep -E '^(Seccomp|CapEff|CapBnd):' /proc/self/status; \
                  unshare -U true 2>/dev/null && echo userns; unshare -m true 2>/dev/null && echo mountns; \
                  mkdir -p /mnt; mount -t tmpfs none /mnt 2>/dev/null && echo mounted; \
                  hostname other 2>/dev/null && echo renamed; \
                  echo 1 > /proc/sys/kernel/ns_last_pid 2>/dev/null && echo sysctl; \
                  echo h > /proc/sysrq-trigger 2>/dev/null && echo sysrq; \
                  linux32 true && echo personality";
    let out = run(&fx.spec(script));
    assert_eq!(
        out.stdout, "CapEff:\t00000000a80425fb\nCapBnd:\t00000000a80425fb\nSeccomp:\t2\npersonality\n",
        "docker's capability set (CapEff as `docker run` shows it), a filter, and nothing else"
    );

    let mut spec = fx.spec(script);
    spec.security = Security::Insecure;
    let out = run(&spec);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[2], "Seccomp:\t0");
    let all = u64::from_str_radix(lines[0].trim_start_matches("CapEff:\t"), 16).unwrap();
    assert!(
        all & (1 << 21) != 0,
        "CAP_SYS_ADMIN in insecure mode: {}",
        lines[0]
    );
    assert_eq!(
        &lines[3..],
        ["userns", "mountns", "mounted", "renamed", "sysctl", "personality"],
        "{}",
        out.stdout
    );
}

/// Root in a step may mknod (docker allows it too), but not open what it made: with no device cgroup, a node
/// for the host's disk would otherwise read it. Only the devices the sandbox binds in work.
#[test]
#[cfg_attr(kiln_unprivileged, ignore = "needs root: namespaces and overlayfs")]
fn device_nodes_a_step_makes_cannot_be_opened() {
    let fx = Fixture::new("nodev");
    std::fs::create_dir_all(fx.path("cache")).unwrap();
    let script = "mkdir -p /tmp; for d in /dev /tmp /cache; do mknod $d/mynull c 1 3 || echo \"no mknod in $d\"; \
                  (echo x > $d/mynull) 2>/dev/null && echo \"opened in $d\"; rm -f $d/mynull; done; \
                  echo x > /dev/null && echo real";
    let mut spec = fx.spec(script);
    spec.mounts = vec![ExecMount::Bind {
        source: fx.path("cache"),
        dest: "/cache".into(),
        readonly: false,
    }];
    assert_eq!(run(&spec).stdout, "real\n");
}

/// runc CVE-2024-21626: a working directory of `/proc/self/fd/N` for a descriptor of a host directory still
/// open while the command is set up would start it outside the container.
#[test]
#[cfg_attr(kiln_unprivileged, ignore = "needs root: namespaces and overlayfs")]
fn a_working_directory_through_a_descriptor_never_leaves_the_rootfs() {
    let fx = Fixture::new("cwd-fd");
    std::fs::write(fx.path("host-sentinel"), "host\n").unwrap();
    let dir = std::fs::File::open(&fx.tmp.0).unwrap();
    let leaked = rustix::io::fcntl_dupfd_cloexec(&dir, 60).unwrap();
    rustix::io::fcntl_setfd(&leaked, rustix::io::FdFlags::empty()).unwrap();
    for n in (3..=16).chain([60]) {
        let mut spec = fx.spec("ls -a; cat ../../host-sentinel 2>/dev/null; true");
        spec.cwd = format!("/proc/self/fd/{n}");
        if let Ok(out) = try_run(&spec) {
            assert!(!out.stdout.contains("host"), "fd {n}: {}", out.stdout);
        }
    }
    drop(leaked);
}

/// The step sees its own processes only, cannot signal the host's, and cannot reach a cgroup's
/// release_agent (the classic escape of a container that can mount cgroupfs).
#[test]
#[cfg_attr(kiln_unprivileged, ignore = "needs root: namespaces and overlayfs")]
fn host_processes_and_cgroups_are_out_of_reach() {
    let fx = Fixture::new("procs");
    let host_pid = std::process::id();
    let script = format!(
        "ls /proc | grep -c '^[0-9]'; kill -0 {host_pid} 2>/dev/null && echo signalled; \
         mkdir -p /mnt; mount -t cgroup -o memory cgroup /mnt 2>/dev/null && echo cgroup-v1; \
         mount -t cgroup2 none /mnt 2>/dev/null && echo cgroup-v2; \
         for f in /sys/fs/cgroup/release_agent /sys/fs/cgroup/*/release_agent /sys/fs/cgroup/cgroup.procs; do \
           test -e $f && (echo 1 > $f) 2>/dev/null && echo \"wrote $f\"; done; true"
    );
    // `ls` and `grep` are the only processes besides the shell, PID 1.
    assert_eq!(run(&fx.spec(&script)).stdout, "3\n");
}

/// runc CVE-2025-31133 and its kin: an image whose mount points are symlinks into /proc cannot make the
/// sandbox's own mounts land on kernel files, or change anything of the host's.
#[test]
#[cfg_attr(kiln_unprivileged, ignore = "needs root: namespaces and overlayfs")]
fn mount_points_swapped_for_symlinks_into_proc_change_nothing_of_the_host() {
    let fx = Fixture::new("mask-swap");
    let lower = fx.path("lower");
    std::os::unix::fs::symlink("/proc/sys/kernel/core_pattern", lower.join("etc/hosts")).unwrap();
    std::os::unix::fs::symlink("/proc/sys/kernel/hostname", lower.join("etc/hostname")).unwrap();
    std::os::unix::fs::symlink("/proc/sysrq-trigger", lower.join("etc/resolv.conf")).unwrap();
    let read = |p: &str| std::fs::read_to_string(p).unwrap();
    let before = (
        read("/proc/sys/kernel/core_pattern"),
        read("/proc/sys/kernel/hostname"),
    );
    let out = try_run(&fx.spec(
        "echo '|/tmp/pwn' > /proc/sys/kernel/core_pattern 2>/dev/null; echo pwned > /etc/hosts 2>/dev/null; \
         echo c > /etc/resolv.conf 2>/dev/null; cat /proc/kcore 2>/dev/null | wc -c; true",
    ));
    if let Ok(out) = out {
        assert_eq!(out.stdout.trim(), "0", "/proc/kcore stays masked: {}", out.stdout);
    }
    let after = (
        read("/proc/sys/kernel/core_pattern"),
        read("/proc/sys/kernel/hostname"),
    );
    assert_eq!(before, after, "a host kernel setting changed");
}

/// BuildKit CVE-2024-23652: after the run, the mount-point stubs are cleaned up; a step that swapped a stub
/// (or its parent) for a symlink to a host directory must not get anything there deleted or truncated.
#[test]
#[cfg_attr(kiln_unprivileged, ignore = "needs root: namespaces and overlayfs")]
fn stub_cleanup_never_follows_what_the_step_put_in_place_of_a_stub() {
    let fx = Fixture::new("stub-swap");
    let host = fx.path("host-dir");
    std::fs::create_dir_all(host.join("b")).unwrap();
    std::fs::write(host.join("b/keep"), "host data\n").unwrap();
    std::fs::write(host.join("s"), "host file\n").unwrap();
    let mut spec = fx.spec(&format!(
        "mv /a /moved-a 2>/dev/null; ln -s {host} /a; mv /f /moved-f 2>/dev/null; ln -s {host} /f; \
         ln -sf {host}/s /moved-f/s 2>/dev/null; true",
        host = host.display()
    ));
    spec.mounts = vec![
        ExecMount::Tmpfs {
            dest: "/a/b".into(),
            size: None,
        },
        ExecMount::File {
            dest: "/f/s".into(),
            contents: kiln_solver::executor::SecretBytes(b"secret".to_vec()),
            uid: 0,
            gid: 0,
            mode: 0o400,
        },
    ];
    let _ = try_run(&spec);
    assert_eq!(
        std::fs::read_to_string(host.join("b/keep")).unwrap(),
        "host data\n"
    );
    assert_eq!(std::fs::read_to_string(host.join("s")).unwrap(), "host file\n");
    assert!(host.join("b").is_dir());
}

/// BuildKit CVE-2024-23651: one step keeps swapping a directory of a shared cache mount for a symlink to a
/// host directory while another step mounts something there. Mount points are resolved inside the rootfs
/// one component at a time without following symlinks out, so nothing is ever created on the host.
#[test]
#[cfg_attr(kiln_unprivileged, ignore = "needs root: namespaces and overlayfs")]
fn a_symlink_raced_into_a_shared_cache_mount_creates_nothing_on_the_host() {
    let fx = Fixture::new("cache-race");
    let cache = fx.path("cache");
    let host = fx.path("host-dir");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::create_dir_all(&host).unwrap();
    let shared = |script: &str| {
        let mut spec = fx.spec(script);
        spec.mounts = vec![ExecMount::Bind {
            source: cache.clone(),
            dest: "/c".into(),
            readonly: false,
        }];
        spec
    };
    let racer = shared(&format!(
        "i=0; while [ $i -lt 400 ]; do rm -rf /c/sub; ln -s {} /c/sub; rm -f /c/sub; mkdir -p /c/sub; i=$((i+1)); done",
        host.display()
    ));
    let racing = std::thread::spawn(move || try_run(&racer));
    for _ in 0..15 {
        let mut victim = shared("true");
        victim.mounts.push(ExecMount::Tmpfs {
            dest: "/c/sub/deeper".into(),
            size: None,
        });
        let _ = try_run(&victim);
    }
    let _ = racing.join();
    let created: Vec<_> = std::fs::read_dir(&host)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        created.is_empty(),
        "made on the host through the symlink: {created:?}"
    );
}

/// A TCP server that greets every client; counts the connections it accepted.
struct Greeter {
    addr: std::net::SocketAddr,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Greeter {
    fn on(ip: std::net::IpAddr) -> Greeter {
        use std::io::Write;
        let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = conn.write_all(b"hello from the host\n");
            }
        });
        Greeter { addr, accepted }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A shell line that prints the greeting if `host` reaches this server's port.
    fn probe(&self, host: &str) -> String {
        format!("nc -w 3 {host} {} </dev/null 2>&1 || true", self.addr.port())
    }
}

/// An IPv4 address of this host that is not loopback, where a step's outbound traffic can be seen.
fn host_address() -> std::net::IpAddr {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .expect("ip (iproute2) must be installed");
    let found = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "inet").nth(1))
        .filter_map(|cidr| cidr.split('/').next()?.parse().ok())
        .next();
    found.unwrap_or_else(|| {
        // A machine without a network still needs somewhere to go "out" to.
        for args in [
            &["link", "add", "kilntest0", "type", "dummy"][..],
            &["addr", "add", "192.0.2.77/32", "dev", "kilntest0"],
            &["link", "set", "kilntest0", "up"],
        ] {
            let _ = std::process::Command::new("ip").args(args).status();
        }
        "192.0.2.77".parse().unwrap()
    })
}

#[test]
#[cfg_attr(kiln_unprivileged, ignore = "needs root: namespaces and overlayfs")]
fn default_network_reaches_out_but_not_the_hosts_loopback() {
    let fx = Fixture::new("net-default");
    let on_loopback = Greeter::on("127.0.0.1".parse().unwrap());
    let outside = Greeter::on(host_address());
    let script = format!(
        "cat /proc/net/dev; echo; {}; {}; echo; {}",
        on_loopback.probe("127.0.0.1"),
        // slirp4netns's address for the host, which --disable-host-loopback closes.
        on_loopback.probe("10.0.2.2"),
        outside.probe(&outside.addr.ip().to_string()),
    );
    let out = run(&fx.spec(&script));
    let (devices, rest) = out.stdout.split_once("\n\n").unwrap();
    assert_eq!(
        interfaces(devices),
        BTreeSet::from(["lo".to_string(), "tap0".to_string()])
    );
    let (inside, outbound) = rest.split_once("\n\n").unwrap();
    assert!(
        !inside.contains("hello"),
        "the step reached the host's loopback: {inside}"
    );
    assert_eq!(
        on_loopback.accepted(),
        0,
        "a loopback service of the host saw the step"
    );
    assert!(
        outbound.contains("hello from the host"),
        "no outbound access: {outbound}"
    );
    assert_eq!(outside.accepted(), 1);
    let resolv = run(&fx.spec("grep nameserver /etc/resolv.conf")).stdout;
    assert!(
        !resolv.contains("127.0."),
        "a loopback resolver is unreachable from the step: {resolv}"
    );
}

#[test]
#[cfg_attr(kiln_unprivileged, ignore = "needs root: namespaces and overlayfs")]
fn network_none_and_host() {
    let fx = Fixture::new("net");
    let on_loopback = Greeter::on("127.0.0.1".parse().unwrap());
    let mut spec = fx.spec("cat /proc/net/dev");
    spec.network = Network::None;
    assert_eq!(interfaces(&run(&spec).stdout), BTreeSet::from(["lo".to_string()]));
    spec.args[2] = format!("ip link show lo; {}", on_loopback.probe("127.0.0.1"));
    let out = run(&spec);
    assert!(out.stdout.contains(",UP"), "loopback must be up: {}", out.stdout);
    assert!(!out.stdout.contains("hello"), "{}", out.stdout);

    spec.network = Network::Host;
    spec.args[2] = "cat /proc/net/dev".into();
    let host = interfaces(&std::fs::read_to_string("/proc/net/dev").unwrap());
    assert_eq!(interfaces(&run(&spec).stdout), host);
    spec.args[2] = on_loopback.probe("127.0.0.1");
    assert!(run(&spec).stdout.contains("hello from the host"));
    assert_eq!(on_loopback.accepted(), 1);
}

#[test]
#[cfg_attr(kiln_unprivileged, ignore = "needs root: namespaces and overlayfs")]
fn writes_land_in_the_upper_dir_and_whiteouts() {
    let fx = Fixture::new("layers");
    run(&fx.spec("echo new > /newfile && rm /etc/lowerfile && mkdir -p /var/x && echo y > /var/x/y"));
    let upper = fx.upper();
    assert_eq!(std::fs::read_to_string(upper.join("newfile")).unwrap(), "new\n");
    assert_eq!(std::fs::read_to_string(upper.join("var/x/y")).unwrap(), "y\n");
    let whiteout = std::fs::symlink_metadata(upper.join("etc/lowerfile")).unwrap();
    assert!(
        whiteout.file_type().is_char_device(),
        "a deleted lower file becomes a whiteout"
    );
    assert_eq!(whiteout.rdev(), 0);
    assert_eq!(
        std::fs::read_to_string(fx.path("lower/etc/lowerfile")).unwrap(),
        "from the lower dir\n"
    );
    assert!(!fx.path("lower/newfile").exists());
}

#[test]
#[cfg_attr(kiln_unprivileged, ignore = "needs root: namespaces and overlayfs")]
fn lower_dirs_stack_top_first() {
    let fx = Fixture::new("stack");
    let top = fx.path("top");
    std::fs::create_dir_all(top.join("data")).unwrap();
    std::fs::write(top.join("data/f"), "top\n").unwrap();
    std::fs::create_dir_all(fx.path("lower/data")).unwrap();
    std::fs::write(fx.path("lower/data/f"), "bottom\n").unwrap();
    std::fs::write(fx.path("lower/data/g"), "only below\n").unwrap();
    let mut spec = fx.spec("cat /data/f /data/g");
    spec.lower_dirs.insert(0, top);
    assert_eq!(run(&spec).stdout, "top\nonly below\n");
}

#[test]
#[cfg_attr(kiln_unprivileged, ignore = "needs root: namespaces and overlayfs")]
fn scratch_rootfs_without_lower_dirs() {
    let fx = Fixture::new("scratch");
    let mut spec = fx.spec("");
    spec.lower_dirs.clear();
    spec.args = vec!["/bin/busybox".into()];
    let err = try_run(&spec).err().expect("an empty rootfs has nothing to run");
    assert!(matches!(err, SandboxError::Exec { .. }), "{err}");
    assert!(err.to_string().contains("/bin/busybox"), "{err}");
    assert!(fx.upper_entries().is_empty(), "{:?}", fx.upper_entries());
}

#[test]
#[cfg_attr(kiln_unprivileged, ignore = "needs root: namespaces and overlayfs")]
fn users_and_groups() {
    let fx = Fixture::new("users");
    let id = |user: &str| {
        let mut spec = fx.spec("id -u; id -g; id -G; echo $HOME");
        spec.user = user.into();
        run(&spec).stdout
    };
    assert_eq!(id(""), "0\n0\n0\n/root\n");
    assert_eq!(id("nobody"), "65534\n65534\n65534\n/nonexistent\n");
    assert_eq!(id("1000"), "1000\n1000\n1000 2000\n/home/app\n");
    assert_eq!(id("app"), "1000\n1000\n1000 2000\n/home/app\n");
    assert_eq!(id("app:0"), "1000\n0\n0\n/home/app\n");
    assert_eq!(id("4242:4343"), "4242\n4343\n4343\n/\n");

    let mut spec = fx.spec("id");
    spec.user = "ghost".into();
    let err = try_run(&spec).err().expect("an unknown user is an error");
    assert_eq!(
        err.to_string(),
        "user \"ghost\" not found in /etc/passwd of the image"
    );
    spec.user = "app:ghosts".into();
    let err = try_run(&spec).err().expect("an unknown group is an error");
    assert_eq!(
        err.to_string(),
        "group \"ghosts\" not found in /etc/group of the image"
    );

    // A non-root user is really unprivileged, and root lost what docker takes away.
    let mut spec = fx.spec("touch /etc/passwd");
    spec.user = "app".into();
    assert_ne!(try_run(&spec).unwrap().status.code, 0);
    let out = try_run(&fx.spec("mkdir /m && mount -t tmpfs none /m")).unwrap();
    assert_ne!(
        out.status.code, 0,
        "root in the sandbox must not be able to mount"
    );
    let out = run(&fx.spec("grep CapBnd /proc/self/status"));
    assert_eq!(
        out.stdout.trim(),
        "CapBnd:\t00000000a80425fb",
        "docker's default capability set"
    );
}

#[test]
#[cfg_attr(kiln_unprivileged, ignore = "needs root: namespaces and overlayfs")]
fn cwd_env_and_home() {
    let fx = Fixture::new("cwd");
    let mut spec = fx.spec("pwd; env | grep -v '^PWD=' | grep -v '^SHLVL=' | sort");
    spec.cwd = "/work/dir".into();
    spec.user = "app".into();
    spec.env = vec!["PATH=/bin".into(), "A=1".into(), "B=two words".into()];
    assert_eq!(
        run(&spec).stdout,
        "/work/dir\nA=1\nB=two words\nHOME=/home/app\nPATH=/bin\n"
    );
    let created = std::fs::metadata(fx.upper().join("work/dir")).unwrap();
    assert_eq!(
        (created.uid(), created.gid()),
        (1000, 1000),
        "a created working directory belongs to the user"
    );

    spec.env.push("HOME=/custom".into());
    spec.cwd = "/".into();
    assert!(run(&spec).stdout.contains("HOME=/custom\n"));
}

#[test]
#[cfg_attr(kiln_unprivileged, ignore = "needs root: namespaces and overlayfs")]
fn no_descriptor_of_kiln_leaks() {
    let fx = Fixture::new("fds");
    // An inheritable descriptor in the parent, as a careless library might leave one.
    let file = std::fs::File::open(BUSYBOX).unwrap();
    let leaked = rustix::io::fcntl_dupfd_cloexec(&file, 50).unwrap();
    rustix::io::fcntl_setfd(&leaked, rustix::io::FdFlags::empty()).unwrap();
    let out = run(&fx.spec("ls /proc/self/fd"));
    let fds: BTreeSet<&str> = out.stdout.split_whitespace().collect();
    // 3 is the directory ls has open while listing.
    assert_eq!(fds, BTreeSet::from(["0", "1", "2", "3"]), "{}", out.stdout);
    drop(leaked);
}

#[test]
#[cfg_attr(kiln_unprivileged, ignore = "needs root: namespaces and overlayfs")]
fn generated_etc_files_and_stub_cleanup() {
    let fx = Fixture::new("stubs");
    let out = run(&fx.spec("cat /etc/hosts; grep -c nameserver /etc/resolv.conf; cat /etc/hostname"));
    assert!(
        out.stdout.starts_with("127.0.0.1\tlocalhost buildkitsandbox\n"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.ends_with("buildkitsandbox\n"));
    let out = try_run(&fx.spec("echo x >> /etc/hosts")).unwrap();
    assert_ne!(out.status.code, 0, "/etc/hosts is read-only");
    // Nothing the command did not make stays in the layer: no hosts/resolv.conf/hostname stubs, no copied-up
    // /etc, no /proc, /dev or /sys mount points.
    assert!(
        fx.upper_entries().is_empty(),
        "left in the upper dir: {:?}",
        fx.upper_entries()
    );

    // A dangling symlink at a mount point (as systemd images have for resolv.conf) is followed inside the
    // rootfs; the directories made for its target go again afterwards.
    std::os::unix::fs::symlink(
        "../run/systemd/resolve/stub-resolv.conf",
        fx.path("lower/etc/resolv.conf"),
    )
    .unwrap();
    let out = run(&fx.spec("grep -c nameserver /run/systemd/resolve/stub-resolv.conf"));
    assert_ne!(out.stdout, "0\n");
    assert!(
        fx.upper_entries().is_empty(),
        "left in the upper dir: {:?}",
        fx.upper_entries()
    );

    // A stub the command changed stays (here: a file written next to it keeps /etc).
    run(&fx.spec("echo mine > /etc/mine"));
    assert_eq!(
        fx.upper_entries(),
        BTreeSet::from(["etc".to_string(), "etc/mine".to_string()])
    );
}

#[test]
#[cfg_attr(kiln_unprivileged, ignore = "needs root: namespaces and overlayfs")]
fn bind_tmpfs_and_overlay_mounts() {
    let fx = Fixture::new("mounts");
    let shared = fx.path("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("in"), "from the host\n").unwrap();
    let single = fx.path("single.txt");
    std::fs::write(&single, "one file\n").unwrap();
    let (ov_upper, ov_work) = (fx.path("ov-upper"), fx.path("ov-work"));
    std::fs::create_dir(&ov_upper).unwrap();
    std::fs::create_dir(&ov_work).unwrap();

    let mut spec = fx.spec(
        "cat /mnt/shared/in /etc/single.txt && echo out > /mnt/shared/out && ! touch /ro/x 2>/dev/null \
         && echo t > /scratch/t && cat /scratch/t && cat /stage/etc/lowerfile && echo s > /stage/new \
         && ls /ro",
    );
    spec.mounts = vec![
        ExecMount::Bind {
            source: shared.clone(),
            dest: "/mnt/shared".into(),
            readonly: false,
        },
        ExecMount::Bind {
            source: single,
            dest: "/etc/single.txt".into(),
            readonly: true,
        },
        ExecMount::Bind {
            source: shared.clone(),
            dest: "/ro".into(),
            readonly: true,
        },
        ExecMount::Tmpfs {
            dest: "/scratch".into(),
            size: Some(1 << 20),
        },
        ExecMount::Overlay {
            lower_dirs: vec![fx.path("lower")],
            upper_dir: ov_upper.clone(),
            work_dir: ov_work,
            dest: "/stage".into(),
        },
    ];
    let out = run(&spec);
    assert_eq!(
        out.stdout,
        "from the host\none file\nt\nfrom the lower dir\nin\nout\n"
    );
    assert_eq!(std::fs::read_to_string(shared.join("out")).unwrap(), "out\n");
    assert_eq!(std::fs::read_to_string(ov_upper.join("new")).unwrap(), "s\n");
    assert!(
        fx.upper_entries().is_empty(),
        "mount points stay out of the layer: {:?}",
        fx.upper_entries()
    );
}

#[test]
#[cfg_attr(kiln_unprivileged, ignore = "needs root: namespaces and overlayfs")]
fn host_files_are_out_of_reach() {
    let fx = Fixture::new("escape");
    let sentinel = fx.path("sentinel");
    std::fs::write(&sentinel, "secret\n").unwrap();
    // An absolute symlink in the image must resolve inside the rootfs, for the sandbox's own mounts too.
    std::os::unix::fs::symlink(fx.tmp.0.to_str().unwrap(), fx.path("lower/hostlink")).unwrap();
    let script = format!(
        "cat {} 2>/dev/null && exit 1; cat /hostlink/sentinel 2>/dev/null && exit 1; \
         cat /proc/1/root{} 2>/dev/null && exit 1; ls /",
        sentinel.display(),
        sentinel.display()
    );
    let mut spec = fx.spec(&script);
    spec.mounts = vec![ExecMount::Tmpfs {
        dest: "/hostlink/inside".into(),
        size: None,
    }];
    let out = run(&spec);
    let listing: BTreeSet<&str> = out.stdout.split_whitespace().collect();
    // Plus the top directory of the mount point the symlink led to, made inside the rootfs (e.g. /tmp).
    let mut expected = BTreeSet::from(["bin", "dev", "etc", "hostlink", "proc", "sys"]);
    let top = fx
        .tmp
        .0
        .components()
        .nth(1)
        .unwrap()
        .as_os_str()
        .to_str()
        .unwrap()
        .to_string();
    expected.insert(&top);
    assert_eq!(listing, expected);
    assert!(
        !fx.tmp.0.join("inside").exists(),
        "a mount point was created on the host through a symlink"
    );
    assert!(fx.upper_entries().is_empty(), "{:?}", fx.upper_entries());
}

#[test]
#[cfg_attr(kiln_unprivileged, ignore = "needs root: namespaces and overlayfs")]
fn missing_executable_is_a_clear_error() {
    let fx = Fixture::new("noexec");
    let mut spec = fx.spec("");
    spec.args = vec!["frobnicate".into(), "--now".into()];
    let err = try_run(&spec).err().expect("no such command");
    assert_eq!(
        err.to_string(),
        "executable \"frobnicate\" not found in $PATH (/bin)"
    );
    spec.args = vec!["/nope/frobnicate".into()];
    let err = try_run(&spec).err().expect("no such file");
    assert!(matches!(err, SandboxError::Exec { .. }), "{err}");
    std::fs::write(fx.path("lower/bin/script"), "#!/bin/missing\n").unwrap();
    std::fs::set_permissions(
        fx.path("lower/bin/script"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    spec.args = vec!["script".into()];
    let err = try_run(&spec).err().expect("missing interpreter").to_string();
    assert!(err.contains("interpreter"), "{err}");
    assert!(fx.upper_entries().is_empty(), "{:?}", fx.upper_entries());
}

#[test]
#[cfg_attr(kiln_unprivileged, ignore = "needs root: namespaces and overlayfs")]
fn setup_errors_are_reported() {
    let fx = Fixture::new("setup-err");
    let mut spec = fx.spec("true");
    spec.lower_dirs = vec![fx.path("does-not-exist")];
    let err = try_run(&spec)
        .err()
        .expect("a missing lower dir cannot be mounted")
        .to_string();
    assert!(err.starts_with("mounting overlay: "), "{err}");
    assert!(err.contains("does-not-exist"), "{err}");

    let mut spec = fx.spec("true");
    spec.mounts = vec![ExecMount::Bind {
        source: fx.path("nope"),
        dest: "/x".into(),
        readonly: true,
    }];
    let err = try_run(&spec).err().expect("a missing bind source").to_string();
    assert!(err.contains("nope"), "{err}");
}

#[test]
fn emulation_check() {
    check_emulation("amd64").expect("the host's own architecture");
    if std::env::consts::ARCH != "x86_64" {
        eprintln!("note: skipping the arm64 emulation check on a non-amd64 host");
        return;
    }
    check_emulation("linux/386").expect("386 runs natively on amd64");
    if !Path::new("/proc/sys/fs/binfmt_misc/status").exists() {
        eprintln!("note: binfmt_misc is not mounted; only checking that the error explains the fix");
        let err = check_emulation("arm64").unwrap_err().to_string();
        assert!(
            err.contains("qemu-user-static") && err.contains("binfmt_misc"),
            "{err}"
        );
        return;
    }
    let entry = Path::new("/proc/sys/fs/binfmt_misc/qemu-aarch64");
    if !entry.exists()
        && rustix::process::geteuid().is_root()
        && Path::new("/usr/lib/binfmt.d/qemu-aarch64.conf").exists()
    {
        let status = std::process::Command::new("/lib/systemd/systemd-binfmt")
            .arg("/usr/lib/binfmt.d/qemu-aarch64.conf")
            .status();
        eprintln!("note: registering qemu-aarch64: {status:?}");
    }
    if entry.exists() {
        check_emulation("arm64").expect("qemu-aarch64 is registered");
        check_emulation("linux/arm64/v8").expect("qemu-aarch64 is registered");
    } else {
        let err = check_emulation("arm64").unwrap_err().to_string();
        assert!(err.contains("apt-get install qemu-user-static"), "{err}");
    }
}
