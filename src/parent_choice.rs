//! Which parent archway a request asks first, and which next: rendezvous (highest random
//! weight) hashing of the request's key over the configured parents. Pure.
//!
//! Every node computes the same order from the same parent list (the weight is a SHA-256, not a
//! per-process keyed hash), so one digest is fetched through one parent while that parent is up,
//! and removing a parent moves only the keys it was first for.

use crate::digest::Digest;
use sha2::{Digest as _, Sha256};

/// What a request to upstream `upstream` for `/v2/{repo}/{suffix}` is spread by: content by
/// digest (`manifests/<digest>`, `blobs/<digest>`) by the digest alone, whatever upstream or
/// repository names it; a tag, tags/list or referrers by upstream, repository and suffix.
pub fn key(upstream: &str, repo: &str, suffix: &str) -> String {
    let by_digest = suffix
        .strip_prefix("blobs/")
        .or_else(|| suffix.strip_prefix("manifests/"))
        .filter(|reference| reference.parse::<Digest>().is_ok());
    match by_digest {
        Some(digest) => digest.to_owned(),
        None => format!("{upstream}/{repo}/{suffix}"),
    }
}

/// The parents' indexes in the order a request for `key` tries them: highest weight first, ties
/// (never seen with SHA-256, but defined) by configured order.
pub fn order<S: AsRef<str>>(parents: &[S], key: &str) -> Vec<usize> {
    let mut weighted: Vec<(u64, usize)> = parents
        .iter()
        .enumerate()
        .map(|(i, p)| (weight(p.as_ref(), key), i))
        .collect();
    weighted.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    weighted.into_iter().map(|(_, i)| i).collect()
}

/// The first 8 bytes of SHA-256(parent, NUL, key): the NUL keeps `("ab", "c")` apart from
/// `("a", "bc")`.
fn weight(parent: &str, key: &str) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(parent.as_bytes());
    hasher.update([0u8]);
    hasher.update(key.as_bytes());
    let hash = hasher.finalize();
    hash.first_chunk::<8>()
        .map(|b| u64::from_be_bytes(*b))
        .unwrap_or_default()
}

/// `?ns=<name>` (or `&ns=<name>` after an existing query) for `suffix`: the parent selects its
/// own upstream by that name. Anything but unreserved characters and `:` is percent-encoded.
pub fn with_namespace(suffix: &str, upstream: &str) -> String {
    let separator = if suffix.contains('?') { '&' } else { '?' };
    format!("{suffix}{separator}{}", namespace_param(upstream))
}

/// A parent's pagination `Link` without the `ns=` it added for the node (a parent points its
/// links back through itself), so the node passes on a link in upstream's namespace, as an
/// upstream's own. Anything not of the `<target>; params` form is returned unchanged.
pub fn link_without_namespace(link: &str, upstream: &str) -> String {
    let param = namespace_param(upstream);
    let Some((before, rest)) = link.split_once('<') else {
        return link.to_owned();
    };
    let Some((target, after)) = rest.split_once('>') else {
        return link.to_owned();
    };
    let Some((path, query)) = target.split_once('?') else {
        return link.to_owned();
    };
    let kept: Vec<&str> = query.split('&').filter(|p| *p != param).collect();
    let target = if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    format!("{before}<{target}>{after}")
}

