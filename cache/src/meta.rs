//! Records in ROOT/db.redb and the cross-process locking around the database.
//!
//! Values are JSON so that a record can gain optional fields without a migration; keys are strings
//! (digests in their `sha256:` form).

use std::fmt;

use redb::{
    Database, MultimapTableDefinition, ReadTransaction, ReadableMultimapTable, ReadableTable,
    TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::error::{Error, Result};
use crate::fsutil::{Holder, LockGuard, now_secs};
use crate::unpack::Compression;
use crate::{Digest, Store};

type JsonTable = TableDefinition<'static, &'static str, &'static [u8]>;

/// Image name (a full reference such as `docker.io/library/busybox:latest`) → [`ImageRecord`].
pub(crate) const IMAGES: JsonTable = TableDefinition::new("images");
/// Blob digest → [`BlobMeta`].
pub(crate) const BLOB_META: JsonTable = TableDefinition::new("blob_meta");
/// diff_id → digests of the blobs that compress it: how an export finds an already-compressed layer.
pub(crate) const DIFF_BLOBS: MultimapTableDefinition<'static, &'static str, &'static str> =
    MultimapTableDefinition::new("diff_id_blobs");
/// Snapshot id → [`SnapshotRecord`].
pub(crate) const SNAPSHOTS: JsonTable = TableDefinition::new("snapshots");
/// diff_id → id of the snapshot that holds that layer unpacked.
pub(crate) const SNAPSHOT_BY_DIFF: TableDefinition<'static, &'static str, &'static str> =
    TableDefinition::new("snapshot_by_diff_id");
/// Lease id → [`Lease`].
const LEASES: JsonTable = TableDefinition::new("leases");
/// Cache key → [`CacheRecord`].
pub(crate) const CACHE_RECORDS: JsonTable = TableDefinition::new("cache_records");
/// Directory name under ROOT/cache-mounts → [`CacheMountRecord`].
pub(crate) const CACHE_MOUNTS: JsonTable = TableDefinition::new("cache_mounts");

/// What a name (tag) points at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The manifest or index digest.
    pub digest: Digest,
    /// The media type of that manifest or index.
    pub media_type: String,
    /// Platforms whose manifests (and layers) are in the store.
    #[serde(default)]
    pub platforms: Vec<Platform>,
    /// When the record was written, in seconds since the epoch.
    pub created: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// What the store knows about a blob beyond its bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobMeta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// For a layer: the digest of its uncompressed tar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff_id: Option<Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<Compression>,
    /// The level the store compressed it with; `None` for blobs that came from elsewhere (pulled), whose
    /// level is unknown. An export reuses a blob only at the exact level asked for, so that the digest it
    /// produces does not depend on what happens to be in the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression_level: Option<i32>,
}

/// Names a directory under ROOT/snapshots. Unpacked layers are named by the hex of their diff_id, so two
/// processes unpacking the same layer agree on where it goes; build results get a random `build-…` id
/// (see [`Store::commit_snapshot`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SnapshotId(String);

/// Names a lease.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LeaseId(String);

