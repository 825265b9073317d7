#!/usr/bin/env bash
# Benchmarks (they print their figures): a RabbitMQ is started if none answers, as for the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(scripts/rabbitmq.sh ensure)
cleanup() { if [[ "$started" == started ]]; then scripts/rabbitmq.sh stop-ensured; fi; }
trap cleanup EXIT
cargo bench --bench throughput -- "$@"
