//! The status page's HTML: server-rendered, no script, no external asset (sites may be
//! air-gapped), refreshing itself. Pure: a [`Snapshot`] in, a page out. Every string from
//! outside archway's own code is escaped.

use super::health::Health;
use super::snapshot::Snapshot;
use std::fmt::Write;
use std::time::{Duration, UNIX_EPOCH};

/// Seconds between the page's own reloads.
pub const REFRESH_SECONDS: u32 = 10;

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1d2329;background:#fafbfc}\
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em;border-bottom:1px solid #d0d7de}\
table{border-collapse:collapse;margin:.3em 0}td,th{padding:.25em .8em .25em 0;text-align:left;vertical-align:top}\
th{color:#57606a;font-weight:600}.num{text-align:right;font-variant-numeric:tabular-nums}\
.up{color:#1a7f37;font-weight:600}.failing{color:#cf222e;font-weight:600}.unused{color:#6e7781}\
.bar{width:20em;height:.8em;background:#d0d7de;display:inline-block;vertical-align:middle}\
.bar span{display:block;height:100%;background:#0969da}.muted{color:#6e7781}";

/// `n` bytes for people: `0 B`, `512 B`, `1.5 KiB`, `12.3 MiB`, `4.0 GiB`.
pub fn bytes(n: u64) -> String {
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = "KiB";
    for next in ["MiB", "GiB", "TiB", "PiB"] {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    format!("{value:.1} {unit}")
}

/// A ratio as a percentage with one decimal, `–` when there is nothing to divide.
pub fn percent(ratio: Option<f64>) -> String {
    match ratio {
        Some(r) => format!("{:.1}%", r * 100.0),
        None => "–".into(),
    }
}

/// A duration for people: `45 s`, `12 min`, `3 h 05 min`, `2 d 4 h`.
pub fn span(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min", s / 60),
        s if s < 86_400 => format!("{} h {:02} min", s / 3600, s % 3600 / 60),
        s => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

fn utc(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// `12 s ago (2026-12-03T16:00:00Z)`, or `never`.
fn when(at: Option<u64>, now_ms: u64) -> String {
    match at {
        Some(ms) => format!(
            "{} ago <span class=\"muted\">({})</span>",
            span(now_ms.saturating_sub(ms) / 1000),
            utc(ms)
        ),
        None => "never".into(),
    }
}

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn state_cell(h: &Health) -> String {
    let state = h.state();
    let class = match state {
        super::health::State::Up => "up",
        super::health::State::Failing => "failing",
        super::health::State::Unused => "unused",
    };
    format!("<td class=\"{class}\">{}</td>", state.as_str())
}

fn error_cell(h: &Health, now_ms: u64) -> String {
    match &h.last_error {
        Some((at, wording)) => format!("{}: {}", when(Some(*at), now_ms), escape(wording)),
        None => "none".into(),
    }
}

pub fn render(s: &Snapshot) -> String {
    let b = &s.board;
    let now = b.now_ms;
    let mut o = String::with_capacity(16 * 1024);
    // `write!` into a String cannot fail.
    let _ = write!(
        o,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
<meta name=\"viewport\" content=\"width=device-width\">\
<title>archway status</title><style>{STYLE}</style></head><body>\
<h1>archway {}</h1><p>Up {} <span class=\"muted\">(since {})</span>. \
Page generated {}; it refreshes every {REFRESH_SECONDS} s.</p>",
        escape(s.version),
        span(b.uptime_s),
        utc(b.started_ms),
        utc(now)
    );

    o.push_str("<h2>Upstreams</h2><table><tr><th>Upstream</th><th>State</th><th>Last success</th><th>Last error</th><th>Rate limit remaining</th><th>Stale answers covering</th></tr>");
    for (name, h) in &b.upstreams {
        let ratelimit = match h.ratelimit {
            Some((n, at)) => format!("{n} <span class=\"muted\">({})</span>", when(Some(at), now)),
            None => "not sent".into(),
        };
        let stale = if h.stale_covering(now) {
            "<span class=\"failing\">yes, now</span>".to_owned()
        } else if h.last_stale_ms.is_some() {
            format!("no (last {})", when(h.last_stale_ms, now))
        } else {
            "no".into()
        };
        let _ = write!(
            o,
            "<tr><td>{}</td>{}<td>{}</td><td>{}</td><td class=\"num\">{ratelimit}</td><td>{stale}</td></tr>",
            escape(name),
            state_cell(h),
            when(h.last_ok_ms, now),
            error_cell(h, now),
        );
    }
    o.push_str("</table>");

    let c = &s.cache;
    let fill = if c.max > 0 {
        (c.used as f64 / c.max as f64).min(1.0)
    } else {
        0.0
    };
    let (hour, start) = (&b.last_hour, &b.since_start);
    let _ = write!(
        o,
        "<h2>Cache</h2><p>Size: <b>{}</b> of {} ({}) \
<span class=\"bar\"><span style=\"width:{:.1}%\"></span></span></p>\
<table><tr><th></th><th>Last hour</th><th>Since start</th></tr>\
<tr><td>Byte hit ratio (served from this disk)</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>\
<tr><td>Bytes served</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>\
<tr><td>Upstream bytes saved</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr></table>\
<table><tr><td>Blobs cached</td><td class=\"num\">{}</td></tr>\
<tr><td>Evictions</td><td class=\"num\">{}</td></tr>\
<tr><td>Damaged blobs found</td><td class=\"num\">{}</td></tr>\
<tr><td>Pinned</td><td class=\"num\">{}</td></tr>\
<tr><td>Downloads in flight</td><td class=\"num\">{}</td></tr></table>",
        bytes(c.used),
        bytes(c.max),
        percent((c.max > 0).then_some(fill)),
        fill * 100.0,
        percent(hour.hit_ratio()),
        percent(start.hit_ratio()),
        bytes(hour.served),
        bytes(start.served),
        bytes(hour.saved),
        bytes(start.saved),
        c.blobs,
        c.evictions,
        c.damaged,
        bytes(c.pinned_bytes),
        c.downloads_in_flight,
    );

    if let Some(st) = &s.storage {
        let reachable = match st.health.reachable() {
            Some(true) => "<span class=\"up\">reachable</span>",
            Some(false) => "<span class=\"failing\">failing</span>",
            None => "<span class=\"unused\">not used yet</span>",
        };
        let last_error = match &st.health.last_error {
            Some((at, w)) => format!("{}: {}", when(Some(*at), now), escape(w)),
            None => "none".into(),
        };
        let _ = write!(
            o,
            "<h2>Shared storage</h2><table><tr><td>Bucket</td><td>{}</td></tr>\
<tr><td>State</td><td>{reachable}</td></tr><tr><td>Last success</td><td>{}</td></tr>\
<tr><td>Last error</td><td>{last_error}</td></tr></table>",
            escape(&st.bucket),
            when(st.health.last_ok_ms, now),
        );
    }
    if let Some(f) = &s.fleet {
        let _ = write!(
            o,
            "<h2>Fleet</h2><p>This replica: {} · leases held: <b>{}</b> · other replicas seen (from leases, last 15 min): <b>{}</b></p>",
            escape(&f.me),
            b.leases_held,
            b.replicas.iter().filter(|(r, _)| *r != f.me).count()
        );
        if !b.replicas.is_empty() {
            o.push_str("<table><tr><th>Replica</th><th>Lease last seen</th></tr>");
            for (replica, seen) in &b.replicas {
                let me = if *replica == f.me { " (this one)" } else { "" };
                let _ = write!(
                    o,
                    "<tr><td>{}{me}</td><td>{}</td></tr>",
                    escape(replica),
                    when(Some(*seen), now)
                );
            }
            o.push_str("</table>");
        }
    }
    let _ = write!(o, "<h2>Fills in flight</h2>");
    if s.fills.is_empty() {
        o.push_str("<p class=\"muted\">none</p>");
    } else {
        o.push_str("<table><tr><th>Blob</th><th>From</th><th>Bytes done</th><th>Requests following</th></tr>");
        for f in &s.fills {
            let size = f.size.map_or("?".to_owned(), bytes);
            let _ = write!(
                o,
                "<tr><td>{}</td><td>{}</td><td class=\"num\">{} of {size}</td><td class=\"num\">{}</td></tr>",
                escape(&f.digest.to_string()),
                f.source.map_or("(connecting)", |s| s.as_str()),
                bytes(f.received),
                f.readers
            );
        }
        o.push_str("</table>");
    }
    if !b.parents.is_empty() {
        o.push_str("<h2>Parents</h2><table><tr><th>Parent</th><th>State</th><th>Last success</th><th>Last error</th></tr>");
        for (name, h) in &b.parents {
            let _ = write!(
                o,
                "<tr><td>{}</td>{}<td>{}</td><td>{}</td></tr>",
                escape(name),
                state_cell(h),
                when(h.last_ok_ms, now),
                error_cell(h, now)
            );
        }
        o.push_str("</table>");
    }
    o.push_str("<h2>Most pulled, last hour</h2>");
    if b.top.images.is_empty() {
        o.push_str("<p class=\"muted\">no pulls in the last hour</p>");
    } else {
        o.push_str("<table><tr><th>Image</th><th>Pulls</th></tr>");
        for (image, n) in &b.top.images {
            let _ = write!(
                o,
                "<tr><td>{}</td><td class=\"num\">{n}</td></tr>",
                escape(image)
            );
        }
        if b.top.others > 0 {
            let _ = write!(
                o,
                "<tr><td class=\"muted\">others</td><td class=\"num\">{}</td></tr>",
                b.top.others
            );
        }
        o.push_str("</table>");
    }
    o.push_str("<p class=\"muted\">Metrics: <a href=\"/metrics\">/metrics</a> · health: <a href=\"/healthz\">/healthz</a>, <a href=\"/readyz\">/readyz</a></p></body></html>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::board::{Board, Role};
    use crate::status::snapshot::{CacheFigures, FleetFigures, StorageFigures};

    #[test]
    fn figures_for_people() {
        let table: [(u64, &str); 6] = [
            (0, "0 B"),
            (1023, "1023 B"),
            (1536, "1.5 KiB"),
            (12_900_000, "12.3 MiB"),
            (4 << 30, "4.0 GiB"),
            (u64::MAX, "16384.0 PiB"),
        ];
        for (n, want) in table {
            assert_eq!(bytes(n), want, "{n}");
        }
        assert_eq!(span(59), "59 s");
        assert_eq!(span(3_900), "1 h 05 min");
        assert_eq!(span(200_000), "2 d 7 h");
        assert_eq!(percent(Some(0.25)), "25.0%");
        assert_eq!(percent(None), "–");
    }

    #[test]
    fn the_page_escapes_what_it_did_not_write_and_has_no_script_or_external_asset() {
        let board = Board::default();
        board.register(Role::Upstream, "hub<script>");
        board.exchanged(Role::Upstream, "hub<script>", Some("HTTP 503 <b>\"x\""));
        board.pulled("hub/evil<img src=x>:1");
        board.lease_seen("http://a:5000\"><script>");
        let s = Snapshot {
            version: "0.1.0",
            board: board.view(10),
            cache: CacheFigures {
                used: 5 << 20,
                max: 10 << 20,
                ..CacheFigures::default()
            },
            storage: Some(StorageFigures {
                bucket: "b&<".into(),
                ..StorageFigures::default()
            }),
            fleet: Some(FleetFigures {
                me: "http://me:5000".into(),
            }),
            fills: Vec::new(),
        };
        let page = render(&s);
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains("<img"), "{page}");
        assert!(!page.contains(" src=\""), "no external asset: {page}");
        assert!(!page.contains("href=\"http"), "no external link: {page}");
        assert!(page.contains("hub&lt;script&gt;"));
        assert!(page.contains("HTTP 503 &lt;b&gt;&quot;x&quot;"));
        assert!(page.contains("b&amp;&lt;"));
        assert!(page.contains("5.0 MiB</b> of 10.0 MiB (50.0%)"));
        assert!(page.contains("http-equiv=\"refresh\""));
        assert!(page.contains("class=\"failing\">failing"));
    }
}
