"""The three renderings of a plan: text for people, JSON for machines, Markdown for pull requests."""

from __future__ import annotations

import json
import re

import pytest

from reconciler.core.model import (
    LABEL_FINGERPRINT,
    LABEL_MANAGED,
    LABEL_SECRET,
    LABEL_SET,
    LABEL_VERSION,
    DesiredSecret,
    DesiredSet,
    DesiredState,
    LiveSecret,
    LiveService,
    LiveState,
    SecretRef,
    ServiceGrant,
)
from reconciler.core.plan import Blocked, CreateSecret, Kept, Plan, RefChange, RemoveSecret, UpdateService
from reconciler.core.planner import plan
from reconciler.render.plan import (
    FORMAT_VERSION,
    md_escape,
    plan_to_dict,
    render_json,
    render_markdown,
    render_text,
    summary_line,
)

# Distinctive digests, so a leak into any rendering cannot hide.
DIGESTS = {v: f"{v}{'0f1e2d3c4b5a6978' * 4}"[:64] for v in ("d0", "d1", "d2", "d3", "t1", "x1", "a1")}
FP = {v: f"hmac-sha256:k1:{digest}" for v, digest in DIGESTS.items()}
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _managed(set_name: str, logical: str, version: int, fp: str) -> LiveSecret:
    return LiveSecret(
        id=f"id-{logical}-{version}",
        name=f"{logical}_v{version}",
        labels={
            LABEL_MANAGED: "true",
            LABEL_SET: set_name,
            LABEL_SECRET: logical,
            LABEL_VERSION: str(version),
            LABEL_FINGERPRINT: FP[fp],
        },
    )


def _ref(name: str, target: str, secret_id: str) -> SecretRef:
    return SecretRef(secret_id=secret_id, secret_name=name, target=target)


def sample_plan() -> Plan:
    """One of everything: create, update (replace + remove), remove, blocked, kept, warnings, orphan."""
    desired = DesiredState(
        fingerprint_key_id="k1",
        revision="abc123",
        sets=(
            DesiredSet(
                name="shop",
                keep=1,
                secrets=(
                    DesiredSecret(
                        set_name="shop",
                        secret="db_password",
                        fingerprint=FP["d3"],
                        labels={"team": "shop"},
                        grants=(
                            ServiceGrant(service="shop_web", target="db_password", mode=0o440),
                            ServiceGrant(service="shop_worker", target="db_password"),
                        ),
                    ),
                    DesiredSecret(
                        set_name="shop",
                        secret="api_key",
                        fingerprint=FP["a1"],
                        grants=(ServiceGrant(service="shop_web", target="api_key"),),
                    ),
                ),
            ),
        ),
    )
    live = LiveState(
        secrets=(
            _managed("shop", "db_password", 0, "d0"),
            _managed("shop", "db_password", 1, "d0"),
            _managed("shop", "db_password", 2, "d1"),
            _managed("shop", "db_password", 3, "d2"),
            _managed("shop", "old_token", 1, "t1"),
            _managed("legacy", "x", 1, "x1"),
            LiveSecret(id="id-api", name="API_KEY_v1"),
        ),
        services=(
            LiveService(
                id="svc-web",
                name="shop_web",
                version=10,
                stack="shop",
                refs=(
                    _ref("db_password_v2", "db_password", "id-db_password-2"),
                    _ref("old_token_v1", "old_token", "id-old_token-1"),
                ),
            ),
            LiveService(
                id="svc-old",
                name="shop_old",
                version=3,
                previous_refs=(_ref("db_password_v1", "db_password", "id-db_password-1"),),
            ),
        ),
    )
    return plan(desired, live)


# --- text -------------------------------------------------------------------------------------------

