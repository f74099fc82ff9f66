//! Snapshots a build writes: an overlay upperdir prepared in ROOT/tmp, committed into ROOT/snapshots.
//!
//! ```text
//! ROOT/tmp/<pid>-<start>-<seq>.snapshot/{fs,work}   prepared: fs is the upperdir, work the overlay workdir
//! ROOT/snapshots/build-<32 hex>/fs                    committed
//! ```
//!
//! Crash safety, step by step (each state is one that `check` reports at most warnings for, and that prune
//! clears):
//! - prepared, not committed: a temp entry named after its process; prune removes it once that process is
//!   gone, never while it lives.
//! - the workdir is removed first (a crash part way leaves the same temp entry).
//! - the prepared directory is renamed to `ROOT/snapshots/<id>` in one step, after its files were synced: the
//!   snapshot directory is either absent or complete. Until its record is written it is a directory without
//!   a record, which prune removes.
//! - the record and the lease entry are written in one transaction, under the same lock as the rename, so a
//!   concurrent prune sees either nothing or a recorded, leased snapshot.

use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

use crate::error::{Error, IoContext, Result};
use crate::fsutil::{fsync_dir, now_secs};
use crate::gc::remove_any;
use crate::meta::{
    BlobMeta, LeaseResource, SnapshotId, SnapshotRecord, TarDiffId, add_to_lease, get_snapshot,
    put_blob_meta, put_snapshot, read_snapshot, update_snapshot,
};
use crate::{Digest, Store};

/// An empty overlay upperdir and workdir, on the store's filesystem (overlayfs needs both on one filesystem,
/// and the commit is a rename). Dropped without [`Store::commit_snapshot`], it removes both; the overlay must
/// be unmounted by then.
#[derive(Debug)]
pub struct PreparedSnapshot {
    /// The overlay upperdir: what the step writes here becomes the snapshot.
    pub upper: PathBuf,
    /// The overlay workdir, beside `upper`.
    pub work: PathBuf,
    /// The temp directory holding both.
    dir: PathBuf,
    /// Renamed into ROOT/snapshots: nothing left to remove.
    committed: bool,
}

impl Drop for PreparedSnapshot {
    fn drop(&mut self) {
        if !self.committed
            && let Err(e) = remove_any(&self.dir)
        {
            tracing::warn!(error = %e, "could not remove an uncommitted snapshot");
        }
    }
}

impl Store {
    /// Creates an empty upperdir and workdir in ROOT/tmp for a step to write into.
    pub fn prepare_snapshot(&self) -> Result<PreparedSnapshot> {
        let dir = self.temp_path("snapshot");
        std::fs::create_dir(&dir).ctx(|| format!("create {}", dir.display()))?;
        let prepared = PreparedSnapshot {
            upper: dir.join("fs"),
            work: dir.join("work"),
            dir,
            committed: false,
        };
        // The upperdir's root is the merged root's inode: it must read like a base image's `/` whatever the
        // umask, not 0700.
        for (path, mode) in [(&prepared.upper, 0o755), (&prepared.work, 0o700)] {
            std::fs::create_dir(path).ctx(|| format!("create {}", path.display()))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .ctx(|| format!("chmod {}", path.display()))?;
        }
        Ok(prepared)
    }

    /// Makes the prepared upperdir a snapshot stacked on `parent` and returns its id. The overlay must be
    /// unmounted. The snapshot is added to this handle's lease (without one, nothing protects it from a
    /// concurrent prune until a cache record or image refers to it).
    ///
    /// Ids are random (`build-` and 128 bits in hex) rather than derived from the content: the content is
    /// not hashed at commit (that happens only if the snapshot is exported, and the diff_id then depends on
    /// the export's SOURCE_DATE_EPOCH), and a diff means something only on top of its parent chain, so one
    /// upperdir's bytes do not name one snapshot. A random name also means two builds committing the same
    /// step at once never contend for a directory.
    pub fn commit_snapshot(
        &self,
        mut prepared: PreparedSnapshot,
        parent: Option<&SnapshotId>,
    ) -> Result<SnapshotId> {
        let upper = &prepared.upper;
        let meta = std::fs::symlink_metadata(upper).ctx(|| format!("stat {}", upper.display()))?;
        if !meta.is_dir() {
            return Err(Error::Io {
                context: format!("commit snapshot {}", upper.display()),
                source: io::Error::other("the upper dir is not a directory"),
            });
        }
        // Overlay's bookkeeping in the workdir means nothing once it is unmounted; removing it first lets the
        // rename below move the upperdir alone. A crash part way leaves a temp entry of a dead process.
        remove_any(&prepared.work)?;
        let size = diff_size(upper)?;
        // The files must be on disk before the directory that names them as a snapshot is.
        let fd = std::fs::File::open(upper).ctx(|| format!("open {}", upper.display()))?;
        rustix::fs::syncfs(fd.as_fd()).ctx(|| format!("sync the filesystem of {}", upper.display()))?;
        drop(fd);

        let id = random_snapshot_id()?;
        let target = self.snapshots_dir().join(id.as_str());
        let record = SnapshotRecord {
            parent: parent.cloned(),
            size,
            created: now_secs(),
            ..SnapshotRecord::default()
        };
        let held = self.db_lock()?;
        if let Some(parent) = parent {
            let found = self.read_locked(&held, |txn| Ok(read_snapshot(txn, parent)?.is_some()))?;
            if !found {
                return Err(Error::SnapshotNotFound {
                    what: "parent snapshot",
                    id: parent.to_string(),
                });
            }
        }
        let taken = target
            .try_exists()
            .ctx(|| format!("look up {}", target.display()))?;
        if taken {
            // 128 random bits do not collide; if they did, the existing snapshot must not be replaced.
            return Err(Error::Io {
                context: format!("commit snapshot to {}", target.display()),
                source: io::Error::from(io::ErrorKind::AlreadyExists),
            });
        }
        crash_point("snapshot-before-rename");
        let dir = &prepared.dir;
        std::fs::rename(dir, &target).ctx(|| format!("move {} to {}", dir.display(), target.display()))?;
        prepared.committed = true;
        fsync_dir(&self.snapshots_dir())?;
        crash_point("snapshot-renamed");
        let lease = self.lease().cloned();
        let recorded = self.write_locked(&held, |txn| {
            put_snapshot(txn, &id, &record)?;
            if let Some(lease) = &lease {
                add_to_lease(txn, lease, LeaseResource::Snapshot(id.clone()))?;
            }
            Ok(())
        });
        if let Err(e) = recorded {
            // Without a record the directory is garbage; out of the way it cannot be mistaken for a snapshot.
            if let Err(cleanup) = self.move_to_trash(&target).and_then(|trash| remove_any(&trash)) {
                tracing::warn!(error = %cleanup, "could not remove an unrecorded snapshot (prune removes it)");
            }
            return Err(e);
        }
        drop(held);
        crash_point("snapshot-recorded");
        Ok(id)
    }

