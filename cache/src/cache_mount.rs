//! ROOT/cache-mounts: the persistent directories of `RUN --mount=type=cache`, one per cache id, shared by
//! every build on the store. Their contents never enter a layer or a cache key.
//!
//! A step holds the mount's lock while it uses it: shared for `sharing=shared`, exclusive for `locked` (which
//! serialises its users across kiln processes) and `private` (whose users, while it is busy, get a scratch
//! directory of their own instead of waiting). Prune removes only mounts whose lock it can take exclusively at
//! once, so a mount in use is never pulled from under a step.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use crate::error::{Error, IoContext, Result};
use crate::fsutil::{LockGuard, fsync_dir, now_secs};
use crate::meta::{CACHE_MOUNTS, CacheMountRecord, get_json, put_json};
use crate::unpack::{TempDir, unpack_tar};
use crate::{Digest, Store};

/// A cache mount directory, in use until dropped.
pub struct CacheMount {
    pub path: PathBuf,
    _held: Held,
}

impl std::fmt::Debug for CacheMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheMount").field("path", &self.path).finish()
    }
}

/// Kept for what dropping it does: unlock, or remove the scratch directory.
#[expect(dead_code, reason = "held only to be dropped")]
enum Held {
    Lock(LockGuard),
    /// A private mount's stand-in while the mount itself is busy.
    Scratch(TempDir),
}

