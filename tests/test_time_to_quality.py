"""python -m benchmarks.time_to_quality --quick: both recipes trained in turns and scored, the crossings read
off the curves, the CSV, JSON and plot written (structure only: no timing or quality asserted)."""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.time_to_quality import RECIPES, THRESHOLDS, crossing, main


def test_quick_run_writes_readings_summary_and_plot(tmp_path):
    pytest.importorskip("diffusers")
    out = tmp_path / "ttq"
    argv = ["--quick", "--out", str(out), "--train-seconds", "1", "--interval", "0.5", "--threads", "1"]
    assert main(argv + ["--sampler-settings", "ddim:2"]) == 0
    with open(out / "time_to_quality.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for name in RECIPES:
        mine = [r for r in rows if r["recipe"] == name]
        assert len(mine) == 2, name  # one reading per interval
        seconds = [float(r["train_seconds"]) for r in mine]
        assert seconds == sorted(seconds) and int(mine[-1]["steps"]) >= int(mine[0]["steps"]) >= 1
        assert all(math.isfinite(float(r["digit_fid"])) and int(r["samples"]) == 70 for r in mine)
    assert {r["sampler"] for r in rows if r["recipe"] == "diffusers"} == {"ddpm:10"}
    summary = json.loads((out / "time_to_quality.json").read_text())
    assert set(summary["thresholds"]) == {str(t) for t in THRESHOLDS}
    assert all(set(v) == {*RECIPES, "ratio", "upper_bounds"} for v in summary["thresholds"].values())
    assert [s["sampler"] for s in summary["samplers"]] == ["ddim:2"]
    assert {"cpu", "cores", "amx", "torch", "cpu_capability", "native_bf16", "avx2_hold"} <= set(
        summary["hardware"]
    )
    assert summary["hardware"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert summary["settings"]["minidiff_config"]["mixed_precision"] in ("no", "bf16")  # "auto", resolved
    assert (out / "time_to_quality.png").stat().st_size > 0


def test_crossing_is_read_between_the_readings_around_it():
    readings = [(10.0, 40.0), (20.0, 20.0), (30.0, 12.0), (40.0, 8.0)]
    assert crossing(readings, 20.0) == 20.0
    assert crossing(readings, 10.0) == 35.0  # halfway from 12 to 8
    assert crossing(readings, 50.0) == 10.0  # the first reading already below
    assert crossing(readings, 5.0) is None


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the AVX2 hold is for x86 CPUs")
def test_avx2_flag_runs_the_benchmark_under_the_hold(tmp_path):
    """--avx2 starts the benchmark again with torch and oneDNN held to AVX2; the JSON says so."""
    pytest.importorskip("diffusers")
    out = tmp_path / "ttq"
    argv = ["--avx2", "--quick", "--out", str(out), "--train-seconds", "0.5", "--interval", "0.5", "--threads", "1",
            "--sampler-settings", "ddim:2"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
    root = Path(__file__).parents[1]
    done = subprocess.run([sys.executable, "-m", "benchmarks.time_to_quality", *argv], cwd=root,
                          env={**env, "PYTHONPATH": str(root)}, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    hardware = json.loads((out / "time_to_quality.json").read_text())["hardware"]
    assert hardware["avx2_hold"] and hardware["cpu_capability"] == "AVX2" and not hardware["native_bf16"]
