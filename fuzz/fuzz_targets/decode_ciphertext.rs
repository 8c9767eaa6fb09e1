#![no_main]
//! Any bytes: the ciphertext decoder returns a ciphertext or a typed error; an accepted one
//! can be re-encoded, compressed and summed with itself without panicking.
use cryptflow_he::{Ciphertext, ParameterSet, TransportWidths, Wire};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(ct) = Ciphertext::from_bytes(data) {
        assert_eq!(ct.to_bytes(), data);
        if let Ok(params) = ParameterSet::by_id(ct.header().params()) {
            let _ = ct.compress(&params, TransportWidths::FULL);
        }
        let mut twice = ct.clone();
        let _ = twice.add_assign(&ct);
    }
});
