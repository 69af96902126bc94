"""Loading good manifests: what the model values look like, which files and documents are read."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from reconciler.core.model import EnvSource, FileSource, Origin, ServiceGrant, SopsSource
from reconciler.errors import ManifestError
from reconciler.manifests import loader as manifest
from reconciler.manifests import yamlload
from reconciler.manifests.loader import load, parse_mode
from reconciler.manifests.schema import MAX_SECRET_NAME, inline_refs, manifest_schema, policy_schema
from reconciler.manifests.yamlload import format_path

CONTRACT = """\
apiVersion: swarm-secrets/v1
kind: SecretSet
metadata:
  name: shop
spec:
  keep: 1
  secrets:
    db_password:
      source:
        sops:
          file: secrets/shop.enc.yaml
          key: db.password
      labels: {team: data}
      services:
        - shop_db
        - service: shop_web
          target: /etc/app/db_pass
          uid: "1000"
          gid: 1000
          mode: "0440"
    api_token:
      source: {env: API_TOKEN}
      services: [shop_web]
    tls_key:
      source: {file: certs/tls.key}
      services:
        - {service: shop_web, target: tls/key.pem, mode: 0400}
        - {service: shop_proxy, mode: "0o640"}
    dotted:
      source: {sops: {file: ../other/x.enc.json, key: [db, host.name]}}
