//! Encryption of one client's update under its own key, block-parallel with rayon and
//! streamable block range by block range.
//!
//! Block `j`: expand `A_j` from the round's seed, `B_j = A_j·k + e_j + Δ·M_j` (one NTT product
//! per `N` values against the key's precomputed transform), round every word to `w` bits and
//! pack. The noise `e_j` comes from block `j`'s own stream of the encryptor's secret noise
//! seed, so any range of blocks can be produced in any order, on any number of threads, and
//! produced again identically: client memory beyond the input is `O(threads·N)` — except in a
//! DP round, whose message (rotated, clipped, rounded and noised as a whole) is derived once
//! and kept, 8 bytes per rotated value.
//!
//! **One encryption per (round, key, block)** (DESIGN §3, invariant 1): two encryptions of
//! different values under one key and block give the aggregator `B − B′ = Δ·(M − M′)`. An
//! [`Encryptor`] records the SHA-256 of each block the first time it produces it; producing a
//! block again (a retry re-deriving a chunk instead of keeping the whole upload) must give
//! the same bytes, else the output is wiped and [`Error::ChangedInput`] returned before
//! anything can be sent.

use crate::ciphertext::{CiphertextKind, PackedCiphertext, RoundSetup};
use crate::encoding::{check_length, ClipReport, Encoder, Values};
use crate::error::{Error, InputError};
use crate::keys::ClientKey;
use crate::ntt::{NttPlan, NttPoly};
use crate::pack;
use crate::random::{expand_mask, fill_rounded_gaussian, NoiseSeed};
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::ops::Range;
use std::sync::OnceLock;
use zeroize::Zeroize;

/// The result of an encryption: the ciphertext and what clipping did to the input.
#[derive(Clone, Debug)]
pub struct Encrypted<C> {
    /// The ciphertext.
    pub ciphertext: C,
    /// Values that exceeded the clip bound (never silent).
    pub clipping: ClipReport,
}

/// Encrypts one update of one client for one round: holds the key's transform, the secret
/// noise seed and the per-block digests of what it produced. Zeroized on drop.
pub struct Encryptor {
    setup: RoundSetup,
    plan: NttPlan,
    key: NttPoly,
    noise: NoiseSeed,
    encoder: Encoder,
    digests: Vec<OnceLock<[u8; 32]>>,
    /// The clipping of the whole update, for the clipping slots: taken once, when a block
    /// holding them is first encrypted (a retry of that block then re-derives the same words,
    /// or the digest check refuses it).
    whole: OnceLock<ClipReport>,
    /// In a DP round, the whole message, derived once from the update and the noise seed.
    dp: OnceLock<DpMessage>,
}

/// A DP round's message (KLS21, Algorithm 1, one client): the update rotated, scaled to the
/// grid, clipped to L2 norm `c`, rounded conditionally, the clipped-client indicator appended
/// and a discrete-Gaussian share added to every slot — all drawn from the encryptor's secret
/// noise seed ([`NoiseSeed::dp_rng`]). Zeroized on drop.
struct DpMessage {
    words: Vec<i64>,
    clipping: ClipReport,
    /// SHA-256 of each rotation block of the update it was derived from, so that a block
    /// produced again from changed values is refused ([`Error::ChangedInput`]).
    input_digests: Vec<[u8; 32]>,
}

/// SHA-256 of values `range` of an update (little-endian `f64`).
fn values_digest(
    values: &(impl Values + ?Sized),
    range: Range<usize>,
    buf: &mut [f64],
) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut at = range.start;
    while at < range.end {
        let n = buf.len().min(range.end - at);
        values.read(at, &mut buf[..n]);
        for v in &buf[..n] {
            h.update(v.to_le_bytes());
        }
        at += n;
    }
    buf.zeroize();
    h.finalize().into()
}

impl Drop for DpMessage {
    fn drop(&mut self) {
        self.words.zeroize();
    }
}

impl Drop for Encryptor {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

impl std::fmt::Debug for Encryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encryptor").field("slots", &self.setup.slots()).finish_non_exhaustive()
    }
}

/// Per-thread buffers. They hold the key product, noise and messages, so they are zeroized.
struct Scratch {
    input: Vec<f64>,
    messages: Vec<u64>,
    mask: Vec<u64>,
    ntt: NttPoly,
    product: Vec<u64>,
    noise: Vec<u64>,
}

