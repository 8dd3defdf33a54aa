//! Ledger entries as OCSF 1.1.0 events (the version Amazon Security Lake's
//! custom sources take; Splunk, Sentinel and Elastic index it as JSON).
//!
//! One event per entry. [`MAPPING`] decides its class and activity: the first
//! row naming the entry's action (and, for `tool.*`, the tool's group as
//! `custody_wire::tool::tool_group` reads it, the same reading the hook and
//! the pre-tool policy use) applies; the last row takes every other action.
//! [`table_markdown`] prints the table docs/SIEM.md carries.
//!
//! Every event has the OCSF base fields (`time` = the ledger's receive time,
//! `metadata.uid` = the entry hash, `metadata.sequence` = `seq`), an `actor`
//! (the agent session with its delegating human as `actor.session.issuer`,
//! or whoever signed) and, under `unmapped.custody`, the ledger DID, `seq`,
//! entry hash and tree size that `custody-verify prove` and `check-event`
//! need, the action, the context and the whole entry.

use custody_identity::Did;
use custody_ledger::checkpoint::Origin;
use custody_ledger::{entry_hash, ActorKind, Entry};
use custody_wire::tool::tool_group;
use serde_json::{json, Map, Value};

use crate::SiemError;

/// The OCSF schema version every event declares (`metadata.version`).
pub const OCSF_VERSION: &str = "1.1.0";
/// The version of this mapping (`unmapped.custody.mapping`): `check-event`
/// re-maps an entry with the version the event names.
pub const MAPPING_VERSION: u64 = 1;
/// `metadata.product.name` and `vendor_name`.
pub const PRODUCT: &str = "custody";

/// An OCSF event class.
#[derive(Debug, PartialEq, Eq)]
pub struct Class {
    pub uid: u32,
    pub name: &'static str,
    pub category_uid: u32,
    pub category_name: &'static str,
    /// Whether the class has an `actor` (OCSF 1.1's Authorize Session and
    /// User Access Management do not: their `user` is who the event is about).
    pub has_actor: bool,
}

pub const API_ACTIVITY: Class = Class {
    uid: 6003,
    name: "API Activity",
    category_uid: 6,
    category_name: "Application Activity",
    has_actor: true,
};
pub const PROCESS_ACTIVITY: Class = Class {
    uid: 1007,
    name: "Process Activity",
    category_uid: 1,
    category_name: "System Activity",
    has_actor: true,
};
pub const AUTHORIZE_SESSION: Class = Class {
    uid: 3003,
    name: "Authorize Session",
    category_uid: 3,
    category_name: "Identity & Access Management",
    has_actor: false,
};
pub const ACCOUNT_CHANGE: Class = Class {
    uid: 3001,
    name: "Account Change",
    category_uid: 3,
    category_name: "Identity & Access Management",
    has_actor: true,
};
pub const USER_ACCESS: Class = Class {
    uid: 3005,
    name: "User Access Management",
    category_uid: 3,
    category_name: "Identity & Access Management",
    has_actor: false,
};

/// One row of the mapping table.
#[derive(Debug)]
pub struct Row {
    /// The actions the row applies to; empty: every action no row names.
    pub actions: &'static [&'static str],
    /// For tool actions, the tool groups it applies to (`shell`, `read`,
    /// `write`, `web`, `other`); empty: any.
    pub tool_groups: &'static [&'static str],
    pub class: &'static Class,
    pub activity_id: u32,
    pub activity_name: &'static str,
    /// Whose the OCSF `actor` is (documentation; the code below sets it).
    pub actor: &'static str,
    /// What else the event says, in OCSF fields (documentation).
    pub fields: &'static str,
    /// When `status_id` is 2 (Failure); Success otherwise (documentation).
    pub failure: &'static str,
}

const TOOL_ACTIONS: &[&str] = &["tool.call", "tool.result"];

