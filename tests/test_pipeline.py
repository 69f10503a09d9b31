"""DDPMPipeline against diffusers: same weights + same seed -> same images; files both ways; bad input."""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from unittest.mock import ANY

import diffusers
import numpy as np
import pytest
import torch

import minidiff
from minidiff import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel

UNET = {
    "sample_size": 8,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (8, 16),
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "attention_head_dim": 8,
}
# Same weights, same seed: on CPU the two pipelines give identical images here (max difference 0.0 at
# 20 DDPM steps and 10 DDIM steps). We allow 1e-5 because the two UNets are separate float32 code, free to
# order a sum differently on another torch build or CPU (~1e-7 per forward, growing slowly over steps).
ATOL = 1e-5


@pytest.fixture(scope="module")
def unets() -> tuple[diffusers.UNet2DModel, UNet2DModel]:
    torch.manual_seed(0)
    theirs = diffusers.UNet2DModel(**UNET).eval()
    ours = UNet2DModel(**UNET).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return theirs, ours


def _pipelines(unets, scheduler_config=None, ddim=False):
    theirs, ours = unets
    config = scheduler_config or {"num_train_timesteps": 1000}
    their_class, our_class = (
        (diffusers.DDIMScheduler, DDIMScheduler) if ddim else (diffusers.DDPMScheduler, DDPMScheduler)
    )
    a = diffusers.DDPMPipeline(unet=theirs, scheduler=their_class(**config))
    b = DDPMPipeline(unet=ours, scheduler=our_class(**config))
    a.set_progress_bar_config(disable=True)
    b.set_progress_bar_config(disable=True)
    return a, b


def _seed(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("output_type", ["np", "pt"])
def test_ddpm_matches_diffusers(unets, output_type):
    theirs, ours = _pipelines(unets)
    expected = theirs(batch_size=2, generator=_seed(), num_inference_steps=20, output_type=output_type).images
    got = ours(batch_size=2, generator=_seed(), num_inference_steps=20, output_type=output_type).images
    assert type(got) is type(expected) and got.shape == expected.shape == (
        (2, 8, 8, 3) if output_type == "np" else (2, 3, 8, 8)
    )
    assert got.dtype == expected.dtype
    torch.testing.assert_close(torch.as_tensor(got), torch.as_tensor(expected), rtol=0, atol=ATOL)


def test_ddpm_pil_list_of_generators_and_tuple(unets):
    theirs, ours = _pipelines(unets, {"num_train_timesteps": 100, "variance_type": "fixed_small_log"})
    expected = theirs(batch_size=2, generator=[_seed(5), _seed(6)], num_inference_steps=10).images
    (got,) = ours(batch_size=2, generator=[_seed(5), _seed(6)], num_inference_steps=10, return_dict=False)
    assert [im.size for im in got] == [im.size for im in expected] == [(8, 8)] * 2
    for a, b in zip(got, expected):
        # (x * 255).round() of values within 1e-5: a pixel can land one step apart at a .5 boundary
        diff = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16))
        assert diff.max() <= 1 and (diff == 0).mean() > 0.95


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_matches_diffusers_ddim_pipeline(unets, eta):
    theirs, ours = unets
    their_pipe = diffusers.DDIMPipeline(
        unet=theirs, scheduler=diffusers.DDIMScheduler(num_train_timesteps=1000)
    )
    their_pipe.set_progress_bar_config(disable=True)
    our_pipe = DDPMPipeline(unet=ours, scheduler=DDIMScheduler(num_train_timesteps=1000))
    kwargs = {"batch_size": 2, "num_inference_steps": 10, "eta": eta, "output_type": "np"}
    expected = their_pipe(generator=_seed(2), **kwargs).images
    got = our_pipe(generator=_seed(2), progress=False, **kwargs).images
    torch.testing.assert_close(torch.as_tensor(got), torch.as_tensor(expected), rtol=0, atol=ATOL)