SAMPLE_TEXT = """\
+ create db_password_v4 (shop/db_password v4): content changed (v3 has a different fingerprint)
~ update service shop_web (stack shop): 2 references change (1 replaced, 1 removed)
    ~ /run/secrets/db_password: db_password_v2 → db_password_v4 [uid 0, gid 0, mode 0440] \
(rotate to v4 (content changed); file owner/mode changed (mode 0444→0440))
    - /run/secrets/old_token: old_token_v1 \
(revoke: manifest no longer grants old_token to shop_web at /run/secrets/old_token)
- remove db_password_v0 (shop/db_password v0): superseded by v4 and no longer referenced
! blocked shop/api_key: secret name 'api_key_v1' is taken by an unmanaged secret (id id-api); \
rename or remove it
# kept db_password_v1 (shop/db_password v1): rollback target of shop_old (PreviousSpec)
# kept db_password_v2 (shop/db_password v2): in use by shop_web
# kept db_password_v3 (shop/db_password v3): kept: spec.keep=1
# kept old_token_v1 (shop/old_token v1): in use by shop_web
warning: set 'legacy' has 1 managed secret but no loaded manifest; left alone \
(use --prune-orphans to revoke and collect)
warning: service 'shop_worker' not found; skipped (granted db_password)
warning: service 'shop_web' belongs to stack 'shop': a `docker stack deploy` of that stack would \
revert this change; deploy it with `swarm-secrets stack deploy` (or a `kind: Stack` manifest), or point \
the stack's external secrets at db_password_v4

Plan: 1 to create, 1 service to update, 1 to remove, 1 blocked."""


def test_text_golden() -> None:
    assert render_text(sample_plan()) == SAMPLE_TEXT


def test_text_colour_wraps_each_line_and_changes_nothing_else() -> None:
    plain = render_text(sample_plan())
    coloured = render_text(sample_plan(), color=True)
    assert "\x1b[" not in plain
    assert ANSI.sub("", coloured) == plain
    lines = coloured.splitlines()
    assert lines[0].startswith("\x1b[32m+ create")  # green
    assert lines[1].startswith("\x1b[33m~ update")  # yellow
    assert lines[3].startswith("\x1b[31m    - /run")  # red
    assert any(line.startswith("\x1b[2m# kept") for line in lines)  # dim
    assert lines[-1] == "Plan: 1 to create, 1 service to update, 1 to remove, 1 blocked."


def test_text_of_an_empty_plan() -> None:
    assert render_text(Plan()) == "No changes. The swarm matches the manifests."


def test_text_of_a_plan_with_only_kept_versions_and_warnings_is_no_changes() -> None:
    result = Plan(
        kept=(Kept(name="pw_v1", set_name="s", secret="pw", version=1, reason="in use by web"),),
        warnings=("service 'x' not found; skipped (granted pw)",),
    )
    assert render_text(result) == (
        "# kept pw_v1 (s/pw v1): in use by web\n"
        "warning: service 'x' not found; skipped (granted pw)\n"
        "\n"
        "No changes. The swarm matches the manifests."
    )


def test_summary_line_counts() -> None:
    update = UpdateService(service="s", service_id="i", observed_version=1, changes=(), reason="r")
    result = Plan(actions=(update, update))
    assert summary_line(result) == "Plan: 0 to create, 2 services to update, 0 to remove."


# --- JSON -------------------------------------------------------------------------------------------


