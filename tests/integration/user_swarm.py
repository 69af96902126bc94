"""A stand-in for a user's own Docker: a swarm manager on the host's network with Docker's default ports.

``scripts/dev-swarm`` and the quick start must work beside the swarm manager a user (or a CI host)
already runs, and leave it alone. :class:`UserSwarm` starts one: a plain ``dockerd`` with its own
socket, data and exec folders, made a manager by ``docker swarm init`` with the default ports, so it
holds 2377 (cluster) and 7946 (gossip) on all addresses and, with a task on an overlay network, 4789
(VXLAN). It gets objects of its own (a secret, a config, an overlay network and a service with a running
task that mounts the secret) whose IDs and version indexes :meth:`UserSwarm.snapshot` records.

Two settings differ from a stock engine, to spare the machine the test runs on (which may run a real
Docker): ``--iptables=false --ip-forward=false`` (a dockerd on the host's network otherwise rewrites the
host's DOCKER chains and turns on forwarding) and bridges of its own instead of ``docker0`` and
``docker_gwbridge``. None of them changes which ports its swarm holds.

Only one such manager can hold the default ports at a time: :func:`default_ports_lock` serialises the
test runs of one machine, and :func:`sweep_stale` (called under that lock) removes what a run killed
before its cleanup left behind. That matters beyond tidiness: the overlay driver creates its VXLAN
devices in the host's namespace before moving them into a sandbox, and the kernel keeps counting a moved
device against the host's (VNI, port 4789) pair, so a stale sandbox makes the next manager's ingress
network fail with "error creating vxlan interface: file exists".
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker

CLUSTER_PORT, GOSSIP_PORT, VXLAN_PORT = 2377, 7946, 4789
LOCK_FILE = Path(tempfile.gettempdir()) / "swarm-secrets-default-ports.lock"


@contextlib.contextmanager
def default_ports_lock(timeout: float = 900) -> Iterator[None]:
    """Hold the machine-wide lock for a swarm on the default ports (another test run may hold it)."""
    with open(LOCK_FILE, "a") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{LOCK_FILE} stayed locked for {timeout:.0f} s") from None
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _alive_dockerd(folder: Path) -> bool:
    try:
        pid = int((folder / "docker.pid").read_text().strip())
        return str(folder).encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False


def _drop_vxlan(folder: Path) -> list[str]:
    """Delete the VXLAN devices of this user swarm's overlay networks that its dockerd, stopped while
    making one, left in the host's namespace; their names. The overlay driver names them
    ``vx-<VNI, 6 hex digits>-<first 5 characters of the network ID>`` and creates them here before
    moving them into a sandbox, and a device left here holds its (VNI, port 4789) pair: the next
    manager's first overlay network gets the same VNI and fails with "error creating vxlan interface:
    file exists". Only networks recorded in the folder are matched, so nothing else is touched."""
    try:
        ids = (folder / "networks").read_text().split()
    except OSError:
        return []
    listed = subprocess.run(
        ["ip", "-o", "link", "show", "type", "vxlan"], capture_output=True, text=True, check=False
    ).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in listed.splitlines() if line.count(":") >= 2]
    dropped = [n for n in names if n.startswith("vx-") and n.rsplit("-", 1)[-1] in {i[:5] for i in ids}]
    for name in dropped:
        subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)
    return dropped


def _remove(folder: Path, bridge: str | None) -> None:
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
              if line.split()[1].startswith(f"{folder}/")]  # fmt: skip
    for mount in sorted(mounts, reverse=True):
        subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
    if bridge:
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)
    _drop_vxlan(folder)
    shutil.rmtree(folder, ignore_errors=True)


def sweep_stale() -> list[Path]:
    """Remove the folders, namespace mounts and bridges of user swarms whose dockerd is gone (a run
    killed before its cleanup); call it holding :func:`default_ports_lock`. Returns what it removed."""
    removed = []
    for folder in sorted(Path("/tmp").glob("ss-user-*")):
        if folder.name.startswith("ss-user-image-") or not folder.is_dir() or _alive_dockerd(folder):
            continue
        try:
            bridge: str | None = (folder / "bridge").read_text().strip()
        except OSError:
            bridge = None
        _remove(folder, bridge)
        removed.append(folder)
    if removed:
        _wait_vxlan_free()
    return removed


