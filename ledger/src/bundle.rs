//! The export bundle: a directory an auditor can verify with nothing else.
//!
//! ```text
//! BUNDLE/
//!   manifest.json          format, ledger DID, origin, tree size, root, file digests
//!   entries.jsonl          one canonical entry per line, in seq order, '\n'-terminated
//!   checkpoints/<size>.checkpoint   C2SP signed notes by the ledger key (size: 20 digits)
//!   credentials.jsonl      every delegation and revocation credential, with its seq
//!   dids.jsonl             every DID in the ledger with its offline-resolved document
//!   payloads.jsonl         payloads not redacted: digest, salt, body (seq order)
//! ```
//!
//! `docs/FORMAT.md` specifies each file byte for byte. The writer streams entries
//! (bounded memory apart from the set of distinct DIDs); the reader hands the
//! verifier one line at a time and refuses lines over [`MAX_ENTRY_BYTES`].

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use custody_identity::Did;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::canonical::to_canonical;
use crate::entry::{Entry, MAX_ENTRY_BYTES};
use crate::time::Timestamp;
use crate::types::{PayloadDigest, Seq};
use crate::{actions, LedgerError};

pub const BUNDLE_FORMAT: &str = "custody-bundle";
pub const BUNDLE_VERSION: u64 = 1;
pub const MANIFEST: &str = "manifest.json";
pub const ENTRIES: &str = "entries.jsonl";
pub const CHECKPOINTS_DIR: &str = "checkpoints";
pub const CREDENTIALS: &str = "credentials.jsonl";
pub const DIDS: &str = "dids.jsonl";
pub const PAYLOADS: &str = "payloads.jsonl";
/// The files every bundle has besides the manifest and its checkpoints
/// (FORMAT.md §1); the manifest must list each of them.
pub const REQUIRED_FILES: [&str; 4] = [ENTRIES, CREDENTIALS, DIDS, PAYLOADS];
/// The manifest is small; anything bigger is not ours.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// A checkpoint note is a few hundred bytes; witnesses add a line each.
pub const MAX_CHECKPOINT_BYTES: u64 = 64 * 1024;
/// At most this many checkpoints are read from a bundle (they are kept in memory).
pub const MAX_CHECKPOINTS: usize = 100_000;
/// Upper bound on a payload line (base64 of a body up to 1 MiB plus salt).
pub const MAX_PAYLOAD_LINE_BYTES: usize = 1_500_000;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn invalid(path: &Path, reason: impl Into<String>) -> BundleError {
    BundleError::Invalid {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Size and SHA-256 of one bundle file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDigest {
    pub bytes: u64,
    pub sha256: String,
}

/// `manifest.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub version: u64,
    pub ledger: Did,
    pub origin: String,
    pub tree_size: u64,
    /// Lowercase hex of the RFC 6962 root over all entries.
    pub root: String,
    pub created_at: Timestamp,
    /// Relative path → digest, for every file in the bundle but the manifest.
    pub files: std::collections::BTreeMap<String, FileDigest>,
}

/// One line of `credentials.jsonl`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialRecord {
    /// `delegation` or `revocation`.
    pub kind: String,
    /// The entry that carries it.
    pub seq: Seq,
    /// The compact JWS.
    pub jws: String,
}

/// One line of `dids.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DidRecord {
    pub did: Did,
    pub document: serde_json::Value,
}

/// One line of `payloads.jsonl`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadRecord {
    pub seq: Seq,
    pub digest: PayloadDigest,
    /// Unpadded base64url of the 32-byte salt.
    pub salt: String,
    /// Unpadded base64url of the body.
    pub body: String,
}

impl PayloadRecord {
    pub fn new(seq: Seq, digest: PayloadDigest, salt: &[u8; 32], body: &[u8]) -> Self {
        Self {
            seq,
            digest,
            salt: URL_SAFE_NO_PAD.encode(salt),
            body: URL_SAFE_NO_PAD.encode(body),
        }
    }

