//! Round keys: generation, the public key `(A, B_1..B_L)` and the secret key `S_1..S_L`.
//!
//! `B_i = A·S_i + e_i` in `Z_{2^64}[X]/(X^N+1)`, `A` uniform, `S_i` binary, `e_i` TUniform.
//! With `L = 1` the public key is bit-for-bit TFHE-rs's `LweCompactPublicKey`, whose LWE
//! secret key is `rev(S_1)` (TFHE-rs's "semi-reverse" convention).
//!
//! Both keys keep the NTT transforms of their polynomials, computed once on construction.
//! The secret key also keeps `e_i·𝟙` (the negacyclic product with the all-ones polynomial):
//! since the encryption randomness `U` has mean ½, the noise `e_i·U` has mean `½·e_i·𝟙`, which
//! decryption subtracts so that noise grows as √K rather than K.

use crate::error::Error;
use crate::ntt::{NttPlan, NttPoly};
use crate::params::{BodiesPerMask, ParameterSet};
use crate::random::Csprng;
use sha2::{Digest, Sha256};
use std::fmt;
use std::sync::Arc;
use zeroize::Zeroize;

/// Identifies a key pair: the first 16 bytes of SHA-256 over the public key's parameters
/// and words. Ciphertexts carry it so that mixing keys is caught.
#[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 16]);

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl KeyId {
    pub(crate) fn of_public_key(
        params: &ParameterSet,
        bodies: BodiesPerMask,
        a: &[u64],
        b: &[u64],
    ) -> Self {
        let mut h = Sha256::new();
        h.update(b"cryptflow key id v1");
        h.update(params.id().0.to_le_bytes());
        h.update([bodies.get() as u8]);
        for w in a.iter().chain(b) {
            h.update(w.to_le_bytes());
        }
        let digest = h.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        Self(id)
    }
}

/// NTT plan and transforms shared by clones of a public key.
struct PublicTransforms {
    plan: NttPlan,
    a: NttPoly,
    b: Vec<NttPoly>,
}

/// The public key of a round: one mask polynomial `A` and `L` bodies `B_i`. Cheap to clone.
///
/// ```
/// use cryptflow_he::*;
/// let (sk, pk) = generate_keys(ParameterSet::default_128(), BodiesPerMask::try_new(3).unwrap())
///     .unwrap();
/// assert_eq!((pk.mask().len(), pk.body().len()), (2048, 3 * 2048));
/// assert_eq!((pk.id(), pk.bodies(), *pk.params()), (sk.id(), sk.bodies(), *sk.params()));
/// println!("round key {}", pk.id()); // 32 hex digits
/// ```
#[derive(Clone)]
pub struct PublicKey {
    params: ParameterSet,
    bodies: BodiesPerMask,
    id: KeyId,
    a: Arc<[u64]>,
    b: Arc<[u64]>,
    transforms: Arc<PublicTransforms>,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("params", &self.params.name())
            .field("bodies", &self.bodies.get())
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id && self.a == other.a && self.b == other.b
    }
}

impl PublicKey {
    /// Builds a key from its words; `a` has `N` words, `b` has `L·N`.
    pub(crate) fn from_parts(
        params: ParameterSet,
        bodies: BodiesPerMask,
        a: Vec<u64>,
        b: Vec<u64>,
    ) -> Result<Self, Error> {
        let n = params.ring_degree().get();
        if a.len() != n || b.len() != n * bodies.get() {
            return Err(Error::Internal("public key parts have the wrong length"));
        }
        let plan = NttPlan::try_new(n)?;
        let ntt_a = plan.forward(&a);
        let ntt_b = b.chunks_exact(n).map(|bi| plan.forward(bi)).collect();
        let id = KeyId::of_public_key(&params, bodies, &a, &b);
        Ok(Self {
            params,
            bodies,
            id,
            a: a.into(),
            b: b.into(),
            transforms: Arc::new(PublicTransforms { plan, a: ntt_a, b: ntt_b }),
        })
    }

    /// Parameter set.
    pub fn params(&self) -> &ParameterSet {
        &self.params
    }

    /// Bodies per mask `L`.
    pub fn bodies(&self) -> BodiesPerMask {
        self.bodies
    }

    /// The key id every ciphertext under this key carries.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The mask polynomial `A` (`N` words).
    pub fn mask(&self) -> &[u64] {
        &self.a
    }

    /// The body polynomials `B_1..B_L`, concatenated (`L·N` words).
    pub fn body(&self) -> &[u64] {
        &self.b
    }

