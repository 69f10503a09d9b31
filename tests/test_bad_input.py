"""Bad input, everywhere: every public entry point fed wrong types, shapes, dtypes, devices, values,
missing files and missing hub access must fail with an error that names the value and what was expected
(the CLI: a one-line message and a non-zero exit status), and must leave what was saved before intact.

Three tables (pytest ids say what is fed where), then property tests against diffusers: where diffusers
accepts a scheduler config / input, minidiff gives the same numbers; where diffusers rejects it, so does
minidiff.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
from pathlib import Path
from unittest import mock

import diffusers
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image
from tiny import TINY_UNET

import minidiff.models.modeling_utils as modeling_utils
from minidiff import DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel, cli
from minidiff.data import load_dataset, load_dataset_uint8, tutorial_transform
from minidiff.schedulers.scheduling_ddpm import VARIANCE_TYPES
from minidiff.schedulers.scheduling_utils import PREDICTION_TYPES, TIMESTEP_SPACINGS
from minidiff.training import train
from minidiff.training.config import TrainConfig, preset
from minidiff.training.preflight import pick_device


@functools.cache
def unet() -> UNet2DModel:
    return UNet2DModel(**TINY_UNET).eval()


def ddpm() -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=10)


def ddim(steps: int | None = 5) -> DDIMScheduler:
    scheduler = DDIMScheduler(num_train_timesteps=10)
    if steps:
        scheduler.set_timesteps(steps)
    return scheduler


def x(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(shape or (2, 1, 8, 8), generator=torch.Generator().manual_seed(0)).to(dtype)


NAN = float("nan")

# ---- 1. library calls: (call, expected error, regex the message must match) ---------------------------
LIBRARY = {
    # DDPMScheduler / DDIMScheduler construction
    "ddpm beta_schedule unknown": (lambda: DDPMScheduler(beta_schedule="cosine"), ValueError, "beta_schedule 'cosine' is not supported; expected one of"),
    "ddim beta_schedule unknown": (lambda: DDIMScheduler(beta_schedule="laplace2"), ValueError, "beta_schedule 'laplace2'"),
    "ddpm num_train_timesteps 0": (lambda: DDPMScheduler(num_train_timesteps=0), ValueError, "num_train_timesteps must be a positive int, got 0"),
    "ddpm num_train_timesteps float": (lambda: DDPMScheduler(num_train_timesteps=1.5), ValueError, "got 1.5"),
    "ddpm variance_type unknown": (lambda: DDPMScheduler(variance_type="fixed"), ValueError, "variance_type 'fixed'"),
    "ddpm prediction_type unknown": (lambda: DDPMScheduler(prediction_type="x0"), ValueError, "prediction_type 'x0'"),
    "ddpm timestep_spacing unknown": (lambda: DDPMScheduler(timestep_spacing="uniform"), ValueError, "timestep_spacing 'uniform'"),
    "ddpm trained_betas wrong length": (lambda: DDPMScheduler(num_train_timesteps=10, trained_betas=[0.1] * 3), ValueError, r"trained_betas has shape \(3,\); expected \(10,\)"),
    "from_config not a dict": (lambda: DDPMScheduler.from_config(["linear"]), TypeError, "from_config expects a dict"),
    "from_config wrong type": (lambda: DDPMScheduler.from_config({"num_train_timesteps": "10"}), ValueError, "config key 'num_train_timesteps' has value '10'"),
    "from_config list for str": (lambda: DDPMScheduler.from_config({"beta_schedule": ["linear"]}), ValueError, "config key 'beta_schedule'"),
    # set_timesteps
    "set_timesteps 0": (lambda: ddpm().set_timesteps(0), ValueError, r"num_inference_steps 0 is out of range; expected an int in 1\.\.10"),
    "set_timesteps > T": (lambda: ddpm().set_timesteps(11), ValueError, "num_inference_steps 11 is out of range"),
    "set_timesteps float": (lambda: ddpm().set_timesteps(2.5), ValueError, "num_inference_steps 2.5"),
    "set_timesteps bool": (lambda: ddpm().set_timesteps(True), ValueError, "num_inference_steps True"),
    "set_timesteps none": (lambda: ddpm().set_timesteps(), ValueError, "needs `num_inference_steps` or `timesteps`"),
    "set_timesteps both": (lambda: ddpm().set_timesteps(3, timesteps=[5, 1]), ValueError, "only pass one"),
    "custom timesteps ascending": (lambda: ddpm().set_timesteps(timesteps=[1, 5]), ValueError, r"descending order, got \[1, 5\]"),
    "custom timesteps >= T": (lambda: ddpm().set_timesteps(timesteps=[10, 1]), ValueError, r"must lie in \[0, 10\)"),
    "custom timesteps empty": (lambda: ddpm().set_timesteps(timesteps=[]), ValueError, "non-empty 1-d list of ints"),
    "custom timesteps floats": (lambda: ddpm().set_timesteps(timesteps=[5.0, 1.0]), ValueError, "list of ints"),
    "ddim set_timesteps 0": (lambda: ddim(None).set_timesteps(0), ValueError, "num_inference_steps 0"),
    # step
    "step shape mismatch": (lambda: ddpm().step(x(2, 1, 4, 4), 3, x()), ValueError, r"model_output shape \(2, 1, 4, 4\) does not match sample shape \(2, 1, 8, 8\)"),
    "step dtype mismatch": (lambda: ddpm().step(x(dtype=torch.float64), 3, x()), ValueError, "model_output is torch.float64 on cpu but sample is torch.float32"),
    "step device mismatch (meta)": (lambda: ddpm().step(x().to("meta"), 3, x()), ValueError, "on meta but sample is torch.float32 on cpu"),
    "step timestep = T": (lambda: ddpm().step(x(), 10, x()), ValueError, "timestep 10 is out of range; expected 0 <= timestep < 10"),
    "step timestep negative": (lambda: ddpm().step(x(), -1, x()), ValueError, "timestep -1 is out of range"),
    "step timestep float": (lambda: ddpm().step(x(), 2.0, x()), ValueError, "timestep must be an int or a 0-d integer tensor, got 2.0"),
    "step timestep str": (lambda: ddpm().step(x(), "3", x()), ValueError, "got '3'"),
    "step timestep 1-d": (lambda: ddpm().step(x(), torch.tensor([2, 3]), x()), ValueError, r"got shape \(2,\)"),
    "step timestep float tensor": (lambda: ddpm().step(x(), torch.tensor(2.0), x()), ValueError, "torch.float32"),
    "step timestep not scheduled": (lambda: (s := ddpm(), s.set_timesteps(2), s.step(x(), 3, x()))[-1], ValueError, r"timestep 3 is not in scheduler.timesteps \[5, 0\]"),
    "step learned_range needs 2C": (lambda: DDPMScheduler(num_train_timesteps=10, variance_type="learned_range").step(x(), 3, x()), ValueError, "needs a model output with 2 \\* 1 channels"),
    "ddim step before set_timesteps": (lambda: ddim(None).step(x(), 3, x()), ValueError, "run 'set_timesteps'"),
    "ddim step shape mismatch": (lambda: ddim().step(x(2, 1, 4, 4), 8, x()), ValueError, "does not match"),
    # add_noise
    "add_noise float timesteps": (lambda: ddpm().add_noise(x(), x(), torch.tensor([1.0, 2.0])), ValueError, "timesteps must be an integer tensor, got dtype torch.float32"),
    "add_noise timesteps out of range": (lambda: ddpm().add_noise(x(), x(), torch.tensor([1, 10])), ValueError, r"timesteps \[1, 10\] are out of range; expected 0 <= t < 10"),
    "add_noise negative timestep": (lambda: ddpm().add_noise(x(), x(), torch.tensor([-1, 2])), ValueError, "out of range"),
    "add_noise timesteps count": (lambda: ddpm().add_noise(x(3, 1, 8, 8), x(3, 1, 8, 8), torch.tensor([1, 2])), ValueError, r"original_samples \(3, 1, 8, 8\), noise \(3, 1, 8, 8\), timesteps \(2, 1, 1, 1\) do not broadcast"),
    "add_noise noise shape": (lambda: ddpm().add_noise(x(), x(3, 1, 8, 8), torch.tensor([1, 2])), ValueError, r"noise \(3, 1, 8, 8\)"),
    "get_velocity noise shape": (lambda: ddpm().get_velocity(x(), x(2, 1, 4, 4), torch.tensor([1, 2])), ValueError, "do not broadcast"),
    "scaled_linear negative beta": (lambda: DDPMScheduler(beta_schedule="scaled_linear", beta_start=-0.01), ValueError, "beta_start=-0.01; expected >= 0"),
    # UNet2DModel construction and forward
    "unet unknown block": (lambda: UNet2DModel(**{**TINY_UNET, "down_block_types": ("Foo", "DownBlock2D")}), NotImplementedError, "block type 'Foo' is not supported; expected one of"),
    "unet groups do not divide": (lambda: UNet2DModel(**{**TINY_UNET, "norm_num_groups": 3}), ValueError, "cannot be split into 3 groups"),
    "unet block count mismatch": (lambda: UNet2DModel(**{**TINY_UNET, "block_out_channels": (8,)}), ValueError, "expected as many down_block_types"),
    "unet sample 3-d": (lambda: unet()(x(1, 8, 8), 3), ValueError, r"sample of shape \(1, 8, 8\); expected \(B, 1, H, W\)"),
    "unet sample wrong channels": (lambda: unet()(x(2, 3, 8, 8), 3), ValueError, r"sample of shape \(2, 3, 8, 8\)"),
    "unet sample odd size": (lambda: unet()(x(2, 1, 7, 7), 3), ValueError, r"sample size \(7, 7\) cannot be halved 1 times"),
    "unet sample integer dtype": (lambda: unet()(x(dtype=torch.int64), 3), ValueError, "sample is torch.int64 on cpu; expected a floating-point tensor"),
    "unet sample on meta": (lambda: unet()(x().to("meta"), 3), ValueError, r"sample is torch.float32 on meta; expected .* model's device \(cpu\)"),
    "unet timestep batch mismatch": (lambda: unet()(x(), torch.tensor([1, 2, 3])), ValueError, r"timestep of shape \(3,\) does not match the batch of 2"),
    "unet timestep 2-d": (lambda: unet()(x(), torch.ones(2, 2)), ValueError, r"timestep of shape \(2, 2\)"),
    "unet timestep str": (lambda: unet()(x(), "3"), ValueError, "timestep '3'; expected a number"),
    "unet class_labels unconditional": (lambda: unet()(x(), 3, class_labels=torch.tensor([0, 1])), ValueError, "unconditional"),
    # DDPMPipeline
    "pipeline batch_size 0": (lambda: DDPMPipeline(unet(), ddpm())(batch_size=0), ValueError, "batch_size=0; expected a positive int"),
    "pipeline batch_size float": (lambda: DDPMPipeline(unet(), ddpm())(batch_size=1.5), ValueError, "batch_size=1.5"),
    "pipeline output_type": (lambda: DDPMPipeline(unet(), ddpm())(output_type="jpg"), ValueError, "output_type 'jpg' is not supported; expected one of"),
    "pipeline eta with DDPM": (lambda: DDPMPipeline(unet(), ddpm())(eta=0.5), ValueError, "eta=0.5 needs a DDIMScheduler"),
    "pipeline generators count": (lambda: DDPMPipeline(unet(), ddpm())(batch_size=2, generator=[torch.Generator()]), ValueError, "got 1 generators for batch_size=2"),
    "pipeline steps 0": (lambda: DDPMPipeline(unet(), ddpm())(num_inference_steps=0, progress=False), ValueError, "num_inference_steps 0"),
    "pipeline steps > T": (lambda: DDPMPipeline(unet(), ddpm())(num_inference_steps=11, progress=False), ValueError, "num_inference_steps 11"),
    # files that are not there, hub ids without network
    "unet from missing folder": (lambda: UNet2DModel.from_pretrained("/nonexistent/unet"), FileNotFoundError, "/nonexistent/unet/config.json does not exist"),
    "scheduler from missing folder": (lambda: DDPMScheduler.from_pretrained("/nonexistent/s"), FileNotFoundError, "scheduler_config.json does not exist"),
    "pipeline from missing folder": (lambda: DDPMPipeline.from_pretrained("./no/such/pipe"), FileNotFoundError, "model_index.json does not exist"),
    "unet hub id offline": (lambda: UNet2DModel.from_pretrained("someone/no-such-model"), OSError, "'someone/no-such-model' is not a local folder.*(no network\\?)"),
    "pipeline hub id offline": (lambda: DDPMPipeline.from_pretrained("someone/no-such-model"), OSError, "could not be downloaded from the Hugging Face hub nor found in its cache"),
    # data
    "data missing folder": (lambda: load_dataset("./no/such/folder"), FileNotFoundError, "data folder './no/such/folder' does not exist"),
    "data hub id offline": (lambda: load_dataset("someone/no-such-dataset"), ConnectionError, "'someone/no-such-dataset' is not a local folder.*HF_HUB_OFFLINE is set"),
    "data channels 2": (lambda: load_dataset("digits", channels=2), ValueError, "channels=2 is not supported; expected 1 \\(grey\\) or 3 \\(RGB\\)"),
    "data image_size 0": (lambda: load_dataset("digits", image_size=0), ValueError, "image_size=0; expected a positive int"),
    "data image_size str": (lambda: tutorial_transform("32"), ValueError, "image_size='32'"),
    "data limit 0": (lambda: load_dataset("digits", limit=0), ValueError, "limit=0; expected None or a positive int"),
    "data uint8 limit negative": (lambda: load_dataset_uint8("digits", limit=-3), ValueError, "limit=-3"),
    # training settings and devices
    "device cuda without CUDA": (lambda: pick_device("cuda") if not torch.cuda.is_available() else pick_device("cuda:99"), ValueError, "device 'cuda(:99)?'"),
    "device meta": (lambda: pick_device("meta"), ValueError, "device 'meta' holds no data"),
    "device unknown": (lambda: pick_device("tpu"), ValueError, "device 'tpu' is not a torch device"),
    "preset unknown": (lambda: preset("huge"), ValueError, "preset 'huge' is not known"),
    "preset unknown field": (lambda: preset("tiny", learning_rate=1.0), ValueError, r"unknown TrainConfig fields \['learning_rate'\]"),
    "config lr nan": (lambda: TrainConfig(lr=NAN).validate(), ValueError, "lr=nan; expected a positive finite number"),
    "config lr inf": (lambda: TrainConfig(lr=float("inf")).validate(), ValueError, "lr=inf"),
    "config batch_size 0": (lambda: TrainConfig(batch_size=0).validate(), ValueError, "batch_size=0; expected a positive int"),
    "config batch_size float": (lambda: TrainConfig(batch_size=8.0).validate(), ValueError, "batch_size=8.0"),
    "config epochs bool": (lambda: TrainConfig(epochs=True).validate(), ValueError, "epochs=True"),
    "config ema_decay 1": (lambda: TrainConfig(ema_decay=1.0).validate(), ValueError, "ema_decay=1.0"),
    "config grad_clip 0": (lambda: TrainConfig(grad_clip=0.0).validate(), ValueError, "grad_clip=0.0"),
    "config grad_clip nan": (lambda: TrainConfig(grad_clip=NAN).validate(), ValueError, "grad_clip=nan"),
    "config warmup negative": (lambda: TrainConfig(warmup_steps=-1).validate(), ValueError, "warmup_steps=-1"),
    "config mixed_precision": (lambda: TrainConfig(mixed_precision="fp8").validate(), ValueError, "mixed_precision='fp8'"),
    "config sampler": (lambda: TrainConfig(sampler="heun").validate(), ValueError, "sampler='heun'"),
    "config image_size not halvable": (lambda: TrainConfig(image_size=36).validate(), ValueError, "image_size=36 cannot be halved 3 times"),
    "config keep_checkpoints 0": (lambda: TrainConfig(keep_checkpoints=0).validate(), ValueError, "keep_checkpoints=0"),
}  # fmt: skip


@pytest.fixture
def offline(monkeypatch):
    """No hub: HF_HUB_OFFLINE=1 for huggingface_hub (read at import, so patch its constant) and datasets."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize("call, error, match", LIBRARY.values(), ids=LIBRARY.keys())
