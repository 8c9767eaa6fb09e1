#!/usr/bin/env python3
"""The overhead suite's workload on TenSEAL CKKS with NVIDIA FLARE's parameters.

NVIDIA FLARE's homomorphic-encryption filters use TenSEAL CKKS with
poly_modulus_degree = 8192, coeff_mod_bit_sizes = [60, 40, 40] and global scale 2^40.
This script runs the same workload as `overhead` (K clients, vectors of d values uniform
in [-1, 1], float32): each client encrypts its vector (in ciphertexts of N/2 = 4096
slots), the aggregator adds the K encrypted vectors, a client decrypts the sum and
divides by K. It prints one JSON line per (d, K) in the suite's row format, so
`overhead --peers FILE` puts TenSEAL in the same table.

Run it through `run.sh` (a throwaway virtual environment); by hand:
    python3 tenseal_ckks.py --dims 10000,100000,1000000 --clients 8 > tenseal.jsonl
"""

import argparse
import json
import sys
import time

import numpy as np
import tenseal as ts

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


def size(chunks):
    return sum(len(c.serialize()) for c in chunks)


def measure(d, k, seed):
    rng = np.random.default_rng(seed)
    ctx = context()
    public = ctx.copy()
    public.make_context_public()
    key_bytes = len(public.serialize())
    xs = [rng.uniform(-1.0, 1.0, d).astype(np.float32) for _ in range(k)]

    start = time.perf_counter()
    plain = np.zeros(d, dtype=np.float32)
    for x in xs:
        plain += x
    fedavg = time.perf_counter() - start
    exact = np.sum([x.astype(np.float64) for x in xs], axis=0) / k

    encrypted, enc = [], 0.0
    for x in xs:
        start = time.perf_counter()
        encrypted.append(encrypt(ctx, x.tolist()))
        enc += time.perf_counter() - start
    upload = size(encrypted[0])
    # Uploads arrive serialised; the aggregator deserialises and adds them.
    wire = [[c.serialize() for c in client] for client in encrypted]
    del encrypted

    start = time.perf_counter()
    total = [ts.ckks_vector_from(public, c) for c in wire[0]]
    for client in wire[1:]:
        for i, c in enumerate(client):
            total[i] += ts.ckks_vector_from(public, c)
    published = [c.serialize() for c in total]
    agg = time.perf_counter() - start
    download = sum(len(p) for p in published)

    start = time.perf_counter()
    mean = np.concatenate([ts.ckks_vector_from(ctx, p).decrypt() for p in published]) / k
    dec = time.perf_counter() - start
    err = np.abs(mean[:d] - exact)
    return {
        "system": "tenseal-ckks (NVFlare params)",
        "d": d,
        "k": k,
        "precision": None,
        "upload_bytes_per_value": upload / d,
        "download_bytes_per_value": download / d,
        "key_bytes_per_value": key_bytes / d,
        "encrypt_ms": enc * 1e3 / k,
        "aggregate_ms": agg * 1e3,
        "decrypt_ms": dec * 1e3,
        "plaintext_fedavg_ms": fedavg * 1e3,
        "max_error": float(err.max()),
        "rms_error": float(np.sqrt(np.mean(err**2))),
        "bound": None,
        "e2e_round_ms": None,
        "aggregator_peak_mib": None,
        "note": f"TenSEAL {ts.__version__}, N={POLY_MODULUS_DEGREE}, moduli {COEFF_MOD_BIT_SIZES}, "
        "scale 2^40; in-process, no REST round",
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dims", default="10000,100000,1000000")
    p.add_argument("--clients", default="8")
    args = p.parse_args()
    for k in (int(v) for v in args.clients.split(",")):
        for d in (int(v) for v in args.dims.split(",")):
            row = measure(d, k, seed=7)
            print(json.dumps(row), flush=True)
            print(
                f"d={d} K={k}: {row['upload_bytes_per_value']:.1f} B/value, "
                f"encrypt {row['encrypt_ms']:.0f} ms, aggregate {row['aggregate_ms']:.0f} ms, "
                f"decrypt {row['decrypt_ms']:.0f} ms",
                file=sys.stderr,
            )


if __name__ == "__main__":
    main()
