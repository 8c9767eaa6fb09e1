//! The randomized Walsh–Hadamard rotation applied before clipping and rounding (Kairouz, Liu,
//! Steinke 2021, §4): `y = H·D·x` with `D` a diagonal of random signs and `H` the orthonormal
//! Walsh–Hadamard transform, block by block. It preserves the L2 norm (so the clip bound is
//! unchanged) and flattens the coordinates, so that conditional rounding and the integer grid
//! cost little. The signs are public — derived from the round's seed under their own label —
//! because the reader un-rotates the mean: the rotation hides nothing, it only spreads.
//!
//! ```
//! use cryptflow_he::dp::rotation::Rotation;
//! use cryptflow_he::MaskSeed;
//!
//! let rot = Rotation::new(&MaskSeed([3; 16]), 5);
//! assert_eq!(rot.rotated_len(), 8); // one block, padded to a power of two
//! let x = [1.0, -2.0, 0.5, 0.0, 4.0];
//! let y = rot.rotate(&x);
//! let norm = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>().sqrt();
//! assert!((norm(&y) - norm(&x)).abs() < 1e-12);
//! let back = rot.unrotate(&y);
//! assert!(back.iter().zip(&x).all(|(a, b)| (a - b).abs() < 1e-12));
//! ```

use crate::MaskSeed;
use sha2::{Digest, Sha256};

/// Values per rotation block: `2^16`. Whole blocks are rotated as they are; the last, partial
/// block is padded with zeros to the next power of two.
pub const ROTATION_BLOCK: usize = 1 << 16;

/// The rotation of one round for updates of `values` values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rotation {
    seed: MaskSeed,
    values: usize,
}

impl Rotation {
    /// The rotation for `values` values, its signs from `seed`.
    pub fn new(seed: &MaskSeed, values: usize) -> Self {
        Self { seed: *seed, values }
    }

    /// Values of a rotated vector: whole blocks of [`ROTATION_BLOCK`], then the rest padded to
    /// the next power of two (0 for 0 values).
    pub fn rotated_len(&self) -> usize {
        let rest = self.values % ROTATION_BLOCK;
        self.values - rest + if rest == 0 { 0 } else { rest.next_power_of_two() }
    }

    /// The sign of rotated coordinate `i`, ±1 (−1 for a set bit): bit `i mod 256` of
    /// SHA-256("cryptflow dp rotation signs v1" ‖ 0 ‖ seed ‖ ⌊i/256⌋ as u64 little-endian),
    /// bits numbered from the first byte, least significant bit first within each byte.
    fn signs(&self) -> Vec<f64> {
        let len = self.rotated_len();
        let mut out = Vec::with_capacity(len);
        let mut counter = 0u64;
        while out.len() < len {
            let mut h = Sha256::new();
            h.update(b"cryptflow dp rotation signs v1\0");
            h.update(self.seed.0);
            h.update(counter.to_le_bytes());
            for byte in h.finalize() {
                for bit in 0..8 {
                    if out.len() < len {
                        out.push(if byte >> bit & 1 == 1 { -1.0 } else { 1.0 });
                    }
                }
            }
            counter += 1;
        }
        out
    }

    /// `H·D·x`, `x` of `values` values (missing ones taken as 0, extra ones ignored); the
    /// result has [`Rotation::rotated_len`] values.
    pub fn rotate(&self, x: &[f64]) -> Vec<f64> {
        let mut y: Vec<f64> = self
            .signs()
            .iter()
            .enumerate()
            .map(|(i, s)| if i < self.values { s * x.get(i).copied().unwrap_or(0.0) } else { 0.0 })
            .collect();
        for block in self.blocks(&mut y) {
            walsh_hadamard(block);
        }
        y
    }

    /// `D·H·y` (the inverse: `H` and `D` are their own inverses), the padding dropped: the
    /// first `values` values.
    pub fn unrotate(&self, y: &[f64]) -> Vec<f64> {
        let mut x: Vec<f64> =
            (0..self.rotated_len()).map(|i| y.get(i).copied().unwrap_or(0.0)).collect();
        for block in self.blocks(&mut x) {
            walsh_hadamard(block);
        }
        let signs = self.signs();
        x.truncate(self.values);
        for (v, s) in x.iter_mut().zip(signs) {
            *v *= s;
        }
        x
    }