def test_library_rejects_bad_input_naming_it(call, error, match, offline):
    with pytest.raises(error, match=match):
        call()


# ---- 2. the command line: argparse errors exit 2, library errors print one line and exit 1 ------------
TRAIN = ["train", "--preset", "tiny", "--limit", "4", "--max-steps", "1", "--device", "cpu", "--quiet"]
USAGE_ERRORS = {  # argv -> what argparse's message says
    "no such command": (["fly"], "invalid choice: 'fly'"),
    "train batch size 0": ([*TRAIN, "--batch-size", "0"], "'0' is not a positive integer"),
    "train batch size text": ([*TRAIN, "--batch-size", "many"], "invalid positive_int value: 'many'"),
    "train max steps -5": ([*TRAIN, "--max-steps", "-5"], "'-5' is not a positive integer"),
    "train lr text": ([*TRAIN, "--lr", "fast"], "invalid float value: 'fast'"),
    "train mixed precision fp8": ([*TRAIN, "--mixed-precision", "fp8"], "invalid choice: 'fp8'"),
    "train sampler heun": ([*TRAIN, "--sampler", "heun"], "invalid choice: 'heun'"),
    "train preset huge": ([*TRAIN, "--preset", "huge"], "invalid choice: 'huge'"),
    "train image size 0": ([*TRAIN, "--image-size", "0"], "'0' is not a positive integer"),
    "train keep 0": ([*TRAIN, "--keep-checkpoints", "0"], "'0' is not a positive integer"),
    "train unknown flag": ([*TRAIN, "--learning-rate", "1"], "unrecognized arguments: --learning-rate"),
    "sample without model": (["sample"], "the following arguments are required: --model"),
    "sample num 0": (["sample", "--model", "m", "--num", "0"], "'0' is not a positive integer"),
    "sample sampler": (["sample", "--model", "m", "--sampler", "heun"], "invalid choice: 'heun'"),
    "noise steps text": (["noise", "--num-train-timesteps", "x"], "invalid positive_int value: 'x'"),
    "parity dtype": (["parity", "--model", "m", "--dtype", "fp64"], "invalid choice: 'fp64'"),
}


