//! Sealed deposits: a client's key share travels to a key manager encrypted to that node's
//! key **for this round** — RFC 9180 HPKE in base mode with one suite per protocol version,
//! [`SUITE`]: X-Wing (ML-KEM-768 + X25519, so a recording kept until large quantum computers
//! exist opens nothing either), HKDF-SHA256 and ChaCha20-Poly1305, from the `hpke` crate.
//!
//! At registration a node derives the round's key pair from the round's own data key (kept in
//! its round-key store outside the database, `cryptflow_kms::keystore`) and returns the public
//! key in its signed echo of the spec; clients check that signature against the committee file
//! they pinned before sealing to the key, which is never derived from the node's long-term
//! signing key. Shredding the round deletes the data key and with it the private key, so a
//! deposit archived by a relay, a proxy or a TLS terminator cannot be opened afterwards, even
//! with every long-term key of the node.
//!
//! The `info` string binds the label, the suite, the round, the spec hash, the committee's
//! digest, the node's share index and its round key; the associated data is the depositing
//! client's id. So a deposit sealed for node 1 does not open at node 2, nor in another round,
//! nor under another client's name; and since the plaintext carries the client's signature
//! over the deposit statement, a relay cannot substitute a ciphertext of its own making.
//!
//! The plaintext ([`Deposit::to_plaintext`]) is the share's bytes followed by the upload's
//! SHA-256 (32 bytes), its root (32) and the client's Ed25519 signature (64).

use crate::api::kms::{Deposit, SealedDeposit};
use crate::api::{Base64Bytes, SignatureHex};
use crate::ids::{ClientId, RoundId, Sha256Digest};
use crate::protocol::{Canon, ProtocolError};
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use zeroize::Zeroizing;

type Kem = hpke::kem::XWing;
type Kdf = hpke::kdf::HkdfSha256;
type Aead = hpke::aead::ChaCha20Poly1305;

/// The HPKE suite of protocol version 2's sealed deposits.
pub const SUITE: &str =
    "RFC 9180 base mode: X-Wing (ML-KEM-768 + X25519), HKDF-SHA256, ChaCha20-Poly1305";

/// Length of a node's deposit public key (an X-Wing encapsulation key).
pub const DEPOSIT_KEY_LEN: usize = 1216;

/// What a sealed deposit is bound to (HPKE's `info`): everything but the client, which is the
/// associated data.
#[derive(Clone, Copy, Debug)]
pub struct SealContext<'a> {
    /// The round.
    pub round: &'a RoundId,
    /// The spec hash the client checked (and the node signed).
    pub spec_hash: &'a Sha256Digest,
    /// The committee's digest.
    pub committee: &'a Sha256Digest,
    /// The node's share index.
    pub x: u8,
    /// The node's deposit key for the round, as its signed echo carries it.
    pub node_key: &'a [u8],
}

impl SealContext<'_> {
    fn info(&self) -> Vec<u8> {
        Canon::new("cryptflow sealed deposit v1")
            .bytes(SUITE.as_bytes())
            .bytes(self.round.as_str().as_bytes())
            .fixed(&self.spec_hash.0)
            .fixed(&self.committee.0)
            .fixed(&[self.x])
            .bytes(self.node_key)
            .0
    }
}

fn aad(client: &ClientId) -> Vec<u8> {
    Canon::new("cryptflow sealed deposit client").bytes(client.as_str().as_bytes()).0
}

/// A node's deposit key pair for one round. The private half is zeroized on drop (the `hpke`
/// crate's X-Wing key does so).
pub struct DepositKeyPair {
    private: <Kem as hpke::Kem>::PrivateKey,
    public: Vec<u8>,
}

impl std::fmt::Debug for DepositKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DepositKeyPair").field("public", &self.public.len()).finish_non_exhaustive()
    }
}

impl DepositKeyPair {
    /// Derives the pair from secret input keying material (RFC 9180 `DeriveKeyPair`): a key
    /// manager passes a secret derived from the round's data key, so the pair lives and dies
    /// with it.
    pub fn derive(ikm: &[u8]) -> Self {
        let (private, public) = Kem::derive_keypair(ikm);
        Self { private, public: public.to_bytes().to_vec() }
    }

    /// The public key, for the node's signed echo.
    pub fn public_key(&self) -> &[u8] {
        &self.public
    }

    /// Opens a deposit sealed to this key in `ctx` by `client`, and parses it.
    pub fn open(
        &self,
        ctx: &SealContext<'_>,
        client: &ClientId,
        sealed: &SealedDeposit,
    ) -> Result<Deposit, ProtocolError> {
        let bad = || {
            ProtocolError::Sealed(
                "the deposit does not open with this node's key for this round (sealed for \
                 another node, round or client, or altered on the way)"
                    .into(),
            )
        };
        let encapped = <Kem as hpke::Kem>::EncappedKey::from_bytes(&sealed.encapped_key.0)
            .map_err(|_| bad())?;
        let plain = Zeroizing::new(
            hpke::single_shot_open::<Aead, Kdf, Kem>(
                &OpModeR::Base,
                &self.private,
                &encapped,
                &ctx.info(),
                &sealed.ciphertext.0,
                &aad(client),
            )
            .map_err(|_| bad())?,
        );
        Deposit::from_plaintext(&plain)
    }
}

