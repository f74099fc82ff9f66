//! Base images for a build: found in the store first (as `docker build` does), pulled otherwise.

use crate::stored::{self, StoredImage, StoredManifest};
use kiln_cache::{Digest, LeaseResource, SnapshotId, Store};
use kiln_registry::{Platform, Reference, RegistryClient};

use crate::{Error, Result, pull};

/// One platform image in the store, with what a build needs of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalImage {
    /// The name it was found under.
    pub name: String,
    pub manifest_digest: Digest,
    pub manifest: Vec<u8>,
    pub config_digest: Digest,
    /// The config as stored (its digest is `config_digest`).
    pub config: Vec<u8>,
    /// Layer blobs and their media types, bottom first.
    pub layers: Vec<(Digest, String)>,
    /// The config's `rootfs.diff_ids`, one per layer.
    pub diff_ids: Vec<Digest>,
    pub platform: Platform,
}

/// What [`resolve_for_build`] found or pulled.
pub type ResolvedImage = LocalImage;

impl LocalImage {
    fn new(name: &str, m: &StoredManifest) -> LocalImage {
        LocalImage {
            name: name.to_owned(),
            manifest_digest: m.manifest.digest,
            manifest: m.bytes.clone(),
            config_digest: m.config.digest,
            config: m.config_bytes.clone(),
            layers: m
                .layers
                .iter()
                .map(|l| (l.digest, l.media_type.clone()))
                .collect(),
            diff_ids: m.diff_ids.clone(),
            platform: m.platform.clone(),
        }
    }
}

/// The image `name` (a reference such as `busybox`, a stored name, or an image ID `sha256:…` such as an
/// unnamed loaded image is known by) for `platform`, if the store has it.
pub fn local_image(store: &Store, name: &str, platform: &Platform) -> Result<Option<LocalImage>> {
    if stored::is_unnamed(name) {
        return match stored::find(store, name) {
            Ok(found) => Ok(found.image().select(platform).map(|m| LocalImage::new(name, m))),
            Err(Error::NoSuchImage(_)) => Ok(None),
            Err(e) => Err(e),
        };
    }
    let key = match Reference::parse(name) {
        Ok(r) => stored::image_name(&r),
        Err(_) => name.to_owned(),
    };
    let context = format!("look up image {name}");
    let Some(record) = store.get_image(&key).map_err(Error::store(&context))? else {
        return Ok(None);
    };
    let image = StoredImage::read(store, &key, record)?;
    Ok(image.select(platform).map(|m| LocalImage::new(&key, m)))
}

/// The base image of a `FROM`: the stored one when there is one for `platform` (unless `pull`), else pulled
/// from the registry. When `store` carries a lease, the image's blobs are added to it, so the build keeps
/// them even if the name is removed meanwhile.
pub async fn resolve_for_build(
    store: &Store,
    registry: &RegistryClient,
    reference: &Reference,
    platform: &Platform,
    pull: bool,
) -> Result<ResolvedImage> {
    let name = stored::image_name(reference);
    let found = if pull {
        None
    } else {
        local_image(store, &name, platform)?
    };
    let image = match found {
        Some(image) => image,
        None => {
            pull::pull(store, registry, reference, std::slice::from_ref(platform), |_| {}).await?;
            local_image(store, &name, platform)?.ok_or_else(|| {
                Error::invalid(
                    format!("image {reference}"),
                    format!("it has no image for platform {platform}"),
                )
            })?
        }
    };
    if let Some(lease) = store.lease() {
        let context = format!("use image {reference}");
        let blobs = [image.manifest_digest, image.config_digest]
            .into_iter()
            .chain(image.layers.iter().map(|(d, _)| *d));
        for blob in blobs {
            store
                .lease_add(lease, LeaseResource::Blob(blob))
                .map_err(Error::store(&context))?;
        }
    }
    Ok(image)
}

/// Unpacks the image's layers into snapshots (or finds them unpacked), bottom first, and checks each
/// against its diff_id.
pub fn materialize(store: &Store, image: &ResolvedImage) -> Result<Vec<SnapshotId>> {
    let mut snapshots = Vec::with_capacity(image.layers.len());
    for (i, ((blob, media_type), diff_id)) in image.layers.iter().zip(&image.diff_ids).enumerate() {
        let context = format!("image {}: layer {} ({blob})", image.name, i + 1);
        let id = store
            .unpack_layer(blob, media_type)
            .map_err(Error::store(&context))?;
        // A layer kiln built itself is already a snapshot (named by the build), recorded with its diff_id.
        let recorded = store
            .snapshot(&id)
            .map_err(Error::store(&context))?
            .and_then(|r| r.diff_id);
        if id != SnapshotId::for_diff_id(diff_id) && recorded != Some(*diff_id) {
            return Err(Error::invalid(
                context,
                format!("its content does not match the config's diff_id {diff_id}"),
            ));
        }
        snapshots.push(id);
    }
    Ok(snapshots)
}
