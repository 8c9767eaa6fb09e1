//! Golden hashes of the wire format. These objects are built from fixed words (no
//! randomness), so a hash changes only if the encoding changes. If one fails, the format
//! drifted: bump `wire::VERSION`, update `docs/wire-format.md`, then the constants.

use crate::ciphertext::{Ciphertext, CiphertextHeader};
use crate::keys::{PublicKey, SecretKey};
use crate::params::{BodiesPerMask, ParameterSet, TransportBits, TransportWidths};
use crate::{CompressedCiphertext, Encoding, Wire};
use sha2::{Digest, Sha256};

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn pattern(len: usize, salt: u64) -> Vec<u64> {
    (0..len as u64)
        .map(|i| (i ^ salt).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17))
        .collect()
}

fn objects() -> (PublicKey, SecretKey, Ciphertext, CompressedCiphertext) {
    let params = ParameterSet::default_128();
    let l = BodiesPerMask::try_new(2).unwrap();
    let n = 2048;
    let pk = PublicKey::from_parts(params, l, pattern(n, 1), pattern(2 * n, 2)).unwrap();
    let s: Vec<u64> = pattern(2 * n, 3).iter().map(|x| x & 1).collect();
    let e: Vec<i32> =
        pattern(2 * n, 4).iter().map(|x| (*x % (1 << 17)) as i32 - (1 << 16)).collect();
    let sk = SecretKey::from_parts(params, l, pk.id(), s, e).unwrap();
    let encoding = Encoding::try_new(20, 38, 1.0, 8, 8).unwrap();
    let mut header = CiphertextHeader::fresh(&params, pk.id(), l, 5000, encoding);
    header.contributors = 3;
    header.total_weight = 3;
    header.weight_sq_sum = 3;
    let words = pattern(header.layout(n).words(), 5);
    let ct = Ciphertext { header, words };
    let widths = TransportWidths {
        mask: TransportBits::try_new(36).unwrap(),
        body: TransportBits::try_new(31).unwrap(),
    };
    let compressed = ct.compress(&params, widths);
    (pk, sk, ct, compressed)
}

#[test]
fn wire_format_is_stable() {
    let (pk, sk, ct, cct) = objects();
    let got = [hex(&pk.to_bytes()), hex(&sk.to_bytes()), hex(&ct.to_bytes()), hex(&cct.to_bytes())];
    let expected = GOLDEN;
    assert_eq!(got, expected, "wire format drifted; see the module docs");
}

#[test]
fn golden_objects_round_trip() {
    let (pk, sk, ct, cct) = objects();
    assert_eq!(PublicKey::from_bytes(&pk.to_bytes()).unwrap(), pk);
    let sk2 = SecretKey::from_bytes(&sk.to_bytes()).unwrap();
    assert_eq!(sk2.secret_words(), sk.secret_words());
    assert_eq!(sk2.noise_words(), sk.noise_words());
    assert_eq!(Ciphertext::from_bytes(&ct.to_bytes()).unwrap(), ct);
    assert_eq!(CompressedCiphertext::from_bytes(&cct.to_bytes()).unwrap(), cct);
    // Sizes documented in docs/wire-format.md.
    assert_eq!(pk.to_bytes().len(), 32 + 8 * 3 * 2048);
    assert_eq!(sk.to_bytes().len(), 32 + 2 * 2048 / 8 + 4 * 2 * 2048);
    assert_eq!(ct.to_bytes().len(), 104 + 8 * (2 * 2048 + 5000));
    let payload = 2 * (2048 * 36 / 8) + 4096 * 31 / 8 + (904usize * 31).div_ceil(8);
    assert_eq!(cct.to_bytes().len(), 112 + payload);
}

const GOLDEN: [&str; 4] = [
    "403790ea31ae3570faa475f951908408be96b9265e19f7a0da0988fbf27aec9d",
    "da1ef0ce2e3abfa8ae3e05fb6c253b0828c95d5532c8622c62bb6be0c6e678e2",
    "1fde0f421dc2dc56def04c7f1c9f3df882c5f89edc96e64da6f8a5313728d246",
    "a336d986e9756dc774b69eebd2fb25a8a776f690df5a2765386ce216fc4f2ead",
];
