# capserve image. One file, two flavours chosen by build arguments:
#   GPU (default):  docker build -t capserve:gpu .
#   CPU:            docker build -t capserve:cpu \
#                     --build-arg BASE_IMAGE=debian:bookworm-slim \
#                     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
# Air-gapped: point BASE_IMAGE at a locally loaded image and put wheels in ./wheelhouse/
# with --build-arg WHEELHOUSE_ONLY=1 (pip then installs only from the wheelhouse);
# PYPI_INDEX_URL points pip at a package mirror instead.
# Targets: `runtime` (default, the server) and `model-builder` (runs `make models`).
# Needs BuildKit (RUN --mount), built into Docker 20.10+; no `# syntax=` line, so that an
# air-gapped build does not try to pull a Dockerfile frontend image.

ARG BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# ---- base: an OS image with Python 3 and nothing else -------------------------------------
FROM ${BASE_IMAGE} AS base
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Versions come from the base image's own release; pinning them here would break the
# air-gapped case, where the base is whatever Debian/Ubuntu release the user imported.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# ---- build: a virtual environment with capserve and its dependencies ----------------------
FROM base AS build
# TORCH_INDEX_URL: empty = torch from the default index (CUDA build); the CPU index for a CPU image.
ARG TORCH_INDEX_URL=""
# EXTRAS: optional extras of the capserve package, e.g. "dev".
ARG EXTRAS=""
# Not named PIP_*: pip would read an empty PIP_INDEX_URL from the environment as "no index".
ARG PYPI_INDEX_URL=""
ARG WHEELHOUSE_ONLY=""
WORKDIR /src
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY pyproject.toml README.md ./
COPY training ./training
COPY export ./export
COPY serving ./serving
COPY bench ./bench
# The build context is mounted (not copied) so that an optional ./wheelhouse/ costs no layer.
# Versions are pinned in pyproject.toml (DL3013 cannot see that); torch is installed first so
# that a CPU index can satisfy the pin with its +cpu build. $opts and $torch_pins are lists of
# arguments and must be split into words (SC2086). The pip cache is a build cache mount, so
# keeping it costs no layer (DL3042).
# hadolint ignore=DL3013,DL3042,SC2086
RUN --mount=type=bind,source=.,target=/ctx \
    --mount=type=cache,target=/root/.cache/pip \
    set -eu; \
    opts=""; \
    if [ -d /ctx/wheelhouse ]; then opts="$opts --find-links /ctx/wheelhouse"; fi; \
    if [ -n "$WHEELHOUSE_ONLY" ]; then opts="$opts --no-index"; fi; \
    if [ -n "$PYPI_INDEX_URL" ]; then opts="$opts --index-url $PYPI_INDEX_URL"; fi; \
    torch_pins="$(python3 -c 'import tomllib;d=tomllib.load(open("pyproject.toml","rb"));print(" ".join(x for x in d["project"]["dependencies"] if x.startswith(("torch==","torchvision=="))))')"; \
    if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install $opts --index-url "$TORCH_INDEX_URL" $torch_pins; \
    fi; \
    pip install $opts ".${EXTRAS:+[$EXTRAS]}"; \
    pip check

# ---- app: the venv on a clean base, run as an unprivileged user ----------------------------
FROM base AS app
# A fixed numeric id, so that host-side volume permissions and Kubernetes' runAsUser agree.
RUN useradd --uid 10001 --user-group --home-dir /home/capserve --create-home capserve \
    && mkdir -p /models \
    && chown capserve:capserve /models
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    OMP_NUM_THREADS=4

# ---- model-builder: `make models` into the store volume (compose profile `build`) ---------
FROM app AS model-builder
# make comes from the base image's release, as above (DL3008).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY Makefile pyproject.toml ./
COPY training ./training
COPY export ./export
# The Makefile runs .venv/bin/python and reinstalls when its stamp is older than
# pyproject.toml; point it at the image's venv and mark that venv as installed.
RUN ln -s /opt/venv /app/.venv \
    && touch /opt/venv/.installed-stamp \
    && mkdir -p /app/checkpoints /app/docs/img/models \
    && chown -R capserve:capserve /app/checkpoints /app/docs /opt/venv/.installed-stamp
USER 10001:10001
VOLUME ["/models"]
CMD ["make", "models", "STORE=/models"]

# ---- torchserve (profile torchserve): real TorchServe 0.12 on the same .mar archives -------
# The archives' handler shim imports serving.torchserve_handler, so TorchServe runs in this
# image's venv, where capserve is installed (the stock TorchServe image lacks it).
FROM app AS torchserve
# The JRE comes from the base image's release, as above (DL3008).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
    && rm -rf /var/lib/apt/lists/*
# Same wheelhouse/index options as the build stage; the pip cache is a build cache mount
# (DL3042) and $opts is a list of arguments (SC2086). Every package is pinned; DL3013 reads the
# unquoted $opts as an unpinned package name.
# hadolint ignore=DL3013,DL3042,SC2086
RUN --mount=type=bind,source=.,target=/ctx \
    --mount=type=cache,target=/root/.cache/pip \
    set -eu; \
    opts=""; \
    if [ -d /ctx/wheelhouse ]; then opts="$opts --find-links /ctx/wheelhouse"; fi; \
    pip install $opts torchserve==0.12.0 torch-model-archiver==0.12.0 pyyaml==6.0.2
USER 10001:10001
WORKDIR /home/capserve
EXPOSE 8080 8081 8082 7070
ENTRYPOINT ["torchserve"]

# ---- runtime (default target): the server ------------------------------------------------
FROM app AS runtime
# Every listener defaults to 127.0.0.1; a container must listen on its own interfaces to be
# reachable through published ports, so the image says so explicitly.
ENV CAPSERVE_HOST=0.0.0.0 \
    CAPSERVE_MODEL_STORE=/models \
    CAPSERVE_HTTP_PORT=8000
USER 10001:10001
WORKDIR /home/capserve
VOLUME ["/models"]
EXPOSE 8000 8001 8002 8081
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/v2/health/ready' % os.environ.get('CAPSERVE_HTTP_PORT', '8000'), timeout=2)"]
# `python -m serving` is what `capserve serve` runs; starting it directly makes the server
# PID 1, so `docker stop`'s SIGTERM reaches it without a relay and it drains in-flight work.
ENTRYPOINT ["python3", "-m", "serving"]
CMD ["--host", "0.0.0.0", "--model-store", "/models"]
