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

/// Inverse of [`switch`] up to the rounding error: `y · 2^(64−w)`.
#[inline(always)]
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

/// Unpacks `count` words of `w` bits from `input` and hands each, lifted back to 64 bits,
/// to `sink(index, word)`.
#[inline(always)]
pub(crate) fn unpack_lifted(input: &[u8], w: u32, count: usize, mut sink: impl FnMut(usize, u64)) {
    debug_assert!(input.len() >= packed_len(count, w));
    if w == 64 {
        for (i, c) in input.chunks_exact(8).take(count).enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            sink(i, u64::from_le_bytes(b));
        }
        return;
    }
    if w.is_multiple_of(8) {
        let bytes = (w / 8) as usize;
        for (i, c) in input.chunks_exact(bytes).take(count).enumerate() {
            let mut b = [0u8; 8];
            b[..bytes].copy_from_slice(c);
            sink(i, lift(u64::from_le_bytes(b), w));
        }
        return;
    }
    let mask = (1u64 << w) - 1;
    let shift = 64 - w;
    let mut acc: u128 = 0;
    let mut bits = 0u32;
    let mut pos = 0usize;
    for i in 0..count {
        if bits < w {
            // Refill with up to 8 bytes (fewer at the end of the input).
            let take = (input.len() - pos).min(8);
            let mut b = [0u8; 8];
            b[..take].copy_from_slice(&input[pos..pos + take]);
            acc |= (u64::from_le_bytes(b) as u128) << bits;
            bits += 8 * take as u32;
            pos += take;
        }
        sink(i, ((acc as u64) & mask) << shift);
        acc >>= w;
        bits -= w;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn pack_unpack_round_trip(words in proptest::collection::vec(any::<u64>(), 0..200), w in 1u32..=64) {
            let mut out = vec![0u8; packed_len(words.len(), w)];
            switch_and_pack(&words, w, &mut out);
            let mut back = vec![0u64; words.len()];
            unpack_lifted(&out, w, words.len(), |i, x| back[i] = x);
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
