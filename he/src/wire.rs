//! The binary wire format (version 1), specified in `docs/wire-format.md`.
//!
//! One interface, [`Wire`], for every object. Decoders treat their input as hostile: they
//! check magic, version, kind, parameter set, every field's domain, the configured
//! [`DecodeLimits`], and that the total length is exactly what the header implies — all
//! before allocating anything sized by the input.

use crate::ciphertext::{Ciphertext, CiphertextHeader, CompressedCiphertext};
use crate::encoding::{Encoding, MAX_VALUES};
use crate::error::{DecodeError, Error};
use crate::keys::{KeyId, PublicKey, SecretKey};
use crate::params::{BodiesPerMask, ParameterSet, ParameterSetId, TransportBits, TransportWidths};

/// The four magic bytes that open every object.
pub const MAGIC: [u8; 4] = *b"CFHE";
/// The format version this build writes and reads.
pub const VERSION: u16 = 1;
/// Length of the prefix shared by all objects (magic … key id).
pub const PREFIX_LEN: usize = 32;
/// Length of a ciphertext header (prefix included).
pub const CIPHERTEXT_HEADER_LEN: usize = 104;
/// Length of a compressed ciphertext header (prefix included).
pub const COMPRESSED_HEADER_LEN: usize = 112;

/// The object kinds of the format.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ObjectKind {
    /// A public key.
    PublicKey = 1,
    /// A secret key.
    SecretKey = 2,
    /// A ciphertext with full 64-bit words (fresh or aggregate).
    Ciphertext = 3,
    /// A modulus-switched, bit-packed ciphertext (upload or aggregate download).
    CompressedCiphertext = 4,
}

impl ObjectKind {
    fn name(self) -> &'static str {
        match self {
            Self::PublicKey => "public key",
            Self::SecretKey => "secret key",
            Self::Ciphertext => "ciphertext",
            Self::CompressedCiphertext => "compressed ciphertext",
        }
    }
}

/// Limits a decoder enforces on declared sizes, on top of the exact-length check.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest number of values a ciphertext may declare.
    pub max_values: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self { max_values: MAX_VALUES }
    }
}

/// Encoding to and decoding from the wire format.
///
/// ```
/// use cryptflow_he::{generate_keys, BodiesPerMask, ParameterSet, PublicKey, Wire};
/// let (_, pk) =
///     generate_keys(ParameterSet::default_128(), BodiesPerMask::try_new(2).unwrap()).unwrap();
/// let bytes = pk.to_bytes();
/// assert_eq!(PublicKey::from_bytes(&bytes).unwrap(), pk);
/// assert!(PublicKey::from_bytes(&bytes[..100]).is_err());
/// ```
pub trait Wire: Sized {
    /// The kind byte.
    const KIND: ObjectKind;

    /// Appends the encoding to `out` (for a secret key, pass a zeroizing buffer).
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

    /// Decodes from an owned buffer. Objects whose payload stays bytes (compressed
    /// ciphertexts) keep the buffer instead of copying it.
    fn from_vec_with_limits(bytes: Vec<u8>, limits: &DecodeLimits) -> Result<Self, Error> {
        Self::from_bytes_with_limits(&bytes, limits)
    }
}

/// What the shared prefix says.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Prefix {
    /// Object kind.
    pub kind: ObjectKind,
    /// Bodies per mask.
    pub bodies: BodiesPerMask,
    /// Parameter set.
    pub params: ParameterSetId,
    /// Key id.
    pub key_id: KeyId,
}

/// Exact serialised size of a compressed ciphertext of `value_count` values, so a receiver
/// can cap an upload before reading it. `None` if the size overflows.
///
/// ```
/// use cryptflow_he::{wire, BodiesPerMask, ParameterSet, TransportBits, TransportWidths};
/// let w = TransportWidths { mask: TransportBits::try_new(36).unwrap(),
///     body: TransportBits::try_new(31).unwrap() };
/// let len = wire::compressed_ciphertext_len(&ParameterSet::default_128(),
///     BodiesPerMask::try_new(8).unwrap(), 1 << 20, w).unwrap();
/// assert!(len as f64 / (1u64 << 20) as f64 <= 4.5);
/// ```
pub fn compressed_ciphertext_len(
    params: &ParameterSet,
    bodies: BodiesPerMask,
    value_count: u64,
    widths: TransportWidths,
) -> Option<u64> {
    if value_count == 0 || value_count > MAX_VALUES {
        return None;
    }
    let layout = crate::ciphertext::Layout {
        n: params.ring_degree().get(),
        l: bodies.get(),
        values: usize::try_from(value_count).ok()?,
    };
    (layout.packed_len(widths) as u64).checked_add(COMPRESSED_HEADER_LEN as u64)
}

