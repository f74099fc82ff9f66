//! Small filesystem and process helpers shared by the rest of the store.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::{FlockOperation, flock};
use rustix::io::Errno;

use crate::error::{IoContext, Result};

/// A process as the store remembers it: the pid alone could be reused after a crash, the pid together with
/// its start time (in clock ticks since boot, from /proc) names one process for the life of the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub start_time: u64,
}

impl Holder {
    pub fn current() -> Holder {
        static CURRENT: OnceLock<Holder> = OnceLock::new();
        *CURRENT.get_or_init(|| {
            let pid = std::process::id();
            Holder {
                pid,
                // If /proc is missing, 0 still identifies "this pid" and liveness falls back to the pid alone.
                start_time: proc_start_time(pid).unwrap_or(0),
            }
        })
    }

    /// Whether the process that wrote this record still runs.
    pub fn is_alive(&self) -> bool {
        if self.start_time != 0 {
            return proc_start_time(self.pid) == Some(self.start_time);
        }
        match rustix::process::Pid::from_raw(self.pid as i32) {
            Some(pid) => !matches!(rustix::process::test_kill_process(pid), Err(Errno::SRCH)),
            None => false,
        }
    }
}

fn proc_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses; the fields after the last ')' are plain.
    let rest = &stat[stat.rfind(')')? + 1..];
    // starttime is field 22; after the ')' the first field is field 3.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A name for an entry in ROOT/tmp that tells which process made it, so a later prune can tell leftovers of
/// a crashed process from the work of a live one.
pub fn temp_name(kind: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let h = Holder::current();
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{}-{}-{}.{}", h.pid, h.start_time, seq, kind)
}

/// The holder encoded in a name made by [`temp_name`]; `None` for names the store did not make.
pub fn temp_holder(name: &str) -> Option<Holder> {
    let (stem, _kind) = name.split_once('.')?;
    let mut parts = stem.split('-');
    let pid = parts.next()?.parse().ok()?;
    let start_time = parts.next()?.parse().ok()?;
    Some(Holder { pid, start_time })
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Makes a rename or unlink in `dir` durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .ctx(|| format!("fsync directory {}", dir.display()))
}

/// Creates `dir` (and its parents) if needed.
pub fn ensure_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).ctx(|| format!("create directory {}", dir.display()))
}

/// An exclusive `flock` on a file under ROOT/locks, released when dropped (or when the process dies, which
/// is why a lock file and not a lock record is used).
#[derive(Debug)]
pub struct LockGuard {
    _file: File,
    path: PathBuf,
}

impl LockGuard {
    /// Waits for the exclusive lock.
    pub(crate) fn acquire(path: &Path) -> Result<LockGuard> {
        Self::blocking(path, FlockOperation::LockExclusive)
    }

    /// Waits for a shared lock: any number of holders, none while an exclusive one is held.
    pub(crate) fn acquire_shared(path: &Path) -> Result<LockGuard> {
        Self::blocking(path, FlockOperation::LockShared)
    }

    /// The exclusive lock if nobody holds the lock in any way; `None` at once otherwise.
    pub(crate) fn try_exclusive(path: &Path) -> Result<Option<LockGuard>> {
        Self::lock(path, FlockOperation::NonBlockingLockExclusive)
    }

    fn blocking(path: &Path, operation: FlockOperation) -> Result<LockGuard> {
        // A blocking flock returns only once it holds the lock; EWOULDBLOCK cannot come back.
        Self::lock(path, operation)?.ok_or_else(|| crate::Error::Io {
            context: format!("lock {}", path.display()),
            source: std::io::Error::from(std::io::ErrorKind::WouldBlock),
        })
    }

    fn lock(path: &Path, operation: FlockOperation) -> Result<Option<LockGuard>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)
            .ctx(|| format!("open lock file {}", path.display()))?;
        loop {
            match flock(&file, operation) {
                Err(Errno::INTR) => continue,
                Err(Errno::WOULDBLOCK) => return Ok(None),
                r => break r.ctx(|| format!("lock {}", path.display()))?,
            }
        }
        Ok(Some(LockGuard {
            _file: file,
            path: path.to_owned(),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
