"""Feature networks: images -> the feature vectors that FID and KID compare.

    network = feature_network("digit")         # the shipped digit CNN: 64 features, 10 logits, a distance
    network = feature_network("inception")     # Inception-v3 pool3, 2048 features (pip install 'minidiff[fid]')
    feats = extract_features(images, network)  # images: uint8 (N, C, H, W), or floats in [0, 1]

Every image is first brought to uint8, as a PNG file would hold it, so generated samples and real data
are read through the same conversion. Images a network cannot read are refused with the reason; images
it can read after a conversion (size, channels) are converted, and the conversion is noted in `.notes`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

import minidiff.quality.digit_net as digit_net
import minidiff.quality.in_distribution as in_distribution
from minidiff.viz import to_uint8

NETWORKS = ("digit", "inception")
# torch-fidelity's port of the TensorFlow FID Inception weights (Heusel et al. 2017), as pytorch-fid uses
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
INCEPTION_ID = "inception-v3-compat-6726825d"  # torch-fidelity's name for the network, and the file's digest


@dataclass
class Features:
    """Features of N images under one network; `logits` only for a classifier (the digit network).

    Args:
        values: (N, num_features) float32, on the CPU.
        network: the network's id: its name and a digest of its weights.
        logits: (N, num_classes) class logits (digit network only).
        distance: (N,) out-of-distribution score, <= 1 reads as a digit (digit network only).
        notes: the conversions applied to the images.
    """

    values: torch.Tensor  # (N, num_features) float32, on the CPU
    network: str  # the network's id: its name and a digest of its weights
    logits: torch.Tensor | None = None  # (N, num_classes)
    distance: torch.Tensor | None = None  # (N,) out-of-distribution score, <= 1 reads as a digit (digit only)
    notes: list[str] = field(default_factory=list)  # conversions applied to the images

    def __len__(self) -> int:
        return len(self.values)


class DigitFeatures:
    """The shipped digit CNN (`minidiff.quality.digit_net`): penultimate features, class logits, and the
    distance of each image from the training digits (`minidiff.quality.in_distribution`)."""

    name = "digit"
    num_features = digit_net.NUM_FEATURES

    def __init__(
        self,
        weights: str | os.PathLike = digit_net.WEIGHTS_FILE,
        stats: str | os.PathLike = in_distribution.STATS_FILE,
    ):
        self.net = digit_net.load_digit_net(weights)
        self.stats = in_distribution.load_stats(stats, weights)
        self.id = f"digitnet-{digit_net.file_digest(weights)}"

    def notes(self, shape: tuple[int, ...]) -> list[str]:
        return digit_net.input_notes(shape)

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """uint8 (B, C, H, W) -> features (B, 64), logits (B, 10), distance (B,)."""
        self.net.to(images.device)
        logits, features, mid = self.net.read(digit_net.to_input(images))
        return features, logits, in_distribution.distance(mid.cpu(), self.stats)


class InceptionFeatures:
    """Inception-v3's 2048 pool3 features, the standard FID network, through torchmetrics / torch-fidelity.

    `extractor`: any module with the same interface (uint8 (B, 3, H, W) -> (B, num_features)) in its place;
    the tests use a small stand-in, since the real weights cannot be downloaded there.
    """

    name = "inception"

    def __init__(self, extractor: torch.nn.Module | None = None, num_features: int = 2048):
        if extractor is None:
            extractor, self.id = _load_inception(), INCEPTION_ID
        else:
            self.id = f"stand-in-{type(extractor).__name__}"
        self.extractor = extractor.eval().requires_grad_(False)
        self.num_features = num_features

    def notes(self, shape: tuple[int, ...]) -> list[str]:
        if len(shape) != 4 or shape[1] not in (1, 3):
            raise ValueError(f"images have shape {tuple(shape)}; Inception reads (N, 1 or 3, H, W)")
        notes = [
            f"{shape[2]}x{shape[3]} images resized to 299x299 inside Inception (TF1-compatible bilinear)"
        ]
        if shape[1] == 1:
            notes.append("grey images repeated to 3 channels for Inception")
        return notes

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        self.notes(tuple(images.shape))
        self.extractor.to(images.device)
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return self.extractor(images.contiguous()), None, None


def _load_inception() -> torch.nn.Module:
    """torchmetrics' NoTrainInceptionV3 on the FID weights: from the torch hub cache, else downloaded once."""
    try:
        import torch_fidelity  # noqa: F401  (torchmetrics' Inception is torch-fidelity's)
        from torchmetrics.image.fid import NoTrainInceptionV3
    except ImportError as err:
        raise ModuleNotFoundError(
            f"Inception FID needs torch-fidelity ({err}): pip install 'minidiff[fid]'"
        ) from err
    path = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if not path.is_file():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(INCEPTION_URL, str(path), progress=True)
        except Exception as err:
            raise RuntimeError(
                f"the Inception FID weights are not in {path.parent} and could not be downloaded "
                f"({type(err).__name__}: {err}); fetch {INCEPTION_URL} into that folder"
            ) from err
    # antialias=False: torch-fidelity's TF1-compatible resize, as the FID reference code resizes
    return NoTrainInceptionV3("inception-v3-compat", ["2048"], str(path), antialias=False)


