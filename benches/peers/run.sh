#!/usr/bin/env bash
# Runs the overhead workload on TenSEAL CKKS (NVIDIA FLARE's parameters) in a throwaway
# virtual environment, writing JSON lines for `overhead --peers`.
#
#   benches/peers/run.sh [OUT.jsonl] [--dims 10000,100000,1000000] [--clients 8]
#   cargo run --release -p cryptflow-benches --bin overhead -- --peers OUT.jsonl
#
# Needs python3 with venv and PyPI access (tenseal and numpy wheels).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-target/overhead/tenseal.jsonl}"
shift || true
venv="$(mktemp -d)/venv"
trap 'rm -rf "$(dirname "$venv")"' EXIT
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "tenseal==0.3.16" "numpy<2.4"
mkdir -p "$(dirname "$out")"
"$venv/bin/python" "$here/tenseal_ckks.py" "$@" > "$out"
echo "wrote $out" >&2
