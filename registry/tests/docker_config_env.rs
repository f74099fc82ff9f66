//! `$DOCKER_CONFIG` is honoured when no directory is configured. This is the only test in its binary
//! because it sets a process-wide environment variable.

mod common;

use base64::Engine;
use common::*;
use kiln_registry::{RegistryClient, RegistryConfig};
use kiln_testutil::{Registry, busybox_oci_layout};

#[test]
fn credentials_come_from_docker_config_env() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("from-env");
    std::fs::create_dir_all(&cfg).unwrap();
    let reg = Registry::start_with_htpasswd("envuser", "envpass");
    let auth = base64::engine::general_purpose::STANDARD.encode("envuser:envpass");
    std::fs::write(
        cfg.join("config.json"),
        serde_json::json!({ "auths": { reg.addr(): { "auth": auth } } }).to_string(),
    )
    .unwrap();
    let layout = busybox_oci_layout(&tmp.path().join("layout"), "amd64").unwrap();
    let dest = format!("{}/base:latest", reg.addr());
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        "envuser:envpass",
        &layout.skopeo_ref(),
        &format!("docker://{dest}"),
    ]);

    // SAFETY: no other thread of this test binary runs or reads the environment at this point: this is its
    // only test, and the tokio runtime is created afterwards.
    unsafe { std::env::set_var("DOCKER_CONFIG", &cfg) };
    let client = RegistryClient::new(RegistryConfig::default()).unwrap();
    assert_eq!(client.docker_config_path(), Some(cfg.join("config.json")));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let resolved = rt
        .block_on(client.resolve(&reference(&dest), &"linux/amd64".parse().unwrap()))
        .unwrap();
    assert_eq!(resolved.manifest_digest.to_string(), layout.manifest_digest);
}
