#![no_main]
//! Any bytes: the secret-key decoder returns a key or a typed error, never panics.
use cryptflow_he::{SecretKey, Wire};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(key) = SecretKey::from_bytes(data) {
        assert_eq!(key.to_bytes(), data);
    }
});
