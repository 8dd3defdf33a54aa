//! The verification result: one [`Check`] per property, each with the entries
//! that fail it. Printed as text for people and as JSON (`--json`) for tools.

use serde::Serialize;

/// Failures kept per check; beyond this only the count grows, so a thoroughly
/// broken million-entry bundle still verifies in bounded memory.
pub const MAX_FAILURES_KEPT: usize = 1000;

#[derive(Clone, Debug, Serialize)]
pub struct Failure {
    /// The entry concerned, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    pub message: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub description: &'static str,
    pub ok: bool,
    pub failure_count: u64,
    pub failures: Vec<Failure>,
}

impl Check {
    pub fn new(name: &'static str, description: &'static str) -> Self {
        Self {
            name,
            description,
            ok: true,
            failure_count: 0,
            failures: Vec::new(),
        }
    }

    pub fn fail(&mut self, seq: Option<u64>, message: impl Into<String>) {
        self.ok = false;
        self.failure_count += 1;
        if self.failures.len() < MAX_FAILURES_KEPT {
            self.failures.push(Failure {
                seq,
                message: message.into(),
            });
        }
    }

    /// The seqs of the kept failures.
    pub fn failing_seqs(&self) -> Vec<u64> {
        self.failures.iter().filter_map(|f| f.seq).collect()
    }
}

/// Counts the report and the summary line draw on.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Stats {
    pub entries: u64,
    pub by_actor_kind: std::collections::BTreeMap<String, u64>,
    pub actors: std::collections::BTreeMap<String, u64>,
    /// Distinct actor DIDs per actor kind.
    pub identities_by_kind: std::collections::BTreeMap<String, u64>,
    pub sessions: u64,
    pub revocations: u64,
    pub denied_requests: u64,
    pub checkpoints: u64,
    pub payloads_present: u64,
    pub payloads_redacted: u64,
    /// Pinned witness → the largest tree size it cosigned.
    #[serde(default)]
    pub witnessed: std::collections::BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Verification {
    /// True only if every check passed.
    pub valid: bool,
    /// True if some part of the bundle could not be read (exit 2): a line
    /// that is not a JSON object, an unsupported version, a truncated file
    /// (FORMAT.md §9). What reads but breaks a rule is a failed check.
    pub unreadable: bool,
    pub bundle: String,
    pub ledger: Option<String>,
    /// Whether the ledger key was pinned with `--ledger-key`.
    pub ledger_key_pinned: bool,
    /// The signed-note verifier key of the ledger (`origin+keyid+key`), so an
    /// auditor can compare it out of band and pin it next time.
    pub ledger_key_fingerprint: Option<String>,
    pub origin: Option<String>,
    pub tree_size: u64,
    pub root: Option<String>,
    pub checks: Vec<Check>,
    pub stats: Stats,
}

impl Verification {
    pub fn exit_code(&self) -> i32 {
        if self.unreadable {
            2
        } else if self.valid {
            0
        } else {
            1
        }
    }

    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// Human-readable form, one line per check.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "bundle {}: {} entries, ledger {}",
            self.bundle,
            self.stats.entries,
            self.ledger.as_deref().unwrap_or("(unknown)")
        );
        if let Some(root) = &self.root {
            let _ = writeln!(s, "root   {root} (tree size {})", self.tree_size);
        }
        if !self.ledger_key_pinned {
            if let Some(fp) = &self.ledger_key_fingerprint {
                let _ = writeln!(
                    s,
                    "note   ledger key not pinned; it is {fp}\n       compare it out of band, then pass --ledger-key {}",
                    self.ledger.as_deref().unwrap_or("DID")
                );
            }
        }
        for c in &self.checks {
            let status = if c.ok { "ok  " } else { "FAIL" };
            let _ = writeln!(s, "{status}  {:<14} {}", c.name, c.description);
            for f in &c.failures {
                match f.seq {
                    Some(seq) => {
                        let _ = writeln!(s, "        seq {seq}: {}", f.message);
                    }
                    None => {
                        let _ = writeln!(s, "        {}", f.message);
                    }
                }
            }
            if c.failure_count > c.failures.len() as u64 {
                let _ = writeln!(
                    s,
                    "        … and {} more",
                    c.failure_count - c.failures.len() as u64
                );
            }
        }
        let failed = self.checks.iter().filter(|c| !c.ok).count();
        let verdict = if self.unreadable {
            "UNREADABLE".to_string()
        } else if self.valid {
            "VALID".to_string()
        } else {
            format!("INVALID ({failed} of {} checks failed)", self.checks.len())
        };
        let _ = writeln!(s, "result {verdict}");
        s
    }
}
