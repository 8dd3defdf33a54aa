//! Key files: a secret key on disk, readable by its owner only.
//!
//! ```json
//! {"did":"did:key:z6Mk…","seed":"<unpadded base64url of the 32-byte seed>","type":"custody-key","version":1}
//! ```
//!
//! Written with mode 0600 from creation (never widened afterwards), refusing to
//! overwrite; read only if no one else can read or write it — like ssh, a key
//! others could read is treated as already leaked.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{Did, IdentityError, KeyPair};

pub const KEY_FILE_TYPE: &str = "custody-key";
pub const KEY_FILE_VERSION: u64 = 1;
/// A key file is ~150 bytes; refuse to read anything much larger.
pub const MAX_KEY_FILE_BYTES: u64 = 4096;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFileJson {
    #[serde(rename = "type")]
    kind: String,
    version: u64,
    did: String,
    seed: Zeroizing<String>,
}

fn err(path: &Path, reason: impl Into<String>) -> IdentityError {
    IdentityError::KeyFile {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

impl KeyPair {
    /// Writes the key to a new file with mode 0600 and syncs it.
    pub fn save(&self, path: &Path) -> Result<(), IdentityError> {
        let json = KeyFileJson {
            kind: KEY_FILE_TYPE.into(),
            version: KEY_FILE_VERSION,
            did: self.did().to_string(),
            seed: Zeroizing::new(URL_SAFE_NO_PAD.encode(*self.seed())),
        };
        let mut text =
            Zeroizing::new(serde_json::to_string(&json).map_err(|e| err(path, e.to_string()))?);
        text.push('\n');
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                err(path, "already exists; refusing to overwrite a key")
            } else {
                err(path, e.to_string())
            }
        })?;
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| err(path, e.to_string()))
    }

    /// Reads a key file written by [`save`](Self::save).
    pub fn load(path: &Path) -> Result<KeyPair, IdentityError> {
        let f = std::fs::File::open(path).map_err(|e| err(path, e.to_string()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = f
                .metadata()
                .map_err(|e| err(path, e.to_string()))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(err(
                    path,
                    format!(
                        "permissions {:04o} are too open; run chmod 600 {}",
                        mode & 0o7777,
                        path.display()
                    ),
                ));
            }
        }
        let mut buf = Zeroizing::new(Vec::new());
        f.take(MAX_KEY_FILE_BYTES + 1)
            .read_to_end(&mut buf)
            .map_err(|e| err(path, e.to_string()))?;
        if buf.len() as u64 > MAX_KEY_FILE_BYTES {
            return Err(err(path, "too large to be a key file"));
        }
        // serde_json's messages quote only positions and expectations, never
        // values, so they cannot leak the seed.
        let json: KeyFileJson = serde_json::from_slice(&buf)
            .map_err(|e| err(path, format!("not a custody key file ({e})")))?;
        if json.kind != KEY_FILE_TYPE || json.version != KEY_FILE_VERSION {
            return Err(err(
                path,
                format!(
                    "not a custody key file version {KEY_FILE_VERSION} (type {:?}, version {})",
                    json.kind, json.version
                ),
            ));
        }
        let seed = Zeroizing::new(
            URL_SAFE_NO_PAD
                .decode(json.seed.as_bytes())
                .map_err(|_| err(path, "seed is not unpadded base64url"))?,
        );
        let seed: &[u8; 32] = seed
            .as_slice()
            .try_into()
            .map_err(|_| err(path, "seed must be 32 bytes"))?;
        let key = KeyPair::from_seed(seed);
        let did = Did::parse(&json.did).map_err(|e| err(path, e.to_string()))?;
        if did != key.did() {
            return Err(err(path, "the DID does not match the key's seed"));
        }
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn save_load_round_trip_with_0600() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.key");
        let k = KeyPair::generate();
        k.save(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(KeyPair::load(&p).unwrap().did(), k.did());
        let e = k.save(&p).unwrap_err().to_string();
        assert!(e.contains("refusing to overwrite"), "{e}");
    }

    #[test]
    fn bad_files_are_refused_without_leaking() {
        let dir = tempfile::tempdir().unwrap();
        let k = KeyPair::generate();
        let p = dir.path().join("k.key");
        k.save(&p).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let seed: serde_json::Value = serde_json::from_str(&text).unwrap();
        let seed = seed["seed"].as_str().unwrap().to_string();

        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = KeyPair::load(&p).unwrap_err().to_string();
        assert!(e.contains("too open"), "{e}");

        let other = KeyPair::generate().did().to_string();
        let cases = [
            ("garbage", "hello".to_string()),
            ("truncated", text[..text.len() / 2].to_string()),
            ("wrong-did", text.replace(k.did().as_str(), &other)),
            ("bad-seed", text.replace(&seed, "AAAA")),
            ("wrong-type", text.replace("custody-key", "other")),
        ];
        for (name, body) in cases {
            let p = dir.path().join(name);
            let mut o = OpenOptions::new();
            std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
            o.write(true)
                .create_new(true)
                .open(&p)
                .unwrap()
                .write_all(body.as_bytes())
                .unwrap();
            let e = KeyPair::load(&p).unwrap_err();
            assert!(matches!(e, IdentityError::KeyFile { .. }), "{name}");
            assert!(!e.to_string().contains(&seed), "{name} leaks the seed: {e}");
        }
        assert!(KeyPair::load(&dir.path().join("missing")).is_err());
    }
}
