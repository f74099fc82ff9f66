//! `kiln save`: stored images as an OCI archive or a docker archive, written deterministically (entries
//! sorted, fixed owners, modes and times), so the same images give the same bytes.
//!
//! OCI archive: an OCI image layout in a tar: `oci-layout`, `index.json` with one entry per name (annotated
//! with `org.opencontainers.image.ref.name` and containerd's `io.containerd.image.name`, both the full
//! name, so `skopeo`, `umoci` and `docker load` each find it), and `blobs/sha256/…` as stored.
//!
//! OCI layout directory: the same entries as files, for `type=oci,tar=false`. A new layout is built beside
//! its destination and renamed into place; an existing layout is added to as BuildKit does: blobs it lacks
//! are written (each under a temporary name, then renamed: a blob is never seen half-written), then
//! `index.json` is replaced in one rename, keeping the entries of other names, under BuildKit's lock file
//! `index.json.lock`.
//!
//! Docker archive: `manifest.json` (`Config`, `RepoTags`, `Layers`), `repositories`, the config and the
//! layers as uncompressed tars under `blobs/sha256/<diff_id>`, the form docker 25+ writes and older docker
//! and skopeo read. One platform per image: the host's when present, else the only one.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use kiln_cache::{Digest, Store};
use kiln_image::media::{ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, MEDIA_TYPE_OCI_INDEX};
use kiln_registry::Platform;
use rustix::fs::FlockOperation;

use crate::atomic::{self, TempDir};
use crate::error::{Error, Result};
use kiln_image::stored::{self, Found, StoredImage, StoredManifest};

const OCI_LAYOUT_FILE: &str = "oci-layout";
const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
const INDEX_FILE: &str = "index.json";
const INDEX_LOCK_FILE: &str = "index.json.lock";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ArchiveFormat {
    Oci,
    #[default]
    Docker,
}

/// Writes the images named in `names` (names or IDs, see [`stored::find`]) to `out` as one archive.
pub fn save(store: &Store, names: &[String], out: impl Write, format: ArchiveFormat) -> Result<()> {
    let mut images = Vec::new();
    for arg in names {
        images.push(match stored::find(store, arg)? {
            Found::Name(image) => {
                let name = image.name.clone();
                (image, Some(name))
            }
            Found::Id { mut images, .. } => (images.swap_remove(0), None),
        });
    }
    write_archive(store, &images, out, format)
}

/// Writes `images` to `out` as one archive, each under its name (`None`: an image saved by ID, which
/// docker saves without tags).
pub fn write_archive(
    store: &Store,
    images: &[(StoredImage, Option<String>)],
    out: impl Write,
    format: ArchiveFormat,
) -> Result<()> {
    let mut tar = Tar::new(out);
    match format {
        ArchiveFormat::Oci => {
            let layout = oci_layout(images)?;
            tar.file(OCI_LAYOUT_FILE, OCI_LAYOUT)?;
            tar.file(INDEX_FILE, &index_json(layout.manifests)?)?;
            write_blobs(store, layout.blobs, &mut tar)?;
        }
        ArchiveFormat::Docker => write_docker(store, images, &mut tar)?,
    }
    tar.finish()
}

/// Writes `images` as an OCI layout directory at `dest`: a new one when `dest` is missing or an empty
/// directory, else added to the layout there (see the module docs). Anything else at `dest` is refused.
pub fn write_oci_layout(store: &Store, images: &[(StoredImage, Option<String>)], dest: &Path) -> Result<()> {
    write_layout(store, dest, oci_layout(images)?, false)
}

/// Adds one entry to the OCI layout at `dest` (made if missing): the index descriptor `descriptor`
/// (annotated with its name), with the blobs it needs, `stored` from the store and `own` given as bytes.
/// With `drop_unreferenced`, blobs that no entry of the new index reaches are deleted afterwards, so a
/// layout written again and again (a cache directory) does not grow without bound.
pub fn write_layout_entry(
    store: &Store,
    dest: &Path,
    descriptor: serde_json::Value,
    stored: &[Digest],
    own: Vec<(Digest, Vec<u8>)>,
    drop_unreferenced: bool,
) -> Result<()> {
    let mut blobs: BTreeMap<Digest, Source> = stored.iter().map(|d| (*d, Source::Blob(*d))).collect();
    blobs.extend(own.into_iter().map(|(d, bytes)| (d, Source::Bytes(bytes))));
    let layout = OciLayout {
        manifests: vec![descriptor],
        blobs,
    };
    write_layout(store, dest, layout, drop_unreferenced)
}

