//! The docker CLI's `config.json`: where `docker login` leaves credentials, read so that existing docker
//! users need no second login, and written by `kiln login`/`kiln logout` in the same format.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The key docker uses for Docker Hub in `auths`, kept for compatibility with `docker login`.
const DOCKER_HUB_AUTH_KEY: &str = "https://index.docker.io/v1/";
const FILE_NAME: &str = "config.json";

/// A username and password for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The credentials found in a docker config directory.
#[derive(Clone, Debug, Default)]
pub struct DockerConfig {
    path: Option<PathBuf>,
    /// Keyed by canonical registry host (see [`canonical_registry`]).
    auths: BTreeMap<String, Credentials>,
}

/// `$DOCKER_CONFIG`, else `$HOME/.docker`, as the docker CLI chooses.
pub fn default_docker_config_dir() -> Option<PathBuf> {
    docker_config_dir_from(std::env::var_os("DOCKER_CONFIG"), std::env::var_os("HOME"))
}

fn docker_config_dir_from(docker_config: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    match docker_config.filter(|v| !v.is_empty()) {
        Some(dir) => Some(PathBuf::from(dir)),
        None => home
            .filter(|h| !h.is_empty())
            .map(|h| PathBuf::from(h).join(".docker")),
    }
}

/// The host[:port] an `auths` key or registry name refers to. Keys come in several shapes
/// (`https://host/v1/`, `host:5000`, `http://host`), and Docker Hub has several names.
pub fn canonical_registry(name: &str) -> String {
    let name = name.trim();
    let name = name
        .strip_prefix("https://")
        .or_else(|| name.strip_prefix("http://"))
        .unwrap_or(name);
    let host = name.split('/').next().unwrap_or(name).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => "docker.io".to_owned(),
        _ => host,
    }
}

/// The `auths` key `kiln login` writes for a registry: docker's legacy URL for Docker Hub, the host
/// otherwise.
fn auth_key(registry: &str) -> String {
    match canonical_registry(registry).as_str() {
        "docker.io" => DOCKER_HUB_AUTH_KEY.to_owned(),
        host => host.to_owned(),
    }
}

impl DockerConfig {
    /// Reads `DIR/config.json`. A missing file means no credentials; an unreadable or malformed one is an
    /// error, since silently pulling anonymously would hide the cause of a later "unauthorized".
    pub fn load(dir: &Path) -> Result<DockerConfig> {
        let path = dir.join(FILE_NAME);
        let Some(root) = read_json(&path)? else {
            return Ok(DockerConfig {
                path: Some(path),
                auths: BTreeMap::new(),
            });
        };
        for key in ["credsStore", "credHelpers"] {
            if root.get(key).is_some_and(|v| !is_empty_value(v)) {
                tracing::warn!(
                    path = %path.display(),
                    "{key} in the docker config is not supported by kiln; those credentials are ignored \
                     (`kiln login` stores credentials in the file itself)"
                );
            }
        }
        let mut auths = BTreeMap::new();
        if let Some(entries) = root.get("auths").and_then(Value::as_object) {
            for (key, entry) in entries {
                match parse_entry(entry) {
                    Ok(Some(creds)) => {
                        // An exact key written by docker for this host wins over a variant spelling.
                        let canon = canonical_registry(key);
                        let exact = key.eq_ignore_ascii_case(&auth_key(&canon));
                        if exact || !auths.contains_key(&canon) {
                            auths.insert(canon, creds);
                        }
                    }
                    Ok(None) => {}
                    Err(reason) => tracing::warn!(
                        path = %path.display(),
                        registry = %key,
                        "ignoring unusable docker config entry: {reason}"
                    ),
                }
            }
        }
        Ok(DockerConfig {
            path: Some(path),
            auths,
        })
    }

    /// The file this was read from.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Credentials for `registry` (any spelling: `docker.io`, `localhost:5000`, `https://host/v1/`).
    pub fn credentials(&self, registry: &str) -> Option<&Credentials> {
        self.auths.get(&canonical_registry(registry))
    }

