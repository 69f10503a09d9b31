"""`train(config)` with fast=True (FastTrainer's loop): same outputs, same loss curve as the plain loop."""

import pytest

from minidiff.training import preset, train

SMALL = dict(
    image_size=16,
    block_out_channels=(16, 32),
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=8,
    limit=256,
    batch_size=32,
    max_steps=60,
    warmup_steps=10,
    num_samples=2,
    sample_steps=3,
    log_every=7,
    progress=False,
)


def test_fast_run_writes_the_plain_runs_outputs_and_learns_like_it(tmp_path):
    plain = train(preset("tiny", out_dir=str(tmp_path / "plain"), **SMALL))
    fast = train(preset("tiny", out_dir=str(tmp_path / "fast"), fast=True, **SMALL))

    # every output of the plain loop, one loss per step, the model folder loads
    assert len(fast.losses) == fast.steps == 60
    for path in (fast.loss_csv, fast.loss_png, fast.samples_png, fast.model_dir / "model_index.json"):
        assert path.exists(), path
    assert len(fast.loss_csv.read_text().splitlines()) == 61  # header + one row per step
    from minidiff import DDPMPipeline

    DDPMPipeline.from_pretrained(fast.model_dir)

    # `minidiff sample --fast` follows the seed -> output rule of the plain pipeline (on the CPU: equal)
    from minidiff.cli import main

    for flag in ("--fast", "--quiet"):
        args = ["sample", "--model", str(fast.model_dir), "--num", "2", "--steps", "5", "--seed", "3"]
        assert main([*args, flag, "--out", str(tmp_path / f"{flag[2:]}.png")]) == 0
    assert (tmp_path / "fast.png").read_bytes() == (tmp_path / "quiet.png").read_bytes()
    assert main([*args, "--fast", "--scheduler", "ddim"]) == 1  # DDPM only: refused, named

    # Same init, same settings, other random draws (device generator): the curves agree in distribution.
    # The first losses are ~1 for both (eps_theta ~ 0 at init); after 60 steps both have dropped well
    # below; the means of the last 20 steps agree within 25% (measured: 0.184 plain, 0.201 fast).
    assert abs(fast.losses[0] - plain.losses[0]) < 0.15
    late_plain, late_fast = (sum(x.losses[-20:]) / 20 for x in (plain, fast))
    assert late_fast < 0.6 * fast.losses[0] and late_plain < 0.6 * plain.losses[0]
    assert abs(late_fast - late_plain) / late_plain < 0.25


@pytest.mark.parametrize(
    "override, named",
    [
        ({"grad_accum": 2}, "grad_accum"),
        ({"mixed_precision": "fp16"}, "fp16"),
        ({"checkpoint_every": 5}, "checkpoint_every"),
        ({"resume": True}, "resume"),
    ],
)
def test_fast_refuses_what_it_does_not_support(tmp_path, override, named):
    with pytest.raises(ValueError, match=named):
        train(preset("tiny", out_dir=str(tmp_path), fast=True, **{**SMALL, **override}))
    assert not (tmp_path / "loss.csv").exists()  # refused before anything was written


def test_fast_refuses_several_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="torchrun"):
        train(preset("tiny", out_dir=str(tmp_path), fast=True, **SMALL))


def test_fast_nan_loss_names_the_step(tmp_path):
    with pytest.raises(FloatingPointError, match="at step"):
        train(preset("tiny", out_dir=str(tmp_path), fast=True, **{**SMALL, "lr": 1e30, "max_steps": 14}))
