//! `Range: bytes=a-b,c-d,…` (RFC 9110 §14.1.2) against a blob of known size: which byte ranges
//! to send, and the `multipart/byteranges` framing around them (§14.6). Pure: no I/O, so the
//! parsing, the coalescing and the exact `Content-Length` can be tested on their own.

use crate::api::{self, ByteRange};

/// What to answer a blob request's `Range` with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeAnswer {
    /// 200 with the whole blob: no Range, one that does not parse (RFC 9110 lets a server
    /// ignore it), or more range-specs than `limits.max_ranges`.
    Whole,
    /// 206 with one inclusive `start..=end` and `Content-Range`.
    Single(u64, u64),
    /// 206 `multipart/byteranges`: two or more inclusive ranges, none overlapping.
    Multi(Vec<(u64, u64)>),
    /// 416 with `Content-Range: bytes */size`: no range-spec has a byte in the blob.
    Unsatisfiable,
}

/// Reads `Range` against a blob of `size` bytes, allowing at most `max_ranges` range-specs.
///
/// A single range-spec is read as [`api::parse_range`] reads it. In a list, each spec is
/// `first-last`, `first-` or `-suffix`; empty list elements are skipped (RFC 9110 §5.6.1); any
/// spec that does not parse makes the whole header ignored. Specs that start past the end are
/// dropped; if none is left, the set is unsatisfiable. Overlapping ranges are merged (sorted by
/// start); ranges that only touch are not, and with no overlap the order asked for is kept:
/// containers/storage maps the parts to its chunks one to one, in order, and asks for adjacent
/// chunks of different files.
pub fn parse(header: Option<&str>, size: u64, max_ranges: usize) -> RangeAnswer {
    let Some(h) = header.map(str::trim) else {
        return RangeAnswer::Whole;
    };
    if !h.contains(',') {
        return match api::parse_range(Some(h), size) {
            ByteRange::Whole => RangeAnswer::Whole,
            ByteRange::Part(a, b) => RangeAnswer::Single(a, b),
            ByteRange::Unsatisfiable => RangeAnswer::Unsatisfiable,
        };
    }
    let Some(list) = strip_unit(h) else {
        return RangeAnswer::Whole;
    };
    let specs: Vec<&str> = list
        .split(',')
        .map(|s| s.trim_matches([' ', '\t']))
        .filter(|s| !s.is_empty())
        // One past the cap is enough to know it is past: a long header costs no more.
        .take(max_ranges.saturating_add(1))
        .collect();
    if specs.is_empty() || specs.len() > max_ranges {
        return RangeAnswer::Whole;
    }
    let mut ranges = Vec::with_capacity(specs.len());
    for spec in specs {
        match resolve(spec, size) {
            Spec::Invalid => return RangeAnswer::Whole,
            Spec::Outside => {}
            Spec::Range(a, b) => ranges.push((a, b)),
        }
    }
    let merged = coalesce(ranges);
    match merged.as_slice() {
        [] => RangeAnswer::Unsatisfiable,
        [(a, b)] => RangeAnswer::Single(*a, *b),
        _ => RangeAnswer::Multi(merged),
    }
}

/// `bytes=` (the unit case-insensitive) removed, or `None` for another unit.
fn strip_unit(h: &str) -> Option<&str> {
    let (unit, rest) = h.split_once('=')?;
    unit.eq_ignore_ascii_case("bytes").then_some(rest)
}

enum Spec {
    /// Not the RFC's grammar: the whole header is ignored.
    Invalid,
    /// Valid, but with no byte in the blob.
    Outside,
    /// Inclusive, inside the blob.
    Range(u64, u64),
}

/// One range-spec against `size`. Positions too large for u64 are clamped like any other.
fn resolve(spec: &str, size: u64) -> Spec {
    let Some((first, last)) = spec.split_once('-') else {
        return Spec::Invalid;
    };
    match (number(first), number(last)) {
        // `-suffix`: the last `suffix` bytes; `-0` has none.
        (None, Some(suffix)) if first.is_empty() => {
            if suffix == 0 || size == 0 {
                Spec::Outside
            } else {
                Spec::Range(size.saturating_sub(suffix), size - 1)
            }
        }
        (Some(a), None) if last.is_empty() => within(a, u64::MAX, size),
        (Some(a), Some(b)) if a <= b => within(a, b, size),
        _ => Spec::Invalid,
    }
}

fn within(a: u64, b: u64, size: u64) -> Spec {
    if a >= size {
        Spec::Outside
    } else {
        Spec::Range(a, b.min(size - 1))
    }
}

/// ASCII digits only (no sign, no spaces), saturating at u64::MAX.
fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u64, |n, c| {
        n.saturating_mul(10).saturating_add(u64::from(c - b'0'))
    }))
}