def test_json_shape() -> None:
    data = json.loads(render_json(sample_plan()))
    assert data == plan_to_dict(sample_plan())
    assert list(data) == [
        "format_version",
        "summary",
        "empty",
        "actions",
        "kept",
        "blocked",
        "warnings",
        "orphaned_sets",
        "policy",
    ]
    assert data["format_version"] == FORMAT_VERSION == 1
    assert data["summary"] == {"create": 1, "update": 1, "remove": 1, "blocked": 1, "kept": 4, "deploy": 0}
    assert data["empty"] is False
    assert [a["kind"] for a in data["actions"]] == ["create_secret", "update_service", "remove_secret"]
    create, update, remove = data["actions"]
    assert set(create) == {"kind", "set", "secret", "version", "name", "labels", "reason"}
    assert create["labels"] == {
        "io.swarm-secrets.managed": "true",
        "io.swarm-secrets.revision": "abc123",
        "io.swarm-secrets.secret": "db_password",
        "io.swarm-secrets.set": "shop",
        "io.swarm-secrets.version": "4",
        "team": "shop",
    }
    assert set(update) == {"kind", "service", "service_id", "observed_version", "stack", "reason", "changes"}
    assert (update["service_id"], update["observed_version"], update["stack"]) == ("svc-web", 10, "shop")
    assert update["changes"][0] == {
        "op": "replace",
        "path": "/run/secrets/db_password",
        "target": "db_password",
        "set": "shop",
        "secret": "db_password",
        "old": "db_password_v2",
        "new": "db_password_v4",
        "uid": "0",
        "gid": "0",
        "mode": "0440",
        "reason": "rotate to v4 (content changed); file owner/mode changed (mode 0444→0440)",
    }
    assert update["changes"][1]["op"] == "remove" and update["changes"][1]["new"] is None
    assert remove == {
        "kind": "remove_secret",
        "secret_id": "id-db_password-0",
        "name": "db_password_v0",
        "set": "shop",
        "secret": "db_password",
        "version": 0,
        "reason": "superseded by v4 and no longer referenced",
        "after": [],
    }
    assert data["kept"][0] == {
        "name": "db_password_v1",
        "set": "shop",
        "secret": "db_password",
        "version": 1,
        "reason": "rollback target of shop_old (PreviousSpec)",
    }
    assert data["blocked"] == [{"set": "shop", "secret": "api_key", "reason": data["blocked"][0]["reason"]}]
    assert len(data["warnings"]) == 3
    assert data["orphaned_sets"] == ["legacy"]


def test_json_add_change_has_no_old() -> None:
    change = RefChange(path="/run/secrets/pw", set_name="s", secret="pw", old=(), new="pw_v1", reason="r")
    update = UpdateService(service="web", service_id="i", observed_version=1, changes=(change,), reason="r")
    (action,) = plan_to_dict(Plan(actions=(update,)))["actions"]
    assert action["changes"][0]["op"] == "add" and action["changes"][0]["old"] is None
    assert action["changes"][0]["mode"] == "0444"


def test_json_of_an_empty_plan() -> None:
    data = json.loads(render_json(Plan()))
    assert data["empty"] is True
    assert data["actions"] == data["kept"] == data["blocked"] == data["warnings"] == []


# --- Markdown ---------------------------------------------------------------------------------------


def test_markdown_layout() -> None:
    text = render_markdown(sample_plan())
    assert text.startswith(
        "### swarm-secrets plan\n\n**Plan: 1 to create, 1 service to update, 1 to remove, 1 blocked.**\n"
    )
    assert "#### Blocked (1)" in text
    assert "> **Warnings**\n" in text and "> - service 'shop\\_worker' not found" in text
    assert "#### Create (1)\n\n| Secret | Set | Version | Reason |\n|---|---|---|---|\n" in text
    assert "| db\\_password\\_v4 | shop | v4 | content changed (v3 has a different fingerprint) |" in text
    assert "- **shop\\_web** (stack shop): 2 references change (1 replaced, 1 removed)" in text
    assert "  - `~` /run/secrets/db\\_password: db\\_password\\_v2 → db\\_password\\_v4" in text
    assert "#### Remove (1)" in text
    assert "<details><summary>Kept versions (4)</summary>\n\n| Secret |" in text
    assert text.rstrip().endswith("</details>")
    assert "Summarised" not in text
    assert text.endswith("\n") and not text.endswith("\n\n")


def test_markdown_of_an_empty_plan() -> None:
    assert render_markdown(Plan()) == (
        "### swarm-secrets plan\n\n**No changes. The swarm matches the manifests.**\n"
    )


