"""Stable Diffusion's spatial transformer (diffusers' Transformer2DModel, continuous input): how text enters
the UNet (Rombach et al. 2022, sec. 3.3; the block of Vaswani et al. 2017 with a pre-LayerNorm).

    x (B, C, H, W) -> GroupNorm -> proj_in -> tokens z (B, N = H*W, C')
        for each BasicTransformerBlock:
            z = z + Attn(LN(z))                 self-attention: image tokens look at each other
            z = z + Attn(LN(z), text)           cross-attention: queries from z, keys / values from the text
            z = z + FF(LN(z))                   GEGLU feed-forward (Shazeer 2020), 4x wide
        -> proj_out -> (B, C, H, W) + x         residual around the whole transformer

Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V with Q = W_Q z, K = W_K c, V = W_V c (Rombach et al. eq. 3),
through F.scaled_dot_product_attention as diffusers' default AttnProcessor2_0.

Module names equal diffusers' keys (`transformer_blocks.0.attn2.to_k`, `ff.net.0.proj`), and modules are
built in diffusers' order, so the same seed gives the same weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from minidiff.models.layers import group_norm


class CrossAttention(nn.Module):
    """diffusers' `Attention` as the transformer uses it: no bias on to_q / to_k / to_v, tokens in and out.

    context None: self-attention (keys and values from x). (B, N, C), (B, L, D) -> (B, N, C)
    """

    def __init__(
        self, query_dim: int, context_dim: int | None, heads: int, dim_head: int, dropout: float = 0.0
    ):
        super().__init__()
        self.heads = heads
        inner_dim = heads * dim_head
        context_dim = context_dim or query_dim
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner_dim, query_dim), nn.Dropout(dropout)])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q = rearrange(self.to_q(x), "b n (h d) -> b h n d", h=self.heads)  # (B, heads, N, d) queries: image
        k = rearrange(self.to_k(context), "b l (h d) -> b h l d", h=self.heads)  # (B, heads, L, d) keys: text
        v = rearrange(self.to_v(context), "b l (h d) -> b h l d", h=self.heads)  # (B, heads, L, d)
        h = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v: (B, heads, N, d)
        h = rearrange(h, "b h n d -> b n (h d)")  # (B, N, heads * d)
        return self.to_out[1](self.to_out[0](h))  # (B, N, C)


class GEGLU(nn.Module):
    """GEGLU (Shazeer 2020): [a, g] = W x + b;  a * GELU(g).  (B, N, C) -> (B, N, inner)"""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU to 4x the width, dropout, linear back: diffusers' `ff.net.0` / `ff.net.2` keys."""

    def __init__(self, dim: int, dropout: float, mult: int = 4):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, dim * mult), nn.Dropout(dropout), nn.Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nn.Module):
    """Self-attention, cross-attention, feed-forward, each as z = z + f(LayerNorm(z)).

    only_cross_attention: the first attention also reads the text (keys / values from the context).
    (UNet2DConditionModel's upcast_attention changes nothing here, as in diffusers: its default processor,
    F.scaled_dot_product_attention, ignores the flag, and so does this block.)
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int,
        cross_attention_dim: int,
        dropout: float = 0.0,
        only_cross_attention: bool = False,
    ):
        super().__init__()
        self.only_cross_attention = only_cross_attention
        self.norm1 = nn.LayerNorm(dim)
        self_context = cross_attention_dim if only_cross_attention else None
        self.attn1 = CrossAttention(dim, self_context, heads, dim_head, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = CrossAttention(dim, cross_attention_dim, heads, dim_head, dropout)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, dropout)

    def forward(self, z: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """z: image tokens (B, N, C); context: text tokens (B, L, D)."""
        z = self.attn1(self.norm1(z), context if self.only_cross_attention else None) + z
        z = self.attn2(self.norm2(z), context) + z  # queries from the image, keys / values from the text
        return self.ff(self.norm3(z)) + z


class Transformer2DModel(nn.Module):
    """GroupNorm, proj_in, `num_layers` BasicTransformerBlocks over the H*W tokens, proj_out, + x.

    use_linear_projection: proj_in / proj_out are Linear layers on the tokens (SD 2.x) instead of 1x1
    convolutions on the map (SD 1.x); the same function, other weight shapes and operation order.
    """

    def __init__(
        self,
        num_attention_heads: int,
        attention_head_dim: int,
        in_channels: int,
        num_layers: int,
        cross_attention_dim: int,
        norm_num_groups: int,
        use_linear_projection: bool = False,
        only_cross_attention: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.use_linear_projection = use_linear_projection
        inner_dim = num_attention_heads * attention_head_dim  # C' (equals C in every Stable Diffusion)
        self.norm = group_norm(norm_num_groups, in_channels, eps=1e-6)  # diffusers' fixed 1e-6
        if use_linear_projection:
            self.proj_in = nn.Linear(in_channels, inner_dim)
        else:
            self.proj_in = nn.Conv2d(in_channels, inner_dim, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(
                inner_dim,
                num_attention_heads,
                attention_head_dim,
                cross_attention_dim,
                dropout,
                only_cross_attention,
            )
            for _ in range(num_layers)
        )
        if use_linear_projection:
            self.proj_out = nn.Linear(inner_dim, in_channels)
        else:
            self.proj_out = nn.Conv2d(inner_dim, in_channels, kernel_size=1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) image features; context: (B, L, D) text tokens. -> (B, C, H, W)"""
        b, _, height, width = x.shape
        h = self.norm(x)
        # the same permute / reshape / contiguous steps as diffusers, so every kernel sees the same layout
        if not self.use_linear_projection:
            h = self.proj_in(h)  # (B, C', H, W)
        inner = h.shape[1]
        z = h.permute(0, 2, 3, 1).reshape(b, height * width, inner)  # tokens (B, N, C)
        if self.use_linear_projection:
            z = self.proj_in(z)  # (B, N, C')
        for block in self.transformer_blocks:
            z = block(z, context)
        if self.use_linear_projection:
            z = self.proj_out(z)  # (B, N, C)
        h = z.reshape(b, height, width, -1).permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)
        if not self.use_linear_projection:
            h = self.proj_out(h)
        return h + x
