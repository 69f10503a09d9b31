"""Stable Diffusion's parts, minidiff's against diffusers': UNet2DConditionModel, AutoencoderKL, StableDiffusionPipeline.

Tiny configs built offline with random weights (a CLIP tokenizer written on the spot, a CLIPTextModel from a tiny
CLIPTextConfig). Every comparison is torch.equal: minidiff runs the same operations in the same order on tensors
of the same memory layout, so there is no rounding to allow for (measured: every case below is bit-identical).
"""

from __future__ import annotations

import json
import logging
import random

import numpy as np
import pytest
import torch

import minidiff
from minidiff.models.unet_2d_condition import OUTSIDE_SUBSET
from minidiff.parity import compare_unet

diffusers = pytest.importorskip("diffusers")  # transformers only for the pipeline tests (their fixture)

BASE = dict(sample_size=8, in_channels=4, out_channels=4, norm_num_groups=4)
UNET_CONFIGS = {
    # SD 1.x: conv projections, one head count, cross-attention in all levels but the lowest
    "sd1": dict(BASE, block_out_channels=(8, 16, 16), layers_per_block=1, cross_attention_dim=12, attention_head_dim=2,
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")),
    # SD 2.x: linear projections, heads per block, upcast_attention, two resnets per block
    "sd2": dict(BASE, block_out_channels=(8, 16, 32), layers_per_block=2, cross_attention_dim=20,
                attention_head_dim=(1, 2, 4), use_linear_projection=True, upcast_attention=True,
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")),
    # two transformer layers per block, layers per block per level, cross-attention at the lowest level too
    "two_layers": dict(BASE, block_out_channels=(8, 16), layers_per_block=(1, 2), cross_attention_dim=16,
                       transformer_layers_per_block=2, attention_head_dim=(2, 4),
                       down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                       up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D")),
    # another time embedding, only-cross-attention in one level, gelu, centred input, no middle block
    "time_embedding": dict(BASE, block_out_channels=(8, 16), layers_per_block=1, cross_attention_dim=8,
                           flip_sin_to_cos=False, freq_shift=1, only_cross_attention=(True, False), act_fn="gelu",
                           center_input_sample=True, norm_eps=1e-6, mid_block_type=None, dropout=0.1,
                           down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                           up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
}  # fmt: skip


def random_unet_config(seed: int) -> dict:
    """A small config drawn at random: widths, levels, block kinds, heads, projections, layer counts."""
    rng = random.Random(seed)
    n = rng.choice([1, 2, 3])
    widths = tuple(rng.choice([8, 16]) * (i + 1) for i in range(n))
    kinds = [rng.random() < 0.7 for _ in range(n)]
    return dict(
        BASE, block_out_channels=widths, layers_per_block=rng.choice([1, 2]), cross_attention_dim=rng.choice([8, 12]),
        attention_head_dim=tuple(rng.choice([1, 2, 4]) for _ in range(n)), use_linear_projection=rng.random() < 0.5,
        transformer_layers_per_block=rng.choice([1, 2]), flip_sin_to_cos=rng.random() < 0.5, freq_shift=rng.choice([0, 1]),
        down_block_types=tuple("CrossAttnDownBlock2D" if k else "DownBlock2D" for k in kinds),
        up_block_types=tuple("CrossAttnUpBlock2D" if k else "UpBlock2D" for k in reversed(kinds)),
    )  # fmt: skip


for _seed in range(3):
    UNET_CONFIGS[f"random{_seed}"] = random_unet_config(_seed)


def both_unets(config: dict, seed: int = 0):
    torch.manual_seed(seed)
    reference = diffusers.UNet2DConditionModel(**config)
    after_reference = torch.rand(4)
    torch.manual_seed(seed)
    model = minidiff.UNet2DConditionModel(**config)
    after_model = torch.rand(4)
    return reference.eval(), model.eval(), torch.equal(after_reference, after_model)


def unet_inputs(config: dict, batch: int = 2, size: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, config["in_channels"], size, size, generator=g)
    context = torch.randn(batch, 5, config["cross_attention_dim"], generator=g)
    return sample, context


@pytest.mark.parametrize("name", list(UNET_CONFIGS))
def test_unet_fresh_init_and_forward_equal_diffusers(name):
    config = UNET_CONFIGS[name]
    reference, model, same_draws_after = both_unets(config)
    expected, got = reference.state_dict(), model.state_dict()
    assert list(got) == list(expected)  # diffusers' keys, in its order
    assert [k for k in expected if not torch.equal(got[k], expected[k])] == []  # its initial weights
    assert same_draws_after  # the global generator ends where diffusers leaves it
    sample, context = unet_inputs(config)
    with torch.no_grad():
        for t in (torch.tensor(999), 10, 3.5, torch.tensor([1, 500])):
            assert torch.equal(model(sample, t, context).sample, reference(sample, t, context).sample), t


def test_unet_odd_latent_size_upsamples_to_the_skip_size():
    config = UNET_CONFIGS["sd1"]
    reference, model, _ = both_unets(config)
    sample, context = unet_inputs(config, size=10)  # 10 -> 5 -> 3 on the way down: x2 would give 6, not 5
    with torch.no_grad():
        out = model(sample, 7, context).sample
        assert out.shape == sample.shape and torch.equal(out, reference(sample, 7, context).sample)


def test_unet_folders_load_both_ways(tmp_path):
    config = UNET_CONFIGS["sd2"]
    reference, _, _ = both_unets(config, seed=3)
    reference.save_pretrained(tmp_path / "theirs")
    ours = minidiff.UNet2DConditionModel.from_pretrained(
        tmp_path / "theirs"
    )  # their config.json: every keyword
    ours.save_pretrained(tmp_path / "ours")
    back = diffusers.UNet2DConditionModel.from_pretrained(tmp_path / "ours")
    sample, context = unet_inputs(config)
    with torch.no_grad():
        expected = reference(sample, 50, context).sample
        assert torch.equal(ours(sample, 50, context).sample, expected)
        assert torch.equal(back(sample, 50, context).sample, expected)
    saved = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert saved["_class_name"] == "UNet2DConditionModel" and saved["time_cond_proj_dim"] is None


def test_compare_unet_on_the_conditional_unet():
    config = UNET_CONFIGS["sd1"]
    reference, model, _ = both_unets(config)
    sample, context = unet_inputs(config)
    report = compare_unet(reference, model, sample, 20, encoder_hidden_states=context)
    assert report.max_abs == 0.0 and not report.only_in_model
    names = [row.name for row in report.rows]
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn2" in names and "(output)" in names
    # a changed weight is found where it is: the first drifting module is the one changed
    with torch.no_grad():
        model.up_blocks[1].attentions[0].transformer_blocks[0].attn2.to_k.weight.mul_(1.5)
    drift = compare_unet(reference, model, sample, 20, encoder_hidden_states=context).first_drift(0, 0)
    assert drift.name == "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"


# ---- the VAE ---------------------------------------------------------------------------------------------------
VAE_CONFIGS = {
    "one_level": dict(block_out_channels=(8,), norm_num_groups=4, down_block_types=("DownEncoderBlock2D",),
                      up_block_types=("UpDecoderBlock2D",)),
    "sd_like": dict(block_out_channels=(4, 8, 8), layers_per_block=2, norm_num_groups=2, latent_channels=4,
                    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3),
    "no_attention_no_quant": dict(block_out_channels=(8, 16), norm_num_groups=8, latent_channels=3, act_fn="gelu",
                                  mid_block_add_attention=False, use_quant_conv=False, use_post_quant_conv=False,
                                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2),
}  # fmt: skip


@pytest.mark.parametrize("name", list(VAE_CONFIGS))
def test_vae_fresh_init_encode_decode_equal_diffusers(name):
    config = VAE_CONFIGS[name]
    torch.manual_seed(0)
    reference = diffusers.AutoencoderKL(**config).eval()
    torch.manual_seed(0)
    model = minidiff.AutoencoderKL(**config).eval()
    expected, got = reference.state_dict(), model.state_dict()
    assert list(got) == list(expected) and all(torch.equal(got[k], expected[k]) for k in expected)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        ours, theirs = model.encode(x).latent_dist, reference.encode(x).latent_dist
        for field in ("mean", "std", "var", "logvar"):
            assert torch.equal(getattr(ours, field), getattr(theirs, field)), field
        assert torch.equal(ours.mode(), theirs.mode()) and torch.equal(ours.kl(), theirs.kl())
        draw = [d.sample(torch.Generator().manual_seed(5)) for d in (ours, theirs)]
        assert torch.equal(draw[0], draw[1])
        z = draw[0]
        assert torch.equal(model.decode(z).sample, reference.decode(z).sample)
        generators = [torch.Generator().manual_seed(9) for _ in range(2)]
        out = model(x, sample_posterior=True, generator=generators[0]).sample
        assert torch.equal(out, reference(x, sample_posterior=True, generator=generators[1]).sample)


# ---- the pipeline ----------------------------------------------------------------------------------------------
PIPE_UNET = dict(block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                 cross_attention_dim=16, norm_num_groups=4, attention_head_dim=2)  # fmt: skip
PIPE_VAE = dict(block_out_channels=(4, 8), latent_channels=4, norm_num_groups=2,
                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)  # fmt: skip


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    """(diffusers' pipeline, minidiff's pipeline) with the same weights, tokenizer and text encoder."""
    pytest.importorskip("transformers")
    from test_stable_diffusion_swap import SD_SCHEDULER_CONFIG, tiny_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer, vocab_size = tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=16, intermediate_size=37,
            num_attention_heads=2, num_hidden_layers=2, vocab_size=vocab_size, max_position_embeddings=16,
        )
    ).eval()  # fmt: skip
    unet, vae = diffusers.UNet2DConditionModel(**PIPE_UNET), diffusers.AutoencoderKL(**PIPE_VAE)
    reference = diffusers.StableDiffusionPipeline(
        vae=vae.eval(), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet.eval(),
        scheduler=diffusers.PNDMScheduler.from_config(SD_SCHEDULER_CONFIG),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("sd") / "pipeline"
    reference.save_pretrained(folder)
    ours = minidiff.StableDiffusionPipeline.from_pretrained(folder)
    for pipe in (reference, ours):
        pipe.set_progress_bar_config(disable=True)
    return reference, ours, folder


def run(pipe, steps: int = 3, **kwargs):
    kwargs = {**dict(num_inference_steps=steps, height=16, width=16, output_type="np"), **kwargs}
    return pipe("a photo of mr potato head", generator=torch.Generator().manual_seed(0), **kwargs).images


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(guidance_scale=1.0),
        dict(guidance_scale=5.5),
        dict(guidance_scale=5.5, negative_prompt="blurry", num_images_per_prompt=2),
        dict(guidance_scale=7.5, output_type="pt", height=24, width=32),
    ],
    ids=["guidance_1", "guidance_5.5", "negative_prompt_two_images", "pt_24x32"],
)
def test_pipeline_images_equal_diffusers(pipes, kwargs):
    reference, ours, _ = pipes
    assert type(ours.unet) is minidiff.UNet2DConditionModel and type(ours.scheduler) is minidiff.PNDMScheduler
    images, expected = run(ours, **kwargs), run(reference, **kwargs)
    assert type(images) is type(expected) and images.shape == expected.shape
    assert (images == expected).all()  # bit for bit: text encoder, 3 PNDM steps, VAE decode


def test_pipeline_pil_and_ddim_eta_and_generators(pipes):
    reference, ours, _ = pipes
    images = [run(pipe, guidance_scale=3.0, output_type="pil") for pipe in (ours, reference)]
    assert [im.size for im in images[0]] == [(16, 16)]
    assert np.array_equal(np.asarray(images[0][0]), np.asarray(images[1][0]))
    schedulers = (ours.scheduler, reference.scheduler)
    try:  # DDIM with eta draws step noise from the generators, one per image
        ours.scheduler = minidiff.DDIMScheduler.from_config(ours.scheduler.config)  # SD v1's PNDM config
        reference.scheduler = diffusers.DDIMScheduler.from_config(reference.scheduler.config)
        images = [
            pipe(["a cat", "a dog"], num_inference_steps=3, height=16, width=16, eta=1.0, output_type="np",
                 generator=[torch.Generator().manual_seed(i) for i in range(2)]).images
            for pipe in (ours, reference)
        ]  # fmt: skip
        assert np.array_equal(images[0], images[1])
    finally:
        ours.scheduler, reference.scheduler = schedulers


def test_diffusers_pipeline_takes_minidiff_unet_and_vae(pipes):
    reference, ours, _ = pipes
    expected = run(reference, guidance_scale=5.5)
    theirs = (reference.unet, reference.vae)
    try:
        reference.unet, reference.vae = ours.unet, ours.vae
        assert np.array_equal(run(reference, guidance_scale=5.5), expected)
    finally:
        reference.unet, reference.vae = theirs


def test_pipeline_folder_saved_by_minidiff_loads_in_diffusers(pipes, tmp_path):
    reference, ours, _ = pipes
    ours.save_pretrained(tmp_path / "ours")
    back = diffusers.StableDiffusionPipeline.from_pretrained(tmp_path / "ours")
    back.set_progress_bar_config(disable=True)
    assert np.array_equal(run(back, guidance_scale=5.5), run(reference, guidance_scale=5.5))
    again = minidiff.DiffusionPipeline.from_pretrained(tmp_path / "ours", torch_dtype=torch.float64)
    assert type(again) is minidiff.StableDiffusionPipeline and again.unet.dtype == torch.float64
    assert again.text_encoder.dtype == torch.float64 and again.vae.dtype == torch.float64


def test_folder_with_a_safety_checker_says_so_once(pipes, tmp_path, caplog):
    _, ours, _ = pipes
    ours.save_pretrained(tmp_path / "p")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]
    (tmp_path / "p" / "model_index.json").write_text(json.dumps(index))
    with caplog.at_level(logging.WARNING):
        minidiff.StableDiffusionPipeline.from_pretrained(tmp_path / "p")
    assert [r.message for r in caplog.records].count(next(r.message for r in caplog.records)) == 1
    assert "safety_checker" in caplog.text and "runs none" in caplog.text


