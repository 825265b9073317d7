#!/usr/bin/env bash
# Validates the deployment files without Docker or a cluster, on a fresh Debian bookworm (as root:
# it installs what is missing) as on a developer's machine:
#
#   - deploy/docker-compose.yml with Debian's docker-compose (1.29, `apt-get install docker-compose`)
#     `config`, with and without the `sim` profile. The file reads ../.env, which a checkout does
#     not have (and which holds secrets), so the check runs on a scratch copy whose .env is
#     .env.example, or a minimal simulator one when .env.example is missing.
#   - every manifest in deploy/kubernetes with `kubernetes-validate --strict` (PyPI), against the
#     newest Kubernetes it knows and the oldest one supported here (1.27); the set that
#     kustomization.yaml lists is rendered with `kubectl kustomize` or `kustomize build` when one
#     is installed, else each listed file is validated on its own.
#   - the custom resources (KEDA's ScaledObject and TriggerAuthentication, the Cluster Operator's
#     RabbitmqCluster, the Prometheus Operator's PrometheusRule), which kubernetes-validate has no
#     schema for (it would only warn), by a structural check of their own; the built-in kinds in the same files go through
#     kubernetes-validate like the rest. And the settings that must agree across files (ports,
#     user id, drain timeout vs. grace periods, the Secret key KEDA reads).
#   - the alert rules (deploy/prometheus) with promtool (Debian's prometheus package, 2.42:
#     scripts/prometheus.sh installs it): `check rules`, `test rules` (every alert has a case that
#     fires and one that does not), `check config` of the compose Prometheus; the PrometheusRule
#     carries the same rules; every alert has a `for:`, a severity and a runbook row that exists in
#     the README's troubleshooting table.
#   - the Grafana dashboard (deploy/grafana/review-worker.json): its structure, the datasource
#     variable, and every PromQL expression in it parsed by promtool; every metric the rules and
#     the dashboard name is one the worker's source exports.
#
# Prints what it validated; exits non-zero if anything is invalid.
#
#   scripts/validate-deploy.sh
#
# Settings: KUBERNETES_VALIDATE_VENV (where kubernetes-validate is installed when it is not on
# PATH; default ~/.cache/review-worker/kubernetes-validate).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

KV_VERSION=1.37.0                 # kubernetes-validate, pinned for reproducible results
K8S_OLDEST=1.27.0                 # PodDisruptionBudget.unhealthyPodEvictionPolicy needs 1.27
k8s_dir=deploy/kubernetes
compose_file=deploy/docker-compose.yml
# Files in deploy/kubernetes that kustomization.yaml deliberately does not list.
optional_manifests=(secret.yaml keda-scaledobject.yaml rabbitmq-cluster.yaml prometheus-rule.yaml)
# API groups of custom resources: kubernetes-validate has no schema for them (checked below instead).
custom_groups_re='^apiVersion:[[:space:]]*"?(keda\.sh|rabbitmq\.com|monitoring\.coreos\.com)/'

failures=()
fail() { failures+=("$*"); printf 'FAIL %s\n' "$*"; }
ok() { printf 'ok   %s\n' "$*"; }
note() { printf 'note %s\n' "$*"; }
section() { printf '\n== %s\n' "$*"; }

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

apt_updated=
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  if [[ -z "$apt_updated" ]]; then apt-get update -qq; apt_updated=1; fi
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# ---------------------------------------------------------------- tools
section "tools"
if ! command -v docker-compose >/dev/null 2>&1; then
  note "docker-compose is missing: installing Debian's package"
  apt_install docker-compose
fi
printf 'docker-compose: %s\n' "$(docker-compose version --short 2>/dev/null || docker-compose version | head -n1)"

if command -v kubernetes-validate >/dev/null 2>&1; then
  kv=(kubernetes-validate)
  python=(python3)
else
  venv=${KUBERNETES_VALIDATE_VENV:-${HOME:-/root}/.cache/review-worker/kubernetes-validate}
  if [[ ! -x "$venv/bin/kubernetes-validate" ]]; then
    note "kubernetes-validate is missing: installing $KV_VERSION from PyPI into $venv"
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
      apt_install python3 python3-venv
    fi
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$KV_VERSION"
  fi
  kv=("$venv/bin/kubernetes-validate")
  python=("$venv/bin/python")
fi
printf 'kubernetes-validate: %s\n' "$("${kv[@]}" --version)"

