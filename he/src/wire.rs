//! The binary wire format, version 2, specified in `docs/wire-format.md`.
//!
//! One interface, [`Wire`], for every object: uploads and aggregates
//! ([`PackedCiphertext`]), key shares ([`KeyShare`]) and key-manager releases ([`Release`]).
//! Decoders treat their input as hostile: they check magic, version, kind, parameter set,
//! every field's domain, the configured [`DecodeLimits`], and that the total length is exactly
//! what the header implies — all before allocating anything sized by the input.

use crate::ciphertext::{CiphertextHeader, CiphertextKind, PackedCiphertext};
use crate::encoding::MAX_VALUES;
use crate::error::{DecodeError, Error};
use crate::params::{ParameterSet, ParameterSetId, TransportBits};
use crate::random::MaskSeed;
use crate::sharing::{KeyShare, Release, ShareIndex, SHARE_PRIME};

/// The four magic bytes that open every object.
pub const MAGIC: [u8; 4] = *b"CFHE";
/// The format version this build writes and reads.
pub const VERSION: u16 = 3;
/// Length of a ciphertext header.
pub const HEADER_LEN: usize = 64;
/// Length of a key-share or release header.
pub const SHARE_HEADER_LEN: usize = 16;

/// The object kinds of the format.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ObjectKind {
    /// One client's packed bodies.
    Upload = 1,
    /// The packed sum of a contributor set's uploads.
    Aggregate = 2,
    /// One node's Shamir share of one client key.
    KeyShare = 3,
    /// One node's sum of shares for a contributor set.
    Release = 4,
}

impl ObjectKind {
    fn name(self) -> &'static str {
        match self {
            Self::Upload => "upload",
            Self::Aggregate => "aggregate",
            Self::KeyShare => "key share",
            Self::Release => "release",
        }
    }

    fn of(byte: u8) -> Result<Self, DecodeError> {
        Ok(match byte {
            1 => Self::Upload,
            2 => Self::Aggregate,
            3 => Self::KeyShare,
            4 => Self::Release,
            other => return Err(invalid("kind", format!("unknown object kind {other}"))),
        })
    }
}

/// Limits a decoder enforces on declared sizes, on top of the exact-length check.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest number of slots a ciphertext may declare.
    pub max_slots: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self { max_slots: MAX_VALUES + crate::planner::CLIPPING_SLOTS + 1 }
    }
}

/// Encoding to and decoding from the wire format.
///
/// ```
/// use cryptflow_he::sharing::{CommitteeShape, KeyShare};
/// use cryptflow_he::{ClientKey, ParameterSet, Wire};
/// let key = ClientKey::generate(&ParameterSet::default_128()).unwrap();
/// let share = key.share(CommitteeShape::SINGLE).unwrap().remove(0);
/// let bytes = share.to_bytes();
/// assert_eq!(bytes.len(), 16 + 8 * 2048);
/// assert_eq!(KeyShare::from_bytes(&bytes).unwrap(), share);
/// assert!(KeyShare::from_bytes(&bytes[..100]).is_err());
/// ```
pub trait Wire: Sized {
    /// Appends the encoding to `out` (for secrets, pass a zeroizing buffer).
    fn encode_into(&self, out: &mut Vec<u8>);

    /// The encoding as a new vector.
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Decodes with explicit limits.
    fn from_bytes_with_limits(bytes: &[u8], limits: &DecodeLimits) -> Result<Self, Error>;

    /// Decodes with the default limits.
    fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        Self::from_bytes_with_limits(bytes, &DecodeLimits::default())
    }

    /// Decodes from an owned buffer; objects whose payload stays bytes keep the buffer
    /// instead of copying it.
    fn from_vec_with_limits(bytes: Vec<u8>, limits: &DecodeLimits) -> Result<Self, Error> {
        Self::from_bytes_with_limits(&bytes, limits)
    }
}

/// The 64 header bytes of a ciphertext.
pub(crate) fn header_bytes(h: &CiphertextHeader) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.push(match h.kind {
        CiphertextKind::Upload => ObjectKind::Upload as u8,
        CiphertextKind::Aggregate => ObjectKind::Aggregate as u8,
    });
    out.push(0);
    out.extend_from_slice(&h.params.0.to_le_bytes());
    out.push(h.transport.get() as u8);
    out.push(0);
    out.extend_from_slice(&h.contributors.to_le_bytes());
    out.extend_from_slice(&h.slots.to_le_bytes());
    out.extend_from_slice(&h.seed.0);
    out.extend_from_slice(&h.plan_tag);
    out.extend_from_slice(&[0u8; 8]);
    out
}

