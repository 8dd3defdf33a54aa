//! The signed-request replay cache: every request nonce is remembered for as
//! long as its timestamp would still be accepted, and no longer.
//!
//! Memory is bounded by [`MAX_NONCES`]; a full cache refuses new requests
//! (the caller retries) rather than forget a nonce early, which would let a
//! captured request be replayed. Expired nonces leave by the second they
//! expire in, a bounded number per insert ([`EXPIRE_PER_INSERT`]), so no
//! request waits for a sweep over the whole cache.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// Most nonces held at once: about 48 MB of map and queue at the cap. At the
/// default 60 s clock skew that sustains ~16,000 signed requests a second,
/// far above what one broker serves; beyond it requests get 503 until
/// nonces expire.
pub const MAX_NONCES: usize = 1_000_000;
/// Expired nonces dropped per insert: at least one more than the insert
/// adds, so the cache drains whenever anything has expired, and a burst of
/// expiries is spread over the requests that follow.
const EXPIRE_PER_INSERT: usize = 8;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("this request's nonce was already used")]
    Replayed,
    #[error("too many signed requests in flight to remember their nonces (at most {MAX_NONCES}); retry in a few seconds")]
    Full,
}

/// Nonces and when each may be forgotten (unix ms).
#[derive(Default)]
pub struct ReplayCache {
    inner: Mutex<Nonces>,
}

#[derive(Default)]
struct Nonces {
    expiry: HashMap<[u8; 16], i64>,
    /// Nonces by the second after which they may be forgotten.
    by_second: BTreeMap<i64, Vec<[u8; 16]>>,
}

impl ReplayCache {
    /// Remembers `nonce` until `forget_at` (unix ms), or says why not.
    pub fn insert(&self, nonce: [u8; 16], forget_at: i64, now: i64) -> Result<(), ReplayError> {
        let mut n = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let n = &mut *n;
        let mut budget = EXPIRE_PER_INSERT;
        while budget > 0 {
            let Some(mut first) = n.by_second.first_entry() else {
                break;
            };
            if *first.key() * 1000 > now {
                break;
            }
            while budget > 0 {
                let Some(old) = first.get_mut().pop() else {
                    break;
                };
                budget -= 1;
                if n.expiry.get(&old).is_some_and(|t| *t <= now) {
                    n.expiry.remove(&old);
                }
            }
            if first.get().is_empty() {
                first.remove();
            }
        }
        if n.expiry.get(&nonce).is_some_and(|t| *t > now) {
            return Err(ReplayError::Replayed);
        }
        if n.expiry.len() >= MAX_NONCES {
            return Err(ReplayError::Full);
        }
        n.expiry.insert(nonce, forget_at);
        // Rounded up: a nonce leaves only once its whole second has passed.
        n.by_second
            .entry(forget_at.div_euclid(1000) + 1)
            .or_default()
            .push(nonce);
        Ok(())
    }

    /// How many nonces are held (tests, metrics).
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .expiry
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nonce(i: u32) -> [u8; 16] {
        let mut n = [0u8; 16];
        n[..4].copy_from_slice(&i.to_be_bytes());
        n
    }

    #[test]
    fn refuses_a_replay_until_it_may_be_forgotten() {
        let c = ReplayCache::default();
        c.insert(nonce(1), 1_000, 0).unwrap();
        assert_eq!(c.insert(nonce(1), 1_000, 500), Err(ReplayError::Replayed));
        // Past its expiry the timestamp check refuses it anyway; the cache
        // may forget it.
        c.insert(nonce(1), 3_000, 1_000).unwrap();
    }

    #[test]
    fn expired_nonces_leave_and_memory_stays_bounded() {
        let c = ReplayCache::default();
        // 100,000 requests, each remembered for 1 s, one every 0.1 ms: at
        // any time ~10,000 are live, and expiry by whole seconds keeps at
        // most one second's more.
        for i in 0..100_000u32 {
            let now = i as i64 / 10;
            c.insert(nonce(i), now + 1_000, now).unwrap();
        }
        assert!(c.len() <= 2 * 10_000 + 100, "{}", c.len());
    }
}
