//! Ciphertexts, their metadata, transport compression and homomorphic arithmetic.
//!
//! A vector of `d` values is cut into blocks of `L·N` values (the last one partial). Block
//! `b` is stored as its mask `C` (`N` words) followed by its bodies (one word per value):
//! value `j` of body polynomial `i` is word `N + i·N + j`, and holds
//! `(B_i·U)[N−1−j] + e2 + M` — TFHE-rs's compact-list convention, so a block with `L = 1`
//! is bit-for-bit an `LweCompactCiphertextList`.
//!
//! Every ciphertext carries a [`CiphertextHeader`]; arithmetic checks that headers agree
//! (parameter set, key, layout, encoding and scale) and that the weight budget of the plan is
//! respected, and returns a typed error otherwise — it never sums incompatible data.

use crate::encoding::Encoding;
use crate::error::{BudgetError, Error, InvalidParameter, Mismatch};
use crate::keys::KeyId;
use crate::pack;
use crate::params::{BodiesPerMask, ParameterSet, ParameterSetId, TransportWidths};
use rayon::prelude::*;

/// An integer weight `c ≥ 1` applied to a ciphertext in a weighted sum.
///
/// ```
/// use cryptflow_he::Weight;
/// assert_eq!(Weight::try_new(3).unwrap().get(), 3);
/// assert!(Weight::try_new(0).is_err());
/// ```
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Weight(u64);

impl Weight {
    /// Weight one.
    pub const ONE: Self = Self(1);

    /// Validates `w ≥ 1`.
    pub fn try_new(w: u64) -> Result<Self, Error> {
        if w == 0 {
            Err(InvalidParameter::Weight { value: 0, max: u64::MAX }.into())
        } else {
            Ok(Self(w))
        }
    }

    /// The weight.
    pub fn get(self) -> u64 {
        self.0
    }
}

/// Metadata that travels with every ciphertext.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct CiphertextHeader {
    pub(crate) params: ParameterSetId,
    pub(crate) key_id: KeyId,
    pub(crate) bodies: BodiesPerMask,
    pub(crate) value_count: u64,
    pub(crate) encoding: Encoding,
    pub(crate) scale_exponent: u8,
    pub(crate) contributors: u32,
    pub(crate) total_weight: u64,
    pub(crate) weight_sq_sum: u128,
}

impl CiphertextHeader {
    /// Parameter set id.
    pub fn params(&self) -> ParameterSetId {
        self.params
    }
    /// Id of the key it is encrypted under.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }
    /// Bodies per mask `L`.
    pub fn bodies(&self) -> BodiesPerMask {
        self.bodies
    }
    /// Number of encrypted values `d`.
    pub fn value_count(&self) -> u64 {
        self.value_count
    }
    /// Encoding (scale, clip bound, budgets).
    pub fn encoding(&self) -> &Encoding {
        &self.encoding
    }
    /// Extra power-of-two scale from fixed-point scaling (0 unless [`Ciphertext::scale_assign`]
    /// was used).
    pub fn scale_exponent(&self) -> u8 {
        self.scale_exponent
    }
    /// Number of fresh ciphertexts summed into this one (1 for a fresh ciphertext).
    pub fn contributors(&self) -> u32 {
        self.contributors
    }
    /// `Σ c_k`: the total weight.
    pub fn total_weight(&self) -> u64 {
        self.total_weight
    }
    /// `Σ c_k²`: the noise budget consumed.
    pub fn weight_sq_sum(&self) -> u128 {
        self.weight_sq_sum
    }
    /// Whether this is a single, unweighted, unscaled encryption (what a client uploads).
    pub fn is_fresh(&self) -> bool {
        self.contributors == 1
            && self.total_weight == 1
            && self.weight_sq_sum == 1
            && self.scale_exponent == 0
    }

    /// The header a fresh encryption of `value_count` values under `key` would carry.
    pub fn fresh(
        params: &ParameterSet,
        key_id: KeyId,
        bodies: BodiesPerMask,
        value_count: u64,
        encoding: Encoding,
    ) -> Self {
        Self {
            params: params.id(),
            key_id,
            bodies,
            value_count,
            encoding,
            scale_exponent: 0,
            contributors: 1,
            total_weight: 1,
            weight_sq_sum: 1,
        }
    }

