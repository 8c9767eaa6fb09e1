#!/usr/bin/env bash
# schemathesis against both services, every role, over a real local stack (`cryptflow-devstack`).
# Usage: .ci/schemathesis.sh SCHEMATHESIS_BIN [SECONDS_PER_RUN]
# Fails on a server error, a status code or content type the OpenAPI document does not list,
# a body that does not match its schema, or a schema-invalid request that is accepted.
set -euo pipefail
cd "$(dirname "$0")/.."
st=$1
secs=${2:-30}
work=$(mktemp -d)
target/release/cryptflow-devstack --nodes 1 --threshold 1 --sites 3 --out "$work/stack.json" 2> "$work/stack.log" &
stack=$!
trap 'kill $stack 2>/dev/null || true; wait $stack 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do [ -s "$work/stack.json" ] && break; sleep 0.2; done
[ -s "$work/stack.json" ] || { cat "$work/stack.log"; echo "the local stack did not start" >&2; exit 1; }
get() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {'d': d}))" "$work/stack.json" "$1"; }
agg=$(get "d['aggregator']")
kms=$(get "d['nodes'][0]['url']")

checks=not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,negative_data_rejection,positive_data_acceptance
run() {
  local name=$1 schema=$2 url=$3 token=$4
  echo "-- $name"
  "$st" --config-file .ci/schemathesis.toml run "$schema" --url "$url" -H "Authorization: Bearer $token" --checks "$checks" \
    --max-time "$secs" --workers 1 --suppress-health-check all --warnings off \
    --report junit --report-dir "$work/reports-$name" > "$work/$name.log" 2>&1 || {
    sed -n '/= FAILURES =/,$p' "$work/$name.log" | head -150
    return 1
  }
  grep -E "generated|passed|failures" "$work/$name.log" | tail -3
}
run aggregator-admin docs/aggregator-openapi.json "$agg" "$(get "d['tokens']['admin_aggregator']")"
run aggregator-client docs/aggregator-openapi.json "$agg" "$(get "d['tokens']['sites_aggregator']['site-0']")"
run aggregator-reader docs/aggregator-openapi.json "$agg" "$(get "d['tokens']['reader_aggregator']")"
run kms-aggregator docs/kms-openapi.json "$kms" "$(get "d['tokens']['aggregator_kms']")"
run kms-admin docs/kms-openapi.json "$kms" "$(get "d['tokens']['admin_kms']")"
run kms-site docs/kms-openapi.json "$kms" "$(get "d['nodes'][0]['roster_tokens']['site-0']")"
