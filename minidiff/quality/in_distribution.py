"""Is an image a digit at all? A calibrated out-of-distribution test on the digit network's own activations,
so that "confident digit" means "a digit the network is sure of", not "anything the network is sure of".

    stats = load_stats()                                  # shipped in minidiff/quality/digit_stats.safetensors
    logits, features, mid = load_digit_net().read(x)      # x: (B, 1, 28, 28) in [0, 1]
    d = distance(mid, stats)                              # (B,): <= 1 reads as a digit, > 1 does not

Why: a classifier is confident far from its data. The digit network calls every Gaussian-noise image, every
blank image and every uniform grey image a digit with p > 0.99, so its confidence alone cannot tell a model
that draws digits from one that draws noise.

Method: the class-conditional Gaussian of Lee et al. 2018 ("A simple unified framework for detecting
out-of-distribution samples and adversarial attacks"): one mean per class and one shared covariance,
fitted on the 4,000 training-split digits (indices 0..3999, the network's own training data); an image's
score is its Mahalanobis distance to the nearest class mean,
    D(x) = min_c (h(x) - mu_c)^T Sigma^-1 (h(x) - mu_c),
divided by a threshold, so that D <= 1 reads as a digit. h(x) is the fourth conv layer's 64 activations
averaged over the 7x7 image, not the 64 penultimate features: those are made to separate classes and
place noise, blank and scrambled images near class means (the blobs of three discs, uniform low-pass noise
and random strokes pass a penultimate-feature test 20 to 25% of the time; this layer lets through under
6%); the later layers add nothing that this one misses. The layer reads blur as well as shape, so the
Gaussians are fitted on the training digits at 28, 20, 16 and 12 pixels (enlarged to 28 as `to_input`
enlarges samples), and the threshold is the 99th percentile of D on the native 28x28 training digits,
the widest of these: 99% of the training digits pass at 28x28, more at smaller sizes. Nothing of the
network changes (weights, features, digit FID, accuracy); the statistics are 38 KB beside its weights,
and `fit_stats()` remakes them from the embedded digits, the same numbers every run.

    python -m scripts.fit_digit_stats                 # refit -> minidiff/quality/digit_stats.safetensors
"""

from __future__ import annotations

from pathlib import Path

import torch

from minidiff.quality.digit_net import (
    NUM_CLASSES,
    TRAIN_SPLIT,
    WEIGHTS_FILE,
    DigitNet,
    digit_split,
    file_digest,
    load_digit_net,
    to_input,
)

STATS_FILE = Path(__file__).with_name("digit_stats.safetensors")
FIT_SIZES = (28, 20, 16, 12)  # pixels: the training digits are read at each size, as samples of it would be
THRESHOLD_QUANTILE = 0.99  # of D on the training digits at 28x28: the share of them that reads as digits
RIDGE = 1e-3  # Sigma + RIDGE * mean(diag Sigma) * I: a few channels are nearly constant on digits


@torch.no_grad()
def mid_activations(net: DigitNet, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """uint8 (N, C, H, W) -> the tested activations (N, 64) in float64."""
    return torch.cat([net.read(to_input(chunk))[2] for chunk in images.split(batch_size)]).double()


def squared_distances(mid: torch.Tensor, means: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """(N, 64) activations -> (N,) squared Mahalanobis distance to the nearest class mean."""
    centred = mid.double()[:, None, :] - means[None]  # (N, 10, 64)
    return torch.einsum("nkd,de,nke->nk", centred, precision, centred).min(dim=1).values


def fit_stats(weights: str | Path = WEIGHTS_FILE) -> dict[str, torch.Tensor]:
    """Class means (10, 64), the shared precision Sigma^-1 (64, 64) and the threshold of D, all float64,
    from the training-split digits at every size in FIT_SIZES (see the module docstring)."""
    net = load_digit_net(weights)
    activations, labels = [], []
    for size in FIT_SIZES:
        images, size_labels = digit_split(TRAIN_SPLIT, size)  # (4000, 1, s, s), (4000,)
        activations.append(mid_activations(net, images))
        labels.append(size_labels)
    mid, y = torch.cat(activations), torch.cat(labels)  # (4 * 4000, 64), (4 * 4000,)
    means = torch.stack([mid[y == c].mean(dim=0) for c in range(NUM_CLASSES)])  # mu_c
    centred = mid - means[y]
    covariance = centred.T @ centred / len(mid)  # Sigma, shared by the classes (tied)
    covariance += RIDGE * covariance.diagonal().mean() * torch.eye(len(covariance), dtype=torch.float64)
    precision = torch.linalg.inv(covariance)
    native = squared_distances(activations[FIT_SIZES.index(28)], means, precision)
    threshold = torch.quantile(native, THRESHOLD_QUANTILE)
    return {"means": means, "precision": precision, "threshold": threshold.reshape(1)}


def save_stats(stats: dict[str, torch.Tensor], path: str | Path = STATS_FILE, weights=WEIGHTS_FILE) -> Path:
    """Write the statistics with the digest of the weights they were fitted on."""
    from safetensors.torch import save_file

    meta = {"weights": file_digest(weights), "sizes": ",".join(map(str, FIT_SIZES))}
    meta["quantile"] = str(THRESHOLD_QUANTILE)
    save_file({k: v.contiguous() for k, v in stats.items()}, str(path), metadata=meta)
    return Path(path)


def load_stats(path: str | Path = STATS_FILE, weights: str | Path = WEIGHTS_FILE) -> dict[str, torch.Tensor]:
    """The shipped statistics; ValueError when they were fitted on other weights than `weights`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        fitted_on = (f.metadata() or {}).get("weights")
        if fitted_on != file_digest(weights):
            raise ValueError(
                f"{path} was fitted on digit network weights {fitted_on!r}, not {file_digest(weights)!r} "
                f"({weights}); refit it with `python -m scripts.fit_digit_stats` (in the checkout)"
            )
        return {key: f.get_tensor(key) for key in f.keys()}


def distance(mid: torch.Tensor, stats: dict[str, torch.Tensor]) -> torch.Tensor:
    """(N, 64) activations -> D(x) / threshold (N,) float32: <= 1 reads as a digit."""
    squared = squared_distances(mid, stats["means"], stats["precision"])
    return (squared / stats["threshold"]).float()
