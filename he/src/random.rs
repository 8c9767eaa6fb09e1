//! Randomness: TFHE-rs's CSPRNG (AES-128 in counter mode, `tfhe-csprng`), seeded from the
//! operating system through tfhe's `UnixSeeder`, and the samplers built on it.
//!
//! - [`MaskSeed`] and [`expand_mask`]: a round's public masks. Block `j`'s mask `A_j` is the
//!   `j`-th run of `N` little-endian `u64` words of the AES-CTR stream keyed by the seed,
//!   counter starting at 0 — byte for byte what tfhe's `MaskRandomGenerator` produces when it
//!   expands a `SeededGlweCiphertextList` with `CompressionSeed::from(Seed(seed))` (a test
//!   checks it against tfhe). Any block can be expanded on its own: block `j` starts at AES
//!   counter `j·N/2`.
//! - [`NoiseStream`]: a client's encryption noise, re-derivable per block from a secret
//!   [`NoiseSeed`] (block `j` owns the counters `[j·2^20, (j+1)·2^20)`), so a retry can
//!   re-create the exact bytes of the first pass.
//! - Rounded Gaussian noise by the polar (Marsaglia) method — the method of tfhe's
//!   `Gaussian` sampler — and an exact discrete Gaussian for keys by the rejection sampler of
//!   Canonne, Kamath and Steinke ("The Discrete Gaussian for Differential Privacy",
//!   NeurIPS 2020, Algorithms 1–3), in integer arithmetic.
//!
//! The block cipher is driven directly in batches of eight AES calls (what tfhe's generator
//! does internally) because the per-byte iterator costs several times more; the output is the
//! same stream.

use crate::error::Error;
use serde::{Deserialize, Serialize};
use std::fmt;
use tfhe::core_crypto::commons::math::random::Seeder;
use tfhe::core_crypto::seeders::UnixSeeder;
use tfhe_csprng::generators::aes_ctr::{
    Aes128Key, AesBlockCipher, AES_CALLS_PER_BATCH, BYTES_PER_BATCH,
};
use tfhe_csprng::generators::default::DefaultAes128BlockCipher;
use zeroize::Zeroize;

/// 128 fresh bits from the operating system (`/dev/random` through tfhe's `UnixSeeder`).
pub(crate) fn os_seed() -> Result<u128, Error> {
    if !UnixSeeder::is_available() {
        return Err(Error::Internal("no OS entropy source available"));
    }
    Ok(UnixSeeder::new(0).seed().0)
}

/// The public seed of a round's masks (128 bits, tfhe's `CompressionSeed`): drawn from fresh
/// OS randomness when the round is created, immutable, part of the signed round spec.
/// Serialised as 32 lowercase hex digits.
///
/// ```
/// use cryptflow_he::MaskSeed;
/// let seed = MaskSeed::generate().unwrap();
/// let text = seed.to_string();
/// assert_eq!(text.len(), 32);
/// assert_eq!(text.parse::<MaskSeed>().unwrap(), seed);
/// ```
#[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MaskSeed(pub [u8; 16]);

impl MaskSeed {
    /// A fresh seed from the operating system.
    pub fn generate() -> Result<Self, Error> {
        Ok(Self(os_seed()?.to_le_bytes()))
    }

    /// The seed as tfhe's `Seed(u128)` value (little-endian bytes).
    pub fn as_u128(&self) -> u128 {
        u128::from_le_bytes(self.0)
    }
}

impl fmt::Display for MaskSeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for MaskSeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MaskSeed({self})")
    }
}

impl std::str::FromStr for MaskSeed {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::InvalidParameter(crate::InvalidParameter::MaskSeed);
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let mut out = [0u8; 16];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Self(out))
    }
}

impl TryFrom<String> for MaskSeed {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

impl From<MaskSeed> for String {
    fn from(s: MaskSeed) -> String {
        s.to_string()
    }
}

/// AES-128 in counter mode over a bounded range of counters: the byte stream of tfhe's
/// `AesCtrGenerator` keyed by `Seed(seed)`, from counter `start` (exclusive of `end`).
pub(crate) struct AesStream {
    cipher: DefaultAes128BlockCipher,
    next: u128,
    end: u128,
    buffer: [u8; BYTES_PER_BATCH],
    pos: usize,
}

impl AesStream {
    /// Counters `[start, start + calls)`; `calls` is rounded up to whole batches of eight.
    pub(crate) fn new(seed: u128, start: u128, calls: u128) -> Self {
        // tfhe-csprng loads a `Seed` into the AES key with `u128::from_le`.
        let cipher = DefaultAes128BlockCipher::new(Aes128Key::new(u128::from_le(seed)));
        Self {
            cipher,
            next: start,
            end: start.saturating_add(calls),
            buffer: [0; BYTES_PER_BATCH],
            pos: BYTES_PER_BATCH,
        }
    }

