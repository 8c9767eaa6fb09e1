//! What a round's parties agree on ([`RoundSetup`]), the packed ciphertexts they exchange
//! ([`PackedCiphertext`]: an upload or the aggregate), and the aggregator's running sum
//! ([`RunningSum`]).
//!
//! An update of `d` values occupies `slots` slots (`d`, the two clipping slots, and the count
//! in `samples` rounds), cut into blocks of `N`; block `j` holds slots `j·N ..`, the last one
//! possibly partial.
//! Slot `t` of block `j` of client `i` carries the body word `B_ij[t] = (A_j·k_i)[t] + e + Δ·m`
//! — with the mask `A_j` expanded from the round's seed, `(A_j, B_ij)` is a GLWE ciphertext of
//! dimension 1 under `k_i` in TFHE-rs's convention — rounded from `2^64` to `2^w` and
//! bit-packed. Because `N·w` is a multiple of 8, every block starts on a byte.
//!
//! The aggregator lifts each upload back to `2^64` (a shift) and adds, unweighted. Every lifted
//! word is a multiple of `2^(64−w)`, so the sum is too, and the aggregate packs back into `w`
//! bits exactly: it is as small as one upload.

use crate::error::{Error, InputError, Mismatch};
use crate::pack;
use crate::params::{ParameterSet, TransportBits};
use crate::planner::Plan;
use crate::random::MaskSeed;
use rayon::prelude::*;
use std::ops::Range;

/// Everything the parties of a round agree on: the plan, the mask seed and the number of
/// model values. Made with [`RoundSetup::try_new`]; one that exists is consistent.
///
/// ```
/// use cryptflow_he::planner::{plan, PlanRequest, Weighting};
/// use cryptflow_he::{MaskSeed, ParameterSet, RoundSetup};
/// let p = plan(&ParameterSet::default_128(), &PlanRequest { max_clients: 8, clip_bound: 1.0,
///     max_abs_error: 1e-6, weighting: Weighting::Uniform, dp: None }).unwrap();
/// let setup = RoundSetup::try_new(p, MaskSeed::generate().unwrap(), 1_000_000).unwrap();
/// assert_eq!(setup.blocks(), 489); // ⌈10^6 / 2048⌉
/// // 28 bits per value and per clipping slot, a 64-byte header:
/// assert_eq!(setup.upload_len(), 64 + (1_000_000 + 2) * 28 / 8);
/// ```
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct RoundSetup {
    params: ParameterSet,
    plan: Plan,
    seed: MaskSeed,
    values: u64,
    slots: u64,
}

impl RoundSetup {
    /// Checks `1 ≤ values ≤ 2^32` and that the plan's parameter set is known.
    pub fn try_new(plan: Plan, seed: MaskSeed, values: u64) -> Result<Self, Error> {
        let params = ParameterSet::by_id(plan.params())?;
        if values == 0 {
            return Err(InputError::Empty.into());
        }
        if values > crate::MAX_VALUES {
            return Err(InputError::TooLong { len: values, limit: crate::MAX_VALUES }.into());
        }
        if let Some(dp) = plan.dp() {
            if dp.values() != values {
                return Err(InputError::Length { expected: dp.values(), got: values }.into());
            }
        }
        let slots = plan
            .slots(values)
            .ok_or(InputError::TooLong { len: values, limit: crate::MAX_VALUES })?;
        Ok(Self { params, plan, seed, values, slots })
    }

