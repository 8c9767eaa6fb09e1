"""The ClientApp: a PyTorch train function that knows nothing of CryptFlow — it takes the
model as a state dict and returns one. `SecureAggregationMod` sends its update encrypted and
replies with metrics and the upload receipt only."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

import cryptflow
from cryptflow.flwr import SecureAggregationMod

import task
from stack import member_client


def train_fn(msg: Message, context: Context) -> Message:
    """Plain Flower + PyTorch training: the new state dict and the sample count."""
    pid, sites = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    xtr, ytr, _, _ = task.load(str(context.run_config["data-file"]))
    x, y = task.shard(xtr, ytr, pid, sites)
    state = msg.content["arrays"].to_torch_state_dict()
    server_round = int(msg.content["config"]["server-round"])
    new = task.train(state, x, y, seed=1000 * server_round + pid + 100_000 * int(context.run_config["seed"]))
    return Message(
        RecordDict({"arrays": ArrayRecord(new), "metrics": MetricRecord({"num-examples": len(x)})}),
        reply_to=msg,
    )


def site_client(context: Context) -> cryptflow.Client:
    """This node's site: Flower's partition id `i` is roster site `site-i`."""
    return member_client(str(context.run_config["stack-file"]), f"site-{int(context.node_config['partition-id'])}")


class _Mods:
    """`SecureAggregationMod` when the run is secure, else a pass-through, so that the same
    ClientApp serves the plaintext comparison run. A real site's ClientApp applies the mod
    unconditionally: `ClientApp(mods=[SecureAggregationMod(site_client)])`."""

    def __init__(self) -> None:
        self.secure = SecureAggregationMod(site_client)

    def __call__(self, msg: Message, ctx: Context, call_next):
        if ctx.run_config["secure"]:
            return self.secure(msg, ctx, call_next)
        return call_next(msg, ctx)


app = ClientApp(mods=[_Mods()])
app.train()(train_fn)
