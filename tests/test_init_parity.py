"""The same seed gives the same model: `torch.manual_seed(s); UNet2DModel(**cfg)` in minidiff and diffusers.

A training script written for diffusers, with only its import line changed, must start from the same weights
and therefore give the same losses and images. That needs minidiff to draw its initial weights in diffusers'
order (resnet 0, attention 0, resnet 1, ... in each block) and from the same random calls.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from test_unet import CONFIGS  # noqa: E402  (15 configs: every block type and option minidiff supports)

import minidiff  # noqa: E402
from reference import tutorial  # noqa: E402


@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_same_seed_same_initial_weights(name, seed):
    config, _, _ = CONFIGS[name]
    torch.manual_seed(seed)
    reference = diffusers.UNet2DModel(**config)
    next_reference_draw = torch.rand(4)
    torch.manual_seed(seed)
    model = minidiff.UNet2DModel(**config)
    next_draw = torch.rand(4)
    expected, got = reference.state_dict(), model.state_dict()
    # the same keys in the same order (parameters are registered as diffusers registers them) ...
    assert list(got) == list(expected)
    # ... and bit-identical values, buffers included
    assert [k for k in expected if not torch.equal(got[k], expected[k])] == []
    # the global generator ends in the same state, so what the script draws next is the same too
    assert torch.equal(next_draw, next_reference_draw)


# The tutorial's layout (widths scaled down from 64/128/128/256) on 16x16 RGB images.
TUTORIAL_SMALL = dict(
    sample_size=16,
    in_channels=3,
    out_channels=3,
    layers_per_block=2,
    block_out_channels=(8, 16, 16, 32),
    down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    norm_num_groups=4,
)


def _tutorial_run(library, config: dict, batches: list[torch.Tensor], seed: int = 0):
    """The tutorial's script with `library` in place of `diffusers`: a fresh model from `seed`, its training
    loop (noise and timesteps from the global generator, as the tutorial draws them), then DDPMPipeline."""
    torch.manual_seed(seed)
    model = library.UNet2DModel(**config)
    scheduler = library.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    losses = tutorial.train_loop(model, scheduler, batches, epochs=1, lr=4e-4, log=None)
    pipeline = library.DDPMPipeline(unet=model, scheduler=scheduler)
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(seed)
    images = pipeline(batch_size=2, generator=generator, num_inference_steps=20, output_type="np").images
    return losses, images


def _batches(steps: int, batch_size: int, size: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    return [torch.rand(batch_size, 3, size, size, generator=g) * 2 - 1 for _ in range(steps)]


def test_fresh_models_train_and_sample_alike():
    batches = _batches(steps=8, batch_size=8, size=16)
    reference_losses, reference_images = _tutorial_run(diffusers, TUTORIAL_SMALL, batches)
    losses, images = _tutorial_run(minidiff, TUTORIAL_SMALL, batches)
    assert len(losses) == len(reference_losses) == 8
    # Same initial weights, same draws, same ops: the first forward is bit-identical. The gradients differ in
    # float32 rounding (minidiff sums the time-embedding gradient in another order), so later losses may
    # differ by rounding carried through AdamW (measured: 6 of 8 bit-equal, worst 1.2e-7 relative); rtol 1e-5
    # still catches any real difference (a wrong term changes a loss by > 1e-3).
    assert losses[0] == reference_losses[0]
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(reference_losses), rtol=1e-5, atol=1e-7)
    # 20 DDPM steps from the trained weights, same generator: images in [0, 1] agree to 1e-4 (measured 6e-7:
    # the weights' rounding differences carried through 20 steps; a wrong step would differ by > 1e-2).
    np.testing.assert_allclose(images, reference_images, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_fresh_tutorial_model_trains_alike():
    """The tutorial's real UNet (18.5 M parameters) at 32x32, batch 8, 5 steps (measured: 3 of 5 losses
    bit-equal, worst 1.1e-7 relative)."""
    config = dict(TUTORIAL_SMALL, sample_size=32, block_out_channels=(64, 128, 128, 256), norm_num_groups=32)
    batches = _batches(steps=5, batch_size=8, size=32)
    reference_losses, _ = _tutorial_run(diffusers, config, batches)
    losses, _ = _tutorial_run(minidiff, config, batches)
    assert losses[0] == reference_losses[0]
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(reference_losses), rtol=1e-5, atol=1e-7)
