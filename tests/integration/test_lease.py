"""The swarm's lease (engine/lease.py) against the real engine: the record, many concurrent acquirers,
a holder killed with ``kill -9``, triggers posted for the holder, and a holder that loses its lease.

Each test uses a lease config of its own (the lab prefix), removed afterwards.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import docker
import pytest
from click.testing import CliRunner

from reconciler.cli import main
from reconciler.engine import lease
from reconciler.engine.lease import Identity, Lease, LeaseSettings
from reconciler.engine.swarm import Swarm
from reconciler.errors import LeaseBusy

from .conftest import Lab

pytestmark = pytest.mark.swarm


@pytest.fixture()
def name(lab: Lab, api: docker.APIClient) -> Iterator[str]:
    config = lab.name("lease")
    yield config
    try:
        api.remove_config(config)
    except docker.errors.NotFound:
        pass


def me(purpose: str = "test", pid: int | None = None) -> Identity:
    return Identity(host="test-host", pid=pid or os.getpid(), revision="0123456789abcdef", purpose=purpose)


def test_the_record_says_who_holds_it_and_release_frees_it(swarm: Swarm, name: str) -> None:
    held = Lease(swarm, me("apply"), LeaseSettings(name=name, ttl=30))
    held.acquire(wait=0)
    record = lease.read(swarm, name)
    assert record is not None and record.token == held.token and not record.free
    assert record.get("purpose") == "apply" and record.get("host") == "test-host"
    assert record.get("ttl") == "30" and record.get("transitions") == "1"
    text = record.describe()
    assert f"pid {os.getpid()} on host test-host" in text and "revision 0123456789ab" in text
    assert record.updated_at is not None and abs(record.updated_at - time.time()) < 60

    # a second applier gives up at once with wait=0, naming the holder
    with pytest.raises(LeaseBusy, match=f"pid {os.getpid()} on host test-host") as busy:
        Lease(swarm, me(), LeaseSettings(name=name, ttl=30)).acquire(wait=0)
    assert busy.value.transient

    held.release()
    record = lease.read(swarm, name)
    assert record is not None and record.free
    again = Lease(swarm, me(), LeaseSettings(name=name, ttl=30))
    again.acquire(wait=0)
    record = lease.read(swarm, name)
    assert record is not None and record.get("transitions") == "2"
    again.release()


def test_many_concurrent_acquirers_hold_it_one_at_a_time(docker_host: str, name: str) -> None:
    count = 8
    inside: list[int] = []
    most = [0]
    guard = threading.Lock()
    start = threading.Barrier(count)
    errors: list[BaseException] = []

    def applier(index: int) -> None:
        try:
            with Swarm.connect(docker_host) as swarm:
                held = Lease(swarm, me(f"worker {index}"), LeaseSettings(name=name, ttl=20))
                start.wait()
                held.acquire(wait=120)
                with guard:
                    inside.append(index)
                    most[0] = max(most[0], len(inside))
                time.sleep(0.2)  # mutating the swarm, as far as anyone can tell
                with guard:
                    inside.remove(index)
                held.release()
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    threads = [threading.Thread(target=applier, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert not errors, errors
    assert most[0] == 1  # never two holders at once
    with Swarm.connect(docker_host) as swarm:
        record = lease.read(swarm, name)
    assert record is not None and record.free and record.get("transitions") == str(count)


def test_with_no_wait_exactly_one_of_many_wins(docker_host: str, name: str) -> None:
    count = 8
    start = threading.Barrier(count)
    won: list[Lease] = []
    busy: list[str] = []

    def applier(index: int) -> None:
        with Swarm.connect(docker_host) as swarm:
            held = Lease(swarm, me(f"worker {index}"), LeaseSettings(name=name, ttl=20))
            start.wait()
            try:
                held.acquire(wait=0)
                won.append(held)
            except LeaseBusy as exc:
                busy.append(str(exc))

    threads = [threading.Thread(target=applier, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(won) == 1 and len(busy) == count - 1
    assert all("for worker" in message and "gave up after 0 s" in message for message in busy)
    won[0].release()


HOLDER = textwrap.dedent(
    """
    import sys, time
    from reconciler.engine.lease import Identity, Lease, LeaseSettings
    from reconciler.engine.swarm import Swarm
    swarm = Swarm.connect(sys.argv[1])
    settings = LeaseSettings(name=sys.argv[2], ttl=float(sys.argv[3]))
    held = Lease(swarm, Identity.here(purpose="doomed"), settings)
    held.acquire(wait=0)
    print("held", flush=True)
    time.sleep(600)
    """
)


def _doomed_holder(docker_host: str, name: str, ttl: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, docker_host, name, str(ttl)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    proc.stdout.close()
    assert line == "held"
    return proc


def test_a_holder_killed_with_kill_9_blocks_others_no_longer_than_the_ttl(
    swarm: Swarm, docker_host: str, name: str
) -> None:
    ttl = 4.0
    proc = _doomed_holder(docker_host, name, ttl)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    record = lease.read(swarm, name)
    assert record is not None and record.get("pid") == str(proc.pid)

    # A waiter that arrives right after the kill waits out the TTL, and not much longer.
    waiter = Lease(swarm, me("next"), LeaseSettings(name=name, ttl=ttl))
    seen: list[str] = []
    waiter.acquire(wait=ttl + 3, on_wait=lambda r: seen.append(r.describe()))
    assert seen and f"pid {proc.pid}" in seen[0] and "for doomed" in seen[0]
    waiter.release()


def test_a_lease_dead_for_longer_than_its_ttl_is_taken_at_once(
    swarm: Swarm, docker_host: str, name: str
) -> None:
    # A newcomer credits the age of the holder's last renewal by the swarm's own clock, so a holder
    # that died long ago does not make it wait a whole TTL more.
    ttl = 3.0
    proc = _doomed_holder(docker_host, name, ttl)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(ttl + 1.5)
    newcomer = Lease(swarm, me("newcomer"), LeaseSettings(name=name, ttl=ttl))
    newcomer.acquire(wait=0)
    newcomer.release()


def test_triggers_posted_for_the_holder_are_taken_once(swarm: Swarm, docker_host: str, name: str) -> None:
    assert lease.post_trigger(swarm, "webhook:github", name=name) is False  # no lease yet
    held = Lease(swarm, me(), LeaseSettings(name=name, ttl=30))
    held.acquire(wait=0)
    with Swarm.connect(docker_host) as standby:
        assert lease.post_trigger(standby, "webhook:github", name=name)
        assert lease.post_trigger(standby, "manual", name=name)
        assert lease.post_trigger(standby, "webhook:github", name=name)  # one entry per reason
        assert lease.post_trigger(standby, "odd reason; rm -rf /", name=name)
    assert held.take_pending() == ("manual", "webhook:github", "oddreasonrm-rf")
    assert held.take_pending() == ()
    # posting moved UpdatedAt but not the holder's renewal counter: nobody takes a dead holder's
    # lease for alive because of triggers
    record = lease.read(swarm, name)
    assert record is not None and record.get("writer") == "holder"
    held.release()
    assert lease.post_trigger(swarm, "manual", name=name) is False  # free: reconcile yourself


def test_renewal_hands_triggers_over_and_a_taken_lease_is_noticed(swarm: Swarm, name: str) -> None:
    handed: list[tuple[str, ...]] = []
    held = Lease(swarm, me(), LeaseSettings(name=name, ttl=3), on_pending=handed.append)
    held.acquire(wait=0)
    assert lease.post_trigger(swarm, "webhook:gitea", name=name)
    deadline = time.monotonic() + 10
    while not handed and time.monotonic() < deadline:
        time.sleep(0.1)
    assert handed == [("webhook:gitea",)]
    assert held.held and not held.lost

    # someone writes another holder into the record (a takeover): the holder notices at its next renewal
    record = lease.read(swarm, name)
    assert record is not None
    labels = dict(record.labels, **{lease.LEASE_LABEL + "holder": "someone-else"})
    swarm.update_config_labels(record.config_id, record.version, name, labels)
    deadline = time.monotonic() + 10
    while not held.lost and time.monotonic() < deadline:
        time.sleep(0.1)
    assert held.lost and not held.held
    held.release()  # does not free someone else's lease
    record = lease.read(swarm, name)
    assert record is not None and record.token == "someone-else"


# --- apply takes the swarm's lease (the default lease name: every test leaves it free) -------------


def _apply_cmd(lab: Lab, *extra: str) -> list[str]:
    return [sys.executable, "-m", "reconciler", "apply", str(lab.root), "--yes", "--timeout", "90", *extra]


def _wait_for_holder(swarm: Swarm, pid: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        record = lease.read(swarm)
        if record is not None and record.get("pid") == str(pid):
            return
        assert proc.poll() is None, "the apply ended before it took the lease"
        time.sleep(0.05)
    raise AssertionError("the apply never took the lease")


def test_two_concurrent_applies_with_different_values_take_turns(lab: Lab, swarm: Swarm) -> None:
    pw = lab.name("pw")
    # a rollout that takes a few seconds (3 s monitor), so the second apply comes while the first works
    app = lab.create_service("app", monitor_ns=3_000_000_000)
    lab.manifest({pw: {"source": {"env": "PW"}, "services": [app]}})
    first = subprocess.Popen(
        _apply_cmd(lab), env=lab.env(PW="alpha"), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    _wait_for_holder(swarm, first.pid, first)
    second = subprocess.Popen(
        _apply_cmd(lab), env=lab.env(PW="beta"), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    # while the first holds the lease, its new version is never collected and the second changes nothing
    while True:
        names = lab.secret_names()
        if first.poll() is not None:
            break
        assert f"{pw}_v2" not in names  # read while the first still ran
        time.sleep(0.05)
    out1, err1 = first.communicate(timeout=120)
    out2, err2 = second.communicate(timeout=180)
    assert first.returncode == 0, (out1 + err1).decode()
    assert second.returncode == 0, (out2 + err2).decode()
    assert f"service {app}: converged" in out1.decode() and f"service {app}: converged" in out2.decode()
    assert f"waiting for the swarm's lease, held by pid {first.pid} on host" in err2.decode()
    assert "for apply" in err2.decode()
    # the second applied its own value on top; the first version stays as the rollback target
    assert lab.service_secret_names(app) == {pw: f"{pw}_v2"}
    assert lab.secret_names() == {f"{pw}_v1", f"{pw}_v2"}
    record = lease.read(swarm)
    assert record is not None and record.free


def test_apply_gives_up_naming_the_holder_and_no_lock_or_plan_do_not_wait(lab: Lab, swarm: Swarm) -> None:
    pw = lab.name("pw")
    app = lab.create_service("app")
    lab.manifest({pw: {"source": {"env": "PW"}, "services": [app]}})
    runner = CliRunner()
    held = Lease(swarm, Identity.here(purpose="apply", revision="feedfacecafebeef"), LeaseSettings())
    held.acquire(wait=0)
    try:
        result = runner.invoke(
            main,
            ["apply", str(lab.root), "--yes", "--lock-timeout", "0"],
            env=lab.env(PW="x"),
            catch_exceptions=False,
        )
        assert result.exit_code == 1
        message = result.output
        assert "another applier holds the swarm's lease" in message
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in message
        assert "revision feedfacecafe" in message and "for apply" in message and "since 20" in message
        assert "Traceback" not in message
        assert lab.secret_names() == set()  # nothing changed
        # plan takes no lease
        plan = runner.invoke(main, ["plan", str(lab.root)], env=lab.env(PW="x"), catch_exceptions=False)
        assert plan.exit_code == 0 and "create" in plan.output
        # --no-lock opts out (unsafe while someone else applies; here nobody does)
        result = runner.invoke(
            main, ["apply", str(lab.root), "--yes", "--no-lock"], env=lab.env(PW="x"), catch_exceptions=False
        )
        assert result.exit_code == 0, result.output
        # an apply with nothing to do needs no lease either
        result = runner.invoke(
            main,
            ["apply", str(lab.root), "--yes", "--lock-timeout", "0"],
            env=lab.env(PW="x"),
            catch_exceptions=False,
        )
        assert result.exit_code == 0, result.output
    finally:
        held.release()


def test_the_next_apply_succeeds_within_the_ttl_after_kill_9_of_the_holder(lab: Lab, swarm: Swarm) -> None:
    ttl = 4
    pw = lab.name("pw")
    app = lab.create_service("app", monitor_ns=5_000_000_000)
    lab.manifest({pw: {"source": {"env": "PW"}, "services": [app]}})
    doomed = subprocess.Popen(
        _apply_cmd(lab, "--lock-ttl", str(ttl)), env=lab.env(PW="one"), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    _wait_for_holder(swarm, doomed.pid, doomed)
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.wait()
    # waiting no longer than the TTL (plus a little for polling) is enough
    result = CliRunner().invoke(
        main,
        ["apply", str(lab.root), "--yes", "--timeout", "90", "--lock-timeout", str(ttl + 3)],
        env=lab.env(PW="two"),
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert f"held by pid {doomed.pid}" in result.output
    # (whether the killed apply got as far as creating its version is a matter of timing)
    assert lab.service_secret_names(app)[pw] in lab.secret_names()
    plan = CliRunner().invoke(main, ["plan", str(lab.root), "--detailed-exitcode"], env=lab.env(PW="two"))
    assert plan.exit_code == 0, plan.output
