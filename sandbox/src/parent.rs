//! kiln's side: prepares the generated files, spawns the helper, streams output, collects the reports and
//! takes the mount-point stubs back out of the upper dir.

use std::cmp::Reverse;
use std::io::Write;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::{Errno, FdFlags};
use rustix::pipe::PipeFlags;

use kiln_solver::executor::Cancel;

use super::protocol::{HelperRequest, Report, Stub, StubKind};
use super::rootpath;
use super::{ExecMount, ExecSpec, Network, OutputStream, RunStatus, SANDBOX_ARG, Sandbox, SandboxError};

/// What `docker build` calls the RUN container; Dockerfiles that look at their hostname see the same.
const DEFAULT_HOSTNAME: &str = "buildkitsandbox";
/// How often a quiet command is checked for a cancelled build.
const CANCEL_CHECK: rustix::event::Timespec = rustix::event::Timespec {
    tv_sec: 0,
    tv_nsec: 200_000_000,
};
/// How long to wait for the status pipe to close once the helper has exited. Every holder is dead by then, so
/// this only guards against a bug leaving kiln hanging.
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

impl Sandbox {
    /// Runs to completion, calling `output` with each chunk of the command's stdout/stderr as it arrives.
    /// stdin is /dev/null and the sandbox has no controlling terminal.
    pub fn run(
        &self,
        spec: &ExecSpec,
        output: &mut dyn FnMut(OutputStream, &[u8]),
    ) -> Result<RunStatus, SandboxError> {
        self.run_cancellable(spec, &Cancel::default(), output)
    }

    /// [`Sandbox::run`], killing the sandbox (and returning [`SandboxError::Cancelled`]) once `cancel` is set.
    pub fn run_cancellable(
        &self,
        spec: &ExecSpec,
        cancel: &Cancel,
        output: &mut dyn FnMut(OutputStream, &[u8]),
    ) -> Result<RunStatus, SandboxError> {
        let mut session = Session::start(self, spec, false)?;
        let streamed = session.stream(cancel, output);
        if streamed.is_err() {
            // Nobody is listening any more; do not wait for the command to end on its own.
            let _ = session.child.kill();
        }
        let finished = session.finish();
        streamed?;
        finished
    }

    /// Runs with kiln's stdin, stdout and stderr (and terminal), for `kiln run`. Returns the exit code (128 +
    /// signal if the command was killed). While it runs, the terminal's Ctrl-C reaches the command directly;
    /// kiln itself should ignore SIGINT meanwhile or it dies first and takes the sandbox with it.
    pub fn run_attached(&self, spec: &ExecSpec) -> Result<i32, SandboxError> {
        Session::start(self, spec, true)?.finish().map(|s| s.code)
    }
}

struct Session {
    child: Child,
    waited: bool,
    upper_dir: PathBuf,
    reports: mpsc::Receiver<std::io::Result<Vec<u8>>>,
    // Removed when the session ends; holds the generated files and the mount point.
    _scratch: ScratchDir,
}

impl Session {
    fn start(sandbox: &Sandbox, spec: &ExecSpec, attached: bool) -> Result<Self, SandboxError> {
        validate(spec)?;
        let hostname = if spec.hostname.is_empty() {
            DEFAULT_HOSTNAME
        } else {
            &spec.hostname
        };
        let slirp4netns = match spec.network {
            Network::Default => Some(slirp4netns()?),
            Network::Host | Network::None => None,
        };
        let scratch = ScratchDir::create()?;
        let request = HelperRequest {
            spec: spec.clone(),
            rootfs: scratch.dir("root")?,
            empty_dir: scratch.dir("empty")?,
            hosts: scratch.file("hosts", &hosts_file(hostname, &spec.extra_hosts)?)?,
            resolv_conf: scratch.file("resolv.conf", &resolv_conf(spec.network))?,
            hostname_file: scratch.file("hostname", &format!("{hostname}\n"))?,
            hostname: hostname.to_string(),
            attached,
            slirp4netns,
            parent_pid: std::process::id() as i32,
        };
        let request = serde_json::to_vec(&request).map_err(|e| {
            SandboxError::InvalidSpec(format!("cannot encode the request (non-UTF-8 path?): {e}"))
        })?;

        let pipe = |what: &str| {
            let (r, w) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC).map_err(|e| io_error(what, e))?;
            // Never 0-2: Command puts stdio there in the child.
            Ok::<_, SandboxError>((above_stdio(r, what)?, above_stdio(w, what)?))
        };
        let (spec_r, spec_w) = pipe("creating the spec pipe")?;
        let (status_r, status_w) = pipe("creating the status pipe")?;

