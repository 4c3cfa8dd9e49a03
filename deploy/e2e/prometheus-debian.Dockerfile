# Prometheus from Debian's package, for running deploy/e2e-compose.sh where no registry is
# reachable (PROMETHEUS_IMAGE=...). Same entrypoint, data path and user as the upstream image.
#   docker build --network host --build-arg BASE_IMAGE=local/debian:bookworm \
#       -t local/prometheus -f deploy/e2e/prometheus-debian.Dockerfile deploy/e2e
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
# The package version is whatever the base release carries; that is the point of this image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends prometheus wget \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /prometheus \
    && chown 65534:65534 /prometheus
# nobody (65534), as in the upstream image.
USER 65534:65534
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
