//! Pushing a stored image to a registry: the blobs the registry lacks (mounted from another repository of
//! the same registry when the image came from one), then the platform manifests, then the index.
//!
//! The store keeps a build's own layers uncompressed until something ships them, so a push first compresses
//! the layers the store holds uncompressed (gzip unless [`PushOptions`] say otherwise; in parallel, and each
//! (diff_id, compression, level) once: [`convert_layer`] finds the blob an earlier push or export made) and
//! pushes manifests (and an index) that name the compressed blobs. The configs stay as they are: diff_ids
//! do not depend on compression. The rewritten manifests and index are stored too, so pushing again finds
//! everything made. Layers already compressed (a base image's, or an explicit `compression=`) go as they
//! are, and the digest a push returns is the one the registry got, which differs from the local image's
//! when something was compressed (as docker's does).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use kiln_cache::{Digest, Store};
use kiln_registry::oci_spec::image::Digest as OciDigest;
use kiln_registry::{Reference, RegistryClient};
use rayon::prelude::*;
use serde_json::Value;

use crate::canonical;
use crate::error::{Error, Result};
use crate::export::{Compression, convert_layer};
use kiln_image::parallel::{self, Events};
use kiln_image::stored::{self, BlobRef, StoredImage};

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

/// How a push treats layers the store holds uncompressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PushOptions {
    /// What they are compressed as; [`Compression::None`] pushes them uncompressed.
    pub compression: Compression,
    /// The compression level; `None` for the compressor's default.
    pub level: Option<i32>,
}

impl Default for PushOptions {
    /// gzip at its default level, as docker pushes.
    fn default() -> Self {
        PushOptions {
            compression: Compression::Gzip,
            level: None,
        }
    }
}

/// Pushes the image `local_name` (a name or ID, see [`stored::find`]) to `target` with uncompressed layers
/// compressed to gzip, and returns the digest the target now points at: the image's index when all its
/// platforms are stored, else its manifest (or an index of the platforms it has, see
/// [`stored::StoredImage::export_top`]), as rewritten for compressed layers.
pub async fn push(
    store: &Store,
    registry: &RegistryClient,
    local_name: &str,
    target: &Reference,
    progress: impl FnMut(PushProgress),
) -> Result<Digest> {
    push_with(
        store,
        registry,
        local_name,
        target,
        &PushOptions::default(),
        progress,
    )
    .await
}

/// [`push`], compressing uncompressed layers as `opts` say.
pub async fn push_with(
    store: &Store,
    registry: &RegistryClient,
    local_name: &str,
    target: &Reference,
    opts: &PushOptions,
    mut progress: impl FnMut(PushProgress),
) -> Result<Digest> {
    let found = stored::find(store, local_name)?;
    let image = found.image().clone();
    // What the push writes (compressed layers, rewritten manifests) is unnamed until the upload is done:
    // a lease keeps a concurrent prune from taking it.
    let (own_lease, leased) = match store.lease() {
        Some(_) => (None, store.clone()),
        None => {
            let lease = store.create_lease()?;
            let leased = store.with_lease(&lease);
            (Some(lease), leased)
        }
    };
    let result = push_image(&leased, registry, &image, target, opts, &mut progress).await;
    if let Some(lease) = own_lease
        && let Err(e) = store.release_lease(&lease)
    {
        tracing::warn!("releasing the push's lease: {e}");
    }
    result
}