@pytest.mark.parametrize("argv, message", USAGE_ERRORS.values(), ids=USAGE_ERRORS.keys())
def test_cli_usage_errors_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad-input")
    (root / "empty").mkdir()
    (root / "texts").mkdir()
    (root / "texts" / "notes.txt").write_text("not an image")
    (root / "a-file.png").write_bytes(b"not a png")
    pipe = DDPMPipeline(UNet2DModel(**TINY_UNET), DDPMScheduler(num_train_timesteps=10))
    pipe.save_pretrained(root / "pipe")
    return {"root": root}


def _cli_errors(root: Path) -> dict[str, tuple[list[str], str]]:
    out = ["--out", str(root / "out")]
    return {
        "train lr nan": ([*TRAIN, *out, "--lr", "nan"], "--lr nan; expected a positive finite number"),
        "train lr negative": ([*TRAIN, *out, "--lr", "-1"], "--lr -1;"),
        "train ema decay 1": ([*TRAIN, *out, "--ema-decay", "1"], "--ema-decay 1; expected 0 (off)"),
        "train warmup negative": ([*TRAIN, *out, "--warmup-steps", "-3"], "--warmup-steps -3; expected an int >= 0"),
        "train grad clip 0": ([*TRAIN, *out, "--grad-clip", "0"], "--grad-clip 0;"),
        "train resolution 30": ([*TRAIN, *out, "--resolution", "30"], "--resolution 30 cannot be halved 2 times"),
        "train channels 2": ([*TRAIN, *out, "--channels", "2"], "channels=2 is not supported"),
        "train image size 6": ([*TRAIN, *out, "--image-size", "6"], "--image-size 6 cannot be halved 2 times"),
        "train device cuda": ([*TRAIN, *out, "--device", "cuda:99"], "device 'cuda:99'"),
        "train device meta": ([*TRAIN, *out, "--device", "meta"], "device 'meta' holds no data"),
        "train device tpu": ([*TRAIN, *out, "--device", "tpu"], "device 'tpu' is not a torch device"),
        "train data missing": ([*TRAIN, *out, "--data", "./no/such/folder"], "does not exist"),
        "train data empty folder": ([*TRAIN, *out, "--data", str(root / "empty")], "holds no image files"),
        "train data no images": ([*TRAIN, *out, "--data", str(root / "texts")], "holds no image files"),
        "train data is a file": ([*TRAIN, *out, "--data", str(root / "a-file.png")], "is a file; expected a folder"),
        "train data hub offline": ([*TRAIN, *out, "--data", "someone/data"], "HF_HUB_OFFLINE is set"),
        "sample model missing": (["sample", "--model", "./no/such/pipe"], "model_index.json does not exist"),
        "sample model hub offline": (["sample", "--model", "someone/model"], "nor found in its cache"),
        "sample eta with ddpm": (
            ["sample", "--model", str(root / "pipe"), "--eta", "0.5", "--steps", "2", "--quiet"],
            "eta=0.5 needs a DDIMScheduler",
        ),
        "sample device meta": (["sample", "--model", str(root / "pipe"), "--device", "meta"], "holds no data"),
        "sample steps > T": (["sample", "--model", str(root / "pipe"), "--steps", "11"], "num_inference_steps 11"),
        "noise schedule cosine": (["noise", "--schedule", "cosine", *out], "beta_schedule 'cosine' is not supported"),
        "noise index negative": (["noise", "--index", "-1", *out], "--index -1; expected the index of an image"),
        "noise index too large": (["noise", "--index", "5000", *out], "--index 5000; 'digits' holds only 5000 images"),
        "noise data missing": (["noise", "--data", "./no/such/folder", *out], "does not exist"),
    }  # fmt: skip


