"""ModelMixin: load and save models in diffusers' folder format.

A model folder holds `config.json` (the constructor keywords) and `diffusion_pytorch_model.safetensors`
(the weights, keyed by module path). Because minidiff's module names equal diffusers' keys, a folder written
by either library loads in the other:

    unet = UNet2DModel.from_pretrained("ddpm-butterflies-128", subfolder="unet")
    unet.save_pretrained("out/unet")   # diffusers.UNet2DModel.from_pretrained("out/unet") reads it
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import torch
import torch.utils.checkpoint
from safetensors.torch import load_file, save_file
from torch import nn

from minidiff.configuration import ConfigMixin, config_attribute
from minidiff.files import atomic_paths, resolve_file

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
PICKLE_WEIGHTS_NAME = "diffusion_pytorch_model.bin"  # older checkpoints: a torch.save pickle

# Checkpoints from before diffusers 0.14 named the attention projections query / key / value / proj_attn.
OLD_ATTENTION_KEYS = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_OLD_ATTENTION_KEY = re.compile(r"^(.*attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$")


def rename_old_attention_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`...attentions.0.query.weight` -> `...attentions.0.to_q.weight` (and key, value, proj_attn -> to_out.0).

    Args:
        state_dict: parameter name -> tensor; names of the current layout pass through unchanged.
    """
    renamed = {}
    for key, value in state_dict.items():
        match = _OLD_ATTENTION_KEY.match(key)
        if match:
            key = f"{match[1]}.{OLD_ATTENTION_KEYS[match[2]]}.{match[3]}"
        renamed[key] = value
    return renamed


