//! The process's open-file limit: raised to its hard limit at start (what Go programs do), and
//! the default connection cap derived from it, leaving room for blob files, upstream
//! connections and the admin listener.

/// What the default cap leaves for everything but client connections: a quarter of the limit,
/// and never less than this.
const MIN_RESERVE: u64 = 64;
/// The default cap is never below this, even under a tiny limit.
const MIN_CONNECTIONS: u64 = 16;

/// The default `max_connections` for an open-file limit of `nofile`.
pub fn connection_cap(nofile: u64) -> u32 {
    let reserve = (nofile / 4).max(MIN_RESERVE);
    let cap = nofile.saturating_sub(reserve).max(MIN_CONNECTIONS);
    u32::try_from(cap).unwrap_or(u32::MAX)
}

/// The default `max_requests` ceiling: what a request in flight may cost (a blob read's file,
/// its share of upstream connections) is bounded in memory too (docs/operations.md, "Limits and
/// timeouts").
const MAX_DEFAULT_REQUESTS: u64 = 512;

/// The default `max_requests` for an open-file limit of `nofile`: half of what the connection cap
/// leaves (each request may open one file for a read, and upstream connections need the rest),
/// at least `MIN_CONNECTIONS`, at most 512.
pub fn request_cap(nofile: u64) -> u32 {
    let reserve = nofile.saturating_sub(u64::from(connection_cap(nofile)));
    let cap = (reserve / 2).clamp(MIN_CONNECTIONS, MAX_DEFAULT_REQUESTS);
    u32::try_from(cap).unwrap_or(u32::MAX)
}

/// `max_requests` when the config leaves it unset.
pub fn default_max_requests() -> u32 {
    request_cap(current())
}

/// The soft open-file limit now (unlimited counts as a large one).
pub fn current() -> u64 {
    #[cfg(target_os = "linux")]
    {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        limit.current.unwrap_or(1 << 20)
    }
    #[cfg(not(target_os = "linux"))]
    {
        1024
    }
}

/// `max_connections` when the config leaves it unset: sized to the open-file limit.
pub fn default_max_connections() -> u32 {
    connection_cap(current())
}

/// Raises the soft open-file limit to the hard one; returns the limit in force.
pub fn raise() -> u64 {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        let limit = getrlimit(Resource::Nofile);
        if limit.current != limit.maximum {
            let raised = Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            };
            if let Err(e) = setrlimit(Resource::Nofile, raised) {
                tracing::debug!(error = %e, "cannot raise the open-file limit");
            }
        }
    }
    current()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_leaves_room_for_files() {
        for (nofile, cap) in [
            (64, 16),
            (256, 192),
            (1024, 768),
            (65_536, 49_152),
            (1_048_576, 786_432),
        ] {
            assert_eq!(connection_cap(nofile), cap, "{nofile}");
        }
    }

    #[test]
    fn requests_fit_in_what_connections_leave() {
        for (nofile, requests) in [
            (64, 24),
            (256, 32),
            (1024, 128),
            (4096, 512),
            (65_536, 512),
            (1_048_576, 512),
        ] {
            assert_eq!(request_cap(nofile), requests, "{nofile}");
            // Connections, a file per request in flight, and room left for upstreams.
            if nofile >= 1024 {
                assert!(
                    u64::from(connection_cap(nofile)) + u64::from(request_cap(nofile)) < nofile,
                    "{nofile}"
                );
            }
        }
    }
}