"""


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def _set(name: str, secret: str = "pw", extra: str = "") -> str:
    return (
        f"apiVersion: swarm-secrets/v1\nkind: SecretSet\nmetadata: {{name: {name}}}\n"
        f"spec:\n  secrets:\n    {secret}: {{source: {{env: X}}}}\n{extra}"
    )


def test_contract_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".git").mkdir()  # a repository: manifests/ and other/ side by side, one source root
    _write(tmp_path, "manifests/shop.yaml", CONTRACT)
    [shop] = load([Path("manifests")])
    assert (shop.name, shop.keep) == ("shop", 1)
    assert shop.origin == Origin(file="manifests/shop.yaml", line=4, path="metadata.name")
    db, api, tls, dotted = shop.secrets
    root = tmp_path.resolve()
    assert db.source == SopsSource(
        file=tmp_path / "manifests/secrets/shop.enc.yaml", key=("db", "password"), root=root
    )
    assert db.labels == {"team": "data"}
    assert db.grants == (
        ServiceGrant(service="shop_db", target="db_password"),
        ServiceGrant(service="shop_web", target="/etc/app/db_pass", uid="1000", gid="1000", mode=0o440),
    )
    assert db.origin == Origin(file="manifests/shop.yaml", line=8, path="spec.secrets.db_password")
    assert api.source == EnvSource(var="API_TOKEN")
    assert api.grants == (ServiceGrant(service="shop_web", target="api_token"),)
    assert tls.source == FileSource(file=tmp_path / "manifests/certs/tls.key", root=root)
    assert [(g.target, g.path, g.mode) for g in tls.grants] == [
        ("tls/key.pem", "/run/secrets/tls/key.pem", 0o400),
        ("tls_key", "/run/secrets/tls_key", 0o640),
    ]
    assert dotted.source == SopsSource(file=tmp_path / "other/x.enc.json", key=("db", "host.name"), root=root)
    assert dotted.grants == ()
    assert all(s.set_name == "shop" for s in shop.secrets)


def test_folder_search_is_recursive_sorted_and_skips_foreign_documents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "m/b.yaml", _set("bee", "b1"))
    _write(tmp_path, "m/a/z.yml", _set("zed", "z1"))
    _write(
        tmp_path,
        "m/a.yaml",
        "# only a comment\n---\n" + _set("one", "s1") + "---\n- a list\n---\njust text\n"
        "---\n" + _set("two", "s2") + "---\napiVersion: apps/v1\nkind: Deployment\n",
    )
    _write(tmp_path, "m/.sops.yaml", "creation_rules:\n  - age: age1xyz\n")
    _write(tmp_path, "m/secrets/x.enc.yaml", "db: ENC[...]\nsops: {version: 3.9.0}\nodd: !vault x\nodd: 2\n")
    _write(tmp_path, "m/.hidden/broken.yaml", "this: [is not: valid\n")
    _write(tmp_path, "m/notes.txt", "not: [yaml\n")
    _write(tmp_path, "m/extra.manifest", _set("explicit", "e1"))
    sets = load([Path("m"), Path("m/b.yaml"), Path("m/extra.manifest")])
    assert [s.name for s in sets] == ["one", "two", "zed", "bee", "explicit"]
    assert [s.origin.file for s in sets] == [
        "m/a.yaml",
        "m/a.yaml",
        "m/a/z.yml",
        "m/b.yaml",
        "m/extra.manifest",
    ]
    assert sets[1].origin.line == 16


def test_paths_outside_the_working_folder_are_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = _write(tmp_path, "m/s.yaml", _set("s"))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    [loaded] = load([file])
    assert loaded.origin.file == file.as_posix()
    # The same file reached twice is read once.
    assert len(load([tmp_path / "m", tmp_path / "m/../m/s.yaml"])) == 1
    other = _write(tmp_path, "n/s.yaml", _set("s", "other"))
    with pytest.raises(ManifestError) as caught:
        load([tmp_path / "m", tmp_path / "n"])
    assert str(caught.value) == (
        f"{other.as_posix()}:3: metadata.name: set name 's' is already used by {file.as_posix()}:3; each set "
        "owns its secrets by name, so set names must be unique: rename one"
    )


def test_anchors_and_merge_keys(tmp_path: Path) -> None:
    file = _write(
        tmp_path,
        "s.yaml",
        """\
        apiVersion: swarm-secrets/v1
        kind: SecretSet
        metadata: {name: s}
        x-web: &web {service: shop_web, uid: "1000", gid: "1000", mode: "0440"}
        spec:
          secrets:
            a:
              source: {env: A}
              services: [<<: *web]
            b:
              source: {env: B}
              services: [{<<: *web, target: b_file, mode: "0400"}]
        """,
    )
    with pytest.raises(ManifestError) as caught:
        load([file])
    # The merges worked (no problem in services); x-web is not a manifest field, so anchors must live
    # in places the schema allows.
    assert [p.path for p in caught.value.problems] == ["x-web"]


def test_merge_key_inside_grant(tmp_path: Path) -> None:
    file = _write(
        tmp_path,
        "s.yaml",
        """\
        apiVersion: swarm-secrets/v1
        kind: SecretSet
        metadata: {name: s}
        spec:
          secrets:
            a:
              source: {env: A}
              services:
                - &web {service: shop_web, uid: "1000", gid: "1000", mode: "0440"}
            b:
              source: {env: B}
              services:
                - {<<: *web, target: b_file, mode: "0400"}
        """,
    )
    [loaded] = load([file])
    assert loaded.secrets[1].grants == (
        ServiceGrant(service="shop_web", target="b_file", uid="1000", gid="1000", mode=0o400),
    )


def test_empty_collections_are_allowed(tmp_path: Path) -> None:
    file = _write(
        tmp_path,
        "s.yaml",
        """\
        apiVersion: swarm-secrets/v1
        kind: SecretSet
        metadata: {name: empty}
        spec:
          secrets:
        ---
        apiVersion: swarm-secrets/v1
        kind: SecretSet
        metadata: {name: unmounted}
        spec:
          secrets:
            a: {source: {env: A}, services: , labels: }
            b: {source: {env: B}, services: []}
        """,
    )
    empty, unmounted = load([file])
    assert empty.secrets == ()
    assert [(s.grants, dict(s.labels)) for s in unmounted.secrets] == [((), {}), ((), {})]


def test_alias_bomb_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yamlload, "MAX_NODES", 50)
    lines = ["a0: &a0 [x, x, x]"] + [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 6)]
    file = _write(tmp_path, "s.yaml", _set("s") + "\n".join(lines) + "\n")
    with pytest.raises(ManifestError) as caught:
        load([file])
    assert "more than 50 nodes" in str(caught.value)


def test_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "latin1.yaml").write_bytes(b"name: caf\xe9\n")
    with pytest.raises(ManifestError) as caught:
        load([tmp_path / "latin1.yaml"])
    assert "not UTF-8 text (bad byte at offset 9)" in str(caught.value)


def test_problems_in_every_file_are_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "a.yaml", _set("a").replace("env: X", "env: 1X"))
    _write(
        tmp_path, "b.yaml", "apiVersion: swarm-secrets/v1\nkind: SecretSet\nmetadata: {name: b}\nspec: {}\n"
    )
    _write(tmp_path, "c.yaml", _set("c", "ok"))
    with pytest.raises(ManifestError) as caught:
        load([tmp_path])
    assert [str(p).split(": ", 2)[:2] for p in caught.value.problems] == [
        ["a.yaml:6", "spec.secrets.pw.source.env"],
        ["b.yaml:4", "spec"],
    ]


def test_schema_agrees_with_the_code() -> None:
    defs = manifest_schema()["$defs"]
    assert defs["secretName"]["maxLength"] == MAX_SECRET_NAME == 58
    assert defs["setName"]["maxLength"] == 40
    assert defs["serviceName"]["maxLength"] == 63
    assert manifest.API_VERSION == manifest_schema()["properties"]["apiVersion"]["const"]


def _descriptions_missing(node: object, where: str) -> list[str]:
    if not isinstance(node, dict):
        return []
    missing = []
    for name, sub in node.get("properties", {}).items():
        if "description" not in sub and "$ref" not in sub:
            missing.append(f"{where}.{name}")
    for key, sub in node.items():
        if isinstance(sub, dict):
            missing += _descriptions_missing(sub, f"{where}.{key}")
    return missing


def test_every_schema_property_is_documented() -> None:
    schema = manifest_schema()
    assert _descriptions_missing(schema, "") == []
    assert all("description" in d for d in schema["$defs"].values())


@pytest.mark.parametrize(
    ("value", "mode"), [(0o440, 0o440), ("0440", 0o440), ("440", 0o440), ("0o777", 0o777), ("0", 0)]
)
def test_parse_mode(value: int | str, mode: int) -> None:
    assert parse_mode(value) == mode


def test_format_path() -> None:
    assert format_path(("spec", "secrets", "db_password", "services", 1, "mode")) == (
        "spec.secrets.db_password.services[1].mode"
    )
    assert format_path(("spec", "secrets", "my.secret", "labels", "com.example/team")) == (
        'spec.secrets["my.secret"].labels["com.example/team"]'
    )
    assert format_path(()) == ""


@pytest.mark.parametrize("levels", [1_000, 100_000])
def test_nesting_deeper_than_the_parser_goes_is_one_problem_not_a_crash(tmp_path: Path, levels: int) -> None:
    # Deep enough to exhaust the pure-Python composer's recursion (or libyaml's own nesting limit).
    file = tmp_path / "set.yaml"
    deep = "[" * levels + "]" * levels
    file.write_text(
        "apiVersion: swarm-secrets/v1\nkind: SecretSet\nmetadata: {name: shop}\nspec:\n  secrets:\n"
        f"    pw:\n      source: {{env: PW}}\n      labels: {{team: {deep}}}\n"
    )
    with pytest.raises(ManifestError) as info:
        load([file])
    (problem,) = info.value.problems
    assert problem.file.endswith("set.yaml") and problem.line == 8
    assert "nest" in problem.message and len(str(problem)) < 300


def test_a_yaml_file_over_the_cap_is_not_read(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(b"a: " + b"x" * manifest.MAX_FILE_BYTES)
    with pytest.raises(ManifestError) as info:
        load([tmp_path])
    (problem,) = info.value.problems
    assert problem.file.endswith("big.yaml") and "larger than 1024 KiB" in problem.message


def test_schema_is_valid_and_inlines_to_the_same_rules() -> None:
    schema = manifest_schema()
    Draft202012Validator.check_schema(schema)  # checked here, not on every run
    Draft202012Validator.check_schema(policy_schema())
    inlined = inline_refs(schema)
    assert "$ref" not in json.dumps(inlined)
    assert inlined["properties"]["metadata"]["properties"]["name"] == {
        k: v for k, v in schema["$defs"]["setName"].items()
    }
    # Anything but a plain local definition reference is left alone.
    odd = {"$defs": {"a": {"type": "string"}}, "properties": {"x": {"$ref": "#/$defs/a", "minLength": 1}}}
    assert inline_refs(odd) is odd
    recursive = {"$defs": {"n": {"items": {"$ref": "#/$defs/n"}}}, "items": {"$ref": "#/$defs/n"}}
    assert inline_refs(recursive) is recursive