macro_rules! file_name_id {
    ($ty:ident, $what:literal) => {
        impl $ty {
            /// Validates `s` as an id: it becomes a file or record name, so only `[A-Za-z0-9._-]`, at most
            /// 128 characters, not starting with `.` or `-`.
            pub fn new(s: &str) -> Result<$ty> {
                let invalid = |reason| Error::InvalidName {
                    what: $what,
                    value: s.to_owned(),
                    reason,
                };
                if s.is_empty() || s.len() > 128 {
                    return Err(invalid("must be 1 to 128 characters"));
                }
                if s.starts_with(['.', '-']) {
                    return Err(invalid("must not start with '.' or '-'"));
                }
                if !s
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
                {
                    return Err(invalid(
                        "may contain only letters, digits, '.', '_' and '-'",
                    ));
                }
                Ok($ty(s.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $ty {
            type Error = Error;
            fn try_from(s: String) -> Result<$ty> {
                $ty::new(&s)
            }
        }

        impl From<$ty> for String {
            fn from(id: $ty) -> String {
                id.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

file_name_id!(SnapshotId, "snapshot id");
file_name_id!(LeaseId, "lease id");

impl SnapshotId {
    /// The id under which the layer with this diff_id is unpacked.
    pub fn for_diff_id(diff_id: &Digest) -> SnapshotId {
        SnapshotId(diff_id.hex())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// The digest of the layer tar this directory holds, when it came from (or was committed as) a layer.
    /// For a build snapshot, the first unclamped export's diff_id (see [`Store::set_snapshot_diff_id`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff_id: Option<Digest>,
    /// The snapshot this one is stacked on; kept alive with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<SnapshotId>,
    /// Bytes of file content (each hardlinked inode once).
    pub size: u64,
    pub created: u64,
    /// The diff_ids of the layer tars exported from this directory, one per SOURCE_DATE_EPOCH they were
    /// made with (clamping mtimes changes the tar's bytes, so each epoch is its own layer).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tar_diff_ids: Vec<TarDiffId>,
}

/// The diff_id of one export of a snapshot's files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TarDiffId {
    /// The epoch mtimes were clamped to; `None` for a tar with the files' own mtimes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_date_epoch: Option<u64>,
    pub diff_id: Digest,
}

/// A result the solver remembers under a cache key. `blobs` and `snapshots` are what the result needs; they
/// are kept as long as the record is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CacheRecord {
    pub result: serde_json::Value,
    #[serde(default)]
    pub blobs: Vec<Digest>,
    #[serde(default)]
    pub snapshots: Vec<SnapshotId>,
    pub created: u64,
    pub last_used: u64,
    /// What the key was made of, readable, for explaining later misses (the solver's `KeyInputs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<serde_json::Value>,
    /// The cache (`--cache-from` source) the record was imported from; `None` for a step built here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported_from: Option<String>,
}

/// A `RUN --mount=type=cache` directory: which id it is, and when it was last used (for prune).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheMountRecord {
    pub id: String,
    pub created: u64,
    pub last_used: u64,
}

/// Something a lease keeps alive.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseResource {
    Blob(Digest),
    Snapshot(SnapshotId),
    CacheRecord(String),
}

/// Protection for what a running build uses or creates. It lasts while its holder process lives (checked
/// by pid and start time) or until released; a crashed build's lease is dropped by the next prune.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub holder: Holder,
    pub created: u64,
    #[serde(default)]
    pub resources: Vec<LeaseResource>,
}

/// Errors inside a transaction closure: either the database's own or the store's (bad records, I/O done
/// under the lock).
pub(crate) enum TxError {
    Db(Box<redb::Error>),
    Store(Error),
}

impl From<Error> for TxError {
    fn from(e: Error) -> TxError {
        TxError::Store(e)
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for TxError {
            fn from(e: $t) -> TxError {
                TxError::Db(Box::new(e.into()))
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

pub(crate) type TxResult<T> = std::result::Result<T, TxError>;

pub(crate) fn get_json<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    what: &str,
    key: &str,
) -> TxResult<Option<T>> {
    match table.get(key)? {
        None => Ok(None),
        Some(v) => Ok(Some(decode(what, key, v.value())?)),
    }
}

fn decode<T: DeserializeOwned>(what: &str, key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| Error::Json {
        what: format!("store database record {what} {key:?}"),
        source,
    })
}

pub(crate) fn put_json<T: Serialize>(
    table: &mut redb::Table<&'static str, &'static [u8]>,
    what: &str,
    key: &str,
    value: &T,
) -> TxResult<()> {
    let bytes = serde_json::to_vec(value).map_err(|source| Error::Json {
        what: format!("store database record {what} {key:?}"),
        source,
    })?;
    table.insert(key, bytes.as_slice())?;
    Ok(())
}

pub(crate) fn all_json<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    what: &str,
) -> TxResult<Vec<(String, T)>> {
    let mut out = Vec::new();
    for row in table.iter()? {
        let (k, v) = row?;
        let key = k.value().to_owned();
        let value = decode(what, &key, v.value())?;
        out.push((key, value));
    }
    Ok(out)
}

fn validate_image_name(name: &str) -> Result<()> {
    let invalid = |reason| Error::InvalidName {
        what: "image name",
        value: name.to_owned(),
        reason,
    };
    if name.is_empty() || name.len() > 4096 {
        return Err(invalid("must be 1 to 4096 bytes"));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("must not contain whitespace or control characters"));
    }
    Ok(())
}

fn validate_cache_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidName {
            what: "cache key",
            value: String::new(),
            reason: "must not be empty",
        });
    }
    Ok(())
}

/// Everything the database holds, read in one transaction (for prune, du and check).
pub(crate) struct DbDump {
    pub images: Vec<(String, ImageRecord)>,
    pub blob_meta: Vec<(String, BlobMeta)>,
    pub diff_blobs: Vec<(String, String)>,
    pub snapshots: Vec<(String, SnapshotRecord)>,
    pub snapshot_by_diff: Vec<(String, String)>,
    pub leases: Vec<(String, Lease)>,
    pub cache_records: Vec<(String, CacheRecord)>,
    pub cache_mounts: Vec<(String, CacheMountRecord)>,
}

/// The database file as a read transaction sees it: reads reach the file, writes and syncs go nowhere.
/// Only ever opened under the database lock held shared, when no writer can change the file.
#[derive(Debug)]
struct ReadOnlyFile(std::fs::File);

impl redb::StorageBackend for ReadOnlyFile {
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn read(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let mut buffer = vec![0; len];
        self.0.read_exact_at(&mut buffer, offset)?;
        Ok(buffer)
    }

    fn set_len(&self, _len: u64) -> std::io::Result<()> {
        Ok(())
    }

    fn sync_data(&self, _eventual: bool) -> std::io::Result<()> {
        Ok(())
    }

    fn write(&self, _offset: u64, _data: &[u8]) -> std::io::Result<()> {
        Ok(())
    }
}

impl Store {
    /// Waits for the database lock. Everything that opens the database, or commits files that the database
    /// must see atomically with them, runs while holding it.
    pub(crate) fn db_lock(&self) -> Result<LockGuard> {
        LockGuard::acquire(&self.locks_dir().join("db.lock"))
    }

    fn open_db(&self, _held: &LockGuard) -> Result<Database> {
        Database::create(self.db_path()).map_err(|e| self.db_error(e.into()))
    }

    fn db_error(&self, e: redb::Error) -> Error {
        Error::Db {
            path: self.db_path(),
            source: Box::new(e),
        }
    }

    fn tx_error(&self, e: TxError) -> Error {
        match e {
            TxError::Db(e) => self.db_error(*e),
            TxError::Store(e) => e,
        }
    }

    /// Runs `f` in a write transaction (committed if `f` succeeds) with the lock already held.
    pub(crate) fn write_locked<T>(
        &self,
        held: &LockGuard,
        f: impl FnOnce(&WriteTransaction) -> TxResult<T>,
    ) -> Result<T> {
        let db = self.open_db(held)?;
        let run = || -> TxResult<T> {
            let txn = db.begin_write()?;
            let out = f(&txn)?;
            txn.commit()?;
            Ok(out)
        };
        run().map_err(|e| self.tx_error(e))
    }

    /// The database opened for reading. redb marks its file in use when it opens it and clean when it
    /// closes it, three fsyncs a read needs none of, so a read goes through [`ReadOnlyFile`], which drops
    /// every write: the file stays as the last commit left it. It fails on anything unusual (a file not
    /// made yet; one that needs repair, which would be redone in memory by every read until a write
    /// persisted it); the caller then takes the ordinary path, which repairs and persists.
    fn open_db_read_only(&self) -> std::result::Result<Database, redb::DatabaseError> {
        let file = std::fs::File::open(self.db_path())?;
        Database::builder()
            .set_repair_callback(|session| session.abort())
            .create_with_backend(ReadOnlyFile(file))
    }

    fn read_in<T>(&self, db: Database, f: impl FnOnce(&ReadTransaction) -> TxResult<T>) -> Result<T> {
        let run = || -> TxResult<T> {
            let txn = db.begin_read()?;
            f(&txn)
        };
        run().map_err(|e| self.tx_error(e))
    }

    /// Runs `f` in a read transaction while the caller holds the database lock alone.
    pub(crate) fn read_locked<T>(
        &self,
        held: &LockGuard,
        f: impl FnOnce(&ReadTransaction) -> TxResult<T>,
    ) -> Result<T> {
        let db = match self.open_db_read_only() {
            Ok(db) => db,
            Err(_) => self.open_db(held)?,
        };
        self.read_in(db, f)
    }

    pub(crate) fn write<T>(&self, f: impl FnOnce(&WriteTransaction) -> TxResult<T>) -> Result<T> {
        let held = self.db_lock()?;
        self.write_locked(&held, f)
    }

    /// Runs `f` in a read transaction. Readers share the database lock (writers take it alone), so
    /// reads from the threads of a build, or from other kiln processes, do not wait for each other.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&ReadTransaction) -> TxResult<T>) -> Result<T> {
        let shared = LockGuard::acquire_shared(&self.locks_dir().join("db.lock"))?;
        match self.open_db_read_only() {
            Ok(db) => self.read_in(db, f),
            Err(_) => {
                // The ordinary open writes to the file: it needs the lock alone.
                drop(shared);
                let held = self.db_lock()?;
                let db = self.open_db(&held)?;
                self.read_in(db, f)
            }
        }
    }

    /// Creates every table, so that read transactions never meet a missing one.
    pub(crate) fn init_db(&self) -> Result<()> {
        self.write(|txn| {
            for def in [IMAGES, BLOB_META, SNAPSHOTS, LEASES, CACHE_RECORDS, CACHE_MOUNTS] {
                txn.open_table(def)?;
            }
            txn.open_table(SNAPSHOT_BY_DIFF)?;
            txn.open_multimap_table(DIFF_BLOBS)?;
            Ok(())
        })
    }

    // ---- images ----

    /// Points `name` at `record`, returning what it pointed at before.
    pub fn tag_image(&self, name: &str, record: &ImageRecord) -> Result<Option<ImageRecord>> {
        validate_image_name(name)?;
        self.write(|txn| {
            let mut t = txn.open_table(IMAGES)?;
            let old = get_json(&t, "image", name)?;
            put_json(&mut t, "image", name, record)?;
            Ok(old)
        })
    }

    pub fn get_image(&self, name: &str) -> Result<Option<ImageRecord>> {
        self.read(|txn| get_json(&txn.open_table(IMAGES)?, "image", name))
    }

    /// All tagged images, sorted by name.
    pub fn list_images(&self) -> Result<Vec<(String, ImageRecord)>> {
        self.read(|txn| all_json(&txn.open_table(IMAGES)?, "image"))
    }

    /// Removes the name, returning what it pointed at. The content stays until a prune finds it unused.
    pub fn untag(&self, name: &str) -> Result<Option<ImageRecord>> {
        self.write(|txn| {
            let mut t = txn.open_table(IMAGES)?;
            let old = get_json(&t, "image", name)?;
            t.remove(name)?;
            Ok(old)
        })
    }

    /// Every name whose record points at `digest`.
    pub fn images_by_digest(&self, digest: &Digest) -> Result<Vec<(String, ImageRecord)>> {
        let mut all = self.list_images()?;
        all.retain(|(_, r)| r.digest == *digest);
        Ok(all)
    }

    // ---- blob metadata ----

    /// Records what `digest` is. Keeps the diff_id → blob index in step.
    pub fn set_blob_meta(&self, digest: &Digest, meta: &BlobMeta) -> Result<()> {
        self.write(|txn| put_blob_meta(txn, digest, meta))
    }

    pub fn blob_meta(&self, digest: &Digest) -> Result<Option<BlobMeta>> {
        self.read(|txn| get_json(&txn.open_table(BLOB_META)?, "blob meta", &digest.to_string()))
    }

    /// The blobs known to hold the layer with this diff_id (in any compression).
    pub fn blobs_for_diff_id(&self, diff_id: &Digest) -> Result<Vec<(Digest, BlobMeta)>> {
        self.read(|txn| {
            let index = txn.open_multimap_table(DIFF_BLOBS)?;
            let metas = txn.open_table(BLOB_META)?;
            let mut out = Vec::new();
            for blob in index.get(diff_id.to_string().as_str())? {
                let blob = blob?.value().to_owned();
                let digest: Digest = blob.parse()?;
                if let Some(meta) = get_json(&metas, "blob meta", &blob)? {
                    out.push((digest, meta));
                }
            }
            Ok(out)
        })
    }

    // ---- snapshots ----

    pub fn snapshot(&self, id: &SnapshotId) -> Result<Option<SnapshotRecord>> {
        self.read(|txn| read_snapshot(txn, id))
    }

    /// The snapshot holding the layer with this diff_id unpacked, if there is one.
    pub fn snapshot_for_diff_id(&self, diff_id: &Digest) -> Result<Option<SnapshotId>> {
        self.read(|txn| snapshot_by_diff(txn, diff_id))
    }

    /// The snapshot the records say holds `blob` unpacked (one transaction: this is on every unpack's path).
    pub(crate) fn recorded_snapshot_of_blob(&self, blob: &Digest) -> Result<Option<SnapshotId>> {
        self.read(|txn| {
            let meta: Option<BlobMeta> =
                get_json(&txn.open_table(BLOB_META)?, "blob meta", &blob.to_string())?;
            match meta.and_then(|m| m.diff_id) {
                Some(diff_id) => snapshot_by_diff(txn, &diff_id),
                None => Ok(None),
            }
        })
    }

    pub fn list_snapshots(&self) -> Result<Vec<(SnapshotId, SnapshotRecord)>> {
        let rows = self.read(|txn| all_json(&txn.open_table(SNAPSHOTS)?, "snapshot"))?;
        rows.into_iter()
            .map(|(k, v)| Ok((SnapshotId::new(&k)?, v)))
            .collect()
    }

    /// The directory holding the snapshot's files (its overlayfs lowerdir).
    pub fn snapshot_path(&self, id: &SnapshotId) -> std::path::PathBuf {
        self.snapshots_dir().join(id.as_str()).join("fs")
    }

    // ---- cache records ----

    pub fn put_cache_record(&self, key: &str, record: &CacheRecord) -> Result<()> {
        validate_cache_key(key)?;
        let lease = self.lease.clone();
        self.write(|txn| {
            put_json(&mut txn.open_table(CACHE_RECORDS)?, "cache record", key, record)?;
            if let Some(lease) = &lease {
                add_to_lease(txn, lease, LeaseResource::CacheRecord(key.to_owned()))?;
            }
            Ok(())
        })
    }

    pub fn get_cache_record(&self, key: &str) -> Result<Option<CacheRecord>> {
        self.read(|txn| get_json(&txn.open_table(CACHE_RECORDS)?, "cache record", key))
    }

    pub fn remove_cache_record(&self, key: &str) -> Result<Option<CacheRecord>> {
        self.write(|txn| {
            let mut t = txn.open_table(CACHE_RECORDS)?;
            let old = get_json(&t, "cache record", key)?;
            t.remove(key)?;
            Ok(old)
        })
    }

    pub fn list_cache_records(&self) -> Result<Vec<(String, CacheRecord)>> {
        self.read(|txn| all_json(&txn.open_table(CACHE_RECORDS)?, "cache record"))
    }

    // ---- leases ----

    /// Starts a lease held by this process.
    pub fn create_lease(&self) -> Result<LeaseId> {
        let id = LeaseId(crate::fsutil::temp_name("lease").replace('.', "-"));
        let lease = Lease {
            holder: Holder::current(),
            created: now_secs(),
            resources: Vec::new(),
        };
        self.write(|txn| put_json(&mut txn.open_table(LEASES)?, "lease", id.as_str(), &lease))?;
        Ok(id)
    }

    /// Adds `resource` to `lease` (for things the build uses but did not write through a leased handle).
    pub fn lease_add(&self, lease: &LeaseId, resource: LeaseResource) -> Result<()> {
        self.write(|txn| add_to_lease(txn, lease, resource))
    }

    /// Ends a lease; what it protected is now kept only if something else refers to it.
    pub fn release_lease(&self, lease: &LeaseId) -> Result<()> {
        self.write(|txn| {
            txn.open_table(LEASES)?.remove(lease.as_str())?;
            Ok(())
        })
    }

    pub fn list_leases(&self) -> Result<Vec<(LeaseId, Lease)>> {
        let rows = self.read(|txn| all_json(&txn.open_table(LEASES)?, "lease"))?;
        rows.into_iter()
            .map(|(k, v)| Ok((LeaseId::new(&k)?, v)))
            .collect()
    }

    /// Reads every table in one transaction, with the lock already held.
    pub(crate) fn load_all(&self, held: &LockGuard) -> Result<DbDump> {
        self.read_locked(held, |txn| {
            let pairs = |def: TableDefinition<'static, &'static str, &'static str>| -> TxResult<_> {
                let mut out = Vec::new();
                for row in txn.open_table(def)?.iter()? {
                    let (k, v) = row?;
                    out.push((k.value().to_owned(), v.value().to_owned()));
                }
                Ok(out)
            };
            let mut diff_blobs = Vec::new();
            for row in txn.open_multimap_table(DIFF_BLOBS)?.iter()? {
                let (k, values) = row?;
                for v in values {
                    diff_blobs.push((k.value().to_owned(), v?.value().to_owned()));
                }
            }
            Ok(DbDump {
                images: all_json(&txn.open_table(IMAGES)?, "image")?,
                blob_meta: all_json(&txn.open_table(BLOB_META)?, "blob meta")?,
                diff_blobs,
                snapshots: all_json(&txn.open_table(SNAPSHOTS)?, "snapshot")?,
                snapshot_by_diff: pairs(SNAPSHOT_BY_DIFF)?,
                leases: all_json(&txn.open_table(LEASES)?, "lease")?,
                cache_records: all_json(&txn.open_table(CACHE_RECORDS)?, "cache record")?,
                cache_mounts: all_json(&txn.open_table(CACHE_MOUNTS)?, "cache mount")?,
            })
        })
    }
}

