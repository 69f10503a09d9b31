"""UNet2DConditionModel: Stable Diffusion's text-conditioned noise predictor epsilon_theta(z_t, t, tau(y))
(Rombach et al. 2022, sec. 3.3), the SD 1.x / 2.x subset of diffusers' class, weight-for-weight.

    z_t (B, 4, h, w), t, text tokens c (B, L, D)
      -> conv_in -> down path (resnets + Transformer2DModel cross-attention; every activation kept as a skip)
      -> middle (resnet, transformer, resnet) -> up path (skips concatenated back, last in first out)
      -> GroupNorm, act, conv_out -> epsilon (B, 4, h, w)

It is UNet2DModel's network (same resnets, resampling and time embedding, from minidiff/models/layers.py and
unet_2d_blocks.py) with a spatial transformer (minidiff/models/transformer_2d.py) after each resnet of the
CrossAttn blocks: that is where the text c enters. Block names: CrossAttnDownBlock2D, DownBlock2D,
UNetMidBlock2DCrossAttn, CrossAttnUpBlock2D, UpBlock2D. Modules are built in diffusers' order and named as
its keys, so `torch.manual_seed(s); UNet2DConditionModel(**cfg)` gives diffusers' initial weights and
`load_state_dict(strict=True)` loads its checkpoints.

Not covered (refused when a config asks for them, the key named): SDXL's added conditions
(addition_embed_type, addition_time_embed_dim, ...), class embeddings, encoder_hid_proj, GLIGEN, dual
cross-attention, fourier time embedding, timestep_cond, custom conv kernels, scale-shift resnets.
"""

from __future__ import annotations

import numbers
from functools import partial

import torch
from torch import nn

from minidiff.configuration import register_to_config
from minidiff.models.layers import ACTIVATIONS, TimestepEmbedding, Timesteps, group_norm
from minidiff.models.modeling_utils import ModelMixin
from minidiff.models.transformer_2d import Transformer2DModel
from minidiff.models.unet_2d_blocks import DownBlock, Parts, UNetMidBlock2D, UpBlock
from minidiff.outputs import UNet2DConditionOutput

# diffusers' keywords outside the SD 1.x / 2.x subset, at their defaults: a config may name them at these
# values (diffusers writes every keyword into config.json); any other value is refused, the key named.
OUTSIDE_SUBSET = {
    "reverse_transformer_layers_per_block": None, "encoder_hid_dim": None, "encoder_hid_dim_type": None,
    "dual_cross_attention": False, "class_embed_type": None, "addition_embed_type": None,
    "addition_time_embed_dim": None, "num_class_embeds": None, "resnet_time_scale_shift": "default",
    "resnet_skip_time_act": False, "resnet_out_scale_factor": 1.0, "time_embedding_type": "positional",
    "time_embedding_dim": None, "time_embedding_act_fn": None, "timestep_post_act": None,
    "time_cond_proj_dim": None, "conv_in_kernel": 3, "conv_out_kernel": 3,
    "projection_class_embeddings_input_dim": None, "attention_type": "default", "class_embeddings_concat": False,
    "mid_block_only_cross_attention": None, "cross_attention_norm": None, "addition_embed_type_num_heads": 64,
}  # fmt: skip
DOWN_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")
MID_TYPES = ("UNetMidBlock2DCrossAttn", None)


def check_subset(config: dict) -> None:
    """Refuse, naming the key, a diffusers keyword outside the subset set to anything but its default."""
    for key, default in OUTSIDE_SUBSET.items():
        if key in config and config[key] != default:
            raise ValueError(
                f"UNet2DConditionModel config key {key}={config[key]!r} is outside the Stable Diffusion 1.x/2.x "
                f"subset minidiff implements; expected {default!r} (SDXL, class embeddings, ... are not supported)"
            )


def per_block(name: str, value, n: int) -> list:
    """An int (or bool) for every block, or one value per block."""
    if isinstance(value, list | tuple):
        if len(value) != n:
            raise ValueError(f"{name} {list(value)} has {len(value)} entries; expected one per block ({n})")
        if any(isinstance(v, list | tuple) for v in value):
            raise ValueError(
                f"{name} {list(value)}: per-layer lists (SDXL's asymmetric UNets) are not supported"
            )
        return list(value)
    return [value] * n


