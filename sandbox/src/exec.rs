//! The last step inside the sandbox: become the user, give up what the command must not have, and execve.

use std::ffi::{CStr, CString};
use std::os::fd::BorrowedFd;

use rustix::io::Errno;
use rustix::thread::{CapabilitySet, CapabilitySets};

use super::protocol::{self, ChildError, Report};
use super::user::ExecUser;
use super::{seccomp, sys};
use kiln_fsutil::mount::describe_errno;

/// The search path when the environment has no PATH (what docker uses for lookups).
pub(crate) const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Docker's default capability set: root in a RUN step can chown, bind low ports, use raw sockets, ... but
/// cannot mount, load modules, reconfigure the host's network (it shares it by default) or write kernel
/// settings.
const DEFAULT_CAPS: CapabilitySet = CapabilitySet::CHOWN
    .union(CapabilitySet::DAC_OVERRIDE)
    .union(CapabilitySet::FSETID)
    .union(CapabilitySet::FOWNER)
    .union(CapabilitySet::MKNOD)
    .union(CapabilitySet::NET_RAW)
    .union(CapabilitySet::SETGID)
    .union(CapabilitySet::SETUID)
    .union(CapabilitySet::SETFCAP)
    .union(CapabilitySet::SETPCAP)
    .union(CapabilitySet::NET_BIND_SERVICE)
    .union(CapabilitySet::SYS_CHROOT)
    .union(CapabilitySet::KILL)
    .union(CapabilitySet::AUDIT_WRITE);

/// Everything the command process needs, computed by init before it forks.
pub(crate) struct Prepared {
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    pub program: String,
    pub search_path: String,
    pub cwd: CString,
    pub user: ExecUser,
    /// `--security=insecure`: keep every capability and install no seccomp filter.
    pub insecure: bool,
}

/// In the forked command process: never returns.
pub(crate) fn exec(p: &Prepared, status: BorrowedFd<'_>) -> ! {
    let error = match become_user_and_exec(p) {
        Ok(e) | Err(e) => e,
    };
    let code = if matches!(error, ChildError::ExecutableNotFound { .. }) {
        127
    } else {
        126
    };
    protocol::send(status, &Report::Error(error));
    std::process::exit(code);
}

/// Returns only with the reason the command could not be started.
fn become_user_and_exec(p: &Prepared) -> Result<ChildError, ChildError> {
    sys::reset_signals();
    // As runc: change directory while still root (the user may not be able to traverse a parent), and again
    // as the user only if root was refused (a root-squashed bind mount owned by the user).
    let chdir_later = match rustix::process::chdir(p.cwd.as_c_str()) {
        Ok(()) => false,
        Err(Errno::ACCESS | Errno::PERM) => true,
        Err(e) => return Err(cwd_error(p, e)),
    };
    if !chdir_later {
        check_cwd_inside(p)?;
    }
    if p.insecure {
        // `--security=insecure`: the user's ids, every capability root has, no filter.
        set_ids(&p.user)?;
        if chdir_later {
            rustix::process::chdir(p.cwd.as_c_str()).map_err(|e| cwd_error(p, e))?;
            check_cwd_inside(p)?;
        }
        sys::close_range(3, u32::MAX, true)
            .map_err(|e| ChildError::errno("marking descriptors close-on-exec", e))?;
        return Ok(search_and_exec(p));
    }
    // While CAP_SYS_ADMIN still allows it without no_new_privs; what follows up to execve is all allowed.
    seccomp::install().map_err(|e| ChildError::errno("installing the seccomp filter", e))?;
    drop_bounding_set().map_err(|e| ChildError::errno("dropping capabilities from the bounding set", e))?;
    set_ids(&p.user)?;
    // Changing uid/gid clears the parent-death signal; re-arm it (only a set-user-ID exec clears it again).
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .map_err(|e| ChildError::errno("setting the parent-death signal", e))?;
    let current =
        rustix::thread::capabilities(None).map_err(|e| ChildError::errno("reading capabilities", e))?;
    let keep = current.permitted & DEFAULT_CAPS;
    // Inheritable empty (as docker since CVE-2022-24769): for uid 0, execve then grants exactly the bounding
    // set.
    let sets = CapabilitySets {
        effective: keep,
        permitted: keep,
        inheritable: CapabilitySet::empty(),
    };
    rustix::thread::set_capabilities(None, sets).map_err(|e| ChildError::errno("setting capabilities", e))?;
    match rustix::thread::clear_ambient_capability_set() {
        Ok(()) | Err(Errno::INVAL) => {}
        Err(e) => return Err(ChildError::errno("clearing ambient capabilities", e)),
    }
    if chdir_later {
        rustix::process::chdir(p.cwd.as_c_str()).map_err(|e| cwd_error(p, e))?;
        check_cwd_inside(p)?;
    }
    // Whatever kiln (or the test harness) had open must not reach the command; the status pipe closes on a
    // successful exec, which is how kiln knows there was no error.
    sys::close_range(3, u32::MAX, true)
        .map_err(|e| ChildError::errno("marking descriptors close-on-exec", e))?;
    Ok(search_and_exec(p))
}

