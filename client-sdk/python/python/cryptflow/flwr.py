"""CryptFlow for Flower apps (Message API, ``flwr`` ≥ 1.21).

Two pieces replace plaintext FedAvg without changing the user's train function:

- :class:`SecureAggregationMod`, a ClientApp mod. It lets the train function run, takes the
  weights it returns, sends the *update* (new weights minus the weights received) to the
  CryptFlow round named in the train config, and replies with metrics and the upload receipt
  only — never with arrays.
- :class:`CryptflowFedAvg`, a ServerApp strategy (Flower's FedAvg with sample-count
  weighting by the replies' ``num-examples``). Each server round it creates one CryptFlow
  round, names it in the train config, waits for it to be published and obtains the mean
  update as a roster *reader* (the consortium lets the ServerApp read means, never single
  updates); the new global model is the old one plus that mean.

The ServerApp therefore learns the mean — what FedAvg publishes anyway — and nothing about any
single client's update; the aggregator learns nothing at all. **What the ServerApp does see in
the clear**: the train function's reply metrics (``num-examples``, losses, anything it puts in
its ``MetricRecord``) and the upload receipt — except in a round with differential privacy
(``docs/differential-privacy.md``), where the mod replies with the receipt alone and submits
without a sample count (the strategy cannot yet create such rounds: create them with
:meth:`cryptflow.Client.create_round`'s ``dp=``).

Models: the arrays are whatever the app sends — numpy arrays or a PyTorch model's
``state_dict()`` (``ArrayRecord(model.state_dict())``). Every tensor keeps its shape and dtype
through a round, 0-d and empty ones included (float16, float32, float64; integer buffers by the
``integers`` policy below; Flower's ``Array`` carries no bfloat16).

Clipping: each value of an update is clipped to the round's bound. How many contributions and
values clipping changed is summed under encryption with the update, so the strategy learns it
with the mean (its metrics ``cryptflow-clipped-contributions`` and
``cryptflow-clipped-values``; a warning when any value was clipped). By default the bound
adapts round by round (:class:`AdaptiveClip`, Andrew et al., NeurIPS 2021), so a user need not
guess it. Each site reports its own clipping, as it sends its own values: a dishonest site can
misreport it (and so steer the adaptive bound within a round's range), as it can send any
update within the bound — poisoning is out of scope.

Integer tensors (e.g. BatchNorm's ``num_batches_tracked``): ``integers="keep"`` (default)
keeps the server's values; ``"mean"`` averages their increments like the float tensors and
rounds to the nearest integer — the increments are clipped like any value (a counter that
grows by the number of local batches needs a clip at least that large, and the clipping is
reported); ``"refuse"`` refuses a model that has any.

Failures are loud: a server round whose CryptFlow round does not publish, or in which a site's
mod refused (a count beyond ``max_count``, a policy, a journal refusal), raises
:class:`RoundFailedError` out of ``strategy.start`` — the Flower run fails rather than keep
an unchanged model.

Two rules the mod enforces because the ServerApp may be the adversary: no reply of any
message type (``train``, ``train.<action>``, ``evaluate``, ``query``) carries arrays, and each
site's client must keep a journal (``journal_file``), so the same update is never submitted to
two rounds — a ServerApp that could create rounds {A, B} and {B, C} over the same update
would otherwise learn A's update from the difference of their means. A deterministic re-run
of an experiment names a new ``experiment`` on the mod.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from . import Aggregate, BudgetError, Client, CryptflowError, PolicyError, _c_contiguous

__all__ = ["INTEGERS_KEY", "ROUND_KEY", "AdaptiveClip", "CryptflowFedAvg", "RoundFailedError", "SecureAggregationMod"]

#: The train-config key naming the CryptFlow round a ClientApp submits to.
ROUND_KEY = "cryptflow-round"
#: The train-config key carrying the strategy's integer-tensor policy to the mod.
INTEGERS_KEY = "cryptflow-integers"
_INTEGER_POLICIES = ("keep", "mean", "refuse")


class RoundFailedError(CryptflowError):
    """A server round did not aggregate: its CryptFlow round failed or timed out, or sites
    refused (their reasons are in the message). Raised out of ``strategy.start`` so that the
    Flower run fails instead of carrying on with an unchanged model."""


@dataclass
class AdaptiveClip:
    """A clip bound that follows the updates (Andrew, Thakkar, McMahan, Ramaswamy,
    "Differentially Private Learning with Adaptive Clipping", NeurIPS 2021, eq. 2 — the
    geometric update): after each round,

        clip ← clip · exp(−learning_rate · (b − target_unclipped_quantile))

    where ``b`` is the fraction of contributions no value of which was clipped, decrypted with
    the mean (CryptFlow clips per value, so ``b`` estimates the quantile of the updates'
    largest magnitudes). The bound grows quickly while sites clip and shrinks slowly while none
    does (fewer bits per value). ``b`` is what the sites report of themselves: one dishonest
    site moves it by at most 1/contributors per round.

    Args:
        initial: the first round's bound (> 0).
        target_unclipped_quantile: the fraction of contributions that should clip nothing, in
            (0, 1]; 1 never shrinks the bound.
        learning_rate: ``η`` (> 0).
        max_clip: the bound never grows beyond this.
    """

    initial: float = 1.0
    target_unclipped_quantile: float = 0.95
    learning_rate: float = 1.0
    max_clip: float = 1e6

    def __post_init__(self) -> None:
        for name in ("initial", "learning_rate", "max_clip"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"AdaptiveClip({name}={v!r}): must be a finite number above zero")
        q = self.target_unclipped_quantile
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 < q <= 1:
            raise ValueError(f"AdaptiveClip(target_unclipped_quantile={q!r}): must be in (0, 1]")

    def next(self, clip: float, unclipped_fraction: float) -> float:
        """The bound after a round that used ``clip``."""
        factor = math.exp(-self.learning_rate * (unclipped_fraction - self.target_unclipped_quantile))
        return min(clip * factor, self.max_clip)

log = logging.getLogger("cryptflow.flwr")


def _arrays(record: ArrayRecord) -> Dict[str, np.ndarray]:
    return {name: record[name].numpy() for name in record.keys()}


def _error_reply(msg: Message, reason: str) -> Message:
    from flwr.app import Error

    return Message(error=Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=reason), reply_to=msg)


def _is_train(msg: Message) -> bool:
    """``train`` and ``train.<action>`` (Flower routes both to train functions)."""
    return msg.metadata.message_type.split(".", 1)[0] == MessageType.TRAIN


class SecureAggregationMod:
    """A ClientApp mod sending the train function's update through CryptFlow.

    Args:
        client: ``client(context) -> cryptflow.Client`` for this node's site (its token, roster
            key, committee file and journal), e.g. built from ``context.node_config``.
        count_key: the train reply's metric holding the sample count (FedAvg's
            ``num-examples``); it reaches the ServerApp in the clear, like every reply metric.
        experiment: a name for this run in the site's journal. The journal refuses the same
            update in two rounds of one experiment; a deterministic re-run of an experiment
            (same seeds, same updates) names a new one. It is the *site's* setting (a constant,
            the site's own configuration or ``node_config``) — never take it from the run
            config, which the ServerApp's side sets: a ServerApp that could rename experiments
            could have the same updates sent to new rounds and difference their means.

    The train message must carry :data:`ROUND_KEY` in its config (``CryptflowFedAvg`` puts it
    there); without it the mod replies with an error rather than send weights in the clear.
    """

    def __init__(
        self, client: Callable[[Context], Client], *, count_key: str = "num-examples",
        experiment: Optional[str] = None,
    ) -> None:
        if experiment is not None and (not isinstance(experiment, str) or not experiment):
            raise ValueError(f"experiment = {experiment!r}: must be a non-empty string")
        self._client = client
        self._count_key = count_key
        self._experiment = experiment

    def __call__(self, msg: Message, ctx: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        if not _is_train(msg):
            out = call_next(msg, ctx)
            if not out.has_error() and len(out.content.array_records) > 0:
                return _error_reply(msg, f"CryptFlow: a `{msg.metadata.message_type}` reply must not carry arrays")
            return out
        configs = list(msg.content.config_records.values())
        round_id = next((str(c[ROUND_KEY]) for c in configs if ROUND_KEY in c), None)
        if round_id is None:
            return _error_reply(msg, f"CryptFlow: the train config names no round ({ROUND_KEY}); nothing sent")
        integers = next((str(c[INTEGERS_KEY]) for c in configs if INTEGERS_KEY in c), "keep")
        if integers not in _INTEGER_POLICIES:
            return _error_reply(msg, f"CryptFlow: unknown integer-tensor policy {integers!r} in the train config")
        if len(msg.content.array_records) != 1:
            return _error_reply(msg, "CryptFlow: the train message must carry exactly one ArrayRecord")
        received = _arrays(next(iter(msg.content.array_records.values())))
        out = call_next(msg, ctx)
        if out.has_error():
            return out
        if len(out.content.array_records) != 1:
            return _error_reply(msg, "CryptFlow: the train function must return exactly one ArrayRecord")
        trained = _arrays(next(iter(out.content.array_records.values())))
        if list(trained) != list(received):
            return _error_reply(msg, "CryptFlow: the returned arrays differ in names from those received")
        metrics = next(iter(out.content.metric_records.values()), MetricRecord())
        for name in received:
            if trained[name].shape != received[name].shape or trained[name].dtype != received[name].dtype:
                return _error_reply(
                    msg, f"CryptFlow: `{name}` came back as {trained[name].shape} {trained[name].dtype}, "
                    f"was {received[name].shape} {received[name].dtype}"
                )
        try:
            update = _update(received, trained, integers)
        except ValueError as e:
            return _error_reply(msg, f"CryptFlow: {e}")
        try:
            client = self._client(ctx)
            if client.journal_file is None:
                return _error_reply(
                    msg, "CryptFlow: this site's cryptflow.Client has no journal_file; without one the same "
                    "update could be submitted to two rounds (refused)"
                )
            dp_round = "dp" in client.round(round_id)["spec"]["plan"]
            count = None
            if not dp_round:
                if self._count_key not in metrics:
                    return _error_reply(msg, f"CryptFlow: the train reply has no `{self._count_key}` metric")
                count = int(metrics[self._count_key])
            result = client.submit(round_id, update, count=count, pass_integers=integers == "keep",
                                   experiment=self._experiment)
        except BudgetError:
            # The site's spend is its own business: the ServerApp learns only that it stopped.
            return _error_reply(msg, "CryptFlow: BudgetError: this site's privacy budget does not cover the round")
        except PolicyError as e:
            hint = " — for a re-run of an experiment, give SecureAggregationMod a new `experiment`" \
                if "already submitted" in str(e) else ""
            return _error_reply(msg, f"CryptFlow: {type(e).__name__}: {e}{hint}")
        except CryptflowError as e:
            return _error_reply(msg, f"CryptFlow: {type(e).__name__}: {e}")
        # No clipping count of this site's own: per-site information is what secure aggregation
        # hides; the count over all sites comes with the mean.
        receipt = ConfigRecord({"round": round_id, "upload-sha256": str(result["receipt"]["upload_sha256"])})
        if dp_round:
            # In a differentially private round nothing but the receipt leaves the site: a
            # sample count or a loss travels unnoised and would undo the mean's privacy.
            return Message(RecordDict({"metrics": MetricRecord(), "cryptflow": receipt}), reply_to=msg)
        return Message(RecordDict({"metrics": MetricRecord(dict(metrics)), "cryptflow": receipt}), reply_to=msg)


def _is_float(a: np.ndarray) -> bool:
    """Floating point, bfloat16 (``ml_dtypes``, numpy kind ``V``) included."""
    return a.dtype.kind == "f" or a.dtype.name == "bfloat16"


def _update(received: Dict[str, np.ndarray], trained: Dict[str, np.ndarray], integers: str) -> Dict[str, np.ndarray]:
    """New weights minus received ones, in float64; integer tensors by the policy (left as
    they are for ``keep``, which ``submit(pass_integers=True)`` leaves out)."""
    update = {}
    for name, r in received.items():
        if _is_float(r) or (integers == "mean" and r.dtype.kind in "iub"):
            update[name] = trained[name].astype(np.float64) - r.astype(np.float64)
        elif r.dtype.kind not in "iub":
            raise ValueError(f"`{name}` has dtype {r.dtype}, which a round cannot carry")
        elif integers == "refuse":
            raise ValueError(f"`{name}` is an integer tensor ({r.dtype}) and the round's policy refuses them")
        else:
            update[name] = r
    return update


class CryptflowFedAvg(FedAvg):
    """FedAvg whose aggregation is CryptFlow's: the ServerApp never receives a client's update.

    Args:
        operator: a :class:`cryptflow.Client` with an admin token (creates and closes rounds).
        reader: a :class:`cryptflow.Client` of a roster *reader* (fetches each round's mean).
        sites: the roster sites that may contribute (their ClientApps submit as them).
        round_prefix: CryptFlow round ids are ``f"{round_prefix}-{server_round}"`` (unique per
            run: a round id is never reused).
        min_contributors: uploads a CryptFlow round needs to publish (≥ 2, at most the nodes
            sampled; default 3, the sites' own default floor — sites refuse rounds below their
            ``cryptflow.Client(min_contributors=…)``).
        max_count: the largest ``num-examples`` a site may report (sample-count weighting); a
            site with more is refused by its mod, which fails the run.
        clip: each value of an update is clipped to ±clip: a number (fixed), or an
            :class:`AdaptiveClip` (the default) that follows the updates round by round.
        max_abs_error: the largest acceptable error of a value of the mean (against the
            clipped updates).
        integers: integer tensors (BatchNorm's ``num_batches_tracked``): ``"keep"`` the
            server's values (default), ``"mean"`` average them too (rounded), ``"refuse"``.
        clip_warning: log a warning when more than this fraction of the values were clipped
            (default 0: any clipping).
        tolerate_failed_sites: carry on with the sites that succeeded when others' mods fail
            (their reasons are logged); by default a failed site fails the run.
        wait: seconds to wait for a round to be published.
        **kwargs: FedAvg's own (``fraction_train``, ``min_train_nodes``, …).

    Each round's metrics carry ``cryptflow-contributors``, ``cryptflow-max-abs-error``,
    ``cryptflow-clip`` (the bound used), ``cryptflow-clipped-contributions``,
    ``cryptflow-clipped-values`` (at most), ``cryptflow-verified-uploads`` (how many uploads
    the reader recomputed the aggregate from; 0 when it did not recompute it — with
    ``cryptflow-sampled-spans`` and ``cryptflow-detection-probability`` when it sampled spans
    instead; a tampered aggregate
    fails the run with :class:`RoundFailedError`) and where the ServerApp's time went
    (``cryptflow-seconds-create``, ``-publish`` — from the last reply to publication — and
    ``-fetch``). ``received`` lists, per server round, the keys of
    every reply's records — what the ServerApp actually got — so an app (or a test) can check no
    arrays arrived.

    Raises:
        RoundFailedError: out of ``start``, when a server round does not aggregate.
    """

    def __init__(
        self,
        operator: Client,
        reader: Client,
        sites: Sequence[str],
        *,
        round_prefix: str,
        min_contributors: int = 3,
        max_count: int = 100_000,
        clip: Union[float, AdaptiveClip, None] = None,
        max_abs_error: float = 1e-6,
        integers: str = "keep",
        clip_warning: float = 0.0,
        tolerate_failed_sites: bool = False,
        wait: float = 600.0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.operator, self.reader, self.sites = operator, reader, list(sites)
        if min_contributors < 2:
            raise ValueError(f"min_contributors = {min_contributors}: a mean of fewer than 2 updates is an update")
        if integers not in _INTEGER_POLICIES:
            raise ValueError(f"integers = {integers!r}: use one of {', '.join(_INTEGER_POLICIES)}")
        clip = AdaptiveClip() if clip is None else clip
        if isinstance(clip, AdaptiveClip):
            self.adaptive: Optional[AdaptiveClip] = clip
            self.clip = float(clip.initial)
        elif isinstance(clip, bool) or not isinstance(clip, (int, float)) or not math.isfinite(clip) or clip <= 0:
            raise ValueError(f"clip = {clip!r}: a finite number above zero, or an AdaptiveClip")
        else:
            self.adaptive, self.clip = None, float(clip)
        self.round_prefix, self.max_count, self.min_contributors = round_prefix, max_count, min_contributors
        self.max_abs_error, self.wait, self.integers = max_abs_error, wait, integers
        self.clip_warning, self.tolerate_failed_sites = clip_warning, tolerate_failed_sites
        self._current: Optional[Dict[str, np.ndarray]] = None
        self._round: Optional[Tuple[str, int]] = None
        self._create_seconds = 0.0
        self.received: List[List[Dict[str, List[str]]]] = []
        self._unverified_warned = False

    def _averaged(self, arrays: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """The tensors the round averages, as the mod sends them (float64 updates)."""
        return {
            k: np.zeros(v.shape, np.float64) for k, v in arrays.items()
            if _is_float(v) or (self.integers == "mean" and v.dtype.kind in "iub")
        }

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._round = None
        messages = list(super().configure_train(server_round, arrays, config, grid))
        if not messages:
            return messages
        round_id = f"{self.round_prefix}-{server_round}"
        self._current = _arrays(arrays)
        ints = [k for k, v in self._current.items() if v.dtype.kind in "iub"]
        odd = [f"{k} ({v.dtype})" for k, v in self._current.items() if not _is_float(v) and v.dtype.kind not in "iub"]
        if odd:
            raise RoundFailedError(f"the model has tensors of dtypes a round cannot carry: {odd}")
        if ints and self.integers == "refuse":
            raise RoundFailedError(f"the model has integer tensors {ints} and integers='refuse'")
        if ints and server_round == 1:
            log.info("integer tensors %s: %s", ints, {"keep": "the server's values are kept",
                                                      "mean": "averaged and rounded"}[self.integers])
        n = len(messages)
        if n < self.min_contributors:
            raise RoundFailedError(
                f"server round {server_round}: {n} nodes sampled, but a CryptFlow round needs "
                f"min_contributors = {self.min_contributors}"
            )
        averaged = self._averaged(self._current)
        if not averaged:
            raise RoundFailedError("the model has no tensor to average (no floating-point tensor)")
        if self.adaptive is not None:
            self._cap_clip(n)
        started = time.monotonic()
        try:
            self.operator.create_round(
                round_id,
                clients=self.sites,
                like=averaged,
                min_clients=self.min_contributors,
                max_clients=n,
                weighting="samples",
                min_count=1,
                max_count=self.max_count,
                clip=self.clip,
                max_abs_error=self.max_abs_error,
            )
        except CryptflowError as e:
            raise RoundFailedError(f"server round {server_round}: creating CryptFlow round {round_id}: {e}") from e
        self._create_seconds = time.monotonic() - started
        for m in messages:
            m.content[self.configrecord_key][ROUND_KEY] = round_id
            m.content[self.configrecord_key][INTEGERS_KEY] = self.integers
        self._round = (round_id, n)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> Tuple[Optional[ArrayRecord], Optional[MetricRecord]]:
        replies = list(replies)
        self.received.append(
            [
                {"arrays": list(m.content.array_records), "metrics": list(m.content.metric_records),
                 "configs": list(m.content.config_records)}
                for m in replies
                if not m.has_error()
            ]
        )
        valid = [m for m in replies if not m.has_error()]
        failures = [f"node {m.metadata.src_node_id}: {m.error.reason}" for m in replies if m.has_error()]
        if self._round is None or self._current is None:
            return None, None
        (round_id, expected), self._round = self._round, None
        if failures:
            log.warning("server round %s: %d of %d sites failed: %s", server_round, len(failures),
                        len(replies), "; ".join(failures))
            if not self.tolerate_failed_sites:
                raise RoundFailedError(
                    f"server round {server_round}: {len(failures)} of {len(replies)} sites failed "
                    f"(tolerate_failed_sites=False): {'; '.join(failures)}"
                )
        if len(valid) < self.min_contributors:
            raise RoundFailedError(
                f"server round {server_round}: {len(valid)} sites replied, {self.min_contributors} needed: "
                + ("; ".join(failures) or "no replies")
            )
        metrics = self.train_metrics_aggr_fn([m.content for m in valid], self.weighted_by_key)
        started = time.monotonic()
        try:
            if len(valid) < expected:
                # Those that failed will not upload: publish with those that did.
                self.operator.close_round(round_id)
            self.reader.wait_for_aggregate(round_id, timeout=self.wait)
            published = time.monotonic()
            averaged = self._averaged(self._current)
            agg = self.reader.fetch_mean(round_id, like=averaged)
        except CryptflowError as e:
            raise RoundFailedError(
                f"server round {server_round}: CryptFlow round {round_id}: {type(e).__name__}: {e}"
            ) from e
        assert isinstance(agg.mean, dict)
        new = {}
        for name, a in self._current.items():
            if name not in averaged:
                new[name] = a
                continue
            # np.asarray: arithmetic on 0-d arrays gives numpy scalars, which Flower's Array
            # refuses (and which would lose the tensor's shape).
            moved = np.asarray(a, np.float64) + agg.mean[name]
            new[name] = np.asarray(moved if _is_float(a) else np.rint(moved)).astype(a.dtype)
        self._report_clipping(server_round, agg)
        if metrics is None:
            metrics = MetricRecord()
        metrics["cryptflow-contributors"] = agg.contributors
        metrics["cryptflow-max-abs-error"] = float(agg.max_abs_error)
        metrics["cryptflow-clip"] = self.clip
        metrics["cryptflow-clipped-contributions"] = agg.clipping.contributions
        metrics["cryptflow-clipped-values"] = agg.clipping.values_at_most
        # How many uploads the aggregate was recomputed from (0: not verified; the reader's
        # `verify` says when it is — by default when the uploads total at most 1 GiB).
        metrics["cryptflow-verified-uploads"] = agg.verified or 0
        if agg.sampled_spans is not None:
            # Verified by sampling spans (uploads above 1 GiB): a deterrent, not a proof.
            metrics["cryptflow-sampled-spans"] = agg.sampled_spans
            metrics["cryptflow-detection-probability"] = float(agg.detection_probability)
        if agg.not_verified is not None and not self._unverified_warned:
            log.warning("the mean of CryptFlow round %s was not verified: %s", round_id, agg.not_verified)
            self._unverified_warned = True
        # Where the ServerApp's time went (seconds): creating the round (planning, the key
        # managers' registration), from the last reply to publication, fetching and decrypting.
        metrics["cryptflow-seconds-create"] = self._create_seconds
        metrics["cryptflow-seconds-publish"] = published - started
        metrics["cryptflow-seconds-fetch"] = time.monotonic() - published
        if self.adaptive is not None:
            unclipped = 1.0 - agg.clipping.contributions / max(agg.contributors, 1)
            self.clip = self.adaptive.next(self.clip, unclipped)
        return ArrayRecord({name: Array(_c_contiguous(a)) for name, a in new.items()}), metrics

    def _cap_clip(self, max_clients: int) -> None:
        """Holds the adaptive bound below the largest one the round's precision allows (the
        clip, ``max_count`` and ``max_abs_error`` share 64 bits): a round that cannot be
        planned would fail the run."""
        from . import _native

        limit = _native.largest_clip_bound(max_clients, float(self.max_abs_error), 1, int(self.max_count))
        if limit is not None and self.clip > limit:
            log.warning(
                "the adaptive clip bound %g is capped at %g, the largest a round of %d sites at "
                "max_abs_error=%g and max_count=%d can carry; values beyond it stay clipped (lower "
                "max_count or raise max_abs_error to allow more)",
                self.clip, limit, max_clients, self.max_abs_error, self.max_count,
            )
            self.clip = limit

    def _report_clipping(self, server_round: int, agg: Aggregate) -> None:
        c = agg.clipping
        if c.any and c.fraction_at_most > self.clip_warning:
            counted = str(c.values_at_most) if c.values_at_least == c.values_at_most else \
                f"{c.values_at_least}–{c.values_at_most}"
            log.warning(
                "server round %s: clipping shaped the mean: %d of %d contributions had values beyond ±%g, "
                "%s of %d values (%.3g %%) were clipped; the model moved less than FedAvg's would%s",
                server_round, c.contributions, agg.contributors, self.clip, counted, c.of_values,
                100 * c.fraction_at_most,
                " (the adaptive bound grows)" if self.adaptive else "; raise `clip` or use AdaptiveClip()",
            )
