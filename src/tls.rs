//! TLS (rustls, through tokio-rustls) for the binary port, the HTTP endpoint and the Rust
//! client. TLS sits below the framing: a TLS connection carries exactly the bytes a plain
//! one does. Certificates and keys are PEM files read at start and again on request
//! ([`ServerTls::reload`], which `serve` runs at SIGHUP: docs/operations.md); a reload that
//! fails keeps the identity in use. Only the ring provider is used, with rustls' safe
//! defaults (TLS 1.2 and 1.3).
//!
//! Built with the `tls` feature (on in `server`; off in the client-only build, which then
//! speaks plain TCP only).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Most certificates read from one PEM file (a chain or a CA bundle).
pub const MAX_PEM_CERTS: usize = 1_000;

/// The first byte of every TLS connection (a handshake record). A frame of the binary
/// protocol never starts with it on a plain connection: its length field would be over
/// 369 MB, beyond the largest `max_frame_bytes`.
pub const TLS_HANDSHAKE_RECORD: u8 = 0x16;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM file of certificates: at least one, at most [`MAX_PEM_CERTS`].
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{shown}: {e}"))?
        .take(MAX_PEM_CERTS + 1)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{shown}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{shown}: no PEM certificate in it"));
    }
    if certs.len() > MAX_PEM_CERTS {
        return Err(format!("{shown}: more than {MAX_PEM_CERTS} certificates"));
    }
    Ok(certs)
}

/// Reads a PEM private key (PKCS#8, PKCS#1 or SEC1; the first one in the file).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    let mut store = rustls::RootCertStore::empty();
    let (_, ignored) = store.add_parsable_certificates(read_certs(path)?);
    if ignored > 0 {
        return Err(format!(
            "{}: {ignored} certificate(s) are not usable as a trust anchor",
            path.display()
        ));
    }
    Ok(store)
}

/// The read half of a connection, plain or TLS.
pub type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The write half of a connection, plain or TLS.
pub type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// Splits a TLS stream into boxed halves (the halves share the TLS state behind a lock).
pub fn split<S: AsyncRead + AsyncWrite + Send + Unpin + 'static>(s: S) -> (ReadHalf, WriteHalf) {
    let (r, w) = tokio::io::split(s);
    (Box::new(r), Box::new(w))
}

/// Where a server's TLS identity is read from: the certificate chain, its key and, when
/// client certificates are required, the CA(s) they must lead to.
#[cfg(feature = "server")]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: std::path::PathBuf,
    /// PEM private key of `cert`.
    pub key: std::path::PathBuf,
    /// PEM CA certificate(s) client certificates are verified against (`None`: none asked).
    pub client_ca: Option<std::path::PathBuf>,
}

