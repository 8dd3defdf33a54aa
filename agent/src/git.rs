//! `custody git install`: commits made inside an agent session carry the
//! session's trailers and are recorded in the ledger.
//!
//! `custody git install` writes four small hook scripts into the repository's
//! hooks directory (`git rev-parse --git-path hooks`, so `core.hooksPath` is
//! honoured). Each calls this binary back by its absolute path:
//!
//! - `prepare-commit-msg` → [`prepare_commit_msg`]: when a session is active
//!   (`$CUSTODY_SESSION`, else git config `custody.session`), appends a
//!   `git.commit_intent` entry signed by the session (repo, branch, the index's
//!   tree, agent) and adds the `Custody-Session: <DID>` and
//!   `Custody-Entry: <seq>` trailers to the message, replacing earlier ones
//!   (amend, rebase), so each appears once. The intent is remembered in the git
//!   dir (`custody-commit-intent.json`) for the hooks that run after the commit.
//! - `commit-msg` → [`commit_msg`]: when the message is empty apart from the
//!   custody trailers (an editor left empty to abort), removes the trailers so
//!   git aborts the commit as it would without custody.
//! - `post-commit` / `post-merge` → [`post_commit`] / [`post_merge`]: when
//!   HEAD's trailers name this session and the intent remembered above, appends
//!   `git.commit` with the full commit hash, `intent_seq`, repo, branch and
//!   tree; the commit message goes in as a salted payload digest only (its body
//!   beside the chain, redactable), never in the details.
//!
//! Without an active session the hooks do nothing. When the session cannot be
//! used (broker unreachable, session revoked or expired, unreadable session
//! file) the commit goes ahead without trailers and a warning goes to stderr;
//! `CUSTODY_GIT_REQUIRE=1` makes `prepare-commit-msg` refuse the commit instead.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use custody_identity::Did;
use serde::{Deserialize, Serialize};

use crate::client::{salted_payload, session_event, Client};
use crate::sessionfile::SessionFile;

/// The trailer naming the session DID.
pub const TRAILER_SESSION: &str = "Custody-Session";
/// The trailer naming the seq of the `git.commit_intent` entry.
pub const TRAILER_ENTRY: &str = "Custody-Entry";
/// Recorded by `prepare-commit-msg`, before the commit exists.
pub const ACTION_INTENT: &str = "git.commit_intent";
/// Recorded once the commit exists; `details.commit` is its hash.
pub const ACTION_COMMIT: &str = "git.commit";
/// The session file of the agent whose commits are recorded.
pub const ENV_SESSION: &str = "CUSTODY_SESSION";
/// `1`: refuse a commit inside a session that cannot be recorded.
pub const ENV_REQUIRE: &str = "CUSTODY_GIT_REQUIRE";
/// Git config key for a session file fixed at install time (`--session`).
pub const CONFIG_SESSION: &str = "custody.session";
/// The hooks `custody git install` writes.
pub const HOOKS: [&str; 4] = [
    "prepare-commit-msg",
    "commit-msg",
    "post-commit",
    "post-merge",
];

/// Marks a hook script as written by custody (so it may be replaced).
const MARKER: &str = "custody-git-hook";
/// The intent recorded by the last `prepare-commit-msg`, in the git dir.
const PENDING_FILE: &str = "custody-commit-intent.json";
/// A commit waits at most this long for the broker.
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);
/// Details taken from the repository are cut to this many characters.
const MAX_DETAIL_CHARS: usize = 256;
/// Git's cut line under `git commit -v` (after the comment character).
const SCISSORS: &str = "------------------------ >8 ------------------------";

// ---------------------------------------------------------------------------
// Running git

fn git_command<S: AsRef<OsStr>>(dir: Option<&Path>, args: &[S]) -> Command {
    let mut cmd = Command::new("git");
    if let Some(d) = dir {
        cmd.arg("-C").arg(d);
    }
    cmd.args(args);
    cmd
}

fn describe<S: AsRef<OsStr>>(args: &[S]) -> String {
    let words: Vec<String> = args
        .iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect();
    format!("git {}", words.join(" "))
}

