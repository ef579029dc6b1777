//! The documentation holds together: every relative link in README.md and docs/*.md reaches an
//! existing file (and, into a markdown file, an existing heading), and the Prometheus alert rules
//! (deploy/monitoring/alerts.yaml) parse, each rule whole. Needs no external program; promtool's
//! check and the rules' unit tests run in tests/deploy.rs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every docs/*.md.
fn documents() -> Vec<PathBuf> {
    let mut docs = vec![root().join("README.md")];
    for entry in std::fs::read_dir(root().join("docs")).expect("docs/") {
        let path = entry.expect("docs/ entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            docs.push(path);
        }
    }
    docs.sort();
    docs
}

/// The lines outside fenced code blocks.
fn prose(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut fenced = false;
    text.lines().enumerate().filter(move |(_, line)| {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            return false;
        }
        !fenced
    })
}

/// GitHub's anchor for a heading: lower case, punctuation dropped (`-` and `_` kept), spaces to
/// `-`; a repeated heading gets `-1`, `-2`, ….
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for (_, line) in prose(text) {
        let Some(title) = line.strip_prefix('#') else {
            continue;
        };
        let title = title.trim_start_matches('#');
        if !title.starts_with(' ') {
            continue;
        }
        let slug: String = title
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut candidate = slug.clone();
        let mut n = 0;
        while !seen.insert(candidate.clone()) {
            n += 1;
            candidate = format!("{slug}-{n}");
        }
    }
    seen
}

/// `[text](target)` targets on one line.
fn link_targets(line: &str) -> Vec<&str> {
    let mut targets = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("](") {
        let after = &rest[i + 2..];
        let Some(end) = after.find(')') else { break };
        targets.push(&after[..end]);
        rest = &after[end..];
    }
    targets
}

