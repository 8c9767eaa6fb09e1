//! Authentication: EdDSA JWTs.
//!
//! Tokens carry `sub`, `role`, `aud`, `exp` (and `iat`), and name their signing key in the
//! header's `kid`, so issuer keys can rotate: a service holds several verification keys at
//! once and drops the old one when its tokens have expired. Services hold only public keys;
//! the private key stays with the issuer (the `cryptflow token mint` CLI, or an identity
//! provider). Every failure is a 401 with a reason; roles are checked separately (403).

use crate::http::AppError;
use crate::ids::ClientId;
use crate::problem::ErrorCode;
use crate::role::Role;
use axum::extract::{FromRef, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thiserror::Error;
use zeroize::Zeroizing;

/// Clock-skew leeway when checking `exp` (and `nbf`).
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// The claims CryptFlow reads and writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Subject: the client id for clients, an operator or service name otherwise.
    pub sub: String,
    /// Role.
    pub role: Role,
    /// Audience: the service the token is for (`kms` or `aggregator`).
    pub aud: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
}

/// A verified caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The token's subject.
    pub subject: ClientId,
    /// The token's role.
    pub role: Role,
}

impl Principal {
    /// 403 unless the caller has one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), AppError> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            let allowed: Vec<String> = roles.iter().map(Role::to_string).collect();
            Err(AppError::new(
                ErrorCode::Forbidden,
                format!("role `{}` may not do this; allowed: {}", self.role, allowed.join(", ")),
            ))
        }
    }
}

/// Why a token was refused (all map to 401).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthError {
    /// No `Authorization: Bearer …` header.
    #[error("missing bearer token")]
    Missing,
    /// Not a well-formed JWT, or claims of the wrong shape.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The `kid` names no key this service trusts (or is absent).
    #[error("token signed with an unknown key")]
    UnknownKey,
    /// The signature does not verify, or the algorithm is not EdDSA.
    #[error("invalid signature")]
    BadSignature,
    /// `exp` is in the past (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `aud` is not this service.
    #[error("token is for another audience")]
    WrongAudience,
}

impl From<AuthError> for AppError {
    fn from(e: AuthError) -> Self {
        AppError::new(ErrorCode::Unauthorized, e.to_string()).with_field("authorization")
    }
}

/// Errors setting up keys (configuration, not requests).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The PEM is not an Ed25519 key.
    #[error("key `{kid}` is not a valid Ed25519 PEM: {reason}")]
    InvalidPem {
        /// Key id.
        kid: String,
        /// Parser message.
        reason: String,
    },
    /// No verification key configured.
    #[error("at least one verification key is required")]
    NoKeys,
    /// Could not sign.
    #[error("signing failed: {0}")]
    Signing(String),
}

/// One trusted token-signing key, as configured.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtKey {
    /// The `kid` tokens name.
    pub kid: String,
    /// Path of the Ed25519 public key (SPKI PEM).
    pub public_key_file: std::path::PathBuf,
}

/// A verifier for `audience` trusting the configured keys (read from their files).
pub fn verifier_from_files(audience: &str, keys: &[JwtKey]) -> Result<Verifier, KeyError> {
    let mut pems = Vec::new();
    for k in keys {
        let pem = std::fs::read(&k.public_key_file).map_err(|e| KeyError::InvalidPem {
            kid: k.kid.clone(),
            reason: format!("{}: {e}", k.public_key_file.display()),
        })?;
        pems.push((k.kid.clone(), pem));
    }
    Verifier::new(audience, DEFAULT_LEEWAY, pems.iter().map(|(k, p)| (k.as_str(), p.as_slice())))
}

/// Verifies tokens for one audience against a set of public keys by `kid`.
#[derive(Clone)]
pub struct Verifier {
    keys: HashMap<String, DecodingKey>,
    validation: Validation,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kids: Vec<&String> = self.keys.keys().collect();
        kids.sort();
        f.debug_struct("Verifier").field("kids", &kids).finish_non_exhaustive()
    }
}