    /// The parameter set.
    pub fn params(&self) -> &ParameterSet {
        &self.params
    }
    /// The plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }
    /// The mask seed.
    pub fn seed(&self) -> MaskSeed {
        self.seed
    }
    /// Model values `d`.
    pub fn values(&self) -> u64 {
        self.values
    }
    /// Slots: `d`, the two [clipping slots](crate::planner::CLIPPING_SLOTS), and the count in
    /// `samples` rounds (the last slot).
    pub fn slots(&self) -> u64 {
        self.slots
    }
    /// `N`.
    pub fn ring_degree(&self) -> usize {
        self.params.ring_degree().get()
    }
    /// Blocks of `N` slots (the last may be partial).
    pub fn blocks(&self) -> u64 {
        self.slots.div_ceil(self.ring_degree() as u64)
    }
    /// `w`.
    pub fn transport(&self) -> TransportBits {
        self.plan.transport()
    }
    /// Slots of block `b`.
    pub fn block_slots(&self, b: u64) -> Range<u64> {
        let n = self.ring_degree() as u64;
        let start = b.saturating_mul(n).min(self.slots);
        start..(start.saturating_add(n)).min(self.slots)
    }
    /// Packed bytes of the payload of `slots` (a range starting on a block).
    pub fn payload_range(&self, slots: Range<u64>) -> Range<u64> {
        let w = self.transport().get() as u64;
        (slots.start * w / 8)..(slots.end * w).div_ceil(8)
    }
    /// Payload bytes of an upload or the aggregate: `⌈slots·w/8⌉`.
    pub fn payload_len(&self) -> u64 {
        (self.slots * self.transport().get() as u64).div_ceil(8)
    }
    /// Serialised size of an upload or the aggregate, header included: what a receiver
    /// expects exactly, before reading a byte of it.
    pub fn upload_len(&self) -> u64 {
        crate::wire::HEADER_LEN as u64 + self.payload_len()
    }
    /// The first 16 bytes of the plan's digest, as ciphertexts carry it.
    pub fn plan_tag(&self) -> [u8; 16] {
        let d = self.plan.digest();
        let mut out = [0u8; 16];
        out.copy_from_slice(&d[..16]);
        out
    }
    /// The header of an upload (`contributors = 1`) or an aggregate of `contributors`.
    pub fn header(&self, kind: CiphertextKind, contributors: u32) -> CiphertextHeader {
        CiphertextHeader {
            kind,
            params: self.params.id(),
            transport: self.transport(),
            contributors,
            slots: self.slots,
            seed: self.seed,
            plan_tag: self.plan_tag(),
        }
    }
}

/// Upload or aggregate.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum CiphertextKind {
    /// One client's encrypted update (`contributors = 1`).
    Upload,
    /// The unweighted sum of a contributor set's uploads.
    Aggregate,
}

/// The metadata in front of every packed ciphertext (`docs/wire-format.md`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct CiphertextHeader {
    pub(crate) kind: CiphertextKind,
    pub(crate) params: crate::ParameterSetId,
    pub(crate) transport: TransportBits,
    pub(crate) contributors: u32,
    pub(crate) slots: u64,
    pub(crate) seed: MaskSeed,
    pub(crate) plan_tag: [u8; 16],
}

impl CiphertextHeader {
    /// Upload or aggregate.
    pub fn kind(&self) -> CiphertextKind {
        self.kind
    }
    /// Number of uploads summed (1 for an upload).
    pub fn contributors(&self) -> u32 {
        self.contributors
    }
    /// Slots.
    pub fn slots(&self) -> u64 {
        self.slots
    }
    /// `w`.
    pub fn transport(&self) -> TransportBits {
        self.transport
    }
    /// The round's mask seed.
    pub fn seed(&self) -> MaskSeed {
        self.seed
    }

    /// The header's 64 bytes (`docs/wire-format.md`), e.g. to stream an aggregate.
    pub fn to_bytes(&self) -> Vec<u8> {
        crate::wire::header_bytes(self)
    }

    /// Checks that the header belongs to `setup` (parameter set, width, slots, seed, plan)
    /// and is of `kind`; names the first field that differs.
    pub fn check_belongs(&self, setup: &RoundSetup, kind: CiphertextKind) -> Result<(), Mismatch> {
        let want = setup.header(kind, self.contributors);
        let field = if self.kind != kind {
            "kind"
        } else if self.params != want.params {
            "parameter_set"
        } else if self.transport != want.transport {
            "transport_bits"
        } else if self.slots != want.slots {
            "slot_count"
        } else if self.seed != want.seed {
            "mask_seed"
        } else if self.plan_tag != want.plan_tag {
            "plan_tag"
        } else if kind == CiphertextKind::Upload && self.contributors != 1 {
            "contributors"
        } else {
            return Ok(());
        };
        Err(Mismatch::Round { field })
    }
}