def test_markdown_escapes_names_in_tables_and_lists() -> None:
    nasty = "a|b*c_d`e<f>[g]~h#i&j\\k"
    result = Plan(
        actions=(
            CreateSecret(set_name=nasty, secret=nasty, version=1, name=nasty, reason=f"new {nasty}"),
            RemoveSecret(secret_id="i", name=nasty, set_name="s", secret="x", version=1, reason="r\nmore"),
        ),
        blocked=(Blocked(set_name="s", secret=nasty, reason="r"),),
    )
    text = render_markdown(result)
    escaped = md_escape(nasty)
    assert escaped == "a\\|b\\*c\\_d\\`e\\<f\\>\\[g\\]\\~h\\#i\\&j\\\\k"
    assert f"| {escaped} | {escaped} | v1 | new {escaped} |" in text
    assert nasty not in text
    # A newline in a reason would break the table row: it is flattened.
    assert "| r more |" in text
    for line in text.splitlines():
        if line.startswith("| "):
            assert len(re.findall(r"(?<!\\)\|", line)) == 5  # 4 columns, no stray cell separators


def _huge_plan(n: int) -> Plan:
    creates = tuple(
        CreateSecret(
            set_name="shop", secret=f"s{i}", version=1, name=f"secret_number_{i:05d}_v1", reason="new secret"
        )
        for i in range(n)
    )
    kept = tuple(
        Kept(name=f"k{i}_v1", set_name="shop", secret=f"k{i}", version=1, reason="in use by shop_web")
        for i in range(n)
    )
    return Plan(actions=creates, kept=kept, warnings=("service 'x' not found; skipped (granted s1)",))


def test_markdown_of_a_huge_plan_stays_under_the_cap_and_says_so() -> None:
    result = _huge_plan(5_000)
    text = render_markdown(result)
    assert len(text) <= 60_000
    assert "Summarised to stay under 60,000 characters" in text
    assert "5,000 superseded versions kept." not in text  # counts are plain numbers
    assert "5000 superseded versions kept." in text
    assert "<details>" not in text
    shown = text.count("| shop | v1 | new secret |")
    more = re.search(r"… and (\d+) more actions \(run `swarm-secrets plan` for the full list\)", text)
    assert more is not None and 0 < shown and shown + int(more.group(1)) == 5_000
    # The warnings come before the actions, so they survive the cut.
    assert "service 'x' not found" in text
    assert text.startswith("### swarm-secrets plan\n\n**Plan: 5000 to create, 0 services to update")


def test_markdown_drops_kept_details_first() -> None:
    result = _huge_plan(400)
    full = render_markdown(result, max_chars=1_000_000)
    assert "<details>" in full
    limit = len(full) - 1_000
    text = render_markdown(result, max_chars=limit)
    assert len(text) <= limit
    assert "<details>" not in text and "400 superseded versions kept." in text
    assert "kept versions are only counted" in text
    assert "more actions" not in text
    assert text.count("| shop | v1 | new secret |") == 400


@pytest.mark.parametrize("limit", [100, 300, 1_000, 5_000])
def test_markdown_never_exceeds_a_small_cap(limit: int) -> None:
    assert len(render_markdown(_huge_plan(200), max_chars=limit)) <= limit


# --- no secret material in any rendering ------------------------------------------------------------


def test_no_rendering_contains_a_fingerprint() -> None:
    result = sample_plan()
    # The plan itself carries the fingerprint label (the executor writes it); renderings never do.
    assert any(LABEL_FINGERPRINT in c.labels for c in result.creates)
    for text in (
        render_text(result),
        render_text(result, color=True),
        render_json(result),
        render_markdown(result),
    ):
        assert "hmac-sha256" not in text
        assert LABEL_FINGERPRINT not in text
        for digest in DIGESTS.values():
            assert digest not in text
            assert digest[:16] not in text