CLI_ERROR_IDS = list(_cli_errors(Path("/x")))


@pytest.mark.parametrize("name", CLI_ERROR_IDS)
def test_cli_errors_exit_1_with_one_line(name, folders, offline, capsys):
    argv, message = _cli_errors(folders["root"])[name]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]  # (above it, `datasets` may have drawn a progress bar)
    assert last.startswith(f"minidiff {argv[0]}: error: ") and message in last, err


# ---- 3. nothing saved before is damaged ---------------------------------------------------------------
def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_failing_unet_save_leaves_the_old_folder_loadable(tmp_path, monkeypatch):
    UNet2DModel(**TINY_UNET).save_pretrained(tmp_path)
    before = _digest(tmp_path)
    monkeypatch.setattr(modeling_utils, "save_file", _disk_full)
    with pytest.raises(OSError, match="No space left"):
        UNet2DModel(**{**TINY_UNET, "block_out_channels": (4, 8)}).save_pretrained(tmp_path)
    assert _digest(tmp_path) == before  # no new config beside old weights, no temporary file
    UNet2DModel.from_pretrained(tmp_path)


def test_failing_pipeline_save_leaves_the_old_folder_loadable(tmp_path, monkeypatch):
    DDPMPipeline(UNet2DModel(**TINY_UNET), DDPMScheduler(num_train_timesteps=10)).save_pretrained(
        tmp_path / "p"
    )
    before = _digest(tmp_path / "p")
    monkeypatch.setattr(modeling_utils, "save_file", _disk_full)
    other = DDPMPipeline(UNet2DModel(**{**TINY_UNET, "block_out_channels": (4, 8)}), DDIMScheduler())
    with pytest.raises(OSError, match="No space left"):
        other.save_pretrained(tmp_path / "p")
    assert _digest(tmp_path / "p") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]  # the staging folder is gone too
    DDPMPipeline.from_pretrained(tmp_path / "p")


