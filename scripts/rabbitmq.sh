#!/usr/bin/env bash
# A RabbitMQ for the demo and the tests, without touching a system broker.
#
#   scripts/rabbitmq.sh ensure        a broker answers at API_RABBITMQ_URI's host:port, or a private
#                                     node is started there (Debian's rabbitmq-server is installed
#                                     first if missing); prints "started" when it started one
#   scripts/rabbitmq.sh start PORT    start a private node on 127.0.0.1:PORT (own data directory)
#   scripts/rabbitmq.sh stop PORT     stop the private node on PORT, if this script started it
#   scripts/rabbitmq.sh stop-ensured  stop the node `ensure` started, if it started one
#   scripts/rabbitmq.sh ctl PORT ARGS rabbitmqctl ARGS against the private node on PORT
#   scripts/rabbitmq.sh install       install Debian's rabbitmq-server if it is missing
#
# A private node lives in /tmp/review-worker-rabbitmq-PORT: its own node name, cookie, Erlang
# distribution port (PORT+20000) and data, so it can be killed and restarted by tests.
set -euo pipefail

uri="${API_RABBITMQ_URI:-amqp://guest:guest@127.0.0.1:5672/%2f}"
hostport=${uri#*://}
hostport=${hostport#*@}
hostport=${hostport%%/*}
host=${hostport%:*}
port=${hostport##*:}
[[ "$host" == "$port" || -z "$port" ]] && port=5672

say() { printf 'rabbitmq.sh: %s\n' "$*" >&2; }

answers() { # host port
  timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}

install_server() {
  if [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]]; then return; fi
  say "rabbitmq-server is not installed: installing Debian's package"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  # The package starts a system node via its init script where one exists; policy-rc.d stops that.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq rabbitmq-server >&2
  rm -f /usr/sbin/policy-rc.d
}

node_env() { # port
  local dir="/tmp/review-worker-rabbitmq-$1"
  mkdir -p "$dir"
  if [[ ! -f "$dir/.erlang.cookie" ]]; then
    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dir/.erlang.cookie"
    chmod 400 "$dir/.erlang.cookie"
  fi
  printf '[].\n' > "$dir/enabled_plugins"
  export HOME="$dir"
  export RABBITMQ_NODENAME="review-$1@localhost"
  export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
  export RABBITMQ_NODE_PORT="$1"
  # RabbitMQ's own convention is AMQP port + 20000; ports above 45535 (the kernel's ephemeral
  # range, where tests find free ports) would overflow, so those go 20000 below instead.
  if (( $1 + 20000 <= 65535 )); then export RABBITMQ_DIST_PORT=$(( $1 + 20000 )); else export RABBITMQ_DIST_PORT=$(( $1 - 20000 )); fi
  export RABBITMQ_MNESIA_BASE="$dir/mnesia"
  export RABBITMQ_LOG_BASE="$dir/log"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
  export RABBITMQ_CONFIG_FILE="$dir/rabbitmq"
  export RABBITMQ_PID_FILE="$dir/rabbitmq.pid"
  # Small disk and memory footprint; no disk-free alarm on crowded CI disks.
  printf 'disk_free_limit.absolute = 50MB\nloopback_users = none\n' > "$dir/rabbitmq.conf"
  export ERL_EPMD_ADDRESS=127.0.0.1
  PRIVATE_DIR="$dir"
}

start_node() { # port
  install_server
  node_env "$1"
  if answers 127.0.0.1 "$1"; then say "something already answers on 127.0.0.1:$1"; return 1; fi
  say "starting a private RabbitMQ node on 127.0.0.1:$1 (data in $PRIVATE_DIR)"
  # From its own directory, so that a crash dump lands there and not in the caller's checkout.
  (cd "$PRIVATE_DIR" && exec /usr/lib/rabbitmq/bin/rabbitmq-server > "$PRIVATE_DIR/server.log" 2>&1) &
  echo $! > "$PRIVATE_DIR/server.pid"
  for _ in $(seq 1 120); do
    if answers 127.0.0.1 "$1" && /usr/lib/rabbitmq/bin/rabbitmqctl -q await_startup --timeout 5 >/dev/null 2>&1; then
      touch "$PRIVATE_DIR/started-here"
      return 0
    fi
    sleep 0.5
  done
  say "the private node did not start; its log:"
  tail -n 40 "$PRIVATE_DIR/server.log" >&2 || true
  return 1
}

stop_node() { # port
  local dir="/tmp/review-worker-rabbitmq-$1"
  [[ -f "$dir/started-here" ]] || return 0
  node_env "$1"
  say "stopping the private node on 127.0.0.1:$1"
  /usr/lib/rabbitmq/bin/rabbitmqctl -q stop >/dev/null 2>&1 || true
  if [[ -f "$dir/server.pid" ]]; then
    kill "$(cat "$dir/server.pid")" 2>/dev/null || true
  fi
  rm -f "$dir/started-here"
}

case "${1:-}" in
  ensure)
    if answers "$host" "$port"; then exit 0; fi
    if [[ "$host" != "127.0.0.1" && "$host" != "localhost" ]]; then
      say "nothing answers at $host:$port, and a private node can only be started on the loopback"
      exit 1
    fi
    start_node "$port"
    echo started
    ;;
  start) start_node "${2:?port}" ;;
  stop) stop_node "${2:?port}" ;;
  stop-ensured) stop_node "$port" ;;
  install) install_server ;;
  ctl) node_env "${2:?port}"; shift 2; exec /usr/lib/rabbitmq/bin/rabbitmqctl -q "$@" ;;
  *) say "usage: $0 ensure | start PORT | stop PORT | stop-ensured | ctl PORT ARGS... | install"; exit 2 ;;
esac
