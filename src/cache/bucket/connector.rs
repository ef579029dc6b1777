//! The HTTP client for an S3 endpoint on this machine. object_store's default client follows
//! `HTTP_PROXY`/`HTTPS_PROXY` from the environment; a loopback endpoint (a sidecar MinIO, moto in
//! tests) must never be sent through a proxy, so it gets a client that ignores them. Other
//! endpoints keep the default, proxy included, as operators behind one expect.

use object_store::client::{HttpClient, HttpConnector};
use object_store::ClientOptions;
use std::time::Duration;

/// `http(s)://127.x.y.z[:port]`, `http(s)://[::1][:port]` or `http(s)://localhost[:port]`.
pub(crate) fn is_loopback(endpoint: &str) -> bool {
    let Ok(uri) = endpoint.parse::<http::Uri>() else {
        return false;
    };
    let Some(host) = uri.host() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A reqwest client without proxies, bounded like the default one.
#[derive(Debug)]
pub(crate) struct Direct {
    connect_timeout: Duration,
    read_timeout: Duration,
}

impl Direct {
    pub(crate) fn new(connect_timeout: Duration, read_timeout: Duration) -> Self {
        Direct {
            connect_timeout,
            read_timeout,
        }
    }
}

impl HttpConnector for Direct {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(self.connect_timeout)
            .read_timeout(self.read_timeout)
            .http1_only()
            .build()
            .map_err(|e| object_store::Error::Generic {
                store: "S3",
                source: Box::new(e),
            })?;
        Ok(HttpClient::new(client))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_endpoints() {
        for e in [
            "http://127.0.0.1:9000",
            "http://127.1.2.3",
            "https://localhost:9000",
            "http://[::1]:9000",
        ] {
            assert!(is_loopback(e), "{e}");
        }
        for e in [
            "https://s3.eu-west-1.amazonaws.com",
            "http://10.0.0.1:9000",
            "nonsense",
        ] {
            assert!(!is_loopback(e), "{e}");
        }
    }
}