def test_refused_resume_and_refused_rerun_leave_checkpoints_untouched(tmp_path, capsys):
    argv = [
        *TRAIN,
        "--image-size",
        "8",
        "--checkpoint-every",
        "1",
        "--sample-steps",
        "2",
        "--num-samples",
        "1",
    ]
    argv += ["--out", str(tmp_path)]
    assert cli.main(argv) == 0
    before = _digest(tmp_path / "checkpoints")
    assert cli.main(argv) == 1  # not resuming: refuses to overwrite
    assert cli.main([*argv, "--resume", "--lr", "0.5"]) == 1  # resuming with other settings: refused
    err = capsys.readouterr().err
    assert (
        "of an earlier run; continue it with --resume, replace it with --overwrite, or choose another --out"
        in err
    )
    tiny_lr = preset("tiny").lr  # the checkpoint's
    assert (
        f"cannot resume: the checkpoint was trained with other settings: --lr 0.5 (the checkpoint's is {tiny_lr})"
        in err
    )
    assert _digest(tmp_path / "checkpoints") == before


# ---- 4. images of mixed modes and sizes load fine --------------------------------------------------------
def test_folder_of_mixed_modes_and_sizes_trains(tmp_path):
    rng = np.random.default_rng(0)
    images = {
        "rgb.png": Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)),
        "rgba.png": Image.fromarray(rng.integers(0, 256, (9, 5, 4), dtype=np.uint8), "RGBA"),
        "grey.jpg": Image.fromarray(rng.integers(0, 256, (64, 16), dtype=np.uint8)),
        "palette.gif": Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).convert("P"),
        "bilevel.bmp": Image.fromarray(rng.integers(0, 256, (7, 40), dtype=np.uint8)).convert("1"),
        "grey16.png": Image.fromarray(rng.integers(0, 65535, (10, 10), dtype=np.uint16)),
        "la.png": Image.fromarray(rng.integers(0, 256, (6, 6, 2), dtype=np.uint8), "LA"),
        "cmyk.jpg": Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).convert("CMYK"),
    }
    for name, image in images.items():
        image.save(tmp_path / name)
    for channels in (1, 3):
        dataset = load_dataset(str(tmp_path), image_size=8, channels=channels, flip=False)
        assert len(dataset) == len(images)
        for i in range(len(dataset)):
            item = dataset[i]
            assert item.shape == (channels, 8, 8) and torch.isfinite(item).all()
            assert item.min() >= -1 and item.max() <= 1
    config = preset(
        "tiny", data=str(tmp_path), image_size=8, batch_size=4, max_steps=2, sample_steps=2, num_samples=1,
        device="cpu", progress=False, out_dir=str(tmp_path / "out"),
    )  # fmt: skip
    assert train(config).steps == 2


