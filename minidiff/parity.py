"""A parity microscope: run two UNets whose submodules share names side by side, and see where they drift.

minidiff's module names equal diffusers' (that is what makes the state dicts interchangeable), so a forward
hook on `down_blocks.1.attentions.0` in one model and on the same name in the other sees the same
computation. `compare_unet` records every submodule's output in both, in forward order:

    from minidiff.parity import compare_unet
    report = compare_unet(diffusers_unet, minidiff_unet, sample, timestep, dtype=torch.bfloat16)
    print(report.table())                      # one row per submodule: shape, max abs diff, max rel diff
    report.assert_close(atol=1e-5, rtol=1e-4)  # in pytest: raises naming the first module that drifts

`compare_unet` never imports diffusers: any two modules with matching submodule names and UNet2DModel's
(or, given `encoder_hidden_states`, UNet2DConditionModel's) call signature work (two minidiff models, a
compiled or fused variant against the plain one, ...).
The conversions at the end of this file (`to_diffusers_unet`, `to_minidiff_unet`, `load_both_unets`)
move a UNet between the two libraries; they import diffusers when called.

Hooks fire when a module's forward returns, so children come before their parents: the first row that
fails a tolerance is the innermost module where the two models part ways.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel


@dataclass
class ModuleDiff:
    """One submodule: output shape, max |a - b|, and that divided by max |b| (b = the reference's output)."""

    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    ref_max: float  # max |reference output|: the scale max_rel is measured against
    note: str = ""

    def drifts(self, atol: float, rtol: float) -> bool:
        """Whether max|a - b| > atol + rtol * max|b| (NaN counts as drift)."""
        return not self.max_abs <= atol + rtol * self.ref_max  # NaN counts as drift


@dataclass
class ParityReport:
    """What `compare_unet` found: one row per submodule that ran in both models, in forward order."""

    rows: list[ModuleDiff]  # in the order the model's modules finished their forward
    dtype: torch.dtype
    only_in_reference: list[str] = field(default_factory=list)  # ran in one model only: not compared
    only_in_model: list[str] = field(default_factory=list)

    @property
    def max_abs(self) -> float:
        """The largest absolute difference over all rows."""
        return max((r.max_abs for r in self.rows), default=0.0)

    @property
    def max_rel(self) -> float:
        """The largest relative difference over all rows."""
        return max((r.max_rel for r in self.rows), default=0.0)

    @property
    def output(self) -> ModuleDiff:
        """The whole model's output (the row named "(output)")."""
        return next(r for r in self.rows if r.name == "(output)")

    def worst(self) -> ModuleDiff:
        """The submodule with the largest relative difference."""
        return max(self.rows, key=lambda r: (math.isnan(r.max_rel), r.max_rel))

    def first_drift(self, atol: float, rtol: float) -> ModuleDiff | None:
        """The first module (forward order) with max|a - b| > atol + rtol * max|b|, or None."""
        return next((r for r in self.rows if r.drifts(atol, rtol)), None)

    def assert_close(self, atol: float, rtol: float) -> None:
        """Raise AssertionError naming the first module (forward order) that drifts.

        Args:
            atol: the absolute tolerance.
            rtol: the tolerance relative to the reference output's largest magnitude.
        """
        row = self.first_drift(atol, rtol)
        if row is not None:
            raise AssertionError(
                f"first drifting module: {row.name} {row.shape}{' ' + row.note if row.note else ''}: "
                f"max_abs {row.max_abs:.3e} > "
                f"atol + rtol * max|ref| = {atol:.1e} + {rtol:.1e} * {row.ref_max:.3e} (max_rel {row.max_rel:.3e}, "
                f"{self.dtype}); print(report.table()) shows every module"
            )

    def table(self) -> str:
        """One line per module: name, shape, max absolute and max relative difference; the worst last."""
        width = max([len("module")] + [len(r.name) for r in self.rows])
        lines = [f"{'module':<{width}}  {'shape':<20}  {'max_abs':>9}  {'max_rel':>9}"]
        for r in self.rows:
            shape = str(r.shape).replace(" ", "")
            lines.append(
                f"{r.name:<{width}}  {shape:<20}  {r.max_abs:>9.2e}  {r.max_rel:>9.2e}  {r.note}".rstrip()
            )
        worst = self.worst() if self.rows else None
        if worst is not None:
            lines.append(
                f"{len(self.rows)} modules compared in {self.dtype}; worst: {worst.name} ({worst.max_rel:.2e})"
            )
        return "\n".join(lines)


def _tensors(out) -> list[torch.Tensor]:
    """Every tensor in a module's output: a tensor, a tuple / list / dict of them, or an output dataclass."""
    if torch.is_tensor(out):
        return [out.detach()]
    if hasattr(out, "to_tuple"):  # UNet2DOutput (minidiff's and diffusers')
        out = out.to_tuple()
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, tuple | list):
        return [t for item in out for t in _tensors(item)]
    return []


