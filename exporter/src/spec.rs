//! `-o/--output` in buildx's syntax: `type=image|oci|docker|local|tar` with comma-separated options, or the
//! shorthands `-o DIR` (type=local) and `-o -` (type=tar to stdout). A new output kind is a [`Kind`], its
//! options here, and its [`Exporter`](crate::Exporter) in `exporters.rs`.

use kiln_cache::Compression;
use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::output::Dest;

/// Fails the parse of `raw`: `reason` says what is wrong and what to write instead.
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err(Error::Usage(format!($($arg)*)))
    };
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Into the local store under the build's names (and `name=`), pushed with `push=true`.
    Image {
        names: Vec<String>,
        push: bool,
    },
    /// An OCI archive, or a layout directory with `tar=false` or a directory dest.
    Oci {
        dest: Dest,
        dir: bool,
    },
    Docker {
        dest: Dest,
    },
    Local {
        dest: PathBuf,
    },
    Tar {
        dest: Dest,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub kind: Kind,
    pub compression: Option<Compression>,
    pub compression_level: Option<i32>,
    pub force_compression: bool,
    pub oci_mediatypes: Option<bool>,
    /// `annotation.KEY=VALUE` (and `annotation-manifest.KEY`): on each image manifest.
    pub annotations: BTreeMap<String, String>,
    /// `annotation-index.KEY=VALUE`: on the index of a multi-platform image.
    pub index_annotations: BTreeMap<String, String>,
}

impl Output {
    pub fn image(names: Vec<String>, push: bool) -> Output {
        Output {
            kind: Kind::Image { names, push },
            compression: None,
            compression_level: None,
            force_compression: false,
            oci_mediatypes: None,
            annotations: BTreeMap::new(),
            index_annotations: BTreeMap::new(),
        }
    }

    /// Whether the output is an image (as opposed to a filesystem).
    pub fn is_image(&self) -> bool {
        !matches!(self.kind, Kind::Local { .. } | Kind::Tar { .. })
    }
}

