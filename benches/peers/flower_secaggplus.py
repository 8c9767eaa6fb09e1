#!/usr/bin/env python3
"""The overhead suite's workload on Flower's SecAgg+ (``flwr`` Message API, legacy workflow).

Flower's own protocol code, not a re-implementation: the server side is
``flwr.server.workflow.SecAggPlusWorkflow`` (setup, share keys, collect masked vectors,
unmask), the client side is a ``ClientApp`` with ``flwr.client.mod.secaggplus_mod`` whose
fit returns the client's vector. The only stand-in is the transport: an in-process ``Grid``
serialises each message with Flower's own protobuf encoding (``flwr.common.serde``) and hands
the bytes to the K ClientApps in turn (no SuperLink, no network), so every stage's client
time and server time can be told apart and every byte on the wire is counted.

Per (d, K) it prints one JSON line in the suite's row format:
- upload: every byte a client sends over the four stages (public keys, encrypted shares,
  the masked vector, the unmasking shares), as Flower's protobuf messages, per value;
- encrypt: a client's time in setup + share keys + collect masked vectors (mask
  derivation, quantisation, masking);
- aggregate: the server's time over all stages (summing masked vectors, reconstructing
  dropped and self masks, dequantising), with and without decoding the clients' messages;
- decrypt: a client's time in the unmask stage (it answers with shares); the server learns
  the sum, no client key opens anything;
- peak memory: this process's peak RSS (it holds all K clients), MiB.

    python3 flower_secaggplus.py --dims 10000,100000,1000000 --clients 8,64,512
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Iterable

import numpy as np

import flwr
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import bytes_to_ndarray, ndarrays_to_parameters
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Message as ProtoMessage
from flwr.compat.common import recorddict_compat as compat
from flwr.server.client_manager import SimpleClientManager
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import FedAvg
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp.grid import Grid
from flwr.supercore.task_identity import TaskIdentity

import workload

# The reference measurement: 3 shares, reconstruction threshold 2; Flower's defaults
# for the rest (clipping range 8, quantisation range 2^22, modulus range 2^32) except
# max_weight: each client's vector is scaled by num_examples / max_weight before
# quantisation, so the default 1000 with this workload's weight 1 would cost Flower three
# decimal digits (max error ~3e-3 instead of ~4e-6). max_weight = 1 is its best case here.
NUM_SHARES = 3
THRESHOLD = 2
MAX_WEIGHT = 1.0


def to_wire(m: Message) -> bytes:
    return message_to_proto(m).SerializeToString()


def from_wire(b: bytes) -> Message:
    return message_from_proto(ProtoMessage.FromString(b))


class InProcessGrid(Grid):
    """Delivers each message to its node's ClientApp in this process and times it."""

    def __init__(self, app: ClientApp, node_ids: list[int]) -> None:
        self.app = app
        self.node_ids = node_ids
        self.contexts = {
            n: Context(run_id=1, node_id=n, node_config={}, state=RecordDict(), run_config={}) for n in node_ids
        }
        self.client_seconds: dict[str, float] = {}
        self.sent_bytes: dict[int, int] = {n: 0 for n in node_ids}
        self.decode_seconds = 0.0
        self.stage = ""

    def set_run(self, run) -> None:  # noqa: D102 - the Grid interface
        pass

    @property
    def run(self):  # noqa: D102
        raise NotImplementedError

    def create_message(self, *args, **kwargs):  # noqa: D102
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:  # noqa: D102
        return list(self.node_ids)

    def push_messages(self, messages):  # noqa: D102
        raise NotImplementedError

    def pull_messages(self, message_ids):  # noqa: D102
        raise NotImplementedError

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        # The server encodes what it sends (its time); each client decodes, runs and encodes
        # its reply (the client's time); the server decodes the replies (timed apart).
        outgoing = [(m.metadata.dst_node_id, to_wire(m)) for m in messages]
        wires = []
        for node, wire in outgoing:
            TaskIdentity.node_id = node
            start = time.perf_counter()
            reply = to_wire(self.app(from_wire(wire), self.contexts[node]))
            self.client_seconds[self.stage] = self.client_seconds.get(self.stage, 0.0) + time.perf_counter() - start
            self.sent_bytes[node] += len(reply)
            wires.append(reply)
        start = time.perf_counter()
        replies = [from_wire(w) for w in wires]
        self.decode_seconds += time.perf_counter() - start
        return replies