        let mut cmd = Command::new(sandbox.helper());
        cmd.arg(SANDBOX_ARG)
            .arg(spec_r.as_raw_fd().to_string())
            .arg(status_w.as_raw_fd().to_string())
            .env_clear();
        if !attached {
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
        }
        let inherit = [spec_r.as_raw_fd(), status_w.as_raw_fd()];
        // SAFETY: the closure only makes two fcntl system calls (async-signal-safe, no allocation). The pipes
        // are close-on-exec in kiln so that no other process kiln spawns meanwhile inherits them; only this
        // child gets them, by clearing the flag between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                for fd in inherit {
                    rustix::io::fcntl_setfd(BorrowedFd::borrow_raw(fd), FdFlags::empty())?;
                }
                Ok(())
            });
        }
        tracing::debug!(helper = %sandbox.helper().display(), args = ?spec.args, "starting sandbox");
        let mut child = cmd.spawn().map_err(|source| SandboxError::Spawn {
            helper: sandbox.helper().to_path_buf(),
            error: source,
        })?;
        drop(spec_r);
        drop(status_w);

        let (tx, reports) = mpsc::channel();
        let mut status_file = std::fs::File::from(status_r);
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = tx.send(std::io::Read::read_to_end(&mut status_file, &mut bytes).map(|_| bytes));
        });

        // The helper reads the whole request before anything else. If it died first, the reports say why.
        match std::fs::File::from(spec_w).write_all(&request) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(SandboxError::Io {
                    context: "sending the request to the sandbox helper".into(),
                    error: e,
                });
            }
            _ => {}
        }
        Ok(Self {
            child,
            waited: false,
            upper_dir: spec.upper_dir.clone(),
            reports,
            _scratch: scratch,
        })
    }

    /// Passes output on until both streams are closed, which happens only when every process of the sandbox
    /// has exited.
    fn stream(
        &mut self,
        cancel: &Cancel,
        output: &mut dyn FnMut(OutputStream, &[u8]),
    ) -> Result<(), SandboxError> {
        let mut streams: Vec<(OutputStream, OwnedFd)> = Vec::new();
        if let Some(out) = self.child.stdout.take() {
            streams.push((OutputStream::Stdout, out.into()));
        }
        if let Some(err) = self.child.stderr.take() {
            streams.push((OutputStream::Stderr, err.into()));
        }
        let mut buf = vec![0u8; 64 * 1024];
        while !streams.is_empty() {
            let mut fds: Vec<PollFd<'_>> = streams
                .iter()
                .map(|(_, fd)| PollFd::new(fd, PollFlags::IN | PollFlags::HUP))
                .collect();
            match rustix::event::poll(&mut fds, Some(&CANCEL_CHECK)) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => return Err(io_error("waiting for the command's output", e)),
            }
            if cancel.is_cancelled() {
                return Err(SandboxError::Cancelled);
            }
            let ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
            drop(fds);
            let mut closed = Vec::new();
            for (i, (which, fd)) in streams.iter().enumerate() {
                if !ready[i] {
                    continue;
                }
                match rustix::io::read(fd, &mut buf) {
                    Ok(0) => closed.push(i),
                    Ok(n) => output(*which, &buf[..n]),
                    Err(Errno::INTR | Errno::AGAIN) => {}
                    Err(e) => return Err(io_error("reading the command's output", e)),
                }
            }
            for i in closed.into_iter().rev() {
                streams.remove(i);
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<RunStatus, SandboxError> {
        let exit = self.child.wait().map_err(|e| SandboxError::Io {
            context: "waiting for the sandbox helper".into(),
            error: e,
        })?;
        self.waited = true;
        let bytes = match self.reports.recv_timeout(STATUS_TIMEOUT) {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) => {
                return Err(SandboxError::Io {
                    context: "reading the sandbox's status pipe".into(),
                    error: e,
                });
            }
            Err(_) => {
                return Err(SandboxError::Helper(
                    "the status pipe stayed open after the helper exited".into(),
                ));
            }
        };
        let (mut result, mut error, mut garbled) = (None, None, None);
        for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            match serde_json::from_slice::<Report>(line) {
                Ok(Report::Stubs(stubs)) => remove_stubs(&self.upper_dir, &stubs),
                Ok(Report::Exit { code, signal }) => result = Some(RunStatus { code, signal }),
                // The first error is the cause; later ones are consequences.
                Ok(Report::Error(e)) => {
                    error.get_or_insert(e);
                }
                Err(e) => {
                    let line = String::from_utf8_lossy(line);
                    garbled.get_or_insert(format!("unreadable report {line:?}: {e}"));
                }
            }
        }
        tracing::debug!(?exit, ?result, ?error, "sandbox finished");
        match (error, garbled, result) {
            (Some(e), _, _) => Err(e.into()),
            (None, Some(garbled), _) => Err(SandboxError::Helper(garbled)),
            (None, None, Some(status)) => Ok(status),
            (None, None, None) => Err(SandboxError::Helper(format!(
                "exited ({exit}) without reporting a result"
            ))),
        }
    }
}

