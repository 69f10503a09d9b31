"""The building blocks of DDPM's UNet: timestep embeddings, the residual block, self-attention, resampling.

Every module and parameter name equals the key diffusers uses in its checkpoints (`time_emb_proj`, `to_q`,
`to_out.0`, ...), so a diffusers state dict loads with `load_state_dict(strict=True)` and no mapping table.

Shapes: B batch, C channels, H x W spatial size, N = H * W tokens, E the time-embedding width.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

# The activations diffusers' `act_fn` accepts ("swish" is SiLU under its older name).
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "swish": F.silu,
    "silu": F.silu,
    "mish": F.mish,
    "gelu": F.gelu,
    "relu": F.relu,
}


def group_norm(num_groups: int, num_channels: int, eps: float) -> nn.GroupNorm:
    """GroupNorm (Wu & He 2018), DDPM's replacement for weight norm, with a clear error on a bad group count."""
    if num_channels % num_groups != 0:
        raise ValueError(
            f"GroupNorm: {num_channels} channels cannot be split into {num_groups} groups; "
            "expected norm_num_groups to divide every block width (and the sums of widths the up path concatenates)"
        )
    return nn.GroupNorm(num_groups, num_channels, eps=eps)


# ---- 1. timestep embeddings ---------------------------------------------------------------------------------
def sinusoidal_embedding(
    timesteps: torch.Tensor, dim: int, flip_sin_to_cos: bool, freq_shift: float, max_period: float = 10000.0
) -> torch.Tensor:
    """The Transformer's positional encoding (Vaswani et al. 2017, sec. 3.5) applied to t, as DDPM does.

    freq_i = max_period ** (-i / (dim/2 - freq_shift)); emb = [sin(t * freq), cos(t * freq)] (or cos first).
    Always computed in float32, as diffusers does; the caller casts it to the model's dtype. (B,) -> (B, dim)
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(exponent / (half - freq_shift))  # (half,)
    args = timesteps[:, None].float() * freqs[None, :]  # (B, half)
    emb = torch.cat([args.cos(), args.sin()] if flip_sin_to_cos else [args.sin(), args.cos()], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 == 1 else emb


class Timesteps(nn.Module):
    """`time_proj` for time_embedding_type="positional": no weights, just the sinusoidal table."""

    def __init__(self, num_channels: int, flip_sin_to_cos: bool, freq_shift: float):
        super().__init__()
        self.num_channels, self.flip_sin_to_cos, self.freq_shift = num_channels, flip_sin_to_cos, freq_shift

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        return sinusoidal_embedding(timesteps, self.num_channels, self.flip_sin_to_cos, self.freq_shift)


class GaussianFourierProjection(nn.Module):
    """`time_proj` for "fourier" (score SDE, Song et al. 2021): [sin(2 pi w log t), cos(2 pi w log t)], w fixed."""

    def __init__(self, embedding_size: int, scale: float = 16.0):
        super().__init__()
        # diffusers draws these weights twice and keeps the second draw (a leftover of a renamed `W`); so do
        # we, so that the same seed gives the same weights here and in every layer built after this one.
        torch.randn(embedding_size)
        self.weight = nn.Parameter(torch.randn(embedding_size) * scale, requires_grad=False)

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        # (B, 1) * (1, size) -> (B, size)
        x_proj = torch.log(timesteps.float())[:, None] * self.weight.float()[None, :] * 2 * math.pi
        return torch.cat([x_proj.sin(), x_proj.cos()], dim=-1)  # (B, 2 * size)


class TimestepEmbedding(nn.Module):
    """The time MLP of DDPM: Linear -> act -> Linear, to E = 4 x the first width. (B, in) -> (B, E)

    UNet2DModel's act is always SiLU; UNet2DConditionModel's is its `act_fn`, as in diffusers."""

    def __init__(self, in_channels: int, time_embed_dim: int, act_fn: str = "silu"):
        super().__init__()
        self.act = ACTIVATIONS[act_fn]
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


# ---- 2. the residual block ----------------------------------------------------------------------------------
class ResnetBlock2D(nn.Module):
    """DDPM's Wide-ResNet block (Ho et al. 2020, App. B; Zagoruyko & Komodakis 2016) with the time embedding added.

    h = conv1(act(norm1(x)));  h = norm2(h + W t)            ("default")
                               h = norm2(h) * (1 + s) + b    ("scale_shift", improved DDPM; [s, b] = W t)
    out = shortcut(x) + conv2(dropout(act(h)))               (1x1 conv shortcut only when widths differ)
    `resample` "down" / "up" halves / doubles H and W of both paths right after the first activation.
    `temb_channels` None (the VAE's blocks): no time embedding, no `time_emb_proj`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int | None,
        groups: int,
        eps: float,
        dropout: float,
        act_fn: str,
        time_embedding_norm: str = "default",
        output_scale_factor: float = 1.0,
        resample: str | None = None,
    ):
        super().__init__()
        self.act = ACTIVATIONS[act_fn]
        self.scale_shift = time_embedding_norm == "scale_shift"
        self.output_scale_factor = output_scale_factor
        self.resample = resample
        self.norm1 = group_norm(groups, in_channels, eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.time_emb_proj = (
            None
            if temb_channels is None
            else nn.Linear(temb_channels, out_channels * (2 if self.scale_shift else 1))
        )
        self.norm2 = group_norm(groups, out_channels, eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.conv_shortcut = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor, temb_act: torch.Tensor | None) -> torch.Tensor:
        """x: (B, C_in, H, W); temb_act: act(emb), (B, E), computed once per forward by the UNet (None: no
        time embedding, the VAE)."""
        h = self.act(self.norm1(x))
        if self.resample == "down":  # 2x2 average pooling, as diffusers' Downsample2D(use_conv=False)
            x, h = F.avg_pool2d(x, 2, 2), F.avg_pool2d(h, 2, 2)
        elif self.resample == "up":  # nearest-neighbour x2, as diffusers' Upsample2D(use_conv=False)
            x, h = (
                F.interpolate(x, scale_factor=2.0, mode="nearest"),
                F.interpolate(h, scale_factor=2.0, mode="nearest"),
            )
        h = self.conv1(h)  # (B, C_out, H, W)
        if self.time_emb_proj is None:
            h = self.norm2(h)
        elif self.scale_shift:
            temb = self.time_emb_proj(temb_act)[:, :, None, None]  # (B, 2 C_out, 1, 1)
            scale, shift = temb.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + self.time_emb_proj(temb_act)[:, :, None, None])  # + W t, (B, C_out, 1, 1)
        h = self.conv2(self.dropout(self.act(h)))
        if self.conv_shortcut is not None:
            # diffusers makes x contiguous in training mode only: the conv then takes the same kernel as there
            x = self.conv_shortcut(x.contiguous() if self.training else x)
        out = x + h
        return out if self.output_scale_factor == 1.0 else out / self.output_scale_factor


