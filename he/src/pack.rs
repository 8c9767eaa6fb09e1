//! Modulus switching and bit-packing of words.
//!
//! Switching a word `x` from `2^64` to `2^w` keeps `round(x / 2^(64−w)) mod 2^w`; lifting
//! shifts it back up. Packed words form a little-endian bit stream, least significant bit
//! first. Widths that are multiples of 8 take a byte-copy fast path.

/// `round(x / 2^(64−w)) mod 2^w` for `1 <= w <= 64`, ties to even.
///
/// Ties to even keep the rounding error centred (a word of an encryption hits an exact tie
/// with probability `2^-(64−w)`; a sum of lifted words is on the grid and loses nothing).
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

/// Packs words that are already multiples of `2^(64−w)` (a sum of lifted uploads): the
/// same as [`switch_and_pack`], which rounds nothing away for them.
pub(crate) fn pack_exact(words: &[u64], w: u32, out: &mut [u8]) {
    switch_and_pack(words, w, out)
}

/// Rounds `words` to `w` bits and packs them into `out` (exactly `packed_len` bytes).
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
/// it to `out` (wrapping).
pub(crate) fn unpack_lift_add(input: &[u8], w: u32, out: &mut [u64]) {
    unpack_lift_add_many(&[input], w, out)
}

/// [`unpack_lift_add`] for several inputs at once. Each input starts at the word that goes to
/// `out[0]` and may extend beyond `out` (the look-ahead lets more words take the fast path).
/// The sum of a group of 8 words stays in registers while every input is added to it.
pub(crate) fn unpack_lift_add_many(inputs: &[&[u8]], w: u32, out: &mut [u64]) {
    debug_assert!(inputs.iter().all(|i| i.len() >= packed_len(out.len(), w)));
    let shift = 64 - w;
    if w == 64 {
        for input in inputs {
            for (o, c) in out.iter_mut().zip(input.chunks_exact(8)) {
                *o = o.wrapping_add(load_u64(c, 0));
            }
        }
        return;
    }
    let done = dispatch(w, inputs, out);
    let mask = (1u64 << w) - 1;
    for input in inputs {
        for (i, o) in out.iter_mut().enumerate().skip(done) {
            let bit = i * w as usize;
            let v = ((load_u128_padded(input, bit >> 3) >> (bit & 7)) as u64) & mask;
            *o = o.wrapping_add(v << shift);
        }
    }
}

/// The constant-width fast path: groups of 8 words are `W` bytes, so with `W` a constant the
/// bit offsets inside a group are constants and the loop compiles to straight-line loads,
/// shifts and adds. Covers the groups with 7 bytes of look-ahead in every input; returns the
/// number of words done.
#[inline(always)]
fn fold_groups<const W: usize>(inputs: &[&[u8]], out: &mut [u64]) -> usize {
    let shift = 64 - W;
    let shortest = inputs.iter().map(|i| i.len()).min().unwrap_or(0);
    let groups = out.len() / 8;
    let fast = if shortest >= W + 7 { ((shortest - W - 7) / W + 1).min(groups) } else { 0 };
    for (g, o) in out.chunks_exact_mut(8).take(fast).enumerate() {
        let mut acc = [0u64; 8];
        acc.copy_from_slice(o);
        for input in inputs {
            let chunk = &input[g * W..g * W + W + 7];
            for (i, a) in acc.iter_mut().enumerate() {
                let bit = i * W;
                // Shifting left by 64 − W drops the bits above the word: no mask needed.
                let v = (load_u64(chunk, bit >> 3) >> (bit & 7)) << shift;
                *a = a.wrapping_add(v);
            }
        }
        o.copy_from_slice(&acc);
    }
    fast * 8
}

macro_rules! dispatch_widths {
    ($w:expr, $inputs:expr, $out:expr; $($n:literal)*) => {
        match $w {
            $($n => fold_groups::<$n>($inputs, $out),)*
            _ => 0,
        }
    };
}

fn dispatch(w: u32, inputs: &[&[u8]], out: &mut [u64]) -> usize {
    dispatch_widths!(w, inputs, out;
        1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32
        33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn unpack_adds(words in proptest::collection::vec(any::<u64>(), 1..100), w in 1u32..=64, base in any::<u64>()) {
            let mut packed = vec![0u8; packed_len(words.len(), w)];
            switch_and_pack(&words, w, &mut packed);
            let mut acc = vec![base; words.len()];
            unpack_lift_add(&packed, w, &mut acc);
            for (x, a) in words.iter().zip(&acc) {
                prop_assert_eq!(*a, base.wrapping_add(lift(switch(*x, w), w)));
            }
        }

        #[test]
        fn many_inputs_with_look_ahead_add_like_one_at_a_time(
            words in proptest::collection::vec(proptest::collection::vec(any::<u64>(), 40), 1..5),
            w in 1u32..=64, take in 0usize..40,
        ) {
            let packed: Vec<Vec<u8>> = words.iter().map(|ws| {
                let mut p = vec![0u8; packed_len(ws.len(), w)];
                switch_and_pack(ws, w, &mut p);
                p
            }).collect();
            let refs: Vec<&[u8]> = packed.iter().map(|p| p.as_slice()).collect();
            let mut many = vec![7u64; take];
            unpack_lift_add_many(&refs, w, &mut many);
            let mut one = vec![7u64; take];
            for p in &refs {
                unpack_lift_add(p, w, &mut one);
            }
            prop_assert_eq!(many, one);
        }

        #[test]
        fn pack_unpack_round_trip(words in proptest::collection::vec(any::<u64>(), 0..200), w in 1u32..=64) {
            let mut out = vec![0u8; packed_len(words.len(), w)];
            switch_and_pack(&words, w, &mut out);
            let mut back = vec![0u64; words.len()];
            unpack_lift_add(&out, w, &mut back);
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