/// The mapping, first matching row first.
pub const MAPPING: &[Row] = &[
    Row {
        actions: &["tool.call"],
        tool_groups: &["shell"],
        class: &PROCESS_ACTIVITY,
        activity_id: 1,
        activity_name: "Launch",
        actor: "the agent session",
        fields: "`process.name` = the tool, `process.uid` = its `tool_use_id` (else the event nonce), `device` = the session (`type_id` 99); the command itself is only a payload digest",
        failure: "—",
    },
    Row {
        actions: &["tool.result"],
        tool_groups: &["shell"],
        class: &PROCESS_ACTIVITY,
        activity_id: 2,
        activity_name: "Terminate",
        actor: "the agent session",
        fields: "as `tool.call`",
        failure: "`details.ok` is false",
    },
    Row {
        actions: TOOL_ACTIONS,
        tool_groups: &["read"],
        class: &API_ACTIVITY,
        activity_id: 2,
        activity_name: "Read",
        actor: "the agent session",
        fields: "`api.operation` = the tool, `api.service.name` = the agent, `api.request.uid` = `tool_use_id`, `resources` = the working directory",
        failure: "a `tool.result` whose `details.ok` is false",
    },
    Row {
        actions: TOOL_ACTIONS,
        tool_groups: &["write"],
        class: &API_ACTIVITY,
        activity_id: 3,
        activity_name: "Update",
        actor: "the agent session",
        fields: "as a read tool",
        failure: "a `tool.result` whose `details.ok` is false",
    },
    Row {
        actions: TOOL_ACTIONS,
        tool_groups: &[],
        class: &API_ACTIVITY,
        activity_id: 99,
        activity_name: "Other",
        actor: "the agent session",
        fields: "as a read tool (web and other tools)",
        failure: "a `tool.result` whose `details.ok` is false",
    },
    Row {
        actions: &["session.start"],
        tool_groups: &[],
        class: &AUTHORIZE_SESSION,
        activity_id: 1,
        activity_name: "Assign Privileges",
        actor: "— (the class has none; `user` is the session, which signed)",
        fields: "`user` = the session, `privileges` = the delegation's scopes, `session` = its id, issuer (the delegating human) and validity",
        failure: "—",
    },
    Row {
        actions: &["credential.mint"],
        tool_groups: &[],
        class: &AUTHORIZE_SESSION,
        activity_id: 1,
        activity_name: "Assign Privileges",
        actor: "— (the class has none; the ledger key signed)",
        fields: "`user` = the session, `privileges` = the token's OpenBao policies (the entry holds the accessor's SHA-256, never the token)",
        failure: "—",
    },
    Row {
        actions: &["credential.revoke"],
        tool_groups: &[],
        class: &USER_ACCESS,
        activity_id: 2,
        activity_name: "Revoke Privileges",
        actor: "— (the class has none; the ledger key signed)",
        fields: "`user` = the revoked identity, `privileges` = the SHA-256 of each revoked token's accessor",
        failure: "—",
    },
    Row {
        actions: &["identity.revoke"],
        tool_groups: &[],
        class: &ACCOUNT_CHANGE,
        activity_id: 5,
        activity_name: "Disable",
        actor: "the admin",
        fields: "`user` = the revoked DID (the kill switch)",
        failure: "—",
    },
    Row {
        actions: &["policy.decision"],
        tool_groups: &[],
        class: &API_ACTIVITY,
        activity_id: 99,
        activity_name: "Other",
        actor: "the agent session the decision is about",
        fields: "`api.operation` = the tool, `actor.authorizations` = the decision by each deciding policy",
        failure: "the decision is `deny`",
    },
    Row {
        actions: &["request.denied"],
        tool_groups: &[],
        class: &API_ACTIVITY,
        activity_id: 99,
        activity_name: "Other",
        actor: "the refused caller",
        fields: "`api.operation` = the attempted action, `api.response.error` = the refusal's code, `status_detail` = the code",
        failure: "always",
    },
    Row {
        actions: &["approval"],
        tool_groups: &[],
        class: &API_ACTIVITY,
        activity_id: 99,
        activity_name: "Other",
        actor: "the person who decided",
        fields: "`actor.authorizations` = the decision",
        failure: "—",
    },
    Row {
        actions: &["ledger.genesis"],
        tool_groups: &[],
        class: &API_ACTIVITY,
        activity_id: 1,
        activity_name: "Create",
        actor: "the ledger key",
        fields: "`api.operation` = the action",
        failure: "—",
    },
    Row {
        actions: &["trust.update"],
        tool_groups: &[],
        class: &API_ACTIVITY,
        activity_id: 3,
        activity_name: "Update",
        actor: "the ledger key",
        fields: "`api.operation` = the action",
        failure: "—",
    },
    Row {
        actions: &["payload.redact"],
        tool_groups: &[],
        class: &API_ACTIVITY,
        activity_id: 4,
        activity_name: "Delete",
        actor: "the ledger key",
        fields: "`api.operation` = the action",
        failure: "—",
    },
    Row {
        actions: &[],
        tool_groups: &[],
        class: &API_ACTIVITY,
        activity_id: 99,
        activity_name: "Other",
        actor: "the signer; for `telemetry.*`, the agent session it is about",
        fields: "`api.operation` = the action (`prompt`, `session.end`, `git.commit`, `telemetry.*`, …)",
        failure: "—",
    },
];

