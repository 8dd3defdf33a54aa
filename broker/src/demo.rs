//! The demo scenario, run embedded: a real durable store in a directory, real
//! keys, real credentials, nothing mocked — but no server and no Vault yet.
//!
//! The scenario is data ([`scenario`]) so that tests can derive the counts a
//! correct ledger must show (agent vs human activity, approvals by kind,
//! revocations, refusals) from the same definition the demo runs.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use custody_identity::{Delegation, Did, KeyPair, Revocation};
use custody_ledger::authority::Authority;
use custody_ledger::bundle::payload_digest;
use custody_ledger::checkpoint::{Origin, SignedCheckpoint};
use custody_ledger::export::export_bundle;
use custody_ledger::store::{AppendError, Store};
use custody_ledger::{
    actions, ActionType, ActorKind, Approval, Context, Event, PayloadRef, SessionId, SignedEvent,
};
use custody_verifier::{verify_bundle, VerifyOptions};
use time::OffsetDateTime;

/// The two agent sessions of the scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sess {
    /// Claude Code in a chat, for the developer.
    Chat,
    /// A CI agent in the pipeline.
    Ci,
}

/// Who approved a tool call in the scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum By {
    /// The developer, recorded as an `approval` entry before the call.
    Human,
    Policy(&'static str),
    AutoReview(&'static str),
    Nobody,
}

/// One step of the scenario.
#[derive(Clone, Debug)]
pub enum Step {
    /// The developer delegates a session to an agent (the session signs `session.start`).
    Delegate {
        sess: Sess,
        agent: &'static str,
        scopes: &'static [&'static str],
        context: &'static str,
    },
    /// The developer acts directly (kind `human`).
    Human {
        action: &'static str,
        detail: &'static str,
    },
    /// An agent calls a tool; the input is kept as a payload beside the chain.
    ToolCall {
        sess: Sess,
        tool: &'static str,
        input: &'static str,
        by: By,
    },
    ToolResult {
        sess: Sess,
        tool: &'static str,
        ok: bool,
    },
    /// The admin revokes a session identity (the kill switch).
    Revoke { sess: Sess, reason: &'static str },
    /// An agent tries again after its revocation; the ledger refuses it and
    /// records the refusal.
    RefusedAttempt { sess: Sess, tool: &'static str },
    /// The payload of the n-th tool call is deleted; the chain stays valid.
    RedactToolInput { nth_call: usize },
    /// The ledger key signs a checkpoint of the tree so far.
    Checkpoint,
}

/// The scenario the demo runs.
pub fn scenario() -> Vec<Step> {
    use Step::*;
    vec![
        Delegate {
            sess: Sess::Chat,
            agent: "claude-code",
            scopes: &["repo-read", "ci-read"],
            context: "chat",
        },
        Human {
            action: actions::PROMPT,
            detail: "fix the flaky test in ledger/store.rs",
        },
        ToolCall {
            sess: Sess::Chat,
            tool: "Read",
            input: "ledger/src/store.rs",
            by: By::Policy("allow-read-in-repo"),
        },
        ToolResult {
            sess: Sess::Chat,
            tool: "Read",
            ok: true,
        },
        ToolCall {
            sess: Sess::Chat,
            tool: "Edit",
            input: "ledger/src/store.rs: retry fdatasync on EINTR",
            by: By::Human,
        },
        ToolResult {
            sess: Sess::Chat,
            tool: "Edit",
            ok: true,
        },
        Delegate {
            sess: Sess::Ci,
            agent: "codex",
            scopes: &["ci-read", "deploy-staging"],
            context: "ci",
        },
        ToolCall {
            sess: Sess::Ci,
            tool: "Bash",
            input: "cargo test --workspace",
            by: By::Policy("allow-tests-in-ci"),
        },
        ToolResult {
            sess: Sess::Ci,
            tool: "Bash",
            ok: true,
        },
        ToolCall {
            sess: Sess::Ci,
            tool: "Bash",
            input: "kubectl rollout restart deploy/api -n staging",
            by: By::AutoReview("reviewer-model"),
        },
        Checkpoint,
        Human {
            action: "git.commit",
            detail: "commit 1f3c2e9: fix flaky store test",
        },
        ToolCall {
            sess: Sess::Chat,
            tool: "Bash",
            input: "git push origin fix/flaky-store-test",
            by: By::Nobody,
        },
        Revoke {
            sess: Sess::Ci,
            reason: "staging restart outside the change window",
        },
        RefusedAttempt {
            sess: Sess::Ci,
            tool: "Bash",
        },
        RedactToolInput { nth_call: 0 },
    ]
}

/// What the demo prints.
#[derive(Debug)]
pub struct Summary {
    pub out: PathBuf,
    pub bundle: PathBuf,
    pub ledger: Did,
    pub entries: u64,
    pub agent_entries: u64,
    pub human_entries: u64,
    pub service_entries: u64,
    pub agents: usize,
    pub humans: usize,
    pub refused: u64,
    pub root: String,
    pub valid: bool,
    pub verification_text: String,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "custody demo: {}", self.out.display())?;
        writeln!(f, "  ledger    {}", self.ledger)?;
        writeln!(
            f,
            "  entries   {} ({} agent, {} human, {} service)",
            self.entries, self.agent_entries, self.human_entries, self.service_entries
        )?;
        writeln!(
            f,
            "  identities {} agent sessions, {} humans",
            self.agents, self.humans
        )?;
        writeln!(
            f,
            "  refused   {} attempt(s) after revocation",
            self.refused
        )?;
        writeln!(f, "  root      {}", self.root)?;
        writeln!(f, "  bundle    {}", self.bundle.display())?;
        writeln!(
            f,
            "  verify    {}",
            if self.valid { "VALID" } else { "INVALID" }
        )?;
        writeln!(f)?;
        writeln!(f, "custody-verify verify {}:", self.bundle.display())?;
        write!(f, "{}", self.verification_text)
    }
}

