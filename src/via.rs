//! `Via` (RFC 9110 §7.6.3) on every request archway sends upstream (and to a parent), and the
//! request loops it reveals: an upstream (or a chain of archways) that leads back to this one.
//!
//! Each archway marks its requests `1.1 archway-<instance id>`, the id random per process (per
//! `Proxy`, so that in-process tests have distinct ones), so two archways in a chain — a node and
//! its parent, which is legitimate — are told apart. A request arriving with this archway's own
//! marker is its own request come back: it is refused at once (508) rather than forwarded again,
//! which would hang it (it would join the very download it started) until the timeouts ran out.
//!
//! archway forms a fresh request for upstream and sends none of the client's headers, so of an
//! incoming `Via` it carries on only the archway hops (at most `MAX_CARRIED`): they are what a loop
//! through several archways (A → B → A) is recognised by. Other proxies' entries are not
//! archway's to repeat. The incoming hops travel with the request's task (`scope`), and into the
//! download task it starts (`carry`).

use http::header::{HeaderMap, HeaderValue, VIA};
use std::future::Future;

/// What every archway's marker starts with.
const PREFIX: &str = "archway-";
/// Incoming archway hops carried on at most: a longer chain is cut to its last hops (a loop
/// shows within them, the chain repeating).
const MAX_CARRIED: usize = 8;

tokio::task_local! {
    /// The archway hops of the request being answered (`None`: none, or not a client request).
    static INCOMING: Option<HeaderValue>;
}

/// This archway's mark on what it sends, and its test for its own requests come back.
#[derive(Debug, Clone)]
pub struct Via {
    /// `archway-<16 hex digits>`.
    marker: String,
    /// `1.1 archway-<id>`.
    own: HeaderValue,
}

impl Via {
    /// A new, random instance id.
    pub fn new() -> Via {
        Self::with_marker(format!("{PREFIX}{}", random_id()))
    }

    fn with_marker(marker: String) -> Via {
        let own = HeaderValue::from_str(&format!("1.1 {marker}"))
            .unwrap_or_else(|_| HeaderValue::from_static("1.1 archway"));
        Via { marker, own }
    }

    /// `archway-<id>`: this archway's `received-by` in a `Via`.
    pub fn marker(&self) -> &str {
        &self.marker
    }

    /// Whether a request carries this archway's own marker: it went upstream from here and came
    /// back (a loop).
    pub fn is_own_request(&self, headers: &HeaderMap) -> bool {
        hops(headers).any(|(_, by)| by.eq_ignore_ascii_case(&self.marker))
    }

    /// The `Via` to send upstream: the archway hops of the request being answered (if any),
    /// then this archway.
    pub fn outgoing(&self) -> HeaderValue {
        let incoming = INCOMING.try_with(Clone::clone).ok().flatten();
        let Some(incoming) = incoming else {
            return self.own.clone();
        };
        let joined = format!(
            "{}, {}",
            String::from_utf8_lossy(incoming.as_bytes()),
            String::from_utf8_lossy(self.own.as_bytes())
        );
        HeaderValue::from_str(&joined).unwrap_or_else(|_| self.own.clone())
    }
}

impl Default for Via {
    fn default() -> Self {
        Self::new()
    }
}

/// `(protocol, received-by)` of each entry of every `Via` header, in order. A comment (in
/// parentheses) is ignored; an entry with no received-by is skipped.
fn hops(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(VIA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|entry| {
            let mut words = entry.split_whitespace();
            Some((words.next()?, words.next()?))
        })
}

/// The archway hops of an incoming request's `Via`, the last `MAX_CARRIED` of them, as one
/// header value; `None` when there are none.
pub fn incoming_hops(headers: &HeaderMap) -> Option<HeaderValue> {
    let archway: Vec<String> = hops(headers)
        .filter(|(protocol, by)| {
            protocol
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'/'))
                && by.len() > PREFIX.len()
                && by
                    .get(..PREFIX.len())
                    .is_some_and(|p| p.eq_ignore_ascii_case(PREFIX))
                && by.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        .map(|(protocol, by)| format!("{protocol} {by}"))
        .collect();
    let kept = archway.get(archway.len().saturating_sub(MAX_CARRIED)..)?;
    if kept.is_empty() {
        return None;
    }
    HeaderValue::from_str(&kept.join(", ")).ok()
}

/// Runs `f` (answering one request) with that request's archway hops, for `Via::outgoing`.
pub async fn scope<F: Future>(incoming: Option<HeaderValue>, f: F) -> F::Output {
    INCOMING.scope(incoming, f).await
}

/// `f` with the current request's archway hops: for a task spawned on a request's behalf (its
/// download), so its requests upstream carry them too.
pub fn carry<F: Future>(f: F) -> impl Future<Output = F::Output> {
    let incoming = INCOMING.try_with(Clone::clone).ok().flatten();
    INCOMING.scope(incoming, f)
}

/// 64 random bits, in hex. From the TLS provider's system randomness; should that fail, the
/// clock and the process id (still distinct between two archways, which is what matters).
fn random_id() -> String {
    let mut bytes = [0u8; 8];
    let provider = rustls::crypto::ring::default_provider();
    if provider.secure_random.fill(&mut bytes).is_err() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        bytes = (now ^ u64::from(std::process::id()).rotate_left(32)).to_be_bytes();
    }
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(VIA, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn own_marker_is_a_loop_and_others_are_not() {
        let me = Via::with_marker("archway-00aa".into());
        assert_eq!(me.outgoing(), "1.1 archway-00aa");
        assert!(me.is_own_request(&headers(&["1.1 archway-00aa"])));
        assert!(me.is_own_request(&headers(&[
            "1.0 squid (squid/5), 1.1 archway-11bb",
            "HTTP/1.1 ARCHWAY-00AA (archway)"
        ])));
        assert!(!me.is_own_request(&headers(&["1.1 archway-11bb"])));
        assert!(!me.is_own_request(&headers(&["1.1 archway-00aa0"])));
        assert!(
            !me.is_own_request(&headers(&["archway-00aa"])),
            "no received-by"
        );
        assert!(!me.is_own_request(&HeaderMap::new()));
        assert_ne!(
            Via::new().marker(),
            Via::new().marker(),
            "random per instance"
        );
    }

    #[tokio::test]
    async fn the_archway_hops_of_a_request_go_on_upstream() {
        let me = Via::with_marker("archway-00aa".into());
        let incoming = incoming_hops(&headers(&[
            "1.1 proxy.corp, 1.1 archway-11bb (node)",
            "2 archway-22cc, 1.1 archway-<bad>, x;y archway-33dd",
        ]));
        assert_eq!(
            incoming.as_ref().unwrap(),
            "1.1 archway-11bb, 2 archway-22cc"
        );
        let sent = scope(incoming, async {
            // A download task started for the request carries them too.
            tokio::spawn(carry({
                let me = me.clone();
                async move { me.outgoing() }
            }))
            .await
            .unwrap()
        })
        .await;
        assert_eq!(sent, "1.1 archway-11bb, 2 archway-22cc, 1.1 archway-00aa");
        assert_eq!(incoming_hops(&headers(&["1.1 proxy.corp"])), None);
        let long: Vec<String> = (0..20).map(|i| format!("1.1 archway-{i:02}")).collect();
        let kept = incoming_hops(&headers(&[&long.join(", ")])).unwrap();
        assert_eq!(kept.to_str().unwrap().split(", ").count(), MAX_CARRIED);
        assert!(kept.to_str().unwrap().ends_with("archway-19"));
    }
}
