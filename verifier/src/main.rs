//! `custody-verify`: the auditor's offline tool.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use custody_identity::Did;
use custody_verifier::event::{check_event, read_event};
use custody_verifier::proof::{check_proof, proof_file_bytes, prove, read_proof, ProofError};
use custody_verifier::{verify_bundle, VerifyOptions};

/// Exit codes (part of the public contract).
const EXIT_VALID: u8 = 0;
const EXIT_INVALID: u8 = 1;
const EXIT_UNREADABLE: u8 = 2;

#[derive(Parser)]
#[command(
    name = "custody-verify",
    version,
    about = "Verify custody ledger exports offline",
    long_about = "Verify custody ledger exports offline.\n\nExit codes: 0 valid, 1 invalid, 2 unreadable input or bad usage."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check every entry, signature, authorization, Merkle root and checkpoint of a bundle.
    Verify {
        /// The export bundle directory.
        dir: PathBuf,
        /// The ledger DID you expect (did:key:z6Mk…); without it the bundle's own is used.
        #[arg(long, value_name = "DID")]
        ledger_key: Option<String>,
        /// Require a checkpoint cosigned by this witness (its did:key, or a
        /// signed-note verifier key `name+id+key`). Repeatable.
        #[arg(long, value_name = "DID|VKEY")]
        witness: Vec<String>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Act as a witness: cosign a checkpoint if it extends the last one this
    /// witness cosigned for the ledger (exit 1 on rollback, fork or bad proof).
    Cosign {
        /// The checkpoint note (e.g. saved from GET /v1/checkpoint).
        checkpoint: PathBuf,
        /// The witness's key file.
        #[arg(long, value_name = "KEYFILE")]
        key: PathBuf,
        /// The ledger DID whose checkpoints this witness follows.
        #[arg(long, value_name = "DID")]
        ledger_key: String,
        /// Where the witness remembers the last head it cosigned per ledger.
        #[arg(long, value_name = "DIR")]
        state: PathBuf,
        /// Consistency proof from the remembered size (GET /v1/proof/consistency?old=M&new=N).
        #[arg(long, value_name = "FILE")]
        consistency: Option<PathBuf>,
        /// Where to write the cosigned note.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Write a self-contained inclusion proof for one entry.
    Prove {
        dir: PathBuf,
        #[arg(long)]
        seq: u64,
        #[arg(long, value_name = "PROOF")]
        out: PathBuf,
    },
    /// Write an attestation report (FILE.json, FILE.md or FILE.html) from a bundle.
    Report {
        dir: PathBuf,
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Sign the report (DSSE envelope over an in-toto statement) with this key file.
        #[arg(long, value_name = "KEYFILE")]
        sign_key: Option<PathBuf>,
        #[arg(long, value_name = "DID")]
        ledger_key: Option<String>,
    },
    /// Check a report's signature and that it matches the bundle.
    CheckReport {
        report: PathBuf,
        #[arg(long, value_name = "DIR")]
        bundle: PathBuf,
    },
    /// Check that a SIEM event (custody tail's OCSF event, its Splunk HEC
    /// envelope, or an entry line) is the ledger's entry that PROOF proves.
    CheckEvent {
        event: PathBuf,
        #[arg(long, value_name = "PROOF")]
        proof: PathBuf,
        #[arg(long, value_name = "DID")]
        ledger_key: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Check an inclusion proof on its own, without the bundle.
    CheckProof {
        proof: PathBuf,
        #[arg(long, value_name = "DID")]
        ledger_key: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                EXIT_UNREADABLE
            } else {
                EXIT_VALID
            });
        }
    };
    ExitCode::from(run(cli))
}

fn parse_did(text: Option<String>) -> Result<Option<Did>, u8> {
    match text {
        None => Ok(None),
        Some(t) => Did::parse(&t).map(Some).map_err(|e| {
            eprintln!("custody-verify: --ledger-key: {e}");
            EXIT_UNREADABLE
        }),
    }
}