/// Reads and checks the 32-byte prefix of any object without decoding the rest.
///
/// ```
/// use cryptflow_he::{generate_keys, wire::{read_prefix, ObjectKind}, BodiesPerMask,
///     ParameterSet, Wire};
/// let (_, pk) = generate_keys(ParameterSet::default_128(), BodiesPerMask::try_new(2).unwrap())
///     .unwrap();
/// let prefix = read_prefix(&pk.to_bytes()).unwrap();
/// assert_eq!((prefix.kind, prefix.key_id), (ObjectKind::PublicKey, pk.id()));
/// assert!(read_prefix(b"not a cryptflow object at all, definitely").is_err());
/// ```
pub fn read_prefix(bytes: &[u8]) -> Result<Prefix, Error> {
    let mut r = Reader::new(bytes);
    if bytes.len() < PREFIX_LEN {
        return Err(DecodeError::Truncated { needed: PREFIX_LEN, got: bytes.len() }.into());
    }
    if r.take(4)? != MAGIC {
        return Err(DecodeError::BadMagic.into());
    }
    let version = r.u16()?;
    if version != VERSION {
        return Err(DecodeError::UnsupportedVersion { found: version, supported: VERSION }.into());
    }
    let kind = match r.u8()? {
        1 => ObjectKind::PublicKey,
        2 => ObjectKind::SecretKey,
        3 => ObjectKind::Ciphertext,
        4 => ObjectKind::CompressedCiphertext,
        other => {
            return Err(invalid("kind", format!("unknown object kind {other}")));
        }
    };
    let l = r.u8()?;
    let bodies = BodiesPerMask::try_new(l)
        .map_err(|_| invalid("bodies", format!("{l} is not in [1, {}]", BodiesPerMask::MAX)))?;
    let params = ParameterSetId(r.u16()?);
    ParameterSet::by_id(params)
        .map_err(|_| invalid("parameter_set", format!("unknown id {}", params.0)))?;
    if r.take(6)?.iter().any(|&b| b != 0) {
        return Err(invalid("reserved", "must be zero".into()));
    }
    let mut key_id = [0u8; 16];
    key_id.copy_from_slice(r.take(16)?);
    Ok(Prefix { kind, bodies, params, key_id: KeyId(key_id) })
}

fn expect_kind(bytes: &[u8], kind: ObjectKind) -> Result<(Prefix, ParameterSet), Error> {
    let prefix = read_prefix(bytes)?;
    if prefix.kind != kind {
        return Err(
            DecodeError::WrongKind { expected: kind.name(), found: prefix.kind as u8 }.into()
        );
    }
    Ok((prefix, ParameterSet::by_id(prefix.params)?))
}

fn write_prefix(
    out: &mut Vec<u8>,
    kind: ObjectKind,
    bodies: BodiesPerMask,
    params: ParameterSetId,
    key_id: KeyId,
) {
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.push(kind as u8);
    out.push(bodies.get() as u8);
    out.extend_from_slice(&params.0.to_le_bytes());
    out.extend_from_slice(&[0u8; 6]);
    out.extend_from_slice(&key_id.0);
}

fn invalid(field: &'static str, reason: String) -> Error {
    DecodeError::InvalidField { field, reason }.into()
}

fn check_exact_len(expected: Option<u64>, got: usize) -> Result<(), Error> {
    match expected {
        Some(e) if e == got as u64 => Ok(()),
        Some(e) => Err(DecodeError::LengthMismatch { expected: e, got }.into()),
        None => Err(DecodeError::LengthMismatch { expected: u64::MAX, got }.into()),
    }
}

impl Wire for PublicKey {
    const KIND: ObjectKind = ObjectKind::PublicKey;

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.reserve(PREFIX_LEN + 8 * (self.mask().len() + self.body().len()));
        write_prefix(out, Self::KIND, self.bodies(), self.params().id(), self.id());
        for w in self.mask().iter().chain(self.body()) {
            out.extend_from_slice(&w.to_le_bytes());
        }
    }

    fn from_bytes_with_limits(bytes: &[u8], _limits: &DecodeLimits) -> Result<Self, Error> {
        let (prefix, params) = expect_kind(bytes, Self::KIND)?;
        let n = params.ring_degree().get();
        let words = (1 + prefix.bodies.get()) * n;
        check_exact_len(Some((PREFIX_LEN + 8 * words) as u64), bytes.len())?;
        let mut r = Reader::new(&bytes[PREFIX_LEN..]);
        let a = r.u64s(n)?;
        let b = r.u64s(prefix.bodies.get() * n)?;
        let key = PublicKey::from_parts(params, prefix.bodies, a, b)?;
        if key.id() != prefix.key_id {
            return Err(DecodeError::KeyIdMismatch.into());
        }
        Ok(key)
    }
}

