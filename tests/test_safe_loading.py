"""Loading never runs code from a file, and a damaged file gives an error that names it.

Every place minidiff reads weights or checkpoints gets a malicious pickle planted: an object whose
`__reduce__` would create a marker file when unpickled (what `pickle.load` / `torch.load(weights_only=False)`
would do). The load must fail with a clear error and the marker must not exist. Truncated and corrupted
safetensors / checkpoint files must fail with the file's name in the message, not deep inside torch.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from tiny import TINY_TRAIN, TINY_UNET

from minidiff import DDPMPipeline, DDPMScheduler, UNet2DModel
from minidiff.models.modeling_utils import PICKLE_WEIGHTS_NAME, WEIGHTS_NAME, load_weights
from minidiff.training import train
from minidiff.training.checkpoint import load_checkpoint
from minidiff.training.config import preset


class _Payload:
    """Unpickling this calls os.open(marker, O_CREAT): the file appears iff the pickle's code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.open, (self.marker, os.O_CREAT | os.O_WRONLY))


def plant(path: Path, marker: Path, legacy: bool = False) -> Path:
    """A torch checkpoint (zip format, or the legacy raw pickle) whose unpickling would create `marker`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"conv_in.weight": torch.zeros(1), "evil": _Payload(marker)}
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy)
    return path


def plant_plain_pickle(path: Path, marker: Path) -> Path:
    """Not even a torch file: a bare pickle.dumps of the payload."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"evil": _Payload(marker)}))
    return path


def test_payload_really_runs_when_unpickled_unsafely(tmp_path):
    """The control: without weights_only the planted file does run code (so the tests below can fail)."""
    marker = tmp_path / "pwned"
    path = plant(tmp_path / "evil.bin", marker)
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.fixture
def unet_folder(tmp_path) -> Path:
    unet = UNet2DModel(**TINY_UNET)
    unet.save_pretrained(tmp_path / "unet_ok")
    return tmp_path / "unet_ok"


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4:UserWarning")  # the bare pickle.dumps file
@pytest.mark.parametrize("suffix", [".bin", ".pt", ".ckpt"])
@pytest.mark.parametrize("kind", ["zip", "legacy", "pickle"])
def test_load_weights_refuses_code(tmp_path, suffix, kind):
    marker = tmp_path / "pwned"
    path = tmp_path / f"weights{suffix}"
    if kind == "pickle":
        plant_plain_pickle(path, marker)
    else:
        plant(path, marker, legacy=kind == "legacy")
    with pytest.raises(OSError, match=r"(?s)weights_only=True.*convert it once") as info:
        load_weights(path)
    assert path.name in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("legacy", [False, True])
def test_unet_from_pretrained_refuses_code(unet_folder, tmp_path, legacy):
    marker = tmp_path / "pwned"
    (unet_folder / WEIGHTS_NAME).unlink()  # only the old .bin is left: it is what gets loaded
    plant(unet_folder / PICKLE_WEIGHTS_NAME, marker, legacy=legacy)
    with pytest.raises(OSError, match=PICKLE_WEIGHTS_NAME):
        UNet2DModel.from_pretrained(unet_folder)
    assert not marker.exists()


def test_pipeline_from_pretrained_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "pipe"
    DDPMPipeline(UNet2DModel(**TINY_UNET), DDPMScheduler(num_train_timesteps=10)).save_pretrained(folder)
    (folder / "unet" / WEIGHTS_NAME).unlink()
    plant(folder / "unet" / PICKLE_WEIGHTS_NAME, marker)
    with pytest.raises(OSError, match="weights_only"):
        DDPMPipeline.from_pretrained(folder)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pt", ".ckpt", ".bin"])
def test_load_checkpoint_refuses_code(tmp_path, suffix):
    marker = tmp_path / "pwned"
    path = plant(tmp_path / f"step-00000001{suffix}", marker)
    with pytest.raises(ValueError, match=f"(?s)checkpoint .*{path.name}.* could not be read"):
        load_checkpoint(path)
    assert not marker.exists()


def test_training_resume_refuses_a_planted_checkpoint(tmp_path):
    """`train(resume=True)` reads the newest step-*.pt: a malicious one stops the run before anything runs."""
    marker = tmp_path / "pwned"
    config = preset(
        "tiny",
        **{**TINY_TRAIN, "max_steps": 2, "resume": True},
        out_dir=str(tmp_path / "run"),
    )
    plant(tmp_path / "run" / "checkpoints" / "step-00000005.pt", marker)
    with pytest.raises(ValueError, match="(?s)step-00000005.pt.* could not be read"):
        train(config)
    assert not marker.exists()


# ---- damaged files -----------------------------------------------------------------------------------
def _truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize(
    "damage",
    ["truncated-half", "truncated-header", "empty", "garbage", "flipped-header-length"],
)
def test_damaged_safetensors_names_the_file(unet_folder, damage):
    path = unet_folder / WEIGHTS_NAME
    if damage == "truncated-half":
        _truncate(path, 0.5)
    elif damage == "truncated-header":
        path.write_bytes(path.read_bytes()[:20])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "garbage":
        path.write_bytes(os.urandom(4096))
    else:  # the 8-byte little-endian header length says the header is far longer than the file
        data = bytearray(path.read_bytes())
        data[:8] = (len(data) * 4).to_bytes(8, "little")
        path.write_bytes(bytes(data))
    with pytest.raises(OSError, match=rf"{WEIGHTS_NAME} is not a valid safetensors file"):
        UNet2DModel.from_pretrained(unet_folder)


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_damaged_checkpoint_names_the_file(tmp_path, damage):
    path = tmp_path / "step-00000001.pt"
    torch.save({"model": {"w": torch.randn(64, 64)}, "step": 1}, path)
    if damage == "truncated":
        _truncate(path, 0.6)
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(os.urandom(2048))
    with pytest.raises(ValueError, match="(?s)step-00000001.pt.* could not be read"):
        load_checkpoint(path)


def test_weights_of_the_wrong_model_name_the_file(unet_folder, tmp_path):
    other = UNet2DModel(**{**TINY_UNET, "block_out_channels": (4, 8)})
    other.save_pretrained(tmp_path / "other")
    os.replace(tmp_path / "other" / WEIGHTS_NAME, unet_folder / WEIGHTS_NAME)
    with pytest.raises(ValueError, match=rf"{WEIGHTS_NAME} do not fit the UNet2DModel"):
        UNet2DModel.from_pretrained(unet_folder)


@pytest.mark.parametrize(
    "key, value",
    [
        ("block_out_channels", "64,128"),
        ("layers_per_block", "2"),
        ("norm_eps", "small"),
        ("sample_size", 3.5),
        ("add_attention", "yes"),
    ],
)
def test_unet_config_with_wrong_types_names_the_key(unet_folder, key, value):
    path = unet_folder / "config.json"
    config = json.loads(path.read_text())
    config[key] = value
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"config key '{key}' has value"):
        UNet2DModel.from_pretrained(unet_folder)


@pytest.mark.parametrize(
    "key, value",
    [("num_train_timesteps", "1000"), ("clip_sample", 1), ("beta_start", [0.1]), ("trained_betas", "x")],
)
def test_scheduler_config_with_wrong_types_names_the_key(tmp_path, key, value):
    DDPMScheduler().save_pretrained(tmp_path)
    path = tmp_path / "scheduler_config.json"
    config = json.loads(path.read_text())
    config[key] = value
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"config key '{key}' has value"):
        DDPMScheduler.from_pretrained(tmp_path)