def test_ddim_pipeline_has_diffusers_signature():
    ours, theirs = (inspect.signature(c.__call__).parameters for c in (DDIMPipeline, diffusers.DDIMPipeline))
    assert [(p.name, p.default) for p in ours.values()] == [(p.name, p.default) for p in theirs.values()]


@pytest.mark.parametrize(
    "scheduler, kwargs",
    [
        ("ddim", {"eta": 0.0}),
        ("ddim", {"eta": 1.0, "use_clipped_model_output": True}),
        ("ddpm", {"eta": 0.5}),  # a DDPMScheduler is rebuilt as DDIM from its config, as in diffusers
        ("ddim", {}),  # diffusers' defaults: 50 steps, eta 0, PIL images
    ],
)
def test_ddim_pipeline_matches_diffusers(unets, scheduler, kwargs):
    theirs, ours = unets
    config = {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2"}
    their_class, our_class = {
        "ddim": (diffusers.DDIMScheduler, DDIMScheduler),
        "ddpm": (diffusers.DDPMScheduler, DDPMScheduler),
    }[scheduler]
    their_pipe = diffusers.DDIMPipeline(unet=theirs, scheduler=their_class(**config))
    our_pipe = DDIMPipeline(unet=ours, scheduler=our_class(**config))
    assert isinstance(our_pipe.scheduler, DDIMScheduler)
    assert dict(our_pipe.scheduler.config) == {**their_pipe.scheduler.config, "_use_default_values": ANY}
    their_pipe.set_progress_bar_config(disable=True)
    our_pipe.set_progress_bar_config(disable=True)
    kwargs = {"num_inference_steps": 10, "output_type": "np", **kwargs} if kwargs else {}
    expected = their_pipe(batch_size=2, generator=_seed(4), **kwargs).images
    got = our_pipe(batch_size=2, generator=_seed(4), **kwargs).images
    if not kwargs:  # PIL images: compare the pixels
        expected, got = (np.stack([np.asarray(im) for im in images]) for images in (expected, got))
    torch.testing.assert_close(torch.as_tensor(got), torch.as_tensor(expected), rtol=0, atol=ATOL)


def test_ddim_pipeline_files_both_ways(unets, tmp_path):
    theirs, ours = unets
    config = {"num_train_timesteps": 100}
    DDIMPipeline(unet=ours, scheduler=DDIMScheduler(**config)).save_pretrained(tmp_path / "ours")
    diffusers.DDIMPipeline(unet=theirs, scheduler=diffusers.DDIMScheduler(**config)).save_pretrained(
        tmp_path / "theirs"
    )
    index = json.loads((tmp_path / "ours" / "model_index.json").read_text())
    assert index == json.loads((tmp_path / "theirs" / "model_index.json").read_text())
    assert index["_class_name"] == "DDIMPipeline"
    pipes = [
        diffusers.DDIMPipeline.from_pretrained(tmp_path / "ours"),
        DDIMPipeline.from_pretrained(tmp_path / "theirs"),
        minidiff.DiffusionPipeline.from_pretrained(tmp_path / "theirs"),  # the class model_index.json names
    ]
    assert type(pipes[2]) is DDIMPipeline
    images = []
    for pipe in pipes:
        pipe.set_progress_bar_config(disable=True)
        images.append(
            torch.as_tensor(pipe(generator=_seed(8), num_inference_steps=5, output_type="np").images)
        )
    torch.testing.assert_close(images[1], images[0], rtol=0, atol=ATOL)
    assert torch.equal(images[1], images[2])


@pytest.mark.parametrize("eta", [-0.1, 1.5, "0.5"])
def test_ddim_pipeline_refuses_eta_outside_0_1(unets, eta):
    pipe = DDIMPipeline(unet=unets[1], scheduler=DDIMScheduler())
    with pytest.raises(ValueError, match=f"eta={eta!r}; expected a number in \\[0, 1\\]"):
        pipe(num_inference_steps=2, eta=eta)  # diffusers only logs a warning, then samples NaNs for eta > 1


def test_ddim_scheduler_in_ddpm_pipeline_matches_diffusers(unets):
    theirs, ours = _pipelines(unets, ddim=True)  # diffusers' DDPMPipeline calls DDIM's step with eta = 0
    expected = theirs(batch_size=2, generator=_seed(3), num_inference_steps=8, output_type="np").images
    got = ours(batch_size=2, generator=_seed(3), num_inference_steps=8, output_type="np").images
    torch.testing.assert_close(torch.as_tensor(got), torch.as_tensor(expected), rtol=0, atol=ATOL)


@pytest.mark.slow
def test_ddpm_default_1000_steps_matches_diffusers(unets):
    theirs, ours = _pipelines(unets)
    expected = theirs(batch_size=2, generator=_seed(4), output_type="np").images
    got = ours(batch_size=2, generator=_seed(4), output_type="np").images
    torch.testing.assert_close(torch.as_tensor(got), torch.as_tensor(expected), rtol=0, atol=ATOL)


# ---- files ------------------------------------------------------------------------------------------
def test_files_minidiff_to_diffusers_and_back(unets, tmp_path):
    theirs, ours = _pipelines(unets, {"num_train_timesteps": 50, "beta_schedule": "squaredcos_cap_v2"})
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    # the same model_index.json as diffusers writes
    index = json.loads((tmp_path / "ours" / "model_index.json").read_text())
    assert index == json.loads((tmp_path / "theirs" / "model_index.json").read_text())

    loaded_by_diffusers = diffusers.DDPMPipeline.from_pretrained(tmp_path / "ours")
    loaded_by_minidiff = DDPMPipeline.from_pretrained(tmp_path / "theirs")
    assert isinstance(loaded_by_minidiff.scheduler, DDPMScheduler)
    reloaded = DDPMPipeline.from_pretrained(tmp_path / "ours")
    kwargs = {"batch_size": 2, "num_inference_steps": 10, "output_type": "np"}
    reference = torch.as_tensor(ours(generator=_seed(7), **kwargs).images)
    for pipe in (loaded_by_diffusers, loaded_by_minidiff, reloaded):
        pipe.set_progress_bar_config(disable=True)
        images = torch.as_tensor(pipe(generator=_seed(7), **kwargs).images)
        # minidiff -> minidiff: the same weights and code, exact; across libraries within ATOL
        torch.testing.assert_close(images, reference, rtol=0, atol=0 if pipe is reloaded else ATOL)


def test_files_ddim_scheduler_and_dtype(unets, tmp_path):
    theirs, _ = unets
    diffusers.DDIMPipeline(
        unet=theirs, scheduler=diffusers.DDIMScheduler(num_train_timesteps=30)
    ).save_pretrained(tmp_path / "ddim")
    pipe = DDPMPipeline.from_pretrained(tmp_path / "ddim", torch_dtype=torch.bfloat16)
    assert isinstance(pipe.scheduler, DDIMScheduler) and pipe.dtype == torch.bfloat16
    images = pipe(
        batch_size=1, generator=_seed(), num_inference_steps=3, output_type="np", progress=False
    ).images
    assert images.dtype == np.float32 and images.shape == (1, 8, 8, 3)  # bfloat16 -> float32 numpy
    pipe.save_pretrained(tmp_path / "again")
    index = json.loads((tmp_path / "again" / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusers", "DDIMScheduler"] and index["_class_name"] == "DDPMPipeline"


def test_save_never_leaves_a_broken_folder(unets, tmp_path, monkeypatch):
    _, ours = _pipelines(unets)
    target = tmp_path / "pipe"
    ours.save_pretrained(target)
    (target / "notes.txt").write_text("kept")
    before = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}

    other = DDPMPipeline(unet=ours.unet, scheduler=DDPMScheduler(num_train_timesteps=10))

    def fail(save_directory):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(other.scheduler, "save_pretrained", fail)
    with pytest.raises(OSError, match="simulated"):
        other.save_pretrained(target)
    after = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    assert after == before  # the good folder is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]  # no staging folder left behind

    monkeypatch.undo()

    # a rename failing halfway through the swap: the unet was already swapped in and is put back
    real_replace = os.replace

    def replace(src, dst):
        if Path(src).parent.name == "new" and Path(src).name == "scheduler":
            raise OSError("rename failed (simulated)")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="rename failed"):
        other.save_pretrained(target)
    monkeypatch.undo()
    after = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]

    other.save_pretrained(target)  # a successful save replaces the pipeline, keeps other files
    assert DDPMScheduler.from_pretrained(target / "scheduler").config.num_train_timesteps == 10
    assert (target / "notes.txt").read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]
    with pytest.raises(ValueError, match="is a file"):
        other.save_pretrained(target / "notes.txt")