    /// Decodes salt and body and checks `SHA-256(salt ‖ body) == digest`.
    pub fn open(&self) -> Result<Vec<u8>, LedgerError> {
        let bad = |reason: &str| LedgerError::Malformed {
            what: "payload",
            reason: reason.into(),
        };
        let salt = URL_SAFE_NO_PAD
            .decode(&self.salt)
            .map_err(|_| bad("salt is not base64url"))?;
        if salt.len() != 32 {
            return Err(bad("salt must be 32 bytes"));
        }
        let body = URL_SAFE_NO_PAD
            .decode(&self.body)
            .map_err(|_| bad("body is not base64url"))?;
        if payload_digest(&salt, &body) != self.digest {
            return Err(bad("SHA-256(salt ‖ body) does not match the digest"));
        }
        Ok(body)
    }
}

/// `SHA-256(salt ‖ body)`.
pub fn payload_digest(salt: &[u8], body: &[u8]) -> PayloadDigest {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(body);
    PayloadDigest(h.finalize().into())
}

/// A fresh 32-byte salt for `body` and the reference an event carries.
pub fn salted_payload_ref(body: &[u8]) -> (crate::PayloadRef, [u8; 32]) {
    let mut salt = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut salt);
    (
        crate::PayloadRef {
            digest: payload_digest(&salt, body),
            size: body.len() as u64,
        },
        salt,
    )
}

/// File name of the checkpoint for a tree size.
pub fn checkpoint_file_name(size: u64) -> String {
    format!("{size:020}.checkpoint")
}

/// The tree size a checkpoint file name stands for: only the exact form
/// [`checkpoint_file_name`] writes counts.
pub fn checkpoint_size_of(name: &str) -> Option<u64> {
    let size: u64 = name.strip_suffix(".checkpoint")?.parse().ok()?;
    (checkpoint_file_name(size) == name).then_some(size)
}

/// Whether `rel`, a path relative to the bundle directory, names a file the
/// layout has (FORMAT.md §1) other than the manifest: one of
/// [`REQUIRED_FILES`] or a checkpoint. Nothing else belongs in `files`.
pub fn is_layout_file(rel: &str) -> bool {
    REQUIRED_FILES.contains(&rel)
        || rel
            .strip_prefix(CHECKPOINTS_DIR)
            .and_then(|r| r.strip_prefix('/'))
            .is_some_and(|name| checkpoint_size_of(name).is_some())
}

/// Writes a bundle into an empty (or new) directory.
pub struct BundleWriter {
    dir: PathBuf,
    entries: BufWriter<File>,
    entries_hash: Sha256,
    entries_bytes: u64,
    credentials: BufWriter<File>,
    payloads: BufWriter<File>,
    dids: BTreeSet<Did>,
    count: u64,
}

