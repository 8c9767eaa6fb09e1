//! Authentication: EdDSA JWTs, from two kinds of signer.
//!
//! - **Issuer tokens** — operators, the aggregator, and (at the aggregator) clients — name
//!   their issuer key in the header's `kid`, so issuer keys can rotate: a service trusts several
//!   at once and drops the old one when its tokens have expired. Services hold only public
//!   keys; the private key stays with the issuer (`cryptflow token mint`, or an identity
//!   provider).
//! - **Roster tokens** — at the key managers, a roster member signs its own short-lived token
//!   with its roster key (`kid = roster:<id>`, at most ten minutes from `iat` to `exp`). The key
//!   managers accept clients and readers *only* this way: whoever runs the issuer (possibly the
//!   aggregator's operator) can mint a client token, but not a roster member's signature, so
//!   the aggregator can never obtain a release.
//!
//! Tokens carry `sub`, `role`, `aud`, `exp`, `iat` (and optionally `nbf`, which is enforced).
//! Every failure is a 401 with a reason; roles are checked separately (403).

use crate::http::AppError;
use crate::ids::ClientId;
use crate::problem::ErrorCode;
pub use crate::protocol::Claims;
use crate::protocol::Roster;
use crate::role::Role;
use axum::extract::{FromRef, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// Clock-skew leeway when checking `exp` and `nbf`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// Longest lifetime (`exp − iat`) of a roster token.
pub const MAX_ROSTER_TOKEN_SECS: u64 = 600;

/// How a caller proved who it is.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Signer {
    /// A token from a trusted issuer.
    Issuer,
    /// A token signed with the caller's own roster key.
    Roster,
}

/// A verified caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The token's subject.
    pub subject: ClientId,
    /// The token's role.
    pub role: Role,
    /// Who signed the token.
    pub signer: Signer,
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
    /// `nbf` is in the future (beyond the leeway).
    #[error("token not yet valid (nbf is in the future)")]
    NotYetValid,
    /// A roster token's `iat` is in the future (beyond the leeway): minted by a clock ahead.
    #[error("roster token issued in the future")]
    IssuedInTheFuture,
    /// `aud` is not this service.
    #[error("token is for another audience")]
    WrongAudience,
    /// A client or reader token from the issuer, where only roster keys are accepted.
    #[error("clients and readers authenticate here with their roster key, not an issuer token")]
    RosterKeyRequired,
    /// A roster token for another member than its key's, another role than the member's, or
    /// with too long a lifetime.
    #[error("roster token refused: {0}")]
    Roster(&'static str),
    /// The issuer key is configured for other roles only.
    #[error("the signing key may not issue tokens with this role")]
    RoleNotAllowed,
}

impl AuthError {
    /// Refused for its time claims: the caller's clock may differ from this service's.
    pub fn is_about_time(&self) -> bool {
        matches!(self, AuthError::Expired | AuthError::NotYetValid | AuthError::IssuedInTheFuture)
    }
}

impl From<AuthError> for AppError {
    /// A 401 naming `authorization`; a refusal for time claims states this service's clock
    /// (`server_time`, and in the detail), so a client with another clock can say by how much
    /// they differ and mint against it.
    fn from(e: AuthError) -> Self {
        if e.is_about_time() {
            let now = now_secs();
            return AppError::new(
                ErrorCode::Unauthorized,
                format!(
                    "{e} (this service's clock reads {now} s since the Unix epoch; tokens are \
                     checked with {} s of leeway)",
                    DEFAULT_LEEWAY.as_secs()
                ),
            )
            .with_field("authorization")
            .with_server_time(now);
        }
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
}

/// One trusted token-signing key, as configured.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtKey {
    /// The `kid` tokens name.
    pub kid: String,
    /// Path of the Ed25519 public key (SPKI PEM).
    pub public_key_file: std::path::PathBuf,
    /// The roles this key may sign for (default: any). A key manager that trusts another
    /// organisation's issuer for its aggregator token lists `roles = ["aggregator"]`, so that
    /// issuer cannot mint an admin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<Role>>,
}

/// A verifier for `audience` trusting the configured issuer keys (read from their files).
pub fn verifier_from_files(audience: &str, keys: &[JwtKey]) -> Result<Verifier, KeyError> {
    let mut pems = Vec::new();
    for k in keys {
        let pem = std::fs::read(&k.public_key_file).map_err(|e| KeyError::InvalidPem {
            kid: k.kid.clone(),
            reason: format!("{}: {e}", k.public_key_file.display()),
        })?;
        pems.push((k.kid.clone(), pem));
    }
    let mut v = Verifier::new(
        audience,
        DEFAULT_LEEWAY,
        pems.iter().map(|(k, p)| (k.as_str(), p.as_slice())),
    )?;
    for k in keys {
        if let Some(roles) = &k.roles {
            v = v.restrict_roles(&k.kid, roles);
        }
    }
    Ok(v)
}

