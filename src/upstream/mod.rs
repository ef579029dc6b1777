//! STUB so the lead's proxy compiles; replaced by the upstream branch.
use crate::body::UpstreamBody;
use crate::config::UpstreamConfig;
use crate::error::{ErrorCode, ProxyError};
use crate::reference::RepositoryName;
#[derive(Debug, thiserror::Error)]
#[error("stub")]
pub struct UpstreamInitError;
pub struct Upstream {
    config: UpstreamConfig,
}
impl Upstream {
    pub fn new(config: UpstreamConfig) -> Result<Upstream, UpstreamInitError> {
        Ok(Upstream { config })
    }
    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }
    pub async fn send(
        &self,
        _method: http::Method,
        _repo: &RepositoryName,
        _suffix: &str,
        _headers: http::HeaderMap,
    ) -> Result<http::Response<UpstreamBody>, ProxyError> {
        Err(ProxyError::bad_gateway("stub"))
    }
    pub fn token_fetches(&self) -> u64 {
        0
    }
}
pub fn status_error(
    _n: &str,
    _s: http::StatusCode,
    _h: &http::HeaderMap,
    _nf: ErrorCode,
) -> Option<ProxyError> {
    None
}
