//! `custody.toml`: the broker's configuration.
//!
//! ```toml
//! listen = "127.0.0.1:7450"
//! data = "custody-data"
//! [vault]
//! addr = "http://127.0.0.1:8200"
//! token_file = "vault-token"            # or VAULT_TOKEN
//! [trust]
//! admins = ["did:key:z6Mk…"]            # may revoke and export
//! delegators = ["did:key:z6Mk…"]        # humans / CI identities that may start sessions
//! approvers = ["did:key:z6Mk…"]         # people who may approve any session's held actions
//! reviewers = ["did:key:z6Mk…"]         # automated reviewers (auto_review approvals)
//! auditors = ["did:key:z6Mk…"]          # may read the entry feed (GET /v1/entries), nothing else
//! [scopes.ci-read]
//! policies = ["ci-read"]
//! max_ttl = "15m"
//! contexts = ["ci", "chat"]
//! [policy]
//! file = "policy.cedar"                 # optional; the shipped default otherwise
//! [witnesses]
//! keys = ["did:key:z6Mk…"]               # whose checkpoint cosignatures are kept
//! [ledger]
//! backend = "postgres"                  # default "embedded" (DATA/ledger + DATA/broker)
//! url_file = "pg-url"                   # or url = "postgres://…" (may hold a password)
//! ```
//!
//! Parsing validates everything up front (DIDs, scope names, durations,
//! contexts) so that a broker never starts with a configuration it would
//! misread later. Unknown keys are errors: a typo must not silently weaken policy.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use custody_identity::Did;
use custody_ledger::store::{DEFAULT_KEEP_RECENT, MAX_KEEP_RECENT};
use custody_ledger::{Context, Scope};
use serde::Deserialize;

