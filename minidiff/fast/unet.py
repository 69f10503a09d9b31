"""A sampling copy of the UNet: frozen, cast once, channels_last, q/k/v fused into one projection.

The model a user trains stays untouched (its state dict keeps diffusers' keys `to_q`, `to_k`, `to_v`);
the fast sampler works on a deep copy prepared here.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from minidiff.models.layers import Attention


class FusedQKVAttention(nn.Module):
    """`layers.Attention` with q, k, v computed by one (3C x C) matrix product instead of three.

    Same function: out = x + to_out(softmax(q k^T / sqrt(d)) v). On a channels_last input the
    (B, C, H, W) <-> (B, N, C) reshapes are free views, so the block is GN, 1 GEMM, SDPA, 1 GEMM, add.

    Args:
        attention: the block to fuse; its weights are copied, its norm and output projection shared.
    """

    def __init__(self, attention: Attention):
        super().__init__()
        self.heads = attention.heads
        self.rescale_output_factor = attention.rescale_output_factor
        self.group_norm = attention.group_norm
        projections = (attention.to_q, attention.to_k, attention.to_v)
        self.to_qkv = nn.Linear(projections[0].in_features, 3 * projections[0].out_features)
        with torch.no_grad():
            self.to_qkv.weight.copy_(torch.cat([p.weight for p in projections], dim=0))  # (3 inner, C)
            self.to_qkv.bias.copy_(torch.cat([p.bias for p in projections], dim=0))  # (3 inner,)
        self.to_qkv.to(projections[0].weight.device, projections[0].weight.dtype)
        self.to_out = attention.to_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x + attention(x) for x of shape (B, C, H, W)."""
        batch, channels, height, width = x.shape
        h = x if self.group_norm is None else self.group_norm(x)
        h = h.flatten(2).transpose(1, 2)  # (B, N, C)
        qkv = self.to_qkv(h)  # (B, N, 3 * inner)
        qkv = qkv.unflatten(-1, (3, self.heads, -1))  # (B, N, 3, heads, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, heads, N, d)
        h = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, d)
        h = self.to_out[0](h.transpose(1, 2).flatten(2))  # (B, N, C)
        out = x + h.transpose(1, 2).reshape(batch, channels, height, width)  # residual connection
        return out if self.rescale_output_factor == 1.0 else out / self.rescale_output_factor


def fuse_qkv_projections(model: nn.Module) -> int:
    """Replace every `layers.Attention` in `model` (in place) by a `FusedQKVAttention`; returns the count."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Attention):
                setattr(parent, name, FusedQKVAttention(child))
                replaced += 1
    return replaced


def prepare_unet_for_sampling(
    unet: nn.Module, dtype: torch.dtype, channels_last: bool, fuse_qkv: bool = True
) -> nn.Module:
    """A frozen eval-mode copy of `unet` for sampling.

    Args:
        unet: the model; it is not modified.
        dtype: the copy's dtype.
        channels_last: convert the copy to channels_last.
        fuse_qkv: fuse each attention's q/k/v projections.
    """
    model = copy.deepcopy(unet).eval().requires_grad_(False)
    if fuse_qkv:
        fuse_qkv_projections(model)
    model = model.to(dtype=dtype)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
