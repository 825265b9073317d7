#!/usr/bin/env bash
# The cluster drill: three private RabbitMQ nodes on the loopback (scripts/cluster.sh), a backlog
# at cap 1 through three replicas, and kill -9 of (a) the node hosting the leadership queue's
# leader, (b) the node hosting the jobs queue's leader, (c) the node the leading replica is
# connected to, and (d) that node frozen (SIGSTOP) instead, a network partition as the leader sees
# it. Prints one row per scenario with PASS/FAIL against the targets and exits with the bench's
# status, non-zero if any target is missed (benches/cluster_drill.rs says what is measured).
#
#   scripts/cluster-drill.sh [--jobs N] [--outage SECONDS] [--only a|b|c|d]...
#
# `cargo bench --bench cluster_drill` is built before the cluster starts, then its executable is
# run directly, so that a SIGINT or SIGTERM reaches it (cargo would not pass one on) and it stops
# its replicas before the cluster goes. CLUSTER_DRILL_PROFILE (default `dev`: the debug build the
# tests already use; the worker mostly waits on the simulator, so optimising changes nothing
# measured) picks the profile. The cluster is stopped and its data removed on exit, whatever
# happened. CLUSTER_BASE_PORT moves the nodes (default 5781..5783); CLUSTER_NET_TICKTIME sets
# their Erlang net_ticktime (default 10 s, see scripts/cluster.sh: it bounds how long the others
# take to see a frozen node down, hence (d)).
set -euo pipefail
cd "$(dirname "$0")/.."

profile="${CLUSTER_DRILL_PROFILE:-dev}"

say() { printf 'cluster-drill.sh: %s\n' "$*" >&2; }

say "machine: $(nproc) cores, $(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo) memory, $(uname -sr)"
if [[ -x /usr/lib/rabbitmq/bin/rabbitmqctl ]]; then
  say "RabbitMQ $(/usr/lib/rabbitmq/bin/rabbitmqctl version 2>/dev/null || echo '?')"
fi

say "building the drill (profile $profile)"
# The bench's own artifact line names its executable (the worker binary's names another).
exe=$(cargo bench --profile "$profile" --bench cluster_drill --no-run --message-format=json-render-diagnostics |
  sed -n 's/.*"executable":"\([^"]*cluster_drill[^"]*\)".*/\1/p' | tail -n 1)
[[ -n "$exe" && -x "$exe" ]] || { say "cargo built no cluster_drill executable"; exit 1; }

bench_pid=
cleanup() {
  if [[ -n "$bench_pid" ]] && kill -0 "$bench_pid" 2>/dev/null; then
    kill -TERM "$bench_pid" 2>/dev/null || true
    wait "$bench_pid" 2>/dev/null || true
  fi
  scripts/cluster.sh stop || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

started=$SECONDS
scripts/cluster.sh start
say "cluster up in $(( SECONDS - started ))s; RabbitMQ $(scripts/cluster.sh ctl 1 -q version 2>/dev/null || echo '?')"
DRILL_URIS=$(scripts/cluster.sh uris)
export DRILL_URIS
# As the nodes report it, not as configured: (d)'s figures depend on it.
DRILL_NET_TICKTIME=$(for n in 1 2 3; do
  scripts/cluster.sh ctl "$n" -q eval 'net_kernel:get_net_ticktime().' 2>/dev/null | tr -dc '0-9' || true
  echo
done | paste -sd/)
export DRILL_NET_TICKTIME
say "Erlang net_ticktime on nodes 1/2/3: $DRILL_NET_TICKTIME s"

# In the background with `wait`, so that the traps above run as soon as a signal comes.
"$exe" --bench "$@" &
bench_pid=$!
status=0
wait "$bench_pid" || status=$?
bench_pid=
say "done in $(( SECONDS - started ))s (cluster start included); exit status $status"
exit "$status"
