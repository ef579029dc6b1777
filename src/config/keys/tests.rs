//! The table against the parser, both ways, and against docs/configuration.md.
//!
//! What the parser accepts is read from serde itself: a key no Raw struct has is refused by
//! `deny_unknown_fields` with "unknown field `x`, expected one of `a`, `b`, …", so planting an
//! unknown key in each table lists that table's fields exactly as the parser sees them.

use super::*;
use crate::config::{Config, ConfigError};
use std::collections::BTreeSet;

/// A TOML document with `leaf = value` in `section` (`""`, `cache`, `upstream[]`,
/// `route[].match`), plus what that table needs to deserialize at all.
fn doc(section: &str, leaf: &str, value: &str) -> String {
    match section {
        "" => format!("{leaf} = {value}\n"),
        "upstream[]" => {
            let mut d = String::from("[[upstream]]\n");
            for (k, v) in [("name", "\"u\""), ("url", "\"http://127.0.0.1:9\"")] {
                if k != leaf {
                    d.push_str(&format!("{k} = {v}\n"));
                }
            }
            d + &format!("{leaf} = {value}\n")
        }
        s => match s.split_once("[].") {
            Some((table, sub)) => format!("[[{table}]]\n{sub}.{leaf} = {value}\n"),
            None => match s.strip_suffix("[]") {
                Some(table) => format!("[[{table}]]\n{leaf} = {value}\n"),
                None => format!("[{s}]\n{leaf} = {value}\n"),
            },
        },
    }
}

/// The fields the parser takes in `section`, from serde's refusal of an unknown one.
fn parser_fields(section: &str) -> BTreeSet<String> {
    let err = match Config::from_toml(&doc(section, "zz_not_a_key", "1")) {
        Err(ConfigError::Parse(m)) => m,
        other => panic!("[{section}] took an unknown key: {other:?}"),
    };
    let list = err
        .split_once("expected one of ")
        .or_else(|| err.split_once("expected "))
        .unwrap_or_else(|| panic!("no field list in: {err}"))
        .1;
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

fn sections() -> BTreeSet<&'static str> {
    KEYS.iter().map(Key::section).collect()
}

#[test]
fn the_table_names_every_key_once() {
    let mut seen = BTreeSet::new();
    for k in KEYS {
        assert!(seen.insert(k.name), "{} twice", k.name);
        assert!(!k.doc.is_empty(), "{} has no doc", k.name);
        if matches!(k.default, DefaultValue::None(_)) {
            assert!(
                !k.example.is_empty(),
                "{} has neither default nor example",
                k.name
            );
        }
    }
}

#[test]
fn every_key_the_parser_accepts_is_in_the_table() {
    let names: BTreeSet<&str> = KEYS.iter().map(|k| k.name).collect();
    let sections = sections();
    let mut accepted = 0;
    for section in &sections {
        for field in parser_fields(section) {
            let name = if section.is_empty() {
                field.clone()
            } else {
                format!("{section}.{field}")
            };
            // A field that is itself a table: its keys are checked as their own section.
            let table = [name.clone(), format!("{name}[]")]
                .iter()
                .any(|t| sections.contains(t.as_str()));
            if table {
                continue;
            }
            assert!(
                names.contains(name.as_str()),
                "the parser accepts `{name}`, which config::keys::KEYS lacks"
            );
            accepted += 1;
        }
    }
    assert_eq!(
        accepted,
        KEYS.len(),
        "the parser accepts {accepted} keys, the table has {}",
        KEYS.len()
    );
}

#[test]
fn every_key_in_the_table_is_accepted_with_its_default_or_example() {
    for k in KEYS {
        let text = doc(k.section(), k.leaf(), &k.value());
        // Validation (Invalid) may refuse a lone key; only a Parse error means the Raw
        // structs do not take it, or not with this type.
        if let Err(ConfigError::Parse(e)) = Config::from_toml(&text) {
            panic!(
                "`{}` in the table is not accepted by the parser: {e}\n{text}",
                k.name
            );
        }
        assert!(
            parser_fields(k.section()).contains(k.leaf()),
            "`{}` is not a field of its table",
            k.name
        );
    }
}