impl BundleWriter {
    /// Creates the directory; refuses one that already has files in it, so an
    /// export never mixes with an older one.
    pub fn create(dir: &Path) -> Result<Self, BundleError> {
        if dir.exists() {
            let mut it = fs::read_dir(dir).map_err(io_err(dir))?;
            if it.next().is_some() {
                return Err(invalid(dir, "output directory is not empty"));
            }
        }
        fs::create_dir_all(dir.join(CHECKPOINTS_DIR)).map_err(io_err(dir))?;
        let open = |name: &str| -> Result<BufWriter<File>, BundleError> {
            let p = dir.join(name);
            File::create(&p)
                .map(|f| BufWriter::with_capacity(1 << 20, f))
                .map_err(io_err(&p))
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            entries: open(ENTRIES)?,
            entries_hash: Sha256::new(),
            entries_bytes: 0,
            credentials: open(CREDENTIALS)?,
            payloads: open(PAYLOADS)?,
            dids: BTreeSet::new(),
            count: 0,
        })
    }

    /// Appends the next entry line (canonical, no newline). `payload` returns the
    /// salt and body for a digest when they have not been redacted.
    pub fn push_line(
        &mut self,
        line: &[u8],
        payload: impl FnOnce(&PayloadDigest) -> Option<([u8; 32], Vec<u8>)>,
    ) -> Result<(), BundleError> {
        let entry = Entry::parse_line(line)?;
        if entry.seq != Seq(self.count) {
            return Err(invalid(
                &self.dir.join(ENTRIES),
                format!("expected seq {}, got {}", self.count, entry.seq),
            ));
        }
        let path = self.dir.join(ENTRIES);
        self.entries.write_all(line).map_err(io_err(&path))?;
        self.entries.write_all(b"\n").map_err(io_err(&path))?;
        self.entries_hash.update(line);
        self.entries_hash.update(b"\n");
        self.entries_bytes += line.len() as u64 + 1;
        self.count += 1;

        let ev = &entry.event;
        self.dids.insert(ev.actor.clone());
        if let Some(d) = &ev.on_behalf_of {
            self.dids.insert(d.clone());
        }
        let credential = match ev.action.as_str() {
            actions::SESSION_START => ev.detail_str("delegation").map(|j| ("delegation", j)),
            actions::IDENTITY_REVOKE => ev.detail_str("revocation").map(|j| ("revocation", j)),
            _ => None,
        };
        if let Some((kind, jws)) = credential {
            let rec = CredentialRecord {
                kind: kind.into(),
                seq: entry.seq,
                jws: jws.into(),
            };
            write_json_line(&mut self.credentials, &self.dir.join(CREDENTIALS), &rec)?;
        }
        if let Some(p) = &ev.payload {
            if let Some((salt, body)) = payload(&p.digest) {
                let rec = PayloadRecord::new(entry.seq, p.digest, &salt, &body);
                write_json_line(&mut self.payloads, &self.dir.join(PAYLOADS), &rec)?;
            }
        }
        Ok(())
    }

    /// Writes the checkpoints, DID documents and manifest, and syncs everything.
    /// `root` is the hex root over all pushed entries.
    pub fn finish(
        mut self,
        ledger: &Did,
        origin: &str,
        root: &str,
        checkpoints: &[(u64, Vec<u8>)],
    ) -> Result<Manifest, BundleError> {
        let mut dids =
            BufWriter::new(File::create(self.dir.join(DIDS)).map_err(io_err(&self.dir))?);
        self.dids.insert(ledger.clone());
        for did in &self.dids {
            let rec = DidRecord {
                did: did.clone(),
                document: did.document(),
            };
            write_json_line(&mut dids, &self.dir.join(DIDS), &rec)?;
        }
        for (size, note) in checkpoints {
            let p = self
                .dir
                .join(CHECKPOINTS_DIR)
                .join(checkpoint_file_name(*size));
            fs::write(&p, note).map_err(io_err(&p))?;
        }
        for w in [
            &mut self.entries,
            &mut self.credentials,
            &mut self.payloads,
            &mut dids,
        ] {
            w.flush().map_err(io_err(&self.dir))?;
            w.get_ref().sync_all().map_err(io_err(&self.dir))?;
        }
        drop(dids);

        let mut files = std::collections::BTreeMap::new();
        files.insert(
            ENTRIES.to_string(),
            FileDigest {
                bytes: self.entries_bytes,
                sha256: hex::encode(self.entries_hash.clone().finalize()),
            },
        );
        for name in [CREDENTIALS, DIDS, PAYLOADS] {
            files.insert(name.to_string(), digest_file(&self.dir.join(name))?);
        }
        for (size, _) in checkpoints {
            let rel = format!("{CHECKPOINTS_DIR}/{}", checkpoint_file_name(*size));
            files.insert(rel.clone(), digest_file(&self.dir.join(&rel))?);
        }
        let manifest = Manifest {
            format: BUNDLE_FORMAT.into(),
            version: BUNDLE_VERSION,
            ledger: ledger.clone(),
            origin: origin.into(),
            tree_size: self.count,
            root: root.into(),
            created_at: Timestamp::now(),
            files,
        };
        let mut bytes = to_canonical(&manifest)?;
        bytes.push(b'\n');
        let p = self.dir.join(MANIFEST);
        fs::write(&p, bytes).map_err(io_err(&p))?;
        Ok(manifest)
    }
}

fn write_json_line<T: Serialize>(
    w: &mut impl Write,
    path: &Path,
    value: &T,
) -> Result<(), BundleError> {
    let mut bytes = to_canonical(value)?;
    bytes.push(b'\n');
    w.write_all(&bytes).map_err(io_err(path))
}

/// Size and SHA-256 of a file, read in chunks.
pub fn digest_file(path: &Path) -> Result<FileDigest, BundleError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).map_err(io_err(path))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok(FileDigest {
        bytes: n,
        sha256: hex::encode(h.finalize()),
    })
}

/// An opened bundle. Only the manifest and the checkpoints are loaded; entries
/// and payloads are streamed.
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// `(size, note bytes, relative path)` sorted by size.
    pub checkpoints: Vec<(u64, Vec<u8>, String)>,
    /// Whether `manifest.json` is one JCS object followed by a single `\n`.
    /// A manifest that parses but is not in that form can still be read;
    /// the verifier's `manifest` check reports it.
    pub manifest_canonical: bool,
}

