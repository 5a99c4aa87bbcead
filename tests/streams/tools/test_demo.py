"""The newcomer's path: the demo on embedded services, from the sample catalog in the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streams.settings import Settings
from streams.tools.demo import run_demo
from tests.conftest import free_port

pytestmark = pytest.mark.integration


def test_the_demo_indexes_the_sample_catalog_answers_and_stops_its_services(model_dir: Path, tmp_path: Path, capsys):
    port = free_port()
    settings = Settings.from_env(env={}, state_dir=str(tmp_path), model_dir=str(model_dir), web_port=port)
    assert run_demo(settings) == 0
    out = capsys.readouterr().out
    assert out.rstrip().splitlines()[-1] == "demo ok: 300 products indexed, 9 queries answered"
    assert "re-encoded 0 modalities" in out
    assert _processes_running_in(tmp_path) == []  # broker, redis and worker all stopped


def _processes_running_in(folder: Path) -> list[int]:
    """Pids whose working directory lies in ``folder`` (the services run in their state dir)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and os.readlink(proc / "cwd").startswith(str(folder)):
                found.append(int(proc.name))
        except OSError:
            continue
    return found