impl Drop for Session {
    /// Only reached without `finish` when the output callback panicked: stop the sandbox rather than leave it
    /// running unattended (killing the helper takes the whole pid namespace down).
    fn drop(&mut self) {
        if !self.waited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn io_error(context: &str, e: Errno) -> SandboxError {
    SandboxError::Io {
        context: context.to_string(),
        error: e.into(),
    }
}

fn above_stdio(fd: OwnedFd, what: &str) -> Result<OwnedFd, SandboxError> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    rustix::io::fcntl_dupfd_cloexec(&fd, 3).map_err(|e| io_error(what, e))
}

fn validate(spec: &ExecSpec) -> Result<(), SandboxError> {
    let invalid = |m: String| Err(SandboxError::InvalidSpec(m));
    if spec.args.is_empty() {
        return invalid("no command given".into());
    }
    let texts = spec.args.iter().chain([&spec.cwd, &spec.user, &spec.hostname]);
    if let Some(t) = texts.into_iter().find(|t| t.contains('\0')) {
        return invalid(format!("{t:?} contains a NUL byte"));
    }
    // By name only: an environment value may be a secret.
    if let Some(e) = spec.env.iter().find(|e| e.contains('\0')) {
        let name = kiln_llb::image::env_key(e);
        return invalid(format!(
            "the value of the environment variable {name:?} contains a NUL byte"
        ));
    }
    for (what, dir) in [("upper dir", &spec.upper_dir), ("work dir", &spec.work_dir)] {
        if !dir.is_absolute() || !dir.is_dir() {
            return invalid(format!(
                "the {what} {} must be an existing absolute directory",
                dir.display()
            ));
        }
    }
    if let Some(dir) = spec.lower_dirs.iter().find(|d| !d.is_absolute()) {
        return invalid(format!("lower dir {} is not absolute", dir.display()));
    }
    if spec.hostname.len() > 64 || spec.hostname.contains(['/', ' ', '\n']) {
        return invalid(format!("invalid hostname {:?}", spec.hostname));
    }
    for mount in &spec.mounts {
        let (dest, sources): (&String, Vec<&PathBuf>) = match mount {
            ExecMount::Bind { source, dest, .. } => (dest, vec![source]),
            ExecMount::Tmpfs { dest, .. } | ExecMount::File { dest, .. } => (dest, vec![]),
            ExecMount::Overlay {
                lower_dirs,
                upper_dir,
                work_dir,
                dest,
            } => (dest, lower_dirs.iter().chain([upper_dir, work_dir]).collect()),
        };
        if !dest.starts_with('/') || dest.split('/').all(|c| c.is_empty() || c == "." || c == "..") {
            return invalid(format!(
                "mount destination {dest:?} must be an absolute path other than /"
            ));
        }
        if let Some(source) = sources.iter().find(|s| !s.is_absolute()) {
            return invalid(format!(
                "mount source {} for {dest} is not absolute",
                source.display()
            ));
        }
    }
    Ok(())
}

fn hosts_file(hostname: &str, extra_hosts: &[String]) -> Result<String, SandboxError> {
    let mut text = format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for entry in extra_hosts {
        // Split at the first separator: host names never contain ':', IPv6 addresses do.
        let parsed = entry.split_once([':', '=']).and_then(|(host, ip)| {
            let ip = ip.trim_start_matches('[').trim_end_matches(']');
            let valid_host = !host.is_empty() && !host.contains(char::is_whitespace);
            ip.parse::<IpAddr>()
                .ok()
                .filter(|_| valid_host)
                .map(|ip| (host, ip))
        });
        let Some((host, ip)) = parsed else {
            return Err(SandboxError::InvalidSpec(format!(
                "extra host {entry:?} is not NAME:IP"
            )));
        };
        text.push_str(&format!("{ip}\t{host}\n"));
    }
    Ok(text)
}

/// The slirp4netns binary the default network needs, looked up once: the system's first (it runs as root),
/// then kiln's PATH.
fn slirp4netns() -> Result<PathBuf, SandboxError> {
    static FOUND: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    FOUND
        .get_or_init(|| {
            let path = std::env::var_os("PATH").unwrap_or_default();
            ["/usr/bin", "/bin", "/usr/local/bin"]
                .map(PathBuf::from)
                .into_iter()
                .chain(std::env::split_paths(&path))
                .map(|dir| dir.join("slirp4netns"))
                .find(|candidate| {
                    candidate
                        .metadata()
                        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                })
        })
        .clone()
        .ok_or_else(|| SandboxError::Setup {
            step: "starting the step's network".into(),
            message: "slirp4netns is not installed; RUN steps get a network of their own through it: \
                      `apt-get install slirp4netns` (or use RUN --network=none)"
                .into(),
        })
}

/// The host's resolv.conf, as docker gives it. In a network namespace of its own the container cannot reach a
/// resolver on the host's loopback (systemd-resolved's 127.0.0.53), so those go, as docker does; if no
/// nameserver is left, slirp4netns's forwarder (which reaches them) stands in, or public ones without it.
fn resolv_conf(network: Network) -> String {
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    // In a namespace of its own the step has no host loopback, and no IPv6 (slirp4netns runs without it).
    let unreachable_server = |line: &str| {
        let mut words = line.split_whitespace();
        words.next() == Some("nameserver")
            && words
                .next()
                .and_then(|ip| ip.parse::<IpAddr>().ok())
                .is_some_and(|ip| ip.is_loopback() || (network == Network::Default && ip.is_ipv6()))
    };
    let mut text: String = host
        .lines()
        .filter(|l| network == Network::Host || !unreachable_server(l))
        .map(|l| format!("{l}\n"))
        .collect();
    if !text
        .lines()
        .any(|l| l.split_whitespace().next() == Some("nameserver"))
    {
        match network {
            Network::Default => text.push_str(&format!("nameserver {}\n", super::net::DNS_FORWARDER)),
            Network::Host | Network::None => text.push_str("nameserver 8.8.8.8\nnameserver 8.8.4.4\n"),
        }
    }
    text
}

/// A private directory for one run: generated files, the rootfs mount point, an empty lower dir.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn create() -> Result<Self, SandboxError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let base = std::env::temp_dir();
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir = base.join(format!("kiln-sandbox-{}-{n}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok(Self(dir)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(SandboxError::Io {
                        context: format!("creating {}", dir.display()),
                        error: e,
                    });
                }
            }
        }
    }

    fn dir(&self, name: &str) -> Result<PathBuf, SandboxError> {
        let path = self.0.join(name);
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&path)
            .map_err(|e| SandboxError::Io {
                context: format!("creating {}", path.display()),
                error: e,
            })?;
        Ok(path)
    }

    fn file(&self, name: &str, contents: &str) -> Result<PathBuf, SandboxError> {
        let path = self.0.join(name);
        std::fs::write(&path, contents).map_err(|e| SandboxError::Io {
            context: format!("writing {}", path.display()),
            error: e,
        })?;
        Ok(path)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        // Nothing is mounted here from kiln's point of view: the mounts lived in the helper's namespace.
        if let Err(e) = kiln_fsutil::root::remove_path(&self.0) {
            tracing::warn!(dir = %self.0.display(), error = %e, "could not remove the sandbox scratch dir");
        }
    }
}

