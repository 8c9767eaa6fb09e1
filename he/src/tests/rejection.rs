//! Every rejection path: malformed bytes, incompatible ciphertexts, budget overruns and bad
//! inputs all produce typed errors — never a panic, never a silent result.

use super::{default_keys, encoding_for, toy_keys};
use crate::error::{BudgetError, DecodeError, Error, InputError, Mismatch};
use crate::{
    Ciphertext, CompressedCiphertext, DecodeLimits, Encoding, ParameterSet, PublicKey, SecretKey,
    TransportBits, TransportWidths, Weight, Wire,
};
use ndarray::Array1;
use proptest::prelude::*;

fn widths() -> TransportWidths {
    TransportWidths {
        mask: TransportBits::try_new(36).unwrap(),
        body: TransportBits::try_new(31).unwrap(),
    }
}

fn sample_objects() -> (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) {
    let (sk, pk) = toy_keys(2, 5);
    let x = Array1::linspace(-1.0, 1.0, 150);
    let ct = pk.encrypt(&encoding_for(1), x.view()).unwrap().ciphertext;
    let cct = pk.encrypt_compressed(&encoding_for(1), x.view(), widths()).unwrap().ciphertext;
    (pk.to_bytes(), sk.to_bytes(), ct.to_bytes(), cct.to_bytes())
}

fn decode_all(bytes: &[u8]) -> [bool; 4] {
    let compressed = CompressedCiphertext::from_bytes(bytes);
    let owned =
        CompressedCiphertext::from_vec_with_limits(bytes.to_vec(), &DecodeLimits::default());
    assert_eq!(compressed, owned, "owned and borrowed decoders disagree");
    [
        PublicKey::from_bytes(bytes).is_ok(),
        SecretKey::from_bytes(bytes).is_ok(),
        Ciphertext::from_bytes(bytes).is_ok(),
        compressed.is_ok(),
    ]
}

#[test]
fn every_truncation_and_extension_is_rejected() {
    let (pk, sk, ct, cct) = sample_objects();
    for bytes in [&pk, &sk, &ct, &cct] {
        for cut in 0..bytes.len() {
            assert_eq!(decode_all(&bytes[..cut]), [false; 4], "prefix of {cut} bytes accepted");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode_all(&longer), [false; 4]);
    }
    // And each decodes only as its own kind.
    assert_eq!(decode_all(&pk), [true, false, false, false]);
    assert_eq!(decode_all(&sk), [false, true, false, false]);
    assert_eq!(decode_all(&ct), [false, false, true, false]);
    assert_eq!(decode_all(&cct), [false, false, false, true]);
}

fn decode_err(bytes: &[u8]) -> DecodeError {
    match Ciphertext::from_bytes(bytes).unwrap_err() {
        Error::Decode(e) => e,
        other => panic!("expected a decode error, got {other:?}"),
    }
}

#[test]
fn header_fields_are_checked() {
    let (_, _, ct, _) = sample_objects();
    let patched = |offset: usize, value: &[u8]| {
        let mut b = ct.clone();
        b[offset..offset + value.len()].copy_from_slice(value);
        b
    };
    assert_eq!(decode_err(&patched(0, b"XFHE")), DecodeError::BadMagic);
    assert!(matches!(
        decode_err(&patched(4, &[2, 0])),
        DecodeError::UnsupportedVersion { found: 2, .. }
    ));
    assert!(matches!(decode_err(&patched(6, &[1])), DecodeError::WrongKind { .. }));
    assert!(matches!(
        decode_err(&patched(6, &[9])),
        DecodeError::InvalidField { field: "kind", .. }
    ));
    assert!(matches!(
        decode_err(&patched(7, &[0])),
        DecodeError::InvalidField { field: "bodies", .. }
    ));
    assert!(matches!(
        decode_err(&patched(7, &[33])),
        DecodeError::InvalidField { field: "bodies", .. }
    ));
    assert!(matches!(
        decode_err(&patched(8, &[7, 0])),
        DecodeError::InvalidField { field: "parameter_set", .. }
    ));
    assert!(matches!(
        decode_err(&patched(12, &[1])),
        DecodeError::InvalidField { field: "reserved", .. }
    ));
    assert!(matches!(
        decode_err(&patched(32, &0u64.to_le_bytes())),
        DecodeError::InvalidField { field: "value_count", .. }
    ));
    assert!(matches!(
        decode_err(&patched(32, &u64::MAX.to_le_bytes())),
        DecodeError::LimitExceeded { .. }
    ));
    // A huge but allowed count must fail on length, before allocating.
    assert!(matches!(
        decode_err(&patched(32, &(1u64 << 31).to_le_bytes())),
        DecodeError::LengthMismatch { .. }
    ));
    assert!(matches!(
        decode_err(&patched(32, &151u64.to_le_bytes())),
        DecodeError::LengthMismatch { .. }
    ));
    assert!(matches!(
        decode_err(&patched(40, &[50, 50])),
        DecodeError::InvalidField { field: "encoding", .. }
    ));
    assert!(matches!(
        decode_err(&patched(43, &[1])),
        DecodeError::InvalidField { field: "reserved", .. }
    ));
    assert!(matches!(
        decode_err(&patched(44, &0u32.to_le_bytes())),
        DecodeError::InvalidField { field: "contributors", .. }
    ));
    assert!(matches!(
        decode_err(&patched(48, &f64::NAN.to_bits().to_le_bytes())),
        DecodeError::InvalidField { field: "encoding", .. }
    ));
    assert!(matches!(
        decode_err(&patched(80, &2u64.to_le_bytes())),
        DecodeError::InvalidField { field: "total_weight", .. }
    ));
    assert!(matches!(
        decode_err(&patched(42, &[65])),
        DecodeError::InvalidField { field: "scale_exponent", .. }
    ));
    let limits = DecodeLimits { max_values: 100 };
    assert!(matches!(
        Ciphertext::from_bytes_with_limits(&ct, &limits),
        Err(Error::Decode(DecodeError::LimitExceeded {
            field: "value_count",
            value: 150,
            limit: 100
        }))
    ));
}

