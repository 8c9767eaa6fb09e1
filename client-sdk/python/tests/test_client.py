"""The `cryptflow` package against a real local stack (three key managers, t = 2)."""

import threading
import time

import numpy as np
import pytest

import cryptflow
from conftest import admin, mean_of_two, site


def test_a_round_of_named_tensors_keeps_names_shapes_and_dtypes(stack):
    rng = np.random.default_rng(1)
    updates = [
        {
            "conv.weight": rng.uniform(-1, 1, (4, 3, 3)).astype(np.float32),
            "conv.bias": rng.uniform(-1, 1, 4).astype(np.float16),
            "fc.weight": rng.uniform(-1, 1, (10, 36)).astype(np.float64),
            "steps": np.array([7], dtype=np.int64),
        }
        for _ in range(3)
    ]
    info = admin(stack).create_round(
        "py-named", clients=["site-0", "site-1", "site-2"], like=updates[0], pass_integers=True, max_abs_error=1e-5
    )
    assert info["spec"]["values"] == 36 + 4 + 360
    for i, u in enumerate(updates):
        # Any order of the dict's keys: the round's order is restored.
        shuffled = dict(reversed(list(u.items())))
        r = site(stack, f"site-{i}").submit("py-named", shuffled, pass_integers=True)
        assert r["receipt"]["client_id"] == f"site-{i}" and r["clipped"] == 0
    reader = site(stack, "site-0")
    reader.wait_for_aggregate("py-named", timeout=60)
    agg = reader.fetch_mean("py-named", like=updates[0])
    assert agg.contributors == 3
    # A member does not verify the aggregate (only readers may fetch uploads) and says so.
    assert agg.verified is None and "only roster readers" in agg.not_verified
    assert list(agg.mean) == list(updates[0])
    for name, a in updates[0].items():
        got = agg.mean[name]
        assert got.shape == a.shape and got.dtype == a.dtype, name
        if name == "steps":
            assert (got == a).all()
            continue
        exact = sum(u[name].astype(np.float64) for u in updates) / 3
        assert np.abs(got.astype(np.float64) - exact).max() <= agg.max_abs_error, name
    # float16 output rounding is in the bound: it is far above the plan's 1e-5.
    assert agg.max_abs_error > 1e-4


def test_a_flat_float64_round_and_a_roster_reader(stack):
    x = [np.linspace(-1, 1, 5000) * (i + 1) / 4 for i in range(2)]
    admin(stack).create_round("py-flat", clients=["site-0", "site-1"], dim=5000)
    for i in range(2):
        site(stack, f"site-{i}").submit("py-flat", x[i])
    reader = site(stack, "server-app")  # a roster reader: not a contributor
    reader.wait_for_aggregate("py-flat", timeout=60)
    agg = reader.fetch_mean("py-flat", dtype=np.float64)
    assert agg.mean.dtype == np.float64 and agg.mean.shape == (5000,)
    assert np.abs(agg.mean - (x[0] + x[1]) / 2).max() <= agg.max_abs_error
    assert [n["x"] for n in agg.nodes] == [1, 2, 3, 4]
    # A reader recomputes the aggregate from the two signed uploads by default.
    assert agg.verified == 2 and agg.not_verified is None and agg.sampled_spans is None
    # …or samples spans (5,000 values are 3 spans: asking for 2 checks 2, 5 checks all 3),
    # each against the upload root its member signed.
    for asked, checked in [(2, 2), (5, 3)]:
        sampler = site(stack, "server-app", verify=asked)
        agg = sampler.fetch_mean("py-flat", dtype=np.float64)
        assert agg.verified is None and agg.not_verified is None
        assert agg.sampled_spans == checked and agg.detection_probability == pytest.approx(checked / 3)
        assert agg.info["verification"]["uploads"] == 2
    with pytest.raises(cryptflow.ConfigError, match="verify"):
        cryptflow.Client("http://127.0.0.1:1", verify="sometimes")
    for bad in (0, -1, True, 2.5):
        with pytest.raises(cryptflow.ConfigError, match="verify"):
            cryptflow.Client("http://127.0.0.1:1", verify=bad)


