//! Client authentication on the registry listener: htpasswd users (bcrypt only) and static
//! bearer tokens. Parsing is pure; [`ClientAuth::load`] is the thin file-reading wrapper.
//!
//! Nothing here ever puts a password, token or hash into an error or a log line.

use crate::config::AuthConfig;
use base64::Engine as _;
use http::HeaderValue;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The challenge of every 401: Docker, containerd and skopeo answer it with Basic credentials.
pub const CHALLENGE: &str = "Basic realm=\"archway\"";

/// How many verified (user, password) pairs are remembered, and for how long unused.
const VERIFIED_CAPACITY: u64 = 10_000;
const VERIFIED_IDLE: Duration = Duration::from_secs(3600);

/// A problem with one line of an htpasswd or tokens file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct LineError {
    pub line: usize,
    pub message: String,
}

fn line_error(line: usize, message: impl Into<String>) -> LineError {
    LineError {
        line,
        message: message.into(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientAuthError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Line { path: PathBuf, source: LineError },
    #[error("{} holds no {what}", path.display())]
    Empty { path: PathBuf, what: &'static str },
}

/// `user:bcrypt-hash` lines. Blank lines and lines starting with `#` are skipped.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Htpasswd {
    users: HashMap<String, String>,
}

impl fmt::Debug for Htpasswd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Htpasswd")
            .field("users", &self.users.len())
            .finish()
    }
}

impl Htpasswd {
    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    pub fn contains(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }
}

/// What kind of hash an htpasswd entry holds, for the error that refuses it.
fn hash_kind(hash: &str) -> &'static str {
    if hash.starts_with("$apr1$") {
        "an Apache MD5 ($apr1$) hash"
    } else if hash.starts_with("{SHA}") {
        "a SHA-1 ({SHA}) hash"
    } else if hash.starts_with("$1$") {
        "an MD5-crypt ($1$) hash"
    } else if hash.starts_with("$5$") || hash.starts_with("$6$") {
        "a SHA-crypt ($5$/$6$) hash"
    } else if hash.starts_with('$') {
        "an unknown hash type"
    } else {
        "a DES-crypt hash or a plain-text password"
    }
}

pub fn parse_htpasswd(text: &str) -> Result<Htpasswd, LineError> {
    let mut users = HashMap::new();
    let mut first_line = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((user, hash)) = line.split_once(':') else {
            return Err(line_error(n, "not `user:hash`"));
        };
        if user.is_empty() {
            return Err(line_error(n, "the user name is empty"));
        }
        if !(hash.starts_with("$2y$") || hash.starts_with("$2b$") || hash.starts_with("$2a$")) {
            return Err(line_error(
                n,
                format!(
                    "user `{user}` has {}; only bcrypt ($2y$, $2b$, $2a$) is accepted \
                     (make one with `htpasswd -B`)",
                    hash_kind(hash)
                ),
            ));
        }
        // The crate's own error would quote the hash; say what is wrong without it.
        if hash.parse::<bcrypt::HashParts>().is_err() {
            return Err(line_error(
                n,
                format!("user `{user}` has a malformed bcrypt hash"),
            ));
        }
        if let Some(first) = first_line.insert(user.to_owned(), n) {
            return Err(line_error(
                n,
                format!("user `{user}` is already on line {first}"),
            ));
        }
        users.insert(user.to_owned(), hash.to_owned());
    }
    Ok(Htpasswd { users })
}

/// Bearer tokens, kept only as their SHA-256.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Tokens {
    hashes: Vec<[u8; 32]>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("tokens", &self.hashes.len())
            .finish()
    }
}

impl Tokens {
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Compares against every token without stopping early, on fixed-size digests: the time
    /// taken says nothing about how close a guess was.
    pub fn contains(&self, token: &str) -> bool {
        let presented = sha256(token.as_bytes());
        let mut found = 0u8;
        for h in &self.hashes {
            found |= u8::from(ct_eq(h, &presented));
        }
        found == 1
    }
}

/// One token per line; blank lines and lines starting with `#` are skipped.
pub fn parse_tokens(text: &str) -> Result<Tokens, LineError> {
    let mut hashes = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.contains(char::is_whitespace) {
            return Err(line_error(i + 1, "a token cannot contain whitespace"));
        }
        hashes.push(sha256(line.as_bytes()));
    }
    Ok(Tokens { hashes })
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    diff == 0
}

