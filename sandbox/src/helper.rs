//! The helper process kiln spawns: reads the request, creates the namespaces, forks init into the new pid
//! namespace and relays its exit status.

use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::io::{Errno, FdFlags};
use rustix::process::{Pid, Signal, WaitOptions};
use rustix::thread::UnshareFlags;

use super::protocol::{self, ChildError, HelperRequest, Report};
use super::sys::{self, Forked, SignalSet};
use super::{Network, SANDBOX_ARG, init, net};

/// Entry point of the sandbox helper. kiln's `main` must call this first thing — before any thread exists, so
/// before building a tokio runtime — when `argv[1] == SANDBOX_ARG`. Never returns.
pub fn sandbox_main() -> ! {
    let args: Vec<String> = std::env::args_os().filter_map(|a| a.into_string().ok()).collect();
    let fds = match args.as_slice() {
        [_, mode, spec, status] if mode == SANDBOX_ARG => {
            spec.parse::<i32>().ok().zip(status.parse::<i32>().ok())
        }
        _ => None,
    };
    let Some((spec_fd, status_fd)) = fds.filter(|&(a, b)| a > 2 && b > 2 && a != b) else {
        eprintln!("kiln: `{SANDBOX_ARG}` is kiln's internal sandbox mode and is not meant to be run by hand");
        std::process::exit(125);
    };
    // Only these two (besides stdio) are ours; anything else kiln let slip through is closed before it could
    // reach the container.
    let (low, high) = (spec_fd.min(status_fd) as u32, spec_fd.max(status_fd) as u32);
    let _ = sys::close_range(3, low - 1, false);
    let _ = sys::close_range(low + 1, high - 1, false);
    let _ = sys::close_range(high + 1, u32::MAX, false);
    // SAFETY: kiln handed these two descriptors to this process alone, and nothing here owns them yet.
    let (spec, status) = unsafe { (sys::adopt_fd(spec_fd), sys::adopt_fd(status_fd)) };
    // kiln cleared close-on-exec so they survive into this helper; the command must not inherit them.
    for fd in [&spec, &status] {
        let _ = rustix::io::fcntl_setfd(fd, FdFlags::CLOEXEC);
    }
    let code = match run(spec, status.as_fd()) {
        Ok(code) => code,
        Err(e) => {
            protocol::send(status.as_fd(), &Report::Error(e));
            125
        }
    };
    std::process::exit(code);
}

fn run(spec: OwnedFd, status: BorrowedFd<'_>) -> Result<i32, ChildError> {
    let mut bytes = Vec::new();
    std::fs::File::from(spec)
        .read_to_end(&mut bytes)
        .map_err(|e| ChildError::setup("reading the sandbox request", e.to_string()))?;
    let req: HelperRequest = serde_json::from_slice(&bytes)
        .map_err(|e| ChildError::setup("reading the sandbox request", format!("malformed: {e}")))?;

    // Tie the sandbox's life to kiln: on kiln's death we get SIGTERM (queued, see `relay`) and SIGKILL the
    // sandbox's PID 1, which takes the whole pid namespace down. PID 1's own parent-death signal is not
    // enough: execve of a set-user-ID binary clears it. The check afterwards covers kiln dying before this.
    rustix::process::set_parent_process_death_signal(Some(Signal::TERM))
        .map_err(|e| ChildError::errno("setting the parent-death signal", e))?;
    if rustix::process::getppid() != Pid::from_raw(req.parent_pid) {
        return Ok(125);
    }
    if !req.attached {
        // No controlling terminal: a RUN step must not read from or signal the terminal kiln runs in.
        rustix::process::setsid().map_err(|e| ChildError::errno("starting a new session", e))?;
    }
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));

    // Kept until the helper exits: the step's network lives as long as the step.
    let uplink = match (&req.spec.network, &req.slirp4netns) {
        (Network::Default, Some(slirp4netns)) => Some(net::connect(slirp4netns)?),
        (Network::Default, None) => {
            return Err(ChildError::InvalidSpec(
                "no slirp4netns for the default network".into(),
            ));
        }
        _ => None,
    };
    let mut flags = UnshareFlags::NEWNS | UnshareFlags::NEWPID | UnshareFlags::NEWIPC | UnshareFlags::NEWUTS;
    if req.spec.network == Network::None {
        flags |= UnshareFlags::NEWNET;
    }
    // SAFETY: unshare is only unsafe with CLONE_FILES, which is not among the flags.
    unsafe { rustix::thread::unshare_unsafe(flags) }.map_err(|e| match e {
        Errno::PERM => ChildError::setup("creating namespaces (unshare)", "EPERM: the sandbox needs root"),
        e => ChildError::errno("creating namespaces (unshare)", e),
    })?;
    // Nothing mounted from here on may propagate back to the host (or to kiln's own namespace).
    rustix::mount::mount_change(
        "/",
        rustix::mount::MountPropagationFlags::PRIVATE | rustix::mount::MountPropagationFlags::REC,
    )
    .map_err(|e| ChildError::errno("making mounts private", e))?;
    if req.spec.network == Network::None {
        sys::loopback_up().map_err(|e| ChildError::errno("bringing up the loopback interface", e))?;
    }
    rustix::system::sethostname(req.hostname.as_bytes())
        .map_err(|e| ChildError::errno(format!("setting the hostname to {:?}", req.hostname), e))?;

    let signals = SignalSet::handled();
    signals
        .block()
        .map_err(|e| ChildError::errno("blocking signals", e))?;
    // SAFETY: this process is single-threaded: it is the helper, which never starts threads.
    match unsafe { sys::fork() } {
        Ok(Forked::Child) => init::run(req, status, signals, uplink.as_ref()),
        Ok(Forked::Parent(pid1)) => {
            let (code, signal) = relay(pid1, &signals, req.parent_pid);
            if !req.spec.init {
                // PID 1 was the command itself.
                protocol::send(status, &Report::Exit { code, signal });
            }
            Ok(code)
        }
        Err(e) => Err(ChildError::errno("starting the sandbox init (fork)", e)),
    }
}

/// Waits for PID 1; passes on the signals a process (kiln) sent us. Returns PID 1's exit code (128 + signal
/// if killed) and the signal.
fn relay(pid1: Pid, signals: &SignalSet, kiln: i32) -> (i32, Option<i32>) {
    loop {
        let (sig, code) = match signals.wait() {
            Ok(s) => s,
            Err(_) => return (125, None),
        };
        if sig == libc::SIGCHLD {
            match rustix::process::waitpid(Some(pid1), WaitOptions::NOHANG) {
                Ok(Some((_, status))) => return init::exit_of(status),
                Ok(None) => {}
                Err(_) => return (125, None),
            }
        } else if rustix::process::getppid() != Pid::from_raw(kiln) {
            // kiln is gone (this was the parent-death signal): nobody wants the result any more.
            let _ = rustix::process::kill_process(pid1, Signal::KILL);
        } else if code <= 0 {
            // Sent by a process (kiln stopping the build); a terminal's Ctrl-C already reached the command,
            // which shares our process group when attached.
            init::forward(pid1, sig);
        }
    }
}