/// Runs git, feeding `input` on stdin; returns stdout, or an error with git's stderr.
fn git_raw<S: AsRef<OsStr>>(
    dir: Option<&Path>,
    args: &[S],
    input: Option<&[u8]>,
) -> anyhow::Result<Vec<u8>> {
    let mut cmd = git_command(dir, args);
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .context("cannot run git (is it installed and on PATH?)")?;
    let stdin = child.stdin.take();
    let out = std::thread::scope(|s| {
        let writer = match (input, stdin) {
            (Some(bytes), Some(mut pipe)) => Some(s.spawn(move || pipe.write_all(bytes))),
            _ => None,
        };
        let out = child.wait_with_output();
        if let Some(w) = writer {
            // A write error shows up as git's failure below.
            let _ = w.join();
        }
        out
    })
    .with_context(|| format!("running {}", describe(args)))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!("{} failed ({}): {}", describe(args), out.status, err.trim());
    }
    Ok(out.stdout)
}

/// Runs git and returns its stdout as text without the trailing newline.
fn git<S: AsRef<OsStr>>(dir: Option<&Path>, args: &[S]) -> anyhow::Result<String> {
    let out = git_raw(dir, args, None)?;
    let text = String::from_utf8(out).with_context(|| format!("{}: not UTF-8", describe(args)))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

/// Cuts a detail taken from the repository to a bounded length.
fn bounded(s: &str) -> String {
    s.chars().take(MAX_DETAIL_CHARS).collect()
}

// ---------------------------------------------------------------------------
// Which session, and the fail-open policy

/// The session file commits are made in: `$CUSTODY_SESSION`, else git config
/// `custody.session`, else none (the hooks then do nothing).
fn active_session() -> Option<PathBuf> {
    if let Some(v) = std::env::var_os(ENV_SESSION) {
        if !v.is_empty() {
            return Some(PathBuf::from(v));
        }
    }
    // Exits 1 when unset.
    git(None, &["config", "--get", "--type=path", CONFIG_SESSION])
        .ok()
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

fn load_session(path: &Path) -> anyhow::Result<SessionFile> {
    SessionFile::load(path).with_context(|| {
        format!(
            "the session file {} (from ${ENV_SESSION} or git config {CONFIG_SESSION})",
            path.display()
        )
    })
}

fn require() -> bool {
    matches!(
        std::env::var(ENV_REQUIRE).as_deref().map(str::trim),
        Ok("1") | Ok("true") | Ok("yes")
    )
}

/// A failure inside a session: a warning and carry on, or, with
/// `CUSTODY_GIT_REQUIRE=1`, an error (which makes git refuse the commit in
/// `prepare-commit-msg`).
fn fail_open(e: anyhow::Error, consequence: &str, refusal: &str) -> anyhow::Result<()> {
    if require() {
        return Err(e.context(format!("{ENV_REQUIRE}=1: {refusal}")));
    }
    eprintln!("custody: warning: {e:#}");
    eprintln!("custody: warning: {consequence}");
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Waits for the broker at most [`BROKER_TIMEOUT`].
async fn with_timeout<T, E: Into<anyhow::Error>>(
    broker: &str,
    fut: impl Future<Output = Result<T, E>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(BROKER_TIMEOUT, fut).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => Err(anyhow!(
            "the broker at {broker} did not answer within {}s",
            BROKER_TIMEOUT.as_secs()
        )),
    }
}

// ---------------------------------------------------------------------------
// Repository facts

struct RepoFacts {
    repo: String,
    branch: String,
}

fn repo_facts() -> anyhow::Result<RepoFacts> {
    let top = git(None, &["rev-parse", "--show-toplevel"]).context("not inside a git work tree")?;
    let repo = Path::new(&top)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or(top);
    Ok(RepoFacts {
        repo: bounded(&repo),
        branch: bounded(&current_branch()),
    })
}

/// The branch being committed to: HEAD's branch, the branch being rebased
/// while a rebase runs on a detached HEAD, else `HEAD`.
fn current_branch() -> String {
    if let Ok(b) = git(None, &["symbolic-ref", "--short", "-q", "HEAD"]) {
        if !b.is_empty() {
            return b;
        }
    }
    for state in ["rebase-merge/head-name", "rebase-apply/head-name"] {
        let Ok(p) = git(None, &["rev-parse", "--git-path", state]) else {
            continue;
        };
        if let Ok(name) = std::fs::read_to_string(p) {
            let name = name.trim();
            if !name.is_empty() {
                return name.strip_prefix("refs/heads/").unwrap_or(name).to_string();
            }
        }
    }
    "HEAD".into()
}

/// The intent the last `prepare-commit-msg` recorded in this work tree.
#[derive(Debug, Serialize, Deserialize)]
struct Pending {
    did: String,
    seq: u64,
}

fn pending_path() -> anyhow::Result<PathBuf> {
    Ok(PathBuf::from(git(
        None,
        &["rev-parse", "--git-path", PENDING_FILE],
    )?))
}

fn read_pending() -> Option<Pending> {
    let p = pending_path().ok()?;
    let text = std::fs::read(p).ok()?;
    serde_json::from_slice(&text).ok()
}

// ---------------------------------------------------------------------------
// prepare-commit-msg

/// `custody git prepare-commit-msg FILE [SOURCE [SHA]]`, run by the hook.
pub fn prepare_commit_msg(msg_file: &Path, source: Option<&str>) -> anyhow::Result<()> {
    let Some(session) = active_session() else {
        return Ok(());
    };
    let r = runtime().and_then(|rt| rt.block_on(prepare(&session, msg_file, source)));
    match r {
        Ok(()) => Ok(()),
        Err(e) => fail_open(
            e,
            &format!("committing without custody trailers, so this commit is not recorded in the ledger (set {ENV_REQUIRE}=1 to refuse such commits instead)"),
            "the commit is refused because it cannot be recorded",
        ),
    }
}

async fn prepare(session_path: &Path, msg_file: &Path, source: Option<&str>) -> anyhow::Result<()> {
    let session = load_session(session_path)?;
    let facts = repo_facts()?;
    // Git points hooks at the index being committed (GIT_INDEX_FILE), so this
    // is the tree of the commit about to be made.
    let tree = git(None, &["write-tree"]).context("cannot write the index as a tree")?;
    let mut ev = session_event(&session, ACTION_INTENT)?;
    ev.details.insert("repo".into(), facts.repo.into());
    ev.details.insert("branch".into(), facts.branch.into());
    ev.details.insert("tree".into(), tree.into());
    ev.details
        .insert("agent".into(), bounded(&session.agent).into());
    if let Some(s) = source.filter(|s| !s.is_empty()) {
        ev.details.insert("source".into(), bounded(s).into());
    }
    let client = Client::new(&session.broker, Some(&session.ca_pem))?;
    let appended = with_timeout(&session.broker, client.log(&session, ev)).await?;

    let pending = Pending {
        did: session.did.as_str().to_string(),
        seq: appended.seq,
    };
    let path = pending_path()?;
    std::fs::write(&path, serde_json::to_vec(&pending)?)
        .with_context(|| format!("writing {}", path.display()))?;

    let mut args: Vec<OsString> = [
        "interpret-trailers",
        "--in-place",
        "--no-divider",
        "--where",
        "end",
        "--if-exists",
        "replace",
        "--if-missing",
        "add",
        "--trailer",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    args.push(format!("{TRAILER_SESSION}: {}", session.did).into());
    args.push("--trailer".into());
    args.push(format!("{TRAILER_ENTRY}: {}", appended.seq).into());
    args.push(msg_file.as_os_str().to_owned());
    git_raw(None, &args, None).context("adding the custody trailers to the commit message")?;
    Ok(())
}

// ---------------------------------------------------------------------------
// commit-msg

fn is_custody_trailer(line: &[u8]) -> bool {
    [TRAILER_SESSION, TRAILER_ENTRY].iter().any(|key| {
        line.len() > key.len()
            && line[..key.len()].eq_ignore_ascii_case(key.as_bytes())
            && line[key.len()..].trim_ascii_start().starts_with(b":")
    })
}

fn is_scissors(line: &[u8]) -> bool {
    let Ok(line) = std::str::from_utf8(line) else {
        return false;
    };
    let line = line.trim_end();
    line.ends_with(SCISSORS) && line.len() <= SCISSORS.len() + 4
}

/// `custody git commit-msg FILE`, run by the hook. When nothing but the custody
/// trailers (and comments) is left in the message, removes the trailers, so
/// that git aborts the empty commit as it would without custody. Never blocks
/// a commit itself.
pub fn commit_msg(msg_file: &Path) -> anyhow::Result<()> {
    if let Err(e) = strip_lone_trailers(msg_file) {
        eprintln!("custody: warning: {e:#}");
    }
    Ok(())
}

fn strip_lone_trailers(msg_file: &Path) -> anyhow::Result<()> {
    let text = std::fs::read(msg_file).with_context(|| msg_file.display().to_string())?;
    let lines: Vec<&[u8]> = text.split_inclusive(|b| *b == b'\n').collect();
    if !lines.iter().any(|l| is_custody_trailer(l)) {
        return Ok(());
    }
    let kept: Vec<&[u8]> = lines
        .iter()
        .copied()
        .filter(|l| !is_custody_trailer(l))
        .collect();
    let message: Vec<u8> = kept
        .iter()
        .take_while(|l| !is_scissors(l))
        .flat_map(|l| l.iter().copied())
        .collect();
    let stripped = git_raw(None, &["stripspace", "--strip-comments"], Some(&message))?;
    if stripped.iter().all(u8::is_ascii_whitespace) {
        std::fs::write(msg_file, kept.concat())
            .with_context(|| format!("writing {}", msg_file.display()))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// post-commit / post-merge

/// `custody git post-commit`, run by the hook (and by hand to retry).
pub fn post_commit() -> anyhow::Result<()> {
    record_head()
}

/// `custody git post-merge [SQUASH]`, run by the hook: a merge that made a
/// merge commit is recorded like any commit; a squash merge made none.
pub fn post_merge(squash: Option<&str>) -> anyhow::Result<()> {
    if squash == Some("1") {
        return Ok(());
    }
    record_head()
}

fn record_head() -> anyhow::Result<()> {
    let Some(session) = active_session() else {
        return Ok(());
    };
    let r = runtime().and_then(|rt| rt.block_on(record(&session)));
    match r {
        Ok(_) => Ok(()),
        Err(e) => fail_open(
            e,
            "the commit was made but is not recorded in the ledger; run `custody git post-commit` in this repository to retry",
            "the commit was made but is not recorded in the ledger",
        ),
    }
}

/// The last value of each custody trailer in a commit message.
fn custody_trailers(message: &[u8]) -> anyhow::Result<(Option<String>, Option<String>)> {
    let parsed = git_raw(
        None,
        &["interpret-trailers", "--parse", "--no-divider"],
        Some(message),
    )?;
    let (mut session, mut entry) = (None, None);
    for line in String::from_utf8_lossy(&parsed).lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim().to_string());
        if k.eq_ignore_ascii_case(TRAILER_SESSION) {
            session = Some(v);
        } else if k.eq_ignore_ascii_case(TRAILER_ENTRY) {
            entry = Some(v);
        }
    }
    Ok((session, entry))
}

/// Records HEAD as `git.commit` when its trailers name this session and the
/// intent `prepare-commit-msg` recorded here. Returns the new entry's seq.
async fn record(session_path: &Path) -> anyhow::Result<Option<u64>> {
    // Nothing to do unless prepare-commit-msg recorded an intent here (so a
    // commit it could not record gets one warning, not two).
    let Some(pending) = read_pending() else {
        return Ok(None);
    };
    let commit = git(None, &["rev-parse", "--verify", "HEAD"])?;
    let raw = git_raw(None, &["cat-file", "commit", &commit], None)?;
    let message: &[u8] = raw
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| &raw[i + 2..])
        .unwrap_or_default();
    let (t_session, t_entry) = custody_trailers(message)?;
    if t_session.as_deref() != Some(pending.did.as_str())
        || t_entry.as_deref() != Some(pending.seq.to_string().as_str())
    {
        // Not the commit the recorded intent was for: made outside the
        // session, its trailers removed, already recorded, or a commit that
        // reached HEAD without a prepare-commit-msg here (a fast-forward merge).
        return Ok(None);
    }
    let intent_seq = pending.seq;
    let session = load_session(session_path)?;
    if session.did.as_str() != pending.did {
        bail!(
            "HEAD was prepared in session {} but the active session is {}",
            pending.did,
            session.did
        );
    }
    let facts = repo_facts()?;
    let tree = git(None, &["rev-parse", "--verify", "HEAD^{tree}"])?;
    let mut ev = session_event(&session, ACTION_COMMIT)?;
    ev.details.insert("commit".into(), commit.into());
    ev.details.insert("intent_seq".into(), intent_seq.into());
    ev.details.insert("repo".into(), facts.repo.into());
    ev.details.insert("branch".into(), facts.branch.into());
    ev.details.insert("tree".into(), tree.into());
    ev.details
        .insert("agent".into(), bounded(&session.agent).into());
    // The message may hold anything: only its salted digest enters the chain.
    let body = if message.is_empty() {
        None
    } else {
        let (pref, body) = salted_payload(message);
        ev.payload = Some(pref);
        Some(body)
    };
    let key = session.key()?;
    let signed = ev.sign(&key)?;
    let client = Client::new(&session.broker, Some(&session.ca_pem))?;
    let appended = with_timeout(&session.broker, client.log_as(&key, signed, body)).await?;
    if let Ok(p) = pending_path() {
        let _ = std::fs::remove_file(p);
    }
    Ok(Some(appended.seq))
}

// ---------------------------------------------------------------------------
// install

/// What [`install`] did.
#[derive(Debug)]
pub struct Installed {
    pub hooks_dir: PathBuf,
    pub exe: PathBuf,
    /// Foreign hooks moved aside (`--force`): (hook, where it is now).
    pub replaced: Vec<(PathBuf, PathBuf)>,
    /// The session fixed in git config `custody.session` (`--session`).
    pub session: Option<(PathBuf, Did)>,
}

impl fmt::Display for Installed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "installed custody git hooks ({}) in {}, calling {}",
            HOOKS.join(", "),
            self.hooks_dir.display(),
            self.exe.display()
        )?;
        for (hook, backup) in &self.replaced {
            writeln!(
                f,
                "replaced {} (--force); the previous hook is kept as {}",
                hook.display(),
                backup.display()
            )?;
        }
        match &self.session {
            Some((path, did)) => writeln!(
                f,
                "every commit in this repository is now made in session {did} ({} in git config {CONFIG_SESSION}; ${ENV_SESSION} overrides it)",
                path.display()
            ),
            None => writeln!(
                f,
                "commits made with ${ENV_SESSION} set get {TRAILER_SESSION}/{TRAILER_ENTRY} trailers and are recorded in the ledger; other commits are untouched"
            ),
        }
    }
}

