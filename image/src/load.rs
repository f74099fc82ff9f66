//! `kiln load`: docker archives (`manifest.json`, layer tars, legacy or docker 25+ layout), OCI archives
//! (`oci-layout`, `index.json`, `blobs/`) and OCI layout directories, each verified against its digests
//! (and every layer against its config's diff_id) before an image is named.
//!
//! A tar is read once, front to back: every file goes into the store as a blob as it passes (checked
//! against its name when it is `blobs/sha256/<hex>`), the few small metadata files stay in memory, and the
//! archive is interpreted afterwards from the store. That works for pipes (`kiln load < file`) too.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Component, Path};

use crate::media::{self, ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME};
use crate::stored::{self, BlobRef, StoredImage};
use kiln_cache::{BlobMeta, Compression, Digest, Store};
use kiln_registry::{MEDIA_TYPE_OCI_MANIFEST, Platform, Reference};
use serde::Deserialize;

use crate::{Error, LeaseGuard, Result};

/// Metadata files larger than this are refused rather than read into memory.
const MAX_METADATA: u64 = 16 << 20;
const METADATA_FILES: &[&str] = &["manifest.json", "index.json", "oci-layout", "repositories"];
const MEDIA_TYPE_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedImage {
    /// The names it was recorded under; empty when the archive named none (it is then recorded by ID).
    pub names: Vec<String>,
    /// docker's image ID (see [`StoredImage::id`]).
    pub id: Digest,
    /// The index or manifest the names point at.
    pub digest: Digest,
}

/// Loads the archive or OCI layout directory at `path`.
pub fn load_archive(store: &Store, path: &Path) -> Result<Vec<LoadedImage>> {
    let what = format!("load {}", path.display());
    let lease = LeaseGuard::new(store, &what)?;
    let leased = lease.store();
    let meta = std::fs::metadata(path).map_err(Error::io(&what))?;
    let archive = if meta.is_dir() {
        ingest_dir(&leased, path, &what)?
    } else {
        let file = File::open(path).map_err(Error::io(&what))?;
        ingest_tar(&leased, file, &what)?
    };
    archive.record(&leased, &what)
}

/// Loads an archive read from `reader` (standard input); `what` names it in errors.
pub fn load_archive_from(store: &Store, reader: impl Read + Send, what: &str) -> Result<Vec<LoadedImage>> {
    let what = format!("load {what}");
    let lease = LeaseGuard::new(store, &what)?;
    let leased = lease.store();
    let archive = ingest_tar(&leased, reader, &what)?;
    archive.record(&leased, &what)
}

/// An archive whose blobs are in the store.
struct Ingested {
    /// `manifest.json`, `index.json` and friends.
    metadata: BTreeMap<String, Vec<u8>>,
    /// Archive path → the blob its content went into.
    files: BTreeMap<String, BlobRef>,
    /// Links (legacy docker archives link repeated layers): path → target path.
    links: BTreeMap<String, String>,
}

fn ingest_tar(store: &Store, reader: impl Read + Send, what: &str) -> Result<Ingested> {
    let mut raw = BufReader::new(reader);
    let head = raw.fill_buf().map_err(Error::io(what))?;
    if head.is_empty() {
        return Err(Error::invalid(what, "the archive is empty"));
    }
    let (_, decompressed) = kiln_fsutil::compress::decompress(raw).map_err(Error::io(what))?;
    let mut archive = tar::Archive::new(decompressed);
    let mut out = Ingested {
        metadata: BTreeMap::new(),
        files: BTreeMap::new(),
        links: BTreeMap::new(),
    };
    let tar_error = |e: io::Error| Error::invalid(what, format!("not a readable tar archive: {e}"));
    for entry in archive.entries().map_err(tar_error)? {
        let mut entry = entry.map_err(tar_error)?;
        let Some(path) = normalize(&entry.path().map_err(tar_error)?) else {
            continue;
        };
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            let target = entry
                .link_name()
                .map_err(tar_error)?
                .ok_or_else(|| Error::invalid(what, format!("link {path} has no target")))?;
            let target = if kind.is_symlink() {
                Path::new(&path).parent().unwrap_or(Path::new("")).join(target)
            } else {
                target.into_owned()
            };
            if let Some(target) = normalize(&target) {
                out.links.insert(path, target);
            }
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        if METADATA_FILES.contains(&path.as_str()) {
            if entry.size() > MAX_METADATA {
                return Err(Error::invalid(
                    what,
                    format!("{path} is larger than {MAX_METADATA} bytes"),
                ));
            }
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).map_err(tar_error)?;
            out.metadata.insert(path, bytes);
            continue;
        }
        // Legacy docker archives repeat each layer's v1 metadata beside it; nothing reads it.
        if path.ends_with("/json") || path.ends_with("/VERSION") {
            continue;
        }
        let expected = blob_path_digest(&path);
        let blob = store_blob(store, &mut entry, expected.as_ref(), &format!("{what}: {path}"))?;
        out.files.insert(path, blob);
    }
    Ok(out)
}

