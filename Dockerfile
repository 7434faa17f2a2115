# inference-sidecar: the compliance sidecar, as the most locked-down container in the pod.
#
# Build:  docker build --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) \
#           -t inference-sidecar:0.1.0 .
# Run:    docker run --read-only --tmpfs /tmp -v sidecar-data:/var/lib/inference-sidecar \
#           -e SIDECAR_MODEL_NAME=... (identity, upstream) inference-sidecar:0.1.0
#
# Two stages on the same Debian 12 Python 3.11: the builder turns the source into a wheel
# and installs it into a virtualenv at /opt/venv; the runtime is distroless (no shell, no
# package manager, no pip) and holds only that virtualenv and Debian's python3.11, which
# the venv's interpreter links to. Nothing is written under / at run time: the write-ahead
# log and events file go to /var/lib/inference-sidecar (mount a volume there, the Helm
# chart does), scratch space to /tmp (an emptyDir or tmpfs). (issue 6)
#
# BASE IMAGE DIGESTS: NOT VERIFIED. No container registry is reachable from the machine
# this file was written on; both digests were taken from a public Dockerfile that pairs
# these two tags, and may be stale. Before the first release, resolve the current ones and
# replace them:  crane digest debian:12-slim
#                crane digest gcr.io/distroless/python3-debian12:nonroot
# (or let Renovate/Dependabot maintain them). tests/deploy checks that both are pinned.

# ---------------------------------------------------------------------------- builder
FROM docker.io/library/debian:12-slim@sha256:d5d3f9c23164ea16f31852f95bd5959aad1c5e854332fe00f7b3a20fcc9f635c AS builder

# Debian's python3.11 is the one the distroless runtime ships, so the venv links to it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv=3.11.2-1+b1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src

# The dependencies first, exactly as locked and in a layer of their own: two builds of one
# commit ship the same libraries, and a change to the source does not reinstall them.
COPY requirements-image.txt ./
RUN /usr/bin/python3.11 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps -r requirements-image.txt

COPY pyproject.toml README.md ./
COPY sidecar ./sidecar
COPY detectors ./detectors
COPY privacy_profiles ./privacy_profiles

# Then the wheel, alone (its extra librdkafka is in the lock, so kafka_client: librdkafka
# works without rebuilding the image); pip check fails the build if the lock no longer
# satisfies it. pip and setuptools leave the venv afterwards (no package manager at run
# time); byte-code compiled ahead with unchecked hashes, since the runtime never writes
# .pyc files (read-only root).
RUN /opt/venv/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps /wheels/inference_sidecar-*.whl \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/pip uninstall -y pip setuptools \
    && /opt/venv/bin/python -m compileall -q --invalidation-mode unchecked-hash /opt/venv/lib \
    && install -d -o 65532 -g 65532 -m 0750 /staging/var/lib/inference-sidecar

# ---------------------------------------------------------------------------- runtime
FROM gcr.io/distroless/python3-debian12:nonroot@sha256:db274ad45039fcee19d5cb5fc87700b64bce612f57c03b69f9a59b6bcd6545c8

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="inference-sidecar" \
      org.opencontainers.image.description="Compliance sidecar for high-risk AI model servers: stamps every response, records one event per inference." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/inference-sidecar/inference-sidecar" \
      org.opencontainers.image.vendor="inference-sidecar" \
      org.opencontainers.image.base.name="gcr.io/distroless/python3-debian12:nonroot"

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder --chown=65532:65532 /staging/var/lib/inference-sidecar /var/lib/inference-sidecar

# HOME and TMPDIR point at /tmp (a mounted emptyDir/tmpfs under a read-only root);
# PYTHONDONTWRITEBYTECODE: the venv is read-only; PYTHONUNBUFFERED: logs leave at once.
# No SIDECAR_* setting is set here: an environment variable beats the config file, and
# the chart configures the sidecar through a mounted file (--config / SIDECAR_CONFIG).
ENV PATH=/opt/venv/bin:/usr/bin:/bin \
    HOME=/tmp \
    TMPDIR=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONFAULTHANDLER=1

# Relative defaults (wal_dir: sidecar-wal, events_file: events.jsonl) land on the volume.
WORKDIR /var/lib/inference-sidecar
USER 65532:65532
EXPOSE 8080 9090

# Exec form, no shell: the sidecar is PID 1 and gets SIGTERM itself; it then turns
# /readyz red, drains in-flight requests (drain_timeout) and flushes its events.
# Kubernetes ignores HEALTHCHECK (the chart's probes hit /healthz and /readyz); plain
# Docker uses it. It assumes the default admin port 9090.
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/opt/venv/bin/python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:9090/healthz', timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/venv/bin/inference-sidecar"]
CMD ["serve"]