impl Wire for SecretKey {
    const KIND: ObjectKind = ObjectKind::SecretKey;

    fn encode_into(&self, out: &mut Vec<u8>) {
        let s = self.secret_words();
        out.reserve(PREFIX_LEN + s.len() / 8 + 4 * s.len());
        write_prefix(out, Self::KIND, self.bodies(), self.params().id(), self.id());
        for chunk in s.chunks(8) {
            let byte =
                chunk.iter().enumerate().fold(0u8, |acc, (i, &bit)| acc | ((bit as u8) << i));
            out.push(byte);
        }
        for e in self.noise_words() {
            out.extend_from_slice(&e.to_le_bytes());
        }
    }

    fn from_bytes_with_limits(bytes: &[u8], _limits: &DecodeLimits) -> Result<Self, Error> {
        let (prefix, params) = expect_kind(bytes, Self::KIND)?;
        let count = prefix.bodies.get() * params.ring_degree().get();
        check_exact_len(Some((PREFIX_LEN + count / 8 + 4 * count) as u64), bytes.len())?;
        let mut r = Reader::new(&bytes[PREFIX_LEN..]);
        let bits = r.take(count / 8)?;
        let s: Vec<u64> = (0..count).map(|i| ((bits[i / 8] >> (i % 8)) & 1) as u64).collect();
        let bound = params.noise().bound();
        let mut noise = Vec::with_capacity(count);
        for _ in 0..count {
            let e = r.u32()? as i32;
            if (e as i64).abs() > bound {
                return Err(invalid("noise", format!("|{e}| exceeds the noise bound {bound}")));
            }
            noise.push(e);
        }
        SecretKey::from_parts(params, prefix.bodies, prefix.key_id, s, noise)
    }
}

fn write_ciphertext_header(out: &mut Vec<u8>, kind: ObjectKind, h: &CiphertextHeader) {
    write_prefix(out, kind, h.bodies, h.params, h.key_id);
    out.extend_from_slice(&h.value_count.to_le_bytes());
    out.push(h.encoding.precision_bits());
    out.push(h.encoding.delta_log());
    out.push(h.scale_exponent);
    out.push(0);
    out.extend_from_slice(&h.contributors.to_le_bytes());
    out.extend_from_slice(&h.encoding.clip_bound().to_bits().to_le_bytes());
    out.extend_from_slice(&h.encoding.max_total_weight().to_le_bytes());
    out.extend_from_slice(&h.encoding.max_weight_sq_sum().to_le_bytes());
    out.extend_from_slice(&h.total_weight.to_le_bytes());
    out.extend_from_slice(&h.weight_sq_sum.to_le_bytes());
}

fn read_ciphertext_header(
    bytes: &[u8],
    kind: ObjectKind,
    limits: &DecodeLimits,
) -> Result<(CiphertextHeader, ParameterSet), Error> {
    let (prefix, params) = expect_kind(bytes, kind)?;
    if bytes.len() < CIPHERTEXT_HEADER_LEN {
        return Err(
            DecodeError::Truncated { needed: CIPHERTEXT_HEADER_LEN, got: bytes.len() }.into()
        );
    }
    let mut r = Reader::new(&bytes[PREFIX_LEN..]);
    let value_count = r.u64()?;
    if value_count == 0 {
        return Err(invalid("value_count", "must be at least 1".into()));
    }
    let limit = limits.max_values.min(MAX_VALUES);
    if value_count > limit {
        return Err(
            DecodeError::LimitExceeded { field: "value_count", value: value_count, limit }.into()
        );
    }
    let precision_bits = r.u8()?;
    let delta_log = r.u8()?;
    let scale_exponent = r.u8()?;
    if r.u8()? != 0 {
        return Err(invalid("reserved", "must be zero".into()));
    }
    let contributors = r.u32()?;
    let clip_bound = f64::from_bits(r.u64()?);
    let max_total_weight = r.u64()?;
    let max_weight_sq_sum = r.u128()?;
    let total_weight = r.u64()?;
    let weight_sq_sum = r.u128()?;
    let encoding = Encoding::try_new(
        precision_bits,
        delta_log,
        clip_bound,
        max_total_weight,
        max_weight_sq_sum,
    )
    .map_err(|e| invalid("encoding", e.to_string()))?;
    if scale_exponent > 64 {
        return Err(invalid("scale_exponent", format!("{scale_exponent} exceeds 64")));
    }
    if contributors == 0 || total_weight == 0 || weight_sq_sum == 0 {
        return Err(invalid("contributors", "contributors and weights must be at least 1".into()));
    }
    if total_weight > max_total_weight {
        return Err(invalid("total_weight", format!("{total_weight} exceeds max_total_weight")));
    }
    if weight_sq_sum > max_weight_sq_sum {
        return Err(invalid("weight_sq_sum", format!("{weight_sq_sum} exceeds max_weight_sq_sum")));
    }
    let header = CiphertextHeader {
        params: prefix.params,
        key_id: prefix.key_id,
        bodies: prefix.bodies,
        value_count,
        encoding,
        scale_exponent,
        contributors,
        total_weight,
        weight_sq_sum,
    };
    Ok((header, params))
}

