#![no_main]
//! Any bytes: the streaming header decoder (what the aggregator reads before accepting an
//! upload's body) returns a header or a typed error, and an accepted header round-trips.
use cryptflow_he::wire::{ciphertext_len, read_header};
use cryptflow_he::DecodeLimits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = read_header(data, &DecodeLimits::default()) {
        assert_eq!(h.to_bytes(), &data[..64]);
        let _ = ciphertext_len(&h);
    }
});