fn snapshot_by_diff(txn: &ReadTransaction, diff_id: &Digest) -> TxResult<Option<SnapshotId>> {
    let t = txn.open_table(SNAPSHOT_BY_DIFF)?;
    let id = t.get(diff_id.to_string().as_str())?.map(|v| v.value().to_owned());
    Ok(id.as_deref().map(SnapshotId::new).transpose()?)
}

pub(crate) fn put_blob_meta(txn: &WriteTransaction, digest: &Digest, meta: &BlobMeta) -> TxResult<()> {
    let key = digest.to_string();
    let mut metas = txn.open_table(BLOB_META)?;
    let mut index = txn.open_multimap_table(DIFF_BLOBS)?;
    let old: Option<BlobMeta> = get_json(&metas, "blob meta", &key)?;
    if let Some(old_diff) = old.and_then(|m| m.diff_id) {
        index.remove(old_diff.to_string().as_str(), key.as_str())?;
    }
    if let Some(diff_id) = &meta.diff_id {
        index.insert(diff_id.to_string().as_str(), key.as_str())?;
    }
    put_json(&mut metas, "blob meta", &key, meta)
}

pub(crate) fn delete_blob_meta(txn: &WriteTransaction, digest: &Digest) -> TxResult<()> {
    let key = digest.to_string();
    let mut metas = txn.open_table(BLOB_META)?;
    let old: Option<BlobMeta> = get_json(&metas, "blob meta", &key)?;
    if let Some(diff_id) = old.and_then(|m| m.diff_id) {
        txn.open_multimap_table(DIFF_BLOBS)?
            .remove(diff_id.to_string().as_str(), key.as_str())?;
    }
    metas.remove(key.as_str())?;
    Ok(())
}

