"""The digit network: a small CNN that classifies the embedded MNIST digits and, from its penultimate
layer, gives the 64 features that "digit FID" and "digit KID" compare (as Inception-v3's pool3 features
do for the standard FID; Heusel et al. 2017).

    net = load_digit_net()                     # the weights shipped in minidiff/quality/digit_net.safetensors
    logits, features = net(x)                  # x: (B, 1, 28, 28) in [0, 1] -> (B, 10), (B, 64)

It reads 28x28 grey images, the digits' own size, so real digits enter it unchanged. Other sizes are
resized to 28x28 (bilinear, antialiased) by `minidiff.quality.features`; training saw digits that went
through such a round trip (28 -> s -> 28, s in 12..28), so a 16x16 sample is read as well as a 28x28 one.

Split of the 5,000 embedded digits (`minidiff.data.load_digits`, interleaved 0, 1, ..., 9, 0, 1, ...):
indices 0..3999 train the network (400 per class) and are the reference set of digit FID;
indices 4000..4999 (100 per class) are held out for its accuracy and for the FID floor.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

INPUT_SIZE = 28  # pixels, square, one channel
NUM_FEATURES = 64  # width of the penultimate layer: the features of digit FID / KID
NUM_CLASSES = 10
TRAIN_SPLIT = range(0, 4000)  # indices into load_digits(): training set and FID reference
HELD_OUT_SPLIT = range(4000, 5000)  # accuracy and the FID floor
WEIGHTS_FILE = Path(__file__).with_name("digit_net.safetensors")
MIN_SIZE = 8  # pixels: smaller images cannot hold a readable digit
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 RGB -> grey, as PIL's convert("L")
MID_LAYER = 14  # convs[:14] ends with the fourth conv layer's ReLU: (B, 64, 7, 7)


def _conv(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class DigitNet(nn.Module):
    """Five Conv-BatchNorm-ReLU layers with 2x2 max-pools (28 -> 14 -> 7), global average pool,
    Linear-ReLU to 64 features, Linear to 10 logits. 148 k parameters, 11 M multiply-adds per digit."""

    def __init__(self):
        super().__init__()
        self.convs = nn.Sequential(
            *_conv(1, 32), nn.MaxPool2d(2),  # (B, 32, 14, 14)
            *_conv(32, 32), *_conv(32, 64), nn.MaxPool2d(2),  # (B, 64, 7, 7)
            *_conv(64, 64), *_conv(64, 128),  # (B, 128, 7, 7)
        )  # fmt: skip
        self.embed = nn.Linear(128, NUM_FEATURES)
        self.dropout = nn.Dropout(0.1)  # training only
        self.classify = nn.Linear(NUM_FEATURES, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, 1, 28, 28) in [0, 1] -> logits (B, 10), features (B, 64)."""
        return self.read(x)[:2]

    def read(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (B, 1, 28, 28) in [0, 1] -> logits (B, 10), features (B, 64), and the fourth conv layer's
        activations averaged over the image (B, 64), which `minidiff.quality.in_distribution` tests."""
        h = self.convs[:MID_LAYER](x * 2 - 1)  # (B, 64, 7, 7)
        mid = h.mean(dim=(2, 3))  # (B, 64)
        h = self.convs[MID_LAYER:](h).mean(dim=(2, 3))  # (B, 128): global average pool
        features = torch.relu(self.embed(h))  # (B, 64)
        return self.classify(self.dropout(features)), features, mid


def file_digest(path: str | Path) -> str:
    """First 12 hex digits of the file's sha256: names a network's weights in caches and reports."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def load_digit_net(path: str | Path = WEIGHTS_FILE) -> DigitNet:
    """The trained network in eval mode, without gradients."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"digit network weights {path} are missing; train them with `python -m scripts.train_digit_net` "
            "(in the checkout)"
        )
    net = DigitNet()
    net.load_state_dict(load_file(path), strict=True)
    return net.eval().requires_grad_(False)


# ---- what the network reads: (B, 1, 28, 28) floats in [0, 1] ------------------------------------------
def input_notes(shape: tuple[int, ...]) -> list[str]:
    """How images of `shape` (N, C, H, W) are converted for the network, one note per conversion;
    ValueError naming the shape when they cannot be."""
    if len(shape) != 4:
        raise ValueError(f"images have shape {tuple(shape)}; expected (N, C, H, W)")
    _, channels, height, width = shape
    if channels not in (1, 3):
        raise ValueError(f"images have {channels} channels; the digit network reads 1 (grey) or 3 (RGB)")
    if height != width:
        raise ValueError(f"images are {height}x{width}; the digit network reads square images")
    if height < MIN_SIZE:
        raise ValueError(
            f"images are {height}x{width}; the digit network needs at least {MIN_SIZE}x{MIN_SIZE}"
        )
    notes = []
    if channels == 3:
        notes.append("RGB images converted to grey (ITU-R 601 luma) for the digit network")
    if height != INPUT_SIZE:
        notes.append(
            f"{height}x{width} images resized to {INPUT_SIZE}x{INPUT_SIZE} (bilinear, antialiased) for the digit network"
        )
    return notes


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> (B, 1, 28, 28) float in [0, 1], converted as `input_notes` describes."""
    input_notes(tuple(images.shape))  # refuses what cannot be converted
    x = images.float() / 255
    if x.shape[1] == 3:
        x = (x * torch.tensor(LUMA, device=x.device).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
    if x.shape[-1] != INPUT_SIZE:
        x = F.interpolate(
            x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", antialias=True, align_corners=False
        )
    return x.clamp(0, 1)


def digit_split(indices: range, image_size: int = INPUT_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 1, s, s) and int64 labels (N,) of one split, resized as the training data is."""
    from minidiff.data import load_dataset_uint8, load_digits

    _, labels = load_digits()
    images = load_dataset_uint8("digits", image_size, channels=1, limit=indices.stop)  # (N, 1, s, s)
    return images[indices.start : indices.stop], torch.from_numpy(labels[indices.start : indices.stop])


@torch.no_grad()
def accuracy(net: DigitNet, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of `images` (uint8, any size `to_input` takes) that `net` classifies as `labels`."""
    net.eval()
    logits = torch.cat([net(to_input(chunk))[0] for chunk in images.split(500)])
    return (logits.argmax(dim=1) == labels).float().mean().item()


def held_out_digits(image_size: int, channels: int = 1) -> torch.Tensor:
    """The 1,000 held-out digits as uint8 (1000, C, s, s), resized as the training data is."""
    from minidiff.data import load_dataset_uint8

    images = load_dataset_uint8("digits", image_size, channels=channels, limit=HELD_OUT_SPLIT.stop)
    return images[HELD_OUT_SPLIT.start :]
