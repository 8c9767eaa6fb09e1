//! Decoders under hostile input: arbitrary bytes and mutated valid encodings of every object
//! are rejected with a typed error or accepted as an object that re-encodes to the same bytes
//! — never a panic, never an allocation larger than the input.

use super::{gaussian_plan, setup_for};
use crate::sharing::{CommitteeShape, KeyShare, Release};
use crate::wire::{read_header, DecodeLimits, HEADER_LEN};
use crate::{ClientKey, DecodeError, Error, PackedCiphertext, ParameterSet, Wire};
use proptest::prelude::*;

fn valid_objects() -> Vec<Vec<u8>> {
    let params = ParameterSet::toy_insecure();
    let setup = setup_for(gaussian_plan(&params, 4, 1e-4), 150, 9);
    let key = ClientKey::generate(&params).unwrap();
    let up =
        key.encryptor(&setup, None).unwrap().encrypt(&vec![0.5f64; 150][..]).unwrap().ciphertext;
    let shares = key.share(CommitteeShape::try_new(3, 2).unwrap()).unwrap();
    let release = Release::sum(shares[1].index(), [&shares[1]]).unwrap();
    vec![up.to_bytes(), shares[0].to_bytes(), release.to_bytes()]
}

fn check<T: Wire>(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(obj) = T::from_bytes(bytes) {
        prop_assert_eq!(obj.to_bytes(), bytes, "accepted bytes must re-encode identically");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]
    #[test]
    fn decoders_survive_arbitrary_and_mutated_bytes(
        noise in proptest::collection::vec(any::<u8>(), 0..400),
        which in 0usize..3,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut valid = valid_objects().swap_remove(which);
        for (i, b) in &flips {
            let at = i.index(valid.len());
            valid[at] ^= b;
        }
        let cut_at = cut.index(valid.len() + 1);
        for bytes in [noise.clone(), valid.clone(), valid[..cut_at].to_vec()] {
            check::<PackedCiphertext>(&bytes)?;
            check::<KeyShare>(&bytes)?;
            check::<Release>(&bytes)?;
            let _ = read_header(&bytes, &DecodeLimits::default());
        }
    }
}

#[test]
fn every_header_field_is_checked() {
    let up = valid_objects().swap_remove(0);
    let reject = |at: usize, value: u8| {
        let mut b = up.clone();
        b[at] = value;
        PackedCiphertext::from_bytes(&b).unwrap_err()
    };
    assert!(matches!(reject(0, b'X'), Error::Decode(DecodeError::BadMagic)));
    assert!(matches!(reject(4, 1), Error::Decode(DecodeError::UnsupportedVersion { .. })));
    assert!(matches!(reject(6, 9), Error::Decode(DecodeError::InvalidField { field: "kind", .. })));
    assert!(matches!(reject(6, 3), Error::Decode(DecodeError::WrongKind { .. })));
    assert!(matches!(
        reject(7, 1),
        Error::Decode(DecodeError::InvalidField { field: "reserved", .. })
    ));
    assert!(matches!(
        reject(8, 7),
        Error::Decode(DecodeError::InvalidField { field: "parameter_set", .. })
    ));
    assert!(matches!(
        reject(10, 0),
        Error::Decode(DecodeError::InvalidField { field: "transport_bits", .. })
    ));
    assert!(matches!(
        reject(10, 65),
        Error::Decode(DecodeError::InvalidField { field: "transport_bits", .. })
    ));
    assert!(matches!(
        reject(12, 2),
        Error::Decode(DecodeError::InvalidField { field: "contributors", .. })
    ));
    assert!(matches!(
        reject(56, 1),
        Error::Decode(DecodeError::InvalidField { field: "reserved", .. })
    ));
    // A declared size beyond the limit is refused before the length is even compared.
    let mut huge = up.clone();
    huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    let err = PackedCiphertext::from_bytes(&huge).unwrap_err();
    assert!(
        matches!(err, Error::Decode(DecodeError::LimitExceeded { field: "slot_count", .. })),
        "{err}"
    );
    let mut short = up.clone();
    short.pop();
    assert!(matches!(
        PackedCiphertext::from_bytes(&short),
        Err(Error::Decode(DecodeError::LengthMismatch { .. }))
    ));
    assert!(PackedCiphertext::from_bytes(&up[..HEADER_LEN - 1]).is_err());
}

#[test]
fn share_elements_must_be_in_the_field() {
    let share = valid_objects().swap_remove(1);
    let mut bad = share.clone();
    bad[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(KeyShare::from_bytes(&bad).is_err());
    assert!(Release::from_bytes(&share).is_err(), "a key share is not a release");
}
