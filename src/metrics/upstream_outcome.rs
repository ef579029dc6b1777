//! How an upstream exchange ended: the `status` label of `archway_upstream_requests` and the
//! status page's wording of a failure.

/// How an upstream exchange ended, for the `status` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamOutcome {
    /// Response headers arrived with this status.
    Status(u16),
    /// The connection or exchange failed.
    Error,
    /// No response headers within the budget.
    Timeout,
}

impl UpstreamOutcome {
    /// The status page's wording of a failed exchange (a 5xx, a 429, no answer); `None` for
    /// an answer (a 404 or a 401 is the upstream working).
    pub fn failure(self) -> Option<String> {
        match self {
            UpstreamOutcome::Status(s) if s >= 500 || s == 429 => {
                let reason = http::StatusCode::from_u16(s)
                    .ok()
                    .and_then(|c| c.canonical_reason())
                    .unwrap_or("");
                Some(format!("HTTP {s} {reason}").trim_end().to_owned())
            }
            UpstreamOutcome::Status(_) => None,
            UpstreamOutcome::Error => Some("connection failed".into()),
            UpstreamOutcome::Timeout => Some("no answer in time".into()),
        }
    }
}
