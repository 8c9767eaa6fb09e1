"""The ServerApp: `CryptflowFedAvg` (the mean update only, fetched as a roster reader) — or,
with `secure = false`, Flower's plaintext FedAvg on the same seeds, for comparison."""

from __future__ import annotations

import json
import os
import time

from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from cryptflow.flwr import CryptflowFedAvg

import task
from stack import member_client, operator_client

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    sites = int(cfg["num-sites"])
    common = dict(fraction_evaluate=0.0, min_train_nodes=sites, min_available_nodes=sites)
    if cfg["secure"]:
        stack_file = str(cfg["stack-file"])
        strategy: FedAvg = CryptflowFedAvg(
            operator=operator_client(stack_file),
            reader=member_client(stack_file, "server-app"),
            sites=[f"site-{i}" for i in range(sites)],
            round_prefix=f"pytorch-{os.getpid()}",
            max_count=int(cfg["max-count"]),
            max_abs_error=1e-8,
            **common,
        )
    else:
        strategy = FedAvg(**common)
    rounds = int(cfg["num-server-rounds"])
    start = time.monotonic()
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(task.initial(int(cfg["hidden"]))),
                            num_rounds=rounds)
    seconds = time.monotonic() - start
    if cfg["result-file"]:
        state = result.arrays.to_torch_state_dict()
        out = {
            "state": {k: v.tolist() for k, v in state.items()},
            "dtypes": {k: str(v.dtype) for k, v in state.items()},
            "shapes": {k: list(v.shape) for k, v in state.items()},
            "metrics": {str(r): dict(m) for r, m in result.train_metrics_clientapp.items()},
            "received": getattr(strategy, "received", None),
            "seconds_per_round": seconds / rounds,
        }
        with open(str(cfg["result-file"]), "w", encoding="utf-8") as f:
            json.dump(out, f)