/// An upload or an aggregate: header and bit-packed body words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackedCiphertext {
    pub(crate) header: CiphertextHeader,
    pub(crate) payload: Vec<u8>,
}

impl PackedCiphertext {
    /// The header.
    pub fn header(&self) -> &CiphertextHeader {
        &self.header
    }
    /// The packed words.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
    /// An aggregate from its packed words (what [`RunningSum::pack`] writes).
    pub fn aggregate(
        setup: &RoundSetup,
        contributors: u32,
        payload: Vec<u8>,
    ) -> Result<Self, Error> {
        if payload.len() as u64 != setup.payload_len() {
            return Err(Mismatch::Length {
                left: setup.payload_len() as usize,
                right: payload.len(),
            }
            .into());
        }
        if contributors == 0 {
            return Err(InputError::Empty.into());
        }
        Ok(Self { header: setup.header(CiphertextKind::Aggregate, contributors), payload })
    }
}

/// The aggregator's running sum of uploads over a range of slots, at full width, unweighted.
/// O(range) memory whatever the number of uploads; sums over disjoint upload batches merge.
///
/// ```
/// # use cryptflow_he::planner::{plan, PlanRequest, Weighting};
/// # use cryptflow_he::*;
/// # let params = ParameterSet::default_128();
/// # let p = plan(&params, &PlanRequest { max_clients: 3, clip_bound: 1.0,
/// #     max_abs_error: 1e-6, weighting: Weighting::Uniform, dp: None }).unwrap();
/// let setup = RoundSetup::try_new(p, MaskSeed::generate().unwrap(), 5000).unwrap();
/// let keys: Vec<ClientKey> = (0..3).map(|_| ClientKey::generate(&params).unwrap()).collect();
/// let mut sum = RunningSum::zero(&setup, 0..setup.slots()).unwrap();
/// for (i, k) in keys.iter().enumerate() {
///     let x = vec![0.25 * i as f64; 5000];
///     let up = k.encryptor(&setup, None).unwrap().encrypt(&x[..]).unwrap().ciphertext;
///     sum.add_upload(&up).unwrap();
/// }
/// let aggregate = PackedCiphertext::aggregate(&setup, sum.contributors(), sum.pack()).unwrap();
/// let mean = AggregateKey::sum_of(&keys).decrypt(&setup, &aggregate).unwrap().mean::<f64>();
/// assert!(mean.iter().all(|m| (m - 0.25).abs() <= 1e-6));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct RunningSum {
    setup: RoundSetup,
    slots: Range<u64>,
    words: Vec<u64>,
    contributors: u32,
}

impl RunningSum {
    /// An empty sum over `slots`, which must start on a block and end on a block or at the
    /// last slot.
    pub fn zero(setup: &RoundSetup, slots: Range<u64>) -> Result<Self, Error> {
        let n = setup.ring_degree() as u64;
        let aligned = slots.start.is_multiple_of(n)
            && (slots.end.is_multiple_of(n) || slots.end == setup.slots())
            && slots.start < slots.end
            && slots.end <= setup.slots();
        if !aligned {
            return Err(InputError::SlotRange { start: slots.start, end: slots.end }.into());
        }
        let len = usize::try_from(slots.end - slots.start)
            .map_err(|_| InputError::TooLong { len: slots.end, limit: crate::MAX_VALUES })?;
        Ok(Self { setup: *setup, slots, words: vec![0; len], contributors: 0 })
    }

    /// The slots covered.
    pub fn slots(&self) -> Range<u64> {
        self.slots.clone()
    }
    /// Uploads summed so far.
    pub fn contributors(&self) -> u32 {
        self.contributors
    }

    /// Adds a whole upload (its header checked against the round).
    pub fn add_upload(&mut self, upload: &PackedCiphertext) -> Result<(), Error> {
        upload.header.check_belongs(&self.setup, CiphertextKind::Upload)?;
        let range = self.setup.payload_range(self.slots.clone());
        let bytes = upload
            .payload
            .get(range.start as usize..range.end as usize)
            .ok_or(Mismatch::Length { left: range.end as usize, right: upload.payload.len() })?;
        self.add_payload(bytes)
    }