fn namespace_param(upstream: &str) -> String {
    let mut param = String::with_capacity(upstream.len() + 3);
    param.push_str("ns=");
    for b in upstream.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':') {
            param.push(char::from(b));
        } else {
            param.push_str(&format!("%{b:02X}"));
        }
    }
    param
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4";
    const PARENTS: [&str; 3] = [
        "http://archway-0:5000",
        "http://archway-1:5000",
        "http://archway-2:5000",
    ];

    #[test]
    fn keys() {
        let cases = [
            ("docker.io", "library/alpine", &*format!("blobs/{D1}"), D1),
            ("ghcr.io", "org/app", &*format!("blobs/{D1}"), D1),
            (
                "docker.io",
                "library/alpine",
                &*format!("manifests/{D1}"),
                D1,
            ),
            (
                "docker.io",
                "library/alpine",
                "manifests/3.19",
                "docker.io/library/alpine/manifests/3.19",
            ),
            (
                "ghcr.io",
                "library/alpine",
                "manifests/3.19",
                "ghcr.io/library/alpine/manifests/3.19",
            ),
            (
                "docker.io",
                "library/alpine",
                "tags/list?n=10",
                "docker.io/library/alpine/tags/list?n=10",
            ),
            (
                "docker.io",
                "x",
                &*format!("referrers/{D1}"),
                &*format!("docker.io/x/referrers/{D1}"),
            ),
            // Not a digest: a tag that merely looks odd.
            (
                "docker.io",
                "x",
                "manifests/sha256",
                "docker.io/x/manifests/sha256",
            ),
        ];
        for (upstream, repo, suffix, want) in cases {
            assert_eq!(
                key(upstream, repo, suffix),
                want,
                "{upstream} {repo} {suffix}"
            );
        }
    }

    #[test]
    fn namespaces() {
        let cases = [
            (
                "manifests/latest",
                "docker.io",
                "manifests/latest?ns=docker.io",
            ),
            ("tags/list?n=5", "ghcr.io", "tags/list?n=5&ns=ghcr.io"),
            ("blobs/x", "127.0.0.1:5000", "blobs/x?ns=127.0.0.1:5000"),
            ("blobs/x", "a&b=c#d", "blobs/x?ns=a%26b%3Dc%23d"),
        ];
        for (suffix, upstream, want) in cases {
            assert_eq!(with_namespace(suffix, upstream), want);
        }
    }

    #[test]
    fn links_lose_the_namespace_the_parent_added() {
        let cases = [
            (
                r#"</v2/library/alpine/tags/list?n=2&last=b&ns=docker.io>; rel="next""#,
                "docker.io",
                r#"</v2/library/alpine/tags/list?n=2&last=b>; rel="next""#,
            ),
            (
                r#"</v2/x/tags/list?ns=ghcr.io>; rel="next""#,
                "ghcr.io",
                r#"</v2/x/tags/list>; rel="next""#,
            ),
            (
                r#"</v2/x/tags/list?ns=ghcr.io&n=2>; rel="next""#,
                "ghcr.io",
                r#"</v2/x/tags/list?n=2>; rel="next""#,
            ),
            // Another upstream's ns, or none: untouched.
            (
                r#"</v2/x/tags/list?n=2&ns=other>; rel="next""#,
                "ghcr.io",
                r#"</v2/x/tags/list?n=2&ns=other>; rel="next""#,
            ),
            (
                r#"</v2/x/tags/list?n=2>; rel="next""#,
                "ghcr.io",
                r#"</v2/x/tags/list?n=2>; rel="next""#,
            ),
            ("not a link", "ghcr.io", "not a link"),
            ("<unclosed?ns=ghcr.io", "ghcr.io", "<unclosed?ns=ghcr.io"),
            ("</v2/x/tags/list?ns=a%26b>", "a&b", "</v2/x/tags/list>"),
        ];
        for (link, upstream, want) in cases {
            assert_eq!(link_without_namespace(link, upstream), want, "{link}");
        }
    }

    #[test]
    fn order_is_a_permutation_and_stable() {
        for i in 0..200 {
            let k = format!("key-{i}");
            let o = order(&PARENTS, &k);
            let mut sorted = o.clone();
            sorted.sort();
            assert_eq!(sorted, vec![0, 1, 2], "{k}");
            assert_eq!(o, order(&PARENTS, &k), "{k}");
        }
        assert!(order::<&str>(&[], "k").is_empty());
        assert_eq!(order(&["only"], "k"), vec![0]);
    }

    #[test]
    fn order_does_not_depend_on_the_list_order() {
        let reversed: Vec<&str> = PARENTS.iter().rev().copied().collect();
        for i in 0..200 {
            let k = format!("key-{i}");
            let first = PARENTS.get(order(&PARENTS, &k)[0]);
            let first_reversed = reversed.get(order(&reversed, &k)[0]);
            assert_eq!(first, first_reversed, "{k}");
        }
    }

    #[test]
    fn keys_spread_over_the_parents() {
        let mut counts = [0usize; 3];
        for i in 0..3000 {
            counts[order(&PARENTS, &format!("sha256:{i:064x}"))[0]] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "{counts:?}");
        }
    }

    /// Removing a parent moves exactly the keys it was first for, each to its second choice;
    /// every other key keeps its parent.
    #[test]
    fn removing_a_parent_moves_only_its_keys() {
        let five = ["p0", "p1", "p2", "p3", "p4"];
        for removed in 0..five.len() {
            let rest: Vec<&str> = five
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != removed)
                .map(|(_, p)| *p)
                .collect();
            for i in 0..500 {
                let k = format!("sha256:{i:064x}");
                let before = order(&five, &k);
                let after = order(&rest, &k);
                let after_names: Vec<&str> = after.iter().map(|j| rest[*j]).collect();
                let before_names: Vec<&str> = before
                    .iter()
                    .filter(|j| **j != removed)
                    .map(|j| five[*j])
                    .collect();
                // The order of the others is untouched, so failover lands where removal does.
                assert_eq!(after_names, before_names, "{k} without p{removed}");
                if before[0] != removed {
                    assert_eq!(after_names[0], five[before[0]], "{k} moved");
                }
            }
        }
    }

    #[test]
    fn adding_a_parent_moves_keys_only_to_it() {
        let three = ["p0", "p1", "p2"];
        let four = ["p0", "p1", "p2", "p3"];
        for i in 0..500 {
            let k = format!("k{i}");
            let a = three[order(&three, &k)[0]];
            let b = four[order(&four, &k)[0]];
            assert!(a == b || b == "p3", "{k}: {a} -> {b}");
        }
    }
}
