//! `custody`: broker and client.
//!
//! Over 800 lines because clap's derive keeps every subcommand's flags
//! and its dispatch arm in this file; the work itself lives in the crates it
//! calls. Its seam, next time it grows: the argument types into `args.rs`
//! and the dispatch of each command family (session, approve/run, tail) beside them.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use custody_agent::client::{session_event, Client};
use custody_agent::sessionfile::SessionFile;
use custody_cli::dev;
use custody_identity::{Did, KeyPair};
use custody_server as server;
use custody_server::config::{parse_duration, Config};

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
    /// Run the broker.
    Serve {
        #[arg(long, value_name = "FILE", default_value = "custody.toml")]
        config: PathBuf,
        /// Overrides `data` from the config.
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
        /// Overrides `listen` from the config.
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
    /// A broker with a spawned OpenBao dev server and example scopes, for trying it out.
    Dev {
        /// Where to keep keys, config and data (default: a new temp dir).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7450")]
        listen: String,
        /// Keep the ledger in a PostgreSQL cluster of its own (initdb in the
        /// dir, a free loopback port), as several brokers would share it.
        #[arg(long)]
        postgres: bool,
    },
    /// Copy a stopped broker's embedded ledger and records into an empty
    /// PostgreSQL database, every entry byte for byte.
    Migrate {
        /// The broker's data directory (`data` in its config).
        #[arg(long, value_name = "DATA")]
        from: PathBuf,
        /// The target database: postgres://USER[:PASSWORD]@HOST[:PORT]/DB
        #[arg(long, value_name = "URL")]
        to: String,
    },
    /// Run the whole scenario end to end and write a verified bundle.
    Demo {
        /// Output directory (created; must be empty or absent).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Agent sessions.
    Session {
        #[command(subcommand)]
        command: SessionCommand,
    },
    /// Mint a short-lived credential for a scope; prints only the token.
    Token {
        #[arg(long, value_name = "SESSIONFILE")]
        session: PathBuf,
        #[arg(long)]
        scope: String,
    },
    /// Sign and append an action to the ledger.
    Log {
        #[arg(long, value_name = "SESSIONFILE")]
        session: PathBuf,
        #[arg(long, value_name = "TYPE")]
        action: String,
        /// A JSON object of details.
        #[arg(long, value_name = "JSON")]
        detail: Option<String>,
    },
    /// The kill switch: revoke an identity.
    Revoke {
        #[arg(long, value_name = "URL")]
        broker: String,
        #[arg(long = "as", value_name = "ADMINKEYFILE")]
        as_key: PathBuf,
        did: String,
        #[arg(long, default_value = "revoked by admin")]
        reason: String,
    },
    /// Agent hooks: read the hook JSON on stdin, sign and record it, answer.
    Hook {
        #[command(subcommand)]
        agent: HookAgent,
    },
    /// Git commit binding: commits made inside an agent session carry its
    /// trailers and are recorded in the ledger.
    Git {
        #[command(subcommand)]
        command: GitCommand,
    },
    /// Decide a call the pre-tool policy held: shows the exact call, then
    /// signs an `approval` (or, with --deny, a refusal) with your own key,
    /// bound to that call, its session, an expiry and a single use.
    Approve {
        #[arg(long, value_name = "URL")]
        broker: String,
        #[arg(long = "as", value_name = "KEYFILE")]
        as_key: PathBuf,
        /// The held call: the ledger entry that held it (the agent's denial names it).
        #[arg(long, value_name = "N", required_unless_present = "list")]
        seq: Option<u64>,
        /// List the held calls you may decide, and decide none.
        #[arg(long)]
        list: bool,
        /// Record a refusal instead of an approval.
        #[arg(long)]
        deny: bool,
        /// How long the approval stays valid (at most 24h).
        #[arg(long, value_name = "DUR", default_value = "15m")]
        ttl: String,
        #[arg(long)]
        reason: Option<String>,
        /// `human`, or `auto-review` for a listed automated reviewer's key.
        #[arg(long, value_name = "human|auto-review", default_value = "human")]
        by: String,
        /// Decide without asking for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Run an agent under custody: start a session, run COMMAND with its
    /// environment, and end the session (tokens revoked) when it exits.
    Run {
        /// The broker (default: $CUSTODY_BROKER).
        #[arg(long, value_name = "URL")]
        broker: Option<String>,
        #[arg(long = "as", value_name = "KEYFILE")]
        as_key: PathBuf,
        #[arg(long, value_name = "NAME")]
        agent: String,
        /// Comma-separated scopes.
        #[arg(long, value_name = "S[,S]", value_delimiter = ',', required = true)]
        scope: Vec<String>,
        #[arg(long, value_name = "CTX")]
        context: String,
        #[arg(long, value_name = "DUR", default_value = "1h")]
        ttl: String,
        /// The agent's command and its arguments.
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Write the managed configuration an administrator deploys so every
    /// agent of a fleet runs custody's hooks and telemetry.
    Install {
        #[command(subcommand)]
        agent: InstallAgent,
    },
    /// Follow the ledger's entry feed as an auditor (or admin) and forward it
    /// to a SIEM: OCSF events or the canonical entry lines, at least once,
    /// resumable with --state (docs/SIEM.md).
    Tail {
        #[arg(long, value_name = "URL")]
        broker: String,
        /// An auditor's (`[trust] auditors`) or an admin's key file.
        #[arg(long = "as", value_name = "KEYFILE")]
        as_key: PathBuf,
        /// Keep following new entries (long poll) instead of stopping when caught up.
        #[arg(long)]
        follow: bool,
        #[arg(long, value_enum, default_value = "ocsf")]
        format: TailFormat,
        /// Start at this seq (inclusive) instead of 0; not with --state.
        #[arg(long, value_name = "SEQ", conflicts_with = "state")]
        since: Option<u64>,
        /// Resume after the last delivered entry, and record progress after
        /// each delivery (written atomically).
        #[arg(long, value_name = "FILE")]
        state: Option<PathBuf>,
        /// The ledger's DID: refuse a broker serving another ledger, and check
        /// checkpoints against this key rather than the one the broker names.
        #[arg(long, value_name = "DID")]
        ledger_key: Option<String>,
        /// Write events to stdout (the default when no other sink is given).
        #[arg(long)]
        stdout: bool,
        /// Append events to a file (fsynced before progress is recorded).
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// Splunk HTTP Event Collector base address (…/services/collector/event is added).
        #[arg(long, value_name = "URL", requires = "token_file")]
        splunk_hec: Option<String>,
        /// File holding the HEC token.
        #[arg(long, value_name = "FILE", requires = "splunk_hec")]
        token_file: Option<PathBuf>,
        /// OTLP/HTTP logs receiver base address (…/v1/logs is added).
        #[arg(long, value_name = "URL")]
        otlp: Option<String>,
        /// A PEM root certificate to trust for the HEC and OTLP sinks.
        #[arg(long, value_name = "PEM")]
        sink_ca: Option<PathBuf>,
        /// Entries asked for per page (at most 1000).
        #[arg(long, value_name = "N", default_value_t = custody_wire::api::MAX_FEED_PAGE)]
        page: usize,
    },
    /// Export the ledger as a bundle directory.
    Export {
        #[arg(long, value_name = "URL")]
        broker: String,
        #[arg(long = "as", value_name = "ADMINKEYFILE")]
        as_key: PathBuf,
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum TailFormat {
    /// OCSF 1.1.0 events (docs/SIEM.md).
    Ocsf,
    /// The canonical entry lines, as in entries.jsonl.
    Jsonl,
}

#[derive(Subcommand)]
enum GitCommand {
    /// Install the prepare-commit-msg, commit-msg, post-commit and post-merge
    /// hooks into a repository.
    Install {
        /// The repository (default: the current directory).
        #[arg(long, value_name = "DIR")]
        repo: Option<PathBuf>,
        /// Fix the session for every commit in this repository (git config
        /// `custody.session`); without it, $CUSTODY_SESSION at commit time decides.
        #[arg(long, value_name = "SESSIONFILE")]
        session: Option<PathBuf>,
        /// Replace existing hooks not written by custody (they are kept as
        /// HOOK.pre-custody).
        #[arg(long)]
        force: bool,
    },
    /// Run by the prepare-commit-msg hook: records the intent, adds the trailers.
    PrepareCommitMsg {
        file: PathBuf,
        source: Option<String>,
        sha: Option<String>,
    },
    /// Run by the commit-msg hook: lets git abort a message left empty.
    CommitMsg { file: PathBuf },
    /// Run by the post-commit hook (or by hand, to retry): records HEAD.
    PostCommit,
    /// Run by the post-merge hook: records a merge commit.
    PostMerge { squash: Option<String> },
}

#[derive(Subcommand)]
enum HookAgent {
    /// Claude Code hooks (SessionStart, UserPromptSubmit, PreToolUse, PostToolUse, Stop, SessionEnd).
    ClaudeCode {
        #[arg(long, value_name = "SESSIONFILE")]
        session: PathBuf,
    },
    /// Codex hooks, same shape.
    Codex {
        #[arg(long, value_name = "SESSIONFILE")]
        session: PathBuf,
    },
}

#[derive(Subcommand)]
enum InstallAgent {
    /// Claude Code managed settings (managed-settings.json).
    ClaudeCode {
        /// Directory to write into (default: Claude Code's managed-settings location).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// The custody binary the hooks run (default: `custody` on the PATH).
        #[arg(long, value_name = "PATH", default_value = "custody")]
        custody: String,
        /// The broker's OTLP endpoint for Claude Code's telemetry (default:
        /// the endpoint each session's environment names).
        #[arg(long, value_name = "URL")]
        broker: Option<String>,
        /// Replace values custody needs that the file sets otherwise.
        #[arg(long)]
        force: bool,
        /// Show what would change, write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Codex managed requirements (requirements.toml).
    Codex {
        /// Directory to write into (default: /etc/codex).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        #[arg(long, value_name = "PATH", default_value = "custody")]
        custody: String,
        /// The broker's OTLP endpoint for Codex's telemetry.
        #[arg(long, value_name = "URL")]
        broker: Option<String>,
        #[arg(long)]
        force: bool,
        #[arg(long)]
        dry_run: bool,
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

#[derive(Subcommand)]
enum SessionCommand {
    /// Delegate a scoped, time-boxed session to an agent.
    Start {
        #[arg(long, value_name = "URL")]
        broker: String,
        #[arg(long = "as", value_name = "KEYFILE")]
        as_key: PathBuf,
        #[arg(long, value_name = "NAME")]
        agent: String,
        /// Comma-separated scopes.
        #[arg(long, value_name = "S[,S]", value_delimiter = ',', required = true)]
        scope: Vec<String>,
        #[arg(long, value_name = "CTX")]
        context: String,
        #[arg(long, value_name = "DUR", default_value = "15m")]
        ttl: String,
        #[arg(long, value_name = "SESSIONFILE")]
        out: PathBuf,
    },
    /// Print `export` lines for the agent's environment.
    Env {
        #[arg(long, value_name = "SESSIONFILE")]
        session: PathBuf,
    },
    /// Print the OTLP headers (JSON) carrying the session's ingest token:
    /// Claude Code's `otelHeadersHelper` (what `custody install` configures).
    OtelHeaders {
        /// The session file (default: $CUSTODY_SESSION).
        #[arg(long, value_name = "SESSIONFILE")]
        session: Option<PathBuf>,
    },
    /// Close the session: records `session.end`; the broker then refuses
    /// everything it sends and revokes its tokens.
    End {
        #[arg(long, value_name = "SESSIONFILE")]
        session: PathBuf,
        #[arg(long)]
        reason: Option<String>,
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

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CUSTODY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Key {
            command: KeyCommand::New { out },
        } => {
            let key = KeyPair::generate();
            key.save(&out)?;
            println!("{}", key.did());
        }
        Command::Serve {
            config,
            data,
            listen,
        } => {
            init_tracing();
            custody_agent::client::install_crypto_provider();
            let mut cfg = Config::load(&config)?;
            if let Some(d) = data {
                cfg.data = d;
            }
            if let Some(l) = listen {
                cfg.listen = l.parse().with_context(|| format!("--listen {l:?}"))?;
            }
            runtime()?.block_on(async move {
                let vault = server::vault_from_config(&cfg)?;
                let listen = cfg.listen;
                let state = server::AppState::open(cfg, vault).await?;
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("binding {listen}"))?;
                let addr = listener.local_addr()?;
                let scheme = if state.cfg.tls.enabled {
                    "https"
                } else {
                    "http"
                };
                // One line on stdout that scripts and tests can wait for.
                println!(
                    "custody broker listening on {scheme}://{addr} ledger {}",
                    state.ledger_key.did()
                );
                server::serve(state, listener, server::shutdown_signal()).await
            })?;
        }
        Command::Dev {
            dir,
            listen,
            postgres,
        } => {
            init_tracing();
            runtime()?.block_on(dev::run(dir, &listen, postgres))?;
        }
        Command::Migrate { from, to } => {
            init_tracing();
            let url = server::config::PgUrl::new(to);
            let m = runtime()?
                .block_on(server::storage::postgres::migrate::migrate(&from, &url))
                .map_err(|e| anyhow::anyhow!("custody migrate to {}: {e}", url.redacted()))?;
            println!(
                "migrated {} entries of ledger {} (root {}) to {}: {} payload bodies, {} checkpoints, {} token accessors, {} ingest credentials",
                m.entries,
                m.ledger,
                m.root,
                url.redacted(),
                m.payloads,
                m.checkpoints,
                m.accessors,
                m.ingest
            );
        }
        Command::Demo { out } => {
            let summary = runtime()?.block_on(custody_cli::demo::run(&out))?;
            print!("{summary}");
            if !summary.valid {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Session {
            command:
                SessionCommand::Start {
                    broker,
                    as_key,
                    agent,
                    scope,
                    context,
                    ttl,
                    out,
                },
        } => {
            let key = KeyPair::load(&as_key)?;
            let ttl = parse_duration(&ttl).map_err(|e| anyhow::anyhow!("--ttl {e}"))?;
            if out.exists() {
                bail!("{} already exists", out.display());
            }
            let client = Client::new(&broker, None)?;
            let (file, seq) =
                runtime()?.block_on(client.start_session(&key, &agent, &scope, &context, ttl))?;
            file.save(&out)?;
            eprintln!(
                "session {} started (entry {seq}), expires {}; session file {}",
                file.did,
                file.expires_at,
                out.display()
            );
            println!("{}", file.did);
        }
        Command::Session {
            command: SessionCommand::End { session, reason },
        } => {
            let s = SessionFile::load(&session)?;
            let mut ev = session_event(&s, custody_ledger::actions::SESSION_END)?;
            if let Some(r) = reason {
                ev.details.insert("reason".into(), r.into());
            }
            let client = Client::new(&s.broker, Some(&s.ca_pem))?;
            let a = runtime()?.block_on(client.log(&s, ev))?;
            eprintln!("session {} ended (entry {})", s.did, a.seq);
            println!("{}", a.seq);
        }
        Command::Session {
            command: SessionCommand::OtelHeaders { session },
        } => {
            let path =
                match session.or_else(|| std::env::var_os("CUSTODY_SESSION").map(PathBuf::from)) {
                    Some(p) => p,
                    None => bail!("--session or CUSTODY_SESSION is needed"),
                };
            let s = SessionFile::load(&path)?;
            println!(
                "{}",
                serde_json::json!({"Authorization": format!("Bearer {}", s.ingest_token())})
            );
        }
        Command::Session {
            command: SessionCommand::Env { session },
        } => {
            let s = SessionFile::load(&session)?;
            let path = std::fs::canonicalize(&session)?;
            println!(
                "export CUSTODY_SESSION={}",
                shell_quote(&path.display().to_string())
            );
            println!(
                "export OTEL_EXPORTER_OTLP_ENDPOINT={}",
                shell_quote(&s.broker)
            );
            println!("export OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf");
            // Claude Code exports its events only when asked to.
            println!("export CLAUDE_CODE_ENABLE_TELEMETRY=1");
            println!("export OTEL_LOGS_EXPORTER=otlp");
            for (k, v) in custody_cli::run::session_env(&s, &path) {
                if k == "CUSTODY_SESSION" || k.starts_with("OTEL_") || k.starts_with("CLAUDE_") {
                    continue;
                }
                println!("export {k}={}", shell_quote(&v));
            }
            println!(
                "export OTEL_EXPORTER_OTLP_HEADERS={}",
                shell_quote(&format!("Authorization=Bearer {}", s.ingest_token()))
            );
        }
        Command::Token { session, scope } => {
            let s = SessionFile::load(&session)?;
            let client = Client::new(&s.broker, Some(&s.ca_pem))?;
            let m = runtime()?.block_on(client.mint(&s, &scope))?;
            eprintln!(
                "token for scope {scope}: policies {:?}, TTL {}s, recorded as entries {} and {}",
                m.policies, m.ttl_seconds, m.request_seq, m.mint_seq
            );
            println!("{}", m.token);
        }
        Command::Log {
            session,
            action,
            detail,
        } => {
            let s = SessionFile::load(&session)?;
            let mut ev = session_event(&s, &action)?;
            if let Some(d) = detail {
                let v: serde_json::Value =
                    serde_json::from_str(&d).context("--detail must be JSON")?;
                match v {
                    serde_json::Value::Object(m) => ev.details = m,
                    _ => bail!("--detail must be a JSON object"),
                }
            }
            let client = Client::new(&s.broker, Some(&s.ca_pem))?;
            let a = runtime()?.block_on(client.log(&s, ev))?;
            println!("{}", a.seq);
        }
        Command::Revoke {
            broker,
            as_key,
            did,
            reason,
        } => {
            let key = KeyPair::load(&as_key)?;
            let did = Did::parse(&did)?;
            let client = Client::new(&broker, None)?;
            let t0 = std::time::Instant::now();
            let r = runtime()?.block_on(client.revoke(&key, &did, &reason))?;
            println!(
                "revoked {} (entry {}): {} session(s), {} token(s) revoked in {:?}",
                r.subject,
                r.seq,
                r.sessions.len(),
                r.tokens_revoked,
                t0.elapsed()
            );
        }
        Command::Hook { agent } => {
            let (agent, session) = match agent {
                HookAgent::ClaudeCode { session } => {
                    (custody_agent::hook::Agent::ClaudeCode, session)
                }
                HookAgent::Codex { session } => (custody_agent::hook::Agent::Codex, session),
            };
            let input = custody_agent::hook::read_input()?;
            // One thread: a hook is a few sequential requests, and the
            // agent waits for this process on every tool call.
            let out = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(custody_agent::hook::run(agent, &session, &input))?;
            if let Some(v) = out.stdout {
                println!("{v}");
            }
            return Ok(ExitCode::from(out.exit_code));
        }
        Command::Git { command } => match command {
            GitCommand::Install {
                repo,
                session,
                force,
            } => {
                let done = custody_agent::git::install(repo.as_deref(), session.as_deref(), force)?;
                print!("{done}");
            }
            GitCommand::PrepareCommitMsg { file, source, .. } => {
                custody_agent::git::prepare_commit_msg(&file, source.as_deref())?
            }
            GitCommand::CommitMsg { file } => custody_agent::git::commit_msg(&file)?,
            GitCommand::PostCommit => custody_agent::git::post_commit()?,
            GitCommand::PostMerge { squash } => custody_agent::git::post_merge(squash.as_deref())?,
        },
        Command::Approve {
            broker,
            as_key,
            seq,
            list,
            deny,
            ttl,
            reason,
            by,
            yes,
        } => {
            let key = KeyPair::load(&as_key)?;
            let reviewer = match by.as_str() {
                "human" => false,
                "auto-review" | "auto_review" => true,
                other => bail!("--by {other:?}: `human` or `auto-review`"),
            };
            let ttl = parse_duration(&ttl).map_err(|e| anyhow::anyhow!("--ttl {e}"))?;
            let client = Client::new(&broker, None)?;
            let rt = runtime()?;
            if list {
                let p = rt.block_on(client.pending(&key, None))?;
                if p.held.is_empty() {
                    eprintln!("no held calls you may decide");
                }
                for h in &p.held {
                    println!("{}", custody_agent::approve::describe(h));
                }
                return Ok(ExitCode::SUCCESS);
            }
            let seq = seq.context("--seq is required")?;
            let p = rt.block_on(client.pending(&key, Some(seq)))?;
            let held = p
                .held
                .into_iter()
                .next()
                .with_context(|| format!("no held call at entry {seq}"))?;
            custody_agent::approve::check_held(&held)?;
            eprint!("{}", custody_agent::approve::describe(&held));
            let verb = if deny { "refuse" } else { "approve" };
            if !yes {
                use std::io::IsTerminal;
                if !std::io::stdin().is_terminal() {
                    bail!("pass --yes to {verb} without a prompt");
                }
                eprint!("{verb} this call? [y/N] ");
                let mut answer = String::new();
                std::io::stdin().read_line(&mut answer)?;
                if !matches!(answer.trim(), "y" | "Y" | "yes") {
                    eprintln!("nothing recorded");
                    return Ok(ExitCode::from(1));
                }
            }
            let ev = custody_agent::approve::approval_event(
                &key,
                &held,
                !deny,
                ttl,
                reviewer,
                reason.as_deref(),
            )?;
            let r = rt.block_on(client.submit_approval(&key, ev.sign(&key)?))?;
            eprintln!(
                "{} (entry {}), valid until {}; single use",
                if deny { "refused" } else { "approved" },
                r.seq,
                r.expires_at
            );
            println!("{}", r.seq);
        }
        Command::Run {
            broker,
            as_key,
            agent,
            scope,
            context,
            ttl,
            command,
        } => {
            let broker = match broker.or_else(|| std::env::var("CUSTODY_BROKER").ok()) {
                Some(b) => b,
                None => bail!("--broker URL or CUSTODY_BROKER is needed"),
            };
            let key = KeyPair::load(&as_key)?;
            let ttl = parse_duration(&ttl).map_err(|e| anyhow::anyhow!("--ttl {e}"))?;
            let code = runtime()?.block_on(custody_cli::run::run(
                &broker, &key, &agent, &scope, &context, ttl, &command,
            ))?;
            return Ok(code);
        }
        Command::Install { agent } => {
            let out = match agent {
                InstallAgent::ClaudeCode {
                    dir,
                    custody,
                    broker,
                    force,
                    dry_run,
                } => custody_cli::install::claude_code(&custody_cli::install::Options {
                    dir,
                    custody,
                    broker,
                    force,
                    dry_run,
                })?,
                InstallAgent::Codex {
                    dir,
                    custody,
                    broker,
                    force,
                    dry_run,
                } => custody_cli::install::codex(&custody_cli::install::Options {
                    dir,
                    custody,
                    broker,
                    force,
                    dry_run,
                })?,
            };
            print!("{out}");
        }
        Command::Tail {
            broker,
            as_key,
            follow,
            format,
            since,
            state,
            ledger_key,
            stdout,
            file,
            splunk_hec,
            token_file,
            otlp,
            sink_ca,
            page,
        } => {
            use custody_agent::tail::{self, sinks::Sink, sinks::Token, Format, TailOptions};
            let key = KeyPair::load(&as_key)?;
            let ledger_key = ledger_key
                .map(|d| Did::parse(&d).with_context(|| "--ledger-key"))
                .transpose()?;
            let ca = sink_ca
                .map(|p| std::fs::read_to_string(&p).with_context(|| p.display().to_string()))
                .transpose()?;
            let mut sinks = Vec::new();
            if let Some(p) = &file {
                sinks.push(Sink::file(p).map_err(anyhow::Error::msg)?);
            }
            if let (Some(url), Some(tf)) = (&splunk_hec, &token_file) {
                let token = Token::from_file(tf).map_err(anyhow::Error::msg)?;
                sinks.push(
                    Sink::hec(url, token, ca.as_deref())
                        .map_err(|e| anyhow::anyhow!("--splunk-hec: {e}"))?,
                );
            }
            if let Some(url) = &otlp {
                sinks.push(
                    Sink::otlp(url, ca.as_deref()).map_err(|e| anyhow::anyhow!("--otlp: {e}"))?,
                );
            }
            if stdout || sinks.is_empty() {
                sinks.insert(0, Sink::Stdout);
            }
            let opts = TailOptions {
                key,
                follow,
                format: match format {
                    TailFormat::Ocsf => Format::Ocsf,
                    TailFormat::Jsonl => Format::Jsonl,
                },
                since,
                state,
                ledger_key,
                page,
            };
            let client = Client::new(&broker, None)?;
            let done = runtime()?.block_on(tail::run(&client, &opts, &mut sinks))?;
            eprintln!(
                "custody tail: delivered {} entries; next seq {}; {} checkpoint checks passed",
                done.delivered, done.next, done.checkpoints_checked
            );
        }
        Command::Export {
            broker,
            as_key,
            out,
        } => {
            let key = KeyPair::load(&as_key)?;
            let client = Client::new(&broker, None)?;
            runtime()?.block_on(client.export(&key, &out))?;
            println!("exported the ledger to {}", out.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}
