//! Images as the store holds them: a name (image record) points at an index or a manifest; of an index, the
//! platform images whose manifest, config and layers are all stored are the ones present (the others were
//! not pulled). This is the rule the store's GC follows too. Shared by push, save, the image commands and
//! the build's base-image lookup, so that they agree on what an image is, what its ID is and which names
//! refer to it.
//!
//! Names are full references (`docker.io/library/busybox:latest`, `127.0.0.1:5000/x@sha256:…`); an image
//! without one (loaded from an archive that names none) is recorded under its ID (`sha256:…`), which docker
//! shows as `<none>:<none>`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};

use kiln_cache::{Digest, ImageRecord, Store};
use kiln_registry::oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use kiln_registry::{Platform, PlatformMatch, Reference};
use serde::Deserialize;

use crate::media::{is_index, is_manifest};
use crate::{Error, Result};

/// A descriptor in the store's terms (sha256 digests only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobRef {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

impl BlobRef {
    fn from_descriptor(d: &Descriptor, what: &str) -> Result<BlobRef> {
        Ok(BlobRef {
            digest: parse_digest(d.digest().as_ref(), what)?,
            media_type: d.media_type().to_string(),
            size: d.size(),
        })
    }

    /// The OCI descriptor JSON (`mediaType`, `digest`, `size`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "mediaType": self.media_type,
            "digest": self.digest.to_string(),
            "size": self.size,
        })
    }
}

fn parse_digest(s: &str, what: &str) -> Result<Digest> {
    s.parse()
        .map_err(|e: kiln_cache::Error| Error::invalid(what, e.to_string()))
}

/// What an image manifest refers to.
#[derive(Clone, Debug)]
pub struct ManifestParts {
    pub config: BlobRef,
    pub layers: Vec<BlobRef>,
}

/// Parses an image manifest (OCI or Docker v2 schema 2); `what` names it in errors.
pub fn parse_manifest(bytes: &[u8], what: &str) -> Result<ManifestParts> {
    let m: ImageManifest = serde_json::from_slice(bytes).map_err(|e| Error::invalid(what, e.to_string()))?;
    Ok(ManifestParts {
        config: BlobRef::from_descriptor(m.config(), what)?,
        layers: m
            .layers()
            .iter()
            .map(|l| BlobRef::from_descriptor(l, what))
            .collect::<Result<_>>()?,
    })
}

/// One entry of an index.
#[derive(Clone, Debug)]
pub struct IndexEntry {
    pub manifest: BlobRef,
    pub platform: Option<Platform>,
    pub annotations: BTreeMap<String, String>,
}

