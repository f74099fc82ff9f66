use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use flate2::{Compression, GzBuilder};
use sha2::{Digest, Sha256};

/// Applets linked to `/bin/busybox` in the base image.
pub const BUSYBOX_APPLETS: &[&str] = &[
    "cat", "date", "echo", "env", "false", "grep", "id", "ls", "mkdir", "rm", "sh", "sleep", "stat", "touch",
    "true", "uname", "wc",
];

/// 2000-01-01T00:00:00Z: a fixed, non-zero mtime keeps the layer byte-identical across runs while staying
/// clear of tools that treat 0 as "unset".
const FIXED_MTIME: u64 = 946_684_800;
const FIXED_CREATED: &str = "2000-01-01T00:00:00Z";
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// What [`busybox_oci_layout`] wrote: an OCI image layout holding one single-layer image tagged `latest`.
#[derive(Clone, Debug)]
pub struct OciLayout {
    pub dir: PathBuf,
    pub arch: String,
    /// Digest and size of the image manifest (also the entry in `index.json`).
    pub manifest_digest: String,
    pub manifest_size: u64,
    pub manifest: Vec<u8>,
    pub config_digest: String,
    pub config_size: u64,
    pub config: Vec<u8>,
    /// The gzip-compressed layer blob.
    pub layer_digest: String,
    pub layer_size: u64,
    /// sha256 of the uncompressed layer tar.
    pub diff_id: String,
}

impl OciLayout {
    /// `DIR/blobs/sha256/<hex>` for a `sha256:<hex>` digest.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.dir.join("blobs").join("sha256").join(hex)
    }

    /// Every blob of the image (config, layer, manifest) as `(digest, bytes)`.
    pub fn blobs(&self) -> io::Result<Vec<(String, Vec<u8>)>> {
        [&self.config_digest, &self.layer_digest, &self.manifest_digest]
            .into_iter()
            .map(|d| Ok((d.clone(), fs::read(self.blob_path(d))?)))
            .collect()
    }

    /// `oci:DIR:latest`, the skopeo transport name of the image.
    pub fn skopeo_ref(&self) -> String {
        format!("oci:{}:latest", self.dir.display())
    }
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Builds a busybox base image for `arch` in `dir` from the host's `/bin/busybox`.
///
/// `/bin/busybox` comes from Debian's `busybox-static` and is a static amd64 binary on these machines.
/// For another architecture, fetch that architecture's binary and use [`busybox_oci_layout_from`]:
///
/// ```text
/// dpkg --add-architecture arm64 && apt-get update
/// apt-get download busybox-static:arm64 && dpkg-deb -x busybox-static_*_arm64.deb /tmp/bb-arm64
/// # then busybox_oci_layout_from(dir, "arm64", Path::new("/tmp/bb-arm64/bin/busybox"))
/// ```
///
/// Tests that only exercise manifests and platform selection may label the host binary with any
/// architecture; only running the image needs the matching binary (or qemu-user via binfmt_misc).
pub fn busybox_oci_layout(dir: &Path, arch: &str) -> io::Result<OciLayout> {
    busybox_oci_layout_from(dir, arch, Path::new("/bin/busybox"))
}