/// Overlapping ranges merged. With no overlap at all the ranges come back as given (the
/// order asked for); otherwise sorted by start, each overlapping run as one range.
pub fn coalesce(ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    let mut sorted = ranges.clone();
    sorted.sort_unstable();
    let overlap = sorted
        .windows(2)
        .any(|w| matches!(w, [(_, b), (c, _)] if c <= b));
    if !overlap {
        return ranges;
    }
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(sorted.len());
    for (a, b) in sorted {
        match out.last_mut() {
            Some((_, end)) if a <= *end => *end = (*end).max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// The framing of a `multipart/byteranges` body: what goes before each part's bytes, what
/// ends the body, and the exact total length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Multipart {
    pub boundary: String,
    /// Per range: the delimiter and part headers that precede its bytes.
    pub heads: Vec<String>,
    /// The close delimiter.
    pub tail: String,
    /// Every byte of the body: heads, ranges and tail.
    pub content_length: u64,
}

impl Multipart {
    /// The framing for `ranges` (inclusive, inside a blob of `size` bytes). Each part carries
    /// `Content-Type: application/octet-stream` and its `Content-Range`.
    pub fn new(boundary: String, ranges: &[(u64, u64)], size: u64) -> Multipart {
        let heads: Vec<String> = ranges
            .iter()
            .enumerate()
            .map(|(i, (a, b))| {
                // The CRLF before a delimiter belongs to it (RFC 2046 §5.1.1).
                let lead = if i == 0 { "" } else { "\r\n" };
                format!(
                    "{lead}--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes {a}-{b}/{size}\r\n\r\n"
                )
            })
            .collect();
        let tail = format!("\r\n--{boundary}--\r\n");
        let framing: u64 = heads.iter().map(|h| h.len() as u64).sum::<u64>() + tail.len() as u64;
        let data: u64 = ranges.iter().map(|(a, b)| b - a + 1).sum();
        Multipart {
            boundary,
            heads,
            tail,
            content_length: framing + data,
        }
    }

    /// `multipart/byteranges; boundary=…`
    pub fn content_type(&self) -> String {
        format!("multipart/byteranges; boundary={}", self.boundary)
    }
}

/// A boundary for a blob: the start of its digest's hex. A blob that contained the start of
/// its own hash would be a preimage, so the boundary never occurs in the bytes it separates;
/// and it is the same on every answer for the blob. At most 70 characters (RFC 2046).
pub fn boundary_for(hex: &str) -> String {
    let hex: String = hex.chars().take(60).collect();
    format!("archway-{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeAnswer::*;

    #[test]
    fn table() {
        let cases: &[(Option<&str>, u64, RangeAnswer)] = &[
            (None, 100, Whole),
            (Some("bytes=10-19"), 100, Single(10, 19)),
            (Some("bytes=100-"), 100, Unsatisfiable),
            (Some("bytes=0-1,5-6"), 100, Multi(vec![(0, 1), (5, 6)])),
            (Some("bytes=0-1, 5-6"), 100, Multi(vec![(0, 1), (5, 6)])),
            (Some("Bytes=0-1,\t5-6"), 100, Multi(vec![(0, 1), (5, 6)])),
            // Asked for out of order, with no overlap: the order asked for.
            (Some("bytes=50-59,0-9"), 100, Multi(vec![(50, 59), (0, 9)])),
            // Adjacent ranges stay two parts (containers/storage maps parts to chunks).
            (Some("bytes=0-9,10-19"), 100, Multi(vec![(0, 9), (10, 19)])),
            // Overlapping: merged, sorted.
            (Some("bytes=0-9,5-19"), 100, Single(0, 19)),
            (
                Some("bytes=50-59,0-9,5-20"),
                100,
                Multi(vec![(0, 20), (50, 59)]),
            ),
            (Some("bytes=0-9,0-9"), 100, Single(0, 9)),
            (Some("bytes=0-,10-19"), 100, Single(0, 99)),
            // Suffix and open ranges mixed in.
            (Some("bytes=0-9,-10"), 100, Multi(vec![(0, 9), (90, 99)])),
            (Some("bytes=0-9,90-"), 100, Multi(vec![(0, 9), (90, 99)])),
            (Some("bytes=-10,80-"), 100, Single(80, 99)),
            (Some("bytes=0-0,-1"), 1, Single(0, 0)),
            (Some("bytes=-500,0-9"), 100, Single(0, 99)),
            // Clamped ends; specs outside the blob dropped.
            (Some("bytes=0-9,95-200"), 100, Multi(vec![(0, 9), (95, 99)])),
            (Some("bytes=0-9,100-200"), 100, Single(0, 9)),
            (Some("bytes=0-9,-0"), 100, Single(0, 9)),
            (Some("bytes=100-,200-300"), 100, Unsatisfiable),
            (Some("bytes=0-1,2-3"), 0, Unsatisfiable),
            (Some("bytes=-0,-0"), 100, Unsatisfiable),
            (
                Some("bytes=0-99999999999999999999999,99999999999999999999999-"),
                100,
                Single(0, 99),
            ),
            // Empty list elements are skipped.
            (Some("bytes=0-1,"), 100, Single(0, 1)),
            (Some("bytes=,0-1,,5-6"), 100, Multi(vec![(0, 1), (5, 6)])),
            (Some("bytes=,"), 100, Whole),
            // Not the grammar anywhere: the header is ignored.
            (Some("bytes=0-1,5-1"), 100, Whole),
            (Some("bytes=0-1,abc"), 100, Whole),
            (Some("bytes=0-1,-"), 100, Whole),
            (Some("bytes=0-1,+5-6"), 100, Whole),
            (Some("bytes=0-1,5 - 6"), 100, Whole),
            (Some("bytes=0-1,5"), 100, Whole),
            (Some("items=0-1,5-6"), 100, Whole),
            (Some("0-1,5-6"), 100, Whole),
        ];
        for (h, size, want) in cases {
            assert_eq!(parse(*h, *size, 64), *want, "{h:?} {size}");
        }
    }

    #[test]
    fn past_the_cap_the_whole_blob() {
        let specs: Vec<String> = (0..5)
            .map(|i| format!("{}-{}", i * 10, i * 10 + 1))
            .collect();
        let h = format!("bytes={}", specs.join(","));
        assert!(matches!(parse(Some(&h), 100, 5), Multi(r) if r.len() == 5));
        assert_eq!(parse(Some(&h), 100, 4), Whole);
        // The cap counts what was asked for, before merging.
        assert_eq!(parse(Some("bytes=0-9,0-9,0-9"), 100, 2), Whole);
    }

    #[test]
    fn framing_and_exact_length() {
        let m = Multipart::new("B".into(), &[(0, 1), (5, 9)], 10);
        assert_eq!(m.content_type(), "multipart/byteranges; boundary=B");
        let body = format!("{}01{}56789{}", m.heads[0], m.heads[1], m.tail);
        assert_eq!(
            body,
            "--B\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes 0-1/10\r\n\r\n01\
             \r\n--B\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes 5-9/10\r\n\r\n56789\
             \r\n--B--\r\n"
        );
        assert_eq!(m.content_length, body.len() as u64);
    }

    #[test]
    fn boundaries_are_short_enough() {
        let b = boundary_for(&"ab".repeat(64));
        assert!(b.len() <= 70, "{}", b.len());
        assert!(b.starts_with("archway-abab"));
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;
        use std::collections::BTreeSet;

        fn spec() -> impl Strategy<Value = String> {
            prop_oneof![
                (0u64..120, 0u64..40).prop_map(|(a, len)| format!("{a}-{}", a + len)),
                (0u64..120).prop_map(|a| format!("{a}-")),
                (0u64..60).prop_map(|n| format!("-{n}")),
            ]
        }

        /// The bytes a set of specs names, by brute force.
        fn wanted(specs: &[String], size: u64) -> BTreeSet<u64> {
            let mut bytes = BTreeSet::new();
            for s in specs {
                let (a, b) = s.split_once('-').unwrap();
                let (lo, hi) = match (a.parse::<u64>().ok(), b.parse::<u64>().ok()) {
                    (None, Some(n)) => (size.saturating_sub(n), if n == 0 { 0 } else { size }),
                    (Some(a), None) => (a, size),
                    (Some(a), Some(b)) => (a, (b + 1).min(size)),
                    _ => unreachable!(),
                };
                bytes.extend(lo..hi);
            }
            bytes
        }

        proptest! {
            #[test]
            fn merged_ranges_cover_exactly_the_union(
                specs in proptest::collection::vec(spec(), 1..12),
                size in 0u64..150,
                cap in 1usize..12,
            ) {
                let h = format!("bytes={}", specs.join(","));
                let want = wanted(&specs, size);
                let got: Vec<(u64, u64)> = match parse(Some(&h), size, cap) {
                    RangeAnswer::Whole => {
                        prop_assert!(specs.len() > cap && specs.len() > 1);
                        return Ok(());
                    }
                    RangeAnswer::Unsatisfiable => vec![],
                    RangeAnswer::Single(a, b) => vec![(a, b)],
                    RangeAnswer::Multi(r) => {
                        prop_assert!(r.len() >= 2);
                        r
                    }
                };
                prop_assert!(got.len() <= cap);
                let mut covered = BTreeSet::new();
                let mut total = 0;
                for (a, b) in &got {
                    prop_assert!(a <= b && *b < size);
                    covered.extend(*a..=*b);
                    total += b - a + 1;
                }
                // Exactly the union, and no byte twice.
                prop_assert_eq!(&covered, &want);
                prop_assert_eq!(total, want.len() as u64);
            }
        }
    }
}
