//! `--cache-from`: the descriptions are read when the build starts (small JSON documents); a layer blob is
//! downloaded only when a step is satisfied from the cache and the solver takes its result, and every
//! blob is checked against its digest before the store keeps it.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use futures::future::BoxFuture;
use kiln_cache::{BlobMeta, Compression, Digest, Store};
use kiln_image::media;
use kiln_llb::Platform;
use kiln_registry::oci_spec::image::Descriptor;
use kiln_registry::{Reference, RegistryClient};
use kiln_solver::records::{CacheHit, CacheImport, KeyInputs};
use kiln_solver::source::{BaseBlob, LayerRef};
use serde_json::Value;

use crate::description::{self, Description};
use crate::spec::CacheFrom;

/// Where an imported cache's blobs are.
#[derive(Clone)]
enum Blobs {
    Registry {
        client: RegistryClient,
        reference: Reference,
    },
    Dir(PathBuf),
}

impl Blobs {
    /// Copies the blob's bytes into `out`, unchecked: each caller checks the digest where the bytes land.
    async fn copy(
        &self,
        digest: &Digest,
        media_type: &str,
        size: u64,
        out: &mut (dyn Write + Send),
    ) -> Result<(), String> {
        match self {
            Blobs::Registry { client, reference } => {
                let descriptor = descriptor(digest, media_type, size)?;
                client
                    .fetch_blob(reference, &descriptor, out)
                    .await
                    .map_err(|e| e.to_string())
            }
            Blobs::Dir(dir) => {
                let path = blob_file(dir, digest);
                let file = std::fs::File::open(&path).map_err(|e| format!("open {}: {e}", path.display()))?;
                // Never more than the descriptor's size (plus one byte, to tell a longer file): the
                // directory is not ours, and a blob there may be a huge file or a link to /dev/zero.
                let copied = std::io::copy(&mut file.take(size.saturating_add(1)), out)
                    .map_err(|e| format!("read {}: {e}", path.display()))?;
                if copied > size {
                    return Err(format!(
                        "{} is longer than the {size} bytes the cache says",
                        path.display()
                    ));
                }
                if copied < size {
                    return Err(format!(
                        "{} has {copied} bytes, not the {size} bytes the cache says",
                        path.display()
                    ));
                }
                Ok(())
            }
        }
    }

    /// The blob's bytes, checked against `digest`.
    async fn read(&self, digest: &Digest, media_type: &str, size: u64) -> Result<Vec<u8>, String> {
        let mut bytes = Vec::new();
        self.copy(digest, media_type, size, &mut bytes).await?;
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(format!("blob {digest} has the content of {actual}; not using it"));
        }
        Ok(bytes)
    }

    /// Stores the blob (streamed, and checked when committed) unless the store has it.
    async fn fetch_into(
        &self,
        store: &Store,
        digest: &Digest,
        media_type: &str,
        size: u64,
    ) -> Result<(), String> {
        if store.has_blob(digest).map_err(|e| e.to_string())? {
            // Leased, then looked at again: a concurrent prune may have taken it in between, but not after.
            if let Some(lease) = store.lease() {
                store
                    .lease_add(lease, kiln_cache::LeaseResource::Blob(*digest))
                    .map_err(|e| e.to_string())?;
            }
            if store.has_blob(digest).map_err(|e| e.to_string())? {
                return Ok(());
            }
        }
        let mut writer = store.blob_writer().map_err(|e| e.to_string())?;
        self.copy(digest, media_type, size, &mut writer).await?;
        let digest = *digest;
        tokio::task::spawn_blocking(move || writer.commit(Some(&digest)))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}

fn blob_file(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join("blobs/sha256").join(digest.hex())
}

fn descriptor(digest: &Digest, media_type: &str, size: u64) -> Result<Descriptor, String> {
    serde_json::from_value(serde_json::json!({
        "mediaType": media_type,
        "digest": digest.to_string(),
        "size": size,
    }))
    .map_err(|e| format!("descriptor of {digest}: {e}"))
}

