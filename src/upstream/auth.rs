//! Pure pieces of registry auth: `WWW-Authenticate` challenges, the token request URL and the
//! token response. Nothing here touches the network.

use crate::config::Secret;
use http::header::WWW_AUTHENTICATE;
use http::HeaderMap;
use std::time::Duration;

/// Lifetime assumed when the token response names none (the Docker token spec's default).
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// What a 401 asks for, reduced to the schemes archway can answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
        /// Space-separated scopes as the upstream sent them; a single scope may contain commas
        /// (`repository:a/b:pull,push`).
        scope: Option<String>,
    },
    Basic,
}

/// One challenge as written: a scheme (lowercased) and its auth-params (names lowercased).
#[derive(Debug, Clone, PartialEq, Eq)]
struct RawChallenge {
    scheme: String,
    params: Vec<(String, String)>,
}

impl RawChallenge {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The challenge archway should answer, from every `WWW-Authenticate` header of a 401.
/// Bearer wins over Basic because a token is scoped and expires; a Bearer without a realm is
/// unusable and ignored.
pub fn select_challenge(headers: &HeaderMap) -> Option<Challenge> {
    let mut basic = false;
    for value in headers.get_all(WWW_AUTHENTICATE) {
        let Ok(text) = value.to_str() else { continue };
        for raw in parse_challenges(text) {
            match raw.scheme.as_str() {
                "bearer" => {
                    let Some(realm) = raw.param("realm").filter(|r| !r.is_empty()) else {
                        continue;
                    };
                    let nonempty = |v: Option<&str>| v.filter(|s| !s.is_empty()).map(str::to_owned);
                    return Some(Challenge::Bearer {
                        realm: realm.to_owned(),
                        service: nonempty(raw.param("service")),
                        scope: nonempty(raw.param("scope")),
                    });
                }
                "basic" => basic = true,
                _ => {}
            }
        }
    }
    basic.then_some(Challenge::Basic)
}

/// Parses one header value into challenges (RFC 9110 §11.6.1): `scheme [token68 | param *(, param)]`
/// with several challenges allowed in one comma-separated list. Lenient: unparseable parts are
/// skipped rather than failing the whole header.
///
/// Hand-written rather than `http-auth` 0.1.10's `ChallengeParser`, which stops at the first
/// thing it cannot read and so fails these tests: more than one space after the scheme
/// (`Bearer   realm=…`, RFC 9110's `1*SP`), a token68 challenge before a Bearer one in the same
/// header (`Negotiate abc==, Bearer realm=…` loses the Bearer), a tab after the scheme.
fn parse_challenges(input: &str) -> Vec<RawChallenge> {
    let mut out: Vec<RawChallenge> = Vec::new();
    let mut lx = Lexer {
        s: input.as_bytes(),
        i: 0,
    };
    loop {
        lx.skip_ws_and_commas();
        let Some(word) = lx.token() else {
            if lx.at_end() {
                break;
            }
            // Garbage character: skip it and try again.
            lx.i += 1;
            continue;
        };
        lx.skip_ws();
        if lx.peek() == Some(b'=') {
            // `name=value` with no scheme before it belongs to the previous challenge.
            lx.i += 1;
            lx.skip_ws();
            let value = lx.value();
            if let Some(last) = out.last_mut() {
                last.params.push((word.to_ascii_lowercase(), value));
            }
            continue;
        }
        // A new scheme; its params follow, separated by commas.
        let mut ch = RawChallenge {
            scheme: word.to_ascii_lowercase(),
            params: Vec::new(),
        };
        loop {
            lx.skip_ws();
            let save = lx.i;
            let Some(name) = lx.token() else { break };
            lx.skip_ws();
            if lx.peek() != Some(b'=') {
                // The next scheme (or a token68, which archway never needs).
                lx.i = save;
                break;
            }
            lx.i += 1;
            lx.skip_ws();
            let value = lx.value();
            ch.params.push((name.to_ascii_lowercase(), value));
            lx.skip_ws();
            if lx.peek() == Some(b',') {
                lx.i += 1;
            } else {
                break;
            }
        }
        out.push(ch);
    }
    out
}

struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
}

