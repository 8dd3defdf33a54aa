//! `custody install claude-code|codex`: the managed configuration an
//! administrator deploys so every agent on a machine runs custody's hooks
//! and telemetry, and cannot switch them off.
//!
//! The files are merged with what is there: custody's hooks are added next
//! to others, its deny rules joined to the list; a value custody needs that
//! the file sets otherwise (bypass mode allowed, another telemetry exporter)
//! is foreign content and is only replaced with `--force`. Every run prints
//! what changes; `--dry-run` writes nothing. The result is checked against
//! the settings each agent documents before it is written ([`check_claude_settings`],
//! [`check_codex_requirements`]): the published JSON schema of Claude Code's
//! settings is not shipped in any package this project can install, so the
//! checks are the documented keys and shapes, written out here.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use serde_json::{json, Map, Value};

/// What `custody install` is asked to do.
pub struct Options {
    pub dir: Option<PathBuf>,
    /// The custody binary the hooks run.
    pub custody: String,
    /// The broker, for telemetry settings that name it.
    pub broker: Option<String>,
    pub force: bool,
    pub dry_run: bool,
}

/// Claude Code's hook events custody records (docs/integrations/claude-code.md).
pub const CLAUDE_EVENTS: &[&str] = &[
    "SessionStart",
    "UserPromptSubmit",
    "PreToolUse",
    "PermissionRequest",
    "PermissionDenied",
    "PostToolUse",
    "PostToolUseFailure",
    "Notification",
    "SubagentStart",
    "SubagentStop",
    "Stop",
    "StopFailure",
    "PreCompact",
    "PostCompact",
    "ConfigChange",
    "SessionEnd",
];

/// Every hook event Claude Code documents (for the check).
const CLAUDE_DOCUMENTED_EVENTS: &[&str] = &[
    "PreToolUse",
    "PermissionRequest",
    "PermissionDenied",
    "PostToolUse",
    "PostToolUseFailure",
    "PostToolBatch",
    "UserPromptSubmit",
    "UserPromptExpansion",
    "Notification",
    "Stop",
    "StopFailure",
    "SubagentStart",
    "SubagentStop",
    "PreCompact",
    "PostCompact",
    "SessionStart",
    "SessionEnd",
    "Setup",
    "TeammateIdle",
    "TaskCreated",
    "TaskCompleted",
    "ConfigChange",
    "InstructionsLoaded",
    "CwdChanged",
    "FileChanged",
    "WorktreeCreate",
    "WorktreeRemove",
    "Elicitation",
    "ElicitationResult",
];

/// Events whose matcher is the tool name.
const CLAUDE_TOOL_EVENTS: &[&str] = &[
    "PreToolUse",
    "PermissionRequest",
    "PermissionDenied",
    "PostToolUse",
    "PostToolUseFailure",
];

/// The credential zone: reads and edits the agent is denied outright (the
/// same paths as the default policy's `deny-credential-paths`).
pub const CLAUDE_DENY: &[&str] = &[
    "Read(~/.ssh/**)",
    "Edit(~/.ssh/**)",
    "Read(~/.aws/**)",
    "Edit(~/.aws/**)",
    "Read(./.env)",
    "Read(./.env.*)",
    "Read(~/.npmrc)",
    "Read(~/.pypirc)",
];

/// Codex's hook events custody records (docs/integrations/codex.md).
pub const CODEX_EVENTS: &[&str] = &[
    "SessionStart",
    "UserPromptSubmit",
    "PreToolUse",
    "PermissionRequest",
    "PostToolUse",
    "PreCompact",
    "PostCompact",
    "SubagentStart",
    "SubagentStop",
    "Stop",
    "StopFailure",
    "SessionEnd",
];

fn hook_command(custody: &str, agent: &str) -> String {
    format!("{custody} hook {agent} --session \"$CUSTODY_SESSION\"")
}

/// Claude Code's managed-settings directory on this system.
fn claude_default_dir() -> PathBuf {
    if cfg!(target_os = "macos") {
        PathBuf::from("/Library/Application Support/ClaudeCode")
    } else {
        PathBuf::from("/etc/claude-code")
    }
}