fn write_layout(store: &Store, dest: &Path, layout: OciLayout, drop_unreferenced: bool) -> Result<()> {
    let (dest, existing) = layout_target(dest)?;
    if !existing {
        let tmp = TempDir::beside(&dest)?;
        let mut dir = LayoutDir { root: tmp.path() };
        write_blobs(store, layout.blobs, &mut dir)?;
        dir.file(OCI_LAYOUT_FILE, OCI_LAYOUT)?;
        dir.file(INDEX_FILE, &index_json(layout.manifests)?)?;
        return tmp.persist(&dest);
    }
    // The lock file BuildKit's index update takes: concurrent writers, kiln's or BuildKit's, add their
    // entries in turn instead of one update losing the other's. It stays when done (BuildKit removes it):
    // a writer waiting on a removed file and one locking a new file would both go ahead. kiln holds it
    // while it writes its blobs too, so another kiln writer's cleanup never deletes blobs this one has
    // written and not yet indexed.
    let lock_path = dest.join(INDEX_LOCK_FILE);
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(Error::io(format!("open {}", lock_path.display())))?;
    rustix::fs::flock(&lock, FlockOperation::LockExclusive)
        .map_err(|e| Error::io(format!("lock {}", lock_path.display()))(e.into()))?;
    let mut dir = LayoutDir { root: &dest };
    write_blobs(store, layout.blobs, &mut dir)?;
    let index_path = dest.join(INDEX_FILE);
    let index = add_to_index(&index_path, layout.manifests)?;
    atomic::write_file(&index_path, |w| {
        w.write_all(&json_bytes(&index)?)
            .map_err(Error::io(format!("write {}", index_path.display())))
    })?;
    if drop_unreferenced {
        drop_unreferenced_blobs(&dest, &index)?;
    }
    Ok(())
}

/// Deletes the blobs of the layout at `dest` that its index `index` does not reach (through indexes,
/// manifests, configs and layers). Runs under the index lock, after the new index is in place: a crash
/// midway leaves unreferenced blobs, never a referenced one missing.
fn drop_unreferenced_blobs(dest: &Path, index: &serde_json::Value) -> Result<()> {
    let blobs_dir = dest.join("blobs/sha256");
    let mut reached: BTreeSet<String> = BTreeSet::new();
    let mut pending: Vec<serde_json::Value> = index["manifests"].as_array().cloned().unwrap_or_default();
    while let Some(descriptor) = pending.pop() {
        let Some(hex) = descriptor["digest"]
            .as_str()
            .and_then(|d| d.strip_prefix("sha256:"))
        else {
            continue;
        };
        if !reached.insert(hex.to_owned()) {
            continue;
        }
        let media_type = descriptor["mediaType"].as_str().unwrap_or_default();
        if !kiln_image::media::is_index(media_type) && !kiln_image::media::is_manifest(media_type) {
            continue;
        }
        // A manifest that cannot be read reaches nothing more; what it names stays unless unreached.
        let Ok(bytes) = std::fs::read(blobs_dir.join(hex)) else {
            continue;
        };
        let Ok(parsed) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            continue;
        };
        for list in ["manifests", "layers"] {
            pending.extend(parsed[list].as_array().cloned().unwrap_or_default());
        }
        pending.push(parsed["config"].clone());
    }
    let entries =
        std::fs::read_dir(&blobs_dir).map_err(Error::io(format!("list {}", blobs_dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(Error::io(format!("list {}", blobs_dir.display())))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        // Dot-files are other writers' temporaries.
        if name.starts_with('.') || reached.contains(name) {
            continue;
        }
        std::fs::remove_file(entry.path())
            .map_err(Error::io(format!("remove {}", entry.path().display())))?;
    }
    Ok(())
}

/// The index at `index_path` (a new one if there is none) with `added` entries, as BuildKit's index update
/// makes it: a name now written moves to the new entry, entries of other names stay, and an entry equal to
/// one added is not listed twice.
fn add_to_index(index_path: &Path, added: Vec<serde_json::Value>) -> Result<serde_json::Value> {
    let what = || format!("the OCI layout index {}", index_path.display());
    let mut index: serde_json::Value = match std::fs::read(index_path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::invalid(what(), e.to_string()))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => new_index(Vec::new()),
        Err(e) => return Err(Error::io(format!("read {}", what()))(e)),
    };
    let old = match index.get_mut("manifests").map(serde_json::Value::take) {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Array(old)) => old,
        Some(_) => return Err(Error::invalid(what(), "its manifests are not a list")),
    };
    let names: BTreeSet<&str> = added
        .iter()
        .filter_map(|d| d["annotations"][ANNOTATION_REF_NAME].as_str())
        .collect();
    let mut manifests: Vec<serde_json::Value> = old
        .into_iter()
        .filter(|d| {
            let renamed = d["annotations"][ANNOTATION_REF_NAME]
                .as_str()
                .is_some_and(|n| names.contains(n));
            !renamed && !added.contains(d)
        })
        .collect();
    manifests.extend(added.iter().cloned());
    index["manifests"] = serde_json::Value::Array(manifests);
    Ok(index)
}

