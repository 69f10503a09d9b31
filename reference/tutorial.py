"""The diffusers tutorial "train a DDPM on 32x32 butterflies", as functions, with diffusers itself.

The steps, in the tutorial's order:
  1. `load_pretrained_pipeline`: johnowhitaker/ddpm-butterflies-32px from the hub, sample 8 images.
  2. `build_dataset`: the butterflies through `datasets` and torchvision (Resize, flip, ToTensor,
     Normalize), batch 64, shuffle.            `show_images` / `make_grid`: look at a batch.
  3. `noising_demo`: `DDPMScheduler.add_noise` at 8 timesteps from 0 to 999.
  4. `build_unet`: widths 64/128/128/256, two resnets per level, attention in the two lowest levels.
  5. `train_loop`: AdamW lr 4e-4, MSE between the true and the predicted noise, squaredcos_cap_v2
     with 1000 steps, the mean loss printed every 5 epochs.
  6. `sample_with_pipeline` and `sample_by_hand` (a loop over `scheduler.timesteps`).

`train_loop` takes optional noise and timesteps so a test can drive it and minidiff's loop with the
very same numbers (tests/test_reference.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

PRETRAINED_ID = "johnowhitaker/ddpm-butterflies-32px"
DATASET_ID = "huggan/smithsonian_butterflies_subset"


# ---- 1. a pretrained pipeline ---------------------------------------------------------------------
def load_pretrained_pipeline(model_id: str = PRETRAINED_ID, device: str | torch.device = "cpu"):
    """diffusers' DDPMPipeline.from_pretrained; without network (and no cache) a one-line OSError."""
    from diffusers import DDPMPipeline

    try:
        return DDPMPipeline.from_pretrained(model_id).to(device)
    except Exception as err:  # hub unreachable, repository missing, not a pipeline folder
        raise OSError(
            f"could not load the pipeline {model_id!r}: {type(err).__name__}: {err}. Loading a hub id needs "
            "network (or the Hugging Face cache); a local pipeline folder works offline."
        ) from err


# ---- 2. the dataset ---------------------------------------------------------------------------------
def tutorial_preprocess(image_size: int = 32):
    """Resize((s, s)), RandomHorizontalFlip(), ToTensor(), Normalize([0.5], [0.5]): pixels in [-1, 1]."""
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Resize((image_size, image_size)),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize([0.5], [0.5]),
        ]
    )


def build_dataset(
    source: str = DATASET_ID, image_size: int = 32, batch_size: int = 64, split: str = "train"
) -> torch.utils.data.DataLoader:
    """The tutorial's DataLoader: batches are dicts with "images" (B, 3, s, s) in [-1, 1], shuffled.

    `source` is a hub dataset id (needs network) or a local folder of images (imagefolder, offline).
    """
    import datasets

    try:
        if Path(source).is_dir():
            dataset = datasets.load_dataset("imagefolder", data_dir=str(source), split=split)
        else:
            dataset = datasets.load_dataset(source, split=split)
    except Exception as err:
        raise OSError(
            f"could not load the dataset {source!r}: {type(err).__name__}: {err}. A hub id needs network; "
            "a local folder of images works offline."
        ) from err
    preprocess = tutorial_preprocess(image_size)

    def transform(examples):
        return {"images": [preprocess(image.convert("RGB")) for image in examples["image"]]}

    dataset.set_transform(transform)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True)


def show_images(x: torch.Tensor) -> Image.Image:
    """A batch in [-1, 1] (B, C, H, W) as one PIL image (torchvision's make_grid, 2-pixel padding)."""
    import torchvision

    x = x * 0.5 + 0.5  # [-1, 1] -> [0, 1]
    grid = torchvision.utils.make_grid(x)
    grid_im = grid.detach().cpu().permute(1, 2, 0).clip(0, 1) * 255  # (H, W, C)
    return Image.fromarray(grid_im.numpy().astype(np.uint8))


def make_grid(images: Sequence[Image.Image], size: int = 64) -> Image.Image:
    """PIL images side by side in one row, each resized to size x size."""
    output_im = Image.new("RGB", (size * len(images), size))
    for i, im in enumerate(images):
        output_im.paste(im.resize((size, size)), (i * size, 0))
    return output_im


