"""Features of the real data, computed once and cached in a safetensors file named by what they depend on:
the data, the image size and channels, and the feature network (its name and a digest of its weights).

    feats, path, cached = reference_features("digits", 16, 1, network, cache_dir="out/demo/model/eval/reference")
    # -> out/demo/model/eval/reference/digits-train_16px_1ch_digitnet-1a2b3c4d5e6f.safetensors

For "digits" the reference set is the training split of the digit network (indices 0..3999); the held-out
1,000 digits stay apart for the FID floor. Any other source (a folder, a hub id) is used whole, or its first
`limit` images. The cache is keyed by the source's name, not its content: delete the file after changing
the files in a folder.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch

from minidiff.quality.digit_net import TRAIN_SPLIT
from minidiff.quality.features import Features, extract_features

CACHE_SUBDIR = Path("eval") / "reference"  # inside a model folder: the default cache


def reference_images(data: str, image_size: int, channels: int, limit: int | None = None) -> torch.Tensor:
    """The real images as uint8 (N, C, s, s), resized and converted exactly as training reads them.

    Args:
        data: `"digits"` (its training split), a folder of images or a hub id.
        image_size: the side s the images are resized to.
        channels: 1 (grey) or 3 (RGB).
        limit: read at most this many images.
    """
    from minidiff.data import DEFAULT_DATASET, load_dataset_uint8

    if data == DEFAULT_DATASET:
        limit = TRAIN_SPLIT.stop if limit is None else min(limit, TRAIN_SPLIT.stop)
    return load_dataset_uint8(data, image_size, channels=channels, limit=limit)


def reference_name(data: str, image_size: int, channels: int, network_id: str, limit: int | None) -> str:
    """The cache file's name: readable, and distinct for every input it depends on.

    Args:
        data: the data set, as passed to `reference_images`.
        image_size: the image side.
        channels: the channel count.
        network_id: the feature network's id (it holds a digest of its weights).
        limit: the image limit, or None.
    """
    from minidiff.data import DEFAULT_DATASET

    if data == DEFAULT_DATASET:
        source = "digits-train"
    else:  # a folder or hub id: its last path part, made file-safe, and a digest of the full name
        absolute = str(Path(data).expanduser().resolve()) if Path(data).expanduser().exists() else data
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(data).name or "data")[:40]
        source = f"{slug}-{hashlib.sha256(absolute.encode()).hexdigest()[:8]}"
    if limit is not None:
        source += f"-first{limit}"
    return f"{source}_{image_size}px_{channels}ch_{network_id}.safetensors"


def save_reference(path: str | os.PathLike, features: Features, metadata: dict[str, str]) -> Path:
    """Write the features (and logits) atomically, with `metadata` and the network id in the header.

    Args:
        path: the safetensors file to write.
        features: the features to keep.
        metadata: string keys and values for the file header.
    """
    from safetensors.torch import save_file

    from minidiff.files import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"features": features.values.contiguous()}
    if features.logits is not None:
        tensors["logits"] = features.logits.contiguous()
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={**metadata, "network": features.network})
    return path


def load_reference(path: str | os.PathLike, network_id: str) -> Features:
    """Cached features; ValueError when they were computed by another network than `network_id`.

    Args:
        path: the safetensors file.
        network_id: the id of the network the caller uses.
    """
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        stored = (f.metadata() or {}).get("network")
        if stored != network_id:
            raise ValueError(
                f"reference statistics {path} were computed with network {stored!r}, not {network_id!r}; "
                "delete the file to recompute them"
            )
        logits = f.get_tensor("logits") if "logits" in f.keys() else None
        return Features(f.get_tensor("features"), stored, logits)


def reference_features(
    data: str,
    image_size: int,
    channels: int,
    network,
    cache_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    device: str | torch.device = "cpu",
) -> tuple[Features, Path | None, bool]:
    """The reference features, from the folder `cache_dir` when cached there, else computed (and cached when
    `cache_dir` is given).

    Args:
        data: `"digits"` (its training split), a folder of images or a hub id.
        image_size: the side the images are resized to (the samples' size).
        channels: 1 (grey) or 3 (RGB).
        network: the feature network (`feature_network(...)`).
        cache_dir: the folder of cached statistics; None computes without caching.
        limit: use at most this many real images.
        device: where the features are computed.

    Returns:
        (features, cache file or None, whether it was read from the cache).
    """
    name = reference_name(data, image_size, channels, network.id, limit)
    path = Path(cache_dir) / name if cache_dir is not None else None
    if path is not None and path.is_file():
        return load_reference(path, network.id), path, True
    images = reference_images(data, image_size, channels, limit)
    features = extract_features(images, network, device=device)
    if path is not None:
        meta = {
            "data": data,
            "image_size": str(image_size),
            "channels": str(channels),
            "count": str(len(images)),
        }
        save_reference(path, features, meta)
    return features, path, False
