"""The levers of the demo's recipe, each an option: min-SNR-gamma loss weights (as diffusers' examples compute
them), SD3's logit-normal timestep density (as diffusers' SD3 scripts draw it), a zero-terminal-SNR schedule and trailing timesteps written into the saved scheduler, so that
diffusers samples a saved model exactly as minidiff does; their flags, and their bad values refused."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from tiny import TINY_TRAIN, TINY_UNET

from minidiff.cli import main
from minidiff.models.unet_2d import UNet2DModel
from minidiff.schedulers.scheduling_ddpm import DDPMScheduler
from minidiff.training import train
from minidiff.training.config import TrainConfig, preset
from minidiff.training.rules import draw_timesteps, loss_fn, snr_loss_weights

GAMMA = 5.0


def _diffusers_weights(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """The weights of diffusers' examples (train_text_to_image.py --snr_gamma), line for line."""
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, timesteps)
    weights = torch.stack([snr, gamma * torch.ones_like(timesteps)], dim=1).min(dim=1)[0]
    if scheduler.config.prediction_type == "epsilon":
        return weights / snr
    return weights / (snr + 1)  # v_prediction


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights_and_loss_equal_diffusers_examples(prediction_type):
    pytest.importorskip("diffusers")
    scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type)
    timesteps = torch.tensor([0, 1, 50, 300, 700, 998, 999])
    weights = snr_loss_weights(scheduler, timesteps, GAMMA)
    assert torch.equal(weights, _diffusers_weights(scheduler, timesteps, GAMMA))
    # the loss: each image's mean squared error times its weight, then the batch mean
    torch.manual_seed(0)
    unet = UNet2DModel(**TINY_UNET)
    clean, noise = torch.rand(7, 1, 8, 8) * 2 - 1, torch.randn(7, 1, 8, 8)
    ours = loss_fn(unet, scheduler, clean, noise, timesteps, snr_gamma=GAMMA)
    prediction = unet(scheduler.add_noise(clean, noise, timesteps), timesteps).sample
    target = noise if prediction_type == "epsilon" else scheduler.get_velocity(clean, noise, timesteps)
    per_image = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=[1, 2, 3])
    assert torch.equal(ours, (per_image * weights).mean())
    assert not torch.equal(ours, loss_fn(unet, scheduler, clean, noise, timesteps))  # it does weigh


def test_min_snr_weights_at_zero_terminal_snr_are_finite():
    """At t = T-1 of a rescaled schedule SNR = 0: v's weight is 0, epsilon's its limit 1, x_0's 0."""
    t = torch.tensor([0, 999])
    expected = {"v_prediction": 0.0, "epsilon": 1.0, "sample": 0.0}
    for prediction_type, at_zero in expected.items():
        scheduler = DDPMScheduler(rescale_betas_zero_snr=True, prediction_type=prediction_type)
        weights = snr_loss_weights(scheduler, t, GAMMA)
        assert torch.isfinite(weights).all() and weights[1].item() == at_zero, prediction_type
        assert weights[0].item() > 0


@pytest.mark.parametrize(
    "overrides, named",
    [
        ({"snr_gamma": 0.0}, "snr_gamma=0.0"),
        ({"snr_gamma": float("inf")}, "snr_gamma=inf"),
        ({"timestep_spacing": "uniform"}, "timestep_spacing='uniform'"),
        ({"weighting_scheme": "mode"}, "weighting_scheme='mode'"),
        ({"logit_std": 0.0}, "logit_std=0.0"),
        ({"logit_mean": float("nan")}, "logit_mean=nan"),
        ({"rescale_betas_zero_snr": True, "prediction_type": "epsilon"}, "v_prediction"),
    ],
)
def test_bad_recipe_settings_are_named(overrides, named):
    with pytest.raises(ValueError, match=named):
        TrainConfig(**overrides).validate()


