//! `--cache-to`: the records a build finished, as a description and the layer blobs its chains use, written
//! to a registry (an image manifest whose config is the description) or an OCI layout directory.

use std::collections::{BTreeSet, HashMap};

use kiln_cache::{Digest, SnapshotId, Store};
use kiln_exporter::archive::write_layout_entry;
use kiln_exporter::export::{effective_level, export_directory, export_layers, layer_media_type};
use kiln_image::media::{ANNOTATION_REF_NAME, MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST};
use kiln_image::stored::BlobRef;
use kiln_registry::{Reference, RegistryClient};
use kiln_solver::records::FinishedRecord;
use kiln_solver::source::LayerRef;
use serde_json::json;

use crate::Error;
use crate::description::{self, CacheMountContent, Description, Layer, Record};
use crate::spec::{CacheTo, Destination, Mode};

/// How many blobs go up at once.
const PARALLEL_UPLOADS: usize = 4;

/// What an export needs of the build.
pub struct ExportRequest<'a> {
    pub store: &'a Store,
    pub registry: &'a RegistryClient,
    /// Every step with a result, in the order they finished.
    pub records: &'a [FinishedRecord],
    /// Each platform's final filesystem: what `mode=min` keeps the records of.
    pub finals: &'a [Vec<LayerRef>],
    pub source_date_epoch: Option<u64>,
    /// The build's image names: repositories a registry export may mount blobs from.
    pub image_names: &'a [String],
    /// The ids of the cache mounts the build's steps use, exported with `cache-mounts=true`.
    pub cache_mounts: &'a [String],
}

/// What an export wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportSummary {
    pub records: usize,
    pub layers: usize,
}

/// The records `mode` keeps: all of them, or those whose filesystem is a bottom part of a final one (the
/// steps of the final stage, from its base image up).
pub fn select<'r>(
    mode: Mode,
    records: &'r [FinishedRecord],
    finals: &[Vec<LayerRef>],
) -> Vec<&'r FinishedRecord> {
    records
        .iter()
        .filter(|r| match mode {
            Mode::Max => true,
            Mode::Min => finals.iter().any(|f| f.starts_with(&r.layers)),
        })
        .collect()
}

/// Writes the cache `to` says (not `type=inline`, which goes into the image config: see
/// [`inline_description`]).
pub async fn export(to: &CacheTo, req: &ExportRequest<'_>) -> Result<ExportSummary, Error> {
    let chosen = select(to.mode, req.records, req.finals);
    let (description, blobs) = describe(to, req, &chosen).await?;
    let summary = ExportSummary {
        records: description.records.len(),
        layers: description.layers.len(),
    };
    let config = description.to_bytes();
    let config_ref = BlobRef {
        digest: Digest::of(&config),
        media_type: description::MEDIA_TYPE.to_string(),
        size: config.len() as u64,
    };
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_MANIFEST,
        "config": config_ref.to_json(),
        "layers": blobs.iter().map(BlobRef::to_json).collect::<Vec<_>>(),
    }))
    .unwrap_or_default();
    let manifest_ref = BlobRef {
        digest: Digest::of(&manifest),
        media_type: MEDIA_TYPE_OCI_MANIFEST.to_string(),
        size: manifest.len() as u64,
    };
    match &to.destination {
        Destination::Registry {
            reference,
            image_manifest,
        } => {
            let target = Reference::parse(reference)
                .map_err(|e| Error::Usage(format!("--cache-to ref={reference}: {e}")))?;
            let stored_config = req.store.put_bytes(&config)?;
            debug_assert_eq!(stored_config, config_ref.digest);
            let mut uploads: Vec<BlobRef> = blobs.clone();
            uploads.push(config_ref.clone());
            upload(req, &target, uploads).await?;
            if *image_manifest {
                req.registry
                    .push_manifest(&target, &manifest, MEDIA_TYPE_OCI_MANIFEST)
                    .await?;
            } else {
                let by_digest = target.with_digest(&manifest_ref.digest.to_string());
                req.registry
                    .push_manifest(&by_digest, &manifest, MEDIA_TYPE_OCI_MANIFEST)
                    .await?;
                let index = serde_json::to_vec(&json!({
                    "schemaVersion": 2,
                    "mediaType": MEDIA_TYPE_OCI_INDEX,
                    "manifests": [manifest_ref.to_json()],
                }))
                .unwrap_or_default();
                req.registry
                    .push_manifest(&target, &index, MEDIA_TYPE_OCI_INDEX)
                    .await?;
            }
        }
        Destination::Local { dest, tag } => {
            let mut descriptor = manifest_ref.to_json();
            descriptor["annotations"] = json!({ ANNOTATION_REF_NAME: tag });
            let stored: Vec<Digest> = blobs.iter().map(|b| b.digest).collect();
            let own = vec![(config_ref.digest, config), (manifest_ref.digest, manifest)];
            let (store, dest) = (req.store.clone(), dest.clone());
            tokio::task::spawn_blocking(move || {
                write_layout_entry(&store, &dest, descriptor, &stored, own, true)
            })
            .await
            .map_err(|e| Error::Usage(format!("writing the cache directory: {e}")))??;
        }
        Destination::Inline => {
            return Err(Error::Usage(
                "type=inline is written with the image, not on its own".to_string(),
            ));
        }
    }
    Ok(summary)
}

