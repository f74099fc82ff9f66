//! Base images of a build (`FROM`, `COPY --from=image`, named contexts): each reference is resolved once per
//! build and platform — in the local store first, as `docker build` does, else from its registry (or always
//! from the registry with `--pull`) — and the same answer serves the frontend (the image config, for ENV and
//! WORKDIR expansion and ONBUILD), the cache keys (the manifest digest) and the run (the layers).

use crate::solve::LayerRef;
use kiln_cache::{Digest, Store};
use kiln_image::{self as images, ResolvedImage};
use kiln_llb::Platform;
use kiln_llb::image::{ImageInfo, ImageResolver};
use kiln_registry::{Reference, RegistryClient};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::sync::OnceCell;

/// A layer blob of a base image, so an export can reuse it as is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    pub digest: Digest,
    pub media_type: String,
    pub diff_id: Digest,
    /// The manifest of the image the layer belongs to, whose config holds the layer's history.
    pub manifest: Digest,
}

/// A resolved base image for one platform.
#[derive(Debug, Clone)]
pub struct BaseImage {
    /// What cache keys use: the manifest digest.
    pub manifest_digest: String,
    pub info: ImageInfo,
    image: ResolvedImage,
}

type Cell = Arc<OnceCell<Result<Arc<BaseImage>, String>>>;

pub struct BaseImages {
    store: Store,
    registry: RegistryClient,
    pull: bool,
    runtime: tokio::runtime::Handle,
    resolved: Mutex<HashMap<(String, Platform), Cell>>,
}

impl BaseImages {
    /// `runtime` runs resolutions asked for by the (synchronous) frontend.
    pub fn new(store: Store, registry: RegistryClient, pull: bool, runtime: tokio::runtime::Handle) -> Self {
        BaseImages {
            store,
            registry,
            pull,
            runtime,
            resolved: Mutex::new(HashMap::new()),
        }
    }

    fn cell(&self, key: (String, Platform)) -> Result<Cell, String> {
        let mut resolved = self
            .resolved
            .lock()
            .map_err(|_| "base image table poisoned".to_string())?;
        Ok(resolved.entry(key).or_default().clone())
    }

    pub async fn resolve(&self, reference: &str, platform: &Platform) -> Result<Arc<BaseImage>, String> {
        let cell = self.cell((reference.to_string(), platform.clone()))?;
        cell.get_or_init(|| async {
            let parsed = Reference::parse(reference).map_err(|e| e.to_string())?;
            let image = images::resolve_for_build(&self.store, &self.registry, &parsed, platform, self.pull)
                .await
                .map_err(|e| e.to_string())?;
            base_image(image)
        })
        .await
        .clone()
    }

    /// An image from an OCI layout directory (`--build-context name=oci-layout://DIR:TAG`): loaded into the
    /// store, then resolved like any stored image.
    pub async fn resolve_layout(
        &self,
        dir: &Path,
        reference: &str,
        platform: &Platform,
    ) -> Result<Arc<BaseImage>, String> {
        let key = (
            format!("oci-layout://{}@{reference}", dir.display()),
            platform.clone(),
        );
        let cell = self.cell(key)?;
        cell.get_or_init(|| async {
            let store = self.store.clone();
            let dir = dir.to_path_buf();
            let reference = reference.to_string();
            let wanted = platform.clone();
            tokio::task::spawn_blocking(move || {
                let loaded = images::load_archive(&store, &dir).map_err(|e| e.to_string())?;
                // The layout's own tag or digest picks the image; a layout of one image needs neither.
                let tagged = format!(":{reference}");
                let chosen = loaded
                    .iter()
                    .find(|l| l.names.iter().any(|n| n.ends_with(&tagged)))
                    .or_else(|| loaded.iter().find(|l| l.digest.to_string() == reference))
                    .or_else(|| (loaded.len() == 1).then(|| &loaded[0]))
                    .ok_or_else(|| format!("the OCI layout {} holds no image {reference}", dir.display()))?;
                let name = chosen
                    .names
                    .first()
                    .cloned()
                    .unwrap_or_else(|| kiln_image::stored::unnamed(&chosen.id));
                let image = images::local_image(&store, &name, &wanted)
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("the OCI layout {} has no image for {wanted}", dir.display()))?;
                base_image(image)
            })
            .await
            .map_err(|e| e.to_string())?
        })
        .await
        .clone()
    }

    /// The base image's layers as snapshots (unpacked on first use), with the blobs they came from.
    pub async fn materialize(&self, base: &BaseImage) -> Result<Vec<LayerRef>, String> {
        let store = self.store.clone();
        let image = base.image.clone();
        tokio::task::spawn_blocking(move || {
            let snapshots = images::materialize(&store, &image).map_err(|e| e.to_string())?;
            Ok(snapshots
                .into_iter()
                .zip(image.layers.iter().zip(&image.diff_ids))
                .map(|(snapshot, ((digest, media_type), diff_id))| LayerRef {
                    snapshot,
                    blob: Some(BlobRef {
                        digest: *digest,
                        media_type: media_type.clone(),
                        diff_id: *diff_id,
                        manifest: image.manifest_digest,
                    }),
                })
                .collect())
        })
        .await
        .map_err(|e| e.to_string())?
    }
}

impl ImageResolver for BaseImages {
    fn resolve(&self, reference: &str, platform: &Platform) -> Result<Option<ImageInfo>, String> {
        // The frontend is synchronous and runs on a blocking thread, so it can wait for the runtime here.
        let base = self
            .runtime
            .block_on(BaseImages::resolve(self, reference, platform))?;
        Ok(Some(base.info.clone()))
    }
}

fn base_image(image: ResolvedImage) -> Result<Arc<BaseImage>, String> {
    let mut info = kiln_image::config::parse(&image.config, &format!("image {}", image.name))
        .map_err(|e| e.to_string())?;
    // The base's history stays with the base's layers (the exporter copies it verbatim); the build's image
    // history starts with the build's own instructions.
    info.history.clear();
    Ok(Arc::new(BaseImage {
        manifest_digest: image.manifest_digest.to_string(),
        info,
        image,
    }))
}
