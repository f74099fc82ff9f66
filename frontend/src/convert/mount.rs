//! `RUN --mount=` parsing, as BuildKit keeps it apart in `convert_runmount.go`: the field names, aliases and
//! defaults of each mount type. Resolving `from=` to a stage or image is left to RUN.

use kiln_llb::{CacheSharing, MountKind};
use std::collections::HashMap;

pub(super) const MOUNT_HINT: &str = "write e.g. --mount=type=cache,target=/root/.cache or --mount=type=bind,from=STAGE,source=/src,target=/dst";

/// One `RUN --mount=`, before its `from=` is resolved to an input.
pub(super) struct ParsedMount {
    pub(super) kind: MountKind,
    pub(super) target: String,
    pub(super) source: String,
    pub(super) from: Option<String>,
    pub(super) readonly: bool,
    pub(super) owner_mode: Option<(u32, u32, u32)>,
}

/// Parses a `RUN --mount=` value (comma-separated `key=value` fields, BuildKit's names and defaults).
pub(super) fn parse_mount(spec: &str) -> Result<ParsedMount, String> {
    let mut fields: HashMap<String, String> = HashMap::new();
    let mut flags = Vec::new();
    for field in spec.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        match field.split_once('=') {
            Some((k, v)) => {
                fields.insert(k.to_lowercase(), v.to_string());
            }
            None => flags.push(field.to_lowercase()),
        }
    }
    let kind_name = fields.remove("type").unwrap_or_else(|| "bind".into());
    let target = fields
        .remove("target")
        .or_else(|| fields.remove("dst"))
        .or_else(|| fields.remove("destination"))
        .unwrap_or_default();
    let source = fields
        .remove("source")
        .or_else(|| fields.remove("src"))
        .unwrap_or_default();
    let from = fields.remove("from");
    let id = fields.remove("id");
    let bool_field = |fields: &mut HashMap<String, String>,
                      flags: &[String],
                      name: &str|
     -> Result<Option<bool>, String> {
        if flags.iter().any(|f| f == name) {
            return Ok(Some(true));
        }
        match fields.remove(name).as_deref() {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(other) => Err(format!(
                "invalid value {other:?} for mount option {name}: use true or false"
            )),
        }
    };
    let rw = bool_field(&mut fields, &flags, "rw")?.or(bool_field(&mut fields, &flags, "readwrite")?);
    let ro = bool_field(&mut fields, &flags, "ro")?.or(bool_field(&mut fields, &flags, "readonly")?);
    let required = bool_field(&mut fields, &flags, "required")?;
    let number =
        |fields: &mut HashMap<String, String>, name: &str, radix: u32| -> Result<Option<u32>, String> {
            fields
                .remove(name)
                .map(|v| u32::from_str_radix(&v, radix).map_err(|_| format!("invalid {name} {v:?} in mount")))
                .transpose()
        };
    let uid = number(&mut fields, "uid", 10)?;
    let gid = number(&mut fields, "gid", 10)?;
    let mode = number(&mut fields, "mode", 8)?;
    let owner_mode = |default_mode: u32| {
        (uid.is_some() || gid.is_some() || mode.is_some())
            .then(|| (uid.unwrap_or(0), gid.unwrap_or(0), mode.unwrap_or(default_mode)))
    };
    let (kind, readonly, owner_mode, target) = match kind_name.as_str() {
        "bind" => {
            if target.is_empty() {
                return Err("mount type=bind needs target=PATH".into());
            }
            (MountKind::Bind, !rw.unwrap_or(false), None, target)
        }
        "cache" => {
            if target.is_empty() {
                return Err("mount type=cache needs target=PATH".into());
            }
            let sharing = match fields.remove("sharing").as_deref() {
                None | Some("shared") => CacheSharing::Shared,
                Some("private") => CacheSharing::Private,
                Some("locked") => CacheSharing::Locked,
                Some(other) => {
                    return Err(format!(
                        "invalid sharing {other:?}: use shared, private or locked"
                    ));
                }
            };
            // BuildKit's default id: the target as written, cleaned (`/a/` and `/a` share one cache).
            let id = id.unwrap_or_else(|| clean_written_path(&target));
            (
                MountKind::Cache { id, sharing },
                ro.unwrap_or(false),
                owner_mode(0o755),
                target,
            )
        }
        "tmpfs" => {
            if target.is_empty() {
                return Err("mount type=tmpfs needs target=PATH".into());
            }
            let size = fields
                .remove("size")
                .map(|s| parse_size(&s).ok_or_else(|| format!("invalid tmpfs size {s:?}")))
                .transpose()?;
            (MountKind::Tmpfs { size }, false, None, target)
        }
        "secret" => {
            // As BuildKit: source= names the secret too, and the id defaults to the target's file name.
            let id = (!source.is_empty()).then(|| source.clone()).or(id).or_else(|| {
                (!target.is_empty()).then(|| target.rsplit('/').next().unwrap_or_default().to_string())
            });
            let Some(id) = id.filter(|i| !i.is_empty()) else {
                return Err("mount type=secret needs id=NAME or target=PATH".into());
            };
            let env = fields.remove("env");
            if env.as_deref().is_some_and(|e| e.is_empty() || e.contains('=')) {
                return Err("mount type=secret needs env=NAME, a variable name".into());
            }
            // With env= alone the secret is only a variable; otherwise a file, by default under /run/secrets.
            let target = match (target.is_empty(), &env) {
                (false, _) => target,
                (true, Some(_)) => String::new(),
                (true, None) => format!("/run/secrets/{}", id.rsplit('/').next().unwrap_or_default()),
            };
            (
                MountKind::Secret {
                    id,
                    required: required.unwrap_or(false),
                    env,
                },
                true,
                owner_mode(0o400),
                target,
            )
        }
        "ssh" => {
            // The default target is numbered by the RUN's ssh mounts, which RUN counts.
            let id = id.unwrap_or_else(|| "default".into());
            (
                MountKind::Ssh {
                    id,
                    required: required.unwrap_or(false),
                },
                true,
                owner_mode(0o600),
                target,
            )
        }
        other => {
            return Err(format!(
                "unsupported mount type {other:?}: use bind, cache, tmpfs, secret or ssh"
            ));
        }
    };
    if let Some(unknown) = fields.keys().next().or(flags
        .iter()
        .find(|f| !matches!(f.as_str(), "rw" | "readwrite" | "ro" | "readonly" | "required")))
    {
        return Err(format!("unexpected key {unknown:?} in mount"));
    }
    Ok(ParsedMount {
        kind,
        target,
        source,
        from,
        readonly,
        owner_mode,
    })
}

