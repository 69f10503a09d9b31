"""minidiff: the DDPM part of Hugging Face diffusers, hand-written in plain PyTorch.

Swap `from diffusers import X` for `from minidiff import X` and get the same numbers.

The public names below are imported on first use (PEP 562), so `minidiff --help` answers without
loading torch.

The diffusion core, laid out as diffusers' source tree (each package's docstring maps its files):

    schedulers/             the beta schedules, add_noise and the six samplers' step (DDPM, DDIM, PNDM,
                            DPM-Solver, Euler, Euler ancestral), the sampler table
    models/                 UNet2DModel, its blocks and layers, ModelMixin (safetensors in diffusers' layout);
                            Stable Diffusion's UNet2DConditionModel, Transformer2DModel and AutoencoderKL
    pipelines/              DiffusionPipeline, DDPMPipeline and the plain sampling loop, DDIMPipeline,
                            StableDiffusionPipeline
    configuration.py        ConfigMixin, SchedulerMixin, FrozenConfig, @register_to_config: diffusers' JSON
                            configs, type checks naming the key
    outputs.py              return objects (diffusers' BaseOutput): .prev_sample, .sample, .images
    files.py                atomic writes, the all-or-nothing folder swap, hub look-ups and offline checks

Around it:

    data.py                 digits / image folder / hub dataset, the tutorial's preprocessing
    viz.py, utils.py        image grids (make_image_grid also at diffusers' path minidiff.utils), noising
                            strip, SNR plot, loss plot, the figures' one canvas
    parity.py               the parity microscope compare_unet; moving a UNet between diffusers and minidiff
    cost.py                 what sampling will cost, said before it starts
    _version.py             the version, its one source
    cli.py, __main__.py     the `minidiff` command
    console.py              how the command talks: one line per event or warning, flags with defaults shown
                            and the closest name for an unknown one
    training/               training runs: presets tiny, tutorial, diffusers; the plain and the fast engine
                            (see minidiff.training)
    quality/                sample quality: digit FID and KID (see minidiff.quality)
    fast/                   the GPU fast sampling path (see minidiff.fast)

Imports run core <- quality <- training <- cli, never back up.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from minidiff._version import __version__

# public name -> the module that defines it
_EXPORTS = {
    "ConfigMixin": "minidiff.configuration",
    "FrozenConfig": "minidiff.configuration",
    "SchedulerMixin": "minidiff.configuration",
    "DDPMScheduler": "minidiff.schedulers.scheduling_ddpm",
    "DDIMScheduler": "minidiff.schedulers.scheduling_ddim",
    "DPMSolverMultistepScheduler": "minidiff.schedulers.scheduling_dpmsolver_multistep",
    "PNDMScheduler": "minidiff.schedulers.scheduling_pndm",
    "EulerDiscreteScheduler": "minidiff.schedulers.scheduling_euler_discrete",
    "EulerAncestralDiscreteScheduler": "minidiff.schedulers.scheduling_euler_ancestral_discrete",
    "ModelMixin": "minidiff.models.modeling_utils",
    "UNet2DModel": "minidiff.models.unet_2d",
    "UNet2DConditionModel": "minidiff.models.unet_2d_condition",
    "AutoencoderKL": "minidiff.models.autoencoder_kl",
    "DiffusionPipeline": "minidiff.pipelines.pipeline_utils",
    "DDPMPipeline": "minidiff.pipelines.pipeline_ddpm",
    "DDIMPipeline": "minidiff.pipelines.pipeline_ddim",
    "StableDiffusionPipeline": "minidiff.pipelines.pipeline_stable_diffusion",
    "make_image_grid": "minidiff.viz",
    "FastDDPMSampler": "minidiff.fast",
    "FastTrainer": "minidiff.training.fast_engine",
    "TrainConfig": "minidiff.training",
    "TrainResult": "minidiff.training",
    "preset": "minidiff.training",
    "train": "minidiff.training",
}

__all__ = [
    "AutoencoderKL",
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
    "StableDiffusionPipeline",
    "TrainConfig",
    "TrainResult",
    "UNet2DConditionModel",
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
    from minidiff.fast import FastDDPMSampler
    from minidiff.models.autoencoder_kl import AutoencoderKL
    from minidiff.models.modeling_utils import ModelMixin
    from minidiff.models.unet_2d import UNet2DModel
    from minidiff.models.unet_2d_condition import UNet2DConditionModel
    from minidiff.pipelines.pipeline_ddim import DDIMPipeline
    from minidiff.pipelines.pipeline_ddpm import DDPMPipeline
    from minidiff.pipelines.pipeline_stable_diffusion import StableDiffusionPipeline
    from minidiff.pipelines.pipeline_utils import DiffusionPipeline
    from minidiff.schedulers.scheduling_ddim import DDIMScheduler
    from minidiff.schedulers.scheduling_ddpm import DDPMScheduler
    from minidiff.schedulers.scheduling_dpmsolver_multistep import DPMSolverMultistepScheduler
    from minidiff.schedulers.scheduling_euler_ancestral_discrete import EulerAncestralDiscreteScheduler
    from minidiff.schedulers.scheduling_euler_discrete import EulerDiscreteScheduler
    from minidiff.schedulers.scheduling_pndm import PNDMScheduler
    from minidiff.training import TrainConfig, TrainResult, preset, train
    from minidiff.training.fast_engine import FastTrainer
    from minidiff.viz import make_image_grid
