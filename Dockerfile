# syntax=docker/dockerfile:1
#
# Aegis container image: build with the Rust toolchain, run on distroless.
#
#   docker build -t aegis:dev \
#       --build-arg REVISION="$(git rev-parse HEAD)" \
#       --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" .
#   docker run --rm --read-only -e VAULT_ADDR=... -e VAULT_TOKEN=... -e AEGIS_KEYS=model-sign \
#       -e AEGIS_LISTEN_ADDR=0.0.0.0:8201 -p 127.0.0.1:8201:8201 aegis:dev
#
# Read-only root filesystem: the sidecar writes only where it is told to, and each
# of those paths is meant to be a volume: AEGIS_CACHE_DIR (keyset snapshot),
# AEGIS_LISTEN_UNIX (the socket's directory), AEGIS_AUDIT_FILE / AEGIS_AUDIT_SPOOL_DIR
# (audit trail). With none of them set it writes nothing at all. Outside Kubernetes:
# `--read-only --tmpfs /var/cache/aegis -e AEGIS_CACHE_DIR=/var/cache/aegis`, and so on.
# deploy/kubernetes/base/deployment.yaml mounts an emptyDir for each.
#
# The listener defaults to 127.0.0.1:8201, right for a pod sidecar reached over
# loopback (the container above binds 0.0.0.0 only because `docker run -p` forwards
# to the container's own interface).
#
# Reproducible inputs: the toolchain is the one CI tests with (Rust 1.95), the
# dependencies are Cargo.lock's (--locked). Pin the base images by digest for
# releases: --build-arg RUST_IMAGE=rust:1.95-slim-bookworm@sha256:... and
# --build-arg RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot@sha256:...

ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# ---------------------------------------------------------------------------
# Builder
# ---------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS builder

# No packages to install: rust:*-slim ships gcc and libc6-dev, which is all that
# aws-lc-sys (rustls' crypto provider, the only C code) needs: its cc builder needs
# no cmake, and its bindings are pre-generated (no clang). The gRPC code is
# generated and committed (no protoc).

WORKDIR /build

# Only what `cargo build --bin aegis` reads: no tests/, scripts/, deploy/ or docs, so
# edits there do not invalidate the build layer. A file the code includes from
# outside src/ (include_str!/include_bytes!) must be copied here too.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY openapi ./openapi

# Cache mounts keep the crates.io index/downloads and incremental artefacts
# between builds; the binary is copied out of the cached target dir because
# cache mounts are not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/build/target,sharing=locked \
    cargo build --locked --release --bin aegis \
    && install -D -m 0755 target/release/aegis /out/aegis

# ---------------------------------------------------------------------------
# Runtime
# ---------------------------------------------------------------------------
# distroless/cc: glibc + libgcc + CA certificates (for https VAULT_ADDR), no
# shell, no package manager; the :nonroot tag's default user is 65532.
FROM ${RUNTIME_IMAGE}

ARG RUNTIME_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=unknown

LABEL org.opencontainers.image.title="aegis" \
      org.opencontainers.image.description="Localhost signing sidecar backed by Vault/OpenBao Transit, with local multi-version verification" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.base.name="${RUNTIME_IMAGE}"

# Owned by root, not writable by the user it runs as.
COPY --from=builder --chown=0:0 --chmod=0755 /out/aegis /usr/local/bin/aegis

# Structured logs for log collectors; override with AEGIS_LOG_FORMAT=text.
ENV AEGIS_LOG_FORMAT=json

# glibc's allocator, sized for the pod's 64 MiB limit. A fixed mmap threshold gives every
# buffer of 1 MiB or more (request bodies, a model's signature file) back to the kernel
# when it is freed; by default the threshold rises after the first large free, and later
# 8 MiB bodies are carved from the heap and kept. Two arenas stop each thread from growing
# a heap of its own. Measured by scripts/bench-model-memory.py (which runs with this
# line): 40 callers sending 8 MiB sign bodies peak at 57 MiB with it, 85 MiB without.
ENV GLIBC_TUNABLES=glibc.malloc.arena_max=2:glibc.malloc.mmap_threshold=1048576

# Numeric, so Kubernetes' runAsNonRoot can check it without an /etc/passwd lookup.
USER 65532:65532

# 8201: the Transit API (HTTP and gRPC; loopback unless AEGIS_LISTEN_ADDR says
# otherwise). 9464: /metrics, /healthz, /readyz when AEGIS_METRICS_LISTEN is set.
EXPOSE 8201 9464

# No HEALTHCHECK: distroless has no shell or curl to run one, Kubernetes ignores it,
# and orchestrators probe GET /healthz (liveness) and GET /readyz (readiness) directly.
ENTRYPOINT ["/usr/local/bin/aegis"]
CMD ["serve"]
