# syntax=docker/dockerfile:1
#
# Aegis container image: build with the Rust toolchain, run on distroless.
#
#   docker build -t aegis:dev .
#   docker run --rm --read-only -e VAULT_ADDR=... -e VAULT_TOKEN=... \
#       -e AEGIS_LISTEN_ADDR=0.0.0.0:8201 -p 127.0.0.1:8201:8201 aegis:dev
#
# The binary writes nothing to disk, so the image runs with a read-only root
# filesystem and no writable volumes. The listener defaults to 127.0.0.1:8201,
# which is right for a pod sidecar reached over loopback; see
# deploy/kubernetes/sidecar-example.yaml for why the example binds 0.0.0.0.

ARG RUST_IMAGE=rust:1-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# ---------------------------------------------------------------------------
# Builder
# ---------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS builder

# aws-lc-sys (rustls' crypto provider) compiles C with the cc crate and needs a
# C toolchain; build-essential provides gcc, g++, make and libc headers.
# DL3008 (pin apt versions) is ignored on purpose: the builder is a throwaway
# stage whose packages never reach the runtime image, and pinning Debian package
# versions would break on every point release of the base image. The runtime
# stage installs no packages.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /build

# Only what `cargo build --bin aegis` reads: no tests/, scripts/ or docs, so
# edits there do not invalidate the build layer.
COPY Cargo.toml Cargo.lock ./
COPY src ./src

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

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=unknown

LABEL org.opencontainers.image.title="aegis" \
      org.opencontainers.image.description="Localhost signing sidecar backed by Vault/OpenBao Transit, with local multi-version verification" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"

COPY --from=builder --chown=0:0 --chmod=0755 /out/aegis /usr/local/bin/aegis

# Structured logs for log collectors; override with AEGIS_LOG_FORMAT=text.
ENV AEGIS_LOG_FORMAT=json

USER 65532:65532

EXPOSE 8201

# No HEALTHCHECK: distroless has no shell or curl to run one, and orchestrators
# probe GET /healthz (liveness) and GET /readyz (readiness) directly.
ENTRYPOINT ["/usr/local/bin/aegis"]
CMD ["serve"]
