"""minidiff's schedulers inside diffusers' StableDiffusionPipeline: the chapter's scheduler swap, offline.

A tiny Stable Diffusion (UNet2DConditionModel, AutoencoderKL, CLIPTextModel with random weights and a CLIP
tokenizer written on the spot) starts with the scheduler config of the Stable Diffusion v1 checkpoints
(PNDMScheduler, scaled_linear). Each test sets `pipe.scheduler = minidiff.X.from_config(pipe.scheduler.config)`
and compares the images with those of diffusers' own X built the same way, same seed, guidance 5.5.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

import minidiff

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")  # the `reference` extra

# The scheduler_config.json of the Stable Diffusion v1 checkpoints (CompVis/stable-diffusion-v1-4 and its
# fine-tunes such as sd-dreambooth-library/mr-potato-head).
SD_SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}
# scheduler name -> steps: multistep solvers need a few steps to reach their order
SCHEDULERS = {
    "DDPMScheduler": 4,
    "DDIMScheduler": 4,
    "PNDMScheduler": 8,
    "DPMSolverMultistepScheduler": 8,
    "EulerDiscreteScheduler": 4,
    "EulerAncestralDiscreteScheduler": 4,
}
PROMPT = "a photo of mr potato head"


def tiny_tokenizer(folder):
    """A CLIP tokenizer with one token per byte (and per end-of-word byte), no merges: built offline."""
    from transformers import CLIPTokenizer

    # GPT-2's byte -> printable character map, which CLIP's byte-level BPE uses
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    letters = [chr(b) for b in printable] + [chr(256 + i) for i in range(256 - len(printable))]
    vocab = {
        token: i
        for i, token in enumerate(
            ["<|startoftext|>", "<|endoftext|>", *letters, *(c + "</w>" for c in letters)]
        )
    }
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16), len(
        vocab
    )


@pytest.fixture(scope="module")
def tiny_pipe(tmp_path_factory):
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer, vocab_size = tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(4, 8), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, norm_num_groups=2,
    )  # fmt: skip
    vae = diffusers.AutoencoderKL(
        block_out_channels=(4, 8), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=2,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    )  # fmt: skip
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=16, intermediate_size=37,
            num_attention_heads=2, num_hidden_layers=2, vocab_size=vocab_size, max_position_embeddings=16,
        )
    ).eval()  # fmt: skip
    scheduler = diffusers.PNDMScheduler.from_config(SD_SCHEDULER_CONFIG)
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample(pipe, steps: int) -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    out = pipe(PROMPT, num_inference_steps=steps, guidance_scale=5.5, generator=generator, height=16, width=16,
               output_type="np")  # fmt: skip
    return out.images


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_minidiff_scheduler_in_stable_diffusion_pipeline_equals_diffusers(tiny_pipe, name):
    steps = SCHEDULERS[name]
    sd_config = tiny_pipe.scheduler.config
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PNDM's keys unknown to X (minidiff warns once, as diffusers logs)
        ours = getattr(minidiff, name).from_config(sd_config)
    theirs = getattr(diffusers, name).from_config(sd_config)
    try:
        tiny_pipe.scheduler = ours
        images_ours = sample(tiny_pipe, steps)
        tiny_pipe.scheduler = theirs
        images_theirs = sample(tiny_pipe, steps)
    finally:
        tiny_pipe.scheduler = diffusers.PNDMScheduler.from_config(SD_SCHEDULER_CONFIG)
    assert images_ours.shape == (1, 16, 16, 3) and np.isfinite(images_ours).all()
    assert np.array_equal(images_ours, images_theirs)  # bit for bit, VAE decode included
    assert ours.timesteps.tolist() == theirs.timesteps.tolist()


def test_the_tokenizer_is_used(tiny_pipe):
    # the prompt reaches the text encoder: two prompts give different images
    tiny_pipe.scheduler = minidiff.DDIMScheduler.from_config(tiny_pipe.scheduler.config)
    generator = torch.Generator().manual_seed(0)
    other = tiny_pipe("a cat", num_inference_steps=2, guidance_scale=5.5, generator=generator, height=16,
                      width=16, output_type="np").images  # fmt: skip
    assert not np.array_equal(other, sample(tiny_pipe, 2))


def test_reference_cell_swaps_and_says_why_without_the_hub(tiny_pipe, monkeypatch, capsys):
    from reference import stable_diffusion

    stable_diffusion.swap_scheduler(tiny_pipe, "DPMSolverMultistepScheduler")
    assert type(tiny_pipe.scheduler) is minidiff.DPMSolverMultistepScheduler
    image = stable_diffusion.generate(tiny_pipe, num_inference_steps=2)
    assert image.size == (16, 16)  # a PIL image: the UNet's sample_size 8 times the VAE's factor 2

    def no_hub(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(diffusers.StableDiffusionPipeline, "from_pretrained", no_hub)
    assert stable_diffusion.main([]) == 1
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "HF_HUB_OFFLINE is set" in out and stable_diffusion.MODEL_ID in out