impl Scratch {
    fn new(n: usize) -> Self {
        Self {
            input: vec![0.0; n],
            messages: vec![0; n],
            mask: vec![0; n],
            ntt: NttPoly::zeroed(n),
            product: vec![0; n],
            noise: vec![0; n],
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.input.zeroize();
        self.messages.zeroize();
        self.ntt.zeroize();
        self.product.zeroize();
        self.noise.zeroize();
    }
}

impl ClientKey {
    /// An encryptor for one update of this client in `setup`'s round, with its sample
    /// `count` in `samples` rounds (`None` otherwise). Draws the noise seed from the OS.
    pub fn encryptor(&self, setup: &RoundSetup, count: Option<u64>) -> Result<Encryptor, Error> {
        self.encryptor_with(setup, count, NoiseSeed::generate()?)
    }

    /// As [`Self::encryptor`] with a fixed noise seed. **Insecure**: tests only.
    #[cfg(any(test, feature = "insecure"))]
    pub fn encryptor_with_noise_seed_insecure(
        &self,
        setup: &RoundSetup,
        count: Option<u64>,
        seed: u128,
    ) -> Result<Encryptor, Error> {
        self.encryptor_with(setup, count, NoiseSeed::from_u128(seed))
    }

    fn encryptor_with(
        &self,
        setup: &RoundSetup,
        count: Option<u64>,
        noise: NoiseSeed,
    ) -> Result<Encryptor, Error> {
        if self.params() != setup.params() {
            return Err(crate::Mismatch::ParameterSet {
                left: self.params().id().0,
                right: setup.params().id().0,
            }
            .into());
        }
        let n = setup.ring_degree();
        let plan = NttPlan::try_new(n)?;
        let mut words: Vec<u64> = self.coefficients().iter().map(|&c| c as u64).collect();
        let key = plan.forward(&words);
        words.zeroize();
        let encoder = Encoder::new(setup.plan(), setup.values(), count)?;
        let blocks = usize::try_from(setup.blocks())
            .map_err(|_| InputError::TooLong { len: setup.slots(), limit: crate::MAX_VALUES })?;
        Ok(Encryptor {
            setup: *setup,
            plan,
            key,
            noise,
            encoder,
            digests: (0..blocks).map(|_| OnceLock::new()).collect(),
            whole: OnceLock::new(),
            dp: OnceLock::new(),
        })
    }
}

impl Encryptor {
    /// The round.
    pub fn setup(&self) -> &RoundSetup {
        &self.setup
    }

    /// The serialised header of the upload (`docs/wire-format.md`).
    pub fn header_bytes(&self) -> Vec<u8> {
        crate::wire::header_bytes(&self.setup.header(CiphertextKind::Upload, 1))
    }

    /// Encrypts the whole update into an upload held in memory.
    ///
    /// ```
    /// use cryptflow_he::planner::{plan, PlanRequest, Weighting};
    /// use cryptflow_he::*;
    /// let params = ParameterSet::default_128();
    /// let p = plan(&params, &PlanRequest { max_clients: 8, clip_bound: 1.0, max_abs_error: 1e-6,
    ///     weighting: Weighting::Uniform, dp: None }).unwrap();
    /// let setup = RoundSetup::try_new(p, MaskSeed::generate().unwrap(), 100_000).unwrap();
    /// let key = ClientKey::generate(&params).unwrap();
    /// let x: Vec<f32> = (0..100_000).map(|i| (i as f32 * 1e-3).sin() * 1.5).collect();
    /// let up = key.encryptor(&setup, None).unwrap().encrypt(&x[..]).unwrap();
    /// assert!(up.clipping.clipped > 30_000); // |1.5·sin| > 1 about a third of the time
    /// assert_eq!(up.ciphertext.payload().len(), 350_007); // 3.5 bytes per value and clipping slot
    /// ```
    pub fn encrypt(
        &self,
        values: &(impl Values + ?Sized),
    ) -> Result<Encrypted<PackedCiphertext>, Error> {
        let mut payload = vec![0u8; self.setup.payload_len() as usize];
        let clipping = self.encrypt_blocks(values, 0..self.setup.blocks(), &mut payload)?;
        let header = self.setup.header(CiphertextKind::Upload, 1);
        Ok(Encrypted { ciphertext: PackedCiphertext { header, payload }, clipping })
    }

