"""The reference tutorial (diffusers) and minidiff's training step agree, step for step.

Both loops get the same initial weights, the same batches, the same noise and the same timesteps;
minidiff's side runs the real `minidiff.training.train_step` (the function `train()` calls).
"""

from __future__ import annotations

import functools

import pytest
import torch
from PIL import Image
from tiny import TINY_ATTENTION_NET

from minidiff.data import load_dataset
from minidiff.parity import to_diffusers_unet
from minidiff.schedulers.scheduling_ddpm import DDPMScheduler
from minidiff.training import build_unet, loss_fn, make_train_state, train_step
from minidiff.training.config import TrainConfig
from reference import tutorial

diffusers = pytest.importorskip("diffusers")

STEPS = 20
TINY = TrainConfig(
    data="digits",
    **TINY_ATTENTION_NET,
    lr=4e-4,
    device="cpu",
)


@functools.lru_cache(maxsize=1)
def _digits() -> torch.Tensor:
    return torch.stack(
        list(load_dataset("digits", TINY.image_size, flip=False, limit=STEPS * 8))
    )  # (160, 1, 8, 8)


def _inputs(batch_size: int = 8):
    """STEPS batches of real digits and, per step, noise and timesteps from one seeded generator."""
    images = _digits()[: STEPS * batch_size]
    batches = list(images.split(batch_size))  # STEPS x (B, 1, 8, 8)
    generator = torch.Generator().manual_seed(0)
    draws = [
        (
            torch.randn(b.shape, generator=generator),
            torch.randint(0, 1000, (batch_size,), generator=generator),
        )
        for b in batches
    ]
    return batches, draws


def test_loss_sequence_matches_diffusers_tutorial_loop():
    batches, draws = _inputs()
    ours = build_unet(TINY, channels=1)
    theirs = to_diffusers_unet(ours)  # same initial weights

    reference_losses = tutorial.train_loop(
        theirs,
        diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2"),
        batches,
        epochs=1,
        lr=TINY.lr,
        noise_and_timesteps=draws,
        log=None,
    )
    state = make_train_state(
        TINY, ours, DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2"), STEPS
    )
    our_losses = [train_step(state, [(x, n, t)]).item() for x, (n, t) in zip(batches, draws)]

    assert len(reference_losses) == len(our_losses) == STEPS
    # fp32 on the CPU: both UNets do the same ops up to kernel choice, so the losses agree to float32
    # rounding accumulated over 20 AdamW steps (measured: 13 of 20 bit-equal, worst 1.6e-7 relative);
    # rtol 1e-5 leaves room for other CPUs' kernels and still catches any wrong term (>1e-3 effects).
    torch.testing.assert_close(torch.tensor(our_losses), torch.tensor(reference_losses), rtol=1e-5, atol=1e-7)
    # The weights they end at. Each AdamW step moves a weight by about lr = 4e-4 whatever the gradient's
    # size, so where a gradient is ~0 rounding noise can flip a step's sign: atol 3e-5 (<1% of the 20 * lr
    # a weight can travel; measured worst 7e-6). Key biases are skipped: softmax ignores a constant added
    # to every key, so their true gradient is exactly 0 and AdamW turns float noise into lr-sized steps.
    for name, value in theirs.state_dict().items():
        if not name.endswith("to_k.bias"):
            torch.testing.assert_close(ours.state_dict()[name], value, rtol=0, atol=3e-5, msg=name)


def test_loss_fn_matches_the_tutorial_formula():
    """loss_fn is exactly F.mse_loss(unet(add_noise(x0, eps, t), t), eps) with diffusers' pieces."""
    batches, draws = _inputs(batch_size=4)
    ours = build_unet(TINY, channels=1)
    theirs = to_diffusers_unet(ours)
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    x0, (noise, t) = batches[0], draws[0]
    with torch.no_grad():
        expected = torch.nn.functional.mse_loss(theirs(scheduler.add_noise(x0, noise, t), t).sample, noise)
        got = loss_fn(ours, DDPMScheduler(beta_schedule="squaredcos_cap_v2"), x0, noise, t)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)  # one forward pass: fp32 rounding only


def test_reference_tutorial_pieces_run_offline():
    """The tutorial's helpers on a local batch: grid pictures, the noising demo, both sampling ways."""
    x = torch.rand(8, 3, 8, 8) * 2 - 1
    grid = tutorial.show_images(x)
    assert isinstance(grid, Image.Image) and grid.size == (8 * 8 + 9 * 2, 8 + 2 * 2)
    assert tutorial.make_grid([grid, grid], size=16).size == (32, 16)
    timesteps, noisy = tutorial.noising_demo(x, generator=torch.Generator().manual_seed(0))
    assert timesteps.tolist() == torch.linspace(0, 999, 8).long().tolist() and noisy.shape == x.shape

    unet = tutorial.build_unet(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000)
    generator = torch.Generator().manual_seed(0)
    images = tutorial.sample_with_pipeline(
        unet, scheduler, batch_size=2, generator=generator, num_inference_steps=4
    )
    assert len(images) == 2 and images[0].size == (8, 8)
    scheduler.set_timesteps(4)
    by_hand = tutorial.sample_by_hand(
        unet, scheduler, batch_size=2, generator=torch.Generator().manual_seed(0)
    )
    assert by_hand.shape == (2, 3, 8, 8) and torch.isfinite(by_hand).all()


def test_tutorial_unet_matches_the_tutorial_config():
    unet = tutorial.build_unet()
    assert unet.config.block_out_channels == (64, 128, 128, 256) or list(unet.config.block_out_channels) == [
        64,
        128,
        128,
        256,
    ]
    assert unet.config.layers_per_block == 2 and unet.config.sample_size == 32
    ours = build_unet(TrainConfig(), channels=3)
    assert sorted(ours.state_dict()) == sorted(unet.state_dict())  # the tutorial preset builds the same net


def test_hub_downloads_fail_fast_offline(monkeypatch):
    # huggingface_hub and datasets read HF_HUB_OFFLINE at import: set the parsed flags too
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match="could not load the pipeline"):
        tutorial.load_pretrained_pipeline("johnowhitaker/ddpm-butterflies-32px")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(OSError, match="could not load the dataset"):
        tutorial.build_dataset("huggan/smithsonian_butterflies_subset")