/// Reads and checks a ciphertext header (the first [`HEADER_LEN`] bytes) without the payload:
/// what a receiver checks before reading the rest of an upload.
///
/// ```
/// use cryptflow_he::wire::{read_header, HEADER_LEN};
/// assert!(read_header(&[0u8; HEADER_LEN], &Default::default()).is_err());
/// ```
pub fn read_header(bytes: &[u8], limits: &DecodeLimits) -> Result<CiphertextHeader, Error> {
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::Truncated { needed: HEADER_LEN, got: bytes.len() }.into());
    }
    let mut r = Reader::new(&bytes[..HEADER_LEN]);
    check_magic_version(&mut r)?;
    let kind = match ObjectKind::of(r.u8()?)? {
        ObjectKind::Upload => CiphertextKind::Upload,
        ObjectKind::Aggregate => CiphertextKind::Aggregate,
        other => {
            return Err(DecodeError::WrongKind {
                expected: "upload or aggregate",
                found: other as u8,
            }
            .into())
        }
    };
    reserved(&mut r, 1)?;
    let params = ParameterSetId(r.u16()?);
    ParameterSet::by_id(params)
        .map_err(|_| invalid("parameter_set", format!("unknown id {}", params.0)))?;
    let w = r.u8()?;
    let transport = TransportBits::try_new(w)
        .map_err(|_| invalid("transport_bits", format!("{w} is not in [1, 64]")))?;
    reserved(&mut r, 1)?;
    let contributors = r.u32()?;
    let slots = r.u64()?;
    if slots == 0 {
        return Err(invalid("slot_count", "must be at least 1".into()).into());
    }
    if slots > limits.max_slots {
        return Err(DecodeError::LimitExceeded {
            field: "slot_count",
            value: slots,
            limit: limits.max_slots,
        }
        .into());
    }
    match kind {
        CiphertextKind::Upload if contributors != 1 => {
            return Err(invalid("contributors", "an upload has exactly 1".into()).into())
        }
        CiphertextKind::Aggregate if contributors == 0 => {
            return Err(invalid("contributors", "an aggregate has at least 1".into()).into())
        }
        _ => {}
    }
    let seed = MaskSeed(r.array()?);
    let plan_tag = r.array()?;
    reserved(&mut r, 8)?;
    Ok(CiphertextHeader { kind, params, transport, contributors, slots, seed, plan_tag })
}

/// Exact serialised size of a ciphertext with this header.
pub fn ciphertext_len(header: &CiphertextHeader) -> Option<u64> {
    header
        .slots
        .checked_mul(header.transport.get() as u64)?
        .div_ceil(8)
        .checked_add(HEADER_LEN as u64)
}

fn check_payload(header: &CiphertextHeader, bytes: &[u8]) -> Result<(), Error> {
    let expected = ciphertext_len(header);
    check_exact_len(expected, bytes.len())?;
    // Canonical form: the padding bits after the last word are zero.
    let used = ((header.slots * header.transport.get() as u64) % 8) as u32;
    if used != 0 && bytes.last().is_some_and(|&b| b >> used != 0) {
        return Err(
            invalid("payload", "padding bits after the last word must be zero".into()).into()
        );
    }
    Ok(())
}

impl Wire for PackedCiphertext {
    fn encode_into(&self, out: &mut Vec<u8>) {
        out.reserve(HEADER_LEN + self.payload.len());
        out.extend_from_slice(&header_bytes(&self.header));
        out.extend_from_slice(&self.payload);
    }

    fn from_bytes_with_limits(bytes: &[u8], limits: &DecodeLimits) -> Result<Self, Error> {
        let header = read_header(bytes, limits)?;
        check_payload(&header, bytes)?;
        Ok(Self { header, payload: bytes[HEADER_LEN..].to_vec() })
    }

    fn from_vec_with_limits(mut bytes: Vec<u8>, limits: &DecodeLimits) -> Result<Self, Error> {
        let header = read_header(&bytes, limits)?;
        check_payload(&header, &bytes)?;
        bytes.drain(..HEADER_LEN);
        Ok(Self { header, payload: bytes })
    }
}

