#!/usr/bin/env bash
# The main job on a fresh machine, with no API key and no internet: a RabbitMQ (a private node
# if none answers at API_RABBITMQ_URI), the Z.AI simulator, the worker, and the bundled example
# PRs submitted through the broker, printing each review as the PR comment a team would see
# (DEMO_FORMAT=json for the result messages, text for plain text). Everything it started is
# stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

sim_port=${SIM_PORT:-4010}
started=$(scripts/rabbitmq.sh ensure)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [[ "$started" == started ]]; then scripts/rabbitmq.sh stop-ensured; fi
}
trap cleanup EXIT

cargo build --release --locked --quiet
bin=target/release/review-worker

"$bin" sim --listen "127.0.0.1:$sim_port" &
pids+=($!)

# Fixed Mode, pointed at the simulator's Coding Plan endpoint (the real one is
# https://api.z.ai/api/coding/paas/v4 with a real key).
export API_LLM_PROVIDER_MODEL=glm-5.1
export API_OPENAI_FORCE_BASE_URL="http://127.0.0.1:$sim_port/api/coding/paas/v4"
export API_OPEN_AI_API_KEY=sim-coding-key
export API_RABBITMQ_NAMESPACE=${API_RABBITMQ_NAMESPACE:-review-demo}
export WORKER_HEALTH_PORT=${WORKER_HEALTH_PORT:-3334}

for _ in $(seq 1 50); do
  (exec 3<>"/dev/tcp/127.0.0.1/$sim_port") 2>/dev/null && break
  sleep 0.1
done

"$bin" run &
pids+=($!)

"$bin" submit examples/jobs/*.json --wait --timeout 120 --format "${DEMO_FORMAT:-markdown}"