#[test]
fn every_relative_link_reaches_a_file_and_a_heading() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).unwrap();
        let dir = doc.parent().unwrap();
        for (n, line) in prose(&text) {
            for target in link_targets(line) {
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                checked += 1;
                let (file, anchor) = match target.split_once('#') {
                    Some((f, a)) => (f, Some(a)),
                    None => (target, None),
                };
                let path = if file.is_empty() {
                    doc.clone()
                } else {
                    dir.join(file)
                };
                let shown = format!("{}:{}: {target}", doc.display(), n + 1);
                let Ok(path) = path.canonicalize() else {
                    broken.push(format!("{shown} (no such file)"));
                    continue;
                };
                let Some(anchor) = anchor else { continue };
                if path.extension().is_some_and(|e| e == "md") {
                    let target_text = std::fs::read_to_string(&path).unwrap();
                    if !anchors(&target_text).contains(anchor) {
                        broken.push(format!("{shown} (no such heading)"));
                    }
                }
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} links found: is the parser right?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_anchor_rule_is_githubs() {
    let text = "# Parents (node → cluster)\n## One fetch per fleet (`[fleet]`)\n```\n# not a heading\n```\n## Routes\n## Routes\n";
    let a = anchors(text);
    let want: BTreeSet<String> = [
        "parents-node--cluster",
        "one-fetch-per-fleet-fleet",
        "routes",
        "routes-1",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(a, want);
}

/// The alert rules file (docs/operations.md's "Alerts" points at it).
fn alert_rules_block() -> String {
    std::fs::read_to_string(root().join("deploy/monitoring/alerts.yaml")).unwrap()
}

#[test]
fn the_documented_alert_rules_parse_and_each_rule_is_whole() {
    let yaml = alert_rules_block();
    let doc: serde_norway::Value = serde_norway::from_str(&yaml).expect("the rules parse as YAML");
    let groups = doc["groups"].as_sequence().expect("groups");
    assert!(!groups.is_empty());
    let mut names = Vec::new();
    for group in groups {
        assert!(group["name"].as_str().is_some(), "{group:?}");
        for rule in group["rules"].as_sequence().expect("rules") {
            let map = rule.as_mapping().expect("a rule is a mapping");
            let keys: BTreeSet<&str> = map.keys().filter_map(|k| k.as_str()).collect();
            // `for` is optional (absent: fires at once); labels and annotations always there.
            let want: BTreeSet<&str> = ["alert", "expr", "labels", "annotations"]
                .into_iter()
                .collect();
            assert!(keys.is_superset(&want), "{rule:?}");
            assert!(keys.len() <= want.len() + 1, "{rule:?}");
            let alert = rule["alert"].as_str().expect("alert is a name");
            assert!(alert.chars().all(|c| c.is_ascii_alphanumeric()), "{alert}");
            let expr = rule["expr"].as_str().expect("expr is a string");
            assert!(
                expr.contains("archway_") || expr.contains("up{"),
                "{alert}: {expr}"
            );
            // One rule's text never runs into the next (`for: 15m  - alert: …`).
            assert!(!expr.contains("alert:"), "{alert}: {expr}");
            let r#for = rule["for"].as_str().unwrap_or("0s");
            assert!(
                r#for.len() > 1
                    && r#for[..r#for.len() - 1].chars().all(|c| c.is_ascii_digit())
                    && r#for.ends_with(['s', 'm', 'h']),
                "{alert}: for: {for}"
            );
            names.push(alert.to_owned());
        }
    }
    assert!(
        names.contains(&"ArchwayStorageFailing".to_owned()),
        "{names:?}"
    );
    assert!(names.contains(&"ArchwayTokenStorm".to_owned()), "{names:?}");
    let unique: BTreeSet<&String> = names.iter().collect();
    assert_eq!(unique.len(), names.len(), "{names:?}");
}

/// README.md is a front page: a few screens, the rest in docs/.
#[test]
fn the_readme_fits_on_a_few_screens() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(
        lines <= 250,
        "README.md has {lines} lines; at most 250 (move the rest to docs/ and link it)"
    );
}

/// The quick start's archway.toml is a config archway loads, with the upstream it says as the
/// default.
#[test]
fn the_readme_quick_start_config_loads() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let start = readme
        .find("## Quick start")
        .expect("README has a Quick start");
    let block = readme[start..]
        .split_once("```toml\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(block, _)| block)
        .expect("the quick start has a ```toml block");
    let cfg = archway::config::Config::from_toml(block)
        .unwrap_or_else(|e| panic!("README's quick-start config: {e}\n{block}"));
    let default = cfg
        .default_upstream()
        .expect("the quick start's upstream is the default");
    assert_eq!(
        cfg.upstreams[default].url.authority().map(|a| a.as_str()),
        Some("127.0.0.1:5001")
    );
    assert_eq!(cfg.data_dir, Path::new("./archway-data"));
    assert_eq!(
        cfg.listen,
        vec!["127.0.0.1:5000".parse::<std::net::SocketAddr>().unwrap()]
    );
}

/// Where "issue 23" appears, in `text`: what a reader cannot follow.
fn issue_numbers(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    let mut found = Vec::new();
    for (i, _) in lower.match_indices("issue ") {
        if lower[..i].ends_with(|c: char| c.is_alphanumeric()) {
            continue;
        }
        let after = &lower[i + "issue ".len()..];
        let after = after.strip_prefix('#').unwrap_or(after);
        if after.starts_with(|c: char| c.is_ascii_digit()) {
            let line = text[..i].lines().count().max(1);
            let end = (i + 16).min(text.len());
            found.push(format!("{line}: {}", text.get(i..end).unwrap_or("issue …")));
        }
    }
    found
}

/// No issue numbers where a user reads: the README, docs/, and the benchmark scripts (whose
/// header comments docs/benchmarks.md sends readers to).
#[test]
fn no_issue_numbers_where_users_read() {
    assert_eq!(
        issue_numbers("see issue 11\nand (Issue #5); tissue 3, an issue to fix").len(),
        2
    );
    let mut files = documents();
    for entry in std::fs::read_dir(root().join("bench")).expect("bench/") {
        let path = entry.expect("bench/ entry").path();
        if path.is_file() {
            files.push(path);
        }
    }
    let mut found = Vec::new();
    for path in files {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for hit in issue_numbers(&text) {
            found.push(format!("{}:{hit}", path.display()));
        }
    }
    assert!(
        found.is_empty(),
        "issue numbers a reader cannot follow:\n{}",
        found.join("\n")
    );
}
