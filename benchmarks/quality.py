"""Digit KID of the images each sampling row produced: what a fast path costs in quality, beside its speed.

KID (not FID): it is unbiased at the sampling case's batch sizes, far below the 65 images FID needs on the
digit network's 64 features. The benchmark UNet has random weights unless it was trained, so the figure
is comparable between the rows of one case (same seed, same noise), not with the README's calibration.
"""

from __future__ import annotations

import torch

REFERENCE_DIGITS = 1000  # training-split digits in the reference set: enough for KID, read in a second


def digit_reference(image_size: int, channels: int):
    """The digit network and its features of the first 1,000 training digits at the samples' size."""
    from minidiff.quality.features import feature_network
    from minidiff.quality.reference import reference_features

    network = feature_network("digit")
    features = reference_features("digits", image_size, channels, network, limit=REFERENCE_DIGITS)[0]
    return network, features


def digit_kid(images: torch.Tensor, reference) -> float | None:
    """KID of (B, C, H, W) images in [0, 1] against the reference digits; None for B < 2."""
    from minidiff.quality.features import extract_features
    from minidiff.quality.metrics import kid

    if len(images) < 2:
        return None
    network, features = reference
    samples = extract_features(images.detach().float().cpu().clamp(0, 1), network)
    return kid(features, samples)[0]
