//! TLS for clients: trust the CA in a PEM file (the server's `--tls-cert`
//! issuer) and check the server's name against the address dialled.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

/// A connector that trusts exactly the certificates in `ca` (PEM). Errors
/// are about the local file, not the server.
pub fn connector(ca: &Path) -> Result<TlsConnector, String> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read --tls-ca {}: {e}", ca.display()))?;
    for c in certs {
        roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{} holds no certificate", ca.display()));
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The name to verify: the host part of `host:port` (an IP address or a DNS name).
pub fn server_name(addr: &str) -> Result<ServerName<'static>, String> {
    let host = addr
        .rsplit_once(':')
        .map_or(addr, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .map_err(|e| format!("'{host}' is not a valid TLS server name: {e}"))
}

/// Runs the TLS handshake on a socket connected to `addr`, expecting a
/// certificate for `name`.
pub async fn handshake(
    connector: &TlsConnector,
    name: ServerName<'static>,
    addr: &str,
    tcp: TcpStream,
) -> Result<TlsStream<TcpStream>, String> {
    connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake with {addr} failed: {}", explain(&e)))
}

/// The handshake error, with the mistakes people make setting up
/// certificates said in plain words rather than as rustls' enum names.
fn explain(e: &std::io::Error) -> String {
    use rustls::{CertificateError, Error as Tls, OtherError};
    let cert_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<Tls>())
        .and_then(|tls| match tls {
            Tls::InvalidCertificate(CertificateError::Other(OtherError(other))) => {
                other.downcast_ref::<webpki::Error>()
            }
            _ => None,
        });
    match cert_error {
        Some(webpki::Error::CaUsedAsEndEntity) => "the server presents a CA certificate as its \
            own; it needs a certificate that the CA signed (see the README's TLS recipe)"
            .to_string(),
        _ => e.to_string(),
    }
}