# ---- 3. noising ------------------------------------------------------------------------------------
def noising_demo(
    xb: torch.Tensor, noise_scheduler=None, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps at 8 timesteps 0..999 (one per image of `xb`).

    Returns (timesteps, noisy images); `show_images(noisy)` is the tutorial's picture.
    """
    from diffusers import DDPMScheduler

    noise_scheduler = noise_scheduler or DDPMScheduler(num_train_timesteps=1000)
    timesteps = torch.linspace(0, 999, 8).long().to(xb.device)
    noise = torch.randn(xb.shape, generator=generator, dtype=xb.dtype).to(xb.device)
    return timesteps, noise_scheduler.add_noise(xb, noise, timesteps[: xb.shape[0]])


# ---- 4. the model -----------------------------------------------------------------------------------
def build_unet(
    sample_size: int = 32,
    in_channels: int = 3,
    out_channels: int = 3,
    layers_per_block: int = 2,
    block_out_channels: tuple[int, ...] = (64, 128, 128, 256),
    down_block_types: tuple[str, ...] = ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    norm_num_groups: int = 32,
):
    """diffusers' UNet2DModel with the tutorial's configuration (the defaults)."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=out_channels,
        layers_per_block=layers_per_block,
        block_out_channels=block_out_channels,
        down_block_types=down_block_types,
        up_block_types=up_block_types,
        norm_num_groups=norm_num_groups,
    )


# ---- 5. training -------------------------------------------------------------------------------------
def train_loop(
    model,
    noise_scheduler,
    dataloader: Iterable,
    epochs: int = 30,
    lr: float = 4e-4,
    noise_and_timesteps: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
    log: Callable[[str], None] | None = print,
    log_every_epochs: int = 5,
) -> list[float]:
    """The tutorial's loop (DDPM Algorithm 1): returns the loss of every step.

    `dataloader` yields dicts with "images" or plain tensors. `noise_and_timesteps`, when given,
    supplies (noise, timesteps) for each step in order instead of torch.randn / torch.randint.
    """
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    injected = iter(noise_and_timesteps) if noise_and_timesteps is not None else None
    losses: list[float] = []
    steps_per_epoch = 0
    for epoch in range(epochs):
        steps_this_epoch = 0
        for batch in dataloader:
            clean_images = (batch["images"] if isinstance(batch, dict) else batch).to(device)
            bs = clean_images.shape[0]
            if injected is None:
                noise = torch.randn(clean_images.shape).to(clean_images.device)
                timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (bs,), device=device)
            else:
                noise, timesteps = next(injected)
                noise, timesteps = noise.to(device), timesteps.to(device)
            # x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps; loss = ||eps - eps_theta(x_t, t)||^2
            noisy_images = noise_scheduler.add_noise(clean_images, noise, timesteps.long())
            noise_pred = model(noisy_images, timesteps, return_dict=False)[0]
            loss = F.mse_loss(noise_pred, noise)
            loss.backward()
            losses.append(loss.item())
            optimizer.step()
            optimizer.zero_grad()
            steps_this_epoch += 1
        steps_per_epoch = steps_this_epoch
        if log is not None and (epoch + 1) % log_every_epochs == 0 and steps_per_epoch:
            log(f"Epoch:{epoch + 1}, loss: {sum(losses[-steps_per_epoch:]) / steps_per_epoch}")
    return losses


# ---- 6. sampling ----------------------------------------------------------------------------------------
def sample_with_pipeline(
    model,
    noise_scheduler,
    batch_size: int = 8,
    generator: torch.Generator | None = None,
    num_inference_steps: int = 1000,
):
    """diffusers' DDPMPipeline over the trained model: a list of PIL images."""
    from diffusers import DDPMPipeline

    image_pipe = DDPMPipeline(unet=model, scheduler=noise_scheduler)
    image_pipe.set_progress_bar_config(disable=True)
    return image_pipe(
        batch_size=batch_size, generator=generator, num_inference_steps=num_inference_steps
    ).images


@torch.no_grad()
def sample_by_hand(
    model, noise_scheduler, batch_size: int = 8, generator: torch.Generator | None = None
) -> torch.Tensor:
    """DDPM Algorithm 2 written out: start from x_T ~ N(0, I), step down through scheduler.timesteps."""
    device = next(model.parameters()).device
    size = model.config.sample_size
    sample = torch.randn(batch_size, model.config.in_channels, size, size, generator=generator).to(device)
    for t in noise_scheduler.timesteps:  # T-1, ..., 0 (or the subset set_timesteps chose)
        residual = model(sample, t).sample
        sample = noise_scheduler.step(residual, t, sample, generator=generator).prev_sample
    return sample  # (B, C, H, W) in about [-1, 1]; show_images(sample) draws it