impl Bundle {
    /// Reads `manifest.json` and the checkpoints. Errors here mean the bundle
    /// cannot be read at all (the verifier exits 2).
    pub fn open(dir: &Path) -> Result<Self, BundleError> {
        if !dir.is_dir() {
            return Err(invalid(dir, "not a directory (expected an export bundle)"));
        }
        let mp = dir.join(MANIFEST);
        let bytes = read_capped(&mp, MAX_MANIFEST_BYTES)?;
        if bytes.is_empty() {
            return Err(invalid(&mp, "empty file"));
        }
        #[derive(Deserialize)]
        struct Head {
            format: Option<String>,
            version: Option<u64>,
        }
        let head: Head = serde_json::from_slice(&bytes)
            .map_err(|e| invalid(&mp, format!("not valid JSON: {e}")))?;
        if head.format.as_deref() != Some(BUNDLE_FORMAT) {
            return Err(invalid(&mp, format!("format is not {BUNDLE_FORMAT:?}")));
        }
        if head.version != Some(BUNDLE_VERSION) {
            return Err(invalid(
                &mp,
                format!(
                    "unsupported bundle version {:?} (this build reads {BUNDLE_VERSION})",
                    head.version
                ),
            ));
        }
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| invalid(&mp, e.to_string()))?;
        let manifest_canonical = bytes
            .strip_suffix(b"\n")
            .is_some_and(crate::canonical::is_canonical);
        if !dir.join(ENTRIES).is_file() {
            return Err(invalid(&dir.join(ENTRIES), "missing"));
        }
        let cdir = dir.join(CHECKPOINTS_DIR);
        let mut checkpoints = Vec::new();
        if cdir.is_dir() {
            for item in fs::read_dir(&cdir).map_err(io_err(&cdir))? {
                let item = item.map_err(io_err(&cdir))?;
                let name = item.file_name().to_string_lossy().into_owned();
                // Any other name is not a checkpoint; the verifier's
                // `manifest` check reports it as a file outside the layout.
                let Some(size) = checkpoint_size_of(&name) else {
                    continue;
                };
                if checkpoints.len() >= MAX_CHECKPOINTS {
                    return Err(invalid(&cdir, "too many checkpoints"));
                }
                let note = read_capped(&item.path(), MAX_CHECKPOINT_BYTES)?;
                checkpoints.push((size, note, format!("{CHECKPOINTS_DIR}/{name}")));
            }
        }
        checkpoints.sort_by_key(|c| c.0);
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
            checkpoints,
            manifest_canonical,
        })
    }

    /// Every name in the bundle directory and in `checkpoints/`, as paths
    /// relative to the bundle, except `manifest.json` and the `checkpoints`
    /// directory itself: what the manifest's `files` must list. Names that
    /// are not UTF-8 come back lossily converted, so they match nothing the
    /// manifest can list.
    pub fn present_files(&self) -> Result<Vec<String>, BundleError> {
        let list = |dir: &Path| -> Result<Vec<(String, bool)>, BundleError> {
            let mut out = Vec::new();
            for item in fs::read_dir(dir).map_err(io_err(dir))? {
                let item = item.map_err(io_err(dir))?;
                let is_dir = item.file_type().map_err(io_err(dir))?.is_dir();
                out.push((item.file_name().to_string_lossy().into_owned(), is_dir));
            }
            Ok(out)
        };
        let mut out = Vec::new();
        for (name, is_dir) in list(&self.dir)? {
            if name == MANIFEST {
                continue;
            }
            if name == CHECKPOINTS_DIR && is_dir {
                for (inner, _) in list(&self.dir.join(CHECKPOINTS_DIR))? {
                    out.push(format!("{CHECKPOINTS_DIR}/{inner}"));
                }
                continue;
            }
            out.push(name);
        }
        out.sort();
        Ok(out)
    }

    /// Streams `entries.jsonl` as `(line number, line bytes without '\n')`.
    pub fn entry_lines(&self) -> Result<LineReader, BundleError> {
        LineReader::open(&self.dir.join(ENTRIES), MAX_ENTRY_BYTES)
    }

    /// Streams `payloads.jsonl` (absent file = no payloads).
    pub fn payload_lines(&self) -> Result<Option<LineReader>, BundleError> {
        self.lines(PAYLOADS)
    }

    /// Streams one of the record files (`credentials.jsonl`, `dids.jsonl`,
    /// `payloads.jsonl`) with its line cap; `None` when it is absent.
    pub fn lines(&self, name: &str) -> Result<Option<LineReader>, BundleError> {
        let p = self.dir.join(name);
        if !p.exists() {
            return Ok(None);
        }
        let max = if name == PAYLOADS {
            MAX_PAYLOAD_LINE_BYTES
        } else {
            MAX_ENTRY_BYTES
        };
        LineReader::open(&p, max).map(Some)
    }

    /// Reads `credentials.jsonl` (small: one line per session and revocation).
    pub fn credentials(&self) -> Result<Vec<CredentialRecord>, BundleError> {
        self.read_small_jsonl(CREDENTIALS)
    }

    /// Reads `dids.jsonl`.
    pub fn dids(&self) -> Result<Vec<DidRecord>, BundleError> {
        self.read_small_jsonl(DIDS)
    }

    fn read_small_jsonl<T: for<'de> Deserialize<'de>>(
        &self,
        name: &str,
    ) -> Result<Vec<T>, BundleError> {
        let p = self.dir.join(name);
        let Some(lines) = self.lines(name)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for item in lines {
            let (n, line) = item?;
            out.push(
                parse_canonical_line(&line).map_err(|e| invalid(&p, format!("line {n}: {e}")))?,
            );
        }
        Ok(out)
    }
}

