//! HTTPS on the listener: the certificate and key `serve --tls-cert/--tls-key` name, loaded once
//! at start (a file that cannot be used stops the server before it listens, naming the file), and
//! the handshake of each connection.
//!
//! A plain-HTTP request sent to the HTTPS port gets a plain-HTTP 400 that says to use `https://`,
//! as nginx does: without it the client sees a reset or bytes it cannot parse, and its user is
//! left guessing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// The most of a plain-HTTP request head read to answer it.
const PLAIN_HEAD_MAX: usize = 16 * 1024;
/// How long a plain-HTTP client is given to read the refusal before the socket closes: closing
/// with its unread request body still queued would reset the connection and lose the answer.
const PLAIN_LINGER: Duration = Duration::from_secs(1);

/// The certificate chain and private key files HTTPS is served with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// Both files or neither (plain HTTP); one alone is a usage error saying what to add.
    pub fn pair(cert: Option<PathBuf>, key: Option<PathBuf>) -> Result<Option<TlsFiles>, String> {
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(TlsFiles { cert, key })),
            (None, None) => Ok(None),
            (Some(cert), None) => Err(format!(
                "a TLS certificate ({}) was given without its key: pass --tls-key PATH (or KUA_TLS_KEY) too, \
                 or neither to serve plain HTTP",
                cert.display()
            )),
            (None, Some(key)) => Err(format!(
                "a TLS key ({}) was given without its certificate: pass --tls-cert PATH (or KUA_TLS_CERT) too, \
                 or neither to serve plain HTTP",
                key.display()
            )),
        }
    }
}

/// The server side of HTTPS, built once at start.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls")
    }
}

impl ServerTls {
    /// Reads and checks the files: each must hold what it should, and the key must be the
    /// certificate's. The errors name the file.
    pub fn load(files: &TlsFiles) -> anyhow::Result<ServerTls> {
        let certs = read_certificates(&files.cert, "TLS certificate file").map_err(anyhow::Error::msg)?;
        let key = read_private_key(&files.key).map_err(anyhow::Error::msg)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("the TLS provider has no protocol version")?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => anyhow::anyhow!(
                    "the key in {} is not the key of the certificate in {}",
                    files.key.display(),
                    files.cert.display()
                ),
                e => anyhow::anyhow!(
                    "cannot serve HTTPS with the certificate {} and the key {}: {e}",
                    files.cert.display(),
                    files.key.display()
                ),
            })?;
        // The listener speaks HTTP/1 only.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ServerTls { acceptor: TlsAcceptor::from(Arc::new(config)) })
    }

    /// The TLS side of an accepted connection: `None` when it did not end in a TLS session (a
    /// failed handshake, or a plain-HTTP request, which is answered with a 400 first). The caller
    /// bounds it in time.
    pub async fn accept(&self, stream: TcpStream) -> Option<TlsStream<TcpStream>> {
        let mut first = [0u8; 1];
        match stream.peek(&mut first).await {
            Ok(1) => {}
            _ => return None,
        }
        if first[0] != TLS_HANDSHAKE_RECORD {
            // Request methods are upper-case ASCII; anything else is not worth an answer.
            if first[0].is_ascii_uppercase() {
                refuse_plain_http(stream).await;
            }
            return None;
        }
        match self.acceptor.accept(stream).await {
            Ok(s) => Some(s),
            Err(e) => {
                // Often a client that does not trust the certificate (its alert says so).
                tracing::debug!("TLS handshake failed: {e}");
                None
            }
        }
    }
}

/// Every certificate in a PEM file, in order; an error names the file (`what` it is for) and
/// what is wrong with it.
pub fn read_certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read_file(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the {what} {} is not a valid PEM file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("the {what} {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display()));
    }
    Ok(certs)
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let what = "TLS key file";
    let bytes = read_file(path, what)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            format!("the {what} {} holds no PEM private key (-----BEGIN PRIVATE KEY-----)", path.display())
        }
        e => format!("the {what} {} is not a valid PEM file: {e}", path.display()),
    })
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
}

/// Answers a plain-HTTP request on the HTTPS port with a 400 in the API's error shape.
async fn refuse_plain_http(mut stream: TcpStream) {
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < PLAIN_HEAD_MAX {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let body = plain_http_refusal(host_header(&head).as_deref());
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    if stream.write_all(answer.as_bytes()).await.is_err() || stream.shutdown().await.is_err() {
        return;
    }
    let _ =
        tokio::time::timeout(PLAIN_LINGER, async { while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {} })
            .await;
}

/// The JSON body of the refusal, naming the `https://` URL to use when the request said its host.
fn plain_http_refusal(host: Option<&str>) -> String {
    let url = format!("https://{}", host.unwrap_or("HOST:PORT"));
    let message = format!("this port serves HTTPS only: use {url}");
    serde_json::json!({"error": {"code": "https_required", "message": message}}).to_string()
}

/// The request's `Host`, if it is a plain host[:port] (it is echoed back).
fn host_header(head: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(head);
    let value = text.lines().skip(1).find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim().eq_ignore_ascii_case("host").then(|| value.trim().to_owned())
    })?;
    let plain = !value.is_empty()
        && value.len() <= 255
        && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    plain.then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_without_its_key_is_a_usage_error_naming_the_missing_option() {
        let err = TlsFiles::pair(Some("c.pem".into()), None).unwrap_err();
        assert!(err.contains("--tls-key") && err.contains("KUA_TLS_KEY"), "{err}");
        let err = TlsFiles::pair(None, Some("k.pem".into())).unwrap_err();
        assert!(err.contains("--tls-cert") && err.contains("KUA_TLS_CERT"), "{err}");
    }

    #[test]
    fn both_files_or_neither_is_accepted() {
        assert_eq!(TlsFiles::pair(None, None).unwrap(), None);
        let files = TlsFiles::pair(Some("c".into()), Some("k".into())).unwrap().unwrap();
        assert_eq!((files.cert, files.key), (PathBuf::from("c"), PathBuf::from("k")));
    }

    #[test]
    fn a_missing_or_empty_certificate_file_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = read_certificates(&missing, "CA file").unwrap_err();
        assert!(err.contains("CA file") && err.contains("missing.pem"), "{err}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = read_certificates(&empty, "CA file").unwrap_err();
        assert!(err.contains("empty.pem") && err.contains("no PEM certificate"), "{err}");
    }

    #[test]
    fn a_key_file_without_a_key_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("key.pem");
        std::fs::write(&f, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
        let err = read_private_key(&f).unwrap_err();
        assert!(err.contains("key.pem") && err.contains("no PEM private key"), "{err}");
    }

    #[test]
    fn the_plain_http_refusal_names_the_https_url_of_the_host_asked_for() {
        let head = b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1:8790\r\naccept: */*\r\n\r\n";
        let body: serde_json::Value = serde_json::from_str(&plain_http_refusal(host_header(head).as_deref())).unwrap();
        assert_eq!(body["error"]["code"], "https_required");
        assert_eq!(body["error"]["message"], "this port serves HTTPS only: use https://127.0.0.1:8790");
    }

    #[test]
    fn a_host_header_that_is_not_a_plain_host_is_not_echoed() {
        assert_eq!(host_header(b"GET / HTTP/1.1\r\nHost: evil\"<x>\r\n\r\n"), None);
        assert_eq!(host_header(b"GET / HTTP/1.1\r\n\r\n"), None);
        assert_eq!(host_header(b"GET / HTTP/1.1\r\nHost: [::1]:8790\r\n\r\n").as_deref(), Some("[::1]:8790"));
    }
}