/// The row that maps `action` (for a tool action, by the tool's group).
pub fn row_for(action: &str, group: &str) -> &'static Row {
    MAPPING
        .iter()
        .find(|r| {
            (r.actions.is_empty() || r.actions.contains(&action))
                && (r.tool_groups.is_empty() || r.tool_groups.contains(&group))
        })
        .unwrap_or(&MAPPING[MAPPING.len() - 1])
}

/// The table of docs/SIEM.md, from [`MAPPING`].
pub fn table_markdown() -> String {
    let mut out = String::from(
        "| ledger action | tools | OCSF class | activity | actor | also | status Failure when |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for r in MAPPING {
        let actions = if r.actions.is_empty() {
            "any other".to_string()
        } else {
            r.actions
                .iter()
                .map(|a| format!("`{a}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let tools = if !r.actions.iter().any(|a| TOOL_ACTIONS.contains(a)) {
            "—".to_string()
        } else if r.tool_groups.is_empty() {
            "any other".to_string()
        } else {
            r.tool_groups.join(", ")
        };
        out.push_str(&format!(
            "| {actions} | {tools} | {} ({}) | {} ({}) | {} | {} | {} |\n",
            r.class.name, r.class.uid, r.activity_name, r.activity_id, r.actor, r.fields, r.failure
        ));
    }
    out
}

/// `user.type_id` / `user.type` for an actor kind (OCSF 1.1 has no kind for
/// an AI agent: 99 Other, named).
fn user_type(kind: Option<ActorKind>) -> (u32, &'static str) {
    match kind {
        Some(ActorKind::Agent) => (99, "AI agent session"),
        Some(ActorKind::Human) => (1, "User"),
        Some(ActorKind::Service) => (3, "System"),
        None => (0, "Unknown"),
    }
}

fn user(uid: &str, kind: Option<ActorKind>) -> Value {
    let (type_id, name) = user_type(kind);
    json!({"uid": uid, "type_id": type_id, "type": name})
}

fn detail<'a>(e: &'a Entry, key: &str) -> Option<&'a str> {
    e.event.details.get(key).and_then(Value::as_str)
}

fn strings(v: Option<&Value>) -> Vec<Value> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter(|x| x.is_string()).cloned().collect())
        .unwrap_or_default()
}

/// What a delegation (a compact JWS in `session.start`) grants, read without
/// checking its signature: the ledger's rules did that before the entry was
/// accepted, and `custody-verify` does it again.
struct Grant {
    scopes: Vec<Value>,
    valid_from: Option<i64>,
    valid_until: Option<i64>,
}

fn grant_of(jws: &str) -> Option<Grant> {
    use base64::Engine;
    let payload = jws.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    let ms = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .and_then(|t| {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
            })
            .and_then(|t| i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok())
    };
    Some(Grant {
        scopes: strings(v.pointer("/credentialSubject/scopes")),
        valid_from: ms("validFrom"),
        valid_until: ms("validUntil"),
    })
}