    pub(crate) fn set(&mut self, registry: &str, creds: Option<Credentials>) {
        let key = canonical_registry(registry);
        match creds {
            Some(c) => self.auths.insert(key, c),
            None => self.auths.remove(&key),
        };
    }
}

fn is_empty_value(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

fn parse_entry(entry: &Value) -> std::result::Result<Option<Credentials>, String> {
    let field = |name: &str| entry.get(name).and_then(Value::as_str).filter(|s| !s.is_empty());
    if let Some(auth) = field("auth") {
        let decoded = STANDARD
            .decode(auth.trim())
            .map_err(|e| format!("`auth` is not base64: {e}"))?;
        let decoded = String::from_utf8(decoded).map_err(|_| "`auth` is not UTF-8".to_owned())?;
        let (username, password) = decoded
            .split_once(':')
            .ok_or_else(|| "`auth` does not decode to user:password".to_owned())?;
        return Ok(Some(Credentials {
            username: username.to_owned(),
            password: password.to_owned(),
        }));
    }
    if let (Some(username), Some(password)) = (field("username"), field("password")) {
        return Ok(Some(Credentials {
            username: username.to_owned(),
            password: password.to_owned(),
        }));
    }
    if field("identitytoken").is_some() {
        return Err("identity tokens (OAuth refresh tokens) are not supported".to_owned());
    }
    Ok(None)
}

fn read_json(path: &Path) -> Result<Option<Map<String, Value>>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::DockerConfig {
                path: path.to_owned(),
                reason: e.to_string(),
            });
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Some(Map::new()));
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(Some(map)),
        Ok(_) => Err(Error::DockerConfig {
            path: path.to_owned(),
            reason: "not a JSON object".to_owned(),
        }),
        Err(e) => Err(Error::DockerConfig {
            path: path.to_owned(),
            reason: format!("invalid JSON: {e}"),
        }),
    }
}

