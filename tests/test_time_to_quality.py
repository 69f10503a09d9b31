"""python -m benchmarks.time_to_quality --quick: both recipes trained in turns and scored, the crossings read
off the curves, the CSV, JSON and plot written (structure only: no timing or quality asserted)."""

from __future__ import annotations

import csv
import json
import math

import pytest

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
    assert {"cpu", "cores", "amx", "torch"} <= set(summary["hardware"])
    assert (out / "time_to_quality.png").stat().st_size > 0


def test_crossing_is_read_between_the_readings_around_it():
    readings = [(10.0, 40.0), (20.0, 20.0), (30.0, 12.0), (40.0, 8.0)]
    assert crossing(readings, 20.0) == 20.0
    assert crossing(readings, 10.0) == 35.0  # halfway from 12 to 8
    assert crossing(readings, 50.0) == 10.0  # the first reading already below
    assert crossing(readings, 5.0) is None