impl Verifier {
    /// Trusts the given `(kid, Ed25519 public key PEM)` pairs for tokens addressed to
    /// `audience`.
    pub fn new<'a>(
        audience: &str,
        leeway: Duration,
        keys: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<Self, KeyError> {
        let mut map = HashMap::new();
        for (kid, pem) in keys {
            let key = DecodingKey::from_ed_pem(pem)
                .map_err(|e| KeyError::InvalidPem { kid: kid.to_owned(), reason: e.to_string() })?;
            map.insert(kid.to_owned(), key);
        }
        if map.is_empty() {
            return Err(KeyError::NoKeys);
        }
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "aud", "sub"]);
        validation.leeway = leeway.as_secs();
        Ok(Self { keys: map, validation })
    }

    /// Verifies a compact JWT and returns the caller.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        if header.alg != Algorithm::EdDSA {
            return Err(AuthError::BadSignature);
        }
        let key =
            header.kid.as_deref().and_then(|k| self.keys.get(k)).ok_or(AuthError::UnknownKey)?;
        let data =
            jsonwebtoken::decode::<Claims>(token, key, &self.validation).map_err(|e| {
                match e.kind() {
                    ErrorKind::ExpiredSignature => AuthError::Expired,
                    ErrorKind::InvalidAudience => AuthError::WrongAudience,
                    ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => {
                        AuthError::BadSignature
                    }
                    _ => AuthError::Malformed(e.to_string()),
                }
            })?;
        let subject = ClientId::parse(data.claims.sub)
            .map_err(|e| AuthError::Malformed(format!("sub: {e}")))?;
        Ok(Principal { subject, role: data.claims.role })
    }
}

/// The verified caller of a request, extracted from `Authorization: Bearer <jwt>` by any
/// handler whose state provides an `Arc<Verifier>`.
#[derive(Clone, Debug)]
pub struct Authenticated(pub Principal);

impl<S> FromRequestParts<S> for Authenticated
where
    S: Send + Sync,
    Arc<Verifier>: FromRef<S>,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        let verifier = Arc::<Verifier>::from_ref(state);
        let value = parts.headers.get(AUTHORIZATION).ok_or(AuthError::Missing)?;
        let value = value.to_str().map_err(|_| AuthError::Malformed("non-ASCII header".into()))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or(AuthError::Missing)?;
        Ok(Authenticated(verifier.verify(token.trim())?))
    }
}

/// Signs tokens (the CLI's `token mint`, and tests). Holds a private key: keep it off
/// servers.
pub struct Issuer {
    kid: String,
    key: EncodingKey,
}

impl fmt::Debug for Issuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issuer").field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl Issuer {
    /// An issuer signing with the Ed25519 private key in `pem` (PKCS#8), naming it `kid`.
    pub fn from_pem(kid: &str, pem: &[u8]) -> Result<Self, KeyError> {
        let key = EncodingKey::from_ed_pem(pem)
            .map_err(|e| KeyError::InvalidPem { kid: kid.to_owned(), reason: e.to_string() })?;
        Ok(Self { kid: kid.to_owned(), key })
    }

    /// Signs a token for `subject` with `role`, valid for `ttl`, addressed to `audience`.
    pub fn mint(
        &self,
        subject: &ClientId,
        role: Role,
        audience: &str,
        ttl: Duration,
    ) -> Result<String, KeyError> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        self.mint_claims(&Claims {
            sub: subject.to_string(),
            role,
            aud: audience.to_owned(),
            exp: now + ttl.as_secs(),
            iat: now,
        })
    }

    /// Signs arbitrary claims (tests use it for expired or mis-addressed tokens).
    pub fn mint_claims(&self, claims: &Claims) -> Result<String, KeyError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key)
            .map_err(|e| KeyError::Signing(e.to_string()))
    }
}