/// Where to write a layout for `dest`, and whether a layout is there to add to (else the place is free for
/// a new one: missing, or an empty directory, which rename(2) replaces).
fn layout_target(dest: &Path) -> Result<(PathBuf, bool)> {
    let meta = match std::fs::metadata(dest) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((dest.to_owned(), false)),
        Err(e) => return Err(Error::io(format!("stat {}", dest.display()))(e)),
    };
    let refuse = |why: &str| Error::invalid(format!("destination {}", dest.display()), why);
    if !meta.is_dir() {
        return Err(refuse("it exists and is not a directory"));
    }
    // A symlink to a directory is written through, as the directory it names would be.
    let real = std::fs::canonicalize(dest).map_err(Error::io(format!("resolve {}", dest.display())))?;
    if std::fs::symlink_metadata(real.join(OCI_LAYOUT_FILE)).is_ok_and(|m| m.is_file()) {
        return Ok((real, true));
    }
    let mut entries = std::fs::read_dir(&real).map_err(Error::io(format!("list {}", real.display())))?;
    match entries.next() {
        None => Ok((real, false)),
        Some(_) => Err(refuse(
            "it is a directory that is neither empty nor an OCI layout (it has no oci-layout file); refusing to write into it",
        )),
    }
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

/// What an OCI layout of some images holds: its index entries and blobs.
struct OciLayout {
    manifests: Vec<serde_json::Value>,
    blobs: BTreeMap<Digest, Source>,
}

fn oci_layout(images: &[(StoredImage, Option<String>)]) -> Result<OciLayout> {
    let mut blobs: BTreeMap<Digest, Source> = BTreeMap::new();
    let mut manifests = Vec::new();
    for (image, name) in images {
        let (top, bytes) = image.export_top()?;
        if kiln_image::media::is_index(&top.media_type) {
            for m in &image.manifests {
                blobs.insert(m.manifest.digest, Source::Blob(m.manifest.digest));
            }
        }
        for m in &image.manifests {
            for b in std::iter::once(&m.config).chain(&m.layers) {
                blobs.insert(b.digest, Source::Blob(b.digest));
            }
        }
        blobs.insert(top.digest, Source::Bytes(bytes));
        let mut descriptor = top.to_json();
        if let Some(name) = name {
            descriptor["annotations"] = serde_json::json!({
                ANNOTATION_IMAGE_NAME: name,
                ANNOTATION_REF_NAME: name,
            });
        }
        manifests.push(descriptor);
    }
    Ok(OciLayout { manifests, blobs })
}

fn new_index(manifests: Vec<serde_json::Value>) -> serde_json::Value {
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_INDEX,
        "manifests": manifests,
    })
}

fn index_json(manifests: Vec<serde_json::Value>) -> Result<Vec<u8>> {
    json_bytes(&new_index(manifests))
}

