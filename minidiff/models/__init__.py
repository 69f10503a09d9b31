"""The networks, in diffusers' file names (`diffusers/models/`).

    layers.py            time embeddings, ResnetBlock2D, Attention (SDPA), down / upsampling
    unet_2d_blocks.py    the down, middle and up blocks, built in diffusers' order
    unet_2d.py           UNet2DModel
    transformer_2d.py    Stable Diffusion's spatial transformer: self-, cross-attention, GEGLU feed-forward
    unet_2d_condition.py UNet2DConditionModel: the text-conditioned UNet of Stable Diffusion 1.x / 2.x
    autoencoder_kl.py    AutoencoderKL: the VAE between images and latents, its Gaussian posterior
    modeling_utils.py    ModelMixin: safetensors in diffusers' layout, gradient checkpointing, num_parameters

The public classes are imported from the package root: `from minidiff import UNet2DModel`.
"""
