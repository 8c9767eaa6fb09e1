"""What every peer script shares: the overhead suite's workload (K clients, d float32 values
uniform in [-1, 1], seed 7), its plaintext FedAvg baseline, the row format `overhead --peers`
reads (`benches/src/lib.rs`, `Row`) and the command line (`--dims`, `--clients`).

Only numpy and the standard library: it runs in every peer's virtual environment.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from typing import Callable

import numpy as np


def clients(d: int, k: int, seed: int = 7) -> tuple[list[np.ndarray], np.ndarray, float]:
    """K update vectors (float32), their exact mean (float64) and plaintext FedAvg's time
    (seconds) to sum them in float32."""
    rng = np.random.default_rng(seed)
    xs = [rng.uniform(-1.0, 1.0, d).astype(np.float32) for _ in range(k)]
    start = time.perf_counter()
    plain = np.zeros(d, dtype=np.float32)
    for x in xs:
        plain += x
    fedavg = time.perf_counter() - start
    del plain
    # The reference mean, accumulated in place (no K·d float64 temporaries: the peak RSS
    # of a row is the peer's, plus the K inputs and this one vector).
    exact = np.zeros(d)
    for x in xs:
        exact += x
    exact /= k
    return xs, exact, fedavg


def row(
    system: str,
    d: int,
    k: int,
    *,
    mean: np.ndarray,
    exact: np.ndarray,
    upload_bytes: float,
    download_bytes: float,
    key_bytes: float,
    encrypt_s: float,
    aggregate_s: float,
    aggregate_no_deser_s: float,
    decrypt_s: float,
    fedavg_s: float,
    version: str,
    note: str,
    **extra,
) -> dict:
    """One row: sizes in bytes (per client for uploads), times in seconds (per client for
    encryption), converted to the suite's per-value bytes and milliseconds; the error of
    `mean` against `exact`; this process's peak RSS."""
    err = np.abs(np.asarray(mean, dtype=np.float64) - exact)
    out = {
        "system": system,
        "d": d,
        "k": k,
        "precision": None,
        "upload_bytes_per_value": upload_bytes / d,
        "download_bytes_per_value": download_bytes / d,
        "key_bytes_per_value": key_bytes / d,
        "encrypt_ms": encrypt_s * 1e3,
        "aggregate_ms": aggregate_s * 1e3,
        "aggregate_no_deser_ms": aggregate_no_deser_s * 1e3,
        "decrypt_ms": decrypt_s * 1e3,
        "plaintext_fedavg_ms": fedavg_s * 1e3,
        "max_error": float(err.max()),
        "rms_error": float(np.sqrt(np.mean(err**2))),
        "bound": None,
        "e2e_round_ms": None,
        "aggregator_peak_mib": None,
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "version": version,
        "note": note,
    }
    out.update(extra)
    return out


def emit(r: dict) -> None:
    """The row on stdout (JSON line), a summary on stderr."""
    print(json.dumps(r), flush=True)
    print(
        f"{r['system']} d={r['d']} K={r['k']}: {r['upload_bytes_per_value']:.2f} B/value, "
        f"encrypt {r['encrypt_ms']:.1f} ms, aggregate {r['aggregate_ms']:.1f} ms "
        f"({r['aggregate_no_deser_ms']:.1f} without deserialisation), decrypt {r['decrypt_ms']:.1f} ms, "
        f"max error {r['max_error']:.1e}" + (" (extrapolated)" if r.get("extrapolated") else ""),
        file=sys.stderr,
    )


def cli(doc: str, measure: Callable[[int, int, argparse.Namespace], list[dict]], extra=None) -> None:
    """Parses `--dims` and `--clients` (comma lists; plus `extra(parser)`'s arguments) and
    emits `measure(d, k, args)`'s rows for every (K, d)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--dims", default="10000,100000,1000000")
    p.add_argument("--clients", default="8")
    if extra:
        extra(p)
    args = p.parse_args()
    for k in (int(v) for v in args.clients.split(",")):
        for d in (int(v) for v in args.dims.split(",")):
            for r in measure(d, k, args):
                emit(r)
