//! Pull and push against a real docker-registry, cross-checked with skopeo.

mod common;

use common::*;
use kiln_registry::{Error, MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_OCI_MANIFEST, Platform, RegistryConfig};
use kiln_testutil::{Registry, busybox_oci_layout};

fn amd64() -> Platform {
    "linux/amd64".parse().unwrap()
}

#[tokio::test]
async fn pulls_what_skopeo_pushed_and_verifies_every_blob() {
    let reg = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let layout = busybox_oci_layout(&tmp.path().join("layout"), "amd64").unwrap();
    let dest = format!("{}/base:latest", reg.addr());
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &layout.skopeo_ref(),
        &format!("docker://{dest}"),
    ]);

    let client = client_with(tmp.path());
    let r = reference(&dest);
    let resolved = client.resolve(&r, &amd64()).await.unwrap();
    assert_eq!(resolved.manifest_digest.to_string(), layout.manifest_digest);
    assert_eq!(resolved.media_type, MEDIA_TYPE_OCI_MANIFEST);
    assert_eq!(resolved.manifest, layout.manifest);
    assert!(resolved.index.is_none());
    assert_eq!(resolved.config.digest().to_string(), layout.config_digest);
    assert_eq!(resolved.layers.len(), 1);
    assert_eq!(resolved.layers[0].digest().to_string(), layout.layer_digest);

    // Config and layer fetched at the same time through clones of one client.
    let mut fetches = Vec::new();
    for desc in std::iter::once(resolved.config.clone()).chain(resolved.layers.clone()) {
        let client = client.clone();
        let r = r.clone();
        fetches.push(tokio::spawn(async move {
            let mut out = Vec::new();
            client.fetch_blob(&r, &desc, &mut out).await.map(|()| (desc, out))
        }));
    }
    for f in fetches {
        let (desc, data) = f.await.unwrap().unwrap();
        assert_eq!(sha256(&data), desc.digest().to_string());
        assert_eq!(data.len() as u64, desc.size());
        assert_eq!(data, std::fs::read(layout.blob_path(&sha256(&data))).unwrap());
    }

    // By digest as well as by tag.
    let by_digest = reference(&format!("{}/base@{}", reg.addr(), layout.manifest_digest));
    let again = client.resolve(&by_digest, &amd64()).await.unwrap();
    assert_eq!(again.manifest_digest, resolved.manifest_digest);
}

#[tokio::test]
async fn pulls_docker_schema2_manifests() {
    let reg = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let layout = busybox_oci_layout(&tmp.path().join("layout"), "amd64").unwrap();
    let dest = format!("{}/docker:v2s2", reg.addr());
    skopeo(&[
        "copy",
        "--format=v2s2",
        "--dest-tls-verify=false",
        &layout.skopeo_ref(),
        &format!("docker://{dest}"),
    ]);

    let client = client_with(tmp.path());
    let r = reference(&dest);
    let resolved = client.resolve(&r, &amd64()).await.unwrap();
    assert_eq!(resolved.media_type, MEDIA_TYPE_DOCKER_MANIFEST);
    assert_eq!(
        resolved.layers[0].media_type().to_string(),
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );
    // The layer bytes survive the conversion; only the descriptors' media types change.
    assert_eq!(resolved.layers[0].digest().to_string(), layout.layer_digest);
    let mut out = Vec::new();
    client
        .fetch_blob(&r, &resolved.layers[0], &mut out)
        .await
        .unwrap();
    assert_eq!(sha256(&out), layout.layer_digest);
}

#[tokio::test]
async fn pushes_that_skopeo_can_read_back() {
    let reg = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let layout = busybox_oci_layout(&tmp.path().join("layout"), "amd64").unwrap();
    let client = client_with(tmp.path());
    let r = reference(&format!("{}/pushed:v1", reg.addr()));

    let layer = digest(&layout.layer_digest);
    assert!(!client.blob_exists(&r, &layer).await.unwrap());
    push_layout(&client, &layout, &r).await;
    assert!(client.blob_exists(&r, &layer).await.unwrap());

    let docker_ref = format!("docker://{r}");
    let inspect = skopeo_json(&["inspect", "--tls-verify=false", &docker_ref]);
    assert_eq!(inspect["Digest"], layout.manifest_digest);
    assert_eq!(inspect["Architecture"], "amd64");
    assert_eq!(inspect["Layers"][0], layout.layer_digest);

    let out = tmp.path().join("copied");
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &docker_ref,
        &format!("oci:{}:latest", out.display()),
    ]);
    let copied = std::fs::read(out.join("blobs/sha256").join(&layout.layer_digest[7..])).unwrap();
    assert_eq!(sha256(&copied), layout.layer_digest);
}

