//! Criterion benchmarks of every `he` operation at d ∈ {2^16, 2^20, 2^23} values, C = 8
//! contributions, |v| ≤ 1, mean error ≤ 1e-6 (planner: w = 28), next to plaintext FedAvg of the
//! same float32 vectors in the same run.
//!
//! Run: `cargo bench -p cryptflow-he --bench he` (all sizes, several minutes on two cores), or
//! one size: `cargo bench -p cryptflow-he --bench he -- 'd=2\^20'`. The overhead report across
//! dimensions, client counts and precisions is `cryptflow-benches`' `overhead` binary.
#![allow(missing_docs, clippy::expect_used)]

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use cryptflow_he::planner::{plan, PlanRequest, Weighting};
use cryptflow_he::sharing::{CommitteeShape, Release};
use cryptflow_he::{
    decrypt_with_releases, AggregateKey, ClientKey, DecodeLimits, MaskSeed, PackedCiphertext,
    ParameterSet, RoundSetup, RunningSum, Wire,
};
use sha2::Digest;
use std::time::Duration;

const C: usize = 8;

fn bench(c: &mut Criterion) {
    let params = ParameterSet::default_128();
    let p = plan(
        &params,
        &PlanRequest {
            max_clients: C as u32,
            clip_bound: 1.0,
            max_abs_error: 1e-6,
            weighting: Weighting::Uniform,
            dp: None,
        },
    )
    .expect("feasible plan");

    let mut g = c.benchmark_group("he/keys");
    g.bench_function("generate", |b| b.iter(|| ClientKey::generate(&params).expect("key")));
    let key = ClientKey::generate(&params).expect("key");
    for (n, t) in [(1u8, 1u8), (5, 4)] {
        let shape = CommitteeShape::try_new(n, t).expect("shape");
        g.bench_function(format!("share_{t}_of_{n}"), |b| {
            b.iter(|| key.share(shape).expect("share"))
        });
    }
    g.finish();

    for log_d in [16u32, 20, 23] {
        let d = 1usize << log_d;
        let setup =
            RoundSetup::try_new(p, MaskSeed::generate().expect("seed"), d as u64).expect("setup");
        let inputs: Vec<Vec<f32>> = (0..C)
            .map(|k| (0..d).map(|i| ((i * 7 + k * 13) as f32 * 0.001).sin()).collect())
            .collect();
        let keys: Vec<ClientKey> =
            (0..C).map(|_| ClientKey::generate(&params).expect("key")).collect();
        let uploads: Vec<PackedCiphertext> = keys
            .iter()
            .zip(&inputs)
            .map(|(k, x)| {
                k.encryptor(&setup, None)
                    .expect("encryptor")
                    .encrypt(&x[..])
                    .expect("encrypt")
                    .ciphertext
            })
            .collect();
        let mut g = c.benchmark_group(format!("he/d=2^{log_d}"));
        g.sample_size(if log_d >= 23 { 10 } else { 20 });
        g.measurement_time(Duration::from_secs(if log_d >= 23 { 20 } else { 8 }));
        g.throughput(Throughput::Elements(d as u64));

        // A fresh encryptor per iteration: one encryption per key and block (invariant 1).
        g.bench_function("encrypt_and_pack", |b| {
            b.iter_batched(
                || keys[0].encryptor(&setup, None).expect("encryptor"),
                |enc| enc.encrypt(black_box(&inputs[0][..])).expect("encrypt"),
                BatchSize::LargeInput,
            )
        });
        let bytes = uploads[0].to_bytes();
        g.bench_function("decode_upload", |b| {
            b.iter_batched(
                || bytes.clone(),
                |v| {
                    PackedCiphertext::from_vec_with_limits(v, &DecodeLimits::default())
                        .expect("decode")
                },
                BatchSize::LargeInput,
            )
        });
        let refs: Vec<&PackedCiphertext> = uploads.iter().collect();
        g.bench_function("lift_sum_8_into_allocated", |b| {
            b.iter_batched_ref(
                || {
                    let mut s = RunningSum::zero(&setup, 0..setup.slots()).expect("sum");
                    s.add_uploads(&refs[..1]).expect("touch");
                    s
                },
                |sum| sum.add_uploads(black_box(&refs)).expect("fold"),
                BatchSize::LargeInput,
            )
        });
        g.bench_function("lift_sum_8", |b| {
            b.iter(|| {
                let mut sum = RunningSum::zero(&setup, 0..setup.slots()).expect("sum");
                sum.add_uploads(black_box(&refs)).expect("fold");
                sum
            })
        });
        // Plaintext FedAvg of the same vectors, as a user would sum them.
        g.bench_function("plaintext_fedavg_sum_8", |b| {
            b.iter(|| {
                let mut acc = vec![0f32; d];
                for x in black_box(&inputs) {
                    for (a, v) in acc.iter_mut().zip(x) {
                        *a += v;
                    }
                }
                acc
            })
        });
        let mut sum = RunningSum::zero(&setup, 0..setup.slots()).expect("sum");
        sum.add_uploads(&refs).expect("fold");
        g.bench_function("pack_aggregate", |b| b.iter(|| sum.pack()));
        let aggregate =
            PackedCiphertext::aggregate(&setup, C as u32, sum.pack()).expect("aggregate");
        let key_sum = AggregateKey::sum_of(&keys);
        g.bench_function("decrypt", |b| {
            b.iter(|| key_sum.decrypt(&setup, black_box(&aggregate)).expect("decrypt"))
        });
        g.bench_function("decrypt_and_mean_f32", |b| {
            b.iter(|| {
                key_sum.decrypt(&setup, black_box(&aggregate)).expect("decrypt").mean::<f32>()
            })
        });
        if log_d == 20 {
            let shape = CommitteeShape::try_new(5, 4).expect("shape");
            let shares: Vec<_> = keys.iter().map(|k| k.share(shape).expect("share")).collect();
            let releases: Vec<Release> = (0..5)
                .map(|j| {
                    Release::sum(shares[0][j].index(), shares.iter().map(|s| &s[j]))
                        .expect("release")
                })
                .collect();
            g.bench_function("cross_check_combine_decrypt_5_releases", |b| {
                b.iter(|| {
                    decrypt_with_releases(&setup, &aggregate, shape, black_box(&releases))
                        .expect("decrypt")
                })
            });
            verification(&mut g, &setup, &uploads, &aggregate);
        }
        g.finish();
    }
}

