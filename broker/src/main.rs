//! `custody`: broker and client.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use custody_identity::KeyPair;

#[derive(Parser)]
#[command(
    name = "custody",
    version,
    about = "Identity and a tamper-evident audit ledger for AI agents"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Key management.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Run the whole scenario end to end and write a verified bundle.
    Demo {
        /// Output directory (created; must be empty or absent).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Generate an Ed25519 key, write it (mode 0600) and print its DID.
    New {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("custody: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Key {
            command: KeyCommand::New { out },
        } => {
            let key = KeyPair::generate();
            key.save(&out)
                .with_context(|| format!("writing {}", out.display()))?;
            println!("{}", key.did());
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { out } => {
            let summary = custody_broker::demo::run(&out)?;
            print!("{summary}");
            Ok(if summary.valid {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}
