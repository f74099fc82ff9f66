use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Debian's packaging of distribution 2.8 (`apt-get install docker-registry`).
const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);

/// A `docker-registry serve` process on `127.0.0.1:PORT` with its own temporary storage. Dropping it
/// kills the process and removes the storage.
pub struct Registry {
    child: Child,
    addr: String,
    credentials: Option<(String, String)>,
    // Declared last so the process is gone before its storage is deleted.
    dir: tempfile::TempDir,
}

impl Registry {
    /// Starts an anonymous registry (no auth).
    pub fn start() -> Registry {
        Self::start_inner(None, false)
    }

    /// Starts a registry that demands HTTP Basic auth with exactly these credentials (htpasswd, bcrypt).
    pub fn start_with_htpasswd(user: &str, pass: &str) -> Registry {
        Self::start_inner(Some((user, pass)), false)
    }

    /// Starts an anonymous registry that writes an access log line per request (see
    /// [`Registry::requests`]), so a test can count what a client fetched.
    pub fn start_with_access_log() -> Registry {
        Self::start_inner(None, true)
    }

    /// With [`Registry::start_with_access_log`]: the requests served so far, as `METHOD path`.
    pub fn requests(&self) -> Vec<String> {
        let log = fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default();
        // Combined log format: `ADDR - - [DATE] "METHOD PATH HTTP/1.1" STATUS SIZE "REFERER" "AGENT"`.
        log.lines()
            .filter_map(|line| {
                let request = line.split('"').nth(1)?;
                let mut parts = request.split_whitespace();
                Some(format!("{} {}", parts.next()?, parts.next()?))
            })
            .collect()
    }

    /// `127.0.0.1:PORT`, usable as the registry part of an image reference.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The credentials given to [`Registry::start_with_htpasswd`], if any.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// Where the registry keeps its blobs and repositories (the filesystem driver's root).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    fn start_inner(auth: Option<(&str, &str)>, access_log: bool) -> Registry {
        assert!(
            Path::new(REGISTRY_BIN).exists(),
            "{REGISTRY_BIN} not found: install it with `apt-get install docker-registry`"
        );
        let dir = tempfile::Builder::new()
            .prefix("kiln-registry-")
            .tempdir()
            .expect("create temp dir for docker-registry");
        let htpasswd = auth.map(|(user, pass)| {
            let path = dir.path().join("htpasswd");
            fs::write(&path, htpasswd_line(user, pass)).expect("write htpasswd file");
            path
        });

        // The port is picked by binding :0 and released before the registry binds it, so another process
        // can grab it in between; a few attempts make that race harmless.
        let mut last_log = String::new();
        for _ in 0..5 {
            let port = free_port();
            let addr = format!("127.0.0.1:{port}");
            let config = dir.path().join("config.yml");
            fs::write(
                &config,
                config_yml(dir.path(), &addr, htpasswd.as_deref(), access_log),
            )
            .expect("write docker-registry config");
            let log_path = dir.path().join("registry.log");
            let log = fs::File::create(&log_path).expect("create registry log");
            let log_err = log.try_clone().expect("clone registry log handle");
            let mut child = Command::new(REGISTRY_BIN)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log_err)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {REGISTRY_BIN}: {e}"));
            if wait_ready(&addr, &mut child) {
                return Registry {
                    child,
                    addr,
                    credentials: auth.map(|(u, p)| (u.to_owned(), p.to_owned())),
                    dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            last_log = fs::read_to_string(&log_path).unwrap_or_default();
        }
        panic!("docker-registry did not start; its log:\n{last_log}");
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port on 127.0.0.1")
}

fn config_yml(dir: &Path, addr: &str, htpasswd: Option<&Path>, access_log: bool) -> String {
    let storage = dir.join("storage");
    let mut yml = format!(
        "version: 0.1\n\
         log:\n  level: error\n  accesslog:\n    disabled: {disabled}\n\
         storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
         \x20 maintenance:\n    uploadpurging:\n      enabled: false\n\
         http:\n  addr: {addr}\n  secret: kiln-testutil\n",
        storage = storage.display(),
        disabled = !access_log,
    );
    if let Some(path) = htpasswd {
        yml.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
            path.display()
        ));
    }
    yml
}

/// distribution's htpasswd backend accepts bcrypt only, which `htpasswd -B` produces.
fn htpasswd_line(user: &str, pass: &str) -> String {
    let out = Command::new("htpasswd")
        .args(["-nbB", user, pass])
        .output()
        .unwrap_or_else(|e| panic!("run htpasswd (apt-get install apache2-utils): {e}"));
    assert!(
        out.status.success(),
        "htpasswd -nbB failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("htpasswd output is UTF-8")
        .trim_end()
        .to_owned()
        + "\n"
}

/// Polls `GET /v2/` until it answers 200 (anonymous) or 401 (htpasswd), or the process exits.
fn wait_ready(addr: &str, child: &mut Child) -> bool {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if let Some(status) = get_status(addr, "/v2/")
            && (status == 200 || status == 401)
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A bare HTTP/1.0 GET so that readiness checks need no HTTP client crate.
fn get_status(addr: &str, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf).ok()?;
    let head = std::str::from_utf8(&buf[..n]).ok()?;
    head.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_includes_auth_only_when_asked() {
        let plain = config_yml(Path::new("/x"), "127.0.0.1:1", None, false);
        assert!(plain.contains("addr: 127.0.0.1:1"));
        assert!(plain.contains("rootdirectory: /x/storage"));
        assert!(!plain.contains("htpasswd"));
        let auth = config_yml(Path::new("/x"), "127.0.0.1:1", Some(Path::new("/x/h")), false);
        assert!(auth.contains("path: /x/h"));
    }
}