def test_bfloat16_through_ml_dtypes(stack):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    b = np.arange(-8, 8, dtype=np.float32).astype(ml_dtypes.bfloat16) / 8
    u = {"w": b}
    agg = mean_of_two(stack, "py-bf16", u)
    assert agg.mean["w"].dtype == b.dtype
    assert np.abs(agg.mean["w"].astype(np.float64) - b.astype(np.float64)).max() <= agg.max_abs_error


def test_every_error_has_its_class(stack):
    a = admin(stack)
    a.create_round("py-errors", clients=["site-0", "site-1"], dim=10)
    s0 = site(stack, "site-0")
    with pytest.raises(cryptflow.InputError, match="tensor `ids`"):
        s0.submit("py-errors", {"ids": np.arange(10)})
    with pytest.raises(cryptflow.InputError):
        s0.submit("py-errors", np.array([np.nan] * 10))
    with pytest.raises(ValueError):  # InputError is a ValueError
        s0.submit("py-errors", np.zeros(11))
    with pytest.raises(cryptflow.RefusedError) as e:
        s0.round("no-such-round")
    assert e.value.status == 404 and e.value.problem["field"] == "round"
    with pytest.raises(cryptflow.RefusedError) as e:
        a.create_round("py-bad", clients=["site-0", "site-1"], dim=10, max_abs_error=1e-300)
    assert e.value.problem["field"] == "max_abs_error"
    with pytest.raises(cryptflow.InputError, match="clip"):
        a.create_round("py-bad", clients=["site-0", "site-1"], dim=10, clip=float("nan"))
    with pytest.raises(cryptflow.RoundStateError):
        s0.fetch_mean("py-errors")
    with pytest.raises(cryptflow.PolicyError):
        site(stack, "site-0", min_contributors=3).submit("py-errors", np.zeros(10))
    # The committee is (4, 3): one colluding key manager tolerated, not two.
    with pytest.raises(cryptflow.PolicyError, match=r"\(4, 3\) tolerates 1 .*min_tolerated_colluding_nodes = 2"):
        site(stack, "site-0", min_tolerated_colluding_nodes=2).submit("py-errors", np.zeros(10))
    with pytest.raises(cryptflow.ConfigError, match="min_tolerated_colluding_nodes"):
        site(stack, "site-0", min_tolerated_colluding_nodes=-1)
    with pytest.raises(cryptflow.ConfigError, match="allow_single_key_manager"):
        site(stack, "site-0", allow_single_key_manager="yes")
    with pytest.raises(cryptflow.UnavailableError):
        cryptflow.Client("http://127.0.0.1:9", token="x", retry_budget=0).round("py-errors")
    with pytest.raises(cryptflow.ConfigError):
        cryptflow.Client("ftp://nowhere")
    with pytest.raises(cryptflow.ConfigError, match="key_file"):
        cryptflow.Client(stack["aggregator"], client_id="site-0", key_file="/nonexistent.pem")
    # Every class is a CryptflowError.
    for cls in (cryptflow.InputError, cryptflow.RefusedError, cryptflow.UnavailableError,
                cryptflow.RoundStateError, cryptflow.ProtocolError, cryptflow.CommitteeError,
                cryptflow.PolicyError, cryptflow.ConfigError, cryptflow.AlreadySubmittedError):
        assert issubclass(cls, cryptflow.CryptflowError)


