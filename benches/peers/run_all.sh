#!/usr/bin/env bash
# Regenerates every peer row of the overhead suite: each peer's pinned PyPI packages go into
# a throwaway virtual environment, its script writes JSON lines to OUT_DIR/<peer>.jsonl.
#
#   benches/peers/run_all.sh [OUT_DIR] [--only flower,openfhe,paillier,tenseal,v1]
#   cargo run --release -p cryptflow-benches --bin overhead -- --dims 10000,100000,1000000 \
#       --clients 8,64,512 --out target/overhead-peers --peers OUT_DIR/cryptflow-v1.jsonl \
#       --peers OUT_DIR/flower.jsonl --peers OUT_DIR/openfhe.jsonl \
#       --peers OUT_DIR/paillier.jsonl --peers OUT_DIR/tenseal.jsonl
#
# `v1` is CryptFlow's protocol version 1 (replaced by v2): built from its last commit in a
# temporary git worktree (about 5 minutes) and measured in process, no REST round.
#
# Needs python3 (3.9+) with venv, PyPI access and, for OpenFHE, a CPython 3.10 (the official
# openfhe wheel carries a CPython 3.10 extension): `python3.10` on PATH, or PYTHON310, or a
# pyenv 3.10.x. About 10 minutes on a 2-core machine (BENCHMARKS.md has the figures).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-target/peers}"
shift || true
only="flower,openfhe,paillier,tenseal,v1"
if [ "${1:-}" = "--only" ]; then only="$2"; fi
mkdir -p "$out"
rm -f "$out"/*.jsonl.tmp
work="$(mktemp -d)"
trap 'rm -rf "$work"; git -C "$here" worktree prune' EXIT
dims="10000,100000,1000000"

venv() {  # venv NAME PYTHON PACKAGE...
  local name=$1 py=$2
  shift 2
  "$py" -m venv "$work/$name"
  "$work/$name/bin/pip" install --quiet --disable-pip-version-check "$@"
  echo "$work/$name/bin/python"
}

run() {  # run PEER PYTHON SCRIPT DIMS CLIENTS [ARGS...]: one process per (d, K), so that
  # each row's peak RSS is that configuration's alone.
  local peer=$1 py=$2 script=$3 ds=$4 ks=$5
  shift 5
  local start=$SECONDS d k
  echo "== $peer: d in {$ds}, K in {$ks}" >&2
  for k in ${ks//,/ }; do
    for d in ${ds//,/ }; do
      "$py" "$here/$script" --dims "$d" --clients "$k" "$@" >> "$out/$peer.jsonl.tmp"
    done
  done
  echo "== $peer: $((SECONDS - start)) s" >&2
}

wants() { [[ ",$only," == *",$1,"* ]]; }

if wants flower; then
  py=$(venv flower python3 "flwr==1.42.0" "numpy==2.3.5")
  run flower "$py" flower_secaggplus.py "$dims" 8,64
  # Its cost grows with K: K = 512 only up to d = 10^5 (the process holds all K clients and
  # their messages: ~10 GB at 10^6).
  run flower "$py" flower_secaggplus.py 10000,100000 512
fi
if wants openfhe; then
  py310=""
  # The first candidate that really runs CPython 3.10 (a pyenv shim may not).
  for c in ${PYTHON310:-} $(command -v python3.10 || true) "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.10*/bin/python3.10; do
    if [ -x "$c" ] && "$c" -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then
      py310=$c
      break
    fi
  done
  if [ -z "$py310" ]; then
    echo "OpenFHE's wheel needs CPython 3.10: put python3.10 on PATH or set PYTHON310" >&2
    exit 1
  fi
  py=$(venv openfhe "$py310" "openfhe==1.6.1.0.22.4" "numpy==2.2.6")
  for set in N=8192 default; do
    run openfhe "$py" openfhe_ckks.py "$dims" 8 --sets "$set"
    # K = 64 where it takes under a minute: up to d = 10^5 (at 10^6 the process would hold
    # 64 × 65–97 MB of ciphertexts, twice).
    run openfhe "$py" openfhe_ckks.py 10000,100000 64 --sets "$set"
  done
fi
if wants paillier; then
  py=$(venv paillier python3 "phe==1.5.0" "gmpy2==2.3.2" "numpy==2.3.5")
  # One process per K: it measures a sample and extrapolates to every d.
  for k in 8 64; do
    "$py" "$here/paillier.py" --dims "$dims" --clients "$k" >> "$out/paillier.jsonl.tmp"
  done
fi
if wants tenseal; then
  py=$(venv tenseal python3 "tenseal==0.3.16" "numpy==2.3.5")
  run tenseal "$py" tenseal_ckks.py "$dims" 8
  run tenseal "$py" tenseal_ckks.py 10000,100000 64
fi
if wants v1; then
  start=$SECONDS
  echo "== cryptflow v1 (commit 666aaf1): build and measure" >&2
  root="$(cd "$here/../.." && pwd)"
  git -C "$root" worktree add --detach "$work/v1" 666aaf1 >&2
  CARGO_TARGET_DIR="$work/v1-target" cargo build --quiet --release --manifest-path "$work/v1/Cargo.toml" \
    -p cryptflow-benches --bin overhead
  "$work/v1-target/release/overhead" --no-rest --dims "$dims" --clients 8,64 --precisions 1e-6 --out "$work/v1-out" >&2
  python3 - "$work/v1-out/overhead.jsonl" > "$out/cryptflow-v1.jsonl.tmp" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    r.update(system="cryptflow v1", version="protocol v1 (commit 666aaf1)",
             note="protocol v1 (one round public key, replaced by v2), built from commit 666aaf1; no REST round")
    print(json.dumps(r))
PY
  git -C "$root" worktree remove --force "$work/v1"
  echo "== cryptflow v1: $((SECONDS - start)) s" >&2
fi
for peer in flower openfhe paillier tenseal cryptflow-v1; do
  [ "$peer" = cryptflow-v1 ] && ! wants v1 && continue
  if [ "$peer" = cryptflow-v1 ] || wants "$peer"; then
    mv "$out/$peer.jsonl.tmp" "$out/$peer.jsonl"
    echo "$out/$peer.jsonl: $(wc -l < "$out/$peer.jsonl") rows" >&2
  fi
done
echo "peer rows in $out after $SECONDS s; merge them with overhead --peers (see the top of this script)" >&2