/// What custody needs in Claude Code's managed settings.
pub fn claude_settings(o: &Options) -> Value {
    let command = hook_command(&o.custody, "claude-code");
    let mut hooks = Map::new();
    for e in CLAUDE_EVENTS {
        let mut group = json!({"hooks": [{"type": "command", "command": command}]});
        if CLAUDE_TOOL_EVENTS.contains(e) {
            group["matcher"] = "*".into();
        }
        hooks.insert((*e).into(), json!([group]));
    }
    let mut env = json!({
        "CLAUDE_CODE_ENABLE_TELEMETRY": "1",
        "OTEL_LOGS_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    });
    if let Some(b) = &o.broker {
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = b.clone().into();
    }
    json!({
        "hooks": hooks,
        "env": env,
        // The session's ingest token, from the session file the agent runs with.
        "otelHeadersHelper": format!("{} session otel-headers", o.custody),
        "permissions": {
            "deny": CLAUDE_DENY,
            "disableBypassPermissionsMode": "disable",
        },
        "allowManagedHooksOnly": true,
    })
}

/// One change `install` makes (or would make).
struct Changes {
    lines: Vec<String>,
    conflicts: Vec<String>,
}

impl Changes {
    fn new() -> Self {
        Self {
            lines: Vec::new(),
            conflicts: Vec::new(),
        }
    }
}

/// Sets `key` to `want` in `obj`, recording the change; a different value
/// already there is a conflict unless `force`.
fn set_value(
    obj: &mut Map<String, Value>,
    path: &str,
    key: &str,
    want: &Value,
    force: bool,
    c: &mut Changes,
) {
    match obj.get(key) {
        None => {
            c.lines.push(format!("+ {path}{key} = {want}"));
            obj.insert(key.into(), want.clone());
        }
        Some(v) if v == want => {}
        Some(v) if force => {
            c.lines
                .push(format!("~ {path}{key}: {v} -> {want} (--force)"));
            obj.insert(key.into(), want.clone());
        }
        Some(v) => c
            .conflicts
            .push(format!("{path}{key} is {v}, custody needs {want}")),
    }
}

/// Merges custody's settings into `existing`.
fn merge_claude(
    existing: &mut Map<String, Value>,
    want: &Value,
    force: bool,
    c: &mut Changes,
) -> anyhow::Result<()> {
    let obj = |v: &mut Value, what: &str| -> anyhow::Result<()> {
        if !v.is_object() {
            bail!("`{what}` in the existing settings is not an object; refusing to touch it");
        }
        Ok(())
    };
    let hooks = existing.entry("hooks").or_insert_with(|| json!({}));
    obj(hooks, "hooks")?;
    for (event, groups) in want["hooks"].as_object().into_iter().flatten() {
        let list = hooks
            .as_object_mut()
            .context("hooks")?
            .entry(event.clone())
            .or_insert_with(|| json!([]));
        let Some(arr) = list.as_array_mut() else {
            bail!("`hooks.{event}` in the existing settings is not a list; refusing to touch it");
        };
        let ours = &groups[0];
        let command = &ours["hooks"][0]["command"];
        let present = arr.iter().any(|g| {
            g["hooks"]
                .as_array()
                .is_some_and(|hs| hs.iter().any(|h| &h["command"] == command))
        });
        if !present {
            c.lines.push(format!("+ hooks.{event}: {command}"));
            arr.push(ours.clone());
        }
    }
    for section in ["env", "permissions"] {
        let s = existing.entry(section).or_insert_with(|| json!({}));
        obj(s, section)?;
    }
    for (k, v) in want["env"].as_object().into_iter().flatten() {
        let env = existing["env"].as_object_mut().context("env")?;
        set_value(env, "env.", k, v, force, c);
    }
    let perms = existing["permissions"]
        .as_object_mut()
        .context("permissions")?;
    let deny = perms.entry("deny").or_insert_with(|| json!([]));
    let Some(deny) = deny.as_array_mut() else {
        bail!("`permissions.deny` in the existing settings is not a list; refusing to touch it");
    };
    for rule in want["permissions"]["deny"].as_array().into_iter().flatten() {
        if !deny.contains(rule) {
            c.lines.push(format!("+ permissions.deny: {rule}"));
            deny.push(rule.clone());
        }
    }
    set_value(
        perms,
        "permissions.",
        "disableBypassPermissionsMode",
        &want["permissions"]["disableBypassPermissionsMode"],
        force,
        c,
    );
    for key in ["otelHeadersHelper", "allowManagedHooksOnly"] {
        set_value(existing, "", key, &want[key], force, c);
    }
    Ok(())
}

/// Checks Claude Code settings against the documented keys and shapes
/// (`hooks` events and matcher groups, command hooks, permission rules,
/// `disableBypassPermissionsMode`, `env`); every problem, or none.
pub fn check_claude_settings(v: &Value) -> Result<(), Vec<String>> {
    let mut bad = Vec::new();
    let Some(top) = v.as_object() else {
        return Err(vec!["the settings are not a JSON object".into()]);
    };
    if let Some(h) = top.get("hooks") {
        match h.as_object() {
            None => bad.push("`hooks` is not an object".into()),
            Some(h) => {
                for (event, groups) in h {
                    if !CLAUDE_DOCUMENTED_EVENTS.contains(&event.as_str()) {
                        bad.push(format!("`hooks.{event}` is not a documented hook event"));
                    }
                    for g in groups.as_array().into_iter().flatten() {
                        let Some(go) = g.as_object() else {
                            bad.push(format!(
                                "`hooks.{event}` holds a group that is not an object"
                            ));
                            continue;
                        };
                        if go.keys().any(|k| k != "matcher" && k != "hooks") {
                            bad.push(format!(
                                "`hooks.{event}`: a matcher group has only `matcher` and `hooks`"
                            ));
                        }
                        if go.get("matcher").is_some_and(|m| !m.is_string()) {
                            bad.push(format!("`hooks.{event}`: `matcher` is a string"));
                        }
                        for hk in go
                            .get("hooks")
                            .and_then(|x| x.as_array())
                            .into_iter()
                            .flatten()
                        {
                            let ok = hk["type"] == "command"
                                && hk["command"].as_str().is_some_and(|c| !c.is_empty())
                                && hk
                                    .get("timeout")
                                    .is_none_or(|t| t.as_f64().is_some_and(|t| t > 0.0));
                            if !ok {
                                bad.push(format!("`hooks.{event}`: a command hook has `type` \"command\", a non-empty `command` and a positive `timeout` if any"));
                            }
                        }
                        if !go.get("hooks").is_some_and(|x| x.is_array()) {
                            bad.push(format!(
                                "`hooks.{event}`: a matcher group needs a `hooks` list"
                            ));
                        }
                    }
                    if !groups.is_array() {
                        bad.push(format!("`hooks.{event}` is not a list"));
                    }
                }
            }
        }
    }
    if let Some(env) = top.get("env") {
        if !env
            .as_object()
            .is_some_and(|m| m.values().all(|x| x.is_string()))
        {
            bad.push("`env` maps names to strings".into());
        }
    }
    if let Some(p) = top.get("permissions") {
        for list in ["allow", "ask", "deny"] {
            for r in p.get(list).and_then(|x| x.as_array()).into_iter().flatten() {
                if !r.as_str().is_some_and(permission_rule_ok) {
                    bad.push(format!("`permissions.{list}`: {r} is not a permission rule (Tool or Tool(specifier))"));
                }
            }
        }
        if let Some(m) = p.get("disableBypassPermissionsMode") {
            if m != "disable" {
                bad.push(
                    "`permissions.disableBypassPermissionsMode` takes only \"disable\"".into(),
                );
            }
        }
    }
    for (k, kind) in [
        ("allowManagedHooksOnly", "boolean"),
        ("otelHeadersHelper", "string"),
    ] {
        if let Some(x) = top.get(k) {
            let ok = match kind {
                "boolean" => x.is_boolean(),
                _ => x.as_str().is_some_and(|s| !s.is_empty()),
            };
            if !ok {
                bad.push(format!("`{k}` is a {kind}"));
            }
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad)
    }
}

/// `Tool` or `Tool(specifier)` with a documented tool name, or an MCP tool.
fn permission_rule_ok(r: &str) -> bool {
    const TOOLS: &[&str] = &[
        "Agent",
        "Bash",
        "Edit",
        "ExitPlanMode",
        "Glob",
        "Grep",
        "KillShell",
        "LSP",
        "MultiEdit",
        "NotebookEdit",
        "Read",
        "Skill",
        "TodoWrite",
        "WebFetch",
        "WebSearch",
        "Write",
    ];
    if r.starts_with("mcp__") {
        return true;
    }
    let (name, rest) = r.split_once('(').unwrap_or((r, ""));
    TOOLS.contains(&name)
        && (rest.is_empty()
            || (rest.ends_with(')') && rest.len() > 1 && !rest[..rest.len() - 1].contains(')')))
}

fn read_existing(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
    }
}

/// Writes `text` to `path` through a temporary file and a rename, so an
/// agent starting meanwhile reads the old file or the new one.
fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    }
    let tmp = path.with_extension("custody-tmp");
    std::fs::write(&tmp, text).with_context(|| tmp.display().to_string())?;
    std::fs::rename(&tmp, path).with_context(|| path.display().to_string())?;
    Ok(())
}