/// Maps one canonical entry line to its OCSF event. `ledger` is the ledger's
/// DID and `tree_size` a size of the ledger that holds the entry; both go
/// into `unmapped.custody`, with `seq` and the entry hash. `custody tail`
/// names the smallest, `seq + 1`, so an entry always maps to the same event.
pub fn to_ocsf(line: &[u8], ledger: &Did, tree_size: u64) -> Result<Value, SiemError> {
    let entry = Entry::parse_line(line).map_err(|e| SiemError::Entry(e.to_string()))?;
    let entry_json: Value =
        serde_json::from_slice(line).map_err(|e| SiemError::Entry(e.to_string()))?;
    let hash = entry_hash(line).to_hex();
    let ev = &entry.event;
    let action = ev.action.as_str();
    let tool = detail(&entry, "tool").or_else(|| detail(&entry, "tool_name"));
    let group = tool.map(tool_group).unwrap_or("other");
    let row = row_for(action, group);
    // A timestamp of FORMAT.md §2 is within years 0000–9999: it fits.
    let received_ms = i64::try_from(entry.received_at.unix_millis()).unwrap_or(i64::MAX);

    // Who the event is about: the refused caller of a refusal, the session a
    // broker-attested event is about, else the signer.
    let (subject, subject_kind): (String, Option<ActorKind>) = match action {
        "request.denied" => (
            detail(&entry, "actor").unwrap_or_default().to_string(),
            None,
        ),
        _ if &ev.actor == ledger && detail(&entry, "session_did").is_some() => (
            detail(&entry, "session_did")
                .unwrap_or_default()
                .to_string(),
            Some(ActorKind::Agent),
        ),
        _ => (ev.actor.to_string(), Some(ev.actor_kind)),
    };
    let failed = match action {
        "request.denied" => true,
        "policy.decision" => detail(&entry, "decision") == Some("deny"),
        "tool.result" => ev.details.get("ok") == Some(&Value::Bool(false)),
        _ => false,
    };
    let (severity_id, severity) = match action {
        "identity.revoke" => (4, "High"),
        "request.denied" | "credential.revoke" => (3, "Medium"),
        "policy.decision" if failed => (3, "Medium"),
        _ => (1, "Informational"),
    };

    let mut actor = Map::new();
    actor.insert("user".into(), user(&subject, subject_kind));
    if let Some(sid) = &ev.session {
        let mut session = Map::new();
        session.insert("uid".into(), sid.as_str().into());
        if let Some(by) = &ev.on_behalf_of {
            session.insert("issuer".into(), by.as_str().into());
        }
        actor.insert("session".into(), Value::Object(session));
    }
    match action {
        "policy.decision" => {
            let decision = detail(&entry, "decision").unwrap_or("unknown");
            let policies = strings(ev.details.get("policies"));
            let auths: Vec<Value> = if policies.is_empty() {
                vec![json!({"decision": decision})]
            } else {
                policies
                    .into_iter()
                    .map(|p| json!({"decision": decision, "policy": {"name": p, "uid": p}}))
                    .collect()
            };
            actor.insert("authorizations".into(), auths.into());
        }
        "approval" => {
            let decision = detail(&entry, "decision").unwrap_or("unknown");
            actor.insert("authorizations".into(), json!([{ "decision": decision }]));
        }
        _ => {}
    }

    let status = if failed {
        json!({"status_id": 2, "status": "Failure"})
    } else {
        json!({"status_id": 1, "status": "Success"})
    };
    let mut metadata = json!({
        "version": OCSF_VERSION,
        "product": {"name": PRODUCT, "vendor_name": PRODUCT},
        "uid": hash,
        "sequence": entry.seq.0,
        "logged_time": received_ms,
        "original_time": ev.client_time.to_string(),
        "log_name": Origin::for_ledger(ledger).as_str(),
    });
    if let Some(sid) = &ev.session {
        metadata["correlation_uid"] = sid.as_str().into();
    }
    let mut custody = json!({
        "mapping": MAPPING_VERSION,
        "ledger": ledger.as_str(),
        "seq": entry.seq.0,
        "hash": hash,
        "tree_size": tree_size,
        "action": action,
        "entry": entry_json,
    });
    if let Some(c) = &ev.context {
        custody["context"] = c.as_str().into();
    }
    if let Some(by) = &ev.on_behalf_of {
        custody["on_behalf_of"] = by.as_str().into();
    }
    let mut out = json!({
        "class_uid": row.class.uid,
        "class_name": row.class.name,
        "category_uid": row.class.category_uid,
        "category_name": row.class.category_name,
        "activity_id": row.activity_id,
        "activity_name": row.activity_name,
        "type_uid": row.class.uid * 100 + row.activity_id,
        "type_name": format!("{}: {}", row.class.name, row.activity_name),
        "time": received_ms,
        "severity_id": severity_id,
        "severity": severity,
        "message": message(&entry, &subject),
        "metadata": metadata,
        "unmapped": {"custody": custody},
    });
    if row.class.has_actor {
        out["actor"] = Value::Object(actor);
    }
    merge(&mut out, status);
    if failed {
        let why = match action {
            "request.denied" => detail(&entry, "code").unwrap_or("refused").to_string(),
            "policy.decision" => "denied by the pre-tool policy".to_string(),
            _ => "the tool reported a failure".to_string(),
        };
        out["status_detail"] = why.into();
    }

    let agent = detail(&entry, "agent").unwrap_or(PRODUCT);
    let class = row.class;
    if *class == PROCESS_ACTIVITY {
        let uid = detail(&entry, "tool_use_id")
            .map(str::to_string)
            .unwrap_or_else(|| ev.nonce.to_hex());
        out["process"] = json!({"name": tool.unwrap_or("unknown"), "uid": uid});
        out["device"] = json!({"type_id": 99, "type": "AI agent session", "uid": subject});
    } else if *class == API_ACTIVITY {
        let operation = match action {
            "tool.call" | "tool.result" | "policy.decision" => tool.unwrap_or("unknown"),
            "request.denied" => detail(&entry, "attempted_action").unwrap_or(action),
            _ => action,
        };
        let mut api = json!({"operation": operation, "service": {"name": agent}});
        if let Some(id) = detail(&entry, "tool_use_id") {
            api["request"] = json!({ "uid": id });
        }
        if action == "request.denied" {
            let mut response = json!({"error": detail(&entry, "code").unwrap_or("refused")});
            if let Some(r) = detail(&entry, "reason") {
                response["error_message"] = r.into();
            }
            api["response"] = response;
        }
        out["api"] = api;
        out["src_endpoint"] = json!({ "uid": subject });
        if let Some(cwd) = detail(&entry, "cwd") {
            out["resources"] = json!([{"type": "directory", "name": cwd}]);
        }
    } else if *class == AUTHORIZE_SESSION {
        let (user_uid, privileges, mut session) = if action == "session.start" {
            let g = detail(&entry, "delegation").and_then(grant_of);
            let mut session = Map::new();
            if let Some(g) = &g {
                if let Some(t) = g.valid_from {
                    session.insert("created_time".into(), json!(t));
                }
                if let Some(t) = g.valid_until {
                    session.insert("expiration_time".into(), json!(t));
                }
            }
            (
                ev.actor.to_string(),
                g.map(|g| g.scopes).unwrap_or_default(),
                session,
            )
        } else {
            (
                detail(&entry, "subject").unwrap_or(&subject).to_string(),
                strings(ev.details.get("policies")),
                Map::new(),
            )
        };
        if let Some(sid) = &ev.session {
            session.insert("uid".into(), sid.as_str().into());
        }
        if let Some(by) = &ev.on_behalf_of {
            session.insert("issuer".into(), by.as_str().into());
        }
        out["user"] = user(&user_uid, Some(ActorKind::Agent));
        out["privileges"] = privileges.into();
        if !session.is_empty() {
            out["session"] = Value::Object(session);
        }
    } else if *class == USER_ACCESS {
        out["user"] = json!({ "uid": detail(&entry, "subject").unwrap_or_default() });
        out["privileges"] = strings(ev.details.get("accessor_sha256")).into();
    } else if *class == ACCOUNT_CHANGE {
        out["user"] = json!({ "uid": detail(&entry, "subject").unwrap_or_default() });
    }
    Ok(out)
}

