"""The reconcile loop: scheduling, coalescing, backoff, stop/signals, readiness; and logs.py."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from reconciler import logs
from reconciler.core.model import SecretValue
from reconciler.daemon.gitsync import Checkout
from reconciler.daemon.loop import MAX_FOLLOW_UPS, Backoff, Loop, LoopSettings, with_git
from reconciler.daemon.types import (
    FAILING,
    NOT_STARTED,
    READY,
    READY_RETRYING,
    SETS_FAILING,
    STALLED,
    STANDBY,
    STARTING,
    Reason,
    TickRequest,
    TickResult,
    Trigger,
    readiness_reasons,
    readiness_text_ok,
    with_class,
)
from reconciler.errors import ConfigError, GitError, ManifestError, Problem, SwarmUnavailable

ROOT = Path(__file__).resolve().parents[2]
OK = TickResult(ok=True, changed=False)


def settings(**kw: object) -> LoopSettings:
    base: dict[str, object] = {"listen": None, "interval": 60.0, "debounce": 0.02, "jitter": 0.0}
    base.update(kw)
    return LoopSettings(**base)  # type: ignore[arg-type]


def wait_for(cond: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


class Recorder:
    """A fake tick: records requests, returns scripted results (or raises), can block on a gate."""

    def __init__(self, *results: TickResult | BaseException, gate: threading.Event | None = None) -> None:
        self.results = list(results)
        self.requests: list[TickRequest] = []
        self.times: list[float] = []
        self.gate = gate
        self.entered = threading.Event()
        self.finished = 0

    def __call__(self, request: TickRequest) -> TickResult:
        self.requests.append(request)
        self.times.append(time.monotonic())
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(5)
        self.finished += 1
        outcome = self.results.pop(0) if self.results else OK
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    @property
    def count(self) -> int:
        return len(self.requests)


@contextmanager
def running(rec: Loop, events: Iterable[object] | None = None) -> Iterator[list[int]]:
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(rec.run(events=events)), daemon=True)
    thread.start()
    try:
        yield codes
    finally:
        rec.stop()
        thread.join(5)
        assert not thread.is_alive()


# --- scheduling ----------------------------------------------------------------------------------


def test_ticks_on_start_then_on_interval() -> None:
    tick = Recorder()
    rec = Loop(settings(interval=0.05), tick)
    with running(rec):
        wait_for(lambda: tick.count >= 3)
    assert tick.requests[0].reason == "startup"
    assert {r.reason for r in tick.requests[1:]} == {"interval"}


def test_debounce_coalesces_many_requests_into_one_tick() -> None:
    tick = Recorder()
    rec = Loop(settings(debounce=0.1), tick)
    with running(rec):
        wait_for(lambda: tick.finished == 1)
        for _ in range(5):
            rec.request(Trigger.EVENT)
            rec.request(Reason(Trigger.WEBHOOK, "github"))
        wait_for(lambda: tick.count == 2)
        time.sleep(0.25)
        assert tick.count == 2
    assert tick.requests[1].reason == "event"
    assert tick.requests[1].reasons == ("event", "webhook:github")
    assert tick.times[1] - tick.times[0] >= 0.1  # waited for the debounce window


def test_requests_during_a_tick_cause_exactly_one_more() -> None:
    gate = threading.Event()
    tick = Recorder(gate=gate)
    rec = Loop(settings(), tick)
    with running(rec):
        assert tick.entered.wait(2)
        for _ in range(5):
            rec.request(Trigger.MANUAL)
        assert rec.status().pending == ("manual",)
        gate.set()
        wait_for(lambda: tick.finished == 2)
        time.sleep(0.1)
        assert tick.count == 2
    assert tick.requests[1].reasons == ("manual",)


def test_backoff_grows_after_failures_and_resets_after_success() -> None:
    fail = TickResult(ok=False, changed=False, error="boom")
    failures_seen: list[int] = []
    tick = Recorder(fail, fail, fail, OK)
    holder: list[Loop] = []

    def observing(request: TickRequest) -> TickResult:
        failures_seen.append(holder[0].backoff.failures)
        return tick(request)

    rec = Loop(settings(backoff_base=0.02, backoff_cap=1.0), observing)
    holder.append(rec)
    with running(rec):
        wait_for(lambda: tick.finished == 4)
        assert rec.status().consecutive_failures == 0
    assert failures_seen == [0, 1, 2, 3]
    assert [r.reason for r in tick.requests] == ["startup", "retry", "retry", "retry"]
    gaps = [b - a for a, b in zip(tick.times, tick.times[1:], strict=False)]
    for gap, delay in zip(gaps, (0.02, 0.04, 0.08), strict=True):
        assert gap >= delay * 0.9


def test_backoff_delays() -> None:
    backoff = Backoff(base=5, factor=2, cap=300)
    assert [backoff.next_delay() for _ in range(8)] == [5, 10, 20, 40, 80, 160, 300, 300]
    backoff.reset()
    assert backoff.next_delay() == 5
    jittered = Backoff(base=100, factor=2, cap=150, jitter=0.1, rng=random.Random(1))
    assert 90 <= jittered.next_delay() <= 110
    assert all(135 <= jittered.next_delay() <= 150 for _ in range(20))  # capped after jitter
    assert Backoff(base=1, factor=2, cap=5).next_delay() == 1


def test_urgent_request_skips_the_backoff_but_an_event_waits() -> None:
    tick = Recorder(TickResult(ok=False, changed=False, error="down"))
    rec = Loop(settings(backoff_base=30), tick)
    with running(rec):
        wait_for(lambda: tick.finished == 1)
        rec.request(Trigger.EVENT)
        time.sleep(0.1)
        assert tick.count == 1  # the event waits for the 30 s retry
        rec.request(Reason(Trigger.WEBHOOK, "gitea"))
        wait_for(lambda: tick.count == 2)
    assert tick.requests[1].reasons == ("event", "webhook:gitea")


def test_exception_in_tick_is_logged_and_the_loop_keeps_going(caplog: pytest.LogCaptureFixture) -> None:
    tick = Recorder(RuntimeError("kaputt"), OK)
    rec = Loop(settings(backoff_base=0.01), tick)
    with caplog.at_level(logging.ERROR, logger="reconciler.daemon.loop"), running(rec):
        wait_for(lambda: tick.finished == 2)
    failed = [r for r in caplog.records if "tick failed" in r.getMessage()]
    assert len(failed) == 1 and failed[0].exc_info is not None
    assert "unexpected RuntimeError" in failed[0].getMessage()
    assert rec.status().last_result == OK


def test_user_error_is_one_line_without_traceback(caplog: pytest.LogCaptureFixture) -> None:
    problems = [
        Problem(file="a.yaml", line=3, path="spec", message="bad"),
        Problem(file="b", line=None, path="", message="worse"),
    ]
    tick = Recorder(ManifestError(problems))
    rec = Loop(settings(backoff_base=30), tick)
    with caplog.at_level(logging.ERROR, logger="reconciler.daemon.loop"), running(rec):
        wait_for(lambda: tick.finished == 1 and rec.status().last_result is not None)
    (record,) = [r for r in caplog.records if "tick failed" in r.getMessage()]
    assert record.exc_info is None and "\n" not in record.getMessage()
    assert "a.yaml:3: spec: bad (and 1 more)" in record.getMessage()
    assert "waiting for a change" in record.getMessage()
    # /readyz says which kind of failure, never its text
    assert rec.readiness() == (False, with_class(STALLED, "manifest"))


def test_own_changes_do_not_cause_a_tick_storm() -> None:
    gate = threading.Event()
    changed = TickResult(ok=True, changed=True, created=1)
    tick = Recorder(changed, gate=gate)
    rec = Loop(settings(event_quiet=0.3), tick)
    with running(rec):
        assert tick.entered.wait(2)
        rec.request(Trigger.EVENT)  # the swarm reporting our own service update
        gate.set()
        wait_for(lambda: tick.finished == 1 and not rec.status().ticking)
        assert rec.request(Trigger.EVENT) is False  # inside the quiet window
        time.sleep(0.1)
        assert tick.count == 1
        time.sleep(0.25)
        assert rec.request(Trigger.EVENT) is True  # window over: foreign changes count again
        wait_for(lambda: tick.count == 2)
        rec.suppress_events_until(time.monotonic() + 60)
        assert rec.request(Trigger.EVENT) is False
        assert rec.request(Trigger.MANUAL) is True  # only events are suppressed


def test_a_tick_the_swarm_moved_under_is_followed_up_at_once_despite_backoff_and_quiet_window() -> None:
    # superseded by another writer: it changed things (the quiet window starts), failed (backoff), and
    # its foreign write's Docker event came during the tick (dropped as our own): only the follow-up
    # brings the next tick before the 30 s retry or the 60 s interval
    superseded = TickResult(ok=False, changed=True, follow_up=True, rollouts={"superseded": 1})
    gate = threading.Event()
    tick = Recorder(superseded, gate=gate)
    rec = Loop(settings(debounce=0.1, backoff_base=30, event_quiet=60), tick)
    with running(rec):
        assert tick.entered.wait(2)
        rec.request(Trigger.EVENT)  # the foreign write, seen during the tick
        gate.set()
        wait_for(lambda: tick.count == 2)
    assert tick.requests[1].reasons == ("follow-up",)
    assert tick.times[1] - tick.times[0] >= 0.1  # debounced, not immediate


def test_follow_ups_in_a_row_are_bounded_then_the_backoff_applies(caplog: pytest.LogCaptureFixture) -> None:
    moved = TickResult(ok=False, changed=True, follow_up=True)
    tick = Recorder(*[moved] * (MAX_FOLLOW_UPS + 2))
    rec = Loop(settings(debounce=0.01, backoff_base=0.3, backoff_factor=1), tick)
    with caplog.at_level(logging.WARNING, logger="reconciler.daemon.loop"), running(rec):
        wait_for(lambda: tick.count == MAX_FOLLOW_UPS + 3)
    reasons = [r.reason for r in tick.requests]
    assert reasons == ["startup", *["follow-up"] * MAX_FOLLOW_UPS, "retry", "follow-up"]
    gaps = [b - a for a, b in zip(tick.times, tick.times[1:], strict=False)]
    assert all(gap < 0.3 for gap in gaps[:MAX_FOLLOW_UPS]) and gaps[MAX_FOLLOW_UPS] >= 0.27
    assert any("another writer may be undoing our changes" in r.getMessage() for r in caplog.records)


def test_a_standby_runs_no_tick_and_hands_webhooks_over_until_it_leads() -> None:
    tick = Recorder()
    handed: list[Reason] = []
    rec = Loop(settings(interval=0.05), tick, elected=False, forward=handed.append)
    held = "swarm_secrets_lease_held"
    assert rec.readiness() == (False, NOT_STARTED)  # not yet known to stand by (the lease not read yet)
    rec.set_leading(False)  # another replica holds the lease
    with running(rec):
        time.sleep(0.2)  # startup and several intervals: nothing runs on a standby
        assert tick.count == 0 and rec.readiness() == (True, STANDBY)
        assert rec.metrics.registry.get_sample_value(held) == 0
        assert rec.request(Reason(Trigger.WEBHOOK, "github")) and rec.request(Trigger.MANUAL)
        assert not rec.request(Trigger.EVENT)  # the leading replica watches the swarm itself
        assert handed == ["webhook:github", "manual"] and tick.count == 0
        rec.set_leading(False, problem="engine")  # cannot follow the lease: not ready
        assert rec.readiness() == (False, with_class(FAILING, "engine"))
        rec.set_leading(True)  # elected: ticks at once, without the debounce
        wait_for(lambda: tick.count == 1)
        assert tick.requests[0].reasons == ("elected",) and rec.status().leading
        assert rec.metrics.registry.get_sample_value(held) == 1
        rec.handed(("webhook:gitea", "manual; rm -rf /", "interval"))  # only what a standby may hand over
        wait_for(lambda: tick.count >= 2)
        assert "webhook:gitea" in tick.requests[1].reasons and "interval" not in tick.requests[1].reasons
        rec.set_leading(False)
        count = tick.count
        time.sleep(0.2)
        assert tick.count == count and rec.metrics.registry.get_sample_value(held) == 0


def test_stop_finishes_the_tick_in_hand_then_returns_zero() -> None:
    gate = threading.Event()
    tick = Recorder(gate=gate)
    rec = Loop(settings(), tick)
    with running(rec) as codes:
        assert tick.entered.wait(2)
        rec.stop()
        rec.request(Trigger.MANUAL)
        time.sleep(0.05)
        assert tick.finished == 0  # not interrupted
        gate.set()
        wait_for(lambda: codes == [0])
    assert tick.count == 1 and tick.finished == 1


def test_external_stop_event_is_honoured() -> None:
    stop = threading.Event()
    tick = Recorder()
    rec = Loop(settings(), tick, stop_event=stop)
    with running(rec) as codes:
        wait_for(lambda: tick.finished == 1)
        stop.set()
        wait_for(lambda: codes == [0], timeout=1)


def test_events_iterable_requests_ticks() -> None:
    release = threading.Event()

    def events() -> Iterator[str]:
        assert release.wait(5)
        yield "service update web"

    tick = Recorder()
    rec = Loop(settings(), tick)
    with running(rec, events()):
        wait_for(lambda: tick.finished == 1)
        release.set()
        wait_for(lambda: tick.count == 2)
    assert tick.requests[1].reason == "event"


def test_readiness_rules() -> None:
    now = [100.0]
    tick = Recorder(OK, TickResult(ok=False, changed=False, error="swarm unreachable", error_class="engine"))
    rec = Loop(settings(readiness_grace=5, interval=10), tick, clock=lambda: now[0])
    assert rec.readiness() == (True, STARTING)
    now[0] = 106
    assert rec.readiness() == (False, NOT_STARTED)
    with running(rec):
        wait_for(lambda: tick.finished == 1 and rec.status().last_result is not None)
        assert rec.readiness() == (True, READY)
        rec.request(Trigger.MANUAL)
        now[0] += 1  # let the debounce pass on the fake clock
        wait_for(lambda: tick.finished == 2 and not rec.status().ticking)
    assert rec.readiness() == (True, with_class(READY_RETRYING, "engine"))
    now[0] += 31  # more than 3 intervals since the last success
    assert rec.readiness() == (False, with_class(FAILING, "engine"))
    assert {reason for _, reason in [rec.readiness()]} <= readiness_reasons()
    assert all("unreachable" not in reason for reason in readiness_reasons())


def test_readiness_names_the_sets_held_back_by_a_fixed_reason_and_their_class() -> None:
    partial = TickResult(ok=True, changed=True, failing_sets={"books": "manifest", "pay": "policy"})
    down = TickResult(ok=False, changed=False, error="engine down", error_class="engine")  # no news of sets
    fixed = TickResult(ok=True, changed=False, failing_sets={})
    tick = Recorder(partial, down, fixed)
    states: list[tuple[bool, str]] = []
    holder: list[Loop] = []

    def observing(request: TickRequest) -> TickResult:
        states.append(holder[0].readiness())
        return tick(request)

    rec = Loop(settings(backoff_base=0.01), observing)
    holder.append(rec)
    with running(rec):
        wait_for(lambda: tick.finished == 1 and not rec.status().ticking)
        states.append(rec.readiness())
        rec.request(Trigger.MANUAL)
        wait_for(lambda: tick.finished == 3 and not rec.status().ticking)
    names = "failing sets: books (manifest), pay (policy)"
    assert states[1] == states[2] == (False, with_class(SETS_FAILING, "manifest") + "\n" + names)
    assert states[3] == (True, with_class(READY_RETRYING, "engine") + "\n" + names)  # the last known stands
    assert rec.readiness() == (True, READY) and rec.status().failing_sets == {}
    assert all(readiness_text_ok(text) for _, text in states)
    assert not readiness_text_ok(READY + "\nfailing sets: books (manifest): file.yaml:3: bad")


def test_with_git_passes_the_checkout() -> None:
    tick = Recorder(OK)
    checkout = Checkout(revision="abc123", manifests_dir=Path("/co/m"), root=Path("/co"))
    wrapped = with_git(tick, lambda: checkout)
    result = wrapped(TickRequest(reason=Reason(Trigger.INTERVAL), reasons=(Reason(Trigger.INTERVAL),)))
    assert tick.requests[0].manifests_dir == Path("/co/m") and tick.requests[0].revision == "abc123"
    assert result.revision == "abc123" and result.ok


# --- errors that cannot heal by retrying ---------------------------------------------------------


def test_a_permanent_error_waits_for_a_change_instead_of_backing_off() -> None:
    bad = ManifestError([Problem(file="a.yaml", line=1, path="spec", message="bad")])
    tick = Recorder(bad, bad, OK)
    rec = Loop(settings(backoff_base=0.01, interval=60), tick)
    with running(rec):
        wait_for(lambda: tick.finished == 1 and not rec.status().ticking)
        time.sleep(0.2)  # a transient failure would have been retried 0.01 s later
        assert tick.count == 1
        status = rec.status()
        assert status.stalled and status.consecutive_failures == 0
        assert rec.metrics.registry.get_sample_value("swarm_secrets_waiting_for_change") == 1
        assert rec.metrics.registry.get_sample_value("swarm_secrets_ticks_total", {"result": "stalled"}) == 1
        rec.request(Trigger.EVENT)  # an event is a change too: it runs, and fails the same way
        wait_for(lambda: tick.finished == 2 and not rec.status().ticking)
        rec.request(Reason(Trigger.WEBHOOK, "github"))  # a push: this time the manifests are fixed
        wait_for(lambda: tick.finished == 3 and not rec.status().ticking)
        assert not rec.status().stalled and rec.readiness() == (True, READY)
        assert rec.metrics.registry.get_sample_value("swarm_secrets_waiting_for_change") == 0


@pytest.mark.parametrize(
    ("error", "stalls", "kind"),
    [
        (ManifestError([Problem(file="a", line=None, path="", message="x")]), True, "manifest"),
        (ConfigError("bad --fingerprint-key-file"), True, "config"),
        (GitError("ref 'x' not found", transient=False), True, "git"),
        (GitError("git fetch: connection reset"), False, "git"),
        (SwarmUnavailable("cannot reach the Docker engine"), False, "engine"),
    ],
)
def test_which_errors_make_the_loop_wait(error: Exception, stalls: bool, kind: str) -> None:
    tick = Recorder(error)
    rec = Loop(settings(backoff_base=30), tick)
    with running(rec):
        wait_for(lambda: tick.finished == 1 and rec.status().last_result is not None)
    assert rec.status().stalled is stalls
    assert rec.readiness() == (False, with_class(STALLED if stalls else FAILING, kind))


def test_with_git_skips_the_revision_that_failed_until_asked_or_changed() -> None:
    revision = ["abc123"]
    fetches: list[str] = []

    def fetch() -> Checkout:
        fetches.append(revision[0])
        return Checkout(revision=revision[0], manifests_dir=Path("/co/m"), root=Path("/co"))

    tick = Recorder()
    wrapped = with_git(tick, fetch)
    interval, event = Reason(Trigger.INTERVAL), Reason(Trigger.EVENT)
    waiting = TickRequest(reason=interval, reasons=(interval,), stalled_revision="abc123")
    skipped = wrapped(waiting)
    assert skipped.skipped and not skipped.ok and not skipped.transient and tick.count == 0
    assert wrapped(TickRequest(reason=event, reasons=(event,), stalled_revision="abc123")).skipped
    # asked for by a person or a forge: tried again at the same revision
    for reason in (Reason(Trigger.MANUAL), Reason(Trigger.WEBHOOK, "gitlab")):
        assert not wrapped(TickRequest(reason=reason, reasons=(reason,), stalled_revision="abc123")).skipped
    revision[0] = "def456"  # a new commit: tried
    assert wrapped(waiting).ok and tick.count == 3
    assert len(fetches) == 5  # every tick still fetches: that is how a new commit is noticed


def test_with_git_gives_a_failure_its_revision() -> None:
    bad = ManifestError([Problem(file="a.yaml", line=1, path="spec", message="bad")])
    wrapped = with_git(
        Recorder(bad), lambda: Checkout(revision="abc123", manifests_dir=Path("/co/m"), root=Path("/co"))
    )
    result = wrapped(TickRequest(reason=Reason(Trigger.INTERVAL), reasons=(Reason(Trigger.INTERVAL),)))
    assert (result.ok, result.transient, result.revision) == (False, False, "abc123")
    assert result.error == "a.yaml:1: spec: bad"


def test_a_stalled_git_loop_does_not_retry_the_same_revision() -> None:
    bad = ManifestError([Problem(file="a.yaml", line=1, path="spec", message="bad")])
    tick = Recorder(bad, bad)
    rec = Loop(
        settings(interval=0.05, backoff_base=0.01),
        with_git(tick, lambda: Checkout(revision="abc123", manifests_dir=Path("/co/m"), root=Path("/co"))),
    )
    with running(rec):
        wait_for(lambda: rec.status().ticks >= 5)
    assert tick.count == 1  # every later interval tick fetched, found abc123 again and stopped there
    assert rec.status().stalled and rec.readiness() == (False, with_class(STALLED, "manifest"))
    assert rec.metrics.registry.get_sample_value("swarm_secrets_waiting_for_change") == 1
    last = rec.status().last_result
    assert last is not None and last.error == "a.yaml:1: spec: bad"


@pytest.mark.parametrize(
    "kw",
    [{"interval": 0}, {"jitter": 1.5}, {"listen": "8080"}, {"listen": "host:99999"}, {"debounce": -1}],
)
def test_settings_are_validated(kw: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        settings(**kw)


# --- signals (real process) ----------------------------------------------------------------------

SCRIPT = textwrap.dedent(
    """
    import sys, time
    from reconciler.daemon.loop import LoopSettings, run
    from reconciler.daemon.types import TickResult

    def tick(request):
        print("tick-start", request.reason, flush=True)
        time.sleep(float(sys.argv[1]))
        print("tick-end", flush=True)
        return TickResult(ok=True, changed=False)

    code = run(LoopSettings(listen=None, interval=60), tick)
    print("exit", code, flush=True)
    sys.exit(code)
    """
)


def _spawn(seconds: float) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(seconds)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "tick-start startup"
    return proc


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_finishes_the_tick_then_exits_zero(signum: signal.Signals) -> None:
    proc = _spawn(0.4)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert out.split("\n")[:2] == ["tick-end", "exit 0"]


def test_second_signal_abandons_the_tick() -> None:
    proc = _spawn(5)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 130 and "tick-end" not in out


# --- logs.py -------------------------------------------------------------------------------------


def _record(msg: str, **extra: object) -> logging.LogRecord:
    logger = logging.getLogger("t")
    return logger.makeRecord("t", logging.INFO, __file__, 1, msg, (), None, extra=extra)


def test_json_formatter_one_object_per_line() -> None:
    line = logs.JsonFormatter().format(_record("hello %s", secret="db", versions=(1, 2), blob=b"xyz"))
    data = json.loads(line)
    assert data["message"] == "hello %s" and data["level"] == "INFO" and data["logger"] == "t"
    assert data["ts"].endswith("Z") and data["secret"] == "db" and data["versions"] == [1, 2]
    assert data["blob"] == "<3 bytes>"
    try:
        raise ValueError("x")
    except ValueError:
        rec = logging.getLogger("t").makeRecord("t", logging.ERROR, "f", 1, "m", (), sys.exc_info())
    out = logs.JsonFormatter().format(rec)
    assert "\n" not in out and "ValueError" in json.loads(out)["exc"]


def test_text_formatter_appends_fields() -> None:
    line = logs.TextFormatter().format(_record("created", secret="db", note="two words"))
    assert line.endswith('INFO t: created secret=db note="two words"')


def test_audit_strips_values(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=logs.AUDIT_LOGGER):
        logs.audit(
            "secret_created",
            set="app",
            secret="db",
            version=3,
            value="hunter2",
            data=b"x",
            wrapped=(SecretValue(b"hunter2"),),
            name="clash",
        )
    (record,) = caplog.records
    assert record.name == "reconciler.audit" and record.getMessage() == "secret_created"
    rendered = logs.JsonFormatter().format(record)
    assert "hunter2" not in rendered
    data = json.loads(rendered)
    assert data["event"] == "secret_created" and data["secret"] == "db" and data["version"] == 3
    assert data["dropped"] == ["value", "data", "wrapped"] and data["name_"] == "clash"


def test_reasons_are_text_that_carries_its_trigger() -> None:
    reason = Reason(Trigger.WEBHOOK, "github")
    assert reason == "webhook:github" and reason.trigger is Trigger.WEBHOOK
    assert Reason(Trigger.EVENT) == "event" and json.dumps([reason]) == '["webhook:github"]'
    explicit = {Trigger.STARTUP, Trigger.ELECTED, Trigger.WEBHOOK, Trigger.MANUAL, Trigger.FOLLOW_UP}
    assert {t for t in Trigger if t.explicit} == explicit
    assert {t for t in Trigger if t.immediate} == {Trigger.STARTUP, Trigger.ELECTED}
    assert {t for t in Trigger if t.handed_over} == {Trigger.WEBHOOK, Trigger.MANUAL}
    assert Reason.parse("webhook:gitea") == "webhook:gitea" and Reason.parse("manual") == "manual"
    for text in ("webhook:evil", "webhook", "manual:x", "event", "interval", "oddreasonrm-rf"):
        assert Reason.parse(text) is None
    assert {t for t in Trigger if t.asked} == {Trigger.MANUAL}  # a webhook can be replayed
    assert {t for t in Trigger if t.from_swarm} == {Trigger.EVENT}