@pytest.mark.parametrize(
    "edit, match",
    [
        ({"scheduler": ["diffusers", "LMSDiscreteScheduler"]}, "'LMSDiscreteScheduler' is not supported"),
        ({"_class_name": "StableDiffusionPipeline"}, "'StableDiffusionPipeline'"),
        ({"vae": ["diffusers", "AutoencoderKL"]}, "components"),
        ({"unet": ["diffusers", "UNet2DConditionModel"]}, "'UNet2DConditionModel' is not supported"),
    ],
)
def test_from_pretrained_rejects_other_pipelines(unets, tmp_path, edit, match):
    _, ours = _pipelines(unets)
    ours.save_pretrained(tmp_path)
    index_path = tmp_path / "model_index.json"
    index_path.write_text(json.dumps({**json.loads(index_path.read_text()), **edit}))
    with pytest.raises(ValueError, match=match):
        DDPMPipeline.from_pretrained(tmp_path)


# ---- bad input, progress bar, devices ---------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0}, "batch_size=0"),
        ({"batch_size": True}, "batch_size=True"),
        ({"output_type": "latent"}, "output_type 'latent'"),
        ({"eta": 0.5}, "eta=0.5 needs a DDIMScheduler"),
        ({"batch_size": 2, "generator": [torch.Generator()]}, "1 generators for batch_size=2"),
    ],
)
def test_bad_input(unets, kwargs, match):
    _, ours = _pipelines(unets)
    with pytest.raises(ValueError, match=match):
        ours(num_inference_steps=2, **kwargs)


