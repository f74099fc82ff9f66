//! The few system calls rustix does not wrap (or only wraps for libc-less runtimes): fork, execve, signal
//! masks and sigwaitinfo, close_range, mount_setattr, and the ioctl that brings loopback up. All `unsafe` of
//! the sandbox lives here.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use rustix::io::Errno;
use rustix::process::Pid;

fn last_errno() -> Errno {
    Errno::from_raw_os_error(
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    )
}

pub(crate) enum Forked {
    Child,
    Parent(Pid),
}

/// # Safety
/// The calling process must be single-threaded: the child gets a copy of only the calling thread, so any lock
/// another thread held would stay locked forever. The sandbox processes never start threads.
pub(crate) unsafe fn fork() -> Result<Forked, Errno> {
    // SAFETY: see the function's contract.
    match unsafe { libc::fork() } {
        -1 => Err(last_errno()),
        0 => Ok(Forked::Child),
        pid => Pid::from_raw(pid).map(Forked::Parent).ok_or(Errno::INVAL),
    }
}

/// Replaces the process image; returns only on failure.
pub(crate) fn execve(path: &CStr, argv: &[CString], envp: &[CString]) -> Errno {
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr()).collect();
    envp_ptrs.push(std::ptr::null());
    // SAFETY: both arrays are NULL-terminated and point into CStrings that outlive the call.
    unsafe { libc::execve(path.as_ptr(), argv_ptrs.as_ptr(), envp_ptrs.as_ptr()) };
    last_errno()
}

/// `close_range(first, last, flags)`: closes (or, with `cloexec`, marks close-on-exec) a range of
/// descriptors.
pub(crate) fn close_range(first: u32, last: u32, cloexec: bool) -> Result<(), Errno> {
    let flags = if cloexec { libc::CLOSE_RANGE_CLOEXEC } else { 0 };
    // SAFETY: plain system call on integers. Closing descriptors that Rust objects own would be a bug of the
    // caller; the sandbox calls this only at points where it owns no descriptors in the range.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, flags) };
    if r == -1 { Err(last_errno()) } else { Ok(()) }
}

/// `seccomp(SECCOMP_SET_MODE_FILTER)` for the calling thread.
pub(crate) fn seccomp_set_filter(prog: &libc::sock_fprog) -> Result<(), Errno> {
    // SAFETY: the kernel copies the program, which `prog` points to and which outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            prog as *const libc::sock_fprog,
        )
    };
    if r == -1 { Err(last_errno()) } else { Ok(()) }
}

/// A new network namespace starts with `lo` down; docker brings it up so 127.0.0.1 works.
pub(crate) fn loopback_up() -> Result<(), Errno> {
    // SAFETY: socket() returns a fresh descriptor we take ownership of.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw == -1 {
        return Err(last_errno());
    }
    // SAFETY: `raw` is a valid descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write `req`, which lives across both calls.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) == -1 {
            return Err(last_errno());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) == -1 {
            return Err(last_errno());
        }
    }
    Ok(())
}

/// The signals the helper and init handle synchronously: SIGCHLD, and those they pass on to their child.
pub(crate) const FORWARDED: &[i32] = &[
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGPIPE,
    libc::SIGALRM,
    libc::SIGTERM,
    libc::SIGWINCH,
];

pub(crate) struct SignalSet(libc::sigset_t);

impl SignalSet {
    /// SIGCHLD plus [`FORWARDED`].
    pub fn handled() -> Self {
        // SAFETY: sigemptyset initialises the set; sigaddset with valid signal numbers cannot fail.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGCHLD);
            for &sig in FORWARDED {
                libc::sigaddset(&mut set, sig);
            }
            Self(set)
        }
    }

    /// Blocks the set, so its signals queue up for [`SignalSet::wait`] instead of being delivered — which
    /// also keeps them from being dropped when we are PID 1 without handlers.
    pub fn block(&self) -> Result<(), Errno> {
        // SAFETY: valid set, null old-set pointer.
        let r = unsafe { libc::sigprocmask(libc::SIG_BLOCK, &self.0, std::ptr::null_mut()) };
        if r == -1 { Err(last_errno()) } else { Ok(()) }
    }

    /// Waits for one signal of the (blocked) set; returns its number and `si_code`. A `si_code` <= 0 means a
    /// process sent it (kill, sigqueue, tkill); > 0 means the kernel did (e.g. the terminal on Ctrl-C).
    pub fn wait(&self) -> Result<(i32, i32), Errno> {
        loop {
            // SAFETY: siginfo_t is plain old data, filled in by the kernel.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: valid set and out-pointer.
            let sig = unsafe { libc::sigwaitinfo(&self.0, &mut info) };
            if sig == -1 {
                match last_errno() {
                    Errno::INTR => continue,
                    e => return Err(e),
                }
            }
            return Ok((sig, info.si_code));
        }
    }
}

/// Gives the command the signal state a fresh process expects: nothing blocked, every disposition default.
/// The helper is a Rust program, which ignores SIGPIPE, and ignored dispositions survive execve.
pub(crate) fn reset_signals() {
    // SAFETY: sigaction with SIG_DFL and an empty set for every signal number; failures (SIGKILL, SIGSTOP and
    // the libc-reserved real-time signals) are harmless and ignored. Same for the mask.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = libc::SIG_DFL;
        libc::sigemptyset(&mut action.sa_mask);
        for sig in 1..=libc::SIGRTMAX() {
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
}

/// Takes ownership of a descriptor number handed over on the command line.
///
/// # Safety
/// `fd` must be open and owned by nobody else in this process.
pub(crate) unsafe fn adopt_fd(fd: i32) -> OwnedFd {
    // SAFETY: see the function's contract.
    unsafe { OwnedFd::from_raw_fd(fd) }
}
