"""`cryptflow.flwr`'s mod as Flower calls it (real Flower `Message`s, no SuperLink): what it
refuses so that no reply carries weights, and a train message through a real local stack."""

import numpy as np
import pytest

flwr = pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

import cryptflow  # noqa: E402
from cryptflow.flwr import (  # noqa: E402
    INTEGERS_KEY, ROUND_KEY, AdaptiveClip, CryptflowFedAvg, RoundFailedError, SecureAggregationMod,
)
from conftest import admin, site  # noqa: E402

TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
WEIGHTS = {"w": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4), "steps": np.array(3, dtype=np.int64)}


def message(kind="train", round_id="r", weights=WEIGHTS, integers=None):
    config = ConfigRecord({ROUND_KEY: round_id} if round_id else {})
    if integers:
        config[INTEGERS_KEY] = integers
    content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in weights.items()}), "config": config})
    return Message(content, dst_node_id=1, message_type=kind)


def context():
    return Context(run_id=1, node_id=1, node_config={"partition-id": 0}, state=RecordDict(), run_config={})


def train(msg, ctx):
    """A train function: every float weight + 0.25, 100 examples."""
    new = {k: Array(v + 0.25 if v.dtype.kind == "f" else v) for k, v in ((k, a.numpy()) for k, a in msg.content["arrays"].items())}
    return Message(RecordDict({"arrays": ArrayRecord(new), "metrics": MetricRecord({"num-examples": 100})}), reply_to=msg)


class Sites:
    """Counts how often the mod asked for a client (it must not when it refuses early)."""

    def __init__(self, make):
        self.make, self.calls = make, 0

    def __call__(self, ctx):
        self.calls += 1
        return self.make()


def no_client():
    raise AssertionError("the mod must refuse before using a client")


@pytest.mark.parametrize("kind", ["train", "train.default", "train.finetune"])
def test_every_train_message_type_is_secured(kind):
    # Without a round in the config the mod refuses rather than reply with the weights.
    out = SecureAggregationMod(Sites(no_client))(message(kind, round_id=None), context(), train)
    assert out.has_error() and "names no round" in out.error.reason


@pytest.mark.parametrize("kind", ["evaluate", "evaluate.default", "query"])
def test_no_reply_of_another_type_carries_arrays(kind):
    out = SecureAggregationMod(Sites(no_client))(message(kind), context(), train)
    assert out.has_error() and "must not carry arrays" in out.error.reason

    def evaluate(msg, ctx):
        return Message(RecordDict({"metrics": MetricRecord({"accuracy": 0.5})}), reply_to=msg)

    ok = SecureAggregationMod(Sites(no_client))(message(kind), context(), evaluate)
    assert not ok.has_error() and len(ok.content.array_records) == 0


def test_a_client_without_a_journal_is_refused(stack):
    out = SecureAggregationMod(lambda ctx: site(stack, "site-0", journal_file=None))(message(), context(), train)
    assert out.has_error() and "journal_file" in out.error.reason


def test_changed_shapes_are_refused():
    def reshape(msg, ctx):
        return Message(RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros(12, np.float32)),
                                                          "steps": Array(WEIGHTS["steps"])}),
                                   "metrics": MetricRecord({"num-examples": 1})}), reply_to=msg)

    out = SecureAggregationMod(Sites(no_client))(message(), context(), reshape)
    assert out.has_error() and "came back as (12,)" in out.error.reason


def test_a_train_reply_carries_metrics_and_the_receipt_only(stack, tmp_path):
    admin(stack).create_round("py-mod", clients=["site-0", "site-1"], like=WEIGHTS, pass_integers=True,
                              weighting="samples", max_count=1000)
    replies = []
    for i in range(2):
        mod = SecureAggregationMod(lambda ctx, i=i: site(stack, f"site-{i}", journal_file=tmp_path / f"{i}.journal"))
        replies.append(mod(message(round_id="py-mod"), context(), train))
    for r in replies:
        assert not r.has_error(), r.error
        assert len(r.content.array_records) == 0
        # No per-site clipping count: that is per-site information (the count over all
        # sites comes with the mean).
        assert list(r.content["metrics"].keys()) == ["num-examples"]
        assert r.content["cryptflow"]["round"] == "py-mod"
    reader = site(stack, "server-app")
    reader.wait_for_aggregate("py-mod", timeout=60)
    agg = reader.fetch_mean("py-mod", dtype=np.float64)
    # Each site sent its update (+0.25 everywhere), not its weights; `steps` was left out.
    assert list(agg.mean) == ["w"]
    w = WEIGHTS["w"]
    exact = (w + np.float32(0.25)).astype(np.float64) - w.astype(np.float64)  # float32 training
    assert np.abs(agg.mean["w"] - exact).max() <= agg.max_abs_error