#[test]
fn compressed_and_key_fields_are_checked() {
    let (pk, sk, _, cct) = sample_objects();
    let mut bad = cct.clone();
    bad[104] = 0;
    assert!(matches!(
        CompressedCiphertext::from_bytes(&bad),
        Err(Error::Decode(DecodeError::InvalidField { field: "mask_bits", .. }))
    ));
    let mut bad = cct.clone();
    bad[105] = 65;
    assert!(matches!(
        CompressedCiphertext::from_bytes(&bad),
        Err(Error::Decode(DecodeError::InvalidField { field: "body_bits", .. }))
    ));
    let mut bad = cct.clone();
    bad[105] = 32; // claims other widths: the length no longer matches
    assert!(matches!(
        CompressedCiphertext::from_bytes(&bad),
        Err(Error::Decode(DecodeError::LengthMismatch { .. }))
    ));
    // 150 values at 31 bits leave 6 padding bits in the last byte; they must be zero.
    let mut bad = cct.clone();
    *bad.last_mut().unwrap() |= 0x80;
    assert!(matches!(
        CompressedCiphertext::from_bytes(&bad),
        Err(Error::Decode(DecodeError::InvalidField { field: "payload", .. }))
    ));
    let mut bad = pk.clone();
    bad[40] ^= 1; // flip a bit of A
    assert_eq!(PublicKey::from_bytes(&bad).unwrap_err(), Error::Decode(DecodeError::KeyIdMismatch));
    let mut bad = sk.clone();
    let noise_at = 32 + 2 * 64 / 8;
    bad[noise_at..noise_at + 4].copy_from_slice(&(1i32 << 20).to_le_bytes());
    assert!(matches!(
        SecretKey::from_bytes(&bad),
        Err(Error::Decode(DecodeError::InvalidField { field: "noise", .. }))
    ));
}

#[test]
fn incompatible_ciphertexts_are_never_summed() {
    let (_, pk) = toy_keys(2, 1);
    let (_, other_key) = toy_keys(2, 2);
    let (_, other_l) = toy_keys(3, 1);
    let x = Array1::from_elem(100, 0.5);
    let enc = encoding_for(4);
    let base = || pk.encrypt(&enc, x.view()).unwrap().ciphertext;
    let mut acc = base();
    let before = acc.clone();
    let err = acc.add_assign(&other_key.encrypt(&enc, x.view()).unwrap().ciphertext).unwrap_err();
    assert_eq!(err, Error::Mismatch(Mismatch::Key));
    let err = acc.add_assign(&other_l.encrypt(&enc, x.view()).unwrap().ciphertext).unwrap_err();
    assert!(matches!(err, Error::Mismatch(Mismatch::Key | Mismatch::Layout { .. })));
    let shorter = Array1::from_elem(99, 0.5);
    let err = acc.add_assign(&pk.encrypt(&enc, shorter.view()).unwrap().ciphertext).unwrap_err();
    assert!(matches!(err, Error::Mismatch(Mismatch::Layout { .. })));
    let other_enc = Encoding::try_new(17, 40, 1.0, 4, 4).unwrap();
    let err = acc.add_assign(&pk.encrypt(&other_enc, x.view()).unwrap().ciphertext).unwrap_err();
    assert!(matches!(err, Error::Mismatch(Mismatch::Scale { .. })));
    let mut scaled = base();
    scaled.scale_assign(Weight::ONE, 3).unwrap();
    let err = acc.add_assign(&scaled).unwrap_err();
    assert!(matches!(err, Error::Mismatch(Mismatch::Scale { .. })));
    assert_eq!(acc, before, "a rejected add must leave the sum untouched");

    // Different parameter sets.
    let (_, big) = default_keys(2, 1);
    let err = acc.add_assign(&big.encrypt(&enc, x.view()).unwrap().ciphertext).unwrap_err();
    assert!(matches!(err, Error::Mismatch(Mismatch::ParameterSet { .. })));

    // Compressed batch: one bad item rejects the whole batch, nothing is added.
    let good = pk.encrypt_compressed(&enc, x.view(), widths()).unwrap().ciphertext;
    let bad = other_key.encrypt_compressed(&enc, x.view(), widths()).unwrap().ciphertext;
    let mut sum = Ciphertext::zero_like(good.header(), &ParameterSet::toy_insecure()).unwrap();
    let empty = sum.clone();
    assert!(sum.weighted_add_compressed(&[(&good, Weight::ONE), (&bad, Weight::ONE)]).is_err());
    assert_eq!(sum, empty);
}

