//! `store check`: every mismatch between the database and the directories.

use std::fmt;
use std::io;

use crate::digest::Hashing;
use crate::error::{IoContext, Result};
use crate::fsutil::temp_holder;
use crate::meta::SnapshotId;
use crate::{Digest, Store};

/// One thing found wrong (or worth knowing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// What it is about: `blob sha256:…`, `image NAME`, `snapshot ID`, a path.
    pub subject: String,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.subject, self.message)
    }
}

/// Errors are content that is referenced but missing or corrupt. Warnings are leftovers a crash can leave
/// (unreferenced files, temp files and leases of dead processes); the store works with them and prune
/// removes them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    pub errors: Vec<Finding>,
    pub warnings: Vec<Finding>,
    /// What each error is about, for `repair`.
    broken: Vec<Broken>,
}

/// Something an error makes unusable, which a repair removes.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Broken {
    /// A blob file whose content is not its digest.
    Blob(Digest),
    /// Blob metadata that disagrees with the files or the index.
    BlobMeta(String),
    /// A diff_id → blob index entry.
    DiffBlob {
        diff: String,
        blob: String,
    },
    Image(String),
    Snapshot(String),
    SnapshotIndex(String),
    CacheRecord(String),
}

impl fmt::Display for Broken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Broken::Blob(digest) => write!(f, "corrupt blob {digest}"),
            Broken::BlobMeta(key) => write!(f, "metadata of blob {key}"),
            Broken::DiffBlob { diff, blob } => write!(f, "index entry {diff} -> {blob}"),
            Broken::Image(name) => write!(f, "image {name} (its content is damaged; pull or build it again)"),
            Broken::Snapshot(id) => write!(f, "record of snapshot {id}"),
            Broken::SnapshotIndex(diff) => write!(f, "index entry {diff}"),
            Broken::CacheRecord(key) => write!(f, "cache record {key}"),
        }
    }
}

/// What `repair` did, one line each, and how the store checked afterwards.
#[derive(Debug, Default)]
pub struct RepairReport {
    pub removed: Vec<String>,
    pub after: CheckReport,
}

impl CheckReport {
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }

    fn error(&mut self, subject: impl Into<String>, message: impl Into<String>) {
        self.errors.push(Finding {
            subject: subject.into(),
            message: message.into(),
        });
    }

    fn warn(&mut self, subject: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Finding {
            subject: subject.into(),
            message: message.into(),
        });
    }
}

impl Store {
    /// Walks the database and the directories and reports every mismatch, re-hashing every blob. Meant for
    /// a store no other process is writing to at the moment (findings may otherwise be work in progress).
    pub fn check(&self) -> Result<CheckReport> {
        self.check_with(true)
    }

