//! `custody hook claude-code` / `custody hook codex`: turn an agent's hook
//! events into signed ledger entries, and let the kill switch reach the
//! running agent.
//!
//! The hook reads the JSON the agent writes on stdin (`hook_event_name`,
//! `session_id`, `tool_name`, `tool_input`, `tool_response`, `prompt`, …),
//! signs the matching event with the session key and sends it to the broker.
//! Tool inputs, outputs and prompts go in as salted payload digests, their
//! bodies beside the chain (redactable). Every hook event is recorded (one
//! this module has no name for as `agent.event`), with the agent's own ids
//! (`tool_use_id`, `call_id`, a subagent's `agent_id`) and a change of the
//! agent's permission mode as `agent.permission_mode`. On `PreToolUse` it
//! asks the broker whether the session may still act and what the pre-tool
//! policy says of the call: allowed — the `tool.call` carries the call's
//! action digest and names what approved it (the policy's decision, or a
//! person's or reviewer's approval, by seq); denied — a revoked or expired
//! session, a forbidding rule, a person's refusal; held for approval — the
//! denial says exactly which `custody approve` a person runs (or the hook
//! waits `CUSTODY_APPROVAL_WAIT` for the decision). Answers are in Claude
//! Code's (or Codex's) hook output format.
//!
//! When the broker cannot be reached, events are appended to a spool file
//! beside the session file (`<session>.spool.jsonl`, signed, 0600) and sent,
//! in order, the next time the broker answers; the gap is recorded with a
//! `hook.spool_flushed` event. Whether `PreToolUse` then allows or denies is a
//! choice (`CUSTODY_OFFLINE=allow|deny|deny-irreversible`, default
//! `deny-irreversible`: tools that change things are denied, reads allowed).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use custody_identity::KeyPair;
use custody_ledger::denial::DenialCode;
use custody_ledger::{actions, oversight, Approval, SignedEvent};
use custody_wire::error::ErrorCode;
use serde_json::{json, Value};

use crate::client::{salted_payload, session_event, Client, ClientError};
use crate::sessionfile::SessionFile;
use crate::BoxFuture;
use custody_wire::api::{AppendEvent, PayloadBody, PolicyCheck, PolicyDecision};

/// Hook input larger than this is refused (Claude Code's payloads are small;
/// large tool outputs are digested, not stored whole).
pub const MAX_HOOK_INPUT: u64 = 4 << 20;
/// Tool names that only read; everything else counts as irreversible offline.
const READ_ONLY_TOOLS: &[&str] = &[
    "Read",
    "Glob",
    "Grep",
    "LS",
    "WebSearch",
    "TodoWrite",
    "NotebookRead",
];

/// Which agent's hook format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Agent {
    ClaudeCode,
    Codex,
}

impl Agent {
    pub fn name(&self) -> &'static str {
        match self {
            Agent::ClaudeCode => "claude-code",
            Agent::Codex => "codex",
        }
    }
}

/// What the hook prints and its exit code.
pub struct HookOutput {
    pub stdout: Option<Value>,
    pub exit_code: u8,
}

fn spool_path(session: &Path) -> PathBuf {
    let mut p = session.as_os_str().to_owned();
    p.push(".spool.jsonl");
    PathBuf::from(p)
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Spooled {
    event: SignedEvent,
    payload: Option<PayloadBody>,
}

fn append_spool(path: &Path, items: &[Spooled]) -> anyhow::Result<()> {
    let mut o = std::fs::OpenOptions::new();
    o.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let mut f = o.open(path).with_context(|| path.display().to_string())?;
    for it in items {
        let mut line = serde_json::to_vec(it)?;
        line.push(b'\n');
        f.write_all(&line)?;
    }
    f.sync_data()?;
    Ok(())
}

fn is_unreachable(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<ClientError>(),
        Some(ClientError::Transport { .. })
    )
}

