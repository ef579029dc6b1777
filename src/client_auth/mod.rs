//! Client authentication on the registry listener: htpasswd users (bcrypt only) and static
//! bearer tokens. Parsing is pure; [`ClientAuth::load`] is the thin file-reading wrapper.
//!
//! Nothing here ever puts a password, token or hash into an error or a log line.

use crate::config::AuthConfig;
use http::HeaderValue;
use sha2::{Digest as _, Sha256};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the dummy hash (checked for unknown users) is a hash of; it lets no one in either.
const DUMMY_PASSWORD: &str = "archway: no such user";

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
    #[error(transparent)]
    Read(crate::key_file::KeyFileError),
    #[error("{}: {source}", path.display())]
    Line { path: PathBuf, source: LineError },
    #[error("{} holds no {what}", path.display())]
    Empty { path: PathBuf, what: &'static str },
}

mod authorization;
mod failures;
mod htpasswd;
mod tokens;

pub use authorization::{parse_authorization, Presented};
use failures::Failures;
pub use htpasswd::{parse_htpasswd, Htpasswd};
pub use tokens::{parse_tokens, Tokens};

/// Why a request was refused; the text goes into the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No `Authorization` header.
    Missing,
    /// Not Basic or Bearer, or not decodable.
    Malformed,
    /// Unknown user, wrong password, unknown token.
    Rejected,
    /// This client address used up its failure budget: 429, checked again after
    /// `retry_after` seconds.
    Throttled { retry_after: u64 },
}

impl Denied {
    pub fn as_str(self) -> &'static str {
        match self {
            Denied::Missing => "authentication required",
            Denied::Malformed => "unreadable Authorization header",
            Denied::Rejected => "invalid credentials",
            Denied::Throttled { .. } => "too many failed logins from this address",
        }
    }
}

/// The `[auth]` checker: share it behind an `Arc`.
pub struct ClientAuth {
    htpasswd: Htpasswd,
    tokens: Tokens,
    /// Checked for unknown users, at the cost of the known ones' (see `Htpasswd::dummy_hash`).
    dummy_hash: Option<String>,
    /// sha256(user, password, stored hash) of pairs bcrypt accepted: one verification per
    /// password, not one per request. Only successes go in, and a changed hash is a new key.
    verified: moka::sync::Cache<[u8; 32], ()>,
    /// bcrypt is slow on purpose; a flood of wrong passwords must not take every thread.
    bcrypt_slots: Arc<tokio::sync::Semaphore>,
    /// Per client address: one check at a time, and a budget of failed ones.
    failures: Arc<Failures>,
    work: Arc<BcryptWork>,
    /// Tests hold this (write) to keep every started bcrypt check from finishing.
    #[cfg(test)]
    gate: Arc<std::sync::RwLock<()>>,
}

/// How much bcrypt work runs and has run: what the slots bound, made visible.
#[derive(Debug, Default)]
struct BcryptWork {
    running: AtomicUsize,
    /// The most that ever ran at once.
    peak: AtomicUsize,
    started: AtomicU64,
}

/// One bcrypt check counted as running for as long as this lives (it goes with the work).
struct Running(Arc<BcryptWork>);

impl Running {
    fn start(work: &Arc<BcryptWork>) -> Running {
        work.started.fetch_add(1, Ordering::Relaxed);
        let now = work.running.fetch_add(1, Ordering::Relaxed) + 1;
        work.peak.fetch_max(now, Ordering::Relaxed);
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
    /// `auth.failure_burst`: failed checks one client address may have in a row.
    pub failure_burst: u32,
    /// `auth.failure_refill`: one more failed check is allowed per this much time.
    pub failure_refill: Duration,
    /// `auth.tracked_clients`: addresses whose budget is remembered.
    pub tracked_clients: usize,
}

impl AuthLimits {
    pub fn from_config(config: &AuthConfig) -> AuthLimits {
        AuthLimits {
            bcrypt_slots: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            failure_burst: config.failure_burst,
            failure_refill: config.failure_refill,
            tracked_clients: config.tracked_clients,
        }
    }
}

impl Default for AuthLimits {
    fn default() -> Self {
        AuthLimits::from_config(&AuthConfig::default())
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
            dummy_hash: htpasswd.dummy_hash(),
            htpasswd,
            tokens,
            verified: moka::sync::Cache::builder()
                .max_capacity(VERIFIED_CAPACITY)
                .time_to_idle(VERIFIED_IDLE)
                .build(),
            bcrypt_slots: Arc::new(tokio::sync::Semaphore::new(limits.bcrypt_slots.max(1))),
            failures: Arc::new(Failures::new(limits, Instant::now())),
            work: Arc::default(),
            #[cfg(test)]
            gate: Arc::default(),
        }
    }

