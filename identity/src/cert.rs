//! Session certificates: short-lived X.509 certificates whose subject key is the
//! agent session's own Ed25519 key and whose SAN URI is the session DID, so a
//! session can authenticate with mTLS to internal services (SPIFFE-like).
//!
//! The CA key is an ordinary custody [`KeyPair`] (kept in a 0600 key file by the
//! broker); certificates are built with rcgen and signed through rcgen's
//! `SigningKey` trait by ed25519-dalek, so no second crypto library signs
//! anything. The broker never holds a session's secret key: the certificate is
//! issued for the public key the session DID names.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SignatureAlgorithm, SigningKey,
    PKCS_ED25519,
};
use time::OffsetDateTime;

use crate::{Did, IdentityError, KeyPair, PublicKey};

/// Certificates start this much in the past, so a peer whose clock is a little
/// behind still accepts a fresh one.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60);
/// Session certificates live at most this long.
pub const MAX_SESSION_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// The CA certificate's lifetime.
pub const CA_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

fn err(e: impl std::fmt::Display) -> IdentityError {
    IdentityError::Certificate(e.to_string())
}

/// A custody key as an rcgen signer.
struct DalekSigner<'a> {
    key: &'a KeyPair,
    public: [u8; 32],
}

impl PublicKeyData for DalekSigner<'_> {
    fn der_bytes(&self) -> &[u8] {
        &self.public
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ED25519
    }
}

impl SigningKey for DalekSigner<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        Ok(self.key.sign(msg).0.to_vec())
    }
}

/// A public key only (the session's), for the certificate's subject.
struct SubjectKey([u8; 32]);

impl PublicKeyData for SubjectKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ED25519
    }
}

fn random_serial() -> SerialNumber {
    let mut b = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    b[0] &= 0x7f; // positive
    SerialNumber::from_slice(&b)
}

/// The broker's certificate authority.
pub struct SessionCa {
    key: KeyPair,
    params: CertificateParams,
    cert_pem: String,
}

impl SessionCa {
    fn ca_params(
        common_name: &str,
        not_before: OffsetDateTime,
    ) -> Result<CertificateParams, IdentityError> {
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "custody");
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.not_before = not_before;
        p.not_after = not_before + CA_VALIDITY;
        Ok(p)
    }

    /// A new CA with `key` as its signing key (store the key; the certificate
    /// can be re-created from it with [`from_key`](Self::from_key)).
    pub fn generate(key: KeyPair, common_name: &str) -> Result<Self, IdentityError> {
        let now = OffsetDateTime::now_utc() - CLOCK_SKEW_ALLOWANCE;
        let mut params = Self::ca_params(common_name, now)?;
        params.serial_number = Some(random_serial());
        let signer = DalekSigner {
            key: &key,
            public: key.public().to_bytes(),
        };
        let cert = params.self_signed(&signer).map_err(err)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key,
            params,
        })
    }

    /// Re-creates the CA from its key and the PEM it issued earlier.
    pub fn from_key(
        key: KeyPair,
        common_name: &str,
        cert_pem: String,
    ) -> Result<Self, IdentityError> {
        let params = Self::ca_params(common_name, OffsetDateTime::now_utc())?;
        Ok(Self {
            key,
            params,
            cert_pem,
        })
    }

    pub fn ca_cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn did(&self) -> Did {
        self.key.did()
    }

    fn issue(
        &self,
        params: CertificateParams,
        subject: &PublicKey,
    ) -> Result<String, IdentityError> {
        let signer = DalekSigner {
            key: &self.key,
            public: self.key.public().to_bytes(),
        };
        let issuer = Issuer::from_params(&self.params, signer);
        let cert = params
            .signed_by(&SubjectKey(subject.to_bytes()), &issuer)
            .map_err(err)?;
        Ok(cert.pem())
    }

    /// A client certificate for the session `session`, valid for `ttl`.
    pub fn issue_session_cert(
        &self,
        session: &Did,
        ttl: Duration,
    ) -> Result<String, IdentityError> {
        if ttl.is_zero() || ttl > MAX_SESSION_CERT_TTL {
            return Err(err("session certificate TTL must be between 1s and 24h"));
        }
        let now = OffsetDateTime::now_utc();
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, session.multibase());
        p.distinguished_name = dn;
        p.subject_alt_names = vec![SanType::URI(session.as_str().try_into().map_err(err)?)];
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.not_before = now - CLOCK_SKEW_ALLOWANCE;
        p.not_after = now + ttl;
        p.serial_number = Some(random_serial());
        p.use_authority_key_identifier_extension = true;
        self.issue(p, &session.public_key())
    }

    /// A server certificate for the broker's HTTPS listener, for `hostnames`
    /// (DNS names or IP addresses), for the listener key `key`. Returns the PEM.
    pub fn issue_server_cert(
        &self,
        hostnames: &[String],
        key: &KeyPair,
    ) -> Result<String, IdentityError> {
        let now = OffsetDateTime::now_utc();
        let mut p = CertificateParams::new(hostnames.to_vec()).map_err(err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "custody broker");
        p.distinguished_name = dn;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.not_before = now - CLOCK_SKEW_ALLOWANCE;
        p.not_after = now + Duration::from_secs(30 * 24 * 3600);
        p.serial_number = Some(random_serial());
        p.use_authority_key_identifier_extension = true;
        self.issue(p, &key.public())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    fn der(pem: &str) -> Vec<u8> {
        ::pem::parse(pem).unwrap().into_contents()
    }

    #[test]
    fn session_cert_binds_the_did() {
        let ca = SessionCa::generate(KeyPair::generate(), "custody test CA").unwrap();
        let session = KeyPair::generate();
        let pem = ca
            .issue_session_cert(&session.did(), Duration::from_secs(900))
            .unwrap();
        let cert_der = der(&pem);
        let (_, cert) = X509Certificate::from_der(&cert_der).unwrap();
        // SAN URI is the DID.
        let san = cert.subject_alternative_name().unwrap().unwrap();
        let uris: Vec<_> = san
            .value
            .general_names
            .iter()
            .filter_map(|g| match g {
                GeneralName::URI(u) => Some(u.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(uris, vec![session.did().to_string()]);
        // The subject key is the session's own key.
        assert_eq!(
            cert.public_key().subject_public_key.data.as_ref(),
            session.public().to_bytes()
        );
        // Short-lived.
        let life = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert_eq!(life, 900 + 60);
        assert!(!cert.is_ca());
        // Issued by the CA, and its signature verifies with the CA key.
        let ca_der = der(ca.ca_cert_pem());
        let (_, ca_cert) = X509Certificate::from_der(&ca_der).unwrap();
        assert_eq!(cert.issuer(), ca_cert.subject());
        let sig = crate::Signature::from_slice(cert.signature_value.data.as_ref()).unwrap();
        ca.did()
            .public_key()
            .verify(cert.tbs_certificate.as_ref(), &sig)
            .unwrap();
        assert!(ca
            .issue_session_cert(&session.did(), Duration::from_secs(48 * 3600))
            .is_err());
    }
}
