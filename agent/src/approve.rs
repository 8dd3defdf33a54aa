//! What `custody approve` does for a person (or an automated reviewer):
//! check that the held call the broker describes is the one its action
//! digest names, and build the `approval` event the approver signs with
//! their own key, bound to that digest, that session, an expiry and a
//! single use (FORMAT.md §3.3).

use std::time::Duration;

use anyhow::{bail, Context as _};
use custody_identity::{Did, KeyPair};
use custody_ledger::oversight;
use custody_ledger::{actions, ActionType, ActorKind, Event, Timestamp};
use custody_wire::api::HeldAction;

/// Default lifetime of an approval: long enough for the agent to retry.
pub const DEFAULT_APPROVAL_TTL: Duration = Duration::from_secs(15 * 60);

/// Recomputes the held call's action digest from what the broker shows: a
/// person approves what they read, never only what a server says it means.
pub fn check_held(held: &HeldAction) -> anyhow::Result<()> {
    let session = Did::parse(&held.session_did).context("the held call's session")?;
    let digest = oversight::action_digest(&session, &held.tool, &held.input, &held.cwd)?;
    if digest != held.action_digest {
        bail!(
            "the broker's description of held call {} does not match its action digest ({} computed, {} claimed): not approving it",
            held.decision_seq,
            digest,
            held.action_digest
        );
    }
    Ok(())
}

/// The text a person reads before deciding.
pub fn describe(held: &HeldAction) -> String {
    let what = custody_wire::tool::Resource::of(&held.tool, &held.input);
    format!(
        "held call (ledger entry {seq}, {at})\n  agent     {agent} (session {sid}, context {ctx})\n  session   {did}\n  delegator {del}\n  tool      {tool}\n  {kind:<9} {text}\n  cwd       {cwd}\n  rule      {rules} (needs: {req})\n  call id   {call}\n  action    {digest}\n  state     {state}\n",
        seq = held.decision_seq,
        at = held.held_at,
        agent = held.agent,
        sid = held.session_id,
        ctx = held.context,
        did = held.session_did,
        del = held.delegator,
        tool = held.tool,
        kind = what.kind,
        text = what.text,
        cwd = held.cwd,
        rules = held.rules.join(", "),
        req = if held.requires == "review" {
            "a person or a listed reviewer"
        } else {
            "a person"
        },
        call = held.call_id.as_deref().unwrap_or("-"),
        digest = held.action_digest,
        state = held.state,
    )
}

/// The `approval` event `key` signs for `held`: `approve` or a refusal,
/// valid for `ttl`; as a reviewer (`service`, an `auto_review` decision)
/// when `reviewer` is set.
pub fn approval_event(
    key: &KeyPair,
    held: &HeldAction,
    approve: bool,
    ttl: Duration,
    reviewer: bool,
    reason: Option<&str>,
) -> anyhow::Result<Event> {
    let kind = if reviewer {
        ActorKind::Service
    } else {
        ActorKind::Human
    };
    let mut ev = Event::new(key.did(), kind, ActionType::new(actions::APPROVAL)?);
    let ms = i64::try_from(ttl.as_millis()).context("--ttl out of range")?;
    let expires = Timestamp::now().plus_millis(ms);
    let d = &mut ev.details;
    d.insert(
        "decision".into(),
        if approve { "approve" } else { "deny" }.into(),
    );
    d.insert("action_digest".into(), held.action_digest.clone().into());
    d.insert("session".into(), held.session_did.clone().into());
    d.insert("expires_at".into(), expires.to_string().into());
    d.insert("single_use".into(), true.into());
    d.insert("decision_seq".into(), held.decision_seq.into());
    d.insert("tool".into(), held.tool.clone().into());
    if let Some(r) = held.rules.first() {
        d.insert("rule".into(), r.clone().into());
    }
    if let Some(r) = reason {
        d.insert(
            "reason".into(),
            r.chars().take(500).collect::<String>().into(),
        );
    }
    Ok(ev)
}