struct SessionKeys {
    key: KeyPair,
    id: SessionId,
    context: Context,
}

struct Demo {
    store: Store<Authority>,
    ledger: KeyPair,
    human: KeyPair,
    admin: KeyPair,
    chat: Option<SessionKeys>,
    ci: Option<SessionKeys>,
    tool_inputs: Vec<custody_ledger::PayloadDigest>,
    refused: u64,
    keys_dir: PathBuf,
    origin: Origin,
}

impl Demo {
    fn session(&self, s: Sess) -> anyhow::Result<&SessionKeys> {
        match s {
            Sess::Chat => self.chat.as_ref(),
            Sess::Ci => self.ci.as_ref(),
        }
        .context("scenario uses a session before delegating it")
    }

    fn append(&self, signed: SignedEvent) -> anyhow::Result<()> {
        self.store
            .append(signed)
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("append refused: {e}"))
    }

    fn agent_event(&self, s: Sess, action: &str) -> anyhow::Result<Event> {
        let sk = self.session(s)?;
        let mut ev = Event::new(sk.key.did(), ActorKind::Agent, ActionType::new(action)?);
        ev.session = Some(sk.id.clone());
        ev.on_behalf_of = Some(self.human.did());
        ev.context = Some(sk.context.clone());
        Ok(ev)
    }

    fn step(&mut self, step: &Step) -> anyhow::Result<()> {
        match step {
            Step::Delegate {
                sess,
                agent,
                scopes,
                context,
            } => {
                // The session key is made first, so the delegation names a key
                // only the session holds.
                let key = KeyPair::generate();
                let now = OffsetDateTime::now_utc();
                let delegation = Delegation::new(
                    self.human.did(),
                    key.did(),
                    agent.to_string(),
                    scopes.iter().map(|s| s.to_string()).collect(),
                    context.to_string(),
                    now - time::Duration::seconds(5),
                    now + time::Duration::hours(1),
                )?;
                let jws = delegation.issue(&self.human)?;
                let name = match sess {
                    Sess::Chat => "session-chat",
                    Sess::Ci => "session-ci",
                };
                // Demo only: the session keys are kept so tests can forge with them.
                key.save(&self.keys_dir.join(format!("{name}.key")))?;
                let sk = SessionKeys {
                    id: SessionId::new(delegation.id.clone())?,
                    context: Context::new(*context)?,
                    key,
                };
                match sess {
                    Sess::Chat => self.chat = Some(sk),
                    Sess::Ci => self.ci = Some(sk),
                }
                let mut ev = self.agent_event(*sess, actions::SESSION_START)?;
                ev.details.insert("delegation".into(), jws.into());
                ev.details.insert("agent".into(), (*agent).into());
                let signed = ev.sign(&self.session(*sess)?.key)?;
                self.append(signed)
            }
            Step::Human { action, detail } => {
                let mut ev = Event::new(
                    self.human.did(),
                    ActorKind::Human,
                    ActionType::new(*action)?,
                );
                ev.details.insert("summary".into(), (*detail).into());
                self.append(ev.sign(&self.human)?)
            }
            Step::ToolCall {
                sess,
                tool,
                input,
                by,
            } => {
                let mut ev = self.agent_event(*sess, actions::TOOL_CALL)?;
                if *by == By::Human {
                    let mut ap = Event::new(
                        self.human.did(),
                        ActorKind::Human,
                        ActionType::new(actions::APPROVAL)?,
                    );
                    ap.details.insert("decision".into(), "approve".into());
                    ap.details.insert("tool".into(), (*tool).into());
                    ap.details
                        .insert("request_nonce".into(), ev.nonce.to_hex().into());
                    self.append(ap.sign(&self.human)?)?;
                }
                ev.approval = Some(match by {
                    By::Human => Approval::Human {
                        approver: self.human.did(),
                    },
                    By::Policy(p) => Approval::Policy {
                        policy: p.to_string(),
                    },
                    By::AutoReview(r) => Approval::AutoReview {
                        reviewer: r.to_string(),
                    },
                    By::Nobody => Approval::None,
                });
                ev.details.insert("tool".into(), (*tool).into());
                let mut salt = [0u8; 32];
                rand_fill(&mut salt);
                let digest = payload_digest(&salt, input.as_bytes());
                ev.payload = Some(PayloadRef {
                    digest,
                    size: input.len() as u64,
                });
                self.store.put_payload(digest, salt, input.as_bytes())?;
                self.tool_inputs.push(digest);
                let signed = ev.sign(&self.session(*sess)?.key)?;
                self.append(signed)
            }
            Step::ToolResult { sess, tool, ok } => {
                let mut ev = self.agent_event(*sess, actions::TOOL_RESULT)?;
                ev.details.insert("tool".into(), (*tool).into());
                ev.details.insert("ok".into(), (*ok).into());
                let signed = ev.sign(&self.session(*sess)?.key)?;
                self.append(signed)
            }
            Step::Revoke { sess, reason } => {
                let target = self.session(*sess)?.key.did();
                let rev = Revocation::new(
                    self.admin.did(),
                    target.clone(),
                    reason.to_string(),
                    OffsetDateTime::now_utc(),
                )?;
                let jws = rev.issue(&self.admin)?;
                let mut ev = Event::new(
                    self.admin.did(),
                    ActorKind::Human,
                    ActionType::new(actions::IDENTITY_REVOKE)?,
                );
                ev.details.insert("subject".into(), target.as_str().into());
                ev.details.insert("revocation".into(), jws.into());
                self.append(ev.sign(&self.admin)?)
            }
            Step::RefusedAttempt { sess, tool } => {
                let mut ev = self.agent_event(*sess, actions::TOOL_CALL)?;
                ev.details.insert("tool".into(), (*tool).into());
                let signed = ev.sign(&self.session(*sess)?.key)?;
                let actor = signed.event.actor.clone();
                match self.store.append(signed) {
                    Ok(_) => bail!("the ledger accepted an action by a revoked identity"),
                    Err(AppendError::Rejected(r)) => {
                        self.refused += 1;
                        let mut ev = Event::new(
                            self.ledger.did(),
                            ActorKind::Service,
                            ActionType::new(actions::REQUEST_DENIED)?,
                        );
                        ev.details.insert("actor".into(), actor.as_str().into());
                        ev.details
                            .insert("attempted_action".into(), actions::TOOL_CALL.into());
                        ev.details.insert("code".into(), r.code.clone().into());
                        ev.details.insert("reason".into(), r.message.clone().into());
                        self.append(ev.sign(&self.ledger)?)
                    }
                    Err(e) => Err(anyhow::anyhow!("append failed: {e}")),
                }
            }
            Step::Checkpoint => {
                let head = self.store.head()?;
                let cp = SignedCheckpoint::sign(
                    &self.ledger,
                    &self.origin,
                    head,
                    OffsetDateTime::now_utc(),
                )?;
                self.store.save_checkpoint(head.size, &cp.to_bytes())?;
                Ok(())
            }
            Step::RedactToolInput { nth_call } => {
                let digest = *self
                    .tool_inputs
                    .get(*nth_call)
                    .context("no such tool call to redact")?;
                self.store.redact(&digest)?;
                Ok(())
            }
        }
    }
}