/// Like [`busybox_oci_layout`] with an explicit busybox binary.
pub fn busybox_oci_layout_from(dir: &Path, arch: &str, busybox: &Path) -> io::Result<OciLayout> {
    let binary = fs::read(busybox).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("read {} (apt-get install busybox-static): {e}", busybox.display()),
        )
    })?;
    let tar = layer_tar(&binary)?;
    let diff_id = sha256_digest(&tar);
    let layer = gzip(&tar)?;
    let layer_digest = sha256_digest(&layer);

    let mut platform = serde_json::json!({ "architecture": arch, "os": "linux" });
    if let Some(variant) = default_variant(arch) {
        platform["variant"] = variant.into();
    }
    let mut config = serde_json::json!({
        "created": FIXED_CREATED,
        "config": { "Env": [PATH_ENV], "Cmd": ["sh"] },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{ "created": FIXED_CREATED, "created_by": "kiln-testutil: busybox-static" }],
    });
    if let (Some(cfg), Some(plat)) = (config.as_object_mut(), platform.as_object()) {
        cfg.extend(plat.clone());
    }
    let config = serde_json::to_vec(&config)?;
    let config_digest = sha256_digest(&config);

    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": { "mediaType": MEDIA_CONFIG, "digest": config_digest, "size": config.len() },
        "layers": [{ "mediaType": MEDIA_LAYER_GZIP, "digest": layer_digest, "size": layer.len() }],
    }))?;
    let manifest_digest = sha256_digest(&manifest);

    let desc = serde_json::json!({
        "mediaType": MEDIA_MANIFEST,
        "digest": manifest_digest,
        "size": manifest.len(),
        "annotations": { "org.opencontainers.image.ref.name": "latest" },
        "platform": platform,
    });
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [desc],
    }))?;

    let blobs = dir.join("blobs").join("sha256");
    fs::create_dir_all(&blobs)?;
    for (digest, data) in [
        (&layer_digest, &layer),
        (&config_digest, &config),
        (&manifest_digest, &manifest),
    ] {
        let hex = digest.trim_start_matches("sha256:");
        fs::write(blobs.join(hex), data)?;
    }
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    fs::write(dir.join("index.json"), &index)?;

    Ok(OciLayout {
        dir: dir.to_path_buf(),
        arch: arch.to_owned(),
        manifest_size: manifest.len() as u64,
        manifest_digest,
        manifest,
        config_size: config.len() as u64,
        config_digest,
        config,
        layer_size: layer.len() as u64,
        layer_digest,
        diff_id,
    })
}

/// What [`busybox_index_layout`] wrote: an OCI image layout whose `latest` is an image index with one busybox
/// image per architecture.
#[derive(Clone, Debug)]
pub struct IndexLayout {
    pub dir: PathBuf,
    pub index_digest: String,
    pub index: Vec<u8>,
    /// One image per architecture, in the order asked for (their blobs live in `dir` too).
    pub images: Vec<OciLayout>,
}

impl IndexLayout {
    /// `oci:DIR:latest`; copy it with `skopeo copy --all` to keep the index.
    pub fn skopeo_ref(&self) -> String {
        format!("oci:{}:latest", self.dir.display())
    }
}

/// Builds a multi-platform busybox image in `dir`: an image index over [`busybox_oci_layout`] images for
/// `arches`. Every image holds the host's binary (see there), so they differ in their configs only.
pub fn busybox_index_layout(dir: &Path, arches: &[&str]) -> io::Result<IndexLayout> {
    let host = Path::new("/bin/busybox");
    let images: Vec<(&str, &Path)> = arches.iter().map(|arch| (*arch, host)).collect();
    busybox_index_layout_from(dir, &images)
}

/// Like [`busybox_index_layout`] with each architecture's own busybox binary, so that a foreign image really
/// runs foreign code (under QEMU).
pub fn busybox_index_layout_from(dir: &Path, arches: &[(&str, &Path)]) -> io::Result<IndexLayout> {
    let mut images = Vec::new();
    let mut entries = Vec::new();
    for (arch, busybox) in arches {
        let arch = *arch;
        let image = busybox_oci_layout_from(dir, arch, busybox)?;
        let mut platform = serde_json::json!({ "architecture": arch, "os": "linux" });
        if let Some(variant) = default_variant(arch) {
            platform["variant"] = variant.into();
        }
        entries.push(serde_json::json!({
            "mediaType": MEDIA_MANIFEST,
            "digest": image.manifest_digest,
            "size": image.manifest_size,
            "platform": platform,
        }));
        images.push(image);
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": entries,
    }))?;
    let index_digest = sha256_digest(&index);
    fs::write(
        dir.join("blobs")
            .join("sha256")
            .join(index_digest.trim_start_matches("sha256:")),
        &index,
    )?;
    let top = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [{
            "mediaType": MEDIA_INDEX,
            "digest": index_digest,
            "size": index.len(),
            "annotations": { "org.opencontainers.image.ref.name": "latest" },
        }],
    }))?;
    fs::write(dir.join("index.json"), top)?;
    Ok(IndexLayout {
        dir: dir.to_path_buf(),
        index_digest,
        index,
        images,
    })
}

/// The variant registries commonly record for an architecture (what `docker buildx` writes).
fn default_variant(arch: &str) -> Option<&'static str> {
    match arch {
        "arm64" => Some("v8"),
        "arm" => Some("v7"),
        _ => None,
    }
}