async fn push_image(
    store: &Store,
    registry: &RegistryClient,
    image: &StoredImage,
    target: &Reference,
    opts: &PushOptions,
    progress: &mut impl FnMut(PushProgress),
) -> Result<Digest> {
    let shipped = {
        let (store, image, opts) = (store.clone(), image.clone(), *opts);
        tokio::task::spawn_blocking(move || ship(&store, &image, &opts))
            .await
            .map_err(|e| Error::invalid("compressing layers for the push", e.to_string()))??
    };

    let mut blobs: BTreeMap<Digest, BlobRef> = BTreeMap::new();
    for m in &shipped.manifests {
        for b in std::iter::once(&m.config).chain(&m.layers) {
            blobs.entry(b.digest).or_insert_with(|| b.clone());
        }
    }
    let mount_from = mount_sources(store, image, target)?;
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
    parallel::run(jobs, PARALLEL_UPLOADS, &mut *progress).await?;

    let push_manifest = |reference: Reference, bytes: Vec<u8>, media_type: String| {
        let registry = registry.clone();
        async move {
            let digest = registry.push_manifest(&reference, &bytes, &media_type).await?;
            let digest = oci_to_store(&digest, &reference)?;
            Ok::<_, Error>((reference, digest, bytes.len() as u64))
        }
    };
    if kiln_image::media::is_index(&shipped.top.media_type) {
        for m in &shipped.manifests {
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
    let (reference, digest, size) =
        push_manifest(target.clone(), shipped.top_bytes, shipped.top.media_type.clone()).await?;
    progress(PushProgress::Manifest {
        reference: reference.to_string(),
        digest,
        size,
    });
    Ok(digest)
}

/// One platform image as it goes to the registry.
struct ShippedManifest {
    manifest: BlobRef,
    bytes: Vec<u8>,
    config: BlobRef,
    layers: Vec<BlobRef>,
}

/// The image as it goes to the registry: its platform images and what the target names.
struct Shipped {
    manifests: Vec<ShippedManifest>,
    top: BlobRef,
    top_bytes: Vec<u8>,
}

/// Whether a layer media type is an uncompressed (distributable) layer tar.
fn is_uncompressed_layer(media_type: &str) -> bool {
    !media_type.contains("nondistributable")
        && !media_type.contains("foreign")
        && matches!(Compression::from_media_type(media_type), Ok(Compression::None))
}

/// Compresses the image's uncompressed layers (each once, in parallel) and rewrites the manifests that
/// name them and the index over those, storing what it rewrites. An image with nothing to compress goes as
/// it is.
fn ship(store: &Store, image: &StoredImage, opts: &PushOptions) -> Result<Shipped> {
    let (top, top_bytes) = image.export_top()?;
    let mut uncompressed: BTreeMap<Digest, Digest> = BTreeMap::new();
    if opts.compression != Compression::None {
        for m in &image.manifests {
            for (layer, diff_id) in m.layers.iter().zip(&m.diff_ids) {
                if is_uncompressed_layer(&layer.media_type) {
                    uncompressed.insert(layer.digest, *diff_id);
                }
            }
        }
    }
    let compressed: BTreeMap<Digest, crate::export::Layer> = uncompressed
        .into_par_iter()
        .map(|(blob, diff_id)| {
            let layer = convert_layer(store, &blob, &diff_id, opts.compression, opts.level)?;
            Ok((blob, layer))
        })
        .collect::<Result<_>>()?;

    // Old manifest digest → the rewritten manifest.
    let mut rewritten: BTreeMap<Digest, BlobRef> = BTreeMap::new();
    let mut manifests = Vec::new();
    for m in &image.manifests {
        let layers: Vec<BlobRef> = m
            .layers
            .iter()
            .map(|l| match compressed.get(&l.digest) {
                Some(c) => BlobRef {
                    digest: c.digest,
                    media_type: c
                        .media_type(!l.media_type.starts_with("application/vnd.docker."))
                        .to_owned(),
                    size: c.size,
                },
                None => l.clone(),
            })
            .collect();
        if layers == m.layers {
            manifests.push(ShippedManifest {
                manifest: m.manifest.clone(),
                bytes: m.bytes.clone(),
                config: m.config.clone(),
                layers,
            });
            continue;
        }
        let what = format!("manifest {}", m.manifest.digest);
        let mut doc = parse_json(&m.bytes, &what)?;
        match doc.get_mut("layers").and_then(Value::as_array_mut) {
            Some(list) if list.len() == layers.len() => {
                for (entry, layer) in list.iter_mut().zip(&layers) {
                    entry["mediaType"] = layer.media_type.clone().into();
                    entry["digest"] = layer.digest.to_string().into();
                    entry["size"] = layer.size.into();
                }
            }
            _ => return Err(Error::invalid(what, "its layers changed while it was read")),
        }
        let bytes = canonical::to_vec(&doc);
        let manifest = BlobRef {
            digest: store.put_bytes(&bytes)?,
            media_type: m.manifest.media_type.clone(),
            size: bytes.len() as u64,
        };
        rewritten.insert(m.manifest.digest, manifest.clone());
        manifests.push(ShippedManifest {
            manifest,
            bytes,
            config: m.config.clone(),
            layers,
        });
    }

    if rewritten.is_empty() {
        return Ok(Shipped {
            manifests,
            top,
            top_bytes,
        });
    }
    if !kiln_image::media::is_index(&top.media_type) {
        let m = manifests
            .iter()
            .find(|m| rewritten.get(&top.digest) == Some(&m.manifest))
            .ok_or_else(|| Error::invalid(format!("image {}", image.name), "its manifest is not stored"))?;
        return Ok(Shipped {
            top: m.manifest.clone(),
            top_bytes: m.bytes.clone(),
            manifests,
        });
    }
    let what = format!("index {}", top.digest);
    let mut doc = parse_json(&top_bytes, &what)?;
    for entry in doc
        .get_mut("manifests")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        let old = entry["digest"].as_str().and_then(|d| d.parse::<Digest>().ok());
        if let Some(new) = old.and_then(|d| rewritten.get(&d)) {
            entry["digest"] = new.digest.to_string().into();
            entry["size"] = new.size.into();
        }
    }
    let bytes = canonical::to_vec(&doc);
    let top = BlobRef {
        digest: store.put_bytes(&bytes)?,
        media_type: top.media_type,
        size: bytes.len() as u64,
    };
    Ok(Shipped {
        manifests,
        top,
        top_bytes: bytes,
    })
}

fn parse_json(bytes: &[u8], what: &str) -> Result<Value> {
    serde_json::from_slice(bytes).map_err(|e| Error::invalid(what, e.to_string()))
}

/// Other repositories of the target's registry that the image has a name in: the registry may link its
/// blobs from there instead of receiving them again.
fn mount_sources(store: &Store, image: &StoredImage, target: &Reference) -> Result<Vec<String>> {
    let names = store
        .images_by_digest(&image.record.digest)?
        .into_iter()
        .map(|(name, _)| name)
        .chain(std::iter::once(image.name.clone()));
    Ok(mount_repositories(names, target))
}

/// The repositories of `names` (image references) on `target`'s registry, but `target`'s own, once each:
/// where that registry may mount blobs from.
pub fn mount_repositories(names: impl IntoIterator<Item = String>, target: &Reference) -> Vec<String> {
    let mut repos = BTreeSet::new();
    for name in names {
        if let Ok(r) = Reference::parse(&name)
            && r.registry() == target.registry()
            && r.repository() != target.repository()
        {
            repos.insert(r.repository().to_owned());
        }
    }
    repos.into_iter().collect()
}

/// Uploads one stored blob to `target`'s repository unless it is there already, mounting it from one of
/// `mount_from` (repositories of the same registry) where the registry allows.
pub async fn push_blob(
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