/// A roster member's verification key.
#[derive(Clone)]
struct RosterKey {
    id: ClientId,
    key: DecodingKey,
    reader: bool,
}

/// Verifies tokens for one audience against issuer keys by `kid`, and — at the key managers —
/// roster members' own keys.
#[derive(Clone)]
pub struct Verifier {
    keys: HashMap<String, DecodingKey>,
    /// Issuer keys limited to some roles.
    roles: HashMap<String, Vec<Role>>,
    roster: Option<HashMap<String, RosterKey>>,
    /// Roster tokens' validation: this node's own audience.
    roster_validation: Option<Validation>,
    validation: Validation,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kids: Vec<&String> = self.keys.keys().collect();
        kids.sort();
        f.debug_struct("Verifier")
            .field("kids", &kids)
            .field("roster_members", &self.roster.as_ref().map(HashMap::len))
            .finish_non_exhaustive()
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
        validation.validate_nbf = true;
        validation.leeway = leeway.as_secs();
        Ok(Self {
            keys: map,
            roles: HashMap::new(),
            roster: None,
            roster_validation: None,
            validation,
        })
    }

    /// Accepts tokens signed with issuer key `kid` only for `roles`.
    pub fn restrict_roles(mut self, kid: &str, roles: &[Role]) -> Self {
        self.roles.insert(kid.to_owned(), roles.to_vec());
        self
    }

    /// Also accepts roster members' own tokens addressed to `audience` (this node's
    /// [`node_audience`](crate::protocol::node_audience)) — and, from then on, clients and
    /// readers *only* that way.
    pub fn with_roster(mut self, roster: &Roster, audience: &str) -> Self {
        let mut v = self.validation.clone();
        v.set_audience(&[audience]);
        self.roster_validation = Some(v);
        let map = roster
            .members()
            .iter()
            .map(|m| {
                let key = RosterKey {
                    id: m.id.clone(),
                    key: DecodingKey::from_ed_der(&m.public_key.0),
                    reader: m.reader,
                };
                (crate::protocol::roster_kid(&m.id), key)
            })
            .collect();
        self.roster = Some(map);
        self
    }

    /// Verifies a compact JWT and returns the caller.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        if header.alg != Algorithm::EdDSA {
            return Err(AuthError::BadSignature);
        }
        let kid = header.kid.as_deref().ok_or(AuthError::UnknownKey)?;
        if let (Some(member), Some(validation)) =
            (self.roster.as_ref().and_then(|r| r.get(kid)), self.roster_validation.as_ref())
        {
            let claims = decode(token, &member.key, validation)?;
            if claims.sub != member.id.as_str() {
                return Err(AuthError::Roster("the subject is not the key's member"));
            }
            match claims.role {
                Role::Client => {}
                Role::Reader if member.reader => {}
                _ => return Err(AuthError::Roster("a roster key speaks for a client or a reader")),
            }
            if claims.exp.saturating_sub(claims.iat) > MAX_ROSTER_TOKEN_SECS {
                return Err(AuthError::Roster("lifetime longer than ten minutes"));
            }
            // Minted now, not in the future: `iat` bounds `exp` only if `iat` is honest.
            if claims.iat > now_secs().saturating_add(validation.leeway) {
                return Err(AuthError::IssuedInTheFuture);
            }
            return Ok(Principal {
                subject: member.id.clone(),
                role: claims.role,
                signer: Signer::Roster,
            });
        }
        let key = self.keys.get(kid).ok_or(AuthError::UnknownKey)?;
        let claims = self.decode(token, key)?;
        if self.roles.get(kid).is_some_and(|allowed| !allowed.contains(&claims.role)) {
            return Err(AuthError::RoleNotAllowed);
        }
        if self.roster.is_some() && matches!(claims.role, Role::Client | Role::Reader) {
            return Err(AuthError::RosterKeyRequired);
        }
        let subject =
            ClientId::parse(claims.sub).map_err(|e| AuthError::Malformed(format!("sub: {e}")))?;
        Ok(Principal { subject, role: claims.role, signer: Signer::Issuer })
    }

    fn decode(&self, token: &str, key: &DecodingKey) -> Result<Claims, AuthError> {
        decode(token, key, &self.validation)
    }
}

