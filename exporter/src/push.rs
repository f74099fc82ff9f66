//! Pushing a stored image to a registry: the blobs the registry lacks (mounted from another repository of
//! the same registry when the image came from one), then the platform manifests, then the index.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use kiln_cache::{Digest, Store};
use kiln_registry::oci_spec::image::Digest as OciDigest;
use kiln_registry::{Reference, RegistryClient};

use crate::error::{Error, Result};
use crate::parallel::{self, Events};
use crate::stored::{self, BlobRef};

/// Blobs uploaded at the same time.
const PARALLEL_UPLOADS: usize = 3;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushProgress {
    /// The registry has the blob already.
    Exists {
        digest: Digest,
        size: u64,
    },
    /// Linked from another repository of the registry instead of uploaded.
    Mounted {
        digest: Digest,
        size: u64,
        from: String,
    },
    /// Bytes of the blob read for the upload so far.
    Uploading {
        digest: Digest,
        sent: u64,
        total: u64,
    },
    Pushed {
        digest: Digest,
        size: u64,
    },
    /// A manifest or index was stored under `reference`.
    Manifest {
        reference: String,
        digest: Digest,
        size: u64,
    },
}

/// Pushes the image `local_name` (a name or ID, see [`stored::find`]) to `target` and returns the digest
/// the target now points at: the image's index when all its platforms are stored, else its manifest (or an
/// index of the platforms it has, see [`stored::StoredImage::export_top`]).
pub async fn push(
    store: &Store,
    registry: &RegistryClient,
    local_name: &str,
    target: &Reference,
    mut progress: impl FnMut(PushProgress),
) -> Result<Digest> {
    let found = stored::find(store, local_name)?;
    let image = found.image().clone();
    let (top, top_bytes) = image.export_top()?;

    let mut blobs: BTreeMap<Digest, BlobRef> = BTreeMap::new();
    for m in &image.manifests {
        for b in std::iter::once(&m.config).chain(&m.layers) {
            blobs.entry(b.digest).or_insert_with(|| b.clone());
        }
    }
    let mount_from = mount_sources(store, &image, target)?;
    let jobs: Vec<_> = blobs
        .into_values()
        .map(|blob| {
            let store = store.clone();
            let registry = registry.clone();
            let target = target.clone();
            let mount_from = mount_from.clone();
            move |events: Events<PushProgress>| push_blob(store, registry, target, blob, mount_from, events)
        })
        .collect();
    parallel::run(jobs, PARALLEL_UPLOADS, &mut progress).await?;

    let push_manifest = |reference: Reference, bytes: Vec<u8>, media_type: String| {
        let registry = registry.clone();
        async move {
            let digest = registry.push_manifest(&reference, &bytes, &media_type).await?;
            let digest = oci_to_store(&digest, &reference)?;
            Ok::<_, Error>((reference, digest, bytes.len() as u64))
        }
    };
    if stored::is_index(&top.media_type) {
        for m in &image.manifests {
            let reference = target.with_digest(&m.manifest.digest.to_string());
            let (reference, digest, size) =
                push_manifest(reference, m.bytes.clone(), m.manifest.media_type.clone()).await?;
            progress(PushProgress::Manifest {
                reference: reference.to_string(),
                digest,
                size,
            });
        }
    }
    let (reference, digest, size) = push_manifest(target.clone(), top_bytes, top.media_type.clone()).await?;
    progress(PushProgress::Manifest {
        reference: reference.to_string(),
        digest,
        size,
    });
    Ok(digest)
}

/// Other repositories of the target's registry that the image has a name in: the registry may link its
/// blobs from there instead of receiving them again.
fn mount_sources(store: &Store, image: &stored::StoredImage, target: &Reference) -> Result<Vec<String>> {
    let mut repos = BTreeSet::new();
    let names = store
        .images_by_digest(&image.record.digest)?
        .into_iter()
        .map(|(name, _)| name)
        .chain(std::iter::once(image.name.clone()));
    for name in names {
        if let Ok(r) = Reference::parse(&name)
            && r.registry() == target.registry()
            && r.repository() != target.repository()
        {
            repos.insert(r.repository().to_owned());
        }
    }
    Ok(repos.into_iter().collect())
}

async fn push_blob(
    store: Store,
    registry: RegistryClient,
    target: Reference,
    blob: BlobRef,
    mount_from: Vec<String>,
    events: Events<PushProgress>,
) -> Result<()> {
    let digest = oci_digest(&blob.digest)?;
    if registry.blob_exists(&target, &digest).await? {
        let _ = events.send(PushProgress::Exists {
            digest: blob.digest,
            size: blob.size,
        });
        return Ok(());
    }
    for repo in &mount_from {
        if registry.mount_blob(&target, repo, &digest).await? {
            let _ = events.send(PushProgress::Mounted {
                digest: blob.digest,
                size: blob.size,
                from: repo.clone(),
            });
            return Ok(());
        }
    }
    let file = store.open_blob(&blob.digest)?;
    let size = file
        .metadata()
        .map_err(Error::io(format!("stat blob {}", blob.digest)))?
        .len();
    let mut reader = Counting {
        inner: file,
        sent: 0,
        total: size,
        digest: blob.digest,
        events: events.clone(),
    };
    registry.push_blob(&target, &digest, size, &mut reader).await?;
    let _ = events.send(PushProgress::Pushed {
        digest: blob.digest,
        size,
    });
    Ok(())
}

/// Reports how much of a blob has been read for upload.
struct Counting<R> {
    inner: R,
    sent: u64,
    total: u64,
    digest: Digest,
    events: Events<PushProgress>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.sent += n as u64;
            let _ = self.events.send(PushProgress::Uploading {
                digest: self.digest,
                sent: self.sent,
                total: self.total,
            });
        }
        Ok(n)
    }
}

fn oci_digest(d: &Digest) -> Result<OciDigest> {
    d.to_string()
        .parse()
        .map_err(|e| Error::invalid(format!("digest {d}"), format!("{e}")))
}

fn oci_to_store(d: &OciDigest, reference: &Reference) -> Result<Digest> {
    d.to_string()
        .parse()
        .map_err(|e: kiln_cache::Error| Error::invalid(format!("pushed manifest {reference}"), e.to_string()))
}
