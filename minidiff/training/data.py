"""What a run reads: the whole data set decoded once into memory, or streamed from disk by workers.

Either way a batch is the uint8 pixels of the epoch's images in the epoch's order (`rules.epoch_order`),
mirrored where the epoch's flips say: the same numbers, so a streamed run equals a resident one bit for
bit. Resident data is decoded before step 1 (all unreadable images are named at once); it is what the
fast engine needs. A data set larger than `data_budget_mb` streams: a DataLoader decodes, resizes and
flips in worker processes, ahead of the step that needs it, into pinned memory when training on a GPU.
"""

from __future__ import annotations

import logging
import os

import torch
from torch.utils.data import DataLoader, Dataset

from minidiff.data import decode_all, default_channels, describe_bad_images, open_images, to_uint8
from minidiff.training.config import TrainConfig
from minidiff.training.rules import gather_images

logger = logging.getLogger(__name__)


class ResidentImages:
    """The data set as one uint8 tensor (N, C, H, W) in host memory."""

    def __init__(self, images: torch.Tensor):
        self.images = images
        self.order: torch.Tensor | None = None
        self.flips: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    def start_epoch(self, order: torch.Tensor, flips: torch.Tensor | None, batch_size: int, first_batch: int):
        self.order, self.flips, self.batch_size = order, flips, batch_size

    def batch(self, b: int) -> torch.Tensor:
        """uint8 pixels (B, C, H, W) of batch b of the epoch."""
        index = self.order[b * self.batch_size : (b + 1) * self.batch_size]
        return gather_images(self.images, index, self.flips)


class _Flipped(Dataset):
    """Item (index, flip) -> uint8 pixels (C, H, W) of image `index`, mirrored if `flip`; decoded in a
    worker. An unreadable image is None when skipped, else its error names the file."""

    def __init__(self, images: Dataset, skip_bad_images: bool):
        self.images, self.skip_bad_images = images, skip_bad_images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: tuple[int, bool]) -> torch.Tensor | None:
        index, flip = item
        try:
            pixels = to_uint8(self.images[index])
        except ValueError as err:
            if not self.skip_bad_images:
                raise
            logger.warning("skipped: %s", err)
            return None
        return pixels.flip(-1) if flip else pixels


def _stack_readable(items: list[torch.Tensor | None]) -> torch.Tensor:
    return torch.stack([x for x in items if x is not None])


class StreamedImages:
    """The data set decoded on the fly by `num_workers` DataLoader workers, a few batches ahead."""

    def __init__(
        self, images: Dataset, channels: int, num_workers: int, pin_memory: bool, skip_bad_images: bool
    ):
        self.dataset = _Flipped(images, skip_bad_images)
        self.channels, self.num_workers, self.pin_memory = channels, num_workers, pin_memory
        self.batches = None
        self.next_batch = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def start_epoch(self, order: torch.Tensor, flips: torch.Tensor | None, batch_size: int, first_batch: int):
        """Queue the epoch's batches from `first_batch` on (a resumed run starts mid-epoch)."""
        index = order.tolist()
        mirrored = flips.tolist() if flips is not None else [False] * len(index)  # flips[i]: image i's
        items = [(i, mirrored[i]) for i in index]
        batches = [items[i : i + batch_size] for i in range(first_batch * batch_size, len(items), batch_size)]
        loader = DataLoader(
            self.dataset,
            batch_sampler=batches,
            num_workers=self.num_workers,
            collate_fn=_stack_readable,
            pin_memory=self.pin_memory,
        )
        self.batches, self.next_batch = iter(loader), first_batch

    def batch(self, b: int) -> torch.Tensor:
        if b != self.next_batch:
            raise RuntimeError(f"streamed batches come in order: batch {b} asked, {self.next_batch} is next")
        self.next_batch += 1
        return next(self.batches)


def default_workers() -> int:
    """Decoding workers when a data set streams: one per core, at most 4."""
    return min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def open_training_images(config: TrainConfig, device: torch.device) -> ResidentImages | StreamedImages:
    """Resident when the uint8 data set fits `config.data_budget_mb` (or `stream=False`, or the fast
    engine), streamed otherwise (or `stream=True`)."""
    source = open_images(
        config.data, config.image_size, config.channels, config.limit, center_crop=config.center_crop,
        name=config.dataset_config_name, cache_dir=config.cache_dir,
    )  # fmt: skip
    channels = default_channels(config.data, config.channels)
    size_mb = len(source) * channels * config.image_size**2 / 2**20
    stream = config.stream if config.stream is not None else size_mb > config.data_budget_mb
    if config.fast or not stream:
        return ResidentImages(decode_all(source, str(config.data), config.progress, config.skip_bad_images))
    workers = config.num_workers if config.num_workers is not None else default_workers()
    logger.info(
        "streaming %d images (%.0f MB as uint8 > data_budget_mb=%d) with %d workers",
        len(source), size_mb, config.data_budget_mb, workers,
    )  # fmt: skip
    _check_headers(source, str(config.data), config.skip_bad_images)
    return StreamedImages(source, channels, workers, device.type == "cuda", config.skip_bad_images)


def _check_headers(source: Dataset, name: str, skip: bool) -> None:
    """Open every file's header (not its pixels) before step 1, so unreadable files are named at once."""
    check = getattr(source, "check_header", None)
    if check is None:  # the embedded digits: nothing to check
        return
    bad = [reason for i in range(len(source)) if (reason := check(i)) is not None]
    if bad and not skip:
        raise ValueError(
            describe_bad_images(bad, len(source), name)
            + "\nfix or remove them, or skip them (skip_bad_images / --skip-bad-images)"
        )
    if bad:
        summary = f"skipping {len(bad)} of {len(source)} images in {name!r} that cannot be read"
        logger.warning("%s\n%s", summary, describe_bad_images(bad, len(source), name))
