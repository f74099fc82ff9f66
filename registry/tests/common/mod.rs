//! Helpers shared by the registry client's integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

use kiln_registry::oci_spec::image::{Descriptor, Digest, MediaType};
use kiln_registry::{Reference, RegistryClient, RegistryConfig};
use kiln_testutil::OciLayout;

pub fn skopeo(args: &[&str]) -> String {
    let out = Command::new("skopeo")
        .args(args)
        .output()
        .expect("run skopeo (apt-get install skopeo)");
    assert!(
        out.status.success(),
        "skopeo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn skopeo_json(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&skopeo(args)).expect("skopeo prints JSON")
}

/// A client that reads credentials only from `docker_config_dir` (an empty temp dir by default), so the
/// machine's own docker config never leaks into a test.
pub fn client_with(docker_config_dir: &Path) -> RegistryClient {
    RegistryClient::new(RegistryConfig {
        docker_config_dir: Some(docker_config_dir.to_path_buf()),
        ..RegistryConfig::default()
    })
    .expect("create client")
}

pub fn reference(s: &str) -> Reference {
    Reference::parse(s).expect("valid reference")
}

pub fn digest(s: &str) -> Digest {
    s.parse().expect("valid digest")
}

pub fn descriptor(media_type: &str, digest_s: &str, size: u64) -> Descriptor {
    Descriptor::new(MediaType::from(media_type), size, digest(digest_s))
}

pub fn sha256(data: &[u8]) -> String {
    kiln_testutil::sha256_digest(data)
}

/// Pushes the layout's config, layer and manifest through kiln-registry, tagging the manifest `tag`.
pub async fn push_layout(client: &RegistryClient, layout: &OciLayout, repo_ref: &Reference) {
    for (d, data) in layout.blobs().expect("read layout blobs") {
        if d == layout.manifest_digest {
            continue;
        }
        client
            .push_blob(repo_ref, &digest(&d), data.len() as u64, &mut &data[..])
            .await
            .expect("push blob");
    }
    let pushed = client
        .push_manifest(
            repo_ref,
            &layout.manifest,
            "application/vnd.oci.image.manifest.v1+json",
        )
        .await
        .expect("push manifest");
    assert_eq!(pushed.to_string(), layout.manifest_digest);
}