fn hook_script(exe: &str, hook: &str) -> String {
    let quoted = format!("'{}'", exe.replace('\'', "'\\''"));
    format!(
        r#"#!/bin/sh
# {MARKER}: written by `custody git install`. Commits made inside a custody
# agent session get Custody-Session / Custody-Entry trailers and are recorded
# in the audit ledger; other commits are untouched (docs/integrations/git.md).
# Run `custody git install` again to update it; delete this file to remove it.
custody={quoted}
if [ -x "$custody" ]; then
    exec "$custody" git {hook} "$@"
fi
if [ -n "${{{ENV_SESSION}:-}}" ] || git config --get {CONFIG_SESSION} >/dev/null 2>&1; then
    echo "custody: $custody is missing, so this commit is not recorded; run custody git install again" >&2
    case "${{{ENV_REQUIRE}:-}}" in 1|true|yes) exit 1 ;; esac
fi
exit 0
"#
    )
}

/// Whether an existing hook file was written by custody.
fn is_custody_hook(path: &Path) -> bool {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).contains(MARKER))
        .unwrap_or(false)
}

fn backup_path(hook: &Path) -> PathBuf {
    let base = hook.as_os_str().to_owned();
    let mut n = 0u32;
    loop {
        let mut p = base.clone();
        if n == 0 {
            p.push(".pre-custody");
        } else {
            p.push(format!(".pre-custody.{n}"));
        }
        let p = PathBuf::from(p);
        if std::fs::symlink_metadata(&p).is_err() {
            return p;
        }
        n += 1;
    }
}