/// Longest TTL a scope may grant: credentials are meant to be short-lived.
pub const MAX_SCOPE_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    data: Option<PathBuf>,
    vault: Option<RawVault>,
    #[serde(default)]
    trust: RawTrust,
    #[serde(default)]
    scopes: BTreeMap<String, RawScope>,
    #[serde(default)]
    checkpoint: Option<RawCheckpoint>,
    #[serde(default)]
    limits: Option<RawLimits>,
    #[serde(default)]
    tls: Option<RawTls>,
    #[serde(default)]
    policy: Option<RawPolicy>,
    #[serde(default)]
    witnesses: Option<RawWitnesses>,
    #[serde(default)]
    ledger: Option<RawLedger>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLedger {
    backend: Option<String>,
    url: Option<String>,
    url_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWitnesses {
    /// did:key or signed-note verifier keys of the witnesses whose
    /// cosignatures the broker accepts (`POST /v1/checkpoint/cosignature`).
    keys: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    /// A Cedar policy set replacing the shipped default.
    file: Option<PathBuf>,
    /// `false` turns the pre-tool policy off (every call allowed, still recorded).
    enabled: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    /// `true` / `false`; absent means HTTPS exactly when listening beyond loopback.
    enabled: Option<bool>,
    /// DNS names and IP addresses for the broker's certificate.
    #[serde(default)]
    names: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVault {
    addr: String,
    token_file: Option<PathBuf>,
    /// Token role to mint through (recommended in production).
    role: Option<String>,
    /// Policy of the per-session parent tokens (needs `role`); see
    /// [`VaultConfig::parent_policy`].
    parent_policy: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrust {
    #[serde(default)]
    admins: Vec<String>,
    #[serde(default)]
    delegators: Vec<String>,
    /// People who may approve any session's held actions.
    #[serde(default)]
    approvers: Vec<String>,
    /// Automated reviewers (service DIDs) whose approvals are `auto_review`.
    #[serde(default)]
    reviewers: Vec<String>,
    /// Read-only: the entry feed (`GET /v1/entries`) and nothing else. Not
    /// written into the ledger's trust roots, so the rules give them no role
    /// to append with.
    #[serde(default)]
    auditors: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScope {
    policies: Vec<String>,
    max_ttl: String,
    contexts: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheckpoint {
    every_entries: Option<u64>,
    every: Option<String>,
    keep_recent: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_body: Option<usize>,
    clock_skew: Option<String>,
    requests_per_second: Option<u32>,
    request_timeout: Option<String>,
}

/// A scope: what an agent may ask for, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScopeConfig {
    pub name: Scope,
    pub policies: Vec<String>,
    pub max_ttl: Duration,
    pub contexts: Vec<Context>,
}

#[derive(Clone, Debug)]
pub struct VaultConfig {
    pub addr: String,
    pub token_file: Option<PathBuf>,
    pub role: Option<String>,
    /// When set, each session's tokens are children of one parent token per
    /// session and broker process, created through `role` with only this
    /// policy (which must allow `update` on `auth/token/create/<role>`); the
    /// kill switch revokes the parents, each a tree. Unset: every token is
    /// recorded and revoked on its own.
    pub parent_policy: Option<String>,
}

/// When the broker signs checkpoints on its own, and how many it keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointPolicy {
    pub every_entries: u64,
    pub every: Duration,
    /// The newest this many are kept; of older days, the last and the last
    /// cosigned one of each (docs/FORMAT.md §6).
    pub keep_recent: usize,
}

/// Limits on what clients may send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_body: usize,
    pub clock_skew: Duration,
    pub requests_per_second: u32,
    /// How long a client may take to send a request's headers, and then
    /// again its body; a slower one is cut off (see `server::serve`).
    pub request_timeout: Duration,
}

/// Default of `limits.request_timeout`: time enough to send a `max_body`
/// body over a slow link, short enough that a client trickling bytes
/// (slow-loris) cannot hold connections for long.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body: 1 << 20,
            clock_skew: Duration::from_secs(60),
            requests_per_second: 2000,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// HTTPS for the listener, with a certificate from the broker's own CA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    pub enabled: bool,
    pub names: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub data: PathBuf,
    pub vault: Option<VaultConfig>,
    pub admins: Vec<Did>,
    pub delegators: Vec<Did>,
    /// `[trust] approvers`: people who may approve any session's held actions.
    pub approvers: Vec<Did>,
    /// `[trust] reviewers`: automated reviewers (service identities).
    pub reviewers: Vec<Did>,
    /// May read the entry feed; hold no role in the ledger.
    pub auditors: Vec<Did>,
    pub scopes: BTreeMap<String, ScopeConfig>,
    pub checkpoint: CheckpointPolicy,
    pub limits: Limits,
    pub tls: TlsConfig,
    pub policy: PolicyConfig,
    /// Witnesses whose cosignatures are accepted and kept with the checkpoints.
    pub witnesses: Vec<custody_ledger::witness::WitnessKey>,
    /// Where the ledger and the broker's records live.
    pub backend: Backend,
}

/// Where the ledger and every record of the broker live (`[ledger]`).
#[derive(Clone, PartialEq, Eq)]
pub enum Backend {
    /// The segment log and sled under `data` (one broker).
    Embedded,
    /// A PostgreSQL database shared by any number of brokers.
    Postgres(PgUrl),
}

/// A PostgreSQL connection string. It may hold a password, so it has no
/// `Display` and its `Debug` shows only where it points.
#[derive(Clone, PartialEq, Eq)]
pub struct PgUrl(String);

impl PgUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The secret text, for the driver only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`: what logs and errors
    /// may show.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl std::fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgUrl({})", self.redacted())
    }
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Embedded => write!(f, "Embedded"),
            Backend::Postgres(u) => write!(f, "Postgres({u:?})"),
        }
    }
}

/// Replaces the password of a `postgres://user:password@host/…` URL, and
/// any `password=…` key of a key-value connection string, with `***`.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme_end) = out.find("://") {
        let rest = &out[scheme_end + 3..];
        if let Some(at) = rest.rfind('@') {
            let userinfo = &rest[..at];
            if let Some(colon) = userinfo.find(':') {
                let start = scheme_end + 3 + colon + 1;
                let end = scheme_end + 3 + at;
                out.replace_range(start..end, "***");
            }
        }
    }
    // `password=…` in a query string or a key-value string, up to the next
    // separator.
    let lower = out.to_ascii_lowercase();
    if let Some(p) = lower.find("password=") {
        let start = p + "password=".len();
        let end = out[start..]
            .find(['&', ' '])
            .map(|e| start + e)
            .unwrap_or(out.len());
        out.replace_range(start..end, "***");
    }
    out
}

