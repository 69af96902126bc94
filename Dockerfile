# The swarm-secrets reconciler image (`swarm-secrets run`, see deploy/stack.yml).
#
# The build context is a folder holding this file and `wheels/`: the project's wheel and every
# dependency's, made on the host with `pip wheel`. Nothing is downloaded from PyPI here, so the build
# works without a route to PyPI (and pip needs no CA bundle inside the build).
# scripts/build-image makes that folder and builds on a base made with debootstrap, no registry needed:
#
#   scripts/build-image [TAG]
#
# With a registry, from a checkout (the .dockerignore sends only wheels/):
#
#   python3.11 -m pip wheel . -w wheels && docker build -t swarm-secrets .
#
# No `# syntax=` line: with BuildKit it would pull a frontend image from a registry, and the legacy
# builder (DOCKER_BUILDKIT=0, what scripts/build-image uses) ignores it anyway.

# The official image when a registry is reachable; scripts/build-image passes
# BASE=local/debian-python:bookworm (Debian's python3 3.11 plus git and openssh-client).
# Either way the wheels must have been made by the same Python minor version (3.11).
ARG BASE=python:3.11-slim-bookworm

# --- stage 1: install the wheels into a venv ---------------------------------------------------------
# A separate stage because the legacy builder has no `RUN --mount`: a `COPY wheels` in the final stage
# would keep ~50 MB of wheel files (mostly sops) in a layer for ever, even if a later step deletes them.
FROM ${BASE} AS build
LABEL io.swarm-secrets.image-stage=build
COPY wheels/ /wheels/
# A venv, not the system site-packages: Debian's python refuses `pip install` there
# (externally-managed-environment), and a venv is one folder to copy into the final stage.
# --no-index: only the wheels given. pip and setuptools are only needed to install, so they go.
RUN python3 -m venv /opt/swarm-secrets \
 && /opt/swarm-secrets/bin/python -m pip install --no-index --find-links /wheels \
      --no-cache-dir --disable-pip-version-check --no-warn-script-location swarm-secrets \
 && /opt/swarm-secrets/bin/python -m pip uninstall --yes --disable-pip-version-check pip setuptools \
 && /opt/swarm-secrets/bin/swarm-secrets --version

# --- stage 2: the runtime image ----------------------------------------------------------------------
FROM ${BASE}

# The git sync shells out to git, and to ssh for ssh:// and git@host: URLs. The debootstrap base has
# them already (no apt repository is reachable from a build there); the official image does not.
RUN if command -v git >/dev/null && command -v ssh >/dev/null; then exit 0; fi \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends git openssh-client ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# An unprivileged account, unused by default (see USER below) but there for `user:` in the stack:
# ssh refuses to run for a uid that has no passwd entry, and git/ssh need a writable HOME.
# Written directly because minbase has no useradd.
RUN echo 'swarm-secrets:x:10001:10001:swarm-secrets:/var/lib/swarm-secrets:/usr/sbin/nologin' >> /etc/passwd \
 && echo 'swarm-secrets:x:10001:' >> /etc/group \
 && mkdir -p /var/lib/swarm-secrets \
 && chown 10001:10001 /var/lib/swarm-secrets \
 && chmod 0750 /var/lib/swarm-secrets

COPY --from=build /opt/swarm-secrets /opt/swarm-secrets

# PYTHONUNBUFFERED: log lines reach `docker service logs` at once. The bytecode was compiled by pip at
# install time, so nothing needs to write .pyc files at run time.
ENV PATH=/opt/swarm-secrets/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LANG=C.UTF-8
WORKDIR /var/lib/swarm-secrets

# Runs as root, on purpose. The reconciler needs the Engine API socket (/var/run/docker.sock,
# root:docker 0660), and whoever can use that socket is root on the host anyway (it can start a
# privileged container), so a non-root uid in the docker group buys almost no isolation; while the
# docker group's id differs from host to host (baking it in as a build arg makes the image
# host-specific, and a socket owned root:root, as some engines have, would not work at all).
# Hardening that does help is in deploy/stack.yml: a read-only root filesystem with tmpfs for the
# only paths written (/tmp, HOME), an init as PID 1, and the secrets mounted 0400. To run
# unprivileged anyway, deploy with `user: "10001:<gid of docker.sock on the managers>"` and the
# secrets' `uid: "10001"` (deploy/README.md, "Running as non-root").
USER root

# /healthz answers 200 as long as the HTTP listener runs (--listen, default :8080). Python's urllib,
# so no curl is needed; any error or non-2xx status raises, which exits 1 = unhealthy.
# If you change --listen's port, override this check (the stack file repeats it).
# A short interval because Swarm counts a task as started only once it is healthy, and the first
# check runs one interval after the start: with 30s every update of the service would take 30s longer.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]

# `run` turns SIGTERM into "finish the tick in hand, then exit 0" (reconciler/loop.py).
STOPSIGNAL SIGTERM
EXPOSE 8080
ENTRYPOINT ["swarm-secrets"]
CMD ["run"]

# Last, and the ARGs declared only here: the legacy builder makes every declared build arg part of the
# cache key of the RUN steps after it, so declared earlier a new revision would redo them all.
# No image.created: a timestamp would make every rebuild of the same sources a different image.
ARG BASE
ARG VERSION=0.0.0+unknown
ARG REVISION=unknown
LABEL org.opencontainers.image.title="swarm-secrets" \
      org.opencontainers.image.description="Declarative GitOps reconciler for Docker Swarm secrets" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="${BASE}"
