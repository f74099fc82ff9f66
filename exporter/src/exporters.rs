//! The [`Exporter`]s behind `-o`: each output kind of [`crate::spec`] is one implementation, given the
//! build's result per platform and asked to put it where it goes. Image kinds (`image`, `oci`, `docker`)
//! write the image (an index over several platforms) into the store first and then ship it; filesystem kinds
//! (`local`, `tar`) write the merged layer chain.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use kiln_cache::{Compression, Digest, SnapshotId, Store};
use kiln_llb::Platform;
use kiln_llb::image::ImageInfo;
use kiln_registry::{Reference, RegistryClient};

use crate::archive::ArchiveFormat;
use crate::error::{Error, Result};
use crate::image::{BaseImage, Built, BuiltImage, BuiltIndex, ImageOptions, build_image, build_index, tag};
use crate::output::{self, Dest};
use crate::spec::{Kind, Output};
use crate::{PushOptions, push_with};

/// One platform's result, as the exporters see it.
#[derive(Debug, Clone)]
pub struct PlatformResult {
    pub platform: Platform,
    /// The image config and the build's own history entries.
    pub image: ImageInfo,
    /// The base image's manifest, when the result starts with a base image's layers (reused as they are).
    pub base_manifest: Option<Digest>,
    /// How many of `layers` are the base image's.
    pub base_layers: usize,
    /// Every layer, bottom first.
    pub layers: Vec<SnapshotId>,
    /// More top-level fields for the image config (an inline build cache).
    pub config_extra: BTreeMap<String, serde_json::Value>,
}

/// What every exporter of a build gets.
pub struct ExportInput<'a> {
    pub store: &'a Store,
    pub registry: &'a RegistryClient,
    pub platforms: &'a [PlatformResult],
    /// The build's `-t` names.
    pub tags: &'a [String],
    /// `--label`s, added to the image config.
    pub labels: &'a BTreeMap<String, String>,
    pub source_date_epoch: Option<u64>,
    /// What an exporter reports as it goes ("naming", "pushing"), for the progress output.
    pub report: &'a (dyn Fn(String) + Send + Sync),
}

/// An image an exporter wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedImage {
    /// docker's image ID: the config digest of a single-platform image, the index digest of a multi-platform
    /// one.
    pub id: Digest,
    /// The manifest or index digest and its media type.
    pub digest: Digest,
    pub media_type: String,
    /// Bytes of the manifest or index.
    pub size: u64,
    /// The config digest of each platform's image (one for a single-platform image).
    pub config_digests: Vec<Digest>,
    /// The full names it was given in the store.
    pub names: Vec<String>,
    /// Where it was pushed, with the digest the registry has it under.
    pub pushed: Vec<(String, Digest)>,
}

/// Puts a build's result where one `-o` says.
pub trait Exporter: Send + Sync {
    /// Writes the result; an image exporter returns the image it made.
    fn export<'a>(&'a self, input: &'a ExportInput<'a>) -> BoxFuture<'a, Result<Option<ExportedImage>>>;
}

impl Output {
    /// The exporter of this output. `push` is the build's `--push`, which pushes image outputs.
    pub fn exporter(&self, push: bool) -> Box<dyn Exporter> {
        match &self.kind {
            Kind::Image { names, push: asked } => Box::new(ImageExporter {
                output: self.clone(),
                names: names.clone(),
                push: *asked || push,
            }),
            Kind::Oci { dest, dir } => Box::new(ArchiveExporter {
                output: self.clone(),
                format: ArchiveFormat::Oci,
                dest: dest.clone(),
                dir: *dir,
            }),
            Kind::Docker { dest } => Box::new(ArchiveExporter {
                output: self.clone(),
                format: ArchiveFormat::Docker,
                dest: dest.clone(),
                dir: false,
            }),
            Kind::Local { dest } => Box::new(LocalExporter { dest: dest.clone() }),
            Kind::Tar { dest } => Box::new(TarExporter { dest: dest.clone() }),
        }
    }
}

/// `type=image`: into the store under the build's names, pushed with `push=true` or `--push`.
struct ImageExporter {
    output: Output,
    names: Vec<String>,
    push: bool,
}

impl Exporter for ImageExporter {
    fn export<'a>(&'a self, input: &'a ExportInput<'a>) -> BoxFuture<'a, Result<Option<ExportedImage>>> {
        Box::pin(async move {
            let mut all_names: Vec<String> = input.tags.to_vec();
            all_names.extend(self.names.iter().cloned());
            if self.push && all_names.is_empty() {
                return Err(Error::Usage("--push needs a name: give -t NAME".to_string()));
            }
            // An image that only goes into the store keeps the build's layers uncompressed unless asked
            // otherwise: compressing is left to whatever ships it (a push, an export), once per layer and
            // setting. Pushed images are compressed now (gzip unless asked otherwise).
            let asked = self.output.compression.is_some()
                || self.output.compression_level.is_some()
                || self.output.force_compression;
            let mut output = self.output.clone();
            if !self.push && !asked {
                output.compression = Some(Compression::None);
            }
            let built = build(input, &output, true)?;
            let mut exported = built.exported();
            for name in &all_names {
                (input.report)(format!("naming to {name}"));
                exported.names.push(
                    tag(input.store, name, built.as_ref())
                        .map_err(Error::during(format!("tagging {name}")))?,
                );
            }
            if self.push {
                let opts = PushOptions {
                    compression: output.compression.unwrap_or(Compression::Gzip),
                    level: output.compression_level,
                };
                for (name, full) in all_names.iter().zip(exported.names.clone()) {
                    (input.report)(format!("pushing {name}"));
                    let pushing = Error::during(format!("pushing {name}"));
                    let target = Reference::parse(name)
                        .map_err(|e| Error::during(format!("pushing {name}"))(e.into()))?;
                    let digest = push_with(input.store, input.registry, &full, &target, &opts, |_| {})
                        .await
                        .map_err(pushing)?;
                    exported.pushed.push((name.clone(), digest));
                }
            }
            Ok(Some(exported))
        })
    }
}