    /// Adds the payload bytes of one upload that cover this sum's slots (the upload's header
    /// was checked by the caller, e.g. when it was accepted).
    pub fn add_payload(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let w = self.setup.transport().get();
        let expected = pack::packed_len(self.words.len(), w);
        if bytes.len() != expected {
            return Err(Mismatch::Length { left: expected, right: bytes.len() }.into());
        }
        self.contributors =
            self.contributors.checked_add(1).ok_or(Error::Internal("too many contributors"))?;
        // Blocks are byte-aligned: fold them in parallel, each while it sits in cache.
        let n = self.setup.ring_degree();
        let block_bytes = pack::packed_len(n, w);
        self.words.par_chunks_mut(n).enumerate().for_each(|(b, out)| {
            pack::unpack_lift_add(&bytes[b * block_bytes..], w, out);
        });
        Ok(())
    }

    /// Adds several uploads in one pass: each block of the sum takes every upload's block
    /// while it sits in cache, so the cost is one read of each input and one write of the sum.
    /// All headers are checked first; on error nothing is added.
    pub fn add_uploads(&mut self, uploads: &[&PackedCiphertext]) -> Result<(), Error> {
        let range = self.setup.payload_range(self.slots.clone());
        let mut parts = Vec::with_capacity(uploads.len());
        for u in uploads {
            u.header.check_belongs(&self.setup, CiphertextKind::Upload)?;
            parts.push(
                u.payload
                    .get(range.start as usize..range.end as usize)
                    .ok_or(Mismatch::Length { left: range.end as usize, right: u.payload.len() })?,
            );
        }
        self.add_payloads(&parts)
    }

    /// Adds the payload bytes of several uploads (each covering this sum's slots), blockwise.
    pub fn add_payloads(&mut self, parts: &[&[u8]]) -> Result<(), Error> {
        let w = self.setup.transport().get();
        let expected = pack::packed_len(self.words.len(), w);
        if let Some(bad) = parts.iter().find(|p| p.len() != expected) {
            return Err(Mismatch::Length { left: expected, right: bad.len() }.into());
        }
        let count = u32::try_from(parts.len()).map_err(|_| Error::Internal("too many uploads"))?;
        self.contributors =
            self.contributors.checked_add(count).ok_or(Error::Internal("too many contributors"))?;
        let n = self.setup.ring_degree();
        let block_bytes = pack::packed_len(n, w);
        self.words.par_chunks_mut(n).enumerate().for_each(|(b, out)| {
            // Each part from this block to its end: the look-ahead past the block lets the
            // block's last words take the fast path.
            let inputs: Vec<&[u8]> = parts.iter().map(|p| &p[b * block_bytes..]).collect();
            pack::unpack_lift_add_many(&inputs, w, out);
        });
        Ok(())
    }

    /// Adds another partial sum over the same slots (of a disjoint batch of uploads).
    pub fn merge(&mut self, other: &RunningSum) -> Result<(), Error> {
        if other.setup != self.setup || other.slots != self.slots {
            return Err(Mismatch::Round { field: "slots" }.into());
        }
        self.contributors = self
            .contributors
            .checked_add(other.contributors)
            .ok_or(Error::Internal("too many contributors"))?;
        self.words.par_chunks_mut(1 << 14).zip(other.words.par_chunks(1 << 14)).for_each(
            |(a, b)| {
                for (x, y) in a.iter_mut().zip(b) {
                    *x = x.wrapping_add(*y);
                }
            },
        );
        Ok(())
    }

    /// The sum packed back to `w` bits — exact, since every word is on the `2^(64−w)` grid.
    pub fn pack(&self) -> Vec<u8> {
        let w = self.setup.transport().get();
        let n = self.setup.ring_degree();
        let block_bytes = pack::packed_len(n, w);
        let mut out = vec![0u8; pack::packed_len(self.words.len(), w)];
        out.par_chunks_mut(block_bytes).zip(self.words.par_chunks(n)).for_each(|(o, words)| {
            pack::pack_exact(words, w, o);
        });
        out
    }

    /// The full-width words (tests).
    #[cfg(test)]
    pub(crate) fn words(&self) -> &[u64] {
        &self.words
    }
}