fn rand_fill(buf: &mut [u8]) {
    use rand_core::RngCore;
    rand_core::OsRng.fill_bytes(buf);
}

/// Runs the scenario into `out` (which must be empty or absent): keys in
/// `out/keys`, the durable ledger in `out/data`, the bundle in `out/bundle`.
pub fn run(out: &Path) -> anyhow::Result<Summary> {
    if out.exists() && std::fs::read_dir(out)?.next().is_some() {
        bail!("{} is not empty; choose a new directory", out.display());
    }
    let keys = out.join("keys");
    std::fs::create_dir_all(&keys).with_context(|| format!("creating {}", keys.display()))?;
    let ledger = KeyPair::generate();
    let human = KeyPair::generate();
    let admin = KeyPair::generate();
    ledger.save(&keys.join("ledger.key"))?;
    human.save(&keys.join("developer.key"))?;
    admin.save(&keys.join("admin.key"))?;

    let ledger_did = ledger.did();
    let store = Store::open(&out.join("data"), Authority::new(Some(ledger_did.clone())))?;
    let mut demo = Demo {
        store,
        ledger,
        human,
        admin,
        chat: None,
        ci: None,
        tool_inputs: Vec::new(),
        refused: 0,
        keys_dir: keys.clone(),
        origin: Origin::for_ledger(&ledger_did),
    };
    let mut genesis = Event::new(
        demo.ledger.did(),
        ActorKind::Service,
        ActionType::new(actions::GENESIS)?,
    );
    genesis.details = custody_ledger::authority::TrustRoots {
        admins: [demo.admin.did()].into(),
        delegators: [demo.human.did()].into(),
    }
    .to_details();
    demo.append(genesis.sign(&demo.ledger)?)?;
    for step in scenario() {
        demo.step(&step)?;
    }

    let bundle = out.join("bundle");
    let manifest = export_bundle(&demo.store, &demo.ledger, &demo.origin, &bundle)?;
    let refused = demo.refused;
    drop(demo);

    let v = verify_bundle(
        &bundle,
        &VerifyOptions {
            ledger_key: Some(ledger_did.clone()),
        },
    )?;
    let kind = |k: &str| v.stats.by_actor_kind.get(k).copied().unwrap_or(0);
    Ok(Summary {
        out: out.to_path_buf(),
        bundle,
        ledger: ledger_did,
        entries: manifest.tree_size,
        agent_entries: kind("agent"),
        human_entries: kind("human"),
        service_entries: kind("service"),
        agents: v
            .stats
            .identities_by_kind
            .get("agent")
            .copied()
            .unwrap_or(0) as usize,
        humans: v
            .stats
            .identities_by_kind
            .get("human")
            .copied()
            .unwrap_or(0) as usize,
        refused,
        root: manifest.root,
        valid: v.valid,
        verification_text: v.to_text(),
    })
}
