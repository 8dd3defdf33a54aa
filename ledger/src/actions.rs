//! Action types, and the one table that says who may append each of them.
//!
//! [`ACTION_TABLE`] is the whole permission model of the ledger (FORMAT.md §9
//! prints the same table). For an event, [`rule_for`] finds its row — an exact
//! name first, then a reserved prefix, then the agents' free namespace — and
//! the row names the roles that may sign it, with the `actor_kind` each must
//! use. [`crate::authority::Authority`] consults it before any role-specific
//! rule, for the broker's gate and the offline verifier alike, so a new branch
//! in the rules cannot grant what the table does not.
//!
//! Reserved namespaces ([`RESERVED_NAMESPACES`]): an action whose first
//! dot-separated segment is one of them must match a row; any other name there
//! (`identity.rotate`, `ledger.reset`) is refused for everyone. Every other
//! well-formed name (`tool.call`, `git.commit`, `hook.spool_flushed`, …) is in
//! the free namespace, open to agent sessions and to humans.

use std::fmt;

use crate::event::ActorKind;

/// Entry 0: the ledger key states the ledger's DID and its trust roots.
pub const GENESIS: &str = "ledger.genesis";
/// The ledger key changes the trust roots (admins, delegators).
pub const TRUST_UPDATE: &str = "trust.update";
/// A session key starts a session; `details.delegation` carries the credential.
pub const SESSION_START: &str = "session.start";
/// A session closes itself: after it, the session may do nothing more.
pub const SESSION_END: &str = "session.end";
/// An admin revokes an identity; `details.revocation` carries the statement.
pub const IDENTITY_REVOKE: &str = "identity.revoke";
/// The ledger records a request it refused (a denied attempt is evidence).
pub const REQUEST_DENIED: &str = "request.denied";
/// An agent session asks for a credential (signed by the session).
pub const CREDENTIAL_REQUEST: &str = "credential.request";
/// The ledger records a token it minted (accessor hash, scope, TTL).
pub const CREDENTIAL_MINT: &str = "credential.mint";
/// The ledger records tokens it revoked.
pub const CREDENTIAL_REVOKE: &str = "credential.revoke";
pub const TOOL_CALL: &str = "tool.call";
pub const TOOL_RESULT: &str = "tool.result";
/// A human's decision on an agent's request (`details.decision`: approve | deny).
pub const APPROVAL: &str = "approval";
pub const PROMPT: &str = "prompt";
/// The broker's pre-tool policy decided a session's tool call (`details.decision`,
/// `details.policies`).
pub const POLICY_DECISION: &str = "policy.decision";
/// The ledger records that an admin had a payload body deleted.
pub const PAYLOAD_REDACT: &str = "payload.redact";
/// The ledger records a witness's cosignature of a checkpoint.
pub const CHECKPOINT_COSIGNED: &str = "checkpoint.cosigned";
/// Prefix of broker-attested agent telemetry (`telemetry.claude_code.tool_decision`, …).
pub const TELEMETRY_PREFIX: &str = "telemetry.";
/// Claude Code's / Codex's own session lifecycle, recorded by their hooks. Not
/// the custody session's: an agent may clear or resume its conversation many
/// times within one custody session.
pub const AGENT_SESSION_START: &str = "agent.session_start";
pub const AGENT_SESSION_END: &str = "agent.session_end";

/// First segments of action names that only the table's rows may use.
pub const RESERVED_NAMESPACES: &[&str] = &[
    "approval",
    "checkpoint",
    "credential",
    "custody",
    "identity",
    "ledger",
    "payload",
    "policy",
    "request",
    "session",
    "telemetry",
    "trust",
];

/// Who signs an event, as the ledger's state at that point sees the signer.
///
/// The roles are disjoint by construction (the rules keep them so): the
/// ledger key is never listed in the trust roots, a started session is never
/// an admin or delegator, and a new session key is none of the others. A DID
/// may be both admin and delegator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// The ledger's own key (the broker's attestations).
    Ledger,
    /// A DID in the trust state's `admins`.
    Admin,
    /// A DID in the trust state's `delegators` (people, CI identities).
    Delegator,
    /// A DID in the trust state's `approvers`: a person who may approve any
    /// session's held actions.
    Approver,
    /// A DID in the trust state's `reviewers`: an automated reviewer (a
    /// service identity) whose approvals count as `auto_review`.
    Reviewer,
    /// A started agent session.
    Session,
    /// A key no role names yet, signing its own `session.start`.
    NewSession,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Ledger => "ledger",
            Role::Admin => "admin",
            Role::Delegator => "delegator",
            Role::Approver => "approver",
            Role::Reviewer => "reviewer",
            Role::Session => "session",
            Role::NewSession => "new_session",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which action names a row covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// Exactly this name.
    Exact(&'static str),
    /// Every name starting with this prefix (which ends in `.`).
    Prefix(&'static str),
    /// Every name outside [`RESERVED_NAMESPACES`].
    Unreserved,
}

impl Pattern {
    fn matches(&self, action: &str) -> bool {
        match self {
            Pattern::Exact(a) => action == *a,
            Pattern::Prefix(p) => action.len() > p.len() && action.starts_with(p),
            Pattern::Unreserved => !is_reserved(action),
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Exact(a) => f.write_str(a),
            Pattern::Prefix(p) => write!(f, "{p}*"),
            Pattern::Unreserved => f.write_str("(free namespace)"),
        }
    }
}

/// A role that may sign a row's actions, and the `actor_kind`s it may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signer {
    pub role: Role,
    pub kinds: &'static [ActorKind],
}

