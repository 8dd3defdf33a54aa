//! `custody-verify`: the auditor's offline tool.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use custody_identity::Did;
use custody_verifier::proof::{check_proof, prove, read_proof, ProofError};
use custody_verifier::{verify_bundle, VerifyError, VerifyOptions};

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
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a self-contained inclusion proof for one entry.
    Prove {
        dir: PathBuf,
        #[arg(long)]
        seq: u64,
        #[arg(long, value_name = "PROOF")]
        out: PathBuf,
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
            json,
        } => {
            let ledger_key = match parse_did(ledger_key) {
                Ok(k) => k,
                Err(code) => return code,
            };
            match verify_bundle(&dir, &VerifyOptions { ledger_key }) {
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
                    let msg = match &e {
                        VerifyError::Bundle(b) => b.to_string(),
                        VerifyError::Unreadable(s) => s.clone(),
                    };
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
        Command::Prove { dir, seq, out } => match prove(&dir, seq) {
            Ok(p) => {
                let text = match serde_json::to_string_pretty(&p) {
                    Ok(t) => t,
                    Err(e) => {
                        eprintln!("custody-verify: {e}");
                        return EXIT_UNREADABLE;
                    }
                };
                if let Err(e) = std::fs::write(&out, text + "\n") {
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
