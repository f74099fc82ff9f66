//! A registry with htpasswd Basic auth: anonymous access is refused with a helpful error, credentials from
//! the docker config are used, and login/logout maintain that file.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use base64::Engine;
use common::*;
use kiln_registry::{Error, Platform};
use kiln_testutil::{Registry, busybox_oci_layout};

const USER: &str = "kiln";
const PASS: &str = "correct horse";

fn amd64() -> Platform {
    "linux/amd64".parse().unwrap()
}

/// A Basic-auth registry holding busybox as `base:latest`, pushed by skopeo with the right credentials.
fn registry_with_image(tmp: &std::path::Path) -> (Registry, kiln_registry::Reference) {
    let reg = Registry::start_with_htpasswd(USER, PASS);
    let layout = busybox_oci_layout(&tmp.join("layout"), "amd64").unwrap();
    let dest = format!("{}/base:latest", reg.addr());
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        &format!("{USER}:{PASS}"),
        &layout.skopeo_ref(),
        &format!("docker://{dest}"),
    ]);
    (reg, reference(&dest))
}

fn write_config(dir: &std::path::Path, registry: &str, user: &str, pass: &str) {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    fs::create_dir_all(dir).unwrap();
    fs::write(
        dir.join("config.json"),
        serde_json::json!({ "auths": { registry: { "auth": auth } } }).to_string(),
    )
    .unwrap();
}

#[tokio::test]
async fn anonymous_access_is_refused_with_a_login_hint() {
    let tmp = tempfile::tempdir().unwrap();
    let (reg, r) = registry_with_image(tmp.path());
    let client = client_with(&tmp.path().join("empty-config"));
    let err = client.resolve(&r, &amd64()).await.unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.starts_with("unauthorized: "), "{msg}");
    assert!(msg.contains(&r.to_string()), "{msg}");
    assert!(msg.contains(&format!("run `kiln login {}`", reg.addr())), "{msg}");

    let data = b"x".to_vec();
    let err = client
        .push_blob(&r, &digest(&sha256(&data)), 1, &mut &data[..])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err:?}");
}

#[tokio::test]
async fn credentials_from_docker_config_are_used() {
    let tmp = tempfile::tempdir().unwrap();
    let (reg, r) = registry_with_image(tmp.path());
    let cfg = tmp.path().join("docker");
    // docker writes keys in several shapes; a URL with scheme and path must still match.
    write_config(&cfg, &format!("http://{}/v2/", reg.addr()), USER, PASS);
    let client = client_with(&cfg);
    let resolved = client.resolve(&r, &amd64()).await.unwrap();
    let mut out = Vec::new();
    client
        .fetch_blob(&r, &resolved.layers[0], &mut out)
        .await
        .unwrap();
    assert_eq!(sha256(&out), resolved.layers[0].digest().to_string());

    // Pushing works with the same credentials.
    let target = reference(&format!("{}/copy:latest", reg.addr()));
    let data = b"pushed with basic auth".to_vec();
    let d = digest(&sha256(&data));
    client
        .push_blob(&target, &d, data.len() as u64, &mut &data[..])
        .await
        .unwrap();
    assert!(client.blob_exists(&target, &d).await.unwrap());
}

#[tokio::test]
async fn wrong_credentials_are_unauthorized() {
    let tmp = tempfile::tempdir().unwrap();
    let (reg, r) = registry_with_image(tmp.path());
    let cfg = tmp.path().join("docker");
    write_config(&cfg, reg.addr(), USER, "wrong");
    let err = client_with(&cfg).resolve(&r, &amd64()).await.unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err:?}");
}