    /// Records that exporting the snapshot with mtimes clamped to `source_date_epoch` (or unclamped, for
    /// `None`) gives a layer tar with this diff_id, so the next export can look up the blobs of that diff_id
    /// (see [`Store::blobs_for_diff_id`]) instead of reading the files again. An unclamped diff_id also
    /// becomes the snapshot's [`SnapshotRecord::diff_id`] if it has none, which lets an image whose config
    /// lists it keep the snapshot.
    pub fn set_snapshot_diff_id(
        &self,
        id: &SnapshotId,
        source_date_epoch: Option<u64>,
        diff_id: &Digest,
    ) -> Result<()> {
        self.write(|txn| put_tar_diff_id(txn, id, source_date_epoch, diff_id))
    }

    /// A layer brought in whole from elsewhere (a shared cache): its blob's metadata and its snapshot's
    /// diff_id for `source_date_epoch`, in one transaction.
    pub fn record_layer(
        &self,
        blob: &Digest,
        meta: &BlobMeta,
        id: &SnapshotId,
        source_date_epoch: Option<u64>,
        diff_id: &Digest,
    ) -> Result<()> {
        self.write(|txn| {
            put_blob_meta(txn, blob, meta)?;
            put_tar_diff_id(txn, id, source_date_epoch, diff_id)
        })
    }

    /// The diff_id recorded by [`Store::set_snapshot_diff_id`] for this epoch.
    pub fn snapshot_diff_id(
        &self,
        id: &SnapshotId,
        source_date_epoch: Option<u64>,
    ) -> Result<Option<Digest>> {
        let record = self.snapshot(id)?.ok_or_else(|| Error::SnapshotNotFound {
            what: "snapshot",
            id: id.to_string(),
        })?;
        Ok(record
            .tar_diff_ids
            .iter()
            .find(|t| t.source_date_epoch == source_date_epoch)
            .map(|t| t.diff_id))
    }
}

fn put_tar_diff_id(
    txn: &redb::WriteTransaction,
    id: &SnapshotId,
    source_date_epoch: Option<u64>,
    diff_id: &Digest,
) -> crate::meta::TxResult<()> {
    let mut record = get_snapshot(txn, id)?.ok_or_else(|| Error::SnapshotNotFound {
        what: "snapshot",
        id: id.to_string(),
    })?;
    record
        .tar_diff_ids
        .retain(|t| t.source_date_epoch != source_date_epoch);
    record.tar_diff_ids.push(TarDiffId {
        source_date_epoch,
        diff_id: *diff_id,
    });
    if source_date_epoch.is_none() && record.diff_id.is_none() {
        record.diff_id = Some(*diff_id);
    }
    update_snapshot(txn, id, &record)
}

fn random_snapshot_id() -> Result<SnapshotId> {
    let mut raw = [0u8; 16];
    let mut filled = 0;
    while filled < raw.len() {
        match rustix::rand::getrandom(&mut raw[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e).ctx(|| "read random bytes for a snapshot id"),
        }
    }
    SnapshotId::new(&format!("build-{}", hex::encode(raw)))
}

/// Bytes of regular file content under `dir`, each hardlinked inode once (what [`SnapshotRecord::size`]
/// counts).
fn diff_size(dir: &std::path::Path) -> Result<u64> {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    for entry in walkdir::WalkDir::new(dir) {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(dir).display().to_string();
            Error::Io {
                context: format!("walk {path}"),
                source: e.into(),
            }
        })?;
        let meta = entry
            .metadata()
            .map_err(io::Error::from)
            .ctx(|| format!("stat {}", entry.path().display()))?;
        if meta.is_file() && (meta.nlink() == 1 || seen.insert((meta.dev(), meta.ino()))) {
            total += meta.len();
        }
    }
    Ok(total)
}

/// Ends the process at the named step of a commit when `KILN_CACHE_CRASH_AT` names it, so tests can check
/// what a crash there leaves. Compiled into debug builds only.
fn crash_point(name: &str) {
    #[cfg(debug_assertions)]
    if std::env::var_os("KILN_CACHE_CRASH_AT").is_some_and(|v| v == name) {
        // exit, not panic: no destructor may tidy up, as none would in a crash.
        std::process::exit(86);
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}