/// The digest a `blobs/sha256/<hex>` path promises.
fn blob_path_digest(path: &str) -> Option<Digest> {
    Digest::from_hex(path.strip_prefix("blobs/sha256/")?).ok()
}

fn store_blob(
    store: &Store,
    content: &mut impl Read,
    expected: Option<&Digest>,
    what: &str,
) -> Result<BlobRef> {
    let mut writer = store.blob_writer().map_err(Error::store(what))?;
    io::copy(content, &mut writer).map_err(Error::io(what))?;
    let info = writer.commit(expected).map_err(Error::store(what))?;
    Ok(BlobRef {
        digest: info.digest,
        media_type: String::new(),
        size: info.size,
    })
}

/// A relative archive path without `.` components or a trailing slash; `None` for the root or a path that
/// climbs out of it.
fn normalize(path: &Path) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Copies what the layout's `index.json` refers to into the store (the directory may hold other blobs).
fn ingest_dir(store: &Store, dir: &Path, what: &str) -> Result<Ingested> {
    let mut out = Ingested {
        metadata: BTreeMap::new(),
        files: BTreeMap::new(),
        links: BTreeMap::new(),
    };
    for name in ["index.json", "oci-layout"] {
        match std::fs::read(dir.join(name)) {
            Ok(bytes) => {
                out.metadata.insert(name.to_owned(), bytes);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("{what}: read {name}"))(e)),
        }
    }
    let index = out
        .metadata
        .get("index.json")
        .ok_or_else(|| Error::invalid(what, "not an OCI layout: there is no index.json"))?;
    let mut pending: Vec<BlobRef> = stored::parse_index(index, &format!("{what}: index.json"))?
        .into_iter()
        .map(|e| e.manifest)
        .collect();
    while let Some(blob) = pending.pop() {
        let path = format!("blobs/sha256/{}", blob.digest.hex());
        if out.files.contains_key(&path) {
            continue;
        }
        let mut file = match File::open(dir.join(&path)) {
            Ok(f) => f,
            // Reported when the image that needs it is recorded; an index may list platforms not included.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(format!("{what}: open {path}"))(e)),
        };
        let copied = store_blob(store, &mut file, Some(&blob.digest), &format!("{what}: {path}"))?;
        if media::is_index(&blob.media_type) || media::is_manifest(&blob.media_type) {
            let bytes = store.read_blob(&blob.digest).map_err(Error::store(what))?;
            let label = format!("{what}: {path}");
            if media::is_index(&blob.media_type) {
                pending.extend(
                    stored::parse_index(&bytes, &label)?
                        .into_iter()
                        .map(|e| e.manifest),
                );
            } else {
                let parts = stored::parse_manifest(&bytes, &label)?;
                pending.push(parts.config);
                pending.extend(parts.layers);
            }
        }
        out.files.insert(path, copied);
    }
    Ok(out)
}

/// One image of docker's `manifest.json`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

impl Ingested {
    fn record(&self, store: &Store, what: &str) -> Result<Vec<LoadedImage>> {
        if self.metadata.contains_key("index.json") {
            self.record_oci(store, what)
        } else if let Some(manifest) = self.metadata.get("manifest.json") {
            self.record_docker(store, manifest, what)
        } else {
            Err(Error::invalid(
                what,
                "neither a docker archive (no manifest.json) nor an OCI layout (no index.json)",
            ))
        }
    }

    /// The blob at an archive path, following links.
    fn blob_at(&self, path: &str, what: &str) -> Result<&BlobRef> {
        let mut path = normalize(Path::new(path)).unwrap_or_default();
        for _ in 0..16 {
            if let Some(blob) = self.files.get(&path) {
                return Ok(blob);
            }
            match self.links.get(&path) {
                Some(target) => path = target.clone(),
                None => break,
            }
        }
        Err(Error::invalid(what, format!("{path} is not in the archive")))
    }

