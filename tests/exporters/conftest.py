"""Fixtures of the exporter tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def folder(model_dir: Path, tmp_path: Path) -> Path:
    """A model folder with the packaged models, as a user would copy it before swapping one
    (links: an export replaces a link by a new file and never writes through it)."""
    target = tmp_path / "models"
    target.mkdir()
    for path in model_dir.glob("*"):
        if path.is_file():
            (target / path.name).symlink_to(path)
    return target