    fn refill(&mut self) -> Result<(), Error> {
        if self.next >= self.end {
            return Err(Error::Internal("CSPRNG range exhausted"));
        }
        let base = self.next;
        let inputs: [u128; AES_CALLS_PER_BATCH] =
            std::array::from_fn(|i| base.wrapping_add(i as u128).to_le());
        self.buffer = self.cipher.generate_batch(inputs);
        self.next = base.wrapping_add(AES_CALLS_PER_BATCH as u128);
        self.pos = 0;
        Ok(())
    }

    /// Fills `out` with little-endian `u64` words of the stream.
    pub(crate) fn fill_u64(&mut self, out: &mut [u64]) -> Result<(), Error> {
        let mut rest = out;
        // Drain what is buffered, word by word.
        while !rest.is_empty() && self.pos < BYTES_PER_BATCH {
            let (first, tail) = rest.split_at_mut(1);
            first[0] = self.next_u64()?;
            rest = tail;
        }
        // Whole batches straight into the output.
        const WORDS: usize = BYTES_PER_BATCH / 8;
        let mut chunks = rest.chunks_exact_mut(WORDS);
        for chunk in &mut chunks {
            self.refill()?;
            for (o, b) in chunk.iter_mut().zip(self.buffer.chunks_exact(8)) {
                let mut w = [0u8; 8];
                w.copy_from_slice(b);
                *o = u64::from_le_bytes(w);
            }
            self.pos = BYTES_PER_BATCH;
        }
        for o in chunks.into_remainder() {
            *o = self.next_u64()?;
        }
        Ok(())
    }

    /// The next little-endian `u64` of the stream.
    pub(crate) fn next_u64(&mut self) -> Result<u64, Error> {
        if self.pos + 8 > BYTES_PER_BATCH {
            // Batches are 128 bytes and words 8, so a word never straddles two batches.
            self.refill()?;
        }
        let mut w = [0u8; 8];
        w.copy_from_slice(&self.buffer[self.pos..self.pos + 8]);
        self.pos += 8;
        Ok(u64::from_le_bytes(w))
    }

    /// Uniform in `[0, bound)` for `bound ≥ 1` (rejection sampling on a bit mask: exact).
    pub(crate) fn uniform_below(&mut self, bound: u128) -> Result<u128, Error> {
        if bound <= 1 {
            return Ok(0);
        }
        let bits = 128 - (bound - 1).leading_zeros();
        let mask = if bits == 128 { u128::MAX } else { (1u128 << bits) - 1 };
        loop {
            let lo = self.next_u64()? as u128;
            let hi = if bits > 64 { self.next_u64()? as u128 } else { 0 };
            let x = ((hi << 64) | lo) & mask;
            if x < bound {
                return Ok(x);
            }
        }
    }

    /// Bernoulli(`num/den`), `num ≤ den`, exactly.
    fn bernoulli(&mut self, num: u128, den: u128) -> Result<bool, Error> {
        Ok(self.uniform_below(den)? < num)
    }

    /// Bernoulli(`exp(−num/den)`) exactly (CKS20, Algorithm 1).
    fn bernoulli_exp(&mut self, mut num: u128, den: u128) -> Result<bool, Error> {
        // exp(−γ) = exp(−1)^⌊γ⌋ · exp(−(γ − ⌊γ⌋)).
        while num > den {
            if !self.bernoulli_exp_at_most_one(1, 1)? {
                return Ok(false);
            }
            num -= den;
        }
        self.bernoulli_exp_at_most_one(num, den)
    }

    /// Bernoulli(`exp(−γ)`) for `γ = num/den ∈ [0, 1]`: the first `k` with
    /// `Bernoulli(γ/k) = 0` is odd with probability `exp(−γ)`.
    fn bernoulli_exp_at_most_one(&mut self, num: u128, den: u128) -> Result<bool, Error> {
        let mut k = 1u128;
        loop {
            let Some(scaled) = den.checked_mul(k) else { return Ok(k % 2 == 1) };
            if !self.bernoulli(num, scaled)? {
                return Ok(k % 2 == 1);
            }
            k += 1;
        }
    }

