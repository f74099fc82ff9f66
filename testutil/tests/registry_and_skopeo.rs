//! The helpers against the real tools: docker-registry answers, and skopeo accepts the busybox layout.

use std::process::Command;

use kiln_testutil::{Registry, busybox_oci_layout};

fn skopeo(args: &[&str]) -> String {
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

fn http_status(addr: &str, path: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn registry_starts_answers_and_stops() {
    let reg = Registry::start();
    let addr = reg.addr().to_owned();
    assert!(addr.starts_with("127.0.0.1:"));
    assert_eq!(http_status(&addr, "/v2/"), 200);
    let storage = reg.storage_dir();
    drop(reg);
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "registry still listening"
    );
    assert!(!storage.exists(), "storage not removed");
}

#[test]
fn htpasswd_registry_demands_credentials() {
    let reg = Registry::start_with_htpasswd("alice", "s3cret");
    assert_eq!(http_status(reg.addr(), "/v2/"), 401);
    assert_eq!(reg.credentials(), Some(("alice", "s3cret")));
}

#[test]
fn skopeo_copies_busybox_layout_into_registry() {
    let reg = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let layout = busybox_oci_layout(dir.path(), "amd64").unwrap();
    let dest = format!("docker://{}/base:latest", reg.addr());
    skopeo(&["copy", "--dest-tls-verify=false", &layout.skopeo_ref(), &dest]);

    let inspect = skopeo(&["inspect", "--tls-verify=false", &dest]);
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(v["Architecture"], "amd64");
    assert_eq!(v["Os"], "linux");
    assert_eq!(v["Layers"][0], layout.layer_digest);
    assert_eq!(v["Digest"], layout.manifest_digest);

    let raw = skopeo(&["inspect", "--tls-verify=false", "--config", &dest]);
    let cfg: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(cfg["config"]["Cmd"], serde_json::json!(["sh"]));
}

#[test]
fn umoci_unpacks_a_working_busybox() {
    let dir = tempfile::tempdir().unwrap();
    let layout = busybox_oci_layout(&dir.path().join("layout"), "amd64").unwrap();
    let bundle = dir.path().join("bundle");
    let out = Command::new("umoci")
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:latest", layout.dir.display()))
        .arg(&bundle)
        .output()
        .expect("run umoci (apt-get install umoci)");
    assert!(
        out.status.success(),
        "umoci unpack: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rootfs = bundle.join("rootfs");
    assert_eq!(
        std::fs::read_link(rootfs.join("bin/sh")).unwrap().to_str(),
        Some("busybox")
    );
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(passwd.starts_with("root:x:0:0:") && passwd.contains("nobody:x:65534:"));
    use std::os::unix::fs::PermissionsExt;
    let tmp_mode = std::fs::metadata(rootfs.join("tmp"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(tmp_mode & 0o7777, 0o1777);
    let run = Command::new(rootfs.join("bin/busybox"))
        .args(["sh", "-c", "echo hello from busybox"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&run.stdout), "hello from busybox\n");
}