/// `type=oci` (an archive or a layout directory) and `type=docker` (an archive).
struct ArchiveExporter {
    output: Output,
    format: ArchiveFormat,
    dest: Dest,
    dir: bool,
}

impl Exporter for ArchiveExporter {
    fn export<'a>(&'a self, input: &'a ExportInput<'a>) -> BoxFuture<'a, Result<Option<ExportedImage>>> {
        Box::pin(async move {
            let built = build(input, &self.output, self.format == ArchiveFormat::Oci)?;
            let exported = built.exported();
            (input.report)(format!("writing the image to {}", self.dest));
            output::write_image_archive(
                input.store,
                &exported.digest,
                &exported.media_type,
                input.tags,
                self.format,
                &self.dest,
                self.dir,
            )?;
            Ok(Some(exported))
        })
    }
}

/// `type=local`: the filesystem into a directory (one per platform, `linux_arm64`, for several).
struct LocalExporter {
    dest: std::path::PathBuf,
}

impl Exporter for LocalExporter {
    fn export<'a>(&'a self, input: &'a ExportInput<'a>) -> BoxFuture<'a, Result<Option<ExportedImage>>> {
        Box::pin(async move {
            for result in input.platforms {
                let dest = match input.platforms.len() {
                    1 => self.dest.clone(),
                    _ => self.dest.join(platform_dir(&result.platform)),
                };
                (input.report)(format!("copying files to {}", dest.display()));
                output::write_local(input.store, &result.layers, &dest, input.source_date_epoch)?;
            }
            Ok(None)
        })
    }
}

/// `type=tar`: the filesystem as one tar.
struct TarExporter {
    dest: Dest,
}

impl Exporter for TarExporter {
    fn export<'a>(&'a self, input: &'a ExportInput<'a>) -> BoxFuture<'a, Result<Option<ExportedImage>>> {
        Box::pin(async move {
            let [result] = input.platforms else {
                return Err(Error::Usage(
                    "--output type=tar writes one filesystem; build one --platform at a time".to_string(),
                ));
            };
            (input.report)(format!("writing the filesystem to {}", self.dest));
            output::write_tar(input.store, &result.layers, &self.dest, input.source_date_epoch)?;
            Ok(None)
        })
    }
}

/// `linux_arm64`, `linux_arm_v7`: the per-platform subdirectory of a multi-platform local output (buildx's).
fn platform_dir(platform: &Platform) -> String {
    platform.to_string().replace('/', "_")
}

/// One platform's image, or an index over several.
enum Image {
    One(BuiltImage),
    Index(BuiltIndex, Vec<BuiltImage>),
}

impl Image {
    fn as_ref(&self) -> Built<'_> {
        match self {
            Image::One(image) => Built::Image(image),
            Image::Index(index, _) => Built::Index(index),
        }
    }

    fn exported(&self) -> ExportedImage {
        match self {
            Image::One(image) => ExportedImage {
                id: image.config_digest,
                digest: image.manifest_digest,
                media_type: image.media_type.clone(),
                size: image.manifest.len() as u64,
                config_digests: vec![image.config_digest],
                names: Vec::new(),
                pushed: Vec::new(),
            },
            Image::Index(index, images) => ExportedImage {
                id: index.digest,
                digest: index.digest,
                media_type: index.media_type.clone(),
                size: index.index.len() as u64,
                config_digests: images.iter().map(|i| i.config_digest).collect(),
                names: Vec::new(),
                pushed: Vec::new(),
            },
        }
    }
}

/// Writes each platform's image into the store (the base image's blobs as they are, the build's own layers
/// exported from snapshots), and an index over them when there are several.
fn build(input: &ExportInput<'_>, output: &Output, oci_default: bool) -> Result<Image> {
    let defaults = ImageOptions::default();
    let opts = ImageOptions {
        compression: output.compression.unwrap_or(defaults.compression),
        level: output.compression_level,
        force_compression: output.force_compression,
        oci_mediatypes: output.oci_mediatypes.unwrap_or(oci_default),
        source_date_epoch: input.source_date_epoch,
        annotations: output.annotations.clone(),
        labels: input.labels.clone(),
        config_extra: BTreeMap::new(),
    };
    let mut built = Vec::new();
    for result in input.platforms {
        let base = match &result.base_manifest {
            Some(manifest) => {
                let base = BaseImage::from_store(input.store, manifest)?;
                if base.layers.len() != result.base_layers {
                    return Err(Error::invalid(
                        format!("base image {manifest}"),
                        format!(
                            "it has {} layers, the build found {}",
                            base.layers.len(),
                            result.base_layers
                        ),
                    ));
                }
                base
            }
            None => BaseImage::default(),
        };
        let own = result.layers.get(result.base_layers..).unwrap_or_default();
        built.push(build_image(
            input.store,
            &base,
            own,
            &result.image,
            &result.platform,
            &ImageOptions {
                config_extra: result.config_extra.clone(),
                ..opts.clone()
            },
        )?);
    }
    if built.len() == 1 {
        return Ok(Image::One(built.remove(0)));
    }
    let index = build_index(
        input.store,
        &built,
        opts.oci_mediatypes,
        &output.index_annotations,
    )?;
    Ok(Image::Index(index, built))
}
