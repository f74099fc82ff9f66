//! Images from build results: a config (docker's field names and omit-empty rules, as BuildKit writes it), a
//! manifest, and for several platforms an index, stored as canonical JSON so their digests are a function of
//! the build alone (given SOURCE_DATE_EPOCH).
//!
//! A built image is the base image's layers, reused as they are (only their media type follows
//! `oci_mediatypes`, unless `force_compression` asks for them to be recompressed; uncompressed ones, which
//! the store keeps of the images it built, are compressed when the output compresses), followed by one
//! layer per snapshot of the build that changed something. History: the base image's entries as they are,
//! then the build's, paired in order with the build's layers. A step that changed no file still has its (empty
//! tar) layer, as BuildKit writes it (a `WORKDIR` of an existing directory gives the well-known 32-byte gzip
//! layer); only instructions that never make a layer (ENV, CMD, ...) are `empty_layer`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};

use kiln_cache::{Digest, LeaseResource, SnapshotId, Store};
use kiln_image::config;
use kiln_image::media::{MEDIA_TYPE_DOCKER_CONFIG, MEDIA_TYPE_OCI_CONFIG};
use kiln_llb::Platform;
use kiln_llb::image::{History, ImageInfo};
use kiln_registry::{
    MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST_LIST, MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_MANIFEST, Reference,
};
use serde_json::{Map, Value, json};

use crate::canonical;
use crate::error::{Error, Result};
use crate::export::{Compression, Layer, convert_layer, export_layers, layer_media_type};
use kiln_image::stored::{self, BlobRef};

/// What BuildKit calls history entries it adds for layers the frontend's history does not account for.
const EXTRA_LAYER_COMMENT: &str = "buildkit.exporter.image.v0";

/// A layer of the base image, from its manifest (digest, media type, size) and config (diff_id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseLayer {
    pub digest: Digest,
    pub diff_id: Digest,
    pub media_type: String,
    pub size: u64,
}

/// What a build takes from its base image as it is: layers and history. (Its config fields reach the image
/// through [`ImageInfo`], where the frontend merged them.)
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BaseImage {
    pub layers: Vec<BaseLayer>,
    /// The base config's `history` entries, kept verbatim (their `created` times included).
    pub history: Vec<Value>,
}

impl BaseImage {
    /// Reads the base image with this manifest from the store.
    pub fn from_store(store: &Store, manifest: &Digest) -> Result<BaseImage> {
        let what = format!("base image manifest {manifest}");
        let parts = stored::parse_manifest(&store.read_blob(manifest)?, &what)?;
        let config_bytes = store.read_blob(&parts.config.digest)?;
        let config_what = format!("base image config {}", parts.config.digest);
        let config = stored::parse_config(&config_bytes, &config_what)?;
        stored::check_layers_match(&parts, &config, &what)?;
        let raw: Value =
            serde_json::from_slice(&config_bytes).map_err(|e| Error::invalid(&config_what, e.to_string()))?;
        let history = match raw.get("history") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(entries)) => entries.clone(),
            Some(_) => return Err(Error::invalid(config_what, "history is not a list")),
        };
        let layers = parts
            .layers
            .into_iter()
            .zip(config.diff_ids)
            .map(|(l, diff_id)| BaseLayer {
                digest: l.digest,
                diff_id,
                media_type: l.media_type,
                size: l.size,
            })
            .collect();
        Ok(BaseImage { layers, history })
    }
}

/// The `type=image|oci|docker` output options that shape an image (buildx names in the field docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageOptions {
    /// `compression=`. [`Compression::None`] for an image that only goes into the store: its layers are
    /// compressed when a push or an export ships them.
    pub compression: Compression,
    /// `compression-level=`; `None` for the compressor's default.
    pub level: Option<i32>,
    /// `force-compression=true`: recompress base layers that use another compression.
    pub force_compression: bool,
    /// `oci-mediatypes=`. zstd layers and annotations need OCI types and turn this on (as BuildKit does).
    pub oci_mediatypes: bool,
    /// Sets `created` of the config and of the build's history entries, and clamps file mtimes in the
    /// build's layers.
    pub source_date_epoch: Option<u64>,
    /// `annotation.KEY=VALUE`: manifest annotations.
    pub annotations: BTreeMap<String, String>,
    /// `--label`: added to (and overriding) the labels of the image config.
    pub labels: BTreeMap<String, String>,
    /// More top-level fields of the image config (an inline build cache).
    pub config_extra: BTreeMap<String, Value>,
}