    /// Checks that `other` can be combined with `self`: same parameter set, key, layout,
    /// encoding and scale.
    ///
    /// ```
    /// # use cryptflow_he::*;
    /// # let params = ParameterSet::default_128();
    /// # let (sk, pk) = generate_keys(params, BodiesPerMask::try_new(2).unwrap()).unwrap();
    /// # let encoding = Encoding::try_new(20, 38, 1.0, 8, 64).unwrap();
    /// let a = pk.encrypt(&encoding, ndarray::arr1(&[0.5f64; 3]).view()).unwrap().ciphertext;
    /// let b = pk.encrypt(&encoding, ndarray::arr1(&[0.5f64; 4]).view()).unwrap().ciphertext;
    /// assert!(a.header().check_compatible(a.header()).is_ok());
    /// assert!(matches!(a.header().check_compatible(b.header()), Err(Mismatch::Layout { .. })));
    /// ```
    pub fn check_compatible(&self, other: &Self) -> Result<(), Mismatch> {
        if self.params != other.params {
            return Err(Mismatch::ParameterSet { left: self.params.0, right: other.params.0 });
        }
        if self.key_id != other.key_id {
            return Err(Mismatch::Key);
        }
        if self.bodies != other.bodies || self.value_count != other.value_count {
            return Err(Mismatch::Layout {
                left: format!("{} values, L = {}", self.value_count, self.bodies.get()),
                right: format!("{} values, L = {}", other.value_count, other.bodies.get()),
            });
        }
        if self.encoding != other.encoding || self.scale_exponent != other.scale_exponent {
            let show = |h: &Self| {
                format!(
                    "p = {}, d = {}, B = {}, scale 2^{}",
                    h.encoding.precision_bits(),
                    h.encoding.delta_log(),
                    h.encoding.clip_bound(),
                    h.scale_exponent
                )
            };
            return Err(Mismatch::Scale { left: show(self), right: show(other) });
        }
        Ok(())
    }

    /// The header of `self + weight·other`, if compatible and within budget.
    fn after_weighted_add(&self, other: &Self, weight: Weight) -> Result<Self, Error> {
        self.check_compatible(other)?;
        let w = weight.get() as u128;
        let total = self.total_weight as u128 + w * other.total_weight as u128;
        let max_total = self.encoding.max_total_weight() as u128;
        if total > max_total {
            return Err(BudgetError::TotalWeight { value: total, max: max_total }.into());
        }
        let sq = (w * w)
            .checked_mul(other.weight_sq_sum)
            .and_then(|x| x.checked_add(self.weight_sq_sum))
            .unwrap_or(u128::MAX);
        let max_sq = self.encoding.max_weight_sq_sum();
        if sq > max_sq {
            return Err(BudgetError::NoiseBudget { value: sq, max: max_sq }.into());
        }
        let contributors =
            self.contributors.checked_add(other.contributors).ok_or(BudgetError::Contributors)?;
        Ok(Self { contributors, total_weight: total as u64, weight_sq_sum: sq, ..*self })
    }

    pub(crate) fn layout(&self, n: usize) -> Layout {
        Layout { n, l: self.bodies.get(), values: self.value_count as usize }
    }
}

/// Where blocks and their parts sit in a ciphertext's words or packed bytes.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Layout {
    pub n: usize,
    pub l: usize,
    pub values: usize,
}

impl Layout {
    pub fn values_per_block(&self) -> usize {
        self.l * self.n
    }
    pub fn blocks(&self) -> usize {
        self.values.div_ceil(self.values_per_block())
    }
    /// Words of a full block: mask plus `L·N` bodies.
    pub fn full_block_words(&self) -> usize {
        self.n + self.values_per_block()
    }
    pub fn words(&self) -> usize {
        self.blocks() * self.n + self.values
    }
    /// Bytes of a full block once packed (byte-aligned because `N` is a multiple of 8).
    pub fn full_block_bytes(&self, widths: TransportWidths) -> usize {
        pack::packed_len(self.n, widths.mask.get())
            + pack::packed_len(self.values_per_block(), widths.body.get())
    }
    pub fn packed_len(&self, widths: TransportWidths) -> usize {
        let full = self.values / self.values_per_block();
        let rest = self.values % self.values_per_block();
        let mut len = full * self.full_block_bytes(widths);
        if rest > 0 {
            len += pack::packed_len(self.n, widths.mask.get())
                + pack::packed_len(rest, widths.body.get());
        }
        len
    }
}

