//! The accountant against golden values from `dp-accounting` 0.6 (`he/tests/golden/dp_golden.py`
//! computes them from the mechanism's parameters with KLS21's formulas; `.ci/run` checks the
//! committed file against a fresh run): the same sensitivity and variance, bit for bit, and ε
//! within 10^-6.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cryptflow_he::dp::accounting::{epsilon, ORDERS};
use cryptflow_he::planner::{DpPlan, DpRequest};
use serde_json::Value;

#[test]
fn epsilon_agrees_with_dp_accounting() {
    let path = format!("{}/tests/golden/dp_epsilon.json", env!("CARGO_MANIFEST_DIR"));
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let orders: Vec<u32> =
        doc["orders"].as_array().unwrap().iter().map(|o| o.as_u64().unwrap() as u32).collect();
    assert_eq!(orders, ORDERS);
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 5);
    let mut bounds = 0;
    for c in cases {
        let dp = DpRequest {
            noise_multiplier: c["noise_multiplier"].as_f64().unwrap(),
            honest_shares: c["honest_shares"].as_u64().unwrap() as u32,
            colluders: c["colluders"].as_u64().unwrap() as u32,
            values: c["values"].as_u64().unwrap(),
        };
        let plan = DpPlan::for_grid(
            c["clip_bound"].as_f64().unwrap(),
            c["grid_log"].as_i64().unwrap() as i32,
            &dp,
        )
        .unwrap();
        assert_eq!(plan.sensitivity_sq() as u64, c["sensitivity_sq"].as_u64().unwrap(), "{c}");
        assert_eq!(plan.variance() as u64, c["variance"].as_u64().unwrap(), "{c}");
        let spent = plan.charge().times(c["rounds"].as_u64().unwrap());
        let (eps, _) = epsilon(&spent, c["delta"].as_f64().unwrap()).unwrap();
        let golden = c["epsilon"].as_f64().unwrap();
        if c["tau_bound"].as_bool().unwrap() {
            // τ matters: the rational bound charges at least the exact ρ, at every order.
            bounds += 1;
            let rho = c["rho"].as_f64().unwrap();
            let charged = plan.charge().nats()[0] / 2.0; // ρ = RDP_2 / 2
            assert!(charged >= rho, "charged ρ = {charged} below the exact {rho}: {c}");
            assert!(eps >= golden, "ε = {eps} below the golden {golden}: {c}");
            continue;
        }
        // The charge rounds up (2^-32 nats per round and order): never below the golden value.
        assert!(eps >= golden - 1e-12 && eps - golden <= 1e-6, "ε = {eps}, golden {golden}: {c}");
    }
    assert!(bounds >= 1, "a case where τ matters");
}
