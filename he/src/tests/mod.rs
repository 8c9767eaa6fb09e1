//! Crate-level tests that need private access: interop with TFHE-rs, statistical noise,
//! property tests of encryption, aggregation and decryption, the attacks version 2 must
//! defeat, golden wire hashes and rejection paths.

mod attacks;
mod clipping;
mod dp;
mod golden;
mod interop;
mod noise;
mod props;
mod rejection;
mod spans;
mod worked_example;

use crate::planner::{plan, Plan, PlanRequest, Weighting};
use crate::{MaskSeed, ParameterSet, RoundSetup};

/// A plan for `c` unweighted contributions at error `e`, clip bound 1.
pub(crate) fn gaussian_plan(params: &ParameterSet, c: u32, e: f64) -> Plan {
    plan(
        params,
        &PlanRequest {
            max_clients: c,
            clip_bound: 1.0,
            max_abs_error: e,
            weighting: Weighting::Uniform,
            dp: None,
        },
    )
    .unwrap()
}

/// A setup with a fixed seed.
pub(crate) fn setup_for(plan: Plan, values: u64, seed: u128) -> RoundSetup {
    RoundSetup::try_new(plan, MaskSeed(seed.to_le_bytes()), values).unwrap()
}
