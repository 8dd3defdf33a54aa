//! `custody install claude-code|codex` through the binary into a temp dir:
//! what it writes is checked against each agent's documented settings keys
//! (their published schemas are not in any package this project installs),
//! it merges with what is there, shows what changes, and refuses to replace
//! foreign values without --force.

use std::process::Command;

use serde_json::{json, Value};

fn install(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_custody"))
        .arg("install")
        .args(args)
        .output()
        .expect("run custody install")
}

#[test]
fn claude_code_managed_settings_are_written_merged_and_guarded() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().to_str().unwrap();
    let file = t.path().join("managed-settings.json");
    // Someone else's settings are already there.
    std::fs::write(
        &file,
        serde_json::to_string_pretty(&json!({
            "model": "opus",
            "hooks": {"PreToolUse": [{"matcher": "Bash", "hooks": [{"type": "command", "command": "audit.sh"}]}]},
            "permissions": {"deny": ["Read(./secrets/**)"]},
        }))
        .unwrap(),
    )
    .unwrap();
    let o = install(&["claude-code", "--dir", dir, "--dry-run"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let shown = String::from_utf8_lossy(&o.stdout);
    assert!(shown.contains("would change"), "{shown}");
    assert!(
        shown.contains("+ permissions.disableBypassPermissionsMode"),
        "{shown}"
    );
    assert!(
        !std::fs::read_to_string(&file).unwrap().contains("custody"),
        "dry run wrote"
    );

    let o = install(&["claude-code", "--dir", dir]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    custody_cli::install::check_claude_settings(&v).unwrap();
    // Foreign content kept, custody's added.
    assert_eq!(v["model"], "opus");
    let pre = v["hooks"]["PreToolUse"].as_array().unwrap();
    assert_eq!(pre.len(), 2);
    assert_eq!(pre[0]["hooks"][0]["command"], "audit.sh");
    assert_eq!(
        pre[1]["hooks"][0]["command"],
        "custody hook claude-code --session \"$CUSTODY_SESSION\""
    );
    for e in custody_cli::install::CLAUDE_EVENTS {
        assert!(v["hooks"][e].is_array(), "{e}");
    }
    assert_eq!(v["permissions"]["disableBypassPermissionsMode"], "disable");
    assert_eq!(v["allowManagedHooksOnly"], true);
    let deny = v["permissions"]["deny"].as_array().unwrap();
    assert!(deny.contains(&json!("Read(./secrets/**)")));
    assert!(deny.contains(&json!("Read(~/.ssh/**)")));
    assert_eq!(v["env"]["CLAUDE_CODE_ENABLE_TELEMETRY"], "1");
    // Again: nothing to change, nothing duplicated.
    let o = install(&["claude-code", "--dir", dir]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("nothing to change"));
    let again: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(again, v);

    // A foreign value custody needs otherwise: refused, untouched, unless --force.
    let mut foreign = v.clone();
    foreign["permissions"]["disableBypassPermissionsMode"] = Value::Null;
    foreign["env"]["OTEL_LOGS_EXPORTER"] = "console".into();
    foreign["permissions"]
        .as_object_mut()
        .unwrap()
        .remove("disableBypassPermissionsMode");
    foreign["allowManagedHooksOnly"] = false.into();
    std::fs::write(&file, foreign.to_string()).unwrap();
    let o = install(&["claude-code", "--dir", dir]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("env.OTEL_LOGS_EXPORTER") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), foreign.to_string());
    let o = install(&["claude-code", "--dir", dir, "--force"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(v["env"]["OTEL_LOGS_EXPORTER"], "otlp");
    assert_eq!(v["allowManagedHooksOnly"], true);
    assert_eq!(v["permissions"]["disableBypassPermissionsMode"], "disable");

    // Not JSON: refused.
    std::fs::write(&file, "{ nope").unwrap();
    assert!(!install(&["claude-code", "--dir", dir]).status.success());
}

#[test]
fn the_settings_check_refuses_what_claude_code_does_not_document() {
    use custody_cli::install::check_claude_settings as check;
    assert!(check(
        &json!({"hooks": {"PreToolUse": [{"hooks": [{"type": "command", "command": "x"}]}]}})
    )
    .is_ok());
    for bad in [
        json!({"hooks": {"BeforeTool": [{"hooks": [{"type": "command", "command": "x"}]}]}}),
        json!({"hooks": {"PreToolUse": [{"hooks": [{"type": "shell", "command": "x"}]}]}}),
        json!({"hooks": {"PreToolUse": [{"hooks": [{"type": "command", "command": ""}]}]}}),
        json!({"hooks": {"PreToolUse": [{"matcher": 3, "hooks": []}]}}),
        json!({"hooks": {"PreToolUse": [{"match": "*", "hooks": []}]}}),
        json!({"permissions": {"deny": ["ReadFile(~/.ssh)"]}}),
        json!({"permissions": {"disableBypassPermissionsMode": "enable"}}),
        json!({"env": {"X": 1}}),
        json!({"allowManagedHooksOnly": "yes"}),
    ] {
        assert!(check(&bad).is_err(), "{bad}");
    }
}

#[test]
fn codex_requirements_are_written_merged_and_guarded() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().to_str().unwrap();
    let req = t.path().join("requirements.toml");
    std::fs::write(
        &req,
        "[features]\nhooks = true\n\n[[hooks.Stop]]\n[[hooks.Stop.hooks]]\ntype = \"command\"\ncommand = \"notify.sh\"\n",
    )
    .unwrap();
    let o = install(&["codex", "--dir", dir, "--broker", "http://127.0.0.1:7450"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let t2: toml::Table = std::fs::read_to_string(&req).unwrap().parse().unwrap();
    custody_cli::install::check_codex_requirements(&t2).unwrap();
    assert_eq!(t2["allow_managed_hooks_only"].as_bool(), Some(true));
    assert_eq!(t2["features"]["hooks"].as_bool(), Some(true));
    let stop = t2["hooks"]["Stop"].as_array().unwrap();
    assert_eq!(stop.len(), 2);
    for e in custody_cli::install::CODEX_EVENTS {
        let cmd = t2["hooks"][e].as_array().unwrap().last().unwrap()["hooks"][0]["command"].clone();
        assert_eq!(
            cmd.as_str(),
            Some("custody hook codex --session \"$CUSTODY_SESSION\""),
            "{e}"
        );
    }
    let cfg: toml::Table = std::fs::read_to_string(t.path().join("managed_config.toml"))
        .unwrap()
        .parse()
        .unwrap();
    assert!(cfg["otel"]
        .to_string()
        .contains("http://127.0.0.1:7450/v1/logs"));
    let o = install(&["codex", "--dir", dir]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("nothing to change"));
    std::fs::write(&req, "allow_managed_hooks_only = false\n").unwrap();
    let o = install(&["codex", "--dir", dir]);
    assert!(!o.status.success());
    assert!(install(&["codex", "--dir", dir, "--force"])
        .status
        .success());
}

/// Validates `doc` against the JSON schema at `schema` with Python's
/// `jsonschema` (draft 7, as both schemas declare).
fn schema_check(schema: &std::path::Path, doc: &Value) {
    let t = tempfile::tempdir().unwrap();
    let file = t.path().join("doc.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    let o = Command::new("python3")
        .args([
            "-c",
            "import json,sys,jsonschema\n\
             s=json.load(open(sys.argv[1])); d=json.load(open(sys.argv[2]))\n\
             errs=sorted(jsonschema.Draft7Validator(s).iter_errors(d), key=str)\n\
             [print(list(e.absolute_path), e.message) for e in errs]\n\
             sys.exit(1 if errs else 0)",
            schema.to_str().unwrap(),
            file.to_str().unwrap(),
        ])
        .output()
        .expect("python3 with jsonschema, for the published-schema check");
    assert!(
        o.status.success(),
        "{} rejects the generated file:\n{}{}",
        schema.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Opt-in: the agents' published schemas (SchemaStore's
/// `claude-code-settings.json` and `codex-hooks.json`) are not in any
/// package this project installs, so CI runs the hand-written checks above.
/// With the files at hand, point `CUSTODY_CLAUDE_SETTINGS_SCHEMA` and
/// `CUSTODY_CODEX_HOOKS_SCHEMA` at them (needs python3 with `jsonschema`).
#[test]
fn published_schemas_accept_the_generated_files() {
    let claude = std::env::var_os("CUSTODY_CLAUDE_SETTINGS_SCHEMA");
    let codex = std::env::var_os("CUSTODY_CODEX_HOOKS_SCHEMA");
    if claude.is_none() && codex.is_none() {
        eprintln!("skipped: set CUSTODY_CLAUDE_SETTINGS_SCHEMA / CUSTODY_CODEX_HOOKS_SCHEMA");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().to_str().unwrap();
    if let Some(schema) = claude {
        let o = install(&[
            "claude-code",
            "--dir",
            dir,
            "--broker",
            "http://127.0.0.1:7450",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: Value = serde_json::from_str(
            &std::fs::read_to_string(t.path().join("managed-settings.json")).unwrap(),
        )
        .unwrap();
        schema_check(std::path::Path::new(&schema), &v);
    }
    if let Some(schema) = codex {
        let o = install(&["codex", "--dir", dir]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let req: toml::Table = std::fs::read_to_string(t.path().join("requirements.toml"))
            .unwrap()
            .parse()
            .unwrap();
        // The schema is of a hooks file; requirements carry the same table.
        let hooks = serde_json::to_value(&req["hooks"]).unwrap();
        schema_check(std::path::Path::new(&schema), &json!({ "hooks": hooks }));
    }
}