def check_config(
    down_block_types, up_block_types, mid_block_type, block_out_channels, act_fn, num_attention_heads,
    attention_head_dim, cross_attention_dim, layers_per_block, transformer_layers_per_block,
    only_cross_attention,
) -> tuple[list, list, list, list, list]:  # fmt: skip
    """Refuse what the subset does not build, naming the key; return the per-block values (heads, cross-
    attention widths, resnets, transformer layers, only-cross-attention), one per level."""
    n = len(down_block_types)
    if not len(up_block_types) == n == len(block_out_channels):
        raise ValueError(
            f"expected as many down_block_types {list(down_block_types)} as up_block_types "
            f"{list(up_block_types)} and block_out_channels {list(block_out_channels)}"
        )
    for key, value, choices in (
        ("down_block_types", down_block_types, DOWN_TYPES),
        ("up_block_types", up_block_types, UP_TYPES),
        ("mid_block_type", [mid_block_type], MID_TYPES),
        ("act_fn", [act_fn], tuple(ACTIVATIONS)),
    ):
        for name in value:
            if name not in choices:
                raise ValueError(f"{key} {name!r} is not supported; expected one of {list(choices)}")
    if num_attention_heads is not None:
        raise ValueError(
            f"num_attention_heads={num_attention_heads!r}: as in diffusers, give the number of heads as "
            "attention_head_dim (diffusers' naming issue 2011); expected num_attention_heads None"
        )
    return (
        per_block("attention_head_dim", attention_head_dim, n),
        per_block("cross_attention_dim", cross_attention_dim, n),
        per_block("layers_per_block", layers_per_block, n),
        per_block("transformer_layers_per_block", transformer_layers_per_block, n),
        per_block("only_cross_attention", only_cross_attention, n),
    )


