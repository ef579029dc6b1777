//! TLS for the registry listener — a certificate that can be re-read (SIGHUP) without touching
//! open connections — and the certificate verifier behind an upstream's `insecure_skip_verify`.

use crate::config::TlsConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use tokio_rustls::TlsAcceptor;

/// ALPN: HTTP/2 first (every current client), HTTP/1.1 for the rest.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The one ring provider archway uses for TLS everywhere (never aws-lc).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Read(crate::key_file::KeyFileError),
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error("TLS setup failed: {0}")]
    Setup(String),
}

/// What is wrong with a PEM document, before a file name is attached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PemError {
    #[error("no PEM certificate in it")]
    NoCertificate,
    #[error("no PEM private key (PKCS#8, PKCS#1 or SEC1) in it")]
    NoKey,
    #[error("malformed PEM: {0}")]
    Malformed(String),
}

/// Every certificate in a PEM document, in order (the leaf first, as servers send them).
pub fn parse_cert_chain(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PemError::Malformed(e.to_string()))?;
    if certs.is_empty() {
        return Err(PemError::NoCertificate);
    }
    Ok(certs)
}

/// The first private key in a PEM document.
pub fn parse_private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, PemError> {
    rustls_pemfile::private_key(&mut &pem[..])
        .map_err(|e| PemError::Malformed(e.to_string()))?
        .ok_or(PemError::NoKey)
}

/// Reads and checks a certificate chain and its key: both parse, and the key is the
/// certificate's. Errors name the file at fault.
pub fn load_certified_key(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let read = |key: &str, path: &Path| crate::key_file::read(key, path).map_err(TlsError::Read);
    let invalid = |path: &Path, message: String| TlsError::Invalid {
        path: path.to_owned(),
        message,
    };
    let chain = parse_cert_chain(&read("tls.cert_file", cert_file)?)
        .map_err(|e| invalid(cert_file, e.to_string()))?;
    let key = parse_private_key(&read("tls.key_file", key_file)?)
        .map_err(|e| invalid(key_file, e.to_string()))?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| invalid(key_file, format!("unusable private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(invalid(
                key_file,
                format!(
                    "the key does not belong to the certificate in {}",
                    cert_file.display()
                ),
            ))
        }
        Err(e) => Err(invalid(cert_file, format!("unusable certificate: {e}"))),
    }
}

/// The listener's certificate: every new handshake takes the current one, so swapping it
/// affects new connections only.
#[derive(Debug)]
pub struct ReloadableCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadableCert {
    pub fn load(
        cert_file: &Path,
        key_file: &Path,
        provider: Arc<CryptoProvider>,
    ) -> Result<ReloadableCert, TlsError> {
        let key = load_certified_key(cert_file, key_file, &provider)?;
        Ok(ReloadableCert {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            provider,
            current: RwLock::new(Arc::new(key)),
        })
    }

    /// Re-reads both files; on any error the certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = load_certified_key(&self.cert_file, &self.key_file, &self.provider)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
        Ok(())
    }

    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// TLS of the registry listener: the acceptor the server uses and the certificate behind it.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
    cert: Arc<ReloadableCert>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert_file", &self.cert.cert_file)
            .field("key_file", &self.cert.key_file)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    pub fn new(config: &TlsConfig) -> Result<ServerTls, TlsError> {
        let provider = provider();
        let cert = Arc::new(ReloadableCert::load(
            &config.cert_file,
            &config.key_file,
            provider.clone(),
        )?);
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(cert.clone());
        server.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(ServerTls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            cert,
        })
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    /// Re-reads the certificate and key files (see [`ReloadableCert::reload`]).
    pub fn reload(&self) -> Result<(), TlsError> {
        self.cert.reload()
    }

    /// The certificate chain new handshakes present.
    pub fn current_chain(&self) -> Vec<CertificateDer<'static>> {
        self.cert.current().cert.clone()
    }

    pub fn cert_file(&self) -> &Path {
        &self.cert.cert_file
    }
}

/// `insecure_skip_verify`: any certificate, any name, any date. The handshake signature is
/// still checked with the provider's algorithms, so the peer must hold the key of the
/// certificate it shows — it is just not known who that is.
#[derive(Debug)]
pub struct AcceptAnyServerCert {
    provider: Arc<CryptoProvider>,
}

impl AcceptAnyServerCert {
    pub fn new(provider: Arc<CryptoProvider>) -> Self {
        AcceptAnyServerCert { provider }
    }
}

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed() -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    #[test]
    fn pem_parsing() {
        let (cert, key) = self_signed();
        assert_eq!(parse_cert_chain(cert.as_bytes()).unwrap().len(), 1);
        let chain = format!("{cert}{cert}");
        assert_eq!(parse_cert_chain(chain.as_bytes()).unwrap().len(), 2);
        assert!(parse_private_key(key.as_bytes()).is_ok());
        // A key file is not a certificate file and vice versa.
        assert_eq!(
            parse_cert_chain(key.as_bytes()),
            Err(PemError::NoCertificate)
        );
        assert_eq!(parse_private_key(cert.as_bytes()), Err(PemError::NoKey));
        assert_eq!(parse_cert_chain(b""), Err(PemError::NoCertificate));
        assert_eq!(parse_private_key(b"hello"), Err(PemError::NoKey));
        let broken = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            parse_cert_chain(broken.as_bytes()),
            Err(PemError::Malformed(_))
        ));
    }

    #[test]
    fn load_names_the_file_at_fault() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed();
        let (_, other_key) = self_signed();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let cert_file = write("tls.crt", &cert);
        let key_file = write("tls.key", &key);
        let other_key_file = write("other.key", &other_key);
        let garbage = write("garbage.pem", "not pem at all\n");
        let missing = dir.path().join("missing.pem");
        let p = provider();

        assert!(load_certified_key(&cert_file, &key_file, &p).is_ok());
        let cases = [
            (&missing, &key_file, "missing.pem"),
            (&cert_file, &missing, "missing.pem"),
            (&garbage, &key_file, "garbage.pem: no PEM certificate"),
            (&cert_file, &garbage, "garbage.pem: no PEM private key"),
            (&key_file, &key_file, "tls.key: no PEM certificate"),
            (
                &cert_file,
                &other_key_file,
                "other.key: the key does not belong",
            ),
        ];
        for (c, k, want) in cases {
            let err = load_certified_key(c, k, &p).unwrap_err().to_string();
            assert!(err.contains(want), "{c:?} {k:?}: {err}");
        }
    }

    #[test]
    fn reload_swaps_only_on_success() {
        let dir = tempfile::tempdir().unwrap();
        let cert_file = dir.path().join("tls.crt");
        let key_file = dir.path().join("tls.key");
        let (cert1, key1) = self_signed();
        std::fs::write(&cert_file, &cert1).unwrap();
        std::fs::write(&key_file, &key1).unwrap();
        let r = ReloadableCert::load(&cert_file, &key_file, provider()).unwrap();
        let first = r.current().cert[0].clone();

        // Half-written: new certificate, old key. The old pair stays.
        let (cert2, key2) = self_signed();
        std::fs::write(&cert_file, &cert2).unwrap();
        assert!(r.reload().is_err());
        assert_eq!(r.current().cert[0], first);

        std::fs::write(&key_file, &key2).unwrap();
        r.reload().unwrap();
        let second = r.current().cert[0].clone();
        assert_ne!(second, first);
        assert_eq!(second, parse_cert_chain(cert2.as_bytes()).unwrap()[0]);
    }
}