fn write_hook(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".custody-tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o755);
    let mut f = o
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path).with_context(|| format!("cannot install {}", path.display()))?;
    Ok(())
}

/// `custody git install [--repo DIR] [--session FILE] [--force]`: writes the
/// hooks into `repo` (default: the current directory). An existing hook not
/// written by custody is refused, unless `force`, which moves it aside. With
/// `session`, fixes the session in git config `custody.session`.
pub fn install(
    repo: Option<&Path>,
    session: Option<&Path>,
    force: bool,
) -> anyhow::Result<Installed> {
    let dir = repo.unwrap_or(Path::new("."));
    let dir = &std::fs::canonicalize(dir).with_context(|| dir.display().to_string())?;
    git(Some(dir), &["rev-parse", "--show-toplevel"])
        .with_context(|| format!("{} is not inside a git work tree", dir.display()))?;
    let hooks_dir = PathBuf::from(git(Some(dir), &["rev-parse", "--git-path", "hooks"])?);
    let hooks_dir = if hooks_dir.is_absolute() {
        hooks_dir
    } else {
        dir.join(hooks_dir)
    };
    std::fs::create_dir_all(&hooks_dir)
        .with_context(|| format!("cannot create {}", hooks_dir.display()))?;
    let hooks_dir = std::fs::canonicalize(&hooks_dir).unwrap_or(hooks_dir);
    let exe = std::env::current_exe()
        .and_then(std::fs::canonicalize)
        .context("cannot find the path of this custody binary")?;
    let exe_text = exe
        .to_str()
        .ok_or_else(|| anyhow!("the custody binary's path {} is not UTF-8", exe.display()))?
        .to_string();

    let session = match session {
        Some(p) => {
            let s = SessionFile::load(p)?;
            let abs = std::fs::canonicalize(p).with_context(|| p.display().to_string())?;
            abs.to_str()
                .ok_or_else(|| anyhow!("the session file's path {} is not UTF-8", abs.display()))?;
            Some((abs, s.did))
        }
        None => None,
    };

    // Check every hook before changing anything.
    let foreign: Vec<PathBuf> = HOOKS
        .iter()
        .map(|h| hooks_dir.join(h))
        .filter(|p| std::fs::symlink_metadata(p).is_ok() && !is_custody_hook(p))
        .collect();
    if !foreign.is_empty() && !force {
        let list: Vec<String> = foreign.iter().map(|p| p.display().to_string()).collect();
        bail!(
            "refusing to overwrite hook(s) not written by custody: {}; nothing was changed. \
             Re-run with --force to replace them (each is kept as <hook>.pre-custody), \
             or call `{} git <hook> \"$@\"` from your own hooks (see docs/integrations/git.md)",
            list.join(", "),
            exe.display()
        );
    }

    let mut replaced = Vec::new();
    for p in &foreign {
        let backup = backup_path(p);
        std::fs::rename(p, &backup).with_context(|| {
            format!("cannot move {} aside to {}", p.display(), backup.display())
        })?;
        replaced.push((p.clone(), backup));
    }
    for h in HOOKS {
        write_hook(&hooks_dir.join(h), &hook_script(&exe_text, h))?;
    }
    if let Some((abs, _)) = &session {
        let args: [&OsStr; 4] = [
            "config".as_ref(),
            "--local".as_ref(),
            CONFIG_SESSION.as_ref(),
            abs.as_os_str(),
        ];
        git(Some(dir), &args).context("storing the session in git config")?;
    }
    Ok(Installed {
        hooks_dir,
        exe,
        replaced,
        session,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailer_lines_are_recognised() {
        assert!(is_custody_trailer(b"Custody-Session: did:key:z6Mk\n"));
        assert!(is_custody_trailer(b"custody-entry: 12\n"));
        assert!(is_custody_trailer(b"Custody-Entry : 12"));
        assert!(!is_custody_trailer(b"Custody-Entry"));
        assert!(!is_custody_trailer(b"Custody-Entries: 1"));
        assert!(!is_custody_trailer(b"Signed-off-by: a <a@b>"));
    }

    #[test]
    fn scissors_line() {
        assert!(is_scissors(
            b"# ------------------------ >8 ------------------------\n"
        ));
        assert!(!is_scissors(b"# Please enter the commit message\n"));
    }

    #[test]
    fn hook_script_quotes_the_path() {
        let s = hook_script("/opt/it's/custody", "post-commit");
        assert!(s.contains(MARKER));
        assert!(s.contains(r#"custody='/opt/it'\''s/custody'"#));
        assert!(s.contains(r#"exec "$custody" git post-commit "$@""#));
        assert!(s.contains("${CUSTODY_SESSION:-}"));
    }
}
