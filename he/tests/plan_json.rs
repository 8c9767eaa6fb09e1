//! A plan survives JSON (the aggregator stores its round spec as JSON and re-reads it; a
//! deserialised plan is re-derived from its request and must agree). Found by schemathesis:
//! with serde_json's default float parser, `clip_bound = 122102840085.8644` came back one ulp
//! off, the re-derived step disagreed, and the stored round could no longer be read (500).

use cryptflow_he::planner::{plan, Plan, PlanRequest, Weighting};
use cryptflow_he::ParameterSet;
use proptest::prelude::*;

fn round_trip(request: PlanRequest) -> Result<(), TestCaseError> {
    if let Ok(p) = plan(&ParameterSet::default_128(), &request) {
        let json = serde_json::to_string(&p).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back: Plan =
            serde_json::from_str(&json).map_err(|e| TestCaseError::fail(format!("{json}: {e}")))?;
        prop_assert_eq!(back, p);
    }
    Ok(())
}

#[test]
fn the_value_schemathesis_found() {
    for weighting in [Weighting::Uniform, Weighting::Samples { min_count: 1, max_count: 420 }] {
        let request = PlanRequest {
            max_clients: 1,
            clip_bound: 122102840085.8644,
            max_abs_error: 122102840085.8644,
            weighting,
            dp: None,
        };
        round_trip(request).unwrap();
    }
}

proptest! {
    #[test]
    fn every_feasible_plan_survives_json(
        clip_exp in -6.0f64..12.0,
        clip_mantissa in 1.0f64..10.0,
        ratio_exp in -10.0f64..1.0,
        max_clients in 1u32..100_000,
        samples in any::<bool>(),
    ) {
        let clip_bound = clip_mantissa * 10f64.powf(clip_exp);
        let max_abs_error = clip_bound * 10f64.powf(ratio_exp) * 1.000_000_123;
        let weighting =
            if samples { Weighting::Samples { min_count: 1, max_count: 1000 } } else { Weighting::Uniform };
        round_trip(PlanRequest { max_clients, clip_bound, max_abs_error, weighting, dp: None })?;
    }
}
