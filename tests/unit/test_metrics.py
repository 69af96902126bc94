"""Metrics: observe() moves the right series, in a registry of the instance's own."""

from __future__ import annotations

from reconciler.daemon.metrics import Metrics
from reconciler.daemon.types import TickResult


def make() -> tuple[Metrics, list[float]]:
    now = [1700000000.0]
    return Metrics(clock=lambda: now[0]), now


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_fresh_metrics_export_zeroes() -> None:
    m, _ = make()
    assert value(m, "swarm_secrets_ticks_total", result="success") == 0
    assert value(m, "swarm_secrets_ticks_total", result="failure") == 0
    assert value(m, "swarm_secrets_rollouts_total", result="rolled_back") == 0
    assert value(m, "swarm_secrets_last_success_timestamp_seconds") == 0
    # a foreign write is not a rollback: its own label value, there from the first scrape
    assert value(m, "swarm_secrets_rollouts_total", result="superseded") == 0
    m.observe(TickResult(ok=False, changed=True, rollouts={"superseded": 1}, follow_up=True), 0.1)
    assert value(m, "swarm_secrets_rollouts_total", result="superseded") == 1
    assert value(m, "swarm_secrets_rollouts_total", result="rolled_back") == 0


def test_observe_success() -> None:
    m, now = make()
    result = TickResult(
        ok=True,
        changed=True,
        revision="aaa111",
        created=2,
        removed=1,
        rollouts={"converged": 2, "rolled_back": 1, "timed_out": 0},
        drift_corrected=1,
        managed_secrets=7,
    )
    m.observe(result, 1.5)
    assert value(m, "swarm_secrets_ticks_total", result="success") == 1
    assert value(m, "swarm_secrets_tick_duration_seconds_count") == 1
    assert value(m, "swarm_secrets_tick_duration_seconds_sum") == 1.5
    assert value(m, "swarm_secrets_versions_created_total") == 2
    assert value(m, "swarm_secrets_versions_removed_total") == 1
    assert value(m, "swarm_secrets_rollouts_total", result="converged") == 2
    assert value(m, "swarm_secrets_rollouts_total", result="rolled_back") == 1
    assert value(m, "swarm_secrets_rollouts_total", result="timed_out") == 0
    assert value(m, "swarm_secrets_drift_corrections_total", cause="manual") == 1
    assert value(m, "swarm_secrets_drift_corrections_total", cause="stack_deploy") == 0
    assert value(m, "swarm_secrets_managed_secrets") == 7
    assert value(m, "swarm_secrets_last_success_timestamp_seconds") == now[0]
    assert value(m, "swarm_secrets_git_revision_info", revision="aaa111") == 1


def test_new_revision_replaces_the_old_label() -> None:
    m, _ = make()
    m.observe(TickResult(ok=True, changed=False, revision="aaa"), 0.1)
    m.observe(TickResult(ok=True, changed=False, revision="bbb"), 0.1)
    assert value(m, "swarm_secrets_git_revision_info", revision="aaa") is None
    assert value(m, "swarm_secrets_git_revision_info", revision="bbb") == 1
    m.observe(TickResult(ok=True, changed=False, revision=None), 0.1)  # no revision: keep the last
    assert value(m, "swarm_secrets_git_revision_info", revision="bbb") == 1


def test_failure_keeps_gauges_of_the_last_success() -> None:
    m, now = make()
    m.observe(TickResult(ok=True, changed=False, managed_secrets=3), 0.2)
    success_at = now[0]
    now[0] += 60
    m.observe(TickResult(ok=False, changed=True, created=1, error="swarm unreachable"), 0.3)
    assert value(m, "swarm_secrets_ticks_total", result="failure") == 1
    assert value(m, "swarm_secrets_managed_secrets") == 3
    assert value(m, "swarm_secrets_last_success_timestamp_seconds") == success_at
    assert value(m, "swarm_secrets_versions_created_total") == 1


def test_webhooks_counted_and_instances_independent() -> None:
    a, _ = make()
    b, _ = make()
    a.observe_webhook("github", "accepted")
    a.observe_webhook("github", "accepted")
    a.observe_webhook("gitlab", "unauthorized")
    assert value(a, "swarm_secrets_webhook_requests_total", provider="github", result="accepted") == 2
    assert value(a, "swarm_secrets_webhook_requests_total", provider="gitlab", result="unauthorized") == 1
    assert value(b, "swarm_secrets_webhook_requests_total", provider="github", result="accepted") is None


def test_render_is_prometheus_text() -> None:
    m, _ = make()
    m.observe(TickResult(ok=True, changed=False, revision="abc"), 0.01)
    body, content_type = m.render()
    text = body.decode()
    assert content_type.startswith("text/plain; version=")
    assert 'swarm_secrets_ticks_total{result="success"} 1.0' in text
    assert 'swarm_secrets_git_revision_info{revision="abc"} 1.0' in text
    assert "# TYPE swarm_secrets_tick_duration_seconds histogram" in text
    assert all(
        line.startswith(("# ", "swarm_secrets_")) for line in text.splitlines() if line
    )  # nothing from the global registry (process_*, python_gc_*)


def test_held_back_sets_are_named_bounded_and_cleared() -> None:
    m, now = make()
    m.observe(TickResult(ok=True, changed=False), 0.1)
    assert value(m, "swarm_secrets_failing_sets") == 0
    m.observe(TickResult(ok=True, changed=True, failing_sets={"books": "manifest", "pay": "source"}), 0.1)
    assert value(m, "swarm_secrets_ticks_total", result="partial") == 1
    assert value(m, "swarm_secrets_ticks_total", result="success") == 1
    assert value(m, "swarm_secrets_failing_sets") == 2
    assert value(m, "swarm_secrets_set_failing", set="books", **{"class": "manifest"}) == 1
    assert value(m, "swarm_secrets_set_failing", set="pay", **{"class": "source"}) == 1
    # a tick that did not get as far as loading (None) keeps the last known; a fixed one clears them
    m.observe(TickResult(ok=False, changed=False, error="down", error_class="engine"), 0.1)
    assert value(m, "swarm_secrets_set_failing", set="books", **{"class": "manifest"}) == 1
    many = {f"set-{i:02d}": "manifest" for i in range(30)}
    m.observe(TickResult(ok=False, changed=False, transient=False, failing_sets=many), 0.1)
    assert value(m, "swarm_secrets_failing_sets") == 30
    assert value(m, "swarm_secrets_set_failing", set="books", **{"class": "manifest"}) is None
    labelled = [s for s in m.registry.collect() if s.name == "swarm_secrets_set_failing"][0].samples
    assert len(labelled) == 20  # bounded: the rest only counted
    m.observe(TickResult(ok=True, changed=False, failing_sets={}), 0.1)
    assert value(m, "swarm_secrets_failing_sets") == 0
    assert [s for s in m.registry.collect() if s.name == "swarm_secrets_set_failing"][0].samples == []