# ---- refusals ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "key, value",
    [("class_embed_type", "timestep"), ("addition_embed_type", "text_time"), ("time_cond_proj_dim", 8),
     ("encoder_hid_dim", 32), ("dual_cross_attention", True), ("resnet_time_scale_shift", "scale_shift")],
)  # fmt: skip
def test_config_keys_outside_the_subset_are_refused_by_name(key, value):
    config = {**UNET_CONFIGS["sd1"], "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.42.1"}
    minidiff.UNet2DConditionModel.from_config(
        {**config, key: OUTSIDE_SUBSET[key]}
    )  # diffusers' default: loads
    with pytest.raises(ValueError, match=f"{key}={value!r} is outside the Stable Diffusion") as err:
        minidiff.UNet2DConditionModel.from_config({**config, key: value})
    assert "\n" not in str(err.value)


def test_refusals_name_the_value():
    config = UNET_CONFIGS["sd1"]
    with pytest.raises(ValueError, match="num_attention_heads=4"):
        minidiff.UNet2DConditionModel(**{**config, "num_attention_heads": 4})
    with pytest.raises(ValueError, match="down_block_types 'SimpleCrossAttnDownBlock2D'"):
        minidiff.UNet2DConditionModel(**{**config, "down_block_types": ("SimpleCrossAttnDownBlock2D",) * 3})
    with pytest.raises(
        ValueError, match="attention_head_dim \\[1, 2\\] has 2 entries; expected one per block \\(3\\)"
    ):
        minidiff.UNet2DConditionModel(**{**config, "attention_head_dim": (1, 2)})
    with pytest.raises(ValueError, match="up_block_types"):
        minidiff.AutoencoderKL(up_block_types=("UpBlock2D",))
    model = minidiff.UNet2DConditionModel(**config)
    sample, context = unet_inputs(config)
    with pytest.raises(ValueError, match="encoder_hidden_states has batch 1; expected the sample's 2"):
        model(sample, 1, context[:1])
    with pytest.raises(ValueError, match="added_cond_kwargs is not supported"):
        model(sample, 1, context, added_cond_kwargs={"text_embeds": context})