@contextlib.contextmanager
def _recording(model: nn.Module, outputs: dict[str, list[torch.Tensor]]):
    """Forward hooks that store each submodule's first output, keyed by name, in completion order."""

    def hook_for(name: str):
        def hook(module, args, out):
            outputs.setdefault(name, _tensors(out))

        return hook

    handles = [m.register_forward_hook(hook_for(name or "(output)")) for name, m in model.named_modules()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _sdpa(backend: SDPBackend | list[SDPBackend] | None):
    return contextlib.nullcontext() if backend is None else sdpa_kernel(backend)


def _compare(name: str, ref: list[torch.Tensor], out: list[torch.Tensor]) -> ModuleDiff:
    shapes = [tuple(t.shape) for t in out]
    shape = shapes[0] if len(shapes) == 1 else tuple(shapes)
    if [tuple(t.shape) for t in ref] != shapes:
        return ModuleDiff(
            name, shape, math.inf, math.inf, 0.0, f"shape mismatch: reference {[tuple(t.shape) for t in ref]}"
        )
    if not out:
        return ModuleDiff(name, (), 0.0, 0.0, 0.0, "no tensor output")
    max_abs = max((a.double() - b.double()).abs().max().item() for a, b in zip(out, ref))
    ref_max = max(b.double().abs().max().item() for b in ref)
    return ModuleDiff(name, shape, max_abs, max_abs / ref_max if ref_max > 0 else max_abs, ref_max)


def compare_unet(
    reference_model: nn.Module,
    minidiff_model: nn.Module,
    sample: torch.Tensor,
    timestep: torch.Tensor | float | int,
    class_labels: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    sdpa_backend: SDPBackend | list[SDPBackend] | None = None,
    encoder_hidden_states: torch.Tensor | None = None,
) -> ParityReport:
    """Run both models once (eval mode, no grad) and compare every submodule that ran in both under one name.

    Args:
        reference_model: the model compared against (diffusers' UNet2DModel, say).
        minidiff_model: the model under test; its submodule names match the reference's.
        sample: x_t, the input of both.
        timestep: the timestep of both.
        class_labels: class labels, for class-conditional models.
        dtype: run copies of both models (and the inputs) in this precision; the caller's models are left
            untouched. Default: the models as they are.
        device: run the copies on this device.
        sdpa_backend: a torch.nn.attention.SDPBackend (or a list of them) that both models' attention must
            use, e.g. SDPBackend.MATH for a reference run or SDPBackend.FLASH_ATTENTION on a GPU; default:
            torch's choice.
        encoder_hidden_states: the text tokens (B, L, D) of a UNet2DConditionModel (Stable Diffusion).

    Returns:
        A `ParityReport`.
    """
    if dtype is not None or device is not None:
        # nn.Module.to itself, not a subclass's override: no library cast warnings or hooks in the way
        reference_model = nn.Module.to(copy.deepcopy(reference_model), device=device, dtype=dtype)
        minidiff_model = nn.Module.to(copy.deepcopy(minidiff_model), device=device, dtype=dtype)
        sample = sample.to(device=device, dtype=dtype)
        if class_labels is not None and class_labels.is_floating_point():  # identity class embedding
            class_labels = class_labels.to(device=device, dtype=dtype)
        elif class_labels is not None:
            class_labels = class_labels.to(device)
        if torch.is_tensor(timestep):
            timestep = timestep.to(device)
        if encoder_hidden_states is not None:
            encoder_hidden_states = encoder_hidden_states.to(device=device, dtype=dtype)
    extra = {} if class_labels is None else {"class_labels": class_labels}
    if encoder_hidden_states is not None:
        extra["encoder_hidden_states"] = encoder_hidden_states
    recorded: list[dict[str, list[torch.Tensor]]] = [{}, {}]
    modes = [reference_model.training, minidiff_model.training]
    try:
        for model, outputs in zip((reference_model, minidiff_model), recorded):
            model.eval()
            with torch.no_grad(), _sdpa(sdpa_backend), _recording(model, outputs):
                model(sample, timestep, **extra)
    finally:
        reference_model.train(modes[0])
        minidiff_model.train(modes[1])

    ref_outputs, outputs = recorded
    rows = [_compare(name, ref_outputs[name], out) for name, out in outputs.items() if name in ref_outputs]
    report_dtype = dtype or next(
        (p.dtype for p in minidiff_model.parameters() if p.is_floating_point()), torch.float32
    )
    return ParityReport(
        rows=rows,
        dtype=report_dtype,
        only_in_reference=[n for n in ref_outputs if n not in outputs],
        only_in_model=[n for n in outputs if n not in ref_outputs],
    )


# ---- diffusers <-> minidiff: same config, same state dict, strict loading ---------------------------------
def _import_diffusers():
    try:
        import diffusers
    except ImportError:
        raise ImportError(
            "comparing with diffusers needs it installed: pip install 'minidiff[reference]'"
        ) from None
    return diffusers


def _public_config(unet) -> dict:
    return {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}


def to_diffusers_unet(unet: nn.Module):
    """A diffusers UNet2DModel with `unet`'s config and a copy of its weights, on its device."""
    model = _import_diffusers().UNet2DModel.from_config(_public_config(unet))
    model.load_state_dict(unet.state_dict(), strict=True)
    return model.to(unet.device)


def to_minidiff_unet(unet: nn.Module):
    """A minidiff UNet2DModel with a diffusers `unet`'s config and a copy of its weights."""
    from minidiff.models.unet_2d import UNet2DModel

    model = UNet2DModel.from_config(_public_config(unet))
    model.load_state_dict(unet.state_dict(), strict=True)
    return model.to(unet.device)


def load_both_unets(path: str | os.PathLike):
    """(diffusers UNet2DModel, minidiff UNet2DModel) from a pipeline folder (its unet/) or a UNet folder.

    Args:
        path: the folder.
    """
    from minidiff.files import HubUnreachable, looks_local, resolve_file
    from minidiff.models.unet_2d import UNet2DModel

    diffusers = _import_diffusers()
    if looks_local(path):
        subfolder = "unet" if os.path.isfile(os.path.join(path, "unet", "config.json")) else None
    else:  # a hub id: minidiff's look-up first, so that offline fails at once with the hub's one message
        try:
            resolve_file(path, "model_index.json")
            subfolder = "unet"
        except HubUnreachable:
            raise
        except OSError:  # a hub repository of a bare UNet
            subfolder = None
    ours = UNet2DModel.from_pretrained(path, subfolder=subfolder)
    reference = diffusers.UNet2DModel.from_pretrained(path, subfolder=subfolder)
    return reference.eval(), ours.eval()


def parity_table(
    model: str | os.PathLike, timestep: int = 500, batch_size: int = 1, dtype: str = "fp32",
    device: str | None = None, seed: int = 0,
) -> str:  # fmt: skip
    """`minidiff parity`: both UNets of `model` (a folder or hub id) on one seeded random batch at
    `timestep`, compared module by module; the table `ParityReport.table` prints.

    Args:
        model: a pipeline folder (its unet/), a UNet folder or a hub id.
        timestep: the timestep fed to both.
        batch_size: random inputs per forward.
        dtype: "fp32", "bf16" or "fp16".
        device: where both run (None: cpu).
        seed: seeds the random input.
    """
    reference, ours = load_both_unets(model)
    config = ours.config
    size = config.sample_size if isinstance(config.sample_size, int) else config.sample_size[0]
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch_size, config.in_channels, size, size, generator=generator)  # (B, C, H, W)
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    report = compare_unet(reference, ours, sample, torch.tensor(timestep), dtype=dtypes[dtype], device=device)
    return report.table()
