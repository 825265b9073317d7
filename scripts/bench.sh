#!/usr/bin/env bash
# Benchmarks (they print their figures): a RabbitMQ is started if none answers, as for the tests.
#   scripts/bench.sh [throughput|capacity|memory] [bench options]
#   scripts/bench.sh real-diffs [bench options]   (no broker: builds the real diffs from
#     crates.io with scripts/real-diffs.sh, then reviews them with `review-worker review`
#     against the simulator; options in benches/real_diffs.rs)
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == real-diffs ]]; then
  shift
  scripts/real-diffs.sh target/real-diffs
  exec cargo bench --bench real_diffs -- --dir target/real-diffs "$@"
fi
bench=throughput
if [[ "${1:-}" == throughput || "${1:-}" == capacity || "${1:-}" == memory ]]; then bench=$1; shift; fi
started=$(scripts/rabbitmq.sh ensure)
cleanup() { if [[ "$started" == started ]]; then scripts/rabbitmq.sh stop-ensured; fi; }
trap cleanup EXIT
cargo bench --bench "$bench" -- "$@"
