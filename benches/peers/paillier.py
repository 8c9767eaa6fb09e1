#!/usr/bin/env python3
"""The overhead suite's workload on Paillier (python-paillier, ``phe``), as FATE uses it.

phe uses gmpy2 for its modular arithmetic when it is installed (as FATE installs it); without
it every operation is ~8× slower. run_all.sh installs both.

Two encodings, both with a 2048-bit modulus (4096-bit ciphertexts, 512 bytes):
- ``plain``: one ciphertext per value, phe's fixed-point encoding at precision 2^-24
  (``PaillierPublicKey.encrypt(x, precision=2**-24)``), added with phe's ``+``;
- ``BatchCrypt``: values quantised to 16 bits (offset binary) and packed into one plaintext,
  each slot widened by ceil(log2 K) bits so the sum of K clients cannot carry into the
  next slot (BatchCrypt, Zhang et al., USENIX ATC 2020, with its sign handling replaced by
  an offset); the aggregator multiplies ciphertexts modulo n^2 (phe's raw operations).

Paillier encrypts one ciphertext at a time (a modular exponentiation each), so d = 10^6 at
K = 8 would take hours for the plain encoding. Each configuration is measured on a smaller
``--measure-values`` (all K clients, real encryption, aggregation over serialised
ciphertexts, decryption, the error of the mean) and the times are extrapolated per
ciphertext to each d: rows carry ``extrapolated: true`` and ``measured_d``. Sizes are
exact (512 bytes per ciphertext); errors are those measured.

    python3 paillier.py --dims 10000,100000,1000000 --clients 8
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import phe
from phe import paillier

import workload

KEY_BITS = 2048
QUANT_BITS = 16
PRECISION = 2.0**-24


def ciphertext_bytes(pk) -> int:
    return (pk.nsquare.bit_length() + 7) // 8


def measure_plain(pk, sk, xs) -> dict:
    k, m = len(xs), len(xs[0])
    start = time.perf_counter()
    encrypted = [[pk.encrypt(float(v), precision=PRECISION) for v in x] for x in xs]
    enc = (time.perf_counter() - start) / (k * m)  # per ciphertext
    size = ciphertext_bytes(pk)
    exponent = encrypted[0][0].exponent
    wire = [[c.ciphertext(be_secure=False).to_bytes(size, "big") for c in x] for x in encrypted]
    start = time.perf_counter()
    decoded = [[paillier.EncryptedNumber(pk, int.from_bytes(b, "big"), exponent) for b in x] for x in wire]
    deser = time.perf_counter() - start
    start = time.perf_counter()
    total = decoded[0]
    for x in decoded[1:]:
        total = [a + b for a, b in zip(total, x)]
    add = time.perf_counter() - start
    start = time.perf_counter()
    mean = np.array([sk.decrypt(c) for c in total]) / k
    dec = (time.perf_counter() - start) / m
    return {"slots": 1, "enc": enc, "add": add / m, "deser": deser / m, "dec": dec, "mean": mean}


def measure_packed(pk, sk, xs) -> dict:
    k, m = len(xs), len(xs[0])
    width = QUANT_BITS + max(1, math.ceil(math.log2(k)))
    slots = (pk.n.bit_length() - 1) // width
    scale = 2 ** (QUANT_BITS - 1) - 1
    cts = math.ceil(m / slots)

    def pack(x) -> list[int]:
        q = np.rint(np.clip(x, -1, 1) * scale).astype(np.int64) + scale  # in [0, 2 scale]
        out = []
        for i in range(0, m, slots):
            v = 0
            for j, u in enumerate(q[i : i + slots].tolist()):
                v |= u << (j * width)
            out.append(v)
        return out

    start = time.perf_counter()
    encrypted = [[pk.raw_encrypt(p) for p in pack(x)] for x in xs]
    enc = (time.perf_counter() - start) / (k * cts)
    size = ciphertext_bytes(pk)
    wire = [[c.to_bytes(size, "big") for c in x] for x in encrypted]
    start = time.perf_counter()
    decoded = [[int.from_bytes(b, "big") for b in x] for x in wire]
    deser = time.perf_counter() - start
    start = time.perf_counter()
    total = decoded[0]
    for x in decoded[1:]:
        total = [a * b % pk.nsquare for a, b in zip(total, x)]
    add = time.perf_counter() - start
    start = time.perf_counter()
    sums = []
    mask = (1 << width) - 1
    for c in total:
        v = sk.raw_decrypt(c)
        sums.extend((v >> (j * width)) & mask for j in range(slots))
    mean = (np.array(sums[:m], dtype=np.float64) - k * scale) / scale / k
    dec = (time.perf_counter() - start) / cts
    return {"slots": slots, "enc": enc, "add": add / cts, "deser": deser / cts, "dec": dec, "mean": mean,
            "width": width}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dims", default="10000,100000,1000000")
    p.add_argument("--clients", default="8")
    p.add_argument("--measure-values", type=int, default=0,
                   help="values measured per configuration (default: 64 plain, 20 ciphertexts packed)")
    args = p.parse_args()
    start = time.perf_counter()
    pk, sk = paillier.generate_paillier_keypair(n_length=KEY_BITS)
    keygen = time.perf_counter() - start
    size = ciphertext_bytes(pk)
    for k in (int(v) for v in args.clients.split(",")):
        # Both encodings measured on their samples, then the plaintext baseline at every d.
        measured = []
        for name, measure in (("plain", measure_plain), ("BatchCrypt", measure_packed)):
            width = QUANT_BITS + max(1, math.ceil(math.log2(k)))
            slots = 1 if name == "plain" else (pk.n.bit_length() - 1) // width
            m = args.measure_values or (64 if name == "plain" else 20 * slots)
            xs, exact, _ = workload.clients(m, k)
            r = measure(pk, sk, xs)
            measured.append((name, m, exact, r))
        for d in (int(v) for v in args.dims.split(",")):
            fedavg = workload.clients(d, k)[2]
            for name, m, exact, r in measured:
                n_ct = math.ceil(d / r["slots"])
                encoding = ("fixed-point 2^-24, one value per ciphertext" if name == "plain"
                            else f"{QUANT_BITS}-bit quantisation, {r['width']}-bit slots, {r['slots']} values per "
                            "ciphertext")
                workload.emit(workload.row(
                    f"paillier-{KEY_BITS} ({name})", d, k,
                    mean=r["mean"], exact=exact,
                    upload_bytes=n_ct * size, download_bytes=n_ct * size, key_bytes=pk.n.bit_length() // 8,
                    encrypt_s=r["enc"] * n_ct, aggregate_s=(r["add"] + r["deser"]) * n_ct,
                    aggregate_no_deser_s=r["add"] * n_ct, decrypt_s=r["dec"] * n_ct, fedavg_s=fedavg,
                    version=f"phe {phe.__version__}",
                    note=f"python-paillier {phe.__version__} with gmpy2, {KEY_BITS}-bit modulus ({size}-byte "
                    f"ciphertexts, key generation {keygen:.1f} s), {encoding}; times measured on {m} values × K and "
                    "extrapolated per ciphertext (the max error is the sample's: over 10^6 values it approaches "
                    "half a quantisation step); one key pair shared by the clients; no peak memory (a sample's "
                    "says nothing about d)",
                    extrapolated=True,
                    measured_d=m,
                    peak_mib=None,
                ))


if __name__ == "__main__":
    main()