fn report(path: &Path, c: &Changes, dry_run: bool) -> String {
    let mut out = String::new();
    let verb = if dry_run { "would change" } else { "changed" };
    if c.lines.is_empty() {
        let _ = writeln!(out, "{}: nothing to change", path.display());
    } else {
        let _ = writeln!(out, "{} {verb}:", path.display());
        for l in &c.lines {
            let _ = writeln!(out, "  {l}");
        }
    }
    out
}

/// `custody install claude-code`: merges custody's managed settings into
/// `DIR/managed-settings.json`.
pub fn claude_code(o: &Options) -> anyhow::Result<String> {
    let dir = o.dir.clone().unwrap_or_else(claude_default_dir);
    let path = dir.join("managed-settings.json");
    let mut existing = match read_existing(&path)? {
        None => Map::new(),
        Some(t) => match serde_json::from_str::<Value>(&t) {
            Ok(Value::Object(m)) => m,
            _ => bail!(
                "{} is not a JSON object; refusing to overwrite it",
                path.display()
            ),
        },
    };
    let mut c = Changes::new();
    merge_claude(&mut existing, &claude_settings(o), o.force, &mut c)?;
    if !c.conflicts.is_empty() {
        bail!(
            "{} sets what custody needs otherwise (pass --force to replace):\n  {}",
            path.display(),
            c.conflicts.join("\n  ")
        );
    }
    let merged = Value::Object(existing);
    check_claude_settings(&merged)
        .map_err(|e| anyhow::anyhow!("the merged settings would not be valid: {}", e.join("; ")))?;
    if !o.dry_run && !c.lines.is_empty() {
        write_file(&path, &(serde_json::to_string_pretty(&merged)? + "\n"))?;
    }
    Ok(report(&path, &c, o.dry_run))
}

