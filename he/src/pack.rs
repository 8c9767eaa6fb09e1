//! Modulus switching and bit-packing of words.
//!
//! Switching a word `x` from `2^64` to `2^w` keeps `round(x / 2^(64−w)) mod 2^w`; lifting
//! shifts it back up. Packed words form a little-endian bit stream, least significant bit
//! first. Widths that are multiples of 8 take a byte-copy fast path.

/// `round(x / 2^(64−w)) mod 2^w` for `1 <= w <= 64`, ties to even.
///
/// Ties matter: an aggregate of lifted uploads has its low `64 − w_up` bits all zero, so
/// switching it to fewer bits hits exact ties often. Rounding ties up would give the error a
/// mean of half a step, which the secret (Hamming weight ≈ N/2) multiplies into a bias
/// of `h/2` steps on some coefficients; ties to even keep the error centred.
#[inline(always)]
pub(crate) fn switch(x: u64, w: u32) -> u64 {
    if w >= 64 {
        return x;
    }
    let shift = 64 - w;
    let odd = (x >> shift) & 1;
    (x.wrapping_add((1u64 << (shift - 1)) - 1 + odd) >> shift) & ((1u64 << w) - 1)
}

/// Inverse of [`switch`] up to the rounding error: `y · 2^(64−w)` (the kernels inline it).
#[cfg(test)]
pub(crate) fn lift(y: u64, w: u32) -> u64 {
    if w >= 64 {
        y
    } else {
        y << (64 - w)
    }
}

/// Bytes needed for `count` words of `w` bits.
pub(crate) fn packed_len(count: usize, w: u32) -> usize {
    (count * w as usize).div_ceil(8)
}

/// Switches `words` to `w` bits and packs them into `out` (exactly `packed_len` bytes).
pub(crate) fn switch_and_pack(words: &[u64], w: u32, out: &mut [u8]) {
    debug_assert_eq!(out.len(), packed_len(words.len(), w));
    if w.is_multiple_of(8) {
        let bytes = (w / 8) as usize;
        for (x, o) in words.iter().zip(out.chunks_exact_mut(bytes)) {
            o.copy_from_slice(&switch(*x, w).to_le_bytes()[..bytes]);
        }
        return;
    }
    let mut acc: u128 = 0;
    let mut bits = 0u32;
    let mut pos = 0usize;
    for &x in words {
        acc |= (switch(x, w) as u128) << bits;
        bits += w;
        if bits >= 64 {
            out[pos..pos + 8].copy_from_slice(&(acc as u64).to_le_bytes());
            pos += 8;
            acc >>= 64;
            bits -= 64;
        }
    }
    let rest = bits.div_ceil(8) as usize;
    out[pos..pos + rest].copy_from_slice(&acc.to_le_bytes()[..rest]);
}

/// Reads 8 bytes at `at` as a little-endian `u64`; the caller guarantees `at + 8 <= len`.
#[inline(always)]
fn load_u64(input: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&input[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Reads up to 16 bytes at `at`, zero-padded past the end of `input`.
#[inline(always)]
fn load_u128_padded(input: &[u8], at: usize) -> u128 {
    let mut b = [0u8; 16];
    let end = input.len().min(at + 16);
    if at < end {
        b[..end - at].copy_from_slice(&input[at..end]);
    }
    u128::from_le_bytes(b)
}

/// Unpacks `out.len()` words of `w` bits from `input`, lifts each back to 64 bits and adds
/// it, times `weight`, to `out` (wrapping).
pub(crate) fn unpack_lift_add(input: &[u8], w: u32, weight: u64, out: &mut [u64]) {
    debug_assert!(input.len() >= packed_len(out.len(), w));
    let shift = 64 - w;
    if w == 64 {
        for (o, c) in out.iter_mut().zip(input.chunks_exact(8)) {
            *o = o.wrapping_add(load_u64(c, 0).wrapping_mul(weight));
        }
        return;
    }
    if w == 32 {
        for (o, c) in out.iter_mut().zip(input.chunks_exact(4)) {
            let v = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u64;
            *o = o.wrapping_add((v << shift).wrapping_mul(weight));
        }
        return;
    }
    let mask = (1u64 << w) - 1;
    // Fast region: the 8-byte window of word i lies inside the input and, for w <= 56, holds
    // all of the word whatever its bit offset.
    let fast = if w <= 56 && input.len() >= 8 {
        // Largest i with floor(i·w/8) + 8 <= len.
        ((input.len() - 8) * 8 / w as usize + 1).min(out.len())
    } else {
        0
    };
    for (i, o) in out[..fast].iter_mut().enumerate() {
        let bit = i * w as usize;
        let v = (load_u64(input, bit >> 3) >> (bit & 7)) & mask;
        *o = o.wrapping_add((v << shift).wrapping_mul(weight));
    }
    for (i, o) in out.iter_mut().enumerate().skip(fast) {
        let bit = i * w as usize;
        let v = ((load_u128_padded(input, bit >> 3) >> (bit & 7)) as u64) & mask;
        *o = o.wrapping_add((v << shift).wrapping_mul(weight));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn weighted_unpack_adds(words in proptest::collection::vec(any::<u64>(), 1..100), w in 1u32..=64, weight in any::<u64>(), base in any::<u64>()) {
            let mut packed = vec![0u8; packed_len(words.len(), w)];
            switch_and_pack(&words, w, &mut packed);
            let mut acc = vec![base; words.len()];
            unpack_lift_add(&packed, w, weight, &mut acc);
            for (x, a) in words.iter().zip(&acc) {
                prop_assert_eq!(*a, base.wrapping_add(lift(switch(*x, w), w).wrapping_mul(weight)));
            }
        }

        #[test]
        fn pack_unpack_round_trip(words in proptest::collection::vec(any::<u64>(), 0..200), w in 1u32..=64) {
            let mut out = vec![0u8; packed_len(words.len(), w)];
            switch_and_pack(&words, w, &mut out);
            let mut back = vec![0u64; words.len()];
            unpack_lift_add(&out, w, 1, &mut back);
            for (x, y) in words.iter().zip(&back) {
                prop_assert_eq!(lift(switch(*x, w), w), *y);
                // rounding error is at most half a step
                let err = x.wrapping_sub(*y) as i64;
                if w < 64 {
                    prop_assert!(err.unsigned_abs() <= 1u64 << (63 - w));
                } else {
                    prop_assert_eq!(err, 0);
                }
            }
        }
    }

    #[test]
    fn switch_rounds_to_nearest() {
        assert_eq!(switch(0x8000_0000, 32), 0); // tie: to even
        assert_eq!(switch(0x1_8000_0000, 32), 2); // tie: to even
        assert_eq!(switch(0x8000_0001, 32), 1);
        assert_eq!(switch(0x7FFF_FFFF, 32), 0);
        assert_eq!(switch(u64::MAX, 32), 0); // wraps: rounds up to 2^32 ≡ 0
        assert_eq!(switch(12345, 64), 12345);
    }
}
