//! Per-caller request budgets, in one-second windows, with bounded memory.
//!
//! Keys cost nothing, so a DID the ledger does not know (not its key, an
//! admin, a delegator or a started session) gets no budget of its own: all
//! such callers share [`STRANGER_REQUESTS_PER_SECOND`]. Every identity the
//! ledger knows has `limits.requests_per_second` to itself. The window's
//! table of callers is capped at [`MAX_TRACKED_CALLERS`], and is replaced,
//! not swept, when the second turns (the old one is dropped outside the
//! lock), so a flood of fresh DIDs can neither grow memory nor crowd out the
//! sessions the broker serves.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use custody_identity::Did;

/// Requests a second from all identities the ledger does not know, together.
/// Their requests can only be refused (and recorded within a budget of their
/// own), so they need little; what matters is that they cannot starve the
/// known callers.
pub const STRANGER_REQUESTS_PER_SECOND: u32 = 200;
/// Distinct known callers counted in one window (~5 MB at the cap). Every
/// one is an admin, a delegator or a live session of this ledger; past the
/// cap, a caller not yet seen this second is refused until the next.
pub const MAX_TRACKED_CALLERS: usize = 100_000;
const WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    #[error("more than {0} requests per second from {1}")]
    Caller(u32, String),
    #[error("more than {STRANGER_REQUESTS_PER_SECOND} requests per second from identities this ledger does not know")]
    Strangers,
    #[error("more than {MAX_TRACKED_CALLERS} distinct callers this second")]
    TooManyCallers,
}

pub struct RateLimiter {
    per_caller: u32,
    inner: Mutex<Window>,
}

struct Window {
    started: Instant,
    /// Requests this window per known caller, by public key.
    callers: HashMap<[u8; 32], u32>,
    strangers: u32,
}

impl RateLimiter {
    pub fn new(per_caller: u32) -> Self {
        Self {
            per_caller,
            inner: Mutex::new(Window {
                started: Instant::now(),
                callers: HashMap::new(),
                strangers: 0,
            }),
        }
    }

    /// Counts one request by `did`; `known` says whether the ledger names it
    /// (asked only when `did` has not been counted this window yet).
    pub fn check(&self, did: &Did, known: impl FnOnce() -> bool) -> Result<(), RateError> {
        let key = did.public_key().to_bytes();
        let stale;
        {
            let mut w = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            stale = w.roll();
            if let Some(n) = w.callers.get_mut(&key) {
                *n += 1;
                return if *n > self.per_caller {
                    Err(RateError::Caller(self.per_caller, did.to_string()))
                } else {
                    Ok(())
                };
            }
        }
        drop(stale);
        // Not seen this window: ask the ledger without holding the lock.
        let known = known();
        let mut w = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let stale = w.roll();
        let r = if !known {
            w.strangers += 1;
            if w.strangers > STRANGER_REQUESTS_PER_SECOND {
                Err(RateError::Strangers)
            } else {
                Ok(())
            }
        } else if w.callers.len() >= MAX_TRACKED_CALLERS && !w.callers.contains_key(&key) {
            Err(RateError::TooManyCallers)
        } else {
            let n = w.callers.entry(key).or_insert(0);
            *n += 1;
            if *n > self.per_caller {
                Err(RateError::Caller(self.per_caller, did.to_string()))
            } else {
                Ok(())
            }
        };
        drop(w);
        drop(stale);
        r
    }

    /// Callers counted in the current window (tests, metrics).
    pub fn tracked(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .callers
            .len()
    }
}

impl Window {
    /// Starts a new window if the second has turned; returns the old table
    /// for the caller to drop outside the lock.
    fn roll(&mut self) -> Option<HashMap<[u8; 32], u32>> {
        if self.started.elapsed() < WINDOW {
            return None;
        }
        self.started = Instant::now();
        self.strangers = 0;
        Some(std::mem::take(&mut self.callers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use custody_identity::KeyPair;

    #[test]
    fn strangers_share_one_budget_and_known_callers_keep_theirs() {
        let r = RateLimiter::new(5);
        let known = KeyPair::generate().did();
        let mut refused = 0;
        for _ in 0..(STRANGER_REQUESTS_PER_SECOND + 50) {
            if r.check(&KeyPair::generate().did(), || false).is_err() {
                refused += 1;
            }
        }
        assert_eq!(refused, 50);
        assert_eq!(r.tracked(), 0, "strangers are not tracked one by one");
        for _ in 0..5 {
            r.check(&known, || true).unwrap();
        }
        assert!(matches!(
            r.check(&known, || true),
            Err(RateError::Caller(5, _))
        ));
    }
}