impl Wire for Ciphertext {
    const KIND: ObjectKind = ObjectKind::Ciphertext;

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.reserve(CIPHERTEXT_HEADER_LEN + 8 * self.words.len());
        write_ciphertext_header(out, Self::KIND, &self.header);
        for w in &self.words {
            out.extend_from_slice(&w.to_le_bytes());
        }
    }

    fn from_bytes_with_limits(bytes: &[u8], limits: &DecodeLimits) -> Result<Self, Error> {
        let (header, params) = read_ciphertext_header(bytes, Self::KIND, limits)?;
        let words = header.layout(params.ring_degree().get()).words() as u64;
        let expected =
            words.checked_mul(8).and_then(|b| b.checked_add(CIPHERTEXT_HEADER_LEN as u64));
        check_exact_len(expected, bytes.len())?;
        let words = Reader::new(&bytes[CIPHERTEXT_HEADER_LEN..]).u64s(words as usize)?;
        Ok(Ciphertext { header, words })
    }
}

impl Wire for CompressedCiphertext {
    const KIND: ObjectKind = ObjectKind::CompressedCiphertext;

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.reserve(COMPRESSED_HEADER_LEN + self.bytes.len());
        write_ciphertext_header(out, Self::KIND, &self.header);
        out.push(self.widths.mask.get() as u8);
        out.push(self.widths.body.get() as u8);
        out.extend_from_slice(&[0u8; 6]);
        out.extend_from_slice(&self.bytes);
    }

    fn from_bytes_with_limits(bytes: &[u8], limits: &DecodeLimits) -> Result<Self, Error> {
        let (header, widths) = read_compressed_header(bytes, limits)?;
        Ok(CompressedCiphertext { header, widths, bytes: bytes[COMPRESSED_HEADER_LEN..].to_vec() })
    }

    fn from_vec_with_limits(mut bytes: Vec<u8>, limits: &DecodeLimits) -> Result<Self, Error> {
        let (header, widths) = read_compressed_header(&bytes, limits)?;
        bytes.drain(..COMPRESSED_HEADER_LEN);
        Ok(CompressedCiphertext { header, widths, bytes })
    }
}

/// Checks everything about a compressed ciphertext, including its exact length and the
/// canonical zero padding.
fn read_compressed_header(
    bytes: &[u8],
    limits: &DecodeLimits,
) -> Result<(CiphertextHeader, TransportWidths), Error> {
    let (header, params) = read_ciphertext_header(bytes, ObjectKind::CompressedCiphertext, limits)?;
    if bytes.len() < COMPRESSED_HEADER_LEN {
        return Err(
            DecodeError::Truncated { needed: COMPRESSED_HEADER_LEN, got: bytes.len() }.into()
        );
    }
    let mut r = Reader::new(&bytes[CIPHERTEXT_HEADER_LEN..]);
    let width = |field, w: u8| {
        TransportBits::try_new(w).map_err(|_| invalid(field, format!("{w} is not in [1, 64]")))
    };
    let widths =
        TransportWidths { mask: width("mask_bits", r.u8()?)?, body: width("body_bits", r.u8()?)? };
    if r.take(6)?.iter().any(|&b| b != 0) {
        return Err(invalid("reserved", "must be zero".into()));
    }
    let layout = header.layout(params.ring_degree().get());
    let payload = layout.packed_len(widths) as u64;
    check_exact_len(payload.checked_add(COMPRESSED_HEADER_LEN as u64), bytes.len())?;
    // Canonical form: the padding bits after the last body word are zero.
    let last_bits = (layout.values % layout.values_per_block()) * widths.body.get() as usize;
    let used = (last_bits % 8) as u32;
    if used != 0 && bytes.last().is_some_and(|&b| b >> used != 0) {
        return Err(invalid("payload", "padding bits after the last word must be zero".into()));
    }
    Ok((header, widths))
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
    fn u128(&mut self) -> Result<u128, DecodeError> {
        Ok(u128::from_le_bytes(self.array()?))
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
