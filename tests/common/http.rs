//! A small HTTP/1.1 client for the HTTP endpoint's tests: one request per connection, and an
//! SSE reader that de-chunks the body and splits it into events.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An answer: status, headers (names lowercase), body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// The `code` of a JSON error.
    pub fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or("").to_string()
    }
}

fn request(path: &str, headers: &[(&str, &str)]) -> String {
    request_with("GET", path, headers)
}

fn request_with(method: &str, path: &str, headers: &[(&str, &str)]) -> String {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req
}

fn parse_head(head: &str) -> (u16, Vec<(String, String)>) {
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers)
}

/// Undoes chunked transfer coding; `None` while a chunk is incomplete.
fn dechunk(raw: &[u8]) -> (Vec<u8>, usize, bool) {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let Some(nl) = raw[at..].windows(2).position(|w| w == b"\r\n") else {
            return (out, at, false);
        };
        let size_line = std::str::from_utf8(&raw[at..at + nl]).expect("chunk size");
        let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16)
            .expect("hex chunk size");
        let start = at + nl + 2;
        if size == 0 {
            return (out, start, true);
        }
        if raw.len() < start + size + 2 {
            return (out, at, false);
        }
        out.extend_from_slice(&raw[start..start + size]);
        at = start + size + 2;
    }
}

/// `GET path` with `headers`: the whole answer (the connection closes after it).
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Answer {
    send(addr, "GET", path, headers).await
}

/// `method path` with `headers`: the whole answer.
pub async fn send(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request_with(method, path, headers).as_bytes())
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut raw))
        .await
        .expect("answer in time")
        .expect("read");
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head");
    let head = String::from_utf8(raw[..end].to_vec()).expect("utf-8 head");
    let (status, headers) = parse_head(&head);
    let rest = &raw[end + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest).0
    } else {
        rest.to_vec()
    };
    Answer {
        status,
        headers,
        body: String::from_utf8(body).expect("utf-8 body"),
    }
}

/// One SSE event (or comment).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
    /// The comment lines (`: ...`) of this block.
    pub comments: Vec<String>,
}

/// An open event stream.
pub struct Sse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    sock: TcpStream,
    raw: Vec<u8>,
    body: Vec<u8>,
    ended: bool,
}

impl Sse {
    /// Opens `path`; the head is read, the body is not.
    pub async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Sse {
        Sse::open_on(
            TcpStream::connect(addr).await.expect("connect"),
            path,
            headers,
        )
        .await
    }

    /// Opens `path` on a connected socket.
    pub async fn open_on(mut sock: TcpStream, path: &str, headers: &[(&str, &str)]) -> Sse {
        sock.write_all(request(path, headers).as_bytes())
            .await
            .unwrap();
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        let end = loop {
            if let Some(e) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break e;
            }
            let n = tokio::time::timeout(Duration::from_secs(10), sock.read(&mut buf))
                .await
                .expect("head in time")
                .expect("read");
            assert!(n > 0, "closed before the head");
            raw.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8(raw[..end].to_vec()).expect("utf-8 head");
        let (status, headers) = parse_head(&head);
        let raw = raw[end + 4..].to_vec();
        Sse {
            status,
            headers,
            sock,
            raw,
            body: Vec::new(),
            ended: false,
        }
    }

    /// The next event or comment block; `None` when the stream ended (or nothing came for
    /// `wait`: check [`Sse::ended`]).
    pub async fn next(&mut self, wait: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if !self.ended {
                let (more, used, last) = dechunk(&self.raw);
                self.body.extend_from_slice(&more);
                self.raw.drain(..used);
                if last {
                    self.ended = true;
                    self.raw.clear();
                }
            }
            if let Some(e) = self.body.windows(2).position(|w| w == b"\n\n") {
                let block = String::from_utf8(self.body[..e].to_vec()).expect("utf-8 event");
                self.body.drain(..e + 2);
                return Some(parse_block(&block));
            }
            if self.ended {
                return None;
            }
            let mut buf = [0u8; 16384];
            let n = match tokio::time::timeout_at(deadline, self.sock.read(&mut buf)).await {
                Err(_) => return None,
                Ok(Ok(n)) => n,
                Ok(Err(_)) => 0,
            };
            if n == 0 {
                // Closed: what is still in `raw` is a cut chunk (the server dropped us).
                let (more, _, _) = dechunk(&self.raw);
                self.body.extend_from_slice(&more);
                self.ended = true;
            }
            self.raw.extend_from_slice(&buf[..n]);
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the server ended the stream (or closed the connection).
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The next block that is an event (comments skipped).
    pub async fn next_event(&mut self, wait: Duration) -> Option<SseEvent> {
        loop {
            let e = self.next(wait).await?;
            if !e.data.is_empty() || e.event.is_some() {
                return Some(e);
            }
        }
    }
}

fn parse_block(block: &str) -> SseEvent {
    let mut e = SseEvent::default();
    for line in block.split('\n') {
        if let Some(c) = line.strip_prefix(':') {
            e.comments.push(c.trim().to_string());
        } else if let Some(v) = line.strip_prefix("id: ") {
            e.id = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("event: ") {
            e.event = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("data: ") {
            if !e.data.is_empty() {
                e.data.push('\n');
            }
            e.data.push_str(v);
        }
    }
    e
}