def feature_network(name: str, **options) -> DigitFeatures | InceptionFeatures:
    """The feature network `name` of a metric group.

    Args:
        name: "digit" (the digit network shipped with minidiff) or "inception" (Inception-v3, needs
            `pip install 'minidiff[fid]'`).
        **options: keywords of the network's class (`weights=`, `extractor=`).
    """
    if name == "digit":
        return DigitFeatures(**options)
    if name == "inception":
        return InceptionFeatures(**options)
    raise ValueError(f"feature network {name!r} is not known; expected one of {list(NETWORKS)}")


def as_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 images unchanged; floats in [0, 1] (B, C, H, W) -> (x * 255).round() as uint8, as diffusers saves
    them. Non-finite values and floats outside [0, 1] are refused (pixels in [-1, 1]? use x / 2 + 0.5)."""
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise ValueError(f"images have dtype {images.dtype}; expected uint8 or floats in [0, 1]")
    bad = (~torch.isfinite(images)).flatten(1).any(dim=1)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} of {len(images)} images hold NaN or inf values")
    low, high = images.min().item(), images.max().item()
    if low < -1e-3 or high > 1 + 1e-3:
        raise ValueError(
            f"float images span [{low:.3g}, {high:.3g}]; expected [0, 1] (for [-1, 1] pixels pass x / 2 + 0.5)"
        )
    return to_uint8(images)


@torch.no_grad()
def extract_features(
    images: torch.Tensor,
    network: DigitFeatures | InceptionFeatures,
    batch_size: int = 500,
    device: str | torch.device = "cpu",
) -> Features:
    """`network`'s features (and logits, distances) of `images`, `batch_size` images at a time on `device`.

    Args:
        images: (N, C, H, W) uint8, or floats in [0, 1].
        network: a network from `feature_network`.
        batch_size: images per forward pass.
        device: where the network runs.

    Returns:
        The `Features`, on the CPU.
    """
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"images have shape {tuple(images.shape)}; expected (N, C, H, W) with N >= 1")
    notes = network.notes(tuple(images.shape))  # refuses what the network cannot read, before any work
    images = as_uint8(images)
    values, logits, distances = [], [], []
    for chunk in images.split(batch_size):
        feats, chunk_logits, chunk_distance = network(chunk.to(device))
        values.append(feats.float().cpu())
        if chunk_logits is not None:
            logits.append(chunk_logits.float().cpu())
        if chunk_distance is not None:
            distances.append(chunk_distance.float().cpu())
    logits, distances = (torch.cat(t) if t else None for t in (logits, distances))
    return Features(torch.cat(values), network.id, logits, distances, notes)
