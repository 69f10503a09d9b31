"""Return objects with diffusers' field names: `.prev_sample`, `.sample`, `.images`, ...

Like diffusers' `BaseOutput`, each is a dataclass that also indexes like the tuple
`return_dict=False` would give: `out[0]`, `out.to_tuple()`, and `out["sample"]`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch


class BaseOutput:
    def to_tuple(self) -> tuple:
        return tuple(getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None)

    def __getitem__(self, key: int | str | slice) -> Any:
        if isinstance(key, str):
            return getattr(self, key)
        return self.to_tuple()[key]

    def __iter__(self):
        return iter(self.to_tuple())

    def __len__(self) -> int:
        return len(self.to_tuple())


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
