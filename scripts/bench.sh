#!/usr/bin/env bash
# Benchmarks (they print their figures): a RabbitMQ is started if none answers, as for the tests.
#   scripts/bench.sh [throughput|capacity|memory] [bench options]
set -euo pipefail
cd "$(dirname "$0")/.."
bench=throughput
if [[ "${1:-}" == throughput || "${1:-}" == capacity || "${1:-}" == memory ]]; then bench=$1; shift; fi
started=$(scripts/rabbitmq.sh ensure)
cleanup() { if [[ "$started" == started ]]; then scripts/rabbitmq.sh stop-ensured; fi; }
trap cleanup EXIT
cargo bench --bench "$bench" -- "$@"