def _wait_vxlan_free(timeout: float = 90) -> None:
    """Wait until the kernel has freed the namespaces of the swept sandboxes: it does so in the
    background, and until then their VXLAN devices still hold the host's VNIs (probed by creating a
    device with the first VNIs the overlay driver hands out, and deleting it)."""
    probe = "ssvxprobe"
    deadline = time.monotonic() + timeout
    while True:
        held = []
        for vni in range(4096, 4100):
            added = subprocess.run(
                ["ip", "link", "add", probe, "type", "vxlan", "id", str(vni), "dstport", str(VXLAN_PORT)],
                capture_output=True, check=False,
            )  # fmt: skip
            if added.returncode == 0:
                subprocess.run(["ip", "link", "del", probe], capture_output=True, check=False)
            else:
                held.append(vni)
        if not held or time.monotonic() > deadline:
            return
        time.sleep(1)


def port_free(port: int, kind: int = socket.SOCK_STREAM) -> bool:
    """Whether ``port`` can be bound on all IPv4 addresses of the host right now."""
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def listening(pid: int) -> set[str]:
    """``tcp:2377``-style entries for the sockets process ``pid`` listens on (TCP) or binds (UDP)."""
    out = subprocess.run(["ss", "-H", "-lntup"], capture_output=True, text=True, check=True).stdout
    held = set()
    for line in out.splitlines():
        fields = line.split()
        if f"pid={pid}," in line and len(fields) >= 5:
            held.add(f"{fields[0]}:{fields[4].rsplit(':', 1)[1]}")
    return held


def vxlan_bound() -> bool:
    """Whether the kernel holds UDP 4789 (overlay traffic) in the host's network namespace."""
    out = subprocess.run(["ss", "-H", "-lnu"], capture_output=True, text=True, check=True).stdout
    return any(line.split()[3].endswith(f":{VXLAN_PORT}") for line in out.splitlines() if line.split())


def _free_subnet(base: int) -> str:
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    for n in range(1, 251):
        net = f"10.{base}.{(os.getpid() + n) % 250 + 1}"
        if f" {net}." not in used:
            return net
    raise RuntimeError(f"no free 10.{base}.N.0/24 subnet")