# ---- 5. property tests against diffusers -----------------------------------------------------------------
def _build(cls, kw):
    try:
        return cls(**kw), None
    except Exception as err:  # noqa: BLE001 - we record what each library raises
        return None, err


def stricter_than_diffusers(kw: dict, num_inference_steps: int | None = None) -> bool:
    """Inputs diffusers accepts where minidiff refuses them at once with a ValueError, by design:
    T < 1 or fewer than 1 inference step (diffusers builds an empty schedule), and an unknown
    prediction_type / timestep_spacing / variance_type name (diffusers fails only later, in
    set_timesteps or step, or, for variance_type, silently uses an unclamped fixed_small)."""
    return (
        kw["num_train_timesteps"] < 1
        or (num_inference_steps is not None and num_inference_steps < 1)
        or kw["prediction_type"] not in PREDICTION_TYPES
        or kw["timestep_spacing"] not in TIMESTEP_SPACINGS
        or kw.get("variance_type", "fixed_small") not in VARIANCE_TYPES
    )


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.nan_to_num(), b.nan_to_num())


# DDPM's `fixed_large_log` is left out on purpose: diffusers gives NaN there (issue 14569), minidiff does not.
def mostly(valid: list, invalid: list) -> st.SearchStrategy:
    """Valid values 4 times as often as invalid ones, so most examples get as far as a step."""
    return st.sampled_from(valid * 4 + invalid)