/// Parses one `-o` value.
pub fn parse(raw: &str) -> Result<Output> {
    if raw == "-" {
        return Ok(Output {
            kind: Kind::Tar { dest: Dest::Stdout },
            ..Output::image(Vec::new(), false)
        });
    }
    if !raw.contains('=') {
        return Ok(Output {
            kind: Kind::Local {
                dest: PathBuf::from(raw),
            },
            ..Output::image(Vec::new(), false)
        });
    }
    let mut fields: BTreeMap<String, String> = BTreeMap::new();
    for field in raw.split(',').filter(|f| !f.is_empty()) {
        let Some((key, value)) = field.split_once('=') else {
            bail!("invalid --output {raw:?}: {field:?} is not KEY=VALUE");
        };
        if fields.insert(key.trim().to_string(), value.to_string()).is_some() {
            bail!("invalid --output {raw:?}: {key} is given twice");
        }
    }
    let kind_name = fields.remove("type").unwrap_or_else(|| "local".to_string());
    let dest = fields.remove("dest");
    let flag = |fields: &mut BTreeMap<String, String>, key: &str| -> Result<Option<bool>> {
        match fields.remove(key).as_deref() {
            None => Ok(None),
            Some("true") | Some("1") => Ok(Some(true)),
            Some("false") | Some("0") => Ok(Some(false)),
            Some(other) => bail!("invalid --output {raw:?}: {key}={other} (use true or false)"),
        }
    };
    let file_dest = |dest: Option<String>| -> Result<Dest> {
        match dest.as_deref() {
            None => bail!("--output type={kind_name} needs dest=FILE (or dest=- for stdout)"),
            Some("-") => Ok(Dest::Stdout),
            Some(path) => Ok(Dest::Path(PathBuf::from(path))),
        }
    };
    let kind = match kind_name.as_str() {
        "image" | "registry" => {
            let names: Vec<String> = fields
                .remove("name")
                .map(|n| {
                    n.split(';')
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            let push = flag(&mut fields, "push")?.unwrap_or(kind_name == "registry");
            Kind::Image { names, push }
        }
        "oci" => {
            let tar = flag(&mut fields, "tar")?;
            let dest = file_dest(dest)?;
            let dir = match (&dest, tar) {
                (_, Some(tar)) => !tar,
                (Dest::Path(path), None) => path.is_dir() || path.to_string_lossy().ends_with('/'),
                (Dest::Stdout, None) => false,
            };
            if dir && dest == Dest::Stdout {
                bail!("--output type=oci,tar=false needs a directory dest, not stdout");
            }
            Kind::Oci { dest, dir }
        }
        "docker" => Kind::Docker {
            dest: file_dest(dest)?,
        },
        "local" => match dest.as_deref() {
            None | Some("-") => bail!("--output type=local needs dest=DIR"),
            Some(path) => Kind::Local {
                dest: PathBuf::from(path),
            },
        },
        "tar" => Kind::Tar {
            dest: file_dest(dest)?,
        },
        other => bail!("unknown --output type {other:?}: use image, oci, docker, local or tar"),
    };
    let mut output = Output {
        kind,
        ..Output::image(Vec::new(), false)
    };
    if let Some(c) = fields.remove("compression") {
        output.compression = Some(match c.as_str() {
            "gzip" => Compression::Gzip,
            "zstd" => Compression::Zstd,
            "uncompressed" => Compression::None,
            other => bail!("invalid compression {other:?}: use gzip, zstd or uncompressed"),
        });
    }
    if let Some(level) = fields.remove("compression-level") {
        match level.parse() {
            Ok(level) => output.compression_level = Some(level),
            Err(_) => bail!("invalid compression-level {level:?}: use a number"),
        }
    }
    output.force_compression = flag(&mut fields, "force-compression")?.unwrap_or(false);
    output.oci_mediatypes = flag(&mut fields, "oci-mediatypes")?;
    let keys: Vec<String> = fields.keys().cloned().collect();
    for key in keys {
        let value = fields.remove(&key).unwrap_or_default();
        if let Some(name) = key.strip_prefix("annotation-index.") {
            output.index_annotations.insert(name.to_string(), value);
        } else if let Some(name) = key
            .strip_prefix("annotation.")
            .or_else(|| key.strip_prefix("annotation-manifest."))
        {
            output.annotations.insert(name.to_string(), value);
        } else {
            bail!("invalid --output {raw:?}: unknown option {key:?}");
        }
    }
    if !output.is_image()
        && (output.compression.is_some() || !output.annotations.is_empty() || output.oci_mediatypes.is_some())
    {
        bail!(
            "invalid --output {raw:?}: type={kind_name} writes a filesystem, which has no layers or manifests"
        );
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buildx_forms() -> Result<()> {
        assert_eq!(parse("out")?.kind, Kind::Local { dest: "out".into() });
        assert_eq!(parse("-")?.kind, Kind::Tar { dest: Dest::Stdout });
        assert_eq!(parse("type=tar,dest=-")?.kind, Kind::Tar { dest: Dest::Stdout });
        assert_eq!(
            parse("type=oci,dest=x.tar")?.kind,
            Kind::Oci {
                dest: Dest::Path("x.tar".into()),
                dir: false
            }
        );
        assert_eq!(
            parse("type=oci,dest=x,tar=false")?.kind,
            Kind::Oci {
                dest: Dest::Path("x".into()),
                dir: true
            }
        );
        assert_eq!(
            parse("type=image,name=a:1;b:2,push=true")?.kind,
            Kind::Image {
                names: vec!["a:1".into(), "b:2".into()],
                push: true
            }
        );
        let o = parse(
            "type=docker,dest=d.tar,compression=zstd,compression-level=3,force-compression=true,oci-mediatypes=true,annotation.org.x=1,annotation-index.y=2",
        )?;
        assert_eq!(o.compression, Some(Compression::Zstd));
        assert_eq!(o.compression_level, Some(3));
        assert!(o.force_compression);
        assert_eq!(o.annotations.get("org.x").map(String::as_str), Some("1"));
        assert_eq!(o.index_annotations.get("y").map(String::as_str), Some("2"));
        for bad in [
            "type=nope,dest=x",
            "type=oci",
            "type=local",
            "type=tar,dest=x,compression=gzip",
            "type=image,bogus=1",
            "type=oci,dest=x,tar=maybe",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        Ok(())
    }
}
