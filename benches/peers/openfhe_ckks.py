#!/usr/bin/env python3
"""The overhead suite's workload on OpenFHE CKKS (the official ``openfhe`` wheel).

Two parameter sets:
- ``N=8192``: ring dimension 8192 (4096 slots), scaling modulus 2^40, multiplicative depth
  1 with manual rescaling (two RNS towers: 60 + 40 bits), 128-bit classic security — the
  parameters FL frameworks use for CKKS aggregation;
- ``default``: OpenFHE's defaults for a depth-1 CKKS context (its own choice of scaling
  modulus, first modulus, rescaling technique and, for 128-bit security, ring dimension).

K clients encrypt d float32 values in [-1, 1] under one public key (as every HE aggregation
scheme in these frameworks does: the key pair is shared by the clients), the aggregator
deserialises and adds the K ciphertext vectors, a key holder decrypts the sum and divides by
K. One JSON line per (set, d, K) in the suite's row format, with the aggregation time with
and without deserialisation and this process's peak RSS.

The wheel (openfhe 1.6.1.0.22.4) ships a CPython 3.10 extension built for Ubuntu 22.04: run
it with a CPython 3.10 (run_all.sh looks for one).

    python3.10 openfhe_ckks.py --dims 10000,100000,1000000 --clients 8
"""

from __future__ import annotations

import importlib.metadata
import time

import numpy as np
import openfhe as fhe

import workload

VERSION = f"openfhe {importlib.metadata.version('openfhe')}"


def context(which: str):
    p = fhe.CCParamsCKKSRNS()
    p.SetMultiplicativeDepth(1)
    if which == "N=8192":
        p.SetRingDim(8192)
        p.SetScalingModSize(40)
        p.SetFirstModSize(60)
        p.SetScalingTechnique(fhe.ScalingTechnique.FIXEDMANUAL)
        # Only addition is needed: BV key switching adds no auxiliary modulus, so the
        # 100-bit modulus passes OpenFHE's 128-bit check at N = 8192.
        p.SetKeySwitchTechnique(fhe.KeySwitchTechnique.BV)
        p.SetSecurityLevel(fhe.SecurityLevel.HEStd_128_classic)
    cc = fhe.GenCryptoContext(p)
    cc.Enable(fhe.PKESchemeFeature.PKE)
    cc.Enable(fhe.PKESchemeFeature.LEVELEDSHE)
    return cc, p


def measure(d: int, k: int, args) -> list[dict]:
    return [measure_set(which, d, k) for which in args.sets.split(",")]


def measure_set(which: str, d: int, k: int) -> dict:
    cc, params = context(which)
    n = cc.GetRingDimension()
    slots = n // 2
    keys = cc.KeyGen()
    key_bytes = len(fhe.Serialize(keys.publicKey, fhe.BINARY))
    xs, exact, fedavg = workload.clients(d, k)

    wires, enc = [], 0.0
    for x in xs:
        start = time.perf_counter()
        values = x.astype(np.float64).tolist()
        cts = [cc.Encrypt(keys.publicKey, cc.MakeCKKSPackedPlaintext(values[i : i + slots])) for i in range(0, d, slots)]
        wire = [fhe.Serialize(c, fhe.BINARY) for c in cts]
        enc += time.perf_counter() - start
        wires.append(wire)
    upload = sum(len(w) for w in wires[0])

    start = time.perf_counter()
    decoded = [[fhe.DeserializeCiphertextString(w, fhe.BINARY) for w in client] for client in wires]
    deser = time.perf_counter() - start
    # Adding the K uploads and serialising the aggregate for download (as for TenSEAL).
    start = time.perf_counter()
    total = decoded[0]
    for client in decoded[1:]:
        total = [cc.EvalAdd(a, b) for a, b in zip(total, client)]
    published = [fhe.Serialize(c, fhe.BINARY) for c in total]
    add = time.perf_counter() - start
    del decoded

    start = time.perf_counter()
    out = []
    for w in published:
        pt = cc.Decrypt(keys.secretKey, fhe.DeserializeCiphertextString(w, fhe.BINARY))
        out.extend(pt.GetRealPackedValue())
    mean = np.asarray(out[:d]) / k
    dec = time.perf_counter() - start
    return workload.row(
        f"openfhe-ckks ({which})", d, k,
        mean=mean, exact=exact,
        upload_bytes=upload, download_bytes=sum(len(p) for p in published), key_bytes=key_bytes,
        encrypt_s=enc / k, aggregate_s=deser + add, aggregate_no_deser_s=add, decrypt_s=dec, fedavg_s=fedavg,
        version=VERSION,
        note=f"{VERSION}, CKKS N={n}, scaling modulus 2^{params.GetScalingModSize()}, {params.GetScalingTechnique()}, "
        f"{len(published[0])} B per ciphertext of {slots} slots; one key pair shared by the clients; "
        "peak = the process (this configuration only) holding all K clients' ciphertexts",
    )


if __name__ == "__main__":
    workload.cli(__doc__, measure, lambda p: p.add_argument("--sets", default="N=8192,default"))