fn write_docker<W: Write>(
    store: &Store,
    images: &[(StoredImage, Option<String>)],
    tar: &mut Tar<W>,
) -> Result<()> {
    let host = Platform::host();
    let mut blobs: BTreeMap<Digest, Source> = BTreeMap::new();
    // Per config digest (docker's image ID; two manifests of one config are one docker image): its
    // manifest.json entry, in the order first named.
    let mut docker_images: Vec<(Digest, serde_json::Value)> = Vec::new();
    let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut layer_tars: BTreeMap<Digest, (Digest, u64)> = BTreeMap::new();
    for (image, name) in images {
        let m = docker_platform(image, &host)?;
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
                    format!("layer {} of image {}", layer.digest, image.name),
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
        let repo_tag = name
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
        match docker_images.iter_mut().find(|(d, _)| *d == m.config.digest) {
            Some((_, json)) => {
                if let Some(tag) = tag {
                    match json["RepoTags"].as_array_mut() {
                        Some(tags) => tags.push(tag.into()),
                        None => json["RepoTags"] = serde_json::json!([tag]),
                    }
                }
            }
            None => docker_images.push((
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
    let manifest: Vec<serde_json::Value> = docker_images.into_iter().map(|(_, v)| v).collect();
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

fn write_blobs(store: &Store, blobs: BTreeMap<Digest, Source>, out: &mut impl Sink) -> Result<()> {
    out.dir("blobs/")?;
    out.dir("blobs/sha256/")?;
    for (digest, source) in blobs {
        let path = blob_path(&digest);
        match source {
            Source::Bytes(bytes) => out.file(&path, &bytes)?,
            Source::Blob(blob) => {
                let file = store.open_blob(&blob)?;
                let size = file
                    .metadata()
                    .map_err(Error::io(format!("stat blob {blob}")))?
                    .len();
                out.stream(&path, size, file)?
            }
            Source::LayerTar { blob, size } => out.stream(&path, size, store.open_layer_tar(&blob)?)?,
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

    fn finish(self) -> Result<()> {
        let mut out = self
            .builder
            .into_inner()
            .map_err(Error::io("finish the archive"))?;
        out.flush().map_err(Error::io("finish the archive"))
    }
}

impl<W: Write> Sink for Tar<W> {
    fn dir(&mut self, path: &str) -> Result<()> {
        let mut h = Self::header(tar::EntryType::Directory, 0o755, 0);
        self.builder
            .append_data(&mut h, path, io::empty())
            .map_err(Error::io(format!("write {path} to the archive")))
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
}

/// Where an archive's entries go: a tar stream, or files of a layout directory. Paths are relative and
/// `/`-separated.
trait Sink {
    fn dir(&mut self, path: &str) -> Result<()>;

    /// Writes `size` bytes of `data` as the file `path`.
    fn stream(&mut self, path: &str, size: u64, data: impl Read) -> Result<()>;

    fn file(&mut self, path: &str, bytes: &[u8]) -> Result<()> {
        self.stream(path, bytes.len() as u64, bytes)
    }
}

/// An OCI layout directory being written.
struct LayoutDir<'a> {
    root: &'a Path,
}

impl Sink for LayoutDir<'_> {
    fn dir(&mut self, path: &str) -> Result<()> {
        let dir = self.root.join(path);
        std::fs::create_dir_all(&dir).map_err(Error::io(format!("create directory {}", dir.display())))
    }

    fn stream(&mut self, path: &str, size: u64, data: impl Read) -> Result<()> {
        let dest = self.root.join(path);
        // Files other than blobs are written before anything exists to keep (a new layout) or not through
        // here at all (an existing layout's index); a blob is named by its content, so a complete one there
        // already is this one.
        if std::fs::symlink_metadata(&dest).is_ok_and(|m| m.is_file() && m.len() == size) {
            return Ok(());
        }
        atomic::write_file(&dest, |w| {
            let copied =
                io::copy(&mut data.take(size), w).map_err(Error::io(format!("write {}", dest.display())))?;
            if copied != size {
                return Err(Error::invalid(
                    format!("file {}", dest.display()),
                    format!("its source ended after {copied} of {size} bytes"),
                ));
            }
            Ok(())
        })
    }
}
