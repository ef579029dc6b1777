//! Headless Chromium (Debian's `chromium`) for the pages archway serves: the DOM it built, and a
//! screenshot. Every request it would make elsewhere goes to a dead loopback proxy (loopback
//! itself is never proxied), and its profile lives in a temp dir.

use crate::e2e::procs::{command, run_ok};
use crate::e2e::tools::tool;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(90);

fn chromium(profile: &Path) -> Command {
    let mut cmd = command(tool("chromium"));
    cmd.args([
        "--headless",
        // Tests run as root in CI, where Chromium's sandbox cannot start.
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--proxy-server=http://127.0.0.1:9",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    cmd
}

/// The DOM Chromium built from `url`, serialized.
pub fn dump_dom(url: &str, profile: &Path) -> String {
    run_ok(chromium(profile).arg("--dump-dom").arg(url), T).stdout
}

/// A `width`×`height` PNG of `url` at `out`; returns the PNG's size as read from its header.
pub fn screenshot(url: &str, profile: &Path, out: &Path, width: u32, height: u32) -> (u32, u32) {
    run_ok(
        chromium(profile)
            .arg(format!("--window-size={width},{height}"))
            .arg("--hide-scrollbars")
            .arg(format!("--screenshot={}", out.display()))
            .arg(url),
        T,
    );
    let png =
        std::fs::read(out).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", out.display()));
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let be = |at: usize| u32::from_be_bytes([png[at], png[at + 1], png[at + 2], png[at + 3]]);
    (be(16), be(20))
}

/// A page's visible text: tags and the style sheet dropped, entities decoded, whitespace
/// collapsed.
pub fn text_of(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    let mut in_style = false;
    let mut rest = html;
    while let Some(c) = rest.chars().next() {
        if rest.starts_with("<style") {
            in_style = true;
        }
        if rest.starts_with("</style>") {
            in_style = false;
        }
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag && !in_style => out.push(c),
            _ => {}
        }
        rest = &rest[c.len_utf8()..];
    }
    let out = out
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&nbsp;", " ")
        .replace("&amp;", "&");
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}
