//! `ADD https://...`: downloads a file into a fresh snapshot, verifying `--checksum` while it streams.

use futures::StreamExt;
use futures::future::BoxFuture;
use kiln_cache::Store;
use kiln_llb::Platform;

use super::{LayerRef, Loaded, Source, SourceError};
use sha2::{Digest as _, Sha256};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Files over http(s), each into a snapshot of its own.
pub struct HttpSource {
    store: Store,
}

impl HttpSource {
    pub fn new(store: Store) -> HttpSource {
        HttpSource { store }
    }
}

impl Source for HttpSource {
    fn load<'a>(
        &'a self,
        op: &'a kiln_llb::Source,
        _: &'a Platform,
    ) -> BoxFuture<'a, Result<Loaded, SourceError>> {
        Box::pin(async move {
            let kiln_llb::Source::Http {
                url,
                checksum,
                filename,
            } = op
            else {
                return Err(SourceError::Unsupported(format!(
                    "{} is not an http source",
                    op.kind()
                )));
            };
            let dir = self.store.prepare_snapshot()?;
            fetch(url, checksum.as_deref(), filename.as_deref(), &dir.upper)
                .await
                .map_err(|message| SourceError::Http {
                    url: url.clone(),
                    message,
                })?;
            let snapshot = self.store.commit_snapshot(dir, None)?;
            Ok(Loaded::Layers(vec![LayerRef { snapshot, blob: None }]))
        })
    }
}

/// Downloads `url` to `dir/<filename>` with mode 0600 (what docker gives remote ADD files).
async fn fetch(url: &str, checksum: Option<&str>, filename: Option<&str>, dir: &Path) -> Result<(), String> {
    let expected = match checksum {
        Some(c) => Some(parse_checksum(c)?),
        None => None,
    };
    let name = filename
        .filter(|n| !n.is_empty() && !n.contains('/'))
        .unwrap_or("index.html");
    let response = reqwest::get(url).await.map_err(|e| format!("fetching: {e}"))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("the server answered {status}"));
    }
    let path = dir.join(name);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("creating {}: {e}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| format!("fetching: {e}"))?;
        hasher.update(&chunk);
        file.write_all(&chunk)
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    file.sync_all()
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    if let Some(expected) = expected {
        let actual = hex::encode(hasher.finalize());
        if actual != expected {
            return Err(format!(
                "checksum mismatch: expected sha256:{expected}, got sha256:{actual}"
            ));
        }
    }
    Ok(())
}

/// `--checksum=sha256:<hex>`, the only algorithm BuildKit accepts for ADD.
fn parse_checksum(checksum: &str) -> Result<String, String> {
    let hex = checksum
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("unsupported --checksum {checksum:?}: write sha256:<64 hex digits>"))?;
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex.to_ascii_lowercase())
    } else {
        Err(format!(
            "invalid --checksum {checksum:?}: write sha256:<64 hex digits>"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums() {
        assert!(parse_checksum(&format!("sha256:{}", "a".repeat(64))).is_ok());
        assert!(parse_checksum("md5:abc").is_err());
        assert!(parse_checksum("sha256:xyz").is_err());
    }
}
