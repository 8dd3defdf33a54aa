//! Why the ledger refuses an event: one typed code per reason, from the
//! rules ([`crate::authority`]), the store's writer and the broker's own
//! checks, through the broker's HTTP answers and into `request.denied`
//! entries — the vocabulary of refusals a ledger records.

use crate::actions::Refusal;

/// Why an event is refused. `code` is stable (for APIs, `request.denied`
/// entries and reports); the message names the problem for a person.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Denial {
    pub code: DenialCode,
    pub message: String,
}

impl Denial {
    pub fn new(code: DenialCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Every reason the ledger's rules refuse an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DenialCode {
    BadSignature,
    ReplayedNonce,
    NoGenesis,
    UnknownActor,
    WrongActorKind,
    /// An action name in a reserved namespace that the table does not define.
    ReservedAction,
    /// A row only the ledger key may sign.
    LedgerKeyOnly,
    /// `identity.revoke` by someone who is not a current admin.
    NotAdmin,
    /// `approval` by someone who is neither a person the trust roots name
    /// (admin, delegator, approver) nor a listed reviewer.
    HumanOnly,
    /// A row only a started session may sign.
    SessionOnly,
    /// `session.start` signed by a key that already has a role.
    NewSessionKeyOnly,
    /// The ledger key writing in the actors' free namespace.
    NotPermitted,
    NoSession,
    DelegationInvalid,
    ContextMismatch,
    OutOfScope,
    NotYetValid,
    Expired,
    Revoked,
    /// The session recorded its `session.end`.
    SessionEnded,
    RevocationInvalid,
    /// A revocation naming the ledger's own DID.
    CannotRevokeLedger,
    /// A revocation that would leave no unrevoked admin.
    LastAdmin,
    TrustInvalid,
    /// An `approval` entry that is not bound to one action of a started
    /// session, or expires too late or already.
    ApprovalInvalid,
    /// An `approval` by someone who may not approve that session's actions.
    NotApprover,
    /// A session's claimed approval that no entry of the ledger backs.
    ApprovalUnverified,
    /// An action the policy held for a person, run on anything less than a
    /// person's approval (the hard floor).
    HumanApprovalRequired,
    TooLarge,
    Malformed,
    // Refusals by the broker before an event reaches the rules (recorded as
    // `request.denied` all the same).
    /// The request is signed by one DID and its event names another actor.
    DidMismatch,
    /// A session start signed by someone not in the trust state's delegators.
    NotDelegator,
    /// A scope the broker's configuration does not define.
    UnknownScope,
    /// A session longer than its scopes' `max_ttl`.
    TtlTooLong,
    /// A session that may not act now (revoked, expired, ended, unknown).
    SessionInactive,
    /// A read of the entry feed by someone who is neither an auditor
    /// (`[trust] auditors`) nor an admin, or who has been revoked.
    NotAuditor,
}

impl DenialCode {
    pub const ALL: &'static [DenialCode] = &[
        DenialCode::BadSignature,
        DenialCode::ReplayedNonce,
        DenialCode::NoGenesis,
        DenialCode::UnknownActor,
        DenialCode::WrongActorKind,
        DenialCode::ReservedAction,
        DenialCode::LedgerKeyOnly,
        DenialCode::NotAdmin,
        DenialCode::HumanOnly,
        DenialCode::SessionOnly,
        DenialCode::NewSessionKeyOnly,
        DenialCode::NotPermitted,
        DenialCode::NoSession,
        DenialCode::DelegationInvalid,
        DenialCode::ContextMismatch,
        DenialCode::OutOfScope,
        DenialCode::NotYetValid,
        DenialCode::Expired,
        DenialCode::Revoked,
        DenialCode::SessionEnded,
        DenialCode::RevocationInvalid,
        DenialCode::CannotRevokeLedger,
        DenialCode::LastAdmin,
        DenialCode::TrustInvalid,
        DenialCode::ApprovalInvalid,
        DenialCode::NotApprover,
        DenialCode::ApprovalUnverified,
        DenialCode::HumanApprovalRequired,
        DenialCode::TooLarge,
        DenialCode::Malformed,
        DenialCode::DidMismatch,
        DenialCode::NotDelegator,
        DenialCode::UnknownScope,
        DenialCode::TtlTooLong,
        DenialCode::SessionInactive,
        DenialCode::NotAuditor,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            DenialCode::BadSignature => "bad_signature",
            DenialCode::ReplayedNonce => "replayed_nonce",
            DenialCode::NoGenesis => "no_genesis",
            DenialCode::UnknownActor => "unknown_actor",
            DenialCode::WrongActorKind => "wrong_actor_kind",
            DenialCode::ReservedAction => "reserved_action",
            DenialCode::LedgerKeyOnly => "ledger_key_only",
            DenialCode::NotAdmin => "not_admin",
            DenialCode::HumanOnly => "human_only",
            DenialCode::SessionOnly => "session_only",
            DenialCode::NewSessionKeyOnly => "new_session_key_only",
            DenialCode::NotPermitted => "not_permitted",
            DenialCode::NoSession => "no_session",
            DenialCode::DelegationInvalid => "delegation_invalid",
            DenialCode::ContextMismatch => "context_mismatch",
            DenialCode::OutOfScope => "out_of_scope",
            DenialCode::NotYetValid => "not_yet_valid",
            DenialCode::Expired => "expired",
            DenialCode::Revoked => "revoked",
            DenialCode::SessionEnded => "session_ended",
            DenialCode::RevocationInvalid => "revocation_invalid",
            DenialCode::CannotRevokeLedger => "cannot_revoke_ledger",
            DenialCode::LastAdmin => "last_admin",
            DenialCode::TrustInvalid => "trust_invalid",
            DenialCode::ApprovalInvalid => "approval_invalid",
            DenialCode::NotApprover => "not_approver",
            DenialCode::ApprovalUnverified => "approval_unverified",
            DenialCode::HumanApprovalRequired => "human_approval_required",
            DenialCode::TooLarge => "too_large",
            DenialCode::Malformed => "malformed",
            DenialCode::DidMismatch => "did_mismatch",
            DenialCode::NotDelegator => "not_delegator",
            DenialCode::UnknownScope => "unknown_scope",
            DenialCode::TtlTooLong => "ttl_too_long",
            DenialCode::SessionInactive => "session_inactive",
            DenialCode::NotAuditor => "not_auditor",
        }
    }

    /// The code named `s`, as [`as_str`](Self::as_str) spells it.
    pub fn parse(s: &str) -> Option<DenialCode> {
        Self::ALL.iter().copied().find(|c| c.as_str() == s)
    }

    /// The code of a row's refusal.
    pub fn for_refusal(r: Refusal) -> DenialCode {
        match r {
            Refusal::LedgerKeyOnly => DenialCode::LedgerKeyOnly,
            Refusal::AdminOnly => DenialCode::NotAdmin,
            Refusal::HumanOnly => DenialCode::HumanOnly,
            Refusal::SessionOnly => DenialCode::SessionOnly,
            Refusal::NewSessionKeyOnly => DenialCode::NewSessionKeyOnly,
            Refusal::ActorsOnly => DenialCode::NotPermitted,
        }
    }
}

impl std::fmt::Display for DenialCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