SCHEDULER_CONFIGS = st.fixed_dictionaries(
    {
        "num_train_timesteps": mostly([1, 2, 7, 20, 1000], [-1, 0]),
        "beta_start": mostly([1e-4, 0.0, 0.3], [-0.01, 1.5, NAN]),
        "beta_end": mostly([0.02, 1e-4, 0.9], [1.0, 2.0]),
        "beta_schedule": mostly(["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace"], ["cosine"]),
        "prediction_type": mostly(["epsilon", "sample", "v_prediction"], ["x0"]),
        "timestep_spacing": mostly(["leading", "linspace", "trailing"], ["uniform"]),
        "steps_offset": st.sampled_from([0, 1, 3]),
        "clip_sample": st.booleans(),
        "rescale_betas_zero_snr": st.booleans(),
    }
)  # fmt: skip


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["ddpm", "ddim"]),
    config=SCHEDULER_CONFIGS,
    variance_type=st.sampled_from(
        ["fixed_small", "fixed_large", "fixed_small_log", "learned_range", "sigma"]
    ),
    num_inference_steps=st.sampled_from([-1, 0, 1, 3, 7, 20, 1001]),
    seed=st.integers(0, 2**16),
)
def test_property_accept_and_reject_like_diffusers(kind, config, variance_type, num_inference_steps, seed):
    """Construct, set_timesteps and step with the same arguments in both libraries: both raise, or both
    give bit-identical tables, timesteps and samples (NaN compared as NaN, as diffusers makes them).
    The one exception: inputs `stricter_than_diffusers` names, which minidiff must refuse."""
    import warnings

    ours_cls, theirs_cls = (
        (DDPMScheduler, diffusers.DDPMScheduler)
        if kind == "ddpm"
        else (DDIMScheduler, diffusers.DDIMScheduler)
    )
    kw = dict(config)
    if kind == "ddpm":
        kw["variance_type"] = variance_type
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs, their_error = _build(theirs_cls, kw)
        ours, our_error = _build(ours_cls, kw)
    if their_error is not None or (our_error is not None and stricter_than_diffusers(kw)):
        assert isinstance(our_error, ValueError | NotImplementedError), (kw, our_error)  # a clear error
        event("constructor: both refused" if their_error is not None else "constructor: minidiff stricter")
        return
    assert our_error is None, (kw, our_error)
    assert _same(ours.alphas_cumprod, theirs.alphas_cumprod)

    # set_timesteps
    _, their_error = _build(theirs.set_timesteps, {"num_inference_steps": num_inference_steps})
    _, our_error = _build(ours.set_timesteps, {"num_inference_steps": num_inference_steps})
    if their_error is not None or (
        our_error is not None and stricter_than_diffusers(kw, num_inference_steps)
    ):
        assert isinstance(our_error, ValueError), (kw, num_inference_steps, our_error)
        return
    assert our_error is None, (kw, num_inference_steps, our_error)
    assert torch.equal(ours.timesteps, theirs.timesteps)

    # step at the first scheduled timestep
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(2, 1, 4, 4, generator=g)
    channels = 2 if kw.get("variance_type") == "learned_range" else 1
    model_output = torch.randn(2, channels, 4, 4, generator=g)
    t = theirs.timesteps[0]
    outputs = []
    for scheduler in (theirs, ours):
        step = functools.partial(
            scheduler.step, model_output, t, sample, generator=torch.Generator().manual_seed(seed)
        )
        outputs.append(_build(step, {}))
    (their_out, their_error), (our_out, our_error) = outputs
    assert (our_error is None) == (their_error is None), (kw, int(t), our_error, their_error)
    if their_error is not None:
        assert isinstance(our_error, ValueError), our_error
        event("step: both refused")
        return
    event("both stepped: compared")
    assert _same(our_out.prev_sample, their_out.prev_sample), (kw, int(t))
    assert _same(our_out.pred_original_sample, their_out.pred_original_sample)


