//! `kiln save`: stored images as an OCI archive or a docker archive, written deterministically (entries
//! sorted, fixed owners, modes and times), so the same images give the same bytes.
//!
//! OCI archive: an OCI image layout in a tar: `oci-layout`, `index.json` with one entry per name (annotated
//! with `org.opencontainers.image.ref.name` and containerd's `io.containerd.image.name`, both the full
//! name, so `skopeo`, `umoci` and `docker load` each find it), and `blobs/sha256/…` as stored.
//!
//! Docker archive: `manifest.json` (`Config`, `RepoTags`, `Layers`), `repositories`, the config and the
//! layers as uncompressed tars under `blobs/sha256/<diff_id>`, the form docker 25+ writes and older docker
//! and skopeo read. One platform per image: the host's when present, else the only one.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};

use kiln_cache::{Digest, Store};
use kiln_registry::{MEDIA_TYPE_OCI_INDEX, Platform};

use crate::error::{Error, Result};
use crate::stored::{self, Found, StoredImage, StoredManifest};

/// The annotation OCI layouts name their images with.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The annotation containerd (and docker 25+) puts the full image name in.
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ArchiveFormat {
    Oci,
    #[default]
    Docker,
}

/// What one argument of `save` resolved to.
struct Entry {
    image: StoredImage,
    /// `None` when the image was named by ID: docker saves it without tags.
    name: Option<String>,
}

/// Writes the images named in `names` (names or IDs, see [`stored::find`]) to `out` as one archive.
pub fn save(store: &Store, names: &[String], out: impl Write, format: ArchiveFormat) -> Result<()> {
    let mut entries = Vec::new();
    for arg in names {
        let entry = match stored::find(store, arg)? {
            Found::Name(image) => Entry {
                name: Some(image.name.clone()),
                image,
            },
            Found::Id { mut images, .. } => Entry {
                image: images.swap_remove(0),
                name: None,
            },
        };
        entries.push(entry);
    }
    let mut tar = Tar::new(out);
    match format {
        ArchiveFormat::Oci => write_oci(store, &entries, &mut tar)?,
        ArchiveFormat::Docker => write_docker(store, &entries, &mut tar)?,
    }
    tar.finish()
}

/// Where an archive blob's bytes come from.
enum Source {
    Bytes(Vec<u8>),
    Blob(Digest),
    /// The uncompressed tar of a layer blob, `size` bytes.
    LayerTar {
        blob: Digest,
        size: u64,
    },
}

fn write_oci<W: Write>(store: &Store, entries: &[Entry], tar: &mut Tar<W>) -> Result<()> {
    let mut blobs: BTreeMap<Digest, Source> = BTreeMap::new();
    let mut index = Vec::new();
    for entry in entries {
        let (top, bytes) = entry.image.export_top()?;
        if stored::is_index(&top.media_type) {
            for m in &entry.image.manifests {
                blobs.insert(m.manifest.digest, Source::Blob(m.manifest.digest));
            }
        }
        for m in &entry.image.manifests {
            for b in std::iter::once(&m.config).chain(&m.layers) {
                blobs.insert(b.digest, Source::Blob(b.digest));
            }
        }
        blobs.insert(top.digest, Source::Bytes(bytes));
        let mut descriptor = top.to_json();
        if let Some(name) = &entry.name {
            descriptor["annotations"] = serde_json::json!({
                ANNOTATION_IMAGE_NAME: name,
                ANNOTATION_REF_NAME: name,
            });
        }
        index.push(descriptor);
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_INDEX,
        "manifests": index,
    });
    tar.file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    tar.file("index.json", &json_bytes(&index)?)?;
    write_blobs(store, blobs, tar)
}

