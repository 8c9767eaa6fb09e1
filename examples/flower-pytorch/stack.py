"""The local CryptFlow stack, as `cryptflow-devstack --out stack.json` describes it."""

from __future__ import annotations

import json
import os

import cryptflow

_clients: dict[tuple[str, str], cryptflow.Client] = {}


def load(stack_file: str) -> dict:
    if not stack_file:
        raise ValueError("run config `stack-file` is empty: start a stack with `cryptflow-devstack --out FILE`")
    with open(stack_file, encoding="utf-8") as f:
        return json.load(f)


def member_client(stack_file: str, name: str) -> cryptflow.Client:
    """A `cryptflow.Client` for roster member `name` (cached per process)."""
    if (stack_file, name) not in _clients:
        stack = load(stack_file)
        m = stack["members"][name]
        _clients[stack_file, name] = cryptflow.Client(
            stack["aggregator"], token=m["token"], committee_file=stack["committee_file"],
            client_id=name, key_file=m["key_file"], reader=m["reader"],
            # The journal: this site never submits the same update to two rounds.
            journal_file=os.path.join(os.path.dirname(stack_file), f"{name}.journal"),
        )
    return _clients[stack_file, name]


def operator_client(stack_file: str) -> cryptflow.Client:
    """The consortium operator (admin token at the aggregator): creates and closes rounds."""
    stack = load(stack_file)
    return cryptflow.Client(stack["aggregator"], token=stack["tokens"]["admin_aggregator"])
