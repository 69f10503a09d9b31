"""mixed_precision="auto": bf16 only where a measured step is faster; an explicit bf16 that is slower warned about
once; the same losses with the AVX2 hold as without (same model, different speed); the lr warm-up fitted to the
run; the end-of-run grid's sampler from the steps trained."""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import minidiff.training.precision as precision
from minidiff.training import build_unet, preset, train
from minidiff.training.precision import choose_precision, resolve_precision

AVX2_HOLD = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
SMALL = dict(
    image_size=8, limit=40, batch_size=8, sample_steps=2, num_samples=1, device="cpu", progress=False
)
ROOT = Path(__file__).parents[1]


def _small_unet(config):
    return build_unet(config, 1)


@pytest.mark.parametrize("factor, chosen", [(0.8, "bf16"), (6.7, "no")])
def test_auto_keeps_bf16_only_where_measured_faster(monkeypatch, factor, chosen):
    monkeypatch.setattr(precision, "bf16_factor", lambda *a, **k: factor)
    config = preset("tiny", **SMALL)
    choice = choose_precision(config, _small_unet(config), 1, torch.device("cpu"))
    assert choice.mixed_precision == chosen and choice.factor == factor
    assert f"{factor:.2f}x" in choice.line and choice.warning is None
    assert ("bf16 autocast" if chosen == "bf16" else "fp32") in choice.line


def test_explicit_bf16_that_is_slower_warns_once_with_its_cost(monkeypatch, caplog):
    monkeypatch.setattr(precision, "bf16_factor", lambda *a, **k: 6.7)
    monkeypatch.setattr(precision, "native_bf16", lambda: False)
    monkeypatch.setattr(precision, "_WARNED", set())
    config = preset("tiny", mixed_precision="bf16", **SMALL)
    unet = _small_unet(config)
    with caplog.at_level(logging.WARNING, logger="minidiff.training.precision"):
        resolved, choice = resolve_precision(config, unet, 1, torch.device("cpu"))
        resolve_precision(config, unet, 1, torch.device("cpu"))
    assert resolved.mixed_precision == "bf16"  # as set: kept, with the cost said
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "6.7x the time of fp32" in warnings[0] and "auto" in warnings[0]


def test_explicit_bf16_that_is_faster_on_native_bf16_is_quiet(monkeypatch):
    monkeypatch.setattr(precision, "bf16_factor", lambda *a, **k: 0.8)
    monkeypatch.setattr(precision, "native_bf16", lambda: True)
    config = preset("tiny", mixed_precision="bf16", **SMALL)
    choice = choose_precision(config, _small_unet(config), 1, torch.device("cpu"))
    assert choice.mixed_precision == "bf16" and choice.warning is None


def test_auto_on_cuda_is_bf16_where_supported_without_timing(monkeypatch):
    def no_probe(*args, **kwargs):
        raise AssertionError("auto on CUDA must not time steps")

    monkeypatch.setattr(precision, "bf16_factor", no_probe)
    config = preset("tiny", **SMALL)
    for supported, chosen in ((True, "bf16"), (False, "no")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda s=supported: s)
        choice = choose_precision(config, _small_unet(config), 1, torch.device("cuda"))
        assert choice.mixed_precision == chosen and choice.factor is None


def test_the_probe_measures_the_run_without_touching_it():
    config = preset("tiny", **SMALL)
    unet = _small_unet(config)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    rng = torch.get_rng_state()
    factor = precision.bf16_factor(unet, 4, 1, 8, rounds=1)
    assert factor > 0 and all(torch.equal(before[k], v) for k, v in unet.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state()) and all(p.grad is None for p in unet.parameters())


def test_a_run_records_the_precision_it_chose(tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "bf16_factor", lambda *a, **k: 6.7)
    out = tmp_path / "run"
    result = train(preset("tiny", out_dir=str(out), max_steps=3, **SMALL))
    assert json.loads((out / "config.json").read_text())["mixed_precision"] == "no"
    assert result.steps == 3


_LOSSES = """
import json, torch
from minidiff.training import preset, build_unet, build_noise_scheduler
from minidiff.training.step import make_train_state, train_step
torch.set_num_threads(1)
config = preset("tiny", mixed_precision="no", image_size=8, batch_size=8)
unet = build_unet(config, 1)
state = make_train_state(config, unet, build_noise_scheduler(config), 10)
g = torch.Generator().manual_seed(0)
losses = []
for _ in range(10):
    x = torch.rand(8, 1, 8, 8, generator=g) * 2 - 1
    eps, t = torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 1000, (8,), generator=g)
    losses.append(train_step(state, [(x, eps, t)]).item())
print(json.dumps([torch.backends.cpu.get_cpu_capability(), losses]))
"""


def _losses(env: dict[str, str]) -> tuple[str, list[float]]:
    done = subprocess.run(
        [sys.executable, "-c", _LOSSES], env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    return tuple(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the AVX2 hold is for x86 CPUs")
def test_the_same_first_ten_losses_under_the_avx2_hold():
    """Same seed, same batches, fp32: the AVX2 kernels train the same model up to float rounding."""
    native_cap, native = _losses({})
    held_cap, held = _losses(AVX2_HOLD)
    assert held_cap == "AVX2"
    assert native == pytest.approx(held, rel=1e-4), (native_cap, native, held)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the AVX2 hold is for x86 CPUs")
def test_auto_trains_fp32_under_the_avx2_hold():
    code = (
        "import torch; from minidiff.training import preset, build_unet; "
        "from minidiff.training.precision import choose_precision, native_bf16; torch.set_num_threads(1); "
        "c = preset('tiny', batch_size=16); "
        "print(native_bf16(), choose_precision(c, build_unet(c, 1), 1, torch.device('cpu')).mixed_precision)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT), **AVX2_HOLD},
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    assert done.stdout.split()[-2:] == ["False", "no"]


def test_the_warmup_fits_the_run_and_says_so(tmp_path, caplog):
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="minidiff.training.loop"):
        train(preset("tiny", out_dir=str(out), max_steps=10, mixed_precision="no", **SMALL))
    saved = json.loads((out / "config.json").read_text())
    assert saved["warmup_steps"] == 2  # 20% of 10 steps, not the preset's 100
    assert any("lr warm-up: 2 steps instead of 100" in r.getMessage() for r in caplog.records)


def test_the_grid_sampler_follows_the_steps_trained(tmp_path, monkeypatch):
    """A run planned long (a DDPM grid) that a time budget stops early draws its grid with DDIM's 50 steps."""
    import minidiff.training.loop as loop

    seen = []
    real = loop.plan_grid
    monkeypatch.setattr(
        loop, "plan_grid", lambda unet, config, *a: seen.append(config) or real(unet, config, *a)
    )
    out = tmp_path / "run"
    config = preset("tiny", out_dir=str(out), max_steps=5000, time_budget=0.5, mixed_precision="no",
                    **{**SMALL, "sample_steps": None})  # fmt: skip
    result = train(config)
    assert result.steps < 500 and json.loads((out / "config.json").read_text())["sampler"] == "ddpm"
    assert (seen[0].sampler, seen[0].sample_steps) == ("ddim", 50)