macro_rules! share_wire {
    ($t:ident, $kind:expr) => {
        impl Wire for $t {
            fn encode_into(&self, out: &mut Vec<u8>) {
                out.reserve(SHARE_HEADER_LEN + 8 * self.values.len());
                out.extend_from_slice(&MAGIC);
                out.extend_from_slice(&VERSION.to_le_bytes());
                out.push($kind as u8);
                out.push(self.index.get());
                out.extend_from_slice(&(self.values.len() as u32).to_le_bytes());
                out.extend_from_slice(&[0u8; 4]);
                for v in &self.values {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }

            fn from_bytes_with_limits(bytes: &[u8], _limits: &DecodeLimits) -> Result<Self, Error> {
                let (index, count) = read_share_header(bytes, $kind)?;
                let values = Reader::new(&bytes[SHARE_HEADER_LEN..]).u64s(count)?;
                if let Some(pos) = values.iter().position(|&v| v >= SHARE_PRIME) {
                    return Err(invalid(
                        "values",
                        format!("element {pos} is not below p = 2^61 − 1"),
                    )
                    .into());
                }
                Ok(Self { index, values })
            }
        }
    };
}

share_wire!(KeyShare, ObjectKind::KeyShare);
share_wire!(Release, ObjectKind::Release);

/// Largest coefficient count of a share (the largest ring degree).
const MAX_SHARE_VALUES: u32 = 1 << 15;

fn read_share_header(bytes: &[u8], kind: ObjectKind) -> Result<(ShareIndex, usize), Error> {
    if bytes.len() < SHARE_HEADER_LEN {
        return Err(DecodeError::Truncated { needed: SHARE_HEADER_LEN, got: bytes.len() }.into());
    }
    let mut r = Reader::new(&bytes[..SHARE_HEADER_LEN]);
    check_magic_version(&mut r)?;
    let found = ObjectKind::of(r.u8()?)?;
    if found != kind {
        return Err(DecodeError::WrongKind { expected: kind.name(), found: found as u8 }.into());
    }
    let x = r.u8()?;
    let index = ShareIndex::try_new(x)
        .map_err(|_| invalid("share_index", format!("{x} is not in [1, 16]")))?;
    let count = r.u32()?;
    if count == 0 || count > MAX_SHARE_VALUES || !count.is_power_of_two() {
        return Err(invalid("count", format!("{count} is not a power of two in [1, 2^15]")).into());
    }
    reserved(&mut r, 4)?;
    check_exact_len(Some(SHARE_HEADER_LEN as u64 + 8 * count as u64), bytes.len())?;
    Ok((index, count as usize))
}

fn check_magic_version(r: &mut Reader<'_>) -> Result<(), DecodeError> {
    if r.take(4)? != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let version = r.u16()?;
    if version != VERSION {
        return Err(DecodeError::UnsupportedVersion { found: version, supported: VERSION });
    }
    Ok(())
}

fn reserved(r: &mut Reader<'_>, n: usize) -> Result<(), DecodeError> {
    if r.take(n)?.iter().any(|&b| b != 0) {
        return Err(invalid("reserved", "must be zero".into()));
    }
    Ok(())
}

fn invalid(field: &'static str, reason: String) -> DecodeError {
    DecodeError::InvalidField { field, reason }
}

fn check_exact_len(expected: Option<u64>, got: usize) -> Result<(), DecodeError> {
    match expected {
        Some(e) if e == got as u64 => Ok(()),
        Some(e) => Err(DecodeError::LengthMismatch { expected: e, got }),
        None => Err(invalid("slot_count", "the declared size overflows".into())),
    }
}

/// A bounds-checked little-endian cursor.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(DecodeError::Truncated {
                needed: self.pos.saturating_add(n),
                got: self.bytes.len(),
            });
        };
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn array<const K: usize>(&mut self) -> Result<[u8; K], DecodeError> {
        let mut a = [0u8; K];
        a.copy_from_slice(self.take(K)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    /// `count` words; the caller has checked the length, so this allocates at most what the
    /// input holds.
    fn u64s(&mut self, count: usize) -> Result<Vec<u64>, DecodeError> {
        let raw = self.take(
            count
                .checked_mul(8)
                .ok_or(DecodeError::Truncated { needed: usize::MAX, got: self.bytes.len() })?,
        )?;
        Ok(raw
            .chunks_exact(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                u64::from_le_bytes(b)
            })
            .collect())
    }
}