fn run(cli: Cli) -> u8 {
    match cli.command {
        Command::Verify {
            dir,
            ledger_key,
            witness,
            json,
        } => {
            let ledger_key = match parse_did(ledger_key) {
                Ok(k) => k,
                Err(code) => return code,
            };
            let witnesses = match witness
                .iter()
                .map(|w| custody_ledger::witness::WitnessKey::parse(w))
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(w) => w,
                Err(e) => {
                    eprintln!("custody-verify: --witness: {e}");
                    return EXIT_UNREADABLE;
                }
            };
            match verify_bundle(
                &dir,
                &VerifyOptions {
                    ledger_key,
                    witnesses,
                },
            ) {
                Ok(v) => {
                    if json {
                        match serde_json::to_string_pretty(&v) {
                            Ok(s) => println!("{s}"),
                            Err(e) => {
                                eprintln!("custody-verify: {e}");
                                return EXIT_UNREADABLE;
                            }
                        }
                    } else {
                        print!("{}", v.to_text());
                    }
                    v.exit_code() as u8
                }
                Err(e) => {
                    let msg = e.to_string();
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"valid": false, "unreadable": true, "error": msg})
                        );
                    }
                    eprintln!("custody-verify: cannot read bundle: {msg}");
                    EXIT_UNREADABLE
                }
            }
        }
        Command::Report {
            dir,
            out,
            sign_key,
            ledger_key,
        } => {
            let ledger_key = match parse_did(ledger_key) {
                Ok(k) => k,
                Err(code) => return code,
            };
            report_cmd(&dir, &out, sign_key.as_deref(), ledger_key)
        }
        Command::CheckReport { report, bundle } => check_report_cmd(&report, &bundle),
        Command::Cosign {
            checkpoint,
            key,
            ledger_key,
            state,
            consistency,
            out,
        } => cosign_cmd(
            &checkpoint,
            &key,
            &ledger_key,
            &state,
            consistency.as_deref(),
            &out,
        ),
        Command::Prove { dir, seq, out } => match prove(&dir, seq) {
            Ok(p) => {
                let bytes = match proof_file_bytes(&p) {
                    Ok(b) => b,
                    Err(e) => return proof_error(e),
                };
                if let Err(e) = std::fs::write(&out, bytes) {
                    eprintln!("custody-verify: {}: {e}", out.display());
                    return EXIT_UNREADABLE;
                }
                println!(
                    "wrote inclusion proof for seq {seq} (tree size {}, {} hashes) to {}",
                    p.tree_size,
                    p.path.len(),
                    out.display()
                );
                EXIT_VALID
            }
            Err(e) => proof_error(e),
        },
        Command::CheckEvent {
            event,
            proof,
            ledger_key,
            json,
        } => {
            let ledger_key = match parse_did(ledger_key) {
                Ok(k) => k,
                Err(code) => return code,
            };
            let checked = read_proof(&proof).and_then(|p| {
                let ev = read_event(&event)?;
                check_event(&ev, &p, ledger_key.as_ref())
            });
            match checked {
                Ok(c) => {
                    if json {
                        println!("{}", serde_json::json!({"valid": true, "event": c}));
                    } else {
                        println!(
                            "valid: the event is entry {} ({} by {} {}) of the ledger {} (tree size {}, root {})",
                            c.proof.seq, c.proof.action, c.proof.actor_kind, c.proof.actor,
                            c.proof.ledger, c.proof.tree_size, c.proof.root
                        );
                        if !c.added_fields.is_empty() {
                            println!(
                                "note: fields not written by custody (not vouched for): {}",
                                c.added_fields.join(", ")
                            );
                        }
                        if !c.proof.ledger_key_pinned {
                            println!("note: ledger key not pinned; pass --ledger-key {} after checking it out of band", c.proof.ledger);
                        }
                    }
                    EXIT_VALID
                }
                Err(e) => {
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"valid": false, "error": e.to_string()})
                        );
                    }
                    proof_error(e)
                }
            }
        }
        Command::CheckProof {
            proof,
            ledger_key,
            json,
        } => {
            let ledger_key = match parse_did(ledger_key) {
                Ok(k) => k,
                Err(code) => return code,
            };
            let p = match read_proof(&proof) {
                Ok(p) => p,
                Err(e) => return proof_error(e),
            };
            match check_proof(&p, ledger_key.as_ref()) {
                Ok(c) => {
                    if json {
                        println!("{}", serde_json::json!({"valid": true, "proof": c}));
                    } else {
                        println!(
                            "valid: entry {} ({} by {} {}, received {}) is in the ledger {} of size {} with root {}",
                            c.seq, c.action, c.actor_kind, c.actor, c.received_at, c.ledger, c.tree_size, c.root
                        );
                        if !c.ledger_key_pinned {
                            println!("note: ledger key not pinned; pass --ledger-key {} after checking it out of band", c.ledger);
                        }
                    }
                    EXIT_VALID
                }
                Err(e) => {
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"valid": false, "error": e.to_string()})
                        );
                    }
                    proof_error(e)
                }
            }
        }
    }
}

