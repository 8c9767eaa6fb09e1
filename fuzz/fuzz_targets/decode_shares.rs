#![no_main]
//! Any bytes: the key-share and release decoders return an object or a typed error; accepted
//! ones round-trip, and summing and cross-checking them never panics (combining is exercised
//! by `fold_and_decrypt`).
use cryptflow_he::sharing::{consistent, KeyShare, Release};
use cryptflow_he::Wire;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (a, b) = data.split_at(data.len() / 2);
    if let Ok(s) = KeyShare::from_bytes(data) {
        assert_eq!(s.to_bytes(), data);
        let _ = Release::sum(s.index(), [&s, &s]);
    }
    let (ra, rb) = (Release::from_bytes(a), Release::from_bytes(b));
    if let Ok(r) = &ra {
        assert_eq!(r.to_bytes(), a);
    }
    if let (Ok(ra), Ok(rb)) = (ra, rb) {
        if ra.index() != rb.index() && ra.len() == rb.len() {
            let _ = consistent(&[&ra, &rb], 1);
        }
    }
});
