#!/usr/bin/env bash
# A private three-node RabbitMQ cluster on the loopback, for the failover drill; a system broker
# is never touched.
#
#   scripts/cluster.sh start             start review-c1..3-BASE@localhost and cluster them (Debian's
#                                        rabbitmq-server is installed first if missing)
#   scripts/cluster.sh stop              stop all three and remove their data directories
#   scripts/cluster.sh kill N            kill -9 node N's Erlang VM (N is 1, 2 or 3)
#   scripts/cluster.sh freeze N          kill -STOP node N's Erlang VM: its sockets stay open and
#                                        nothing answers on them (a network partition as its
#                                        clients and the other nodes see it); prints the time of
#                                        the signal, in seconds since the epoch
#   scripts/cluster.sh thaw N            kill -CONT node N's Erlang VM (after freeze)
#   scripts/cluster.sh restart N         start node N again on its old data; it rejoins the cluster
#   scripts/cluster.sh rejoin N          stop_app + start_app on node N (a running node left
#                                        partitioned after a thaw: it rejoins the others)
#   scripts/cluster.sh uris              the three AMQP URIs, comma-separated (guest/guest, vhost /)
#   scripts/cluster.sh ctl N ARGS...     rabbitmqctl against node N (its HOME, hence the cookie)
#   scripts/cluster.sh queue-leader Q    1..3: the node hosting queue Q's leader (a quorum queue)
#                                        or Q itself (a classic queue); fails if Q is unknown
#   scripts/cluster.sh node-of-port P    1..3: the node whose AMQP port is P
#   scripts/cluster.sh pid N             node N's Erlang VM's OS pid, if it runs
#   scripts/cluster.sh status            the cluster as node 1 (else any live node) sees it
#   scripts/cluster.sh healthy           succeeds if every node runs, sees three running nodes and
#                                        no partition; otherwise says what is wrong and fails
#
# Node N listens on 127.0.0.1:(CLUSTER_BASE_PORT + N - 1) (5781, 5782, 5783 by default), its
# Erlang distribution on that port + 20000, and lives in /tmp/review-worker-cluster-PORT: its own
# data, logs and HOME. The three HOMEs hold one and the same .erlang.cookie, which is what lets
# the nodes (and rabbitmqctl) talk to each other. A node's OS pid is recorded at start from the
# node itself (`os:getpid()`), so `kill`, `freeze` and `stop` signal exactly the processes
# started here. Node names carry the base port, so that two clusters on different base ports (two
# drills at once) do not collide in epmd.
#
# The nodes (and rabbitmqctl) run with an Erlang net_ticktime of CLUSTER_NET_TICKTIME seconds (10
# by default; Erlang's default is 60). It is how long a node that stops answering without closing
# its sockets (a frozen VM, a network partition) takes to be declared down by the others: between
# 0.75 and 1.25 times the tick time. Only then does a quorum queue hand a single-active-consumer
# subscription held through that node to the next consumer. A crashed or killed node closes its
# sockets and is seen down at once whatever the tick time. It must be the same on every node of a
# cluster (and on the CLI that talks to them), so it is set here for all of them, at every start.
set -euo pipefail

base="${CLUSTER_BASE_PORT:-5781}"
sbin=/usr/lib/rabbitmq/bin
nodes=(1 2 3)
# Bounds on every wait, in seconds.
start_timeout="${CLUSTER_START_TIMEOUT:-90}"
ctl_timeout=20
net_ticktime="${CLUSTER_NET_TICKTIME:-10}"
[[ "$net_ticktime" =~ ^[1-9][0-9]*$ ]] || { printf 'cluster.sh: CLUSTER_NET_TICKTIME must be whole seconds, not %s\n' "$net_ticktime" >&2; exit 2; }

