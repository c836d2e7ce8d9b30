# spek-sentinel container image. Build it with scripts/build-image: it makes the base image
# (debootstrap, no registry needed) and the wheels in dist/wheels that this file installs.
#
#   docker run -d --name spek-sentinel -p 127.0.0.1:9102:9102 \
#     -v spek-sentinel-state:/var/lib/spek-sentinel \
#     -v /etc/spek-sentinel/thresholds.toml:/etc/spek-sentinel/thresholds.toml:ro \
#     spek-sentinel:0.1.0

# A locally made Debian bookworm minbase with python3 and python3-venv; scripts/build-image
# names the tag its recipe gives and refuses to build when this line names another.
ARG BASE_IMAGE=spek-sentinel-base:bookworm-py311-d0fb04ecda2b

FROM ${BASE_IMAGE} AS build
LABEL spek-sentinel.build-stage=1
# No package index in here: everything comes from the wheels built on the host.
COPY dist/wheels/ /tmp/wheels/
RUN python3 -m venv /opt/spek-sentinel \
 && /opt/spek-sentinel/bin/pip install --no-index --find-links /tmp/wheels \
      --no-cache-dir --disable-pip-version-check --no-compile spek-sentinel \
 && /opt/spek-sentinel/bin/python -m pip uninstall --yes --quiet pip setuptools \
 && /opt/spek-sentinel/bin/python -m compileall -q /opt/spek-sentinel/lib \
 && /opt/spek-sentinel/bin/spek-sentinel --version

FROM ${BASE_IMAGE}
ARG VERSION=unknown
LABEL org.opencontainers.image.title="spek-sentinel" \
      org.opencontainers.image.description="Watches the SPEK Platform and carries out its rollback runbook" \
      org.opencontainers.image.version="${VERSION}"

# Its own user; uid/gid 10001 so that a volume's owner is the same on every host.
RUN groupadd --system --gid 10001 spek-sentinel \
 && useradd --system --uid 10001 --gid spek-sentinel --home-dir /var/lib/spek-sentinel \
      --no-create-home --shell /usr/sbin/nologin spek-sentinel \
 && install -d -o spek-sentinel -g spek-sentinel -m 0750 /var/lib/spek-sentinel \
 && install -d -m 0755 /etc/spek-sentinel

COPY --from=build /opt/spek-sentinel /opt/spek-sentinel
# The repository's table as a default; mount the deployment's own over it.
COPY thresholds.toml /etc/spek-sentinel/thresholds.toml

ENV PATH=/opt/spek-sentinel/bin:/usr/local/bin:/usr/bin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SPEK_SENTINEL_CONFIG=/etc/spek-sentinel/thresholds.toml
# Inside a container the API listens on every interface of the container; which of them the
# host publishes (-p 127.0.0.1:9102:9102) decides who reaches it.
ENV SPEK_SENTINEL_API__LISTEN=0.0.0.0:9102

USER 10001:10001
WORKDIR /var/lib/spek-sentinel
# The store, journal, incidents and backups (state_dir, backup_dir, incidents_dir defaults).
VOLUME /var/lib/spek-sentinel
EXPOSE 9102

HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python3", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9102/healthz', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["spek-sentinel"]
CMD ["run", "-c", "/etc/spek-sentinel/thresholds.toml"]
