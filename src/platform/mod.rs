//! Platforms (`os/arch/variant`, Windows `os.version`), containerd's normalisation and
//! matching, and the client hints that say which platform a client runs on.
//!
//! Pure: no sockets, no files.

mod hints;
mod matcher;
mod normalize;
mod windows;

pub use hints::{combine, platform_from_meta_header, platform_from_user_agent};
pub use matcher::{Matcher, Rank};
pub use windows::{WindowsMatch, WindowsVersion};

use std::fmt;

/// An OCI platform as an image index entry or a client describes it.
///
/// Values built by [`Platform::parse`] are normalised; values read from an index are kept as
/// written (so that error messages show what upstream offers) and normalised when matched.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
    pub os_version: Option<String>,
    pub os_features: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlatformError {
    #[error("empty platform")]
    Empty,
    #[error("invalid platform {input:?}: {reason}")]
    Invalid { input: String, reason: &'static str },
    #[error(
        "invalid platform {input:?}: {component:?} is neither a known OS nor a known architecture"
    )]
    Unknown { input: String, component: String },
}

/// What a platform string means when it names only an OS: archway has no "host" to take the
/// architecture from, so it uses the global default architecture.
pub const DEFAULT_ARCHITECTURE: &str = "amd64";
/// What a platform string means when it names only an architecture.
pub const DEFAULT_OS: &str = "linux";

impl Platform {
    /// A platform from its parts, normalised.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: os.to_owned(),
            architecture: architecture.to_owned(),
            variant: variant.map(str::to_owned),
            os_version: None,
            os_features: Vec::new(),
        }
        .normalize()
    }

    /// Parses containerd's specifier syntax — `os`, `arch`, `os/arch`, `os/arch/variant`,
    /// `os(version)/arch`, `os(version+feature)/arch`, `os(+feature)/arch` — and archway's config
    /// form with the OS version after a colon, `windows/amd64:10.0.17763`. The result is
    /// normalised.
    /// linux/amd64: what a client gets when nothing says otherwise.
    pub fn default_for_clients() -> Platform {
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
            os_version: None,
            os_features: Vec::new(),
        }
    }

    pub fn parse(input: &str) -> Result<Platform, PlatformError> {
        if input.is_empty() {
            return Err(PlatformError::Empty);
        }
        let invalid = |reason| PlatformError::Invalid {
            input: input.to_owned(),
            reason,
        };
        if input.contains('*') {
            return Err(invalid("wildcards are not supported"));
        }
        let (spec, colon_version) = match input.split_once(':') {
            Some((spec, version)) => {
                if version.is_empty() {
                    return Err(invalid("empty OS version after ':'"));
                }
                if !version.chars().all(is_version_char) {
                    return Err(invalid("OS version after ':' has invalid characters"));
                }
                (spec, Some(version))
            }
            None => (input, None),
        };
        let parts: Vec<&str> = spec.split('/').collect();
        let (os_part, rest) = match parts.split_first() {
            Some((os, rest)) if rest.len() <= 2 => (*os, rest),
            _ => return Err(invalid("too many '/' components")),
        };
        let first = parse_os_component(os_part).ok_or_else(|| invalid("bad OS component"))?;
        for part in rest {
            if part.is_empty() || !part.chars().all(is_specifier_char) {
                return Err(invalid("bad architecture or variant component"));
            }
        }
        let mut p = Platform {
            os: first.os.clone(),
            os_version: first.version,
            os_features: first.features,
            ..Platform::default()
        };
        match rest {
            [] => {
                let lower = first.os.to_ascii_lowercase();
                if normalize::is_known_os(&normalize::os(&lower)) {
                    p.architecture = DEFAULT_ARCHITECTURE.to_owned();
                } else if p.os_version.is_none() && p.os_features.is_empty() {
                    let (arch, _) = normalize::arch(&lower, "");
                    if !normalize::is_known_arch(&arch) {
                        return Err(PlatformError::Unknown {
                            input: input.to_owned(),
                            component: first.os,
                        });
                    }
                    p.os = DEFAULT_OS.to_owned();
                    p.architecture = lower;
                } else {
                    return Err(PlatformError::Unknown {
                        input: input.to_owned(),
                        component: first.os,
                    });
                }
            }
            [arch] => p.architecture = (*arch).to_owned(),
            [arch, variant, ..] => {
                p.architecture = (*arch).to_owned();
                p.variant = Some((*variant).to_owned());
            }
        }
        if let Some(v) = colon_version {
            if p.os_version.is_some() {
                return Err(invalid("OS version given twice"));
            }
            p.os_version = Some(v.to_owned());
        }
        Ok(p.normalize())
    }

    /// containerd's `Normalize`: lower-case OS (`macos` → `darwin`), canonical architecture and
    /// variant (`aarch64` → `arm64`, `x86_64` → `amd64`, `armhf` → `arm/v7`, …), sorted and
    /// deduplicated OS features. An empty variant or OS version is absent.
    pub fn normalize(mut self) -> Platform {
        self.os = normalize::os(&self.os);
        let (arch, variant) =
            normalize::arch(&self.architecture, self.variant.as_deref().unwrap_or(""));
        self.architecture = arch;
        self.variant = (!variant.is_empty()).then_some(variant);
        self.os_version = self.os_version.filter(|v| !v.is_empty());
        self.os_features.retain(|f| !f.is_empty());
        self.os_features.sort();
        self.os_features.dedup();
        self
    }

    pub fn is_windows(&self) -> bool {
        self.os.eq_ignore_ascii_case("windows")
    }

    /// The attestation placeholder buildx writes into indexes.
    pub fn is_unknown(&self) -> bool {
        self.os == "unknown" && self.architecture == "unknown"
    }
}

