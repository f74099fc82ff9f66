//! The cache description: what `--cache-to` writes and `--cache-from` reads, version 1. The format is
//! documented for other tools in `docs/cache-format.md`; this module is its one implementation.

use kiln_cache::Digest;
use kiln_solver::records::KeyInputs;
use serde::{Deserialize, Serialize};

/// The media type of a description, as the config of a cache manifest.
pub const MEDIA_TYPE: &str = "application/vnd.kiln.cache.v1+json";
/// The key of an inline description in an image config.
pub const INLINE_KEY: &str = "kiln.cache.v1";
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Description {
    pub version: u32,
    /// Every layer some record's chain uses, once.
    #[serde(default)]
    pub layers: Vec<Layer>,
    #[serde(default)]
    pub records: Vec<Record>,
    /// Cache mount contents (`cache-mounts=true`), each a layer of `layers` that no record's chain uses.
    #[serde(default, rename = "cacheMounts", skip_serializing_if = "Vec::is_empty")]
    pub cache_mounts: Vec<CacheMountContent>,
}

/// The contents of one `RUN --mount=type=cache` directory, as a layer whose tar holds the directory's
/// entries relative to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheMountContent {
    /// The mount's id (`id=`, or its target path when none is given).
    pub id: String,
    /// Its layer, as an index into `layers`.
    pub layer: usize,
}

/// A layer blob, as a descriptor plus what an importer needs to use it without reading it first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Layer {
    /// The blob's digest, size and media type. In an inline description these are absent and `imageLayer`
    /// says which layer of the image carrying it the entry is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_layer: Option<usize>,
    /// The digest of the uncompressed tar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff_id: Option<Digest>,
    /// The level it was compressed at, so an export with the same settings reuses the blob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression_level: Option<i32>,
    /// The SOURCE_DATE_EPOCH its mtimes were clamped to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_date_epoch: Option<u64>,
    /// For a layer of a base image: that image's manifest (whose config has the layer's history).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_manifest: Option<Digest>,
}

/// One cache record: a key and the filesystem its step produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The solver's cache key (`kiln-cache-v2:<blake3 hex>`).
    pub key: String,
    /// The result's layers, bottom first, as indexes into `layers`.
    pub chain: Vec<usize>,
    /// What the key was made of, for explaining misses.
    #[serde(default)]
    pub inputs: Option<KeyInputs>,
}

impl Description {
    /// Reads and checks a description: its version, and that every chain names layers it has.
    pub fn parse(bytes: &[u8]) -> Result<Description, String> {
        #[derive(Deserialize)]
        struct Versioned {
            version: Option<u32>,
        }
        let versioned: Versioned = serde_json::from_slice(bytes)
            .map_err(|e| format!("the cache description is not valid JSON: {e}"))?;
        match versioned.version {
            Some(VERSION) => {}
            Some(other) => {
                return Err(format!(
                    "the cache description has version {other}; this kiln reads version {VERSION}"
                ));
            }
            None => return Err("the cache description has no version".to_string()),
        }
        let description: Description =
            serde_json::from_slice(bytes).map_err(|e| format!("the cache description is malformed: {e}"))?;
        for record in &description.records {
            if let Some(bad) = record.chain.iter().find(|&&i| i >= description.layers.len()) {
                return Err(format!(
                    "cache record {} names layer {bad}, but the description has {}",
                    record.key,
                    description.layers.len()
                ));
            }
        }
        if let Some(bad) = description
            .cache_mounts
            .iter()
            .find(|m| m.layer >= description.layers.len())
        {
            return Err(format!(
                "cache mount {:?} names layer {}, but the description has {}",
                bad.id,
                bad.layer,
                description.layers.len()
            ));
        }
        Ok(description)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // Plain data with string keys: serialising cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer() -> Layer {
        Layer {
            digest: Some(Digest::of(b"layer")),
            size: Some(5),
            media_type: Some("application/vnd.oci.image.layer.v1.tar+gzip".to_string()),
            image_layer: None,
            diff_id: Some(Digest::of(b"tar")),
            compression_level: Some(6),
            source_date_epoch: None,
            base_manifest: None,
        }
    }

    #[test]
    fn a_description_reads_back_as_written() {
        let description = Description {
            version: VERSION,
            layers: vec![layer(), layer()],
            records: vec![Record {
                key: "kiln-cache-v2:ab".to_string(),
                chain: vec![0],
                inputs: None,
            }],
            cache_mounts: vec![CacheMountContent {
                id: "/root/.cache".to_string(),
                layer: 1,
            }],
        };
        let bytes = description.to_bytes();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains("\"cacheMounts\""), "{text}");
        assert!(text.contains("\"diffId\""), "{text}");
        assert_eq!(Description::parse(&bytes).unwrap(), description);
    }

    #[test]
    fn other_versions_and_dangling_indexes_are_refused() {
        let err = Description::parse(br#"{"version": 2, "layers": [], "records": []}"#).unwrap_err();
        assert!(err.contains("version 2"), "{err}");
        let err = Description::parse(br#"{"layers": []}"#).unwrap_err();
        assert!(err.contains("no version"), "{err}");
        let err = Description::parse(b"not json").unwrap_err();
        assert!(err.contains("not valid JSON"), "{err}");
        let err =
            Description::parse(br#"{"version": 1, "records": [{"key": "k", "chain": [0]}]}"#).unwrap_err();
        assert!(err.contains("names layer 0"), "{err}");
        let err =
            Description::parse(br#"{"version": 1, "cacheMounts": [{"id": "m", "layer": 3}]}"#).unwrap_err();
        assert!(err.contains("cache mount \"m\""), "{err}");
    }
}