if ! command -v promtool >/dev/null 2>&1; then
  note "promtool is missing: installing Debian's prometheus package (scripts/prometheus.sh)"
fi
scripts/prometheus.sh install
printf 'promtool: %s\n' "$(promtool --version 2>&1 | head -n1)"
# The newest Kubernetes its schemas cover (its default), read from its help.
k8s_latest=$("${kv[@]}" --help | sed -n 's/.*Defaults to \([0-9][0-9.]*[0-9]\).*/\1/p' | head -n1)
k8s_latest=${k8s_latest:-1.37.0}
# kubernetes-validate brings PyYAML; the checks below use the same interpreter.
if ! "${python[@]}" -c 'import yaml' 2>/dev/null; then
  fail "python: PyYAML is not importable by ${python[*]}"
fi

# ---------------------------------------------------------------- compose
section "docker-compose: $compose_file"
# A scratch copy of what the file refers to (build context, Dockerfile, ../.env, ../examples).
mkdir -p "$scratch/compose"
cp -a Dockerfile deploy examples "$scratch/compose/"
[[ -f .dockerignore ]] && cp -a .dockerignore "$scratch/compose/"
if [[ -f .env.example ]]; then
  cp .env.example "$scratch/compose/.env"
  note "../.env for the check: a copy of .env.example"
else
  printf '%s\n' 'API_LLM_PROVIDER_MODEL=glm-5.1' \
    'API_OPENAI_FORCE_BASE_URL=http://sim:4010/api/coding/paas/v4' \
    'API_OPEN_AI_API_KEY=sim-coding-key' > "$scratch/compose/.env"
  note "../.env for the check: a minimal simulator one (.env.example does not exist yet)"
fi
compose() { (cd "$scratch/compose/deploy" && docker-compose -f docker-compose.yml "$@"); }
for profile in "" sim examples monitoring; do
  label=${profile:-"(no profile)"}
  args=()
  [[ -n "$profile" ]] && args=(--profile "$profile")
  if out=$(compose "${args[@]}" config 2>&1 >/dev/null); then
    ok "docker-compose config $label"
    [[ -n "$out" ]] && printf '%s\n' "$out" | sed 's/^/     /'
  else
    fail "docker-compose config $label:"
    printf '%s\n' "$out" | sed 's/^/     /'
  fi
done
services=$(compose config --services 2>/dev/null | sort | tr '\n' ' ') || services=""
missing=0
for service in api rabbitmq sim worker; do
  if [[ " $services" != *" $service "* ]]; then
    fail "docker-compose: service \`$service\` is missing (have: ${services:-none})"
    missing=1
  fi
done
((missing)) || ok "docker-compose services: $services"
monitoring_services=$(compose --profile monitoring config --services 2>/dev/null | sort | tr '\n' ' ') || monitoring_services=""
for service in prometheus grafana; do
  if [[ " $monitoring_services" != *" $service "* ]]; then
    fail "docker-compose: service \`$service\` is missing from the monitoring profile (have: ${monitoring_services:-none})"
  fi
done
# Bind mounts of the monitoring services: docker-compose config does not check that they exist.
compose --profile monitoring config > "$scratch/compose.monitoring.yml" 2>/dev/null || true
if mounts=$("${python[@]}" - "$scratch/compose.monitoring.yml" <<'PY'
import os, sys, yaml
doc = yaml.safe_load(open(sys.argv[1])) or {}
bad = []
for name in ("prometheus", "grafana"):
    if doc.get("services", {}).get(name, {}).get("profiles") != ["monitoring"]:
        bad.append(f"{name}: not only in the monitoring profile (a plain `up` would start it)")
    for volume in (doc.get("services", {}).get(name, {}).get("volumes") or []):
        source = volume.get("source") if isinstance(volume, dict) else str(volume).split(":")[0]
        kind = volume.get("type") if isinstance(volume, dict) else ("bind" if source.startswith((".", "/")) else "volume")
        if kind == "bind" and not os.path.exists(source):
            bad.append(f"{name}: {source}")
print("\n".join(bad))
sys.exit(1 if bad else 0)
PY
); then
  ok "docker-compose monitoring profile: prometheus and grafana, their mounted files exist"
else
  fail "docker-compose monitoring profile: $mounts"
fi
compose config > "$scratch/compose.rendered.yml" 2>/dev/null || true

