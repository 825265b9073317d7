# review-worker: consumes PR-review jobs from RabbitMQ and reviews them with GLM (Z.AI).
#
#   docker build -t review-worker:local .
#   docker run --rm --env-file .env -p 3334:3334 review-worker:local          # the worker (`run`)
#   docker run --rm --env-file .env review-worker:local check                 # probe the provider
#   docker run --rm -p 4010:4010 --entrypoint zai-sim review-worker:local --listen 0.0.0.0:4010  # Z.AI simulator
#   (`review-worker sim …` is the same simulator, as a subcommand)
# (`docker run --env-file` takes each value literally, quotes and trailing comments included;
# docker-compose's env_file strips them. deploy/docker-compose.yml is the documented way.)
#
# Builds with the classic builder and with BuildKit alike (no `RUN --mount`), so Debian's
# docker-compose 1.29 can build it as is.

############################ builder ############################
# Pin the toolchain that CI uses; `rust:1-slim-bookworm` follows the latest stable instead.
FROM rust:1.95-slim-bookworm AS builder
WORKDIR /build

# 1. Dependencies only: the manifest, the lockfile and empty targets. This layer is rebuilt only
#    when Cargo.toml or Cargo.lock change, not on every source edit. Cargo refuses a manifest
#    whose declared targets are missing, so every `[[bin]]`, `[[bench]]`, `[[test]]` and
#    `[[example]]` it names gets an empty stub (at its `path`, else the default location). The
#    stubs outside src/ stay for the real build: `cargo build` does not compile benches, tests or
#    examples, it only needs their files to exist. (A build.rs, if one is ever added, must be
#    copied here with the manifest, and un-ignored in .dockerignore.)
#    The workspace's crates get the same treatment: their manifests, an empty lib.rs each, and
#    the simulator's binary.
COPY Cargo.toml Cargo.lock ./
COPY crates/review-core/Cargo.toml crates/review-core/
COPY crates/zai-sim/Cargo.toml crates/zai-sim/
RUN mkdir -p src crates/review-core/src crates/zai-sim/src \
 && echo 'fn main() {}' > src/main.rs \
 && echo 'fn main() {}' > crates/zai-sim/src/main.rs \
 && touch src/lib.rs crates/review-core/src/lib.rs crates/zai-sim/src/lib.rs \
 && awk 'function flush() { if (kind != "" && name != "") print (path != "" ? path : dir[kind] "/" name ".rs"); kind = ""; name = ""; path = "" } \
         BEGIN { dir["bin"] = "src/bin"; dir["bench"] = "benches"; dir["test"] = "tests"; dir["example"] = "examples" } \
         /^[ \t]*\[/ { flush() } \
         /^[ \t]*\[\[(bin|bench|test|example)\]\]/ { kind = $0; gsub(/[][ \t]/, "", kind); next } \
         kind != "" && /^[ \t]*name[ \t]*=/ { split($0, a, "\""); name = a[2] } \
         kind != "" && /^[ \t]*path[ \t]*=/ { split($0, a, "\""); path = a[2] } \
         END { flush() }' Cargo.toml \
    | while read -r stub; do mkdir -p "$(dirname "$stub")"; [ -e "$stub" ] || echo 'fn main() {}' > "$stub"; done \
 && cargo build --release --locked --workspace \
 && rm -rf src crates/review-core/src crates/zai-sim/src

# 2. The real sources. `docs/` is needed at compile time: the crate embeds the contract's JSON
#    schemas (`include_str!("../docs/contract/*.json")`).
COPY src ./src
COPY crates ./crates
COPY docs ./docs
# Forget the dummy crates' artefacts so that cargo rebuilds ours whatever the files' mtimes are
# (COPY keeps the build context's mtimes, which can be older than the dummy build).
RUN touch src/main.rs src/lib.rs crates/*/src/lib.rs crates/zai-sim/src/main.rs \
 && rm -rf target/release/.fingerprint/review-worker-* target/release/.fingerprint/review-core-* \
           target/release/.fingerprint/zai-sim-* \
           target/release/deps/review_worker-* target/release/deps/libreview_worker-* \
           target/release/deps/libreview_core-* target/release/deps/zai_sim-* target/release/deps/libzai_sim-* \
 && cargo build --release --locked --workspace \
 && install -D -m 0755 target/release/review-worker /out/review-worker \
 && install -D -m 0755 target/release/zai-sim /out/zai-sim \
 && /out/review-worker --version && /out/zai-sim --version

############################ runtime ############################
# Why debian:bookworm-slim and not gcr.io/distroless/cc-debian12:nonroot: the image carries a
# HEALTHCHECK on /health, and distroless has no shell, curl or wget to run one, while the worker
# has no `health` subcommand. bookworm-slim already has bash, whose /dev/tcp makes the HTTP probe
# below without installing anything. Nothing else is added beside the binary but ca-certificates
# (the binary itself trusts its built-in webpki roots; the system store is there for a build
# switched to native roots and for tools run in the container). Kubernetes ignores HEALTHCHECK and
# uses the probes in deploy/kubernetes/deployment.yaml instead, so a distroless variant would
# work there: swap the base, drop the HEALTHCHECK and the useradd, and keep USER 10001:10001.
FROM debian:bookworm-slim AS runtime

RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 review \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin review

COPY --from=builder /out/review-worker /usr/local/bin/review-worker
COPY --from=builder /out/zai-sim /usr/local/bin/zai-sim

# /health, /ready and /metrics (WORKER_HEALTH_PORT, default 3334).
EXPOSE 3334
# Numeric, so that Kubernetes' runAsNonRoot can verify it (deployment.yaml uses the same 10001).
USER 10001:10001

# Liveness only (/health): /ready answers 503 while the provider is paused (quota window,
# account problem) and such a container must not be restarted for it. The probe speaks HTTP/1.0
# over bash's /dev/tcp and passes on a 200 status line; it follows WORKER_HEALTH_PORT if set.
# It is meant for `run`: a container running `sim` or `submit` from this image should override
# or disable it (deploy/docker-compose.yml does).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${WORKER_HEALTH_PORT:-3334} && printf 'GET /health HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && read -r status <&3 && [[ $status == *' 200 '* ]]"]

# The worker handles SIGTERM itself: it stops taking jobs and waits up to
# API_WORKER_DRAIN_TIMEOUT_MS (default 60 s) for reviews in flight, so give it a longer stop
# timeout (`docker stop -t 90`, compose `stop_grace_period: 90s`, k8s terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/review-worker"]
CMD ["run"]
