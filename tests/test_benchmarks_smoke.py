"""The multi-GPU benchmarks run end to end on 2 CPU ranks (gloo) at the tiny preset, and their parallel outputs equal
the single-rank ones: a benchmark that no longer runs against the runtime's API fails here, not on a lent GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("cfg_parallel", [False, True], ids=["ulysses", "cfg-parallel"])
def test_bench_parallel_on_two_cpu_ranks(cfg_parallel):
    from benchmarks import bench_parallel

    argv = ["--num-gpus", "2", "--preset", "tiny", "--device", "cpu", "--grid", "2,4,8", "--dtype", "fp32",
            "--warmup", "1", "--repeats", "1", "--attention-backend", "auto"] + (["--cfg-parallel"] * cfg_parallel)
    report = bench_parallel.main(argv)
    assert report["cfg_parallel"] is cfg_parallel and list(report["attention_backends"]) == ["sdpa", "sdpa"]
    assert report["max_abs"] == 0.0  # the guided step on 2 ranks is the 1-rank one


def test_bench_cp_on_two_cpu_ranks(tmp_path):
    out = tmp_path / "cp.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_cp.py"), "--world-sizes", "1,2", "--device",
                        "cpu", "--preset", "tiny", "--frames", "5", "--height", "32", "--width", "64", "--warmup", "1",
                        "--repeats", "1", "--cfg-parallel-gpus", "2", "--ulysses-chunks", "1,2", "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    sides = {row["side"] for row in rows if row["gpus"] == 2}
    assert {"vidport Ulysses", "vidport Ulysses, all-to-all + reorder", "diffusers CP (ulysses_degree=2)",
            "vidport CFG-parallel (2 x 1-way Ulysses)"} <= sides
    for row in rows:  # every parallel row gives its own side's 1-rank output
        assert row["rel_l2_vs_own_1gpu"] in (0.0, None), row


@pytest.mark.parametrize("argv", [
    ["bench_generate.py", "--preset", "tiny", "--device", "cpu", "--steps", "3"],
    ["bench_ltx.py", "dit", "--smoke"],
    ["bench_ltx.py", "generate", "--smoke"],
    ["bench_sp.py", "--world-sizes", "1,2", "--preset", "tiny", "--device", "cpu", "--frames", "5", "--height", "32",
     "--width", "64", "--repeats", "1"],
], ids=lambda a: " ".join(a[:2]))
def test_benchmark_cpu_smoke_runs(argv, tmp_path):
    """The benchmarks' own CPU smoke modes (tiny presets) still run against the runtime's API."""
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / argv[0]), *argv[1:]], capture_output=True,
                       text=True, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
