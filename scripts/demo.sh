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

# A large PR: this repository's own worker sources as one PR (every file added), reviewed in
# several calls. API_REVIEW_CALL_TOKENS makes each call small enough that the split shows; on the
# real window one call takes about 165k tokens of diff. The coverage line goes to stderr.
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  large=$(mktemp -d)
  git diff --no-color "$(git hash-object -t tree /dev/null)" HEAD -- src >"$large/pr.diff"
  echo
  echo "=== A large PR: $(grep -c '^diff --git' "$large/pr.diff") files, $(du -k "$large/pr.diff" | cut -f1) KiB of diff, reviewed with API_REVIEW_CALL_TOKENS=60000"
  API_REVIEW_CALL_TOKENS=60000 "$bin" review "$large/pr.diff" --repository review-worker/review-worker \
    --title "The worker's sources, as one PR" --format "${DEMO_FORMAT:-markdown}" >"$large/review.md"
  head -n 25 "$large/review.md"
  echo "… ($(wc -l <"$large/review.md") lines in all: $large/review.md)"
fi
