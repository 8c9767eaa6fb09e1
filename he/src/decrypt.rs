//! Decryption in exact mode.
//!
//! `M_i = D_i − C·S_i`, minus the key-dependent noise mean `W·½·e_i·𝟙` (W = total weight),
//! then rounded to the nearest multiple of `Δ`. Only the rounded integers leave this module:
//! an unrounded decryption of known ciphertexts reveals the noise and, from enough of them,
//! the secret key (Li–Micciancio, Eurocrypt 2021). No public function returns one.

use crate::ciphertext::{
    add_packed_block, Ciphertext, CiphertextHeader, CompressedCiphertext, Layout,
};
use crate::encoding::Element;
use crate::error::{Error, InputError, Mismatch};
use crate::keys::SecretKey;
use crate::ntt::NttPoly;
use ndarray::Array1;
use rayon::prelude::*;
use zeroize::Zeroize;

/// A decrypted aggregate: the exact integer sums `T_j = Σ c_k·m_kj`, with the metadata to
/// turn them into the weighted mean or the scaled sum.
///
/// ```
/// # use cryptflow_he::*;
/// # let params = ParameterSet::default_128();
/// # let (sk, pk) = generate_keys(params, BodiesPerMask::try_new(1).unwrap()).unwrap();
/// let encoding = Encoding::try_new(10, 40, 1.0, 4, 16).unwrap();
/// let mut sum = pk.encrypt(&encoding, ndarray::arr1(&[1.0f32]).view()).unwrap().ciphertext;
/// let zero = pk.encrypt(&encoding, ndarray::arr1(&[0.0f32]).view()).unwrap().ciphertext;
/// sum.weighted_add_assign(&zero, Weight::try_new(3).unwrap()).unwrap();
/// let d = sk.decrypt(&sum).unwrap();
/// assert_eq!((d.len(), d.header().contributors()), (1, 2));
/// assert_eq!(d.sum::<f32>()[0], 1.0);           // 1·1.0 + 3·0.0
/// assert_eq!(d.weighted_mean::<f32>()[0], 0.25); // divided by the total weight 4
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decrypted {
    sums: Vec<i64>,
    header: CiphertextHeader,
}

impl Decrypted {
    /// Metadata of the decrypted ciphertext (contributors, weights, encoding).
    pub fn header(&self) -> &CiphertextHeader {
        &self.header
    }

    /// `Σ c_k·v_k / Σ c_k`: the weighted mean of the clipped, quantised inputs.
    pub fn weighted_mean<T: Element>(&self) -> Array1<T> {
        let denom = 2f64.powi(self.header.encoding.precision_bits() as i32)
            * self.header.total_weight as f64;
        self.sums.iter().map(|&t| T::from_f64(t as f64 / denom)).collect()
    }

    /// `Σ c_k·v_k · 2^-s` where `s` is the header's scale exponent (0 without scaling).
    pub fn sum<T: Element>(&self) -> Array1<T> {
        let denom = 2f64
            .powi(self.header.encoding.precision_bits() as i32 + self.header.scale_exponent as i32);
        self.sums.iter().map(|&t| T::from_f64(t as f64 / denom)).collect()
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.sums.len()
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.sums.is_empty()
    }
}

impl SecretKey {
    /// Decrypts a full-width ciphertext (fresh or aggregate), debiased and rounded.
    ///
    /// ```
    /// use cryptflow_he::*;
    /// let (sk, pk) =
    ///     generate_keys(ParameterSet::default_128(), BodiesPerMask::try_new(1).unwrap()).unwrap();
    /// let encoding = Encoding::try_new(10, 40, 1.0, 1, 1).unwrap();
    /// let ct = pk.encrypt(&encoding, ndarray::arr1(&[0.5f64]).view()).unwrap().ciphertext;
    /// assert_eq!(sk.decrypt(&ct).unwrap().weighted_mean::<f64>()[0], 0.5);
    /// ```
    pub fn decrypt(&self, ct: &Ciphertext) -> Result<Decrypted, Error> {
        let encoding = ct.header.encoding;
        let phases = self.debiased_phases(ct)?;
        let sums = phases.par_iter().map(|&x| encoding.round_phase(x)).collect();
        Ok(Decrypted { sums, header: ct.header })
    }

