//! `custody run`: one command to run an agent under custody. It starts a
//! session delegated by the caller's key, runs the agent with the session's
//! environment (`CUSTODY_SESSION`, the OTLP endpoint and headers carrying
//! the session's ingest token), and when the agent exits — normally, by an
//! error or killed by a signal — records the session's `session.end`, on
//! which the broker revokes every token the session holds.
//!
//! SIGINT, SIGTERM and SIGHUP sent to `custody run` are forwarded to the
//! agent (a second one kills it), so stopping the wrapper stops the agent
//! and still ends the session. A `custody run` that is itself SIGKILLed
//! cannot end anything: the session then lapses at its TTL.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use custody_agent::client::{session_event, Client};
use custody_agent::sessionfile::SessionFile;
use custody_agent::BoxFuture;
use custody_identity::KeyPair;
use custody_ledger::actions;

/// The environment an agent runs with in a session (what `custody session
/// env` prints): where the session file is, and its telemetry settings.
pub fn session_env(s: &SessionFile, path: &Path) -> Vec<(String, String)> {
    vec![
        ("CUSTODY_SESSION".into(), path.display().to_string()),
        ("CUSTODY_BROKER".into(), s.broker.clone()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), s.broker.clone()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "http/protobuf".into()),
        // Claude Code exports its events only when asked to.
        ("CLAUDE_CODE_ENABLE_TELEMETRY".into(), "1".into()),
        ("OTEL_LOGS_EXPORTER".into(), "otlp".into()),
        (
            "OTEL_EXPORTER_OTLP_HEADERS".into(),
            format!("Authorization=Bearer {}", s.ingest_token()),
        ),
        // For agents whose config names the token itself (Codex's [otel]).
        ("CUSTODY_INGEST_TOKEN".into(), s.ingest_token().into()),
    ]
}

/// A private directory for the session file (0700), removed at the end.
struct SessionDir(PathBuf);

impl SessionDir {
    fn create() -> anyhow::Result<Self> {
        let mut salt = [0u8; 8];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut salt);
        let dir = std::env::temp_dir().join(format!(
            "custody-run-{}-{}",
            std::process::id(),
            hex::encode(salt)
        ));
        let mut b = std::fs::DirBuilder::new();
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
        b.create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for SessionDir {
    fn drop(&mut self) {
        // The session key is dead once the session ended; the file goes
        // with the directory all the same.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How the agent ended.
enum Exit {
    Code(i32),
    Signal(i32),
}

/// Runs `command` in a new session; returns the agent's exit code (128 +
/// the signal when a signal killed it).
pub fn run<'a>(
    broker: &'a str,
    key: &'a KeyPair,
    agent: &'a str,
    scopes: &'a [String],
    context: &'a str,
    ttl: Duration,
    command: &'a [String],
) -> BoxFuture<'a, anyhow::Result<ExitCode>> {
    Box::pin(run_body(broker, key, agent, scopes, context, ttl, command))
}

/// [`run`]'s body.
async fn run_body(
    broker: &str,
    key: &KeyPair,
    agent: &str,
    scopes: &[String],
    context: &str,
    ttl: Duration,
    command: &[String],
) -> anyhow::Result<ExitCode> {
    let (program, args) = command.split_first().context("no command to run")?;
    let client = Client::new(broker, None)?;
    let (file, seq) = client
        .start_session(key, agent, scopes, context, ttl)
        .await?;
    let dir = SessionDir::create()?;
    let path = dir.0.join("session.json");
    file.save(&path)?;
    eprintln!(
        "custody run: session {} started (entry {seq}), expires {}",
        file.did, file.expires_at
    );
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).envs(session_env(&file, &path));
    let exit = match cmd.spawn() {
        Ok(child) => wait_forwarding_signals(child).await,
        Err(e) => Err(anyhow::anyhow!("starting {program}: {e}")),
    };
    // Whatever happened to the agent, the session ends now.
    let reason = match &exit {
        Ok(Exit::Code(c)) => format!("custody run: the agent exited with code {c}"),
        Ok(Exit::Signal(s)) => format!("custody run: the agent was killed by signal {s}"),
        Err(e) => format!("custody run: {e}"),
    };
    let mut end = session_event(&file, actions::SESSION_END)?;
    end.details.insert("reason".into(), reason.clone().into());
    match &exit {
        Ok(Exit::Code(c)) => {
            end.details.insert("exit_code".into(), (*c).into());
        }
        Ok(Exit::Signal(s)) => {
            end.details.insert("signal".into(), (*s).into());
        }
        Err(_) => {}
    }
    let client = Client::new(&file.broker, Some(&file.ca_pem))?;
    let mut ended = client.log(&file, end.clone()).await;
    if ended.is_err() {
        // One retry, with a fresh nonce, for a broker that blinked.
        tokio::time::sleep(Duration::from_millis(500)).await;
        end.nonce = custody_ledger::Nonce::random();
        ended = client.log(&file, end).await;
    }
    match ended {
        Ok(a) => eprintln!(
            "custody run: session {} ended (entry {}); its tokens are revoked",
            file.did, a.seq
        ),
        Err(e) => eprintln!(
            "custody run: could not record the session's end ({e:#}); it lapses at {}",
            file.expires_at
        ),
    }
    drop(dir);
    Ok(match exit? {
        Exit::Code(c) => ExitCode::from(u8::try_from(c & 0xff).unwrap_or(1)),
        Exit::Signal(s) => ExitCode::from(u8::try_from((128 + s) & 0xff).unwrap_or(1)),
    })
}

/// Waits for the agent, forwarding SIGINT, SIGTERM and SIGHUP to it; a
/// second signal kills it.
#[cfg(unix)]
async fn wait_forwarding_signals(mut child: tokio::process::Child) -> anyhow::Result<Exit> {
    use std::os::unix::process::ExitStatusExt;
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let pid = child.id().map(|p| p as libc::pid_t);
    let mut forwarded = 0u32;
    loop {
        let sig = tokio::select! {
            status = child.wait() => {
                let status = status?;
                return Ok(match (status.code(), status.signal()) {
                    (Some(c), _) => Exit::Code(c),
                    (None, Some(s)) => Exit::Signal(s),
                    (None, None) => Exit::Code(1),
                });
            }
            _ = int.recv() => libc::SIGINT,
            _ = term.recv() => libc::SIGTERM,
            _ = hup.recv() => libc::SIGHUP,
        };
        forwarded += 1;
        let sig = if forwarded > 1 { libc::SIGKILL } else { sig };
        if let Some(pid) = pid {
            // SAFETY: kill(2) on our own child's pid; it has no memory
            // effects on this process.
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }
}

#[cfg(not(unix))]
async fn wait_forwarding_signals(mut child: tokio::process::Child) -> anyhow::Result<Exit> {
    let status = child.wait().await?;
    Ok(Exit::Code(status.code().unwrap_or(1)))
}