pub(crate) fn put_snapshot(txn: &WriteTransaction, id: &SnapshotId, record: &SnapshotRecord) -> TxResult<()> {
    put_json(&mut txn.open_table(SNAPSHOTS)?, "snapshot", id.as_str(), record)?;
    if let Some(diff_id) = &record.diff_id {
        txn.open_table(SNAPSHOT_BY_DIFF)?
            .insert(diff_id.to_string().as_str(), id.as_str())?;
    }
    Ok(())
}

/// Rewrites a snapshot's record, indexing its diff_id only where no other snapshot is indexed for it (an
/// unpacked layer keeps its place; either directory holds the same files).
pub(crate) fn update_snapshot(
    txn: &WriteTransaction,
    id: &SnapshotId,
    record: &SnapshotRecord,
) -> TxResult<()> {
    put_json(&mut txn.open_table(SNAPSHOTS)?, "snapshot", id.as_str(), record)?;
    if let Some(diff_id) = &record.diff_id {
        let mut by_diff = txn.open_table(SNAPSHOT_BY_DIFF)?;
        let key = diff_id.to_string();
        if by_diff.get(key.as_str())?.is_none() {
            by_diff.insert(key.as_str(), id.as_str())?;
        }
    }
    Ok(())
}

pub(crate) fn delete_snapshot(txn: &WriteTransaction, id: &SnapshotId) -> TxResult<()> {
    let mut t = txn.open_table(SNAPSHOTS)?;
    let old: Option<SnapshotRecord> = get_json(&t, "snapshot", id.as_str())?;
    t.remove(id.as_str())?;
    if let Some(diff_id) = old.and_then(|r| r.diff_id) {
        let mut by_diff = txn.open_table(SNAPSHOT_BY_DIFF)?;
        let key = diff_id.to_string();
        let points_here = by_diff
            .get(key.as_str())?
            .is_some_and(|v| v.value() == id.as_str());
        if points_here {
            by_diff.remove(key.as_str())?;
        }
    }
    Ok(())
}

