//! `--cache-to` and `--cache-from` as buildx writes them: comma-separated `key=value` pairs with a `type`,
//! or a bare image reference for `type=registry,ref=...`.

use std::path::PathBuf;

use kiln_cache::Compression;

use crate::Error;

/// What `mode=` exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// The records behind the final image only.
    #[default]
    Min,
    /// Every step of every stage the build solved.
    Max,
}

/// Where `--cache-to` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Registry {
        reference: String,
        /// The description as the config of one image manifest (true), or that manifest inside an index.
        image_manifest: bool,
    },
    /// An OCI layout directory; the entry is named `tag`.
    Local { dest: PathBuf, tag: String },
    /// The image config of the build's image (min mode only).
    Inline,
}

/// One `--cache-to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheTo {
    pub destination: Destination,
    pub mode: Mode,
    pub compression: Compression,
    pub compression_level: Option<i32>,
    /// OCI media types for layers (true) or docker's.
    pub oci_media_types: bool,
    /// An export that fails is a warning, not a failed build.
    pub ignore_error: bool,
    /// `cache-mounts=true`: the contents of the build's `RUN --mount=type=cache` directories travel too.
    pub cache_mounts: bool,
}

/// One `--cache-from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheFrom {
    /// A cache manifest, or an image with an inline cache.
    Registry { reference: String },
    /// An OCI layout directory: the entry `digest`, else the one named `tag`.
    Local {
        src: PathBuf,
        tag: String,
        digest: Option<String>,
    },
}

impl CacheFrom {
    /// What messages call it.
    pub fn name(&self) -> String {
        match self {
            CacheFrom::Registry { reference } => reference.clone(),
            CacheFrom::Local { src, .. } => src.display().to_string(),
        }
    }
}

/// The tag a local cache entry gets when none is given, as BuildKit's local cache uses.
const DEFAULT_TAG: &str = "latest";

/// Keys buildx passes that change nothing here.
const ACCEPTED_NOOP: &[&str] = &["force-compression", "store"];

struct Pairs<'a> {
    raw: &'a str,
    flag: &'static str,
    pairs: Vec<(String, String)>,
}

impl<'a> Pairs<'a> {
    fn parse(raw: &'a str, flag: &'static str) -> Result<Pairs<'a>, Error> {
        let mut pairs = Vec::new();
        if !raw.contains('=') {
            // buildx's shorthand: a bare reference is a registry cache.
            pairs.push(("type".to_string(), "registry".to_string()));
            pairs.push(("ref".to_string(), raw.trim().to_string()));
        } else {
            for part in raw.split(',').filter(|p| !p.trim().is_empty()) {
                let (key, value) = part
                    .split_once('=')
                    .ok_or_else(|| Error::Usage(format!("{flag} {raw:?}: {part:?} is not key=value")))?;
                pairs.push((key.trim().to_ascii_lowercase(), value.trim().to_string()));
            }
        }
        Ok(Pairs { raw, flag, pairs })
    }

    fn take(&mut self, key: &str) -> Option<String> {
        let position = self.pairs.iter().position(|(k, _)| k == key)?;
        Some(self.pairs.remove(position).1)
    }

    fn bool(&mut self, key: &str, default: bool) -> Result<bool, Error> {
        match self.take(key).as_deref() {
            None => Ok(default),
            Some("true" | "1" | "") => Ok(true),
            Some("false" | "0") => Ok(false),
            Some(other) => Err(self.bad(&format!("{key}={other} is not true or false"))),
        }
    }

    fn required(&mut self, key: &str, kind: &str) -> Result<String, Error> {
        match self.take(key) {
            Some(value) if !value.is_empty() => Ok(value),
            _ => Err(self.bad(&format!("type={kind} needs {key}="))),
        }
    }

    fn bad(&self, why: &str) -> Error {
        Error::Usage(format!("{} {:?}: {why}", self.flag, self.raw))
    }

    /// Fails on keys nothing took, so a typo is not silently a default.
    fn done(mut self) -> Result<(), Error> {
        self.pairs.retain(|(k, _)| !ACCEPTED_NOOP.contains(&k.as_str()));
        match self.pairs.first() {
            None => Ok(()),
            Some((key, _)) => Err(self.bad(&format!("unknown option {key:?}"))),
        }
    }

    fn kind(&mut self) -> Result<String, Error> {
        let kind = self.take("type").unwrap_or_else(|| "registry".to_string());
        match kind.as_str() {
            "registry" | "local" | "inline" => Ok(kind),
            "gha" | "s3" | "azblob" => Err(self.bad(&format!(
                "type={kind} is not supported; use type=registry (any OCI registry) or type=local"
            ))),
            other => Err(self.bad(&format!(
                "unknown cache type {other:?} (registry, local or inline)"
            ))),
        }
    }
}