#[test]
fn the_printed_defaults_are_the_parser_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s").unwrap();
    // Every key with a default, at that default, plus the keys its table requires.
    let mut text = String::new();
    for section in sections() {
        let mut body = String::new();
        for k in KEYS.iter().filter(|k| k.section() == section) {
            if let Some(v) = k.default.toml() {
                body.push_str(&format!("{} = {v}\n", k.leaf()));
            }
        }
        let required = match section {
            "storage" => "s3_bucket = \"b\"\n".to_owned(),
            "fleet" => format!("secret_file = {:?}\n", secret.display().to_string()),
            "auth" => "tokens_file = \"/t\"\n".to_owned(),
            "upstream[]" => {
                "name = \"docker.io\"\nurl = \"https://registry-1.docker.io\"\n".to_owned()
            }
            // No defaults to compare in [tls]; a [[route]] or [[pin]] changes behaviour.
            "tls" | "route[]" | "route[].match" | "pin[]" => continue,
            _ => String::new(),
        };
        text = match section {
            "" => format!("{body}{text}"),
            "upstream[]" => format!("{text}[[upstream]]\n{required}{body}"),
            s => format!("{text}[{s}]\n{required}{body}"),
        };
    }
    let parsed = Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let mut want = Config {
        storage: Some(crate::config::StorageConfig::new("b")),
        fleet: Some(crate::config::FleetConfig::new(
            None,
            crate::config::Secret::new("s"),
        )),
        auth: Some(crate::config::AuthConfig {
            tokens_file: Some("/t".into()),
            ..crate::config::AuthConfig::default()
        }),
        ..Config::default()
    };
    want.upstreams[0].default = false;
    for (what, got, want) in [
        (
            "listen",
            format!("{:?}", parsed.listen),
            format!("{:?}", want.listen),
        ),
        (
            "cache",
            format!("{:?}", parsed.cache),
            format!("{:?}", want.cache),
        ),
        (
            "limits",
            format!("{:?}", parsed.limits),
            format!("{:?}", want.limits),
        ),
        (
            "auth",
            format!("{:?}", parsed.auth),
            format!("{:?}", want.auth),
        ),
        (
            "storage",
            format!("{:?}", parsed.storage),
            format!("{:?}", want.storage),
        ),
        (
            "fleet",
            format!("{:?}", parsed.fleet),
            format!("{:?}", want.fleet),
        ),
        (
            "parent",
            format!("{:?}", parsed.parent),
            format!("{:?}", want.parent),
        ),
        (
            "upstream",
            format!("{:?}", parsed.upstreams),
            format!("{:?}", want.upstreams),
        ),
        (
            "log_format",
            format!("{:?}", parsed.log_format),
            format!("{:?}", want.log_format),
        ),
        (
            "data_dir",
            format!("{:?}", parsed.data_dir),
            format!("{:?}", want.data_dir),
        ),
        (
            "admin_warm",
            format!("{:?}", parsed.admin_warm),
            format!("{:?}", want.admin_warm),
        ),
        (
            "admin_pins",
            format!("{:?}", parsed.admin_pins),
            format!("{:?}", want.admin_pins),
        ),
        (
            "conversion",
            format!("{:?}", parsed.conversion),
            format!("{:?}", want.conversion),
        ),
    ] {
        assert_eq!(
            got, want,
            "{what}: the table's defaults differ from the constructors'\n{text}"
        );
    }
}

/// A `[[route]]` changes behaviour, so its defaults are compared route against route: one
/// that sets every `route[]` key the table gives a default, at that default, is the route that
/// sets none.
#[test]
fn the_printed_route_defaults_are_the_parser_defaults() {
    let mut text = String::from("[[route]]\n");
    let mut n = 0;
    for k in KEYS.iter().filter(|k| k.section() == "route[]") {
        if let Some(v) = k.default.toml() {
            text.push_str(&format!("{} = {v}\n", k.leaf()));
            n += 1;
        }
    }
    assert!(n >= 4, "route[] keys with defaults: {n}\n{text}");
    let set = Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let bare = Config::from_toml("[[route]]\n").unwrap();
    assert_eq!(
        format!("{:?}", set.routes),
        format!("{:?}", bare.routes),
        "route[]: the table's defaults differ from the parser's\n{text}"
    );
}