# ---------------------------------------------------------------- kubernetes: each file
section "kubernetes manifests: $k8s_dir (kubernetes-validate --strict)"
# Runs kubernetes-validate; a resource it has no schema for only warns, which is a failure here
# (a misspelt apiVersion would otherwise pass) except for the known custom resources.
validate() { # label version file...
  local label=$1 version=$2; shift 2
  local out rc=0
  out=$("${kv[@]}" --strict -k "$version" "$@" 2>&1) || rc=$?
  printf '%s\n' "$out" | sed 's/^/     /'
  if ((rc != 0)) || grep -q '^ERROR\|^FATAL' <<<"$out"; then
    fail "$label: invalid against Kubernetes $version"
  elif grep -q "^WARN" <<<"$out"; then
    fail "$label: kubernetes-validate has no schema for a resource (wrong apiVersion or kind?)"
  elif ! grep -q "^INFO" <<<"$out"; then
    fail "$label: no resource was validated"
  else
    ok "$label against Kubernetes $version"
  fi
}

# Writes the documents of a file that are not custom resources to another file (none: no file);
# prints the custom resources it left out.
builtin_only() { # file out
  "${python[@]}" - "$1" "$2" <<'PY'
import re, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
custom = lambda d: re.match(r"(keda\.sh|rabbitmq\.com|monitoring\.coreos\.com)/", str(d.get("apiVersion", "")))
builtin = [d for d in docs if not custom(d)]
if builtin:
    with open(sys.argv[2], "w") as out:
        yaml.safe_dump_all(builtin, out, sort_keys=False)
print(", ".join(f"{d.get('kind')} ({d.get('apiVersion')})" for d in docs if custom(d)))
PY
}

