"""The blocks of UNet2DModel (diffusers' unet_2d_blocks.py): down, middle and up blocks of resnets and attention.

Each block type name of diffusers maps to one of three classes here: `DownBlock` (DownBlock2D,
AttnDownBlock2D, ResnetDownsampleBlock2D), `UNetMidBlock2D` and `UpBlock` (UpBlock2D, AttnUpBlock2D,
ResnetUpsampleBlock2D). Layers are built in diffusers' order, so the same seed gives the same weights.

The same three classes serve Stable Diffusion's parts: `attention` may be a factory `width -> module`
(a Transformer2DModel for CrossAttnDownBlock2D / CrossAttnUpBlock2D / UNetMidBlock2DCrossAttn), and then
`context` (the text tokens) goes to every attention; the VAE's blocks have no time embedding
(`temb_act` None) and its decoder's up blocks no skips (`skips` None).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from minidiff.models.layers import Attention, Downsample2D, ResnetBlock2D, Upsample2D

# Block type name -> (self-attention after each resnet?, how the block resamples). "config" means the
# UNet's `downsample_type` / `upsample_type` decides; diffusers honours those for the Attn* blocks only.
DOWN_BLOCKS = {
    "DownBlock2D": (False, "conv"),
    "AttnDownBlock2D": (True, "config"),
    "ResnetDownsampleBlock2D": (False, "resnet"),
}
UP_BLOCKS = {
    "UpBlock2D": (False, "conv"),
    "AttnUpBlock2D": (True, "config"),
    "ResnetUpsampleBlock2D": (False, "resnet"),
}


def block_type(name: str, table: dict) -> tuple[bool, str]:
    name = name.removeprefix("UNetRes")  # diffusers' legacy spelling, e.g. UNetResDownBlock2D
    if name not in table:
        raise NotImplementedError(f"block type {name!r} is not supported; expected one of {list(table)}")
    return table[name]


@dataclass(frozen=True)
class Parts:
    """The settings every block shares, so a block just asks for "a resnet from 32 to 64 channels"."""

    temb_channels: int | None  # None: no time embedding (the VAE)
    groups: int
    eps: float
    dropout: float
    act_fn: str
    time_embedding_norm: str
    attention_head_dim: int | None  # None: one head over all channels
    downsample_padding: int

    def resnet(self, cin: int, cout: int, resample: str | None = None, scale: float = 1.0) -> ResnetBlock2D:
        args = (
            self.temb_channels,
            self.groups,
            self.eps,
            self.dropout,
            self.act_fn,
            self.time_embedding_norm,
        )
        return ResnetBlock2D(cin, cout, *args, output_scale_factor=scale, resample=resample)

    def attention(self, width: int, groups: int | None, scale: float = 1.0) -> Attention:
        dim_head = self.attention_head_dim or width
        return Attention(width, width // dim_head, dim_head, groups, self.eps, rescale_output_factor=scale)

    def resampler(self, kind: str | None, width: int, direction: str) -> nn.ModuleList | None:
        if kind is None:
            return None
        if kind == "resnet":
            return nn.ModuleList([self.resnet(width, width, resample=direction)])
        return nn.ModuleList(
            [Downsample2D(width, self.downsample_padding) if direction == "down" else Upsample2D(width)]
        )


def _resample(
    layers: nn.ModuleList, h: torch.Tensor, temb_act: torch.Tensor | None, size=None
) -> torch.Tensor:
    layer = layers[0]
    if isinstance(layer, ResnetBlock2D):
        return layer(h, temb_act)
    return layer(h) if size is None else layer(h, size)


AttentionFactory = Callable[[int], nn.Module]  # width -> an attention module (built in diffusers' order)


def _attention_factory(parts: Parts, attention: bool | AttentionFactory) -> AttentionFactory | None:
    """True: DDPM's self-attention; a callable: that (Stable Diffusion's Transformer2DModel); False: none."""
    if attention is True:
        return lambda width: parts.attention(width, parts.groups)
    return attention or None


class Block(nn.Module):
    """What the three block kinds share: how a resnet runs. With gradient checkpointing on (training only),
    its activations are not kept but recomputed in the backward pass, as diffusers' blocks do."""

    def __init__(self):
        super().__init__()
        self.gradient_checkpointing = False  # set by UNet2DModel.enable_gradient_checkpointing()
        self._gradient_checkpointing_func = None

    def run_resnet(self, resnet: ResnetBlock2D, h: torch.Tensor, temb_act: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return self._gradient_checkpointing_func(resnet, h, temb_act)
        return resnet(h, temb_act)


class DownBlock(Block):
    """DownBlock2D / AttnDownBlock2D / ResnetDownsampleBlock2D: resnets [+ attentions], then a downsampler."""

    def __init__(
        self,
        parts: Parts,
        cin: int,
        cout: int,
        layers: int,
        attention: bool | AttentionFactory,
        downsample: str | None,
    ):
        super().__init__()
        make_attention = _attention_factory(parts, attention)
        # built in diffusers' order (resnet i, then attention i): the same seed gives the same weights
        resnets, attentions = [], []
        for i in range(layers):
            resnets.append(parts.resnet(cin if i == 0 else cout, cout))
            if make_attention:
                attentions.append(make_attention(cout))
        # registered attentions first, as diffusers does, so parameters() lists them in the same order
        self.attentions = nn.ModuleList(attentions) if make_attention else None
        self.resnets = nn.ModuleList(resnets)
        self.downsamplers = parts.resampler(downsample, cout, "down")

    def forward(
        self, h: torch.Tensor, temb_act: torch.Tensor | None, *context: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """`context`: Stable Diffusion's text tokens (B, L, D) for its cross-attention, else nothing."""
        skips = []
        for i, resnet in enumerate(self.resnets):
            h = self.run_resnet(resnet, h, temb_act)
            h = h if self.attentions is None else self.attentions[i](h, *context)
            skips.append(h)
        if self.downsamplers is not None:
            h = _resample(self.downsamplers, h, temb_act)  # (B, C, H/2, W/2)
            skips.append(h)
        return h, tuple(skips)


class UpBlock(Block):
    """UpBlock2D / AttnUpBlock2D / ResnetUpsampleBlock2D: cat(h, skip) -> resnet [+ attention], then an upsampler."""

    def __init__(
        self,
        parts: Parts,
        cprev: int,
        cskips: list[int],
        cout: int,
        attention: bool | AttentionFactory,
        upsample: str | None,
    ):
        super().__init__()
        make_attention = _attention_factory(parts, attention)
        cins = [cprev] + [cout] * (len(cskips) - 1)  # width of h before each concatenation
        resnets, attentions = [], []
        for cin, cskip in zip(cins, cskips):  # diffusers' order, as in DownBlock
            resnets.append(parts.resnet(cin + cskip, cout))
            if make_attention:
                attentions.append(make_attention(cout))
        self.attentions = nn.ModuleList(attentions) if make_attention else None
        self.resnets = nn.ModuleList(resnets)
        self.upsamplers = parts.resampler(upsample, cout, "up")

    def forward(
        self,
        h: torch.Tensor,
        skips: list[torch.Tensor] | None,
        temb_act: torch.Tensor | None,
        *context: torch.Tensor,
        upsample_size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """`skips` None: no skip connections (the VAE decoder's UpDecoderBlock2D, built with cskips 0);
        `context`: the text tokens for cross-attention; `upsample_size`: the size to upsample to, when x2
        would miss the next skip's size."""
        for i, resnet in enumerate(self.resnets):
            if skips is not None:
                h = torch.cat([h, skips.pop()], dim=1)  # (B, C_h + C_skip, H, W): the skip joins on channels
            h = self.run_resnet(resnet, h, temb_act)  # (B, C_out, H, W)
            h = h if self.attentions is None else self.attentions[i](h, *context)
        if self.upsamplers is None:
            return h
        return _resample(self.upsamplers, h, temb_act, upsample_size)  # (B, C, 2H, 2W)


class UNetMidBlock2D(Block):
    """The bottleneck at the lowest resolution: resnet -> self-attention -> resnet."""

    def __init__(
        self,
        parts: Parts,
        width: int,
        add_attention: bool | AttentionFactory,
        attn_groups: int | None,
        scale: float,
    ):
        """`add_attention` a factory: UNetMidBlock2DCrossAttn (its Transformer2DModel in the middle)."""
        super().__init__()
        # built in diffusers' order: resnet, attention, resnet
        first = parts.resnet(width, width, scale=scale)
        if callable(add_attention):
            attentions = [add_attention(width)]
        else:
            attentions = [parts.attention(width, attn_groups, scale)] if add_attention else []
        self.attentions = nn.ModuleList(attentions)
        self.resnets = nn.ModuleList([first, parts.resnet(width, width, scale=scale)])

    def forward(self, h: torch.Tensor, temb_act: torch.Tensor | None, *context: torch.Tensor) -> torch.Tensor:
        h = self.run_resnet(self.resnets[0], h, temb_act)
        for attention in self.attentions:
            h = attention(h, *context)
        return self.run_resnet(self.resnets[1], h, temb_act)