def _checkpoint(module: nn.Module, *args: torch.Tensor) -> torch.Tensor:
    """Run `module(*args)` without keeping its activations; backward recomputes them (diffusers' default)."""
    return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Read a .safetensors file, or a .bin pickle through torch.load(weights_only=True).

    weights_only=True unpickles tensors and plain containers only: a checkpoint that would run code on
    load (a `__reduce__` calling os.system, say) is refused, never executed.

    Args:
        path: the weights file; its suffix picks the reader.
    """
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except Exception as err:  # safetensors raises its own error type for a bad header / short file
            raise OSError(f"{path} is not a valid safetensors file (truncated or corrupt?): {err}") from err
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise OSError(
            f"{path} could not be loaded with torch.load(weights_only=True), which refuses pickles that run "
            f"code or hold anything but tensors: {err}. If you trust the file, convert it once with "
            "safetensors.torch.save_file(torch.load(path, weights_only=False), "
            f"'{WEIGHTS_NAME}') and load the folder again."
        ) from err


class ModelMixin(nn.Module, ConfigMixin):
    """nn.Module + config: `from_pretrained` / `save_pretrained` in diffusers' format, `device`, `dtype`,
    gradient checkpointing. `repr(model)` is nn.Module's tree of layers, as in diffusers."""

    config_name = "config.json"
    _supports_gradient_checkpointing = False

    def __getattr__(self, name: str):
        """A config key that is no attribute (`unet.in_channels`) comes with diffusers' FutureWarning;
        everything else is nn.Module's look-up of parameters, buffers and submodules."""
        if name in self.__dict__.get("_internal_dict", {}):
            return config_attribute(self, name, owner="unet")
        return super().__getattr__(name)

    # ---- gradient checkpointing ----------------------------------------------------------------------
    def enable_gradient_checkpointing(self, gradient_checkpointing_func: Callable | None = None) -> None:
        """Keep fewer activations for the backward pass and recompute them there: each block runs its
        resnets through `gradient_checkpointing_func` (default: torch.utils.checkpoint.checkpoint,
        non-reentrant), as diffusers does. Same gradients, less memory, about one more forward of time.

        Args:
            gradient_checkpointing_func: called as `func(module, *inputs)` in place of `module(*inputs)`.
        """
        if not self._supports_gradient_checkpointing:
            raise ValueError(f"{type(self).__name__} does not support gradient checkpointing")
        self._set_gradient_checkpointing(True, gradient_checkpointing_func or _checkpoint)

    def disable_gradient_checkpointing(self) -> None:
        """Keep every activation again (the default)."""
        if self._supports_gradient_checkpointing:
            self._set_gradient_checkpointing(False, _checkpoint)

    @property
    def is_gradient_checkpointing(self) -> bool:
        """Whether any block recomputes its activations in the backward pass."""
        return any(getattr(m, "gradient_checkpointing", False) for m in self.modules())

    def _set_gradient_checkpointing(self, enable: bool, checkpoint_func: Callable) -> None:
        for module in self.modules():
            if hasattr(module, "gradient_checkpointing"):  # the blocks that know how to checkpoint
                module.gradient_checkpointing = enable
                module._gradient_checkpointing_func = checkpoint_func

    @property
    def device(self) -> torch.device:
        """The device of the first parameter, as diffusers reports it."""
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the first floating-point parameter, as diffusers reports it."""
        return next(p.dtype for p in self.parameters() if p.is_floating_point())

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """The number of parameters, as diffusers counts them.

        Args:
            only_trainable: count only parameters with `requires_grad`.
            exclude_embeddings: leave out the weights of `nn.Embedding` layers.
        """
        embeddings = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        return sum(
            p.numel()
            for p in self.parameters()
            if (p.requires_grad or not only_trainable) and not (exclude_embeddings and id(p) in embeddings)
        )

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        subfolder: str | None = None,
        torch_dtype: torch.dtype | None = None,
    ):
        """Build the model from `config.json` and load its weights with strict key checking.

        Weights come from `diffusion_pytorch_model.safetensors`, or, when only the older
        `diffusion_pytorch_model.bin` exists, from that pickle via torch.load(weights_only=True).
        Parameters are cast to `torch_dtype` (default: torch's default dtype, float32).

        Args:
            pretrained_model_name_or_path: a local folder or a hub id.
            subfolder: the folder inside it that holds the files (`"unet"` in a pipeline folder).
            torch_dtype: the dtype of the floating-point parameters.

        Returns:
            The model, in eval mode.
        """
        config = cls.load_config(pretrained_model_name_or_path, subfolder)
        errors = []
        for name in (WEIGHTS_NAME, PICKLE_WEIGHTS_NAME):
            try:
                path = resolve_file(pretrained_model_name_or_path, name, subfolder)
                break
            except OSError as err:  # FileNotFoundError, or the hub could not be reached
                errors.append(str(err))
        else:
            raise FileNotFoundError(
                f"no weights for {str(pretrained_model_name_or_path)!r} (subfolder {subfolder!r}); expected "
                f"{WEIGHTS_NAME} or {PICKLE_WEIGHTS_NAME}: " + " | ".join(errors)
            )
        dtype = torch_dtype or torch.get_default_dtype()
        state_dict = rename_old_attention_keys(load_weights(path))
        state_dict = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
        with torch.device("meta"):  # no memory and no random init for weights about to be overwritten
            model = cls.from_config(config)
        try:
            model.load_state_dict(state_dict, strict=True, assign=True)
        except RuntimeError as err:
            raise ValueError(
                f"the weights in {path} do not fit the {cls.__name__} its config.json describes: {err}"
            ) from err
        return model.eval()

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write `config.json` and `diffusion_pytorch_model.safetensors` into a folder.

        Both are first written (and fsynced) as temporary files; only when both are complete are they renamed
        over the old ones. A failing write (disk full, no permission) leaves a model saved there before whole
        and loadable, and no temporary file behind.

        Args:
            save_directory: the folder, created if missing; a file there is refused.
        """
        save_directory = Path(save_directory)
        if save_directory.is_file():
            raise ValueError(f"save_directory {str(save_directory)!r} is a file; expected a folder")
        save_directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        targets = (save_directory / WEIGHTS_NAME, save_directory / self.config_name)
        with atomic_paths(*targets) as (weights_tmp, config_tmp):
            save_file(tensors, str(weights_tmp), metadata={"format": "pt"})
            config_tmp.write_text(self.to_json_string(), encoding="utf-8")
        self._record_saved()