    /// [`Store::check`]; without `rehash`, blobs are checked for presence only, not read again.
    pub fn check_with(&self, rehash: bool) -> Result<CheckReport> {
        let mut report = CheckReport::default();
        let mut inv = self.inventory()?;

        for name in &inv.bad_blob_names {
            report.warn(
                format!("blobs/sha256/{name}"),
                "not a sha256 digest; not made by the store",
            );
        }
        for digest in inv.blob_files.keys().filter(|_| rehash) {
            let path = self.blob_path(digest);
            let mut hashing =
                Hashing::new(std::fs::File::open(&path).ctx(|| format!("open {}", path.display()))?);
            io::copy(&mut hashing, &mut io::sink()).ctx(|| format!("read {}", path.display()))?;
            let actual = hashing.digest();
            if actual != *digest {
                report.error(format!("blob {digest}"), format!("content hashes to {actual}"));
                report.broken.push(Broken::Blob(*digest));
            }
        }
        for (key, meta) in &inv.db.blob_meta {
            let present = key
                .parse::<Digest>()
                .is_ok_and(|d| inv.blob_files.contains_key(&d));
            if !present {
                report.error(format!("blob {key}"), "has metadata but no file");
                report.broken.push(Broken::BlobMeta(key.clone()));
            }
            let indexed = meta.diff_id.is_none_or(|diff| {
                let diff = diff.to_string();
                inv.db.diff_blobs.iter().any(|(d, b)| *d == diff && b == key)
            });
            if !indexed {
                report.error(format!("blob {key}"), "missing from the diff_id index");
                report.broken.push(Broken::BlobMeta(key.clone()));
            }
        }
        for (diff, blob) in &inv.db.diff_blobs {
            let meta = inv.db.blob_meta.iter().find(|(k, _)| k == blob);
            if meta.is_none_or(|(_, m)| m.diff_id.map(|d| d.to_string()).as_deref() != Some(diff.as_str())) {
                report.error(
                    format!("diff_id {diff}"),
                    format!("index names blob {blob}, whose metadata disagrees"),
                );
                report.broken.push(Broken::DiffBlob {
                    diff: diff.clone(),
                    blob: blob.clone(),
                });
            }
        }

        let images = inv.db.images.clone();
        for (name, rec) in &images {
            match inv.image_closure(&rec.digest) {
                Ok(closure) => {
                    for p in &closure.problems {
                        report.error(format!("image {name}"), p.clone());
                    }
                    if !closure.problems.is_empty() {
                        report.broken.push(Broken::Image(name.clone()));
                    }
                }
                Err(e) => {
                    report.error(format!("image {name}"), e.to_string());
                    report.broken.push(Broken::Image(name.clone()));
                }
            }
        }

        for (id, rec) in &inv.db.snapshots {
            let subject = format!("snapshot {id}");
            let Ok(sid) = SnapshotId::new(id) else {
                report.error(subject, "invalid id in the database");
                report.broken.push(Broken::Snapshot(id.clone()));
                continue;
            };
            if !self.snapshot_path(&sid).is_dir() {
                report.error(
                    &subject,
                    format!("directory {} is missing", self.snapshot_path(&sid).display()),
                );
                report.broken.push(Broken::Snapshot(id.clone()));
            }
            if let Some(parent) = &rec.parent
                && !inv.snapshot_size.contains_key(parent)
            {
                report.error(&subject, format!("parent {parent} has no record"));
                report.broken.push(Broken::Snapshot(id.clone()));
            }
        }
        for (diff, id) in &inv.db.snapshot_by_diff {
            let rec = inv.db.snapshots.iter().find(|(k, _)| k == id);
            if rec.is_none_or(|(_, r)| r.diff_id.map(|d| d.to_string()).as_deref() != Some(diff.as_str())) {
                report.error(
                    format!("diff_id {diff}"),
                    format!("index names snapshot {id}, whose record disagrees"),
                );
                report.broken.push(Broken::SnapshotIndex(diff.clone()));
            }
        }
        for dir in &inv.snapshot_dirs {
            let recorded = SnapshotId::new(dir).is_ok_and(|id| inv.snapshot_size.contains_key(&id));
            if !recorded {
                report.warn(
                    format!("snapshots/{dir}"),
                    "directory without a record (prune removes it)",
                );
            }
        }

        for (key, rec) in &inv.db.cache_records {
            let problems = inv.record_closure(rec).problems;
            if !problems.is_empty() {
                report.broken.push(Broken::CacheRecord(key.clone()));
            }
            for p in problems {
                report.error(format!("cache record {key:?}"), p);
            }
        }
        for (id, lease) in &inv.db.leases {
            if !lease.holder.is_alive() {
                report.warn(
                    format!("lease {id}"),
                    format!("holder pid {} is gone (prune removes it)", lease.holder.pid),
                );
            }
        }

        for (name, record) in &inv.db.cache_mounts {
            if !self.cache_mounts_dir().join(name).is_dir() {
                report.warn(
                    format!("cache mount {:?}", record.id),
                    "recorded, but its directory is gone (the next use creates it again)",
                );
            }
        }
        if let Ok(entries) = std::fs::read_dir(self.cache_mounts_dir()) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !inv.db.cache_mounts.iter().any(|(n, _)| *n == name) {
                    report.warn(
                        format!("cache-mounts/{name}"),
                        "directory without a record (prune --all removes it)",
                    );
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(self.context_index_dir()) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let verdict = std::fs::read(entry.path())
                    .map_err(|e| e.to_string())
                    .and_then(|bytes| crate::context_index::inspect(&bytes));
                if let Err(reason) = verdict {
                    report.warn(
                        format!("context-index/{name}"),
                        format!("{reason}; it is ignored (prune removes it)"),
                    );
                }
            }
        }