@pytest.mark.parametrize("mean, std", [(0.0, 1.0), (-0.5, 1.3)])
def test_logit_normal_timesteps_equal_diffusers_sd3_density(mean, std):
    """t = floor(T u) with u from diffusers' compute_density_for_timestep_sampling on the same generator."""
    pytest.importorskip("diffusers")
    from diffusers.training_utils import compute_density_for_timestep_sampling

    config = TrainConfig(weighting_scheme="logit_normal", logit_mean=mean, logit_std=std)
    ours = draw_timesteps(4096, torch.Generator().manual_seed(3), config, torch.device("cpu"))
    u = compute_density_for_timestep_sampling(
        "logit_normal", 4096, logit_mean=mean, logit_std=std, generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(ours, (u * 1000).long())
    assert ours.dtype == torch.int64 and 0 <= ours.min() and ours.max() <= 999
    # the density: the median at T sigmoid(mean), the middle half narrower than the uniform's (T / 2)
    assert abs(ours.double().median().item() - 1000 * torch.sigmoid(torch.tensor(mean)).item()) < 15
    q1, q3 = ours.double().quantile(torch.tensor([0.25, 0.75], dtype=torch.float64)).tolist()
    assert q3 - q1 < 400


def test_uniform_timesteps_are_ddpms_randint():
    """weighting_scheme "none" draws exactly torch.randint(0, T), the tutorial's t."""
    ours = draw_timesteps(64, torch.Generator().manual_seed(5), TrainConfig(), torch.device("cpu"))
    assert torch.equal(ours, torch.randint(0, 1000, (64,), generator=torch.Generator().manual_seed(5)))


def test_extreme_logit_mean_stays_inside_the_schedule():
    """sigmoid rounds to 1.0 for large n: t is clamped to T - 1, never T."""
    config = TrainConfig(weighting_scheme="logit_normal", logit_mean=40.0, logit_std=1.0)
    assert (
        draw_timesteps(8, torch.Generator().manual_seed(0), config, torch.device("cpu")).tolist() == [999] * 8
    )


def test_recipe_flags_reach_the_config(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "train", "--preset", "tiny", "--snr_gamma", "3", "--rescale-betas-zero-snr", "--timestep-spacing",
        "linspace", "--prediction_type", "sample", "--resolution", "8", "--max-steps", "1", "--out", str(out),
        "--weighting_scheme", "logit_normal", "--logit-mean", "0.25", "--logit_std", "0.8",
        "--limit", "8", "--batch-size", "4", "--num-samples", "0", "--device", "cpu", "--quiet",
    ]  # fmt: skip
    assert main(argv) == 0
    settings = json.loads((out / "config.json").read_text())
    assert (settings["snr_gamma"], settings["rescale_betas_zero_snr"]) == (3.0, True)
    assert (settings["timestep_spacing"], settings["prediction_type"]) == ("linspace", "sample")
    assert (settings["weighting_scheme"], settings["logit_mean"], settings["logit_std"]) == (
        "logit_normal",
        0.25,
        0.8,
    )
    saved = json.loads((out / "model" / "scheduler" / "scheduler_config.json").read_text())
    assert (saved["rescale_betas_zero_snr"], saved["timestep_spacing"]) == (True, "linspace")
    with pytest.raises(SystemExit):
        main(["train", "--snr-gamma", "-1"])
    assert "'-1' is not a positive number (or 'none')" in capsys.readouterr().err


def test_snr_gamma_none_turns_the_weights_off():
    from minidiff.training.flags import optional_positive

    assert optional_positive("none") is None and optional_positive("5") == 5.0


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_diffusers_samples_a_saved_recipe_model_as_minidiff_does(tmp_path, sampler):
    """A model trained with v_prediction, zero terminal SNR and trailing timesteps: diffusers' pipeline
    built from the saved folder (its scheduler from the saved config) draws the same images, bit for bit."""
    diffusers = pytest.importorskip("diffusers")
    from minidiff.pipelines.pipeline_ddpm import DDPMPipeline, with_sampler

    config = preset(
        "tiny", out_dir=str(tmp_path), max_steps=2, prediction_type="v_prediction", snr_gamma=GAMMA,
        rescale_betas_zero_snr=True, timestep_spacing="trailing", **TINY_TRAIN,
    )  # fmt: skip
    model_dir = train(config).model_dir
    ours = with_sampler(DDPMPipeline.from_pretrained(model_dir), sampler)
    scheduler_class = diffusers.DDIMScheduler if sampler == "ddim" else diffusers.DDPMScheduler
    theirs = diffusers.DDPMPipeline.from_pretrained(model_dir)
    theirs.scheduler = scheduler_class.from_config(theirs.scheduler.config)
    theirs.set_progress_bar_config(disable=True)
    assert (
        theirs.scheduler.config.rescale_betas_zero_snr
        and theirs.scheduler.config.timestep_spacing == "trailing"
    )
    images = {}
    for name, pipeline in (("minidiff", ours), ("diffusers", theirs)):
        generator = torch.Generator().manual_seed(0)
        kwargs = {} if name == "diffusers" else {"progress": False}
        images[name] = pipeline(
            batch_size=2, generator=generator, num_inference_steps=4, output_type="np", **kwargs
        ).images
    assert images["minidiff"].shape == (2, 8, 8, 1)
    assert torch.equal(torch.from_numpy(images["minidiff"]), torch.from_numpy(images["diffusers"]))