manifests=()        # labels
manifest_files=()   # what kubernetes-validate reads for each
for file in "$k8s_dir"/*.yaml "$k8s_dir"/*.yml; do
  [[ -e "$file" ]] || continue
  case "$(basename "$file")" in
    kustomization.yaml|kustomization.yml) continue ;;
  esac
  if grep -Eq "$custom_groups_re" "$file"; then
    builtin="$scratch/builtin-$(basename "$file")"
    if ! custom=$(builtin_only "$file" "$builtin"); then
      fail "$file: not readable as YAML"
      continue
    fi
    note "$file: custom resources, no schema in kubernetes-validate, checked below: $custom"
    if [[ -s "$builtin" ]]; then
      manifests+=("$file (its built-in kinds)")
      manifest_files+=("$builtin")
    fi
  else
    manifests+=("$file")
    manifest_files+=("$file")
  fi
done
if ((${#manifests[@]} == 0)); then
  fail "no manifest found in $k8s_dir"
else
  for version in "$k8s_latest" "$K8S_OLDEST"; do
    for i in "${!manifests[@]}"; do validate "${manifests[$i]}" "$version" "${manifest_files[$i]}"; done
  done
fi

# ---------------------------------------------------------------- kubernetes: the kustomization
section "kustomization: $k8s_dir/kustomization.yaml"
listed=$("${python[@]}" - "$k8s_dir/kustomization.yaml" <<'PY'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
assert doc.get("kind") == "Kustomization", "kind is not Kustomization"
for resource in doc.get("resources") or []:
    print(resource)
PY
) || { fail "kustomization.yaml: unreadable"; listed=""; }
for resource in $listed; do
  [[ -e "$k8s_dir/$resource" ]] || fail "kustomization.yaml lists $resource, which does not exist"
done
for file in "$k8s_dir"/*.yaml; do
  name=$(basename "$file")
  [[ "$name" == kustomization.yaml ]] && continue
  if ! grep -qx "$name" <<<"$listed"; then
    if [[ " ${optional_manifests[*]} " == *" $name "* ]]; then
      note "$name is not in kustomization.yaml, on purpose (optional; see its header)"
    else
      fail "$name is not listed in kustomization.yaml (list it, or add it to optional_manifests here)"
    fi
  fi
done
ok "kustomization.yaml lists: $(tr '\n' ' ' <<<"$listed")"

rendered=
if command -v kustomize >/dev/null 2>&1 && timeout 120 kustomize build "$k8s_dir" > "$scratch/kustomized.yaml" 2>"$scratch/kustomize.err"; then
  rendered="kustomize build"
elif command -v kubectl >/dev/null 2>&1 && timeout 120 kubectl kustomize "$k8s_dir" > "$scratch/kustomized.yaml" 2>"$scratch/kustomize.err"; then
  rendered="kubectl kustomize"
fi
if [[ -n "$rendered" ]]; then
  validate "$rendered $k8s_dir" "$k8s_latest" "$scratch/kustomized.yaml"
else
  note "neither kustomize nor kubectl can render the kustomization here: its files were validated one by one above"
fi

# ---------------------------------------------------------------- custom resources and cross-file checks
section "custom resources (KEDA, RabbitmqCluster) and settings that must agree"
"${python[@]}" - "$k8s_dir" "$compose_file" "$scratch/compose.rendered.yml" <<'PY' || fail "structural checks (see above)"
import glob, os, re, sys, yaml

k8s_dir, compose_file, compose_rendered = sys.argv[1:4]
errors = []

def load(path):
    return [d for d in yaml.safe_load_all(open(path)) if d]

def find(kind, docs):
    return [d for d in docs if d.get("kind") == kind]

docs = []
for path in sorted(glob.glob(os.path.join(k8s_dir, "*.yaml"))):
    if os.path.basename(path) != "kustomization.yaml":
        docs += load(path)

deployment = find("Deployment", docs)[0]
config = find("ConfigMap", docs)[0]["data"]
secrets = {s["metadata"]["name"]: {**s.get("data", {}), **s.get("stringData", {})} for s in find("Secret", docs)}
secret_text = {s["metadata"]["name"]: s.get("stringData", {}) for s in find("Secret", docs)}  # data is base64
secret_keys = {k for values in secrets.values() for k in values}
pod = deployment["spec"]["template"]["spec"]
container = pod["containers"][0]

# KEDA: the objects exist, point at each other and at the Deployment, and scale on the jobs queue.
keda_files = glob.glob(os.path.join(k8s_dir, "keda-*.yaml"))
for path in keda_files:
    before = len(errors)
    keda = load(path)
    scaled = find("ScaledObject", keda)
    auths = {d["metadata"]["name"]: d for d in find("TriggerAuthentication", keda)}
    if not scaled:
        errors.append(f"{path}: no ScaledObject")
    for so in scaled:
        name = so["metadata"]["name"]
        if so.get("apiVersion") != "keda.sh/v1alpha1":
            errors.append(f"{path}: ScaledObject {name}: apiVersion is not keda.sh/v1alpha1")
        spec = so.get("spec", {})
        target = spec.get("scaleTargetRef", {}).get("name")
        if target != deployment["metadata"]["name"]:
            errors.append(f"{path}: scaleTargetRef.name {target!r} is not the Deployment")
        lo, hi = spec.get("minReplicaCount"), spec.get("maxReplicaCount")
        if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
            errors.append(f"{path}: minReplicaCount/maxReplicaCount {lo}/{hi} are not 1 <= min <= max")
        for trigger in spec.get("triggers", []):
            meta = trigger.get("metadata", {})
            if trigger.get("type") != "rabbitmq":
                errors.append(f"{path}: trigger type {trigger.get('type')!r} is not rabbitmq")
            if meta.get("queueName") != "review.jobs":
                errors.append(f"{path}: queueName {meta.get('queueName')!r} is not review.jobs")
            # Over AMQP KEDA counts only ready messages and would scale away replicas mid-review;
            # the management API's QueueLength counts ready + unacknowledged.
            if meta.get("protocol") != "http":
                errors.append(f"{path}: protocol {meta.get('protocol')!r} is not http (AMQP counts only ready messages)")
            if meta.get("mode") != "QueueLength":
                errors.append(f"{path}: mode {meta.get('mode')!r} is not QueueLength")
            if str(meta.get("excludeUnacknowledged", "false")).lower() == "true":
                errors.append(f"{path}: excludeUnacknowledged would count only ready messages again")
            if "host" in meta and not str(meta["host"]).startswith(("http://", "https://")):
                errors.append(f"{path}: host is not an http(s):// management API URL")
            if not all(isinstance(v, str) for v in meta.values()):
                errors.append(f"{path}: trigger metadata values must all be strings")
            ref = trigger.get("authenticationRef", {}).get("name")
            if ref is None and not ({"host", "hostFromEnv"} & meta.keys()):
                errors.append(f"{path}: the rabbitmq trigger has no host, hostFromEnv or authenticationRef")
            if ref is not None:
                if ref not in auths:
                    errors.append(f"{path}: authenticationRef {ref!r} is not a TriggerAuthentication in this file")
                else:
                    params = auths[ref]["spec"]
                    sources = params.get("env", []) + params.get("secretTargetRef", [])
                    if not any(s.get("parameter") == "host" for s in sources):
                        errors.append(f"{path}: TriggerAuthentication {ref} gives no `host`")
                    for env in params.get("env", []):
                        if env.get("name") not in config and env.get("name") not in secret_keys:
                            errors.append(f"{path}: TriggerAuthentication env {env.get('name')} is set by neither the ConfigMap nor the Secret")
                        if env.get("containerName", container["name"]) != container["name"]:
                            errors.append(f"{path}: TriggerAuthentication containerName is not the worker's container")
                    for target in params.get("secretTargetRef", []):
                        where = f"{path}: TriggerAuthentication secretTargetRef {target.get('name')}/{target.get('key')}"
                        if target.get("name") not in secrets:
                            errors.append(f"{where}: no Secret of that name in {k8s_dir}")
                        elif target.get("key") not in secrets[target["name"]]:
                            errors.append(f"{where}: the Secret has no such key")
                        elif target.get("parameter") == "host":
                            value = secret_text[target["name"]].get(target["key"])
                            if value is not None and not str(value).startswith(("http://", "https://")):
                                errors.append(f"{where}: the value is not an http(s):// management API URL")
    if len(errors) == before:
        print(f"ok   {path}: {len(scaled)} ScaledObject(s), {len(auths)} TriggerAuthentication(s)")

# RabbitmqCluster (the Cluster Operator's): an odd number of nodes, at least three, so that the
# quorum queues keep a majority through the loss of a node; a PodDisruptionBudget in the same file
# that never lets voluntary disruptions take that majority.
for path in sorted(glob.glob(os.path.join(k8s_dir, "*.yaml"))):
    if os.path.basename(path) == "kustomization.yaml":
        continue
    file_docs = load(path)
    clusters = [d for d in file_docs if d.get("kind") == "RabbitmqCluster" or str(d.get("apiVersion", "")).startswith("rabbitmq.com/")]
    for rc in clusters:
        before = len(errors)
        name = rc.get("metadata", {}).get("name")
        if rc.get("kind") != "RabbitmqCluster":
            errors.append(f"{path}: {name}: kind {rc.get('kind')!r} is not RabbitmqCluster")
        if rc.get("apiVersion") != "rabbitmq.com/v1beta1":
            errors.append(f"{path}: RabbitmqCluster {name}: apiVersion {rc.get('apiVersion')!r} is not rabbitmq.com/v1beta1")
        spec = rc.get("spec") or {}
        replicas = spec.get("replicas")
        if not (isinstance(replicas, int) and replicas >= 3 and replicas % 2 == 1):
            errors.append(f"{path}: RabbitmqCluster {name}: replicas {replicas!r} is not an odd number >= 3")
            replicas = None
        if not (spec.get("persistence") or {}).get("storage"):
            errors.append(f"{path}: RabbitmqCluster {name}: no persistence.storage (quorum queues need their data to survive a restart)")
        pdbs = [d for d in file_docs if d.get("kind") == "PodDisruptionBudget"
                and d["metadata"].get("namespace") == rc["metadata"].get("namespace")
                and d["spec"].get("selector", {}).get("matchLabels") == {"app.kubernetes.io/name": name}]
        if not pdbs:
            errors.append(f"{path}: RabbitmqCluster {name}: no PodDisruptionBudget selecting app.kubernetes.io/name: {name}")
        for pdb in pdbs:
            spec_pdb = pdb["spec"]
            if replicas and "maxUnavailable" in spec_pdb and not (isinstance(spec_pdb["maxUnavailable"], int) and spec_pdb["maxUnavailable"] <= replicas // 2):
                errors.append(f"{path}: PodDisruptionBudget {pdb['metadata']['name']}: maxUnavailable {spec_pdb['maxUnavailable']!r} could take the majority of {replicas} nodes")
            if replicas and "minAvailable" in spec_pdb and not (isinstance(spec_pdb["minAvailable"], int) and spec_pdb["minAvailable"] > replicas // 2):
                errors.append(f"{path}: PodDisruptionBudget {pdb['metadata']['name']}: minAvailable {spec_pdb['minAvailable']!r} is not a majority of {replicas} nodes")
        if len(errors) == before:
            print(f"ok   {path}: RabbitmqCluster {name}, {replicas} nodes, {len(pdbs)} PodDisruptionBudget(s)")

# Ports, user and timeouts that several files repeat.
port = int(config.get("WORKER_HEALTH_PORT", "3334"))
ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
if ports.get("http") != port:
    errors.append(f"deployment: containerPort `http` {ports.get('http')} != WORKER_HEALTH_PORT {port}")
annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
if annotations.get("prometheus.io/port") != str(port):
    errors.append(f"deployment: prometheus.io/port {annotations.get('prometheus.io/port')} != {port}")
for svc in find("Service", docs):
    for p in svc["spec"]["ports"]:
        if p.get("port") != port:
            errors.append(f"service: port {p.get('port')} != WORKER_HEALTH_PORT {port}")
drain_s = int(config.get("API_WORKER_DRAIN_TIMEOUT_MS", "60000")) / 1000
grace = pod.get("terminationGracePeriodSeconds", 30)
if grace <= drain_s:
    errors.append(f"deployment: terminationGracePeriodSeconds {grace} is not above the drain timeout {drain_s:g}s")
dockerfile = open("Dockerfile").read()
user = re.search(r"^USER\s+(\d+)", dockerfile, re.M)
for ctx in (pod.get("securityContext", {}), container.get("securityContext", {})):
    if "runAsUser" in ctx and (user is None or str(ctx["runAsUser"]) != user.group(1)):
        errors.append(f"deployment: runAsUser {ctx['runAsUser']} is not the Dockerfile's numeric USER")
for probe, path in (("livenessProbe", "/health"), ("readinessProbe", "/ready")):
    got = container.get(probe, {}).get("httpGet", {}).get("path")
    if got != path:
        errors.append(f"deployment: {probe} path {got!r} is not {path}")
print(f"ok   deployment: port {port}, user {user.group(1) if user else '?'}, grace {grace}s > drain {drain_s:g}s, probes /health and /ready")

# Compose: the worker's stop grace is above the drain timeout.
if os.path.getsize(compose_rendered) > 0:
    compose = yaml.safe_load(open(compose_rendered))
    worker = compose["services"]["worker"]
    m = re.fullmatch(r"(\d+)(s|m)", str(worker.get("stop_grace_period", "10s")))
    grace_c = int(m.group(1)) * (60 if m.group(2) == "m" else 1) if m else 0
    if grace_c <= drain_s:
        errors.append(f"{compose_file}: worker stop_grace_period {grace_c}s is not above the drain timeout {drain_s:g}s")
    print(f"ok   {compose_file}: worker stop_grace_period {grace_c}s > drain {drain_s:g}s")

for e in errors:
    print("FAIL " + e)
sys.exit(1 if errors else 0)
PY

# ---------------------------------------------------------------- alert rules and dashboard
section "alert rules (deploy/prometheus) and the Grafana dashboard (deploy/grafana), with promtool"
rules=deploy/prometheus/review-worker.rules.yml
rules_test=deploy/prometheus/review-worker.rules.test.yml
dashboard=deploy/grafana/review-worker.json
promtool_step() { # label command...
  local label=$1 out; shift
  if out=$("$@" 2>&1); then
    ok "$label"
  else
    fail "$label:"
  fi
  printf '%s\n' "$out" | sed 's/^/     /'
}
promtool_step "promtool check rules $rules" promtool check rules "$rules"
promtool_step "promtool test rules $rules_test" promtool test rules "$rules_test"
promtool_step "promtool check config deploy/prometheus/prometheus.yml (compose's Prometheus, rules included)" \
  promtool check config deploy/prometheus/prometheus.yml

# The PrometheusRule's groups as a rules file of their own, for promtool; the dashboard's
# expressions as recording rules of a throwaway rules file, so that promtool parses each one.
"${python[@]}" - "$rules" "$rules_test" "$k8s_dir/prometheus-rule.yaml" "$dashboard" README.md "$scratch" <<'PY' || fail "alert rules and dashboard: structure (see above)"
import json, os, re, sys, yaml

rules_path, test_path, operator_path, dashboard_path, readme_path, scratch = sys.argv[1:7]
errors = []
rules = yaml.safe_load(open(rules_path))
alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]

# The Operator's copy carries exactly the same groups.
operator = [d for d in yaml.safe_load_all(open(operator_path)) if d]
if len(operator) != 1 or operator[0].get("kind") != "PrometheusRule" or operator[0].get("apiVersion") != "monitoring.coreos.com/v1":
    errors.append(f"{operator_path}: not one PrometheusRule of monitoring.coreos.com/v1")
elif operator[0].get("spec", {}).get("groups") != rules["groups"]:
    errors.append(f"{operator_path}: spec.groups differ from {rules_path} (copy its groups: over)")
else:
    yaml.safe_dump({"groups": operator[0]["spec"]["groups"]}, open(os.path.join(scratch, "operator.rules.yml"), "w"))
    print(f"ok   {operator_path}: a PrometheusRule with the {len(alerts)} alerts of {rules_path}")

# The README's troubleshooting rows, by their first cell.
readme = open(readme_path).read()
section = readme.split("\n## Troubleshooting", 1)[1].split("\n## ", 1)[0] if "\n## Troubleshooting" in readme else ""
rows = [line.split("|")[1].strip() for line in section.splitlines() if line.startswith("|") and not line.startswith("|---")]
if not rows:
    errors.append(f"{readme_path}: no Troubleshooting table")

# Every alert: a for:, a severity, a summary, a runbook row that exists; a test case that fires
# and one (at some time) that does not.
tests = yaml.safe_load(open(test_path))
fired, quiet = set(), set()
for case in tests.get("tests", []):
    for check in case.get("alert_rule_test", []):
        (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
for alert in alerts:
    name = alert["alert"]
    if not re.fullmatch(r"[1-9]\d*[smh]", str(alert.get("for", ""))):
        errors.append(f"{rules_path}: {name}: no `for:` (it would fire on one evaluation and flap)")
    if alert.get("labels", {}).get("severity") not in ("page", "warning"):
        errors.append(f"{rules_path}: {name}: severity is not page or warning")
    notes = alert.get("annotations", {})
    if not notes.get("summary"):
        errors.append(f"{rules_path}: {name}: no summary")
    m = re.fullmatch(r'README\.md#troubleshooting, row "(.+)"', notes.get("runbook", ""))
    if not m:
        errors.append(f"{rules_path}: {name}: runbook is not 'README.md#troubleshooting, row \"...\"'")
    elif not any(m.group(1) in row for row in rows):
        errors.append(f"{rules_path}: {name}: no troubleshooting row in {readme_path} contains {m.group(1)!r}")
    if name not in fired:
        errors.append(f"{test_path}: no case where {name} fires")
    if name not in quiet:
        errors.append(f"{test_path}: no case where {name} stays quiet")
print(f"ok   {rules_path}: checked {len(alerts)} alerts for `for:`, severity, runbook rows ({len(rows)} rows in the README) and test cases")

# The dashboard: importable JSON, the datasource a variable, every panel's query a PromQL
# expression promtool parses (Grafana's own variables replaced by sample values).
dash = json.load(open(dashboard_path))
for key in ("title", "uid", "panels", "schemaVersion", "templating"):
    if key not in dash:
        errors.append(f"{dashboard_path}: no `{key}`")
variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
ds = variables.get("DS_PROMETHEUS")
if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
    errors.append(f"{dashboard_path}: no datasource variable DS_PROMETHEUS of type prometheus")
exprs, ids, titles = [], set(), []
for panel in dash.get("panels", []):
    titles.append(panel.get("title"))
    if panel.get("id") in ids:
        errors.append(f"{dashboard_path}: panel id {panel.get('id')} twice")
    ids.add(panel.get("id"))
    pos = panel.get("gridPos", {})
    if not all(isinstance(pos.get(k), int) for k in ("x", "y", "w", "h")) or pos.get("x", 0) + pos.get("w", 0) > 24:
        errors.append(f"{dashboard_path}: panel {panel.get('title')!r}: gridPos {pos} is not within 24 columns")
    if panel.get("type") == "row":
        continue
    if panel.get("datasource", {}).get("uid") != "${DS_PROMETHEUS}":
        errors.append(f"{dashboard_path}: panel {panel.get('title')!r}: datasource is not ${{DS_PROMETHEUS}}")
    if not panel.get("targets"):
        errors.append(f"{dashboard_path}: panel {panel.get('title')!r}: no query")
    for target in panel.get("targets", []):
        if target.get("datasource", {}).get("uid") != "${DS_PROMETHEUS}":
            errors.append(f"{dashboard_path}: panel {panel.get('title')!r} {target.get('refId')}: datasource is not ${{DS_PROMETHEUS}}")
        if not target.get("expr"):
            errors.append(f"{dashboard_path}: panel {panel.get('title')!r} {target.get('refId')}: no expr")
            continue
        exprs.append((panel.get("title"), target.get("refId"), target["expr"]))
grafana_vars = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "6h"}
records = []
for i, (title, ref, expr) in enumerate(exprs):
    for var, value in grafana_vars.items():
        expr = expr.replace(var, value)
    if "$" in expr:
        errors.append(f"{dashboard_path}: panel {title!r} {ref}: an unknown variable in {expr!r}")
    records.append({"record": f"dashboard:panel_{i}", "expr": expr})
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}, open(os.path.join(scratch, "dashboard.rules.yml"), "w"))
print(f"ok   {dashboard_path}: {len(titles)} panels, {len(exprs)} queries, datasource ${{DS_PROMETHEUS}}")

# Every metric named by the rules and the dashboard is one the worker exports (its source names
# it); tests/monitoring.rs checks the same against a real scrape.
source = "".join(open(os.path.join(root, f)).read() for root, _, files in os.walk("src") for f in files if f.endswith(".rs"))
text = " ".join(r["expr"] for r in alerts) + " " + " ".join(e for _, _, e in exprs)
names = sorted(set(re.findall(r"\breview_[a-z0-9_]+", text)))
for name in names:
    base = re.sub(r"_(bucket|sum|count)$", "", name)
    if f'"{name}"' not in source and f'"{base}"' not in source:
        errors.append(f"{name}: named by the rules or the dashboard, exported nowhere in src/")
print(f"ok   metrics named by the rules and the dashboard, all exported by src/: {' '.join(names)}")

for e in errors:
    print("FAIL " + e)
sys.exit(1 if errors else 0)
PY
if [[ -f "$scratch/operator.rules.yml" ]]; then
  promtool_step "promtool check rules $k8s_dir/prometheus-rule.yaml (its spec.groups)" promtool check rules "$scratch/operator.rules.yml"
fi
if [[ -f "$scratch/dashboard.rules.yml" ]]; then
  promtool_step "promtool parses every PromQL expression of $dashboard" promtool check rules "$scratch/dashboard.rules.yml"
fi

# ---------------------------------------------------------------- Dockerfile (static)
section "Dockerfile (static checks; building it needs Docker and the network)"
# Every JSON-form instruction parses; what the build copies exists; the runtime is non-root.
"${python[@]}" - <<'PY' || fail "Dockerfile (see above)"
import json, os, re, sys
text = open("Dockerfile").read()
joined = re.sub(r"\\\n", " ", text)
errors = []
for line in joined.splitlines():
    m = re.match(r"^(?:HEALTHCHECK\b.*?\bCMD|CMD|ENTRYPOINT)\s+(\[.*\])\s*$", line.strip())
    if m:
        try:
            json.loads(m.group(1))
        except ValueError as e:
            errors.append(f"not valid JSON: {line.strip()[:80]}: {e}")
for m in re.finditer(r"^COPY\s+(?!--from)(.+)$", joined, re.M):
    for src in m.group(1).split()[:-1]:
        if not os.path.exists(src):
            errors.append(f"COPY source {src} does not exist")
ignored = [l.strip() for l in open(".dockerignore")] if os.path.exists(".dockerignore") else []
ignored = [l for l in ignored if l and not l.startswith("#")]
for needed in ("src/", "docs/", "Cargo.toml", "Cargo.lock"):
    if needed in ignored or needed.rstrip("/") in ignored:
        errors.append(f".dockerignore excludes {needed}, which the build needs")
if not re.search(r"^USER\s+[1-9]\d*(:\d+)?\s*$", text, re.M):
    errors.append("no numeric non-root USER")
for needed in ("HEALTHCHECK", 'ENTRYPOINT ["/usr/local/bin/review-worker"]', 'CMD ["run"]', "EXPOSE 3334", "--locked"):
    if needed not in text:
        errors.append(f"missing: {needed}")
for e in errors:
    print("FAIL " + e)
if not errors:
    print("ok   Dockerfile: JSON forms parse, COPY sources exist, numeric non-root USER, HEALTHCHECK, entrypoint")
sys.exit(1 if errors else 0)
PY

# ---------------------------------------------------------------- summary
section "summary"
if ((${#failures[@]})); then
  printf 'deployment files: %d problem(s)\n' "${#failures[@]}"
  printf '  - %s\n' "${failures[@]}"
  exit 1
fi
echo "deployment files: all valid (docker-compose config; kubernetes-validate --strict; KEDA, RabbitmqCluster and cross-file checks; alert rules and dashboard with promtool; Dockerfile static checks)"