#[tokio::test]
async fn large_blobs_go_up_in_chunks() {
    let reg = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let client = kiln_registry::RegistryClient::new(RegistryConfig {
        docker_config_dir: Some(tmp.path().to_path_buf()),
        chunked_upload_threshold: 1 << 20,
        ..RegistryConfig::default()
    })
    .unwrap();
    let r = reference(&format!("{}/big:latest", reg.addr()));
    // Three 4 MiB chunks and a remainder; a simple PRNG keeps the data incompressible and reproducible.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let data: Vec<u8> = (0..(12 << 20) + 12345)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let d = sha256(&data);
    client
        .push_blob(&r, &digest(&d), data.len() as u64, &mut &data[..])
        .await
        .unwrap();
    assert!(client.blob_exists(&r, &digest(&d)).await.unwrap());
    let mut back = Vec::new();
    client
        .fetch_blob(
            &r,
            &descriptor("application/octet-stream", &d, data.len() as u64),
            &mut back,
        )
        .await
        .unwrap();
    assert!(back == data, "blob differs after round trip");

    // A source that does not match the digest is refused and nothing is committed under that digest.
    let mut wrong = data.clone();
    wrong[5 << 20] ^= 1;
    let claimed = sha256(&data[..data.len() - 1]);
    let err = client
        .push_blob(&r, &digest(&claimed), wrong.len() as u64, &mut &wrong[..])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    assert!(!client.blob_exists(&r, &digest(&claimed)).await.unwrap());
    assert!(!client.blob_exists(&r, &digest(&sha256(&wrong))).await.unwrap());

    // A source shorter than announced.
    let err = client
        .push_blob(&r, &digest(&d), data.len() as u64 + 10, &mut &data[..])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::SizeMismatch { .. }), "{err}");
}

#[tokio::test]
async fn small_push_checks_digest_and_size_before_sending() {
    let reg = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let client = client_with(tmp.path());
    let r = reference(&format!("{}/small:latest", reg.addr()));
    let data = b"hello kiln".to_vec();

    let err = client
        .push_blob(&r, &digest(&sha256(b"other")), data.len() as u64, &mut &data[..])
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("digest mismatch") && msg.contains(&r.to_string()),
        "{msg}"
    );

    let err = client
        .push_blob(&r, &digest(&sha256(&data)), 3, &mut &data[..])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::SizeMismatch { .. }), "{err}");

    // The empty blob is a legal blob (OCI's empty descriptors point at tiny ones too).
    client
        .push_blob(&r, &digest(&sha256(b"")), 0, &mut &b""[..])
        .await
        .unwrap();
    assert!(client.blob_exists(&r, &digest(&sha256(b""))).await.unwrap());
}

#[tokio::test]
async fn mounts_blobs_across_repositories() {
    let reg = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let client = client_with(tmp.path());
    let src = reference(&format!("{}/team/source:latest", reg.addr()));
    let dst = reference(&format!("{}/team/dest:latest", reg.addr()));
    let data = b"mount me".to_vec();
    let d = digest(&sha256(&data));
    client
        .push_blob(&src, &d, data.len() as u64, &mut &data[..])
        .await
        .unwrap();

    assert!(!client.blob_exists(&dst, &d).await.unwrap());
    assert!(client.mount_blob(&dst, "team/source", &d).await.unwrap());
    assert!(client.blob_exists(&dst, &d).await.unwrap());

    let unknown = digest(&sha256(b"never pushed"));
    assert!(!client.mount_blob(&dst, "team/source", &unknown).await.unwrap());
    assert!(!client.blob_exists(&dst, &unknown).await.unwrap());
}