/// Takes the mount-point stubs out of the upper dir, but only those still exactly as the sandbox left them
/// (same inode, unchanged ctime, owner and mode, a stub file still empty): anything the command touched
/// stays. All decisions are made before the first removal, since removing a stub changes its parent's ctime.
/// Every path is walked without following symlinks, relative to the upper dir.
pub(crate) fn remove_stubs(upper: &Path, stubs: &[Stub]) {
    let upper_fd = match rustix::fs::open(
        upper,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(e) => {
            let upper = upper.display();
            tracing::warn!(%upper, error = %e, "cannot open the upper dir to remove mount stubs");
            return;
        }
    };
    let mut removable: Vec<&Stub> = stubs.iter().filter(|s| unchanged(upper_fd.as_fd(), s)).collect();
    removable.sort_by_key(|s| Reverse(s.path.iter().filter(|&&b| b == b'/').count()));
    for stub in removable {
        let Some((parent, name)) = open_parent(upper_fd.as_fd(), &stub.path) else {
            continue;
        };
        let flags = if stub.kind == StubKind::File {
            AtFlags::empty()
        } else {
            AtFlags::REMOVEDIR
        };
        match rustix::fs::unlinkat(&parent, name, flags) {
            // Not empty: the command (or another kept stub) put something there.
            Ok(()) | Err(Errno::NOTEMPTY | Errno::EXIST | Errno::NOENT) => {}
            Err(e) => tracing::warn!(
                upper = %upper.display(),
                path = %String::from_utf8_lossy(&stub.path),
                error = %e,
                "could not remove a mount stub from the upper dir"
            ),
        }
    }
}

