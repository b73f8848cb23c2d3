#!/usr/bin/env bash
# Submit a recaption run to an existing Ray cluster. Usage:
#   RAY_ADDRESS=http://head:8265 scripts/ray_job_submit.sh sieve s3://bucket/shards s3://bucket/mixed
set -euo pipefail
recipe=${1:?recipe}; input=${2:?input}; out=${3:?output}; shift 3
ray job submit --address "${RAY_ADDRESS:-http://127.0.0.1:8265}" \
  --runtime-env-json '{"pip": ["recaption[ray]"]}' -- \
  recaption run "$recipe" "$input" --out "$out" --engine ray --ray-address auto "$@"
