#![no_main]
//! Any bytes: the public-key decoder returns a key or a typed error, never panics; a key it
//! accepts re-encodes to the same bytes.
use cryptflow_he::{wire::read_prefix, PublicKey, Wire};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = read_prefix(data);
    if let Ok(key) = PublicKey::from_bytes(data) {
        assert_eq!(key.to_bytes(), data);
    }
});