impl Lexer<'_> {
    fn at_end(&self) -> bool {
        self.i >= self.s.len()
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }
    fn skip_ws_and_commas(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b',')) {
            self.i += 1;
        }
    }
    /// An RFC 9110 token (tchar+).
    fn token(&mut self) -> Option<String> {
        let start = self.i;
        while let Some(c) = self.peek() {
            let tchar = c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c);
            if !tchar {
                break;
            }
            self.i += 1;
        }
        let token = self.s.get(start..self.i).filter(|t| !t.is_empty())?;
        Some(String::from_utf8_lossy(token).into_owned())
    }
    /// A quoted-string (with `\` escapes) or a bare token-ish value up to the next comma.
    fn value(&mut self) -> String {
        if self.peek() == Some(b'"') {
            self.i += 1;
            let mut v = Vec::new();
            while let Some(c) = self.peek() {
                self.i += 1;
                match c {
                    b'"' => break,
                    b'\\' => {
                        if let Some(n) = self.peek() {
                            v.push(n);
                            self.i += 1;
                        }
                    }
                    _ => v.push(c),
                }
            }
            return String::from_utf8_lossy(&v).into_owned();
        }
        let start = self.i;
        while let Some(c) = self.peek() {
            if c == b',' || c == b' ' || c == b'\t' {
                break;
            }
            self.i += 1;
        }
        String::from_utf8_lossy(self.s.get(start..self.i).unwrap_or_default()).into_owned()
    }
}

/// The scope to ask for when the challenge names none.
pub fn default_scope(repo: &str) -> String {
    format!("repository:{repo}:pull")
}

/// `realm?service=…&scope=…`, one `scope` parameter per space-separated scope as the Docker
/// token spec wants. The realm's own query, if any, is kept.
pub fn token_url(realm: &str, service: Option<&str>, scope: &str) -> String {
    let mut url = realm.to_owned();
    let mut sep = if realm.contains('?') { '&' } else { '?' };
    let mut push = |name: &str, value: &str| {
        url.push(sep);
        url.push_str(name);
        url.push('=');
        url.push_str(&percent_encode(value));
        sep = '&';
    };
    if let Some(service) = service {
        push("service", service);
    }
    for s in scope.split(' ').filter(|s| !s.is_empty()) {
        push("scope", s);
    }
    url
}

