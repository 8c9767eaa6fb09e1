//! Golden hashes of the wire format. These objects are built from fixed contents (no
//! randomness), so a hash changes only if the encoding changes. If one fails, the format
//! drifted: bump `wire::VERSION`, update `docs/wire-format.md`, then the constants.

use super::{gaussian_plan, setup_for};
use crate::sharing::{KeyShare, Release, ShareIndex, SHARE_PRIME};
use crate::{CiphertextKind, PackedCiphertext, ParameterSet, Wire};
use sha2::{Digest, Sha256};

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn pattern(len: usize, salt: u64) -> Vec<u64> {
    (0..len as u64)
        .map(|i| (i ^ salt).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17))
        .collect()
}

fn objects() -> (Vec<u8>, PackedCiphertext, PackedCiphertext, KeyShare, Release) {
    let params = ParameterSet::default_128();
    let plan = gaussian_plan(&params, 8, 1e-6);
    let setup = setup_for(plan, 5000, 0x00FF_EEDD_CCBB_AA99_8877_6655_4433_2211);
    let len = setup.payload_len() as usize;
    let mut payload: Vec<u8> = pattern(len, 1).iter().map(|w| *w as u8).collect();
    // Canonical padding: (5000 + 2 clipping slots) · 28 bits end on a byte, nothing to clear.
    assert_eq!(setup.transport().get(), 28);
    let upload = PackedCiphertext {
        header: setup.header(CiphertextKind::Upload, 1),
        payload: payload.clone(),
    };
    payload.reverse();
    let aggregate = PackedCiphertext::aggregate(&setup, 7, payload).unwrap();
    let x = ShareIndex::try_new(3).unwrap();
    let share =
        KeyShare::try_new(x, pattern(2048, 2).iter().map(|w| w % SHARE_PRIME).collect()).unwrap();
    let release =
        Release::try_new(x, pattern(2048, 3).iter().map(|w| w % SHARE_PRIME).collect()).unwrap();
    (plan.canonical_bytes(), upload, aggregate, share, release)
}

#[test]
fn wire_format_is_stable() {
    let (plan, up, agg, share, release) = objects();
    let got = [
        hex(&plan),
        hex(&up.to_bytes()),
        hex(&agg.to_bytes()),
        hex(&share.to_bytes()),
        hex(&release.to_bytes()),
    ];
    assert_eq!(got, GOLDEN, "wire format drifted; see the module docs");
}

#[test]
fn golden_objects_round_trip_with_the_documented_sizes() {
    let (_, up, agg, share, release) = objects();
    assert_eq!(PackedCiphertext::from_bytes(&up.to_bytes()).unwrap(), up);
    assert_eq!(PackedCiphertext::from_bytes(&agg.to_bytes()).unwrap(), agg);
    assert_eq!(KeyShare::from_bytes(&share.to_bytes()).unwrap(), share);
    assert_eq!(Release::from_bytes(&release.to_bytes()).unwrap(), release);
    // Sizes documented in docs/wire-format.md.
    assert_eq!(up.to_bytes().len(), 64 + (5000 + 2) * 28 / 8);
    assert_eq!(share.to_bytes().len(), 16 + 8 * 2048);
}

const GOLDEN: [&str; 5] = [
    "a7073812aee6c1f26b91e195f3abe2a16f591cf67a57bea12c822355f1113fb4",
    "5f77b4dda261a06671782b3ecad70799b763aa8e85aa7c60f49b0fbe94a808bf",
    "f0c1037a262e76ac6d2f9d6fc0ac3e9471edd933e2263770cfde30a3f3fa2aa6",
    "97d73c19c7f8f8ec0ef51384c2c85fb01b5be227cee5cf7e823fbb803dd3714d",
    "a8745f842100347b442c25b6368b1bc1d1c21d6468691cbd3ece60bbc33d90ff",
];
