//! What refers to what, disk use, and prune.
//!
//! Roots are image records, cache records and leases of live processes. An image keeps its manifest (or
//! index and the manifests of it that are stored), their configs and layers, and the snapshots of the
//! config's diff_ids. A cache record keeps the blobs and snapshots it lists, a lease what it lists, and a
//! snapshot its parent chain.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::PathBuf;

use serde::Deserialize;

use crate::error::{Error, IoContext, Result};
use crate::fsutil::{LockGuard, fsync_dir, temp_holder};
use std::os::unix::ffi::OsStrExt;

use crate::context_index;
use crate::meta::{
    CACHE_MOUNTS, CacheMountRecord, CacheRecord, DbDump, Lease, LeaseResource, SnapshotId, delete_blob_meta,
    delete_cache_record, delete_lease, delete_snapshot, get_json,
};
use crate::{Digest, Store};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskUsage {
    pub images: Vec<ImageUsage>,
    pub cache_records: Vec<CacheRecordUsage>,
    pub snapshots: Vec<SnapshotUsage>,
    /// All blob files.
    pub blobs_bytes: u64,
    /// All recorded snapshots.
    pub snapshots_bytes: u64,
    /// What `prune(false, None)` would free.
    pub reclaimable_bytes: u64,
    /// `RUN --mount=type=cache` directories.
    pub cache_mounts: Vec<CacheMountUsage>,
    pub cache_mounts_bytes: u64,
    /// The stat indexes of build contexts.
    pub context_index_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheMountUsage {
    pub id: String,
    pub size: u64,
    pub last_used: u64,
    /// A step of some build holds it now.
    pub in_use: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageUsage {
    pub name: String,
    pub digest: Digest,
    /// Blobs and snapshots the image keeps.
    pub size: u64,
    /// The part of `size` nothing else (another image, a cache record, a lease) keeps.
    pub unique_size: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheRecordUsage {
    pub key: String,
    pub size: u64,
    pub unique_size: u64,
    pub last_used: u64,
    /// Held by a live lease.
    pub in_use: bool,
    /// The `--cache-from` source it was imported from; `None` for a step built here.
    pub imported_from: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotUsage {
    pub id: SnapshotId,
    pub diff_id: Option<Digest>,
    pub size: u64,
    /// Kept by some root.
    pub referenced: bool,
}

/// What a prune removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub blobs: Vec<Digest>,
    pub snapshots: Vec<SnapshotId>,
    pub cache_records: Vec<String>,
    /// Leases of processes that no longer run.
    pub leases: Vec<String>,
    /// Leftovers in ROOT/tmp of processes that no longer run.
    pub temp_entries: usize,
    /// Ids of the cache mounts removed (`all` only).
    pub cache_mounts: Vec<String>,
    /// Context indexes removed: those of context directories that are gone (all of them with `all`).
    pub context_indexes: usize,
    pub bytes_freed: u64,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Resources {
    pub blobs: BTreeSet<Digest>,
    pub snapshots: BTreeSet<SnapshotId>,
}

impl Resources {
    fn extend(&mut self, other: &Resources) {
        self.blobs.extend(other.blobs.iter().copied());
        self.snapshots.extend(other.snapshots.iter().cloned());
    }
}

/// The parts of an index, manifest or config that refer to other content. Lenient on purpose: OCI and
/// Docker media types share these field names, and unknown fields do not matter here.
#[derive(Deserialize, Default)]
struct Refs {
    #[serde(default)]
    manifests: Vec<Descriptor>,
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
}

#[derive(Deserialize)]
struct ImageConfig {
    rootfs: Option<RootFs>,
}

#[derive(Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// The database and the directories, read together so references can be followed.
pub(crate) struct Inventory<'s> {
    store: &'s Store,
    pub db: DbDump,
    /// Blob files on disk and their sizes.
    pub blob_files: BTreeMap<Digest, u64>,
    pub bad_blob_names: Vec<String>,
    /// Directory names under ROOT/snapshots.
    pub snapshot_dirs: BTreeSet<String>,
    snapshot_by_diff: HashMap<String, SnapshotId>,
    snapshot_parent: HashMap<SnapshotId, Option<SnapshotId>>,
    pub snapshot_size: HashMap<SnapshotId, u64>,
    manifest_memo: HashMap<Digest, Closure>,
}

/// What a root keeps, and what is wrong with what it names (missing or unreadable content).
#[derive(Clone, Debug, Default)]
pub(crate) struct Closure {
    pub res: Resources,
    pub problems: Vec<String>,
}

impl<'s> Inventory<'s> {
    pub fn scan(store: &'s Store, db: DbDump) -> Result<Inventory<'s>> {
        let (digests, bad_blob_names) = store.scan_blobs()?;
        let mut blob_files = BTreeMap::new();
        for d in digests {
            let path = store.blob_path(&d);
            match std::fs::symlink_metadata(&path) {
                Ok(m) => {
                    blob_files.insert(d, m.len());
                }
                // Deleted since the listing (delete_blob from another process): simply not there.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(Error::Io {
                        context: format!("stat {}", path.display()),
                        source: e,
                    });
                }
            }
        }
        let snapshots_dir = store.snapshots_dir();
        let mut snapshot_dirs = BTreeSet::new();
        for entry in std::fs::read_dir(&snapshots_dir).ctx(|| format!("list {}", snapshots_dir.display()))? {
            let entry = entry.ctx(|| format!("list {}", snapshots_dir.display()))?;
            snapshot_dirs.insert(entry.file_name().to_string_lossy().into_owned());
        }
        let mut snapshot_by_diff = HashMap::new();
        for (diff, id) in &db.snapshot_by_diff {
            if let Ok(id) = SnapshotId::new(id) {
                snapshot_by_diff.insert(diff.clone(), id);
            }
        }
        let mut snapshot_parent = HashMap::new();
        let mut snapshot_size = HashMap::new();
        for (id, rec) in &db.snapshots {
            if let Ok(id) = SnapshotId::new(id) {
                snapshot_parent.insert(id.clone(), rec.parent.clone());
                snapshot_size.insert(id, rec.size);
            }
        }
        Ok(Inventory {
            store,
            db,
            blob_files,
            bad_blob_names,
            snapshot_dirs,
            snapshot_by_diff,
            snapshot_parent,
            snapshot_size,
            manifest_memo: HashMap::new(),
        })
    }

    /// Adds a snapshot and its parent chain.
    fn add_snapshot(&self, id: &SnapshotId, out: &mut Closure) {
        let mut next = Some(id.clone());
        while let Some(id) = next {
            if !out.res.snapshots.insert(id.clone()) {
                break;
            }
            next = match self.snapshot_parent.get(&id) {
                Some(parent) => parent.clone(),
                None => {
                    out.problems.push(format!("snapshot {id} is missing"));
                    None
                }
            };
        }
    }

    /// What an image (its manifest or index digest) keeps. Children of an index that are not stored are
    /// platforms that were not pulled, not missing content.
    pub fn image_closure(&mut self, digest: &Digest) -> Result<Closure> {
        let mut out = Closure::default();
        out.res.blobs.insert(*digest);
        if !self.blob_files.contains_key(digest) {
            out.problems.push(format!("manifest {digest} is missing"));
            return Ok(out);
        }
        let refs = self.parse_refs(digest)?;
        for child in &refs.manifests {
            if let Ok(child) = child.digest.parse::<Digest>() {
                out.res.blobs.insert(child);
                if self.blob_files.contains_key(&child) {
                    let sub = self.manifest_closure(&child)?;
                    out.res.extend(&sub.res);
                    out.problems.extend(sub.problems);
                }
            }
        }
        if refs.config.is_some() || !refs.layers.is_empty() {
            let sub = self.manifest_closure(digest)?;
            out.res.extend(&sub.res);
            out.problems.extend(sub.problems);
        }
        Ok(out)
    }

    fn manifest_closure(&mut self, digest: &Digest) -> Result<Closure> {
        if let Some(c) = self.manifest_memo.get(digest) {
            return Ok(c.clone());
        }
        let refs = self.parse_refs(digest)?;
        let mut out = Closure::default();
        out.res.blobs.insert(*digest);
        for layer in &refs.layers {
            let Ok(layer) = layer.digest.parse::<Digest>() else {
                continue;
            };
            out.res.blobs.insert(layer);
            if !self.blob_files.contains_key(&layer) {
                out.problems
                    .push(format!("layer {layer} of manifest {digest} is missing"));
            }
        }
        if let Some(config) = refs.config.as_ref().and_then(|c| c.digest.parse::<Digest>().ok()) {
            out.res.blobs.insert(config);
            if self.blob_files.contains_key(&config) {
                // An unreadable config only hides which snapshots the image uses; snapshots can be unpacked
                // again from the layers, which the manifest still keeps. So this is reported, not fatal.
                match self.config_diff_ids(&config) {
                    Ok(diff_ids) => {
                        for diff_id in diff_ids {
                            if let Some(id) = self.snapshot_by_diff.get(&diff_id).cloned() {
                                self.add_snapshot(&id, &mut out);
                            }
                        }
                    }
                    Err(e) => out.problems.push(format!("config of manifest {digest}: {e}")),
                }
            } else {
                out.problems
                    .push(format!("config {config} of manifest {digest} is missing"));
            }
        }
        self.manifest_memo.insert(*digest, out.clone());
        Ok(out)
    }

    fn config_diff_ids(&self, config: &Digest) -> Result<Vec<String>> {
        let bytes = self.store.read_blob(config)?;
        let parsed: ImageConfig = serde_json::from_slice(&bytes).map_err(|source| Error::Json {
            what: format!("image config {config}"),
            source,
        })?;
        Ok(parsed.rootfs.map(|r| r.diff_ids).unwrap_or_default())
    }

    /// A manifest or index that cannot be read stops the prune: guessing would delete what it refers to.
    fn parse_refs(&self, digest: &Digest) -> Result<Refs> {
        let bytes = self.store.read_blob(digest)?;
        serde_json::from_slice(&bytes).map_err(|source| Error::Json {
            what: format!("manifest {digest}"),
            source,
        })
    }

    pub fn record_closure(&self, record: &CacheRecord) -> Closure {
        let mut out = Closure::default();
        for b in &record.blobs {
            out.res.blobs.insert(*b);
            if !self.blob_files.contains_key(b) {
                out.problems.push(format!("blob {b} is missing"));
            }
        }
        for s in &record.snapshots {
            self.add_snapshot(s, &mut out);
        }
        out
    }

    pub fn lease_closure(&self, lease: &Lease) -> Closure {
        let mut out = Closure::default();
        for r in &lease.resources {
            match r {
                LeaseResource::Blob(b) => {
                    out.res.blobs.insert(*b);
                }
                LeaseResource::Snapshot(s) => self.add_snapshot(s, &mut out),
                LeaseResource::CacheRecord(key) => {
                    if let Some((_, rec)) = self.db.cache_records.iter().find(|(k, _)| k == key) {
                        out.res.extend(&self.record_closure(rec).res);
                    }
                }
            }
        }
        out
    }

    /// Bytes the resources take (only what exists).
    pub fn size(&self, res: &Resources) -> u64 {
        let blobs: u64 = res.blobs.iter().filter_map(|b| self.blob_files.get(b)).sum();
        let snaps: u64 = res
            .snapshots
            .iter()
            .filter_map(|s| self.snapshot_size.get(s))
            .sum();
        blobs + snaps
    }

    fn live_leases(&self) -> impl Iterator<Item = &(String, Lease)> {
        self.db.leases.iter().filter(|(_, l)| l.holder.is_alive())
    }

    fn leased_record_keys(&self) -> BTreeSet<String> {
        let mut keys = BTreeSet::new();
        for (_, lease) in self.live_leases() {
            for r in &lease.resources {
                if let LeaseResource::CacheRecord(k) = r {
                    keys.insert(k.clone());
                }
            }
        }
        keys
    }

    /// Everything kept by the images, by the cache records in `records`, and by live leases.
    fn marked(&mut self, records: &BTreeSet<String>) -> Result<Resources> {
        let mut all = Resources::default();
        let images: Vec<Digest> = self.db.images.iter().map(|(_, r)| r.digest).collect();
        for digest in images {
            all.extend(&self.image_closure(&digest)?.res);
        }
        for (key, rec) in &self.db.cache_records {
            if records.contains(key) {
                all.extend(&self.record_closure(rec).res);
            }
        }
        for (_, lease) in self.live_leases() {
            all.extend(&self.lease_closure(lease).res);
        }
        Ok(all)
    }
}

impl Store {
    /// Reads the database and directories consistently (under the lock, released on return).
    pub(crate) fn inventory(&self) -> Result<Inventory<'_>> {
        let held = self.db_lock()?;
        self.inventory_locked(&held)
    }

    fn inventory_locked(&self, held: &LockGuard) -> Result<Inventory<'_>> {
        let db = self.load_all(held)?;
        Inventory::scan(self, db)
    }

    /// Disk use per image, per cache record and per snapshot.
    pub fn du(&self) -> Result<DiskUsage> {
        let mut inv = self.inventory()?;
        let mut roots: Vec<Resources> = Vec::new();
        let images = inv.db.images.clone();
        let mut image_res = Vec::new();
        for (name, rec) in &images {
            let res = inv.image_closure(&rec.digest)?.res;
            roots.push(res.clone());
            image_res.push((name.clone(), rec.digest, res));
        }
        let leased = inv.leased_record_keys();
        let mut record_res = Vec::new();
        for (key, rec) in &inv.db.cache_records {
            let res = inv.record_closure(rec).res;
            roots.push(res.clone());
            record_res.push((key.clone(), rec.last_used, rec.imported_from.clone(), res));
        }
        for (_, lease) in inv.live_leases() {
            roots.push(inv.lease_closure(lease).res);
        }
        let mut refs: HashMap<Resource, usize> = HashMap::new();
        for r in &roots {
            for b in &r.blobs {
                *refs.entry(Resource::Blob(*b)).or_default() += 1;
            }
            for s in &r.snapshots {
                *refs.entry(Resource::Snapshot(s.clone())).or_default() += 1;
            }
        }
        let unique = |res: &Resources| Resources {
            blobs: res
                .blobs
                .iter()
                .filter(|b| refs.get(&Resource::Blob(**b)) == Some(&1))
                .copied()
                .collect(),
            snapshots: res
                .snapshots
                .iter()
                .filter(|s| refs.get(&Resource::Snapshot((*s).clone())) == Some(&1))
                .cloned()
                .collect(),
        };
        let images = image_res
            .iter()
            .map(|(name, digest, res)| ImageUsage {
                name: name.clone(),
                digest: *digest,
                size: inv.size(res),
                unique_size: inv.size(&unique(res)),
            })
            .collect();
        let cache_records = record_res
            .iter()
            .map(|(key, last_used, imported_from, res)| CacheRecordUsage {
                key: key.clone(),
                size: inv.size(res),
                unique_size: inv.size(&unique(res)),
                last_used: *last_used,
                in_use: leased.contains(key),
                imported_from: imported_from.clone(),
            })
            .collect();
        let all_records: BTreeSet<String> = inv.db.cache_records.iter().map(|(k, _)| k.clone()).collect();
        let marked = inv.marked(&all_records)?;
        let snapshots = inv
            .db
            .snapshots
            .iter()
            .filter_map(|(id, rec)| {
                let id = SnapshotId::new(id).ok()?;
                Some(SnapshotUsage {
                    referenced: marked.snapshots.contains(&id),
                    id,
                    diff_id: rec.diff_id,
                    size: rec.size,
                })
            })
            .collect();
        let everything = Resources {
            blobs: inv.blob_files.keys().copied().collect(),
            snapshots: inv.snapshot_size.keys().cloned().collect(),
        };
        let total = inv.size(&everything);
        let mut cache_mounts = Vec::new();
        for (name, record) in &inv.db.cache_mounts {
            cache_mounts.push(CacheMountUsage {
                id: record.id.clone(),
                size: tree_size(&self.cache_mounts_dir().join(name)),
                last_used: record.last_used,
                in_use: self.cache_mount_in_use(name)?,
            });
        }
        Ok(DiskUsage {
            images,
            cache_records,
            snapshots,
            blobs_bytes: inv.blob_files.values().sum(),
            snapshots_bytes: inv.snapshot_size.values().sum(),
            reclaimable_bytes: total.saturating_sub(inv.size(&marked)),
            cache_mounts_bytes: cache_mounts.iter().map(|m| m.size).sum(),
            cache_mounts,
            context_index_bytes: tree_size(&self.context_index_dir()),
        })
    }

    /// Removes blobs and snapshots nothing keeps, leases of dead processes, temp leftovers of dead
    /// processes and the stat indexes of contexts that are gone. `all` also drops every cache record no live
    /// lease holds, every cache mount no step uses and every context index; `keep_storage` drops cache
    /// records, least recently used first, until what stays fits in that many bytes (images and leased
    /// content are never dropped, so it may stay above).
    ///
    /// Records are deleted before files, so a crash part way leaves only unreferenced files, which the next
    /// prune removes.
    pub fn prune(&self, all: bool, keep_storage: Option<u64>) -> Result<PruneReport> {
        let mut report = PruneReport::default();
        let mut trash: Vec<PathBuf> = Vec::new();
        {
            let held = self.db_lock()?;
            let mut inv = self.inventory_locked(&held)?;
            let leased = inv.leased_record_keys();
            let mut kept: BTreeSet<String> = inv
                .db
                .cache_records
                .iter()
                .filter(|(k, _)| !all || leased.contains(k))
                .map(|(k, _)| k.clone())
                .collect();
            let mut marked = inv.marked(&kept)?;
            if let Some(limit) = keep_storage {
                let mut by_age: Vec<(u64, String)> = inv
                    .db
                    .cache_records
                    .iter()
                    .filter(|(k, _)| kept.contains(k) && !leased.contains(k))
                    .map(|(k, r)| (r.last_used, k.clone()))
                    .collect();
                by_age.sort();
                for (_, key) in by_age {
                    if inv.size(&marked) <= limit {
                        break;
                    }
                    kept.remove(&key);
                    marked = inv.marked(&kept)?;
                }
            }
            report.cache_records = inv
                .db
                .cache_records
                .iter()
                .filter(|(k, _)| !kept.contains(k))
                .map(|(k, _)| k.clone())
                .collect();
            report.leases = inv
                .db
                .leases
                .iter()
                .filter(|(_, l)| !l.holder.is_alive())
                .map(|(k, _)| k.clone())
                .collect();
            report.blobs = inv
                .blob_files
                .keys()
                .filter(|b| !marked.blobs.contains(b))
                .copied()
                .collect();
            // Recorded snapshots and directories left without a record by a crash.
            let mut doomed_snapshots: BTreeSet<SnapshotId> = inv
                .snapshot_size
                .keys()
                .filter(|s| !marked.snapshots.contains(*s))
                .cloned()
                .collect();
            for dir in &inv.snapshot_dirs {
                match SnapshotId::new(dir) {
                    Ok(id) if !inv.snapshot_size.contains_key(&id) && !marked.snapshots.contains(&id) => {
                        doomed_snapshots.insert(id);
                    }
                    Ok(_) => {}
                    Err(_) => tracing::warn!(dir, "leaving a directory in snapshots/ the store did not make"),
                }
            }
            report.snapshots = doomed_snapshots.into_iter().collect();
            report.bytes_freed = report
                .blobs
                .iter()
                .filter_map(|b| inv.blob_files.get(b))
                .sum::<u64>();

            self.write_locked(&held, |txn| {
                for key in &report.cache_records {
                    delete_cache_record(txn, key)?;
                }
                for id in &report.leases {
                    delete_lease(txn, id)?;
                }
                for b in &report.blobs {
                    delete_blob_meta(txn, b)?;
                }
                for s in &report.snapshots {
                    delete_snapshot(txn, s)?;
                }
                Ok(())
            })?;

            // Still under the lock, so no commit can land a file between the listing and its removal. Renames
            // are quick; the slow deletes happen after the lock is released.
            for b in &report.blobs {
                let path = self.blob_path(b);
                if let Some(t) = self.trash_if_present(&path)? {
                    trash.push(t);
                }
            }
            for s in &report.snapshots {
                let dir = self.snapshots_dir().join(s.as_str());
                if let Some(t) = self.trash_if_present(&dir)? {
                    report.bytes_freed += inv.snapshot_size.get(s).copied().unwrap_or_else(|| tree_size(&t));
                    trash.push(t);
                }
            }
            if !report.blobs.is_empty() {
                fsync_dir(&self.blobs_dir())?;
            }
            if !report.snapshots.is_empty() {
                fsync_dir(&self.snapshots_dir())?;
            }
        }
        for t in &trash {
            remove_any(t)?;
        }
        if all {
            self.prune_cache_mounts(&mut report)?;
        }
        self.prune_context_indexes(all, &mut report)?;
        report.temp_entries = self.remove_stale_temp()?;
        Ok(report)
    }

    /// `prune --filter type=cache-mount`: only the cache mounts no step uses, nothing else.
    pub fn prune_cache_mounts_only(&self) -> Result<PruneReport> {
        let mut report = PruneReport::default();
        self.prune_cache_mounts(&mut report)?;
        Ok(report)
    }

    /// Removes every cache mount no step uses: the record first, then the directory, so a crash in between
    /// leaves a directory without a record, which the next use adopts and `check` reports.
    fn prune_cache_mounts(&self, report: &mut PruneReport) -> Result<()> {
        let mounts: Vec<String> = self
            .inventory()?
            .db
            .cache_mounts
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        let dir = self.cache_mounts_dir();
        let mut names: BTreeSet<String> = mounts.into_iter().collect();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                names.insert(entry.file_name().to_string_lossy().into_owned());
            }
        }
        for name in names {
            let Some(_claimed) = self.claim_cache_mount(&name)? else {
                continue;
            };
            let record = self.write(|txn| {
                let mut t = txn.open_table(CACHE_MOUNTS)?;
                let old: Option<CacheMountRecord> = get_json(&t, "cache mount", &name)?;
                t.remove(name.as_str())?;
                Ok(old)
            })?;
            let path = dir.join(&name);
            if let Some(trash) = self.trash_if_present(&path)? {
                report.bytes_freed += tree_size(&trash);
                remove_any(&trash)?;
            }
            report.cache_mounts.push(record.map_or(name, |r| r.id));
        }
        Ok(())
    }

    /// Removes the stat indexes of context directories that no longer exist (all with `all`) and those that
    /// cannot be read: they only ever save work, so losing one costs one full read of a context.
    fn prune_context_indexes(&self, all: bool, report: &mut PruneReport) -> Result<()> {
        let dir = self.context_index_dir();
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let keep = !all
                && std::fs::read(&path)
                    .ok()
                    .and_then(|bytes| context_index::inspect(&bytes).ok())
                    .is_some_and(|root| std::path::Path::new(std::ffi::OsStr::from_bytes(&root)).is_dir());
            if !keep {
                report.bytes_freed += entry.metadata().map_or(0, |m| m.len());
                remove_any(&path)?;
                report.context_indexes += 1;
            }
        }
        Ok(())
    }

    pub(crate) fn trash_if_present(&self, path: &std::path::Path) -> Result<Option<PathBuf>> {
        match path.try_exists() {
            Ok(true) => Ok(Some(self.move_to_trash(path)?)),
            Ok(false) => Ok(None),
            Err(e) => Err(Error::Io {
                context: format!("look up {}", path.display()),
                source: e,
            }),
        }
    }

    /// Entries in ROOT/tmp whose process is gone (interrupted writes, unpacks, deletes).
    pub(crate) fn stale_temp(&self) -> Result<Vec<PathBuf>> {
        let dir = self.tmp_dir();
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).ctx(|| format!("list {}", dir.display()))? {
            let entry = entry.ctx(|| format!("list {}", dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if temp_holder(&name).is_some_and(|h| !h.is_alive()) {
                out.push(entry.path());
            }
        }
        Ok(out)
    }

    fn remove_stale_temp(&self) -> Result<usize> {
        let stale = self.stale_temp()?;
        for path in &stale {
            remove_any(path)?;
        }
        Ok(stale.len())
    }
}

#[derive(PartialEq, Eq, Hash)]
enum Resource {
    Blob(Digest),
    Snapshot(SnapshotId),
}

/// Removes a file or a directory tree, following no symlink in it.
pub(crate) fn remove_any(path: &std::path::Path) -> Result<()> {
    kiln_fsutil::root::remove_path(path).ctx(|| format!("remove {}", path.display()))
}

/// Bytes of regular files under `path` (for directories the database has no size for).
pub(crate) fn tree_size(path: &std::path::Path) -> u64 {
    walkdir::WalkDir::new(path)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}