/// Codex's managed requirements: custody's hooks, managed hooks only.
pub fn codex_requirements(o: &Options) -> toml::Table {
    let command = hook_command(&o.custody, "codex");
    let mut hooks = toml::Table::new();
    for e in CODEX_EVENTS {
        let mut group = toml::Table::new();
        let mut h = toml::Table::new();
        h.insert("type".into(), "command".into());
        h.insert("command".into(), command.clone().into());
        group.insert(
            "hooks".into(),
            toml::Value::Array(vec![toml::Value::Table(h)]),
        );
        hooks.insert(
            (*e).into(),
            toml::Value::Array(vec![toml::Value::Table(group)]),
        );
    }
    let mut t = toml::Table::new();
    t.insert("allow_managed_hooks_only".into(), true.into());
    t.insert("hooks".into(), toml::Value::Table(hooks));
    t
}

/// Checks Codex requirements against its documented hook keys.
pub fn check_codex_requirements(t: &toml::Table) -> Result<(), Vec<String>> {
    const DOCUMENTED: &[&str] = &[
        "SessionStart",
        "UserPromptSubmit",
        "PreToolUse",
        "PermissionRequest",
        "PostToolUse",
        "PreCompact",
        "PostCompact",
        "SubagentStart",
        "SubagentStop",
        "Stop",
        "StopFailure",
        "SessionEnd",
        "Interrupt",
    ];
    let mut bad = Vec::new();
    if let Some(v) = t.get("allow_managed_hooks_only") {
        if !v.is_bool() {
            bad.push("`allow_managed_hooks_only` is a boolean".into());
        }
    }
    if let Some(h) = t.get("hooks") {
        match h.as_table() {
            None => bad.push("`hooks` is a table".into()),
            Some(h) => {
                for (event, groups) in h {
                    if event == "state" {
                        continue;
                    }
                    if !DOCUMENTED.contains(&event.as_str()) {
                        bad.push(format!("`hooks.{event}` is not a documented hook event"));
                    }
                    for g in groups.as_array().into_iter().flatten() {
                        let handlers = g.get("hooks").and_then(|x| x.as_array());
                        if handlers.is_none() {
                            bad.push(format!("`hooks.{event}`: a group needs a `hooks` list"));
                        }
                        for hk in handlers.into_iter().flatten() {
                            let ok = hk.get("type").and_then(|x| x.as_str()) == Some("command")
                                && hk
                                    .get("command")
                                    .and_then(|x| x.as_str())
                                    .is_some_and(|c| !c.is_empty());
                            if !ok {
                                bad.push(format!("`hooks.{event}`: a handler has `type = \"command\"` and a `command`"));
                            }
                        }
                    }
                }
            }
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad)
    }
}

