#!/usr/bin/env bash
# Regenerates every peer row of the overhead suite: each peer's pinned PyPI packages go into
# a throwaway virtual environment, its script writes JSON lines to OUT_DIR/<peer>.jsonl
# (each file moved into place as soon as that peer is done).
#
#   benches/peers/run_all.sh [OUT_DIR] [--only flower,openfhe,paillier,tenseal,v1]
#   cargo run --release -p cryptflow-benches --bin overhead -- --dims 10000,100000,1000000 \
#       --clients 8,64,512 --out target/overhead-peers --peers OUT_DIR/cryptflow-v1.jsonl \
#       --peers OUT_DIR/flower.jsonl --peers OUT_DIR/openfhe.jsonl \
#       --peers OUT_DIR/paillier.jsonl --peers OUT_DIR/tenseal.jsonl
#
# `v1` is CryptFlow's protocol version 1 (replaced by v2): built from its last commit in a
# temporary git worktree (about 4 minutes; needs the repository's history, not a shallow
# clone) and measured in process, no REST round.
#
# Needs python3 3.11 or 3.12 with venv (the pinned numpy needs ≥ 3.11), PyPI access, cargo,
# and, for OpenFHE, a CPython 3.10 (the official openfhe wheel carries a CPython 3.10
# extension): `python3.10` on PATH, PYTHON310, or a pyenv 3.10.x. About 8 minutes on a
# 2-core machine (BENCHMARKS.md has the figures).
set -euo pipefail
shopt -s inherit_errexit
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
all="flower,openfhe,paillier,tenseal,v1"
out="target/peers"
only="$all"
while [ $# -gt 0 ]; do
  case "$1" in
    --only)
      [ $# -ge 2 ] || { echo "--only needs a list: $all" >&2; exit 2; }
      only="$2"
      shift 2
      ;;
    -*) echo "unknown option $1 (usage: run_all.sh [OUT_DIR] [--only $all])" >&2; exit 2 ;;
    *) out="$1"; shift ;;
  esac
done
for p in ${only//,/ }; do
  [[ ",$all," == *",$p,"* ]] || { echo "unknown peer '$p' (known: $all)" >&2; exit 2; }
done
wants() { [[ ",$only," == *",$1,"* ]]; }

# What a later step needs is checked before the first one runs.
py310=""
if wants openfhe; then
  # The first candidate that really runs CPython 3.10 (a pyenv shim may not).
  for c in ${PYTHON310:-} $(command -v python3.10 || true) "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.10*/bin/python3.10; do
    if [ -x "$c" ] && "$c" -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then
      py310=$c
      break
    fi
  done
  [ -n "$py310" ] || { echo "OpenFHE's wheel needs CPython 3.10: put python3.10 on PATH or set PYTHON310" >&2; exit 1; }
fi
V1=666aaf12a82aceb29db3ec7ff60dd0e72fec5619
if wants v1 && ! git -C "$root" cat-file -e "$V1^{commit}" 2>/dev/null; then
  echo "commit $V1 (CryptFlow v1) is not in this clone: fetch the full history or pass --only without v1" >&2
  exit 1
fi

mkdir -p "$out"
work="$(mktemp -d)"
trap 'rm -rf "$work"; git -C "$root" worktree prune' EXIT
dims="10000,100000,1000000"

venv() {  # venv NAME PYTHON PACKAGE... -> the environment's python
  local name=$1 py=$2
  shift 2
  "$py" -m venv "$work/$name" >&2
  "$work/$name/bin/pip" install --quiet --disable-pip-version-check "$@" >&2
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
      "$py" "$here/$script" --dims "$d" --clients "$k" "$@" >> "$work/$peer.jsonl"
    done
  done
  echo "== $peer: $((SECONDS - start)) s" >&2
}

done_with() {  # done_with PEER: its rows into OUT_DIR
  mv "$work/$1.jsonl" "$out/$1.jsonl"
  echo "$out/$1.jsonl: $(wc -l < "$out/$1.jsonl") rows (at $SECONDS s)" >&2
}

if wants flower; then
  py=$(venv flower python3 "flwr==1.42.0" "numpy==2.3.5")
  run flower "$py" flower_secaggplus.py "$dims" 8,64
  # Its cost grows with K: K = 512 only up to d = 10^5 (the process holds all K clients and
  # their messages: ~10 GB at 10^6).
  run flower "$py" flower_secaggplus.py 10000,100000 512
  done_with flower
fi
if wants openfhe; then
  py=$(venv openfhe "$py310" "openfhe==1.6.1.0.22.4" "numpy==2.2.6")
  for set in N=8192 default; do
    run openfhe "$py" openfhe_ckks.py "$dims" 8 --sets "$set"
    # K = 64 where it takes under a minute: up to d = 10^5 (at 10^6 the process would hold
    # 64 × 65–97 MB of ciphertexts, twice).
    run openfhe "$py" openfhe_ckks.py 10000,100000 64 --sets "$set"
  done
  done_with openfhe
fi
if wants paillier; then
  py=$(venv paillier python3 "phe==1.5.0" "gmpy2==2.3.2" "numpy==2.3.5")
  # One process per K: it measures a sample and extrapolates to every d.
  for k in 8 64; do
    "$py" "$here/paillier.py" --dims "$dims" --clients "$k" >> "$work/paillier.jsonl"
  done
  done_with paillier
fi
if wants tenseal; then
  py=$(venv tenseal python3 "tenseal==0.3.16" "numpy==2.3.5")
  run tenseal "$py" tenseal_ckks.py "$dims" 8
  run tenseal "$py" tenseal_ckks.py 10000,100000 64
  done_with tenseal
fi
if wants v1; then
  start=$SECONDS
  echo "== cryptflow v1 ($V1): build and measure" >&2
  git -C "$root" worktree add --detach "$work/v1" "$V1" >&2
  CARGO_TARGET_DIR="$work/v1-target" cargo build --quiet --release --manifest-path "$work/v1/Cargo.toml" \
    -p cryptflow-benches --bin overhead
  "$work/v1-target/release/overhead" --no-rest --dims "$dims" --clients 8,64 --precisions 1e-6 --out "$work/v1-out" >&2
  python3 - "$work/v1-out/overhead.jsonl" > "$work/cryptflow-v1.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    r.update(system="cryptflow v1", version="protocol v1 (commit 666aaf1)",
             note="protocol v1 (one round public key, replaced by v2), built from commit 666aaf1; no REST round")
    print(json.dumps(r))
PY
  git -C "$root" worktree remove --force "$work/v1"
  echo "== cryptflow v1: $((SECONDS - start)) s" >&2
  done_with cryptflow-v1
fi
echo "peer rows in $out after $SECONDS s; merge them with overhead --peers (see the top of this script)" >&2
