"""Move a UNet2DModel between diffusers and minidiff: same config, same state dict, strict loading."""

from __future__ import annotations

import os

import torch


def _config(unet) -> dict:
    return {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}


def to_diffusers_unet(unet: torch.nn.Module):
    """A diffusers UNet2DModel with `unet`'s config and a copy of its weights, on its device."""
    from diffusers import UNet2DModel

    model = UNet2DModel.from_config(_config(unet))
    model.load_state_dict(unet.state_dict(), strict=True)
    return model.to(unet.device)


def to_minidiff_unet(unet: torch.nn.Module):
    """A minidiff UNet2DModel with a diffusers `unet`'s config and a copy of its weights."""
    from minidiff.unet_2d import UNet2DModel

    model = UNet2DModel.from_config(_config(unet))
    model.load_state_dict(unet.state_dict(), strict=True)
    return model.to(unet.device)


def load_both_unets(path: str | os.PathLike):
    """(diffusers UNet2DModel, minidiff UNet2DModel) from a pipeline folder (its unet/) or a UNet folder."""
    from diffusers import UNet2DModel as DiffusersUNet

    from minidiff.unet_2d import UNet2DModel

    subfolder = "unet" if os.path.isfile(os.path.join(path, "unet", "config.json")) else None
    reference = DiffusersUNet.from_pretrained(path, subfolder=subfolder)
    ours = UNet2DModel.from_pretrained(path, subfolder=subfolder)
    return reference.eval(), ours.eval()
