"""minidiff.parity.compare_unet: per-submodule drift between two UNets that share module names."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn.attention import SDPBackend

diffusers = pytest.importorskip("diffusers")

from minidiff import UNet2DModel  # noqa: E402
from minidiff.parity import compare_unet  # noqa: E402

CONFIG = dict(
    block_out_channels=(8, 16),
    norm_num_groups=4,
    attention_head_dim=4,
    layers_per_block=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    num_class_embeds=5,
)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    reference = diffusers.UNet2DModel(**CONFIG).eval()
    model = UNet2DModel(**CONFIG).eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    g = torch.Generator().manual_seed(1)
    inputs = dict(
        sample=torch.randn(2, 3, 8, 8, generator=g),
        timestep=torch.tensor([10, 900]),
        class_labels=torch.tensor([0, 4]),
    )
    return reference, model, inputs


def test_identical_models_show_no_drift(setup):
    _, model, inputs = setup
    report = compare_unet(model, copy.deepcopy(model), **inputs)
    assert report.max_abs == 0.0  # the same module run twice on the same input: deterministic on CPU
    assert report.output.shape == (2, 3, 8, 8)


def test_diffusers_and_minidiff_agree_module_by_module(setup):
    reference, model, inputs = setup
    report = compare_unet(reference, model, **inputs, sdpa_backend=SDPBackend.MATH)
    # every minidiff submodule has a diffusers twin of the same name (that is what makes the weights load)
    assert report.only_in_model == []
    assert {"conv_in", "mid_block.attentions.0.to_q", "up_blocks.0.attentions.1", "(output)"} <= {
        r.name for r in report.rows
    }
    # fp32, same operations in the same order: bit-identical on CPU; 1e-6 abs / 1e-5 rel leaves room for
    # other kernels. The rule is |a - b| <= atol + rtol * max|b| per module.
    report.assert_close(atol=1e-6, rtol=1e-5)


def test_a_perturbed_weight_is_found(setup):
    reference, model, inputs = setup
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.down_blocks[1].attentions[0].to_v.weight[0, 0] += 1e-2
    report = compare_unet(reference, broken, **inputs)
    # everything before the perturbed projection is exact; it is the first module to drift
    assert report.first_drift(atol=1e-6, rtol=1e-5).name == "down_blocks.1.attentions.0.to_v"
    with pytest.raises(AssertionError, match=r"first drifting module: down_blocks\.1\.attentions\.0\.to_v "):
        report.assert_close(atol=1e-6, rtol=1e-5)
    assert report.output.max_abs > 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_runs_on_copies(setup, dtype):
    reference, model, inputs = setup
    report = compare_unet(reference, model, **inputs, dtype=dtype)
    assert report.dtype == dtype and report.rows
    assert model.dtype == torch.float32 and reference.dtype == torch.float32  # copies were cast, not these
    # Both models round the same ops the same way (measured: 0.0 on CPU). The bound allows a few steps of
    # bf16's 8-bit mantissa (2**-8 = 3.9e-3 relative) for kernels that reduce in another order.
    report.assert_close(atol=1e-2, rtol=2e-2)


def test_training_mode_is_restored(setup):
    reference, model, inputs = setup
    model.train()
    try:
        compare_unet(reference, model, **inputs)
        assert model.training and not reference.training
    finally:
        model.eval()


def test_table_lists_modules(setup):
    reference, model, inputs = setup
    table = compare_unet(reference, model, **inputs).table()
    lines = table.splitlines()
    assert lines[0].split() == ["module", "shape", "max_abs", "max_rel"]
    assert any(line.startswith("down_blocks.1.attentions.0.to_q ") for line in lines)
    assert "modules compared in torch.float32; worst:" in lines[-1]


def test_parity_command_at_batch_1_reports_no_difference(tmp_path, capsys):
    """`minidiff parity` draws one sample by default: every module's output is diffusers' to the bit."""
    from minidiff.cli import main

    torch.manual_seed(0)
    layout = dict(
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    )
    UNet2DModel(sample_size=16, block_out_channels=(8, 16, 32), norm_num_groups=4, **layout).save_pretrained(
        tmp_path / "unet"
    )
    assert main(["parity", "--model", str(tmp_path / "unet")]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:-1]]
    assert len(rows) > 50 and rows[0][1].startswith("(1,")  # batch 1
    assert {row[2] for row in rows} == {"0.00e+00"}  # max_abs of every module