/// Parses one `.jsonl` line that the format requires in JCS form: a line
/// that parses but is not canonical (spacing, key order, number forms) is
/// refused, like an entry. [`crate::canonical::decode_line`] tells the
/// failures apart.
pub fn parse_canonical_line<T: for<'de> Deserialize<'de>>(line: &[u8]) -> Result<T, String> {
    match crate::canonical::decode_line(line) {
        Ok(d) if d.canonical => Ok(d.value),
        Ok(_) => Err("not in canonical (RFC 8785) form".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>, BundleError> {
    let f = File::open(path).map_err(io_err(path))?;
    let mut buf = Vec::new();
    f.take(cap + 1)
        .read_to_end(&mut buf)
        .map_err(io_err(path))?;
    if buf.len() as u64 > cap {
        return Err(invalid(path, format!("larger than {cap} bytes")));
    }
    Ok(buf)
}

/// Reads '\n'-terminated lines with a length cap, so a hostile file cannot make
/// the reader buffer unbounded data. A final line without '\n' is an error
/// (a truncated file), reported with its line number.
pub struct LineReader {
    path: PathBuf,
    inner: BufReader<File>,
    max: usize,
    line_no: u64,
    done: bool,
}

impl LineReader {
    pub fn open(path: &Path, max: usize) -> Result<Self, BundleError> {
        let f = File::open(path).map_err(io_err(path))?;
        Ok(Self {
            path: path.to_path_buf(),
            inner: BufReader::with_capacity(1 << 20, f),
            max,
            line_no: 0,
            done: false,
        })
    }
}

impl Iterator for LineReader {
    /// 0-based line number and the line without its newline.
    type Item = Result<(u64, Vec<u8>), BundleError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut line = Vec::new();
        let limit = self.max as u64 + 2;
        let read = (&mut self.inner).take(limit).read_until(b'\n', &mut line);
        let n = self.line_no;
        match read {
            Err(e) => {
                self.done = true;
                Some(Err(BundleError::Io {
                    path: self.path.clone(),
                    source: e,
                }))
            }
            Ok(0) => {
                self.done = true;
                None
            }
            Ok(_) => {
                self.line_no += 1;
                if line.last() != Some(&b'\n') {
                    self.done = true;
                    let why = if line.len() as u64 >= limit {
                        format!("line {n} is longer than {} bytes", self.max)
                    } else {
                        format!("line {n} is truncated (no final newline)")
                    };
                    return Some(Err(invalid(&self.path, why)));
                }
                line.pop();
                if line.len() > self.max {
                    self.done = true;
                    return Some(Err(invalid(
                        &self.path,
                        format!("line {n} is longer than {} bytes", self.max),
                    )));
                }
                Some(Ok((n, line)))
            }
        }
    }
}
