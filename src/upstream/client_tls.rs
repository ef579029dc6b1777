//! The upstream client's rustls config: system roots plus an optional extra CA file, or (with
//! `insecure_skip_verify`) no verification at all. ring as provider, never the process-global one.

use super::UpstreamInitError;
use std::path::Path;
use std::sync::Arc;

/// Builds the rustls config: system roots plus the optional extra CA file, ring as provider
/// (explicitly, never the process-global default).
pub(crate) fn tls_config(
    // The key naming the file, for its read error, and the file.
    ca_file: Option<(&str, &Path)>,
    insecure_skip_verify: bool,
) -> Result<rustls::ClientConfig, UpstreamInitError> {
    let provider = crate::tls::provider();
    if insecure_skip_verify {
        let verifier = crate::tls::AcceptAnyServerCert::new(provider.clone());
        return Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(UpstreamInitError::Tls)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::warn!(%error, "while loading system CA certificates");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, ignored, "system CA certificates");
    if let Some((key, path)) = ca_file {
        let pem = crate::key_file::read(key, path).map_err(UpstreamInitError::CaFileRead)?;
        let certs = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| UpstreamInitError::CaFileInvalid {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(UpstreamInitError::CaFileEmpty {
                path: path.to_owned(),
            });
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| UpstreamInitError::CaFileInvalid {
                    path: path.to_owned(),
                    message: e.to_string(),
                })?;
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(UpstreamInitError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
