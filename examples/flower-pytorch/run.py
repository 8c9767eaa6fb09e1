"""Runs the PyTorch Flower example end to end — one command, from the repository's root:

    python examples/flower-pytorch/run.py

It starts a local CryptFlow stack (`cryptflow-devstack`: four key managers, t = 3, an
aggregator, three sites and a roster reader `server-app`) and a local Flower SuperLink in
simulation mode, then runs this Flower app with `flwr run` twice — once with CryptFlow's secure
aggregation, once with Flower's plaintext FedAvg, same seeds — and checks that

- every float32 parameter and buffer of the two final models agrees within 1e-6;
- every tensor kept its shape and dtype (BatchNorm's 0-d `num_batches_tracked` included), and
  the integer buffer followed the strategy's policy (`integers="keep"`: the server's value);
- no client reply the ServerApp received carried arrays.

With `--check-failure` it also runs a configuration that cannot aggregate (`max-count` below
the sites' sample counts; another `seed`, so that no site is asked to send an update it
already sent — its journal would refuse that first) and checks the Flower run *fails* with the
reason in its log, rather than finish with an unchanged model. Exits 1 on any mismatch. Everything it writes goes to a
temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "examples" / "flower-digits"))
import run as common  # noqa: E402  (the flower-digits example's driver: stack, SuperLink, `flwr run`)


def start_stack(binary: str, work: pathlib.Path):
    out, log = work / "stack.json", work / "devstack.log"
    proc = subprocess.Popen(
        [binary, "--nodes", "4", "--threshold", "3", "--sites", "3", "--readers", "server-app", "--out", str(out)],
        stdout=subprocess.DEVNULL, stderr=log.open("w"),
    )
    common.wait_for("cryptflow-devstack", lambda: out.exists() and out.stat().st_size > 0, proc, log)
    return proc, out


def run_status(env: dict) -> str:
    """The status of the newest run on the local SuperLink (`flwr ls`): `finished:completed`,
    `finished:failed`, …. `flwr run --stream` itself exits 0 whatever the run's outcome."""
    out = subprocess.run([str(common.BIN / "flwr"), "ls", "local", "--format", "json"],
                         env=env, capture_output=True, text=True, check=True, timeout=60)
    answer = json.loads(out.stdout)
    if not answer.get("success"):
        raise RuntimeError(f"flwr ls: {answer.get('error-message')}")
    newest = max(answer["runs"], key=lambda r: r.get("pending-at") or "")
    return str(newest["status"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--hidden", type=int, default=0,
                   help="a hidden layer of this width (3340: about 10^6 parameters, for timing rounds)")
    default = shutil.which("cryptflow-devstack") or str(ROOT / "target" / "release" / "cryptflow-devstack")
    p.add_argument("--devstack", default=default, help="the cryptflow-devstack binary")
    p.add_argument("--check-failure", action="store_true", help="also check that a failing round fails the run")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    args = p.parse_args()

    import torch

    sys.path.insert(0, str(HERE))
    import task

    work = pathlib.Path(tempfile.mkdtemp(prefix="flower-pytorch-"))
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(work / "flwr-home"),
        FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(common.free_port()),
        FLWR_LOCAL_CONTROL_API_PORT=str(common.free_port()),
        PATH=f"{common.BIN}{os.pathsep}{env.get('PATH', '')}",
        RAY_DEDUP_LOGS="0",
    )
    stack, stack_file = start_stack(args.devstack, work)
    superlink = None
    try:
        superlink = common.start_superlink(work, env)
        extra = f"hidden={args.hidden}"
        secure = common.flwr_run(env, work, "cryptflow", True, args.rounds, stack_file, app=HERE, extra=extra)
        plain = common.flwr_run(env, work, "plaintext", False, args.rounds, stack_file, app=HERE, extra=extra)
        initial = task.initial(args.hidden)
        enc = {k: torch.tensor(v, dtype=getattr(torch, secure["dtypes"][k].split(".")[1]))
               for k, v in secure["state"].items()}
        ref = {k: torch.tensor(v, dtype=getattr(torch, plain["dtypes"][k].split(".")[1]))
               for k, v in plain["state"].items()}
        shapes_ok = all(
            list(enc[k].shape) == list(t.shape) and enc[k].dtype == t.dtype for k, t in initial.items()
        ) and list(enc) == list(initial)
        floats = [k for k, t in initial.items() if t.is_floating_point()]
        diff = max(float((enc[k].double() - ref[k].double()).abs().max()) for k in floats)
        ints_ok = all(torch.equal(enc[k], initial[k]) for k, t in initial.items() if not t.is_floating_point())
        _, _, xte, yte = task.load(str(ROOT / "demo" / "data" / "digits.csv.gz"))
        acc_enc, acc_plain = task.accuracy(enc, xte, yte), task.accuracy(
            {k: ref[k] if k in floats else initial[k] for k in initial}, xte, yte)
        replies = [r for rnd in secure["received"] for r in rnd]
        arrays_received = sum(len(r["arrays"]) for r in replies)
        last = secure["metrics"][str(args.rounds)]
        summary = {
            "rounds": args.rounds,
            "parameters": sum(t.numel() for t in initial.values()),
            "accuracy_cryptflow": acc_enc,
            "accuracy_plaintext_fedavg": acc_plain,
            "max_float_difference": diff,
            "shapes_and_dtypes_kept": shapes_ok,
            "integer_buffers_kept": ints_ok,
            "client_replies_received": len(replies),
            "arrays_in_client_replies": arrays_received,
            "seconds_per_round_cryptflow": secure["seconds_per_round"],
            "seconds_per_round_plaintext": plain["seconds_per_round"],
            "last_round_seconds": {k: last.get(f"cryptflow-seconds-{k}") for k in ("create", "publish", "fetch")},
            "last_round_clip": last.get("cryptflow-clip"),
            "last_round_clipped_values": last.get("cryptflow-clipped-values"),
            # The strategy's reader recomputed every round's aggregate from the sites' signed
            # uploads (on by default where cheap): the aggregator could not have shifted the mean.
            "rounds_verified": sum(1 for m in secure["metrics"].values() if m.get("cryptflow-verified-uploads") == 3),
        }
        ok = (diff <= 1e-6 and shapes_ok and ints_ok and arrays_received == 0 and len(replies) == 3 * args.rounds
              and summary["rounds_verified"] == args.rounds)
        if args.check_failure:
            failing = work / "failing.json"
            cmd = [str(common.BIN / "flwr"), "run", str(HERE), "local", "--stream",
                   "--federation-config", "num-supernodes=3", "--run-config",
                   f"secure=true num-server-rounds=1 max-count=10 seed=1 stack-file='{stack_file}' "
                   f"data-file='{ROOT / 'demo' / 'data' / 'digits.csv.gz'}' result-file='{failing}'"]
            print(f"== failing: {' '.join(cmd)}", flush=True)
            log = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
            status = run_status(env)
            text = log.stdout + log.stderr
            reasons = [line.strip() for line in text.splitlines() if "RoundFailedError:" in line]
            print("\n".join(reasons[-1:]) or text[-3000:], flush=True)
            # The sites' mods refused their sample counts (`sample count … is not in [1, 10]`).
            said = any("sample count" in r and "[1, 10]" in r for r in reasons)
            summary["failing_run_status"] = status
            summary["failing_run_names_the_reason"] = said
            ok = ok and status == "finished:failed" and not failing.exists() and said
        print(json.dumps(summary, indent=2))
        print("OK: the same model as plaintext FedAvg, shapes and dtypes kept; the ServerApp received no client's "
              "update" if ok else "MISMATCH")
        return 0 if ok else 1
    finally:
        common.stop([superlink, stack], work, args.keep)


if __name__ == "__main__":
    sys.exit(main())