/// The description of `chosen` and the layer blobs it names, each snapshot exported (or found exported)
/// as `to` compresses, base image layers as they are.
async fn describe(
    to: &CacheTo,
    req: &ExportRequest<'_>,
    chosen: &[&FinishedRecord],
) -> Result<(Description, Vec<BlobRef>), Error> {
    let mut order: Vec<&LayerRef> = Vec::new();
    let mut index: HashMap<&SnapshotId, usize> = HashMap::new();
    for record in chosen {
        for layer in &record.layers {
            if !index.contains_key(&layer.snapshot) {
                index.insert(&layer.snapshot, order.len());
                order.push(layer);
            }
        }
    }
    let built: Vec<SnapshotId> = order
        .iter()
        .filter(|l| l.blob.is_none())
        .map(|l| l.snapshot.clone())
        .collect();
    let level = effective_level(to.compression, to.compression_level)?;
    let exported = {
        let (store, compression, epoch) = (req.store.clone(), to.compression, req.source_date_epoch);
        tokio::task::spawn_blocking(move || export_layers(&store, &built, compression, level, epoch))
            .await
            .map_err(|e| Error::Usage(format!("exporting cache layers: {e}")))??
    };
    let mut exported = exported.into_iter();
    let mut layers = Vec::with_capacity(order.len());
    let mut blobs = Vec::with_capacity(order.len());
    for layer in &order {
        let (entry, blob) = match &layer.blob {
            Some(base) => {
                let size = req.store.blob_size(&base.digest)?;
                let entry = Layer {
                    digest: Some(base.digest),
                    size: Some(size),
                    media_type: Some(base.media_type.clone()),
                    image_layer: None,
                    diff_id: Some(base.diff_id),
                    compression_level: None,
                    source_date_epoch: None,
                    base_manifest: Some(base.manifest),
                };
                let blob = BlobRef {
                    digest: base.digest,
                    media_type: base.media_type.clone(),
                    size,
                };
                (entry, blob)
            }
            None => {
                let Some(own) = exported.next() else {
                    return Err(Error::Usage(
                        "a cache layer went missing while exporting".to_string(),
                    ));
                };
                own_layer(&own, to, level, req.source_date_epoch)
            }
        };
        layers.push(entry);
        blobs.push(blob);
    }
    let mut records: Vec<Record> = chosen
        .iter()
        .map(|r| Record {
            key: r.key.clone(),
            chain: r.layers.iter().map(|l| index[&l.snapshot]).collect(),
            inputs: Some(r.inputs.clone()),
        })
        .collect();
    records.sort_by(|a, b| a.key.cmp(&b.key));
    let mut cache_mounts = Vec::new();
    if to.cache_mounts {
        for (id, own) in export_cache_mounts(req, to.compression, level).await? {
            cache_mounts.push(CacheMountContent {
                id,
                layer: layers.len(),
            });
            let (entry, blob) = own_layer(&own, to, level, None);
            layers.push(entry);
            blobs.push(blob);
        }
    }
    // A blob two layers share (the same content built twice) goes up once.
    let mut seen = BTreeSet::new();
    blobs.retain(|b| seen.insert(b.digest));
    Ok((
        Description {
            version: description::VERSION,
            layers,
            records,
            cache_mounts,
        },
        blobs,
    ))
}