    /// Reads the configured files. An unreadable, malformed or empty file is an error naming it
    /// (and the line).
    pub fn load(config: &AuthConfig) -> Result<ClientAuth, ClientAuthError> {
        fn read(key: &str, path: &Path) -> Result<String, ClientAuthError> {
            crate::key_file::read_to_string(key, path).map_err(ClientAuthError::Read)
        }
        let at = |path: &Path| {
            let path = path.to_owned();
            move |source| ClientAuthError::Line { path, source }
        };
        let htpasswd = match &config.htpasswd_file {
            None => Htpasswd::default(),
            Some(p) => {
                let h = parse_htpasswd(&read("auth.htpasswd_file", p)?).map_err(at(p))?;
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
                let t = parse_tokens(&read("auth.tokens_file", p)?).map_err(at(p))?;
                if t.is_empty() {
                    return Err(ClientAuthError::Empty {
                        path: p.clone(),
                        what: "tokens",
                    });
                }
                t
            }
        };
        Ok(ClientAuth::with_limits(
            htpasswd,
            tokens,
            AuthLimits::from_config(config),
        ))
    }

    /// Checks a request's `Authorization` header; `client` is the address the request came
    /// from, whose budget a password check spends.
    pub async fn check(
        &self,
        authorization: Option<&HeaderValue>,
        client: Option<IpAddr>,
    ) -> Result<(), Denied> {
        self.identify(authorization, client).await.map(drop)
    }

    /// Like `check`, and who it is: the user's name, or the token's (`None`: a token without
    /// a name), for an upstream's `clients`.
    pub async fn identify(
        &self,
        authorization: Option<&HeaderValue>,
        client: Option<IpAddr>,
    ) -> Result<Option<Arc<str>>, Denied> {
        let Some(value) = authorization else {
            return Err(Denied::Missing);
        };
        match parse_authorization(value.as_bytes()).ok_or(Denied::Malformed)? {
            Presented::Bearer(token) => self.tokens.find(&token).ok_or(Denied::Rejected),
            Presented::Basic { user, password } => {
                self.check_password(&user, password, client).await?;
                Ok(Some(Arc::from(user.as_str())))
            }
        }
    }

    async fn check_password(
        &self,
        user: &str,
        password: String,
        client: Option<IpAddr>,
    ) -> Result<(), Denied> {
        // An unknown user takes the same path as a known one, through one bcrypt check of the
        // same cost, the same slots and the same budget: neither time nor 429s tell them apart.
        let (hash, known) = match (self.htpasswd.users.get(user), &self.dummy_hash) {
            (Some(hash), _) => (hash, true),
            (None, Some(dummy)) => (dummy, false),
            (None, None) => return Err(Denied::Rejected),
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
        // A remembered password passes at once, whatever its address's budget.
        if self.verified.contains_key(&key) {
            return Ok(());
        }
        // One check at a time per address: a flood from one address queues behind its own
        // turn, and holds at most one slot; the others stay free for everyone else.
        let (budget, turn) = self.failures.budget(client, Instant::now());
        let turn = turn.acquire_owned().await.map_err(|_| Denied::Rejected)?;
        // A pull's parallel requests wait here behind the first; it may have verified the
        // same password meanwhile.
        if self.verified.contains_key(&key) {
            return Ok(());
        }
        self.failures
            .allowance(budget, Instant::now())
            .map_err(|retry_after| Denied::Throttled { retry_after })?;
        let slot = self
            .bcrypt_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Denied::Rejected)?;
        self.failures.spend(budget, Instant::now());
        let hash = hash.clone();
        let running = Running::start(&self.work);
        let verified = self.verified.clone();
        let failures = self.failures.clone();
        #[cfg(test)]
        let gate = self.gate.clone();
        // The slot and the turn go with the work, not with the request: a client that resets
        // the stream or closes the connection drops this future, but bcrypt runs to its end on
        // the blocking pool, and only then may another check start.
        let work = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let _turn = turn;
            let _running = running;
            #[cfg(test)]
            let _open = gate.read();
            let ok = bcrypt::verify(password, &hash).unwrap_or(false) && known;
            if ok {
                // Here rather than after the await, so a good password is remembered even if
                // its request went away.
                verified.insert(key, ());
                failures.give_back(budget, Instant::now());
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

    /// The most bcrypt checks that ever ran at once.
    pub fn peak_running_checks(&self) -> usize {
        self.work.peak.load(Ordering::Relaxed)
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
mod tests;
