//! Layer blobs of snapshots: the deterministic tar of a snapshot, hashed (diff_id) and compressed into the
//! store in one pass, and never compressed twice.
//!
//! Reuse is keyed on (diff_id, compression, level) with the level the store itself compressed at: a blob
//! whose level is unknown (pulled) is not reused for a build's layer, so what an export produces depends only
//! on the snapshot and the options, never on what happens to be in the store.

use std::io::{self, Write};

use kiln_cache::{BlobMeta, Digest, LeaseResource, SnapshotId, Store};
use rayon::prelude::*;
use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};
use crate::layer::{LayerOptions, layer_tar};

pub use kiln_cache::Compression;

/// gzip's and zstd's levels when none is given (Go's `gzip.DefaultCompression` and zstd's default, as
/// BuildKit uses).
const GZIP_DEFAULT_LEVEL: i32 = 6;
const ZSTD_DEFAULT_LEVEL: i32 = 3;

/// A layer blob in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    /// The digest of the uncompressed tar.
    pub diff_id: Digest,
    /// The digest of the blob (equal to `diff_id` when uncompressed).
    pub digest: Digest,
    pub size: u64,
    pub compression: Compression,
    /// The tar has no entries: the step changed no file. Images keep such layers, as BuildKit does.
    pub empty: bool,
}

impl Layer {
    pub fn media_type(&self, oci: bool) -> &'static str {
        layer_media_type(self.compression, oci)
    }
}

pub use kiln_image::media::layer as layer_media_type;

/// The level a blob is compressed at: the default filled in, so that asking for the default and asking for
/// its value reuse the same blob. `None` for uncompressed layers, where a level means nothing.
pub fn effective_level(compression: Compression, level: Option<i32>) -> Result<Option<i32>> {
    let bad = |range: &str| {
        Error::invalid(
            format!("compression-level={}", level.unwrap_or_default()),
            format!("{compression:?} takes levels {range}").to_lowercase(),
        )
    };
    match compression {
        Compression::None => Ok(None),
        Compression::Gzip => match level {
            None => Ok(Some(GZIP_DEFAULT_LEVEL)),
            Some(l @ 0..=9) => Ok(Some(l)),
            Some(_) => Err(bad("0 to 9")),
        },
        Compression::Zstd => match level {
            // zstd reads 0 as "the default"; naming it keeps one blob per actual level.
            None | Some(0) => Ok(Some(ZSTD_DEFAULT_LEVEL)),
            Some(l @ 1..=22) => Ok(Some(l)),
            Some(_) => Err(bad("0 to 22")),
        },
    }
}

/// The digest of a tar with no entries (two zero blocks): every unchanged snapshot's diff_id.
pub fn empty_tar_diff_id() -> Digest {
    Digest::of(&[0u8; 1024])
}

/// Exports a snapshot as a layer blob in the store (or finds the blob an earlier export made), records the
/// blob's diff_id and compression, and the snapshot's diff_id for this epoch. Blobs written or reused are
/// added to the store handle's lease.
pub fn export_layer(
    store: &Store,
    snapshot: &SnapshotId,
    compression: Compression,
    level: Option<i32>,
    source_date_epoch: Option<u64>,
) -> Result<Layer> {
    let level = effective_level(compression, level)?;
    if let Some(diff_id) = store.snapshot_diff_id(snapshot, source_date_epoch)? {
        if let Some(layer) = stored_layer(store, &diff_id, compression, level)? {
            return Ok(layer);
        }
        // The same tar in another compression (a layer imported from a shared cache): converting it keeps
        // the layer's bytes, which reading the files again might not.
        for (blob, _) in store.blobs_for_diff_id(&diff_id)? {
            if store.has_blob(&blob)? {
                return convert_layer(store, &blob, &diff_id, compression, level);
            }
        }
    }
    let dir = store.snapshot_path(snapshot);
    let what = || format!("the layer of snapshot {snapshot}");
    let layer = write_layer_blob(store, &dir, compression, level, source_date_epoch, &what)?;
    store.set_snapshot_diff_id(snapshot, source_date_epoch, &layer.diff_id)?;
    Ok(layer)
}

/// A plain directory (a cache mount's) as a layer blob in the store, its mtimes kept: tools that use a
/// cache mount judge freshness by them.
pub fn export_directory(
    store: &Store,
    dir: &std::path::Path,
    compression: Compression,
    level: Option<i32>,
) -> Result<Layer> {
    let level = effective_level(compression, level)?;
    write_layer_blob(store, dir, compression, level, None, &|| {
        format!("the contents of {}", dir.display())
    })
}

fn write_layer_blob(
    store: &Store,
    dir: &std::path::Path,
    compression: Compression,
    level: Option<i32>,
    source_date_epoch: Option<u64>,
    what: &dyn Fn() -> String,
) -> Result<Layer> {
    let opts = LayerOptions { source_date_epoch };
    let mut tar = DiffIdWriter::new(Compressor::new(store.blob_writer()?, compression, level, what)?);
    let summary = layer_tar(dir, &mut tar, &opts)?;
    let diff_id = tar.diff_id();
    let blob = tar
        .inner
        .finish()
        .map_err(Error::io(format!("compress {}", what())))?;
    let info = blob.commit(None)?;
    store.set_blob_meta(
        &info.digest,
        &BlobMeta {
            media_type: Some(layer_media_type(compression, true).to_owned()),
            diff_id: Some(diff_id),
            compression: Some(compression),
            compression_level: level,
        },
    )?;
    log_compressed(&diff_id, &info.digest, compression, level);
    Ok(Layer {
        diff_id,
        digest: info.digest,
        size: info.size,
        compression,
        empty: summary.entries == 0,
    })
}