/// A fresh Ed25519 key pair as `(private PKCS#8 PEM, public SPKI PEM)`, from the OS RNG.
pub fn generate_ed25519_pem() -> Result<(Zeroizing<String>, String), KeyError> {
    use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
    use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
    use rand_core::RngCore;
    let mut seed = Zeroizing::new([0u8; 32]);
    rand_core::OsRng.fill_bytes(seed.as_mut());
    let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
    let private =
        signing.to_pkcs8_pem(LineEnding::LF).map_err(|e| KeyError::Signing(e.to_string()))?;
    let public = signing
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| KeyError::Signing(e.to_string()))?;
    Ok((Zeroizing::new(private.to_string()), public))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Keys {
        issuer: Issuer,
        public: String,
    }

    fn keys(kid: &str) -> Keys {
        let (private, public) = generate_ed25519_pem().unwrap();
        Keys { issuer: Issuer::from_pem(kid, private.as_bytes()).unwrap(), public }
    }

    fn now() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
    }

    fn claims(aud: &str, exp: u64) -> Claims {
        Claims { sub: "hospital-1".into(), role: Role::Client, aud: aud.into(), exp, iat: now() }
    }

    #[test]
    fn every_refusal_has_its_reason() {
        let k1 = keys("k1");
        let verifier =
            Verifier::new("kms", DEFAULT_LEEWAY, [("k1", k1.public.as_bytes())]).unwrap();
        let ok = k1
            .issuer
            .mint(
                &ClientId::parse("hospital-1").unwrap(),
                Role::Client,
                "kms",
                Duration::from_secs(60),
            )
            .unwrap();
        let p = verifier.verify(&ok).unwrap();
        assert_eq!((p.subject.as_str(), p.role), ("hospital-1", Role::Client));

        let expired = k1.issuer.mint_claims(&claims("kms", now() - 120)).unwrap();
        assert_eq!(verifier.verify(&expired).unwrap_err(), AuthError::Expired);
        // Within the leeway is still fine.
        let just_expired = k1.issuer.mint_claims(&claims("kms", now() - 5)).unwrap();
        assert!(verifier.verify(&just_expired).is_ok());

        let other_aud = k1.issuer.mint_claims(&claims("aggregator", now() + 60)).unwrap();
        assert_eq!(verifier.verify(&other_aud).unwrap_err(), AuthError::WrongAudience);

        // Forged: signed by a key claiming kid k1 that is not k1's.
        let forger = keys("k1");
        let forged = forger.issuer.mint_claims(&claims("kms", now() + 60)).unwrap();
        assert_eq!(verifier.verify(&forged).unwrap_err(), AuthError::BadSignature);

        let stranger = keys("k9");
        let unknown = stranger.issuer.mint_claims(&claims("kms", now() + 60)).unwrap();
        assert_eq!(verifier.verify(&unknown).unwrap_err(), AuthError::UnknownKey);

        assert!(matches!(verifier.verify("not.a.jwt"), Err(AuthError::Malformed(_))));
        assert!(matches!(verifier.verify(""), Err(AuthError::Malformed(_))));

        // alg=none and HS256 tokens are refused outright.
        let none = "eyJhbGciOiJub25lIiwia2lkIjoiazEifQ.eyJzdWIiOiJ4In0.";
        assert!(verifier.verify(none).is_err());
        let hs = jsonwebtoken::encode(
            &Header { kid: Some("k1".into()), ..Header::new(Algorithm::HS256) },
            &claims("kms", now() + 60),
            &EncodingKey::from_secret(k1.public.as_bytes()),
        )
        .unwrap();
        assert_eq!(verifier.verify(&hs).unwrap_err(), AuthError::BadSignature);

        // A subject outside the id charset is refused.
        let weird = Claims { sub: "../admin".into(), ..claims("kms", now() + 60) };
        let weird = k1.issuer.mint_claims(&weird).unwrap();
        assert!(matches!(verifier.verify(&weird), Err(AuthError::Malformed(_))));
    }

    #[test]
    fn rotation_accepts_both_keys_until_the_old_one_is_dropped() {
        let old = keys("2026-10");
        let new = keys("2026-11");
        let both = Verifier::new(
            "aggregator",
            DEFAULT_LEEWAY,
            [("2026-10", old.public.as_bytes()), ("2026-11", new.public.as_bytes())],
        )
        .unwrap();
        let id = ClientId::parse("ops").unwrap();
        let t_old =
            old.issuer.mint(&id, Role::Admin, "aggregator", Duration::from_secs(60)).unwrap();
        let t_new =
            new.issuer.mint(&id, Role::Admin, "aggregator", Duration::from_secs(60)).unwrap();
        assert!(both.verify(&t_old).is_ok() && both.verify(&t_new).is_ok());
        let only_new =
            Verifier::new("aggregator", DEFAULT_LEEWAY, [("2026-11", new.public.as_bytes())])
                .unwrap();
        assert_eq!(only_new.verify(&t_old).unwrap_err(), AuthError::UnknownKey);
        assert!(only_new.verify(&t_new).is_ok());
    }

    #[test]
    fn bad_key_material_is_a_configuration_error() {
        assert!(matches!(
            Verifier::new("kms", DEFAULT_LEEWAY, [("k", b"nope".as_slice())]),
            Err(KeyError::InvalidPem { .. })
        ));
        assert!(matches!(
            Verifier::new("kms", DEFAULT_LEEWAY, std::iter::empty()),
            Err(KeyError::NoKeys)
        ));
        let k = keys("k");
        assert!(!format!("{:?}", k.issuer).contains("PRIVATE"));
    }

    #[test]
    fn roles_are_enforced_with_403() {
        let p = Principal { subject: ClientId::parse("c").unwrap(), role: Role::Client };
        assert!(p.require(&[Role::Client, Role::Admin]).is_ok());
        let err = p.require(&[Role::Admin]).unwrap_err();
        assert_eq!(err.problem().status, 403);
    }
}