def test_a_dp_rounds_reply_carries_the_receipt_and_nothing_else(stack, tmp_path):
    # Issue #26: a sample count or a loss in the reply travels unnoised.
    w = {"w": WEIGHTS["w"]}
    admin(stack).create_round("py-mod-dp", clients=["site-0", "site-1", "site-2"], like=w,
                              dp={"noise_multiplier": 1.0, "honest_shares": 2, "colluders": 1})
    for i in range(3):
        mod = SecureAggregationMod(lambda ctx, i=i: site(stack, f"site-{i}", journal_file=tmp_path / f"dp{i}.j"))
        r = mod(message(round_id="py-mod-dp", weights=w), context(), train)
        assert not r.has_error(), r.error
        assert len(r.content.array_records) == 0
        assert list(r.content["metrics"].keys()) == []
        assert r.content["cryptflow"]["round"] == "py-mod-dp"
    reader = site(stack, "server-app")
    reader.wait_for_aggregate("py-mod-dp", timeout=60)
    agg = reader.fetch_mean("py-mod-dp", dtype=np.float64)
    assert agg.dp["noise_std"] > 0
    assert np.abs(agg.mean["w"] - 0.25).max() <= agg.max_abs_error


def train_steps(msg, ctx):
    """A train function: float weights + 0.25, integer buffers + 3 (steps taken), 10 examples."""
    new = {k: Array(np.asarray(a + 0.25 if a.dtype.kind == "f" else a + 3))
           for k, a in ((k, v.numpy()) for k, v in msg.content["arrays"].items())}
    return Message(RecordDict({"arrays": ArrayRecord(new), "metrics": MetricRecord({"num-examples": 10})}),
                   reply_to=msg)


def test_the_mean_integer_policy_averages_integer_buffers(stack, tmp_path):
    # `steps` (an int64 0-d buffer) goes into the round as a float update and comes back as
    # the mean of the sites' increments.
    like = {"w": np.zeros((3, 4)), "steps": np.zeros(())}
    admin(stack).create_round("py-mod-ints", clients=["site-2", "site-3"], like=like, weighting="samples",
                              max_count=1000, clip=4.0)

    for i in (2, 3):
        mod = SecureAggregationMod(lambda ctx, i=i: site(stack, f"site-{i}", journal_file=tmp_path / f"{i}.j"))
        out = mod(message(round_id="py-mod-ints", integers="mean"), context(), train_steps)
        assert not out.has_error(), out.error
    reader = site(stack, "server-app")
    reader.wait_for_aggregate("py-mod-ints", timeout=60)
    agg = reader.fetch_mean("py-mod-ints", like=like)
    assert agg.mean["steps"].shape == ()
    assert abs(float(agg.mean["steps"]) - 3.0) <= agg.max_abs_error


def test_a_refused_site_or_a_failed_round_fails_the_run(stack):
    from flwr.app import Error

    strategy = CryptflowFedAvg(admin(stack), site(stack, "server-app"), ["site-0", "site-1"],
                               round_prefix="py-strategy", clip=1.0, min_contributors=2)
    strategy._current = {"w": WEIGHTS["w"]}
    strategy._round = ("py-strategy-1", 2)
    asked = message(round_id="py-strategy-1")
    refused = Message(Error(code=0, reason="CryptFlow: InputError: count 5000 is beyond max_count 1000"),
                      reply_to=asked)
    # Before: a warning line and an unchanged model — the run went on and exited 0.
    with pytest.raises(RoundFailedError, match="max_count 1000"):
        strategy.aggregate_train(1, [refused])
    # A CryptFlow round that never publishes (nobody uploaded to it) fails the run too.
    admin(stack).create_round("py-strategy-2", clients=["site-0", "site-1"], dim=12)
    strategy._current, strategy._round, strategy.wait = {"w": WEIGHTS["w"]}, ("py-strategy-2", 2), 1.0
    ok = Message(RecordDict({"metrics": MetricRecord({"num-examples": 1})}), reply_to=asked)
    with pytest.raises(RoundFailedError, match="py-strategy-2"):
        strategy.aggregate_train(2, [ok, ok])
    assert issubclass(RoundFailedError, cryptflow.CryptflowError)