/// The checks an action needs beyond who signs it, named so the table reads
/// as the rule and [`crate::authority`] holds one function per constraint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Constraint {
    /// No further check (the session rules still apply to a session signer).
    None,
    /// Entry 0 only; names the ledger's DID and trust roots (rule A1).
    Genesis,
    /// Valid trust roots that name neither the ledger key nor a session.
    TrustUpdate,
    /// A delegation from a current delegator naming the signer (rule A4).
    SessionStart,
    /// A revocation statement by the signer, never of the ledger key, never
    /// leaving the ledger without an unrevoked admin (rule A3).
    Revocation,
    /// An approval bound to one action of a started session, by someone who
    /// may approve that session's actions; a reviewer never for an action
    /// held for a person (rule A8).
    Approval,
    /// The policy's decision names its action: an allow may be referenced
    /// by the call, a hold makes the call need an approval (rule A8).
    PolicyDecision,
    /// What a session's event says approved it must be an entry that does
    /// (rule A8): only a `tool.call` may claim an approval.
    ApprovalClaims,
}

impl Constraint {
    /// Whether the check is rule A8's, whose records (approvals, holds,
    /// allowing decisions) a store does not keep beside the ledger but
    /// rebuilds from its last two days
    /// ([`crate::authority::Authority::restore_oversight`]).
    pub fn is_oversight(&self) -> bool {
        matches!(
            self,
            Constraint::Approval | Constraint::PolicyDecision | Constraint::ApprovalClaims
        )
    }
}

/// Which refusal an actor that no row's signer matches gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    LedgerKeyOnly,
    AdminOnly,
    HumanOnly,
    SessionOnly,
    NewSessionKeyOnly,
    /// The free namespace: the actors' own actions, never the ledger key's.
    ActorsOnly,
}

/// One row of the table.
#[derive(Clone, Copy, Debug)]
pub struct ActionRule {
    pub pattern: Pattern,
    pub signers: &'static [Signer],
    pub constraint: Constraint,
    pub refusal: Refusal,
    /// One line for FORMAT.md and refusal messages.
    pub summary: &'static str,
}

