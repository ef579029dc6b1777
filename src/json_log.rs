//! The JSON log line: one object per event — `timestamp`, `level`, `fields`, `target`, and the
//! current span (the request's) as `span` — written in one pass. tracing-subscriber's own JSON
//! format re-parses the span's fields for every line, which cost a cached request more than
//! answering it; here they are spliced in as they were formatted when the span began.

use std::fmt::{self, Write as _};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The event format; pair it with `JsonFields` for span fields (see `main`).
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        writer.write_str("{\"timestamp\":\"")?;
        SystemTime.format_time(&mut writer)?;
        write!(writer, "\",\"level\":\"{}\",\"fields\":{{", meta.level())?;
        let mut fields = Fields {
            out: String::new(),
            first: true,
        };
        event.record(&mut fields);
        writer.write_str(&fields.out)?;
        writer.write_str("},\"target\":")?;
        write_str(&mut writer, meta.target())?;
        if let Some(span) = ctx.lookup_current() {
            let extensions = span.extensions();
            let formatted = extensions
                .get::<FormattedFields<N>>()
                .map(|f| f.fields.as_str())
                .unwrap_or("");
            writer.write_str(",\"span\":")?;
            // `{"a":1}` + name → `{"a":1,"name":"…"}`; anything else gets just the name.
            match formatted.strip_suffix('}') {
                Some(open) if open.starts_with('{') && open.len() > 1 => {
                    writer.write_str(open)?;
                    writer.write_str(",\"name\":")?;
                }
                _ => writer.write_str("{\"name\":")?,
            }
            write_str(&mut writer, span.name())?;
            writer.write_char('}')?;
        }
        writer.write_str("}\n")
    }
}

/// An event's fields as JSON members.
struct Fields {
    out: String,
    first: bool,
}

impl Fields {
    fn key(&mut self, field: &Field) {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        let _ = write_str(&mut self.out, field.name());
        self.out.push(':');
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        let _ = write_str(&mut self.out, value);
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            let _ = write!(self.out, "{value}");
        } else {
            self.out.push_str("null");
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field);
        let _ = write_str(&mut self.out, &format!("{value:?}"));
    }
}

/// A JSON string: quoted, with `"`, `\` and control characters escaped.
fn write_str(out: &mut impl fmt::Write, s: &str) -> fmt::Result {
    out.write_char('"')?;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let escaped = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            c if (c as u32) < 0x20 => "",
            _ => continue,
        };
        out.write_str(s.get(start..i).unwrap_or_default())?;
        if escaped.is_empty() {
            write!(out, "\\u{:04x}", c as u32)?;
        } else {
            out.write_str(escaped)?;
        }
        start = i + c.len_utf8();
    }
    out.write_str(s.get(start..).unwrap_or_default())?;
    out.write_char('"')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_as_json() {
        for s in [
            "plain",
            "quo\"te",
            "back\\slash",
            "new\nline",
            "tab\t",
            "\u{1}ctl",
            "ünï",
        ] {
            let mut out = String::new();
            write_str(&mut out, s).unwrap();
            let back: String = serde_json::from_str(&out).unwrap();
            assert_eq!(back, s, "{out}");
        }
    }

    #[test]
    fn lines_are_json_with_the_request_span() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(JsonLines)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(n = 3, "outside");
            let span = tracing::info_span!("request", id = 7u64, kind = "blob", upstream = "hub");
            let _in = span.enter();
            tracing::warn!(path = "/v2/a\"b", ok = true, took = 1.5, "inside");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(lines[0]["fields"]["message"], "outside");
        assert_eq!(lines[0]["fields"]["n"], 3);
        assert!(lines[0].get("span").is_none());
        assert_eq!(lines[1]["level"], "WARN");
        assert_eq!(lines[1]["fields"]["path"], "/v2/a\"b");
        assert_eq!(lines[1]["fields"]["ok"], true);
        assert_eq!(lines[1]["span"]["name"], "request");
        assert_eq!(lines[1]["span"]["id"], 7);
        assert_eq!(lines[1]["span"]["kind"], "blob");
        assert_eq!(lines[1]["span"]["upstream"], "hub");
        assert!(lines[1]["timestamp"].as_str().unwrap().ends_with('Z'));
    }
}