/// Stores `creds` for `registry` in `DIR/config.json` (`None` removes the entry), leaving every other key
/// as it was. Returns whether an entry existed before.
pub(crate) fn update_auth(dir: &Path, registry: &str, creds: Option<&Credentials>) -> Result<bool> {
    let path = dir.join(FILE_NAME);
    let mut root = read_json(&path)?.unwrap_or_default();
    let auths = root.entry("auths").or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(auths) = auths else {
        return Err(Error::DockerConfig {
            path,
            reason: "`auths` is not an object".to_owned(),
        });
    };
    let canon = canonical_registry(registry);
    let stale: Vec<String> = auths
        .keys()
        .filter(|k| canonical_registry(k) == canon)
        .cloned()
        .collect();
    let existed = !stale.is_empty();
    for k in stale {
        auths.remove(&k);
    }
    match creds {
        Some(c) => {
            let auth = STANDARD.encode(format!("{}:{}", c.username, c.password));
            auths.insert(auth_key(registry), serde_json::json!({ "auth": auth }));
        }
        None if !existed => return Ok(false),
        None => {}
    }
    let mut bytes = serde_json::to_vec_pretty(&Value::Object(root)).map_err(|e| Error::DockerConfig {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    bytes.push(b'\n');
    write_atomic(dir, &path, &bytes)?;
    Ok(existed)
}

/// Writes through a 0600 temp file in the same directory and renames it over the target, so a reader
/// never sees a half-written file and the password is never readable by others, not even briefly.
fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    let io_err = |what: &str, p: &Path, e: std::io::Error| Error::Io {
        context: format!("{what} {}", p.display()),
        source: e,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io_err("create", dir, e))?;
    let tmp = dir.join(format!(".{FILE_NAME}.kiln-{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        // `mode` only applies when the file is created; a leftover temp file may have other bits.
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(io_err("write", &tmp, e));
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(io_err("replace", path, e));
    }
    // The rename is durable only once the directory entry is; failing to sync it is not worth an error.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn config_dir_resolution() {
        assert_eq!(
            docker_config_dir_from(Some("/cfg".into()), Some("/home/u".into())),
            Some(PathBuf::from("/cfg"))
        );
        assert_eq!(
            docker_config_dir_from(None, Some("/home/u".into())),
            Some(PathBuf::from("/home/u/.docker"))
        );
        assert_eq!(
            docker_config_dir_from(Some("".into()), Some("/home/u".into())),
            Some(PathBuf::from("/home/u/.docker"))
        );
        assert_eq!(docker_config_dir_from(None, None), None);
    }

    #[test]
    fn canonical_names() {
        assert_eq!(canonical_registry("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(canonical_registry("docker.io"), "docker.io");
        assert_eq!(canonical_registry("registry-1.docker.io"), "docker.io");
        assert_eq!(canonical_registry("http://localhost:5000/v2/"), "localhost:5000");
        assert_eq!(canonical_registry("Quay.IO"), "quay.io");
    }

    #[test]
    fn reads_all_entry_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let auth = STANDARD.encode("alice:pa:ss");
        fs::write(
            dir.path().join("config.json"),
            serde_json::json!({
                "auths": {
                    "https://index.docker.io/v1/": { "auth": auth },
                    "localhost:5000": { "username": "bob", "password": "pw" },
                    "https://ghcr.io": { "identitytoken": "tok" },
                    "bad.example": { "auth": "%%%" },
                    "empty.example": {}
                },
                "credsStore": "desktop"
            })
            .to_string(),
        )
        .unwrap();
        let cfg = DockerConfig::load(dir.path()).unwrap();
        let hub = cfg.credentials("docker.io").unwrap();
        assert_eq!((hub.username.as_str(), hub.password.as_str()), ("alice", "pa:ss"));
        assert_eq!(cfg.credentials("index.docker.io"), Some(hub));
        assert_eq!(cfg.credentials("localhost:5000").unwrap().username, "bob");
        assert!(cfg.credentials("ghcr.io").is_none());
        assert!(cfg.credentials("bad.example").is_none());
        assert!(cfg.credentials("other:1").is_none());
        assert!(!format!("{hub:?}").contains("pa:ss"));
    }

    #[test]
    fn missing_file_is_empty_and_malformed_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(DockerConfig::load(dir.path()).unwrap().credentials("x").is_none());
        fs::write(dir.path().join("config.json"), "{ nope").unwrap();
        let err = DockerConfig::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("config.json") && err.contains("invalid JSON"),
            "{err}"
        );
    }

    #[test]
    fn update_keeps_other_keys_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        fs::write(
            &path,
            r#"{"psFormat":"table {{.ID}}","auths":{"http://localhost:5000/v2/":{"auth":"eDp5"},"quay.io":{"auth":"eDp5"}}}"#,
        )
        .unwrap();
        let creds = Credentials {
            username: "u".into(),
            password: "p".into(),
        };
        assert!(update_auth(dir.path(), "localhost:5000", Some(&creds)).unwrap());
        let v: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(v["psFormat"], "table {{.ID}}");
        assert_eq!(v["auths"]["quay.io"]["auth"], "eDp5");
        assert!(v["auths"].get("http://localhost:5000/v2/").is_none());
        assert_eq!(v["auths"]["localhost:5000"]["auth"], STANDARD.encode("u:p"));
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);

        assert!(update_auth(dir.path(), "localhost:5000", None).unwrap());
        assert!(!update_auth(dir.path(), "localhost:5000", None).unwrap());
        let v: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert!(v["auths"].get("localhost:5000").is_none());
        assert_eq!(v["auths"]["quay.io"]["auth"], "eDp5");
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temp file left behind");
    }

    #[test]
    fn update_creates_directory_and_uses_hub_key() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("new");
        let creds = Credentials {
            username: "u".into(),
            password: "p".into(),
        };
        assert!(!update_auth(&sub, "docker.io", Some(&creds)).unwrap());
        let v: Value = serde_json::from_slice(&fs::read(sub.join("config.json")).unwrap()).unwrap();
        assert!(v["auths"].get(DOCKER_HUB_AUTH_KEY).is_some());
    }

    #[test]
    fn malformed_file_is_not_clobbered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        fs::write(&path, "[1,2]").unwrap();
        assert!(update_auth(dir.path(), "x.io", None).is_err());
        assert_eq!(fs::read_to_string(&path).unwrap(), "[1,2]");
    }
}