/// Parses an image index or docker manifest list.
pub fn parse_index(bytes: &[u8], what: &str) -> Result<Vec<IndexEntry>> {
    let index: ImageIndex = serde_json::from_slice(bytes).map_err(|e| Error::invalid(what, e.to_string()))?;
    index
        .manifests()
        .iter()
        .map(|d| {
            Ok(IndexEntry {
                manifest: BlobRef::from_descriptor(d, what)?,
                platform: d.platform().as_ref().map(|p| {
                    Platform::new(
                        &p.os().to_string(),
                        &p.architecture().to_string(),
                        p.variant().as_deref(),
                    )
                }),
                annotations: d
                    .annotations()
                    .as_ref()
                    .map(|a| a.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// The parts of an image config kiln reads. Lenient on purpose: configs written by docker carry fields
/// (and nulls) that nothing here needs to understand; the bytes themselves are kept as they are.
#[derive(Clone, Debug, Default)]
pub struct ConfigSummary {
    /// RFC 3339, as written.
    pub created: Option<String>,
    pub platform: Option<Platform>,
    pub diff_ids: Vec<Digest>,
}

pub fn parse_config(bytes: &[u8], what: &str) -> Result<ConfigSummary> {
    #[derive(Deserialize)]
    struct Probe {
        created: Option<String>,
        os: Option<String>,
        architecture: Option<String>,
        variant: Option<String>,
        rootfs: Option<RootFs>,
    }
    #[derive(Deserialize)]
    struct RootFs {
        #[serde(default)]
        diff_ids: Option<Vec<String>>,
    }
    let probe: Probe = serde_json::from_slice(bytes).map_err(|e| Error::invalid(what, e.to_string()))?;
    let diff_ids = probe
        .rootfs
        .ok_or_else(|| Error::invalid(what, "the config has no rootfs"))?
        .diff_ids
        .unwrap_or_default()
        .iter()
        .map(|d| parse_digest(d, what))
        .collect::<Result<_>>()?;
    let platform = match (&probe.os, &probe.architecture) {
        (Some(os), Some(arch)) => Some(Platform::new(os, arch, probe.variant.as_deref())),
        _ => None,
    };
    Ok(ConfigSummary {
        created: probe.created,
        platform,
        diff_ids,
    })
}

/// Checks that a manifest and its config describe the same layers.
pub fn check_layers_match(parts: &ManifestParts, config: &ConfigSummary, what: &str) -> Result<()> {
    if parts.layers.len() != config.diff_ids.len() {
        return Err(Error::invalid(
            what,
            format!(
                "the manifest lists {} layers but its config {} has {} diff_ids",
                parts.layers.len(),
                parts.config.digest,
                config.diff_ids.len()
            ),
        ));
    }
    Ok(())
}

/// One platform's image, complete in the store.
#[derive(Clone, Debug)]
pub struct StoredManifest {
    pub manifest: BlobRef,
    pub bytes: Vec<u8>,
    /// From the index entry, else from the config.
    pub platform: Platform,
    pub config: BlobRef,
    pub config_bytes: Vec<u8>,
    pub layers: Vec<BlobRef>,
    pub diff_ids: Vec<Digest>,
    /// The config's `created`, RFC 3339.
    pub created: Option<String>,
}

impl StoredManifest {
    /// `None` when the config or a layer is not stored (a platform that was not pulled).
    fn read(
        store: &Store,
        manifest: BlobRef,
        bytes: Vec<u8>,
        platform: Option<Platform>,
    ) -> Result<Option<StoredManifest>> {
        let what = format!("manifest {}", manifest.digest);
        let parts = parse_manifest(&bytes, &what)?;
        if !store.has_blob(&parts.config.digest)? {
            return Ok(None);
        }
        for layer in &parts.layers {
            if !store.has_blob(&layer.digest)? {
                return Ok(None);
            }
        }
        let config_bytes = store.read_blob(&parts.config.digest)?;
        let config = parse_config(&config_bytes, &format!("image config {}", parts.config.digest))?;
        check_layers_match(&parts, &config, &what)?;
        let platform = platform
            .or(config.platform)
            .unwrap_or_else(|| Platform::new("unknown", "unknown", None));
        Ok(Some(StoredManifest {
            manifest,
            bytes,
            platform,
            config: parts.config,
            config_bytes,
            layers: parts.layers,
            diff_ids: config.diff_ids,
            created: config.created,
        }))
    }
}

/// A named image with what of it is in the store.
#[derive(Clone, Debug)]
pub struct StoredImage {
    pub name: String,
    pub record: ImageRecord,
    /// The index the record points at, when it points at one.
    pub index: Option<Vec<u8>>,
    /// The platform images present, in index order (the one image when the record points at a manifest).
    pub manifests: Vec<StoredManifest>,
}

impl StoredImage {
    pub fn read(store: &Store, name: &str, record: ImageRecord) -> Result<StoredImage> {
        let bytes = store.read_blob(&record.digest)?;
        let top = BlobRef {
            digest: record.digest,
            media_type: record.media_type.clone(),
            size: bytes.len() as u64,
        };
        if is_index(&record.media_type) {
            let mut manifests = Vec::new();
            for entry in parse_index(&bytes, &format!("index {} of {name}", record.digest))? {
                if !is_manifest(&entry.manifest.media_type) || !store.has_blob(&entry.manifest.digest)? {
                    continue;
                }
                let child = store.read_blob(&entry.manifest.digest)?;
                if let Some(m) = StoredManifest::read(store, entry.manifest, child, entry.platform)? {
                    manifests.push(m);
                }
            }
            Ok(StoredImage {
                name: name.to_owned(),
                record,
                index: Some(bytes),
                manifests,
            })
        } else if is_manifest(&record.media_type) {
            let manifests = StoredManifest::read(store, top, bytes, None)?
                .into_iter()
                .collect();
            Ok(StoredImage {
                name: name.to_owned(),
                record,
                index: None,
                manifests,
            })
        } else {
            Err(Error::invalid(
                format!("image {name}"),
                format!("unsupported media type {:?}", record.media_type),
            ))
        }
    }

    /// docker's image ID: the config digest of a single-platform image, else the index digest.
    pub fn id(&self) -> Digest {
        match self.manifests.as_slice() {
            [one] => one.config.digest,
            _ => self.record.digest,
        }
    }

    pub fn platforms(&self) -> Vec<Platform> {
        self.manifests.iter().map(|m| m.platform.clone()).collect()
    }

    /// The present platform image that best runs on `platform`.
    pub fn select(&self, platform: &Platform) -> Option<&StoredManifest> {
        let mut best: Option<((u32, u32), &StoredManifest)> = None;
        for m in &self.manifests {
            if let Some(rank) = platform.compatibility(&m.platform)
                && best.is_none_or(|(r, _)| rank > r)
            {
                best = Some((rank, m));
            }
        }
        best.map(|(_, m)| m)
    }

    /// Bytes of content (configs and layers, each once) of the present platforms.
    pub fn size(&self) -> u64 {
        let mut seen = BTreeSet::new();
        self.manifests
            .iter()
            .flat_map(|m| std::iter::once(&m.config).chain(&m.layers))
            .filter(|b| seen.insert(b.digest))
            .map(|b| b.size)
            .sum()
    }

    /// When the image was built (its config's `created`), in seconds since the epoch; else when it was
    /// recorded.
    pub fn created(&self) -> u64 {
        self.manifests
            .iter()
            .filter_map(|m| m.created.as_deref())
            .filter_map(parse_rfc3339)
            .max()
            .unwrap_or(self.record.created)
    }

    /// What to hand out as this image (push, save): the index as stored when all its platforms are present;
    /// the one manifest when only one is; else an index reduced to the platforms present, since a registry
    /// or archive would refuse an index that refers to content it does not get.
    pub fn export_top(&self) -> Result<(BlobRef, Vec<u8>)> {
        let no_content = || {
            Error::invalid(
                format!("image {}", self.name),
                "none of its platforms is complete in the store (run `kiln pull` again)",
            )
        };
        let Some(index) = &self.index else {
            let m = self.manifests.first().ok_or_else(no_content)?;
            return Ok((m.manifest.clone(), m.bytes.clone()));
        };
        let what = format!("index {} of {}", self.record.digest, self.name);
        let entries = parse_index(index, &what)?;
        if entries.len() == self.manifests.len() {
            let top = BlobRef {
                digest: self.record.digest,
                media_type: self.record.media_type.clone(),
                size: index.len() as u64,
            };
            return Ok((top, index.clone()));
        }
        match self.manifests.as_slice() {
            [] => Err(no_content()),
            [one] => Ok((one.manifest.clone(), one.bytes.clone())),
            present => {
                let keep: BTreeSet<String> = present.iter().map(|m| m.manifest.digest.to_string()).collect();
                let mut doc: serde_json::Value =
                    serde_json::from_slice(index).map_err(|e| Error::invalid(&what, e.to_string()))?;
                if let Some(list) = doc.get_mut("manifests").and_then(|m| m.as_array_mut()) {
                    list.retain(|d| d["digest"].as_str().is_some_and(|s| keep.contains(s)));
                }
                let bytes = serde_json::to_vec(&doc).map_err(|e| Error::invalid(&what, e.to_string()))?;
                let top = BlobRef {
                    digest: Digest::of(&bytes),
                    media_type: self.record.media_type.clone(),
                    size: bytes.len() as u64,
                };
                Ok((top, bytes))
            }
        }
    }
}

/// Seconds since the epoch of an RFC 3339 timestamp (`2024-01-02T03:04:05.123Z`, `…+02:00`).
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let t = chrono::DateTime::parse_from_rfc3339(s).ok()?;
    u64::try_from(t.timestamp()).ok()
}

/// Every tagged image; records whose content cannot be read are left out with a warning, so one damaged
/// image does not hide the others.
pub fn list(store: &Store) -> Result<Vec<StoredImage>> {
    let mut out = Vec::new();
    for (name, record) in store.list_images()? {
        match StoredImage::read(store, &name, record) {
            Ok(image) => out.push(image),
            Err(e) => tracing::warn!(image = %name, "skipping an image that cannot be read: {e}"),
        }
    }
    Ok(out)
}

/// What a user's image argument named.
#[derive(Clone, Debug)]
pub enum Found {
    /// A name (tag or digest reference).
    Name(StoredImage),
    /// An image ID (full or a unique prefix, with or without `sha256:`): every name of that image.
    Id { id: Digest, images: Vec<StoredImage> },
}

impl Found {
    /// The images it covers.
    pub fn images(&self) -> &[StoredImage] {
        match self {
            Found::Name(image) => std::slice::from_ref(image),
            Found::Id { images, .. } => images,
        }
    }

    /// One image (for commands that act on the content, which all names of an ID share).
    pub fn image(&self) -> &StoredImage {
        &self.images()[0]
    }
}

/// Finds an image by name, as docker does: a reference first, then an image ID or unique prefix of one.
pub fn find(store: &Store, arg: &str) -> Result<Found> {
    if !arg.starts_with("sha256:")
        && let Ok(reference) = Reference::parse(arg)
    {
        let name = image_name(&reference);
        if let Some(record) = store.get_image(&name)? {
            return Ok(Found::Name(StoredImage::read(store, &name, record)?));
        }
    }
    let hex = arg.strip_prefix("sha256:").unwrap_or(arg);
    let is_id_prefix =
        !hex.is_empty() && hex.len() <= 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !is_id_prefix {
        return Err(Error::NoSuchImage(arg.to_owned()));
    }
    let mut by_id: BTreeMap<Digest, Vec<StoredImage>> = BTreeMap::new();
    for image in list(store)? {
        let id = image.id();
        if id.hex().starts_with(hex) {
            by_id.entry(id).or_default().push(image);
        }
    }
    let mut ids = by_id.into_iter();
    match (ids.next(), ids.next()) {
        (None, _) => Err(Error::NoSuchImage(arg.to_owned())),
        (Some((id, images)), None) => Ok(Found::Id { id, images }),
        (Some((a, _)), Some((b, _))) => {
            let mut matches = vec![a.to_string(), b.to_string()];
            matches.extend(ids.map(|(id, _)| id.to_string()));
            Err(Error::AmbiguousId {
                prefix: arg.to_owned(),
                matches: matches.join(", "),
            })
        }
    }
}

/// The store's name for what a reference names: `registry/repository:tag`, or `registry/repository@digest`
/// when it pins one (a pinned digest wins over a tag, as in docker).
pub fn image_name(reference: &Reference) -> String {
    match reference.digest() {
        Some(digest) => format!("{}/{}@{digest}", reference.registry(), reference.repository()),
        None => reference.to_string(),
    }
}

/// The name under which an image without a name is recorded: its ID.
pub fn unnamed(id: &Digest) -> String {
    id.to_string()
}

pub fn is_unnamed(name: &str) -> bool {
    name.starts_with("sha256:")
}

/// docker's short form of a name: `busybox:latest` for `docker.io/library/busybox:latest`,
/// `user/app:1` for `docker.io/user/app:1`; other registries stay as they are.
pub fn familiar_name(name: &str) -> String {
    match name.strip_prefix("docker.io/") {
        Some(rest) => match rest.strip_prefix("library/") {
            Some(short) if !short.split(['@', ':']).next().unwrap_or(short).contains('/') => short.to_owned(),
            _ => rest.to_owned(),
        },
        None => name.to_owned(),
    }
}

/// A name split the way `docker images` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameParts {
    /// Familiar repository (`busybox`, `127.0.0.1:5000/x`).
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

/// `None` for an unnamed image.
pub fn name_parts(name: &str) -> Option<NameParts> {
    if is_unnamed(name) {
        return None;
    }
    let reference = Reference::parse(name).ok()?;
    let repository = familiar_name(&format!("{}/{}", reference.registry(), reference.repository()));
    Some(NameParts {
        repository,
        tag: if reference.digest().is_some() {
            None
        } else {
            reference.tag().map(str::to_owned)
        },
        digest: reference.digest().map(str::to_owned),
    })
}

/// The store's record of a platform (`kiln_cache::Platform`, a storage record that knows nothing of
/// matching): the one conversion from the platform type everything else uses.
pub fn to_store_platform(p: &Platform) -> kiln_cache::Platform {
    kiln_cache::Platform {
        os: p.os.clone(),
        architecture: p.architecture.clone(),
        variant: p.variant.clone(),
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Points `name` at an index or manifest. Platforms an earlier record of the same content listed are kept
/// (pulling a second platform adds to the first), and the unnamed record of the same image goes: once
/// named, it is no longer `<none>`.
pub fn record_image(
    store: &Store,
    name: &str,
    digest: Digest,
    media_type: &str,
    platforms: &[Platform],
) -> Result<()> {
    let mut all: BTreeSet<kiln_cache::Platform> = platforms.iter().map(to_store_platform).collect();
    if let Some(old) = store.get_image(name)?
        && old.digest == digest
    {
        all.extend(old.platforms);
    }
    let record = ImageRecord {
        digest,
        media_type: media_type.to_owned(),
        platforms: all.into_iter().collect(),
        created: now_secs(),
    };
    store.tag_image(name, &record)?;
    if !is_unnamed(name) {
        for (other, _) in store.images_by_digest(&digest)? {
            if is_unnamed(&other) {
                store.untag(&other)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn familiar_names() {
        assert_eq!(
            familiar_name("docker.io/library/busybox:latest"),
            "busybox:latest"
        );
        assert_eq!(familiar_name("docker.io/user/app:1"), "user/app:1");
        assert_eq!(familiar_name("docker.io/library/a/b:1"), "library/a/b:1");
        assert_eq!(familiar_name("127.0.0.1:5000/x:y"), "127.0.0.1:5000/x:y");
        let p = name_parts("docker.io/library/busybox:latest").unwrap();
        assert_eq!(
            (p.repository.as_str(), p.tag.as_deref()),
            ("busybox", Some("latest"))
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let p = name_parts(&format!("127.0.0.1:5000/x@{d}")).unwrap();
        assert_eq!(p.repository, "127.0.0.1:5000/x");
        assert_eq!((p.tag, p.digest), (None, Some(d.clone())));
        assert_eq!(name_parts(&d), None);
    }

    #[test]
    fn names_of_references() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(image_name(&r), "docker.io/library/busybox:latest");
        let d = format!("sha256:{}", "b".repeat(64));
        let r = Reference::parse(&format!("localhost:5000/a:t@{d}")).unwrap();
        assert_eq!(image_name(&r), format!("localhost:5000/a@{d}"));
    }

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2000-01-01T00:00:00Z"), Some(946_684_800));
        assert_eq!(parse_rfc3339("2000-01-01T01:00:00.5+01:00"), Some(946_684_800));
        assert_eq!(
            parse_rfc3339("2024-02-29T12:00:00.123456789Z"),
            Some(1_709_208_000)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
