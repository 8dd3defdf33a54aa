//! Shared helpers for the end-to-end tests: the built binaries, demo bundles,
//! the SIEM side (Splunk HEC and OTLP receivers, the OCSF schema check), and
//! a forger that rewrites a bundle consistently (re-chained, re-hashed,
//! checkpoints re-signed with the ledger key) so a test can isolate exactly one
//! kind of tampering.

pub mod broker;
pub mod cluster;
pub mod siem;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use custody_agent::client::{session_event, Client, ClientError};
use custody_agent::sessionfile::SessionFile;
use custody_identity::KeyPair;
use custody_ledger::bundle::{Bundle, BundleWriter, PayloadRecord};
use custody_ledger::checkpoint::{Origin, SignedCheckpoint};
use custody_ledger::merkle::{hash_to_hex, MemoryHashStore, TreeHead};
use custody_ledger::{actions, Approval};
use custody_ledger::{entry_hash, Entry, EntryHash, Seq};
use custody_wire::api::Appended;

/// Path of a workspace binary (`custody`, `custody-verify`) built by cargo next
/// to the test executables.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|p| p.parent())
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (it builds the binaries)",
        path.display()
    );
    path
}

/// A session's `tool.call` of the action `digest` claiming `approval`,
/// signed with the session's key and sent straight to a broker: what the
/// hook appends after an allow, and what an agent that holds its own key
/// can forge.
pub async fn call_claiming(
    client: &Client,
    s: &SessionFile,
    digest: &str,
    approval: Approval,
) -> Result<Appended, ClientError> {
    let mut ev = session_event(s, actions::TOOL_CALL).expect("a session event");
    ev.details.insert("tool".into(), "Bash".into());
    ev.details.insert("action_digest".into(), digest.into());
    ev.approval = Some(approval);
    let key = s.key().expect("the session's key");
    client
        .log_as(&key, ev.sign(&key).expect("sign"), None)
        .await
}

