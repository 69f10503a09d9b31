"""minidiff.training: outputs, bit-exact resume, checkpoints, the step's options, bad settings."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import re

import pytest
import torch
from tiny import TINY_ATTENTION_NET as TINY_NET

from minidiff.schedulers.scheduling_ddpm import DDPMScheduler
from minidiff.training import EMA, build_unet, make_train_state, preset, train, train_step
from minidiff.training.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from minidiff.training.config import TrainConfig


def tiny(tmp_path, **overrides) -> TrainConfig:
    """A run of a few seconds: 20 digits at 8x8 in batches of 8 (3 batches per epoch, the last one short)."""
    settings = dict(
        TINY_NET,
        limit=20,
        batch_size=8,
        max_steps=4,
        warmup_steps=2,
        mixed_precision="no",  # pinned: "auto" measures, and runs compared bit for bit must not differ
        ema_decay=0.9,
        sample_steps=2,
        num_samples=2,
        device="cpu",
        progress=False,
        out_dir=str(tmp_path / "run"),
    )
    settings.update(overrides)
    return preset("tiny", **settings)


def _batch(seed: int, n: int = 8):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.rand(n, 1, 8, 8, generator=g) * 2 - 1,
        torch.randn(n, 1, 8, 8, generator=g),
        torch.randint(0, 1000, (n,), generator=g),
    )


def test_run_writes_every_output_and_diffusers_loads_the_model(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    result = train(tiny(tmp_path, sample_every=1))
    assert result.steps == 4 and len(result.losses) == 4 and all(0 < v < 10 for v in result.losses)
    assert result.epochs_completed == 1  # 4 steps of 3 batches per epoch
    with open(result.loss_csv) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert [float(r["loss"]) for r in rows] == result.losses
    for path in (result.loss_png, result.samples_png, *result.sample_grids):
        assert path.stat().st_size > 0
    assert [p.name for p in result.sample_grids] == ["epoch-0001.png"]
    pipe = diffusers.DDPMPipeline.from_pretrained(result.model_dir)
    assert pipe.unet.config.sample_size == 8 and pipe.scheduler.config.beta_schedule == "squaredcos_cap_v2"
    # EMA on: the saved weights are the EMA's, not the raw model's
    unet_ema = pipe.unet.state_dict()
    raw = build_unet(tiny(tmp_path), channels=1)
    assert any(not torch.equal(unet_ema[k], v) for k, v in raw.state_dict().items())


@pytest.mark.parametrize("accum", [1, 2])
def test_resume_gives_bit_identical_weights(tmp_path, accum):
    """2N steps straight == N steps, stop, resume for N more: same weights, EMA and losses, bit for bit.
    N = 3 crosses an epoch boundary (3 micro-batches per epoch) and flips are on. (A warm-up within 20% of
    both runs: a longer one is fitted to each run's length, so 3 steps and 6 would not share their lrs.)"""
    extra = dict(
        flip=True, grad_clip=1.0, grad_accum=accum, checkpoint_every=2, keep_checkpoints=2, warmup_steps=1
    )
    straight = train(tiny(tmp_path / "a", max_steps=6, **extra))
    first = train(tiny(tmp_path / "b", max_steps=3, **extra))
    resumed = train(tiny(tmp_path / "b", max_steps=6, resume=True, **extra))
    assert first.losses == resumed.losses[:3] and resumed.losses == straight.losses
    a, b = load_checkpoint(straight.checkpoints[-1]), load_checkpoint(resumed.checkpoints[-1])
    for part in ("model", "ema"):
        sa = a[part] if part == "model" else a[part]["model"]
        sb = b[part] if part == "model" else b[part]["model"]
        assert all(torch.equal(sa[k], sb[k]) for k in sa), part
    assert [p.name for p in resumed.checkpoints] == ["step-00000004.pt", "step-00000006.pt"]  # keep 2


def test_checkpoint_file_is_data_only_and_atomic(tmp_path):
    path = save_checkpoint(tmp_path / "ckpts" / "step-00000001.pt", {"w": torch.ones(2), "step": 1})
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind
    assert load_checkpoint(path)["step"] == 1
    torch.save({"obj": argparse.Namespace(a=1)}, tmp_path / "ckpts" / "step-00000002.pt")
    with pytest.raises(ValueError, match="could not be read"):  # weights_only refuses arbitrary objects
        load_checkpoint(tmp_path / "ckpts" / "step-00000002.pt")
    (tmp_path / "ckpts" / ".step-00000003.pt.tmp-1").write_bytes(b"half")
    assert [p.name for p in list_checkpoints(tmp_path / "ckpts")] == ["step-00000001.pt", "step-00000002.pt"]


def test_old_checkpoints_need_resume_and_same_settings(tmp_path):
    train(tiny(tmp_path, max_steps=2, checkpoint_every=2))
    with pytest.raises(FileExistsError, match="resume"):
        train(tiny(tmp_path, max_steps=2, checkpoint_every=2))
    trained_lr = re.escape(repr(tiny(tmp_path).lr))  # the tiny preset's lr, then another
    with pytest.raises(ValueError, match=rf"lr=0\.002 \(the checkpoint's is {trained_lr}\)"):
        train(tiny(tmp_path, max_steps=4, checkpoint_every=2, resume=True, lr=2e-3))


def test_a_checkpoint_from_before_a_setting_existed_resumes_at_its_default(tmp_path):
    """A checkpoint whose saved config lacks a later setting (weighting_scheme, added in 0.4.0) counts as
    trained with that setting's default: it resumes under the default and is refused under another value."""
    uniform = dict(max_steps=4, checkpoint_every=2, weighting_scheme="none", logit_std=1.0)
    train(tiny(tmp_path, max_steps=2, checkpoint_every=2, weighting_scheme="none", logit_std=1.0))
    path = tmp_path / "run" / "checkpoints" / "step-00000002.pt"
    ckpt = load_checkpoint(path)
    for key in ("weighting_scheme", "logit_mean", "logit_std"):
        del ckpt["config"][key]
    save_checkpoint(path, ckpt)
    with pytest.raises(ValueError, match=r"weighting_scheme='logit_normal' \(the checkpoint's is 'none'\)"):
        train(tiny(tmp_path, **{**uniform, "weighting_scheme": "logit_normal"}, resume=True))
    assert train(tiny(tmp_path, **uniform, resume=True)).steps == 4


def test_gradient_accumulation_equals_one_big_batch():
    """Two micro-batches of 4 give the gradient (and loss) of one batch of 8: the mean of the means."""
    config = TrainConfig(**TINY_NET, lr=1e-3, device="cpu")
    x, noise, t = _batch(0)
    results = []
    for micro_batches in ([(x, noise, t)], [(x[:4], noise[:4], t[:4]), (x[4:], noise[4:], t[4:])]):
        state = make_train_state(
            config, build_unet(config, 1), DDPMScheduler(beta_schedule="squaredcos_cap_v2"), total_steps=10
        )
        grads = []  # the gradients AdamW sees, caught just before its step
        params = list(state.unet.parameters())
        state.optimizer.register_step_pre_hook(
            lambda opt, args, kwargs, grads=grads, params=params: grads.extend(p.grad.clone() for p in params)
        )
        results.append((train_step(state, micro_batches), grads))
    (loss_big, grads_big), (loss_acc, grads_acc) = results
    # float32 sums taken in another order: rounding only (~1e-7 relative); a sum instead of a mean is 2x off
    torch.testing.assert_close(loss_acc, loss_big, rtol=1e-6, atol=1e-7)
    for g_big, g_acc in zip(grads_big, grads_acc, strict=True):
        torch.testing.assert_close(g_acc, g_big, rtol=1e-4, atol=1e-6)


def test_warmup_ema_and_mixed_precision_steps():
    config = TrainConfig(**TINY_NET, lr=1e-3, warmup_steps=4, ema_decay=0.99, device="cpu")
    state = make_train_state(
        config, build_unet(config, 1), DDPMScheduler(beta_schedule="squaredcos_cap_v2"), total_steps=10
    )
    assert state.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 / 4)  # step 1 of the warm-up
    train_step(state, [_batch(1)])
    assert state.optimizer.param_groups[0]["lr"] == pytest.approx(2e-3 / 4)
    # diffusers' EMAModel: the first update moves the EMA onto the weights (d_1 = 0; e - 1 * (e - p) = p up
    # to one rounding), the second uses d_2 = 2 / 11
    for e, p in zip(state.ema.model.parameters(), state.unet.parameters()):
        torch.testing.assert_close(e, p, rtol=1e-6, atol=1e-7)
    before = [p.detach().clone() for p in state.ema.model.parameters()]
    train_step(state, [_batch(2)])
    d = min(0.99, 2 / 11)
    for e0, e1, p in zip(before, state.ema.model.parameters(), state.unet.parameters()):
        torch.testing.assert_close(e1, d * e0 + (1 - d) * p, rtol=1e-6, atol=1e-7)  # one lerp: rounding only

    for precision in ("bf16", "fp16"):
        config = dataclasses.replace(config, mixed_precision=precision)
        state = make_train_state(
            config, build_unet(config, 1), DDPMScheduler(beta_schedule="squaredcos_cap_v2"), total_steps=10
        )
        loss = train_step(state, [_batch(2)])
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        assert (state.grad_scaler is not None) == (precision == "fp16")