/// Checks that a node's deposit key (from its echo) is an X-Wing public key.
pub fn check_deposit_key(key: &[u8]) -> Result<(), ProtocolError> {
    <Kem as hpke::Kem>::PublicKey::from_bytes(key).map(|_| ()).map_err(|_| {
        ProtocolError::Sealed(format!(
            "the deposit key is not an X-Wing public key ({} bytes; {DEPOSIT_KEY_LEN} expected)",
            key.len()
        ))
    })
}

/// Seals `deposit` by `client` to a node's deposit key in `ctx` (the key from the node's
/// verified echo).
pub fn seal(
    ctx: &SealContext<'_>,
    client: &ClientId,
    deposit: &Deposit,
) -> Result<SealedDeposit, ProtocolError> {
    let key = <Kem as hpke::Kem>::PublicKey::from_bytes(ctx.node_key).map_err(|_| {
        ProtocolError::Sealed(format!(
            "node {}'s deposit key is not an X-Wing public key ({} bytes; {DEPOSIT_KEY_LEN} expected)",
            ctx.x,
            ctx.node_key.len()
        ))
    })?;
    let plain = deposit.to_plaintext();
    let (encapped, ciphertext) = hpke::single_shot_seal::<Aead, Kdf, Kem>(
        &OpModeS::Base,
        &key,
        &ctx.info(),
        &plain,
        &aad(client),
    )
    .map_err(|e| ProtocolError::Sealed(format!("sealing failed: {e}")))?;
    Ok(SealedDeposit {
        encapped_key: Base64Bytes(encapped.to_bytes().to_vec()),
        ciphertext: Base64Bytes(ciphertext),
    })
}

impl Deposit {
    /// The plaintext a sealed deposit carries: share ‖ upload SHA-256 ‖ upload root ‖
    /// signature. Zeroized on drop.
    pub fn to_plaintext(&self) -> Zeroizing<Vec<u8>> {
        let mut v = Zeroizing::new(Vec::with_capacity(self.share.0.len() + 128));
        v.extend_from_slice(&self.share.0);
        v.extend_from_slice(&self.upload_sha256.0);
        v.extend_from_slice(&self.upload_root.0);
        v.extend_from_slice(&self.signature.0);
        v
    }

    /// Parses [`Self::to_plaintext`]'s bytes.
    pub fn from_plaintext(plain: &[u8]) -> Result<Self, ProtocolError> {
        let cut = plain.len().checked_sub(128).ok_or_else(|| {
            ProtocolError::Sealed("a sealed deposit's plaintext is shorter than 128 bytes".into())
        })?;
        let (share, tail) = plain.split_at(cut);
        let part = |r: std::ops::Range<usize>| {
            let mut a = [0u8; 32];
            a.copy_from_slice(&tail[r]);
            a
        };
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&tail[64..]);
        Ok(Self {
            upload_sha256: Sha256Digest(part(0..32)),
            upload_root: Sha256Digest(part(32..64)),
            share: Base64Bytes(share.to_vec()),
            signature: SignatureHex(signature),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_deposit_opens_only_for_its_node_round_and_client() {
        let round = RoundId::parse("r1").unwrap();
        let other_round = RoundId::parse("r2").unwrap();
        let (spec, committee) = (Sha256Digest([1; 32]), Sha256Digest([2; 32]));
        let node1 = DepositKeyPair::derive(&[7; 32]);
        let node2 = DepositKeyPair::derive(&[8; 32]);
        assert_eq!(node1.public_key().len(), DEPOSIT_KEY_LEN);
        assert_eq!(DepositKeyPair::derive(&[7; 32]).public_key(), node1.public_key());
        let ctx = |round, x, key| SealContext {
            round,
            spec_hash: &spec,
            committee: &committee,
            x,
            node_key: key,
        };
        let alice = ClientId::parse("alice").unwrap();
        let deposit = Deposit {
            upload_sha256: Sha256Digest([3; 32]),
            upload_root: Sha256Digest([4; 32]),
            share: Base64Bytes(vec![5; 16400]),
            signature: SignatureHex([6; 64]),
        };
        let sealed = seal(&ctx(&round, 1, node1.public_key()), &alice, &deposit).unwrap();
        assert_eq!(
            node1.open(&ctx(&round, 1, node1.public_key()), &alice, &sealed).unwrap(),
            deposit
        );
        // Another node (its own key, or node 1's key under node 2's index), another round,
        // another client, a changed byte: none opens.
        assert!(node2.open(&ctx(&round, 2, node2.public_key()), &alice, &sealed).is_err());
        assert!(node1.open(&ctx(&round, 2, node1.public_key()), &alice, &sealed).is_err());
        assert!(node1.open(&ctx(&other_round, 1, node1.public_key()), &alice, &sealed).is_err());
        let mallory = ClientId::parse("mallory").unwrap();
        assert!(node1.open(&ctx(&round, 1, node1.public_key()), &mallory, &sealed).is_err());
        let mut bent = sealed.clone();
        bent.ciphertext.0[100] ^= 1;
        assert!(node1.open(&ctx(&round, 1, node1.public_key()), &alice, &bent).is_err());
        // Fresh randomness each time: two seals of one deposit differ.
        let again = seal(&ctx(&round, 1, node1.public_key()), &alice, &deposit).unwrap();
        assert_ne!(again.ciphertext, sealed.ciphertext);
    }
}