    /// Discrete Laplace with scale `t`: `P(y) ∝ exp(−|y|/t)` (CKS20, Algorithm 2).
    fn discrete_laplace(&mut self, t: u128) -> Result<i128, Error> {
        loop {
            let u = self.uniform_below(t)?;
            if !self.bernoulli_exp(u, t)? {
                continue;
            }
            let mut v = 0u128;
            while self.bernoulli_exp(1, 1)? {
                v += 1;
            }
            let x = u + t * v;
            let negative = self.bernoulli(1, 2)?;
            if negative && x == 0 {
                continue;
            }
            let x = i128::try_from(x).map_err(|_| Error::Internal("discrete Laplace overflow"))?;
            return Ok(if negative { -x } else { x });
        }
    }

    /// The discrete Gaussian `D_{Z,σ}` with `σ² = sigma2` (an integer), exactly (CKS20,
    /// Algorithm 3): a discrete Laplace proposal with `t = ⌊σ⌋ + 1`, accepted with
    /// probability `exp(−(|y| − σ²/t)² / (2σ²))`.
    pub(crate) fn discrete_gaussian(&mut self, sigma2: u128) -> Result<i64, Error> {
        let t = isqrt(sigma2) + 1;
        loop {
            let y = self.discrete_laplace(t)?;
            let a = y.unsigned_abs();
            // γ = (|y|·t − σ²)² / (2σ²t²), in integers.
            let (Some(at), Some(den)) =
                (a.checked_mul(t), sigma2.checked_mul(2).and_then(|x| x.checked_mul(t * t)))
            else {
                continue; // |y| so large that exp(−γ) is 0 in any precision: reject
            };
            let diff = at.abs_diff(sigma2);
            let Some(num) = diff.checked_mul(diff) else { continue };
            if self.bernoulli_exp(num, den)? {
                return i64::try_from(y).map_err(|_| Error::Internal("discrete Gaussian overflow"));
            }
        }
    }

    /// Two independent rounded Gaussian samples of standard deviation `std`, by the polar
    /// method (Marsaglia 1964; tfhe's `Gaussian` sampler uses the same method).
    #[inline]
    pub(crate) fn rounded_gaussian_pair(&mut self, std: f64) -> Result<(i64, i64), Error> {
        const SCALE: f64 = 1.0 / 9_223_372_036_854_775_808.0; // 2^-63
        loop {
            let u = (self.next_u64()? as i64) as f64 * SCALE;
            let v = (self.next_u64()? as i64) as f64 * SCALE;
            let s = u * u + v * v;
            if s > 0.0 && s < 1.0 {
                let f = std * (-2.0 * s.ln() / s).sqrt();
                return Ok(((u * f).round() as i64, (v * f).round() as i64));
            }
        }
    }
}

impl Drop for AesStream {
    fn drop(&mut self) {
        self.buffer.zeroize();
    }
}

/// `⌊√x⌋` for `u128`.
fn isqrt(x: u128) -> u128 {
    if x < 2 {
        return x;
    }
    let mut r = (x as f64).sqrt() as u128;
    while r * r > x {
        r -= 1;
    }
    while (r + 1) * (r + 1) <= x {
        r += 1;
    }
    r
}

/// Writes block `block`'s mask `A_block` (`out.len() = N` words) from the round's seed.
pub(crate) fn expand_mask(seed: MaskSeed, block: u64, out: &mut [u64]) -> Result<(), Error> {
    // N words of 8 bytes are N/2 AES calls of 16 bytes.
    let calls = (out.len() / 2) as u128;
    let mut stream = AesStream::new(seed.as_u128(), block as u128 * calls, calls);
    stream.fill_u64(out)
}

/// AES counters each block's noise may use: 2^20 calls (16 MiB), far more than the ~40 KiB a
/// block of 2048 values needs with the polar method's rejections.
const NOISE_CALLS_PER_BLOCK: u128 = 1 << 20;

/// The secret seed of one client's encryption noise. Zeroized on drop.
#[derive(Clone, Zeroize)]
#[zeroize(drop)]
pub(crate) struct NoiseSeed(u128);

impl NoiseSeed {
    pub(crate) fn generate() -> Result<Self, Error> {
        Ok(Self(os_seed()?))
    }

    #[cfg(any(test, feature = "insecure"))]
    pub(crate) fn from_u128(seed: u128) -> Self {
        Self(seed)
    }

