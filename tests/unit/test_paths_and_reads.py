"""The shortcuts of loading many sources: folders resolved once, reads sized by ``stat``.

Both must give exactly what the slow way gives: ``RealPaths`` what ``os.path.realpath`` gives for
every path (symlinked folders and files, missing names, ``..``, relative paths), and a read the whole
file even when it is larger than ``stat`` said a moment before.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconciler.core.model import MAX_SECRET_BYTES, FileSource
from reconciler.paths import RealPaths
from reconciler.sources.base import SourceFailure
from reconciler.sources.file import read_file


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "values").mkdir(parents=True)
    (root / "values" / "a.txt").write_text("a")
    (root / "elsewhere").mkdir()
    (root / "elsewhere" / "b.txt").write_text("b")
    (tmp_path / "outside.txt").write_text("o")
    (root / "linked").symlink_to(root / "elsewhere")  # a symlinked folder inside the root
    (root / "values" / "to-b.txt").symlink_to("../elsewhere/b.txt")  # a symlinked file, relative
    (root / "values" / "out.txt").symlink_to(tmp_path / "outside.txt")  # leaves the root
    (root / "values" / "dangling").symlink_to(root / "nowhere" / "x")
    return root


def test_every_path_resolves_as_realpath_resolves_it(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tree)
    paths: list[str | Path] = [
        tree / "values" / "a.txt",
        tree / "values" / "to-b.txt",
        tree / "values" / "out.txt",
        tree / "values" / "dangling",
        tree / "values" / "missing.txt",
        tree / "linked" / "b.txt",
        tree / "linked" / "missing.txt",
        tree / "linked" / ".." / "values" / "a.txt",  # `..` after a symlink: realpath goes through it
        tree / "nowhere" / "deeper" / "x",
        tree,
        Path("/"),
        Path("values/a.txt"),  # relative
        Path("linked/b.txt"),
        f"{tree}/linked/..",  # `..` last, behind a symlink: realpath climbs from its target
        f"{tree}/values/.",
        f"{tree}/values/",
        f"{tree}//values/a.txt",
    ]
    realpath = RealPaths()
    for _ in range(2):  # the second pass answers from the folders resolved by the first
        for path in paths:
            assert realpath(path) == os.path.realpath(path), path


def test_a_file_swapped_for_a_symlink_is_seen_through_a_warm_cache(tree: Path) -> None:
    realpath = RealPaths()
    target = tree / "values" / "a.txt"
    assert realpath(target) == str(target)
    target.unlink()
    target.symlink_to(tree.parent / "outside.txt")  # the last component is looked at every time
    assert realpath(target) == os.path.realpath(target) == str(tree.parent / "outside.txt")


def _source(file: Path, root: Path) -> FileSource:
    return FileSource(file=file, root=Path(os.path.realpath(root)))


def _stat_says(monkeypatch: pytest.MonkeyPatch, file: Path, size: int) -> None:
    """Make ``stat`` report ``size`` for ``file``: as if it grew between stat and read."""
    real_stat = Path.stat

    def stat(self: Path, *, follow_symlinks: bool = True) -> os.stat_result:
        result = real_stat(self, follow_symlinks=follow_symlinks)
        if os.path.realpath(self) != os.path.realpath(file):
            return result
        fields = list(result)
        fields[6] = size  # st_size
        return os.stat_result(fields)

    monkeypatch.setattr(Path, "stat", stat)


def test_a_file_larger_than_stat_said_is_read_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    value = os.urandom(200 * 1024)
    file = tmp_path / "grown.bin"
    file.write_bytes(value)
    _stat_says(monkeypatch, file, 10)
    assert read_file(_source(file, tmp_path)) == value


def test_a_file_grown_past_the_limit_after_stat_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "grown.bin"
    file.write_bytes(b"x" * (MAX_SECRET_BYTES + 5))
    _stat_says(monkeypatch, file, 10)
    with pytest.raises(SourceFailure) as refused:
        read_file(_source(file, tmp_path))
    assert f"is {MAX_SECRET_BYTES + 1} bytes" in refused.value.message  # read no further than the limit


@pytest.mark.parametrize("size", [1, 4095, 4096, 65536, 65537, MAX_SECRET_BYTES])
def test_sizes_up_to_the_limit_are_read_exactly(tmp_path: Path, size: int) -> None:
    value = os.urandom(size)
    file = tmp_path / "value.bin"
    file.write_bytes(value)
    assert read_file(_source(file, tmp_path)) == value
