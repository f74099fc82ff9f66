//! Unpacking layer blobs into snapshot directories, safely: `kiln_fsutil::tar` does the extraction (every
//! path confined to the snapshot, OCI whiteouts turned into overlayfs ones), this module names, records and
//! commits the result.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use kiln_fsutil::Root;
use kiln_fsutil::compress::{self, Format};
use kiln_fsutil::tar::{self as fsutil_tar, ExtractError, Flavor};
use serde::{Deserialize, Serialize};

use crate::digest::Hashing;
use crate::error::{Error, IoContext, Result};
use crate::fsutil::{fsync_dir, now_secs};
use crate::meta::{
    BlobMeta, LeaseResource, SnapshotId, SnapshotRecord, add_to_lease, put_blob_meta, put_snapshot,
};
use crate::{Digest, Store};

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression a layer media type declares (OCI and Docker v2 layer types, distributable or not).
    pub fn from_media_type(media_type: &str) -> Result<Compression> {
        let is_layer = media_type.starts_with("application/vnd.oci.image.layer.")
            || media_type.starts_with("application/vnd.docker.image.rootfs.");
        let unsupported = || Error::UnsupportedMediaType(media_type.to_owned());
        if !is_layer {
            return Err(unsupported());
        }
        if media_type.ends_with("tar+gzip") || media_type.ends_with("tar.gzip") {
            Ok(Compression::Gzip)
        } else if media_type.ends_with("tar+zstd") {
            Ok(Compression::Zstd)
        } else if media_type.ends_with(".tar") {
            Ok(Compression::None)
        } else {
            Err(unsupported())
        }
    }

    /// The layer compression a detected stream format is, if a layer media type can name it.
    pub fn of_format(format: Format) -> Option<Compression> {
        match format {
            Format::None => Some(Compression::None),
            Format::Gzip => Some(Compression::Gzip),
            Format::Zstd => Some(Compression::Zstd),
            Format::Bzip2 | Format::Xz => None,
        }
    }
}

impl Store {
    /// Unpacks the layer blob into a snapshot and returns its id. The snapshot is named after the layer's
    /// diff_id (computed while unpacking), so a layer already unpacked — from this blob or from another
    /// compression of it — is not unpacked again. The compression is detected from the content; the media
    /// type must be a layer type.
    pub fn unpack_layer(&self, blob: &Digest, media_type: &str) -> Result<SnapshotId> {
        let declared = Compression::from_media_type(media_type)?;
        if let Some(id) = self.unpacked_already(blob)? {
            return Ok(id);
        }
        // Two processes unpacking the same blob: the second waits here and then finds the first's result.
        let _unpacking = self.lock(&format!("unpack {blob}"))?;
        if let Some(id) = self.unpacked_already(blob)? {
            return Ok(id);
        }

        let tmp = TempDir::create(self.temp_path("unpack"))?;
        let fs_dir = tmp.path.join("fs");
        std::fs::create_dir(&fs_dir).ctx(|| format!("create {}", fs_dir.display()))?;
        let file = self.open_blob(blob)?;
        let layer_err = |entry: Option<String>| {
            move |source: io::Error| Error::Unpack {
                blob: *blob,
                entry,
                source,
            }
        };
        let unpacked = unpack_tar(file, &fs_dir).map_err(|e| layer_err(e.entry)(e.error))?;
        if unpacked.blob_digest != *blob {
            return Err(Error::CorruptBlob {
                digest: *blob,
                actual: unpacked.blob_digest,
            });
        }
        if unpacked.compression != Some(declared) {
            tracing::warn!(%blob, media_type, detected = ?unpacked.compression, "layer compression differs from its media type; using the content's");
        }

        let id = SnapshotId::for_diff_id(&unpacked.diff_id);
        let target = self.snapshots_dir().join(id.as_str());
        let held = self.db_lock()?;
        // A complete snapshot of this diff_id (from another blob of the same layer) is kept; a directory
        // without its fs/ (damaged by hand) is replaced.
        let complete = self.snapshot_path(&id).is_dir();
        if !complete {
            let stale = target
                .try_exists()
                .ctx(|| format!("look up {}", target.display()))?;
            let trash = if stale {
                Some(TempDir {
                    path: self.move_to_trash(&target)?,
                })
            } else {
                None
            };
            std::fs::rename(&tmp.path, &target)
                .ctx(|| format!("move {} to {}", tmp.path.display(), target.display()))?;
            fsync_dir(&self.snapshots_dir())?;
            drop(trash);
        }
        let record = SnapshotRecord {
            diff_id: Some(unpacked.diff_id),
            parent: None,
            size: unpacked.size,
            created: now_secs(),
            ..SnapshotRecord::default()
        };
        let meta = BlobMeta {
            media_type: Some(media_type.to_owned()),
            diff_id: Some(unpacked.diff_id),
            compression: unpacked.compression,
            compression_level: None,
        };
        let lease = self.lease().cloned();
        self.write_locked(&held, |txn| {
            // Another blob of the same layer may have recorded this snapshot already; keep its record.
            if crate::meta::get_snapshot(txn, &id)?.is_none() {
                put_snapshot(txn, &id, &record)?;
            }
            put_blob_meta(txn, blob, &meta)?;
            if let Some(lease) = &lease {
                add_to_lease(txn, lease, LeaseResource::Snapshot(id.clone()))?;
            }
            Ok(())
        })?;
        Ok(id)
    }