#[tokio::test]
async fn index_with_two_platforms_resolves_the_right_one() {
    let reg = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let amd = busybox_oci_layout(&tmp.path().join("amd64"), "amd64").unwrap();
    // The host binary labelled arm64: enough for manifest selection, which never runs it.
    let arm = busybox_oci_layout(&tmp.path().join("arm64"), "arm64").unwrap();
    assert_ne!(amd.manifest_digest, arm.manifest_digest);

    let client = client_with(tmp.path());
    let repo = format!("{}/multi", reg.addr());
    for l in [&amd, &arm] {
        push_layout(&client, l, &reference(&format!("{repo}@{}", l.manifest_digest))).await;
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            { "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": amd.manifest_digest,
              "size": amd.manifest_size, "platform": { "os": "linux", "architecture": "amd64" } },
            { "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": arm.manifest_digest,
              "size": arm.manifest_size,
              "platform": { "os": "linux", "architecture": "arm64", "variant": "v8" } },
        ],
    }))
    .unwrap();
    let tagged = reference(&format!("{repo}:latest"));
    let index_digest = client
        .push_manifest(&tagged, &index, "application/vnd.oci.image.index.v1+json")
        .await
        .unwrap();
    assert_eq!(index_digest.to_string(), sha256(&index));

    for (platform, want) in [
        ("linux/arm64", &arm),
        ("linux/aarch64", &arm),
        ("linux/arm64/v8", &arm),
        ("linux/amd64", &amd),
    ] {
        let resolved = client.resolve(&tagged, &platform.parse().unwrap()).await.unwrap();
        assert_eq!(
            resolved.manifest_digest.to_string(),
            want.manifest_digest,
            "{platform}"
        );
        assert_eq!(
            resolved.config.digest().to_string(),
            want.config_digest,
            "{platform}"
        );
        let idx = resolved.index.as_ref().expect("came from an index");
        assert_eq!(idx.digest, index_digest);
        assert_eq!(idx.bytes, index);
        assert_eq!(resolved.platform.as_ref().unwrap().architecture, want.arch);
    }

    let err = client
        .resolve(&tagged, &"linux/s390x".parse().unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("linux/s390x") && err.contains("linux/arm64") && err.contains(&repo),
        "{err}"
    );

    // skopeo agrees on the per-platform choice, and converting the index to a docker manifest list keeps
    // it resolvable.
    let docker_ref = format!("docker://{repo}:latest");
    let inspect = skopeo_json(&[
        "--override-arch",
        "arm64",
        "inspect",
        "--tls-verify=false",
        &docker_ref,
    ]);
    assert_eq!(inspect["Architecture"], "arm64");
    assert_eq!(inspect["Digest"], index_digest.to_string());
    let raw = skopeo(&["inspect", "--raw", "--tls-verify=false", &docker_ref]);
    assert_eq!(raw.as_bytes(), &index[..]);
    skopeo(&[
        "copy",
        "--all",
        "--format=v2s2",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &docker_ref,
        &format!("docker://{repo}:list"),
    ]);
    let list = client
        .resolve(
            &reference(&format!("{repo}:list")),
            &"linux/arm64".parse().unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        list.index.as_ref().unwrap().media_type,
        kiln_registry::MEDIA_TYPE_DOCKER_MANIFEST_LIST
    );
    assert_eq!(list.media_type, MEDIA_TYPE_DOCKER_MANIFEST);
    assert_eq!(list.config.digest().to_string(), arm.config_digest);
}

#[tokio::test]
async fn unknown_manifest_is_a_clear_error() {
    let reg = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let client = client_with(tmp.path());

    let missing_repo = reference(&format!("{}/nope:missing", reg.addr()));
    let err = client.resolve(&missing_repo, &amd64()).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("manifest unknown: {}/nope:missing", reg.addr())
    );

    let layout = busybox_oci_layout(&tmp.path().join("layout"), "amd64").unwrap();
    let r = reference(&format!("{}/base:latest", reg.addr()));
    push_layout(&client, &layout, &r).await;
    let missing_tag = r.with_tag("v9");
    let err = client.resolve(&missing_tag, &amd64()).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("manifest unknown: {}/base:v9", reg.addr())
    );

    let blob = descriptor(MEDIA_TYPE_OCI_MANIFEST, &sha256(b"absent"), 6);
    let err = client.fetch_blob(&r, &blob, &mut Vec::new()).await.unwrap_err();
    assert!(matches!(err, Error::BlobUnknown { .. }), "{err}");
    assert!(err.to_string().contains(&r.to_string()), "{err}");
}