#[cfg(feature = "server")]
impl TlsFiles {
    /// Reads the files into a rustls configuration. The error names the file and what is
    /// wrong with it.
    fn load(&self) -> Result<rustls::ServerConfig, String> {
        let chain = read_certs(&self.cert)?;
        let key = read_key(&self.key)?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match &self.client_ca {
            Some(ca) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots(ca)?),
                    provider(),
                )
                .build()
                .map_err(|e| format!("{}: {e}", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        builder.with_single_cert(chain, key).map_err(|e| {
            format!(
                "{} and {}: the certificate and the key do not make an identity: {e}",
                self.cert.display(),
                self.key.display()
            )
        })
    }
}

/// A server's TLS identity: its certificate chain and key, and, when client certificates
/// are required, the CAs they are verified against. Clones share the identity, so
/// [`ServerTls::reload`] on any clone changes what every listener holding one presents
/// from its next handshake on; connections already open keep the session they have.
#[cfg(feature = "server")]
#[derive(Clone)]
pub struct ServerTls {
    files: Arc<TlsFiles>,
    /// The configuration new handshakes use. A lock, not a lock-free swap: it is read
    /// once per accepted connection (a clone of the `Arc`) and written once per reload.
    current: Arc<std::sync::RwLock<Arc<rustls::ServerConfig>>>,
}

#[cfg(feature = "server")]
impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "server")]
impl ServerTls {
    /// Reads the chain (`cert`, leaf first) and key; with `client_ca`, every client must
    /// present a certificate that CA signed. The error names the file and what is wrong.
    pub fn from_files(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Self, String> {
        Self::load(TlsFiles {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            client_ca: client_ca.map(Path::to_path_buf),
        })
    }

    /// Reads `files` (see [`ServerTls::from_files`]).
    pub fn load(files: TlsFiles) -> Result<Self, String> {
        let config = files.load()?;
        Ok(ServerTls {
            files: Arc::new(files),
            current: Arc::new(std::sync::RwLock::new(Arc::new(config))),
        })
    }

    /// Reads the same files again and, if they make a valid identity, uses it for every
    /// handshake from now on (the connections already open are not affected). On an error
    /// (a missing, unreadable or malformed file, a key that does not match the
    /// certificate) the identity in use stays, and the error names the file.
    pub fn reload(&self) -> Result<(), String> {
        let config = Arc::new(self.files.load()?);
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = config;
        Ok(())
    }

    /// The files the identity is read from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Whether clients must present a certificate.
    pub fn client_certs_required(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// Runs the server side of the handshake with the identity in use now (the caller
    /// bounds it in time).
    pub async fn accept(
        &self,
        sock: TcpStream,
    ) -> std::io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
        let config = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        tokio_rustls::TlsAcceptor::from(config).accept(sock).await
    }
}

/// A client's TLS settings: the CA that signed the server's certificate, the name to
/// check it against, and an optional client certificate.
#[derive(Clone)]
pub struct ClientTls {
    connector: tokio_rustls::TlsConnector,
    server_name: Option<String>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// `ca_file`: PEM CA certificate(s) the server's chain must lead to (system roots are
    /// not used). `server_name`: the DNS name or IP the certificate must be for (default:
    /// the host part of the address connected to). `cert_key`: a client certificate chain
    /// and its key, for a server that requires one.
    pub fn new(
        ca_file: &Path,
        server_name: Option<String>,
        cert_key: Option<(&Path, &Path)>,
    ) -> Result<Self, String> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots(ca_file)?);
        let config = match cert_key {
            Some((cert, key)) => builder
                .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
                .map_err(|e| format!("client certificate and key: {e}"))?,
            None => builder.with_no_client_auth(),
        };
        if let Some(n) = &server_name {
            ServerName::try_from(n.clone()).map_err(|_| format!("{n:?} is not a server name"))?;
        }
        Ok(ClientTls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    /// Runs the client side of the handshake over `sock`; `addr` is the `host:port`
    /// connected to (its host is the default server name). The error says what failed,
    /// and names a plaintext answer as such.
    pub async fn connect(
        &self,
        addr: &str,
        sock: TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => host_of(addr).to_string(),
        };
        let name = ServerName::try_from(name.clone())
            .map_err(|_| format!("{name:?} is not a server name; give one (--server-name)"))?;
        self.connector
            .connect(name, sock)
            .await
            .map_err(|e| describe(&e))
    }
}

/// The host part of `host:port` (without the brackets of an IPv6 address).
fn host_of(addr: &str) -> &str {
    let host = match addr.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => addr,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Whether an IO error of a TLS stream is a TLS failure (an alert, a bad record), not a
/// plain socket error.
pub fn is_tls_error(e: &std::io::Error) -> bool {
    e.get_ref()
        .is_some_and(|i| i.downcast_ref::<rustls::Error>().is_some())
}

/// A TLS handshake error, in words: a plaintext peer is named as such.
pub fn describe(e: &std::io::Error) -> String {
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    match inner {
        Some(rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType))
        | Some(rustls::Error::InvalidMessage(rustls::InvalidMessage::UnknownProtocolVersion)) => {
            format!(
                "TLS handshake failed: the peer answered in plaintext (is TLS enabled on that \
                 port?): {e}"
            )
        }
        Some(r) => format!("TLS handshake failed: {r}"),
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            "TLS handshake failed: the peer closed the connection (a server requiring a client \
             certificate, or not speaking TLS)"
                .to_string()
        }
        None => format!("TLS handshake failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_of_an_address_is_its_default_server_name() {
        assert_eq!(host_of("db.example.com:7878"), "db.example.com");
        assert_eq!(host_of("127.0.0.1:7878"), "127.0.0.1");
        assert_eq!(host_of("[::1]:7878"), "::1");
        assert_eq!(host_of("localhost"), "localhost");
    }

    #[test]
    fn missing_and_empty_pem_files_are_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let e = read_certs(&empty).unwrap_err();
        assert!(
            e.contains("empty.pem") && e.contains("no PEM certificate"),
            "{e}"
        );
        let e = read_certs(&dir.path().join("nope.pem")).unwrap_err();
        assert!(e.contains("nope.pem"), "{e}");
        let e = read_key(&empty).unwrap_err();
        assert!(e.contains("empty.pem"), "{e}");
    }
}
