//! Minting and revoking short-lived Vault/OpenBao tokens (vaultrs).
//!
//! A mint creates a child token with exactly the scope's policies and no
//! `default` policy, a TTL no longer than the scope's maximum and the session's
//! remaining life (`explicit_max_ttl` too, so it cannot be renewed past that),
//! and metadata naming the session. When a token role is configured the token
//! is created through it, so the broker's own Vault token can mint nothing
//! beyond the role's `allowed_policies`. Only the token's *accessor* is kept —
//! and only its SHA-256 goes into the ledger; the token itself is returned once
//! to the caller and never stored or logged.

use std::collections::HashMap;
use std::time::Duration;

use sha2::{Digest, Sha256};
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;

/// A minted token. `Debug` hides the token.
pub struct MintedToken {
    pub token: String,
    pub accessor: String,
    pub ttl: Duration,
    pub policies: Vec<String>,
}

impl std::fmt::Debug for MintedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintedToken")
            .field("token", &"<redacted>")
            .field("accessor_sha256", &accessor_hash(&self.accessor))
            .field("ttl", &self.ttl)
            .field("policies", &self.policies)
            .finish()
    }
}

/// SHA-256 of an accessor, as recorded in the ledger.
pub fn accessor_hash(accessor: &str) -> String {
    hex::encode(Sha256::digest(accessor.as_bytes()))
}

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("vault address {0:?} is not a URL")]
    BadAddress(String),
    #[error("vault client: {0}")]
    Client(String),
    #[error("vault refused: {0}")]
    Refused(String),
    #[error("vault is not reachable or not ready: {0}")]
    Unavailable(String),
    /// A token was made, with other policies than asked for.
    #[error("vault made a token with policies {got:?}, expected {want:?}")]
    WrongPolicies { got: Vec<String>, want: Vec<String> },
}

/// Keeps secrets out of messages: vaultrs errors can echo request bodies.
fn describe(e: ClientError) -> String {
    match e {
        ClientError::APIError { code, errors } => format!("HTTP {code}: {}", errors.join("; ")),
        ClientError::RestClientError { .. } => "connection failed".into(),
        other => {
            let s = other.to_string();
            s.chars().take(200).collect()
        }
    }
}

pub struct Vault {
    client: VaultClient,
    role: Option<String>,
    /// See [`crate::config::VaultConfig::parent_policy`].
    parent_policy: Option<String>,
    addr: String,
    http: reqwest::Client,
}

/// OpenBao's answer to a token creation (the parts custody reads).
#[derive(serde::Deserialize)]
struct CreateAnswer {
    auth: CreateAuth,
}

#[derive(serde::Deserialize)]
struct CreateAuth {
    client_token: String,
    /// Empty for a batch token: it has none.
    #[serde(default)]
    accessor: String,
    #[serde(default)]
    policies: Vec<String>,
    lease_duration: u64,
}

#[derive(serde::Deserialize)]
struct ErrorAnswer {
    #[serde(default)]
    errors: Vec<String>,
}

