//! `kiln pull` and the pulls a build does: index, manifests, configs and the layers the store lacks.

use std::io::Write;

use crate::parallel::{self, Events};
use crate::stored::{self, BlobRef};
use kiln_cache::{BlobMeta, Compression, Digest, LeaseResource, Store};
use kiln_registry::oci_spec::image::Descriptor;
use kiln_registry::{Platform, PlatformMatch, Reference, RegistryClient, Resolved};

use crate::{Error, LeaseGuard, Result};

/// Blobs downloaded at the same time.
const PARALLEL_DOWNLOADS: usize = 3;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PullProgress {
    /// The reference names this index or manifest.
    Resolved {
        digest: Digest,
    },
    /// The store has the blob already; it is not downloaded.
    Exists {
        digest: Digest,
        size: u64,
    },
    /// Bytes of the blob received so far.
    Downloading {
        digest: Digest,
        received: u64,
        total: u64,
    },
    Downloaded {
        digest: Digest,
        size: u64,
    },
}

/// One platform image of a pull.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PulledManifest {
    pub platform: Platform,
    pub manifest: Digest,
    pub config: Digest,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PulledImage {
    /// The name it is recorded under (see [`stored::image_name`]).
    pub name: String,
    /// The index or manifest the name points at.
    pub digest: Digest,
    pub media_type: String,
    pub manifests: Vec<PulledManifest>,
    /// Bytes downloaded; 0 when the store had every blob.
    pub downloaded: u64,
    /// The name pointed at other content (or nothing) before.
    pub changed: bool,
}

/// Pulls `reference` for `platforms` (empty: the host's) into the store and names it.
///
/// Configs and layers the store has are not downloaded again. Everything is verified against its digest
/// while it is written; nothing is named until every blob is in, so a failed pull leaves no image.
pub async fn pull(
    store: &Store,
    registry: &RegistryClient,
    reference: &Reference,
    platforms: &[Platform],
    mut progress: impl FnMut(PullProgress),
) -> Result<PulledImage> {
    let context = format!("pull {reference}");
    let host = [Platform::host()];
    let wanted = if platforms.is_empty() {
        &host[..]
    } else {
        platforms
    };
    let lease = LeaseGuard::new(store, &context)?;
    let leased = lease.store();

    // The first answer pins the content, so every platform comes from the same index even if the tag moves
    // meanwhile.
    let mut pinned = reference.clone();
    let mut images: Vec<Resolved> = Vec::new();
    for platform in wanted {
        let resolved = registry.resolve(&pinned, platform).await?;
        let top = resolved
            .index
            .as_ref()
            .map_or(&resolved.manifest_digest, |i| &i.digest);
        pinned = reference.with_digest(top.as_ref());
        if !images
            .iter()
            .any(|i| i.manifest_digest == resolved.manifest_digest)
        {
            images.push(resolved);
        }
    }
    let first = &images[0];
    let (top_digest, top_media_type, top_bytes) = match &first.index {
        Some(index) => (
            index.digest.clone(),
            index.media_type.clone(),
            index.bytes.clone(),
        ),
        None => (
            first.manifest_digest.clone(),
            first.media_type.clone(),
            first.manifest.clone(),
        ),
    };
    let top_digest = store_digest(top_digest.as_ref(), &context)?;
    progress(PullProgress::Resolved { digest: top_digest });

    let mut downloaded = 0u64;
    // Configs first: they are small, and a config that does not match its manifest stops the pull before
    // the layers are fetched. Progress is about layers, as in docker; configs only count as downloaded.
    // Blobs are fetched through the reference as given: only its repository matters, and errors then name
    // what the user asked for.
    let configs = images.iter().map(|i| i.config.clone()).collect();
    fetch_all(&leased, registry, reference, configs, &mut |event| {
        if let PullProgress::Downloaded { size, .. } = event {
            downloaded += size;
        }
    })
    .await?;
    let mut pulled = Vec::new();
    let mut layers: Vec<Descriptor> = Vec::new();
    for image in &images {
        let what = format!("{context}: manifest {}", image.manifest_digest);
        let parts = stored::parse_manifest(&image.manifest, &what)?;
        let config_bytes = leased
            .read_blob(&parts.config.digest)
            .map_err(Error::store(&context))?;
        let config = stored::parse_config(
            &config_bytes,
            &format!("{context}: config {}", parts.config.digest),
        )?;
        stored::check_layers_match(&parts, &config, &what)?;
        for layer in &parts.layers {
            Compression::from_media_type(&layer.media_type)
                .map_err(|e| Error::invalid(&what, e.to_string()))?;
        }
        if image.index.is_none()
            && !platforms.is_empty()
            && let Some(p) = &config.platform
            && !platforms.iter().any(|w| w.matches(p))
        {
            // containerd takes a lone manifest whatever its platform; say so, since a build will refuse it.
            tracing::warn!(%reference, "the image is for {p}, not the requested platform");
        }
        let platform = image
            .platform
            .clone()
            .or(config.platform)
            .unwrap_or_else(|| Platform::new("unknown", "unknown", None));
        pulled.push(PulledManifest {
            platform,
            manifest: store_digest(image.manifest_digest.as_ref(), &context)?,
            config: parts.config.digest,
        });
        for layer in &image.layers {
            if !layers.iter().any(|l| l.digest() == layer.digest()) {
                layers.push(layer.clone());
            }
        }
    }
    fetch_all(&leased, registry, reference, layers, &mut |event| {
        if let PullProgress::Downloaded { size, .. } = event {
            downloaded += size;
        }
        progress(event);
    })
    .await?;

    for image in &images {
        put_verified(&leased, &image.manifest, image.manifest_digest.as_ref(), &context)?;
    }
    put_verified(&leased, &top_bytes, top_digest.to_string().as_str(), &context)?;

    let name = stored::image_name(reference);
    let before = store.get_image(&name).map_err(Error::store(&context))?;
    let platforms: Vec<Platform> = pulled.iter().map(|m| m.platform.clone()).collect();
    stored::record_image(store, &name, top_digest, &top_media_type, &platforms)?;
    drop(lease);
    Ok(PulledImage {
        name,
        digest: top_digest,
        media_type: top_media_type,
        manifests: pulled,
        downloaded,
        changed: before.is_none_or(|b| b.digest != top_digest),
    })
}

