"""Differentially private rounds from Python (issue #26): the noise is calibrated from a target
ε, each site's journal is its privacy ledger, a budget stops a site cleanly, and bad arguments
raise errors naming them."""

import itertools

import numpy as np
import pytest

import cryptflow
from conftest import admin, site

_ids = itertools.count()


def _dp_round(stack, epsilon, clients=("site-0", "site-1", "site-2")):
    rid = f"py-dp-{next(_ids)}"
    info = admin(stack).create_round(
        rid,
        clients=list(clients),
        dim=500,
        clip=1.0,
        dp={"epsilon": epsilon, "delta": 1e-5, "honest_shares": 2, "colluders": 1},
    )
    return rid, info


def test_a_dp_round_is_calibrated_charged_and_read_with_its_noise(stack):
    rid, info = _dp_round(stack, 2.0)
    eps = cryptflow.round_epsilon(info, 1e-5)
    assert 1.9 < eps <= 2.0
    assert info["spec"]["plan"]["dp"]["colluders"] == 1
    x = [np.full(500, 0.01 * i, dtype=np.float32) for i in range(3)]
    sites = [site(stack, f"site-{i}") for i in range(3)]
    for s, u in zip(sites, x):
        s.submit(rid, u)
    sites[0].wait_for_aggregate(rid, timeout=60)
    agg = sites[0].fetch_mean(rid, like=x[0])
    assert agg.dp is not None and agg.dp["noise_std"] > 0
    truth = np.mean(x, axis=0)
    assert np.all(np.abs(agg.mean - truth) <= agg.max_abs_error)
    # Noise, not rounding: the residuals' spread is the reported noise's.
    spread = float(np.std(agg.mean - truth))
    assert 0.8 * agg.dp["noise_std"] < spread < 1.25 * agg.dp["noise_std"]
    ledger = sites[0].ledger()
    assert ledger["dp_rounds"] == 1
    assert abs(ledger["epsilon_spent"] - eps) < 1e-9


def test_a_budget_refuses_rounds_past_it_and_rounds_without_dp(stack):
    rid1, info = _dp_round(stack, 2.0)
    rid2, _ = _dp_round(stack, 2.0)
    one = cryptflow.round_epsilon(info, 1e-5)
    s = site(stack, "site-0", dp_epsilon=2.5, dp_delta=1e-5)
    s.submit(rid1, np.zeros(500, dtype=np.float32))
    with pytest.raises(cryptflow.BudgetError, match="past its budget"):
        s.submit(rid2, np.ones(500, dtype=np.float32) * 0.001)
    assert admin(stack).round(rid2)["uploads"] == 0
    assert abs(s.ledger()["epsilon_spent"] - one) < 1e-9
    plain = f"py-plain-{next(_ids)}"
    admin(stack).create_round(plain, clients=["site-0", "site-1"], dim=10)
    with pytest.raises(cryptflow.PolicyError, match="no differential privacy"):
        s.submit(plain, np.zeros(10, dtype=np.float32))


def test_bad_dp_arguments_name_themselves(stack):
    a = admin(stack)
    for dp, name in [
        ({"epsilon": 0}, "dp['epsilon']"),
        ({"noise_multiplier": float("nan")}, "dp['noise_multiplier']"),
        ({"noise_multiplier": 1.0, "epsilon": 1.0}, "exactly one"),
        ({"noise_multiplier": 1.0, "colluders": 0}, "dp['colluders']"),
        ({"noise_multiplier": 1.0, "sigma": 1}, "unknown key"),
        ({"epsilon": 1.0, "delta": 2.0}, "dp['delta']"),
        ({"noise_multiplier": 1.0, "rounds": 3}, "go with epsilon"),
    ]:
        with pytest.raises(cryptflow.InputError, match=name.replace("[", r"\[").replace("]", r"\]")):
            a.create_round(f"py-bad-{next(_ids)}", clients=["site-0", "site-1"], dim=10, dp=dp)
    with pytest.raises(cryptflow.RefusedError) as e:
        a.create_round(f"py-bad-{next(_ids)}", clients=["site-0", "site-1"], dim=10,
                       dp={"noise_multiplier": 1.0, "honest_shares": 2, "colluders": 1})
    assert e.value.problem["field"] == "dp.honest_shares"
    for kwargs, name in [({"dp_epsilon": 0.0, "dp_delta": 1e-5}, "dp_epsilon"),
                         ({"dp_epsilon": 1.0, "dp_delta": 1.5}, "dp_delta"),
                         ({"dp_epsilon": 1.0}, "dp_delta"),
                         ({"min_dp_colluders": 0}, "min_dp_colluders")]:
        with pytest.raises(cryptflow.ConfigError, match=name):
            site(stack, "site-1", **kwargs)
