//! The session file an agent runs with: its session key (secret), its DID, the
//! broker URL and the certificate. Written 0600, refused if others can read it.
//!
//! ```json
//! {"agent":"claude-code","broker":"http://127.0.0.1:7450","ca_pem":"…","certificate_pem":"…",
//!  "context":"chat","delegator":"did:key:…","did":"did:key:…","expires_at":"…Z",
//!  "ingest_token":"…","scopes":["ci-read"],"seed":"<base64url>","session_id":"urn:uuid:…",
//!  "type":"custody-session","version":1}
//! ```

use std::io::{Read, Write};
use std::path::Path;

use anyhow::{bail, Context as _};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use custody_identity::{Did, KeyPair};
use serde::{Deserialize, Serialize};
use zeroize_shim::Secret;

pub const SESSION_FILE_TYPE: &str = "custody-session";
pub const SESSION_FILE_VERSION: u64 = 1;
const MAX_SESSION_FILE_BYTES: u64 = 64 * 1024;

mod zeroize_shim {
    /// A string that is never printed by `Debug`.
    #[derive(Clone, serde::Serialize, serde::Deserialize)]
    #[serde(transparent)]
    pub struct Secret(pub String);
    impl std::fmt::Debug for Secret {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("<secret>")
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionFile {
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u64,
    pub broker: String,
    pub did: Did,
    seed: Secret,
    pub session_id: String,
    pub delegator: Did,
    pub agent: String,
    pub context: String,
    pub scopes: Vec<String>,
    pub expires_at: String,
    pub certificate_pem: String,
    pub ca_pem: String,
    ingest_token: Secret,
}

impl SessionFile {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        broker: &str,
        key: &KeyPair,
        session_id: String,
        delegator: Did,
        agent: String,
        context: String,
        scopes: Vec<String>,
        expires_at: String,
        certificate_pem: String,
        ca_pem: String,
        ingest_token: String,
    ) -> Self {
        Self {
            kind: SESSION_FILE_TYPE.into(),
            version: SESSION_FILE_VERSION,
            broker: broker.into(),
            did: key.did(),
            seed: Secret(URL_SAFE_NO_PAD.encode(*key.seed())),
            session_id,
            delegator,
            agent,
            context,
            scopes,
            expires_at,
            certificate_pem,
            ca_pem,
            ingest_token: Secret(ingest_token),
        }
    }

    pub fn key(&self) -> anyhow::Result<KeyPair> {
        let seed = URL_SAFE_NO_PAD
            .decode(&self.seed.0)
            .ok()
            .and_then(|s| <[u8; 32]>::try_from(s.as_slice()).ok())
            .context("session file: seed is not 32 bytes of base64url")?;
        let key = KeyPair::from_seed(&seed);
        if key.did() != self.did {
            bail!("session file: the DID does not match the key");
        }
        Ok(key)
    }

    pub fn ingest_token(&self) -> &str {
        &self.ingest_token.0
    }

    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(path).with_context(|| {
            format!("{}: cannot create (it must not exist yet)", path.display())
        })?;
        let text = serde_json::to_string_pretty(self)?;
        f.write_all(text.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        Ok(())
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let f = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = f.metadata()?.permissions().mode();
            if mode & 0o077 != 0 {
                bail!(
                    "{}: permissions {:04o} are too open for a session file; run chmod 600 {}",
                    path.display(),
                    mode & 0o7777,
                    path.display()
                );
            }
        }
        let mut buf = Vec::new();
        f.take(MAX_SESSION_FILE_BYTES + 1).read_to_end(&mut buf)?;
        if buf.len() as u64 > MAX_SESSION_FILE_BYTES {
            bail!("{}: too large to be a session file", path.display());
        }
        let s: SessionFile = serde_json::from_slice(&buf)
            .with_context(|| format!("{}: not a custody session file", path.display()))?;
        if s.kind != SESSION_FILE_TYPE || s.version != SESSION_FILE_VERSION {
            bail!(
                "{}: not a custody session file version {SESSION_FILE_VERSION}",
                path.display()
            );
        }
        s.key()?;
        Ok(s)
    }
}