pub(crate) fn delete_cache_record(txn: &WriteTransaction, key: &str) -> TxResult<()> {
    txn.open_table(CACHE_RECORDS)?.remove(key)?;
    Ok(())
}

pub(crate) fn delete_lease(txn: &WriteTransaction, id: &str) -> TxResult<()> {
    txn.open_table(LEASES)?.remove(id)?;
    Ok(())
}

pub(crate) fn add_to_lease(txn: &WriteTransaction, lease: &LeaseId, resource: LeaseResource) -> TxResult<()> {
    let mut t = txn.open_table(LEASES)?;
    let mut record: Lease =
        get_json(&t, "lease", lease.as_str())?.ok_or_else(|| Error::LeaseNotFound(lease.to_string()))?;
    if !record.resources.contains(&resource) {
        record.resources.push(resource);
        put_json(&mut t, "lease", lease.as_str(), &record)?;
    }
    Ok(())
}

pub(crate) fn read_snapshot(txn: &ReadTransaction, id: &SnapshotId) -> TxResult<Option<SnapshotRecord>> {
    get_json(&txn.open_table(SNAPSHOTS)?, "snapshot", id.as_str())
}

pub(crate) fn get_snapshot(txn: &WriteTransaction, id: &SnapshotId) -> TxResult<Option<SnapshotRecord>> {
    get_json(&txn.open_table(SNAPSHOTS)?, "snapshot", id.as_str())
}