/// Parses one `--cache-to`.
pub fn parse_cache_to(raw: &str) -> Result<CacheTo, Error> {
    let mut p = Pairs::parse(raw, "--cache-to")?;
    let kind = p.kind()?;
    let destination = match kind.as_str() {
        "registry" => Destination::Registry {
            reference: p.required("ref", "registry")?,
            image_manifest: p.bool("image-manifest", true)?,
        },
        "local" => Destination::Local {
            dest: PathBuf::from(p.required("dest", "local")?),
            tag: p.take("tag").unwrap_or_else(|| DEFAULT_TAG.to_string()),
        },
        _ => Destination::Inline,
    };
    let mode = match p.take("mode").as_deref() {
        None | Some("min") => Mode::Min,
        Some("max") => Mode::Max,
        Some(other) => return Err(p.bad(&format!("mode={other} is not min or max"))),
    };
    if destination == Destination::Inline && mode == Mode::Max {
        return Err(p.bad(
            "type=inline holds the final image's records only (mode=min); use type=registry for mode=max",
        ));
    }
    let compression = match p.take("compression").as_deref() {
        None | Some("gzip") => Compression::Gzip,
        Some("zstd") => Compression::Zstd,
        Some("uncompressed") => Compression::None,
        Some(other) => return Err(p.bad(&format!("compression={other} is not gzip, zstd or uncompressed"))),
    };
    let compression_level = match p.take("compression-level") {
        None => None,
        Some(level) => Some(
            level
                .parse::<i32>()
                .map_err(|_| p.bad(&format!("compression-level={level} is not a number")))?,
        ),
    };
    kiln_exporter::export::effective_level(compression, compression_level)
        .map_err(|e| p.bad(&e.to_string()))?;
    let oci_media_types = p.bool("oci-mediatypes", true)?;
    let ignore_error = p.bool("ignore-error", false)?;
    let cache_mounts = p.bool("cache-mounts", false)?;
    if destination == Destination::Inline && cache_mounts {
        return Err(p.bad(
            "type=inline cannot carry cache mounts (they are not image layers); use type=registry or type=local",
        ));
    }
    p.done()?;
    Ok(CacheTo {
        destination,
        mode,
        compression,
        compression_level,
        oci_media_types,
        ignore_error,
        cache_mounts,
    })
}

/// Parses one `--cache-from`.
pub fn parse_cache_from(raw: &str) -> Result<CacheFrom, Error> {
    let mut p = Pairs::parse(raw, "--cache-from")?;
    let kind = p.kind()?;
    let from = match kind.as_str() {
        "registry" => CacheFrom::Registry {
            reference: p.required("ref", "registry")?,
        },
        "local" => CacheFrom::Local {
            src: PathBuf::from(p.required("src", "local")?),
            tag: p.take("tag").unwrap_or_else(|| DEFAULT_TAG.to_string()),
            digest: p.take("digest").filter(|d| !d.is_empty()),
        },
        _ => {
            return Err(
                p.bad("type=inline is for --cache-to; import an inline cache with the image's reference")
            );
        }
    };
    p.done()?;
    Ok(from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buildx_forms_parse() {
        let to =
            parse_cache_to("type=registry,ref=127.0.0.1:5000/app:cache,mode=max,compression=zstd").unwrap();
        assert_eq!(to.mode, Mode::Max);
        assert_eq!(to.compression, Compression::Zstd);
        assert_eq!(
            to.destination,
            Destination::Registry {
                reference: "127.0.0.1:5000/app:cache".to_string(),
                image_manifest: true
            }
        );
        let from = parse_cache_from("127.0.0.1:5000/app:cache").unwrap();
        assert_eq!(
            from,
            CacheFrom::Registry {
                reference: "127.0.0.1:5000/app:cache".to_string()
            }
        );
        let local = parse_cache_from("type=local,src=/tmp/c,digest=sha256:ab").unwrap();
        assert!(matches!(local, CacheFrom::Local { digest: Some(_), .. }));
        assert_eq!(
            parse_cache_to("type=inline").unwrap().destination,
            Destination::Inline
        );
    }

    #[test]
    fn mistakes_are_named() {
        let err = parse_cache_to("type=registry,ref=x,mdoe=max")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown option \"mdoe\""), "{err}");
        let err = parse_cache_to("type=local").unwrap_err().to_string();
        assert!(err.contains("needs dest="), "{err}");
        let err = parse_cache_to("type=gha").unwrap_err().to_string();
        assert!(err.contains("not supported"), "{err}");
        let err = parse_cache_to("type=inline,mode=max").unwrap_err().to_string();
        assert!(err.contains("mode=min"), "{err}");
        let err = parse_cache_to("type=registry,ref=x,compression=gzip,compression-level=12")
            .unwrap_err()
            .to_string();
        assert!(err.contains("0 to 9"), "{err}");
        let err = parse_cache_to("type=inline,cache-mounts=true")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot carry cache mounts"), "{err}");
        assert!(
            parse_cache_to("type=local,dest=/tmp/c,cache-mounts=true")
                .unwrap()
                .cache_mounts
        );
    }
}