#[test]
fn budgets_are_enforced() {
    let (_, pk) = toy_keys(1, 3);
    let x = Array1::from_elem(10, 0.5);
    let enc = encoding_for(3);
    let ct = pk.encrypt(&enc, x.view()).unwrap().ciphertext;
    let mut acc = ct.clone();
    acc.add_assign(&ct).unwrap();
    acc.add_assign(&ct).unwrap();
    assert!(matches!(acc.add_assign(&ct), Err(Error::Budget(BudgetError::TotalWeight { .. }))));
    let mut acc = ct.clone();
    assert!(matches!(
        acc.weighted_add_assign(&ct, Weight::try_new(3).unwrap()),
        Err(Error::Budget(BudgetError::TotalWeight { .. }))
    ));
    let enc_sq = Encoding::try_new(16, 40, 1.0, 10, 4).unwrap();
    let ct = pk.encrypt(&enc_sq, x.view()).unwrap().ciphertext;
    let mut acc = ct.clone();
    assert!(matches!(
        acc.weighted_add_assign(&ct, Weight::try_new(2).unwrap()),
        Err(Error::Budget(BudgetError::NoiseBudget { .. }))
    ));
    let mut acc = ct.clone();
    assert!(acc.scale_assign(Weight::try_new(3).unwrap(), 0).is_err());
    assert!(Weight::try_new(0).is_err());
}

#[test]
fn bad_inputs_and_wrong_keys_are_typed_errors() {
    let (sk, pk) = toy_keys(1, 4);
    let (other_sk, _) = toy_keys(1, 5);
    let enc = encoding_for(1);
    let empty = Array1::<f32>::zeros(0);
    assert_eq!(pk.encrypt(&enc, empty.view()).unwrap_err(), Error::Input(InputError::Empty));
    let nan = ndarray::arr1(&[0.0f32, 1.0, f32::NAN]);
    assert_eq!(
        pk.encrypt(&enc, nan.view()).unwrap_err(),
        Error::Input(InputError::NonFinite { index: 2 })
    );
    let ct = pk.encrypt(&enc, ndarray::arr1(&[0.5f64]).view()).unwrap().ciphertext;
    assert_eq!(other_sk.decrypt(&ct).unwrap_err(), Error::Mismatch(Mismatch::Key));
    let zero = Ciphertext::zero_like(ct.header(), &ParameterSet::toy_insecure()).unwrap();
    assert_eq!(sk.decrypt(&zero).unwrap_err(), Error::Input(InputError::Empty));
    // Non-contiguous views are fine.
    let m = ndarray::Array2::<f64>::from_elem((4, 3), 0.25);
    let col = m.column(1);
    let c = pk.encrypt(&enc, col).unwrap().ciphertext;
    assert_eq!(sk.decrypt(&c).unwrap().weighted_mean::<f64>().to_vec(), vec![0.25; 4]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// In-suite fuzzing: arbitrary bytes and mutations of valid objects never panic.
    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = decode_all(&bytes);
        let mut framed = b"CFHE\x01\x00".to_vec();
        framed.extend_from_slice(&bytes);
        let _ = decode_all(&framed);
    }

    #[test]
    fn decoders_never_panic_on_mutated_objects(which in 0usize..4, pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let objects = sample_objects();
        let mut b = [objects.0, objects.1, objects.2, objects.3][which].clone();
        let i = pos.index(b.len());
        b[i] = byte;
        let _ = decode_all(&b);
    }
}