/// The credentials an `Authorization` header carries. Debug never shows the secret part.
#[derive(PartialEq, Eq)]
pub enum Presented {
    Basic { user: String, password: String },
    Bearer(String),
}

impl fmt::Debug for Presented {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Presented::Basic { user, .. } => write!(f, "Basic({user}:***)"),
            Presented::Bearer(_) => f.write_str("Bearer(***)"),
        }
    }
}

/// Parses `Basic <base64 user:password>` or `Bearer <token>` (scheme case-insensitive).
/// Anything else is `None`.
pub fn parse_authorization(value: &[u8]) -> Option<Presented> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (user, password) = decoded.split_once(':')?;
        Some(Presented::Basic {
            user: user.to_owned(),
            password: password.to_owned(),
        })
    } else if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
        Some(Presented::Bearer(rest.to_owned()))
    } else {
        None
    }
}

/// Why a request was refused; the text goes into the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No `Authorization` header.
    Missing,
    /// Not Basic or Bearer, or not decodable.
    Malformed,
    /// Unknown user, wrong password, unknown token.
    Rejected,
}

impl Denied {
    pub fn as_str(self) -> &'static str {
        match self {
            Denied::Missing => "authentication required",
            Denied::Malformed => "unreadable Authorization header",
            Denied::Rejected => "invalid credentials",
        }
    }
}

/// The `[auth]` checker: share it behind an `Arc`.
pub struct ClientAuth {
    htpasswd: Htpasswd,
    tokens: Tokens,
    /// sha256(user, password, stored hash) of pairs bcrypt accepted: one verification per
    /// password, not one per request. Only successes go in, and a changed hash is a new key.
    verified: moka::sync::Cache<[u8; 32], ()>,
    /// bcrypt is slow on purpose; a flood of wrong passwords must not take every thread.
    bcrypt_slots: Arc<tokio::sync::Semaphore>,
    work: Arc<BcryptWork>,
    /// Tests hold this (write) to keep every started bcrypt check from finishing.
    #[cfg(test)]
    gate: Arc<std::sync::RwLock<()>>,
}

/// How much bcrypt work runs and has run: what the slots bound, made visible.
#[derive(Debug, Default)]
struct BcryptWork {
    running: AtomicUsize,
    started: AtomicU64,
}

/// One bcrypt check counted as running for as long as this lives (it goes with the work).
struct Running(Arc<BcryptWork>);

