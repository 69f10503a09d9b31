"""AutoencoderKL: the VAE of latent diffusion (Rombach et al. 2022, sec. 3.1), weight-for-weight diffusers' class.

    encode:  x (B, 3, H, W) in [-1, 1] -> Encoder -> quant_conv -> [mean, logvar] (B, 2 * 4, H/f, W/f)
             posterior q(z | x) = N(mean, exp(logvar))                 (DiagonalGaussianDistribution)
    decode:  z (B, 4, H/f, W/f) -> post_quant_conv -> Decoder -> x_hat (B, 3, H, W)

f = 2^(levels - 1) (8 for Stable Diffusion). The diffusion model works on z * scaling_factor (0.18215 for SD
1.x / 2.x), which brings the latents to about unit variance; the pipeline divides by it before decoding.

The encoder and decoder are UNet2DModel's parts without time embedding or skips: DownEncoderBlock2D is a
DownBlock of resnets, UpDecoderBlock2D an UpBlock without skips, and the middle block is resnet,
one-head self-attention, resnet (minidiff/models/unet_2d_blocks.py). Built in diffusers' order, named as its keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minidiff.configuration import register_to_config
from minidiff.models.layers import ACTIVATIONS, group_norm
from minidiff.models.modeling_utils import ModelMixin
from minidiff.models.unet_2d_blocks import DownBlock, Parts, UNetMidBlock2D, UpBlock
from minidiff.outputs import AutoencoderKLOutput, DecoderOutput
from minidiff.schedulers.scheduling_utils import randn_tensor


class DiagonalGaussianDistribution:
    """q(z | x) = N(mean, diag(std^2)) from the encoder's (B, 2C, h, w) output, logvar clamped to [-30, 20].

    Args:
        parameters: [mean, logvar] on the channel axis.
        deterministic: std = 0, so `sample` returns the mean.
    """

    def __init__(self, parameters: torch.Tensor, deterministic: bool = False):
        self.parameters = parameters
        self.mean, self.logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(self.logvar, -30.0, 20.0)
        self.deterministic = deterministic
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)
        if deterministic:
            self.var = self.std = torch.zeros_like(self.mean)

    def sample(self, generator: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
        """z = mean + std * eps, eps ~ N(0, I) drawn from `generator` as diffusers draws it."""
        eps = randn_tensor(self.mean.shape, generator, self.parameters.device, self.parameters.dtype)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        """The most likely z: the mean."""
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q(z | x) || N(0, I)) per sample, summed over (C, h, w): the VAE's regulariser."""
        if self.deterministic:
            return torch.zeros(self.mean.shape[0], device=self.mean.device)
        return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=[1, 2, 3])


def _vae_parts(norm_num_groups: int, act_fn: str) -> Parts:
    # no time embedding, GroupNorm eps 1e-6, one attention head over all channels, (0, 1, 0, 1)-padded downsampling
    return Parts(None, norm_num_groups, 1e-6, 0.0, act_fn, "default", None, 0)


def _check_blocks(key: str, names, expected: str, n: int) -> None:
    if len(names) != n or any(name != expected for name in names):
        raise ValueError(f"{key} {list(names)} is not supported; expected {n} x {expected!r}")


class Encoder(nn.Module):
    """x (B, C_in, H, W) -> conv_in -> DownEncoderBlock2Ds (halving H, W but at the last) -> middle -> GroupNorm,
    SiLU, conv_out -> (B, 2 * latent_channels, H/f, W/f)."""

    def __init__(
        self, in_channels, out_channels, widths, layers_per_block, norm_num_groups, act_fn, add_attention
    ):
        super().__init__()
        parts, n = _vae_parts(norm_num_groups, act_fn), len(widths)
        self.conv_in = nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1)
        self.down_blocks = nn.ModuleList(
            DownBlock(
                parts,
                widths[max(i - 1, 0)],
                widths[i],
                layers_per_block,
                False,
                None if i == n - 1 else "conv",
            )
            for i in range(n)
        )
        self.mid_block = UNetMidBlock2D(parts, widths[-1], add_attention, norm_num_groups, 1.0)
        self.conv_norm_out = group_norm(norm_num_groups, widths[-1], 1e-6)
        self.conv_out = nn.Conv2d(widths[-1], 2 * out_channels, kernel_size=3, padding=1)  # mean and logvar

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for block in self.down_blocks:
            h, _ = block(h, None)
        h = self.mid_block(h, None)
        return self.conv_out(F.silu(self.conv_norm_out(h)))