impl std::str::FromStr for Platform {
    type Err = PlatformError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Platform::parse(s)
    }
}

/// containerd's `FormatAll`: `os[(version[+feature…])]/arch[/variant]`, with `%`, `+`, `(`, `)`,
/// `/` and every other character the parser refuses there percent-encoded inside the parentheses,
/// so that the output parses back.
impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.os.is_empty() {
            "unknown"
        } else {
            &self.os
        })?;
        let version = self.os_version.as_deref().unwrap_or("");
        let mut features: Vec<&str> = self
            .os_features
            .iter()
            .map(String::as_str)
            .filter(|s| !s.is_empty())
            .collect();
        features.sort_unstable();
        if !version.is_empty() || !features.is_empty() {
            write!(f, "({}", encode_os_option(version))?;
            for feature in features {
                write!(f, "+{}", encode_os_option(feature))?;
            }
            f.write_str(")")?;
        }
        if !self.architecture.is_empty() {
            write!(f, "/{}", self.architecture)?;
        }
        if let Some(v) = self.variant.as_deref().filter(|v| !v.is_empty()) {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

struct OsComponent {
    os: String,
    version: Option<String>,
    features: Vec<String>,
}

/// `<os>[(<version>[+<feature>]*)]`, the first component of containerd's syntax.
fn parse_os_component(s: &str) -> Option<OsComponent> {
    let (os, options) = match s.split_once('(') {
        Some((os, rest)) => (os, Some(rest.strip_suffix(')')?)),
        None => (s, None),
    };
    if os.is_empty()
        || !os
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return None;
    }
    let mut out = OsComponent {
        os: os.to_owned(),
        version: None,
        features: Vec::new(),
    };
    if let Some(options) = options {
        if !options
            .chars()
            .all(|c| is_specifier_char(c) || c == '%' || c == '+')
        {
            return None;
        }
        let mut pieces = options.split('+');
        let version = decode_os_option(pieces.next().unwrap_or(""))?;
        out.version = (!version.is_empty()).then_some(version);
        for feature in pieces {
            if feature.is_empty() {
                return None;
            }
            out.features.push(decode_os_option(feature)?);
        }
    }
    Some(out)
}

fn is_specifier_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

fn is_version_char(c: char) -> bool {
    is_specifier_char(c) || c == '+'
}

/// Every byte outside the specifier characters percent-encoded (`%` → `%25`, `+` → `%2B`, …):
/// the parser takes nothing else inside the parentheses, and a decoded `%26` is a `&`.
fn encode_os_option(s: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if is_specifier_char(c) {
            out.push(c);
        } else {
            for b in c.encode_utf8(&mut [0; 4]).bytes() {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

fn decode_os_option(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests;
