"""Return objects with diffusers' field names: `.prev_sample`, `.sample`, `.images`, ...

Like diffusers' `BaseOutput`, each is a dataclass that is also an ordered dict of its fields that are not
None, and indexes like the tuple `return_dict=False` would give:

    out.prev_sample, out["prev_sample"], out[0], out.to_tuple(), out.keys(), out.values(), out.items()

As in diffusers, iterating or unpacking `out` goes over its keys (it is a dict); use `to_tuple()` for values.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, fields
from typing import Any

import torch


class BaseOutput(OrderedDict):
    def __post_init__(self) -> None:
        for field in fields(self):  # the dict holds the fields that are not None, in field order
            value = getattr(self, field.name)
            if value is not None:
                super().__setitem__(field.name, value)

    def __getitem__(self, key: int | str | slice) -> Any:
        if isinstance(key, str):
            return super().__getitem__(key)
        return self.to_tuple()[key]

    # attribute and item stay in step when either is set
    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.keys() and value is not None:
            super().__setitem__(name, value)
        super().__setattr__(name, value)

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        super().__setattr__(key, value)

    def _refuse(self, *args, **kwargs):
        raise TypeError(f"{type(self).__name__} does not support removing or bulk-updating its fields")

    __delitem__ = pop = popitem = update = setdefault = clear = _refuse

    def __reduce__(self):  # pickle / deepcopy rebuild it from its fields (the dataclass __init__ needs them)
        rebuild, _, *rest = super().__reduce__()
        return rebuild, tuple(getattr(self, field.name) for field in fields(self)), *rest

    def to_tuple(self) -> tuple:
        return tuple(self[key] for key in self.keys())


@dataclass
class SchedulerOutput(BaseOutput):
    """One reverse step: x_{t-1} (`prev_sample`) and the model's estimate of x_0."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


DDPMSchedulerOutput = DDIMSchedulerOutput = SchedulerOutput


@dataclass
class UNet2DOutput(BaseOutput):
    sample: torch.Tensor


@dataclass
class ImagePipelineOutput(BaseOutput):
    """`images`: a list of PIL images, a NHWC numpy array in [0, 1], or a NCHW tensor in [0, 1]."""

    images: Any


@dataclass
class UNet2DConditionOutput(BaseOutput):
    """Stable Diffusion's UNet: `sample`, the predicted noise in the latents."""

    sample: torch.Tensor


@dataclass
class AutoencoderKLOutput(BaseOutput):
    """`latent_dist`: the encoder's DiagonalGaussianDistribution over the latents."""

    latent_dist: Any


@dataclass
class DecoderOutput(BaseOutput):
    """`sample`: the decoded images in [-1, 1] (`commit_loss` is VQ-VAE's, always None here)."""

    sample: torch.Tensor
    commit_loss: torch.Tensor | None = None


@dataclass
class StableDiffusionPipelineOutput(BaseOutput):
    """`images` as ImagePipelineOutput's; `nsfw_content_detected` None: minidiff runs no safety checker."""

    images: Any
    nsfw_content_detected: list[bool] | None = None
