//! The layered store: a content-addressed blob store in OCI layout, unpacked layer snapshots, image records,
//! blob metadata, leases and cache records (key → result) in an ACID embedded database, disk-use accounting,
//! garbage collection and a consistency check.
//!
//! Layout under the root (DESIGN §6):
//! ```text
//! ROOT/blobs/sha256/<hex>   content, written to ROOT/tmp while hashed, verified, fsynced, renamed in
//! ROOT/snapshots/<id>/fs    a diff directory overlayfs can stack: an unpacked layer (id = diff_id hex) or a
//!                           build step's upperdir (id = `build-<random>`, see [`Store::commit_snapshot`])
//! ROOT/db.redb              records (see [`ImageRecord`], [`BlobMeta`], [`SnapshotRecord`], [`Lease`],
//!                           [`CacheRecord`])
//! ROOT/cache-mounts/<hex>   `RUN --mount=type=cache` directories, by the sha256 of their id
//! ROOT/context-index/       stat indexes of build contexts (see [`context_index`])
//! ROOT/tmp/                 work in progress (blob writes, unpacks, prepared upperdirs), named after the
//!                           process that owns it
//! ROOT/locks/               flock files
//! ```
//!
//! Concurrency: any number of processes may use one root. redb takes a non-blocking exclusive `flock` on the
//! database file for as long as a `Database` is open, so a second open — from another process or another
//! `Store` in the same process — fails instead of waiting. The store therefore opens the database per
//! operation, inside a blocking `flock` on `ROOT/locks/db.lock`; database operations from all processes
//! are serialized (readers included). Every operation is short, but opening redb is most of its cost
//! (about 1.5 ms for a read with redb optimized, over 10 ms in an unoptimized build). Blob and snapshot
//! files are committed (renamed into place) under the same lock, so a concurrent prune never sees half of a
//! commit.
//!
//! Lifetime: blobs and snapshots stay while an image record, a cache record or a live lease refers to them.
//! A build should [`Store::create_lease`] first and work through [`Store::with_lease`], so that what it
//! writes is protected from a concurrent prune until it is tagged or recorded.
//!
//! The API is synchronous and `std::fs` based; async callers wrap calls in `spawn_blocking`.

mod blob;
mod cache_mount;
mod check;
pub mod context_index;
mod digest;
mod error;
mod fsutil;
mod gc;
mod meta;
mod snapshot;
mod unpack;

use std::path::{Path, PathBuf};

pub use blob::{BlobInfo, BlobWriter};
pub use cache_mount::{CacheMount, MountOwner, MountSharing};
pub use check::{CheckReport, Finding, RepairReport};
pub use digest::Digest;
pub use error::{Error, Result};
pub use fsutil::{Holder, LockGuard, temp_name};
pub use gc::{CacheMountUsage, CacheRecordUsage, DiskUsage, ImageUsage, PruneReport, SnapshotUsage};
pub use meta::{
    BlobMeta, CacheMountRecord, CacheRecord, ImageRecord, Lease, LeaseId, LeaseResource, Platform,
    SnapshotId, SnapshotRecord, TarDiffId,
};
pub use snapshot::PreparedSnapshot;
pub use unpack::Compression;

use crate::error::IoContext;

/// The file under the store root naming the steps the last build ran.
const LAST_BUILD_MISSES: &str = "last-build-misses.json";

/// A handle on a store root. Cheap to clone; holds no open files or locks between calls.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
    /// Where blobs, snapshots and cache records written through this handle are recorded (see
    /// [`Store::with_lease`]).
    lease: Option<LeaseId>,
}

impl Store {
    /// Opens the store at `root`, creating its directories and database on first use.
    pub fn open(root: &Path) -> Result<Store> {
        let store = Store {
            root: root.to_owned(),
            lease: None,
        };
        for dir in [
            store.blobs_dir(),
            store.snapshots_dir(),
            store.tmp_dir(),
            store.locks_dir(),
        ] {
            fsutil::ensure_dir(&dir)?;
        }
        store.init_db()?;
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Records which steps the last build ran (missed every cache), as JSON the solver defines, for
    /// `kiln explain`. A build that missed nothing removes the file, which costs no sync.
    pub fn set_last_build_misses(&self, misses: Option<&[u8]>) -> Result<()> {
        let path = self.root.join(LAST_BUILD_MISSES);
        let what = || format!("record the last build's misses in {}", path.display());
        match misses {
            Some(bytes) => context_index::write_atomically(&path, bytes).ctx(what),
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).ctx(what),
                _ => Ok(()),
            },
        }
    }

    /// What [`Store::set_last_build_misses`] recorded.
    pub fn last_build_misses(&self) -> Result<Option<Vec<u8>>> {
        let path = self.root.join(LAST_BUILD_MISSES);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).ctx(|| format!("read {}", path.display())),
        }
    }

    /// A handle that records everything it writes (blobs, snapshots, cache records) in `lease`, in the
    /// same locked step that makes it visible.
    pub fn with_lease(&self, lease: &LeaseId) -> Store {
        Store {
            root: self.root.clone(),
            lease: Some(lease.clone()),
        }
    }

    pub fn lease(&self) -> Option<&LeaseId> {
        self.lease.as_ref()
    }

    /// Takes the cross-process lock called `name` (for example a cache key being computed), waiting while
    /// another process holds it. Released when the guard drops or the process dies.
    pub fn lock(&self, name: &str) -> Result<LockGuard> {
        let file = format!("key-{}.lock", Digest::of(name.as_bytes()).hex());
        LockGuard::acquire(&self.locks_dir().join(file))
    }

    pub(crate) fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    pub(crate) fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub(crate) fn locks_dir(&self) -> PathBuf {
        self.root.join("locks")
    }

    pub(crate) fn db_path(&self) -> PathBuf {
        self.root.join("db.redb")
    }

    /// A fresh path in ROOT/tmp for work of `kind`, named so prune can tell whose it is.
    pub(crate) fn temp_path(&self, kind: &str) -> PathBuf {
        self.tmp_dir().join(fsutil::temp_name(kind))
    }

    /// Moves `path` out of the way into ROOT/tmp (atomically, so a crash leaves it either in place or
    /// in tmp where the next prune deletes it) and returns where it went.
    pub(crate) fn move_to_trash(&self, path: &Path) -> Result<PathBuf> {
        let trash = self.temp_path("trash");
        std::fs::rename(path, &trash).ctx(|| format!("move {} to {}", path.display(), trash.display()))?;
        Ok(trash)
    }
}