fn proof_error(e: ProofError) -> u8 {
    eprintln!("custody-verify: {e}");
    match e {
        ProofError::Unreadable(_) => EXIT_UNREADABLE,
        ProofError::Invalid(_) => EXIT_INVALID,
    }
}

fn cosign_cmd(
    checkpoint: &std::path::Path,
    key: &std::path::Path,
    ledger_key: &str,
    state: &std::path::Path,
    consistency: Option<&std::path::Path>,
    out: &std::path::Path,
) -> u8 {
    use custody_verifier::witness::{cosign, ConsistencyProof};
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        eprintln!("custody-verify: {what}: {e}");
        EXIT_UNREADABLE
    };
    let ledger = match Did::parse(ledger_key) {
        Ok(d) => d,
        Err(e) => return fail("--ledger-key", &e),
    };
    let witness = match custody_identity::KeyPair::load(key) {
        Ok(k) => k,
        Err(e) => return fail("--key", &e),
    };
    let note = match std::fs::read(checkpoint) {
        Ok(b) => b,
        Err(e) => return fail(&checkpoint.display().to_string(), &e),
    };
    let proof: Option<ConsistencyProof> = match consistency.map(std::fs::read).transpose() {
        Ok(None) => None,
        Ok(Some(b)) => match serde_json::from_slice(&b) {
            Ok(p) => Some(p),
            Err(e) => return fail("--consistency", &e),
        },
        Err(e) => return fail("--consistency", &e),
    };
    match cosign(&note, &ledger, &witness, state, proof.as_ref()) {
        Ok(cosigned) => match std::fs::write(out, cosigned) {
            Ok(()) => {
                println!("cosigned as {}", witness.did());
                EXIT_VALID
            }
            Err(e) => fail(&out.display().to_string(), &e),
        },
        Err(e) if e.is_refusal() => {
            eprintln!("custody-verify: {e}");
            EXIT_INVALID
        }
        Err(e) => fail("cosign", &e),
    }
}

