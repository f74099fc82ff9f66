//! Misbehaving registries, played by kiln-testutil's fake registry.

mod common;

use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use common::*;
use kiln_registry::{Error, Platform};
use kiln_testutil::fake::{FakeRegistry, Response};

fn registry(f: impl Fn(&kiln_testutil::fake::Request) -> Response + Send + Sync + 'static) -> FakeRegistry {
    FakeRegistry::registry(f)
}

fn amd64() -> Platform {
    "linux/amd64".parse().unwrap()
}

fn blob_data() -> Vec<u8> {
    (0..1000u32).map(|i| (i * 7 % 251) as u8).collect()
}

#[tokio::test]
async fn blob_not_matching_its_digest_is_rejected() {
    let served = b"what the server sends".to_vec();
    let claimed = b"what the manifest says".to_vec();
    let body = served.clone();
    let fake = registry(move |req| {
        if req.path.starts_with("/v2/img/blobs/") {
            Response::ok(body.clone())
        } else {
            Response::status(404, "")
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    let r = reference(&format!("{}/img:latest", fake.addr()));
    let desc = descriptor(
        "application/vnd.oci.image.layer.v1.tar",
        &sha256(&claimed),
        served.len() as u64,
    );
    let err = client_with(tmp.path())
        .fetch_blob(&r, &desc, &mut Vec::new())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err:?}");
    assert!(msg.contains(&r.to_string()), "{msg}");
    assert!(msg.contains(&sha256(&claimed)), "{msg}");
    assert!(msg.contains(&sha256(&served)), "{msg}");
    assert_eq!(
        fake.count("GET /v2/img/blobs/"),
        1,
        "a wrong digest is not retried"
    );
}

#[tokio::test]
async fn blob_longer_than_its_descriptor_is_rejected() {
    let data = blob_data();
    let body = data.clone();
    let fake = registry(move |_| Response::ok(body.clone()));
    let tmp = tempfile::tempdir().unwrap();
    let r = reference(&format!("{}/img:latest", fake.addr()));
    let desc = descriptor("application/octet-stream", &sha256(&data[..10]), 10);
    let err = client_with(tmp.path())
        .fetch_blob(&r, &desc, &mut Vec::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::SizeMismatch { .. }), "{err:?}");
}

#[tokio::test]
async fn truncated_blob_is_retried_once_then_reported() {
    let data = blob_data();
    let head = data[..400].to_vec();
    let fake = registry(move |req| {
        if req.path.starts_with("/v2/img/blobs/") {
            // Always promises the whole blob and delivers 400 bytes, ignoring any Range.
            Response {
                content_length: Some(1000),
                ..Response::ok(head.clone())
            }
        } else {
            Response::status(404, "")
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    let r = reference(&format!("{}/img:latest", fake.addr()));
    let desc = descriptor("application/octet-stream", &sha256(&data), 1000);
    let mut out = Vec::new();
    let err = client_with(tmp.path())
        .fetch_blob(&r, &desc, &mut out)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Truncated { .. }), "{err:?}");
    assert!(msg.contains("got 400 of 1000 bytes"), "{msg}");
    assert!(
        msg.contains(&r.to_string()) && msg.contains(&sha256(&data)),
        "{msg}"
    );
    assert_eq!(fake.count("GET /v2/img/blobs/"), 2, "{:?}", fake.requests());
    // The restarted response repeated the first 400 bytes; they were skipped, not written twice.
    assert_eq!(out, &data[..400]);
}

#[tokio::test]
async fn broken_download_resumes_with_a_range_request() {
    let data = blob_data();
    let served = data.clone();
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let seen = ranges.clone();
    let fake = registry(move |req| {
        if !req.path.starts_with("/v2/img/blobs/") {
            return Response::status(404, "");
        }
        let range = req.header("Range").map(str::to_owned);
        seen.lock().unwrap().push(range.clone());
        match range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
            Some(spec) => {
                let start: usize = spec.trim_end_matches('-').parse().unwrap();
                Response {
                    status: 206,
                    ..Response::ok(served[start..].to_vec())
                }
                .header("Content-Range", &format!("bytes {start}-999/1000"))
            }
            None => Response {
                content_length: Some(1000),
                ..Response::ok(served[..600].to_vec())
            },
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    let r = reference(&format!("{}/img:latest", fake.addr()));
    let desc = descriptor("application/octet-stream", &sha256(&data), 1000);
    let mut out = Vec::new();
    client_with(tmp.path())
        .fetch_blob(&r, &desc, &mut out)
        .await
        .unwrap();
    assert!(out == data, "resumed blob differs");
    assert_eq!(*ranges.lock().unwrap(), vec![None, Some("bytes=600-".to_owned())]);
}

#[tokio::test]
async fn malformed_manifests_name_the_reference() {
    let fake = registry(|req| {
        let oci = "application/vnd.oci.image.manifest.v1+json";
        match req.path.as_str() {
            "/v2/bad/manifests/json" => Response::ok("{not json").header("Content-Type", oci),
            "/v2/bad/manifests/shape" => Response::ok(
                r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"digest":"sha256:zz"},"layers":[]}"#,
            )
            .header("Content-Type", oci),
            "/v2/bad/manifests/index" => Response::ok(
                r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":{"oops":1}}"#,
            )
            .header("Content-Type", "application/vnd.oci.image.index.v1+json"),
            "/v2/bad/manifests/v1" => Response::ok(r#"{"schemaVersion":1,"name":"bad","tag":"v1"}"#)
                .header("Content-Type", "application/vnd.docker.distribution.manifest.v1+prettyjws"),
            _ => Response::status(
                404,
                r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
            )
            .header("Content-Type", "application/json"),
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    let client = client_with(tmp.path());
    for tag in ["json", "shape", "index"] {
        let r = reference(&format!("{}/bad:{tag}", fake.addr()));
        let err = client.resolve(&r, &amd64()).await.unwrap_err();
        assert!(matches!(err, Error::MalformedManifest { .. }), "{tag}: {err:?}");
        assert!(
            err.to_string().starts_with(&format!("malformed manifest {r}: ")),
            "{tag}: {err}"
        );
    }
    let r = reference(&format!("{}/bad:v1", fake.addr()));
    let err = client.resolve(&r, &amd64()).await.unwrap_err();
    assert!(matches!(err, Error::UnsupportedMediaType { .. }), "{err:?}");
    assert!(err.to_string().contains(&r.to_string()), "{err}");

    let r = reference(&format!("{}/bad:missing", fake.addr()));
    let err = client.resolve(&r, &amd64()).await.unwrap_err();
    assert_eq!(err.to_string(), format!("manifest unknown: {r}"));
}

#[tokio::test]
async fn manifest_not_matching_pinned_digest_is_rejected() {
    let body = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;
    let fake = registry(move |_| {
        Response::ok(body).header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
    });
    let tmp = tempfile::tempdir().unwrap();
    let pinned = sha256(b"some other manifest");
    let r = reference(&format!("{}/img@{pinned}", fake.addr()));
    let err = client_with(tmp.path()).resolve(&r, &amd64()).await.unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&pinned) && msg.contains(&sha256(body.as_bytes())),
        "{msg}"
    );

    // The same bytes by tag are fine: nothing pins them.
    let r = reference(&format!("{}/img:latest", fake.addr()));
    let resolved = client_with(tmp.path()).resolve(&r, &amd64()).await.unwrap();
    assert_eq!(resolved.manifest_digest.to_string(), sha256(body.as_bytes()));
}

#[tokio::test]
async fn server_errors_and_refused_connections_are_reported() {
    let fake = registry(|_| Response::status(500, "backend on fire"));
    let tmp = tempfile::tempdir().unwrap();
    let client = client_with(tmp.path());
    let r = reference(&format!("{}/img:latest", fake.addr()));
    let err = client.resolve(&r, &amd64()).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("500") && msg.contains("backend on fire") && msg.contains(&r.to_string()),
        "{msg}"
    );

    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let r = reference(&format!("127.0.0.1:{port}/img:latest"));
    let err = client.resolve(&r, &amd64()).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&r.to_string()), "{msg}");
    assert!(msg.to_lowercase().contains("refused"), "{msg}");
}

/// An index whose entry for the platform lies about the child manifest's size, or its digest: refused, not
/// read on with whatever the registry sent.
#[tokio::test]
async fn an_index_entry_that_lies_about_its_manifest_is_rejected() {
    let child = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;
    let child_digest = sha256(child.as_bytes());
    let index = |digest: &str, size: usize| {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{digest}","size":{size},"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#
        )
    };
    let wrong_size = index(&child_digest, child.len() + 1);
    let other = sha256(b"another manifest");
    let wrong_digest = index(&other, child.len());
    let served = child_digest.clone();
    let fake = registry(move |req| {
        let index_type = "application/vnd.oci.image.index.v1+json";
        let path = req.path.as_str();
        if path == "/v2/img/manifests/size" {
            Response::ok(wrong_size.clone()).header("Content-Type", index_type)
        } else if path == "/v2/img/manifests/digest" {
            Response::ok(wrong_digest.clone()).header("Content-Type", index_type)
        } else if path.starts_with("/v2/img/manifests/sha256:") {
            // Whatever digest is asked for, the same bytes: a registry that does not check.
            Response::ok(child)
                .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
                .header("Docker-Content-Digest", &served)
        } else {
            Response::status(404, "")
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    let client = client_with(tmp.path());
    let r = reference(&format!("{}/img:size", fake.addr()));
    let err = client.resolve(&r, &amd64()).await.unwrap_err();
    assert!(matches!(err, Error::SizeMismatch { .. }), "{err:?}");
    let r = reference(&format!("{}/img:digest", fake.addr()));
    let err = client.resolve(&r, &amd64()).await.unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err:?}");
}
