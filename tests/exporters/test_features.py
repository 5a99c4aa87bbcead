"""The feature cache's keys: a file's bytes decide, not its path or its times."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from exporters.features import cached_array, media_keys


def _photos(folder: Path) -> list[Path]:
    folder.mkdir()
    paths = [folder / f"{i}.jpg" for i in range(3)]
    for i, path in enumerate(paths):
        path.write_bytes(bytes([i]) * 64)
    return paths


def test_a_copied_catalog_keeps_its_keys_and_a_missing_file_has_its_own(tmp_path: Path) -> None:
    paths = _photos(tmp_path / "a")
    copy = tmp_path / "b"
    shutil.copytree(tmp_path / "a", copy)  # new paths, new mtimes
    os.utime(copy / "0.jpg", ns=(1, 1))
    keys = media_keys(paths)
    assert media_keys([copy / p.name for p in paths]) == keys
    assert len(set(keys)) == 3
    assert media_keys([None, tmp_path / "absent.jpg"]) == ["missing", "missing"]


def test_a_file_replaced_under_the_same_size_and_mtime_changes_its_key(tmp_path: Path) -> None:
    (path,) = _photos(tmp_path / "a")[:1]
    before = media_keys([path])
    stat = path.stat()
    path.write_bytes(b"\xff" * 64)  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as `cp -p` or `rsync -t` leave it
    assert path.stat().st_mtime_ns == stat.st_mtime_ns
    assert media_keys([path]) != before


def test_features_are_computed_once_for_a_catalog_and_its_copy(tmp_path: Path) -> None:
    paths = _photos(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    calls: list[int] = []

    def compute() -> np.ndarray:
        calls.append(1)
        return np.arange(6, dtype=np.float32).reshape(3, 2)

    cache = tmp_path / "cache"
    first = cached_array(cache, "image", "v1", media_keys(paths), compute)
    again = cached_array(cache, "image", "v1", media_keys([tmp_path / "b" / p.name for p in paths]), compute)
    other_version = cached_array(cache, "image", "v2", media_keys(paths), compute)
    assert len(calls) == 2  # the copy hit the cache; a new encoder version did not
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first, other_version)
