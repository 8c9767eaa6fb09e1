//! The worked example of `docs/wire-format.md`, recomputed: every hex string the document
//! shows must appear in it, byte for byte, so the document cannot drift from the code.

use crate::planner::{plan, PlanRequest, Weighting};
use crate::random::expand_mask;
use crate::sharing::{CommitteeShape, Release};
use crate::{
    decrypt_with_releases, ClientKey, MaskSeed, PackedCiphertext, ParameterSet, RoundSetup,
    RunningSum, Wire,
};

const DOC: &str = include_str!("../../../docs/wire-format.md");

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex in rows of 32 bytes, as the document prints dumps.
fn dump(bytes: &[u8]) -> String {
    bytes.chunks(32).map(hex).collect::<Vec<_>>().join("\n")
}

struct Example {
    lines: Vec<(String, String)>,
}

fn example() -> Example {
    let params = ParameterSet::toy_insecure();
    let p = plan(
        &params,
        &PlanRequest {
            max_clients: 2,
            clip_bound: 1.0,
            max_abs_error: 0.01,
            weighting: Weighting::Uniform,
            dp: None,
        },
    )
    .unwrap();
    let seed = MaskSeed(*b"CryptFlow-demo-!");
    let setup = RoundSetup::try_new(p, seed, 3).unwrap();
    let mut lines = Vec::new();
    let mut put = |k: &str, v: String| lines.push((k.to_owned(), v));
    put(
        "plan",
        format!(
            "step = {:e}, delta_log = {}, transport_bits = {}",
            p.step(),
            p.delta().get(),
            p.transport().get()
        ),
    );
    put("plan_canonical", dump(&p.canonical_bytes()));
    put("plan_digest", hex(&p.digest()));
    let mut mask = vec![0u64; 64];
    expand_mask(seed, 0, &mut mask).unwrap();
    put(
        "mask_first_words",
        mask[..4].iter().map(|w| format!("{w:016x}")).collect::<Vec<_>>().join(" "),
    );
    let keys: Vec<ClientKey> =
        (0..2u128).map(|i| ClientKey::from_seed_insecure(&params, 1000 + i).unwrap()).collect();
    let inputs = [[0.5f64, -0.25, 0.75], [0.25, 1.5, -1.0]];
    let mut sum = RunningSum::zero(&setup, 0..setup.slots()).unwrap();
    let shape = CommitteeShape::try_new(3, 2).unwrap();
    let mut held: Vec<Vec<crate::sharing::KeyShare>> = vec![Vec::new(); 3];
    for (i, (k, x)) in keys.iter().zip(&inputs).enumerate() {
        put(&format!("key{i}_first_coefficients"), format!("{:?}", &k.coefficients()[..4]));
        let up = k
            .encryptor_with_noise_seed_insecure(&setup, None, 7 + i as u128)
            .unwrap()
            .encrypt(&x[..])
            .unwrap();
        put(&format!("upload{i}"), dump(&up.ciphertext.to_bytes()));
        sum.add_upload(&up.ciphertext).unwrap();
        for (node, s) in k.share(shape).unwrap().into_iter().enumerate() {
            held[node].push(s);
        }
    }
    let agg = PackedCiphertext::aggregate(&setup, 2, sum.pack()).unwrap();
    put("aggregate", dump(&agg.to_bytes()));
    let k_sum = crate::AggregateKey::sum_of(&keys);
    put("key_sum_first_coefficients", format!("{:?}", &k_sum.coefficients()[..4]));
    let releases: Vec<Release> =
        held[..2].iter().map(|s| Release::sum(s[0].index(), s).unwrap()).collect();
    let (d, _) = decrypt_with_releases(&setup, &agg, shape, &releases).unwrap();
    put("sums", format!("{:?}", d.sums()));
    let c = d.clipping();
    put(
        "clipping",
        format!(
            "{} contribution clipped {} of {} values",
            c.contributions, c.values_at_most, c.of_values
        ),
    );
    put("mean", format!("{:?}", d.mean::<f64>()));
    Example { lines }
}

#[test]
fn the_document_shows_what_the_code_computes() {
    let mut missing = Vec::new();
    for (name, value) in example().lines {
        // Lists and plan lines are quoted inline; dumps are indented code blocks.
        let indented: String = value.lines().map(|l| format!("    {l}\n")).collect();
        if !(DOC.contains(&value) || DOC.contains(&indented)) {
            missing.push(name.clone());
        }
        println!("== {name}\n{value}");
    }
    assert!(
        missing.is_empty(),
        "docs/wire-format.md lacks {missing:?} (run `cargo test -p cryptflow-he worked_example -- --nocapture` and update it)"
    );
}