/// Sends what was spooled, in order. Stops at the first transport failure
/// (keeps the rest); a refusal by the broker drops that event (it is recorded
/// there as a denial).
async fn flush_spool(client: &Client, session: &SessionFile, path: &Path) -> anyhow::Result<usize> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(0);
    };
    let items: Vec<Spooled> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    if items.is_empty() {
        let _ = std::fs::remove_file(path);
        return Ok(0);
    }
    let key = session.key()?;
    let mut sent = 0;
    for (i, it) in items.iter().enumerate() {
        match client
            .log_as(&key, it.event.clone(), it.payload.clone())
            .await
        {
            Ok(_) => sent += 1,
            Err(ClientError::Transport { .. }) => {
                let rest: Vec<Spooled> = items.into_iter().skip(i).collect();
                let tmp = path.with_extension("tmp");
                let _ = std::fs::remove_file(&tmp);
                append_spool(&tmp, &rest)?;
                std::fs::rename(&tmp, path)?;
                return Ok(sent);
            }
            Err(_) => {}
        }
    }
    std::fs::remove_file(path)?;
    let mut gap = session_event(session, "hook.spool_flushed")?;
    gap.details.insert("events".into(), sent.into());
    gap.details
        .insert("reason".into(), "broker unreachable; delivered late".into());
    let _ = client.log(session, gap).await;
    Ok(sent)
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// What each hook event of Claude Code and Codex becomes in the ledger, and
/// which member of its input is kept as the payload (beside the chain,
/// redactable). An event this table does not name is still recorded, as
/// `agent.event` with its name: a future event is evidence too.
fn action_for(name: &str) -> (&'static str, Option<&'static str>) {
    match name {
        "SessionStart" => (actions::AGENT_SESSION_START, None),
        "UserPromptSubmit" => (actions::PROMPT, Some("prompt")),
        "PreToolUse" => (actions::TOOL_CALL, Some("tool_input")),
        "PostToolUse" => (actions::TOOL_RESULT, Some("tool_response")),
        // A tool that failed (or was interrupted) still ran: its result is
        // the error.
        "PostToolUseFailure" => (actions::TOOL_RESULT, Some("error")),
        "PermissionRequest" => ("agent.permission_request", Some("tool_input")),
        "PermissionDenied" => ("agent.permission_denied", Some("tool_input")),
        "Stop" => ("agent.stop", None),
        "StopFailure" => ("agent.stop_failure", Some("error")),
        "SubagentStart" => ("agent.subagent_start", None),
        "SubagentStop" => ("agent.subagent_stop", None),
        // Claude Code's own session ends (also on /clear, before a resume);
        // the custody session goes on until its `session.end` or expiry.
        "SessionEnd" => (actions::AGENT_SESSION_END, None),
        "Notification" => ("agent.notification", Some("message")),
        "ConfigChange" => ("agent.config_change", None),
        "PreCompact" => ("agent.compact", Some("custom_instructions")),
        "PostCompact" => ("agent.compact", Some("compact_summary")),
        _ => (AGENT_EVENT, None),
    }
}

/// A hook event custody has no name for.
const AGENT_EVENT: &str = "agent.event";
/// A change of the agent's permission mode, seen between two hook events.
const AGENT_PERMISSION_MODE: &str = "agent.permission_mode";

/// Short members of a hook input copied into the entry's details (the
/// agent's ids, so a responder can join an entry to the agent's transcript:
/// `tool_use_id` (Claude Code), `call_id` (Codex); who acted within the
/// session: `agent_id`/`agent_type` of a subagent).
const COPIED: &[&str] = &[
    "session_id",
    "tool_name",
    "tool_use_id",
    "call_id",
    "turn_id",
    "cwd",
    "permission_mode",
    "source",
    "reason",
    "agent_id",
    "agent_type",
    "trigger",
    "notification_type",
    "stop_reason",
    "model",
];