/// A layer of an imported cache, with everything needed to fetch and check it.
#[derive(Debug, Clone)]
struct RemoteLayer {
    digest: Digest,
    media_type: String,
    size: u64,
    diff_id: Option<Digest>,
    level: Option<i32>,
    source_date_epoch: Option<u64>,
    base_manifest: Option<Digest>,
}

/// One imported cache description, ready for the solver.
pub struct ImportedCache {
    name: String,
    store: Store,
    blobs: Blobs,
    description: Description,
    layers: Vec<RemoteLayer>,
    by_key: HashMap<String, usize>,
    by_step: HashMap<String, Vec<usize>>,
}

/// Reads the descriptions `from` names (an image index with inline caches has one per platform), for the
/// build's `platforms`. An error says why the source cannot be used; the build goes on without it.
pub async fn open(
    from: &CacheFrom,
    store: &Store,
    registry: &RegistryClient,
    platforms: &[Platform],
) -> Result<Vec<ImportedCache>, String> {
    let name = from.name();
    let found = match from {
        CacheFrom::Registry { reference } => {
            let reference = Reference::parse(reference).map_err(|e| e.to_string())?;
            let blobs = Blobs::Registry {
                client: registry.clone(),
                reference: reference.clone(),
            };
            let top = registry
                .fetch_manifest(&reference)
                .await
                .map_err(|e| e.to_string())?;
            let top_json = json(&top.bytes, "the cache manifest")?;
            read_top(&blobs, &top.media_type, &top_json, platforms).await?
        }
        CacheFrom::Local { src, tag, digest } => {
            let blobs = Blobs::Dir(src.clone());
            let index_path = src.join("index.json");
            let index =
                std::fs::read(&index_path).map_err(|e| format!("read {}: {e}", index_path.display()))?;
            let index = json(&index, "index.json")?;
            let entries = index["manifests"].as_array().cloned().unwrap_or_default();
            let chosen = entries
                .iter()
                .find(|e| match digest {
                    Some(d) => e["digest"].as_str() == Some(d.as_str()),
                    None => e["annotations"][media::ANNOTATION_REF_NAME].as_str() == Some(tag.as_str()),
                })
                .or_else(|| (digest.is_none() && entries.len() == 1).then(|| &entries[0]))
                .ok_or_else(|| match digest {
                    Some(d) => format!("the directory has no cache {d}"),
                    None => format!("the directory has no cache named {tag:?}"),
                })?;
            let (bytes, media_type) = read_descriptor(&blobs, chosen).await?;
            let manifest = json(&bytes, "the cache manifest")?;
            read_top(&blobs, &media_type, &manifest, platforms).await?
        }
    };
    if found.is_empty() {
        return Err(
            "it holds no kiln cache (neither a cache manifest nor an image with an inline cache)".to_string(),
        );
    }
    Ok(found
        .into_iter()
        .map(|(blobs, description, layers)| {
            ImportedCache::new(name.clone(), store.clone(), blobs, description, layers)
        })
        .collect())
}

type Found = Vec<(Blobs, Description, Vec<RemoteLayer>)>;

/// The descriptions under a manifest or index: a cache manifest's config, or the inline caches of an
/// image's (or of an index's images for the build's platforms).
async fn read_top(
    blobs: &Blobs,
    media_type: &str,
    top: &Value,
    platforms: &[Platform],
) -> Result<Found, String> {
    if !media::is_index(media_type) {
        return Ok(read_manifest(blobs, top).await?.into_iter().collect());
    }
    let mut found = Vec::new();
    let mut first_error = None;
    for entry in top["manifests"].as_array().cloned().unwrap_or_default() {
        if let Some(os) = entry["platform"]["os"].as_str() {
            let arch = entry["platform"]["architecture"].as_str().unwrap_or_default();
            if !platforms.iter().any(|p| p.os == os && p.architecture == arch) {
                continue;
            }
        }
        // One entry that cannot be read (another tool's, a nested index) leaves the others usable.
        let read = async {
            let bytes = read_child_manifest(blobs, &entry).await?;
            read_manifest(blobs, &json(&bytes, "a manifest of the cache index")?).await
        };
        match read.await {
            Ok(description) => found.extend(description),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) if found.is_empty() => Err(e),
        _ => Ok(found),
    }
}