fn store_digest(s: &str, context: &str) -> Result<Digest> {
    s.parse().map_err(Error::store(context))
}

/// Stores bytes that were fetched (and verified) already, checking them against `digest` once more.
fn put_verified(store: &Store, bytes: &[u8], digest: &str, context: &str) -> Result<()> {
    let expected = store_digest(digest, context)?;
    let mut writer = store.blob_writer().map_err(Error::store(context))?;
    writer
        .write_all(bytes)
        .map_err(Error::io(format!("{context}: write {digest}")))?;
    writer.commit(Some(&expected)).map_err(Error::store(context))?;
    Ok(())
}

async fn fetch_all(
    store: &Store,
    registry: &RegistryClient,
    reference: &Reference,
    blobs: Vec<Descriptor>,
    progress: &mut impl FnMut(PullProgress),
) -> Result<()> {
    let jobs: Vec<_> = blobs
        .into_iter()
        .map(|descriptor| {
            let store = store.clone();
            let registry = registry.clone();
            let reference = reference.clone();
            move |events: Events<PullProgress>| fetch(store, registry, reference, descriptor, events)
        })
        .collect();
    parallel::run(jobs, PARALLEL_DOWNLOADS, progress).await
}

/// Downloads one blob into the store unless it is there. `store` carries the pull's lease, which also
/// protects a blob that is found present from a concurrent prune until the image is named.
async fn fetch(
    store: Store,
    registry: RegistryClient,
    reference: Reference,
    descriptor: Descriptor,
    events: Events<PullProgress>,
) -> Result<()> {
    let context = format!("pull {reference}");
    let blob = BlobRef {
        digest: store_digest(descriptor.digest().as_ref(), &context)?,
        media_type: descriptor.media_type().to_string(),
        size: descriptor.size(),
    };
    if let Some(lease) = store.lease() {
        // Leased before looking, so a prune cannot remove it between the look and the naming.
        store
            .lease_add(lease, LeaseResource::Blob(blob.digest))
            .map_err(Error::store(&context))?;
    }
    if store.has_blob(&blob.digest).map_err(Error::store(&context))? {
        let _ = events.send(PullProgress::Exists {
            digest: blob.digest,
            size: blob.size,
        });
        return Ok(());
    }
    let mut writer = store.blob_writer().map_err(Error::store(&context))?;
    let mut counting = Counting {
        inner: &mut writer,
        received: 0,
        blob: &blob,
        events: &events,
    };
    registry
        .fetch_blob(&reference, &descriptor, &mut counting)
        .await?;
    let digest = blob.digest;
    let info = tokio::task::spawn_blocking(move || writer.commit(Some(&digest)))
        .await
        .map_err(|e| Error::invalid(&context, format!("storing blob {digest} failed: {e}")))?
        .map_err(Error::store(&context))?;
    if let Ok(compression) = Compression::from_media_type(&blob.media_type)
        && store
            .blob_meta(&digest)
            .map_err(Error::store(&context))?
            .is_none()
    {
        let meta = BlobMeta {
            media_type: Some(blob.media_type.clone()),
            compression: Some(compression),
            ..BlobMeta::default()
        };
        store
            .set_blob_meta(&digest, &meta)
            .map_err(Error::store(&context))?;
    }
    let _ = events.send(PullProgress::Downloaded {
        digest,
        size: info.size,
    });
    Ok(())
}

/// Passes writes through and reports how many bytes have arrived.
struct Counting<'a, W> {
    inner: W,
    received: u64,
    blob: &'a BlobRef,
    events: &'a Events<PullProgress>,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.received += n as u64;
        let _ = self.events.send(PullProgress::Downloading {
            digest: self.blob.digest,
            received: self.received,
            total: self.blob.size,
        });
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
