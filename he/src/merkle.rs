//! Verification spans and the **upload root**: a Merkle tree over an upload's payload, one
//! leaf per block of `N` slots (`V = 1` block, fixed by the wire format and independent of
//! how an aggregator splits its fold), so that a verifier can check a few sampled spans of
//! every member's upload against the root the member signed, instead of fetching every upload
//! whole (`docs/wire-format.md`, "Verification spans and the upload root").
//!
//! The tree is RFC 9162's (Certificate Transparency v2, §2.1): a leaf hashes `0x00 ‖ span`,
//! an inner node `0x01 ‖ left ‖ right`, and a tree of `n > 1` leaves splits at the largest
//! power of two below `n`. The **root** binds the tree to the ciphertext's header and its
//! number of spans: `SHA-256("cryptflow upload root v1\0" ‖ header ‖ u64 spans ‖ tree hash)`.
//!
//! Sampling `s` of `n` spans without replacement detects a single tampered span with
//! probability `s/n` ([`detection_probability`]), at least the `1 − (1 − 1/n)^s` of sampling
//! with replacement: a deterrent, not a proof — only recomputing every span is.
//!
//! ```
//! use cryptflow_he::merkle::{self, RootHasher};
//! use cryptflow_he::planner::{plan, PlanRequest, Weighting};
//! use cryptflow_he::*;
//!
//! let params = ParameterSet::default_128(); // N = 2048: 5,000 values are 3 spans
//! let p = plan(&params, &PlanRequest { max_clients: 2, clip_bound: 1.0, max_abs_error: 1e-3,
//!     weighting: Weighting::Uniform, dp: None }).unwrap();
//! let setup = RoundSetup::try_new(p, MaskSeed::generate().unwrap(), 5000).unwrap();
//! assert_eq!(setup.blocks(), 3);
//! let key = ClientKey::generate(&params).unwrap();
//! let upload = key.encryptor(&setup, None).unwrap().encrypt(&[0.5f32; 5000][..]).unwrap();
//! let bytes = upload.ciphertext.to_bytes();
//!
//! // The client hashes while streaming, in chunks of any size.
//! let mut hasher = RootHasher::new(&setup);
//! for chunk in bytes.chunks(100) {
//!     hasher.update(chunk);
//! }
//! let root = hasher.finish().unwrap();
//!
//! // A verifier checks span 1 with its audit path against the signed root.
//! let leaves = merkle::leaves(&setup, &bytes).unwrap();
//! let proofs = merkle::proofs(&leaves, &[1]);
//! let span = &bytes[merkle::span_range(&setup, 1)];
//! let header: [u8; 64] = bytes[..64].try_into().unwrap();
//! assert!(merkle::verify_span(&root, &header, setup.blocks(), 1, span, &proofs[0]));
//! assert!(!merkle::verify_span(&root, &header, setup.blocks(), 2, span, &proofs[0]));
//! ```

use crate::ciphertext::RoundSetup;
use crate::error::{Error, Mismatch};
use crate::wire::HEADER_LEN;
use sha2::{Digest, Sha256};
use std::ops::Range;

/// A SHA-256 output.
pub type Hash = [u8; 32];

const ROOT_LABEL: &[u8] = b"cryptflow upload root v1\0";

fn leaf_hash(span: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(span);
    h.finalize().into()
}

fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

fn bind(header: &[u8; HEADER_LEN], spans: u64, tree: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update(ROOT_LABEL);
    h.update(header);
    h.update(spans.to_le_bytes());
    h.update(tree);
    h.finalize().into()
}

/// The byte range of span `j` (one block) in a whole upload or aggregate, header included:
/// what a verifier slices out of a ciphertext, and what the aggregator serves.
pub fn span_range(setup: &RoundSetup, j: u64) -> Range<usize> {
    let r = setup.payload_range(setup.block_slots(j));
    (HEADER_LEN + r.start as usize)..(HEADER_LEN + r.end as usize)
}

