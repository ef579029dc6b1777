//! The platform answer's memos, each budgeted in bytes. The tag-answer memo is keyed by a
//! 128-bit keyed hash of what an answer depends on, never by keeping a request's headers alive:
//! a flood of distinct (or huge) User-Agents costs a bounded amount of memory.

use crate::digest::Digest;
use crate::manifest::Manifest;
use crate::platform::WindowsMatch;
use crate::route_policy::OciForLegacy;
use crate::route_policy::SelectionStep;
use http::header::{self, HeaderMap, HeaderName};
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::{Arc, OnceLock};

/// The request headers a tag answer depends on.
static HINT_HEADERS: [HeaderName; 4] = [
    header::USER_AGENT,
    HeaderName::from_static("x-meta-platform"),
    HeaderName::from_static("x-meta-layers"),
    header::ACCEPT,
];

/// What a tag answer depends on, hashed: the manifest the tag points at, the route, and the
/// client's hints exactly as sent (User-Agent, X-Meta-Platform, X-Meta-Layers, every Accept line,
/// in order).
/// SipHash under a secret per-process key: nobody outside can aim a collision at it, and by
/// chance any two of the tens of thousands of answers the budget holds collide with odds below
/// one in 10¹⁰.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct AnswerKey(u64);

impl AnswerKey {
    pub(crate) fn new(manifest: &Digest, route: Option<usize>, headers: &HeaderMap) -> Self {
        static KEY: OnceLock<RandomState> = OnceLock::new();
        let mut h = KEY.get_or_init(RandomState::new).build_hasher();
        // Every part is length-prefixed, so no two inputs hash the same bytes.
        let mut part = |bytes: &[u8]| {
            h.write_u64(bytes.len() as u64);
            h.write(bytes);
        };
        part(manifest.algorithm().as_str().as_bytes());
        part(manifest.hex().as_bytes());
        part(&route.map_or(u64::MAX, |r| r as u64).to_le_bytes());
        for name in &HINT_HEADERS {
            for value in headers.get_all(name) {
                part(name.as_str().as_bytes());
                part(value.as_bytes());
            }
        }
        AnswerKey(h.finish())
    }
}

/// A remembered tag answer: a client that asks again with the same headers gets it without its
/// Accept or User-Agent being parsed or the selection looked up again, so a rewritten answer
/// costs what a pass-through does.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) answer: Arc<Manifest>,
    pub(crate) vary: bool,
    pub(crate) rewrite: Option<String>,
    /// zstd layers were converted (the access log's `converted`).
    pub(crate) converted: bool,
}

pub(crate) struct AnswerMemo(moka::sync::Cache<AnswerKey, Arc<Answer>>);

impl AnswerMemo {
    pub(crate) fn new(budget: u64) -> Self {
        AnswerMemo(
            moka::sync::Cache::builder()
                .weigher(|_: &AnswerKey, a: &Arc<Answer>| {
                    // The answer's bytes may outlive the manifest cache's copy: count them.
                    weight(
                        64 + a.answer.bytes.len()
                            + a.answer.media_type.len()
                            + a.rewrite.as_ref().map_or(0, String::len),
                    )
                })
                .max_capacity(budget)
                .build(),
        )
    }

    pub(crate) fn get(&self, key: &AnswerKey) -> Option<Arc<Answer>> {
        self.0.get(key)
    }

    pub(crate) fn insert(&self, key: AnswerKey, answer: Answer) {
        self.0.insert(key, Arc::new(answer));
    }
}

/// What a platform selection depends on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct SelectionKey {
    pub(crate) index: Digest,
    pub(crate) platform: String,
    pub(crate) windows: WindowsMatch,
    pub(crate) accepts_oci: bool,
    pub(crate) oci_for_legacy: OciForLegacy,
    /// The zstd layer types the client reads.
    pub(crate) reads: crate::route_policy::ZstdReads,
    /// A platform answer (else the index was only looked into for zstd layers).
    pub(crate) rewrite: bool,
}

/// A remembered selection: the answer and how it was found.
#[derive(Debug)]
pub(crate) struct Resolved {
    pub(crate) answer: Arc<Manifest>,
    pub(crate) converted: bool,
    /// zstd layers were converted.
    pub(crate) layers_converted: bool,
    pub(crate) steps: Vec<SelectionStep>,
    pub(crate) offered: Vec<String>,
}

/// Selections by (index, platform, what the client takes): a rewritten answer for a new client
/// of a known platform costs a lookup, not a walk of the index.
pub(crate) struct SelectionMemo(moka::sync::Cache<SelectionKey, Arc<Resolved>>);