impl Vault {
    /// `token` is the broker's own token (from `token_file` or `VAULT_TOKEN`).
    pub fn new(addr: &str, token: &str, role: Option<String>) -> Result<Self, VaultError> {
        url::Url::parse(addr).map_err(|_| VaultError::BadAddress(addr.into()))?;
        let settings = VaultClientSettingsBuilder::default()
            .address(addr)
            .token(token)
            .timeout(Some(Duration::from_secs(10)))
            .build()
            .map_err(|e| VaultError::Client(e.to_string()))?;
        let client = VaultClient::new(settings).map_err(|e| VaultError::Client(describe(e)))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| VaultError::Client(e.to_string()))?;
        Ok(Self {
            client,
            role,
            parent_policy: None,
            addr: addr.trim_end_matches('/').to_string(),
            http,
        })
    }

    /// Mint each session's tokens under a parent token with this policy
    /// (see [`crate::config::VaultConfig::parent_policy`]); needs a role.
    pub fn with_parent_policy(mut self, policy: Option<String>) -> Result<Self, VaultError> {
        if policy.is_some() && self.role.is_none() {
            return Err(VaultError::Client(
                "parent tokens need a token role to mint through".into(),
            ));
        }
        self.parent_policy = policy;
        Ok(self)
    }

    /// Whether sessions' tokens are minted under per-session parents.
    pub fn uses_parents(&self) -> bool {
        self.parent_policy.is_some()
    }

    /// Checks that Vault is up, initialized and unsealed. vaultrs 0.8 cannot
    /// parse OpenBao's answers to `sys/status` or `sys/health`, so this reads
    /// the health endpoint directly: 200 means active and unsealed.
    pub async fn health(&self) -> Result<(), VaultError> {
        let r = self
            .http
            .get(format!("{}/v1/sys/health", self.addr))
            .send()
            .await
            .map_err(|e| {
                let mut msg = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg.push_str(": ");
                    msg.push_str(&s.to_string());
                    src = s.source();
                }
                VaultError::Unavailable(msg)
            })?;
        match r.status().as_u16() {
            200 => Ok(()),
            429 | 473 => Err(VaultError::Unavailable("standby node".into())),
            501 => Err(VaultError::Unavailable("not initialized".into())),
            503 => Err(VaultError::Unavailable("sealed".into())),
            s => Err(VaultError::Unavailable(format!("health answered HTTP {s}"))),
        }
    }

    /// Mints a token with exactly `policies`.
    pub async fn mint(
        &self,
        policies: &[String],
        ttl: Duration,
        meta: HashMap<String, String>,
        display_name: &str,
    ) -> Result<MintedToken, VaultError> {
        let ttl_s = format!("{}s", ttl.as_secs().max(1));
        let auth = match &self.role {
            Some(role) => {
                let mut req = vaultrs::api::token::requests::CreateRoleTokenRequest::builder();
                req.policies(policies.to_vec())
                    .no_default_policy(true)
                    .ttl(ttl_s.clone())
                    .explicit_max_ttl(ttl_s.clone())
                    .renewable(false)
                    .meta(meta)
                    .display_name(display_name);
                vaultrs::token::new_role(&self.client, role, Some(&mut req)).await
            }
            None => {
                let mut req = vaultrs::api::token::requests::CreateTokenRequest::builder();
                req.policies(policies.to_vec())
                    .no_default_policy(true)
                    .ttl(ttl_s.clone())
                    .explicit_max_ttl(ttl_s.clone())
                    .renewable(false)
                    .meta(meta)
                    .display_name(display_name);
                vaultrs::token::new(&self.client, Some(&mut req)).await
            }
        }
        .map_err(|e| VaultError::Refused(describe(e)))?;
        let mut got = auth.policies.clone();
        got.sort();
        let mut want = policies.to_vec();
        want.sort();
        if got != want {
            // Never hand out a token whose policies differ from the scope's.
            let _ = vaultrs::token::revoke_accessor(&self.client, &auth.accessor).await;
            return Err(VaultError::Refused(format!(
                "vault returned policies {got:?}, expected {want:?}; token revoked"
            )));
        }
        Ok(MintedToken {
            token: auth.client_token,
            accessor: auth.accessor,
            ttl: Duration::from_secs(auth.lease_duration),
            policies: auth.policies,
        })
    }

    /// Creates a session's parent token with the broker's token: only the
    /// parent policy (it can mint through the role and do nothing else), no
    /// `default` policy, not renewable, living as long as the session.
    pub async fn create_parent(
        &self,
        ttl: Duration,
        meta: HashMap<String, String>,
    ) -> Result<MintedToken, VaultError> {
        let policy = self
            .parent_policy
            .clone()
            .ok_or_else(|| VaultError::Client("no parent_policy configured".into()))?;
        self.mint(&[policy], ttl, meta, "custody-session").await
    }

    /// Mints a **batch** token as a child of `parent` (the session's parent
    /// token) through the role. Batch tokens are not stored by OpenBao and
    /// have no accessor: OpenBao refuses one as soon as its parent is
    /// revoked (it checks the parent at every use), so revoking the parent
    /// is one constant-time operation whatever the number of children,
    /// where a tree of service tokens is deleted token by token. They also
    /// cannot be revoked one by one — only with their parent, or by TTL.
    /// Same rules as [`Vault::mint`]: exactly `policies`, no `default`, not
    /// renewable. The returned [`MintedToken::accessor`] is empty.
    pub async fn mint_child(
        &self,
        parent: &str,
        policies: &[String],
        ttl: Duration,
        meta: HashMap<String, String>,
        display_name: &str,
    ) -> Result<MintedToken, VaultError> {
        let role = self
            .role
            .as_deref()
            .ok_or_else(|| VaultError::Client("parent tokens need a token role".into()))?;
        let ttl_s = format!("{}s", ttl.as_secs().max(1));
        let body = serde_json::json!({
            "policies": policies,
            "no_default_policy": true,
            // Batch tokens are never renewable; OpenBao refuses an
            // explicit_max_ttl for them.
            "ttl": ttl_s,
            "renewable": false,
            "type": "batch",
            "meta": meta,
            "display_name": display_name,
        });
        let answer = self
            .http
            .post(format!("{}/v1/auth/token/create/{role}", self.addr))
            .header("X-Vault-Token", parent)
            .json(&body)
            .send()
            .await
            .map_err(|_| VaultError::Unavailable("connection failed".into()))?;
        let status = answer.status();
        if !status.is_success() {
            let errors = answer
                .json::<ErrorAnswer>()
                .await
                .map(|e| e.errors.join("; "))
                .unwrap_or_default();
            return Err(VaultError::Refused(format!(
                "HTTP {}: {}",
                status.as_u16(),
                errors.chars().take(200).collect::<String>()
            )));
        }
        let auth = answer
            .json::<CreateAnswer>()
            .await
            .map_err(|e| VaultError::Client(format!("unreadable answer: {e}")))?
            .auth;
        let mut got = auth.policies.clone();
        got.sort();
        let mut want = policies.to_vec();
        want.sort();
        if got != want {
            // A batch token cannot be revoked alone; the caller revokes the
            // parent on this error.
            return Err(VaultError::WrongPolicies { got, want });
        }
        Ok(MintedToken {
            token: auth.client_token,
            accessor: auth.accessor,
            ttl: Duration::from_secs(auth.lease_duration),
            policies: auth.policies,
        })
    }

    /// Revokes a token by its accessor. A token that is already gone counts as
    /// revoked.
    pub async fn revoke_accessor(&self, accessor: &str) -> Result<(), VaultError> {
        match vaultrs::token::revoke_accessor(&self.client, accessor).await {
            Ok(()) => Ok(()),
            Err(ClientError::APIError { code: 400, errors })
                if errors.iter().any(|e| e.contains("invalid accessor")) =>
            {
                Ok(())
            }
            Err(e) => Err(VaultError::Refused(describe(e))),
        }
    }
}
