#!/usr/bin/env bash
# The whole test suite (what .ci/run calls). Makes sure a RabbitMQ answers at API_RABBITMQ_URI,
# starting a private node on that loopback port if none does, and that Prometheus is installed
# (Debian's package, for the real-scrape test tests/monitoring.rs), runs every test, and stops the
# node it started.
set -euo pipefail
cd "$(dirname "$0")/.."

started=$(scripts/rabbitmq.sh ensure)
cleanup() { if [[ "$started" == started ]]; then scripts/rabbitmq.sh stop-ensured; fi; }
trap cleanup EXIT
# Not fatal: without it only tests/monitoring.rs fails, and says why.
scripts/prometheus.sh install || echo "test.sh: Prometheus could not be installed; tests/monitoring.rs will fail" >&2

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
