//! Base images of a build (`FROM`, `COPY --from=image`, named contexts): each reference is resolved once per
//! build and platform — in the local store first, as `docker build` does, else from its registry (or always
//! from the registry with `--pull`) — and the same answer serves the frontend (the image config, for ENV and
//! WORKDIR expansion and ONBUILD), the cache keys (the manifest digest) and the run (the layers).

use futures::future::BoxFuture;
use kiln_cache::Store;
use kiln_image::{self as images, ResolvedImage};
use kiln_llb::Platform;
use kiln_llb::image::{ImageInfo, ImageResolver};
use kiln_registry::{Reference, RegistryClient};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::sync::OnceCell;

use super::{BaseBlob, LayerRef, Loaded, Source, SourceError};

/// A resolved base image for one platform.
#[derive(Debug, Clone)]
pub struct BaseImage {
    /// What cache keys use: the manifest digest.
    pub manifest_digest: String,
    pub info: ImageInfo,
    image: ResolvedImage,
}

type Shared = Result<Arc<BaseImage>, Arc<SourceError>>;
type Cell = Arc<OnceCell<Shared>>;

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

    fn cell(&self, key: (String, Platform)) -> Cell {
        // The table only memoises; a panic elsewhere cannot leave it inconsistent.
        let mut resolved = self
            .resolved
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        resolved.entry(key).or_default().clone()
    }

    pub async fn resolve(&self, reference: &str, platform: &Platform) -> Shared {
        let cell = self.cell((reference.to_string(), platform.clone()));
        cell.get_or_init(|| async {
            let parsed =
                Reference::parse(reference).map_err(|e| Arc::new(kiln_image::Error::from(e).into()))?;
            let image = images::resolve_for_build(&self.store, &self.registry, &parsed, platform, self.pull)
                .await
                .map_err(|e| Arc::new(e.into()))?;
            base_image(image)
        })
        .await
        .clone()
    }

    /// An image from an OCI layout directory (`--build-context name=oci-layout://DIR:TAG`): loaded into the
    /// store, then resolved like any stored image.
    pub async fn resolve_layout(&self, dir: &Path, reference: &str, platform: &Platform) -> Shared {
        let key = (
            format!("oci-layout://{}@{reference}", dir.display()),
            platform.clone(),
        );
        let cell = self.cell(key);
        cell.get_or_init(|| async {
            let store = self.store.clone();
            let dir = dir.to_path_buf();
            let reference = reference.to_string();
            let wanted = platform.clone();
            let resolved = tokio::task::spawn_blocking(move || -> Result<Arc<BaseImage>, SourceError> {
                let loaded = images::load_archive(&store, &dir)?;
                // The layout's own tag or digest picks the image; a layout of one image needs neither.
                let tagged = format!(":{reference}");
                let chosen = loaded
                    .iter()
                    .find(|l| l.names.iter().any(|n| n.ends_with(&tagged)))
                    .or_else(|| loaded.iter().find(|l| l.digest.to_string() == reference))
                    .or_else(|| (loaded.len() == 1).then(|| &loaded[0]))
                    .ok_or_else(|| {
                        SourceError::NotFound(format!(
                            "the OCI layout {} holds no image {reference}",
                            dir.display()
                        ))
                    })?;
                let name = chosen
                    .names
                    .first()
                    .cloned()
                    .unwrap_or_else(|| kiln_image::stored::unnamed(&chosen.id));
                let image = images::local_image(&store, &name, &wanted)?.ok_or_else(|| {
                    SourceError::NotFound(format!(
                        "the OCI layout {} has no image for {wanted}",
                        dir.display()
                    ))
                })?;
                base_image(image).map_err(|e| SourceError::NotFound(e.to_string()))
            })
            .await;
            match resolved {
                Ok(result) => result.map_err(Arc::new),
                Err(join) => Err(Arc::new(SourceError::NotFound(format!(
                    "loading the OCI layout: {join}"
                )))),
            }
        })
        .await
        .clone()
    }

    /// The base image's layers as snapshots (unpacked on first use), with the blobs they came from.
    pub async fn materialize(&self, base: &BaseImage) -> Result<Vec<LayerRef>, SourceError> {
        let store = self.store.clone();
        let image = base.image.clone();
        let materialized = tokio::task::spawn_blocking(move || -> Result<Vec<LayerRef>, SourceError> {
            let snapshots = images::materialize(&store, &image)?;
            Ok(snapshots
                .into_iter()
                .zip(image.layers.iter().zip(&image.diff_ids))
                .map(|(snapshot, ((digest, media_type), diff_id))| LayerRef {
                    snapshot,
                    blob: Some(BaseBlob {
                        digest: *digest,
                        media_type: media_type.clone(),
                        diff_id: *diff_id,
                        manifest: image.manifest_digest,
                    }),
                })
                .collect())
        })
        .await;
        materialized.unwrap_or_else(|join| Err(SourceError::NotFound(format!("unpacking the image: {join}"))))
    }
}

impl ImageResolver for BaseImages {
    fn resolve(&self, reference: &str, platform: &Platform) -> Result<Option<ImageInfo>, String> {
        // The frontend is synchronous and runs on a blocking thread, so it can wait for the runtime here.
        let base = self
            .runtime
            .block_on(BaseImages::resolve(self, reference, platform))
            .map_err(|e| e.to_string())?;
        Ok(Some(base.info.clone()))
    }
}

fn base_image(image: ResolvedImage) -> Shared {
    let mut info = kiln_image::config::parse(&image.config, &format!("image {}", image.name))
        .map_err(|e| Arc::new(e.into()))?;
    // The base's history stays with the base's layers (the exporter copies it verbatim); the build's image
    // history starts with the build's own instructions.
    info.history.clear();
    Ok(Arc::new(BaseImage {
        manifest_digest: image.manifest_digest.to_string(),
        info,
        image,
    }))
}

/// Images by reference and from OCI layouts, resolved once per build through [`BaseImages`].
pub struct ImageSource(pub Arc<BaseImages>);

impl ImageSource {
    async fn base(&self, op: &kiln_llb::Source, platform: &Platform) -> Shared {
        match op {
            kiln_llb::Source::Image { reference } => self.0.resolve(reference, platform).await,
            kiln_llb::Source::OciLayout { path, reference } => {
                self.0.resolve_layout(Path::new(path), reference, platform).await
            }
            other => Err(Arc::new(SourceError::Unsupported(format!(
                "{} is not an image source",
                other.kind()
            )))),
        }
    }
}

impl Source for ImageSource {
    fn key<'a>(
        &'a self,
        op: &'a kiln_llb::Source,
        platform: &'a Platform,
    ) -> BoxFuture<'a, Result<Option<String>, SourceError>> {
        Box::pin(async move {
            let base = self.base(op, platform).await.map_err(SourceError::Shared)?;
            Ok(Some(base.manifest_digest.clone()))
        })
    }

    fn load<'a>(
        &'a self,
        op: &'a kiln_llb::Source,
        platform: &'a Platform,
    ) -> BoxFuture<'a, Result<Loaded, SourceError>> {
        Box::pin(async move {
            let base = self.base(op, platform).await.map_err(SourceError::Shared)?;
            Ok(Loaded::Layers(self.0.materialize(&base).await?))
        })
    }
}
