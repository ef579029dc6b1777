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
    ] {
        assert_eq!(
            got, want,
            "{what}: the table's defaults differ from the constructors'\n{text}"
        );
    }
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
