//! Bearer tokens per (realm, service, scope), with one async lock per key so that concurrent
//! cold requests for one scope cause one token fetch.
//!
//! One cache belongs to one `Upstream`, which has one set of credentials: the identity is part
//! of the key by construction.

use super::auth::expiry_margin;
use crate::config::Secret;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Above this many keys, entries holding nothing usable are pruned.
const PRUNE_ABOVE: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenKey {
    pub realm: String,
    pub service: Option<String>,
    pub scope: String,
}

#[derive(Debug, Clone)]
struct Cached {
    token: Secret,
    /// When the token stops being handed out (expiry minus margin).
    usable_until: Instant,
}

type Slot = Arc<tokio::sync::Mutex<Option<Cached>>>;

#[derive(Default)]
pub struct TokenCache {
    slots: Mutex<HashMap<TokenKey, Slot>>,
}

impl TokenCache {
    fn slot(&self, key: &TokenKey) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = slots.get(key) {
            return slot.clone();
        }
        if slots.len() >= PRUNE_ABOVE {
            let now = Instant::now();
            // A slot someone holds (fetching) is kept; a free one is kept only while usable.
            slots.retain(|_, slot| match slot.try_lock() {
                Ok(cached) => cached.as_ref().is_some_and(|c| c.usable_until > now),
                Err(_) => true,
            });
        }
        slots.entry(key.clone()).or_default().clone()
    }

    /// A usable cached token, waiting for a fetch of the same key that is under way.
    pub async fn get(&self, key: &TokenKey) -> Option<Secret> {
        let slot = self.slot(key);
        let cached = slot.lock().await;
        usable(&cached, None)
    }

    /// Forgets `token` for `key` if it is still the cached one (the upstream refused it).
    pub async fn invalidate(&self, key: &TokenKey, token: &Secret) {
        let slot = self.slot(key);
        let mut cached = slot.lock().await;
        if cached.as_ref().is_some_and(|c| &c.token == token) {
            *cached = None;
        }
    }

    /// A usable cached token other than `rejected`, or a freshly fetched one. Only one fetch
    /// per key runs at a time; those waiting on it use its result.
    pub async fn get_or_fetch<F, Fut, E>(
        &self,
        key: &TokenKey,
        rejected: Option<&Secret>,
        fetch: F,
    ) -> Result<Secret, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(Secret, Duration), E>>,
    {
        let slot = self.slot(key);
        let mut cached = slot.lock().await;
        if let Some(token) = usable(&cached, rejected) {
            return Ok(token);
        }
        // Drop a rejected or stale token before fetching, so a failed fetch leaves nothing bad.
        *cached = None;
        let (token, lifetime) = fetch().await?;
        let received = Instant::now();
        *cached = Some(Cached {
            token: token.clone(),
            usable_until: received + lifetime.saturating_sub(expiry_margin(lifetime)),
        });
        Ok(token)
    }
}

fn usable(cached: &Option<Cached>, rejected: Option<&Secret>) -> Option<Secret> {
    cached
        .as_ref()
        .filter(|c| c.usable_until > Instant::now() && Some(&c.token) != rejected)
        .map(|c| c.token.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn key(scope: &str) -> TokenKey {
        TokenKey {
            realm: "https://auth/token".into(),
            service: Some("svc".into()),
            scope: scope.into(),
        }
    }

    async fn fetch_counting(n: &AtomicUsize, lifetime: Duration) -> Result<(Secret, Duration), ()> {
        let i = n.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok((Secret::new(format!("t{i}")), lifetime))
    }

    #[tokio::test(start_paused = true)]
    async fn caches_until_margin_before_expiry() {
        let cache = TokenCache::default();
        let n = AtomicUsize::new(0);
        let k = key("repository:a:pull");
        let life = Duration::from_secs(100);
        assert_eq!(cache.get(&k).await, None);
        let t = cache
            .get_or_fetch(&k, None, || fetch_counting(&n, life))
            .await;
        assert_eq!(t, Ok(Secret::new("t0")));
        assert_eq!(cache.get(&k).await, Some(Secret::new("t0")));
        let t = cache
            .get_or_fetch(&k, None, || fetch_counting(&n, life))
            .await;
        assert_eq!(t, Ok(Secret::new("t0")));
        assert_eq!(n.load(Ordering::SeqCst), 1);
        // Margin is 10 s: usable at 89 s, not at 91 s.
        tokio::time::advance(Duration::from_secs(89)).await;
        assert!(cache.get(&k).await.is_some());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(cache.get(&k).await, None);
        let t = cache
            .get_or_fetch(&k, None, || fetch_counting(&n, life))
            .await;
        assert_eq!(t, Ok(Secret::new("t1")));
        // Other scopes are other keys.
        assert_eq!(cache.get(&key("repository:b:pull")).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn rejected_token_is_replaced_once() {
        let cache = TokenCache::default();
        let n = AtomicUsize::new(0);
        let k = key("s");
        let life = Duration::from_secs(300);
        let t0 = cache
            .get_or_fetch(&k, None, || fetch_counting(&n, life))
            .await
            .unwrap();
        let t1 = cache
            .get_or_fetch(&k, Some(&t0), || fetch_counting(&n, life))
            .await
            .unwrap();
        assert_eq!(t1, Secret::new("t1"));
        // Someone else rejecting the old token again gets the new one without a fetch.
        let t = cache
            .get_or_fetch(&k, Some(&t0), || fetch_counting(&n, life))
            .await
            .unwrap();
        assert_eq!(t, t1);
        assert_eq!(n.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_cold_requests_fetch_once() {
        let cache = Arc::new(TokenCache::default());
        let n = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (cache, n) = (cache.clone(), n.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_fetch(&key("s"), None, || {
                        fetch_counting(&n, Duration::from_secs(60))
                    })
                    .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok(Secret::new("t0")));
        }
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_fetch_caches_nothing() {
        let cache = TokenCache::default();
        let k = key("s");
        let r: Result<Secret, &str> = cache.get_or_fetch(&k, None, || async { Err("no") }).await;
        assert_eq!(r, Err("no"));
        assert_eq!(cache.get(&k).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn prunes_unusable_entries() {
        let cache = TokenCache::default();
        let n = AtomicUsize::new(0);
        for i in 0..PRUNE_ABOVE {
            let life = Duration::from_secs(if i == 0 { 1000 } else { 1 });
            cache
                .get_or_fetch(&key(&i.to_string()), None, || fetch_counting(&n, life))
                .await
                .unwrap();
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        cache.get(&key("new")).await;
        let slots = cache.slots.lock().unwrap();
        assert_eq!(
            slots.len(),
            2,
            "the long-lived token and the new key remain"
        );
        assert!(slots.contains_key(&key("0")));
    }
}