say() { printf 'cluster.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

answers() { # host port
  timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}

check_index() { # N
  [[ "${1:-}" =~ ^[123]$ ]] || die "a node is 1, 2 or 3, not '${1:-}'"
}

port_of() { echo $(( base + $1 - 1 )); }
name_of() { echo "review-c$1-$base@localhost"; }
dir_of() { echo "/tmp/review-worker-cluster-$(port_of "$1")"; }
dist_port_of() { # as scripts/rabbitmq.sh: AMQP + 20000, or 20000 below for ports above 45535
  local port; port=$(port_of "$1")
  if (( port + 20000 <= 65535 )); then echo $(( port + 20000 )); else echo $(( port - 20000 )); fi
}

install_server() { # the same as for one private node
  "$(dirname "${BASH_SOURCE[0]}")/rabbitmq.sh" install
}

# The environment rabbitmq-server and rabbitmqctl need for node N (in the current shell).
node_env() { # N
  local dir; dir=$(dir_of "$1")
  export HOME="$dir"
  export RABBITMQ_NODENAME; RABBITMQ_NODENAME=$(name_of "$1")
  export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
  export RABBITMQ_NODE_PORT; RABBITMQ_NODE_PORT=$(port_of "$1")
  export RABBITMQ_DIST_PORT; RABBITMQ_DIST_PORT=$(dist_port_of "$1")
  export RABBITMQ_MNESIA_BASE="$dir/mnesia"
  export RABBITMQ_LOG_BASE="$dir/log"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
  export RABBITMQ_CONFIG_FILE="$dir/rabbitmq"
  export RABBITMQ_PID_FILE="$dir/rabbitmq.pid"
  export ERL_EPMD_ADDRESS=127.0.0.1
  # The same tick time on the nodes and on rabbitmqctl (see the top of this file).
  export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel net_ticktime $net_ticktime"
  export RABBITMQ_CTL_ERL_ARGS="-kernel net_ticktime $net_ticktime"
}

# A fresh directory for node N, with the cluster's one cookie.
prepare_dir() { # N cookie-file
  local dir; dir=$(dir_of "$1")
  rm -rf "$dir"
  mkdir -p "$dir"
  cp "$2" "$dir/.erlang.cookie"
  chmod 400 "$dir/.erlang.cookie"
  printf '[].\n' > "$dir/enabled_plugins"
  # Small disk and memory footprint; no disk-free alarm on crowded CI disks; guest from 127.0.0.1.
  printf 'disk_free_limit.absolute = 50MB\nloopback_users = none\n' > "$dir/rabbitmq.conf"
}

ctl() { # N ARGS... : rabbitmqctl against node N, bounded in time
  local n=$1; shift
  ( node_env "$n"; timeout "$ctl_timeout" "$sbin/rabbitmqctl" -n "$(name_of "$n")" "$@" )
}

# The node's OS pid as recorded at start, if that process still runs this node's VM.
live_pid() { # N
  local file pid; file="$(dir_of "$1")/beam.pid"
  [[ -f "$file" ]] || return 1
  pid=$(cat "$file")
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  # The pid must still be a beam of this node (its HOME is the node's directory), not a pid the
  # kernel has handed out again. (No `grep -q` after a pipe: under pipefail, its early exit can
  # fail the writer with SIGPIPE.)
  local cmdline
  cmdline=$(tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline") || return 1
  [[ "$cmdline" == *beam*" -home $(dir_of "$1") "* ]] || return 1
  echo "$pid"
}

# Whether node N's VM is stopped by a signal (`freeze`): state T in /proc/PID/stat.
is_frozen() { # N
  local pid stat
  pid=$(live_pid "$1") || return 1
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  # The state follows the command name in parentheses, which may itself hold spaces.
  stat=${stat##*) }
  [[ "${stat%% *}" == T ]]
}

# The pid of the shell that launched node N (rabbitmq-server's wrapper, which runs from the
# node's directory), if it still runs: checked, since a pid can be handed out again.
wrapper_pid() { # N
  local file pid cmdline; file="$(dir_of "$1")/server.pid"
  [[ -f "$file" ]] || return 1
  pid=$(cat "$file")
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  cmdline=$(tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline") || return 1
  [[ "$cmdline" == *rabbitmq-server* && "$(readlink "/proc/$pid/cwd" 2>/dev/null)" == "$(dir_of "$1")" ]] || return 1
  echo "$pid"
}

# Launches node N's server in the background, from its own directory (crash dumps land there).
launch() { # N
  local dir; dir=$(dir_of "$1")
  answers 127.0.0.1 "$(port_of "$1")" && die "something already answers on 127.0.0.1:$(port_of "$1")"
  answers 127.0.0.1 "$(dist_port_of "$1")" && die "something already answers on 127.0.0.1:$(dist_port_of "$1")"
  ( node_env "$1"; cd "$dir" && exec "$sbin/rabbitmq-server" >> "$dir/server.log" 2>&1 ) &
  echo $! > "$dir/server.pid"
  touch "$dir/started-here"
}

# Waits until node N has booted, then records its VM's OS pid.
await_node() { # N
  local dir deadline pid; dir=$(dir_of "$1")
  deadline=$(( SECONDS + start_timeout ))
  while (( SECONDS < deadline )); do
    if answers 127.0.0.1 "$(port_of "$1")" && ctl "$1" -q await_startup --timeout 5 >/dev/null 2>&1; then
      pid=$(ctl "$1" -q eval 'os:getpid().' 2>/dev/null | tr -dc '0-9')
      [[ -n "$pid" ]] || die "node $1 started but did not tell its pid"
      echo "$pid" > "$dir/beam.pid"
      return 0
    fi
    # (Signal 0 only: right after the launch the pid may not have become rabbitmq-server yet.)
    if ! kill -0 "$(cat "$dir/server.pid")" 2>/dev/null; then break; fi
    sleep 0.5
  done
  say "node $1 ($(name_of "$1")) did not start within ${start_timeout}s; its log:"
  tail -n 40 "$dir/server.log" >&2 || true
  return 1
}

running_count() { # N : how many running nodes node N sees in the cluster
  # cluster_status as JSON: "running_nodes":["review-c1-5781@localhost",...]; no jq needed.
  ctl "$1" -q cluster_status --formatter json 2>/dev/null |
    grep -o '"running_nodes":\[[^]]*\]' | grep -o '@' | wc -l
}

await_cluster() { # N : waits until node N sees all three nodes running
  local deadline; deadline=$(( SECONDS + start_timeout ))
  while (( SECONDS < deadline )); do
    if [[ "$(running_count "$1")" == 3 ]]; then return 0; fi
    sleep 0.5
  done
  say "node $1 does not see three running nodes after ${start_timeout}s:"
  ctl "$1" cluster_status >&2 || true
  return 1
}

# A node that answers rabbitmqctl, to ask about the cluster (the first live one).
any_live() {
  local n
  for n in "${nodes[@]}"; do
    if live_pid "$n" >/dev/null && ! is_frozen "$n" && ctl "$n" -q ping >/dev/null 2>&1; then echo "$n"; return 0; fi
  done
  die "no node of the cluster is running"
}

stop_node() { # N : graceful stop, then kill -9 of what is left of what this script started
  local dir pid; dir=$(dir_of "$1")
  [[ -f "$dir/started-here" ]] || return 0
  # A node interrupted before its pid was recorded (a start that timed out): ask it.
  if [[ ! -f "$dir/beam.pid" ]]; then
    ctl "$1" -q eval 'os:getpid().' 2>/dev/null | tr -dc '0-9' > "$dir/beam.pid" || true
  fi
  if pid=$(live_pid "$1"); then
    # A frozen node cannot stop gracefully (nor die of anything but SIGKILL): thaw it first.
    kill -CONT "$pid" 2>/dev/null || true
    say "stopping node $1 ($(name_of "$1"))"
    ctl "$1" -q stop >/dev/null 2>&1 || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    if live_pid "$1" >/dev/null; then
      say "node $1 did not stop: kill -9 $pid"
      kill -9 "$pid" 2>/dev/null || true
    fi
  fi
  if pid=$(wrapper_pid "$1"); then
    kill "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/started-here" "$dir/beam.pid"
}

cmd_start() {
  install_server
  local n cookie
  for n in "${nodes[@]}"; do
    if live_pid "$n" >/dev/null; then die "node $n is already running; 'scripts/cluster.sh stop' first"; fi
  done
  if command -v epmd >/dev/null && [[ "$(epmd -names 2>/dev/null || true)" == *"name review-c"[123]"-$base "* ]]; then
    die "a node named review-c1..3-$base is already registered with epmd (another cluster.sh cluster?)"
  fi
  cookie=$(mktemp)
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$cookie"
  for n in "${nodes[@]}"; do prepare_dir "$n" "$cookie"; done
  rm -f "$cookie"
  say "starting three nodes on 127.0.0.1:$(port_of 1),$(port_of 2),$(port_of 3) (data in /tmp/review-worker-cluster-PORT)"
  # All three boot at once; on two cores that is about as fast as one after the other, and no slower.
  for n in "${nodes[@]}"; do launch "$n"; done
  for n in "${nodes[@]}"; do
    if ! await_node "$n"; then cmd_stop; exit 1; fi
  done
  for n in 2 3; do
    say "joining node $n to $(name_of 1) (${SECONDS}s)"
    if ! { ctl "$n" -q stop_app >/dev/null &&
      ctl "$n" -q join_cluster "$(name_of 1)" >/dev/null &&
      ctl "$n" -q start_app >/dev/null; }; then
      say "node $n could not join the cluster"
      cmd_stop
      exit 1
    fi
  done
  if ! await_cluster 1; then cmd_stop; exit 1; fi
  say "cluster of three running after ${SECONDS}s: $(cmd_uris)"
}

cmd_stop() {
  local n
  for n in "${nodes[@]}"; do stop_node "$n"; done
  for n in "${nodes[@]}"; do
    # Only the directories this script makes, and only once their node is gone.
    if ! live_pid "$n" >/dev/null; then rm -rf "$(dir_of "$n")"; fi
  done
}

cmd_kill() { # N
  check_index "$1"
  local pid deadline
  pid=$(live_pid "$1") || die "node $1 is not running (or was not started by this script)"
  say "kill -9 node $1 ($(name_of "$1"), pid $pid)"
  kill -9 "$pid"
  deadline=$(( SECONDS + 15 ))
  while kill -0 "$pid" 2>/dev/null; do
    (( SECONDS < deadline )) || die "pid $pid still runs 15 s after kill -9"
    sleep 0.1
  done
  rm -f "$(dir_of "$1")/beam.pid"
}

cmd_freeze() { # N
  check_index "$1"
  local pid
  pid=$(live_pid "$1") || die "node $1 is not running (or was not started by this script)"
  is_frozen "$1" && die "node $1 is already frozen"
  kill -STOP "$pid"
  date +%s.%N
  say "froze node $1 ($(name_of "$1"), pid $pid): kill -STOP; 'scripts/cluster.sh thaw $1' resumes it"
  for _ in $(seq 1 50); do is_frozen "$1" && return 0; sleep 0.1; done
  die "pid $pid is not stopped 5 s after kill -STOP"
}

cmd_thaw() { # N
  check_index "$1"
  local pid
  pid=$(live_pid "$1") || die "node $1 is not running (or was not started by this script)"
  kill -CONT "$pid"
  say "thawed node $1 ($(name_of "$1"), pid $pid): kill -CONT"
  for _ in $(seq 1 50); do is_frozen "$1" || return 0; sleep 0.1; done
  die "pid $pid is still stopped 5 s after kill -CONT"
}

# Every node runs, answers, sees three running nodes and no partition. After a freeze the
# others have declared the frozen node down; once thawed it may rejoin by itself or stay
# partitioned (RabbitMQ's default partition handling, `ignore`, leaves that to an operator).
cmd_healthy() {
  local n status running problems=()
  for n in "${nodes[@]}"; do
    if ! live_pid "$n" >/dev/null; then problems+=("node $n is not running"); continue; fi
    if is_frozen "$n"; then problems+=("node $n is frozen"); continue; fi
    if ! status=$(ctl "$n" -q cluster_status --formatter json 2>/dev/null); then
      problems+=("node $n does not answer"); continue
    fi
    running=$(printf '%s' "$status" | grep -o '"running_nodes":\[[^]]*\]' | grep -o '@' | wc -l)
    [[ "$running" == 3 ]] || problems+=("node $n sees $running running nodes")
    # "partitions":{} (or []) when there is none; otherwise node => the nodes it is cut from.
    if [[ "$status" =~ \"partitions\":\{[^}]+\} ]]; then
      problems+=("node $n reports a partition: ${BASH_REMATCH[0]}")
    fi
  done
  if (( ${#problems[@]} > 0 )); then
    say "not healthy: $(IFS=';'; echo "${problems[*]}")"
    return 1
  fi
}

# RabbitMQ's own remedy for a node left partitioned: restart its application (the VM stays), so
# that it resyncs from the others and rejoins.
cmd_rejoin() { # N
  check_index "$1"
  live_pid "$1" >/dev/null || die "node $1 is not running (or was not started by this script)"
  is_frozen "$1" && die "node $1 is frozen; 'scripts/cluster.sh thaw $1' first"
  say "restarting the RabbitMQ application on node $1 ($(name_of "$1")) so that it rejoins"
  ctl "$1" -q stop_app >/dev/null || die "node $1 did not stop its application"
  ctl "$1" -q start_app >/dev/null || die "node $1 did not start its application again"
  await_cluster "$1" || exit 1
}

cmd_restart() { # N
  check_index "$1"
  local dir; dir=$(dir_of "$1")
  [[ -d "$dir/mnesia" ]] || die "node $1 has no data directory to restart from; 'scripts/cluster.sh start' first"
  if live_pid "$1" >/dev/null; then die "node $1 is already running"; fi
  # The VM is gone; give the wrapper shell that launched it a moment to go too.
  for _ in $(seq 1 40); do wrapper_pid "$1" >/dev/null || break; sleep 0.25; done
  say "restarting node $1 ($(name_of "$1")) on its data in $dir"
  launch "$1"
  await_node "$1" || exit 1
  await_cluster "$1" || exit 1
}

cmd_uris() {
  local n out=()
  for n in "${nodes[@]}"; do out+=("amqp://guest:guest@127.0.0.1:$(port_of "$n")/%2f"); done
  (IFS=,; echo "${out[*]}")
}

cmd_queue_leader() { # QUEUE
  local queue=$1 n line leader
  n=$(any_live)
  # name, type, leader (quorum queues), pid (classic queues: <node.X.Y.Z>), tab-separated.
  line=$(ctl "$n" -q list_queues --no-table-headers name type leader pid |
    awk -F'\t' -v q="$queue" '$1 == q && !found {print; found = 1}')
  [[ -n "$line" ]] || die "no queue named '$queue'"
  leader=$(printf '%s\n' "$line" | grep -o -m 1 "review-c[123]-$base@localhost" || true)
  leader=${leader%%$'\n'*}
  [[ -n "$leader" ]] || die "queue '$queue' has no leader right now: $line"
  echo "${leader:8:1}"
}

cmd_node_of_port() { # PORT
  local n
  for n in "${nodes[@]}"; do
    if [[ "$(port_of "$n")" == "$1" ]]; then echo "$n"; return 0; fi
  done
  die "port $1 is none of the cluster's ($(port_of 1), $(port_of 2), $(port_of 3))"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  kill) cmd_kill "${2:-}" ;;
  freeze) cmd_freeze "${2:-}" ;;
  thaw) cmd_thaw "${2:-}" ;;
  healthy) cmd_healthy ;;
  rejoin) cmd_rejoin "${2:-}" ;;
  restart) cmd_restart "${2:-}" ;;
  uris) cmd_uris ;;
  ctl) check_index "${2:-}"; n=$2; shift 2; ctl "$n" "$@" ;;
  queue-leader) cmd_queue_leader "${2:?queue name}" ;;
  node-of-port) cmd_node_of_port "${2:?port}" ;;
  pid) check_index "${2:-}"; live_pid "$2" || die "node $2 is not running" ;;
  status) ctl "$(any_live)" cluster_status ;;
  *)
    say "usage: $0 start | stop | kill N | freeze N | thaw N | restart N | rejoin N | healthy | uris | ctl N ARGS... | queue-leader QUEUE | node-of-port PORT | pid N | status"
    exit 2
    ;;
esac
