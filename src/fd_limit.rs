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

/// The default `max_requests` for an open-file limit of `nofile` and the default connection cap.
pub fn request_cap(nofile: u64) -> u32 {
    request_cap_for(nofile, connection_cap(nofile))
}

/// The default `max_requests` for an open-file limit of `nofile` when up to `max_connections`
/// client connections (configured or not) may be open: half of what they leave (each request
/// may open one file for a read, and upstream connections need the rest), at least
/// `MIN_CONNECTIONS`, at most 512.
pub fn request_cap_for(nofile: u64, max_connections: u32) -> u32 {
    let reserve = nofile.saturating_sub(u64::from(max_connections));
    let cap = (reserve / 2).clamp(MIN_CONNECTIONS, MAX_DEFAULT_REQUESTS);
    u32::try_from(cap).unwrap_or(u32::MAX)
}

/// `max_requests` when the config leaves it unset, for the connection cap in force.
pub fn default_max_requests(max_connections: u32) -> u32 {
    request_cap_for(current(), max_connections)
}

/// Descriptors kept beyond client connections and requests' files: listeners, logs, the admin
/// listener, upstream connections. The defaults leave at least this from 256 descriptors up.
pub const FD_RESERVE: u64 = 32;

/// In words, when `max_connections` connections plus a file for each of `max_requests` requests
/// (plus `FD_RESERVE`) can exceed the open-file limit `nofile`: then, at full load, accept or a
/// blob read fails with EMFILE instead of a request waiting for its turn.
pub fn over_budget(nofile: u64, max_connections: u32, max_requests: u32) -> Option<String> {
    let needed = u64::from(max_connections) + u64::from(max_requests) + FD_RESERVE;
    (needed > nofile).then(|| {
        format!(
            "max_connections ({max_connections}) + max_requests ({max_requests}) + {FD_RESERVE} \
             descriptors for listeners and upstream connections come to {needed}, more than the \
             open-file limit of {nofile}: at full load connections or blob reads will fail with \
             \"too many open files\"; raise the limit (ulimit -n, LimitNOFILE) or lower \
             limits.max_connections"
        )
    })
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

    #[test]
    fn the_request_default_follows_a_configured_connection_cap() {
        // At the default connection cap, the same as before.
        for nofile in [64, 256, 1024, 65_536] {
            assert_eq!(
                request_cap_for(nofile, connection_cap(nofile)),
                request_cap(nofile)
            );
        }
        // A configured cap leaves a different share: more when it is lower, the floor when it
        // takes every descriptor (10,000 connections under a limit of 1,024).
        assert_eq!(request_cap_for(1024, 256), 384);
        assert_eq!(request_cap_for(1024, 1000), 16);
        assert_eq!(request_cap_for(1024, 10_000), 16);
        assert_eq!(request_cap_for(65_536, 10_000), 512);
        for (nofile, conns) in [(1024, 256), (4096, 3000), (65_536, 10_000)] {
            let requests = request_cap_for(nofile, conns);
            assert!(
                over_budget(nofile, conns, requests).is_none(),
                "{nofile} {conns}"
            );
        }
    }

    #[test]
    fn over_budget_says_so_in_words_and_the_defaults_fit() {
        // The defaults fit from 256 descriptors up.
        for nofile in [256, 1024, 4096, 65_536, 1_048_576] {
            assert_eq!(
                over_budget(nofile, connection_cap(nofile), request_cap(nofile)),
                None,
                "{nofile}"
            );
        }
        // The documented example (max_connections = 10000) under a limit of 1,024.
        let words = over_budget(1024, 10_000, request_cap_for(1024, 10_000))
            .expect("10,000 connections do not fit in 1,024 descriptors");
        for part in [
            "max_connections (10000)",
            "max_requests (16)",
            "10048",
            "open-file limit of 1024",
            "too many open files",
        ] {
            assert!(words.contains(part), "{part:?} in {words:?}");
        }
        // An explicit max_requests past what the connections leave.
        assert!(over_budget(1024, 768, 512).is_some());
        assert!(over_budget(1024, 768, 224).is_none());
        assert!(over_budget(1024, 768, 225).is_some());
    }
}