    pub(crate) fn plan(&self) -> &NttPlan {
        &self.transforms.plan
    }

    pub(crate) fn ntt_mask(&self) -> &NttPoly {
        &self.transforms.a
    }

    pub(crate) fn ntt_body(&self, i: usize) -> &NttPoly {
        &self.transforms.b[i]
    }
}

/// The secret key of a round. Zeroized on drop; `Debug` shows only the key id.
///
/// Whoever holds it can decrypt **every** ciphertext of the round, including each client's
/// individual upload: the aggregator must never hold it.
///
/// ```
/// use cryptflow_he::*;
/// let (sk, _) = generate_keys(ParameterSet::default_128(), BodiesPerMask::try_new(1).unwrap())
///     .unwrap();
/// assert!(format!("{sk:?}").contains("redacted"));
/// let h = sk.hamming_weight(); // ≈ N/2 for a uniform binary secret
/// assert!(h > 800 && h < 1250);
/// let bytes = zeroize::Zeroizing::new(sk.to_bytes()); // wipe serialised copies too
/// assert_eq!(SecretKey::from_bytes(&bytes).unwrap().id(), sk.id());
/// ```
pub struct SecretKey {
    params: ParameterSet,
    bodies: BodiesPerMask,
    id: KeyId,
    /// `S_1..S_L`, each coefficient 0 or 1.
    s: Vec<u64>,
    /// `e_1..e_L` of the public key, as signed integers.
    noise: Vec<i32>,
    /// Derived: `e_i·𝟙` per coefficient (twice the per-unit-weight noise mean).
    twice_bias: Vec<i64>,
    /// Derived: transforms of `S_i`.
    ntt_s: Vec<NttPoly>,
    plan: Arc<NttPlan>,
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        self.s.zeroize();
        self.noise.zeroize();
        self.twice_bias.zeroize();
        self.ntt_s.zeroize();
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("id", &self.id)
            .field("material", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl SecretKey {
    /// Builds a key from `S` (0/1 words) and the public key's noise `e`.
    pub(crate) fn from_parts(
        params: ParameterSet,
        bodies: BodiesPerMask,
        id: KeyId,
        s: Vec<u64>,
        noise: Vec<i32>,
    ) -> Result<Self, Error> {
        let n = params.ring_degree().get();
        if s.len() != n * bodies.get() || noise.len() != s.len() {
            return Err(Error::Internal("secret key parts have the wrong length"));
        }
        let plan = NttPlan::try_new(n)?;
        let ntt_s = s.chunks_exact(n).map(|si| plan.forward_binary(si)).collect();
        let twice_bias = noise.chunks_exact(n).flat_map(times_all_ones).collect();
        Ok(Self { params, bodies, id, s, noise, twice_bias, ntt_s, plan: Arc::new(plan) })
    }

    /// Parameter set.
    pub fn params(&self) -> &ParameterSet {
        &self.params
    }

    /// Bodies per mask `L`.
    pub fn bodies(&self) -> BodiesPerMask {
        self.bodies
    }

    /// Id of the matching public key.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// Hamming weight of `S_1..S_L` together (enters the noise formula).
    pub fn hamming_weight(&self) -> usize {
        self.s.iter().filter(|&&x| x == 1).count()
    }

    pub(crate) fn secret_words(&self) -> &[u64] {
        &self.s
    }

    pub(crate) fn noise_words(&self) -> &[i32] {
        &self.noise
    }

    pub(crate) fn twice_bias(&self) -> &[i64] {
        &self.twice_bias
    }

    pub(crate) fn plan(&self) -> &NttPlan {
        &self.plan
    }

    pub(crate) fn ntt_secret(&self, i: usize) -> &NttPoly {
        &self.ntt_s[i]
    }
}

/// `(e·𝟙)[k] = Σ_{j≤k} e_j − Σ_{j>k} e_j`: negacyclic product with the all-ones polynomial.
fn times_all_ones(e: &[i32]) -> Vec<i64> {
    let total: i64 = e.iter().map(|&x| x as i64).sum();
    let mut prefix = 0i64;
    e.iter()
        .map(|&x| {
            prefix += x as i64;
            prefix - (total - prefix)
        })
        .collect()
}

/// Generates a key pair with tfhe's CSPRNG seeded by the OS.
///
/// ```
/// use cryptflow_he::{generate_keys, BodiesPerMask, ParameterSet};
/// let (secret, public) =
///     generate_keys(ParameterSet::default_128(), BodiesPerMask::try_new(8).unwrap()).unwrap();
/// assert_eq!(secret.id(), public.id());
/// assert_eq!(public.body().len(), 8 * 2048);
/// ```
pub fn generate_keys(
    params: ParameterSet,
    bodies: BodiesPerMask,
) -> Result<(SecretKey, PublicKey), Error> {
    generate_with(params, bodies, &mut Csprng::from_os()?)
}

/// Deterministic key generation from a seed, for tests and reproducible examples only.
/// **Insecure**: anyone who knows the seed knows the key.
#[cfg(any(test, feature = "insecure"))]
pub fn generate_keys_from_seed_insecure(
    params: ParameterSet,
    bodies: BodiesPerMask,
    seed: u128,
) -> Result<(SecretKey, PublicKey), Error> {
    generate_with(params, bodies, &mut Csprng::from_seed(seed))
}

fn generate_with(
    params: ParameterSet,
    bodies: BodiesPerMask,
    rng: &mut Csprng,
) -> Result<(SecretKey, PublicKey), Error> {
    let n = params.ring_degree().get();
    let l = bodies.get();
    let plan = NttPlan::try_new(n)?;
    let mut a = vec![0u64; n];
    rng.fill_uniform(&mut a);
    let mut s = vec![0u64; l * n];
    rng.fill_binary(&mut s);
    let mut e = vec![0u64; l * n];
    rng.fill_tuniform(&mut e, params.noise());
    let ntt_a = plan.forward(&a);
    let mut b = vec![0u64; l * n];
    let mut scratch = NttPoly::zeroed(n);
    for ((bi, si), ei) in b.chunks_exact_mut(n).zip(s.chunks_exact(n)).zip(e.chunks_exact(n)) {
        plan.mul(&ntt_a, &plan.forward_binary(si), &mut scratch, bi);
        for (x, &noise) in bi.iter_mut().zip(ei) {
            *x = x.wrapping_add(noise);
        }
    }
    scratch.zeroize();
    // TUniform(b ≤ 40) samples fit in i64; we keep i32 since b ≤ 30 for every vetted set.
    let noise: Vec<i32> = e.iter().map(|&x| x as i64 as i32).collect();
    e.zeroize();
    let public = PublicKey::from_parts(params, bodies, a, b)?;
    let secret = SecretKey::from_parts(params, bodies, public.id(), s, noise)?;
    Ok((secret, public))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ntt::naive_negacyclic;

    #[test]
    fn public_key_satisfies_b_equals_a_s_plus_e() {
        let params = ParameterSet::toy_insecure();
        let l = BodiesPerMask::try_new(3).unwrap();
        let (sk, pk) = generate_keys_from_seed_insecure(params, l, 42).unwrap();
        let n = params.ring_degree().get();
        for i in 0..3 {
            let si = &sk.secret_words()[i * n..(i + 1) * n];
            let ei = &sk.noise_words()[i * n..(i + 1) * n];
            let expected: Vec<u64> = naive_negacyclic(pk.mask(), si)
                .iter()
                .zip(ei)
                .map(|(x, &e)| x.wrapping_add(e as i64 as u64))
                .collect();
            assert_eq!(&pk.body()[i * n..(i + 1) * n], &expected[..]);
            assert!(ei.iter().all(|&e| e.abs() <= 1 << 17));
        }
    }

    #[test]
    fn all_ones_product_matches_schoolbook() {
        let e = [3i32, -1, 4, -1, 5, 9, -2, 6];
        let ones = vec![1u64; e.len()];
        let ew: Vec<u64> = e.iter().map(|&x| x as i64 as u64).collect();
        let naive: Vec<i64> = naive_negacyclic(&ew, &ones).iter().map(|&x| x as i64).collect();
        assert_eq!(times_all_ones(&e), naive);
    }

    #[test]
    fn debug_output_redacts_the_secret() {
        let (sk, _) = generate_keys_from_seed_insecure(
            ParameterSet::toy_insecure(),
            BodiesPerMask::try_new(1).unwrap(),
            1,
        )
        .unwrap();
        let shown = format!("{sk:?}");
        assert!(shown.contains("redacted"));
        assert!(!shown.contains("s:"));
    }

    #[test]
    fn os_seeded_keys_differ() {
        let p = ParameterSet::toy_insecure();
        let l = BodiesPerMask::try_new(1).unwrap();
        let (_, a) = generate_keys(p, l).unwrap();
        let (_, b) = generate_keys(p, l).unwrap();
        assert_ne!(a.id(), b.id());
    }
}
