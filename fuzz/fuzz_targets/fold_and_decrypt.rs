#![no_main]
//! Arbitrary payload bits behind a valid header (what a malicious client can send once the
//! header checks pass): folding, packing and decrypting the result with a release never
//! panics — decryption answers a mean or a typed error.
use cryptflow_he::planner::{plan, PlanRequest, Weighting};
use cryptflow_he::sharing::{CommitteeShape, Release};
use cryptflow_he::{
    decrypt_with_releases, CiphertextKind, ClientKey, MaskSeed, PackedCiphertext, ParameterSet,
    RoundSetup, RunningSum, Wire,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let params = ParameterSet::toy_insecure();
    let Ok(p) = plan(
        &params,
        &PlanRequest { max_clients: 4, clip_bound: 1.0, max_abs_error: 1e-3, weighting: Weighting::Uniform, dp: None },
    ) else {
        return;
    };
    let values = 100;
    let Ok(setup) = RoundSetup::try_new(p, MaskSeed([7; 16]), values) else { return };
    let mut bytes = setup.header(CiphertextKind::Upload, 1).to_bytes();
    let mut payload = data.to_vec();
    payload.resize(setup.payload_len() as usize, 0);
    bytes.extend_from_slice(&payload);
    let Ok(upload) = PackedCiphertext::from_bytes(&bytes) else { return };
    let Ok(mut sum) = RunningSum::zero(&setup, 0..setup.slots()) else { return };
    if sum.add_upload(&upload).is_err() {
        return;
    }
    let Ok(aggregate) = PackedCiphertext::aggregate(&setup, 1, sum.pack()) else { return };
    let Ok(key) = ClientKey::generate(&params) else { return };
    let Ok(shape) = CommitteeShape::try_new(1, 1) else { return };
    let Ok(shares) = key.share(shape) else { return };
    let Ok(release) = Release::sum(shares[0].index(), [&shares[0]]) else { return };
    let _ = decrypt_with_releases(&setup, &aggregate, shape, &[release]);
});
