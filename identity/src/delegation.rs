//! Delegation credentials: a human or CI identity hands a scoped, time-boxed
//! session to an agent's own key.
//!
//! A delegation is a W3C Verifiable Credential 2.0 secured as a compact JWS
//! (VC-JOSE-COSE, `typ` `vc+jwt`), so it verifies offline with no JSON-LD
//! processing and no context fetch:
//!
//! ```json
//! {"@context":["https://www.w3.org/ns/credentials/v2"],
//!  "type":["VerifiableCredential","CustodyDelegation"],
//!  "id":"urn:uuid:…","issuer":"did:key:<delegator>",
//!  "validFrom":"2026-11-24T19:00:00Z","validUntil":"2026-11-24T20:00:00Z",
//!  "credentialSubject":{"id":"did:key:<session>","agent":"claude-code",
//!                       "scopes":["ci-read"],"context":"ci"}}
//! ```
//!
//! Verification checks the binding a generic VC library does not: the key that
//! signed (`kid`) must be the `issuer`'s. Otherwise a credential "issued" by a
//! human but signed with the agent's own key would pass.

use rand_core::RngCore;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::jws::{sign_compact, verify_compact};
use crate::{Did, IdentityError, KeyPair};

pub const DELEGATION_TYP: &str = "vc+jwt";
pub const VC_CONTEXT: &str = "https://www.w3.org/ns/credentials/v2";
pub const DELEGATION_TYPE: &str = "CustodyDelegation";
/// More scopes than this is not a scoped session.
pub const MAX_SCOPES: usize = 64;

/// What a delegation says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delegation {
    pub id: String,
    pub issuer: Did,
    pub session: Did,
    pub agent: String,
    pub scopes: Vec<String>,
    pub context: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

/// Why a delegation does not cover a moment.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValidityError {
    #[error("the delegation is not valid before {0}")]
    NotYetValid(String),
    #[error("the delegation expired at {0}")]
    Expired(String),
}

fn bad(why: impl Into<String>) -> IdentityError {
    IdentityError::InvalidCredential(why.into())
}

/// Scope names: `[a-z0-9][a-z0-9._:-]{0,63}`.
pub fn is_valid_scope(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._:-".contains(c))
}

/// Agent and context names: short, printable, no spaces or control characters.
pub fn is_valid_label(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_graphic())
}

/// Whole seconds, UTC, RFC 3339 (`2026-11-24T19:00:00Z`).
pub fn format_time(t: OffsetDateTime) -> String {
    // `to_offset` panics when the instant is outside years -9999..=9999 in UTC
    // (e.g. `9999-12-31T23:00:00-02:00`); keep the original offset then.
    let t = t.checked_to_offset(time::UtcOffset::UTC).unwrap_or(t);
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&Rfc3339).unwrap_or_default()
}

fn parse_time(v: Option<&Value>, what: &str) -> Result<OffsetDateTime, IdentityError> {
    let s = v
        .and_then(Value::as_str)
        .ok_or_else(|| bad(format!("{what} is missing")))?;
    parse_rfc3339_utc(s).ok_or_else(|| {
        bad(format!(
            "{what} must be YYYY-MM-DDTHH:MM:SSZ (UTC, whole seconds)"
        ))
    })
}

