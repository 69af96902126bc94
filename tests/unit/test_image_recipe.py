"""The image recipe, read without an engine: ``docker build .`` from a clean checkout has everything the
Dockerfile copies and nothing secret (the .dockerignore, read as Docker reads it), the runtime stage
starts from scratch with an init, and scripts/build-image builds this very Dockerfile on this checkout."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "Dockerfile").read_text(encoding="utf-8")


def _ignore_patterns() -> list[tuple[bool, str]]:
    patterns = []
    for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            patterns.append((negated, line.lstrip("!").strip("/")))
    return patterns


def _matches(pattern: str, path: str) -> bool:
    # Docker's rules: `**` matches any number of folders; a pattern matching a folder matches what
    # is inside it.
    regex = re.escape(pattern).replace(r"\*\*", "\0").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
    regex = regex.replace("\0/", "(.*/)?").replace("\0", ".*")
    parts = path.split("/")
    return any(re.fullmatch(regex, "/".join(parts[:i])) for i in range(1, len(parts) + 1))


def in_context(path: str) -> bool:
    """Whether ``docker build .`` sends ``path`` (relative to the checkout): the last match decides."""
    sent = True
    for negated, pattern in _ignore_patterns():
        if _matches(pattern, path):
            sent = negated
    return sent


def tracked_files() -> list[str]:
    done = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "--cached", "--others", "--exclude-standard"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.split()


def copy_sources() -> list[str]:
    sources = []
    for line in re.findall(r"^COPY (?!--from)(.+)$", DOCKERFILE, re.MULTILINE):
        sources.extend(line.split()[:-1])
    return sources


def test_every_copy_source_is_in_a_clean_checkouts_build_context() -> None:
    files = tracked_files()
    sources = copy_sources()
    assert set(sources) >= {"pyproject.toml", "reconciler", "schemas", "scripts/make-image-rootfs"}
    for source in sources:
        inside = [f for f in files if f == source or f.startswith(source.rstrip("/") + "/")]
        assert inside, f"COPY {source}: not in the repository"
        assert all(in_context(f) for f in inside), f"COPY {source}: excluded by .dockerignore"
    assert "wheels" not in DOCKERFILE.split("# --- stage 1")[1], "the build must not need a wheels/ folder"


def test_the_build_context_holds_no_manifests_keys_or_git() -> None:
    for path in (
        "manifests/shop.yaml", "manifests/secrets/shop.enc.yaml", "age.key", ".env", ".git/config",
        "tests/unit/conftest.py", ".venv/bin/python", "deploy/stack.yml", "reconciler/__pycache__/x.pyc",
    ):  # fmt: skip
        assert not in_context(path), path
    sent = [f for f in tracked_files() if in_context(f)]
    allowed = {"Dockerfile", "pyproject.toml", "README.md", "LICENSE", "reconciler", "schemas", "scripts"}
    assert sent and all(f.split("/")[0] in allowed for f in sent), sent


def test_the_ignore_reader_reads_like_docker() -> None:
    assert _matches("**", "a/b/c")
    assert _matches("reconciler/**", "reconciler/core/model.py")
    assert _matches("**/__pycache__", "reconciler/core/__pycache__/x.pyc")
    assert not _matches("schemas/**", "reconciler/schemas.py")


def test_the_runtime_stage() -> None:
    stages = re.findall(r"^FROM (\S+)(?: AS (\w+))?$", DOCKERFILE, re.MULTILINE)
    assert stages == [("${BASE}", "build"), ("scratch", "")]
    assert "ARG BASE=debian:bookworm-slim" in DOCKERFILE
    build, runtime = re.split(r"^FROM scratch$", DOCKERFILE, flags=re.MULTILINE)
    assert 'ENTRYPOINT ["/usr/bin/tini", "-s", "--", "swarm-secrets"]' in runtime
    assert "HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3" in runtime
    for label in ("version", "revision", "licenses", "title", "base.name"):
        assert f"org.opencontainers.image.{label}=" in runtime
    # security updates at build time, from a base whose sources include the security suite
    assert "apt-get upgrade" in build and "-security" in build


def test_build_image_builds_this_dockerfile_on_this_checkout() -> None:
    script = (REPO / "scripts" / "build-image").read_text(encoding="utf-8")
    [build] = re.findall(r"docker build --force-rm.*?\"\$REPO\"", script, re.DOTALL)
    assert "-f " not in build and "--file" not in build  # the repository's own Dockerfile
    assert "BASE_IMAGE=$(awk -F= '/^ARG BASE=/" in script  # the base is made under the name it expects
    assert "MAX_AGE_DAYS" in script and "-mtime" in script  # a cached base expires