/// The pre-tool policy's source.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyConfig {
    pub enabled: bool,
    /// `None`: the shipped default set.
    pub file: Option<PathBuf>,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7450";
pub const DEFAULT_DATA: &str = "custody-data";

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates; `path` is only used in messages and to resolve
    /// relative paths against the file's directory.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };

        let listen_text = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen: SocketAddr = listen_text
            .parse()
            .map_err(|_| invalid(format!("listen = {listen_text:?} is not an address:port")))?;
        let dids = |what: &str, list: &[String]| -> Result<Vec<Did>, ConfigError> {
            list.iter()
                .map(|d| Did::parse(d).map_err(|e| invalid(format!("trust.{what}: {e}"))))
                .collect()
        };
        let admins = dids("admins", &raw.trust.admins)?;
        let delegators = dids("delegators", &raw.trust.delegators)?;
        let approvers = dids("approvers", &raw.trust.approvers)?;
        let reviewers = dids("reviewers", &raw.trust.reviewers)?;
        let auditors = dids("auditors", &raw.trust.auditors)?;

        let mut scopes = BTreeMap::new();
        for (name, s) in raw.scopes {
            let scope =
                Scope::new(name.clone()).map_err(|e| invalid(format!("scopes.{name}: {e}")))?;
            let max_ttl = parse_duration(&s.max_ttl)
                .map_err(|e| invalid(format!("scopes.{name}.max_ttl: {e}")))?;
            if max_ttl.is_zero() || max_ttl > MAX_SCOPE_TTL {
                return Err(invalid(format!(
                    "scopes.{name}.max_ttl must be between 1s and {}h",
                    MAX_SCOPE_TTL.as_secs() / 3600
                )));
            }
            if s.policies.is_empty() {
                return Err(invalid(format!("scopes.{name}.policies is empty")));
            }
            for p in &s.policies {
                if p.is_empty()
                    || p == "root"
                    || !p
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                {
                    return Err(invalid(format!(
                        "scopes.{name}.policies: {p:?} is not an allowed policy name"
                    )));
                }
            }
            let contexts = s
                .contexts
                .iter()
                .map(|c| {
                    Context::new(c.clone())
                        .map_err(|e| invalid(format!("scopes.{name}.contexts: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if contexts.is_empty() {
                return Err(invalid(format!("scopes.{name}.contexts is empty")));
            }
            scopes.insert(
                name,
                ScopeConfig {
                    name: scope,
                    policies: s.policies,
                    max_ttl,
                    contexts,
                },
            );
        }

        let checkpoint = match raw.checkpoint {
            None => CheckpointPolicy {
                every_entries: 1000,
                every: Duration::from_secs(60),
                keep_recent: DEFAULT_KEEP_RECENT,
            },
            Some(c) => CheckpointPolicy {
                every_entries: c.every_entries.unwrap_or(1000).max(1),
                every: match c.every {
                    Some(t) => {
                        parse_duration(&t).map_err(|e| invalid(format!("checkpoint.every: {e}")))?
                    }
                    None => Duration::from_secs(60),
                },
                keep_recent: match c.keep_recent {
                    Some(n) if n > MAX_KEEP_RECENT => {
                        return Err(invalid(format!(
                            "checkpoint.keep_recent must be at most {MAX_KEEP_RECENT}: an export \
                             lists every kept checkpoint in its manifest, which is capped"
                        )))
                    }
                    Some(n) => n,
                    None => DEFAULT_KEEP_RECENT,
                },
            },
        };
        let mut limits = Limits::default();
        // (TLS is resolved below, once `listen` is known.)
        if let Some(l) = raw.limits {
            if let Some(b) = l.max_body {
                if !(1024..=64 << 20).contains(&b) {
                    return Err(invalid("limits.max_body must be 1 KiB..64 MiB".into()));
                }
                limits.max_body = b;
            }
            if let Some(s) = l.clock_skew {
                limits.clock_skew =
                    parse_duration(&s).map_err(|e| invalid(format!("limits.clock_skew: {e}")))?;
            }
            if let Some(r) = l.requests_per_second {
                limits.requests_per_second = r.max(1);
            }
            if let Some(t) = l.request_timeout {
                limits.request_timeout = parse_duration(&t)
                    .map_err(|e| invalid(format!("limits.request_timeout: {e}")))?;
                if limits.request_timeout.is_zero() {
                    return Err(invalid("limits.request_timeout must not be 0".into()));
                }
            }
        }

        let policy = match raw.policy {
            None => PolicyConfig {
                enabled: true,
                file: None,
            },
            Some(p) => PolicyConfig {
                enabled: p.enabled.unwrap_or(true),
                file: p.file.map(resolve),
            },
        };

        let witnesses = raw
            .witnesses
            .map(|w| w.keys)
            .unwrap_or_default()
            .iter()
            .map(|k| {
                custody_ledger::witness::WitnessKey::parse(k)
                    .map_err(|e| invalid(format!("witnesses.keys: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;

        let backend = match raw.ledger {
            None => Backend::Embedded,
            Some(l) => match l.backend.as_deref().unwrap_or("embedded") {
                "embedded" => {
                    if l.url.is_some() || l.url_file.is_some() {
                        return Err(invalid(
                            "ledger.url and ledger.url_file are for backend = \"postgres\"".into(),
                        ));
                    }
                    Backend::Embedded
                }
                "postgres" => {
                    let url = match (l.url, l.url_file) {
                        (Some(u), None) => u,
                        (None, Some(f)) => {
                            let f = resolve(f);
                            std::fs::read_to_string(&f)
                                .map_err(|e| {
                                    invalid(format!("ledger.url_file {}: {e}", f.display()))
                                })?
                                .trim()
                                .to_string()
                        }
                        (Some(_), Some(_)) => {
                            return Err(invalid("ledger: give url or url_file, not both".into()))
                        }
                        (None, None) => {
                            return Err(invalid(
                                "ledger: backend = \"postgres\" needs url or url_file".into(),
                            ))
                        }
                    };
                    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                        // Never echo the text: it may hold a password.
                        return Err(invalid(
                            "ledger.url must be a postgres:// or postgresql:// URL".into(),
                        ));
                    }
                    Backend::Postgres(PgUrl::new(url))
                }
                other => {
                    return Err(invalid(format!(
                        "ledger.backend = {other:?}: expected \"embedded\" or \"postgres\""
                    )))
                }
            },
        };

        let tls = match raw.tls {
            None => TlsConfig {
                enabled: !listen.ip().is_loopback(),
                names: Vec::new(),
            },
            Some(t) => TlsConfig {
                enabled: t.enabled.unwrap_or(!listen.ip().is_loopback()),
                names: t.names,
            },
        };
        Ok(Self {
            listen,
            backend,
            tls,
            policy,
            witnesses,
            data: resolve(raw.data.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA))),
            vault: match raw.vault {
                None => None,
                Some(v) => {
                    if v.parent_policy.is_some() && v.role.is_none() {
                        return Err(invalid(
                            "[vault] parent_policy needs role: the children of a parent token are minted through the token role".into(),
                        ));
                    }
                    Some(VaultConfig {
                        addr: v.addr,
                        token_file: v.token_file.map(resolve),
                        role: v.role,
                        parent_policy: v.parent_policy,
                    })
                }
            },
            admins,
            delegators,
            approvers,
            reviewers,
            auditors,
            scopes,
            checkpoint,
            limits,
        })
    }

    pub fn scope(&self, name: &str) -> Option<&ScopeConfig> {
        self.scopes.get(name)
    }
}

/// Parses durations like `15m`, `1h30m`, `90s` (humantime).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DID: &str = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/custody/custody.toml"))
    }

    #[test]
    fn full_example() {
        let c = parse(&format!(
            r#"
listen = "127.0.0.1:7450"
data = "custody-data"
[vault]
addr = "http://127.0.0.1:8200"
token_file = "vault-token"
[trust]
admins = ["{DID}"]
delegators = ["{DID}"]
[scopes.ci-read]
policies = ["ci-read"]
max_ttl = "15m"
contexts = ["ci", "chat"]
"#
        ))
        .unwrap();
        assert_eq!(c.data, PathBuf::from("/etc/custody/custody-data"));
        let s = c.scope("ci-read").unwrap();
        assert_eq!(s.max_ttl, Duration::from_secs(900));
        assert_eq!(s.contexts.len(), 2);
        assert_eq!(c.admins.len(), 1);
        assert_eq!(c.limits.request_timeout, DEFAULT_REQUEST_TIMEOUT);
        let c = parse("[limits]\nrequest_timeout = \"5s\"").unwrap();
        assert_eq!(c.limits.request_timeout, Duration::from_secs(5));
        assert_eq!(c.checkpoint.keep_recent, DEFAULT_KEEP_RECENT);
        let c = parse("[checkpoint]\nkeep_recent = 0").unwrap();
        assert_eq!(c.checkpoint.keep_recent, 0);
        assert!(c.auditors.is_empty());
        let c = parse(&format!("[trust]\nauditors = [\"{DID}\"]")).unwrap();
        assert_eq!(c.auditors.len(), 1);
        assert!(c.admins.is_empty() && c.delegators.is_empty());
    }

    #[test]
    fn ledger_backend() {
        assert_eq!(parse("").unwrap().backend, Backend::Embedded);
        let c = parse(
            "[ledger]\nbackend = \"postgres\"\nurl = \"postgres://custody:s3cret@db/custody\"",
        )
        .unwrap();
        let Backend::Postgres(url) = &c.backend else {
            panic!("postgres expected")
        };
        assert_eq!(url.expose(), "postgres://custody:s3cret@db/custody");
        assert_eq!(url.redacted(), "postgres://custody:***@db/custody");
        assert!(!format!("{:?}", c.backend).contains("s3cret"));
        assert_eq!(
            redact_url("postgresql://h/db?user=u&password=p4ss&sslmode=require"),
            "postgresql://h/db?user=u&password=***&sslmode=require"
        );
        for bad in [
            "[ledger]\nbackend = \"postgres\"",
            "[ledger]\nbackend = \"mysql\"",
            "[ledger]\nurl = \"postgres://x\"",
            "[ledger]\nbackend = \"postgres\"\nurl = \"mysql://u:topsecret@h\"",
            "[ledger]\nbackend = \"postgres\"\nurl_file = \"/nonexistent/pg-url\"",
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(!e.contains("topsecret"), "{e}");
        }
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "listen = 7",
            "bogus = 1",
            "[trust]\nadmins = [\"did:web:x\"]",
            "[trust]\nauditors = [\"did:web:x\"]",
            "[trust]\nauditors = \"did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp\"",
            "[trust]\nauditor = []",
            "[scopes.x]\npolicies=[\"a\"]\nmax_ttl=\"forever\"\ncontexts=[\"ci\"]",
            "[scopes.x]\npolicies=[\"root\"]\nmax_ttl=\"1m\"\ncontexts=[\"ci\"]",
            "[scopes.x]\npolicies=[]\nmax_ttl=\"1m\"\ncontexts=[\"ci\"]",
            "[scopes.x]\npolicies=[\"a\"]\nmax_ttl=\"48h\"\ncontexts=[\"ci\"]",
            "[scopes.X]\npolicies=[\"a\"]\nmax_ttl=\"1m\"\ncontexts=[\"ci\"]",
            "[limits]\nrequest_timeout = \"0s\"",
            "[limits]\nrequest_timeout = \"soon\"",
            "[checkpoint]\nkeep_recent = 3001",
            "[checkpoint]\nkeep_recent = -1",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.to_string().contains("custody.toml"), "{e}");
        }
    }
}
