//! TLS on the binary port and the HTTP endpoint, with certificates made at test time
//! (rcgen): handshake and PING, auth over TLS, client certificates required and refused,
//! plaintext refused on a TLS port (and TLS on a plaintext one) with a clear error on both
//! sides, the start-up refusal of plaintext tokens off loopback, ctl over TLS, HTTPS
//! /healthz and /metrics on a real `omnistock serve`, and its certificate reload at SIGHUP
//! (new handshakes on both ports see the new certificate, an open connection goes on, a
//! garbage file or a mismatched key keeps the one in use and is counted and logged), and
//! client certificates required on the HTTP endpoint (`--admin-tls-client-ca`).

mod common;
use common::free_port;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use omnistock::client::{Client, ClientConfig, ClientError};
use omnistock::engine::{Engine, EngineConfig};
use omnistock::protocol::{status, Role};
use omnistock::server::{Server, ServerConfig, ServerStats};
use omnistock::tls::{ClientTls, ServerTls};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

const BIN: &str = env!("CARGO_BIN_EXE_omnistock");

/// A CA, two server certificates for localhost / 127.0.0.1 (`server`, `server2`: a renewal)
/// and a client certificate, all signed by it, and a second CA's client certificate; as
/// PEM files in a temp dir.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
        for (ca_name, leaves) in [
            (
                "ca",
                vec![("server", true), ("server2", true), ("client", false)],
            ),
            ("other-ca", vec![("stranger", false)]),
        ] {
            let ca_key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.distinguished_name.push(DnType::CommonName, ca_name);
            let ca = p.self_signed(&ca_key).unwrap();
            write(&format!("{ca_name}.pem"), ca.pem());
            let issuer = Issuer::new(p, ca_key);
            for (leaf, is_server) in leaves {
                let key = KeyPair::generate().unwrap();
                let names = if is_server {
                    vec!["localhost".to_string(), "127.0.0.1".to_string()]
                } else {
                    vec![format!("{leaf}.example")]
                };
                let mut lp = CertificateParams::new(names).unwrap();
                lp.distinguished_name.push(DnType::CommonName, leaf);
                let cert = lp.signed_by(&key, &issuer).unwrap();
                write(&format!("{leaf}.pem"), cert.pem());
                write(&format!("{leaf}.key"), key.serialize_pem());
            }
        }
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn server(&self, client_ca: bool) -> ServerTls {
        let ca = client_ca.then(|| self.path("ca.pem"));
        ServerTls::from_files(
            &self.path("server.pem"),
            &self.path("server.key"),
            ca.as_deref(),
        )
        .unwrap()
    }

    fn client(&self, cert: Option<&str>) -> ClientTls {
        let (c, k) = match cert {
            Some(n) => (
                self.path(&format!("{n}.pem")),
                self.path(&format!("{n}.key")),
            ),
            None => (PathBuf::new(), PathBuf::new()),
        };
        let pair = cert.map(|_| (c.as_path(), k.as_path()));
        ClientTls::new(&self.path("ca.pem"), None, pair).unwrap()
    }
}

async fn start(f: impl FnOnce(&mut ServerConfig)) -> (SocketAddr, Arc<ServerStats>) {
    let cfg = EngineConfig {
        arbiters: 1,
        ..EngineConfig::default()
    };
    let engine = Arc::new(Engine::start_in_memory(cfg).unwrap());
    let mut c = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..ServerConfig::default()
    };
    f(&mut c);
    let server = Server::bind(c, engine).await.unwrap();
    let (addr, stats) = (server.local_addr(), server.stats());
    tokio::spawn(server.run());
    (addr, stats)
}

fn config(addr: SocketAddr, tls: Option<ClientTls>) -> ClientConfig {
    let mut c = ClientConfig::new(addr.to_string());
    c.max_retries = 0;
    c.tls = tls;
    c
}