def test_non_finite_loss_stops_with_the_step(tmp_path):
    with pytest.raises(FloatingPointError, match=r"loss is (nan|inf) at step \d+"):
        train(tiny(tmp_path, lr=1e30, warmup_steps=0, ema_decay=0.0, max_steps=6, log_every=1))


def test_unwritable_output_folder_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PermissionError, match="not writable"):
        train(tiny(tmp_path, out_dir=str(blocker / "run")))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("mixed_precision", "fp8", "mixed_precision='fp8'"),
        ("batch_size", 0, "batch_size=0"),
        ("ema_decay", 1.0, "ema_decay=1.0"),
        ("lr", float("nan"), "lr=nan"),
        ("grad_accum", 0, "grad_accum=0"),
        ("sampler", "heun", "sampler='heun'"),
        ("max_steps", -1, "max_steps=-1"),
        ("up_block_types", ("UpBlock2D",), "one down and one up block type"),
    ],
)
def test_bad_settings_name_the_value(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        train(tiny(tmp_path, **{field: value}))


def test_presets():
    assert preset("tutorial") == TrainConfig()
    t = preset("tutorial")
    assert (t.epochs, t.batch_size, t.lr, t.beta_schedule, t.flip) == (
        30,
        64,
        4e-4,
        "squaredcos_cap_v2",
        True,
    )
    with pytest.raises(ValueError, match="preset 'huge'"):
        preset("huge")
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        preset("tiny", learning_rate=1.0)


def test_ema_state_round_trip():
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, 0.9)
    ema.update(model)
    other = EMA(torch.nn.Linear(2, 2), 0.9)
    other.load_state_dict(ema.state_dict())
    assert other.optimization_step == 1 and torch.equal(other.model.weight, ema.model.weight)