/// A ciphertext with full 64-bit words: fresh from encryption, lifted from transport, or an
/// aggregate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ciphertext {
    pub(crate) header: CiphertextHeader,
    pub(crate) words: Vec<u64>,
}

/// A ciphertext whose words were switched to [`TransportWidths`] and bit-packed: what clients
/// upload and what the aggregator serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompressedCiphertext {
    pub(crate) header: CiphertextHeader,
    pub(crate) widths: TransportWidths,
    pub(crate) bytes: Vec<u8>,
}

impl Ciphertext {
    /// Metadata.
    pub fn header(&self) -> &CiphertextHeader {
        &self.header
    }

    /// The words (layout in the [module documentation](self)).
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// An empty sum (no contributors) with the layout and encoding of `template`; fold
    /// ciphertexts into it with [`Self::weighted_add_assign`] or
    /// [`Self::weighted_add_compressed`]. It cannot be decrypted until something is added.
    ///
    /// ```
    /// # use cryptflow_he::*;
    /// # let params = ParameterSet::default_128();
    /// # let (sk, pk) = generate_keys(params, BodiesPerMask::try_new(2).unwrap()).unwrap();
    /// # let encoding = Encoding::try_new(20, 38, 1.0, 8, 64).unwrap();
    /// let x = ndarray::arr1(&[0.5f64, 0.25]);
    /// let fresh = pk.encrypt(&encoding, x.view()).unwrap().ciphertext;
    /// let mut sum = Ciphertext::zero_like(fresh.header(), &params).unwrap();
    /// assert_eq!(sum.header().contributors(), 0);
    /// assert!(sk.decrypt(&sum).is_err()); // nothing to decrypt yet
    /// sum.add_assign(&fresh).unwrap();
    /// assert_eq!(sk.decrypt(&sum).unwrap().sum::<f64>().to_vec(), vec![0.5, 0.25]);
    /// ```
    pub fn zero_like(template: &CiphertextHeader, params: &ParameterSet) -> Result<Self, Error> {
        if template.params != params.id() {
            return Err(
                Mismatch::ParameterSet { left: template.params.0, right: params.id().0 }.into()
            );
        }
        let words = template.layout(params.ring_degree().get()).words();
        let header =
            CiphertextHeader { contributors: 0, total_weight: 0, weight_sq_sum: 0, ..*template };
        Ok(Self { header, words: vec![0; words] })
    }

    /// `self += other`.
    ///
    /// ```
    /// # use cryptflow_he::*;
    /// # let params = ParameterSet::default_128();
    /// # let l = BodiesPerMask::try_new(1).unwrap();
    /// # let (sk, pk) = generate_keys(params, l).unwrap();
    /// let encoding = Encoding::try_new(20, 40, 1.0, 2, 2).unwrap();
    /// let x = ndarray::arr1(&[0.25f64, -0.5]);
    /// let mut a = pk.encrypt(&encoding, x.view()).unwrap().ciphertext;
    /// let b = pk.encrypt(&encoding, x.view()).unwrap().ciphertext;
    /// a.add_assign(&b).unwrap();
    /// let sum = sk.decrypt(&a).unwrap();
    /// assert_eq!(sum.sum::<f64>().to_vec(), vec![0.5, -1.0]);
    /// ```
    pub fn add_assign(&mut self, other: &Ciphertext) -> Result<(), Error> {
        self.weighted_add_assign(other, Weight::ONE)
    }