        let tmp = self.tmp_dir();
        for entry in std::fs::read_dir(&tmp).ctx(|| format!("list {}", tmp.display()))? {
            let entry = entry.ctx(|| format!("list {}", tmp.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            match temp_holder(&name) {
                None => report.warn(format!("tmp/{name}"), "not made by the store"),
                Some(h) if !h.is_alive() => report.warn(
                    format!("tmp/{name}"),
                    "left by a process that is gone (prune removes it)",
                ),
                Some(_) => {}
            }
        }
        Ok(report)
    }

    /// Removes what the check finds broken (corrupt blobs, records and names that refer to what is gone or
    /// corrupt), then what that leaves orphaned and what crashes left over (as `prune` does, keeping the
    /// build cache that is sound), and checks again. Says what it removed.
    pub fn repair(&self) -> Result<RepairReport> {
        use crate::meta::{BLOB_META, CACHE_RECORDS, DIFF_BLOBS, IMAGES, SNAPSHOT_BY_DIFF, SNAPSHOTS};
        use redb::ReadableMultimapTable;
        let mut removed = Vec::new();
        // Removing one thing can break what refers to it: a few rounds reach the fixed point. Blobs are read
        // again only in the first; the later rounds remove records, which cannot corrupt a blob.
        for round in 0..4 {
            let broken = self.check_with(round == 0)?.broken;
            if broken.is_empty() {
                break;
            }
            self.write(|txn| {
                for b in &broken {
                    match b {
                        Broken::Blob(digest) => {
                            let key = digest.to_string();
                            txn.open_table(BLOB_META)?.remove(key.as_str())?;
                            let mut index = txn.open_multimap_table(DIFF_BLOBS)?;
                            let diffs: Vec<String> = index
                                .iter()?
                                .filter_map(|entry| entry.ok())
                                .map(|(diff, _)| diff.value().to_string())
                                .collect();
                            for diff in diffs {
                                index.remove(diff.as_str(), key.as_str())?;
                            }
                        }
                        Broken::BlobMeta(key) => {
                            txn.open_table(BLOB_META)?.remove(key.as_str())?;
                        }
                        Broken::DiffBlob { diff, blob } => {
                            txn.open_multimap_table(DIFF_BLOBS)?
                                .remove(diff.as_str(), blob.as_str())?;
                        }
                        Broken::Image(name) => {
                            txn.open_table(IMAGES)?.remove(name.as_str())?;
                        }
                        Broken::Snapshot(id) => {
                            txn.open_table(SNAPSHOTS)?.remove(id.as_str())?;
                        }
                        Broken::SnapshotIndex(diff) => {
                            txn.open_table(SNAPSHOT_BY_DIFF)?.remove(diff.as_str())?;
                        }
                        Broken::CacheRecord(key) => {
                            txn.open_table(CACHE_RECORDS)?.remove(key.as_str())?;
                        }
                    }
                }
                Ok(())
            })?;
            for b in &broken {
                if let Broken::Blob(digest) = b
                    && let Some(trash) = self.trash_if_present(&self.blob_path(digest))?
                {
                    crate::gc::remove_any(&trash)?;
                }
                removed.push(b.to_string());
            }
        }
        let pruned = self.prune(false, None)?;
        removed.extend(pruned.blobs.iter().map(|d| format!("unreferenced blob {d}")));
        removed.extend(
            pruned
                .snapshots
                .iter()
                .map(|s| format!("unreferenced snapshot {s}")),
        );
        removed.extend(
            pruned
                .leases
                .iter()
                .map(|l| format!("lease {l} of a process that is gone")),
        );
        if pruned.temp_entries > 0 {
            removed.push(format!("{} leftover temp entries", pruned.temp_entries));
        }
        removed.extend(self.remove_unrecorded_cache_mounts()?);
        // Every blob left was read in the first round.
        Ok(RepairReport {
            removed,
            after: self.check_with(false)?,
        })
    }
}
