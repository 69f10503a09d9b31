"""FID and KID from torchmetrics on features computed once, and the digit network's own judgement.

    fid(real, fake)                  # Frechet distance of Gaussians fitted to the two feature sets
    kid(real, fake, seed=0)          # kernel (MMD^2, cubic polynomial kernel) distance: mean and std
    digit_scores(fake)               # share of confident digits, entropy of the predicted classes

FID (Heusel et al. 2017): ||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2)).
KID (Binkowski et al. 2018): the unbiased MMD^2 estimate with k(x, y) = (x.y / d + 1)^3, averaged over
random subsets; unbiased at any sample count, so it suits small sets where FID is biased upwards.

torchmetrics does the arithmetic (in float64). Its metric objects take images and run a feature network
themselves; here they get a pass-through "network", so that the real features can come from a cache and
each feature network runs once per image.
"""

from __future__ import annotations

import math
import warnings

import torch

from minidiff.quality.features import Features

CONFIDENCE = 0.9  # a confident digit: the classifier's top probability reaches this, and the image is
# in the digits' distribution (`minidiff.quality.in_distribution`: distance <= 1)
CONFIDENT_RULE = f"p >= {CONFIDENCE}, in-distribution"  # how reports name the criterion


class _PassThrough(torch.nn.Module):
    """The "feature network" handed to torchmetrics: the features are already computed."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def _check_pair(real: Features, fake: Features) -> int:
    if real.network != fake.network:
        raise ValueError(
            f"the reference features come from network {real.network!r} and the samples' from "
            f"{fake.network!r}; compare features of one network (recompute the reference statistics)"
        )
    if real.values.shape[1] != fake.values.shape[1]:
        raise ValueError(f"feature widths differ: {real.values.shape[1]} vs {fake.values.shape[1]}")
    for what, feats in (("reference", real), ("sample", fake)):
        if not torch.isfinite(feats.values).all():
            raise ValueError(f"the {what} features hold NaN or inf values")
    return real.values.shape[1]


def check_fid_count(count: int, width: int, label: str) -> None:
    """FID fits a Gaussian to each feature set: more samples than features, or the covariance is singular.
    `label` names the setting that gave `count` (e.g. "--num-samples 10")."""
    if isinstance(count, bool) or not isinstance(count, int) or count <= width:
        raise ValueError(
            f"{label}: FID on {width} features needs more than {width} samples for a full-rank covariance "
            "(use more, or KID, which is unbiased on small sets)"
        )


def fid(real: Features, fake: Features) -> float:
    """Frechet distance between the two feature sets (torchmetrics' FID on given features).

    Each set needs more samples than features, or its covariance is singular (use `kid` for small sets).

    Args:
        real: features of the real images.
        fake: features of the samples, under the same network.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    width = _check_pair(real, fake)
    for what, feats in (("reference", real), ("sample", fake)):
        check_fid_count(len(feats), width, f"{len(feats)} {what} images")
    metric = FrechetInceptionDistance(feature=_PassThrough(width))
    metric.update(real.values.double(), real=True)
    metric.update(fake.values.double(), real=False)
    return float(metric.compute())


def kid(
    real: Features, fake: Features, subsets: int = 10, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID's mean and standard deviation over `subsets` random subsets of min(subset_size, N_real, N_fake)
    images each; the subsets are drawn from `seed` (torchmetrics draws from the global RNG, which is
    restored afterwards). 10 subsets, not torchmetrics' 100: each costs three 1000 x 1000 kernel matrices
    (about 0.3 s on 2 CPU cores), and with 1,000 samples every subset holds all of them anyway.

    Args:
        real: features of the real images.
        fake: features of the samples, under the same network.
        subsets: how many random subsets to average over.
        subset_size: the largest subset.
        seed: seeds the draw of the subsets.

    Returns:
        (mean, std) of KID over the subsets.
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    width = _check_pair(real, fake)
    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise ValueError(
            f"KID needs at least 2 images per set; got {len(real)} reference, {len(fake)} samples"
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = KernelInceptionDistance(feature=_PassThrough(width), subsets=subsets, subset_size=size)
    metric.update(real.values.double(), real=True)
    metric.update(fake.values.double(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def digit_scores(fake: Features, confidence: float = CONFIDENCE) -> dict[str, object]:
    """What the digit network says about the samples: the share of confident digits (top probability
    >= `confidence` and distance <= 1 from the training digits), the share in the digits' distribution
    whatever the classifier says, and the entropy (bits) of the predicted-class histogram: log2(10) = 3.32
    when all ten digits appear equally often, 0 when every sample is the same digit.

    Args:
        fake: the samples' features under the digit network (with logits and distances).
        confidence: the top probability a confident digit reaches (default 0.9).

    Returns:
        The scores by name.
    """
    if fake.logits is None or fake.distance is None:
        raise ValueError(f"network {fake.network!r} is not the digit classifier: no class scores")
    probabilities = fake.logits.double().softmax(dim=1)  # (N, 10)
    top, predicted = probabilities.max(dim=1)
    in_distribution = fake.distance <= 1
    counts = torch.bincount(predicted, minlength=probabilities.shape[1])
    shares = counts.double() / counts.sum()
    entropy = sum(p * math.log2(1 / p) for p in shares.tolist() if p > 0)  # H = sum p log2(1/p)
    return {
        "confident_share": float(((top >= confidence) & in_distribution).double().mean()),
        "in_distribution_share": float(in_distribution.double().mean()),
        "class_entropy_bits": entropy,
        "class_counts": counts.tolist(),
    }
