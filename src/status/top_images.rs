//! The most-pulled images of the last hour: pulls counted by image in twelve five-minute
//! buckets, each holding at most [`NAMES_PER_BUCKET`] names (a pull of a name past that is
//! counted under "others"), so memory stays bounded whatever clients ask for. Pure.

use std::collections::HashMap;

const BUCKET_MS: u64 = 5 * 60_000;
const BUCKETS: usize = 12;
/// Distinct images a five-minute bucket keeps by name.
pub const NAMES_PER_BUCKET: usize = 512;
/// Longest image name kept (a repository name is at most 255 characters, a tag 128).
pub const MAX_NAME: usize = 512;

#[derive(Debug, Default, Clone)]
struct Bucket {
    number: u64,
    pulls: HashMap<String, u64>,
    others: u64,
}

#[derive(Debug, Clone)]
pub struct TopImages {
    buckets: Vec<Bucket>,
}

impl Default for TopImages {
    fn default() -> Self {
        TopImages {
            buckets: vec![
                Bucket {
                    number: u64::MAX,
                    ..Bucket::default()
                };
                BUCKETS
            ],
        }
    }
}

/// The hour's most-pulled images, most first, and the pulls not named.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Top {
    pub images: Vec<(String, u64)>,
    pub others: u64,
}

impl TopImages {
    pub fn pulled(&mut self, now_ms: u64, image: &str) {
        let number = now_ms / BUCKET_MS;
        let Some(bucket) = self.buckets.get_mut((number % BUCKETS as u64) as usize) else {
            return;
        };
        if bucket.number != number {
            *bucket = Bucket {
                number,
                ..Bucket::default()
            };
        }
        if let Some(n) = bucket.pulls.get_mut(image) {
            *n += 1;
        } else if bucket.pulls.len() < NAMES_PER_BUCKET && image.len() <= MAX_NAME {
            bucket.pulls.insert(image.to_owned(), 1);
        } else {
            bucket.others += 1;
        }
    }

    /// The `n` most-pulled images of the last hour (ties by name).
    pub fn top(&self, now_ms: u64, n: usize) -> Top {
        let now = now_ms / BUCKET_MS;
        let mut sums: HashMap<&str, u64> = HashMap::new();
        let mut others = 0;
        for b in &self.buckets {
            if b.number > now || now - b.number >= BUCKETS as u64 {
                continue;
            }
            for (name, count) in &b.pulls {
                *sums.entry(name).or_default() += count;
            }
            others += b.others;
        }
        let mut images: Vec<(String, u64)> =
            sums.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        images.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let rest: u64 = images.iter().skip(n).map(|(_, c)| c).sum();
        images.truncate(n);
        Top {
            images,
            others: others + rest,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_top_is_counted_over_the_hour_most_first() {
        let mut t = TopImages::default();
        for _ in 0..3 {
            t.pulled(0, "hub/library/alpine:3.20");
        }
        t.pulled(BUCKET_MS, "hub/library/debian:12");
        t.pulled(2 * BUCKET_MS, "hub/library/debian:12");
        t.pulled(2 * BUCKET_MS, "ghcr/o/x:1");
        let top = t.top(2 * BUCKET_MS, 2);
        assert_eq!(
            top.images,
            vec![
                ("hub/library/alpine:3.20".to_owned(), 3),
                ("hub/library/debian:12".to_owned(), 2)
            ]
        );
        assert_eq!(top.others, 1);
        // An hour on, the first bucket's pulls are gone.
        let later = t.top(12 * BUCKET_MS, 10);
        assert_eq!(later.images.len(), 2);
        assert!(later.images.iter().all(|(n, _)| !n.contains("alpine")));
    }

    #[test]
    fn names_past_the_bound_are_counted_not_kept() {
        let mut t = TopImages::default();
        for i in 0..(NAMES_PER_BUCKET + 100) {
            t.pulled(0, &format!("hub/r{i}:t"));
        }
        t.pulled(0, &"x".repeat(MAX_NAME + 1));
        let kept: usize = t.buckets.iter().map(|b| b.pulls.len()).sum();
        assert_eq!(kept, NAMES_PER_BUCKET);
        let top = t.top(0, 10);
        assert_eq!(top.images.len(), 10);
        assert_eq!(top.others, (NAMES_PER_BUCKET - 10 + 101) as u64);
    }
}
