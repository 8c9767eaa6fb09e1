//! Criterion benchmarks of the `he` operations at the acceptance size, d = 2^20, K = 8,
//! |v| ≤ 1, mean error ≤ 1e-6 (planner-chosen widths, L = 8).
//!
//! Run: `cargo bench -p cryptflow-he --bench he`. The full suite over several sizes lives
//! in `cryptflow-benches`.
#![allow(missing_docs, clippy::expect_used)]

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use cryptflow_he::planner::{plan, PlanRequest, PlanTarget};
use cryptflow_he::{
    generate_keys, weighted_sum_compressed, BodiesPerMask, Ciphertext, CompressedCiphertext,
    DecodeLimits, ParameterSet, Weight, Wire,
};
use ndarray::Array1;

const D: usize = 1 << 20;
const K: usize = 8;

fn bench(c: &mut Criterion) {
    let params = ParameterSet::default_128();
    let bodies = BodiesPerMask::try_new(8).expect("valid L");
    let plan = plan(
        &params,
        &PlanRequest {
            max_clients: K as u32,
            clip_bound: 1.0,
            max_weight: 1,
            bodies,
            target: PlanTarget::Precision { max_abs_error: 1e-6 },
        },
    )
    .expect("feasible plan");
    let (sk, pk) = generate_keys(params, bodies).expect("keygen");
    let x: Array1<f32> = (0..D).map(|i| ((i as f32) * 0.001).sin()).collect();

    let mut g = c.benchmark_group("he_d2^20");
    g.sample_size(20);
    g.throughput(Throughput::Elements(D as u64));
    g.bench_function("encrypt_compress_L8", |b| {
        b.iter(|| {
            pk.encrypt_compressed(&plan.encoding, black_box(x.view()), plan.upload)
                .expect("encrypt")
        })
    });
    let ups: Vec<CompressedCiphertext> = (0..K)
        .map(|_| {
            pk.encrypt_compressed(&plan.encoding, x.view(), plan.upload)
                .expect("encrypt")
                .ciphertext
        })
        .collect();
    let wire: Vec<Vec<u8>> = ups.iter().map(|u| u.to_bytes()).collect();
    g.bench_function("lift_sum_8_compressed", |b| {
        b.iter(|| {
            let items: Vec<_> = ups.iter().map(|u| (u, Weight::ONE)).collect();
            weighted_sum_compressed(&params, &items).expect("sum")
        })
    });
    g.bench_function("decode_owned_lift_sum_8", |b| {
        b.iter_batched(
            || wire.clone(),
            |owned| {
                let limits = DecodeLimits::default();
                let decoded: Vec<_> = owned
                    .into_iter()
                    .map(|w| {
                        CompressedCiphertext::from_vec_with_limits(w, &limits).expect("decode")
                    })
                    .collect();
                let items: Vec<_> = decoded.iter().map(|u| (u, Weight::ONE)).collect();
                weighted_sum_compressed(&params, &items).expect("sum")
            },
            criterion::BatchSize::LargeInput,
        )
    });
    g.bench_function("decode_lift_sum_8_from_bytes", |b| {
        b.iter(|| {
            let decoded: Vec<_> =
                wire.iter().map(|w| CompressedCiphertext::from_bytes(w).expect("decode")).collect();
            let items: Vec<_> = decoded.iter().map(|u| (u, Weight::ONE)).collect();
            weighted_sum_compressed(&params, &items).expect("sum")
        })
    });
    let items: Vec<_> = ups.iter().map(|u| (u, Weight::ONE)).collect();
    let sum: Ciphertext = weighted_sum_compressed(&params, &items).expect("sum");
    g.bench_function("decrypt_aggregate", |b| {
        b.iter(|| sk.decrypt(black_box(&sum)).expect("decrypt"))
    });
    let down = sum.compress(&params, plan.download);
    g.bench_function("compress_aggregate", |b| b.iter(|| sum.compress(&params, plan.download)));
    g.bench_function("decrypt_compressed_aggregate", |b| {
        b.iter(|| sk.decrypt_compressed(black_box(&down)).expect("decrypt"))
    });
    g.finish();

    let mut g = c.benchmark_group("keys");
    g.sample_size(10);
    g.bench_function("generate_L8", |b| b.iter(|| generate_keys(params, bodies).expect("keygen")));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
