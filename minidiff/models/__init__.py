"""The networks, in diffusers' file names (`diffusers/models/`).

    layers.py            time embeddings, ResnetBlock2D, Attention (SDPA), down / upsampling
    unet_2d_blocks.py    the down, middle and up blocks, built in diffusers' order
    unet_2d.py           UNet2DModel
    modeling_utils.py    ModelMixin: safetensors in diffusers' layout, gradient checkpointing, num_parameters

The public classes are imported from the package root: `from minidiff import UNet2DModel`.
"""