fn merge_codex(
    existing: &mut toml::Table,
    want: &toml::Table,
    force: bool,
    c: &mut Changes,
) -> anyhow::Result<()> {
    match existing.get("allow_managed_hooks_only") {
        None => {
            c.lines.push("+ allow_managed_hooks_only = true".into());
            existing.insert("allow_managed_hooks_only".into(), true.into());
        }
        Some(toml::Value::Boolean(true)) => {}
        Some(v) if force => {
            c.lines
                .push(format!("~ allow_managed_hooks_only: {v} -> true (--force)"));
            existing.insert("allow_managed_hooks_only".into(), true.into());
        }
        Some(v) => c.conflicts.push(format!(
            "allow_managed_hooks_only is {v}, custody needs true"
        )),
    }
    let hooks = existing
        .entry("hooks")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let Some(hooks) = hooks.as_table_mut() else {
        bail!("`hooks` in the existing requirements is not a table; refusing to touch it");
    };
    for (event, groups) in want["hooks"].as_table().into_iter().flatten() {
        let list = hooks
            .entry(event.clone())
            .or_insert_with(|| toml::Value::Array(Vec::new()));
        let Some(arr) = list.as_array_mut() else {
            bail!(
                "`hooks.{event}` in the existing requirements is not a list; refusing to touch it"
            );
        };
        let ours = &groups.as_array().context("hooks")?[0];
        let command = ours["hooks"][0]["command"].clone();
        let present = arr.iter().any(|g| {
            g.get("hooks")
                .and_then(|x| x.as_array())
                .is_some_and(|hs| hs.iter().any(|h| h.get("command") == Some(&command)))
        });
        if !present {
            c.lines.push(format!("+ hooks.{event}: {command}"));
            arr.push(ours.clone());
        }
    }
    Ok(())
}

/// `custody install codex`: merges custody's hooks into
/// `DIR/requirements.toml` (managed hooks only) and, with `--broker`, the
/// OTLP exporter into `DIR/managed_config.toml`.
pub fn codex(o: &Options) -> anyhow::Result<String> {
    let dir = o.dir.clone().unwrap_or_else(|| PathBuf::from("/etc/codex"));
    let path = dir.join("requirements.toml");
    let mut existing = match read_existing(&path)? {
        None => toml::Table::new(),
        Some(t) => t.parse::<toml::Table>().map_err(|e| {
            anyhow::anyhow!(
                "{} is not TOML ({e}); refusing to overwrite it",
                path.display()
            )
        })?,
    };
    let mut c = Changes::new();
    merge_codex(&mut existing, &codex_requirements(o), o.force, &mut c)?;
    let mut out = String::new();
    let mut otel = None;
    if let Some(b) = &o.broker {
        let cpath = dir.join("managed_config.toml");
        let mut cfg = match read_existing(&cpath)? {
            None => toml::Table::new(),
            Some(t) => t.parse::<toml::Table>().map_err(|e| {
                anyhow::anyhow!(
                    "{} is not TOML ({e}); refusing to overwrite it",
                    cpath.display()
                )
            })?,
        };
        let want: toml::Value = toml::from_str::<toml::Table>(&format!(
            "log_user_prompt = false\nexporter = {{ otlp-http = {{ endpoint = \"{}/v1/logs\", protocol = \"binary\", headers = {{ authorization = \"Bearer ${{CUSTODY_INGEST_TOKEN}}\" }} }} }}\n",
            b.trim_end_matches('/')
        ))
        .map(toml::Value::Table)?;
        let mut cc = Changes::new();
        match cfg.get("otel") {
            None => {
                cc.lines.push(format!("+ otel = {want}"));
                cfg.insert("otel".into(), want);
            }
            Some(v) if *v == want => {}
            Some(v) if o.force => {
                cc.lines.push(format!("~ otel: {v} -> {want} (--force)"));
                cfg.insert("otel".into(), want);
            }
            Some(v) => c.conflicts.push(format!(
                "{}: otel is {v}, custody needs {want}",
                cpath.display()
            )),
        }
        otel = Some((cpath, cfg, cc));
    }
    if !c.conflicts.is_empty() {
        bail!(
            "the existing configuration sets what custody needs otherwise (pass --force to replace):\n  {}",
            c.conflicts.join("\n  ")
        );
    }
    check_codex_requirements(&existing).map_err(|e| {
        anyhow::anyhow!(
            "the merged requirements would not be valid: {}",
            e.join("; ")
        )
    })?;
    if !o.dry_run && !c.lines.is_empty() {
        write_file(&path, &toml::to_string(&existing)?)?;
    }
    out.push_str(&report(&path, &c, o.dry_run));
    if let Some((cpath, cfg, cc)) = otel {
        if !o.dry_run && !cc.lines.is_empty() {
            write_file(&cpath, &toml::to_string(&cfg)?)?;
        }
        out.push_str(&report(&cpath, &cc, o.dry_run));
    }
    Ok(out)
}