/// The root of an upload (or aggregate), fed its bytes — header first, then the payload — in
/// chunks of any size, as they are produced or received. Memory: one partial span and
/// `O(log spans)` hashes.
#[derive(Clone, Debug)]
pub struct RootHasher {
    span_len: usize,
    last_len: usize,
    spans: u64,
    header: Vec<u8>,
    current: Sha256,
    in_span: usize,
    done: u64,
    /// Perfect subtrees, largest first: (leaves, hash).
    stack: Vec<(u64, Hash)>,
    /// Every leaf, when asked for ([`Self::keeping_leaves`]).
    kept: Option<Vec<Hash>>,
}

impl RootHasher {
    /// A hasher for the ciphertexts of a round.
    pub fn new(setup: &RoundSetup) -> Self {
        let spans = setup.blocks();
        let full = span_range(setup, 0).len();
        let last = span_range(setup, spans.saturating_sub(1)).len();
        Self {
            span_len: full,
            last_len: last,
            spans,
            header: Vec::with_capacity(HEADER_LEN),
            current: Sha256::new_with_prefix([0u8]),
            in_span: 0,
            done: 0,
            stack: Vec::new(),
            kept: None,
        }
    }

    /// Also keeps every leaf hash (32 bytes per span), for [`Self::finish_with_leaves`]: what
    /// a server needs to answer for sampled spans ([`proofs`]).
    pub fn keeping_leaves(mut self) -> Self {
        self.kept = Some(Vec::with_capacity(self.spans as usize));
        self
    }

    fn expected(&self) -> usize {
        if self.done + 1 == self.spans {
            self.last_len
        } else {
            self.span_len
        }
    }

    /// Feeds the next bytes. Bytes beyond the round's length are ignored (the caller refuses
    /// a ciphertext of the wrong length; [`Self::finish`] then fails).
    pub fn update(&mut self, mut bytes: &[u8]) {
        if self.header.len() < HEADER_LEN {
            let take = (HEADER_LEN - self.header.len()).min(bytes.len());
            self.header.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
        }
        while !bytes.is_empty() && self.done < self.spans {
            let take = (self.expected() - self.in_span).min(bytes.len());
            self.current.update(&bytes[..take]);
            self.in_span += take;
            bytes = &bytes[take..];
            if self.in_span == self.expected() {
                let leaf: Hash =
                    std::mem::replace(&mut self.current, Sha256::new_with_prefix([0u8]))
                        .finalize()
                        .into();
                self.in_span = 0;
                self.done += 1;
                if let Some(kept) = &mut self.kept {
                    kept.push(leaf);
                }
                self.push(leaf);
            }
        }
    }

    fn push(&mut self, leaf: Hash) {
        let mut item = (1u64, leaf);
        while let Some(&(size, hash)) = self.stack.last() {
            if size != item.0 {
                break;
            }
            self.stack.pop();
            item = (size * 2, node_hash(&hash, &item.1));
        }
        self.stack.push(item);
    }

    /// The root and the leaves kept ([`Self::keeping_leaves`]; empty otherwise).
    pub fn finish_with_leaves(mut self) -> Result<(Hash, Vec<Hash>), Error> {
        let kept = self.kept.take().unwrap_or_default();
        Ok((self.finish()?, kept))
    }

    /// The root; an error if fewer bytes than a whole ciphertext of the round were fed.
    pub fn finish(self) -> Result<Hash, Error> {
        if self.done != self.spans || self.header.len() != HEADER_LEN {
            // Expected and received bytes (the last span may be short).
            let full = |spans: u64| {
                if spans == self.spans && spans > 0 {
                    (spans as usize - 1) * self.span_len + self.last_len
                } else {
                    spans as usize * self.span_len
                }
            };
            return Err(Mismatch::Length {
                left: HEADER_LEN + full(self.spans),
                right: self.header.len() + full(self.done) + self.in_span,
            }
            .into());
        }
        // RFC 9162's split at the largest power of two below n: the stack holds the perfect
        // subtrees of n's binary expansion, largest first; fold them from the right.
        let mut it = self.stack.iter().rev();
        let mut acc = it.next().map(|e| e.1).ok_or(Error::Internal("a round without spans"))?;
        for (_, left) in it {
            acc = node_hash(left, &acc);
        }
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&self.header);
        Ok(bind(&header, self.spans, &acc))
    }
}

