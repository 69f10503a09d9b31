"""UNet2DModel: DDPM's noise-prediction network (Ho et al. 2020, App. B), weight-for-weight diffusers' UNet2DModel.

    x_t (B, C_in, H, W), t  ->  conv_in -> down path (keeps every activation as a skip) -> middle
                            ->  up path (concatenates the skips back, last in first out) -> norm, SiLU, conv_out

The down path halves H and W after every block but the last; each down block runs `layers_per_block`
residual blocks (optionally each followed by self-attention), each up block runs `layers_per_block + 1`,
one per skip it consumes. The constructor takes diffusers' keywords and block type names and builds the
same module tree, so `minidiff.UNet2DModel(**cfg).load_state_dict(diffusers_unet.state_dict())` just works.
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from torch import nn

from minidiff.configuration import register_to_config
from minidiff.models.layers import (
    ACTIVATIONS,
    GaussianFourierProjection,
    TimestepEmbedding,
    Timesteps,
    group_norm,
)
from minidiff.models.modeling_utils import ModelMixin
from minidiff.models.unet_2d_blocks import (
    DOWN_BLOCKS,
    UP_BLOCKS,
    DownBlock,
    Parts,
    UNetMidBlock2D,
    UpBlock,
    block_type,
)
from minidiff.outputs import UNet2DOutput

CHOICES = {
    "time_embedding_type": ("positional", "fourier", "learned"),
    "mid_block_type": ("UNetMidBlock2D", None),
    "downsample_type": ("conv", "resnet"),
    "upsample_type": ("conv", "resnet"),
    "act_fn": tuple(ACTIVATIONS),
    "resnet_time_scale_shift": ("default", "scale_shift"),
    "class_embed_type": (None, "timestep", "identity"),
}


class UNet2DModel(ModelMixin):
    """diffusers' UNet2DModel: same keywords, defaults, module names and numbers (see the module docstring).

    Args:
        sample_size: the image size it is meant for (recorded in the config; any size divisible by
            2^(levels - 1) runs).
        in_channels: channels of x_t.
        out_channels: channels of the prediction (2x `in_channels` for learned variances).
        center_input_sample: map the input from [0, 1] to [-1, 1] first.
        time_embedding_type: `"positional"` (sinusoidal), `"fourier"` (Gaussian Fourier features) or
            `"learned"` (a table of `num_train_timesteps` rows).
        time_embedding_dim: width of the time embedding (default: 4x `block_out_channels[0]`).
        freq_shift: shift of the sinusoidal frequencies.
        flip_sin_to_cos: put cos before sin in the sinusoidal features.
        down_block_types: one block per level, e.g. `"DownBlock2D"`, `"AttnDownBlock2D"`.
        mid_block_type: `"UNetMidBlock2D"` or None for no middle block.
        up_block_types: one block per level, from the lowest resolution up.
        block_out_channels: channels of each level.
        layers_per_block: resnets per down block (up blocks have one more).
        mid_block_scale_factor: output scale of the middle block's resnets.
        downsample_padding: padding of the stride-2 downsampling conv.
        downsample_type: `"conv"` or `"resnet"` (ResnetDownsampleBlock2D).
        upsample_type: `"conv"` or `"resnet"` (ResnetUpsampleBlock2D).
        dropout: dropout inside the resnets.
        act_fn: the activation, `"silu"`.
        attention_head_dim: channels per attention head (None: one head).
        norm_num_groups: GroupNorm groups.
        attn_norm_num_groups: GroupNorm groups of the middle block's attention (default: `norm_num_groups`).
        norm_eps: GroupNorm epsilon.
        resnet_time_scale_shift: `"default"` (add the embedding) or `"scale_shift"` (FiLM).
        add_attention: whether the middle block has attention.
        class_embed_type: None, `"timestep"` or `"identity"`: how class labels are embedded.
        num_class_embeds: the number of classes of a class-label embedding table.
        num_train_timesteps: the table size for `time_embedding_type="learned"`.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        sample_size: int | tuple[int, int] | None = None,
        in_channels: int = 3,
        out_channels: int = 3,
        center_input_sample: bool = False,
        time_embedding_type: str = "positional",
        time_embedding_dim: int | None = None,
        freq_shift: int = 0,
        flip_sin_to_cos: bool = True,
        down_block_types: tuple[str, ...] = (
            "DownBlock2D",
            "AttnDownBlock2D",
            "AttnDownBlock2D",
            "AttnDownBlock2D",
        ),
        mid_block_type: str | None = "UNetMidBlock2D",
        up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        block_out_channels: tuple[int, ...] = (224, 448, 672, 896),
        layers_per_block: int = 2,
        mid_block_scale_factor: float = 1,
        downsample_padding: int = 1,
        downsample_type: str = "conv",
        upsample_type: str = "conv",
        dropout: float = 0.0,
        act_fn: str = "silu",
        attention_head_dim: int | None = 8,
        norm_num_groups: int = 32,
        attn_norm_num_groups: int | None = None,
        norm_eps: float = 1e-5,
        resnet_time_scale_shift: str = "default",
        add_attention: bool = True,
        class_embed_type: str | None = None,
        num_class_embeds: int | None = None,
        num_train_timesteps: int | None = None,
    ):
        super().__init__()
        self.sample_size = sample_size  # diffusers' one config value that is also a plain attribute
        # 0. check the configuration before building anything
        for key, choices in CHOICES.items():
            if self.config[key] not in choices:
                raise ValueError(
                    f"{key} {self.config[key]!r} is not supported; expected one of {list(choices)}"
                )
        if not len(down_block_types) == len(up_block_types) == len(block_out_channels):
            raise ValueError(
                f"expected as many down_block_types {list(down_block_types)} as up_block_types "
                f"{list(up_block_types)} and block_out_channels {list(block_out_channels)}"
            )
        if norm_num_groups is None:
            raise ValueError(
                "norm_num_groups None is not supported (diffusers fails on it too); expected an int"
            )
        if time_embedding_type == "learned" and num_train_timesteps is None:
            raise ValueError(
                "time_embedding_type 'learned' needs num_train_timesteps (the embedding table's size)"
            )
        if class_embed_type is not None and num_class_embeds is not None:
            raise ValueError(
                f"num_class_embeds is only used when class_embed_type is None, got {class_embed_type!r}"
            )
        downs = [block_type(name, DOWN_BLOCKS) for name in down_block_types]
        ups = [block_type(name, UP_BLOCKS) for name in up_block_types]
        widths, n = list(block_out_channels), len(block_out_channels)
        time_embed_dim = time_embedding_dim or widths[0] * 4  # E
        self.act = ACTIVATIONS[act_fn]
        parts = Parts(
            time_embed_dim, norm_num_groups, norm_eps, dropout, act_fn, resnet_time_scale_shift,
            attention_head_dim, downsample_padding,
        )  # fmt: skip

        self.conv_in = nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1)
        # 1. time embedding: t -> (B, widths[0]) features -> MLP -> (B, E)
        if time_embedding_type == "fourier":
            self.time_proj = GaussianFourierProjection(widths[0], scale=16)
        elif time_embedding_type == "positional":
            self.time_proj = Timesteps(widths[0], flip_sin_to_cos, freq_shift)
        else:
            self.time_proj = nn.Embedding(num_train_timesteps, widths[0])
        proj_dim = 2 * widths[0] if time_embedding_type == "fourier" else widths[0]
        self.time_embedding = TimestepEmbedding(proj_dim, time_embed_dim)
        # 2. class embedding, added to the time embedding
        if class_embed_type is None and num_class_embeds is not None:
            self.class_embedding = nn.Embedding(num_class_embeds, time_embed_dim)
        elif class_embed_type == "timestep":
            self.class_embedding = TimestepEmbedding(proj_dim, time_embed_dim)
        elif class_embed_type == "identity":
            self.class_embedding = nn.Identity()
        else:
            self.class_embedding = None
        # the three paths are registered here, as diffusers does (parameters() lists down, up, then mid)
        self.down_blocks, self.mid_block, self.up_blocks = nn.ModuleList(), None, nn.ModuleList()
        # 3. down path: widths[i - 1] -> widths[i], halving H, W after every block but the last
        skip_channels = [widths[0]]  # conv_in's output is the first skip
        for i, (attention, resample) in enumerate(downs):
            resample = None if i == n - 1 else (downsample_type if resample == "config" else resample)
            self.down_blocks.append(
                DownBlock(parts, widths[max(i - 1, 0)], widths[i], layers_per_block, attention, resample)
            )
            skip_channels += [widths[i]] * (layers_per_block + (resample is not None))
        # 4. middle. diffusers puts a GroupNorm in front of its attention only for "default" (unless told)
        if mid_block_type is not None:
            if attn_norm_num_groups is None and resnet_time_scale_shift == "default":
                attn_norm_num_groups = norm_num_groups
            self.mid_block = UNetMidBlock2D(
                parts, widths[-1], add_attention, attn_norm_num_groups, mid_block_scale_factor
            )
        # 5. up path: mirror of the down path, each block consuming layers_per_block + 1 skips
        for i, (attention, resample) in enumerate(ups):
            resample = None if i == n - 1 else (upsample_type if resample == "config" else resample)
            cskips = [skip_channels.pop() for _ in range(layers_per_block + 1)]
            self.up_blocks.append(
                UpBlock(parts, widths[min(n - i, n - 1)], cskips, widths[n - 1 - i], attention, resample)
            )
        # 6. output head
        self.conv_norm_out = group_norm(norm_num_groups, widths[0], norm_eps)
        self.conv_out = nn.Conv2d(widths[0], out_channels, kernel_size=3, padding=1)

    def _timesteps(self, timestep: torch.Tensor | float | int, sample: torch.Tensor) -> torch.Tensor:
        """A number, a 0-d tensor or one timestep per batch item -> (B,) on the sample's device."""
        batch = sample.shape[0]
        if not torch.is_tensor(timestep):
            if not isinstance(timestep, numbers.Real):
                raise ValueError(f"timestep {timestep!r}; expected a number or a tensor of timesteps")
            timestep = torch.tensor([timestep], dtype=torch.long)  # as diffusers: a python float is truncated
        timestep = (
            timestep.to(sample.device).reshape(-1) if timestep.ndim == 0 else timestep.to(sample.device)
        )
        if timestep.ndim != 1 or timestep.shape[0] not in (1, batch):
            raise ValueError(
                f"timestep of shape {tuple(timestep.shape)} does not match the batch of {batch} samples; "
                f"expected a number, a 0-d tensor or a 1-d tensor of length {batch}"
            )
        return timestep.expand(batch)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        class_labels: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> UNet2DOutput | tuple[torch.Tensor]:
        """Predict the noise (or x_0 / v, depending on training) for x_t = `sample` (B, C_in, H, W) at `timestep`.

        Args:
            sample: x_t, a floating-point tensor on the model's device.
            timestep: a number, a 0-d tensor, or one timestep per sample.
            class_labels: (B,) class labels, for a model with a class embedding.
            return_dict: return a `UNet2DOutput` (else a tuple).

        Returns:
            `UNet2DOutput` whose `.sample` is the prediction, (B, C_out, H, W).
        """
        cfg, factor = self.config, 2 ** (len(self.down_blocks) - 1)
        if sample.ndim != 4 or sample.shape[1] != cfg.in_channels:
            raise ValueError(f"sample of shape {tuple(sample.shape)}; expected (B, {cfg.in_channels}, H, W)")
        if not sample.is_floating_point() or sample.device != self.device:
            raise ValueError(
                f"sample is {sample.dtype} on {sample.device}; expected a floating-point tensor on the "
                f"model's device ({self.device})"
            )
        if sample.shape[-2] % factor or sample.shape[-1] % factor:
            raise ValueError(
                f"sample size {tuple(sample.shape[-2:])} cannot be halved {factor.bit_length() - 1} times by the "
                f"down path; expected height and width divisible by {factor}"
            )
        if cfg.center_input_sample:
            sample = 2 * sample - 1.0
        timesteps = self._timesteps(timestep, sample)  # (B,)

        # 1. time embedding: sinusoidal / Fourier / learned features (float32), cast, then the MLP -> (B, E)
        emb = self.time_embedding(self.time_proj(timesteps).to(self.dtype))
        # 2. class embedding, summed into the time embedding
        if self.class_embedding is None and class_labels is not None:
            raise ValueError(
                "class_labels were given, but this model is unconditional (no class_embed_type / num_class_embeds)"
            )
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("this model is class-conditional: expected class_labels, one per batch item")
            if cfg.class_embed_type == "timestep":
                class_labels = self.time_proj(class_labels).to(self.dtype)
            emb = emb + self.class_embedding(class_labels).to(self.dtype)
        # every resnet applies act() to the embedding before its projection: do it once here
        temb_act = self.act(emb)

        # 3. down path, keeping every activation as a skip
        h = self.conv_in(sample)  # (B, widths[0], H, W)
        skips = [h]
        for block in self.down_blocks:
            h, block_skips = block(h, temb_act)
            skips.extend(block_skips)
        # 4. middle (lowest resolution: H / factor x W / factor)
        if self.mid_block is not None:
            h = self.mid_block(h, temb_act)
        # 5. up path, consuming the skips last in, first out
        for block in self.up_blocks:
            h = block(h, skips, temb_act)
        # 6. output head: GroupNorm, SiLU, 3x3 conv -> (B, C_out, H, W)
        out = self.conv_out(F.silu(self.conv_norm_out(h)))
        if cfg.time_embedding_type == "fourier":  # score SDE parameterisation: divide by the noise level
            out = out / timesteps.to(out.dtype).reshape(-1, 1, 1, 1)
        return UNet2DOutput(sample=out) if return_dict else (out,)