/// Exports several snapshots in parallel (compression is the slow part), keeping their order.
pub fn export_layers(
    store: &Store,
    snapshots: &[SnapshotId],
    compression: Compression,
    level: Option<i32>,
    source_date_epoch: Option<u64>,
) -> Result<Vec<Layer>> {
    snapshots
        .par_iter()
        .map(|s| export_layer(store, s, compression, level, source_date_epoch))
        .collect()
}

/// Re-compresses a stored layer blob (a base image's) as `compression`, or finds an earlier conversion.
/// The content is checked against `diff_id` on the way.
pub fn convert_layer(
    store: &Store,
    blob: &Digest,
    diff_id: &Digest,
    compression: Compression,
    level: Option<i32>,
) -> Result<Layer> {
    let level = effective_level(compression, level)?;
    if let Some(layer) = stored_layer(store, diff_id, compression, level)? {
        return Ok(layer);
    }
    let what = || format!("layer {blob}");
    let mut out = DiffIdWriter::new(Compressor::new(store.blob_writer()?, compression, level, &what)?);
    let mut tar = store.open_layer_tar(blob)?;
    io::copy(&mut tar, &mut out).map_err(Error::io(format!("recompress {}", what())))?;
    let actual = out.diff_id();
    if actual != *diff_id {
        return Err(Error::invalid(
            what(),
            format!("its content has diff_id {actual}, but the image config says {diff_id}"),
        ));
    }
    let info = out
        .inner
        .finish()
        .map_err(Error::io(format!("compress {}", what())))?
        .commit(None)?;
    store.set_blob_meta(
        &info.digest,
        &BlobMeta {
            media_type: Some(layer_media_type(compression, true).to_owned()),
            diff_id: Some(*diff_id),
            compression: Some(compression),
            compression_level: level,
        },
    )?;
    log_compressed(diff_id, &info.digest, compression, level);
    Ok(Layer {
        diff_id: *diff_id,
        digest: info.digest,
        size: info.size,
        compression,
        empty: *diff_id == empty_tar_diff_id(),
    })
}

/// Says (at debug level: `KILN_LOG=kiln_exporter=debug`) that a layer was compressed, which the tests count
/// to prove that nothing is compressed twice.
fn log_compressed(diff_id: &Digest, blob: &Digest, compression: Compression, level: Option<i32>) {
    if compression != Compression::None {
        tracing::debug!(%diff_id, %blob, ?compression, ?level, "compressed a layer");
    }
}

/// A stored blob of `diff_id` with exactly this compression and level, leased to the handle's lease.
fn stored_layer(
    store: &Store,
    diff_id: &Digest,
    compression: Compression,
    level: Option<i32>,
) -> Result<Option<Layer>> {
    for (digest, meta) in store.blobs_for_diff_id(diff_id)? {
        if meta.compression != Some(compression) || meta.compression_level != level {
            continue;
        }
        // Lease before looking: once leased, a concurrent prune no longer removes it.
        if let Some(lease) = store.lease() {
            store.lease_add(lease, LeaseResource::Blob(digest))?;
        }
        match store.blob_size(&digest) {
            Ok(size) => {
                return Ok(Some(Layer {
                    diff_id: *diff_id,
                    digest,
                    size,
                    compression,
                    empty: *diff_id == empty_tar_diff_id(),
                }));
            }
            Err(kiln_cache::Error::BlobNotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

/// Hashes the uncompressed stream on its way into `inner`.
struct DiffIdWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> DiffIdWriter<W> {
    fn new(inner: W) -> Self {
        DiffIdWriter {
            inner,
            hasher: Sha256::new(),
        }
    }

    fn diff_id(&self) -> Digest {
        Digest::from_sha256(self.hasher.clone().finalize().into())
    }
}

impl<W: Write> Write for DiffIdWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A compressing writer whose output is a function of its input and level alone: the gzip header carries
/// no name and mtime 0 (flate2 writes OS "unknown"), and zstd runs single-threaded without a checksum.
enum Compressor<W: Write> {
    None(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::Encoder<'static, W>),
}

impl<W: Write> Compressor<W> {
    fn new(
        inner: W,
        compression: Compression,
        level: Option<i32>,
        what: &dyn Fn() -> String,
    ) -> Result<Compressor<W>> {
        let level = level.unwrap_or_default();
        Ok(match compression {
            Compression::None => Compressor::None(inner),
            Compression::Gzip => {
                let level = flate2::Compression::new(level.unsigned_abs());
                Compressor::Gzip(flate2::GzBuilder::new().mtime(0).write(inner, level))
            }
            Compression::Zstd => Compressor::Zstd(
                zstd::Encoder::new(inner, level)
                    .map_err(Error::io(format!("start compressing {}", what())))?,
            ),
        })
    }

    fn finish(self) -> io::Result<W> {
        match self {
            Compressor::None(w) => Ok(w),
            Compressor::Gzip(w) => w.finish(),
            Compressor::Zstd(w) => w.finish(),
        }
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::None(w) => w.write(buf),
            Compressor::Gzip(w) => w.write(buf),
            Compressor::Zstd(w) => w.write(buf),
        }
    }

    /// Nothing for the compressors: a flush ends a compressed block wherever a caller happened to flush,
    /// which would make the output depend on buffering; `finish` writes everything.
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::None(w) => w.flush(),
            Compressor::Gzip(_) | Compressor::Zstd(_) => Ok(()),
        }
    }
}
