//! Per-session parent tokens: with `[vault] parent_policy` set, every token a
//! session is handed is a batch-token child of one parent token this broker
//! process made for that session, so the kill switch is one revocation per
//! parent in OpenBao — constant time: OpenBao checks a batch token's parent
//! at every use — instead of one revocation per token, and a mint no longer
//! has to wait for its own accessor to be durable before the token may leave:
//! the parent's accessor, recorded once before the session's first token,
//! already reaches it.
//!
//! The parent token is a secret that never leaves this process's memory: it is
//! never stored, logged or sent anywhere but to OpenBao. A broker that
//! restarts makes a new parent at the session's next mint; the old one's
//! accessor stays recorded, so the kill switch still revokes its tree.
//! Parents are recorded in the accessor table as [`AccessorRecord::Parent`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use custody_identity::Did;

/// What a recorded accessor stands for, as the storage's accessor table
/// keeps it (a string: accessors are alphanumeric, so the prefix cannot
/// collide with one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccessorRecord {
    /// One token handed out.
    Token(String),
    /// A session's parent token: revoking it revokes every child.
    Parent(String),
}

const PARENT_PREFIX: &str = "parent:";

impl AccessorRecord {
    pub fn decode(stored: &str) -> Self {
        match stored.strip_prefix(PARENT_PREFIX) {
            Some(a) => Self::Parent(a.to_string()),
            None => Self::Token(stored.to_string()),
        }
    }

    pub fn encode(&self) -> String {
        match self {
            Self::Token(a) => a.clone(),
            Self::Parent(a) => format!("{PARENT_PREFIX}{a}"),
        }
    }

    /// The OpenBao accessor.
    pub fn accessor(&self) -> &str {
        match self {
            Self::Token(a) | Self::Parent(a) => a,
        }
    }
}

/// A session's parent token, held by this process only.
pub struct Parent {
    token: String,
    pub accessor: String,
    /// SHA-256 of the accessor, as the ledger records it.
    pub accessor_sha256: String,
    pub expires_unix: i64,
    /// Children this process minted under it, for the kill switch's record.
    children: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Parent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parent")
            .field("token", &"<redacted>")
            .field("accessor_sha256", &self.accessor_sha256)
            .field("expires_unix", &self.expires_unix)
            .finish()
    }
}

impl Parent {
    pub fn new(token: String, accessor: String, expires_unix: i64) -> Self {
        Self {
            token,
            accessor_sha256: crate::vault::accessor_hash(&accessor),
            accessor,
            expires_unix,
            children: Default::default(),
        }
    }

    /// The parent token, to mint children with.
    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn add_child(&self) {
        self.children
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn children(&self) -> u64 {
        self.children.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The parents this process holds, by session.
#[derive(Default)]
pub struct Parents {
    map: Mutex<HashMap<Did, Arc<Parent>>>,
    /// Held while a parent is made, so concurrent first mints of a session
    /// make one.
    pub(crate) creating: tokio::sync::Mutex<()>,
    /// Map size after the last sweep of expired parents.
    swept_at: Mutex<usize>,
}

impl Parents {
    /// The session's live parent, if this process has one.
    pub fn get(&self, session: &Did, now_unix: i64) -> Option<Arc<Parent>> {
        let map = self.map.lock().ok()?;
        map.get(session)
            .filter(|p| p.expires_unix > now_unix)
            .cloned()
    }

    /// Keeps a new parent; expired ones are swept when the map has doubled
    /// since the last sweep, so the cost stays constant per insert.
    pub fn insert(&self, session: Did, parent: Arc<Parent>, now_unix: i64) {
        let Ok(mut map) = self.map.lock() else { return };
        map.insert(session, parent);
        if let Ok(mut swept) = self.swept_at.lock() {
            if map.len() > (*swept).max(64) * 2 {
                map.retain(|_, p| p.expires_unix > now_unix);
                *swept = map.len();
            }
        }
    }

    /// Forgets the parents of `sessions` (they have just been revoked, or
    /// are about to be) and returns them, with how many children they had.
    pub fn take(&self, sessions: &[Did]) -> Vec<Arc<Parent>> {
        let Ok(mut map) = self.map.lock() else {
            return Vec::new();
        };
        sessions.iter().filter_map(|d| map.remove(d)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_plain_accessors_stay_tokens() {
        for r in [
            AccessorRecord::Token("hvs.ABCdef012".into()),
            AccessorRecord::Parent("ABCdef012".into()),
        ] {
            assert_eq!(AccessorRecord::decode(&r.encode()), r);
        }
        // Records written before parents existed are plain accessors.
        assert_eq!(
            AccessorRecord::decode("Xy12"),
            AccessorRecord::Token("Xy12".into())
        );
    }

    #[test]
    fn expired_parents_are_not_used_and_are_swept() {
        let ps = Parents::default();
        let did = |i: u8| custody_identity::KeyPair::from_seed(&[i; 32]).did();
        ps.insert(
            did(1),
            Arc::new(Parent::new("t".into(), "a".into(), 100)),
            0,
        );
        assert!(ps.get(&did(1), 50).is_some());
        assert!(ps.get(&did(1), 100).is_none());
        for i in 2..=200u8 {
            ps.insert(
                did(i),
                Arc::new(Parent::new("t".into(), "a".into(), 10)),
                1000,
            );
        }
        let left = ps.map.lock().unwrap().len();
        assert!(left < 199, "expired parents were never swept ({left} kept)");
        ps.insert(
            did(1),
            Arc::new(Parent::new("t".into(), "b".into(), 5000)),
            1000,
        );
        let taken = ps.take(&[did(1)]);
        assert_eq!(taken.len(), 1);
        assert!(
            ps.get(&did(1), 1000).is_none(),
            "a taken parent is forgotten"
        );
    }
}
