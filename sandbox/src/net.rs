//! RUN's default network: a network namespace of the step's own, whose outbound traffic slirp4netns carries
//! through sockets it opens on the host, as docker's bridge does through NAT.
//!
//! Why slirp4netns rather than a veth pair, a bridge and NAT rules: it changes nothing on the host (no
//! interface, no iptables/nftables rule, no IP forwarding sysctl that a crashed build could leave behind),
//! needs no address plan that might collide with the host's networks, and with `--disable-host-loopback`
//! it refuses exactly what a step must not reach: services bound to the host's 127.0.0.1. It runs sandboxed
//! itself (`--enable-sandbox --enable-seccomp`), so a hostile step's packets meet a confined parser. Its
//! throughput (MTU 65520) is far beyond what package downloads need; its start (about 4 ms) overlaps the
//! building of the rootfs, and only the command waits for it.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use rustix::io::{Errno, FdFlags};
use rustix::pipe::PipeFlags;
use rustix::thread::{LinkNameSpaceType, UnshareFlags};

use super::protocol::ChildError;
use super::sys::{self, Forked};

/// slirp4netns's gateway: DNS queries sent here go to the host's resolvers, loopback ones included.
pub(crate) const DNS_FORWARDER: &str = "10.0.2.3";

const WHAT: &str = "starting the step's network (slirp4netns)";
/// It is ready in milliseconds; this only keeps a wedged one from hanging the step.
const READY_TIMEOUT_SECS: i64 = 30;

/// Keeps slirp4netns serving the namespace: it exits when the last copy of this descriptor closes, that is
/// when the sandbox's processes are gone, however they end.
pub(crate) struct Uplink {
    _exit_fd: OwnedFd,
    // Read only if slirp4netns fails to start; kept open after, as a write to a pipe nobody holds would kill
    // it with SIGPIPE.
    stderr: OwnedFd,
    /// Where slirp4netns says it is ready: waited for only just before the command starts, so that its
    /// start overlaps the building of the rootfs.
    ready: OwnedFd,
}

impl Uplink {
    /// Waits until the network is up; the error says why it never came up.
    pub(crate) fn wait_ready(&self) -> Result<(), ChildError> {
        use rustix::event::{PollFd, PollFlags, Timespec};
        let mut byte = [0u8; 1];
        loop {
            let mut fds = [PollFd::new(&self.ready, PollFlags::IN)];
            let limit = Timespec {
                tv_sec: READY_TIMEOUT_SECS,
                tv_nsec: 0,
            };
            match rustix::event::poll(&mut fds, Some(&limit)) {
                Ok(0) => {
                    return Err(ChildError::setup(
                        WHAT,
                        format!(
                            "it was not ready after {READY_TIMEOUT_SECS} s; RUN --network=none needs no network"
                        ),
                    ));
                }
                Ok(_) => {}
                Err(Errno::INTR) => continue,
                Err(e) => return Err(ChildError::errno(WHAT, e)),
            }
            match rustix::io::read(&self.ready, &mut byte) {
                Ok(1) if byte[0] == b'1' => return Ok(()),
                Err(Errno::INTR) => {}
                Ok(_) | Err(_) => return Err(failed(&self.stderr)),
            }
        }
    }
}