def test_progress_bar_and_to(unets, capsys):
    _, ours = _pipelines(unets)
    ours.set_progress_bar_config(disable=False)
    ours(num_inference_steps=3, output_type="pt")
    assert "3/3" in capsys.readouterr().err
    ours(num_inference_steps=3, output_type="pt", progress=False)
    assert capsys.readouterr().err == ""
    # any tqdm keyword, and each call replaces the previous settings (diffusers' method does both):
    # disable=True is forgotten by the next call, so the bar shows again
    ours.set_progress_bar_config(disable=True)
    ours.set_progress_bar_config(desc="denoising", mininterval=5)
    ours(num_inference_steps=3, output_type="pt")
    assert "denoising" in capsys.readouterr().err

    pipe = DDPMPipeline(UNet2DModel(**UNET), DDPMScheduler())
    assert pipe.to(torch.float64) is pipe and pipe.dtype == torch.float64 and pipe.device.type == "cpu"
    images = pipe(num_inference_steps=2, output_type="pt", progress=False).images
    assert images.dtype == torch.float64 and 0 <= images.min() and images.max() <= 1
    assert "DDPMPipeline" in minidiff.__all__


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_with_cpu_generator_matches_diffusers(unets):
    # diffusers' rule: a CPU generator with a CUDA UNet draws x_T (and each step's noise) on the CPU.
    theirs, ours = (u.to("cuda") for u in unets)
    try:
        a, b = _pipelines((theirs, ours))
        for generator in (_seed, lambda s: torch.Generator("cuda").manual_seed(s)):
            expected = a(
                batch_size=2, generator=generator(9), num_inference_steps=10, output_type="pt"
            ).images
            got = b(batch_size=2, generator=generator(9), num_inference_steps=10, output_type="pt").images
            assert got.device.type == "cuda"
            # cuDNN may pick different (TF32) conv kernels for the two models: allow 1e-3
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-3)
    finally:
        for u in unets:
            u.to("cpu")
