//! What a tool call touches: the tool's group (shell, read, write, web,
//! other) and the command, path or URL in its input. The agent's hook and the
//! broker's pre-tool policy read a tool call the same way, so both live here.

use serde_json::Value;

/// Longest resource text evaluated; longer commands are cut (the whole input
/// is still in the tool call's payload digest).
pub const MAX_RESOURCE_CHARS: usize = 16 * 1024;

/// Tool names by what they do. Claude Code's names first, then Codex's.
pub fn tool_group(tool: &str) -> &'static str {
    match tool {
        "Bash" | "BashOutput" | "KillShell" | "shell" | "local_shell" | "exec_command"
        | "unified_exec" | "container.exec" => "shell",
        "Read" | "Glob" | "Grep" | "LS" | "NotebookRead" | "read_file" | "list_dir"
        | "grep_files" | "view_image" => "read",
        "Write" | "Edit" | "MultiEdit" | "NotebookEdit" | "apply_patch" | "write_file" => "write",
        "WebFetch" | "WebSearch" | "web_search" => "web",
        _ => "other",
    }
}

/// What a tool call touches, as policy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resource {
    /// `command`, `path`, `url` or `input`.
    pub kind: &'static str,
    pub text: String,
}

impl Resource {
    /// Extracts the command, path or URL from a tool's input.
    pub fn of(tool: &str, input: &Value) -> Resource {
        let s = |k: &str| input.get(k).and_then(Value::as_str).map(str::to_string);
        let (kind, text) = if let Some(c) = s("command") {
            ("command", c)
        } else if let Some(Value::Array(parts)) = input.get("command") {
            // Codex passes argv: ["bash", "-lc", "…"].
            let words: Vec<&str> = parts.iter().filter_map(Value::as_str).collect();
            ("command", words.join(" "))
        } else if let Some(p) = s("file_path")
            .or_else(|| s("notebook_path"))
            .or_else(|| s("path"))
        {
            ("path", p)
        } else if let Some(u) = s("url") {
            ("url", u)
        } else if let Some(t) = input.as_str() {
            ("input", t.to_string())
        } else {
            ("input", input.to_string())
        };
        let kind = if tool_group(tool) == "shell" && kind == "input" {
            "command"
        } else {
            kind
        };
        Resource {
            kind,
            text: text.chars().take(MAX_RESOURCE_CHARS).collect(),
        }
    }
}
