"""The tensor shapes through Stable Diffusion 1.5 at 512x512, computed from its configs on the meta device.

    python docs/sd_shapes.py          # prints the table that docs/stable_diffusion.md holds (a test compares them)

Nothing is typed by hand: the VAE and the UNet are built from their config.json values on the meta device
(no memory, no weights), run once on meta tensors, and forward hooks record what each block returns.
"""

from __future__ import annotations

import torch

from minidiff import AutoencoderKL, UNet2DConditionModel

# runwayml/stable-diffusion-v1-5: unet/config.json and vae/config.json (keys that differ from the defaults)
SD15_UNET = dict(
    sample_size=64, cross_attention_dim=768, attention_head_dim=8, block_out_channels=(320, 640, 1280, 1280)
)
SD15_VAE = dict(
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)  # fmt: skip
TEXT_TOKENS, TEXT_WIDTH = 77, 768  # CLIP ViT-L/14's text encoder: 77 tokens of width 768


def _shape(out) -> tuple[int, ...]:
    out = out[0] if isinstance(out, tuple) else out
    return tuple(getattr(out, "sample", out).shape)


def _record(model: torch.nn.Module, names: list[str], rows: list, prefix: str, note) -> list:
    modules = dict(model.named_modules())
    return [
        modules[name].register_forward_hook(
            lambda m, args, out, name=name: rows.append((f"{prefix}{name}", _shape(out), note(name, m, args)))
        )
        for name in names
    ]


def _transformer_note(name: str, module, args) -> str:
    if ".attentions." not in name:
        return ""
    b, c, h, w = args[0].shape
    attn = module.transformer_blocks[0].attn2
    return f"{h * w} image tokens x {TEXT_TOKENS} text tokens, {attn.heads} heads of {c // attn.heads}"


def shape_rows(height: int = 512, width: int = 512, batch: int = 2) -> list[tuple[str, tuple, str]]:
    """(module, output shape, note) through the VAE encoder, the UNet (batch 2: the guidance pair) and
    the VAE decoder, in the order they run."""
    rows: list = []
    with torch.device("meta"):
        vae, unet = AutoencoderKL(**SD15_VAE), UNet2DConditionModel(**SD15_UNET)
        image = torch.empty(1, 3, height, width)
        context = torch.empty(batch, TEXT_TOKENS, TEXT_WIDTH)
    handles = _record(vae, ["encoder", "quant_conv"], rows, "vae.", lambda *a: "")
    with torch.no_grad():
        latents = vae.encode(image).latent_dist.mode()
    rows.append(
        ("z (the posterior's mean)", tuple(latents.shape), "times 0.18215: the latents the UNet denoises")
    )
    names = ["conv_in", "time_embedding"]
    for i, block in enumerate(unet.down_blocks):
        names += [f"down_blocks.{i}.attentions.0"] if block.attentions is not None else []
        names += [f"down_blocks.{i}"]
    names += ["mid_block.attentions.0", "mid_block"]
    for i, block in enumerate(unet.up_blocks):
        names += [f"up_blocks.{i}.attentions.0"] if block.attentions is not None else []
        names += [f"up_blocks.{i}"]
    handles += _record(unet, [*names, "conv_out"], rows, "unet.", _transformer_note)
    with torch.no_grad():
        unet(latents.expand(batch, -1, -1, -1), 999, context)
    handles += _record(vae, ["post_quant_conv", "decoder"], rows, "vae.", lambda *a: "")
    with torch.no_grad():
        vae.decode(latents)
    for handle in handles:
        handle.remove()
    return rows


def shape_table(height: int = 512, width: int = 512, batch: int = 2) -> str:
    """The Markdown table of `shape_rows`."""
    lines = ["| module | output shape | attention |", "|---|---|---|"]
    for name, shape, note in shape_rows(height, width, batch):
        lines.append(f"| `{name}` | {tuple(shape)} | {note} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(shape_table())
