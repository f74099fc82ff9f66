//! A misbehaving registry. The real docker-registry verifies what it stores, so a tiny HTTP server built on
//! std::net stands in for one that serves wrong, short or malformed content, and counts what it was asked.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// One HTTP request as the fake registry saw it (the body is not read).
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Announce this length instead of the body's, to simulate a connection that drops midway.
    pub content_length: Option<usize>,
}

impl Response {
    pub fn ok(body: impl Into<Vec<u8>>) -> Response {
        Response {
            status: 200,
            headers: Vec::new(),
            body: body.into(),
            content_length: None,
        }
    }

    pub fn status(status: u16, body: &str) -> Response {
        Response {
            status,
            ..Response::ok(body)
        }
    }

    pub fn header(mut self, k: &str, v: &str) -> Response {
        self.headers.push((k.to_owned(), v.to_owned()));
        self
    }
}

type Handler = dyn Fn(&Request) -> Response + Send + Sync;

/// Serves one connection at a time on 127.0.0.1, closing each after one response. Stops on drop.
pub struct FakeRegistry {
    addr: String,
    stop: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl FakeRegistry {
    /// Answers every request with `handler`.
    pub fn start(handler: impl Fn(&Request) -> Response + Send + Sync + 'static) -> FakeRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address").to_string();
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

    /// Answers the `GET /v2/` version check that every client starts with, then defers to `f`.
    pub fn registry(f: impl Fn(&Request) -> Response + Send + Sync + 'static) -> FakeRegistry {
        FakeRegistry::start(move |req| {
            if req.path == "/v2/" {
                return Response::ok("{}").header("Content-Type", "application/json");
            }
            f(req)
        })
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Requests seen so far, as `METHOD path`.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How many requests so far start with `prefix` (`"GET /v2/img/blobs/"`).
    pub fn count(&self, prefix: &str) -> usize {
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
    log.lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(format!("{} {}", req.method, req.path));
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