/// Encodes everything but RFC 3986 unreserved characters.
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A parsed token response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenResponse {
    pub token: Secret,
    pub lifetime: Duration,
    /// Kept for logs only: expiry counts from when archway received the token, because the
    /// token server's clock need not agree with ours.
    pub issued_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenParseError {
    #[error("token response is not JSON of the expected shape")]
    Json,
    #[error("token response has no token")]
    NoToken,
}

/// Parses the token endpoint's JSON: `token` or (OAuth2) `access_token`, `expires_in` seconds
/// (absent → 60 s; a given value is used as given), `issued_at` optional.
pub fn parse_token_response(body: &[u8]) -> Result<TokenResponse, TokenParseError> {
    #[derive(serde::Deserialize)]
    struct Raw {
        token: Option<String>,
        access_token: Option<String>,
        expires_in: Option<serde_json::Number>,
        issued_at: Option<String>,
    }
    let raw: Raw = serde_json::from_slice(body).map_err(|_| TokenParseError::Json)?;
    let token = [raw.token, raw.access_token]
        .into_iter()
        .flatten()
        .find(|t| !t.is_empty())
        .ok_or(TokenParseError::NoToken)?;
    // At most u32::MAX seconds (136 years), fractional or not: the token cache adds the lifetime
    // to now, which a lifetime near u64::MAX seconds overflows (a panic).
    let lifetime = match raw.expires_in {
        None => DEFAULT_TOKEN_LIFETIME,
        Some(n) => match (n.as_u64(), n.as_f64()) {
            (Some(secs), _) => Duration::from_secs(secs.min(u32::MAX.into())),
            // Negative or fractional: clamp into a usable Duration.
            (None, Some(f)) if f.is_finite() && f > 0.0 => {
                Duration::from_secs_f64(f.min(u32::MAX as f64))
            }
            _ => Duration::ZERO,
        },
    };
    Ok(TokenResponse {
        token: Secret::new(token),
        lifetime,
        issued_at: raw.issued_at,
    })
}

/// How long before expiry a cached token stops being handed out, so that it does not expire
/// on its way to the upstream: min(10 s, 10 % of its lifetime).
pub fn expiry_margin(lifetime: Duration) -> Duration {
    (lifetime / 10).min(Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn challenge_of(values: &[&str]) -> Option<Challenge> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(WWW_AUTHENTICATE, HeaderValue::from_str(v).unwrap());
        }
        select_challenge(&h)
    }

    fn bearer(realm: &str, service: Option<&str>, scope: Option<&str>) -> Option<Challenge> {
        Some(Challenge::Bearer {
            realm: realm.into(),
            service: service.map(Into::into),
            scope: scope.map(Into::into),
        })
    }

    #[test]
    fn challenges_from_real_registries() {
        let cases: &[(&[&str], Option<Challenge>)] = &[
            // Docker Hub
            (
                &[
                    r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
                ],
                bearer(
                    "https://auth.docker.io/token",
                    Some("registry.docker.io"),
                    Some("repository:library/alpine:pull"),
                ),
            ),
            // ghcr.io
            (
                &[
                    r#"Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:user/image:pull""#,
                ],
                bearer(
                    "https://ghcr.io/token",
                    Some("ghcr.io"),
                    Some("repository:user/image:pull"),
                ),
            ),
            // quay.io
            (
                &[
                    r#"Bearer realm="https://quay.io/v2/auth",service="quay.io",scope="repository:coreos/etcd:pull""#,
                ],
                bearer(
                    "https://quay.io/v2/auth",
                    Some("quay.io"),
                    Some("repository:coreos/etcd:pull"),
                ),
            ),
            // Distribution's /v2/ ping: no scope
            (
                &[r#"Bearer realm="https://auth.example/token",service="registry.example""#],
                bearer("https://auth.example/token", Some("registry.example"), None),
            ),
            // A scope containing commas stays whole.
            (
                &[r#"Bearer realm="https://r/t",service="s",scope="repository:a/b:pull,push""#],
                bearer("https://r/t", Some("s"), Some("repository:a/b:pull,push")),
            ),
            // Several scopes, space-separated.
            (
                &[r#"Bearer realm="https://r/t",scope="repository:a:pull repository:b:pull""#],
                bearer(
                    "https://r/t",
                    None,
                    Some("repository:a:pull repository:b:pull"),
                ),
            ),
            // Odd casing and spacing, unquoted values.
            (
                &[r#"bEaReR   Realm = "https://r/t" ,  SERVICE=svc ,scope = "repository:x:pull""#],
                bearer("https://r/t", Some("svc"), Some("repository:x:pull")),
            ),
            // Escapes inside a quoted string.
            (
                &[r#"Bearer realm="https://r/t\"x",service="s""#],
                bearer(r#"https://r/t"x"#, Some("s"), None),
            ),
            (&[r#"Basic realm="x""#], Some(Challenge::Basic)),
            (&["Basic"], Some(Challenge::Basic)),
            // Basic and Bearer in one header: Bearer wins.
            (
                &[r#"Basic realm="x", Bearer realm="https://r/t",service="s""#],
                bearer("https://r/t", Some("s"), None),
            ),
            // ... and in two headers.
            (
                &[r#"Basic realm="x""#, r#"Bearer realm="https://r/t""#],
                bearer("https://r/t", None, None),
            ),
            // Bearer without a realm cannot be answered.
            (&[r#"Bearer service="s""#], None),
            (&[r#"Bearer realm="""#], None),
            (&["Negotiate abc=="], None),
            // A token68 challenge before a Bearer one in the same header (RFC 9110 §11.3).
            (
                &[r#"Negotiate abc==, Bearer realm="https://r/t",service="s""#],
                bearer("https://r/t", Some("s"), None),
            ),
            (
                &["Negotiate", r#"Bearer realm="https://r/t""#],
                bearer("https://r/t", None, None),
            ),
            // Docker Hub when a token lacks a scope: the extra `error` param is ignored.
            (
                &[
                    r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull",error="insufficient_scope""#,
                ],
                bearer(
                    "https://auth.docker.io/token",
                    Some("registry.docker.io"),
                    Some("repository:library/alpine:pull"),
                ),
            ),
            // Bearer first, Basic after it, in one header.
            (
                &[r#"Bearer realm="https://r/t",service="s", Basic realm="x""#],
                bearer("https://r/t", Some("s"), None),
            ),
            // RFC 7617's Basic with a charset.
            (
                &[r#"Basic realm="Registry Realm", charset="UTF-8""#],
                Some(Challenge::Basic),
            ),
            // Commas, an escaped backslash and an escaped quote inside quoted values.
            (
                &[
                    r#"Bearer realm="https://r/t?a=1,b=2",service="x\\y",scope="say \"hi\", then go""#,
                ],
                bearer(
                    "https://r/t?a=1,b=2",
                    Some(r"x\y"),
                    Some(r#"say "hi", then go"#),
                ),
            ),
            // A tab between scheme and params, and whitespace around the value.
            (
                &["  Bearer\trealm=\"https://r/t\"  "],
                bearer("https://r/t", None, None),
            ),
            (&["garbage ,,, = \" unterminated"], None),
            (&[""], None),
            (&[], None),
        ];
        for (headers, want) in cases {
            assert_eq!(&challenge_of(headers), want, "headers {headers:?}");
        }
    }

    #[test]
    fn token_urls() {
        let cases = [
            (
                "https://auth.docker.io/token",
                Some("registry.docker.io"),
                "repository:library/alpine:pull",
                "https://auth.docker.io/token?service=registry.docker.io&scope=repository%3Alibrary%2Falpine%3Apull",
            ),
            (
                "https://r/t?account=x",
                None,
                "repository:a/b:pull,push",
                "https://r/t?account=x&scope=repository%3Aa%2Fb%3Apull%2Cpush",
            ),
            (
                "https://r/t",
                Some("a b&c"),
                "repository:a:pull repository:b:pull",
                "https://r/t?service=a%20b%26c&scope=repository%3Aa%3Apull&scope=repository%3Ab%3Apull",
            ),
        ];
        for (realm, service, scope, want) in cases {
            assert_eq!(token_url(realm, service, scope), want);
        }
    }

    #[test]
    fn token_responses() {
        let secs = Duration::from_secs;
        type Want = Result<(&'static str, Duration, Option<&'static str>), TokenParseError>;
        let cases: &[(&str, Want)] = &[
            (
                r#"{"token":"abc","expires_in":300,"issued_at":"2024-05-01T10:00:00.123Z"}"#,
                Ok(("abc", secs(300), Some("2024-05-01T10:00:00.123Z"))),
            ),
            (r#"{"access_token":"oauth"}"#, Ok(("oauth", secs(60), None))),
            // Docker Hub sends both; they are equal, `token` is preferred.
            (
                r#"{"token":"t","access_token":"a","expires_in":300}"#,
                Ok(("t", secs(300), None)),
            ),
            (
                r#"{"token":"","access_token":"a"}"#,
                Ok(("a", secs(60), None)),
            ),
            // A short given lifetime is used as given.
            (r#"{"token":"t","expires_in":2}"#, Ok(("t", secs(2), None))),
            (
                r#"{"token":"t","expires_in":-5}"#,
                Ok(("t", Duration::ZERO, None)),
            ),
            (
                r#"{"token":"t","expires_in":1.5}"#,
                Ok(("t", Duration::from_millis(1500), None)),
            ),
            // Clamped to 136 years, so that now + lifetime cannot overflow.
            (
                r#"{"token":"t","expires_in":18446744073709551615}"#,
                Ok(("t", secs(u32::MAX.into()), None)),
            ),
            (
                r#"{"token":"t","expires_in":1e300}"#,
                Ok(("t", secs(u32::MAX.into()), None)),
            ),
            (r#"{"expires_in":300}"#, Err(TokenParseError::NoToken)),
            (r#"{"token":""}"#, Err(TokenParseError::NoToken)),
            (r#"{"token":5}"#, Err(TokenParseError::Json)),
            ("<html>", Err(TokenParseError::Json)),
        ];
        for (body, want) in cases {
            let got = parse_token_response(body.as_bytes());
            match (got, want) {
                (Ok(t), Ok((token, lifetime, issued))) => {
                    assert_eq!(t.token.expose(), *token, "{body}");
                    assert_eq!(t.lifetime, *lifetime, "{body}");
                    assert_eq!(t.issued_at.as_deref(), *issued, "{body}");
                }
                (Err(e), Err(w)) => assert_eq!(&e, w, "{body}"),
                (got, want) => panic!("{body}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn token_debug_hides_secret() {
        let t = parse_token_response(br#"{"token":"s3cr3t"}"#).unwrap();
        assert!(!format!("{t:?}").contains("s3cr3t"));
    }

    #[test]
    fn margins() {
        let secs = Duration::from_secs;
        assert_eq!(expiry_margin(secs(300)), secs(10));
        assert_eq!(expiry_margin(secs(60)), secs(6));
        assert_eq!(expiry_margin(secs(2)), Duration::from_millis(200));
        assert_eq!(expiry_margin(Duration::ZERO), Duration::ZERO);
    }
}