# ---- 3. self-attention ---------------------------------------------------------------------------------------
class Attention(nn.Module):
    """Multi-head self-attention over the H x W positions (DDPM puts one after each resnet at 16x16).

    out = x + to_out(softmax(q k^T / sqrt(d)) v), q, k, v = to_q/k/v(group_norm(x)), through
    F.scaled_dot_product_attention (pick its backend with torch.nn.attention.sdpa_kernel).
    """

    def __init__(
        self,
        channels: int,
        heads: int,
        dim_head: int,
        norm_num_groups: int | None,
        eps: float,
        rescale_output_factor: float = 1.0,
    ):
        super().__init__()
        if heads < 1:
            raise ValueError(
                f"attention_head_dim {dim_head} is larger than the {channels} channels it attends over; "
                "expected attention_head_dim <= every attention block's width (or None for one head)"
            )
        self.heads = heads
        self.rescale_output_factor = rescale_output_factor
        self.group_norm = None if norm_num_groups is None else group_norm(norm_num_groups, channels, eps)
        inner_dim = heads * dim_head  # diffusers' inner width; equals `channels` when dim_head divides it
        self.to_q = nn.Linear(channels, inner_dim)
        self.to_k = nn.Linear(channels, inner_dim)
        self.to_v = nn.Linear(channels, inner_dim)
        self.to_out = nn.ModuleList([nn.Linear(inner_dim, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(2)  # (B, C, N)
        h = rearrange(h if self.group_norm is None else self.group_norm(h), "b c n -> b n c")  # (B, N, C)
        q, k, v = (
            rearrange(proj(h), "b n (heads d) -> b heads n d", heads=self.heads)  # (B, heads, N, d)
            for proj in (self.to_q, self.to_k, self.to_v)
        )
        h = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, d)
        h = self.to_out[0](rearrange(h, "b heads n d -> b n (heads d)"))  # (B, N, C)
        # residual connection. h viewed as (B, C, H, W) has channels-last strides, and as the first operand it
        # gives the sum that layout too. transpose + reshape makes the same strides as diffusers, also for B = 1
        # (batch stride C, where a rearrange gives N * C), so the next GroupNorm takes the same CPU kernel.
        out = h.transpose(1, 2).reshape(x.shape) + x  # (B, C, H, W)
        return out if self.rescale_output_factor == 1.0 else out / self.rescale_output_factor


# ---- 4. resampling -------------------------------------------------------------------------------------------
class Downsample2D(nn.Module):
    """3x3 convolution with stride 2: (B, C, H, W) -> (B, C, H/2, W/2).

    padding=0 is the original DDPM/TF layout: pad one row and column at the bottom/right only, then convolve.
    """

    def __init__(self, channels: int, padding: int):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)) if self.padding == 0 else x)


class Upsample2D(nn.Module):
    """Nearest-neighbour x2 then a 3x3 convolution: (B, C, H, W) -> (B, C, 2H, 2W).

    `size` (H', W') replaces the x2 when the down path met an odd size (UNet2DConditionModel's
    `upsample_size`): the up path then lands on the skip's size again."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        if size is None:
            return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return self.conv(F.interpolate(x, size=size, mode="nearest"))