    fn record_oci(&self, store: &Store, what: &str) -> Result<Vec<LoadedImage>> {
        let index = self
            .metadata
            .get("index.json")
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut loaded = Vec::new();
        for entry in stored::parse_index(index, &format!("{what}: index.json"))? {
            let top = &entry.manifest;
            if !media::is_index(&top.media_type) && !media::is_manifest(&top.media_type) {
                tracing::warn!(digest = %top.digest, media_type = top.media_type, "{what}: skipping an entry that is not an image");
                continue;
            }
            if !store.has_blob(&top.digest).map_err(Error::store(what))? {
                return Err(Error::invalid(
                    what,
                    format!("{} {} is not in the archive", top.media_type, top.digest),
                ));
            }
            let record = kiln_cache::ImageRecord {
                digest: top.digest,
                media_type: top.media_type.clone(),
                platforms: Vec::new(),
                created: stored::now_secs(),
            };
            let image =
                StoredImage::read(store, "", record).map_err(|e| Error::invalid(what, e.to_string()))?;
            let expected = if media::is_index(&top.media_type) {
                None
            } else {
                Some(1)
            };
            if image.manifests.is_empty() || expected.is_some_and(|n| image.manifests.len() != n) {
                return Err(Error::invalid(
                    what,
                    format!(
                        "image {}: its config or layers are not in the archive",
                        top.digest
                    ),
                ));
            }
            for m in &image.manifests {
                verify_layers(store, &m.layers, &m.diff_ids, what)?;
            }
            let names = oci_name(&entry.annotations).into_iter().collect();
            loaded.push(record_loaded(store, &image, names, what)?);
        }
        Ok(loaded)
    }

    fn record_docker(&self, store: &Store, manifest: &[u8], what: &str) -> Result<Vec<LoadedImage>> {
        let images: Vec<DockerManifest> = serde_json::from_slice(manifest)
            .map_err(|e| Error::invalid(what, format!("manifest.json: {e}")))?;
        let mut loaded = Vec::new();
        for image in images {
            let config = self.blob_at(&image.config, what)?.clone();
            let config_bytes = store.read_blob(&config.digest).map_err(Error::store(what))?;
            let summary = stored::parse_config(&config_bytes, &format!("{what}: {}", image.config))?;
            if summary.diff_ids.len() != image.layers.len() {
                return Err(Error::invalid(
                    what,
                    format!(
                        "{} lists {} layers but its config has {} diff_ids",
                        image.config,
                        image.layers.len(),
                        summary.diff_ids.len()
                    ),
                ));
            }
            let mut layers = Vec::new();
            for path in &image.layers {
                let blob = self.blob_at(path, what)?;
                let compression = detect(store, &blob.digest, what)?;
                layers.push(BlobRef {
                    media_type: media::layer(compression, true).to_owned(),
                    ..blob.clone()
                });
            }
            verify_layers(store, &layers, &summary.diff_ids, what)?;
            // docker archives have no manifest; an OCI one is made (deterministically, so loading the same
            // archive twice gives the same image).
            let manifest = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": MEDIA_TYPE_OCI_MANIFEST,
                "config": BlobRef { media_type: MEDIA_TYPE_OCI_CONFIG.to_owned(), ..config }.to_json(),
                "layers": layers.iter().map(BlobRef::to_json).collect::<Vec<_>>(),
            });
            let bytes = serde_json::to_vec(&manifest).map_err(|e| Error::invalid(what, e.to_string()))?;
            let digest = store.put_bytes(&bytes).map_err(Error::store(what))?;
            let mut names = Vec::new();
            for tag in image.repo_tags.unwrap_or_default() {
                let reference = Reference::parse(&tag).map_err(|e| Error::invalid(what, e.to_string()))?;
                names.push(stored::image_name(&reference));
            }
            let record = kiln_cache::ImageRecord {
                digest,
                media_type: MEDIA_TYPE_OCI_MANIFEST.to_owned(),
                platforms: Vec::new(),
                created: stored::now_secs(),
            };
            let stored_image = StoredImage::read(store, "", record)?;
            loaded.push(record_loaded(store, &stored_image, names, what)?);
        }
        Ok(loaded)
    }
}

