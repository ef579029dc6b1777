//! Real clients' header sets for manifest requests, replayed exactly: every header line as the
//! client sends it (Accept as several lines or one comma-joined line), minus `Host` and
//! `Connection`, which belong to the connection the test makes.
//!
//! `client-requests.jsonl` holds requests captured from Docker 20.10, containerd 1.6 (ctr) and
//! skopeo 1.9; `legacy-client-requests.jsonl` the header sets of clients that cannot be run here
//! (Docker ≤ 18.06, Windows Docker EE 17.06, Docker 1.9, CRI-O on arm64, a schema2-only script),
//! with where each comes from.
#![allow(dead_code)]

const CAPTURED: &str = include_str!("../data/client-requests.jsonl");
const LEGACY: &str = include_str!("../data/legacy-client-requests.jsonl");

/// One client's header lines for a tag request.
#[derive(Debug, Clone)]
pub struct ClientHeaders {
    pub name: String,
    pub headers: Vec<(String, String)>,
}

impl ClientHeaders {
    /// The header set named `name` in either data file; panics when there is none.
    pub fn named(name: &str) -> ClientHeaders {
        for line in CAPTURED.lines().chain(LEGACY.lines()) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            if v["name"] != name {
                continue;
            }
            let headers = v["headers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|pair| {
                    (
                        pair[0].as_str().unwrap().to_owned(),
                        pair[1].as_str().unwrap().to_owned(),
                    )
                })
                .filter(|(k, _)| {
                    !k.eq_ignore_ascii_case("host") && !k.eq_ignore_ascii_case("connection")
                })
                .collect();
            return ClientHeaders {
                name: name.to_owned(),
                headers,
            };
        }
        panic!("no client header set named {name}");
    }

    /// The header lines plus `extra` (e.g. `X-Meta-Platform`), in the form the test client takes.
    pub fn with<'a>(&'a self, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        self.headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(extra.iter().copied())
            .collect()
    }

    pub fn lines(&self) -> Vec<(&str, &str)> {
        self.with(&[])
    }

    /// This client with its User-Agent replaced (or added).
    pub fn with_user_agent(&self, ua: &str) -> ClientHeaders {
        let mut c = self.clone();
        c.name = format!("{} with User-Agent {ua}", self.name);
        for (k, v) in &mut c.headers {
            if k.eq_ignore_ascii_case("user-agent") {
                *v = ua.to_owned();
            }
        }
        if c.user_agent().is_none() {
            c.headers.push(("User-Agent".to_owned(), ua.to_owned()));
        }
        c
    }

    /// This client with one more header line.
    pub fn with_header(&self, name: &str, value: &str) -> ClientHeaders {
        let mut c = self.clone();
        c.name = format!("{} with {name}: {value}", self.name);
        c.headers.push((name.to_owned(), value.to_owned()));
        c
    }

    pub fn user_agent(&self) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("user-agent"))
            .map(|(_, v)| v.as_str())
    }

    pub fn accept_lines(&self) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("accept"))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Docker 17.06 EE on Linux amd64: schema2 and Docker lists, no OCI.
pub fn docker_1706() -> ClientHeaders {
    ClientHeaders::named("docker-17.06-ee-linux")
}
/// Windows Docker EE 17.06: as above, `os/windows arch/amd64`, no build number.
pub fn docker_1706_windows() -> ClientHeaders {
    ClientHeaders::named("docker-17.06-ee-windows")
}
pub fn docker_1706_arm64() -> ClientHeaders {
    ClientHeaders::named("docker-17.06-ce-arm64")
}
pub fn docker_1706_arm() -> ClientHeaders {
    ClientHeaders::named("docker-17.06-ce-arm")
}
/// Docker 1.9: no Accept at all.
pub fn docker_19() -> ClientHeaders {
    ClientHeaders::named("docker-1.9")
}
/// Accepts Docker schema2 only; its User-Agent names no platform.
pub fn schema2_only() -> ClientHeaders {
    ClientHeaders::named("schema2-only-script")
}
pub fn crio_arm64() -> ClientHeaders {
    ClientHeaders::named("cri-o-1.28-arm64")
}
/// Captured: Docker 20.10 (six Accept lines including both OCI types).
pub fn docker_2010() -> ClientHeaders {
    ClientHeaders::named("docker-20.10-tag")
}
/// Captured: containerd 1.6 (one comma-joined Accept line ending in `*/*`).
pub fn containerd_16() -> ClientHeaders {
    ClientHeaders::named("ctr-1.6-tag")
}
/// Captured: skopeo 1.9 (six Accept lines).
pub fn skopeo_19() -> ClientHeaders {
    ClientHeaders::named("skopeo-1.9-tag")
}
