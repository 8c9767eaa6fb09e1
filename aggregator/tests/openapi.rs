//! The OpenAPI files against what the services really send (issue #24: they omitted
//! `layout_sha256`, which every round spec carries, under `additionalProperties: false`).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cryptflow_devstack::LocalStack;
use cryptflow_services::RoundId;
use serde_json::Value;
use std::collections::BTreeSet;

fn schema(file: &str) -> Value {
    let path = format!("{}/../docs/{file}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

#[tokio::test]
async fn a_round_spec_has_exactly_the_fields_both_openapi_files_describe() {
    let stack = LocalStack::builder().sites(2).start().await.unwrap();
    stack.admin().create_round(&stack.round_request("spec", 10, 2, 2)).await.unwrap();
    let round = RoundId::parse("spec").unwrap();
    let info = stack.admin().round(&round).await.unwrap();
    let sent = keys(&serde_json::to_value(&info.spec).unwrap());
    for file in ["aggregator-openapi.json", "kms-openapi.json"] {
        let spec = &schema(file)["components"]["schemas"]["RoundSpec"];
        assert_eq!(keys(&spec["properties"]), sent, "{file}: RoundSpec's properties");
        let required: BTreeSet<String> = spec["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(required, sent, "{file}: RoundSpec's required fields");
    }
    // A DP round's plan carries its mechanism; both files describe it.
    let dp = cryptflow_services::api::round::RoundRequest {
        clip_bound: 1.0,
        max_abs_error: 1e-2,
        dp: Some(cryptflow_services::api::round::DpOptions {
            noise_multiplier: 1.0,
            honest_shares: 1,
            colluders: 1,
        }),
        ..stack.round_request("dp", 10, 2, 2)
    };
    stack.admin().create_round(&dp).await.unwrap();
    let info = stack.admin().round(&RoundId::parse("dp").unwrap()).await.unwrap();
    let plan = serde_json::to_value(info.spec.plan).unwrap();
    for file in ["aggregator-openapi.json", "kms-openapi.json"] {
        let schemas = &schema(file)["components"]["schemas"];
        assert!(keys(&plan).is_subset(&keys(&schemas["Plan"]["properties"])), "{file}: {plan}");
        assert_eq!(keys(&plan["dp"]), keys(&schemas["DpRequest"]["properties"]), "{file}");
    }
    let request = serde_json::to_value(&info.request).unwrap();
    let schemas = &schema("aggregator-openapi.json")["components"]["schemas"];
    assert_eq!(
        keys(&request["dp"]),
        keys(&schemas["RoundRequest"]["properties"]["dp"]["properties"])
    );
    let paths = &schema("aggregator-openapi.json")["paths"];
    assert!(paths["/v1/rounds/{round}/submissions/{client}"]["get"].is_object());
    stack.stop().await;
}