    /// `self += weight · other`, rejecting incompatible ciphertexts and budget overruns.
    ///
    /// ```
    /// # use cryptflow_he::*;
    /// # let params = ParameterSet::default_128();
    /// # let (sk, pk) = generate_keys(params, BodiesPerMask::try_new(2).unwrap()).unwrap();
    /// # let encoding = Encoding::try_new(20, 38, 1.0, 8, 64).unwrap();
    /// let a = pk.encrypt(&encoding, ndarray::arr1(&[1.0f64]).view()).unwrap().ciphertext;
    /// let b = pk.encrypt(&encoding, ndarray::arr1(&[0.0f64]).view()).unwrap().ciphertext;
    /// let mut sum = a.clone();
    /// sum.weighted_add_assign(&b, Weight::try_new(3).unwrap()).unwrap();
    /// let d = sk.decrypt(&sum).unwrap();
    /// assert_eq!(d.header().total_weight(), 4);
    /// assert_eq!(d.weighted_mean::<f64>()[0], 0.25); // (1·1 + 3·0) / 4
    /// // Beyond the encoding's budget of 8, the sum is refused:
    /// assert!(sum.weighted_add_assign(&b, Weight::try_new(5).unwrap()).is_err());
    /// ```
    pub fn weighted_add_assign(&mut self, other: &Ciphertext, weight: Weight) -> Result<(), Error> {
        let header = self.header.after_weighted_add(&other.header, weight)?;
        let w = weight.get();
        self.words.par_chunks_mut(1 << 14).zip(other.words.par_chunks(1 << 14)).for_each(
            |(a, b)| {
                for (x, y) in a.iter_mut().zip(b) {
                    *x = x.wrapping_add(y.wrapping_mul(w));
                }
            },
        );
        self.header = header;
        Ok(())
    }

    /// `self += Σ weight_k · lift(item_k)` in one parallel pass over `self`: each block of the
    /// sum is built from all inputs while it sits in cache, so the cost is one read of every
    /// input and one write of the sum (memory-bound). All headers are checked first; on error
    /// nothing is changed.
    ///
    /// ```
    /// # use cryptflow_he::*;
    /// # let params = ParameterSet::default_128();
    /// # let l = BodiesPerMask::try_new(8).unwrap();
    /// # let (sk, pk) = generate_keys(params, l).unwrap();
    /// # let request = planner::PlanRequest { max_clients: 3, clip_bound: 1.0, max_weight: 2,
    /// #     bodies: l, target: planner::PlanTarget::Precision { max_abs_error: 1e-6 } };
    /// let plan = planner::plan(&params, &request).unwrap();
    /// let x = ndarray::Array1::from_elem(5000, 0.5f32);
    /// let up = pk.encrypt_compressed(&plan.encoding, x.view(), plan.upload).unwrap().ciphertext;
    /// let mut sum = Ciphertext::zero_like(up.header(), &params).unwrap();
    /// sum.weighted_add_compressed(&[(&up, Weight::ONE), (&up, Weight::try_new(2).unwrap())])
    ///     .unwrap();
    /// let mean = sk.decrypt(&sum).unwrap().weighted_mean::<f32>();
    /// assert!(mean.iter().all(|&m| (m - 0.5).abs() < 1e-6));
    /// ```
    pub fn weighted_add_compressed(
        &mut self,
        items: &[(&CompressedCiphertext, Weight)],
    ) -> Result<(), Error> {
        let mut header = self.header;
        for (item, weight) in items {
            header = header.after_weighted_add(&item.header, *weight)?;
            item.check_length()?;
        }
        let params = ParameterSet::by_id(self.header.params)?;
        let layout = self.header.layout(params.ring_degree().get());
        let block_words = layout.full_block_words();
        self.words.par_chunks_mut(block_words).enumerate().for_each(|(b, out)| {
            for (item, weight) in items {
                let block_bytes = layout.full_block_bytes(item.widths);
                let start = b * block_bytes;
                let bytes = &item.bytes[start..(start + block_bytes).min(item.bytes.len())];
                add_packed_block(bytes, layout.n, item.widths, weight.get(), out);
            }
        });
        self.header = header;
        Ok(())
    }

