"""The benchmark's machine line (which CPU, and whether it has int8 dot-product instructions) and
its account of where the cores went."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from streams.tools.bench import CoresBusy, cpu_info

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu avx2 avx512f avx512_vnni amx_int8 amx_tile

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu avx2 avx512f avx512_vnni amx_int8 amx_tile
"""


def test_cpu_info_reads_the_first_processors_model_and_flags(tmp_path: Path) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    model, flags = cpu_info(path)
    assert model == "Intel(R) Xeon(R) Platinum 8480+"
    assert {"avx512_vnni", "amx_int8", "avx2"} <= flags and "processor" not in flags


def test_cpu_info_without_proc_says_unknown(tmp_path: Path) -> None:
    assert cpu_info(tmp_path / "missing") == ("unknown CPU", set())


def test_cores_busy_tells_a_busy_process_from_a_sleeping_one() -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.3)  # its start-up out of the way
        with CoresBusy({"me": os.getpid(), "sleeper": sleeper.pid}) as cores:
            end = time.process_time() + 0.5
            while time.process_time() < end:
                pass
    finally:
        sleeper.kill()
        sleeper.wait()
    assert cores.shares["me"] >= 0.25  # ~1 alone; a loaded machine stretches the wall time
    assert cores.shares["sleeper"] <= 0.05
