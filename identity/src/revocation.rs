//! Revocation statements: an admin's signed word that an identity is dead.
//!
//! A compact JWS (`typ` `custody-revocation+jwt`) over
//! `{"type":"CustodyRevocation","issuer":<admin>,"subject":<revoked>,"reason":…,"effective_at":<RFC 3339>}`.
//! As with delegations, the signer must be the issuer.

use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::delegation::format_time;
use crate::jws::{sign_compact, verify_compact};
use crate::{Did, IdentityError, KeyPair};

pub const REVOCATION_TYP: &str = "custody-revocation+jwt";
pub const REVOCATION_TYPE: &str = "CustodyRevocation";
/// A reason is a sentence, not a document.
pub const MAX_REASON_CHARS: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revocation {
    pub issuer: Did,
    pub subject: Did,
    pub reason: String,
    pub effective_at: OffsetDateTime,
}

fn bad(why: impl Into<String>) -> IdentityError {
    IdentityError::InvalidCredential(why.into())
}

impl Revocation {
    pub fn new(
        issuer: Did,
        subject: Did,
        reason: String,
        effective_at: OffsetDateTime,
    ) -> Result<Self, IdentityError> {
        let r = Self {
            issuer,
            subject,
            reason,
            effective_at: OffsetDateTime::parse(&format_time(effective_at), &Rfc3339)
                .map_err(|e| bad(e.to_string()))?,
        };
        r.validate()?;
        Ok(r)
    }

    fn validate(&self) -> Result<(), IdentityError> {
        if self.reason.chars().count() > MAX_REASON_CHARS {
            return Err(bad(format!(
                "reason longer than {MAX_REASON_CHARS} characters"
            )));
        }
        if self.reason.chars().any(char::is_control) {
            return Err(bad("reason contains control characters"));
        }
        Ok(())
    }

    pub fn issue(&self, issuer_key: &KeyPair) -> Result<String, IdentityError> {
        if issuer_key.did() != self.issuer {
            return Err(bad("the signing key is not the revocation's issuer"));
        }
        self.validate()?;
        sign_compact(
            issuer_key,
            REVOCATION_TYP,
            &json!({
                "type": REVOCATION_TYPE,
                "issuer": self.issuer.as_str(),
                "subject": self.subject.as_str(),
                "reason": self.reason,
                "effective_at": format_time(self.effective_at),
            }),
        )
    }

    pub fn verify(jws: &str) -> Result<Self, IdentityError> {
        let v = verify_compact(jws, REVOCATION_TYP)?;
        let p = v
            .payload
            .as_object()
            .ok_or_else(|| bad("payload is not an object"))?;
        let s = |k: &str| -> Result<&str, IdentityError> {
            p.get(k)
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("{k} must be a string")))
        };
        if s("type")? != REVOCATION_TYPE {
            return Err(bad("type must be CustodyRevocation"));
        }
        let issuer = Did::parse(s("issuer")?)?;
        if issuer != v.signer {
            return Err(bad(format!(
                "signed by {} but claims issuer {}",
                v.signer, issuer
            )));
        }
        let r = Self {
            issuer,
            subject: Did::parse(s("subject")?)?,
            reason: s("reason")?.to_string(),
            effective_at: crate::delegation::parse_rfc3339_utc(s("effective_at")?).ok_or_else(
                || bad("effective_at must be YYYY-MM-DDTHH:MM:SSZ (UTC, whole seconds)"),
            )?,
        };
        r.validate()?;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_verify_and_binding() {
        let (admin, agent) = (KeyPair::generate(), KeyPair::generate());
        let r = Revocation::new(
            admin.did(),
            agent.did(),
            "compromised".into(),
            OffsetDateTime::now_utc(),
        )
        .unwrap();
        let jws = r.issue(&admin).unwrap();
        assert_eq!(Revocation::verify(&jws).unwrap(), r);
        assert!(r.issue(&agent).is_err());
        assert!(Revocation::new(
            admin.did(),
            agent.did(),
            "a\nb".into(),
            OffsetDateTime::now_utc()
        )
        .is_err());
    }
}
