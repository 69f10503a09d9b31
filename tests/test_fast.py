"""The fast sampler computes the same numbers as the plain path (diffusers' scheduler and pipeline).

CPU tests run the fast code eagerly in fp32 (the CUDA graph and bf16 parts are `gpu`-marked and also
checked by benchmarks/gpu_check.sh). Errors are relative: ||fast - ref|| / ||ref||. The fast training
engine is tested in tests/test_engines.py.
"""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import DDPMPipeline
from diffusers import DDPMScheduler as DiffusersDDPMScheduler
from diffusers import UNet2DModel as DiffusersUNet2DModel

from minidiff.fast import (
    FastDDPMSampler,
    ddpm_step_tables,
    ddpm_update,
    fuse_qkv_projections,
    sample,
)
from minidiff.models.layers import Attention
from minidiff.models.unet_2d import UNet2DModel
from minidiff.schedulers.scheduling_ddpm import DDPMScheduler

TINY = dict(
    sample_size=8,
    in_channels=3,
    out_channels=3,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=8,
    attention_head_dim=8,
)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(scope="module")
def unets():
    torch.manual_seed(0)
    reference = DiffusersUNet2DModel(**TINY).eval()
    ours = UNet2DModel(**TINY).eval()
    ours.load_state_dict(reference.state_dict())
    return reference, ours


