"""minidiff: the DDPM part of Hugging Face diffusers, hand-written in plain PyTorch.

Swap `from diffusers import X` for `from minidiff import X` and get the same numbers.
"""

from minidiff.configuration import ConfigMixin, FrozenConfig, SchedulerMixin
from minidiff.fast import FastDDPMSampler, FastTrainer
from minidiff.modeling_utils import ModelMixin
from minidiff.pipeline_ddpm import DDPMPipeline
from minidiff.scheduling_ddim import DDIMScheduler
from minidiff.scheduling_ddpm import DDPMScheduler
from minidiff.training import TrainConfig, TrainResult, preset, train
from minidiff.unet_2d import UNet2DModel

__version__ = "0.1.0"

__all__ = [
    "ConfigMixin",
    "DDIMScheduler",
    "DDPMPipeline",
    "DDPMScheduler",
    "FastDDPMSampler",
    "FastTrainer",
    "FrozenConfig",
    "ModelMixin",
    "SchedulerMixin",
    "TrainConfig",
    "TrainResult",
    "UNet2DModel",
    "__version__",
    "preset",
    "train",
]
