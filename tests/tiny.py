"""Tiny settings the tests share: a UNet and a training run small enough for milliseconds on a CPU."""

# UNet2DModel keywords: 8x8 greyscale, two levels, no attention.
TINY_UNET = dict(
    sample_size=8,
    in_channels=1,
    out_channels=1,
    layers_per_block=1,
    block_out_channels=(8, 16),
    down_block_types=("DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D"),
    norm_num_groups=4,
)

# TrainConfig overrides of the "tiny" preset: the same net on 8 digits at 8x8, batch 4, on the CPU.
TINY_TRAIN = dict(
    image_size=8,
    block_out_channels=(8, 16),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D"),
    norm_num_groups=4,
    limit=8,
    batch_size=4,
    sample_steps=2,
    num_samples=1,
    device="cpu",
    progress=False,
    mixed_precision="no",  # pinned: "auto" measures, and two runs compared bit for bit must not differ
)

# TrainConfig fields of a small net with attention at 4x4: 8x8 images, two levels.
TINY_ATTENTION_NET = dict(
    image_size=8,
    block_out_channels=(16, 32),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=8,
)