/// Runs a binary with arguments and returns its output.
pub fn run(name: &str, args: &[&str]) -> Output {
    Command::new(bin(name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {name}: {e}"))
}

/// Runs `custody-verify verify DIR --json` and returns (exit code, JSON).
pub fn verify_json(dir: &Path) -> (i32, serde_json::Value) {
    let out = run(
        "custody-verify",
        &["verify", dir.to_str().unwrap(), "--json"],
    );
    let code = out.status.code().unwrap_or(-1);
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "verify --json printed no JSON ({e}); stdout: {} stderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, json)
}

/// The seqs a named check reports as failing.
pub fn failing_seqs(v: &serde_json::Value, check: &str) -> Vec<u64> {
    v["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["name"] == check)
        .flat_map(|c| c["failures"].as_array().cloned().unwrap_or_default())
        .filter_map(|f| f["seq"].as_u64())
        .collect()
}

/// Whether a named check passed.
pub fn check_ok(v: &serde_json::Value, check: &str) -> bool {
    v["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["name"] == check && c["ok"] == true)
}

/// A demo run in a temp dir: `dir/bundle` plus the keys in `dir/keys`.
pub struct DemoRun {
    pub dir: tempfile::TempDir,
}

impl DemoRun {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("demo");
        let o = run("custody", &["demo", "--out", out.to_str().unwrap()]);
        assert!(
            o.status.success(),
            "custody demo failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        Self { dir }
    }

    pub fn out(&self) -> PathBuf {
        self.dir.path().join("demo")
    }

    pub fn bundle(&self) -> PathBuf {
        self.out().join("bundle")
    }

    /// A demo key: `ledger` (the broker's, in `data/`), `developer`, `admin`,
    /// `session-chat`, `session-ci`.
    pub fn key(&self, name: &str) -> KeyPair {
        let path = match name {
            "ledger" => self.out().join("data/ledger.key"),
            _ => self.out().join("keys").join(format!("{name}.key")),
        };
        KeyPair::load(&path).expect("demo key")
    }

    /// A fresh copy of the bundle that a test may damage.
    pub fn copy_bundle(&self, name: &str) -> PathBuf {
        let dst = self.dir.path().join(name);
        copy_dir(&self.bundle(), &dst);
        dst
    }

    /// The entries of the demo bundle.
    pub fn entries(&self) -> Vec<Entry> {
        read_entries(&self.bundle())
    }
}

impl Default for DemoRun {
    fn default() -> Self {
        Self::new()
    }
}

pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for item in std::fs::read_dir(src).unwrap() {
        let item = item.unwrap();
        let to = dst.join(item.file_name());
        if item.file_type().unwrap().is_dir() {
            copy_dir(&item.path(), &to);
        } else {
            std::fs::copy(item.path(), &to).unwrap();
        }
    }
}

pub fn read_entries(bundle: &Path) -> Vec<Entry> {
    let b = Bundle::open(bundle).expect("open bundle");
    b.entry_lines()
        .unwrap()
        .map(|l| Entry::parse_line(&l.unwrap().1).expect("entry"))
        .collect()
}

/// Reads entries.jsonl as raw lines (without newlines).
pub fn read_lines(bundle: &Path) -> Vec<Vec<u8>> {
    let text = std::fs::read(bundle.join("entries.jsonl")).unwrap();
    text.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| l.to_vec())
        .collect()
}

/// Writes raw lines back to entries.jsonl.
pub fn write_lines(bundle: &Path, lines: &[Vec<u8>]) {
    let mut out = Vec::new();
    for l in lines {
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    std::fs::write(bundle.join("entries.jsonl"), out).unwrap();
}

/// Writes `entries` as a complete, self-consistent bundle at `out`: seq and
/// `prev` re-linked, payloads carried over from `source`, the manifest
/// recomputed and checkpoints re-signed by `ledger` at the same relative sizes
/// as in `source` (clamped to the new length). Only what the entries
/// themselves say can then be wrong.
pub fn forge_bundle(source: &Path, mut entries: Vec<Entry>, ledger: &KeyPair, out: &Path) {
    let src = Bundle::open(source).expect("source bundle");
    let payloads: Vec<PayloadRecord> = src
        .payload_lines()
        .unwrap()
        .into_iter()
        .flatten()
        .map(|l| serde_json::from_slice(&l.unwrap().1).unwrap())
        .collect();
    let mut prev = EntryHash::ZERO;
    let mut w = BundleWriter::create(out).expect("writer");
    let mut store = MemoryHashStore::new();
    let mut roots = Vec::new();
    for (i, e) in entries.iter_mut().enumerate() {
        e.seq = Seq(i as u64);
        e.prev = prev;
        let line = e.to_line().unwrap();
        prev = entry_hash(&line);
        store.append(custody_ledger::merkle::Hash(prev.0));
        roots.push(store.root());
        let digest = e.event.payload.as_ref().map(|p| p.digest);
        w.push_line(&line, |d| {
            payloads
                .iter()
                .find(|p| Some(*d) == digest && p.digest == *d)
                .map(|p| {
                    let salt = base64_decode(&p.salt);
                    let body = base64_decode(&p.body);
                    (salt.try_into().unwrap(), body)
                })
        })
        .unwrap();
    }
    let n = entries.len() as u64;
    let origin = Origin::new(&src.manifest.origin).unwrap();
    let mut sizes: Vec<u64> = src
        .checkpoints
        .iter()
        .map(|c| c.0.min(n))
        .chain([n])
        .collect();
    sizes.sort();
    sizes.dedup();
    let now = time::OffsetDateTime::now_utc();
    let cps: Vec<(u64, Vec<u8>)> = sizes
        .into_iter()
        .filter(|s| *s > 0)
        .map(|s| {
            let head = TreeHead {
                size: s,
                root: roots[s as usize - 1],
            };
            let cp = SignedCheckpoint::sign(ledger, &origin, head, now).unwrap();
            (s, cp.to_bytes())
        })
        .collect();
    w.finish(
        &ledger.did(),
        origin.as_str(),
        &hash_to_hex(&store.root()),
        &cps,
    )
    .unwrap();
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .expect("payloads.jsonl holds unpadded base64url")
}