async fn read_manifest(
    blobs: &Blobs,
    manifest: &Value,
) -> Result<Option<(Blobs, Description, Vec<RemoteLayer>)>, String> {
    let (config, config_type) = read_descriptor(blobs, &manifest["config"]).await?;
    if config_type == description::MEDIA_TYPE {
        let description = Description::parse(&config)?;
        let layers = description
            .layers
            .iter()
            .map(|l| {
                Ok(RemoteLayer {
                    digest: l.digest.ok_or("a cache layer has no digest")?,
                    media_type: l.media_type.clone().ok_or("a cache layer has no media type")?,
                    size: l.size.ok_or("a cache layer has no size")?,
                    diff_id: l.diff_id,
                    level: l.compression_level,
                    source_date_epoch: l.source_date_epoch,
                    base_manifest: l.base_manifest,
                })
            })
            .collect::<Result<Vec<_>, &str>>()?;
        return Ok(Some((blobs.clone(), description, layers)));
    }
    // An image: its config may carry an inline description whose layers are the image's own.
    let config = json(&config, "the image config")?;
    let Some(inline) = config.get(description::INLINE_KEY) else {
        return Ok(None);
    };
    let bytes = serde_json::to_vec(inline).unwrap_or_default();
    let description = Description::parse(&bytes)?;
    let image_layers = manifest["layers"].as_array().cloned().unwrap_or_default();
    let diff_ids = config["rootfs"]["diff_ids"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let layers = description
        .layers
        .iter()
        .map(|l| {
            let i = l
                .image_layer
                .ok_or("an inline cache layer names no image layer")?;
            let layer = image_layers
                .get(i)
                .ok_or("an inline cache layer is not in the image")?;
            Ok(RemoteLayer {
                digest: layer["digest"]
                    .as_str()
                    .and_then(|d| d.parse().ok())
                    .ok_or("an image layer has no digest")?,
                media_type: layer["mediaType"].as_str().unwrap_or_default().to_string(),
                size: layer["size"].as_u64().unwrap_or_default(),
                diff_id: diff_ids
                    .get(i)
                    .and_then(|d| d.as_str())
                    .and_then(|d| d.parse().ok()),
                level: None,
                source_date_epoch: l.source_date_epoch,
                base_manifest: l.base_manifest,
            })
        })
        .collect::<Result<Vec<_>, &str>>()?;
    Ok(Some((blobs.clone(), description, layers)))
}

/// The bytes of the blob a JSON descriptor names, and its media type.
async fn read_descriptor(blobs: &Blobs, d: &Value) -> Result<(Vec<u8>, String), String> {
    let digest: Digest = d["digest"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or("a descriptor has no valid digest")?;
    let media_type = d["mediaType"].as_str().unwrap_or_default().to_string();
    let size = d["size"].as_u64().unwrap_or_default();
    if size > MAX_DOCUMENT {
        return Err(format!(
            "{digest} is {size} bytes, more than a cache document may have"
        ));
    }
    let bytes = blobs.read(&digest, &media_type, size).await?;
    Ok((bytes, media_type))
}

/// The manifest an index entry names: from the registry's manifest endpoint (a manifest is not a blob
/// there), or the layout's blobs.
async fn read_child_manifest(blobs: &Blobs, d: &Value) -> Result<Vec<u8>, String> {
    let Blobs::Registry { client, reference } = blobs else {
        return Ok(read_descriptor(blobs, d).await?.0);
    };
    let digest = d["digest"].as_str().ok_or("an index entry has no digest")?;
    let manifest = client
        .fetch_manifest(&reference.with_digest(digest))
        .await
        .map_err(|e| e.to_string())?;
    if manifest.digest.to_string() != digest {
        return Err(format!(
            "manifest {digest} has the content of {}",
            manifest.digest
        ));
    }
    Ok(manifest.bytes)
}

/// The largest manifest or description read into memory.
const MAX_DOCUMENT: u64 = 256 << 20;

fn json(bytes: &[u8], what: &str) -> Result<Value, String> {
    let mut text = String::new();
    (&bytes[..bytes.len().min(MAX_DOCUMENT as usize)])
        .read_to_string(&mut text)
        .map_err(|_| format!("{what} is not UTF-8"))?;
    serde_json::from_str(&text).map_err(|e| format!("{what} is not valid JSON: {e}"))
}

impl ImportedCache {
    fn new(
        name: String,
        store: Store,
        blobs: Blobs,
        description: Description,
        layers: Vec<RemoteLayer>,
    ) -> Self {
        let mut by_key = HashMap::new();
        let mut by_step: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, record) in description.records.iter().enumerate() {
            by_key.insert(record.key.clone(), i);
            if let Some(inputs) = &record.inputs {
                by_step.entry(inputs.step.clone()).or_default().push(i);
            }
        }
        ImportedCache {
            name,
            store,
            blobs,
            description,
            layers,
            by_key,
            by_step,
        }
    }

    /// How many records it has.
    pub fn records(&self) -> usize {
        self.description.records.len()
    }

    /// Brings layer `i` into the store as a snapshot.
    async fn materialize(&self, i: usize) -> Result<LayerRef, String> {
        let layer = &self.layers[i];
        self.blobs
            .fetch_into(&self.store, &layer.digest, &layer.media_type, layer.size)
            .await?;
        let store = self.store.clone();
        let l = layer.clone();
        let snapshot = tokio::task::spawn_blocking(move || -> Result<_, String> {
            let id = store
                .unpack_layer(&l.digest, &l.media_type)
                .map_err(|e| e.to_string())?;
            let actual = store
                .snapshot(&id)
                .map_err(|e| e.to_string())?
                .and_then(|r| r.diff_id);
            let diff_id = match (l.diff_id, actual) {
                (Some(want), Some(got)) if want != got => {
                    return Err(format!(
                        "layer {} has diff_id {got}, but the cache says {want}",
                        l.digest
                    ));
                }
                (Some(want), _) => want,
                (None, Some(got)) => got,
                (None, None) => return Err(format!("layer {} has no diff_id", l.digest)),
            };
            // The level is what lets a later export with the same settings reuse this blob.
            let meta = BlobMeta {
                media_type: Some(l.media_type.clone()),
                diff_id: Some(diff_id),
                compression: Compression::from_media_type(&l.media_type).ok(),
                compression_level: l.level,
            };
            store
                .record_layer(&l.digest, &meta, &id, l.source_date_epoch, &diff_id)
                .map_err(|e| e.to_string())?;
            Ok((id, diff_id))
        })
        .await
        .map_err(|e| e.to_string())??;
        let (snapshot, diff_id) = snapshot;
        Ok(LayerRef {
            snapshot,
            blob: layer.base_manifest.map(|manifest| BaseBlob {
                digest: layer.digest,
                media_type: layer.media_type.clone(),
                diff_id,
                manifest,
            }),
        })
    }
}

impl CacheImport for ImportedCache {
    fn name(&self) -> &str {
        &self.name
    }

    fn load<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<CacheHit>, String>> {
        Box::pin(async move {
            let Some(&i) = self.by_key.get(key) else {
                return Ok(None);
            };
            let record = &self.description.records[i];
            let layers =
                futures::future::try_join_all(record.chain.iter().map(|&layer| self.materialize(layer)))
                    .await?;
            Ok(Some(CacheHit {
                layers,
                inputs: record.inputs.clone(),
            }))
        })
    }

    fn fetch_cache_mount<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Digest>, String>> {
        Box::pin(async move {
            let Some(mount) = self.description.cache_mounts.iter().find(|m| m.id == id) else {
                return Ok(None);
            };
            let layer = &self.layers[mount.layer];
            self.blobs
                .fetch_into(&self.store, &layer.digest, &layer.media_type, layer.size)
                .await?;
            Ok(Some(layer.digest))
        })
    }

    fn inputs_for_step(&self, step: &str) -> Vec<KeyInputs> {
        self.by_step
            .get(step)
            .into_iter()
            .flatten()
            .filter_map(|&i| self.description.records[i].inputs.clone())
            .collect()
    }
}