    /// The layer tar a layer blob holds, decompressed as its content says (whatever its media type claims).
    pub fn open_layer_tar(&self, blob: &Digest) -> Result<Box<dyn Read + Send>> {
        let raw = BufReader::new(self.open_blob(blob)?);
        let (_, tar) = compress::decompress(raw).ctx(|| format!("decompress blob {blob}"))?;
        Ok(tar)
    }

    /// The diff_id of a layer blob (the digest of its uncompressed tar) and the tar's size, read through
    /// once. For checking a layer against an image config without unpacking it.
    pub fn layer_diff_id(&self, blob: &Digest) -> Result<(Digest, u64)> {
        let mut tar = Hashing::new(self.open_layer_tar(blob)?);
        io::copy(&mut tar, &mut io::sink()).ctx(|| format!("decompress blob {blob}"))?;
        Ok((tar.digest(), tar.count))
    }

    /// The snapshot of `blob` if it has been unpacked (and leases it when this handle has a lease).
    fn unpacked_already(&self, blob: &Digest) -> Result<Option<SnapshotId>> {
        let Some(id) = self.recorded_snapshot_of_blob(blob)? else {
            return Ok(None);
        };
        // Lease before looking: once leased, a concurrent prune can no longer remove it.
        if let Some(lease) = self.lease() {
            self.lease_add(lease, LeaseResource::Snapshot(id.clone()))?;
        }
        Ok(self.snapshot_path(&id).is_dir().then_some(id))
    }
}

/// A directory in ROOT/tmp removed on drop unless it was renamed away.
pub(crate) struct TempDir {
    pub(crate) path: PathBuf,
}

impl TempDir {
    pub(crate) fn create(path: PathBuf) -> Result<TempDir> {
        std::fs::create_dir(&path).ctx(|| format!("create {}", path.display()))?;
        Ok(TempDir { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = kiln_fsutil::root::remove_path(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove temp dir");
        }
    }
}

pub(crate) struct Unpacked {
    pub(crate) diff_id: Digest,
    pub(crate) blob_digest: Digest,
    /// `None` for a format no layer media type names (bzip2, xz), which moby reads all the same.
    compression: Option<Compression>,
    size: u64,
}

pub(crate) fn unpack_tar(file: File, dest: &Path) -> std::result::Result<Unpacked, ExtractError> {
    let whole = |error: io::Error| ExtractError { entry: None, error };
    let mut raw = BufReader::new(Hashing::new(file));
    let (format, decompressed) = compress::decompress(&mut raw).map_err(whole)?;
    let mut archive = tar::Archive::new(Hashing::new(decompressed));
    let root = Root::new(dest).map_err(whole)?;
    let extracted = fsutil_tar::extract(&mut archive, &root, Flavor::Layer)?;
    // The diff_id covers the whole stream, including the end-of-archive blocks tar stops reading at.
    let mut tar_stream = archive.into_inner();
    io::copy(&mut tar_stream, &mut io::sink()).map_err(whole)?;
    let diff_id = tar_stream.digest();
    drop(tar_stream);
    io::copy(&mut raw, &mut io::sink()).map_err(whole)?;
    let blob_digest = raw.get_ref().digest();
    // One syncfs instead of an fsync per file: the snapshot must be complete on disk before it is renamed
    // into place.
    rustix::fs::syncfs(root.fd()).map_err(|e| whole(e.into()))?;
    Ok(Unpacked {
        diff_id,
        blob_digest,
        compression: Compression::of_format(format),
        size: extracted.size,
    })
}
