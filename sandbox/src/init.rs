//! PID 1 of the sandbox's pid namespace: builds the container's filesystem and `pivot_root`s into it. Then it
//! either becomes the command itself (as in `docker build`), or, with `ExecSpec::init`, starts the command
//! and reaps zombies and forwards signals until it exits (tini-style). When PID 1 exits, the kernel kills
//! whatever the command left behind in the namespace.

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::mount::{MountAttrFlags, UnmountFlags};
use rustix::process::{Pid, Signal, WaitOptions, WaitStatus};

use super::exec::{self, Prepared};
use super::net::Uplink;
use super::protocol::{self, ChildError, HelperRequest, Report};
use super::rootpath::{self, Create, Kind, StubRecorder};
use super::sys::{self, Forked, SignalSet};
use super::user::{self, ExecUser};
use super::{ExecMount, ExecSpec, Security};
use kiln_fsutil::mount::describe_errno;
use kiln_fsutil::mount::{self as mounts, FsContext};

/// Runs as PID 1; never returns. With `init`, it reports the command's exit itself (the helper only sees its
/// own exit code, which cannot tell a signal from `exit 137`).
pub(crate) fn run(
    req: HelperRequest,
    status: BorrowedFd<'_>,
    signals: SignalSet,
    uplink: Option<&Uplink>,
) -> ! {
    // The helper (our parent, outside the namespace) waits for us, so it is only gone if it was killed; then
    // so must we be, taking the whole namespace with us.
    let _ = rustix::process::set_parent_process_death_signal(Some(Signal::KILL));
    let prepared = match setup(&req, status).and_then(|prepared| {
        if let Some(uplink) = uplink {
            uplink.wait_ready()?;
        }
        Ok(prepared)
    }) {
        Ok(prepared) => prepared,
        Err(e) => {
            protocol::send(status, &Report::Error(e));
            std::process::exit(125);
        }
    };
    if !req.spec.init {
        exec::exec(&prepared, status);
    }
    // SAFETY: this process is single-threaded (a fork of the single-threaded helper).
    let command = match unsafe { sys::fork() } {
        Ok(Forked::Child) => exec::exec(&prepared, status),
        Ok(Forked::Parent(pid)) => pid,
        Err(e) => {
            protocol::send(
                status,
                &Report::Error(ChildError::errno("starting the command (fork)", e)),
            );
            std::process::exit(125);
        }
    };
    let (code, signal) = supervise(command, &signals);
    protocol::send(status, &Report::Exit { code, signal });
    std::process::exit(code);
}

/// Waits for `command`, reaping every other process that ends up with us; returns the exit code (128 + signal
/// for a killed command) and the signal.
fn supervise(command: Pid, signals: &SignalSet) -> (i32, Option<i32>) {
    loop {
        let (sig, code) = match signals.wait() {
            Ok(s) => s,
            Err(_) => return (125, None),
        };
        if sig == libc::SIGCHLD {
            loop {
                match rustix::process::waitpid(None, WaitOptions::NOHANG) {
                    Ok(Some((pid, status))) if pid == command => return exit_of(status),
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                }
            }
        } else if code <= 0 {
            // Only what a process sent (kiln stopping the build): a terminal's Ctrl-C already reached the
            // command, which shares our process group when attached.
            forward(command, sig);
        }
    }
}

pub(crate) fn exit_of(status: WaitStatus) -> (i32, Option<i32>) {
    if let Some(code) = status.exit_status() {
        (code, None)
    } else if let Some(sig) = status.terminating_signal() {
        (128 + sig, Some(sig))
    } else {
        (125, None)
    }
}