def test_pipeline_refusals(pipes, monkeypatch):
    _, ours, _ = pipes
    for kwargs, message in [
        (dict(height=20), "height=20; expected a positive multiple of 8"),
        (dict(width=12), "width=12; expected a positive multiple of 8"),
        (dict(output_type="jpg"), "output_type 'jpg' is not supported"),
        (dict(num_images_per_prompt=0), "num_images_per_prompt=0"),
        (dict(negative_prompt=["a", "b"]), "expected a string or 1 strings"),
        (
            dict(latents=torch.zeros(1, 4, 3, 3)),
            "latents of shape \\(1, 4, 3, 3\\); expected \\(1, 4, 8, 8\\)",
        ),
    ]:
        with pytest.raises(ValueError, match=message):
            ours("a cat", num_inference_steps=1, height=kwargs.pop("height", 16), **kwargs)
    with pytest.raises(ValueError, match="runs no safety checker"):
        minidiff.StableDiffusionPipeline(ours.vae, ours.text_encoder, ours.tokenizer, ours.unet, ours.scheduler,
                                         safety_checker=object())  # fmt: skip
    # the hub unreachable: the one line DDPMPipeline.from_pretrained gives
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError) as ddpm_error:
        minidiff.DDPMPipeline.from_pretrained("sd-dreambooth-library/mr-potato-head")
    with pytest.raises(OSError) as sd_error:
        minidiff.StableDiffusionPipeline.from_pretrained("sd-dreambooth-library/mr-potato-head")
    assert str(sd_error.value) == str(ddpm_error.value) and "\n" not in str(sd_error.value)


