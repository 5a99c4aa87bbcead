"""``bench --consumer`` on the embedded broker: each variant's Faust app takes every event of its
topic (a variant that lost or stalled on events would not report a rate)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.settings import Settings
from streams.tools.bench_consumer import run_consumer_bench

pytestmark = pytest.mark.integration


def test_both_consumers_take_every_event_and_the_ratio_is_of_their_rates(tmp_path: Path) -> None:
    said: list[str] = []
    result = run_consumer_bench(Settings.from_env(env={}, state_dir=str(tmp_path)), events=300, work_ms=0.0,
                                rounds=1, say=said.append)
    mode, lean = result["mode_wait_events_per_s"], result["lean_events_per_s"]
    assert len(mode) == len(lean) == 1 and mode[0] > 0 and lean[0] > 0
    assert result["lean_over_mode"] == pytest.approx(lean[0] / mode[0], abs=0.01)
    assert [line.split(":")[1].split()[0] for line in said] == ["mode", "lean"]
