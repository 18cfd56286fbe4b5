#!/usr/bin/env bash
# A pg-broker worker in plain shell over the HTTP worker protocol (needs curl and jq).
# Handles `add` jobs ({"a": 1, "b": 2} -> result 3); anything else fails without retry.
# Env: BROKER_URL, BROKER_TOKEN (scope: work), QUEUE, WORKER_ID, IDLE_EXIT (exit after this
# many empty polls; 0 = run forever).
set -euo pipefail
URL=${BROKER_URL:-http://127.0.0.1:8000}; QUEUE=${QUEUE:-default}
WORKER_ID=${WORKER_ID:-sh:$(hostname):$$}; IDLE_EXIT=${IDLE_EXIT:-0}; idle=0
api() {  # api PATH JSON -> response body; fails on any non-2xx status
  curl -sS --fail-with-body -X POST "$URL$1" -H "Authorization: Bearer $BROKER_TOKEN" \
    -H 'Content-Type: application/json' -d "$2"
}
while :; do
  lease=$(api /v1/leases "$(jq -nc --arg w "$WORKER_ID" --arg q "$QUEUE" \
    '{worker_id: $w, queues: [$q], limit: 1, lease_ttl: 30}')" | jq -c '.leases[0] // empty')
  if [ -z "$lease" ]; then
    idle=$((idle + 1)); [ "$IDLE_EXIT" -gt 0 ] && [ "$idle" -ge "$IDLE_EXIT" ] && exit 0
    sleep 1; continue
  fi
  idle=0
  id=$(jq -r .job_id <<<"$lease"); fence=$(jq -c '{worker_id, lease_epoch}' <<<"$lease")
  api "/v1/jobs/$id/heartbeat" "$fence" >/dev/null  # a long job would repeat this
  if [ "$(jq -r .kind <<<"$lease")" = add ]; then
    body=$(jq -c --argjson f "$fence" '$f + {result: (.args.a + .args.b)}' <<<"$lease")
    api "/v1/jobs/$id/complete" "$body" >/dev/null || echo "job $id: lease lost" >&2
  else
    body=$(jq -c '{error: ("no handler for " + .kind), retryable: false} + {worker_id, lease_epoch}' <<<"$lease")
    api "/v1/jobs/$id/fail" "$body" >/dev/null || echo "job $id: lease lost" >&2
  fi
done