fn decode(token: &str, key: &DecodingKey, validation: &Validation) -> Result<Claims, AuthError> {
    jsonwebtoken::decode::<Claims>(token, key, validation).map(|d| d.claims).map_err(|e| {
        match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidAudience => AuthError::WrongAudience,
            ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => AuthError::BadSignature,
            _ => AuthError::Malformed(e.to_string()),
        }
    })
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{roster_member, SiteKey};
    use std::time::{SystemTime, UNIX_EPOCH};

    fn now() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
    }

    fn claims(role: Role, aud: &str, exp: u64) -> Claims {
        Claims { sub: "hospital-1".into(), role, aud: aud.into(), exp, iat: now(), nbf: None }
    }

    fn verifier(aud: &str, kid: &str, key: &SiteKey) -> Verifier {
        let pem = key.public_pem().unwrap();
        Verifier::new(aud, DEFAULT_LEEWAY, [(kid, pem.as_bytes())]).unwrap()
    }

    #[test]
    fn every_refusal_has_its_reason() {
        let k1 = SiteKey::generate();
        let v = verifier("aggregator", "k1", &k1);
        let ok = k1.mint("k1", &claims(Role::Client, "aggregator", now() + 60));
        let p = v.verify(&ok).unwrap();
        assert_eq!(
            (p.subject.as_str(), p.role, p.signer),
            ("hospital-1", Role::Client, Signer::Issuer)
        );

        let expired = k1.mint("k1", &claims(Role::Client, "aggregator", now() - 120));
        assert_eq!(v.verify(&expired).unwrap_err(), AuthError::Expired);
        let just_expired = k1.mint("k1", &claims(Role::Client, "aggregator", now() - 5));
        assert!(v.verify(&just_expired).is_ok(), "within the leeway");
        // nbf in the future is refused (it used to be accepted).
        let early =
            Claims { nbf: Some(now() + 3600), ..claims(Role::Client, "aggregator", now() + 7200) };
        assert_eq!(v.verify(&k1.mint("k1", &early)).unwrap_err(), AuthError::NotYetValid);

        let other_aud = k1.mint("k1", &claims(Role::Client, "kms", now() + 60));
        assert_eq!(v.verify(&other_aud).unwrap_err(), AuthError::WrongAudience);
        let forged =
            SiteKey::generate().mint("k1", &claims(Role::Client, "aggregator", now() + 60));
        assert_eq!(v.verify(&forged).unwrap_err(), AuthError::BadSignature);
        let unknown = k1.mint("k9", &claims(Role::Client, "aggregator", now() + 60));
        assert_eq!(v.verify(&unknown).unwrap_err(), AuthError::UnknownKey);
        assert!(matches!(v.verify("not.a.jwt"), Err(AuthError::Malformed(_))));
        assert!(matches!(v.verify(""), Err(AuthError::Malformed(_))));
        // alg=none is refused outright.
        let none = "eyJhbGciOiJub25lIiwia2lkIjoiazEifQ.eyJzdWIiOiJ4In0.";
        assert!(v.verify(none).is_err());
        let weird =
            Claims { sub: "../admin".into(), ..claims(Role::Admin, "aggregator", now() + 60) };
        assert!(matches!(v.verify(&k1.mint("k1", &weird)), Err(AuthError::Malformed(_))));
    }

    #[test]
    fn at_the_key_managers_clients_authenticate_by_roster_key_only() {
        let issuer = SiteKey::generate();
        let site = SiteKey::generate();
        let reader = SiteKey::generate();
        let a = ClientId::parse("site-a").unwrap();
        let r = ClientId::parse("server-app").unwrap();
        let roster = Roster::try_new(
            2,
            vec![roster_member(&a, &site, false), roster_member(&r, &reader, true)],
        )
        .unwrap();
        const NODE_1: &str = "cryptflow-kms:1:node-one";
        let v = verifier("kms", "issuer", &issuer).with_roster(&roster, NODE_1);
        let p = v.verify(&site.roster_token(&a, Role::Client, NODE_1)).unwrap();
        assert_eq!((p.subject, p.role, p.signer), (a.clone(), Role::Client, Signer::Roster));
        assert_eq!(
            v.verify(&reader.roster_token(&r, Role::Reader, NODE_1)).unwrap().role,
            Role::Reader
        );
        // A non-reader cannot claim to be a reader; a key speaks only for its member.
        assert!(matches!(
            v.verify(&site.roster_token(&a, Role::Reader, NODE_1)),
            Err(AuthError::Roster(_))
        ));
        let stolen_kid = site.mint(
            &crate::protocol::roster_kid(&r),
            &Claims {
                sub: r.to_string(),
                role: Role::Reader,
                aud: NODE_1.into(),
                exp: now() + 60,
                iat: now(),
                nbf: None,
            },
        );
        assert_eq!(v.verify(&stolen_kid).unwrap_err(), AuthError::BadSignature);
        // The issuer can mint a client token, but the key managers refuse it: the aggregator's
        // operator, who may run the issuer, cannot pose as a client.
        let posing = issuer.mint(
            "issuer",
            &Claims { sub: "site-a".into(), ..claims(Role::Client, "kms", now() + 60) },
        );
        assert_eq!(v.verify(&posing).unwrap_err(), AuthError::RosterKeyRequired);
        // Admin and aggregator tokens still come from the issuer.
        let agg = issuer.mint(
            "issuer",
            &Claims { sub: "aggregator".into(), ..claims(Role::Aggregator, "kms", now() + 60) },
        );
        assert_eq!(v.verify(&agg).unwrap().role, Role::Aggregator);
        // A long-lived roster token is refused.
        let long = site.mint(
            &crate::protocol::roster_kid(&a),
            &Claims {
                sub: a.to_string(),
                role: Role::Client,
                aud: NODE_1.into(),
                exp: now() + 86_400,
                iat: now(),
                nbf: None,
            },
        );
        assert!(matches!(v.verify(&long), Err(AuthError::Roster(_))));
        // A token minted for another node is refused here (no replay across the committee),
        // and so is one "issued" in the future to stretch its lifetime.
        let elsewhere = site.roster_token(&a, Role::Client, "cryptflow-kms:2:node-two");
        assert_eq!(v.verify(&elsewhere).unwrap_err(), AuthError::WrongAudience);
        let future = site.mint(
            &crate::protocol::roster_kid(&a),
            &Claims {
                sub: a.to_string(),
                role: Role::Client,
                aud: NODE_1.into(),
                exp: now() + 86_400 * 365 + 300,
                iat: now() + 86_400 * 365,
                nbf: None,
            },
        );
        assert_eq!(v.verify(&future).unwrap_err(), AuthError::IssuedInTheFuture);
    }

    #[test]
    fn rotation_accepts_both_keys_until_the_old_one_is_dropped() {
        let old = SiteKey::generate();
        let new = SiteKey::generate();
        let (po, pn) = (old.public_pem().unwrap(), new.public_pem().unwrap());
        let both = Verifier::new(
            "aggregator",
            DEFAULT_LEEWAY,
            [("old", po.as_bytes()), ("new", pn.as_bytes())],
        )
        .unwrap();
        let c = Claims { sub: "ops".into(), ..claims(Role::Admin, "aggregator", now() + 60) };
        let (t_old, t_new) = (old.mint("old", &c), new.mint("new", &c));
        assert!(both.verify(&t_old).is_ok() && both.verify(&t_new).is_ok());
        let only_new =
            Verifier::new("aggregator", DEFAULT_LEEWAY, [("new", pn.as_bytes())]).unwrap();
        assert_eq!(only_new.verify(&t_old).unwrap_err(), AuthError::UnknownKey);
    }

    #[test]
    fn an_issuer_key_limited_to_a_role_mints_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let (ours, theirs) = (SiteKey::generate(), SiteKey::generate());
        let write = |name: &str, key: &SiteKey| {
            let p = dir.path().join(name);
            std::fs::write(&p, key.public_pem().unwrap()).unwrap();
            p
        };
        let keys = vec![
            JwtKey { kid: "ours".into(), public_key_file: write("ours.pub", &ours), roles: None },
            JwtKey {
                kid: "theirs".into(),
                public_key_file: write("theirs.pub", &theirs),
                roles: Some(vec![Role::Aggregator]),
            },
        ];
        let v = verifier_from_files("kms", &keys).unwrap();
        let c = |role| Claims { sub: "x".into(), ..claims(role, "kms", now() + 60) };
        assert!(v.verify(&theirs.mint("theirs", &c(Role::Aggregator))).is_ok());
        assert_eq!(
            v.verify(&theirs.mint("theirs", &c(Role::Admin))).unwrap_err(),
            AuthError::RoleNotAllowed
        );
        assert!(v.verify(&ours.mint("ours", &c(Role::Admin))).is_ok());
        let toml = "kid = \"theirs\"\npublic_key_file = \"t.pub\"\nroles = [\"aggregator\"]\n";
        let parsed: JwtKey = toml::from_str(toml).unwrap();
        assert_eq!(parsed.roles, Some(vec![Role::Aggregator]));
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
    }

    #[test]
    fn roles_are_enforced_with_403() {
        let p = Principal {
            subject: ClientId::parse("c").unwrap(),
            role: Role::Client,
            signer: Signer::Issuer,
        };
        assert!(p.require(&[Role::Client, Role::Admin]).is_ok());
        assert_eq!(p.require(&[Role::Admin]).unwrap_err().problem().status, 403);
    }
}