def test_adaptive_clipping_follows_andrew_et_al():
    a = AdaptiveClip(initial=1.0, target_unclipped_quantile=0.9, learning_rate=0.5)
    # clip · exp(−η (b − γ)): grows while contributions clip, shrinks while none does.
    assert a.next(1.0, 0.0) == pytest.approx(np.exp(0.45))
    assert a.next(2.0, 1.0) == pytest.approx(2.0 * np.exp(-0.05))
    assert a.next(1.0, 0.9) == pytest.approx(1.0)
    assert AdaptiveClip(max_clip=1.5).next(1.0, 0.0) == 1.5
    for bad in ({"initial": 0}, {"target_unclipped_quantile": 0}, {"learning_rate": float("nan")}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            AdaptiveClip(**bad)


def test_the_strategy_keeps_0d_tensors_0d_and_rounds_integer_means(stack, tmp_path):
    # Before: 0-d tensors came back from the strategy as shape (1,) (BatchNorm models froze
    # from round 2 on), and with integers="mean" a 0-d buffer became a numpy scalar that
    # Flower's Array refused.
    current = {"w": np.zeros((3, 4), np.float32), "temperature": np.array(1.0, np.float32),
               "bn.num_batches_tracked": np.array(3, np.int64)}
    strategy = CryptflowFedAvg(admin(stack), site(stack, "server-app"), ["site-0", "site-1"],
                               round_prefix="py-strategy-0d", clip=8.0, integers="mean", min_contributors=2)
    round_id = "py-strategy-0d-1"
    # What configure_train creates for this model.
    admin(stack).create_round(round_id, clients=["site-0", "site-1"], like=strategy._averaged(current),
                              weighting="samples", max_count=1000, clip=8.0)
    asked = message(round_id=round_id, weights=current, integers="mean")
    for i in (0, 1):
        mod = SecureAggregationMod(lambda ctx, i=i: site(stack, f"site-{i}", journal_file=tmp_path / f"{i}.j"))
        assert not mod(asked, context(), train_steps).has_error()
    strategy._current, strategy._round = current, (round_id, 2)
    ok = Message(RecordDict({"metrics": MetricRecord({"num-examples": 10})}), reply_to=asked)
    arrays, metrics = strategy.aggregate_train(1, [ok, ok])
    got = {k: arrays[k].numpy() for k in arrays.keys()}
    for name, a in current.items():
        assert (got[name].shape, got[name].dtype) == (a.shape, a.dtype), name
    assert abs(float(got["temperature"]) - 1.25) <= 1e-6
    assert int(got["bn.num_batches_tracked"]) == 6
    assert metrics["cryptflow-clipped-contributions"] == 0 and metrics["cryptflow-contributors"] == 2


def test_the_adaptive_bound_stays_within_what_a_round_can_carry():
    from cryptflow import _native

    # With the defaults (1e-6, counts up to 100,000) a round of 3 carries a clip of about 7.3.
    limit = _native.largest_clip_bound(3, 1e-6, 1, 100_000)
    assert 7.0 < limit < 7.5
    assert _native.largest_clip_bound(3, 1e-6, 1, 1000) > 10 * limit  # a lower max_count: more room
    strategy = CryptflowFedAvg(None, None, ["a", "b", "c"], round_prefix="x", clip=AdaptiveClip(initial=50.0))
    strategy._cap_clip(3)
    assert strategy.clip == limit


def test_a_tensor_flower_cannot_carry_as_a_float_is_refused_not_sent_raw():
    # Flower's Array turns an ml_dtypes bfloat16 array into raw bytes (dtype V2). Before, the
    # mod treated anything not of kind "f" as an integer buffer to keep — and would have sent
    # nothing for it, or, if it were a float, the weights themselves rather than an update.
    import ml_dtypes

    weights = {"w": np.linspace(-1, 1, 4).astype(ml_dtypes.bfloat16)}
    out = SecureAggregationMod(Sites(no_client))(message(weights=weights), context(), train)
    assert out.has_error() and "which a round cannot carry" in out.error.reason, out.error.reason
