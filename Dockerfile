# syntax=docker/dockerfile:1
#
# Two images from one file:
#   docker build --target operator -t ghcr.io/kinfer/kinfer-operator:0.1.0 .   (no torch)
#   docker build --target runtime  -t ghcr.io/kinfer/kinfer-runtime:0.1.0 .    (torch)
#
# Each final stage is the bare Python base plus a virtual environment copied from a builder stage:
# no pip, no compiler, no package manager cache. Both run as the non-root user 65532 and have no
# HEALTHCHECK: Kubernetes probes the operator's /healthz and the runtime's /v2/health/ready.
#
# The base is pinned by tag here. Releases pin the digest as well: replace every
# "python:3.11-slim-bookworm" below with
#   python:3.11-slim-bookworm@sha256:<digest>
# where <digest> is what `docker buildx imagetools inspect python:3.11-slim-bookworm` prints on
# the release day (not filled in here: this repository's machines cannot reach a registry).

# --- builder: a venv without pip, filled by the base image's pip -------------------------------
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv --without-pip /opt/kinfer
WORKDIR /src
# Only what `pip install .` reads (.dockerignore keeps tests, docs and caches out of the context).
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY runtime ./runtime

FROM build AS build-operator
# The package without extras: kopf, kubernetes, pydantic, ... and no torch.
RUN pip --python /opt/kinfer/bin/python install . \
    && /opt/kinfer/bin/python -c "import kinfer.cli, kopf" \
    && ! /opt/kinfer/bin/python -c "import torch" 2>/dev/null

FROM build AS build-runtime
# The runtime extra: torch (the CUDA build from PyPI), numpy, tritonclient, uvloop, ...
# DL3013 reads ".[runtime]" as an unpinned package; it is this project, whose dependency ranges
# live in pyproject.toml.
# hadolint ignore=DL3013
RUN pip --python /opt/kinfer/bin/python install ".[runtime]" \
    && /opt/kinfer/bin/python -c "import kinfer_runtime.__main__, torch"

# --- runtime: the model server in every InferenceService pod -----------------------------------
FROM python:3.11-slim-bookworm AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="kinfer-runtime" \
      org.opencontainers.image.description="kinfer model server (Open Inference Protocol v2, dynamic batching)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# Nothing installs at run time: drop the base image's pip.
RUN python -m pip uninstall --yes --no-cache-dir --root-user-action=ignore pip setuptools wheel
COPY --from=build-runtime /opt/kinfer /opt/kinfer
ENV PATH=/opt/kinfer/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 65532:65532
# REST and gRPC (the operator's render sets the same ports).
EXPOSE 8080 8081
ENTRYPOINT ["kinfer-runtime"]

# --- operator: the kopf operator the Helm chart runs (default target) ---------------------------
FROM python:3.11-slim-bookworm AS operator
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="kinfer-operator" \
      org.opencontainers.image.description="kinfer Kubernetes operator for model inference" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN python -m pip uninstall --yes --no-cache-dir --root-user-action=ignore pip setuptools wheel
COPY --from=build-operator /opt/kinfer /opt/kinfer
ENV PATH=/opt/kinfer/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 65532:65532
# Operator metrics and kopf's liveness endpoint (the chart's --metrics-port and --liveness).
EXPOSE 8080 8081
ENTRYPOINT ["kinfer"]
CMD ["operator"]