class UserSwarm:
    """A swarm manager on the default ports (see the module docstring). Use as a context manager."""

    IMAGE = "local/busybox:1"

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ss-user-", dir="/tmp"))
        self.sock = self.dir / "docker.sock"
        self.host = f"unix://{self.sock}"
        self.gwbridge = f"ssu{os.getpid() % 100000:05d}"
        self.process: subprocess.Popen[bytes] | None = None
        self.api: docker.APIClient | None = None

    # --- lifecycle --------------------------------------------------------------------------------

    def __enter__(self) -> UserSwarm:
        try:
            (self.dir / "bridge").write_text(self.gwbridge)  # for sweep_stale, should this run be killed
            self._start_engine()
            self._init_swarm()
            self._create_objects()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _docker(self, *args: str, input: bytes | None = None) -> str:
        done = subprocess.run(
            ["docker", *args], input=input, capture_output=True, env=dict(os.environ, DOCKER_HOST=self.host),
            timeout=120, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)}: {done.stderr.decode(errors='replace').strip()}")
        return done.stdout.decode().strip()

    def _start_engine(self) -> None:
        log = open(self.dir / "dockerd.log", "ab")  # the engine keeps writing it
        self.process = subprocess.Popen(
            ["dockerd", "--host", self.host, "--data-root", str(self.dir / "data"),
             "--exec-root", str(self.dir / "exec"), "--pidfile", str(self.dir / "docker.pid"),
             "--bridge", "none", "--iptables=false", "--ip-forward=false"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
        log.close()
        if not self._wait_answering():
            raise RuntimeError(f"the user's dockerd did not start: {self.log_tail()}")
        self.api = docker.APIClient(base_url=self.host, version="auto", timeout=60)

    def _wait_answering(self, timeout: float = 60) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                return False
            if self.sock.exists():
                with contextlib.suppress(Exception), docker.APIClient(base_url=self.host, timeout=5) as probe:
                    probe.ping()
                    return True
            time.sleep(0.3)
        return False

    def _init_swarm(self) -> None:
        # docker_gwbridge of our own naming (the host may have a real one); made before init, it is used.
        net = _free_subnet(216)
        self._docker(
            "network", "create", "--driver", "bridge", "--subnet", f"{net}.0/24",
            "--opt", f"com.docker.network.bridge.name={self.gwbridge}",
            "--opt", "com.docker.network.bridge.enable_ip_masquerade=false", "docker_gwbridge",
        )  # fmt: skip
        try:
            self._docker("swarm", "init")  # every default, as a user types it
        except RuntimeError as exc:
            if "advertise" not in str(exc):
                raise
            # A host with several addresses makes the user name one; the ports stay the defaults.
            self._docker("swarm", "init", "--advertise-addr", "127.0.0.1")

    def _create_objects(self) -> None:
        root = Path(tempfile.mkdtemp(prefix="ss-user-image-"))
        try:
            (root / "bin").mkdir()
            shutil.copy(shutil.which("busybox") or "/bin/busybox", root / "bin" / "busybox")
            for tool in ("sh", "sleep"):
                (root / "bin" / tool).symlink_to("busybox")
            tar = subprocess.run(["tar", "-C", str(root), "-c", "."], capture_output=True, check=True).stdout
            self._docker("import", "-c", "ENV PATH=/bin", "-", self.IMAGE, input=tar)
        finally:
            shutil.rmtree(root)
        self._docker("secret", "create", "--label", "owner=user", "user_db_password", "-", input=b"user")
        self._docker("config", "create", "user_app_config", "-", input=b"setting: 1\n")
        self._docker("network", "create", "--driver", "overlay", "user_net")
        # Recorded for _drop_vxlan (also for sweep_stale, should this run be killed).
        assert self.api is not None
        overlays = [n["Id"] for n in self.api.networks() if n.get("Driver") == "overlay"]
        (self.dir / "networks").write_text("\n".join(overlays) + "\n")
        self._docker(
            "service", "create", "--quiet", "--detach", "--name", "user_app", "--network", "user_net",
            "--secret", "user_db_password", "--config", "user_app_config", "--stop-grace-period", "1s",
            self.IMAGE, "sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done",
        )  # fmt: skip
        self.wait_task_running()

    def wait_task_running(self, timeout: float = 90) -> None:
        assert self.api is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            tasks = self.api.tasks(filters={"service": "user_app", "desired-state": "running"})
            if any(t["Status"]["State"] == "running" for t in tasks):
                return
            time.sleep(0.3)
        raise RuntimeError(f"the user's service did not start: {self.log_tail()}")

    def stop_engine(self) -> None:
        """Stop the user's dockerd, keeping its data (as an upgrade of Docker does); see start_engine."""
        self._kill()
        _drop_vxlan(self.dir)  # what it left half made, as a machine's reboot would not keep either
        if self.api is not None:
            self.api.close()
            self.api = None

    def start_engine(self) -> None:
        self._start_engine()

    def _kill(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)

    def stop(self) -> None:
        """Stop the engine and remove everything it made: folder, mounts, bridge."""
        with contextlib.suppress(Exception):
            self._docker("swarm", "leave", "--force")
        self._kill()
        if self.api is not None:
            self.api.close()
        _remove(self.dir, self.gwbridge)

    # --- what the test compares -------------------------------------------------------------------

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join((self.dir / "dockerd.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def snapshot(self, *, tasks: bool = True) -> dict[str, Any]:
        """Every object of the user's swarm with its ID and version index, services also with their
        spec (tasks: also their state)."""
        assert self.api is not None
        api = self.api

        def versions(objects: list[dict[str, Any]]) -> dict[str, Any]:
            return {o["Spec"].get("Name", o["ID"]): (o["ID"], o["Version"]["Index"]) for o in objects}

        services = api.services()
        shot: dict[str, Any] = {
            "secrets": versions(api.secrets()),
            "configs": versions(api.configs()),
            "services": versions(services),
            "service specs": {s["Spec"]["Name"]: (s["ID"], s["Spec"]) for s in services},
            "networks": sorted((n["Name"], n["Id"]) for n in api.networks() if n.get("Scope") == "swarm"),
        }
        if tasks:
            shot["tasks"] = sorted(
                (t["ID"], t["Version"]["Index"], t["Status"]["State"]) for t in api.tasks()
            )
        return shot