    /// Multiplies by the fixed-point constant `factor / 2^exponent`: words are multiplied by
    /// `factor` and the header's scale exponent grows by `exponent`, which decryption divides
    /// out. Counts against the weight budget like a weight.
    ///
    /// ```
    /// # use cryptflow_he::*;
    /// # let params = ParameterSet::default_128();
    /// # let (sk, pk) = generate_keys(params, BodiesPerMask::try_new(2).unwrap()).unwrap();
    /// # let encoding = Encoding::try_new(20, 38, 1.0, 8, 64).unwrap();
    /// let mut ct = pk.encrypt(&encoding, ndarray::arr1(&[0.75f64]).view()).unwrap().ciphertext;
    /// ct.scale_assign(Weight::try_new(3).unwrap(), 2).unwrap(); // × 3/4
    /// let d = sk.decrypt(&ct).unwrap();
    /// assert_eq!(d.sum::<f64>()[0], 0.75 * 3.0 / 4.0);
    /// assert_eq!(d.weighted_mean::<f64>()[0], 0.75);
    /// ```
    pub fn scale_assign(&mut self, factor: Weight, exponent: u8) -> Result<(), Error> {
        let f = factor.get() as u128;
        let total = self.header.total_weight as u128 * f;
        let max_total = self.header.encoding.max_total_weight() as u128;
        if total > max_total {
            return Err(BudgetError::TotalWeight { value: total, max: max_total }.into());
        }
        let sq = self.header.weight_sq_sum.saturating_mul(f * f);
        let max_sq = self.header.encoding.max_weight_sq_sum();
        if sq > max_sq {
            return Err(BudgetError::NoiseBudget { value: sq, max: max_sq }.into());
        }
        let scale_exponent = self.header.scale_exponent.checked_add(exponent).filter(|&s| s <= 64);
        let Some(scale_exponent) = scale_exponent else {
            return Err(InvalidParameter::Encoding("scale exponent above 64".into()).into());
        };
        let w = factor.get();
        self.words.par_iter_mut().for_each(|x| *x = x.wrapping_mul(w));
        self.header = CiphertextHeader {
            total_weight: total as u64,
            weight_sq_sum: sq,
            scale_exponent,
            ..self.header
        };
        Ok(())
    }

    /// Switches every word to `widths` (rounding) and bit-packs the result, e.g. to serve an
    /// aggregate for download.
    ///
    /// ```
    /// # use cryptflow_he::*;
    /// # let params = ParameterSet::default_128();
    /// # let (sk, pk) = generate_keys(params, BodiesPerMask::try_new(2).unwrap()).unwrap();
    /// # let encoding = Encoding::try_new(20, 38, 1.0, 8, 64).unwrap();
    /// let ct = pk.encrypt(&encoding, ndarray::arr1(&[0.5f64; 100]).view()).unwrap().ciphertext;
    /// let widths = TransportWidths {
    ///     mask: TransportBits::try_new(40).unwrap(),
    ///     body: TransportBits::try_new(32).unwrap(),
    /// };
    /// let small = ct.compress(&params, widths);
    /// assert_eq!(small.payload_len(), (2048 * 40 + 100 * 32) / 8);
    /// assert_eq!(sk.decrypt_compressed(&small).unwrap().sum::<f64>()[0], 0.5);
    /// ```
    pub fn compress(&self, params: &ParameterSet, widths: TransportWidths) -> CompressedCiphertext {
        let layout = self.header.layout(params.ring_degree().get());
        let mut bytes = vec![0u8; layout.packed_len(widths)];
        let n = layout.n;
        bytes
            .par_chunks_mut(layout.full_block_bytes(widths))
            .zip(self.words.par_chunks(layout.full_block_words()))
            .for_each(|(out, block)| compress_block(block, n, widths, out));
        CompressedCiphertext { header: self.header, widths, bytes }
    }
}

/// Packs one block (mask then bodies) into `out`.
pub(crate) fn compress_block(block: &[u64], n: usize, widths: TransportWidths, out: &mut [u8]) {
    let (mask, bodies) = block.split_at(n);
    let (mask_out, body_out) = out.split_at_mut(pack::packed_len(n, widths.mask.get()));
    pack::switch_and_pack(mask, widths.mask.get(), mask_out);
    pack::switch_and_pack(bodies, widths.body.get(), body_out);
}

/// Adds `weight ·` the lifted words of one packed block to `out` (mask then bodies).
pub(crate) fn add_packed_block(
    bytes: &[u8],
    n: usize,
    widths: TransportWidths,
    weight: u64,
    out: &mut [u64],
) {
    let (mask_out, body_out) = out.split_at_mut(n);
    let (mask_in, body_in) = bytes.split_at(pack::packed_len(n, widths.mask.get()));
    pack::unpack_lift_add(mask_in, widths.mask.get(), weight, mask_out);
    pack::unpack_lift_add(body_in, widths.body.get(), weight, body_out);
}