#[tokio::test]
async fn login_verifies_and_writes_logout_removes() {
    let tmp = tempfile::tempdir().unwrap();
    let (reg, r) = registry_with_image(tmp.path());
    let cfg = tmp.path().join("docker");
    fs::create_dir_all(&cfg).unwrap();
    let path = cfg.join("config.json");
    fs::write(
        &path,
        r#"{"auths":{"quay.io":{"auth":"eDp5"}},"credHelpers":{},"psFormat":"{{.ID}}"}"#,
    )
    .unwrap();
    let client = client_with(&cfg);

    let err = client.login(reg.addr(), USER, "wrong").await.unwrap_err();
    assert!(matches!(err, Error::LoginFailed { .. }), "{err:?}");
    assert!(err.to_string().contains(reg.addr()), "{err}");
    let untouched: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    assert!(untouched["auths"].get(reg.addr()).is_none());

    client.login(reg.addr(), USER, PASS).await.unwrap();
    assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let written: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    let auth = written["auths"][reg.addr()]["auth"].as_str().unwrap();
    let decoded = base64::engine::general_purpose::STANDARD.decode(auth).unwrap();
    assert_eq!(decoded, format!("{USER}:{PASS}").as_bytes());
    assert_eq!(written["auths"]["quay.io"]["auth"], "eDp5");
    assert_eq!(written["psFormat"], "{{.ID}}");

    // The logged-in client and a fresh one reading the file both get in.
    client.resolve(&r, &amd64()).await.unwrap();
    client_with(&cfg).resolve(&r, &amd64()).await.unwrap();
    // skopeo reads the same file format.
    skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--authfile",
        path.to_str().unwrap(),
        &format!("docker://{r}"),
    ]);

    assert!(client.logout(reg.addr()).unwrap());
    assert!(!client.logout(reg.addr()).unwrap());
    let after: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    assert!(after["auths"].get(reg.addr()).is_none());
    assert_eq!(after["auths"]["quay.io"]["auth"], "eDp5");
    let err = client.resolve(&r, &amd64()).await.unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err:?}");
}

/// A registry whose challenge names a token service elsewhere, over plain http: the credentials stay home.
#[tokio::test]
async fn credentials_never_go_to_a_token_realm_on_another_address() {
    use kiln_testutil::fake::{FakeRegistry, Response};
    let thief = FakeRegistry::start(|_| Response::ok("{\"token\":\"t\"}"));
    let realm = format!("http://{}/token", thief.addr());
    let challenge = format!("Bearer realm=\"{realm}\",service=\"registry\"");
    let registry =
        FakeRegistry::start(move |_| Response::status(401, "{}").header("WWW-Authenticate", &challenge));
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("docker");
    write_config(&cfg, registry.addr(), USER, PASS);
    let client = client_with(&cfg);
    let r = reference(&format!("{}/img:latest", registry.addr()));
    let err = client.resolve(&r, &amd64()).await.unwrap_err();
    assert!(matches!(err, Error::UntrustedRealm { .. }), "{err:?}");
    assert!(err.to_string().contains(&realm), "{err}");
    let err = client.login(registry.addr(), USER, PASS).await.unwrap_err();
    assert!(matches!(err, Error::UntrustedRealm { .. }), "{err:?}");
    assert!(
        thief.requests().is_empty(),
        "the token service was asked: {:?}",
        thief.requests()
    );
}

/// A registry that redirects a blob to another host (a CDN, or someone else's server): the blob is
/// fetched, and the registry's credentials are not sent along.
#[tokio::test]
async fn a_redirect_to_another_host_carries_no_credentials() {
    use kiln_testutil::fake::{FakeRegistry, Response};
    use std::sync::{Arc, Mutex};
    let data = b"the blob's bytes".to_vec();
    let seen_elsewhere: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let cdn = {
        let (seen, data) = (seen_elsewhere.clone(), data.clone());
        FakeRegistry::start(move |req| {
            seen.lock()
                .unwrap()
                .push(req.header("Authorization").map(str::to_owned));
            Response::ok(data.clone())
        })
    };
    let location = format!("http://localhost:{}/blob", cdn.addr().rsplit(':').next().unwrap());
    let seen_home: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let registry = {
        let seen = seen_home.clone();
        FakeRegistry::start(move |req| {
            let Some(auth) = req.header("Authorization") else {
                return Response::status(401, "{}").header("WWW-Authenticate", "Basic realm=\"fake\"");
            };
            if req.path.starts_with("/v2/img/blobs/") {
                seen.lock().unwrap().push(Some(auth.to_owned()));
                Response::status(307, "").header("Location", &location)
            } else {
                Response::ok("{}").header("Content-Type", "application/json")
            }
        })
    };
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("docker");
    write_config(&cfg, registry.addr(), USER, PASS);
    let r = reference(&format!("{}/img:latest", registry.addr()));
    let desc = descriptor(
        "application/vnd.oci.image.layer.v1.tar",
        &sha256(&data),
        data.len() as u64,
    );
    let mut out = Vec::new();
    client_with(&cfg).fetch_blob(&r, &desc, &mut out).await.unwrap();
    assert_eq!(out, data);
    assert!(
        !seen_home.lock().unwrap().is_empty(),
        "the registry itself got the credentials"
    );
    let elsewhere = seen_elsewhere.lock().unwrap().clone();
    assert!(
        !elsewhere.is_empty() && elsewhere.iter().all(Option::is_none),
        "{elsewhere:?}"
    );
}
