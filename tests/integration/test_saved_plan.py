"""Saved plans on the real swarm: ``plan --out FILE`` then ``apply --plan FILE`` applies exactly that plan;
a changed value, manifest or service in between makes apply refuse (exit 1) with the swarm untouched."""

from __future__ import annotations

import json
from pathlib import Path

import docker
import pytest

from .conftest import Lab
from .test_engine import _snapshot, apply, assert_converged, run

pytestmark = pytest.mark.swarm

VALUE = "Zq7-saved-plan-marker-value"


def setup(lab: Lab, tmp_path: Path) -> tuple[str, str, Path]:
    pw, svc = lab.name("pw"), lab.create_service("app")
    lab.manifest({pw: {"source": {"env": "PW"}, "services": [svc]}})
    assert apply(lab, PW="one").exit_code == 0
    return pw, svc, tmp_path / "plan.json"


def save(lab: Lab, out: Path, value: str) -> str:
    result = run(lab, "plan", str(lab.root), "--out", str(out), PW=value)
    assert result.exit_code == 0, result.output
    return result.output


def test_plan_out_then_apply_plan_applies_exactly_that_plan(
    lab: Lab, api: docker.APIClient, tmp_path: Path
) -> None:
    pw, svc, out = setup(lab, tmp_path)
    shown = save(lab, out, VALUE)
    assert f"+ create {pw}_v2" in shown and "saved the plan to" in shown
    text = out.read_text()
    assert VALUE not in text
    saved = json.loads(text)
    assert saved["kind"] == "swarm-secrets/saved-plan" and saved["format_version"] == 1
    assert [a["kind"] for a in saved["plan"]["actions"]] == ["create_secret", "update_service"]

    result = run(lab, "apply", "--plan", str(out), str(lab.root), "--timeout", "90", PW=VALUE)
    assert result.exit_code == 0, result.output
    assert "Applying the saved plan" in result.output and VALUE not in result.output
    assert lab.service_secret_names(svc) == {pw: f"{pw}_v2"}
    assert lab.read_in_task(svc, f"/run/secrets/{pw}")[0] == VALUE.encode()
    assert_converged(lab, PW=VALUE)
    # the swarm moved on (the plan was applied): the same file is refused now
    again = run(lab, "apply", "--plan", str(out), str(lab.root), PW=VALUE)
    assert again.exit_code == 1 and "the saved plan no longer applies" in again.output


def refused(lab: Lab, api: docker.APIClient, out: Path, value: str) -> str:
    before = _snapshot(api)
    result = run(lab, "apply", "--plan", str(out), str(lab.root), "--timeout", "90", PW=value)
    assert result.exit_code == 1, result.output
    assert _snapshot(api) == before  # every version index as it was
    (line,) = result.output.strip().splitlines()  # one line saying what moved
    assert line.startswith("error: the saved plan no longer applies: ") and "Traceback" not in line
    return line


def test_a_changed_value_is_refused(lab: Lab, api: docker.APIClient, tmp_path: Path) -> None:
    pw, _, out = setup(lab, tmp_path)
    save(lab, out, "two")
    assert f"the value of {lab.prefix}-set/{pw} changed" in refused(lab, api, out, "three")


def test_a_changed_manifest_is_refused(lab: Lab, api: docker.APIClient, tmp_path: Path) -> None:
    pw, svc, out = setup(lab, tmp_path)
    save(lab, out, "two")
    lab.manifest({pw: {"source": {"env": "PW"}, "labels": {"team": "x"}, "services": [svc]}})
    assert "the manifest files changed" in refused(lab, api, out, "two")


def test_a_changed_service_is_refused(lab: Lab, api: docker.APIClient, tmp_path: Path) -> None:
    _, svc, out = setup(lab, tmp_path)
    save(lab, out, "two")
    raw = api.inspect_service(svc)
    spec = raw["Spec"]
    spec["Labels"]["changed"] = "by hand"
    response = api._post_json(
        api._url("/services/{0}/update", raw["ID"]), data=spec, params={"version": raw["Version"]["Index"]}
    )
    api._raise_for_status(response)
    assert f"service {svc} changed (version" in refused(lab, api, out, "two")


def test_a_file_that_is_not_a_saved_plan_is_one_clear_error(lab: Lab, tmp_path: Path) -> None:
    setup(lab, tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text('{"kind": "something else"}')
    result = run(lab, "apply", "--plan", str(bad), str(lab.root), PW="two")
    assert result.exit_code == 1
    assert (
        result.output.strip() == f"error: {bad} is not a usable saved plan: not a saved plan (kind is not "
        "'swarm-secrets/saved-plan')"
    )


def test_saving_a_plan_needs_the_swarms_fingerprint_key(
    lab: Lab, api: docker.APIClient, tmp_path: Path
) -> None:
    import base64

    from reconciler.engine.keysource import KEY_CONFIG_NAME

    pw = lab.name("pw")
    lab.manifest({pw: {"source": {"env": "PW"}, "services": []}})
    existing = [
        c for c in api.configs(filters={"name": KEY_CONFIG_NAME}) if c["Spec"]["Name"] == KEY_CONFIG_NAME
    ]
    if existing:
        saved = api.inspect_config(existing[0]["ID"])["Spec"]
        api.remove_config(existing[0]["ID"])
    try:
        before = _snapshot(api)
        result = run(lab, "plan", str(lab.root), "--out", str(tmp_path / "plan.json"), PW="x")
        assert result.exit_code == 1, result.output
        assert "cannot save a plan: this swarm has no fingerprint key yet" in result.output
        assert _snapshot(api) == before and not (tmp_path / "plan.json").exists()
    finally:
        if existing:
            api.create_config(saved["Name"], base64.b64decode(saved["Data"]), labels=saved.get("Labels"))
