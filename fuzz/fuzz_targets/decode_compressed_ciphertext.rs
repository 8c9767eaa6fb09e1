#![no_main]
//! Any bytes: the compressed-ciphertext decoder returns a ciphertext or a typed error; an
//! accepted one can be re-encoded, lifted and folded without panicking.
use cryptflow_he::{weighted_sum_compressed, CompressedCiphertext, ParameterSet, Weight, Wire};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(ct) = CompressedCiphertext::from_bytes(data) {
        assert_eq!(ct.to_bytes(), data);
        let _ = ct.lift();
        if let Ok(params) = ParameterSet::by_id(ct.header().params()) {
            let _ = weighted_sum_compressed(&params, &[(&ct, Weight::ONE)]);
        }
    }
});