#[tokio::test]
async fn handshake_ping_and_auth_over_tls() {
    let pki = Pki::new();
    let (addr, _) = start(|c| {
        c.tls = Some(pki.server(false));
        c.tokens = HashMap::from([("s3cret".to_string(), Role::Admin)]);
    })
    .await;
    let c = Client::connect(config(addr, Some(pki.client(None))).token("s3cret"))
        .await
        .unwrap();
    c.ping().await.unwrap();
    common::wire_catalog(&c).await;
    assert!(common::wire_adjust(&c, "A", 5).await > 0);
    // A wrong token is refused over TLS like over plain TCP.
    let e = Client::connect(config(addr, Some(pki.client(None))).token("wrong"))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(
            e,
            ClientError::Refused {
                status: status::UNAUTHORIZED,
                ..
            }
        ),
        "{e:?}"
    );
    // The server name is checked: a certificate for localhost is not one for another name.
    let other = ClientTls::new(&pki.path("ca.pem"), Some("db.example".into()), None).unwrap();
    let e = Client::connect(config(addr, Some(other)).token("s3cret"))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&e, ClientError::Tls(m) if m.contains("certificate")),
        "{e:?}"
    );
}

#[tokio::test]
async fn client_certificates_are_required_and_verified_when_a_client_ca_is_set() {
    let pki = Pki::new();
    let (addr, stats) = start(|c| c.tls = Some(pki.server(true))).await;
    let c = Client::connect(config(addr, Some(pki.client(Some("client")))))
        .await
        .unwrap();
    c.ping().await.unwrap();
    for cert in [None, Some("stranger")] {
        let e = Client::connect(config(addr, Some(pki.client(cert))))
            .await
            .err()
            .unwrap_or_else(|| panic!("{cert:?}: connected"));
        assert!(matches!(e, ClientError::Tls(_)), "{cert:?}: {e:?}");
    }
    // Both refusals are counted (the server's side of the handshake may end just after
    // the client's).
    let deadline = Instant::now() + Duration::from_secs(5);
    while stats.tls_handshake_failures.load(Ordering::Relaxed) < 2 {
        assert!(Instant::now() < deadline, "failures not counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn plaintext_on_a_tls_port_and_tls_on_a_plaintext_port_are_clear_errors() {
    let pki = Pki::new();
    let (tls_addr, stats) = start(|c| c.tls = Some(pki.server(false))).await;
    let e = Client::connect(config(tls_addr, None)).await.err().unwrap();
    match &e {
        ClientError::Refused { status, message } => {
            assert_eq!(*status, status::TLS_REQUIRED);
            assert!(message.contains("requires TLS"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(stats.tls_plaintext_refused.load(Ordering::Relaxed), 1);

    let (plain_addr, plain_stats) = start(|_| {}).await;
    let e = Client::connect(config(plain_addr, Some(pki.client(None))))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&e, ClientError::Tls(m) if m.contains("plaintext")),
        "{e:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while plain_stats.tls_on_plain_port.load(Ordering::Relaxed) < 1 {
        assert!(Instant::now() < deadline, "not counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_silent_tls_handshake_ends_at_the_handshake_deadline() {
    let pki = Pki::new();
    let (addr, stats) = start(|c| {
        c.tls = Some(pki.server(false));
        c.handshake_timeout = Duration::from_millis(300);
    })
    .await;
    // One byte of a TLS record, then nothing.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut s, &[0x16])
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut s, &mut buf),
    )
    .await
    .expect("the server closes the connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // Counted, and its place in the pending pool freed, as the connection's task ends:
    // just after the close we saw (the socket goes with the handshake's future).
    let deadline = Instant::now() + Duration::from_secs(5);
    while stats.tls_handshake_timeouts.load(Ordering::Relaxed) != 1
        || stats.handshakes_pending.load(Ordering::Relaxed) != 0
    {
        assert!(Instant::now() < deadline, "still pending");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_tls_handshake_waits_in_the_pending_pool_and_the_oldest_is_evicted() {
    let pki = Pki::new();
    let (addr, stats) = start(|c| {
        c.tls = Some(pki.server(false));
        c.max_pending_handshakes = 1;
    })
    .await;
    // A squatter that starts a TLS record and stops: it holds the one pending place.
    let mut squatter = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut squatter, &[0x16, 0x03])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while stats.handshakes_pending.load(Ordering::Relaxed) < 1 {
        assert!(Instant::now() < deadline, "squatter not pending");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A real client still gets in: the squatter, the oldest, is evicted.
    let c = Client::connect(config(addr, Some(pki.client(None))))
        .await
        .unwrap();
    c.ping().await.unwrap();
    assert_eq!(stats.handshakes_evicted.load(Ordering::Relaxed), 1);
    let mut buf = [0u8; 8];
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut squatter, &mut buf),
    )
    .await
    .expect("the evicted squatter is closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

fn serve(pki: &Pki, data: &Path, port: u16, admin: u16, extra: &[&str]) -> Child {
    let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
    serve_with(&cert, &key, data, port, admin, extra)
}

fn serve_with(
    cert: &Path,
    key: &Path,
    data: &Path,
    port: u16,
    admin: u16,
    extra: &[&str],
) -> Child {
    let child = Command::new(BIN)
        .args(["serve", "--init", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .arg("--data-dir")
        .arg(data)
        .arg("--tls-cert")
        .arg(cert)
        .arg("--tls-key")
        .arg(key)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "server did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn stop(child: Child) -> String {
    // SAFETY: sending SIGTERM to our own child process.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "serve exited {:?}: {stderr}",
        out.status
    );
    stderr
}

fn ctl(port: u16, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["ctl", "--addr", &format!("127.0.0.1:{port}")])
        .args(args)
        .output()
        .expect("run ctl")
}

/// One HTTPS GET with a TLS client trusting the test CA; the whole answer.
async fn https_get(pki: &Pki, port: u16, path: &str) -> String {
    https_get_as(pki, None, port, path).await.unwrap()
}

/// One HTTPS GET presenting the client certificate `cert` (of [`Pki`]) or none: the whole
/// answer, or what failed (the handshake, or a read the server cut with an alert).
async fn https_get_as(
    pki: &Pki,
    cert: Option<&str>,
    port: u16,
    path: &str,
) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tls = pki.client(cert);
    let sock = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut s = tls.connect("localhost:0", sock).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| omnistock::tls::describe(&e))?;
    let mut out = Vec::new();
    match tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await {
        Ok(Err(e)) if out.is_empty() => Err(omnistock::tls::describe(&e)),
        _ => Ok(String::from_utf8_lossy(&out).to_string()),
    }
}

#[tokio::test]
async fn serve_with_tls_answers_ctl_over_tls_and_https_on_the_admin_port() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let child = serve(&pki, data.path(), port, admin, &[]);
    let ca = pki.path("ca.pem");
    let ca = ca.to_str().unwrap();

    let o = ctl(port, &["--tls", "--ca-file", ca, "ping"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The CA file alone implies TLS, and the environment variables work too.
    let o = Command::new(BIN)
        .args([
            "ctl",
            "--addr",
            &format!("localhost:{port}"),
            "--json",
            "info",
        ])
        .env("OMNISTOCK_CA_FILE", ca)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // Plaintext ctl: the server's 112, by name, as the exit code.
    let o = ctl(port, &["ping"]);
    assert_eq!(o.status.code(), Some(112), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("requires TLS"),
        "{o:?}"
    );
    // --tls without a CA file is a usage error.
    let o = ctl(port, &["--tls", "ping"]);
    assert_eq!(o.status.code(), Some(64), "{o:?}");

    let health = https_get(&pki, admin, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let metrics = https_get(&pki, admin, "/metrics").await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(
        metrics.contains(
            "omnistock_tls_handshake_failures_total{port=\"binary\",reason=\"plaintext\"} 1"
        ),
        "{metrics}"
    );
    // Plain HTTP to the HTTPS endpoint gets no answer, and is counted.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", admin))
            .await
            .unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        assert!(!out.starts_with(b"HTTP/1.1 200"), "{out:?}");
    }
    let metrics = https_get(&pki, admin, "/metrics").await;
    assert!(
        metrics.contains(
            "omnistock_tls_handshake_failures_total{port=\"http\",reason=\"handshake\"} 1"
        ),
        "{metrics}"
    );
    let stderr = stop(child);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn ctl_presents_a_client_certificate_and_without_one_fails_as_tls() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let ca = pki.path("ca.pem");
    let child = serve(
        &pki,
        data.path(),
        port,
        admin,
        &["--tls-client-ca", ca.to_str().unwrap()],
    );
    let (cert, key) = (pki.path("client.pem"), pki.path("client.key"));
    let with = |extra: &[&str]| {
        let mut args = vec!["--ca-file", ca.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.push("--json");
        args.push("ping");
        ctl(port, &args)
    };
    let o = with(&[
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let o = with(&[]);
    assert_eq!(o.status.code(), Some(76), "{o:?}");
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(out["error"]["name"], "tls", "{out}");
    assert_eq!(out["error"]["retriable"], false, "{out}");
    // --cert without --key is a usage error.
    let o = with(&["--cert", cert.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(64), "{o:?}");
    stop(child);
}

#[test]
fn tokens_off_loopback_need_tls_or_the_insecure_flag() {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([
            "serve",
            "--init",
            "--listen",
            "0.0.0.0:0",
            "--token",
            "t:admin",
        ])
        .args(["--admin-listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--insecure-plaintext-tokens") && stderr.contains("--tls-cert"),
        "{stderr}"
    );
    // A key without its certificate is named.
    let out = Command::new(BIN)
        .args([
            "serve",
            "--init",
            "--tls-key",
            "/nonexistent.key",
            "--data-dir",
        ])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tls_cert"), "{stderr}");
}

/// The leaf certificate a new TLS handshake with `port` is shown (DER).
async fn presented(pki: &Pki, port: u16) -> Vec<u8> {
    let sock = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let s = pki.client(None).connect("localhost:0", sock).await.unwrap();
    let certs = s
        .get_ref()
        .1
        .peer_certificates()
        .expect("a server certificate");
    certs[0].to_vec()
}

/// Scrapes `/metrics` over HTTPS until it has every line of `lines` (at most 300 looks).
async fn scrape_until(pki: &Pki, admin: u16, lines: &[String]) {
    let mut metrics = String::new();
    for _ in 0..300 {
        metrics = https_get(pki, admin, "/metrics").await;
        if lines.iter().all(|l| metrics.contains(l.as_str())) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not in the scrape after 300 looks: {lines:?}\n{metrics}");
}

/// The DER of the first certificate of a PEM file.
fn der_of(path: &Path) -> Vec<u8> {
    omnistock::tls::read_certs(path).unwrap()[0].to_vec()
}

fn sighup(child: &Child) {
    // SAFETY: sending SIGHUP to our own child process.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGHUP);
    }
}

/// Replaces `to` with `from`'s bytes the way docs/operations.md says (a temporary name in
/// the same directory, then a rename).
fn replace(from: &Path, to: &Path) {
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_for_new_handshakes_and_a_bad_file_keeps_the_one_in_use() {
    let pki = Pki::new();
    let live = tempfile::tempdir().unwrap();
    let (cert, key) = (live.path().join("live.pem"), live.path().join("live.key"));
    replace(&pki.path("server.pem"), &cert);
    replace(&pki.path("server.key"), &key);
    let (a, b) = (
        der_of(&pki.path("server.pem")),
        der_of(&pki.path("server2.pem")),
    );
    assert_ne!(a, b);
    let data = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let child = serve_with(&cert, &key, data.path(), port, admin, &[]);
    assert_eq!(presented(&pki, port).await, a);
    assert_eq!(presented(&pki, admin).await, a);
    // A connection open across the reload keeps working.
    let open = Client::connect(config(
        format!("127.0.0.1:{port}").parse().unwrap(),
        Some(pki.client(None)),
    ))
    .await
    .unwrap();
    open.ping().await.unwrap();

    replace(&pki.path("server2.pem"), &cert);
    replace(&pki.path("server2.key"), &key);
    sighup(&child);
    // The reload happens when the server takes the signal; each port's count goes up once
    // its reload is done: look until both have (bounded), then handshake.
    let counted = |name: &str, n: u32| {
        ["binary", "http"].map(|port| format!("{name}{{port=\"{port}\"}} {n}"))
    };
    scrape_until(&pki, admin, &counted("omnistock_tls_reloads_total", 1)).await;
    assert_eq!(presented(&pki, port).await, b, "the binary port");
    assert_eq!(presented(&pki, admin).await, b, "the HTTP endpoint");
    open.ping()
        .await
        .expect("the connection opened before the reload");

    // A garbage certificate file: the reload fails, B stays, and the failure is counted.
    std::fs::write(&cert, "not a certificate\n").unwrap();
    sighup(&child);
    scrape_until(
        &pki,
        admin,
        &counted("omnistock_tls_reload_failures_total", 1),
    )
    .await;
    assert_eq!(
        presented(&pki, port).await,
        b,
        "the certificate in use stays"
    );
    assert_eq!(presented(&pki, admin).await, b);
    // A key that does not match the certificate: refused the same way.
    replace(&pki.path("server.pem"), &cert);
    replace(&pki.path("server2.key"), &key);
    sighup(&child);
    scrape_until(
        &pki,
        admin,
        &counted("omnistock_tls_reload_failures_total", 2),
    )
    .await;
    assert_eq!(presented(&pki, port).await, b);
    assert_eq!(presented(&pki, admin).await, b);
    let metrics = https_get(&pki, admin, "/metrics").await;
    for line in counted("omnistock_tls_reloads_total", 1) {
        assert!(
            metrics.contains(&line),
            "no reload since the first: {metrics}"
        );
    }
    open.ping().await.unwrap();
    drop(open);
    let stderr = stop(child);
    assert!(
        stderr.contains("TLS reload failed") && stderr.contains("live.pem"),
        "{stderr}"
    );
    assert!(stderr.contains("do not make an identity"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_endpoint_requires_client_certificates_with_admin_tls_client_ca() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let ca = pki.path("ca.pem");
    let child = serve(
        &pki,
        data.path(),
        port,
        admin,
        &["--admin-tls-client-ca", ca.to_str().unwrap()],
    );
    let health = https_get_as(&pki, Some("client"), admin, "/healthz").await;
    assert!(
        health.as_deref().unwrap().starts_with("HTTP/1.1 200"),
        "{health:?}"
    );
    for cert in [None, Some("stranger")] {
        let refused = https_get_as(&pki, cert, admin, "/healthz").await;
        assert!(
            !refused.as_deref().unwrap_or("").contains("HTTP/1.1"),
            "{cert:?}: {refused:?}"
        );
    }
    // Counted once the server has seen each handshake fail (it may answer the client's
    // next request first): look until both are (bounded).
    let failed = "omnistock_tls_handshake_failures_total{port=\"http\",reason=\"handshake\"} 2";
    let mut metrics = String::new();
    for _ in 0..300 {
        metrics = https_get_as(&pki, Some("client"), admin, "/metrics")
            .await
            .unwrap();
        if metrics.contains(failed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(metrics.contains(failed), "{metrics}");
    // The binary port asks for none (that is --tls-client-ca).
    let o = ctl(port, &["--ca-file", ca.to_str().unwrap(), "ping"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    stop(child);
}