/// `5 s` → `5s`, `15 min` → `15m`, `10,000` → `10000`, `50 GiB` → `50GiB`: a default as the
/// prose writes it, in the key table's units.
fn squeeze(prose: &str) -> String {
    let units = ["ms", "s", "m", "min", "h", "KiB", "MiB", "GiB", "TiB"];
    let mut out = String::new();
    let mut words = prose.split(' ').peekable();
    while let Some(word) = words.next() {
        let core = word.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
        let number = core.replace(',', "");
        if !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&number);
            out.push_str(&word[core.len()..]);
            // The unit's word, without what sticks to it (`s;`, `MiB/s`, `s)`).
            if let Some(next) = words.peek().filter(|_| core.len() == word.len()) {
                let unit = &next[..next
                    .find(|c: char| !c.is_ascii_alphabetic())
                    .unwrap_or(next.len())];
                if units.contains(&unit) {
                    out.push_str(if unit == "min" { "m" } else { unit });
                    out.push_str(&next[unit.len()..]);
                    words.next();
                }
            }
        } else {
            out.push_str(word);
        }
        out.push(' ');
    }
    out.trim_end().to_owned()
}

/// The defaults docs/operations.md's "Limits and timeouts" table states, against the table's:
/// a row naming one key starts its default column with that key's default; a row naming
/// several mentions each one's.
#[test]
fn the_limits_table_states_the_keys_defaults() {
    let docs = include_str!("../../../docs/operations.md");
    let table = docs
        .split_once("## Limits and timeouts")
        .map(|(_, rest)| rest)
        .expect("docs/operations.md has a Limits and timeouts section");
    let mut checked = 0;
    for row in table
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
    {
        let cells: Vec<&str> = row.trim_matches('|').split(" | ").map(str::trim).collect();
        let [_, default, keys] = cells[..] else {
            continue;
        };
        let named: Vec<&Key> = keys
            .split('`')
            .skip(1)
            .step_by(2)
            .filter_map(|name| {
                // The table says `upstream.connect_timeout` for `upstream[].connect_timeout`.
                let name = name.replacen("upstream.", "upstream[].", 1);
                KEYS.iter().find(|k| k.name == name)
            })
            .collect();
        // Whether a word of the prose (`5s`, `50GiB`, `10000`, `off`) is `k`'s default.
        let is_default = |k: &Key, word: &str| match k.default {
            DefaultValue::Duration(d) => crate::config::parse_duration("", word).ok() == Some(d),
            DefaultValue::Size(n) => crate::config::parse_size("", word).ok() == Some(n),
            DefaultValue::Int(n) => word.parse::<u64>().ok() == Some(n),
            DefaultValue::Bool(b) => word == if b { "on" } else { "off" },
            _ => true,
        };
        let stated = squeeze(default);
        let words: Vec<&str> = stated
            .split(|c: char| c.is_whitespace() || matches!(c, ';' | '(' | ')' | ',' | '/'))
            .filter(|w| !w.is_empty())
            .collect();
        let typed: Vec<&&Key> = named
            .iter()
            .filter(|k| {
                !matches!(
                    k.default,
                    DefaultValue::None(_) | DefaultValue::Text(_) | DefaultValue::List(_)
                )
            })
            .collect();
        match typed.as_slice() {
            [] => continue,
            [k] if named.len() == 1 => assert!(
                words.first().is_some_and(|w| is_default(k, w)),
                "docs/operations.md says the default of `{}` is \"{default}\"; the key table \
                 says {}",
                k.name,
                k.default.toml().unwrap_or_default()
            ),
            several => {
                for k in several {
                    assert!(
                        words.iter().any(|w| is_default(k, w)),
                        "docs/operations.md's row for `{}` (\"{default}\") does not state its \
                         default {}",
                        k.name,
                        k.default.toml().unwrap_or_default()
                    );
                }
            }
        }
        checked += 1;
    }
    assert!(
        checked >= 30,
        "only {checked} rows of the limits table checked"
    );
}

/// The block between these lines of docs/configuration.md is `reference()`, verbatim.
const BEGIN: &str = "<!-- BEGIN archway config --print-defaults -->\n```toml\n";
const END: &str = "```\n<!-- END archway config --print-defaults -->";

#[test]
fn docs_configuration_md_holds_the_reference() {
    let docs = include_str!("../../../docs/configuration.md");
    let block = docs
        .split_once(BEGIN)
        .and_then(|(_, rest)| rest.split_once(END))
        .map(|(block, _)| block)
        .expect("docs/configuration.md has the generated block");
    if block != reference() {
        panic!(
            "docs/configuration.md is out of date; replace its block with the output of \
             `archway config --print-defaults`:\n{}",
            reference()
        );
    }
    for k in KEYS {
        let line = format!("{} ", k.leaf());
        assert!(
            block.contains(&line),
            "{} missing from docs/configuration.md",
            k.name
        );
    }
}