class UNet2DConditionModel(ModelMixin):
    """diffusers' UNet2DConditionModel for Stable Diffusion 1.x / 2.x: same keywords, keys and numbers.

    Args:
        sample_size: the latent size it was trained at (64 for SD 1.x at 512x512).
        in_channels: channels of z_t (4).
        out_channels: channels of the prediction (4).
        center_input_sample: map the input from [0, 1] to [-1, 1] first.
        flip_sin_to_cos: cos before sin in the sinusoidal time features.
        freq_shift: shift of the sinusoidal frequencies.
        down_block_types: "CrossAttnDownBlock2D" or "DownBlock2D" per level.
        mid_block_type: "UNetMidBlock2DCrossAttn" or None.
        up_block_types: "CrossAttnUpBlock2D" or "UpBlock2D" per level, from the lowest resolution up.
        only_cross_attention: the transformers' first attention reads the text too (bool or per block).
        block_out_channels: channels of each level.
        layers_per_block: resnets per down block, int or per block (up blocks have one more).
        downsample_padding: padding of the stride-2 downsampling conv.
        mid_block_scale_factor: output scale of the middle block's resnets.
        dropout: dropout in the resnets and transformers.
        act_fn: the activation of resnets, time MLP and output head.
        norm_num_groups: GroupNorm groups.
        norm_eps: GroupNorm epsilon of the resnets and the output head.
        cross_attention_dim: width D of the text tokens (768 for SD 1.x, 1024 for SD 2.x), int or per block.
        transformer_layers_per_block: BasicTransformerBlocks per transformer, int or per block.
        attention_head_dim: despite its name, the number of heads (int or per block), as in diffusers.
        num_attention_heads: must be None, as diffusers requires (its naming issue 2011).
        use_linear_projection: Linear proj_in / proj_out (SD 2.x) instead of 1x1 convolutions.
        upcast_attention: accepted as diffusers accepts it; SDPA (diffusers' default processor) ignores it.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        sample_size: int | tuple[int, int] | None = None,
        in_channels: int = 4,
        out_channels: int = 4,
        center_input_sample: bool = False,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        mid_block_type: str | None = "UNetMidBlock2DCrossAttn",
        up_block_types: tuple[str, ...] = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        only_cross_attention: bool | tuple[bool, ...] = False,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int | tuple[int, ...] = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        dropout: float = 0.0,
        act_fn: str = "silu",
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int | tuple[int, ...] = 1280,
        transformer_layers_per_block: int | tuple[int, ...] = 1,
        attention_head_dim: int | tuple[int, ...] = 8,
        num_attention_heads: int | tuple[int, ...] | None = None,
        use_linear_projection: bool = False,
        upcast_attention: bool = False,
    ):
        super().__init__()
        self.sample_size = sample_size
        # 0. check the configuration before building anything (diffusers' other keywords: at their defaults)
        self.register_to_config(**OUTSIDE_SUBSET)
        n = len(down_block_types)
        heads, cross_dims, layers, t_layers, only_cross = check_config(
            down_block_types, up_block_types, mid_block_type, block_out_channels, act_fn, num_attention_heads,
            attention_head_dim, cross_attention_dim, layers_per_block, transformer_layers_per_block,
            only_cross_attention,
        )  # fmt: skip
        widths = list(block_out_channels)
        time_embed_dim = widths[0] * 4  # E
        self.act = ACTIVATIONS[act_fn]
        parts = Parts(
            time_embed_dim, norm_num_groups, norm_eps, dropout, act_fn, "default", None, downsample_padding
        )

        def transformer(i: int, only_cross_attention: bool, width: int) -> Transformer2DModel:
            """The spatial transformer of level i (Rombach et al. sec. 3.3), width // heads channels per head."""
            return Transformer2DModel(
                heads[i], width // heads[i], width, t_layers[i], cross_dims[i], norm_num_groups,
                use_linear_projection, only_cross_attention, dropout,
            )  # fmt: skip

        self.conv_in = nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1)
        # 1. time embedding: t -> sinusoidal (B, widths[0]) -> MLP -> (B, E)
        self.time_proj = Timesteps(widths[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(widths[0], time_embed_dim, act_fn)
        # registered in diffusers' order (parameters() lists down, up, then mid)
        self.down_blocks, self.up_blocks = nn.ModuleList(), nn.ModuleList()
        # 2. down path: widths[i - 1] -> widths[i], halving h, w after every block but the last
        for i, name in enumerate(down_block_types):
            attention = partial(transformer, i, only_cross[i]) if name == "CrossAttnDownBlock2D" else False
            downsample = None if i == n - 1 else "conv"
            self.down_blocks.append(
                DownBlock(parts, widths[max(i - 1, 0)], widths[i], layers[i], attention, downsample)
            )
        # 3. middle: resnet, transformer (never only-cross-attention, as in diffusers), resnet
        self.mid_block = None
        if mid_block_type is not None:
            mid_transformer = partial(transformer, n - 1, False)
            self.mid_block = UNetMidBlock2D(parts, widths[-1], mid_transformer, None, mid_block_scale_factor)
        # 4. up path: level n-1-i, each block consuming layers + 1 skips (widths as diffusers computes them)
        for i, name in enumerate(up_block_types):
            level, cout = n - 1 - i, widths[n - 1 - i]
            cskip_last = widths[max(level - 1, 0)]  # the skip from the level above (conv_in's for the last)
            cskips = [cout] * layers[level] + [cskip_last]
            attention = (
                partial(transformer, level, only_cross[level]) if name == "CrossAttnUpBlock2D" else False
            )
            upsample = None if i == n - 1 else "conv"
            self.up_blocks.append(
                UpBlock(parts, widths[min(level + 1, n - 1)], cskips, cout, attention, upsample)
            )
        # 5. output head
        self.conv_norm_out = group_norm(norm_num_groups, widths[0], norm_eps)
        self.conv_out = nn.Conv2d(widths[0], out_channels, kernel_size=3, padding=1)

    @classmethod
    def extract_init_dict(cls, config: dict, **overrides):
        """ConfigMixin's split, after refusing keys outside the subset (those at their defaults are dropped:
        the model puts them back into its config, so diffusers' pipelines can read them)."""
        given = {**config, **overrides}
        check_subset(given)
        config = {k: v for k, v in config.items() if k not in OUTSIDE_SUBSET}
        overrides = {k: v for k, v in overrides.items() if k not in OUTSIDE_SUBSET}
        return super().extract_init_dict(config, **overrides)

    def _timesteps(self, timestep: torch.Tensor | float | int, sample: torch.Tensor) -> torch.Tensor:
        """A number (an int, or a float kept as float64, as diffusers), a 0-d tensor or one per item -> (B,)."""
        if not torch.is_tensor(timestep):
            if not isinstance(timestep, numbers.Real):
                raise ValueError(f"timestep {timestep!r}; expected a number or a tensor of timesteps")
            dtype = torch.float64 if isinstance(timestep, float) else torch.int64
            if sample.device.type == "mps" and dtype == torch.float64:  # mps has no float64
                dtype = torch.float32
            timestep = torch.tensor([timestep], dtype=dtype, device=sample.device)
        elif timestep.ndim == 0:
            timestep = timestep[None].to(sample.device)
        if timestep.ndim != 1 or timestep.shape[0] not in (1, sample.shape[0]):
            raise ValueError(
                f"timestep of shape {tuple(timestep.shape)} does not match the batch of {sample.shape[0]} "
                f"samples; expected a number, a 0-d tensor or a 1-d tensor of length {sample.shape[0]}"
            )
        return timestep.expand(sample.shape[0])

    def _check_inputs(
        self, sample: torch.Tensor, encoder_hidden_states: torch.Tensor, unsupported: dict
    ) -> None:
        for key, value in unsupported.items():
            if value is not None and not (
                key in ("cross_attention_kwargs", "added_cond_kwargs") and not value
            ):
                raise ValueError(f"{key} is not supported by minidiff's UNet2DConditionModel; expected None")
        cfg = self.config
        if sample.ndim != 4 or sample.shape[1] != cfg.in_channels:
            raise ValueError(f"sample of shape {tuple(sample.shape)}; expected (B, {cfg.in_channels}, h, w)")
        if not torch.is_tensor(encoder_hidden_states) or encoder_hidden_states.ndim != 3:
            shape = getattr(encoder_hidden_states, "shape", encoder_hidden_states)
            raise ValueError(f"encoder_hidden_states {shape}; expected text tokens of shape (B, L, D)")
        if encoder_hidden_states.shape[0] != sample.shape[0]:
            raise ValueError(
                f"encoder_hidden_states has batch {encoder_hidden_states.shape[0]}; expected the sample's "
                f"{sample.shape[0]} (one text per latent: repeat the prompt embeddings)"
            )

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict | None = None,
        added_cond_kwargs: dict | None = None,
        down_block_additional_residuals: tuple | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
        down_intrablock_additional_residuals: tuple | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> UNet2DConditionOutput | tuple[torch.Tensor]:
        """epsilon_theta(z_t, t, c): the noise in the latents `sample` (B, 4, h, w) given text tokens (B, L, D).

        Args:
            sample: z_t, the noisy latents.
            timestep: a number, a 0-d tensor, or one timestep per sample.
            encoder_hidden_states: c = tau(y), the text encoder's last hidden state, one row per sample.
            class_labels: diffusers' keyword (class embeddings); only None is accepted.
            timestep_cond: diffusers' keyword (LCM's guidance embedding); only None is accepted.
            attention_mask: diffusers' keyword (masks); only None is accepted.
            cross_attention_kwargs: diffusers' keyword (attention processors); None or {} is accepted.
            added_cond_kwargs: diffusers' keyword (SDXL's added conditions); None or {} is accepted.
            down_block_additional_residuals: diffusers' keyword (ControlNet); only None is accepted.
            mid_block_additional_residual: diffusers' keyword (ControlNet); only None is accepted.
            down_intrablock_additional_residuals: diffusers' keyword (T2I-Adapter); only None is accepted.
            encoder_attention_mask: diffusers' keyword (masks); only None is accepted.
            return_dict: return a `UNet2DConditionOutput` (else a tuple).

        Returns:
            `UNet2DConditionOutput` whose `.sample` is the prediction, (B, 4, h, w).
        """
        unsupported = dict(
            class_labels=class_labels, timestep_cond=timestep_cond, attention_mask=attention_mask,
            cross_attention_kwargs=cross_attention_kwargs, added_cond_kwargs=added_cond_kwargs,
            down_block_additional_residuals=down_block_additional_residuals,
            mid_block_additional_residual=mid_block_additional_residual,
            down_intrablock_additional_residuals=down_intrablock_additional_residuals,
            encoder_attention_mask=encoder_attention_mask,
        )  # fmt: skip
        self._check_inputs(sample, encoder_hidden_states, unsupported)
        context = encoder_hidden_states  # c: (B, L, D)
        # an odd size on the way down: each upsampler then lands on its skip's size, as in diffusers
        factor = 2 ** sum(block.upsamplers is not None for block in self.up_blocks)
        odd_size = any(dim % factor != 0 for dim in sample.shape[-2:])
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0

        # 1. time embedding: sinusoidal features (float32) cast to the sample's dtype, MLP -> (B, E)
        emb = self.time_embedding(self.time_proj(self._timesteps(timestep, sample)).to(sample.dtype))
        temb_act = self.act(emb)  # every resnet applies act() before its projection: once here
        # 2. down path, keeping every activation as a skip
        h = self.conv_in(sample)  # (B, widths[0], h, w)
        skips = [h]
        for block in self.down_blocks:
            h, block_skips = block(h, temb_act, *([context] if block.attentions is not None else []))
            skips.extend(block_skips)
        # 3. middle, at the lowest resolution
        if self.mid_block is not None:
            h = self.mid_block(h, temb_act, context)
        # 4. up path, consuming the skips last in, first out
        for block in self.up_blocks:
            k = len(block.resnets)
            size = tuple(skips[-k - 1].shape[2:]) if odd_size and block.upsamplers is not None else None
            h = block(
                h, skips, temb_act, *([context] if block.attentions is not None else []), upsample_size=size
            )
        # 5. output head: GroupNorm, act, 3x3 conv -> (B, C_out, h, w)
        out = self.conv_out(self.act(self.conv_norm_out(h)))
        return UNet2DConditionOutput(sample=out) if return_dict else (out,)