/// The one form credential times take: what [`format_time`] writes.
const CREDENTIAL_TIME: &[time::format_description::FormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");

/// Parses a credential time in the one form [`format_time`] writes,
/// `YYYY-MM-DDTHH:MM:SSZ` (RFC 3339, UTC, whole seconds, years 0000-9999).
/// RFC 3339 allows more spellings of one instant (offsets, fractions, `t`
/// and `z`, leap seconds); accepting them would make a third-party
/// verifier's verdict depend on how its parser reads each (FORMAT.md §8.1).
pub(crate) fn parse_rfc3339_utc(s: &str) -> Option<OffsetDateTime> {
    let t = time::PrimitiveDateTime::parse(s, CREDENTIAL_TIME)
        .ok()?
        .assume_utc();
    (format_time(t) == s).then_some(t)
}

fn random_urn_uuid() -> String {
    let mut b = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "urn:uuid:{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl Delegation {
    /// A new delegation with a fresh id; validates every field.
    pub fn new(
        issuer: Did,
        session: Did,
        agent: String,
        scopes: Vec<String>,
        context: String,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Self, IdentityError> {
        let d = Self {
            id: random_urn_uuid(),
            issuer,
            session,
            agent,
            scopes,
            context,
            not_before: OffsetDateTime::parse(&format_time(not_before), &Rfc3339)
                .map_err(|e| bad(e.to_string()))?,
            not_after: OffsetDateTime::parse(&format_time(not_after), &Rfc3339)
                .map_err(|e| bad(e.to_string()))?,
        };
        d.validate()?;
        Ok(d)
    }

    fn validate(&self) -> Result<(), IdentityError> {
        if !is_valid_label(&self.agent) {
            return Err(bad("agent must be 1-64 printable characters"));
        }
        if !is_valid_label(&self.context) {
            return Err(bad("context must be 1-64 printable characters"));
        }
        if self.scopes.len() > MAX_SCOPES {
            return Err(bad(format!("more than {MAX_SCOPES} scopes")));
        }
        if let Some(s) = self.scopes.iter().find(|s| !is_valid_scope(s)) {
            return Err(bad(format!("invalid scope {s:?}")));
        }
        if self.not_before >= self.not_after {
            return Err(bad("validFrom must be before validUntil"));
        }
        if self.id.is_empty() || self.id.len() > 128 {
            return Err(bad("id must be 1-128 characters"));
        }
        if self.issuer == self.session {
            return Err(bad("a session cannot delegate to itself"));
        }
        Ok(())
    }

    fn to_json(&self) -> Value {
        json!({
            "@context": [VC_CONTEXT],
            "type": ["VerifiableCredential", DELEGATION_TYPE],
            "id": self.id,
            "issuer": self.issuer.as_str(),
            "validFrom": format_time(self.not_before),
            "validUntil": format_time(self.not_after),
            "credentialSubject": {
                "id": self.session.as_str(),
                "agent": self.agent,
                "scopes": self.scopes,
                "context": self.context,
            }
        })
    }

    /// Signs as `issuer_key`, which must be the issuer's key.
    pub fn issue(&self, issuer_key: &KeyPair) -> Result<String, IdentityError> {
        if issuer_key.did() != self.issuer {
            return Err(bad("the signing key is not the delegation's issuer"));
        }
        self.validate()?;
        sign_compact(issuer_key, DELEGATION_TYP, &self.to_json())
    }

    /// Verifies a delegation JWS, including that its issuer signed it.
    pub fn verify(jws: &str) -> Result<Self, IdentityError> {
        let v = verify_compact(jws, DELEGATION_TYP)?;
        let p = v
            .payload
            .as_object()
            .ok_or_else(|| bad("payload is not an object"))?;
        if p.get("@context") != Some(&json!([VC_CONTEXT])) {
            return Err(bad("@context must be the VC 2.0 context"));
        }
        if p.get("type") != Some(&json!(["VerifiableCredential", DELEGATION_TYPE])) {
            return Err(bad(
                "type must be [VerifiableCredential, CustodyDelegation]",
            ));
        }
        let s = |v: Option<&Value>, what: &str| -> Result<String, IdentityError> {
            v.and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| bad(format!("{what} must be a string")))
        };
        let issuer = Did::parse(&s(p.get("issuer"), "issuer")?)?;
        if issuer != v.signer {
            return Err(bad(format!(
                "signed by {} but claims issuer {}",
                v.signer, issuer
            )));
        }
        let subj = p
            .get("credentialSubject")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("credentialSubject must be an object"))?;
        let scopes = subj
            .get("scopes")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("credentialSubject.scopes must be an array"))?
            .iter()
            .map(|x| s(Some(x), "scope"))
            .collect::<Result<Vec<_>, _>>()?;
        let d = Self {
            id: s(p.get("id"), "id")?,
            issuer,
            session: Did::parse(&s(subj.get("id"), "credentialSubject.id")?)?,
            agent: s(subj.get("agent"), "credentialSubject.agent")?,
            scopes,
            context: s(subj.get("context"), "credentialSubject.context")?,
            not_before: parse_time(p.get("validFrom"), "validFrom")?,
            not_after: parse_time(p.get("validUntil"), "validUntil")?,
        };
        d.validate()?;
        Ok(d)
    }

    /// Whether `t` falls in `[not_before, not_after)`.
    pub fn is_valid_at(&self, t: OffsetDateTime) -> Result<(), ValidityError> {
        if t < self.not_before {
            return Err(ValidityError::NotYetValid(format_time(self.not_before)));
        }
        if t >= self.not_after {
            return Err(ValidityError::Expired(format_time(self.not_after)));
        }
        Ok(())
    }

    pub fn allows_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::Duration;

    fn sample(human: &KeyPair, session: &KeyPair) -> Delegation {
        let now = OffsetDateTime::now_utc();
        Delegation::new(
            human.did(),
            session.did(),
            "claude-code".into(),
            vec!["ci-read".into()],
            "ci".into(),
            now - Duration::minutes(1),
            now + Duration::hours(1),
        )
        .unwrap()
    }

    #[test]
    fn issue_verify() {
        let (h, s) = (KeyPair::generate(), KeyPair::generate());
        let d = sample(&h, &s);
        let jws = d.issue(&h).unwrap();
        assert_eq!(Delegation::verify(&jws).unwrap(), d);
        assert!(d.allows_scope("ci-read") && !d.allows_scope("admin"));
        d.is_valid_at(OffsetDateTime::now_utc()).unwrap();
        assert!(matches!(
            d.is_valid_at(OffsetDateTime::now_utc() + Duration::hours(2)),
            Err(ValidityError::Expired(_))
        ));
        assert!(matches!(
            d.is_valid_at(OffsetDateTime::now_utc() - Duration::hours(2)),
            Err(ValidityError::NotYetValid(_))
        ));
    }

    #[test]
    fn issuer_must_have_signed() {
        let (h, s) = (KeyPair::generate(), KeyPair::generate());
        let d = sample(&h, &s);
        // The agent signs a credential naming the human as issuer.
        assert!(d.issue(&s).is_err());
        let forged = sign_compact(&s, DELEGATION_TYP, &d.to_json()).unwrap();
        let e = Delegation::verify(&forged).unwrap_err().to_string();
        assert!(e.contains("claims issuer"), "{e}");
    }

    /// FORMAT.md §8.1: a credential time has exactly one spelling.
    #[test]
    fn credential_times_have_one_form() {
        for ok in [
            "2026-11-24T19:00:00Z",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59Z",
        ] {
            let t = parse_rfc3339_utc(ok).unwrap_or_else(|| panic!("{ok}"));
            assert_eq!(format_time(t), ok);
        }
        for other in [
            "2026-11-24T19:00:00.000Z",
            "2026-11-24T19:00:00.5Z",
            "2026-11-24T19:00:00+00:00",
            "2026-11-24T19:00:00-00:00",
            "2026-11-24T20:00:00+01:00",
            "2026-11-24t19:00:00Z",
            "2026-11-24T19:00:00z",
            "2026-11-24 19:00:00Z",
            "2016-12-31T23:59:60Z",
            "2026-11-24T19:00Z",
            "2026-1-24T19:00:00Z",
            "+2026-11-24T19:00:00Z",
            "2026-02-30T00:00:00Z",
            " 2026-11-24T19:00:00Z",
        ] {
            assert!(parse_rfc3339_utc(other).is_none(), "{other}");
        }
    }

    #[test]
    fn invalid_fields_refused() {
        let (h, s) = (KeyPair::generate(), KeyPair::generate());
        let now = OffsetDateTime::now_utc();
        let mk = |scopes: Vec<&str>, ctx: &str, nbf, naf| {
            Delegation::new(
                h.did(),
                s.did(),
                "a".into(),
                scopes.into_iter().map(String::from).collect(),
                ctx.into(),
                nbf,
                naf,
            )
        };
        assert!(mk(vec!["Bad Scope"], "ci", now, now + Duration::hours(1)).is_err());
        assert!(mk(vec!["ok"], "c i", now, now + Duration::hours(1)).is_err());
        assert!(mk(vec!["ok"], "ci", now, now - Duration::hours(1)).is_err());
        assert!(mk(vec!["ok"], "ci", now, now + Duration::hours(1)).is_ok());
    }
}
