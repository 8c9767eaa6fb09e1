//! Criterion benchmarks of every `he` operation at d ∈ {2^16, 2^20, 2^23} values, K = 8
//! contributions, |v| ≤ 1, mean error ≤ 1e-6 (planner-chosen widths, L = 8).
//!
//! Run: `cargo bench -p cryptflow-he --bench he` (all sizes, ~6 minutes on two cores), or one
//! size: `cargo bench -p cryptflow-he --bench he -- 'd=2\^20'`. The overhead report across
//! dimensions, client counts and precisions is `cryptflow-benches`' `overhead` binary.
#![allow(missing_docs, clippy::expect_used)]

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use cryptflow_he::planner::{plan, PlanRequest, PlanTarget};
use cryptflow_he::{
    generate_keys, weighted_sum_compressed, BodiesPerMask, Ciphertext, CompressedCiphertext,
    DecodeLimits, ParameterSet, PublicKey, Weight, Wire,
};
use ndarray::Array1;
use std::time::Duration;

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

    for log_d in [16u32, 20, 23] {
        let d = 1usize << log_d;
        let x: Array1<f32> = (0..d).map(|i| ((i as f32) * 0.001).sin()).collect();
        let mut g = c.benchmark_group(format!("he/d=2^{log_d}"));
        g.sample_size(if log_d >= 23 { 10 } else { 20 });
        g.measurement_time(Duration::from_secs(if log_d >= 23 { 10 } else { 4 }));
        g.throughput(Throughput::Elements(d as u64));

        g.bench_function("encrypt", |b| {
            b.iter(|| pk.encrypt(&plan.encoding, black_box(x.view())).expect("encrypt"))
        });
        g.bench_function("encrypt_compressed", |b| {
            b.iter(|| {
                pk.encrypt_compressed(&plan.encoding, black_box(x.view()), plan.upload)
                    .expect("encrypt")
            })
        });
        let full = pk.encrypt(&plan.encoding, x.view()).expect("encrypt").ciphertext;
        g.bench_function("compress_upload", |b| {
            b.iter(|| black_box(&full).compress(&params, plan.upload))
        });
        let ups: Vec<CompressedCiphertext> = (0..K)
            .map(|_| {
                pk.encrypt_compressed(&plan.encoding, x.view(), plan.upload)
                    .expect("encrypt")
                    .ciphertext
            })
            .collect();
        g.bench_function("serialize_upload", |b| b.iter(|| black_box(&ups[0]).to_bytes()));
        let wire: Vec<Vec<u8>> = ups.iter().map(Wire::to_bytes).collect();
        g.bench_function("deserialize_upload_owned", |b| {
            b.iter_batched(
                || wire[0].clone(),
                |w| {
                    CompressedCiphertext::from_vec_with_limits(w, &DecodeLimits::default())
                        .expect("decode")
                },
                BatchSize::LargeInput,
            )
        });
        g.bench_function("lift", |b| b.iter(|| black_box(&ups[0]).lift().expect("lift")));
        g.bench_function("lift_sum_8_compressed", |b| {
            b.iter(|| {
                let items: Vec<_> = ups.iter().map(|u| (u, Weight::ONE)).collect();
                weighted_sum_compressed(&params, &items).expect("sum")
            })
        });
        let lifted: Ciphertext = ups[1].lift().expect("lift");
        g.bench_function("weighted_add_assign", |b| {
            b.iter_batched(
                || ups[0].lift().expect("lift"),
                |mut acc| {
                    acc.weighted_add_assign(&lifted, Weight::ONE).expect("add");
                    acc
                },
                BatchSize::LargeInput,
            )
        });
        let items: Vec<_> = ups.iter().map(|u| (u, Weight::ONE)).collect();
        let sum: Ciphertext = weighted_sum_compressed(&params, &items).expect("sum");
        g.bench_function("scale_assign", |b| {
            b.iter_batched(
                || ups[0].lift().expect("lift"),
                |mut one| {
                    one.scale_assign(Weight::try_new(2).expect("weight"), 0).expect("scale");
                    one
                },
                BatchSize::LargeInput,
            )
        });
        g.bench_function("compress_aggregate", |b| {
            b.iter(|| black_box(&sum).compress(&params, plan.download))
        });
        g.bench_function("decrypt_aggregate", |b| {
            b.iter(|| sk.decrypt(black_box(&sum)).expect("decrypt"))
        });
        let down = sum.compress(&params, plan.download);
        g.bench_function("decrypt_compressed_aggregate", |b| {
            b.iter(|| sk.decrypt_compressed(black_box(&down)).expect("decrypt"))
        });
        g.finish();
    }

    let mut g = c.benchmark_group("he/keys");
    g.sample_size(10);
    g.bench_function("generate_L8", |b| b.iter(|| generate_keys(params, bodies).expect("keygen")));
    let bytes = pk.to_bytes();
    g.bench_function("public_key_from_bytes_L8", |b| {
        b.iter(|| PublicKey::from_bytes(black_box(&bytes)).expect("decode"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
