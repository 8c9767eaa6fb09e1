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
    // Canonical padding: 5000 · 28 bits end on a byte, nothing to clear.
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
    assert_eq!(up.to_bytes().len(), 64 + 5000 * 28 / 8);
    assert_eq!(share.to_bytes().len(), 16 + 8 * 2048);
}

const GOLDEN: [&str; 5] = [
    "a7073812aee6c1f26b91e195f3abe2a16f591cf67a57bea12c822355f1113fb4",
    "f39bf60c9cbac8672268845ee19cbbcc803bbc1cc16b13b56df1e70318bddad1",
    "61ead78be1c761556178eb21d85df093c620a0461ded8b695d7672505334eb8b",
    "6bffed6090c295ed31021b89863118594047238b0456f6b75a8c0fc66867f3cb",
    "8e709d347dc40b2ff415b71d22c92074ee86390975c22138ba040e7e5af6a29a",
];