def test_the_gil_is_released_during_a_large_encryption(stack):
    # A second Python thread keeps running while this one encrypts and uploads 4·10^6 values.
    d = 4_000_000
    admin(stack).create_round("py-gil", clients=["site-0", "site-1"], dim=d)
    ticks = []
    done = threading.Event()

    def tick():
        while not done.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    t = threading.Thread(target=tick)
    events = []
    x = np.linspace(-1, 1, d, dtype=np.float32)
    t.start()
    start = time.perf_counter()
    site(stack, "site-0").submit("py-gil", x, progress=lambda e, done_, total: events.append(e))
    end = time.perf_counter()
    done.set()
    t.join()
    during = [s for s in ticks if start < s < end]
    # With the GIL held for the whole call the other thread would not tick at all.
    assert len(during) > 10, (len(during), end - start)
    assert "encrypting" in events and "uploading" in events and "depositing" in events


def test_help_shows_documented_signatures():
    doc = cryptflow.Client.__doc__ + cryptflow.Client.submit.__doc__ + cryptflow.Client.fetch_mean.__doc__
    for word in ("committee_file", "key_file", "float16", "bfloat16", "max_abs_error", "Raises"):
        assert word in doc


def test_the_journal_refuses_a_repeat_and_a_second_round(stack, tmp_path):
    a = admin(stack)
    for r in ("py-journal-1", "py-journal-2"):
        a.create_round(r, clients=["site-2", "site-3"], dim=100)
    s = site(stack, "site-2", journal_file=tmp_path / "site-2.journal")
    x = np.linspace(-1, 1, 100)
    s.submit("py-journal-1", x)
    with pytest.raises(cryptflow.AlreadySubmittedError, match="py-journal-1"):
        s.submit("py-journal-1", x)
    # The same update in a second round would let whoever reads both means learn it.
    with pytest.raises(cryptflow.PolicyError, match="already submitted to round py-journal-1"):
        s.submit("py-journal-2", x)
    s.submit("py-journal-2", x, allow_resubmission=True)


def test_a_site_without_a_journal_is_refused_before_anything_is_sent(stack):
    # Issue #24: the journal was opt-in, so a site without one could submit one update to two
    # rounds and have it exposed by the difference of their means.
    admin(stack).create_round("py-no-journal", clients=["site-0", "site-1"], dim=10)
    with pytest.raises(cryptflow.ConfigError, match="journal_file"):
        site(stack, "site-0", journal_file=None).submit("py-no-journal", np.zeros(10))
    assert admin(stack).round("py-no-journal")["uploads"] == 0


def test_a_committee_file_that_does_not_match_the_nodes_is_a_committee_error(stack, tmp_path):
    import re

    text = open(stack["committee_file"], encoding="utf-8").read()
    keys = re.findall(r'public_key = "([^"]+)"', text)
    assert len(keys) == 4
    # Nodes 1 and 2 swap keys: every echo they sign fails against the pinned file, and the two
    # nodes left are fewer than t = 3.
    swapped = text.replace(keys[0], "KEY0").replace(keys[1], keys[0]).replace("KEY0", keys[1])
    pinned = tmp_path / "committee.toml"
    pinned.write_text(swapped)
    admin(stack).create_round("py-committee", clients=["site-0", "site-1"], dim=10)
    m = stack["members"]["site-0"]
    s = cryptflow.Client(stack["aggregator"], token=m["token"], committee_file=pinned, client_id="site-0",
                         key_file=m["key_file"], journal_file=tmp_path / "site-0.journal", retry_budget=5)
    with pytest.raises(cryptflow.CommitteeError):
        s.submit("py-committee", np.zeros(10))
    assert issubclass(cryptflow.CommitteeError, cryptflow.ProtocolError)


def test_odd_arrays_keep_their_shape_and_values(stack):
    # A 0-d tensor, a big-endian one and a non-contiguous (transposed) one.
    big = np.arange(6, dtype=">f4").reshape(2, 3) / 8
    u = {"scalar": np.float32(0.5), "big": big, "t": np.arange(6, dtype=np.float64).reshape(2, 3).T / 8}
    u = {k: np.asarray(v) for k, v in u.items()}
    agg = mean_of_two(stack, "py-odd", u)
    for k, a in u.items():
        assert agg.mean[k].shape == a.shape, k
        assert np.abs(agg.mean[k].astype(np.float64) - a.astype(np.float64)).max() <= agg.max_abs_error, k
    # A multi-dimensional array round gives an array back, not a dict.
    m = np.arange(6, dtype=np.float32).reshape(2, 3) / 8
    got = mean_of_two(stack, "py-2d", m).mean
    assert isinstance(got, np.ndarray) and got.shape == (2, 3)