    /// The generator of a DP round's rounding and noise share ([`crate::dp`]): ChaCha20 keyed
    /// by SHA-256("cryptflow dp noise v1" ‖ 0 ‖ the seed, little-endian) — the same secret as
    /// the encryption noise under its own label, so a retry re-derives the identical message
    /// and nobody without the seed can predict it.
    pub(crate) fn dp_rng(&self) -> rand_chacha::ChaCha20Rng {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(b"cryptflow dp noise v1\0");
        h.update(self.0.to_le_bytes());
        let mut key: [u8; 32] = h.finalize().into();
        let rng = <rand_chacha::ChaCha20Rng as rand_core::SeedableRng>::from_seed(key);
        key.zeroize();
        rng
    }

    /// The noise stream of block `block`.
    pub(crate) fn block_stream(&self, block: u64) -> AesStream {
        AesStream::new(self.0, block as u128 * NOISE_CALLS_PER_BLOCK, NOISE_CALLS_PER_BLOCK)
    }
}

/// Fills `out` with rounded Gaussian samples of standard deviation `std`, as two's complement
/// words.
pub(crate) fn fill_rounded_gaussian(
    stream: &mut AesStream,
    std: f64,
    out: &mut [u64],
) -> Result<(), Error> {
    let mut pairs = out.chunks_exact_mut(2);
    for pair in &mut pairs {
        let (a, b) = stream.rounded_gaussian_pair(std)?;
        pair[0] = a as u64;
        pair[1] = b as u64;
    }
    for last in pairs.into_remainder() {
        *last = stream.rounded_gaussian_pair(std)?.0 as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tfhe::core_crypto::commons::math::random::{DefaultRandomGenerator, RandomGenerator};
    use tfhe_csprng::generators::aes_ctr::{AesCtrParams, AesIndex, ByteIndex, TableIndex};
    use tfhe_csprng::seeders::{Seed, SeedKind};

    #[test]
    fn the_mask_stream_is_tfhes_stream_and_any_block_can_start_it() {
        let seed = MaskSeed(*b"0123456789abcdef");
        let n = 64;
        let mut sequential = vec![0u64; 5 * n];
        let mut tfhe_gen = RandomGenerator::<DefaultRandomGenerator>::new(Seed(seed.as_u128()));
        tfhe_gen.fill_slice_with_random_uniform(&mut sequential);
        for block in 0..5u64 {
            let mut ours = vec![0u64; n];
            expand_mask(seed, block, &mut ours).unwrap();
            let b = block as usize;
            assert_eq!(ours, sequential[b * n..(b + 1) * n], "block {block}");
        }
        // And tfhe's own generator started at block 3's counter agrees.
        let params = AesCtrParams {
            seed: SeedKind::Ctr(Seed(seed.as_u128())),
            first_index: TableIndex::new(AesIndex(3 * n as u128 / 2), ByteIndex(0)),
        };
        let mut at3 = vec![0u64; n];
        RandomGenerator::<DefaultRandomGenerator>::new(params)
            .fill_slice_with_random_uniform(&mut at3);
        assert_eq!(at3, sequential[3 * n..4 * n]);
    }

    #[test]
    fn unaligned_reads_continue_the_stream() {
        let mut a = AesStream::new(7, 0, 1 << 20);
        let mut whole = vec![0u64; 100];
        a.fill_u64(&mut whole).unwrap();
        let mut b = AesStream::new(7, 0, 1 << 20);
        let mut parts = vec![0u64; 100];
        parts[0] = b.next_u64().unwrap();
        b.fill_u64(&mut parts[1..37]).unwrap();
        b.fill_u64(&mut parts[37..]).unwrap();
        assert_eq!(whole, parts);
    }

    #[test]
    fn bounded_streams_end_with_an_error_not_a_panic() {
        let mut s = AesStream::new(1, 0, 8);
        let mut out = vec![0u64; 16];
        s.fill_u64(&mut out).unwrap();
        assert!(s.next_u64().is_err());
    }

    #[test]
    fn uniform_below_stays_below() {
        let mut s = AesStream::new(3, 0, 1 << 20);
        for bound in [1u128, 2, 3, 1000, 1 << 70, (1 << 70) + 12345] {
            for _ in 0..200 {
                assert!(s.uniform_below(bound).unwrap() < bound);
            }
        }
    }

    #[test]
    fn isqrt_is_exact() {
        for x in [0u128, 1, 2, 3, 4, 15, 16, 17, 1 << 34, (1 << 34) - 1, u64::MAX as u128] {
            let r = isqrt(x);
            assert!(r * r <= x && (r + 1) * (r + 1) > x, "{x}");
        }
    }
}