    /// Encrypts blocks `blocks` of the update into `out`, which must be exactly their packed
    /// bytes (`setup.payload_range(slots)` of those blocks). Blocks run in parallel. The same
    /// blocks produced again give the same bytes; if the input changed in between, `out` is
    /// wiped and [`Error::ChangedInput`] returned.
    pub fn encrypt_blocks(
        &self,
        values: &(impl Values + ?Sized),
        blocks: Range<u64>,
        out: &mut [u8],
    ) -> Result<ClipReport, Error> {
        check_length(values.len())?;
        if values.len() as u64 != self.setup.values() {
            return Err(InputError::Length {
                expected: self.setup.values(),
                got: values.len() as u64,
            }
            .into());
        }
        if blocks.start >= blocks.end || blocks.end > self.setup.blocks() {
            return Err(InputError::SlotRange { start: blocks.start, end: blocks.end }.into());
        }
        let n = self.setup.ring_degree();
        let slots =
            self.setup.block_slots(blocks.start).start..self.setup.block_slots(blocks.end - 1).end;
        let range = self.setup.payload_range(slots.clone());
        if out.len() as u64 != range.end - range.start {
            return Err(InputError::Length {
                expected: range.end - range.start,
                got: out.len() as u64,
            }
            .into());
        }
        let w = self.setup.transport().get();
        let block_bytes = pack::packed_len(n, w);
        let dp = match self.setup.plan().dp() {
            Some(_) => {
                let m = self.dp_message(values)?;
                // The update these blocks come from must be the one the message was derived
                // from: the rotation blocks their slots draw on are hashed again.
                let block = crate::dp::rotation::ROTATION_BLOCK;
                let d = values.len();
                let first = (slots.start as usize / block).min(m.input_digests.len());
                let last = (slots.end as usize).div_ceil(block).min(m.input_digests.len());
                let mut buf = vec![0.0f64; 4096];
                for r in first..last {
                    let range = r * block..((r + 1) * block).min(d);
                    if values_digest(values, range, &mut buf) != m.input_digests[r] {
                        out.zeroize();
                        return Err(Error::ChangedInput { block: blocks.start });
                    }
                }
                Some(m)
            }
            None => None,
        };
        let result = out
            .par_chunks_mut(block_bytes)
            .zip((blocks.start as usize..blocks.end as usize).into_par_iter())
            .map_init(
                || Scratch::new(n),
                |scratch, (out, b)| self.encrypt_block(values, dp, b as u64, scratch, out),
            )
            .try_reduce(ClipReport::default, |a, b| Ok(a.merge(b)));
        if result.is_err() {
            out.zeroize();
        }
        result
    }

    fn encrypt_block(
        &self,
        values: &(impl Values + ?Sized),
        dp: Option<&DpMessage>,
        b: u64,
        s: &mut Scratch,
        out: &mut [u8],
    ) -> Result<ClipReport, Error> {
        let slots = self.setup.block_slots(b);
        let r = (slots.end - slots.start) as usize;
        let report = match dp {
            Some(m) => {
                let words = m
                    .words
                    .get(slots.start as usize..slots.end as usize)
                    .ok_or(Error::Internal("DP message length"))?;
                let delta_log = self.setup.plan().delta().get();
                for (o, w) in s.messages[..r].iter_mut().zip(words) {
                    *o = (*w as u64).wrapping_shl(delta_log);
                }
                // The whole update's clipping, reported once (with block 0).
                if b == 0 {
                    m.clipping
                } else {
                    ClipReport::default()
                }
            }
            None => self.encode_block(values, slots.start, r, s)?,
        };
        expand_mask(self.setup.seed(), b, &mut s.mask)?;
        self.plan.mul(&s.mask, &self.key, &mut s.ntt, &mut s.product);
        let mut stream = self.noise.block_stream(b);
        fill_rounded_gaussian(&mut stream, self.setup.params().noise_std(), &mut s.noise[..r])?;
        for ((p, e), m) in s.product[..r].iter_mut().zip(&s.noise[..r]).zip(&s.messages[..r]) {
            *p = p.wrapping_add(*e).wrapping_add(*m);
        }
        pack::switch_and_pack(&s.product[..r], self.setup.transport().get(), out);
        let digest: [u8; 32] = Sha256::digest(&*out).into();
        let slot = self.digests.get(b as usize).ok_or(Error::Internal("block index"))?;
        if *slot.get_or_init(|| digest) != digest {
            out.zeroize();
            return Err(Error::ChangedInput { block: b });
        }
        Ok(report)
    }

