#!/usr/bin/env python3
"""Golden ε values for CryptFlow's distributed-DP accountant, from dp-accounting 0.6.

Each case gives the mechanism's parameters — the L2 bound c, the grid γ = 2^-k, β, the model
size d, the noise multiplier z, the honest shares m_h, the colluders t_c (which size the
contributor set, not the charge), the rounds and δ. From them, with the formulas of Kairouz,
Liu and Steinke ("The Distributed Discrete Gaussian Mechanism", ICML 2021):

- the rotated length d' (blocks of 2^16, the last padded to a power of two);
- Δ₂² = ⌈min(c² + d'/4 + √(2 ln(1/β))·(c + √d'/2), (c + √d')²)⌉ (eq. 18), c in grid units,
  √(2 ln(1/β)) rounded up to 3.7233 as the planner does;
- K = ⌈Δ₂/8⌉ (the clipped-client indicator), S² = Δ₂² + K², σ² = ⌈z²·S²⌉;
- ρ = S²/(2σ²) + τ·(d' + 1)/4 with τ = 10·Σ_{k=1}^{m_h−1} exp(−2π²(σ²/m_h)·k/(k+1)) (Theorem 2);

and ε at δ from dp-accounting's RdpAccountant at CryptFlow's orders over `rounds` compositions
of ZCDpEvent(ρ) — cross-checked against GaussianDpEvent(σ/S) where τ vanishes.

    python he/tests/golden/dp_golden.py            # writes dp_epsilon.json next to it
    python he/tests/golden/dp_golden.py --check    # fails if the committed file differs
"""
import importlib.metadata
import json
import math
import pathlib
import sys

from dp_accounting import dp_event
from dp_accounting.rdp import rdp_privacy_accountant as rdp

ORDERS = [2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256]
BETA = 1.0 / 1024.0
# √(2 ln(1/β)) = 3.72329…, rounded up as CryptFlow's planner does (DP_ROUNDING_TAIL).
TAIL = 3.7233
assert TAIL >= math.sqrt(2.0 * math.log(1.0 / BETA))
BLOCK = 1 << 16

CASES = [
    # c, k, d, z, m_h, t_c, rounds, delta
    (1.0, 11, 1 << 20, 19.0, 99, 1, 100, 1e-6),
    (1.0, 12, 100_000, 1.0, 10, 1, 1, 1e-5),
    (0.5, 10, 4096, 1.5, 3, 1, 50, 1e-5),
    (2.0, 8, 1000, 5.0, 1, 1, 1000, 1e-7),
    (1.0, 14, 1 << 20, 0.8, 50, 2, 10, 1e-6),
    (0.1, 16, 7, 3.0, 5, 3, 300, 1e-5),
    # Shares of variance near ½ (σ_s² ≈ 0.5 and 2.6): τ matters, and CryptFlow's rational bound
    # on it must charge at least the exact ρ (these cases are checked as bounds, not to 1e-6).
    (1.0, 3, 7, 0.7, 100, 1, 5, 1e-5),
    (1.0, 3, 7, 1.0, 40, 1, 5, 1e-5),
]


def rotated_len(d):
    rest = d % BLOCK
    return d - rest + (0 if rest == 0 else 1 << (rest - 1).bit_length())


def case(c, k, d, z, m_h, t_c, rounds, delta):
    cg = c * 2.0**k
    dr = rotated_len(d)
    always = (cg + math.sqrt(dr)) ** 2
    tail = TAIL * (cg + math.sqrt(dr) / 2.0)
    rounded = math.ceil(min(cg * cg + dr / 4.0 + tail, always))
    indicator = math.ceil(math.sqrt(rounded) / 8.0)
    s2 = rounded + indicator**2
    sigma2 = math.ceil(z * z * float(s2))
    share = sigma2 / m_h
    tau = 10.0 * sum(math.exp(-2 * math.pi**2 * share * j / (j + 1)) for j in range(1, m_h))
    rho = s2 / (2.0 * sigma2) + tau * (dr + 1) / 4.0
    acc = rdp.RdpAccountant(orders=ORDERS)
    acc.compose(dp_event.ZCDpEvent(rho), rounds)
    eps = acc.get_epsilon(delta)
    gauss = rdp.RdpAccountant(orders=ORDERS)
    gauss.compose(dp_event.GaussianDpEvent(math.sqrt(sigma2 / s2)), rounds)
    if tau == 0.0 and abs(gauss.get_epsilon(delta) - eps) > 1e-9:
        raise SystemExit(f"ZCDpEvent and GaussianDpEvent disagree for {c, k, d, z}")
    return {
        "clip_bound": c, "grid_log": k, "values": d, "noise_multiplier": z,
        "honest_shares": m_h, "colluders": t_c, "rounds": rounds, "delta": delta,
        "sensitivity_sq": s2, "variance": sigma2, "rho": rho, "epsilon": eps,
        "tau_bound": tau > 1e-15,
    }


def main():
    out = pathlib.Path(__file__).with_name("dp_epsilon.json")
    doc = {
        "generated_by": "he/tests/golden/dp_golden.py",
        "dp_accounting": importlib.metadata.version("dp-accounting"),
        "orders": ORDERS,
        "cases": [case(*c) for c in CASES],
    }
    text = json.dumps(doc, indent=2) + "\n"
    if "--check" in sys.argv:
        if out.read_text() != text:
            raise SystemExit(f"{out} differs from what dp-accounting gives: run this script and commit it")
        print(f"{out.name}: {len(CASES)} cases agree with dp-accounting")
    else:
        out.write_text(text)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