impl Default for ImageOptions {
    fn default() -> Self {
        ImageOptions {
            compression: Compression::Gzip,
            level: None,
            force_compression: false,
            oci_mediatypes: true,
            source_date_epoch: None,
            annotations: BTreeMap::new(),
            labels: BTreeMap::new(),
            config_extra: BTreeMap::new(),
        }
    }
}

/// An image manifest and config in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltImage {
    pub manifest_digest: Digest,
    pub manifest: Vec<u8>,
    pub media_type: String,
    pub config_digest: Digest,
    pub config: Vec<u8>,
    /// The manifest's layers, bottom first.
    pub layers: Vec<BlobRef>,
    pub platform: Platform,
}

/// An image index (or docker manifest list) in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltIndex {
    pub digest: Digest,
    pub index: Vec<u8>,
    pub media_type: String,
    pub platforms: Vec<Platform>,
}

/// What [`tag`] can name.
#[derive(Clone, Copy, Debug)]
pub enum Built<'a> {
    Image(&'a BuiltImage),
    Index(&'a BuiltIndex),
}

impl<'a> From<&'a BuiltImage> for Built<'a> {
    fn from(image: &'a BuiltImage) -> Self {
        Built::Image(image)
    }
}

impl<'a> From<&'a BuiltIndex> for Built<'a> {
    fn from(index: &'a BuiltIndex) -> Self {
        Built::Index(index)
    }
}