impl CompressedCiphertext {
    /// Metadata.
    pub fn header(&self) -> &CiphertextHeader {
        &self.header
    }

    /// Transport widths of the packed words.
    pub fn widths(&self) -> TransportWidths {
        self.widths
    }

    /// The packed payload.
    pub fn payload(&self) -> &[u8] {
        &self.bytes
    }

    /// Size of the payload in bytes.
    pub fn payload_len(&self) -> usize {
        self.bytes.len()
    }

    pub(crate) fn check_length(&self) -> Result<(), Error> {
        // Lengths are validated by the decoder and by construction; recheck cheaply since
        // the kernels index by them.
        let params = ParameterSet::by_id(self.header.params)?;
        let expected = self.header.layout(params.ring_degree().get()).packed_len(self.widths);
        if expected == self.bytes.len() {
            Ok(())
        } else {
            Err(Error::Internal("compressed ciphertext length inconsistent with its header"))
        }
    }

    /// Lifts the words back to 64 bits (shifting; the rounding error stays as noise).
    ///
    /// ```
    /// # use cryptflow_he::*;
    /// # let params = ParameterSet::default_128();
    /// # let (sk, pk) = generate_keys(params, BodiesPerMask::try_new(2).unwrap()).unwrap();
    /// # let encoding = Encoding::try_new(20, 38, 1.0, 8, 64).unwrap();
    /// # let widths = TransportWidths { mask: TransportBits::try_new(40).unwrap(),
    /// #     body: TransportBits::try_new(32).unwrap() };
    /// let up = pk.encrypt_compressed(&encoding, ndarray::arr1(&[0.5f64]).view(), widths)
    ///     .unwrap().ciphertext;
    /// let full = up.lift().unwrap();
    /// assert_eq!(full.header(), up.header());
    /// assert_eq!(sk.decrypt(&full).unwrap(), sk.decrypt_compressed(&up).unwrap());
    /// ```
    pub fn lift(&self) -> Result<Ciphertext, Error> {
        let params = ParameterSet::by_id(self.header.params)?;
        let mut sum = Ciphertext::zero_like(&self.header, &params)?;
        sum.weighted_add_compressed(&[(self, Weight::ONE)])?;
        // A lift is the same ciphertext, not a sum: keep the original weights.
        sum.header = self.header;
        Ok(sum)
    }
}

/// `Σ weight_k · lift(item_k)`: the aggregator's batch fold.
///
/// ```
/// # use cryptflow_he::*;
/// # let params = ParameterSet::default_128();
/// # let l = BodiesPerMask::try_new(8).unwrap();
/// # let (sk, pk) = generate_keys(params, l).unwrap();
/// # let request = planner::PlanRequest { max_clients: 4, clip_bound: 1.0, max_weight: 1,
/// #     bodies: l, target: planner::PlanTarget::Precision { max_abs_error: 1e-6 } };
/// let plan = planner::plan(&params, &request).unwrap();
/// let ups: Vec<_> = (0..4)
///     .map(|k| {
///         let x = ndarray::Array1::from_elem(100, k as f64 / 4.0);
///         pk.encrypt_compressed(&plan.encoding, x.view(), plan.upload).unwrap().ciphertext
///     })
///     .collect();
/// let items: Vec<_> = ups.iter().map(|c| (c, Weight::ONE)).collect();
/// let sum = weighted_sum_compressed(&params, &items).unwrap();
/// let mean = sk.decrypt(&sum).unwrap().weighted_mean::<f64>();
/// assert!((mean[0] - 0.375).abs() < 1e-6);
/// ```
pub fn weighted_sum_compressed(
    params: &ParameterSet,
    items: &[(&CompressedCiphertext, Weight)],
) -> Result<Ciphertext, Error> {
    let Some((first, _)) = items.first() else {
        return Err(crate::error::InputError::Empty.into());
    };
    let mut sum = Ciphertext::zero_like(&first.header, params)?;
    sum.weighted_add_compressed(items)?;
    Ok(sum)
}