class Decoder(nn.Module):
    """z (B, latent_channels, h, w) -> conv_in -> middle -> UpDecoderBlock2Ds (doubling h, w but at the last) ->
    GroupNorm, SiLU, conv_out -> (B, C_out, H, W)."""

    def __init__(
        self, in_channels, out_channels, widths, layers_per_block, norm_num_groups, act_fn, add_attention
    ):
        super().__init__()
        parts, n = _vae_parts(norm_num_groups, act_fn), len(widths)
        self.conv_in = nn.Conv2d(in_channels, widths[-1], kernel_size=3, padding=1)
        self.up_blocks = (
            nn.ModuleList()
        )  # registered before the middle block, built after it, as in diffusers
        self.mid_block = UNetMidBlock2D(parts, widths[-1], add_attention, norm_num_groups, 1.0)
        for i in range(n):
            cprev, cout = widths[min(n - i, n - 1)], widths[n - 1 - i]
            upsample = None if i == n - 1 else "conv"
            self.up_blocks.append(UpBlock(parts, cprev, [0] * (layers_per_block + 1), cout, False, upsample))
        self.conv_norm_out = group_norm(norm_num_groups, widths[0], 1e-6)
        self.conv_out = nn.Conv2d(widths[0], out_channels, kernel_size=3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid_block(self.conv_in(z), None)
        for block in self.up_blocks:
            h = block(h, None, None)  # no skips, no time embedding
        return self.conv_out(F.silu(self.conv_norm_out(h)))


class AutoencoderKL(ModelMixin):
    """diffusers' AutoencoderKL: same keywords, keys and numbers (see the module docstring).

    Args:
        in_channels: image channels.
        out_channels: decoded image channels.
        down_block_types: "DownEncoderBlock2D" per level.
        up_block_types: "UpDecoderBlock2D" per level.
        block_out_channels: channels of each level (SD: 128, 256, 512, 512).
        layers_per_block: resnets per encoder block (decoder blocks have one more).
        act_fn: the resnets' activation.
        latent_channels: channels of z (4).
        norm_num_groups: GroupNorm groups.
        sample_size: the image size it was trained at (recorded in the config).
        scaling_factor: the pipeline multiplies z by it (0.18215 for SD 1.x / 2.x) for unit variance.
        shift_factor: recorded for pipelines that read it (the model does not use it, as in diffusers).
        latents_mean: recorded, as `shift_factor`.
        latents_std: recorded, as `shift_factor`.
        force_upcast: recorded, as `shift_factor` (SDXL's pipelines decode in float32 when it is set).
        use_quant_conv: a 1x1 conv on [mean, logvar] after the encoder.
        use_post_quant_conv: a 1x1 conv on z before the decoder.
        mid_block_add_attention: self-attention in the middle blocks.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",),
        up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",),
        block_out_channels: tuple[int, ...] = (64,),
        layers_per_block: int = 1,
        act_fn: str = "silu",
        latent_channels: int = 4,
        norm_num_groups: int = 32,
        sample_size: int | tuple[int, int] = 32,
        scaling_factor: float = 0.18215,
        shift_factor: float | None = None,
        latents_mean: tuple[float, ...] | None = None,
        latents_std: tuple[float, ...] | None = None,
        force_upcast: bool = True,
        use_quant_conv: bool = True,
        use_post_quant_conv: bool = True,
        mid_block_add_attention: bool = True,
    ):
        super().__init__()
        n = len(block_out_channels)
        _check_blocks("down_block_types", down_block_types, "DownEncoderBlock2D", n)
        _check_blocks("up_block_types", up_block_types, "UpDecoderBlock2D", n)
        if act_fn not in ACTIVATIONS:
            raise ValueError(f"act_fn {act_fn!r} is not supported; expected one of {list(ACTIVATIONS)}")
        widths = list(block_out_channels)
        common = (widths, layers_per_block, norm_num_groups, act_fn, mid_block_add_attention)
        self.encoder = Encoder(in_channels, latent_channels, *common)
        self.decoder = Decoder(latent_channels, out_channels, *common)
        self.quant_conv = nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1) if use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1) if use_post_quant_conv else None

    def _check(self, x: torch.Tensor, channels: int, what: str) -> None:
        if x.ndim != 4 or x.shape[1] != channels:
            raise ValueError(f"{what} of shape {tuple(x.shape)}; expected (B, {channels}, H, W)")

    def encode(self, x: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple:
        """Images (B, C, H, W) in [-1, 1] -> `AutoencoderKLOutput(latent_dist=q(z | x))`.

        Args:
            x: the images.
            return_dict: return an `AutoencoderKLOutput` (else a tuple).
        """
        self._check(x, self.config.in_channels, "x")
        moments = self.encoder(x)  # (B, 2 * latent_channels, H/f, W/f)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        posterior = DiagonalGaussianDistribution(moments)
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def decode(
        self, z: torch.Tensor, return_dict: bool = True, generator: torch.Generator | None = None
    ) -> DecoderOutput | tuple:
        """Latents z (B, latent_channels, h, w), unscaled -> `DecoderOutput(sample=images in about [-1, 1])`.

        Args:
            z: the latents (divide by `scaling_factor` first when they come from the diffusion model).
            return_dict: return a `DecoderOutput` (else a tuple).
            generator: accepted as diffusers accepts it; decoding draws nothing.
        """
        self._check(z, self.config.latent_channels, "z")
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        decoded = self.decoder(z)
        return DecoderOutput(sample=decoded) if return_dict else (decoded,)

    def forward(
        self,
        sample: torch.Tensor,
        sample_posterior: bool = False,
        return_dict: bool = True,
        generator: torch.Generator | None = None,
    ) -> DecoderOutput | tuple:
        """Encode, take a sample of q(z | x) (or its mode), decode: the reconstruction of `sample`.

        Args:
            sample: images (B, C, H, W) in [-1, 1].
            sample_posterior: draw z ~ q(z | x) with `generator` (else z = mean).
            return_dict: return a `DecoderOutput` (else a tuple).
            generator: the noise for `sample_posterior`.
        """
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z, return_dict=return_dict)
