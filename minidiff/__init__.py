"""minidiff: the DDPM part of Hugging Face diffusers, hand-written in plain PyTorch.

Swap `from diffusers import X` for `from minidiff import X` and get the same numbers.
"""

from minidiff.configuration import ConfigMixin, FrozenConfig, SchedulerMixin

__version__ = "0.1.0"

__all__ = ["ConfigMixin", "FrozenConfig", "SchedulerMixin", "__version__"]
