//! ROOT/cache-mounts: the persistent directories of `RUN --mount=type=cache`, one per cache id, shared by
//! every build on the store. Their contents never enter a layer or a cache key.
//!
//! A step holds the mount's lock while it uses it: shared for `sharing=shared`, exclusive for `locked` and
//! `private` (which serialises their users across kiln processes). Prune removes only mounts whose lock it
//! can take exclusively at once, so a mount in use is never pulled from under a step.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use crate::error::{IoContext, Result};
use crate::fsutil::{LockGuard, fsync_dir, now_secs};
use crate::meta::{CACHE_MOUNTS, CacheMountRecord, get_json, put_json};
use crate::{Digest, Store};

/// A cache mount directory, in use until dropped.
#[derive(Debug)]
pub struct CacheMount {
    pub path: PathBuf,
    _lock: LockGuard,
}

/// How a step shares a cache mount with the other steps using the same id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MountSharing {
    Shared,
    /// One user at a time.
    Exclusive,
}

/// Ownership and permissions a cache mount gets when it is created: (uid, gid, mode).
pub type MountOwner = (u32, u32, u32);

impl Store {
    pub(crate) fn cache_mounts_dir(&self) -> PathBuf {
        self.root().join("cache-mounts")
    }

    /// The directory name of the cache mount `id`: ids are user text, names are not.
    pub(crate) fn cache_mount_name(id: &str) -> String {
        Digest::of(id.as_bytes()).hex()
    }

    fn cache_mount_lock(&self, name: &str) -> PathBuf {
        self.locks_dir().join(format!("cache-mount-{name}.lock"))
    }

    /// The cache mount `id`, created (owned and moded as `owner` says, or root's 0755) if it does not exist,
    /// and held with `sharing` until the returned guard drops.
    pub fn cache_mount(
        &self,
        id: &str,
        sharing: MountSharing,
        owner: Option<MountOwner>,
    ) -> Result<CacheMount> {
        let name = Self::cache_mount_name(id);
        let lock_path = self.cache_mount_lock(&name);
        let lock = match sharing {
            MountSharing::Shared => LockGuard::acquire_shared(&lock_path)?,
            MountSharing::Exclusive => LockGuard::acquire(&lock_path)?,
        };
        let dir = self.cache_mounts_dir();
        let path = dir.join(&name);
        if !path.is_dir() {
            // Made in tmp and renamed into place, so a mount is either absent or made whole with its owner.
            let fresh = self.temp_path("cache-mount");
            std::fs::create_dir_all(&dir).ctx(|| format!("create {}", dir.display()))?;
            std::fs::create_dir(&fresh).ctx(|| format!("create {}", fresh.display()))?;
            let (uid, gid, mode) = owner.unwrap_or((0, 0, 0o755));
            std::os::unix::fs::chown(&fresh, Some(uid), Some(gid))
                .and_then(|()| std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(mode)))
                .ctx(|| format!("prepare cache mount {id:?}"))?;
            match std::fs::rename(&fresh, &path) {
                Ok(()) => fsync_dir(&dir)?,
                // A shared user created it meanwhile; theirs stands.
                Err(_) if path.is_dir() => {
                    let _ = std::fs::remove_dir(&fresh);
                }
                Err(e) => return Err(e).ctx(|| format!("create cache mount {}", path.display())),
            }
        }
        let now = now_secs();
        let id = id.to_owned();
        self.write(|txn| {
            let mut t = txn.open_table(CACHE_MOUNTS)?;
            let created = get_json::<CacheMountRecord>(&t, "cache mount", &name)?.map_or(now, |r| r.created);
            put_json(
                &mut t,
                "cache mount",
                &name,
                &CacheMountRecord {
                    id,
                    created,
                    last_used: now,
                },
            )
        })?;
        Ok(CacheMount { path, _lock: lock })
    }

    /// Whether a cache mount (by directory name) is in use by a step of some process.
    pub(crate) fn cache_mount_in_use(&self, name: &str) -> Result<bool> {
        Ok(LockGuard::try_exclusive(&self.cache_mount_lock(name))?.is_none())
    }

    /// Takes a cache mount for removal: its exclusive lock, if nobody uses it.
    pub(crate) fn claim_cache_mount(&self, name: &str) -> Result<Option<LockGuard>> {
        LockGuard::try_exclusive(&self.cache_mount_lock(name))
    }
}
