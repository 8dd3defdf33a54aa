//! `custody hook claude-code` / `custody hook codex`: turn an agent's hook
//! events into signed ledger entries, and let the kill switch reach the
//! running agent.
//!
//! The hook reads the JSON the agent writes on stdin (`hook_event_name`,
//! `session_id`, `tool_name`, `tool_input`, `tool_response`, `prompt`, …),
//! signs the matching event with the session key and sends it to the broker.
//! Tool inputs, outputs and prompts go in as salted payload digests, their
//! bodies beside the chain (redactable). On `PreToolUse` it asks the broker
//! whether the session may still act and whether the pre-tool policy
//! ([`crate::policy`]) allows the call; a revoked or expired session, or a
//! call a policy forbids, gets a `deny` with the reason, in Claude Code's hook
//! output format.
//!
//! When the broker cannot be reached, events are appended to a spool file
//! beside the session file (`<session>.spool.jsonl`, signed, 0600) and sent,
//! in order, the next time the broker answers; the gap is recorded with a
//! `hook.spool_flushed` event. Whether `PreToolUse` then allows or denies is a
//! choice (`CUSTODY_OFFLINE=allow|deny|deny-irreversible`, default
//! `deny-irreversible`: tools that change things are denied, reads allowed).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use custody_ledger::denial::DenialCode;
use custody_ledger::{actions, Approval, SignedEvent};
use custody_wire::error::ErrorCode;
use serde_json::{json, Value};

use crate::client::{salted_payload, session_event, Client, ClientError};
use crate::sessionfile::SessionFile;
use custody_wire::api::{PayloadBody, PolicyCheck};

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

/// Builds the ledger event for a hook input, or `None` for events custody
/// does not record.
fn event_for(
    session: &SessionFile,
    agent: Agent,
    input: &Value,
) -> anyhow::Result<Option<(custody_ledger::Event, Option<PayloadBody>)>> {
    let name = input["hook_event_name"].as_str().unwrap_or_default();
    let (action, payload): (&str, Option<String>) = match name {
        "SessionStart" => (actions::AGENT_SESSION_START, None),
        "UserPromptSubmit" => (actions::PROMPT, Some(text_of(&input["prompt"]))),
        "PreToolUse" => (actions::TOOL_CALL, Some(text_of(&input["tool_input"]))),
        "PostToolUse" => (actions::TOOL_RESULT, Some(text_of(&input["tool_response"]))),
        "Stop" | "SubagentStop" => ("agent.stop", None),
        // Claude Code's own session ends (also on /clear, before a resume);
        // the custody session goes on until its `session.end` or expiry.
        "SessionEnd" => (actions::AGENT_SESSION_END, None),
        "Notification" => ("agent.notification", Some(text_of(&input["message"]))),
        _ => return Ok(None),
    };
    let mut ev = session_event(session, action)?;
    ev.details.insert(
        "agent".into(),
        match agent {
            Agent::ClaudeCode => "claude-code",
            Agent::Codex => "codex",
        }
        .into(),
    );
    ev.details.insert("hook_event".into(), name.into());
    for k in [
        "session_id",
        "tool_name",
        "tool_use_id",
        "cwd",
        "permission_mode",
        "source",
        "reason",
    ] {
        if let Some(v) = input[k].as_str() {
            let v: String = v.chars().take(256).collect();
            let key = if k == "session_id" {
                "agent_session_id"
            } else {
                k
            };
            ev.details.insert(key.into(), v.into());
        }
    }
    if action == actions::PROMPT {
        // Typed by the person driving the agent; reported by the agent's hook.
        ev.details.insert("origin".into(), "human".into());
    }
    if action == actions::TOOL_CALL {
        if let Some(t) = input["tool_name"].as_str() {
            ev.details.insert("tool".into(), t.into());
        }
        // Claude Code runs PreToolUse before its own permission prompt, so the
        // approval is not known here; the standing permission mode is.
        ev.approval = Some(match input["permission_mode"].as_str() {
            Some("bypassPermissions") | Some("acceptEdits") => Approval::Policy {
                policy: format!(
                    "permission_mode:{}",
                    input["permission_mode"].as_str().unwrap_or_default()
                ),
            },
            _ => Approval::None,
        });
    }
    if action == actions::TOOL_RESULT {
        if let Some(t) = input["tool_name"].as_str() {
            ev.details.insert("tool".into(), t.into());
        }
        let failed = input["tool_response"]["success"] == Value::Bool(false)
            || input["tool_response"]["is_error"] == Value::Bool(true);
        ev.details.insert("ok".into(), (!failed).into());
    }
    let body = match payload {
        Some(p) if !p.is_empty() => {
            let (pref, body) = salted_payload(p.as_bytes());
            ev.payload = Some(pref);
            Some(body)
        }
        _ => None,
    };
    Ok(Some((ev, body)))
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

/// Runs one hook invocation: `input` is what the agent wrote on stdin.
pub async fn run(agent: Agent, session_path: &Path, input: &[u8]) -> anyhow::Result<HookOutput> {
    let session = SessionFile::load(session_path)?;
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
    // allow this call? One round trip; the broker records the decision.
    let mut decided = None;
    if name == "PreToolUse" && reachable {
        let cwd = input["cwd"].as_str().unwrap_or_default().to_string();
        let check = PolicyCheck {
            tool: tool.clone(),
            branch: branch_for(&input["tool_input"], &cwd),
            input: input["tool_input"].clone(),
            cwd,
        };
        match client.policy_check(&session, &check).await {
            Ok(d) if !d.allow => {
                return Ok(deny(
                    agent,
                    &format!(
                        "custody: policy {} denies this {tool} call (ledger entry {}); ask a human if it is needed",
                        d.policies.join(", "),
                        d.seq
                    ),
                ));
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
    let Some((mut ev, body)) = event_for(&session, agent, &input)? else {
        return Ok(allow);
    };
    if let Some(d) = decided {
        ev.details.insert("policy_seq".into(), d.seq.into());
        ev.details.insert("policies".into(), json!(d.policies));
    }
    let key = session.key()?;
    let signed = ev.sign(&key)?;
    let sent = if reachable {
        client.log_as(&key, signed.clone(), body.clone()).await
    } else {
        Err(ClientError::Transport {
            url: session.broker.clone(),
            reason: "unreachable earlier in this call".into(),
        })
    };
    match sent {
        Ok(_) => Ok(allow),
        Err(ClientError::Transport { .. }) => {
            append_spool(
                &spool,
                &[Spooled {
                    event: signed,
                    payload: body,
                }],
            )?;
            if name == "PreToolUse" && offline_denies(&tool) {
                return Ok(deny(agent, "custody: the audit broker is unreachable; this tool is denied until it is back (CUSTODY_OFFLINE)"));
            }
            Ok(allow)
        }
        Err(ClientError::Api { code, message, .. }) => {
            if name == "PreToolUse" {
                return Ok(deny(
                    agent,
                    &format!("custody: refused by the broker ({code}): {message}"),
                ));
            }
            // Other events: the refusal is recorded by the broker; do not block the agent.
            Ok(allow)
        }
        Err(e) => Err(e.into()),
    }
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