/// Go's `path.Clean`, for the default cache id: an absolute path stays absolute, a relative one relative.
fn clean_written_path(path: &str) -> String {
    let cleaned = super::paths::clean_path(path);
    if path.starts_with('/') {
        return cleaned;
    }
    match cleaned.trim_start_matches('/') {
        "" => ".".to_string(),
        relative => relative.to_string(),
    }
}

fn parse_size(text: &str) -> Option<u64> {
    let lower = text.to_lowercase();
    let digits_end = lower.find(|c: char| !c.is_ascii_digit()).unwrap_or(lower.len());
    let number: u64 = lower[..digits_end].parse().ok()?;
    let scale = match lower[digits_end..].trim_end_matches(['b', 'i']) {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts() {
        let cache =
            parse_mount("type=cache,target=/root/.cache,sharing=locked").unwrap_or_else(|e| panic!("{e}"));
        assert!(
            matches!(cache.kind, MountKind::Cache { ref id, sharing: CacheSharing::Locked } if id == "/root/.cache")
        );
        let bind = parse_mount("target=/src,from=build,source=/out").unwrap_or_else(|e| panic!("{e}"));
        assert!(bind.readonly && bind.from.as_deref() == Some("build") && bind.source == "/out");
        let secret = parse_mount("type=secret,id=npmrc").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(secret.target, "/run/secrets/npmrc");
        assert!(parse_mount("type=cache").is_err());
        assert!(parse_mount("type=nfs,target=/x").is_err());
        assert!(parse_mount("type=bind,target=/x,bogus=1").is_err());
        assert_eq!(parse_size("64m"), Some(64 << 20));
    }
}
