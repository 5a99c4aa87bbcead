"""The benchmark's machine line: which CPU, and whether it has int8 dot-product instructions."""

from __future__ import annotations

from pathlib import Path

from streams.tools.bench import cpu_info

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