impl Running {
    fn start(work: &Arc<BcryptWork>) -> Running {
        work.started.fetch_add(1, Ordering::Relaxed);
        work.running.fetch_add(1, Ordering::Relaxed);
        Running(work.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The bounds on password checking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthLimits {
    /// bcrypt checks running at once, across all clients.
    pub bcrypt_slots: usize,
}

impl Default for AuthLimits {
    fn default() -> Self {
        AuthLimits {
            bcrypt_slots: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
        }
    }
}

impl fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientAuth")
            .field("htpasswd", &self.htpasswd)
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}

impl ClientAuth {
    pub fn new(htpasswd: Htpasswd, tokens: Tokens) -> ClientAuth {
        ClientAuth::with_limits(htpasswd, tokens, AuthLimits::default())
    }

    pub fn with_limits(htpasswd: Htpasswd, tokens: Tokens, limits: AuthLimits) -> ClientAuth {
        ClientAuth {
            htpasswd,
            tokens,
            verified: moka::sync::Cache::builder()
                .max_capacity(VERIFIED_CAPACITY)
                .time_to_idle(VERIFIED_IDLE)
                .build(),
            bcrypt_slots: Arc::new(tokio::sync::Semaphore::new(limits.bcrypt_slots.max(1))),
            work: Arc::default(),
            #[cfg(test)]
            gate: Arc::default(),
        }
    }

    /// Reads the configured files. An unreadable, malformed or empty file is an error naming it
    /// (and the line).
    pub fn load(config: &AuthConfig) -> Result<ClientAuth, ClientAuthError> {
        fn read(path: &Path) -> Result<String, ClientAuthError> {
            std::fs::read_to_string(path).map_err(|source| ClientAuthError::Read {
                path: path.to_owned(),
                source,
            })
        }
        let at = |path: &Path| {
            let path = path.to_owned();
            move |source| ClientAuthError::Line { path, source }
        };
        let htpasswd = match &config.htpasswd_file {
            None => Htpasswd::default(),
            Some(p) => {
                let h = parse_htpasswd(&read(p)?).map_err(at(p))?;
                if h.is_empty() {
                    return Err(ClientAuthError::Empty {
                        path: p.clone(),
                        what: "users",
                    });
                }
                h
            }
        };
        let tokens = match &config.tokens_file {
            None => Tokens::default(),
            Some(p) => {
                let t = parse_tokens(&read(p)?).map_err(at(p))?;
                if t.is_empty() {
                    return Err(ClientAuthError::Empty {
                        path: p.clone(),
                        what: "tokens",
                    });
                }
                t
            }
        };
        Ok(ClientAuth::new(htpasswd, tokens))
    }

    /// Checks a request's `Authorization` header.
    pub async fn check(&self, authorization: Option<&HeaderValue>) -> Result<(), Denied> {
        let Some(value) = authorization else {
            return Err(Denied::Missing);
        };
        match parse_authorization(value.as_bytes()).ok_or(Denied::Malformed)? {
            Presented::Bearer(token) => {
                if self.tokens.contains(&token) {
                    Ok(())
                } else {
                    Err(Denied::Rejected)
                }
            }
            Presented::Basic { user, password } => self.check_password(&user, password).await,
        }
    }

    async fn check_password(&self, user: &str, password: String) -> Result<(), Denied> {
        let Some(hash) = self.htpasswd.users.get(user) else {
            return Err(Denied::Rejected);
        };
        let key = {
            let mut h = Sha256::new();
            for part in [user.as_bytes(), password.as_bytes(), hash.as_bytes()] {
                // Length-prefixed, so no two different triples hash alike.
                h.update((part.len() as u64).to_be_bytes());
                h.update(part);
            }
            <[u8; 32]>::from(h.finalize())
        };
        if self.verified.contains_key(&key) {
            return Ok(());
        }
        let slot = self
            .bcrypt_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Denied::Rejected)?;
        let hash = hash.clone();
        let running = Running::start(&self.work);
        let verified = self.verified.clone();
        #[cfg(test)]
        let gate = self.gate.clone();
        // The slot goes with the work, not with the request: a client that resets the stream or
        // closes the connection drops this future, but bcrypt runs to its end on the blocking
        // pool, and only then may another check start.
        let work = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let _running = running;
            #[cfg(test)]
            let _open = gate.read();
            let ok = bcrypt::verify(password, &hash).unwrap_or(false);
            if ok {
                // Here rather than after the await, so a good password is remembered even if
                // its request went away.
                verified.insert(key, ());
            }
            ok
        });
        if work.await.unwrap_or(false) {
            Ok(())
        } else {
            Err(Denied::Rejected)
        }
    }

    /// bcrypt checks running now (a check whose request went away still counts until it ends).
    pub fn running_checks(&self) -> usize {
        self.work.running.load(Ordering::Relaxed)
    }

    /// bcrypt checks started since start.
    pub fn bcrypt_runs(&self) -> u64 {
        self.work.started.load(Ordering::Relaxed)
    }

    /// How many password checks are remembered (for tests).
    pub fn verified_count(&self) -> u64 {
        self.verified.run_pending_tasks();
        self.verified.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made by glibc crypt(3) (`$2b$`) as `htpasswd -B` would; `$2y$` is Apache's name for the
    // same algorithm.
    const PW_HASH: &str = "$2b$04$jmLuZGx8L2btHncMpEKag.ahtTeB4GeauyaIH6sFkicIc2fjtOGFq"; // "pw"
    const HUNTER2: &str = "$2b$04$FTuqmjsl9I7tgoI3xcLDOu7nbreZIOKnXRPkrD2rd5Ka3eivBISIm";
    // From the bcrypt crate's interop tests: "password".
    const PASSWORD_2A: &str = "$2a$04$UuTkLRZZ6QofpDOlMz32MuuxEHA43WOemOYHPz6.SjsVsyO1tDU96";

    fn limits(slots: usize) -> AuthLimits {
        AuthLimits {
            bcrypt_slots: slots,
        }
    }

    /// Polls a future once, as a connection does before its client goes away.
    fn poll_once<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> std::task::Poll<F::Output> {
        f.poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
    }

    /// Waits (bounded) until no bcrypt check runs any more.
    async fn until_idle(auth: &ClientAuth) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while auth.running_checks() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "bcrypt checks never ended"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn basic(user: &str, password: &str) -> HeaderValue {
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        HeaderValue::from_str(&format!("Basic {b64}")).unwrap()
    }

    #[test]
    fn htpasswd_accepts_bcrypt_variants() {
        let y = PW_HASH.replacen("$2b$", "$2y$", 1);
        let text =
            format!("# users\nalice:{y}\n\nbob:{HUNTER2}\r\ncarol:{PASSWORD_2A}\n  \n# end\n");
        let h = parse_htpasswd(&text).unwrap();
        assert_eq!(h.len(), 3);
        assert!(h.contains("alice") && h.contains("bob") && h.contains("carol"));
        assert!(!h.contains("dave"));
        assert!(!format!("{h:?}").contains("$2"), "Debug hides the hashes");
    }

    #[test]
    fn htpasswd_refuses_other_hashes_naming_the_line() {
        let cases = [
            ("alice:$apr1$abc$PZF73YJz5hJ9yyI.7OP.R.", 1, "$apr1$"),
            ("# c\nalice:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=", 2, "{SHA}"),
            ("\n\nalice:$6$abc$IdWKNKTJEb8LxY7CGg8YBX", 3, "SHA-crypt"),
            ("alice:$1$abc$x", 1, "MD5-crypt"),
            ("alice:plaintext", 1, "plain-text"),
            ("alice:$2y$04$short", 1, "malformed bcrypt"),
            ("no-colon-here", 1, "not `user:hash`"),
            (":$2y$04$x", 1, "user name is empty"),
        ];
        for (text, line, want) in cases {
            let err = parse_htpasswd(text).unwrap_err();
            assert_eq!(err.line, line, "{text:?}");
            assert!(err.to_string().contains(want), "{text:?}: {err}");
            assert!(err.to_string().starts_with(&format!("line {line}: ")));
        }
        let dup = format!("alice:{PW_HASH}\nalice:{HUNTER2}\n");
        let err = parse_htpasswd(&dup).unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.to_string().contains("already on line 1"), "{err}");
        // Errors never quote the secret part.
        let err = parse_htpasswd("alice:hunter2").unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn tokens_file() {
        let t = parse_tokens("# CI\nabc123\n\n  def-456  \r\n#xyz\n").unwrap();
        assert_eq!(t.len(), 2);
        assert!(t.contains("abc123") && t.contains("def-456"));
        assert!(!t.contains("xyz") && !t.contains("abc12") && !t.contains(""));
        assert!(!format!("{t:?}").contains("abc123"));
        let err = parse_tokens("ok\nbad token\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(!err.to_string().contains("bad token"));
    }

    #[test]
    fn authorization_headers() {
        let alice = basic("alice", "pw");
        let cases: [(&[u8], Option<Presented>); 9] = [
            (
                alice.as_bytes(),
                Some(Presented::Basic {
                    user: "alice".into(),
                    password: "pw".into(),
                }),
            ),
            // A password may contain colons; the user name may not.
            (
                b"basic YWxpY2U6YTpiOmM=",
                Some(Presented::Basic {
                    user: "alice".into(),
                    password: "a:b:c".into(),
                }),
            ),
            (b"Bearer tok-1", Some(Presented::Bearer("tok-1".into()))),
            (b"BEARER  tok-1 ", Some(Presented::Bearer("tok-1".into()))),
            (b"Basic !!!", None),
            (b"Basic YWxpY2U=", None), // "alice": no colon
            (b"Digest username=alice", None),
            (b"Bearer", None),
            (b"", None),
        ];
        for (header, want) in cases {
            assert_eq!(
                parse_authorization(header),
                want,
                "{:?}",
                String::from_utf8_lossy(header)
            );
        }
        let p = parse_authorization(basic("alice", "s3cret").as_bytes()).unwrap();
        assert!(!format!("{p:?}").contains("s3cret"));
    }

    #[tokio::test]
    async fn check_users_and_tokens() {
        let h = parse_htpasswd(&format!("alice:{PW_HASH}\nbob:{HUNTER2}\n")).unwrap();
        let t = parse_tokens("tok-1\n").unwrap();
        let auth = ClientAuth::new(h, t);
        assert_eq!(auth.check(None).await, Err(Denied::Missing));
        assert_eq!(
            auth.check(Some(&HeaderValue::from_static("Digest x")))
                .await,
            Err(Denied::Malformed)
        );
        assert_eq!(auth.check(Some(&basic("alice", "pw"))).await, Ok(()));
        assert_eq!(auth.check(Some(&basic("bob", "hunter2"))).await, Ok(()));
        assert_eq!(
            auth.check(Some(&basic("alice", "hunter2"))).await,
            Err(Denied::Rejected)
        );
        assert_eq!(
            auth.check(Some(&basic("mallory", "pw"))).await,
            Err(Denied::Rejected)
        );
        assert_eq!(
            auth.check(Some(&HeaderValue::from_static("Bearer tok-1")))
                .await,
            Ok(())
        );
        assert_eq!(
            auth.check(Some(&HeaderValue::from_static("Bearer tok-2")))
                .await,
            Err(Denied::Rejected)
        );
        // A token is not a password and a password is not a token.
        assert_eq!(
            auth.check(Some(&basic("alice", "tok-1"))).await,
            Err(Denied::Rejected)
        );
        assert_eq!(
            auth.check(Some(&HeaderValue::from_static("Bearer pw")))
                .await,
            Err(Denied::Rejected)
        );
        // Only the two good passwords were remembered; asking again still works.
        assert_eq!(auth.verified_count(), 2);
        assert_eq!(auth.check(Some(&basic("alice", "pw"))).await, Ok(()));
        assert_eq!(
            auth.check(Some(&basic("alice", "pw2"))).await,
            Err(Denied::Rejected)
        );
        assert_eq!(auth.verified_count(), 2);
    }

    /// Issue 17, item 2: a request reset right after its check started used to free the slot
    /// while bcrypt ran on, so resets could start any number of checks.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_check_keeps_its_slot_until_bcrypt_ends() {
        let h = parse_htpasswd(&format!("alice:{PW_HASH}\n")).unwrap();
        let auth = ClientAuth::with_limits(h, Tokens::default(), limits(2));
        let hold = auth.gate.write().unwrap();
        for _ in 0..8 {
            let header = basic("alice", "wrong");
            let check = std::pin::pin!(auth.check(Some(&header)));
            assert!(poll_once(check).is_pending());
            // Dropped here: the client reset the stream.
        }
        assert_eq!(auth.running_checks(), 2, "no more than the slots run");
        assert_eq!(auth.bcrypt_runs(), 2, "the others never started");
        drop(hold);
        until_idle(&auth).await;
        assert_eq!(auth.bcrypt_runs(), 2);
        // Their slots came back when their work ended.
        assert_eq!(auth.check(Some(&basic("alice", "pw"))).await, Ok(()));
        assert_eq!(
            auth.check(Some(&basic("alice", "pw2"))).await,
            Err(Denied::Rejected)
        );
        assert_eq!(auth.bcrypt_runs(), 4);
    }

    #[test]
    fn load_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let h = dir.path().join("htpasswd");
        std::fs::write(
            &h,
            format!("alice:{PW_HASH}\nbob:$apr1$abc$PZF73YJz5hJ9yyI.7OP.R.\n"),
        )
        .unwrap();
        let cfg = AuthConfig {
            htpasswd_file: Some(h.clone()),
            tokens_file: None,
        };
        let err = ClientAuth::load(&cfg).unwrap_err().to_string();
        assert!(err.contains(&format!("{}: line 2:", h.display())), "{err}");
        let empty = dir.path().join("tokens");
        std::fs::write(&empty, "# none yet\n").unwrap();
        let cfg = AuthConfig {
            htpasswd_file: None,
            tokens_file: Some(empty.clone()),
        };
        let err = ClientAuth::load(&cfg).unwrap_err().to_string();
        assert!(err.contains("holds no tokens"), "{err}");
        let cfg = AuthConfig {
            htpasswd_file: Some(dir.path().join("missing")),
            tokens_file: None,
        };
        let err = ClientAuth::load(&cfg).unwrap_err().to_string();
        assert!(
            err.contains("cannot read") && err.contains("missing"),
            "{err}"
        );
    }
}