@settings(max_examples=25, deadline=None)
@given(
    shape=st.sampled_from([(2, 1, 4, 4), (1, 3, 2, 2), (3, 2), (4,)]),
    timesteps=st.lists(st.integers(-2, 12), min_size=1, max_size=4),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]),
    t_dtype=st.sampled_from([torch.int64, torch.int32, torch.float32]),
    seed=st.integers(0, 2**16),
)
def test_property_add_noise_like_diffusers(shape, timesteps, dtype, t_dtype, seed):
    """add_noise over shapes, dtypes and timesteps (in and out of range, float): where diffusers gives an
    answer minidiff gives the same one; where it raises, minidiff raises a ValueError that says why.
    minidiff is stricter on two inputs diffusers does not check (float timesteps, which diffusers
    truncates by indexing, and t < 0, which diffusers wraps around): those must raise ValueError in
    minidiff and are not compared."""
    g = torch.Generator().manual_seed(seed)
    x0, noise = torch.randn(shape, generator=g).to(dtype), torch.randn(shape, generator=g).to(dtype)
    t = torch.tensor(timesteps[: shape[0]] if len(shape) > 1 else timesteps[:1]).to(t_dtype)
    theirs = diffusers.DDPMScheduler(num_train_timesteps=10)
    ours = DDPMScheduler(num_train_timesteps=10)
    expected, their_error = _build(theirs.add_noise, {"original_samples": x0, "noise": noise, "timesteps": t})
    got, our_error = _build(ours.add_noise, {"original_samples": x0, "noise": noise, "timesteps": t})
    stricter = t.is_floating_point() or bool((t < 0).any())
    if their_error is not None or stricter:
        assert isinstance(our_error, ValueError), (t, our_error, their_error)
        return
    assert our_error is None, our_error
    assert got.dtype == expected.dtype and torch.equal(got, expected)


def _json_roundtrip_config(tmp_path: Path, edit: dict) -> Path:
    DDPMScheduler(num_train_timesteps=10).save_pretrained(tmp_path)
    path = tmp_path / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **edit}))
    return tmp_path


@pytest.mark.parametrize(
    "edit, match",
    [
        ({"num_train_timesteps": None}, "config key 'num_train_timesteps' has value None"),
        ({"beta_schedule": 3}, "config key 'beta_schedule' has value 3"),
        ({"steps_offset": 1.5}, "config key 'steps_offset' has value 1.5"),
        ({"rescale_betas_zero_snr": "false"}, "config key 'rescale_betas_zero_snr'"),
    ],
)
def test_scheduler_json_with_wrong_types_names_the_key(tmp_path, edit, match):
    with pytest.raises(ValueError, match=match):
        DDPMScheduler.from_pretrained(_json_roundtrip_config(tmp_path, edit))


def test_mocked_hub_never_called_for_local_looking_paths(monkeypatch):
    """A path that looks local ('./x', '/x', 'a/b/c') is never sent to the hub, even with network."""
    with mock.patch("huggingface_hub.hf_hub_download") as download:
        for path in ("./missing", "/missing/unet", "a/b/c"):
            with pytest.raises(FileNotFoundError):
                UNet2DModel.from_pretrained(path)
    download.assert_not_called()
