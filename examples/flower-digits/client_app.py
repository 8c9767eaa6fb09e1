"""The ClientApp: a train function that knows nothing of CryptFlow — `SecureAggregationMod`
sends its update encrypted and replies with metrics and the upload receipt only."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

import cryptflow
from cryptflow.flwr import SecureAggregationMod

import digits
from stack import member_client


def train_fn(msg: Message, context: Context) -> Message:
    """Plain Flower training: new weights and the sample count."""
    pid, sites = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    xtr, ytr, _, _ = digits.load(str(context.run_config["data-file"]))
    x, y = digits.shard(xtr, ytr, pid, sites)
    params = {k: v.numpy() for k, v in msg.content["arrays"].items()}
    new = digits.train(params, x, y)
    return Message(
        RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in new.items()}),
                    "metrics": MetricRecord({"num-examples": len(x)})}),
        reply_to=msg,
    )


def site_client(context: Context) -> cryptflow.Client:
    """This node's site: Flower's partition id `i` is roster site `site-i`."""
    return member_client(str(context.run_config["stack-file"]), f"site-{int(context.node_config['partition-id'])}")


class _Mods:
    """Applies `SecureAggregationMod` when the run is secure, else passes through, so that the
    same ClientApp serves the plaintext comparison run. Demo only: the run config is the
    ServerApp side's to set, so a real site's ClientApp applies the mod unconditionally —
    `ClientApp(mods=[SecureAggregationMod(site_client)])`."""

    def __init__(self) -> None:
        self.secure = SecureAggregationMod(site_client)

    def __call__(self, msg: Message, ctx: Context, call_next):
        if ctx.run_config["secure"]:
            return self.secure(msg, ctx, call_next)
        return call_next(msg, ctx)


app = ClientApp(mods=[_Mods()])
app.train()(train_fn)
