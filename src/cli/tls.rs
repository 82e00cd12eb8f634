//! How a client trusts the server it talks to over HTTPS, and what it says when it cannot.
//!
//! There is deliberately no way to skip verification: a client that sends the admin token to a
//! server it has not verified hands the fleet to whoever answers. A private CA is given with
//! `--ca-file`; `health`, on the server's own machine, trusts exactly the certificate the server
//! serves (see [`Trust::Pinned`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

use crate::api::tls::read_certificates;

/// Which server certificates a client accepts.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Those that chain to the machine's CA store, or to a CA in `ca_file` when one is given, and
    /// name the host of the URL.
    Roots { ca_file: Option<PathBuf> },
    /// Exactly this certificate, whoever signed it and whichever names it carries, presented by a
    /// server that proves it holds the key. For `health`, which reaches the server it runs beside
    /// at a loopback address its certificate does not name.
    Pinned(CertificateDer<'static>),
}

impl Default for Trust {
    fn default() -> Trust {
        Trust::Roots { ca_file: None }
    }
}

impl Trust {
    /// Trust exactly the first certificate of the PEM file the server serves.
    pub fn pinned_from(cert_file: &Path) -> Result<Trust, String> {
        let mut certs = read_certificates(cert_file, "TLS certificate file")?;
        Ok(Trust::Pinned(certs.swap_remove(0)))
    }
}

/// The HTTP client for `trust`; the error (a CA file that cannot be used) names the file.
pub fn http_client(trust: &Trust, connect_timeout: Duration) -> Result<reqwest::Client, String> {
    let builder = reqwest::Client::builder().connect_timeout(connect_timeout).use_rustls_tls();
    let builder = match trust {
        Trust::Roots { ca_file: None } => builder,
        Trust::Roots { ca_file: Some(path) } => {
            read_certificates(path, "CA file")?.iter().try_fold(builder, |b, der| {
                reqwest::Certificate::from_der(der)
                    .map(|c| b.add_root_certificate(c))
                    .map_err(|e| format!("the CA file {} holds a certificate that cannot be used: {e}", path.display()))
            })?
        }
        Trust::Pinned(cert) => builder.use_preconfigured_tls(pinned_config(cert.clone())?),
    };
    builder.build().map_err(|e| format!("cannot set up the HTTP client: {e}"))
}

fn pinned_config(cert: CertificateDer<'static>) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let algorithms = provider.signature_verification_algorithms;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCert { cert, algorithms }))
        .with_no_client_auth();
    Ok(config)
}

/// Accepts the one certificate given; the handshake's signatures are still checked against it,
/// so only a server holding its key gets through.
#[derive(Debug)]
struct PinnedCert {
    cert: CertificateDer<'static>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The TLS error under a failed request, if TLS is why it failed.
pub fn tls_error(e: &reqwest::Error) -> Option<&rustls::Error> {
    type Dyn = dyn std::error::Error + 'static;
    // An io::Error's `source` is its inner error's source, skipping the inner error itself, and
    // rustls's error comes wrapped in one io::Error or more: step into those through `get_ref`.
    let mut err: &Dyn = e;
    loop {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        err = match err.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref()?,
            None => err.source()?,
        };
    }
}

/// What to tell the user when TLS with `url` failed with `e`: what went wrong and what to do.
pub fn describe(url: &str, e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(why) => {
            let hint = match why {
                CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                    "; pass --ca-file (or KUA_CA_FILE, or the server's ca_file in servers.json) with the CA that signed it"
                }
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                    "; use a URL whose host name the certificate names"
                }
                _ => "",
            };
            format!("cannot verify the server's certificate for {url}: {e}{hint}")
        }
        rustls::Error::InvalidMessage(_) => {
            format!("cannot make a TLS connection to {url}: {e}; if that server speaks plain HTTP, use an http:// URL")
        }
        _ => format!("cannot make a TLS connection to {url}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_certificate_authority_says_to_pass_the_ca_file() {
        let e = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let msg = describe("https://deploy.example", &e);
        assert!(msg.starts_with("cannot verify the server's certificate for https://deploy.example"), "{msg}");
        assert!(msg.contains("--ca-file"), "{msg}");
    }

    #[test]
    fn a_server_that_is_not_speaking_tls_gets_the_http_hint() {
        let e = rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType);
        assert!(describe("https://h:1", &e).contains("http://"));
    }

    #[test]
    fn a_ca_file_that_cannot_be_read_is_named() {
        let err = http_client(&Trust::Roots { ca_file: Some("/nonexistent/ca.pem".into()) }, Duration::from_secs(1))
            .unwrap_err();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    }
}