/// Exports the snapshots (bottom first) as layers on top of the base image's and writes the config and
/// manifest into the store. Everything written is added to the store handle's lease.
pub fn build_image(
    store: &Store,
    base: &BaseImage,
    snapshots: &[SnapshotId],
    image: &ImageInfo,
    platform: &Platform,
    opts: &ImageOptions,
) -> Result<BuiltImage> {
    let oci = oci_types(opts.oci_mediatypes, opts.compression, &opts.annotations);
    let created = match opts.source_date_epoch {
        Some(epoch) => rfc3339(epoch, 0)?,
        None => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_err(|e| Error::invalid("the system clock", e.to_string()))?;
            rfc3339(now.as_secs(), now.subsec_nanos())?
        }
    };
    let (base_layers, own_layers) = rayon::join(
        || {
            base.layers
                .iter()
                .map(|l| base_layer(store, l, opts, oci))
                .collect::<Result<Vec<_>>>()
        },
        || {
            export_layers(
                store,
                snapshots,
                opts.compression,
                opts.level,
                opts.source_date_epoch,
            )
        },
    );
    let (base_layers, own_layers) = (base_layers?, own_layers?);
    let (own_history, own_layers) = pair_history(&image.history, own_layers, &created);

    let mut layers: Vec<BlobRef> = base_layers.iter().map(|(r, _)| r.clone()).collect();
    let mut diff_ids: Vec<Digest> = base_layers.iter().map(|(_, d)| *d).collect();
    for l in &own_layers {
        layers.push(BlobRef {
            digest: l.digest,
            media_type: l.media_type(oci).to_owned(),
            size: l.size,
        });
        diff_ids.push(l.diff_id);
    }
    let mut history = base.history.clone();
    history.extend(own_history);

    let mut config_json = config::to_json(image, platform, &opts.labels, &created, &diff_ids, history);
    if let Value::Object(fields) = &mut config_json {
        fields.extend(opts.config_extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    let config = canonical::to_vec(&config_json);
    let config_digest = store.put_bytes(&config)?;
    let (media_type, config_media_type) = if oci {
        (MEDIA_TYPE_OCI_MANIFEST, MEDIA_TYPE_OCI_CONFIG)
    } else {
        (MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_DOCKER_CONFIG)
    };
    let mut manifest = Map::new();
    manifest.insert("schemaVersion".into(), json!(2));
    manifest.insert("mediaType".into(), json!(media_type));
    manifest.insert(
        "config".into(),
        BlobRef {
            digest: config_digest,
            media_type: config_media_type.to_owned(),
            size: config.len() as u64,
        }
        .to_json(),
    );
    manifest.insert(
        "layers".into(),
        Value::Array(layers.iter().map(BlobRef::to_json).collect()),
    );
    if !opts.annotations.is_empty() {
        manifest.insert("annotations".into(), json!(opts.annotations));
    }
    let manifest = canonical::to_vec(&Value::Object(manifest));
    let manifest_digest = store.put_bytes(&manifest)?;
    Ok(BuiltImage {
        manifest_digest,
        manifest,
        media_type: media_type.to_owned(),
        config_digest,
        config,
        layers,
        platform: platform.clone(),
    })
}

/// Writes an index over per-platform images (an OCI index, or a docker manifest list when
/// `oci_mediatypes` is off and nothing needs OCI types).
pub fn build_index(
    store: &Store,
    images: &[BuiltImage],
    oci_mediatypes: bool,
    annotations: &BTreeMap<String, String>,
) -> Result<BuiltIndex> {
    if images.is_empty() {
        return Err(Error::invalid("image index", "no platform images to index"));
    }
    let mut seen = BTreeSet::new();
    for image in images {
        if !seen.insert(&image.platform) {
            return Err(Error::invalid(
                "image index",
                format!("platform {} is given twice", image.platform),
            ));
        }
    }
    let children_oci = images.iter().any(|i| i.media_type == MEDIA_TYPE_OCI_MANIFEST);
    let oci = children_oci || oci_types(oci_mediatypes, Compression::None, annotations);
    let media_type = if oci {
        MEDIA_TYPE_OCI_INDEX
    } else {
        MEDIA_TYPE_DOCKER_MANIFEST_LIST
    };
    let manifests: Vec<Value> = images
        .iter()
        .map(|image| {
            let mut d = BlobRef {
                digest: image.manifest_digest,
                media_type: image.media_type.clone(),
                size: image.manifest.len() as u64,
            }
            .to_json();
            d["platform"] = config::platform_json(&image.platform);
            d
        })
        .collect();
    let mut index = Map::new();
    index.insert("schemaVersion".into(), json!(2));
    index.insert("mediaType".into(), json!(media_type));
    index.insert("manifests".into(), Value::Array(manifests));
    if !annotations.is_empty() {
        index.insert("annotations".into(), json!(annotations));
    }
    let index = canonical::to_vec(&Value::Object(index));
    let digest = store.put_bytes(&index)?;
    Ok(BuiltIndex {
        digest,
        index,
        media_type: media_type.to_owned(),
        platforms: images.iter().map(|i| i.platform.clone()).collect(),
    })
}

/// Names a built image or index in the store, under the name docker would give it (`app:dev` is
/// `docker.io/library/app:dev`, which `kiln images` shows as `app` / `dev`). Returns that full name.
pub fn tag(store: &Store, name: &str, built: Built<'_>) -> Result<String> {
    let reference = Reference::parse(name)?;
    if reference.digest().is_some() {
        return Err(Error::invalid(
            format!("image name {name:?}"),
            "a tag cannot pin a digest; give name[:tag]",
        ));
    }
    let full = stored::image_name(&reference);
    let (digest, media_type, platforms) = match built {
        Built::Image(i) => (
            i.manifest_digest,
            &i.media_type,
            std::slice::from_ref(&i.platform),
        ),
        Built::Index(i) => (i.digest, &i.media_type, i.platforms.as_slice()),
    };
    stored::record_image(store, &full, digest, media_type, platforms)?;
    Ok(full)
}

/// Whether to use OCI media types: as asked, unless something docker's types cannot express is used.
fn oci_types(asked: bool, compression: Compression, annotations: &BTreeMap<String, String>) -> bool {
    if asked {
        return true;
    }
    let needs = if compression == Compression::Zstd {
        "zstd compression"
    } else if !annotations.is_empty() {
        "annotations"
    } else {
        return false;
    };
    tracing::warn!("{needs} need OCI media types; using them although oci-mediatypes=false");
    true
}

/// A base layer's descriptor in the new manifest, and its diff_id.
fn base_layer(store: &Store, layer: &BaseLayer, opts: &ImageOptions, oci: bool) -> Result<(BlobRef, Digest)> {
    // Non-distributable (foreign) layers are not in the store and keep their special type.
    if layer.media_type.contains("foreign") || layer.media_type.contains("nondistributable") {
        let r = BlobRef {
            digest: layer.digest,
            media_type: layer.media_type.clone(),
            size: layer.size,
        };
        return Ok((r, layer.diff_id));
    }
    let compression = Compression::from_media_type(&layer.media_type)?;
    // An uncompressed base layer is most likely one the store has not compressed yet (it keeps the layers
    // of images it built uncompressed until something ships them): an output that compresses does so now.
    let recompress = opts.force_compression || compression == Compression::None;
    if recompress && compression != opts.compression {
        let converted: Layer =
            convert_layer(store, &layer.digest, &layer.diff_id, opts.compression, opts.level)?;
        let r = BlobRef {
            digest: converted.digest,
            media_type: converted.media_type(oci).to_owned(),
            size: converted.size,
        };
        return Ok((r, layer.diff_id));
    }
    if let Some(lease) = store.lease() {
        store.lease_add(lease, LeaseResource::Blob(layer.digest))?;
    }
    if !store.has_blob(&layer.digest)? {
        return Err(Error::invalid(
            format!("base image layer {}", layer.digest),
            "not in the store (pull the base image again)",
        ));
    }
    let r = BlobRef {
        digest: layer.digest,
        media_type: layer_media_type(compression, oci).to_owned(),
        size: layer.size,
    };
    Ok((r, layer.diff_id))
}

/// The build's history entries as JSON, and the layers they keep: each entry that made a layer takes the
/// next one, empty or not (as BuildKit); a missing one makes its entry `empty_layer`. Layers beyond what the
/// history accounts for get entries of their own, as BuildKit gives them.
fn pair_history(history: &[History], layers: Vec<Layer>, created: &str) -> (Vec<Value>, Vec<Layer>) {
    let accounted = history.iter().filter(|h| !h.empty_layer).count();
    let extra = layers.len().saturating_sub(accounted);
    let extra_entry = History {
        created_by: String::new(),
        comment: EXTRA_LAYER_COMMENT.to_owned(),
        empty_layer: false,
    };
    let mut layers = layers.into_iter();
    let mut kept = Vec::new();
    let mut out = Vec::new();
    for h in history.iter().chain(std::iter::repeat_n(&extra_entry, extra)) {
        let mut empty_layer = h.empty_layer;
        if !empty_layer {
            match layers.next() {
                Some(layer) => kept.push(layer),
                None => empty_layer = true,
            }
        }
        out.push(config::history_entry(h, created, empty_layer));
    }
    (out, kept)
}

/// RFC 3339 in UTC with as many fraction digits as needed (none for whole seconds).
fn rfc3339(secs: u64, nanos: u32) -> Result<String> {
    let time = i64::try_from(secs)
        .ok()
        .and_then(|s| chrono::DateTime::from_timestamp(s, nanos))
        .ok_or_else(|| Error::invalid(format!("timestamp {secs}"), "out of range for a date"))?;
    Ok(time.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0, 0).expect("time"), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000, 0).expect("time"), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(1, 500_000_000).expect("time"), "1970-01-01T00:00:01.500Z");
        assert!(rfc3339(u64::MAX, 0).is_err());
    }

    fn layer(n: u8, empty: bool) -> Layer {
        Layer {
            diff_id: Digest::of(&[n]),
            digest: Digest::of(&[n, n]),
            size: 1,
            compression: Compression::Gzip,
            empty,
        }
    }

    fn h(created_by: &str, empty_layer: bool) -> History {
        History {
            created_by: created_by.into(),
            comment: "buildkit.dockerfile.v0".into(),
            empty_layer,
        }
    }

    #[test]
    fn history_pairs_with_layers_and_keeps_empty_ones() {
        let history = [h("ENV A=1", true), h("RUN true", false), h("COPY a /", false)];
        let (out, kept) = pair_history(&history, vec![layer(1, true), layer(2, false)], "T");
        assert_eq!(kept, vec![layer(1, true), layer(2, false)]);
        let empties: Vec<bool> = out.iter().map(|e| e.get("empty_layer").is_some()).collect();
        assert_eq!(empties, [true, false, false]);
        assert_eq!(out[0]["created"], "T");

        // More layers than history: extra entries; fewer: the rest are empty.
        let (out, kept) = pair_history(&[], vec![layer(1, false)], "T");
        assert_eq!((out.len(), kept.len()), (1, 1));
        assert_eq!(out[0]["comment"], EXTRA_LAYER_COMMENT);
        let (out, kept) = pair_history(&[h("RUN x", false)], vec![], "T");
        assert_eq!((out[0]["empty_layer"].clone(), kept.len()), (json!(true), 0));
    }
}