pub(crate) fn forward(pid: Pid, sig: i32) {
    if let Some(sig) = Signal::from_named_raw(sig) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

fn open_dir(path: &Path, what: &str) -> Result<OwnedFd, ChildError> {
    rustix::fs::open(
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| ChildError::setup(what, format!("{}: {}", path.display(), describe_errno(e))))
}

fn setup(req: &HelperRequest, status: BorrowedFd<'_>) -> Result<Prepared, ChildError> {
    let spec = &req.spec;
    let rootfs = mounts::overlay(
        &spec.lower_dirs,
        &spec.upper_dir,
        &spec.work_dir,
        &req.empty_dir,
        "mounting overlay",
    )?;
    let mount_point = open_dir(&req.rootfs, "mounting overlay")?;
    mounts::attach(&rootfs, mount_point.as_fd(), "mounting overlay")?;
    let root = open_dir(&req.rootfs, "opening the rootfs")?;
    let upper = open_dir(&spec.upper_dir, "opening the upper dir")?;
    let mut stubs =
        StubRecorder::new(upper, root.as_fd()).map_err(|e| ChildError::errno("opening the rootfs", e))?;
    let built = build_rootfs(req, root.as_fd(), &mut stubs);
    // Even after a failure: kiln must take out whatever stubs were made.
    protocol::send(status, &Report::Stubs(stubs.finish()));
    let user = built?;
    drop(root);
    enter_rootfs(&req.rootfs)?;
    Prepared::new(spec, user)
}

/// Everything that has to happen while the host is still visible: the user (for the working directory's
/// owner), the working directory, and all mounts.
fn build_rootfs(
    req: &HelperRequest,
    root: BorrowedFd<'_>,
    stubs: &mut StubRecorder,
) -> Result<ExecUser, ChildError> {
    let spec = &req.spec;
    let passwd = rootpath::read_file(root, "/etc/passwd")?;
    let group = rootpath::read_file(root, "/etc/group")?;
    let user = user::resolve(&spec.user, passwd.as_deref(), group.as_deref())?;
    // Created before any stub, so no stub cleanup can mistake it for one.
    let cwd = if spec.cwd.is_empty() { "/" } else { &spec.cwd };
    let what = format!("working directory {cwd}");
    rootpath::ensure(
        root,
        cwd,
        Kind::Dir,
        Create::Owned {
            uid: user.uid,
            gid: user.gid,
        },
        &what,
    )?;

    let insecure = spec.security == Security::Insecure;
    mount_proc(root, stubs, insecure)?;
    mount_dev(root, stubs, insecure)?;
    mount_sys(root, stubs, insecure)?;
    for (dest, source) in [
        ("/etc/hosts", &req.hosts),
        ("/etc/resolv.conf", &req.resolv_conf),
        ("/etc/hostname", &req.hostname_file),
    ] {
        let what = format!("mounting {dest}");
        let target = mount_point(root, dest, Kind::File, stubs)?;
        let file = mounts::bind(source, false, true, &what)?;
        mounts::attach(&file, target.as_fd(), &what)?;
    }
    for mount in &spec.mounts {
        mount_extra(req, mount, root, stubs)?;
    }
    Ok(user)
}

fn mount_proc(root: BorrowedFd<'_>, stubs: &mut StubRecorder, insecure: bool) -> Result<(), ChildError> {
    const WHAT: &str = "mounting /proc";
    let target = mount_point(root, "/proc", Kind::Dir, stubs)?;
    // A new procfs shows the new pid namespace; only a process inside it (us) can mount that.
    let ctx = FsContext::open("proc", WHAT)?;
    ctx.set("source", "proc")?;
    let proc = ctx.mount(
        MountAttrFlags::MOUNT_ATTR_NOSUID
            | MountAttrFlags::MOUNT_ATTR_NODEV
            | MountAttrFlags::MOUNT_ATTR_NOEXEC,
    )?;
    mounts::attach(&proc, target.as_fd(), WHAT)?;
    if insecure {
        return Ok(());
    }
    // Docker's masked and read-only paths: what would let root in the container read kernel memory or change
    // the host's kernel settings.
    for name in ["bus", "fs", "irq", "sys", "sysrq-trigger"] {
        if rootpath::stat(proc.as_fd(), name.as_bytes()).is_ok() {
            let what = format!("making /proc/{name} read-only");
            let tree = mounts::bind_at(proc.as_fd(), Path::new(name), true, true, &what)?;
            mounts::attach_at(&tree, proc.as_fd(), name).map_err(|e| ChildError::errno(&what, e))?;
        }
    }
    for name in [
        "kcore",
        "keys",
        "latency_stats",
        "timer_list",
        "timer_stats",
        "sched_debug",
    ] {
        if rootpath::stat(proc.as_fd(), name.as_bytes()).is_ok() {
            let what = format!("masking /proc/{name}");
            let null = mounts::bind(Path::new("/dev/null"), false, false, &what)?;
            mounts::attach_at(&null, proc.as_fd(), name).map_err(|e| ChildError::errno(&what, e))?;
        }
    }
    for name in ["acpi", "scsi"] {
        mask_dir(proc.as_fd(), name, "/proc")?;
    }
    Ok(())
}

/// Hides a directory under an empty read-only tmpfs, if it exists.
fn mask_dir(dir: BorrowedFd<'_>, name: &str, parent: &str) -> Result<(), ChildError> {
    if rootpath::stat(dir, name.as_bytes()).is_err() {
        return Ok(());
    }
    let what = format!("masking {parent}/{name}");
    let empty = mounts::tmpfs("755", None, MountAttrFlags::MOUNT_ATTR_RDONLY, &what)?;
    mounts::attach_at(&empty, dir, name).map_err(|e| ChildError::errno(&what, e))
}

fn mount_dev(root: BorrowedFd<'_>, stubs: &mut StubRecorder, insecure: bool) -> Result<(), ChildError> {
    const WHAT: &str = "mounting /dev";
    let target = mount_point(root, "/dev", Kind::Dir, stubs)?;
    // nodev: a node a step makes here with mknod cannot be opened (docker's device cgroup has that effect);
    // the devices a container gets are bind mounts of the host's, each a mount of its own.
    let dev_attrs = match insecure {
        true => MountAttrFlags::MOUNT_ATTR_NOSUID,
        false => MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NODEV,
    };
    let dev = mounts::tmpfs("755", Some(64 << 20), dev_attrs, WHAT)?;
    mounts::attach(&dev, target.as_fd(), WHAT)?;
    let dev = dev.as_fd();
    for name in ["null", "zero", "full", "random", "urandom", "tty"] {
        let what = format!("binding /dev/{name}");
        let fail = |e: Errno| ChildError::errno(&what, e);
        let flags = OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC;
        drop(rustix::fs::openat(dev, name, flags, Mode::from_raw_mode(0o666)).map_err(fail)?);
        let node = mounts::bind(&Path::new("/dev").join(name), false, false, &what)?;
        mounts::attach_at(&node, dev, name).map_err(fail)?;
    }

    let fail = |what: &str, e: Errno| ChildError::errno(what, e);
    rustix::fs::mkdirat(dev, "pts", Mode::from_raw_mode(0o755)).map_err(|e| fail("creating /dev/pts", e))?;
    let ctx = FsContext::open("devpts", "mounting /dev/pts")?;
    ctx.set("source", "devpts")?;
    // Its own instance, so the container's ptys are not the host's; gid 5 is "tty" in Debian and Alpine
    // alike.
    ctx.flag("newinstance")?;
    ctx.set("ptmxmode", "0666")?;
    ctx.set("mode", "0620")?;
    ctx.set("gid", "5")?;
    let pts = ctx.mount(MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NOEXEC)?;
    mounts::attach_at(&pts, dev, "pts").map_err(|e| fail("mounting /dev/pts", e))?;

    rustix::fs::mkdirat(dev, "shm", Mode::from_raw_mode(0o1777)).map_err(|e| fail("creating /dev/shm", e))?;
    let shm_attrs = MountAttrFlags::MOUNT_ATTR_NOSUID
        | MountAttrFlags::MOUNT_ATTR_NODEV
        | MountAttrFlags::MOUNT_ATTR_NOEXEC;
    let shm = mounts::tmpfs("1777", Some(64 << 20), shm_attrs, "mounting /dev/shm")?;
    mounts::attach_at(&shm, dev, "shm").map_err(|e| fail("mounting /dev/shm", e))?;

    for (name, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("core", "/proc/kcore"),
    ] {
        rustix::fs::symlinkat(target, dev, name).map_err(|e| fail(&format!("creating /dev/{name}"), e))?;
    }
    Ok(())
}

fn mount_sys(root: BorrowedFd<'_>, stubs: &mut StubRecorder, insecure: bool) -> Result<(), ChildError> {
    const WHAT: &str = "mounting /sys";
    let target = mount_point(root, "/sys", Kind::Dir, stubs)?;
    let writable = if insecure {
        MountAttrFlags::empty()
    } else {
        MountAttrFlags::MOUNT_ATTR_RDONLY
    };
    let attrs = writable
        | MountAttrFlags::MOUNT_ATTR_NOSUID
        | MountAttrFlags::MOUNT_ATTR_NODEV
        | MountAttrFlags::MOUNT_ATTR_NOEXEC;
    let sys = FsContext::open("sysfs", WHAT)
        .and_then(|ctx| {
            ctx.set("source", "sysfs")?;
            ctx.mount(attrs)
        })
        // A new sysfs needs a network namespace of our own user namespace; else show the host's, read-only.
        .or_else(|_| mounts::bind(Path::new("/sys"), true, !insecure, WHAT))?;
    mounts::attach(&sys, target.as_fd(), WHAT)?;
    if insecure {
        return Ok(());
    }
    mask_dir(sys.as_fd(), "firmware", "/sys")
}

fn mount_extra(
    req: &HelperRequest,
    mount: &ExecMount,
    root: BorrowedFd<'_>,
    stubs: &mut StubRecorder,
) -> Result<(), ChildError> {
    match mount {
        ExecMount::Bind {
            source,
            dest,
            readonly,
        } => {
            let what = format!("bind-mounting {} at {dest}", source.display());
            let meta = std::fs::metadata(source).map_err(|e| ChildError::setup(&what, e.to_string()))?;
            let kind = if meta.is_dir() { Kind::Dir } else { Kind::File };
            let target = mount_point(root, dest, kind, stubs)?;
            let tree = mounts::bind_nodev(source, *readonly, &what)?;
            Ok(mounts::attach(&tree, target.as_fd(), &what)?)
        }
        ExecMount::Tmpfs { dest, size } => {
            let what = format!("mounting a tmpfs at {dest}");
            let target = mount_point(root, dest, Kind::Dir, stubs)?;
            let attrs = MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NODEV;
            let tmpfs = mounts::tmpfs("1777", *size, attrs, &what)?;
            Ok(mounts::attach(&tmpfs, target.as_fd(), &what)?)
        }
        ExecMount::File {
            dest,
            contents,
            uid,
            gid,
            mode,
        } => {
            let what = format!("mounting a secret at {dest}");
            let target = mount_point(root, dest, Kind::File, stubs)?;
            let file = private_file(&contents.0, (*uid, *gid, *mode), &what)?;
            Ok(mounts::attach(&file, target.as_fd(), &what)?)
        }
        ExecMount::Overlay {
            lower_dirs,
            upper_dir,
            work_dir,
            dest,
        } => {
            let what = format!("mounting an overlay at {dest}");
            let target = mount_point(root, dest, Kind::Dir, stubs)?;
            let overlay = mounts::overlay(lower_dirs, upper_dir, work_dir, &req.empty_dir, &what)?;
            Ok(mounts::attach(&overlay, target.as_fd(), &what)?)
        }
    }
}

/// A read-only mount of one file holding `contents`, made in a tmpfs that only this sandbox's mount namespace
/// ever sees: a secret reaches the command without touching a disk or a path on the host.
fn private_file(
    contents: &[u8],
    (uid, gid, mode): (u32, u32, u32),
    what: &str,
) -> Result<OwnedFd, ChildError> {
    let attrs = MountAttrFlags::MOUNT_ATTR_NOSUID
        | MountAttrFlags::MOUNT_ATTR_NODEV
        | MountAttrFlags::MOUNT_ATTR_NOEXEC;
    let size = (contents.len() as u64).max(4096) * 2;
    let tmpfs = mounts::tmpfs("700", Some(size), attrs, what)?;
    let fail = |e: Errno| ChildError::errno(what, e);
    let fd = rustix::fs::openat(
        &tmpfs,
        "file",
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(fail)?;
    let mut rest = contents;
    while !rest.is_empty() {
        match rustix::io::write(&fd, rest) {
            Ok(n) => rest = &rest[n..],
            Err(Errno::INTR) => {}
            Err(e) => return Err(fail(e)),
        }
    }
    rustix::fs::fchown(
        &fd,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    )
    .map_err(fail)?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(fail)?;
    drop(fd);
    let file = mounts::bind_at(tmpfs.as_fd(), Path::new("file"), false, true, what)?;
    Ok(file)
}

/// `pivot_root(".", ".")` stacks the old root under the new one, so no directory for it is needed in the
/// rootfs (it would end up in the layer); unmounting it lazily then leaves nothing of the host.
fn enter_rootfs(rootfs: &Path) -> Result<(), ChildError> {
    const WHAT: &str = "pivot_root into the rootfs";
    rustix::process::chdir(rootfs).map_err(|e| ChildError::errno(WHAT, e))?;
    rustix::process::pivot_root(".", ".").map_err(|e| ChildError::errno(WHAT, e))?;
    rustix::mount::unmount(".", UnmountFlags::DETACH)
        .map_err(|e| ChildError::errno("detaching the host's root after pivot_root", e))?;
    rustix::process::chdir("/").map_err(|e| ChildError::errno(WHAT, e))
}

impl Prepared {
    fn new(spec: &ExecSpec, user: ExecUser) -> Result<Self, ChildError> {
        let c = |s: &str, what: &str| {
            CString::new(s).map_err(|_| ChildError::InvalidSpec(format!("{what} contains a NUL byte: {s:?}")))
        };
        let mut env = spec.env.clone();
        if !env.iter().any(|e| e.starts_with("HOME=")) {
            env.push(format!("HOME={}", user.home));
        }
        let program = spec
            .args
            .first()
            .ok_or_else(|| ChildError::InvalidSpec("no command given".into()))?;
        let search_path = env
            .iter()
            .rev()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(exec::DEFAULT_PATH)
            .to_string();
        Ok(Prepared {
            argv: spec
                .args
                .iter()
                .map(|a| c(a, "an argument"))
                .collect::<Result<_, _>>()?,
            envp: env
                .iter()
                .map(|e| {
                    CString::new(e.as_str()).map_err(|_| {
                        let name = kiln_llb::image::env_key(e);
                        ChildError::InvalidSpec(format!("the value of {name:?} contains a NUL byte"))
                    })
                })
                .collect::<Result<_, _>>()?,
            program: program.clone(),
            search_path,
            cwd: c(
                if spec.cwd.is_empty() { "/" } else { &spec.cwd },
                "the working directory",
            )?,
            user,
            insecure: spec.security == Security::Insecure,
        })
    }
}

/// Resolves (creating it as a stub when missing) where a mount goes, inside the rootfs.
fn mount_point(
    root: BorrowedFd<'_>,
    dest: &str,
    kind: Kind,
    stubs: &mut StubRecorder,
) -> Result<OwnedFd, ChildError> {
    rootpath::ensure(
        root,
        dest,
        kind,
        Create::Stub(stubs),
        &format!("mount point {dest}"),
    )
}
