"""A parity test of your own: minidiff against diffusers, number for number.

pip install 'minidiff[reference]'     # diffusers, transformers and pytest
pytest docs_example_test.py           # beside the conftest.py (or pytest.ini) of docs/parity.md
"""

import diffusers
import pytest
import torch

import minidiff

SCHEDULERS = [
    "DDPMScheduler",
    "DDIMScheduler",
    "PNDMScheduler",
    "DPMSolverMultistepScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
]
TINY_UNET = dict(
    sample_size=8,
    in_channels=1,
    out_channels=1,
    layers_per_block=1,
    block_out_channels=(8, 16),
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=4,
)


@pytest.mark.parametrize("name", SCHEDULERS)
def test_a_sampling_run_is_bit_identical(name):
    theirs = getattr(diffusers, name)(beta_schedule="squaredcos_cap_v2")
    ours = getattr(minidiff, name).from_config(theirs.config)  # the same config: the same schedule
    finals = []
    for scheduler in (theirs, ours):
        scheduler.set_timesteps(10)
        generator = torch.Generator().manual_seed(0)  # the same noise for both libraries
        x = torch.randn(2, 1, 8, 8, generator=generator) * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            eps = torch.sin(3 * scheduler.scale_model_input(x, t))  # a stand-in for the UNet's output
            noise = {} if name == "PNDMScheduler" else {"generator": generator}  # PNDM draws no noise
            x = scheduler.step(eps, t, x, **noise).prev_sample
        finals.append(x)
    assert torch.equal(*finals)


def test_the_unet_takes_diffusers_weights_and_gives_the_same_output():
    torch.manual_seed(0)
    theirs = diffusers.UNet2DModel(**TINY_UNET).eval()
    ours = minidiff.UNet2DModel(**TINY_UNET).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)  # diffusers' keys, no mapping table
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 900])
    with torch.no_grad():
        assert torch.equal(ours(x, t).sample, theirs(x, t).sample)