fn write_docker<W: Write>(store: &Store, entries: &[Entry], tar: &mut Tar<W>) -> Result<()> {
    let host = Platform::host();
    let mut blobs: BTreeMap<Digest, Source> = BTreeMap::new();
    // Per config digest (docker's image ID; two manifests of one config are one docker image): its
    // manifest.json entry, in the order first named.
    let mut images: Vec<(Digest, serde_json::Value)> = Vec::new();
    let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut layer_tars: BTreeMap<Digest, (Digest, u64)> = BTreeMap::new();
    for entry in entries {
        let m = docker_platform(&entry.image, &host)?;
        blobs.insert(m.config.digest, Source::Blob(m.config.digest));
        let mut layer_paths = Vec::new();
        for (layer, diff_id) in m.layers.iter().zip(&m.diff_ids) {
            let (actual, size) = match layer_tars.get(&layer.digest) {
                Some(known) => *known,
                None => {
                    let computed = store.layer_diff_id(&layer.digest)?;
                    layer_tars.insert(layer.digest, computed);
                    computed
                }
            };
            if actual != *diff_id {
                return Err(Error::invalid(
                    format!("layer {} of image {}", layer.digest, entry.image.name),
                    format!("its content is {actual}, but the config says {diff_id}"),
                ));
            }
            blobs.insert(
                *diff_id,
                Source::LayerTar {
                    blob: layer.digest,
                    size,
                },
            );
            layer_paths.push(blob_path(diff_id));
        }
        let repo_tag = entry
            .name
            .as_deref()
            .and_then(stored::name_parts)
            .and_then(|p| Some((p.repository, p.tag?)));
        if let (Some((repo, tag)), Some(top)) = (&repo_tag, m.diff_ids.last()) {
            repositories
                .entry(repo.clone())
                .or_default()
                .insert(tag.clone(), top.hex());
        }
        // docker's `RepoTags` is null for an image saved by ID.
        let tag = repo_tag.map(|(repo, tag)| format!("{repo}:{tag}"));
        match images.iter_mut().find(|(d, _)| *d == m.config.digest) {
            Some((_, json)) => {
                if let Some(tag) = tag {
                    match json["RepoTags"].as_array_mut() {
                        Some(tags) => tags.push(tag.into()),
                        None => json["RepoTags"] = serde_json::json!([tag]),
                    }
                }
            }
            None => images.push((
                m.config.digest,
                serde_json::json!({
                    "Config": blob_path(&m.config.digest),
                    "RepoTags": tag.map(|t| vec![t]),
                    "Layers": layer_paths,
                }),
            )),
        }
    }
    write_blobs(store, blobs, tar)?;
    let manifest: Vec<serde_json::Value> = images.into_iter().map(|(_, v)| v).collect();
    tar.file("manifest.json", &json_bytes(&manifest)?)?;
    tar.file("repositories", &json_bytes(&repositories)?)?;
    Ok(())
}

/// The one platform of an image a docker archive can hold.
fn docker_platform<'a>(image: &'a StoredImage, host: &Platform) -> Result<&'a StoredManifest> {
    if let [one] = image.manifests.as_slice() {
        return Ok(one);
    }
    image.select(host).ok_or_else(|| {
        let platforms: Vec<String> = image.platforms().iter().map(|p| p.to_string()).collect();
        Error::invalid(
            format!("image {}", image.name),
            if platforms.is_empty() {
                "none of its platforms is complete in the store".to_owned()
            } else {
                format!(
                    "a docker archive holds one platform; it has {} and none is {host}: use --format oci",
                    platforms.join(", ")
                )
            },
        )
    })
}

fn write_blobs<W: Write>(store: &Store, blobs: BTreeMap<Digest, Source>, tar: &mut Tar<W>) -> Result<()> {
    tar.dir("blobs/")?;
    tar.dir("blobs/sha256/")?;
    for (digest, source) in blobs {
        let path = blob_path(&digest);
        match source {
            Source::Bytes(bytes) => tar.file(&path, &bytes)?,
            Source::Blob(blob) => {
                let file = store.open_blob(&blob)?;
                let size = file
                    .metadata()
                    .map_err(Error::io(format!("stat blob {blob}")))?
                    .len();
                tar.stream(&path, size, file)?
            }
            Source::LayerTar { blob, size } => tar.stream(&path, size, store.open_layer_tar(&blob)?)?,
        }
    }
    Ok(())
}

fn blob_path(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

fn json_bytes(value: &impl serde::Serialize) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::invalid("archive metadata", e.to_string()))
}

/// A tar writer whose headers depend on the path and size only.
struct Tar<W: Write> {
    builder: tar::Builder<W>,
    written: BTreeSet<String>,
}

impl<W: Write> Tar<W> {
    fn new(out: W) -> Tar<W> {
        Tar {
            builder: tar::Builder::new(out),
            written: BTreeSet::new(),
        }
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(size);
        h
    }

    fn dir(&mut self, path: &str) -> Result<()> {
        let mut h = Self::header(tar::EntryType::Directory, 0o755, 0);
        self.builder
            .append_data(&mut h, path, io::empty())
            .map_err(Error::io(format!("write {path} to the archive")))
    }

    fn file(&mut self, path: &str, bytes: &[u8]) -> Result<()> {
        self.stream(path, bytes.len() as u64, bytes)
    }

    fn stream(&mut self, path: &str, size: u64, data: impl Read) -> Result<()> {
        if !self.written.insert(path.to_owned()) {
            return Ok(());
        }
        let mut h = Self::header(tar::EntryType::Regular, 0o644, size);
        // `take` keeps a source that grew since it was measured from corrupting the archive; one that shrank
        // fails the append.
        self.builder
            .append_data(&mut h, path, data.take(size))
            .map_err(Error::io(format!("write {path} to the archive")))
    }

    fn finish(self) -> Result<()> {
        let mut out = self
            .builder
            .into_inner()
            .map_err(Error::io("finish the archive"))?;
        out.flush().map_err(Error::io("finish the archive"))
    }
}