def test_the_shape_table_in_the_docs_is_what_the_code_computes():
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("sd_shapes", root / "docs" / "sd_shapes.py")
    sd_shapes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sd_shapes)
    page = (root / "docs" / "stable_diffusion.md").read_text(encoding="utf-8")
    in_page = page.split("<!-- shapes: generated by `python docs/sd_shapes.py` -->\n")[1].split(
        "\n<!-- /shapes -->"
    )[0]
    assert in_page == sd_shapes.shape_table()
    rows = {name: shape for name, shape, _ in sd_shapes.shape_rows(height=256, width=384)}
    assert rows["unet.conv_out"][1:] == rows["z (the posterior's mean)"][1:]  # eps has the latents' shape
    assert rows["vae.decoder"][-2:] == (256, 384)  # the decoder gives the image size back


def test_reference_cell_runs_minidiffs_pipeline_and_says_why_without_the_hub(pipes, monkeypatch, capsys):
    from reference import stable_diffusion

    _, ours, _ = pipes
    image = stable_diffusion.generate(ours, num_inference_steps=2)
    assert image.size == (16, 16)  # the chapter's call on minidiff's pipeline: one PIL image
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert stable_diffusion.main(["--library", "minidiff"]) == 1
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "HF_HUB_OFFLINE is set" in out and stable_diffusion.MODEL_ID in out
    with pytest.raises(ValueError, match="library 'jax'"):
        stable_diffusion.load_pipeline(library="jax")


@pytest.mark.gpu
def test_fp16_forward_on_cuda_agrees_with_diffusers():
    """Stable Diffusion runs in fp16 on GPUs: both UNets cast alike, same inputs, SDPA in both. The relative error
    bound is fp16's rounding unit (4.9e-4) doubled: equal kernels give 0, another kernel choice rounds elsewhere."""
    config = UNET_CONFIGS["sd2"]
    reference, model, _ = both_unets(config)
    reference, model = (torch.nn.Module.to(m, "cuda", torch.float16) for m in (reference, model))
    sample, context = (x.to("cuda", torch.float16) for x in unet_inputs(config))
    with torch.no_grad():
        expected, out = (
            reference(sample, 500, context).sample.float(),
            model(sample, 500, context).sample.float(),
        )
    assert torch.isfinite(out).all() and ((out - expected).norm() / expected.norm()).item() <= 1e-3
