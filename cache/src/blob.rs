//! Content-addressed blobs in OCI layout: `ROOT/blobs/sha256/<hex>`.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::PathBuf;

use crate::digest::Hashing;
use crate::error::{Error, IoContext, Result};
use crate::fsutil::fsync_dir;
use crate::meta::{LeaseResource, add_to_lease, delete_blob_meta};
use crate::{Digest, Store};

/// A committed blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobInfo {
    pub digest: Digest,
    pub size: u64,
}

/// Writes a blob to a temp file in ROOT/tmp, hashing as it goes; [`BlobWriter::commit`] moves it into the
/// store. Dropped without a commit, it removes its temp file, so a failed download leaves nothing behind.
pub struct BlobWriter {
    store: Store,
    tmp: PathBuf,
    out: Option<Hashing<BufWriter<File>>>,
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.out.as_ref().map_or(0, |o| o.count)
    }

    /// Verifies the content against `expected` (if given), makes it durable and moves it into place. A blob
    /// that is already stored is kept as is and the new copy dropped.
    pub fn commit(mut self, expected: Option<&Digest>) -> Result<BlobInfo> {
        let Some(out) = self.out.take() else {
            return Err(Error::Io {
                context: format!("commit blob {}", self.tmp.display()),
                source: io::Error::other("the writer failed earlier"),
            });
        };
        let digest = out.digest();
        let size = out.count;
        let file = out
            .inner
            .into_inner()
            .map_err(|e| e.into_error())
            .ctx(|| format!("write {}", self.tmp.display()))?;
        if let Some(expected) = expected
            && *expected != digest
        {
            return Err(Error::DigestMismatch {
                expected: *expected,
                actual: digest,
            });
        }
        file.sync_all().ctx(|| format!("fsync {}", self.tmp.display()))?;
        drop(file);

        let target = self.store.blob_path(&digest);
        let held = self.store.db_lock()?;
        let exists = target
            .try_exists()
            .ctx(|| format!("look up {}", target.display()))?;
        if !exists {
            std::fs::rename(&self.tmp, &target)
                .ctx(|| format!("move {} to {}", self.tmp.display(), target.display()))?;
            fsync_dir(&self.store.blobs_dir())?;
        }
        if let Some(lease) = self.store.lease() {
            self.store
                .write_locked(&held, |txn| add_to_lease(txn, lease, LeaseResource::Blob(digest)))?;
        }
        Ok(BlobInfo { digest, size })
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.out {
            Some(out) => out.write(buf),
            None => Err(io::Error::other("blob writer already finished")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.out {
            Some(out) => out.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // After a successful commit the temp path is gone (renamed) or a duplicate; either way remove it.
        if let Err(e) = std::fs::remove_file(&self.tmp)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.tmp.display(), error = %e, "could not remove temp blob");
        }
    }
}

impl Store {
    /// Starts writing a blob.
    pub fn blob_writer(&self) -> Result<BlobWriter> {
        let tmp = self.temp_path("blob");
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .ctx(|| format!("create {}", tmp.display()))?;
        Ok(BlobWriter {
            store: self.clone(),
            tmp,
            out: Some(Hashing::new(BufWriter::new(file))),
        })
    }

    /// Stores `bytes` and returns their digest.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Digest> {
        let mut w = self.blob_writer()?;
        w.write_all(bytes).ctx(|| "write blob")?;
        Ok(w.commit(None)?.digest)
    }

    /// Where the blob lives (whether or not it is there).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(digest.hex())
    }

    pub fn has_blob(&self, digest: &Digest) -> Result<bool> {
        let path = self.blob_path(digest);
        path.try_exists().ctx(|| format!("look up {}", path.display()))
    }

    pub fn open_blob(&self, digest: &Digest) -> Result<File> {
        let path = self.blob_path(digest);
        File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::BlobNotFound(*digest),
            _ => Error::Io {
                context: format!("open {}", path.display()),
                source: e,
            },
        })
    }

    /// Reads a whole blob (meant for manifests and configs), verifying it against its digest.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        self.open_blob(digest)?
            .read_to_end(&mut bytes)
            .ctx(|| format!("read blob {digest}"))?;
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(Error::CorruptBlob {
                digest: *digest,
                actual,
            });
        }
        Ok(bytes)
    }

    pub fn blob_size(&self, digest: &Digest) -> Result<u64> {
        Ok(self
            .open_blob(digest)?
            .metadata()
            .ctx(|| format!("stat blob {digest}"))?
            .len())
    }

    /// Removes a blob and its metadata, whatever refers to it; returns whether it was there. Prefer
    /// [`Store::prune`], which keeps what is still referenced.
    pub fn delete_blob(&self, digest: &Digest) -> Result<bool> {
        let path = self.blob_path(digest);
        let held = self.db_lock()?;
        // The record goes first: a crash in between leaves an unreferenced file, which prune removes.
        self.write_locked(&held, |txn| delete_blob_meta(txn, digest))?;
        match std::fs::remove_file(&path) {
            Ok(()) => {
                fsync_dir(&self.blobs_dir())?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::Io {
                context: format!("remove {}", path.display()),
                source: e,
            }),
        }
    }

    /// Digests of all stored blobs, plus the names in the blob directory that are not digests.
    pub(crate) fn scan_blobs(&self) -> Result<(Vec<Digest>, Vec<String>)> {
        let dir = self.blobs_dir();
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for entry in std::fs::read_dir(&dir).ctx(|| format!("list {}", dir.display()))? {
            let entry = entry.ctx(|| format!("list {}", dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            match Digest::from_hex(&name) {
                Ok(d) => good.push(d),
                Err(_) => bad.push(name),
            }
        }
        good.sort();
        Ok((good, bad))
    }
}