fn whole(setup: &RoundSetup, ciphertext: &[u8]) -> Result<(), Error> {
    if ciphertext.len() as u64 != setup.upload_len() {
        return Err(Mismatch::Length {
            left: setup.upload_len() as usize,
            right: ciphertext.len(),
        }
        .into());
    }
    Ok(())
}

/// The root of a whole ciphertext held in memory (see [`RootHasher`]).
pub fn root(setup: &RoundSetup, ciphertext: &[u8]) -> Result<Hash, Error> {
    whole(setup, ciphertext)?;
    let mut h = RootHasher::new(setup);
    h.update(ciphertext);
    h.finish()
}

/// The leaf hashes of a whole ciphertext, one per span (for [`proofs`]).
pub fn leaves(setup: &RoundSetup, ciphertext: &[u8]) -> Result<Vec<Hash>, Error> {
    whole(setup, ciphertext)?;
    Ok((0..setup.blocks()).map(|j| leaf_hash(&ciphertext[span_range(setup, j)])).collect())
}

fn split(n: usize) -> usize {
    // The largest power of two strictly below n (n ≥ 2).
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// RFC 9162 audit paths for the leaves at `at` (each `< leaves.len()`), in the order asked,
/// computed in one pass over the tree: `O(leaves)` hashes however many paths.
pub fn proofs(leaves: &[Hash], at: &[u64]) -> Vec<Vec<Hash>> {
    let mut wanted: Vec<(usize, usize)> = at
        .iter()
        .enumerate()
        .filter(|(_, &j)| (j as usize) < leaves.len())
        .map(|(i, &j)| (j as usize, i))
        .collect();
    wanted.sort_unstable();
    let mut paths = vec![Vec::new(); at.len()];
    if !leaves.is_empty() {
        subtree(leaves, 0, &wanted, &mut paths);
    }
    paths
}

/// The hash of `leaves` (starting at leaf `offset`), appending siblings to the paths of the
/// `wanted` leaves (sorted `(leaf, slot)` pairs inside this subtree).
fn subtree(
    leaves: &[Hash],
    offset: usize,
    wanted: &[(usize, usize)],
    paths: &mut [Vec<Hash>],
) -> Hash {
    if leaves.len() == 1 {
        return leaves[0];
    }
    let k = split(leaves.len());
    let cut = wanted.partition_point(|&(j, _)| j < offset + k);
    let (left_wanted, right_wanted) = wanted.split_at(cut);
    let left = subtree(&leaves[..k], offset, left_wanted, paths);
    let right = subtree(&leaves[k..], offset + k, right_wanted, paths);
    for &(_, slot) in left_wanted {
        paths[slot].push(right);
    }
    for &(_, slot) in right_wanted {
        paths[slot].push(left);
    }
    node_hash(&left, &right)
}

/// Whether `span` is span `j` of the ciphertext with this `root`, `header` and number of
/// `spans`, by its audit path (RFC 9162 §2.1.3.2).
pub fn verify_span(
    root: &Hash,
    header: &[u8; HEADER_LEN],
    spans: u64,
    j: u64,
    span: &[u8],
    path: &[Hash],
) -> bool {
    if j >= spans {
        return false;
    }
    let (mut f, mut s) = (j, spans - 1);
    let mut r = leaf_hash(span);
    for p in path {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && bind(header, spans, &r) == *root
}

/// `s` distinct span indices below `spans` (all of them if `s ≥ spans`), by Floyd's algorithm;
/// `below(m)` must return a uniform integer in `0..m` from randomness the aggregator cannot
/// predict (a verifier's OS generator, drawn after the roots were committed).
pub fn sample_spans(spans: u64, s: u64, mut below: impl FnMut(u64) -> u64) -> Vec<u64> {
    if s >= spans {
        return (0..spans).collect();
    }
    let mut chosen = std::collections::BTreeSet::new();
    for m in (spans - s)..spans {
        let t = below(m + 1);
        if !chosen.insert(t) {
            chosen.insert(m);
        }
    }
    chosen.into_iter().collect()
}

/// The probability that sampling `s` of `spans` spans without replacement includes a given
/// tampered span: `min(s, spans)/spans` — the worst case, one tampered span.
pub fn detection_probability(spans: u64, s: u64) -> f64 {
    if spans == 0 {
        return 1.0;
    }
    s.min(spans) as f64 / spans as f64
}

/// Whether span `j` of the aggregate is the sum of the same span of the members' uploads
/// (each given as its span's bytes).
pub fn span_sums_to(
    setup: &RoundSetup,
    j: u64,
    members: &[&[u8]],
    aggregate_span: &[u8],
) -> Result<bool, Error> {
    let mut sum = crate::RunningSum::zero(setup, setup.block_slots(j))?;
    sum.add_payloads(members)?;
    Ok(sum.pack() == aggregate_span)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mth(leaves: &[Hash]) -> Hash {
        if leaves.len() == 1 {
            return leaves[0];
        }
        let k = split(leaves.len());
        node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
    }

    #[test]
    fn streaming_matches_the_recursive_definition_and_every_path_verifies() {
        for n in 1..40usize {
            let leaves: Vec<Hash> = (0..n).map(|i| leaf_hash(&[i as u8; 3])).collect();
            let mut h = RootHasher {
                span_len: 3,
                last_len: 3,
                spans: n as u64,
                header: vec![7; HEADER_LEN],
                current: Sha256::new_with_prefix([0u8]),
                in_span: 0,
                done: 0,
                stack: Vec::new(),
                kept: None,
            };
            for i in 0..n {
                h.update(&[i as u8; 3]);
            }
            let header = [7u8; HEADER_LEN];
            let root = h.finish().unwrap();
            assert_eq!(root, bind(&header, n as u64, &mth(&leaves)), "n = {n}");
            let all: Vec<u64> = (0..n as u64).rev().collect();
            let paths = proofs(&leaves, &all);
            for (slot, &j) in all.iter().enumerate() {
                let span = [j as u8; 3];
                assert!(verify_span(&root, &header, n as u64, j, &span, &paths[slot]), "{n} {j}");
                assert!(!verify_span(&root, &header, n as u64, j, &[0xee; 3], &paths[slot]));
                if n > 1 {
                    let other = (j + 1) % n as u64;
                    assert!(!verify_span(&root, &header, n as u64, other, &span, &paths[slot]));
                    let mut bent = paths[slot].clone();
                    bent[0][0] ^= 1;
                    assert!(!verify_span(&root, &header, n as u64, j, &span, &bent));
                }
                assert!(!verify_span(&root, &[8; HEADER_LEN], n as u64, j, &span, &paths[slot]));
            }
        }
    }

    #[test]
    fn sampling_is_distinct_and_uniform_enough() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut below = |m: u64| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) % m
        };
        let mut hits = [0u32; 10];
        for _ in 0..10_000 {
            let s = sample_spans(10, 3, &mut below);
            assert_eq!(s.len(), 3);
            assert!(s.windows(2).all(|w| w[0] < w[1]));
            for j in s {
                hits[j as usize] += 1;
            }
        }
        // Each index is drawn with probability 3/10: 3,000 ± 5σ (σ ≈ 46).
        assert!(hits.iter().all(|&h| (2770..3230).contains(&h)), "{hits:?}");
        assert_eq!(sample_spans(4, 9, &mut below), vec![0, 1, 2, 3]);
        assert_eq!(detection_probability(16, 4), 0.25);
    }
}
