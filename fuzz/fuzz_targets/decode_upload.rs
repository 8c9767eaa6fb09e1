#![no_main]
//! Any bytes: the upload/aggregate decoder returns a ciphertext or a typed error; an accepted
//! one re-encodes to the same bytes and its length is what its header announces.
use cryptflow_he::wire::ciphertext_len;
use cryptflow_he::{DecodeLimits, PackedCiphertext, Wire};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(ct) = PackedCiphertext::from_bytes(data) {
        assert_eq!(ct.to_bytes(), data);
        assert_eq!(ciphertext_len(ct.header()), Some(data.len() as u64));
        assert_eq!(ct.header().to_bytes(), &data[..64]);
    }
    let limits = DecodeLimits { max_slots: 4096, ..DecodeLimits::default() };
    let _ = PackedCiphertext::from_vec_with_limits(data.to_vec(), &limits);
});
