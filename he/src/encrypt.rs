//! Public-key encryption of real vectors, block-parallel with rayon.
//!
//! Per block: sample a binary `U`, transform it once, then `C = A·U + e1` and
//! `D_i = B_i·U + e2_i + M_i` from the key's precomputed transforms (one inverse NTT per
//! output polynomial). Each block draws from its own fork of one OS-seeded CSPRNG, so blocks
//! run in any order on any number of threads.

use crate::ciphertext::{
    compress_block, Ciphertext, CiphertextHeader, CompressedCiphertext, Layout,
};
use crate::encoding::{check_length, ClipReport, Element, Encoding};
use crate::error::Error;
use crate::keys::PublicKey;
use crate::ntt::NttPoly;
use crate::params::TransportWidths;
use crate::random::Csprng;
use ndarray::ArrayView1;
use rayon::prelude::*;
use std::borrow::Cow;
use zeroize::Zeroize;

/// The result of an encryption: the ciphertext and what clipping did to the input.
#[derive(Clone, Debug)]
pub struct Encrypted<C> {
    /// The ciphertext.
    pub ciphertext: C,
    /// Values that exceeded the clip bound (never silent).
    pub clipping: ClipReport,
}

/// Per-thread buffers. Holds encryption randomness and messages, so it is zeroized.
struct Scratch {
    u: Vec<u64>,
    ntt_u: NttPoly,
    tmp: NttPoly,
    prod: Vec<u64>,
    noise: Vec<u64>,
    messages: Vec<u64>,
    block: Vec<u64>,
}

impl Scratch {
    fn new(n: usize, values_per_block: usize) -> Self {
        Self {
            u: vec![0; n],
            ntt_u: NttPoly::zeroed(n),
            tmp: NttPoly::zeroed(n),
            prod: vec![0; n],
            noise: vec![0; n.max(values_per_block)],
            messages: vec![0; values_per_block],
            block: vec![0; n + values_per_block],
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.u.zeroize();
        self.ntt_u.zeroize();
        self.tmp.zeroize();
        self.prod.zeroize();
        self.noise.zeroize();
        self.messages.zeroize();
        self.block.zeroize();
    }
}

impl PublicKey {
    /// Encrypts `values` (clipped and encoded by `encoding`) into a full-width ciphertext.
    ///
    /// ```
    /// use cryptflow_he::*;
    /// let params = ParameterSet::default_128();
    /// let (sk, pk) = generate_keys(params, BodiesPerMask::try_new(2).unwrap()).unwrap();
    /// let encoding = Encoding::try_new(16, 40, 2.0, 1, 1).unwrap();
    /// let x = ndarray::arr1(&[1.5f32, -0.25, 3.0]);
    /// let out = pk.encrypt(&encoding, x.view()).unwrap();
    /// assert_eq!(out.clipping.clipped, 1); // 3.0 > 2.0 was clipped, and reported
    /// let back = sk.decrypt(&out.ciphertext).unwrap().weighted_mean::<f32>();
    /// assert_eq!(back.to_vec(), vec![1.5, -0.25, 2.0]);
    /// ```
    pub fn encrypt<T: Element>(
        &self,
        encoding: &Encoding,
        values: ArrayView1<'_, T>,
    ) -> Result<Encrypted<Ciphertext>, Error> {
        let values = contiguous(&values);
        let (header, layout) = self.header_for(encoding, values.len())?;
        let mut words = vec![0u64; layout.words()];
        let clipping = self.par_encrypt(
            encoding,
            &values,
            layout,
            &mut words,
            |out, block| {
                out.copy_from_slice(block);
            },
            layout.full_block_words(),
        )?;
        Ok(Encrypted { ciphertext: Ciphertext { header, words }, clipping })
    }