    fn blocks<'a>(&self, v: &'a mut [f64]) -> Vec<&'a mut [f64]> {
        let whole = self.values - self.values % ROTATION_BLOCK;
        let (head, tail) = v.split_at_mut(whole);
        let mut out: Vec<&mut [f64]> = head.chunks_mut(ROTATION_BLOCK).collect();
        if !tail.is_empty() {
            out.push(tail);
        }
        out
    }
}

/// The orthonormal Walsh–Hadamard transform in place (`len` a power of two): butterflies,
/// then a factor `1/√len`. Its own inverse.
fn walsh_hadamard(v: &mut [f64]) {
    let n = v.len();
    let mut h = 1;
    while h < n {
        for start in (0..n).step_by(2 * h) {
            for i in start..start + h {
                let (a, b) = (v[i], v[i + h]);
                v[i] = a + b;
                v[i + h] = a - b;
            }
        }
        h *= 2;
    }
    let scale = 1.0 / (n as f64).sqrt();
    for a in v.iter_mut() {
        *a *= scale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_norms_and_inverts_across_blocks() {
        // Two whole blocks and a partial one of 1000 (padded to 1024).
        let d = 2 * ROTATION_BLOCK + 1000;
        let rot = Rotation::new(&MaskSeed([1; 16]), d);
        assert_eq!(rot.rotated_len(), 2 * ROTATION_BLOCK + 1024);
        let x: Vec<f64> = (0..d).map(|i| ((i * 7919) % 101) as f64 / 50.0 - 1.0).collect();
        let y = rot.rotate(&x);
        let norm = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>().sqrt();
        assert!((norm(&y) / norm(&x) - 1.0).abs() < 1e-12);
        let back = rot.unrotate(&y);
        assert_eq!(back.len(), d);
        assert!(back.iter().zip(&x).all(|(a, b)| (a - b).abs() < 1e-9));
        // Rotation is linear: a sum of rotated vectors un-rotates to the sum.
        let z: Vec<f64> = x.iter().map(|v| -0.5 * v + 0.25).collect();
        let sum: Vec<f64> = rot.rotate(&z).iter().zip(&y).map(|(a, b)| a + b).collect();
        let unsum = rot.unrotate(&sum);
        assert!(unsum.iter().zip(x.iter().zip(&z)).all(|(s, (a, b))| (s - a - b).abs() < 1e-9));
    }

    #[test]
    fn whole_blocks_need_no_padding() {
        let d = 2 * ROTATION_BLOCK;
        let rot = Rotation::new(&MaskSeed([6; 16]), d);
        assert_eq!(rot.rotated_len(), d);
        let x: Vec<f64> = (0..d).map(|i| (i % 13) as f64 - 6.0).collect();
        let back = rot.unrotate(&rot.rotate(&x));
        assert!(back.iter().zip(&x).all(|(a, b)| (a - b).abs() < 1e-9));
        // Fewer values than a block: one block of the next power of two.
        assert_eq!(Rotation::new(&MaskSeed([6; 16]), 1000).rotated_len(), 1024);
    }

    #[test]
    fn a_spike_is_spread_over_its_block_and_signs_depend_on_the_seed() {
        let mut x = vec![0.0; 1024];
        x[17] = 32.0;
        let y = Rotation::new(&MaskSeed([2; 16]), 1024).rotate(&x);
        // One coordinate of 32 becomes 1024 of magnitude 1.
        assert!(y.iter().all(|v| (v.abs() - 1.0).abs() < 1e-12));
        let other = Rotation::new(&MaskSeed([4; 16]), 1024).rotate(&x);
        assert_ne!(y, other);
        assert_eq!(y, Rotation::new(&MaskSeed([2; 16]), 1024).rotate(&x));
        assert_eq!(Rotation::new(&MaskSeed([2; 16]), 0).rotated_len(), 0);
        assert_eq!(Rotation::new(&MaskSeed([2; 16]), 1).rotated_len(), 1);
    }
}
