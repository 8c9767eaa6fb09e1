"""A real local stack for the tests: `cryptflow-devstack` (key manager, aggregator, SQLite,
loopback HTTP), started once per session. CRYPTFLOW_DEVSTACK names the binary (default: the
workspace's release build)."""

import itertools
import json
import os
import pathlib
import subprocess
import tempfile
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def stack():
    binary = os.environ.get("CRYPTFLOW_DEVSTACK", str(ROOT / "target" / "release" / "cryptflow-devstack"))
    work = tempfile.mkdtemp(prefix="cryptflow-pytest-")
    out = pathlib.Path(work) / "stack.json"
    proc = subprocess.Popen(
        [binary, "--nodes", "4", "--threshold", "3", "--sites", "4", "--readers", "server-app", "--out", str(out)],
        stderr=subprocess.PIPE,
    )
    for _ in range(300):
        if out.exists() and out.stat().st_size > 0:
            break
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read().decode())
        time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("the local stack did not start")
    desc = json.loads(out.read_text())
    desc["work"] = work
    yield desc
    proc.terminate()
    proc.wait(timeout=30)


_journals = itertools.count()


def site(stack, name, tmp_path=None, **kwargs):
    """A `cryptflow.Client` for roster member `name` of the stack, with a journal of its own
    (a fresh file per client, so that tests do not see each other's updates) unless the test
    passes ``journal_file``."""
    import cryptflow

    m = stack["members"][name]
    kwargs.setdefault("journal_file", os.path.join(stack["work"], f"{name}-{next(_journals)}.journal"))
    return cryptflow.Client(
        stack["aggregator"],
        token=m["token"],
        committee_file=stack["committee_file"],
        client_id=name,
        key_file=m["key_file"],
        reader=m["reader"],
        # Rounds here have two or three contributors; the committee (4, 3) meets the default.
        **{"retry_budget": 30, "min_contributors": 2, **kwargs},
    )


def admin(stack):
    import cryptflow

    return cryptflow.Client(stack["aggregator"], token=stack["tokens"]["admin_aggregator"], retry_budget=30)


def mean_of_two(stack, round_id, update):
    """A round shaped like `update` in which site-0 and site-1 both submit it; the mean, as
    site-0 fetches it in `update`'s structure and dtypes (an `Aggregate`)."""
    admin(stack).create_round(round_id, clients=["site-0", "site-1"], like=update)
    for i in range(2):
        site(stack, f"site-{i}").submit(round_id, update)
    reader = site(stack, "site-0")
    reader.wait_for_aggregate(round_id, timeout=60)
    return reader.fetch_mean(round_id, like=update)
