#!/usr/bin/env python3
"""The overhead suite's workload on TenSEAL CKKS with NVIDIA FLARE's parameters.

NVIDIA FLARE's homomorphic-encryption filters use TenSEAL CKKS with
poly_modulus_degree = 8192, coeff_mod_bit_sizes = [60, 40, 40] and global scale 2^40.
This script runs the same workload as `overhead` (K clients, vectors of d values uniform
in [-1, 1], float32): each client encrypts its vector (in ciphertexts of N/2 = 4096
slots), the aggregator adds the K encrypted vectors, a client decrypts the sum and
divides by K. It prints one JSON line per (d, K) in the suite's row format, so
`overhead --peers FILE` puts TenSEAL in the same table.

Run it through `run_all.sh` (a throwaway virtual environment); by hand:
    python3 tenseal_ckks.py --dims 10000,100000,1000000 --clients 8 > tenseal.jsonl
"""

import time

import numpy as np
import tenseal as ts

import workload

POLY_MODULUS_DEGREE = 8192
COEFF_MOD_BIT_SIZES = [60, 40, 40]
GLOBAL_SCALE = 2**40
SLOTS = POLY_MODULUS_DEGREE // 2


def context():
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=POLY_MODULUS_DEGREE,
        coeff_mod_bit_sizes=COEFF_MOD_BIT_SIZES,
    )
    ctx.global_scale = GLOBAL_SCALE
    return ctx


def encrypt(ctx, x):
    return [ts.ckks_vector(ctx, x[i : i + SLOTS]) for i in range(0, len(x), SLOTS)]


def measure(d, k, args):
    ctx = context()
    public = ctx.copy()
    public.make_context_public()
    key_bytes = len(public.serialize())
    xs, exact, fedavg = workload.clients(d, k)

    # A client's encryption ends with its upload's bytes (as for OpenFHE).
    wire, enc = [], 0.0
    for x in xs:
        start = time.perf_counter()
        wire.append([c.serialize() for c in encrypt(ctx, x.tolist())])
        enc += time.perf_counter() - start
    upload = sum(len(c) for c in wire[0])

    start = time.perf_counter()
    decoded = [[ts.ckks_vector_from(public, c) for c in client] for client in wire]
    deser = time.perf_counter() - start
    start = time.perf_counter()
    total = decoded[0]
    for client in decoded[1:]:
        for i, c in enumerate(client):
            total[i] += c
    published = [c.serialize() for c in total]
    add = time.perf_counter() - start
    del decoded

    start = time.perf_counter()
    mean = np.concatenate([ts.ckks_vector_from(ctx, p).decrypt() for p in published]) / k
    dec = time.perf_counter() - start
    return [workload.row(
        "tenseal-ckks (NVFlare params)", d, k,
        mean=mean[:d], exact=exact,
        upload_bytes=upload, download_bytes=sum(len(p) for p in published), key_bytes=key_bytes,
        encrypt_s=enc / k, aggregate_s=deser + add, aggregate_no_deser_s=add, decrypt_s=dec, fedavg_s=fedavg,
        version=f"tenseal {ts.__version__}",
        note=f"TenSEAL {ts.__version__}, N={POLY_MODULUS_DEGREE}, moduli {COEFF_MOD_BIT_SIZES}, scale 2^40; one key "
        "pair shared by the clients; peak = the process (this configuration only) holding all K clients' ciphertexts",
    )]


if __name__ == "__main__":
    workload.cli(__doc__, measure)