/// As runc since CVE-2024-21626: the working directory must be inside the container. A `WORKDIR` through a
/// `/proc/self/fd/N` of a descriptor still open at that point would otherwise leave the command in a host
/// directory, which the kernel then shows as "(unreachable)/...".
fn check_cwd_inside(p: &Prepared) -> Result<(), ChildError> {
    match rustix::process::getcwd(Vec::new()) {
        Ok(cwd) if cwd.to_bytes().starts_with(b"/") => Ok(()),
        Ok(_) | Err(_) => Err(ChildError::setup(
            format!("changing to working directory {}", p.cwd.to_string_lossy()),
            "it is outside the container's filesystem",
        )),
    }
}

fn cwd_error(p: &Prepared, e: Errno) -> ChildError {
    ChildError::setup(
        format!("changing to working directory {}", p.cwd.to_string_lossy()),
        describe_errno(e),
    )
}

fn drop_bounding_set() -> Result<(), Errno> {
    for bit in 0..64 {
        let cap = CapabilitySet::from_bits_retain(1 << bit);
        if DEFAULT_CAPS.contains(cap) {
            continue;
        }
        match rustix::thread::capability_is_in_bounding_set(cap) {
            Ok(true) => rustix::thread::remove_capability_from_bounding_set(cap)?,
            Ok(false) => {}
            // Past the last capability this kernel knows.
            Err(Errno::INVAL) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn set_ids(user: &ExecUser) -> Result<(), ChildError> {
    use rustix::process::{Gid, Uid};
    let groups: Vec<Gid> = user.groups.iter().map(|&g| Gid::from_raw(g)).collect();
    // Thread-level system calls are process-wide here: this process has a single thread.
    rustix::thread::set_thread_groups(&groups)
        .map_err(|e| ChildError::errno("setting supplementary groups", e))?;
    let gid = Gid::from_raw(user.gid);
    rustix::thread::set_thread_res_gid(gid, gid, gid)
        .map_err(|e| ChildError::errno(format!("setting gid {}", user.gid), e))?;
    let uid = Uid::from_raw(user.uid);
    rustix::thread::set_thread_res_uid(uid, uid, uid)
        .map_err(|e| ChildError::errno(format!("setting uid {}", user.uid), e))
}

/// As docker: `args[0]` with a `/` is used as is (relative to the working directory), anything else is looked
/// up in the command's own PATH. Returns only on failure.
fn search_and_exec(p: &Prepared) -> ChildError {
    let name = p.program.as_str();
    if name.contains('/') {
        let Ok(path) = CString::new(name) else {
            return ChildError::InvalidSpec(format!("the command contains a NUL byte: {name:?}"));
        };
        let errno = sys::execve(&path, &p.argv, &p.envp);
        return exec_error(&path, errno, true);
    }
    let mut denied = None;
    for dir in p.search_path.split(':') {
        let dir = if dir.is_empty() {
            "."
        } else {
            dir.trim_end_matches('/')
        };
        let Ok(candidate) = CString::new(format!("{dir}/{name}")) else {
            continue;
        };
        match sys::execve(&candidate, &p.argv, &p.envp) {
            Errno::NOENT if !exists(&candidate) => {}
            Errno::NOTDIR => {}
            Errno::ACCESS => {
                denied.get_or_insert(candidate);
            }
            errno => return exec_error(&candidate, errno, false),
        }
    }
    match denied {
        Some(path) => exec_error(&path, Errno::ACCESS, false),
        None => ChildError::ExecutableNotFound {
            name: name.to_string(),
            path: p.search_path.clone(),
        },
    }
}

fn exists(path: &CStr) -> bool {
    rustix::fs::stat(path).is_ok()
}

fn exec_error(path: &CStr, errno: Errno, explicit: bool) -> ChildError {
    let shown = path.to_string_lossy().into_owned();
    let message = match errno {
        // ENOENT for a file that exists: the kernel could not find its ELF interpreter or #! interpreter.
        Errno::NOENT if exists(path) => {
            format!(
                "{}; the file exists, so its interpreter (#! line or ELF loader) is missing",
                describe_errno(errno)
            )
        }
        Errno::NOENT if explicit => "no such file in the image".to_string(),
        Errno::NOEXEC => format!(
            "{}; a binary for another architecture? Check the platform, and that qemu-user-static is \
             registered in binfmt_misc",
            describe_errno(errno)
        ),
        _ => describe_errno(errno),
    };
    ChildError::Exec { path: shown, message }
}
