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
single client's update; the aggregator learns nothing at all. Clipping: each client's update
is clipped to ``clip`` per value; the clipping count comes back in the reply's metrics
(``cryptflow-clipped``).

Two rules the mod enforces because the ServerApp may be the adversary: no reply of any
message type (``train``, ``train.<action>``, ``evaluate``, ``query``) carries arrays, and each
site's client must keep a journal (``journal_file``), so the same update is never submitted to
two rounds — a ServerApp that could create rounds {A, B} and {B, C} over the same update
would otherwise learn A's update from the difference of their means.

Integer tensors (e.g. BatchNorm's ``num_batches_tracked``) are not averaged: the mod leaves
them out of the update and the strategy keeps the server's values.
"""

from __future__ import annotations

import json
import logging
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from . import Client, CryptflowError

__all__ = ["ROUND_KEY", "CryptflowFedAvg", "SecureAggregationMod"]

#: The train-config key naming the CryptFlow round a ClientApp submits to.
ROUND_KEY = "cryptflow-round"

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
            key and committee file), e.g. built from ``context.node_config``.
        count_key: the train reply's metric holding the sample count (FedAvg's
            ``num-examples``).

    The train message must carry :data:`ROUND_KEY` in its config (``CryptflowFedAvg`` puts it
    there); without it the mod replies with an error rather than send weights in the clear.
    """

    def __init__(self, client: Callable[[Context], Client], *, count_key: str = "num-examples") -> None:
        self._client = client
        self._count_key = count_key

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
        if self._count_key not in metrics:
            return _error_reply(msg, f"CryptFlow: the train reply has no `{self._count_key}` metric")
        count = int(metrics[self._count_key])
        for name in received:
            if trained[name].shape != received[name].shape:
                return _error_reply(
                    msg, f"CryptFlow: `{name}` came back as {trained[name].shape}, was {received[name].shape}"
                )
        # Integer tensors are not averaged (pass_integers): only float tensors form the update.
        update = {
            name: (trained[name].astype(np.float64) - received[name].astype(np.float64))
            if received[name].dtype.kind == "f"
            else received[name]
            for name in received
        }
        try:
            client = self._client(ctx)
            if client.journal_file is None:
                return _error_reply(
                    msg, "CryptFlow: this site's cryptflow.Client has no journal_file; without one the same "
                    "update could be submitted to two rounds (refused)"
                )
            result = client.submit(round_id, update, count=count, pass_integers=True)
        except CryptflowError as e:
            return _error_reply(msg, f"CryptFlow: {type(e).__name__}: {e}")
        reply_metrics = MetricRecord(dict(metrics))
        reply_metrics["cryptflow-clipped"] = int(result["clipped"])
        receipt = ConfigRecord(
            {"round": round_id, "upload-sha256": str(result["receipt"]["upload_sha256"])}
        )
        return Message(RecordDict({"metrics": reply_metrics, "cryptflow": receipt}), reply_to=msg)


class CryptflowFedAvg(FedAvg):
    """FedAvg whose aggregation is CryptFlow's: the ServerApp never receives a client's update.

    Args:
        operator: a :class:`cryptflow.Client` with an admin token (creates and closes rounds).
        reader: a :class:`cryptflow.Client` of a roster *reader* (fetches each round's mean).
        sites: the roster sites that may contribute (their ClientApps submit as them).
        round_prefix: CryptFlow round ids are ``f"{round_prefix}-{server_round}"`` (unique per
            run: a round id is never reused).
        min_contributors: uploads a CryptFlow round needs to publish (≥ 2, at most the nodes
            sampled). A server round with fewer leaves the model unchanged.
        max_count: the largest ``num-examples`` a site may report (sample-count weighting).
        clip: each value of an update is clipped to ±clip.
        max_abs_error: the largest acceptable error of a value of the mean update.
        wait: seconds to wait for a round to be published.
        **kwargs: FedAvg's own (``fraction_train``, ``min_train_nodes``, …).

    ``received`` lists, per server round, the keys of every reply's records — what the
    ServerApp actually got — so an app (or a test) can check no arrays arrived.
    """

    def __init__(
        self,
        operator: Client,
        reader: Client,
        sites: Sequence[str],
        *,
        round_prefix: str,
        min_contributors: int = 2,
        max_count: int = 100_000,
        clip: float = 1.0,
        max_abs_error: float = 1e-6,
        wait: float = 600.0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.operator, self.reader, self.sites = operator, reader, list(sites)
        if min_contributors < 2:
            raise ValueError(f"min_contributors = {min_contributors}: a mean of fewer than 2 updates is an update")
        self.round_prefix, self.max_count, self.min_contributors = round_prefix, max_count, min_contributors
        self.clip, self.max_abs_error, self.wait = clip, max_abs_error, wait
        self._current: Optional[Dict[str, np.ndarray]] = None
        self._round: Optional[Tuple[str, int]] = None
        self.received: List[List[Dict[str, List[str]]]] = []

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._round = None
        messages = list(super().configure_train(server_round, arrays, config, grid))
        if not messages:
            return messages
        round_id = f"{self.round_prefix}-{server_round}"
        self._current = _arrays(arrays)
        n = len(messages)
        if n < self.min_contributors:
            raise ValueError(
                f"server round {server_round}: {n} nodes sampled, but a CryptFlow round needs "
                f"min_contributors = {self.min_contributors}"
            )
        self.operator.create_round(
            round_id,
            clients=self.sites,
            like=self._current,
            pass_integers=True,
            min_clients=self.min_contributors,
            max_clients=n,
            weighting="samples",
            min_count=1,
            max_count=self.max_count,
            clip=self.clip,
            max_abs_error=self.max_abs_error,
        )
        for m in messages:
            m.content[self.configrecord_key][ROUND_KEY] = round_id
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
        for m in replies:
            if m.has_error():
                log.warning("round %s: node %s failed: %s", server_round, m.metadata.src_node_id, m.error.reason)
        if self._round is None or self._current is None:
            return None, None
        (round_id, expected), self._round = self._round, None
        metrics = self.train_metrics_aggr_fn([m.content for m in valid], self.weighted_by_key) if valid else None
        if len(valid) < self.min_contributors:
            log.warning("round %s: %d replies, %d needed: the model is unchanged", server_round,
                        len(valid), self.min_contributors)
            return None, metrics
        try:
            if len(valid) < expected:
                # Those that failed will not upload: publish with those that did.
                self.operator.close_round(round_id)
            self.reader.wait_for_aggregate(round_id, timeout=self.wait)
            floats = {k: v.astype(np.float64) for k, v in self._current.items() if v.dtype.kind == "f"}
            agg = self.reader.fetch_mean(round_id, like=floats)
        except CryptflowError as e:
            log.warning("round %s: CryptFlow round %s: %s: %s; the model is unchanged", server_round,
                        round_id, type(e).__name__, e)
            return None, metrics
        assert isinstance(agg.mean, dict)
        new = {
            name: (a.astype(np.float64) + agg.mean[name]).astype(a.dtype) if name in floats else a
            for name, a in self._current.items()
        }
        if metrics is not None:
            metrics["cryptflow-contributors"] = agg.contributors
            metrics["cryptflow-max-abs-error"] = float(agg.max_abs_error)
        return ArrayRecord({name: Array(np.ascontiguousarray(a)) for name, a in new.items()}), metrics