    /// Decrypts a compressed ciphertext (e.g. the downloaded aggregate), lifting one block at
    /// a time so the full-width ciphertext never exists in memory.
    ///
    /// ```
    /// # use cryptflow_he::*;
    /// # let params = ParameterSet::default_128();
    /// # let (sk, pk) = generate_keys(params, BodiesPerMask::try_new(4).unwrap()).unwrap();
    /// let encoding = Encoding::try_new(12, 40, 1.0, 1, 1).unwrap();
    /// let widths = TransportWidths {
    ///     mask: TransportBits::try_new(48).unwrap(),
    ///     body: TransportBits::try_new(40).unwrap(),
    /// };
    /// let x = ndarray::Array1::from_elem(10_000, -0.5f64);
    /// let up = pk.encrypt_compressed(&encoding, x.view(), widths).unwrap().ciphertext;
    /// assert!(sk.decrypt_compressed(&up).unwrap().sum::<f64>().iter().all(|&v| v == -0.5));
    /// ```
    pub fn decrypt_compressed(&self, ct: &CompressedCiphertext) -> Result<Decrypted, Error> {
        let encoding = ct.header.encoding;
        let phases = self.debiased_phases_compressed(ct)?;
        let sums = phases.par_iter().map(|&x| encoding.round_phase(x)).collect();
        Ok(Decrypted { sums, header: ct.header })
    }

    /// Checks that `h` belongs to this key and returns its layout.
    fn layout_for(&self, h: &CiphertextHeader) -> Result<Layout, Error> {
        if h.params != self.params().id() {
            return Err(
                Mismatch::ParameterSet { left: h.params.0, right: self.params().id().0 }.into()
            );
        }
        if h.key_id != self.id() {
            return Err(Mismatch::Key.into());
        }
        if h.bodies != self.bodies() {
            return Err(Mismatch::Layout {
                left: format!("L = {}", h.bodies.get()),
                right: format!("L = {}", self.bodies().get()),
            }
            .into());
        }
        if h.total_weight == 0 {
            return Err(InputError::Empty.into());
        }
        Ok(h.layout(self.params().ring_degree().get()))
    }

    /// `D − C·S − W·β` per value: message plus centred noise. Crate-private on purpose.
    pub(crate) fn debiased_phases(&self, ct: &Ciphertext) -> Result<Vec<u64>, Error> {
        let layout = self.layout_for(&ct.header)?;
        if ct.words.len() != layout.words() {
            return Err(Error::Internal("ciphertext length inconsistent with its header"));
        }
        let weight = ct.header.total_weight;
        let mut out = vec![0u64; layout.values];
        out.par_chunks_mut(layout.values_per_block())
            .zip(ct.words.par_chunks(layout.full_block_words()))
            .for_each_init(
                || BlockScratch::new(layout.n, 0),
                |scratch, (out, block)| self.block_phases(block, weight, scratch, out),
            );
        Ok(out)
    }

    /// As [`Self::debiased_phases`], unpacking each block into a scratch buffer first.
    pub(crate) fn debiased_phases_compressed(
        &self,
        ct: &CompressedCiphertext,
    ) -> Result<Vec<u64>, Error> {
        let layout = self.layout_for(&ct.header)?;
        ct.check_length()?;
        let weight = ct.header.total_weight;
        let mut out = vec![0u64; layout.values];
        out.par_chunks_mut(layout.values_per_block())
            .zip(ct.bytes.par_chunks(layout.full_block_bytes(ct.widths)))
            .for_each_init(
                || BlockScratch::new(layout.n, layout.full_block_words()),
                |scratch, (out, bytes)| {
                    let mut words = std::mem::take(&mut scratch.words);
                    words.clear();
                    words.resize(layout.n + out.len(), 0);
                    add_packed_block(bytes, layout.n, ct.widths, 1, &mut words);
                    self.block_phases(&words, weight, scratch, out);
                    scratch.words = words;
                },
            );
        Ok(out)
    }

    /// Phases of one block (`mask ‖ bodies` words) into `out`.
    fn block_phases(&self, block: &[u64], weight: u64, s: &mut BlockScratch, out: &mut [u64]) {
        let n = self.params().ring_degree().get();
        let weight = weight as i128;
        let (mask, bodies) = block.split_at(n);
        let ntt_c = self.plan().forward(mask);
        for (i, (out, body)) in out.chunks_mut(n).zip(bodies.chunks(n)).enumerate() {
            self.plan().mul(&ntt_c, self.ntt_secret(i), &mut s.tmp, &mut s.prod);
            let bias = &self.twice_bias()[i * n..(i + 1) * n];
            for (j, (o, d)) in out.iter_mut().zip(body).enumerate() {
                let k = n - 1 - j;
                let mean = ((weight * bias[k] as i128) >> 1) as i64 as u64;
                *o = d.wrapping_sub(s.prod[k]).wrapping_sub(mean);
            }
        }
    }
}

/// Per-thread buffers of decryption; they hold `C·S`, which with `D` gives the unrounded
/// phase, so they are zeroized on drop.
struct BlockScratch {
    tmp: NttPoly,
    prod: Vec<u64>,
    words: Vec<u64>,
}

impl BlockScratch {
    fn new(n: usize, words: usize) -> Self {
        Self { tmp: NttPoly::zeroed(n), prod: vec![0; n], words: Vec::with_capacity(words) }
    }
}

impl Drop for BlockScratch {
    fn drop(&mut self) {
        self.tmp.zeroize();
        self.prod.zeroize();
        self.words.zeroize();
    }
}
