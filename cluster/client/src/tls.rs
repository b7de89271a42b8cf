//! TLS for the native protocol: mutual authentication of nodes, gateways and tools with
//! certificates from one cluster CA (openssl); and TLS of the memcached port for clients
//! (server certificate, client certificates optional).
//!
//! Owns: building the connector (client side) and the acceptor (node side) from PEM files,
//! with a minimum protocol version. Invariants: peers must present a certificate signed by the
//! configured CA (both directions); host names are not checked, since nodes are addressed by
//! IP and the CA is private to the cluster, so "signed by our CA" is the identity.

use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

use openssl::ssl::{
    SslAcceptor, SslConnector, SslContextBuilder, SslFiletype, SslMethod, SslVerifyMode, SslVersion,
};

/// PEM files and settings of a node's or tool's TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificate(s) that sign every node's certificate.
    pub ca: PathBuf,
    /// This side's certificate (chain).
    pub cert: PathBuf,
    /// This side's private key.
    pub key: PathBuf,
    /// Lowest protocol version: "1.2" or "1.3" (default "1.2").
    pub min_version: Option<String>,
}

/// A configured client side (cheap to clone).
#[derive(Clone)]
pub struct TlsConnector(pub(crate) Arc<SslConnector>);

impl std::fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsConnector")
    }
}

/// A configured server side (cheap to clone).
#[derive(Clone)]
pub struct TlsAcceptor(pub Arc<SslAcceptor>);

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsAcceptor")
    }
}

fn version(v: Option<&str>) -> Result<SslVersion, String> {
    match v.unwrap_or("1.2") {
        "1.2" | "TLSv1.2" | "TLSV1.2" => Ok(SslVersion::TLS1_2),
        "1.3" | "TLSv1.3" | "TLSV1.3" => Ok(SslVersion::TLS1_3),
        other => Err(format!(
            "TLS minimum version {other:?} is not supported: use 1.2 or 1.3"
        )),
    }
}

fn ctx<T>(
    what: &str,
    path: &std::path::Path,
    r: Result<T, openssl::error::ErrorStack>,
) -> Result<T, String> {
    r.map_err(|e| format!("{what} {}: {e}", path.display()))
}

impl TlsFiles {
    /// Read `K2HDKC_TLS_CA`, `K2HDKC_TLS_CERT`, `K2HDKC_TLS_KEY` (and
    /// `K2HDKC_TLS_MIN_VERSION`): how tools find the cluster's TLS without flags.
    pub fn from_env() -> Option<TlsFiles> {
        let get = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        Some(TlsFiles {
            ca: get("K2HDKC_TLS_CA")?.into(),
            cert: get("K2HDKC_TLS_CERT")?.into(),
            key: get("K2HDKC_TLS_KEY")?.into(),
            min_version: get("K2HDKC_TLS_MIN_VERSION").map(|v| v.to_string_lossy().into_owned()),
        })
    }

    /// The files and version into a context builder (both sides use the same).
    fn load(&self, b: &mut SslContextBuilder) -> Result<(), String> {
        b.set_min_proto_version(Some(version(self.min_version.as_deref())?))
            .map_err(|e| e.to_string())?;
        ctx("CA", &self.ca, b.set_ca_file(&self.ca))?;
        ctx(
            "certificate",
            &self.cert,
            b.set_certificate_chain_file(&self.cert),
        )?;
        ctx(
            "key",
            &self.key,
            b.set_private_key_file(&self.key, SslFiletype::PEM),
        )?;
        ctx("key", &self.key, b.check_private_key())
    }

    /// The client side: presents this certificate, accepts only servers signed by the CA.
    pub fn connector(&self) -> Result<TlsConnector, String> {
        let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(|e| e.to_string())?;
        self.load(&mut b)?;
        b.set_verify(SslVerifyMode::PEER);
        Ok(TlsConnector(Arc::new(b.build())))
    }

    /// The server side: presents this certificate and requires a client certificate signed
    /// by the CA (connections without one are refused during the handshake).
    pub fn acceptor(&self) -> Result<TlsAcceptor, String> {
        let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())
            .map_err(|e| e.to_string())?;
        self.load(&mut b)?;
        b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
        Ok(TlsAcceptor(Arc::new(b.build())))
    }
}

/// TLS of a client-facing port (memcached): the server presents `cert`/`key`; with `ca`,
/// clients must present a certificate signed by it (mutual), else any client may connect.
pub fn client_port_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
    ca: Option<&std::path::Path>,
    min_version: Option<&str>,
) -> Result<TlsAcceptor, String> {
    let mut b =
        SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).map_err(|e| e.to_string())?;
    b.set_min_proto_version(Some(version(min_version)?))
        .map_err(|e| e.to_string())?;
    ctx("certificate", cert, b.set_certificate_chain_file(cert))?;
    ctx("key", key, b.set_private_key_file(key, SslFiletype::PEM))?;
    ctx("key", key, b.check_private_key())?;
    if let Some(ca) = ca {
        ctx("CA", ca, b.set_ca_file(ca))?;
        b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
    }
    Ok(TlsAcceptor(Arc::new(b.build())))
}

/// A client of a TLS client-facing port: trusts servers whose certificate `ca` signs, and
/// presents `cert_key` when the port requires client certificates.
pub fn client_port_connector(
    ca: &std::path::Path,
    cert_key: Option<(&std::path::Path, &std::path::Path)>,
    min_version: Option<&str>,
) -> Result<TlsConnector, String> {
    let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(|e| e.to_string())?;
    b.set_min_proto_version(Some(version(min_version)?))
        .map_err(|e| e.to_string())?;
    ctx("CA", ca, b.set_ca_file(ca))?;
    if let Some((cert, key)) = cert_key {
        ctx("certificate", cert, b.set_certificate_chain_file(cert))?;
        ctx("key", key, b.set_private_key_file(key, SslFiletype::PEM))?;
        ctx("key", key, b.check_private_key())?;
    }
    b.set_verify(SslVerifyMode::PEER);
    Ok(TlsConnector(Arc::new(b.build())))
}

impl TlsConnector {
    /// Handshake over `sock`.
    pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        sock: S,
    ) -> Result<tokio_openssl::SslStream<S>, String> {
        let ssl = self
            .0
            .configure()
            .map_err(|e| e.to_string())?
            .verify_hostname(false)
            .into_ssl("k2hdkc")
            .map_err(|e| e.to_string())?;
        let mut s = tokio_openssl::SslStream::new(ssl, sock).map_err(|e| e.to_string())?;
        std::pin::Pin::new(&mut s)
            .connect()
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        Ok(s)
    }
}

impl TlsAcceptor {
    /// Handshake over an accepted `sock`.
    pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        sock: S,
    ) -> Result<tokio_openssl::SslStream<S>, String> {
        let ssl = openssl::ssl::Ssl::new(self.0.context()).map_err(|e| e.to_string())?;
        let mut s = tokio_openssl::SslStream::new(ssl, sock).map_err(|e| e.to_string())?;
        std::pin::Pin::new(&mut s)
            .accept()
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        Ok(s)
    }
}
