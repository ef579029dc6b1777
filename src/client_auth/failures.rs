//! Failed attempts per client (address or user) and the bcrypt budget each may spend: what
//! keeps a guesser from burning the CPU or trying passwords fast.

use super::AuthLimits;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Whose budget a check spends: an IPv4 address, or an IPv6 /64 (what one host, or one
/// customer of a provider, is commonly given: single v6 addresses are free to an attacker).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum ClientKey {
    V4([u8; 4]),
    V6([u8; 8]),
    /// No peer address known (not a TCP listener): one shared budget.
    Unknown,
}

impl ClientKey {
    pub(super) fn of(client: Option<IpAddr>) -> ClientKey {
        match client.map(|ip| ip.to_canonical()) {
            Some(IpAddr::V4(v4)) => ClientKey::V4(v4.octets()),
            Some(IpAddr::V6(v6)) => {
                let mut prefix = [0; 8];
                prefix.copy_from_slice(&v6.octets()[..8]);
                ClientKey::V6(prefix)
            }
            None => ClientKey::Unknown,
        }
    }
}

/// One address's failure budget (a token bucket) and its one-check-at-a-time turn.
#[derive(Debug)]
pub(super) struct ClientBudget {
    tokens: f64,
    at: Instant,
    turn: Arc<tokio::sync::Semaphore>,
}

impl ClientBudget {
    pub(super) fn new(burst: u32, now: Instant) -> ClientBudget {
        ClientBudget {
            tokens: f64::from(burst),
            at: now,
            turn: Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }

    pub(super) fn refill(&mut self, limits: &AuthLimits, now: Instant) {
        let gained = now.saturating_duration_since(self.at).as_secs_f64()
            / limits.failure_refill.as_secs_f64();
        self.tokens = (self.tokens + gained).min(f64::from(limits.failure_burst));
        self.at = now;
    }

    /// Full and nobody's turn held or awaited: the same as a fresh entry, so it can go.
    pub(super) fn forgettable(&mut self, limits: &AuthLimits, now: Instant) -> bool {
        self.refill(limits, now);
        self.tokens >= f64::from(limits.failure_burst) && Arc::strong_count(&self.turn) == 1
    }
}

/// Which budget a check spends: its address's, or (the table being full of recent failures)
/// the shared overflow one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BudgetRef {
    Client(ClientKey),
    Overflow,
}

/// The failure budgets of the client addresses, at most `tracked_clients` of them.
#[derive(Debug)]
pub(super) struct Failures {
    limits: AuthLimits,
    state: std::sync::Mutex<FailureTable>,
}

#[derive(Debug)]
pub(super) struct FailureTable {
    clients: HashMap<ClientKey, ClientBudget>,
    /// Shared by the addresses that find the table full, so that many addresses can't grow
    /// it (or get a fresh budget each) without a bound.
    overflow: ClientBudget,
    /// No sweep for forgettable entries before this: a full table of recent failures is not
    /// scanned on every request.
    next_sweep: Instant,
}

/// How often a full table is swept at most.
pub(super) const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl Failures {
    pub(super) fn new(limits: AuthLimits, now: Instant) -> Failures {
        let overflow = ClientBudget::new(limits.failure_burst, now);
        Failures {
            limits,
            state: std::sync::Mutex::new(FailureTable {
                clients: HashMap::new(),
                overflow,
                next_sweep: now,
            }),
        }
    }

    pub(super) fn table(&self) -> std::sync::MutexGuard<'_, FailureTable> {
        // The table stays consistent at every step; a panic elsewhere cannot leave it torn.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The budget `client` spends, and its turn (one check at a time per budget).
    pub(super) fn budget(
        &self,
        client: Option<IpAddr>,
        now: Instant,
    ) -> (BudgetRef, Arc<tokio::sync::Semaphore>) {
        let key = ClientKey::of(client);
        let mut t = self.table();
        if let Some(b) = t.clients.get(&key) {
            return (BudgetRef::Client(key), b.turn.clone());
        }
        if t.clients.len() >= self.limits.tracked_clients && now >= t.next_sweep {
            let limits = &self.limits;
            t.clients.retain(|_, b| !b.forgettable(limits, now));
            t.next_sweep = now + SWEEP_EVERY;
        }
        if t.clients.len() >= self.limits.tracked_clients {
            return (BudgetRef::Overflow, t.overflow.turn.clone());
        }
        let b = ClientBudget::new(self.limits.failure_burst, now);
        let turn = b.turn.clone();
        t.clients.insert(key, b);
        (BudgetRef::Client(key), turn)
    }

    pub(super) fn with<R>(
        &self,
        r: BudgetRef,
        now: Instant,
        f: impl FnOnce(&mut ClientBudget) -> R,
    ) -> Option<R> {
        let mut t = self.table();
        let b = match r {
            BudgetRef::Client(key) => t.clients.get_mut(&key)?,
            BudgetRef::Overflow => &mut t.overflow,
        };
        b.refill(&self.limits, now);
        Some(f(b))
    }

    /// `Err(seconds until one more try)` when the budget is spent.
    pub(super) fn allowance(&self, r: BudgetRef, now: Instant) -> Result<(), u64> {
        let refill = self.limits.failure_refill.as_secs_f64();
        self.with(r, now, |b| {
            if b.tokens >= 1.0 {
                Ok(())
            } else {
                Err(((1.0 - b.tokens) * refill).ceil().max(1.0) as u64)
            }
        })
        .unwrap_or(Ok(()))
    }

    /// A check starts: it costs one try (given back if the password was right).
    pub(super) fn spend(&self, r: BudgetRef, now: Instant) {
        self.with(r, now, |b| b.tokens = (b.tokens - 1.0).max(0.0));
    }

    pub(super) fn give_back(&self, r: BudgetRef, now: Instant) {
        let burst = f64::from(self.limits.failure_burst);
        self.with(r, now, |b| b.tokens = (b.tokens + 1.0).min(burst));
    }

    #[cfg(test)]
    pub(super) fn tracked(&self) -> usize {
        self.table().clients.len()
    }
}