impl SelectionMemo {
    pub(crate) fn new(budget: u64) -> Self {
        SelectionMemo(
            moka::sync::Cache::builder()
                .weigher(|k: &SelectionKey, r: &Arc<Resolved>| {
                    let steps: usize = r
                        .steps
                        .iter()
                        .map(|s| {
                            64 + s.index_digest.len()
                                + s.chosen_digest.len()
                                + s.chosen_media_type.len()
                                + s.chosen_platform.as_ref().map_or(0, String::len)
                                + s.reason.len()
                        })
                        .sum();
                    let offered: usize = r.offered.iter().map(|p| 24 + p.len()).sum();
                    weight(
                        128 + k.platform.len()
                            + r.answer.bytes.len()
                            + r.answer.media_type.len()
                            + steps
                            + offered,
                    )
                })
                .max_capacity(budget)
                .build(),
        )
    }

    pub(crate) fn get(&self, key: &SelectionKey) -> Option<Arc<Resolved>> {
        self.0.get(key)
    }

    pub(crate) fn insert(&self, key: SelectionKey, resolved: Arc<Resolved>) {
        self.0.insert(key, resolved);
    }
}

fn weight(bytes: usize) -> u32 {
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media_type;
    use bytes::Bytes;
    use http::HeaderValue;

    #[test]
    fn answer_key_differs_for_every_manifest_route_and_hint() {
        let m = Digest::sha256_of(b"index");
        let other = Digest::sha256_of(b"other");
        let headers = |lines: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (n, v) in lines {
                h.append(*n, HeaderValue::from_static(v));
            }
            h
        };
        let legacy = headers(&[
            ("accept", media_type::DOCKER_MANIFEST),
            ("accept", media_type::DOCKER_MANIFEST_LIST),
            ("user-agent", "docker/17.06.2-ee-19 os/windows arch/amd64"),
            ("host", "mirror.internal"),
        ]);
        let key = AnswerKey::new(&m, None, &legacy);
        assert_eq!(AnswerKey::new(&m, None, &legacy), key);
        // Headers the answer does not depend on don't matter.
        let mut other_host = legacy.clone();
        other_host.insert("host", HeaderValue::from_static("elsewhere"));
        other_host.insert("x-unrelated", HeaderValue::from_static("big"));
        assert_eq!(AnswerKey::new(&m, None, &other_host), key);
        // Every hint does, and so do the manifest and the route.
        for changed in [
            headers(&[
                ("accept", media_type::DOCKER_MANIFEST),
                ("user-agent", "docker/17.06.2-ee-19 os/windows arch/amd64"),
            ]),
            headers(&[
                ("accept", media_type::DOCKER_MANIFEST_LIST),
                ("accept", media_type::DOCKER_MANIFEST),
                ("user-agent", "docker/17.06.2-ee-19 os/windows arch/amd64"),
            ]),
            headers(&[
                ("accept", media_type::DOCKER_MANIFEST),
                ("accept", media_type::DOCKER_MANIFEST_LIST),
                ("user-agent", "docker/17.06.2-ee-19 os/linux arch/arm64"),
            ]),
            headers(&[
                ("accept", media_type::DOCKER_MANIFEST),
                ("accept", media_type::DOCKER_MANIFEST_LIST),
                ("user-agent", "docker/17.06.2-ee-19 os/windows arch/amd64"),
                ("x-meta-platform", "linux/arm/v7"),
            ]),
            // One Accept line with both types is not the same as two lines.
            headers(&[
                ("accept", "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json"),
                ("user-agent", "docker/17.06.2-ee-19 os/windows arch/amd64"),
            ]),
        ] {
            assert_ne!(AnswerKey::new(&m, None, &changed), key, "{changed:?}");
        }
        assert_ne!(AnswerKey::new(&other, None, &legacy), key);
        assert_ne!(AnswerKey::new(&m, Some(0), &legacy), key);
        assert_ne!(
            AnswerKey::new(&m, Some(0), &legacy),
            AnswerKey::new(&m, Some(1), &legacy)
        );
    }

    #[test]
    fn answer_memo_stays_within_its_byte_budget() {
        let budget = 64 << 10;
        let memo = AnswerMemo::new(budget);
        let answer = Arc::new(Manifest {
            digest: Digest::sha256_of(b"child"),
            media_type: media_type::DOCKER_MANIFEST.into(),
            bytes: Bytes::from(vec![b'x'; 1000]),
        });
        for i in 0..10_000u32 {
            let mut h = HeaderMap::new();
            h.insert(
                "user-agent",
                HeaderValue::from_str(&format!("client/{i}")).unwrap(),
            );
            let key = AnswerKey::new(&answer.digest, None, &h);
            memo.insert(
                key,
                Answer {
                    answer: answer.clone(),
                    vary: true,
                    rewrite: Some("linux/amd64 (User-Agent)".into()),
                    converted: false,
                },
            );
        }
        memo.0.run_pending_tasks();
        assert!(
            memo.0.weighted_size() <= budget,
            "{}",
            memo.0.weighted_size()
        );
        assert!(memo.0.entry_count() < 100, "{}", memo.0.entry_count());
    }
}