impl ActionRule {
    /// The `actor_kind`s `role` may use for this row, or `None` when the role
    /// may not sign it at all.
    pub fn kinds_for(&self, role: Role) -> Option<&'static [ActorKind]> {
        self.signers
            .iter()
            .find(|s| s.role == role)
            .map(|s| s.kinds)
    }

    /// "admin (human|service), delegator (human)" — for messages and docs.
    pub fn signers_text(&self) -> String {
        self.signers
            .iter()
            .map(|s| {
                let kinds: Vec<&str> = s.kinds.iter().map(|k| k.as_str()).collect();
                format!("{} ({})", s.role, kinds.join("|"))
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

const SERVICE: &[ActorKind] = &[ActorKind::Service];
const AGENT: &[ActorKind] = &[ActorKind::Agent];
const HUMAN: &[ActorKind] = &[ActorKind::Human];
const HUMAN_OR_SERVICE: &[ActorKind] = &[ActorKind::Human, ActorKind::Service];

const LEDGER_ONLY: &[Signer] = &[Signer {
    role: Role::Ledger,
    kinds: SERVICE,
}];

const fn ledger_row(pattern: Pattern, summary: &'static str) -> ActionRule {
    ActionRule {
        pattern,
        signers: LEDGER_ONLY,
        constraint: Constraint::None,
        refusal: Refusal::LedgerKeyOnly,
        summary,
    }
}

/// Who may append what. Rows with an exact name come before the prefix rows
/// that would also match them (`credential.request` before `credential.*`);
/// [`rule_for`] takes the first row that matches.
pub const ACTION_TABLE: &[ActionRule] = &[
    ActionRule {
        pattern: Pattern::Exact(GENESIS),
        signers: LEDGER_ONLY,
        constraint: Constraint::Genesis,
        refusal: Refusal::LedgerKeyOnly,
        summary: "entry 0 only: the ledger's DID and its first trust roots (admins, delegators, approvers, reviewers)",
    },
    ActionRule {
        pattern: Pattern::Exact(TRUST_UPDATE),
        signers: LEDGER_ONLY,
        constraint: Constraint::TrustUpdate,
        refusal: Refusal::LedgerKeyOnly,
        summary: "replaces the trust roots (from the broker's config)",
    },
    ActionRule {
        pattern: Pattern::Exact(CREDENTIAL_REQUEST),
        signers: &[Signer {
            role: Role::Session,
            kinds: AGENT,
        }],
        constraint: Constraint::None,
        refusal: Refusal::SessionOnly,
        summary: "a session asks for a token for a delegated scope",
    },
    ledger_row(
        Pattern::Prefix("credential."),
        "tokens the broker minted or revoked (accessor hashes, never tokens)",
    ),
    ActionRule {
        pattern: Pattern::Exact(POLICY_DECISION),
        signers: LEDGER_ONLY,
        constraint: Constraint::PolicyDecision,
        refusal: Refusal::LedgerKeyOnly,
        summary: "the pre-tool policy's decision on a session's tool call: allow, deny or approval_required",
    },
    ledger_row(
        Pattern::Exact(REQUEST_DENIED),
        "a request the broker refused, with the caller and the code",
    ),
    ledger_row(
        Pattern::Prefix("checkpoint."),
        "checkpoint events (a witness's cosignature kept)",
    ),
    ledger_row(
        Pattern::Prefix(TELEMETRY_PREFIX),
        "agent telemetry (OTLP) the broker attests for a session",
    ),
    ledger_row(
        Pattern::Exact(PAYLOAD_REDACT),
        "a payload body deleted at an admin's request",
    ),
    ActionRule {
        pattern: Pattern::Exact(IDENTITY_REVOKE),
        signers: &[Signer {
            role: Role::Admin,
            kinds: HUMAN_OR_SERVICE,
        }],
        constraint: Constraint::Revocation,
        refusal: Refusal::AdminOnly,
        summary: "an admin's signed revocation of an identity (the kill switch)",
    },
    ActionRule {
        pattern: Pattern::Exact(APPROVAL),
        signers: &[
            Signer {
                role: Role::Admin,
                kinds: HUMAN,
            },
            Signer {
                role: Role::Delegator,
                kinds: HUMAN,
            },
            Signer {
                role: Role::Approver,
                kinds: HUMAN,
            },
            Signer {
                role: Role::Reviewer,
                kinds: SERVICE,
            },
        ],
        constraint: Constraint::Approval,
        refusal: Refusal::HumanOnly,
        summary: "a person's (or a listed reviewer's) decision on one action of a session, signed with their own key",
    },
    ActionRule {
        pattern: Pattern::Exact(SESSION_START),
        signers: &[Signer {
            role: Role::NewSession,
            kinds: AGENT,
        }],
        constraint: Constraint::SessionStart,
        refusal: Refusal::NewSessionKeyOnly,
        summary: "a new session key starts its session under a delegation, once",
    },
    ActionRule {
        pattern: Pattern::Exact(SESSION_END),
        signers: &[Signer {
            role: Role::Session,
            kinds: AGENT,
        }],
        constraint: Constraint::None,
        refusal: Refusal::SessionOnly,
        summary: "a session closes itself; it may append nothing after",
    },
    ActionRule {
        pattern: Pattern::Unreserved,
        signers: &[
            Signer {
                role: Role::Session,
                kinds: AGENT,
            },
            Signer {
                role: Role::Admin,
                kinds: HUMAN_OR_SERVICE,
            },
            Signer {
                role: Role::Delegator,
                kinds: HUMAN_OR_SERVICE,
            },
        ],
        constraint: Constraint::ApprovalClaims,
        refusal: Refusal::ActorsOnly,
        summary: "the actors' own actions: tool calls, prompts, commits, hook events",
    },
];

impl Constraint {
    /// The rule it stands for, as FORMAT.md §9 names it.
    pub fn text(&self) -> &'static str {
        match self {
            Constraint::None => "—",
            Constraint::Genesis => "entry 0 only (A1)",
            Constraint::TrustUpdate => {
                "valid trust roots naming neither the ledger key nor a session (A1)"
            }
            Constraint::SessionStart => {
                "a delegation from a current delegator naming the signer (A4)"
            }
            Constraint::Revocation => {
                "statement by the signer; never the ledger key; not the last admin (A3)"
            }
            Constraint::Approval => {
                "bound to one action of a started session; the delegator of that session, an admin or an approver as `human`, a reviewer as `service` (auto_review) never for an action held for a person (A8)"
            }
            Constraint::PolicyDecision => {
                "with an action digest: an allow may back one `tool.call`, an `approval_required` makes the action need an approval (A8)"
            }
            Constraint::ApprovalClaims => {
                "a session's claimed approval names the entry that backs it, on a `tool.call` only (A8)"
            }
        }
    }
}

/// The table as FORMAT.md §9.1 prints it (a test holds the document to it).
pub fn table_markdown() -> String {
    let mut out = String::from(
        "| action | may be signed by (role: actor_kind) | refused with | also checks | records |\n|---|---|---|---|---|\n",
    );
    for r in ACTION_TABLE {
        let pattern = match r.pattern {
            Pattern::Exact(a) => format!("`{a}`"),
            Pattern::Prefix(p) => format!("`{p}*`"),
            Pattern::Unreserved => "any other name (free namespace)".to_string(),
        };
        let signers: Vec<String> = r
            .signers
            .iter()
            .map(|s| {
                let kinds: Vec<String> = s
                    .kinds
                    .iter()
                    .map(|k| format!("`{}`", k.as_str()))
                    .collect();
                format!("{}: {}", s.role, kinds.join(" or "))
            })
            .collect();
        let refusal = match r.refusal {
            Refusal::LedgerKeyOnly => "`ledger_key_only`",
            Refusal::AdminOnly => "`not_admin`",
            Refusal::HumanOnly => "`human_only`",
            Refusal::SessionOnly => "`session_only`",
            Refusal::NewSessionKeyOnly => "`new_session_key_only`",
            Refusal::ActorsOnly => "`not_permitted`",
        };
        out.push_str(&format!(
            "| {pattern} | {} | {refusal} | {} | {} |\n",
            signers.join("; "),
            r.constraint.text(),
            r.summary
        ));
    }
    out
}

/// Whether `action`'s first segment is a reserved namespace.
pub fn is_reserved(action: &str) -> bool {
    let first = action.split('.').next().unwrap_or(action);
    RESERVED_NAMESPACES.contains(&first)
}

/// The row that governs `action`, or `None` for a name in a reserved
/// namespace that no row defines (refused for everyone).
pub fn rule_for(action: &str) -> Option<&'static ActionRule> {
    ACTION_TABLE.iter().find(|r| r.pattern.matches(action))
}

/// Whether an accepted `action` can change the rules' state beyond the
/// position and the nonces: the rows with a constraint (genesis, trust
/// update, session start, revocation) and `session.end`. Every other
/// accepted entry leaves trust, sessions and revocations as they were, which
/// lets a store that keeps the state beside the ledger fold in only these
/// ([`crate::authority::Authority::advance_to`] skips the rest).
pub fn changes_state(action: &str) -> bool {
    action == SESSION_END
        || rule_for(action).is_some_and(|r| !matches!(r.constraint, Constraint::None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reserved_row_is_in_a_reserved_namespace() {
        for r in ACTION_TABLE {
            match r.pattern {
                Pattern::Exact(a) | Pattern::Prefix(a) => assert!(is_reserved(a), "{a}"),
                Pattern::Unreserved => {}
            }
        }
    }

    #[test]
    fn exact_rows_win_over_prefixes_and_unknown_reserved_names_have_no_row() {
        assert_eq!(
            rule_for("credential.request").map(|r| r.pattern),
            Some(Pattern::Exact(CREDENTIAL_REQUEST))
        );
        assert_eq!(
            rule_for("credential.mint").map(|r| r.pattern),
            Some(Pattern::Prefix("credential."))
        );
        for unknown in [
            "identity.rotate",
            "ledger.reset",
            "trust.add",
            "session.resume",
            "approval.auto",
            "policy.override",
            "request.allowed",
            "payload.restore",
            "custody.anything",
            "credential",
            "telemetry",
        ] {
            assert!(rule_for(unknown).is_none(), "{unknown} must have no row");
        }
        for free in [
            "tool.call",
            "git.commit",
            "hook.spool_flushed",
            "prompt",
            "agent.stop",
        ] {
            assert_eq!(rule_for(free).map(|r| r.pattern), Some(Pattern::Unreserved));
        }
    }

    #[test]
    fn only_the_ledger_key_writes_its_attestations() {
        for a in [
            GENESIS,
            TRUST_UPDATE,
            CREDENTIAL_MINT,
            CREDENTIAL_REVOKE,
            POLICY_DECISION,
            REQUEST_DENIED,
            CHECKPOINT_COSIGNED,
            "telemetry.claude_code.user_prompt",
            PAYLOAD_REDACT,
        ] {
            let r = rule_for(a).expect("row");
            assert_eq!(r.signers.len(), 1, "{a}");
            assert_eq!(r.signers[0].role, Role::Ledger, "{a}");
        }
        for a in [IDENTITY_REVOKE, APPROVAL, SESSION_START] {
            assert!(rule_for(a).expect("row").kinds_for(Role::Ledger).is_none());
            assert!(rule_for(a).expect("row").kinds_for(Role::Session).is_none());
        }
    }
}