/// A layer this store compressed, as a description entry and the blob to send.
fn own_layer(
    own: &kiln_exporter::export::Layer,
    to: &CacheTo,
    level: Option<i32>,
    source_date_epoch: Option<u64>,
) -> (Layer, BlobRef) {
    let media_type = layer_media_type(own.compression, to.oci_media_types).to_string();
    let entry = Layer {
        digest: Some(own.digest),
        size: Some(own.size),
        media_type: Some(media_type.clone()),
        image_layer: None,
        diff_id: Some(own.diff_id),
        compression_level: level,
        source_date_epoch,
        base_manifest: None,
    };
    let blob = BlobRef {
        digest: own.digest,
        media_type,
        size: own.size,
    };
    (entry, blob)
}

/// The contents of the build's cache mounts that exist in the store, each as a layer blob (a mount is
/// held alone while it is read, so no step changes it meanwhile).
async fn export_cache_mounts(
    req: &ExportRequest<'_>,
    compression: kiln_cache::Compression,
    level: Option<i32>,
) -> Result<Vec<(String, kiln_exporter::export::Layer)>, Error> {
    let (store, ids) = (req.store.clone(), req.cache_mounts.to_vec());
    tokio::task::spawn_blocking(move || -> Result<_, Error> {
        let mut exported = Vec::new();
        for id in ids {
            let Some(mount) = store.existing_cache_mount(&id)? else {
                continue;
            };
            let layer = export_directory(&store, &mount.path, compression, level)?;
            exported.push((id, layer));
        }
        Ok(exported)
    })
    .await
    .map_err(|e| Error::Usage(format!("exporting cache mounts: {e}")))?
}

/// Uploads what the registry lacks, mounting from the build's own repositories (and its base images')
/// where it can.
async fn upload(req: &ExportRequest<'_>, target: &Reference, blobs: Vec<BlobRef>) -> Result<(), Error> {
    let mut names: Vec<String> = req.image_names.to_vec();
    for record in req.records {
        for layer in &record.layers {
            if let Some(base) = &layer.blob {
                names.extend(
                    req.store
                        .images_by_digest(&base.manifest)?
                        .into_iter()
                        .map(|(n, _)| n),
                );
            }
        }
    }
    let mount_from = kiln_exporter::push::mount_repositories(names, target);
    let jobs: Vec<_> = blobs
        .into_iter()
        .map(|blob| {
            let store = req.store.clone();
            let registry = req.registry.clone();
            let target = target.clone();
            let mount_from = mount_from.clone();
            move |events| kiln_exporter::push::push_blob(store, registry, target, blob, mount_from, events)
        })
        .collect();
    kiln_image::parallel::run(jobs, PARALLEL_UPLOADS, |_| {}).await?;
    Ok(())
}

/// The inline description for one platform's image: the records of `finals` (the image's layers) with
/// chains that are counts of the image's own layers, so it holds no digest the image does not already
/// name. `None` when there is nothing to describe.
pub fn inline_description(records: &[FinishedRecord], finals: &[LayerRef]) -> Option<serde_json::Value> {
    let chosen = select(Mode::Min, records, std::slice::from_ref(&finals.to_vec()));
    if chosen.is_empty() {
        return None;
    }
    let layers = finals
        .iter()
        .enumerate()
        .map(|(i, l)| Layer {
            digest: None,
            size: None,
            media_type: None,
            image_layer: Some(i),
            diff_id: None,
            compression_level: None,
            source_date_epoch: None,
            base_manifest: l.blob.as_ref().map(|b| b.manifest),
        })
        .collect();
    let mut records: Vec<Record> = chosen
        .iter()
        .map(|r| Record {
            key: r.key.clone(),
            chain: (0..r.layers.len()).collect(),
            inputs: Some(r.inputs.clone()),
        })
        .collect();
    records.sort_by(|a, b| a.key.cmp(&b.key));
    serde_json::to_value(Description {
        version: description::VERSION,
        layers,
        records,
        cache_mounts: Vec::new(),
    })
    .ok()
}
