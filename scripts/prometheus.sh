#!/usr/bin/env bash
# Prometheus's `prometheus` and `promtool` (Debian's package, 2.42 on bookworm) for the rule tests,
# the dashboard check (scripts/validate-deploy.sh) and the real-scrape test (tests/monitoring.rs).
#
#   scripts/prometheus.sh install   install Debian's prometheus if either binary is missing; never
#                                   starts the system service (the tests run their own, privately)
#   scripts/prometheus.sh version   print both binaries' versions
#
# Idempotent: with both binaries on PATH it does nothing. Installing needs root and apt.
set -euo pipefail

say() { printf 'prometheus.sh: %s\n' "$*" >&2; }

install_prometheus() {
  if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then return; fi
  say "prometheus/promtool are not installed: installing Debian's package"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  # The package starts a system Prometheus on :9090 where an init system runs; policy-rc.d stops
  # that (the tests start their own on a private port and data directory).
  # An existing policy-rc.d (container images often ship one) is left as it is.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get install -y -qq --no-install-recommends prometheus >&2
  command -v prometheus >/dev/null && command -v promtool >/dev/null || {
    say "the package installed, but prometheus or promtool is not on PATH"
    exit 1
  }
}

case "${1:-}" in
  install) install_prometheus ;;
  version) prometheus --version 2>&1 | head -n1; promtool --version 2>&1 | head -n1 ;;
  *) say "usage: $0 install | version"; exit 2 ;;
esac