fn unchanged(upper: BorrowedFd<'_>, stub: &Stub) -> bool {
    let Some((parent, name)) = open_parent(upper, &stub.path) else {
        return false;
    };
    let Ok(st) = rootpath::stat(parent.as_fd(), name) else {
        return false;
    };
    let same = st.stx_ino == stub.ino
        && (st.stx_ctime.tv_sec, i64::from(st.stx_ctime.tv_nsec)) == stub.ctime
        && u32::from(st.stx_mode) == stub.mode
        && st.stx_uid == stub.uid
        && st.stx_gid == stub.gid;
    let file_type = FileType::from_raw_mode(st.stx_mode.into());
    same && match stub.kind {
        StubKind::File => file_type == FileType::RegularFile && st.stx_size == 0 && st.stx_nlink == 1,
        StubKind::Dir | StubKind::CopiedUp => file_type == FileType::Directory,
    }
}

/// Opens the directory containing `path` (relative to `upper`) without following any symlink.
fn open_parent<'p>(upper: BorrowedFd<'_>, path: &'p [u8]) -> Option<(OwnedFd, &'p [u8])> {
    let mut components = path.split(|&b| b == b'/');
    let name = components
        .next_back()
        .filter(|n| !n.is_empty() && *n != b"." && *n != b"..")?;
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut dir = rustix::fs::openat(upper, c".", flags, Mode::empty()).ok()?;
    for component in components {
        if component.is_empty() || component == b"." || component == b".." {
            return None;
        }
        dir = rustix::fs::openat(&dir, component, flags, Mode::empty()).ok()?;
    }
    Some((dir, name))
}