def test_bad_arguments_name_the_argument(stack):
    a, s0 = admin(stack), site(stack, "site-0")
    a.create_round("py-args", clients=["site-0", "site-1"], dim=4)
    with pytest.raises(cryptflow.InputError, match="tensor `b` holds a non-finite value .* index \\(1,\\)"):
        s0.submit("py-args", {"a": np.zeros(2), "b": np.array([0.0, np.inf])})
    for count in (-1, 2.5, True):
        with pytest.raises(cryptflow.InputError, match="count"):
            s0.submit("py-args", np.zeros(4), count=count)
    with pytest.raises(cryptflow.InputError, match="dim"):
        a.create_round("py-args-2", clients=["site-0", "site-1"], dim=3.7)
    with pytest.raises(cryptflow.InputError, match="clients"):
        a.create_round("py-args-2", clients="site-0", dim=3)
    a.create_round("py-args-3", clients=["site-0", "site-1"], dim=3, clip=np.float32(2))  # numpy scalars are fine
    a.create_round("py-args-named", clients=["site-0", "site-1"], like={"a": np.zeros(2), "b": np.zeros(3)})
    with pytest.raises(cryptflow.InputError, match=r'missing \["b"\], not in the round \["c"\]'):
        s0.submit("py-args-named", {"a": np.zeros(2), "c": np.zeros(3)})
    with pytest.raises(cryptflow.InputError, match="integer tensors can only be passed through"):
        s0.submit("py-args", np.arange(4))
    # Checked before anything is downloaded: the round is not even published.
    with pytest.raises(cryptflow.InputError, match="int32"):
        s0.fetch_mean("py-args", dtype="int32")
    with pytest.raises(cryptflow.InputError, match="timeout"):
        s0.wait_for_aggregate("py-args", timeout=1e20)
    with pytest.raises(cryptflow.ConfigError, match="retry_budget"):
        site(stack, "site-0", retry_budget=None)
    with pytest.raises(cryptflow.ConfigError, match="min_contributors"):
        site(stack, "site-0", min_contributors=-1)
    import cryptflow._native as native

    with pytest.raises(native.NativeError, match="retry_budget"):
        native.NativeClient(stack["aggregator"], retry_budget_secs=1e20)


def test_every_tensor_a_model_has_round_trips_in_shape_and_dtype(stack):
    # The shapes a real model's state dict holds: 0-d (BatchNorm's num_batches_tracked, a
    # scalar temperature), empty (a pruned layer), 1-d, large, every float dtype. Before, a
    # float16 0-d tensor came back as shape (1,).
    import ml_dtypes

    u = {
        "temperature": np.array(0.25, np.float32),
        "half_scalar": np.array(0.5, np.float16),
        "pruned": np.zeros((0,), np.float32),
        "pruned_2d": np.zeros((3, 0), np.float64),
        "bias": np.linspace(-1, 1, 7, dtype=np.float64),
        "weight": np.linspace(-0.5, 0.5, 3000, dtype=np.float32).reshape(30, 100),
        "half": np.linspace(-1, 1, 5).astype(np.float16),
        "brain": np.linspace(-1, 1, 6).astype(ml_dtypes.bfloat16).reshape(2, 3),
        "bn.num_batches_tracked": np.array(7, np.int64),
    }
    admin(stack).create_round("py-shapes", clients=["site-0", "site-1"], like=u, pass_integers=True)
    for i in range(2):
        site(stack, f"site-{i}").submit("py-shapes", u, pass_integers=True)
    reader = site(stack, "site-0")
    reader.wait_for_aggregate("py-shapes", timeout=60)
    agg = reader.fetch_mean("py-shapes", like=u)
    assert list(agg.mean) == list(u)
    for name, a in u.items():
        got = agg.mean[name]
        assert (got.shape, got.dtype) == (a.shape, a.dtype), name
        assert np.abs(got.astype(np.float64) - a.astype(np.float64)).max(initial=0) <= agg.max_abs_error, name