/// Builds the ledger event for a hook input (every hook event is recorded).
fn event_for(
    session: &SessionFile,
    agent: Agent,
    input: &Value,
) -> anyhow::Result<(custody_ledger::Event, Option<PayloadBody>)> {
    let name = input["hook_event_name"].as_str().unwrap_or_default();
    let (action, payload_key) = action_for(name);
    let mut ev = session_event(session, action)?;
    ev.details.insert("agent".into(), agent.name().into());
    ev.details
        .insert("hook_event".into(), clip(name, 64).into());
    for k in COPIED {
        if let Some(v) = input[*k].as_str() {
            let key = if *k == "session_id" {
                "agent_session_id"
            } else {
                k
            };
            ev.details.insert(key.into(), clip(v, 256).into());
        }
    }
    if action == actions::PROMPT {
        // Typed by the person driving the agent; reported by the agent's hook.
        ev.details.insert("origin".into(), "human".into());
    }
    if matches!(name, "PreCompact" | "PostCompact") {
        let phase = if name == "PreCompact" { "pre" } else { "post" };
        ev.details.insert("phase".into(), phase.into());
    }
    if action == actions::TOOL_CALL || action == actions::TOOL_RESULT {
        if let Some(t) = input["tool_name"].as_str() {
            ev.details.insert("tool".into(), clip(t, 128).into());
        }
    }
    if action == actions::TOOL_RESULT {
        let failed = name == "PostToolUseFailure"
            || input["tool_response"]["success"] == Value::Bool(false)
            || input["tool_response"]["is_error"] == Value::Bool(true);
        ev.details.insert("ok".into(), (!failed).into());
        if let Some(i) = input["is_interrupt"].as_bool() {
            ev.details.insert("interrupted".into(), i.into());
        }
    }
    let body = match payload_key.map(|k| text_of(&input[k])) {
        Some(p) if !p.is_empty() => {
            let (pref, body) = salted_payload(p.as_bytes());
            ev.payload = Some(pref);
            Some(body)
        }
        _ => None,
    };
    Ok((ev, body))
}