/// The full name an OCI index entry gives its image. containerd's annotation holds one; `ref.name` often
/// holds only a tag (`latest`), which names no image on its own, so it counts only if it has a repository.
fn oci_name(annotations: &BTreeMap<String, String>) -> Option<String> {
    let full = |s: &String| {
        let looks_full = s.contains('/') || s.contains(':') || s.contains('@');
        looks_full
            .then(|| Reference::parse(s).ok())
            .flatten()
            .map(|r| stored::image_name(&r))
    };
    annotations
        .get(ANNOTATION_IMAGE_NAME)
        .and_then(full)
        .or_else(|| annotations.get(ANNOTATION_REF_NAME).and_then(full))
}

/// Checks that each layer is what the config says (its uncompressed content hashes to the diff_id) and
/// records that in the blob's metadata.
fn verify_layers(store: &Store, layers: &[BlobRef], diff_ids: &[Digest], what: &str) -> Result<()> {
    for (layer, diff_id) in layers.iter().zip(diff_ids) {
        let context = format!("{what}: layer {}", layer.digest);
        let compression = Compression::from_media_type(&layer.media_type)
            .map_err(|e| Error::invalid(&context, e.to_string()))?;
        let (actual, _) = store
            .layer_diff_id(&layer.digest)
            .map_err(Error::store(&context))?;
        if actual != *diff_id {
            return Err(Error::invalid(
                context,
                format!("its content is {actual}, but the config says {diff_id}"),
            ));
        }
        let meta = BlobMeta {
            media_type: Some(layer.media_type.clone()),
            diff_id: Some(*diff_id),
            compression: Some(compression),
            ..BlobMeta::default()
        };
        store
            .set_blob_meta(&layer.digest, &meta)
            .map_err(Error::store(&context))?;
    }
    Ok(())
}

fn detect(store: &Store, blob: &Digest, what: &str) -> Result<Compression> {
    let mut head = [0u8; 6];
    let mut file = store.open_blob(blob).map_err(Error::store(what))?;
    let mut n = 0;
    while n < head.len() {
        match file
            .read(&mut head[n..])
            .map_err(Error::io(format!("{what}: read {blob}")))?
        {
            0 => break,
            k => n += k,
        }
    }
    let format = kiln_fsutil::compress::Format::detect(&head[..n]);
    Compression::of_format(format).ok_or_else(|| {
        Error::invalid(
            what,
            format!("layer {blob} is {format:?}-compressed, which no image layer media type names"),
        )
    })
}

/// Names a verified image (or records it by ID when it has no name).
fn record_loaded(store: &Store, image: &StoredImage, names: Vec<String>, what: &str) -> Result<LoadedImage> {
    let id = image.id();
    let platforms: Vec<Platform> = image.platforms();
    let keys = if !names.is_empty() {
        names.clone()
    } else {
        let named = store
            .images_by_digest(&image.record.digest)
            .map_err(Error::store(what))?
            .iter()
            .any(|(name, _)| !stored::is_unnamed(name));
        // An image that has a name already is not `<none>` as well.
        if named {
            Vec::new()
        } else {
            vec![stored::unnamed(&id)]
        }
    };
    for key in &keys {
        stored::record_image(
            store,
            key,
            image.record.digest,
            &image.record.media_type,
            &platforms,
        )
        .map_err(|e| Error::invalid(what, e.to_string()))?;
    }
    Ok(LoadedImage {
        names,
        id,
        digest: image.record.digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalized() {
        assert_eq!(normalize(Path::new("./a/b/")), Some("a/b".into()));
        assert_eq!(normalize(Path::new("a/../b")), Some("b".into()));
        assert_eq!(normalize(Path::new("../x")), None);
        assert_eq!(normalize(Path::new("./")), None);
    }

    #[test]
    fn oci_names() {
        let ann = |k: &str, v: &str| BTreeMap::from([(k.to_owned(), v.to_owned())]);
        assert_eq!(oci_name(&ann(ANNOTATION_REF_NAME, "latest")), None);
        assert_eq!(
            oci_name(&ann(ANNOTATION_REF_NAME, "busybox:1")).as_deref(),
            Some("docker.io/library/busybox:1")
        );
        assert_eq!(
            oci_name(&ann(ANNOTATION_IMAGE_NAME, "docker.io/library/a:b")).as_deref(),
            Some("docker.io/library/a:b")
        );
    }
}