def test_every_reader_learns_how_much_clipping_shaped_the_mean(stack):
    admin(stack).create_round("py-clip", clients=["site-0", "site-1"], dim=1000, clip=1.0)
    wild = np.zeros(1000)
    wild[:90] = 5.0  # 90 values beyond the bound at one site
    r = site(stack, "site-0").submit("py-clip", wild)
    assert r["clipped"] == 90  # the site knew; before, only the site knew
    site(stack, "site-1").submit("py-clip", np.full(1000, 0.5))
    reader = site(stack, "server-app")  # a roster reader, not a contributor
    reader.wait_for_aggregate("py-clip", timeout=60)
    agg = reader.fetch_mean("py-clip", dtype=np.float64)
    c = agg.clipping
    assert (c.contributions, c.values_at_least, c.values_at_most, c.of_values) == (1, 90, 90, 2000)
    assert c.any and c.fraction_at_most == 90 / 2000
    # The error bound is about the clipped values: the mean of the raw updates is 2.0 away.
    assert abs(agg.mean[0] - (5.0 + 0.5) / 2) > 1.0 > agg.max_abs_error


def test_samples_rounds_need_a_max_count(stack):
    a = admin(stack)
    with pytest.raises(cryptflow.InputError, match="max_count: required with weighting='samples'"):
        a.create_round("py-samples-nomax", clients=["site-0", "site-1"], dim=10, weighting="samples")
    with pytest.raises(cryptflow.InputError, match="max_count: applies to weighting='samples' only"):
        a.create_round("py-samples-nomax", clients=["site-0", "site-1"], dim=10, max_count=5)
    a.create_round("py-samples", clients=["site-0", "site-1"], dim=10, weighting="samples", max_count=1000)
    site(stack, "site-0").submit("py-samples", np.zeros(10), count=100)
    with pytest.raises(cryptflow.InputError, match="1000"):
        site(stack, "site-1").submit("py-samples", np.zeros(10), count=1001)


def test_a_rerun_under_a_new_experiment_is_not_a_resubmission(stack, tmp_path):
    a = admin(stack)
    for r in ("py-exp-1", "py-exp-2", "py-exp-3"):
        a.create_round(r, clients=["site-2", "site-3"], dim=50)
    s = site(stack, "site-3", journal_file=tmp_path / "site-3.journal")
    x = np.linspace(-1, 1, 50)
    s.submit("py-exp-1", x, experiment="run-1")
    with pytest.raises(cryptflow.PolicyError, match="name a new experiment"):
        s.submit("py-exp-2", x, experiment="run-1")
    s.submit("py-exp-2", x, experiment="run-2")  # the deterministic re-run
    with pytest.raises(cryptflow.PolicyError, match="py-exp-2"):
        s.submit("py-exp-3", x, experiment="run-2")


def test_a_wait_that_times_out_says_what_the_round_waits_for(stack):
    admin(stack).create_round("py-waits", clients=["site-0", "site-1", "site-2"], dim=10, min_clients=2)
    site(stack, "site-0").submit("py-waits", np.zeros(10))
    with pytest.raises(cryptflow.RoundStateError) as e:
        site(stack, "site-0").wait_for_aggregate("py-waits", timeout=0.5)
    # Before: "timed out waiting for round `py-waits`" and nothing else.
    assert "1 of 2–3 uploads" in str(e.value) and "deadline in" in str(e.value), e.value
    assert "closes it" in str(e.value), e.value
