"""minidiff: the DDPM part of Hugging Face diffusers, hand-written in plain PyTorch.

Swap `from diffusers import X` for `from minidiff import X` and get the same numbers.

The public names below are imported on first use (PEP 562), so `minidiff --help` answers without
loading torch.

The diffusion core, in diffusers' file names:

    schedules.py            beta schedules, zero-SNR rescaling, the forward process (add_noise, get_velocity)
    scheduling_utils.py     what the DDPM and DDIM steps share: x0 / eps from the model output, clipping
                            and thresholding, randn_tensor, timestep spacings
    scheduling_ddpm.py      DDPMScheduler
    scheduling_ddim.py      DDIMScheduler
    layers.py               time embeddings, ResnetBlock2D, Attention (SDPA), down / upsampling
    unet_2d_blocks.py       the down, middle and up blocks, built in diffusers' order
    unet_2d.py              UNet2DModel
    pipeline_utils.py       DiffusionPipeline: components, device moves, progress bar, pipeline folders
    pipeline_ddpm.py        DDPMPipeline and the plain sampling loop (denoise)
    pipeline_ddim.py        DDIMPipeline
    configuration.py        ConfigMixin, SchedulerMixin, FrozenConfig, @register_to_config: diffusers' JSON
                            configs, type checks naming the key
    modeling_utils.py       ModelMixin: safetensors in diffusers' layout, gradient checkpointing, num_parameters
    outputs.py              return objects (diffusers' BaseOutput): .prev_sample, .sample, .images
    files.py                atomic writes, the all-or-nothing folder swap, hub look-ups and offline checks

Around it:

    data.py                 digits / image folder / hub dataset, the tutorial's preprocessing
    viz.py, utils.py        image grids (make_image_grid also at diffusers' path minidiff.utils), noising
                            strip, SNR plot, loss plot
    parity.py               the parity microscope compare_unet; moving a UNet between diffusers and minidiff
    cli.py, __main__.py     the `minidiff` command
    training/               training runs (see minidiff.training)
    quality/                sample quality: digit FID and KID (see minidiff.quality)
    fast/                   the GPU fast paths (see minidiff.fast)

Imports run core <- quality <- training <- cli, never back up.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "ConfigMixin": "minidiff.configuration",
    "FrozenConfig": "minidiff.configuration",
    "SchedulerMixin": "minidiff.configuration",
    "DDPMScheduler": "minidiff.scheduling_ddpm",
    "DDIMScheduler": "minidiff.scheduling_ddim",
    "DPMSolverMultistepScheduler": "minidiff.scheduling_dpmsolver_multistep",
    "PNDMScheduler": "minidiff.scheduling_pndm",
    "EulerDiscreteScheduler": "minidiff.scheduling_euler_discrete",
    "EulerAncestralDiscreteScheduler": "minidiff.scheduling_euler_ancestral_discrete",
    "ModelMixin": "minidiff.modeling_utils",
    "UNet2DModel": "minidiff.unet_2d",
    "DiffusionPipeline": "minidiff.pipeline_utils",
    "DDPMPipeline": "minidiff.pipeline_ddpm",
    "DDIMPipeline": "minidiff.pipeline_ddim",
    "make_image_grid": "minidiff.viz",
    "FastDDPMSampler": "minidiff.fast",
    "FastTrainer": "minidiff.fast",
    "TrainConfig": "minidiff.training",
    "TrainResult": "minidiff.training",
    "preset": "minidiff.training",
    "train": "minidiff.training",
}

__all__ = [
    "ConfigMixin",
    "DDIMPipeline",
    "DDIMScheduler",
    "DDPMPipeline",
    "DDPMScheduler",
    "DPMSolverMultistepScheduler",
    "DiffusionPipeline",
    "EulerAncestralDiscreteScheduler",
    "EulerDiscreteScheduler",
    "FastDDPMSampler",
    "FastTrainer",
    "FrozenConfig",
    "ModelMixin",
    "PNDMScheduler",
    "SchedulerMixin",
    "TrainConfig",
    "TrainResult",
    "UNet2DModel",
    "__version__",
    "make_image_grid",
    "preset",
    "train",
]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'minidiff' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # for type checkers and IDEs
    from minidiff.configuration import ConfigMixin, FrozenConfig, SchedulerMixin
    from minidiff.fast import FastDDPMSampler, FastTrainer
    from minidiff.modeling_utils import ModelMixin
    from minidiff.pipeline_ddim import DDIMPipeline
    from minidiff.pipeline_ddpm import DDPMPipeline
    from minidiff.pipeline_utils import DiffusionPipeline
    from minidiff.scheduling_ddim import DDIMScheduler
    from minidiff.scheduling_ddpm import DDPMScheduler
    from minidiff.scheduling_dpmsolver_multistep import DPMSolverMultistepScheduler
    from minidiff.scheduling_euler_ancestral_discrete import EulerAncestralDiscreteScheduler
    from minidiff.scheduling_euler_discrete import EulerDiscreteScheduler
    from minidiff.scheduling_pndm import PNDMScheduler
    from minidiff.training import TrainConfig, TrainResult, preset, train
    from minidiff.unet_2d import UNet2DModel
    from minidiff.viz import make_image_grid