    /// Encodes the slots `first .. first + r` of a round without DP into `s.messages`.
    fn encode_block(
        &self,
        values: &(impl Values + ?Sized),
        first: u64,
        r: usize,
        s: &mut Scratch,
    ) -> Result<ClipReport, Error> {
        let end = first + r as u64;
        let model = (self.setup.values().min(end).saturating_sub(first)) as usize;
        let whole =
            if end > self.encoder.values() { Some(self.whole_clipping(values, s)?) } else { None };
        if model > 0 {
            // (A last block may hold only the slots after the values, starting past the end.)
            values.read(first as usize, &mut s.input[..model]);
        }
        Ok(self.encoder.encode(&s.input[..model], first, &mut s.messages[..r], whole.as_ref())?)
    }

    /// A DP round's message, derived on first use and kept ([`DpMessage`]): the same
    /// encryptor always encrypts the same message, so a retried block re-derives identical
    /// bytes, and a block asked for again from a changed update is refused. Unlike a round
    /// without DP (streamed block by block), the whole update is held while the message is
    /// derived — about 32 bytes per rotated value at the peak — and the message after (8).
    fn dp_message(&self, values: &(impl Values + ?Sized)) -> Result<&DpMessage, Error> {
        use crate::dp::{rotation::Rotation, rounding, sample_discrete_gaussian};
        if let Some(m) = self.dp.get() {
            return Ok(m);
        }
        let dp = self.setup.plan().dp().ok_or(Error::Internal("not a DP round"))?;
        let mut x = vec![0.0f64; values.len()];
        values.read(0, &mut x);
        if let Some(index) = x.iter().position(|v| !v.is_finite()) {
            x.zeroize();
            return Err(InputError::NonFinite { index: index as u64 }.into());
        }
        let input_digests = x
            .chunks(crate::dp::rotation::ROTATION_BLOCK)
            .map(|c| {
                let mut h = Sha256::new();
                c.iter().for_each(|v| h.update(v.to_le_bytes()));
                h.finalize().into()
            })
            .collect();
        let largest = x.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let norm = if largest == 0.0 {
            0.0
        } else {
            largest * x.iter().map(|v| (v / largest).powi(2)).sum::<f64>().sqrt()
        };
        let mut y = Rotation::new(&self.setup.seed(), x.len()).rotate(&x);
        x.zeroize();
        let scale = 2f64.powi(dp.grid_log());
        y.iter_mut().for_each(|v| *v *= scale);
        let clipped = rounding::clip_l2(&mut y, self.setup.plan().clip_bound() * scale);
        let mut rng = self.noise.dp_rng();
        let rounded = rounding::round_conditionally(&y, dp.rounded_norm_sq(), &mut rng);
        y.zeroize();
        let mut words = rounded.map_err(|_| Error::Internal("conditional rounding failed"))?;
        words.push(if clipped { dp.indicator() as i64 } else { 0 });
        let share = dp.share_variance();
        for w in words.iter_mut() {
            *w = w.saturating_add(sample_discrete_gaussian(&share, &mut rng));
        }
        let clipping = if clipped {
            ClipReport { clipped: self.setup.values(), largest_magnitude: norm }
        } else {
            ClipReport::default()
        };
        // A racing caller derived the same message; the loser's copy is zeroized on drop.
        let _ = self.dp.set(DpMessage { words, clipping, input_digests });
        self.dp.get().ok_or(Error::Internal("DP message"))
    }

    /// How many values of the whole update clipping changes (one pass over the input, kept
    /// once taken). An update with a non-finite value is refused here, naming its index, and
    /// nothing is kept — a corrected input is counted afresh.
    fn whole_clipping(
        &self,
        values: &(impl Values + ?Sized),
        s: &mut Scratch,
    ) -> Result<ClipReport, InputError> {
        if let Some(w) = self.whole.get() {
            return Ok(*w);
        }
        let mut report = ClipReport::default();
        let n = s.input.len();
        for start in (0..values.len()).step_by(n) {
            let len = n.min(values.len() - start);
            values.read(start, &mut s.input[..len]);
            for (i, &v) in s.input[..len].iter().enumerate() {
                if !v.is_finite() {
                    return Err(InputError::NonFinite { index: (start + i) as u64 });
                }
                if self.encoder.clips(v) {
                    report.clipped += 1;
                    report.largest_magnitude = report.largest_magnitude.max(v.abs());
                }
            }
        }
        // Threads racing here computed the same report from the same input.
        Ok(*self.whole.get_or_init(|| report))
    }

    /// The block holding the count, in `samples` rounds.
    pub fn count_slot(&self) -> Option<u64> {
        self.encoder.count_slot()
    }
}