# ---- 1. one step: the tables + ddpm_update reproduce DDPMScheduler.step ---------------------------------
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_small_log", "fixed_large"])
@pytest.mark.parametrize("clip", ["clip", "threshold", "none"])
def test_step_matches_diffusers(prediction_type, variance_type, clip):
    config = dict(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2" if clip == "none" else "linear",
        prediction_type=prediction_type,
        variance_type=variance_type,
        clip_sample=clip == "clip",
        thresholding=clip == "threshold",
        sample_max_value=2.0,
    )
    scheduler, ours = DiffusersDDPMScheduler(**config), DDPMScheduler(**config)
    scheduler.set_timesteps(50)
    ours.set_timesteps(50)
    tables = ddpm_step_tables(scheduler)
    # minidiff's scheduler yields the same tables (its alphas_cumprod and timesteps equal diffusers')
    torch.testing.assert_close(ddpm_step_tables(ours).coeffs, tables.coeffs, rtol=1e-6, atol=0)
    for i in (0, 1, 17, 48, 49):  # first steps (tiny abar), middle, last two (t = 0: no noise)
        t = scheduler.timesteps[i]
        x_t, model_output = torch.randn(2, 3, 8, 8) * 1.5, torch.randn(2, 3, 8, 8)
        seed = 100 + i
        expected = scheduler.step(model_output, t, x_t, generator=torch.Generator().manual_seed(seed))
        noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(seed))  # the same draw
        prev, x0 = ddpm_update(
            x_t, model_output, noise, tables.coeffs[i], tables.clip_sample_range, tables.thresholding
        )
        # fp32 with a different operation order (x/sqrt(a) - (b/sqrt(a)) m): rounding-level differences,
        # amplified where x0 = (x - b m)/sqrt(abar) cancels at t near T; 1e-4 relative is the brief's bound
        assert rel_err(x0, expected.pred_original_sample) < 1e-5
        assert rel_err(prev, expected.prev_sample) < 1e-5
        torch.testing.assert_close(prev, expected.prev_sample, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variance_type", ["learned", "learned_range", "fixed_large_log"])
def test_unsupported_variance_named(variance_type):
    scheduler = DiffusersDDPMScheduler(variance_type=variance_type)
    scheduler.set_timesteps(10)
    with pytest.raises(NotImplementedError, match=variance_type):
        ddpm_step_tables(scheduler)


# ---- 2. the sampling copy of the UNet -----------------------------------------------------------------
def test_fused_qkv_attention_is_the_same_function():
    torch.manual_seed(1)
    attention = Attention(64, heads=4, dim_head=16, norm_num_groups=8, eps=1e-5).eval()
    wrapper = torch.nn.Sequential(copy.deepcopy(attention))
    assert fuse_qkv_projections(wrapper) == 1
    x = torch.randn(2, 64, 4, 4)
    # fp32, one fused GEMM instead of three: same sums, rounding-level differences only
    torch.testing.assert_close(wrapper(x), attention(x), rtol=1e-5, atol=1e-5)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(wrapper(x_cl), attention(x), rtol=1e-5, atol=1e-5)


# ---- 3. a whole trajectory: fast sampler vs diffusers' DDPMPipeline with the same generator -------------
@pytest.mark.parametrize("fuse_qkv,channels_last", [(False, False), (True, True)])
def test_sampler_matches_diffusers_pipeline(unets, fuse_qkv, channels_last):
    reference, ours = unets
    scheduler = DiffusersDDPMScheduler(num_train_timesteps=1000)
    expected = DDPMPipeline(reference, scheduler)(
        batch_size=2, generator=torch.Generator().manual_seed(3), num_inference_steps=20, output_type="pt"
    ).images
    state = {k: v.clone() for k, v in ours.state_dict().items()}
    sampler = FastDDPMSampler(
        ours, scheduler, 2, num_inference_steps=20, fuse_qkv=fuse_qkv, channels_last=channels_last
    )
    images = sampler(seed=3)
    # the same noise sequence goes in (seed -> output rule); fp32 UNet differences ~1e-7 compound over 20 steps
    assert images.shape == expected.shape
    assert rel_err(images, expected) < 1e-4
    # the caller's model and scheduler are untouched
    assert all(torch.equal(v, ours.state_dict()[k]) for k, v in state.items())
    assert len(scheduler.timesteps) == 20 and isinstance(ours.mid_block.attentions[0], Attention)
    # same seed, same images; the functional form gives them too
    torch.testing.assert_close(sampler(seed=3), images, rtol=0, atol=0)
    again = sample(ours, scheduler, 2, 3, 20, channels_last=channels_last, fuse_qkv=fuse_qkv)
    torch.testing.assert_close(again, images, rtol=0, atol=0)


def test_sampler_rejects_bad_options(unets):
    _, ours = unets
    scheduler = DiffusersDDPMScheduler()
    with pytest.raises(ValueError, match="use_cuda_graph"):
        FastDDPMSampler(ours, scheduler, 2, use_cuda_graph=True)
    with pytest.raises(ValueError, match="batch_size"):
        FastDDPMSampler(ours, scheduler, 0)
    with pytest.raises(NotImplementedError, match="learned_range"):
        FastDDPMSampler(ours, DiffusersDDPMScheduler(variance_type="learned_range"), 2)


@pytest.mark.slow
def test_sampler_compiled_on_cpu_matches_eager(unets):
    _, ours = unets
    scheduler = DiffusersDDPMScheduler()
    eager = sample(ours, scheduler, 1, seed=5, num_inference_steps=4)
    compiled = sample(ours, scheduler, 1, seed=5, num_inference_steps=4, compile=True)
    # inductor reorders fp32 reductions: rounding-level differences over 4 steps
    assert rel_err(compiled, eager) < 1e-4


# ---- 5. CUDA: graph replay = eager, bf16 close --------------------------------------------------------
@pytest.mark.gpu
@cuda
def test_cuda_graph_sampler_matches_eager(unets):
    _, ours = unets
    unet = copy.deepcopy(ours).cuda()
    scheduler = DiffusersDDPMScheduler()
    options = dict(num_inference_steps=50, dtype=torch.float32, channels_last=False)
    eager = FastDDPMSampler(unet, scheduler, 4, use_cuda_graph=False, **options)(seed=7)
    graphed = FastDDPMSampler(unet, scheduler, 4, use_cuda_graph=True, **options)(seed=7)
    # the same kernels and the same philox draws: identical up to cuDNN algorithm choice
    assert rel_err(graphed, eager) < 1e-5
    bf16 = FastDDPMSampler(unet, scheduler, 4, num_inference_steps=50)(seed=7)
    # bf16 weights and activations over 50 steps: a few 1e-3 relative, bounded loosely here
    assert rel_err(bf16, eager) < 5e-2
