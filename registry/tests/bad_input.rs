//! Misbehaving registries. The real docker-registry verifies what it stores, so a tiny HTTP server built on
//! std::net stands in for one that serves wrong, short or malformed content.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use common::*;
use kiln_registry::{Error, Platform};

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Announce this length instead of the body's, to simulate a connection that drops midway.
    content_length: Option<usize>,
}

impl Response {
    fn ok(body: impl Into<Vec<u8>>) -> Response {
        Response {
            status: 200,
            headers: Vec::new(),
            body: body.into(),
            content_length: None,
        }
    }

    fn status(status: u16, body: &str) -> Response {
        Response {
            status,
            ..Response::ok(body)
        }
    }

    fn header(mut self, k: &str, v: &str) -> Response {
        self.headers.push((k.to_owned(), v.to_owned()));
        self
    }
}

type Handler = dyn Fn(&Request) -> Response + Send + Sync;

/// Serves one connection at a time on 127.0.0.1, closing each after one response. Stops on drop.
struct FakeRegistry {
    addr: String,
    stop: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl FakeRegistry {
    fn start(handler: impl Fn(&Request) -> Response + Send + Sync + 'static) -> FakeRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let thread = {
            let stop = stop.clone();
            let requests = requests.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(conn) = conn {
                        let _ = serve(conn, &*handler, &requests);
                    }
                }
            })
        };
        FakeRegistry {
            addr,
            stop,
            requests,
            thread: Some(thread),
        }
    }

    /// Requests seen so far, as `METHOD path`.
    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    fn count(&self, prefix: &str) -> usize {
        self.requests().iter().filter(|r| r.starts_with(prefix)).count()
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the thread sees the flag.
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(conn: TcpStream, handler: &Handler, log: &Mutex<Vec<String>>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
        return Ok(());
    };
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.trim_end().split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let req = Request {
        method: method.to_owned(),
        path: path.to_owned(),
        headers,
    };
    log.lock().unwrap().push(format!("{} {}", req.method, req.path));
    let resp = handler(&req);
    let mut out = conn;
    write!(out, "HTTP/1.1 {} X\r\n", resp.status)?;
    for (k, v) in &resp.headers {
        write!(out, "{k}: {v}\r\n")?;
    }
    let len = resp.content_length.unwrap_or(resp.body.len());
    write!(out, "Content-Length: {len}\r\nConnection: close\r\n\r\n")?;
    if req.method != "HEAD" {
        out.write_all(&resp.body)?;
    }
    out.flush()?;
    // Closing with unread request bytes would send a reset; shutting down the write side is a clean EOF.
    out.shutdown(std::net::Shutdown::Write)
}

/// Answers the `GET /v2/` version check that every oci-client request starts with, then defers to `f`.
fn registry(f: impl Fn(&Request) -> Response + Send + Sync + 'static) -> FakeRegistry {
    FakeRegistry::start(move |req| {
        if req.path == "/v2/" {
            return Response::ok("{}").header("Content-Type", "application/json");
        }
        f(req)
    })
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
    let r = reference(&format!("{}/img:latest", fake.addr));
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
    let r = reference(&format!("{}/img:latest", fake.addr));
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
    let r = reference(&format!("{}/img:latest", fake.addr));
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
    let r = reference(&format!("{}/img:latest", fake.addr));
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
        let r = reference(&format!("{}/bad:{tag}", fake.addr));
        let err = client.resolve(&r, &amd64()).await.unwrap_err();
        assert!(matches!(err, Error::MalformedManifest { .. }), "{tag}: {err:?}");
        assert!(
            err.to_string().starts_with(&format!("malformed manifest {r}: ")),
            "{tag}: {err}"
        );
    }
    let r = reference(&format!("{}/bad:v1", fake.addr));
    let err = client.resolve(&r, &amd64()).await.unwrap_err();
    assert!(matches!(err, Error::UnsupportedMediaType { .. }), "{err:?}");
    assert!(err.to_string().contains(&r.to_string()), "{err}");

    let r = reference(&format!("{}/bad:missing", fake.addr));
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
    let r = reference(&format!("{}/img@{pinned}", fake.addr));
    let err = client_with(tmp.path()).resolve(&r, &amd64()).await.unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&pinned) && msg.contains(&sha256(body.as_bytes())),
        "{msg}"
    );

    // The same bytes by tag are fine: nothing pins them.
    let r = reference(&format!("{}/img:latest", fake.addr));
    let resolved = client_with(tmp.path()).resolve(&r, &amd64()).await.unwrap();
    assert_eq!(resolved.manifest_digest.to_string(), sha256(body.as_bytes()));
}

#[tokio::test]
async fn server_errors_and_refused_connections_are_reported() {
    let fake = registry(|_| Response::status(500, "backend on fire"));
    let tmp = tempfile::tempdir().unwrap();
    let client = client_with(tmp.path());
    let r = reference(&format!("{}/img:latest", fake.addr));
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