    /// Encrypts and compresses in one pass: each block is switched to `widths` and packed as
    /// soon as it is encrypted, so the full-width ciphertext never exists in memory.
    ///
    /// ```
    /// use cryptflow_he::*;
    /// let params = ParameterSet::default_128();
    /// let l = BodiesPerMask::try_new(8).unwrap();
    /// let (sk, pk) = generate_keys(params, l).unwrap();
    /// let request = planner::PlanRequest { max_clients: 8, clip_bound: 1.0, max_weight: 1,
    ///     bodies: l, target: planner::PlanTarget::Precision { max_abs_error: 1e-6 } };
    /// let plan = planner::plan(&params, &request).unwrap();
    /// let x = ndarray::Array1::linspace(-1.0f64, 1.0, 100_000);
    /// let up = pk.encrypt_compressed(&plan.encoding, x.view(), plan.upload).unwrap();
    /// assert!(up.ciphertext.payload_len() as f64 / 100_000.0 <= 4.5);
    /// let back = sk.decrypt_compressed(&up.ciphertext).unwrap().weighted_mean::<f64>();
    /// assert!(back.iter().zip(x.iter()).all(|(a, b)| (a - b).abs() <= 1e-6));
    /// ```
    pub fn encrypt_compressed<T: Element>(
        &self,
        encoding: &Encoding,
        values: ArrayView1<'_, T>,
        widths: TransportWidths,
    ) -> Result<Encrypted<CompressedCiphertext>, Error> {
        let values = contiguous(&values);
        let (header, layout) = self.header_for(encoding, values.len())?;
        let mut bytes = vec![0u8; layout.packed_len(widths)];
        let n = layout.n;
        let clipping = self.par_encrypt(
            encoding,
            &values,
            layout,
            &mut bytes,
            |out, block| compress_block(block, n, widths, out),
            layout.full_block_bytes(widths),
        )?;
        Ok(Encrypted { ciphertext: CompressedCiphertext { header, widths, bytes }, clipping })
    }

    fn header_for(
        &self,
        encoding: &Encoding,
        len: usize,
    ) -> Result<(CiphertextHeader, Layout), Error> {
        check_length(len)?;
        let header =
            CiphertextHeader::fresh(self.params(), self.id(), self.bodies(), len as u64, *encoding);
        Ok((header, header.layout(self.params().ring_degree().get())))
    }

    /// Runs `encrypt_block` over all blocks in parallel; `emit` writes a finished block into
    /// its `chunk`-sized slot of `out`.
    fn par_encrypt<T: Element, O: Send>(
        &self,
        encoding: &Encoding,
        values: &[T],
        layout: Layout,
        out: &mut [O],
        emit: impl Fn(&mut [O], &[u64]) + Sync,
        chunk: usize,
    ) -> Result<ClipReport, Error> {
        let n = layout.n;
        let per_block = layout.values_per_block();
        let noise = self.params().noise();
        let bytes_per_block =
            Csprng::binary_bytes(n) + Csprng::tuniform_bytes(n + per_block, noise);
        let children = Csprng::from_os()?.fork(layout.blocks(), bytes_per_block)?;
        out.par_chunks_mut(chunk)
            .zip(values.par_chunks(per_block))
            .zip(children)
            .enumerate()
            .map_init(
                || Scratch::new(n, per_block),
                |scratch, (b, ((out, vals), mut rng))| {
                    let report =
                        self.encrypt_block(encoding, vals, b * per_block, &mut rng, scratch)?;
                    emit(out, &scratch.block[..n + vals.len()]);
                    Ok(report)
                },
            )
            .try_reduce(ClipReport::default, |a, b| Ok(a.merge(b)))
    }

    /// Encrypts one block of up to `L·N` values into `scratch.block`.
    fn encrypt_block<T: Element>(
        &self,
        encoding: &Encoding,
        values: &[T],
        first_index: usize,
        rng: &mut Csprng,
        s: &mut Scratch,
    ) -> Result<ClipReport, Error> {
        let n = self.params().ring_degree().get();
        let count = values.len();
        let report = encoding.encode_into(values, first_index, &mut s.messages[..count])?;
        let plan = self.plan();
        let noise = self.params().noise();

        rng.fill_binary(&mut s.u);
        plan.forward_binary_into(&s.u, &mut s.ntt_u);

        // C = A·U + e1
        plan.mul(self.ntt_mask(), &s.ntt_u, &mut s.tmp, &mut s.prod);
        rng.fill_tuniform(&mut s.noise[..n], noise);
        let (mask, bodies) = s.block.split_at_mut(n);
        for ((c, p), e) in mask.iter_mut().zip(&s.prod).zip(&s.noise) {
            *c = p.wrapping_add(*e);
        }

        // D_i[j] = (B_i·U)[N−1−j] + e2 + M  (TFHE-rs's reversed body convention)
        rng.fill_tuniform(&mut s.noise[..count], noise);
        for (i, ((body, e2), m)) in bodies[..count]
            .chunks_mut(n)
            .zip(s.noise[..count].chunks(n))
            .zip(s.messages[..count].chunks(n))
            .enumerate()
        {
            plan.mul(self.ntt_body(i), &s.ntt_u, &mut s.tmp, &mut s.prod);
            for (j, ((d, e), m)) in body.iter_mut().zip(e2).zip(m).enumerate() {
                *d = s.prod[n - 1 - j].wrapping_add(*e).wrapping_add(*m);
            }
        }
        Ok(report)
    }
}

fn contiguous<'a, T: Element>(values: &'a ArrayView1<'_, T>) -> Cow<'a, [T]> {
    match values.as_slice() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(values.iter().copied().collect()),
    }
}
