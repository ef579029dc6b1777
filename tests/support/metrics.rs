//! Reading archway's metrics in tests: the OpenMetrics text parsed into samples.

use std::collections::BTreeMap;

/// One parsed exposition: `(name, labels) -> value`.
pub struct Scrape {
    pub text: String,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    pub fn parse(text: String) -> Scrape {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| parse_sample(l).unwrap_or_else(|| panic!("unparsable line {l:?}")))
            .collect();
        Scrape { text, samples }
    }

    /// The value of the series with exactly these labels.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|(n, l, _)| n == name && *l == want)
            .map(|(_, _, v)| *v)
    }

    /// Like `get`, failing the test (with the whole exposition) when the series is missing.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no {name}{labels:?} in\n{}", self.text))
    }

    /// Sum over every series of `name`.
    pub fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, _, v)| *v)
            .sum()
    }

    /// The label sets of `name` counted at least once: families whose label values are known
    /// in advance start with every series at 0.
    pub fn counted(&self, name: &str) -> Vec<BTreeMap<String, String>> {
        self.samples
            .iter()
            .filter(|(n, _, v)| n == name && *v != 0.0)
            .map(|(_, l, _)| l.clone())
            .collect()
    }

    /// Every label set of `name`, for asserting that nothing else was counted.
    pub fn series(&self, name: &str) -> Vec<BTreeMap<String, String>> {
        self.samples
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, l, _)| l.clone())
            .collect()
    }
}

/// `name{k="v",…} value` or `name value`.
pub fn parse_sample(line: &str) -> Option<(String, BTreeMap<String, String>, f64)> {
    let mut labels = BTreeMap::new();
    let (name, rest) = match line.find('{') {
        Some(open) => {
            let name = &line[..open];
            let mut chars = line[open + 1..].char_indices();
            let end = loop {
                let mut key = String::new();
                for (_, c) in chars.by_ref() {
                    if c == '=' {
                        break;
                    }
                    key.push(c);
                }
                if chars.next()?.1 != '"' {
                    return None;
                }
                let mut value = String::new();
                while let Some((_, c)) = chars.next() {
                    match c {
                        '\\' => value.push(chars.next()?.1),
                        '"' => break,
                        c => value.push(c),
                    }
                }
                labels.insert(key.trim_start_matches(',').to_owned(), value);
                match chars.next()? {
                    (_, ',') => continue,
                    (i, '}') => break open + 1 + i + 1,
                    _ => return None,
                }
            };
            (name, &line[end..])
        }
        None => line.split_once(' ')?,
    };
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some((name.to_owned(), labels, value))
}

/// How the cache answered requests of `kind` so far: (hit, miss, coalesced). Requests are counted
/// when their response body is dropped, a moment after the client read it: this waits (up to
/// 5 s) until `total` requests of `kind` were counted.
pub async fn cache_results(
    proxy: &archway::proxy::Proxy,
    kind: &str,
    total: f64,
) -> (u64, u64, u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let s = Scrape::parse(proxy.metrics().encode());
        let get = |result: &str| {
            s.get(
                "archway_cache_results_total",
                &[("kind", kind), ("result", result)],
            )
            .unwrap_or(0.0)
        };
        let (hit, miss, coalesced) = (get("hit"), get("miss"), get("coalesced"));
        if hit + miss + coalesced >= total || std::time::Instant::now() > deadline {
            return (hit as u64, miss as u64, coalesced as u64);
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