fn report_cmd(
    dir: &std::path::Path,
    out: &std::path::Path,
    sign_key: Option<&std::path::Path>,
    ledger_key: Option<Did>,
) -> u8 {
    use custody_verifier::{attest, dsse, render};
    let ext = out.extension().and_then(|e| e.to_str()).unwrap_or("");
    if !matches!(ext, "json" | "md" | "html") {
        eprintln!("custody-verify: --out must end in .json, .md or .html");
        return EXIT_UNREADABLE;
    }
    let key = match sign_key.map(custody_identity::KeyPair::load).transpose() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("custody-verify: --sign-key: {e}");
            return EXIT_UNREADABLE;
        }
    };
    let opts = VerifyOptions {
        ledger_key,
        ..Default::default()
    };
    let (report, v) = match attest::build_report(dir, &opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("custody-verify: cannot read bundle: {e}");
            return EXIT_UNREADABLE;
        }
    };
    let text = match ext {
        "md" => render::markdown(&report),
        "html" => render::html(&report),
        _ => match &key {
            Some(k) => {
                match dsse::sign(&report, k).and_then(|e| serde_json::to_string_pretty(&e)) {
                    Ok(t) => t,
                    Err(e) => {
                        eprintln!("custody-verify: {e}");
                        return EXIT_UNREADABLE;
                    }
                }
            }
            None => serde_json::to_string_pretty(&report).unwrap_or_default(),
        },
    };
    if let Err(e) = std::fs::write(out, text + "\n") {
        eprintln!("custody-verify: {}: {e}", out.display());
        return EXIT_UNREADABLE;
    }
    if ext != "json" {
        if let Some(k) = &key {
            let side = out.with_extension(format!("{ext}.dsse.json"));
            let env = match dsse::sign(&report, k).and_then(|e| serde_json::to_string_pretty(&e)) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("custody-verify: {e}");
                    return EXIT_UNREADABLE;
                }
            };
            if let Err(e) = std::fs::write(&side, env + "\n") {
                eprintln!("custody-verify: {}: {e}", side.display());
                return EXIT_UNREADABLE;
            }
            println!("signed statement written to {}", side.display());
        }
    }
    println!(
        "report written to {}: bundle {} ({} entries); {}",
        out.display(),
        if v.valid {
            "VERIFIED"
        } else {
            "NOT VERIFIED — every section is marked unverified"
        },
        v.tree_size,
        report
            .articles
            .iter()
            .map(|a| format!("Art. {} {}", a.article, a.status))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if v.unreadable {
        EXIT_UNREADABLE
    } else if v.valid {
        EXIT_VALID
    } else {
        EXIT_INVALID
    }
}

fn check_report_cmd(report: &std::path::Path, bundle: &std::path::Path) -> u8 {
    use custody_verifier::{attest, dsse};
    let text = match std::fs::read(report) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("custody-verify: {}: {e}", report.display());
            return EXIT_UNREADABLE;
        }
    };
    let value: serde_json::Value = match serde_json::from_slice(&text) {
        Ok(v) => v,
        Err(e) => {
            eprintln!(
                "custody-verify: {}: not a JSON report or DSSE envelope ({e})",
                report.display()
            );
            return EXIT_UNREADABLE;
        }
    };
    let (claimed, signers) = if value.get("payloadType").is_some() {
        let env: dsse::Envelope = match serde_json::from_value(value) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("custody-verify: malformed DSSE envelope: {e}");
                return EXIT_UNREADABLE;
            }
        };
        match dsse::verify(&env) {
            Ok((signers, st)) => (st["predicate"].clone(), signers),
            Err(e) => {
                println!("INVALID: {e}");
                return EXIT_INVALID;
            }
        }
    } else {
        (value, Vec::new())
    };
    let pinned = claimed["verification"]["ledger_key_pinned"].as_bool() == Some(true);
    let ledger = claimed["verification"]["ledger"]
        .as_str()
        .and_then(|d| Did::parse(d).ok());
    let opts = VerifyOptions {
        ledger_key: if pinned { ledger } else { None },
        ..Default::default()
    };
    let (fresh, _) = match attest::build_report(bundle, &opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("custody-verify: cannot read bundle: {e}");
            return EXIT_UNREADABLE;
        }
    };
    let fresh = serde_json::to_value(&fresh).unwrap_or_default();
    if fresh != claimed {
        println!("INVALID: the report does not match the bundle (it was edited, or is about another ledger or tree size)");
        return EXIT_INVALID;
    }
    if signers.is_empty() {
        println!("report matches the bundle, but it is not signed");
    } else {
        println!(
            "valid: signed by {} and matches the bundle (tree size {}, root {})",
            signers
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            fresh["verification"]["tree_size"],
            fresh["verification"]["root"].as_str().unwrap_or_default()
        );
    }
    EXIT_VALID
}