fn clip(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Where the hook remembers the last permission mode it saw, beside the
/// session file, so a change between two events is recorded once.
fn mode_path(session: &Path) -> PathBuf {
    let mut p = session.as_os_str().to_owned();
    p.push(".mode");
    PathBuf::from(p)
}

/// The `agent.permission_mode` event when the agent's mode differs from the
/// last one this session's hook saw (bypass modes are the agent's escape
/// hatch: the report shows when they were on).
fn mode_change(
    session: &SessionFile,
    session_path: &Path,
    agent: Agent,
    input: &Value,
) -> anyhow::Result<Option<custody_ledger::Event>> {
    if !mode_differs(session_path, input) {
        return Ok(None);
    }
    let Some(mode) = input["permission_mode"].as_str() else {
        return Ok(None);
    };
    let mode = clip(mode, 64);
    let path = mode_path(session_path);
    let last = std::fs::read_to_string(&path).unwrap_or_default();
    let mut o = std::fs::OpenOptions::new();
    o.create(true).write(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o.open(&path)
        .and_then(|mut f| f.write_all(mode.as_bytes()))
        .with_context(|| path.display().to_string())?;
    let mut ev = session_event(session, AGENT_PERMISSION_MODE)?;
    ev.details.insert("agent".into(), agent.name().into());
    if !last.trim().is_empty() {
        ev.details.insert("from".into(), last.trim().into());
    }
    ev.details.insert("to".into(), mode.clone().into());
    ev.details.insert("permission_mode".into(), mode.into());
    if let Some(v) = input["session_id"].as_str() {
        ev.details
            .insert("agent_session_id".into(), clip(v, 256).into());
    }
    Ok(Some(ev))
}

/// Whether the agent reports a permission mode other than the last one
/// this session's hook saw (read only; [`mode_change`] records it).
fn mode_differs(session_path: &Path, input: &Value) -> bool {
    let Some(mode) = input["permission_mode"].as_str() else {
        return false;
    };
    let last = std::fs::read_to_string(mode_path(session_path)).unwrap_or_default();
    last.trim() != clip(mode, 64)
}

/// The PreToolUse's `tool.call`, signed, claiming the decision it is sent
/// with (`{"by":"policy"}`): the broker appends it right after an allow by
/// the policy alone, so the common call costs one round trip and one
/// commit. `None` when a permission-mode change must be recorded first
/// (the order of the two entries matters to the report).
fn decided_with_call(
    session: &SessionFile,
    key: &KeyPair,
    session_path: &Path,
    agent: Agent,
    input: &Value,
    digest: &str,
) -> anyhow::Result<Option<AppendEvent>> {
    if mode_differs(session_path, input) {
        return Ok(None);
    }
    let (mut ev, payload) = event_for(session, agent, input)?;
    ev.details.insert("action_digest".into(), digest.into());
    ev.approval = Some(Approval::decided_with_call());
    Ok(Some(AppendEvent {
        event: ev.sign(key)?,
        payload,
    }))
}

fn deny(agent: Agent, reason: &str) -> HookOutput {
    match agent {
        // Claude Code: structured JSON output on stdout, exit 0.
        Agent::ClaudeCode => HookOutput {
            stdout: Some(json!({
                "hookSpecificOutput": {
                    "hookEventName": "PreToolUse",
                    "permissionDecision": "deny",
                    "permissionDecisionReason": reason,
                }
            })),
            exit_code: 0,
        },
        // Codex: the same decision shape.
        Agent::Codex => HookOutput {
            stdout: Some(json!({"decision": "block", "reason": reason})),
            exit_code: 0,
        },
    }
}

/// The checked-out branch, only for commands that push (a bare `git push`
/// pushes it); empty otherwise or when git cannot say.
fn branch_for(tool_input: &Value, cwd: &str) -> String {
    let cmd = custody_wire::tool::Resource::of("Bash", tool_input).text;
    if !cmd.contains("git push") || cwd.is_empty() {
        return String::new();
    }
    std::process::Command::new("git")
        .args(["-C", cwd, "rev-parse", "--abbrev-ref", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn offline_denies(tool: &str) -> bool {
    match std::env::var("CUSTODY_OFFLINE").as_deref() {
        Ok("allow") => false,
        Ok("deny") => true,
        _ => !READ_ONLY_TOOLS.contains(&tool),
    }
}

/// How long the hook waits for a person to decide a held call
/// (`CUSTODY_APPROVAL_WAIT`: `90`, `90s`, `2m`; default 0: answer at once
/// with what a person should run).
fn approval_wait() -> Duration {
    let Ok(v) = std::env::var("CUSTODY_APPROVAL_WAIT") else {
        return Duration::ZERO;
    };
    let v = v.trim();
    let (num, unit) = match v.strip_suffix('m') {
        Some(n) => (n, 60),
        None => (v.strip_suffix('s').unwrap_or(v), 1),
    };
    num.parse::<u64>()
        .map(|n| Duration::from_secs(n.saturating_mul(unit).min(3600)))
        .unwrap_or(Duration::ZERO)
}

/// The answer to a held call: what it waits for and exactly what a person
/// runs to let it through.
fn held_reason(session: &SessionFile, tool: &str, d: &PolicyDecision) -> String {
    let who = match d.requires.as_deref() {
        Some("review") => format!(
            "a person who may approve this session's actions (its delegator {}, an admin or an approver) or a listed automated reviewer",
            session.delegator
        ),
        _ => format!(
            "a person who may approve this session's actions (its delegator {}, an admin or an approver)",
            session.delegator
        ),
    };
    format!(
        "custody: this {tool} call is held for approval by policy {} (ledger entry {}, action {}). Ask {who} to run:\n  custody approve --broker {} --as <THEIR KEY FILE> --seq {}\nthen retry the identical call; it runs once, and any change to it is held again.",
        d.policies.join(", "),
        d.seq,
        d.action_digest.as_deref().unwrap_or("?"),
        session.broker,
        d.seq,
    )
}

/// Waits up to `wait` for a person to decide the held call; `Some(true)`
/// when approved, `Some(false)` when refused, `None` when nobody decided.
async fn wait_for_decision(
    client: &Client,
    session: &SessionFile,
    digest: &str,
    wait: Duration,
) -> Option<bool> {
    let until = Instant::now() + wait;
    loop {
        match client.approval_status(session, digest).await {
            Ok(st) if st.state == "approved" => return Some(true),
            Ok(st) if st.state == "refused" => return Some(false),
            Ok(_) => {}
            Err(_) => return None,
        }
        if Instant::now() + APPROVAL_POLL > until {
            return None;
        }
        tokio::time::sleep(APPROVAL_POLL).await;
    }
}

/// How often a waiting hook asks whether its held call was decided.
const APPROVAL_POLL: Duration = Duration::from_millis(500);

/// Runs one hook invocation: `input` is what the agent wrote on stdin.
pub fn run<'a>(
    agent: Agent,
    session_path: &'a Path,
    input: &'a [u8],
) -> BoxFuture<'a, anyhow::Result<HookOutput>> {
    Box::pin(run_body(agent, session_path, input))
}

/// [`run`]'s body.
async fn run_body(agent: Agent, session_path: &Path, input: &[u8]) -> anyhow::Result<HookOutput> {
    let session = SessionFile::load(session_path)?;
    let key = session.key()?;
    let input: Value = serde_json::from_slice(input).context("the hook input is not JSON")?;
    let name = input["hook_event_name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let tool = input["tool_name"].as_str().unwrap_or_default().to_string();
    let client = Client::new(&session.broker, Some(&session.ca_pem))?;
    let spool = spool_path(session_path);
    let allow = HookOutput {
        stdout: None,
        exit_code: 0,
    };

    // Deliver what an outage left behind, first, so the ledger keeps order.
    let reachable = match flush_spool(&client, &session, &spool).await {
        Ok(_) => true,
        Err(e) if is_unreachable(&e) => false,
        Err(_) => true,
    };

    // Before a tool runs: is the session still alive, and does the policy
    // allow this call? One round trip in the common case; the broker records
    // the decision, with the agent's own id of the call.
    let mut decided = None;
    let cwd = input["cwd"].as_str().unwrap_or_default().to_string();
    let call_id = input["tool_use_id"]
        .as_str()
        .or_else(|| input["call_id"].as_str())
        .map(|c| clip(c, 256));
    if name == "PreToolUse" && reachable {
        let digest = oversight::action_digest(&session.did, &tool, &input["tool_input"], &cwd)?;
        let mut check = PolicyCheck {
            tool: tool.clone(),
            branch: branch_for(&input["tool_input"], &cwd),
            input: input["tool_input"].clone(),
            cwd: cwd.clone(),
            call_id: call_id.clone(),
            record: decided_with_call(&session, &key, session_path, agent, &input, &digest)?,
        };
        let mut answer = client.policy_check(&session, &check).await;
        // The usual case: allowed by the policy, and the tool.call appended
        // with the decision.
        if matches!(&answer, Ok(d) if d.allow && d.recorded.is_some()) {
            return Ok(allow);
        }
        // Asked again after an approval, the call claims the approval.
        check.record = None;
        let held = match &answer {
            Ok(d) if d.decision == "approval_required" => Some((
                d.seq,
                d.action_digest.clone().unwrap_or_default(),
                held_reason(&session, &tool, d),
            )),
            _ => None,
        };
        if let Some((seq, digest, reason)) = held {
            let wait = approval_wait();
            if wait.is_zero() {
                return Ok(deny(agent, &reason));
            }
            match wait_for_decision(&client, &session, &digest, wait).await {
                // Approved while waiting: ask again, and the approval lets
                // this one call through.
                Some(true) => answer = client.policy_check(&session, &check).await,
                Some(false) => {
                    return Ok(deny(
                        agent,
                        &format!("custody: a person refused this {tool} call (held at ledger entry {seq}); do not retry it"),
                    ))
                }
                None => return Ok(deny(agent, &reason)),
            }
        }
        match answer {
            Ok(d) if d.decision == "approval_required" => {
                return Ok(deny(agent, &held_reason(&session, &tool, &d)));
            }
            Ok(d) if !d.allow => {
                let why = match d.refused_by {
                    Some(r) => format!(
                        "custody: a person refused this {tool} call (approval entry {r}, decision entry {}); do not retry it",
                        d.seq
                    ),
                    None => format!(
                        "custody: policy {} denies this {tool} call (ledger entry {}); ask a human if it is needed",
                        d.policies.join(", "),
                        d.seq
                    ),
                };
                return Ok(deny(agent, &why));
            }
            Ok(d) => decided = Some(d),
            Err(e) if is_unreachable(&e) => {}
            Err(e) => match e.downcast_ref::<ClientError>() {
                Some(c @ ClientError::Api { message, .. })
                    if c.error_code() == Some(ErrorCode::Denied(DenialCode::SessionInactive)) =>
                {
                    return Ok(deny(agent, &format!("custody: this agent session may no longer act ({message}); ask a human to start a new session")));
                }
                _ => return Err(e),
            },
        }
    }
    let mut outgoing: Vec<Spooled> = Vec::new();
    if let Some(ev) = mode_change(&session, session_path, agent, &input)? {
        outgoing.push(Spooled {
            event: ev.sign(&key)?,
            payload: None,
        });
    }
    let (mut ev, body) = event_for(&session, agent, &input)?;
    if name == "PreToolUse" {
        // The call's action digest, as the broker computed it when it
        // decided (the same function here otherwise, FORMAT.md §3.3).
        let digest = match decided.as_ref().and_then(|d| d.action_digest.clone()) {
            Some(d) => d,
            None => oversight::action_digest(&session.did, &tool, &input["tool_input"], &cwd)?,
        };
        ev.details.insert("action_digest".into(), digest.into());
        ev.approval = Some(Approval::None);
    }
    if let Some(d) = decided {
        ev.details.insert("policy_seq".into(), d.seq.into());
        ev.details.insert("policies".into(), json!(d.policies));
        // What approved it, naming the entry that backs the claim.
        if let Some(a) = d.approval {
            ev.approval = Some(a);
        }
    }
    outgoing.push(Spooled {
        event: ev.sign(&key)?,
        payload: body,
    });
    for (i, item) in outgoing.iter().enumerate() {
        let sent = if reachable {
            client
                .log_as(&key, item.event.clone(), item.payload.clone())
                .await
                .map(|_| ())
        } else {
            Err(ClientError::Transport {
                url: session.broker.clone(),
                reason: "unreachable earlier in this call".into(),
            })
        };
        match sent {
            Ok(()) => {}
            Err(ClientError::Transport { .. }) => {
                append_spool(&spool, &outgoing[i..])?;
                if name == "PreToolUse" && offline_denies(&tool) {
                    return Ok(deny(agent, "custody: the audit broker is unreachable; this tool is denied until it is back (CUSTODY_OFFLINE)"));
                }
                return Ok(allow);
            }
            Err(ClientError::Api { code, message, .. }) => {
                let last_item = i + 1 == outgoing.len();
                if name == "PreToolUse" && last_item {
                    return Ok(deny(
                        agent,
                        &format!("custody: refused by the broker ({code}): {message}"),
                    ));
                }
                // Other events: the refusal is recorded by the broker; do
                // not block the agent.
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(allow)
}

/// Reads stdin with a size cap.
pub fn read_input() -> anyhow::Result<Vec<u8>> {
    let mut buf = Vec::new();
    std::io::stdin()
        .take(MAX_HOOK_INPUT + 1)
        .read_to_end(&mut buf)?;
    anyhow::ensure!(
        buf.len() as u64 <= MAX_HOOK_INPUT,
        "hook input larger than {MAX_HOOK_INPUT} bytes"
    );
    Ok(buf)
}