/// Moves the calling process into a new network namespace with loopback up, and connects it to the host's
/// network through slirp4netns. Must run before the pid namespace is unshared: slirp4netns must not become
/// the sandbox's PID 1.
pub(crate) fn connect(slirp4netns: &Path) -> Result<Uplink, ChildError> {
    let errno = |step: &str, e: Errno| ChildError::errno(format!("{WHAT}: {step}"), e);
    let host_netns = rustix::fs::open(
        "/proc/self/ns/net",
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| errno("opening the host's network namespace", e))?;
    // SAFETY: unshare is only unsafe with CLONE_FILES, which is not among the flags.
    unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNET) }
        .map_err(|e| errno("creating a network namespace", e))?;
    sys::loopback_up().map_err(|e| errno("bringing up the loopback interface", e))?;

    let pipe = || rustix::pipe::pipe_with(PipeFlags::CLOEXEC).map_err(|e| errno("creating a pipe", e));
    let (ready_r, ready_w) = pipe()?;
    let (exit_r, exit_w) = pipe()?;
    let (stderr_r, stderr_w) = pipe()?;
    let devnull = rustix::fs::open("/dev/null", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| errno("opening /dev/null", e))?;
    let program = CString::new(slirp4netns.as_os_str().as_encoded_bytes())
        .map_err(|_| ChildError::InvalidSpec("the slirp4netns path contains a NUL byte".into()))?;
    let argv: Vec<CString> = [
        "slirp4netns".to_string(),
        "--configure".into(),
        "--mtu=65520".into(),
        "--disable-host-loopback".into(),
        "--enable-sandbox".into(),
        "--enable-seccomp".into(),
        format!("--ready-fd={}", ready_w.as_raw_fd()),
        format!("--exit-fd={}", exit_r.as_raw_fd()),
        "--netns-type=path".into(),
        format!("/proc/{}/ns/net", rustix::process::getpid().as_raw_nonzero()),
        "tap0".into(),
    ]
    .into_iter()
    .filter_map(|a| CString::new(a).ok())
    .collect();

    // SAFETY: the helper is single-threaded.
    match unsafe { sys::fork() }.map_err(|e| errno("fork", e))? {
        Forked::Child => {
            // slirp4netns serves the namespace from the host's side; its chatter must not reach the step's
            // output, which is this process's stdout and stderr.
            // Its own session: a terminal's Ctrl-C, Ctrl-Z or hangup (`kiln run`) is for the command, not for
            // the network under it. Its stderr never blocks it: only its start-up words are read.
            let ok = rustix::process::setsid().is_ok()
                && rustix::fs::fcntl_setfl(&stderr_w, rustix::fs::OFlags::NONBLOCK).is_ok()
                && rustix::thread::move_into_link_name_space(
                    host_netns.as_fd(),
                    Some(LinkNameSpaceType::Network),
                )
                .is_ok()
                && rustix::stdio::dup2_stdin(&devnull).is_ok()
                && rustix::stdio::dup2_stdout(&devnull).is_ok()
                && rustix::stdio::dup2_stderr(&stderr_w).is_ok()
                && rustix::io::fcntl_setfd(&ready_w, FdFlags::empty()).is_ok()
                && rustix::io::fcntl_setfd(&exit_r, FdFlags::empty()).is_ok();
            if ok {
                sys::execve(&program, &argv, &[]);
            }
            // SAFETY: _exit in a forked child, without running the parent's atexit handlers.
            unsafe { libc::_exit(127) }
        }
        Forked::Parent(_) => {}
    }
    drop((ready_w, exit_r, stderr_w));
    Ok(Uplink {
        _exit_fd: exit_w,
        stderr: stderr_r,
        ready: ready_r,
    })
}

/// slirp4netns quit before it was ready: its last words say why.
fn failed(stderr: &OwnedFd) -> ChildError {
    let mut said = Vec::new();
    let mut buf = [0u8; 1024];
    while said.len() < 4096 {
        match rustix::io::read(stderr, &mut buf) {
            Ok(0) => break,
            Ok(n) => said.extend_from_slice(&buf[..n]),
            Err(Errno::INTR) => {}
            Err(_) => break,
        }
    }
    let said = String::from_utf8_lossy(&said);
    let message = match said.lines().rev().find(|l| !l.trim().is_empty()) {
        Some(last) => format!("it quit: {last}"),
        None => "it quit before it was ready (could it be started?)".to_string(),
    };
    ChildError::setup(WHAT, format!("{message}; RUN --network=none needs no network"))
}