/// How a step shares a cache mount with the other steps using the same id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MountSharing {
    Shared,
    /// One user at a time; the others wait (`sharing=locked`).
    Exclusive,
    /// One user at a time; while it is busy, others get an empty directory of their own for the step
    /// (`sharing=private`).
    Private,
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
        self.cache_mount_seeded(id, sharing, owner, &|_| Ok(()))
    }

    /// [`Store::cache_mount`], with `seed` filling a mount that has to be made (`--mount=type=cache,from=`)
    /// before it is anyone's; an existing mount is used as it is, as BuildKit does.
    pub fn cache_mount_seeded(
        &self,
        id: &str,
        sharing: MountSharing,
        owner: Option<MountOwner>,
        seed: &dyn Fn(&std::path::Path) -> std::io::Result<()>,
    ) -> Result<CacheMount> {
        let name = Self::cache_mount_name(id);
        let lock_path = self.cache_mount_lock(&name);
        let lock = match sharing {
            MountSharing::Shared => LockGuard::acquire_shared(&lock_path)?,
            MountSharing::Exclusive => LockGuard::acquire(&lock_path)?,
            MountSharing::Private => match LockGuard::try_exclusive(&lock_path)? {
                Some(lock) => lock,
                None => {
                    let scratch = TempDir::create(self.temp_path("cache-mount"))?;
                    seed(&scratch.path).ctx(|| format!("seed cache mount {id:?}"))?;
                    set_owner(&scratch, id, owner)?;
                    return Ok(CacheMount {
                        path: scratch.path.clone(),
                        _held: Held::Scratch(scratch),
                    });
                }
            },
        };
        let path = self.cache_mounts_dir().join(&name);
        if !path.is_dir() {
            let fresh = TempDir::create(self.temp_path("cache-mount"))?;
            seed(&fresh.path).ctx(|| format!("seed cache mount {id:?}"))?;
            self.install_cache_mount(id, fresh, owner)?;
        }
        self.touch_cache_mount(id)?;
        Ok(CacheMount {
            path,
            _held: Held::Lock(lock),
        })
    }

    /// Whether the cache mount `id` exists (a look, without waiting for its users).
    pub fn has_cache_mount(&self, id: &str) -> bool {
        self.cache_mounts_dir().join(Self::cache_mount_name(id)).is_dir()
    }

    /// The cache mount `id` if it exists, held alone: steps sharing a mount write to it while they hold it
    /// shared, so whoever reads the whole of it (an export) waits for them and keeps them out meanwhile.
    pub fn existing_cache_mount(&self, id: &str) -> Result<Option<CacheMount>> {
        let name = Self::cache_mount_name(id);
        let path = self.cache_mounts_dir().join(&name);
        if !path.is_dir() {
            return Ok(None);
        }
        let lock = LockGuard::acquire(&self.cache_mount_lock(&name))?;
        Ok(path.is_dir().then_some(CacheMount {
            path,
            _held: Held::Lock(lock),
        }))
    }

    /// Creates the cache mount `id` with the contents of a layer blob (a shared cache's copy of another
    /// machine's mount), unless it exists by now. The blob is checked against its digest while it is
    /// unpacked, as a layer is, and the mount appears whole or not at all, its top directory owned as `owner`
    /// says (as [`Store::cache_mount`] makes it). Says whether it seeded the mount.
    pub fn seed_cache_mount(&self, id: &str, blob: &Digest, owner: Option<MountOwner>) -> Result<bool> {
        let name = Self::cache_mount_name(id);
        let _lock = LockGuard::acquire(&self.cache_mount_lock(&name))?;
        if self.cache_mounts_dir().join(&name).is_dir() {
            return Ok(false);
        }
        let fresh = TempDir::create(self.temp_path("cache-mount"))?;
        let unpacked = unpack_tar(self.open_blob(blob)?, &fresh.path).map_err(|e| Error::Unpack {
            blob: *blob,
            entry: e.entry,
            source: e.error,
        })?;
        if unpacked.blob_digest != *blob {
            return Err(Error::CorruptBlob {
                digest: *blob,
                actual: unpacked.blob_digest,
            });
        }
        self.install_cache_mount(id, fresh, owner)?;
        self.touch_cache_mount(id)?;
        Ok(true)
    }

    /// Renames a prepared directory into place as the mount `id` (made in tmp, so a mount is either absent
    /// or whole with its owner). A mount that appeared meanwhile (a shared user's) stands.
    fn install_cache_mount(&self, id: &str, fresh: TempDir, owner: Option<MountOwner>) -> Result<()> {
        let dir = self.cache_mounts_dir();
        let path = dir.join(Self::cache_mount_name(id));
        std::fs::create_dir_all(&dir).ctx(|| format!("create {}", dir.display()))?;
        set_owner(&fresh, id, owner)?;
        // Never over a mount that appeared meanwhile, even an empty one: a shared user may be writing to it.
        match rustix::fs::renameat_with(
            rustix::fs::CWD,
            &fresh.path,
            rustix::fs::CWD,
            &path,
            rustix::fs::RenameFlags::NOREPLACE,
        ) {
            Ok(()) => fsync_dir(&dir),
            Err(_) if path.is_dir() => Ok(()),
            Err(e) => Err(std::io::Error::from(e)).ctx(|| format!("create cache mount {}", path.display())),
        }
    }

    fn touch_cache_mount(&self, id: &str) -> Result<()> {
        let name = Self::cache_mount_name(id);
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
        })
    }

    /// Whether a cache mount (by directory name) is in use by a step of some process.
    pub(crate) fn cache_mount_in_use(&self, name: &str) -> Result<bool> {
        Ok(LockGuard::try_exclusive(&self.cache_mount_lock(name))?.is_none())
    }

    /// Takes a cache mount for removal: its exclusive lock, if nobody uses it.
    pub(crate) fn claim_cache_mount(&self, name: &str) -> Result<Option<LockGuard>> {
        LockGuard::try_exclusive(&self.cache_mount_lock(name))
    }

    /// For `repair`: a directory without a record (a crash between the two) goes, as does a record whose
    /// directory is gone; mounts in use are left alone. Says what it removed.
    pub(crate) fn remove_unrecorded_cache_mounts(&self) -> Result<Vec<String>> {
        let recorded: Vec<(String, CacheMountRecord)> = self.read(|txn| {
            let t = txn.open_table(CACHE_MOUNTS)?;
            crate::meta::all_json(&t, "cache mount")
        })?;
        let dir = self.cache_mounts_dir();
        let mut removed = Vec::new();
        for (name, record) in &recorded {
            if !dir.join(name).is_dir() && self.claim_cache_mount(name)?.is_some() {
                self.write(|txn| {
                    txn.open_table(CACHE_MOUNTS)?.remove(name.as_str())?;
                    Ok(())
                })?;
                removed.push(format!(
                    "record of cache mount {:?}, whose directory was gone",
                    record.id
                ));
            }
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if recorded.iter().any(|(n, _)| *n == name) {
                    continue;
                }
                let Some(_claimed) = self.claim_cache_mount(&name)? else {
                    continue;
                };
                if let Some(trash) = self.trash_if_present(&entry.path())? {
                    crate::gc::remove_any(&trash)?;
                }
                removed.push(format!("cache-mounts/{name}, a directory without a record"));
            }
        }
        Ok(removed)
    }
}

/// A new mount's top directory gets the mount's owner and mode (root's 0755 unless it says).
fn set_owner(dir: &TempDir, id: &str, owner: Option<MountOwner>) -> Result<()> {
    let (uid, gid, mode) = owner.unwrap_or((0, 0, 0o755));
    std::os::unix::fs::chown(&dir.path, Some(uid), Some(gid))
        .and_then(|()| std::fs::set_permissions(&dir.path, std::fs::Permissions::from_mode(mode)))
        .ctx(|| format!("prepare cache mount {id:?}"))
}