/// What verifying an aggregate of 8 uploads costs in CPU (issue #24; the bytes fetched are
/// the uploads, or the sampled spans, on top): a client's root while it streams its upload;
/// a reader recomputing (SHA-256 of each upload against its signed digest, the sum, the
/// comparison); the aggregator answering one member's request for 128 spans (one pass over
/// the upload, the audit paths); a reader checking 128 spans of 8 uploads (audit paths against
/// the roots, span sums against the aggregate).
fn verification(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    setup: &RoundSetup,
    uploads: &[PackedCiphertext],
    aggregate: &PackedCiphertext,
) {
    use cryptflow_he::merkle;
    let bytes: Vec<Vec<u8>> = uploads.iter().map(|u| u.to_bytes()).collect();
    g.bench_function("upload_root", |b| {
        b.iter(|| merkle::root(setup, black_box(&bytes[0])).expect("root"))
    });
    let digests: Vec<[u8; 32]> = bytes.iter().map(|b| sha2::Sha256::digest(b).into()).collect();
    g.bench_function("verify_recompute_8", |b| {
        b.iter(|| {
            let mut sum = RunningSum::zero(setup, 0..setup.slots()).expect("sum");
            for (u, (raw, d)) in uploads.iter().zip(bytes.iter().zip(&digests)) {
                assert_eq!(<[u8; 32]>::from(sha2::Sha256::digest(black_box(raw))), *d);
                sum.add_upload(u).expect("fold");
            }
            assert!(sum.pack() == aggregate.payload());
        })
    });
    let spans = setup.blocks();
    let at: Vec<u64> = (0..128).map(|i| i * spans / 128).collect();
    g.bench_function("serve_128_spans_of_one_upload", |b| {
        b.iter(|| {
            let mut h = merkle::RootHasher::new(setup).keeping_leaves();
            h.update(black_box(&bytes[0]));
            let (_, leaves) = h.finish_with_leaves().expect("leaves");
            merkle::proofs(&leaves, &at)
        })
    });
    let roots: Vec<merkle::Hash> =
        bytes.iter().map(|b| merkle::root(setup, b).expect("root")).collect();
    let paths: Vec<Vec<Vec<merkle::Hash>>> = bytes
        .iter()
        .map(|b| merkle::proofs(&merkle::leaves(setup, b).expect("leaves"), &at))
        .collect();
    let header: [u8; 64] = bytes[0][..64].try_into().expect("header");
    let agg = aggregate.to_bytes();
    g.bench_function("verify_128_spans_of_8", |b| {
        b.iter(|| {
            for (k, &j) in at.iter().enumerate() {
                let r = merkle::span_range(setup, j);
                for (m, raw) in bytes.iter().enumerate() {
                    assert!(merkle::verify_span(
                        &roots[m],
                        &header,
                        spans,
                        j,
                        &raw[r.clone()],
                        &paths[m][k]
                    ));
                }
                let parts: Vec<&[u8]> = bytes.iter().map(|raw| &raw[r.clone()]).collect();
                assert!(merkle::span_sums_to(setup, j, &parts, &agg[r.clone()]).expect("sum"));
            }
        })
    });
}

/// The distributed-DP client steps on 2^16 values (issue #26): the rotation, conditional
/// rounding, and discrete-Gaussian noise shares at σ² = 2^10 and 2^30 grid units² (the
/// exact sampler's cost grows with log σ through its big-integer arithmetic).
fn dp(c: &mut Criterion) {
    use cryptflow_he::dp::rotation::Rotation;
    use cryptflow_he::dp::rounding::{inflated_sensitivity_sq, round_conditionally};
    use cryptflow_he::dp::{sample_discrete_gaussians, Variance};
    use rand_core::SeedableRng;
    let d = 1usize << 16;
    let x: Vec<f64> = (0..d).map(|i| ((i * 7) as f64 * 0.001).sin()).collect();
    let rot = Rotation::new(&MaskSeed([5; 16]), d);
    let mut g = c.benchmark_group("he/dp/d=2^16");
    g.throughput(Throughput::Elements(d as u64));
    g.bench_function("rotate", |b| b.iter(|| rot.rotate(black_box(&x))));
    let scaled: Vec<f64> = x.iter().map(|v| v * 64.0).collect();
    let bound = inflated_sensitivity_sq(64.0 * (d as f64).sqrt(), d, 1e-9);
    let mut rng = rand_chacha::ChaCha20Rng::from_seed([1; 32]);
    g.bench_function("round_conditionally", |b| {
        b.iter(|| round_conditionally(black_box(&scaled), bound, &mut rng).expect("within bound"))
    });
    for log_s2 in [10u32, 30] {
        let sigma2 = Variance::integer(1u128 << log_s2).expect("variance");
        g.bench_function(format!("discrete_gaussian_sigma2=2^{log_s2}"), |b| {
            b.iter(|| sample_discrete_gaussians(&sigma2, d, &mut rng))
        });
    }
    g.finish();
}

criterion_group!(benches, bench, dp);
criterion_main!(benches);
