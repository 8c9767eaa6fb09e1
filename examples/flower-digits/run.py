"""Runs the Flower example end to end — one command, from the repository's root:

    python examples/flower-digits/run.py

It starts a local CryptFlow stack (`cryptflow-devstack`: a key-manager committee of three,
t = 2, an aggregator, three sites and a roster reader `server-app`) and a local Flower
SuperLink in simulation mode, then runs this Flower app with `flwr run` twice — once with
CryptFlow's secure aggregation, once with Flower's plaintext FedAvg, same seeds — and compares
the final models, their accuracy, and whether any client reply the ServerApp received carried
arrays. Exits 1 on a mismatch. Everything it writes goes to a temporary directory.

The two runs are what a user types by hand once a stack and a SuperLink are up:

    flwr run examples/flower-digits local --stream --federation-config "num-supernodes=3" \\
        --run-config "stack-file='stack.json' data-file='demo/data/digits.csv.gz'"
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BIN = pathlib.Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, ready, proc: subprocess.Popen, log: pathlib.Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode}; its log:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)
    proc.kill()
    sys.exit(f"{what} did not start within {timeout:.0f} s; its log:\n{log.read_text()[-4000:]}")


def start_stack(binary: str, work: pathlib.Path) -> tuple[subprocess.Popen, pathlib.Path]:
    out, log = work / "stack.json", work / "devstack.log"
    proc = subprocess.Popen(
        [binary, "--nodes", "4", "--threshold", "3", "--sites", "3", "--readers", "server-app", "--out", str(out)],
        stdout=subprocess.DEVNULL, stderr=log.open("w"),
    )
    wait_for("cryptflow-devstack", lambda: out.exists() and out.stat().st_size > 0, proc, log)
    return proc, out


def start_superlink(work: pathlib.Path, env: dict) -> subprocess.Popen:
    """Flower's local SuperLink in simulation mode, as `flwr run … local` would start it,
    but owned by this script (stopped at the end) and on free ports."""
    log = work / "superlink.log"
    http = env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"]
    cmd = [
        str(BIN / "flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
        # The app runs in this environment (where `cryptflow` is installed), not in one
        # Flower would create and fill from PyPI.
        "--disable-runtime-dependency-installation",
        "--control-api-address", f"127.0.0.1:{env['FLWR_LOCAL_CONTROL_API_PORT']}",
        "--host", "127.0.0.1", "--port", http, "--database", str(work / "superlink.db"),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/health", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    wait_for("flower-superlink", healthy, proc, log)
    return proc


def flwr_run(env: dict, work: pathlib.Path, name: str, secure: bool, rounds: int, stack: pathlib.Path,
             app: pathlib.Path = HERE, extra: str = "") -> dict:
    """Runs the Flower app `app` once; returns what its ServerApp wrote to the result file."""
    result = work / f"{name}.json"
    run_config = (
        f"secure={'true' if secure else 'false'} num-server-rounds={rounds} "
        f"stack-file='{stack}' data-file='{ROOT / 'demo' / 'data' / 'digits.csv.gz'}' result-file='{result}' {extra}"
    )
    cmd = [str(BIN / "flwr"), "run", str(app), "local", "--stream",
           "--federation-config", "num-supernodes=3", "--run-config", run_config.strip()]
    print(f"== {name}: {' '.join(cmd)}", flush=True)
    # `--stream` returns when the run finishes; the result file says it completed (Flower's
    # exit status does not say whether the ServerApp failed).
    subprocess.run(cmd, env=env, check=True, timeout=900)
    deadline = time.monotonic() + 60
    while not result.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    if not result.exists():
        sys.exit(f"the {name} run wrote no result (see {work}/superlink.log)")
    return json.loads(result.read_text())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    default = shutil.which("cryptflow-devstack") or str(ROOT / "target" / "release" / "cryptflow-devstack")
    p.add_argument("--devstack", default=default, help="the cryptflow-devstack binary")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    args = p.parse_args()

    work = pathlib.Path(tempfile.mkdtemp(prefix="flower-digits-"))
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(work / "flwr-home"),
        FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(free_port()),
        FLWR_LOCAL_CONTROL_API_PORT=str(free_port()),
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        RAY_DEDUP_LOGS="0",
    )
    stack, stack_file = start_stack(args.devstack, work)
    superlink = None
    try:
        superlink = start_superlink(work, env)
        secure = flwr_run(env, work, "cryptflow", True, args.rounds, stack_file)
        plain = flwr_run(env, work, "plaintext", False, args.rounds, stack_file)

        sys.path.insert(0, str(HERE))
        import digits

        _, _, xte, yte = digits.load(str(ROOT / "demo" / "data" / "digits.csv.gz"))
        enc = {k: np.asarray(v, np.float32) for k, v in secure["arrays"].items()}
        ref = {k: np.asarray(v, np.float32) for k, v in plain["arrays"].items()}
        diff = max(float(np.abs(enc[k].astype(np.float64) - ref[k].astype(np.float64)).max()) for k in ref)
        acc_enc, acc_plain = digits.accuracy(enc, xte, yte), digits.accuracy(ref, xte, yte)
        replies = [r for rnd in secure["received"] for r in rnd]
        arrays_received = sum(len(r["arrays"]) for r in replies)
        summary = {
            "rounds": args.rounds,
            "accuracy_cryptflow": acc_enc,
            "accuracy_plaintext_fedavg": acc_plain,
            "max_parameter_difference": diff,
            "client_replies_received": len(replies),
            "arrays_in_client_replies": arrays_received,
        }
        print(json.dumps(summary, indent=2))
        ok = diff <= 1e-6 and acc_enc == acc_plain and arrays_received == 0 and len(replies) == 3 * args.rounds
        print("OK: the same model as plaintext FedAvg; the ServerApp received no client's update" if ok else "MISMATCH")
        return 0 if ok else 1
    finally:
        stop([superlink, stack], work, args.keep)


def stop(procs: list, work: pathlib.Path, keep: bool) -> None:
    """Stops the processes a run started (those not None), then removes its directory unless
    `keep`."""
    for proc in procs:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    if keep:
        print(f"logs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