class TimedWorkflow(SecAggPlusWorkflow):
    """SecAgg+ with each stage's wall time recorded (server and clients)."""

    def __init__(self, grid: InProcessGrid, **kwargs) -> None:
        super().__init__(**kwargs)
        self.grid_ref = grid
        self.stage_seconds: dict[str, float] = {}

    def _timed(self, name, f, *args):
        self.grid_ref.stage = name
        start = time.perf_counter()
        ok = f(*args)
        self.stage_seconds[name] = time.perf_counter() - start
        return ok

    def setup_stage(self, grid, context, state):
        return self._timed("setup", super().setup_stage, grid, context, state)

    def share_keys_stage(self, grid, context, state):
        return self._timed("share_keys", super().share_keys_stage, grid, context, state)

    def collect_masked_vectors_stage(self, grid, context, state):
        return self._timed("collect_masked_vectors", super().collect_masked_vectors_stage, grid, context, state)

    def unmask_stage(self, grid, context, state):
        return self._timed("unmask", super().unmask_stage, grid, context, state)


def measure(d: int, k: int, args) -> list[dict]:
    xs, exact, fedavg = workload.clients(d, k)
    node_ids = list(range(1, k + 1))
    vectors = dict(zip(node_ids, xs))

    class Site(NumPyClient):
        def __init__(self, node: int) -> None:
            self.node = node

        def fit(self, parameters, config):
            return [vectors[self.node]], 1, {}

    app = ClientApp(client_fn=lambda ctx: Site(ctx.node_id).to_client(), mods=[secaggplus_mod])
    grid = InProcessGrid(app, node_ids)
    manager = SimpleClientManager()
    for n in node_ids:
        manager.register(GridClientProxy(n, grid, run_id=1))
    strategy = FedAvg(fraction_fit=1.0, min_fit_clients=k, min_available_clients=k, fraction_evaluate=0.0)
    # Part of the server's time is Flower's FedAvg.aggregate_fit re-averaging the unmasked
    # result (K copies of it); timed apart and reported with the row.
    fit_seconds = [0.0]
    aggregate_fit = strategy.aggregate_fit

    def timed_aggregate_fit(*a, **kw):
        start = time.perf_counter()
        try:
            return aggregate_fit(*a, **kw)
        finally:
            fit_seconds[0] += time.perf_counter() - start

    strategy.aggregate_fit = timed_aggregate_fit
    base = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    context = LegacyContext(base, strategy=strategy, client_manager=manager)
    context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
        ndarrays_to_parameters([np.zeros(d, dtype=np.float32)]), keep_input=True
    )
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: 1})
    workflow = TimedWorkflow(grid, num_shares=NUM_SHARES, reconstruction_threshold=THRESHOLD, max_weight=MAX_WEIGHT)
    workflow(grid, context)

    mean = compat.arrayrecord_to_parameters(context.state.array_records[MAIN_PARAMS_RECORD], keep_input=True)
    got = np.concatenate([np.asarray(bytes_to_ndarray(t), dtype=np.float64).ravel() for t in mean.tensors])
    if got.shape != exact.shape:
        sys.exit(f"d={d} K={k}: SecAgg+ returned {got.shape[0]} values, expected {d}")
    total = sum(workflow.stage_seconds.values())
    server = total - sum(grid.client_seconds.values())
    deser = grid.decode_seconds
    enc = sum(grid.client_seconds.get(s, 0.0) for s in ("setup", "share_keys", "collect_masked_vectors")) / k
    return [workload.row(
        f"flower-secagg+ ({NUM_SHARES} shares, t={THRESHOLD})", d, k,
        mean=got, exact=exact,
        upload_bytes=sum(grid.sent_bytes.values()) / k, download_bytes=4.0 * d, key_bytes=0.0,
        encrypt_s=enc, aggregate_s=server, aggregate_no_deser_s=server - deser,
        decrypt_s=grid.client_seconds.get("unmask", 0.0) / k, fedavg_s=fedavg,
        version=f"flwr {flwr.__version__}",
        note=f"Flower {flwr.__version__} SecAggPlusWorkflow + secaggplus_mod, {NUM_SHARES} shares, threshold "
        f"{THRESHOLD}, clipping 8, quantisation 2^22, modulus 2^32, max weight 1; protobuf messages in process; the "
        "server learns the sum; decrypt = a client's unmask-stage time; peak = the process (this configuration only) "
        "holding all K clients",
        fedavg_aggregate_fit_ms=fit_seconds[0] * 1e3,
    )]


if __name__ == "__main__":
    logging.getLogger("flwr").setLevel(logging.WARNING)
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    workload.cli(__doc__, measure)