fn gzip(data: &[u8]) -> io::Result<Vec<u8>> {
    // GzBuilder leaves the header mtime at 0 and names no file, so the output depends on the input only.
    let mut enc = GzBuilder::new().write(Vec::new(), Compression::default());
    enc.write_all(data)?;
    enc.finish()
}

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";

/// The layer's entries in lexical path order with fixed owners and times, so equal inputs give equal bytes.
fn layer_tar(busybox: &[u8]) -> io::Result<Vec<u8>> {
    enum Entry<'a> {
        Dir(u32),
        File(u32, &'a [u8]),
        Link(&'a str),
    }
    let mut entries: Vec<(String, Entry)> = vec![
        ("bin/".into(), Entry::Dir(0o755)),
        ("bin/busybox".into(), Entry::File(0o755, busybox)),
        ("etc/".into(), Entry::Dir(0o755)),
        ("etc/group".into(), Entry::File(0o644, GROUP.as_bytes())),
        ("etc/passwd".into(), Entry::File(0o644, PASSWD.as_bytes())),
        ("root/".into(), Entry::Dir(0o700)),
        ("tmp/".into(), Entry::Dir(0o1777)),
    ];
    entries.extend(
        BUSYBOX_APPLETS
            .iter()
            .map(|a| (format!("bin/{a}"), Entry::Link("busybox"))),
    );
    entries.sort_by(|a, b| a.0.cmp(&b.0));

    let mut builder = tar::Builder::new(Vec::new());
    for (path, entry) in entries {
        let mut header = tar::Header::new_ustar();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(FIXED_MTIME);
        match entry {
            Entry::Dir(mode) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(mode);
                header.set_size(0);
                builder.append_data(&mut header, &path, io::empty())?;
            }
            Entry::File(mode, data) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(mode);
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, &path, data)?;
            }
            Entry::Link(target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder.append_link(&mut header, &path, target)?;
            }
        }
    }
    builder.into_inner()
}

/// Where `scripts/install-test-deps.sh` unpacks Debian's arm64 busybox-static (`KILN_TEST_BUSYBOX_ARM64`
/// overrides it).
pub fn arm64_busybox() -> std::path::PathBuf {
    std::env::var_os("KILN_TEST_BUSYBOX_ARM64")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("/var/cache/kiln-test/busybox-arm64/bin/busybox"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_deterministic_and_complete() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let la = busybox_oci_layout(a.path(), "amd64").unwrap();
        let lb = busybox_oci_layout(b.path(), "amd64").unwrap();
        assert_eq!(la.manifest_digest, lb.manifest_digest);
        assert_eq!(la.layer_digest, lb.layer_digest);

        for (digest, data) in la.blobs().unwrap() {
            assert_eq!(sha256_digest(&data), digest);
        }
        let config: serde_json::Value = serde_json::from_slice(&la.config).unwrap();
        assert_eq!(config["architecture"], "amd64");
        assert_eq!(config["os"], "linux");
        assert_eq!(config["config"]["Cmd"], serde_json::json!(["sh"]));
        assert_eq!(config["rootfs"]["diff_ids"][0], la.diff_id);
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(a.path().join("index.json")).unwrap()).unwrap();
        assert_eq!(index["manifests"][0]["digest"], la.manifest_digest);

        let layer = fs::read(la.blob_path(&la.layer_digest)).unwrap();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&layer[..]));
        let mut names = Vec::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            if path == "tmp/" {
                assert_eq!(entry.header().mode().unwrap(), 0o1777);
            }
            if path == "bin/sh" {
                assert_eq!(entry.link_name().unwrap().unwrap().to_str(), Some("busybox"));
            }
            names.push(path);
        }
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert!(names.contains(&"etc/passwd".to_owned()));
        assert!(names.contains(&"bin/grep".to_owned()));
    }

    #[test]
    fn arm64_records_variant() {
        let d = tempfile::tempdir().unwrap();
        let l = busybox_oci_layout(d.path(), "arm64").unwrap();
        let config: serde_json::Value = serde_json::from_slice(&l.config).unwrap();
        assert_eq!(config["architecture"], "arm64");
        assert_eq!(config["variant"], "v8");
    }

    #[test]
    fn missing_binary_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        let err = busybox_oci_layout_from(d.path(), "amd64", Path::new("/nonexistent/busybox")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/busybox"), "{err}");
    }
}