fn message(entry: &Entry, subject: &str) -> String {
    let ev = &entry.event;
    match ev.action.as_str() {
        "request.denied" => format!(
            "refused {} by {subject}: {}",
            detail(entry, "attempted_action").unwrap_or("a request"),
            detail(entry, "code").unwrap_or("refused")
        ),
        a => format!(
            "{a} by {subject} (entry {}, signed by {} as {})",
            entry.seq.0,
            ev.actor,
            ev.actor_kind.as_str()
        ),
    }
}

fn merge(into: &mut Value, from: Value) {
    if let (Value::Object(a), Value::Object(b)) = (into, from) {
        a.extend(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_a_line_per_row_and_the_last_row_takes_the_rest() {
        let t = table_markdown();
        println!("{t}");
        assert_eq!(t.lines().count(), MAPPING.len() + 2);
        assert!(MAPPING.last().unwrap().actions.is_empty());
        assert_eq!(row_for("git.commit", "other").class.uid, 6003);
        assert_eq!(row_for("tool.call", "shell").class.uid, 1007);
        assert_eq!(row_for("tool.result", "read").activity_id, 2);
        // type_uid is class_uid * 100 + activity_id in every row, within OCSF's range.
        for r in MAPPING {
            assert!(r.activity_id < 100);
        }
    }
}
