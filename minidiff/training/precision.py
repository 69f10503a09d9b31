"""Which precision a run trains in: `mixed_precision="auto"` measures it instead of assuming it.

    choice = choose_precision(config, unet, channels, device)   # -> PrecisionChoice("no" | "bf16" | ..)

bf16 autocast is not faster everywhere. On a CPU with native bf16 (AVX-512-BF16 or AMX) a step of the
`tiny` preset takes about 0.8x the time of fp32; on an AVX2-only CPU oneDNN emulates bf16 and the same step
takes about 6.7x as long (both measured with torch 2.14 on an Intel Xeon, the AVX2 case under
`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`). So on a CPU "auto" times a few forward + backward
passes of the run's own UNet at the run's batch shape each way (`bf16_factor`, a few seconds at most) and
keeps bf16 only where it is faster. On CUDA "auto" is bf16 where the GPU supports it, without timing. An
explicit "bf16" on a CPU without native bf16, or where it measures slower, is kept and warned about once,
with the measured cost (an explicit bf16 on a CPU with native bf16 is taken as set, unmeasured). A resumed
run keeps the precision its checkpoint was trained in. Both engines train in the precision chosen here (the
loop resolves it first).
"""

from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

FASTER = 1.0  # bf16 is kept when its step takes less than this factor of fp32's time
PROBE_ROUNDS = 2  # timed rounds each way, after one warm-up pass each way


@dataclass
class PrecisionChoice:
    """The precision a run trains in and why.

    Args:
        mixed_precision: "no", "bf16" or "fp16" (what the engine runs).
        factor: a bf16 step's time over an fp32 step's, as measured (None: not measured).
        line: one line saying the choice, the factor and the CPU.
        warning: a warning to show once (an explicit bf16 that is slower), else None.
    """

    mixed_precision: str
    factor: float | None
    line: str
    warning: str | None = None


def cpu_capability() -> str:
    """torch's CPU kernel level: "AVX512", "AVX2", "DEFAULT" (ATEN_CPU_CAPABILITY can lower it)."""
    return torch.backends.cpu.get_cpu_capability()


def native_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX-512-BF16 or AMX, unless ONEDNN_MAX_CPU_ISA holds
    it lower)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch built without oneDNN
        return False


def describe_cpu() -> str:
    """One line: the CPU kind as torch sees it, bf16 support, threads, and an AVX2 hold if set."""
    hold = os.environ.get("ATEN_CPU_CAPABILITY")
    held = f" (ATEN_CPU_CAPABILITY={hold})" if hold else ""
    bf16 = "native bf16" if native_bf16() else "no native bf16"
    return f"CPU {cpu_capability()}{held}, {bf16}, {torch.get_num_threads()} threads"


PROBE_BATCH = 64  # images per timed pass, at most (the run's batch): bf16's gain shrinks at smaller batches
CLEAR = 2.0  # a first round this far from 1 (either way) decides without a second


def bf16_factor(
    unet: torch.nn.Module, batch: int, channels: int, size: int, rounds: int = PROBE_ROUNDS
) -> float:
    """A bf16-autocast forward + backward pass's time over an fp32 one's, on a copy of `unet` (the run's
    model, optimizer and random generators are not touched), at the run's image shape, on the CPU.

    One warm-up pass each way, then up to `rounds` rounds, fp32 and bf16 in turn (a first round that is
    clearly one way, by CLEAR, ends it); the best time of each (a shared machine's other jobs only ever add
    time).
    """
    model = copy.deepcopy(unet).cpu().train()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(min(batch, PROBE_BATCH), channels, size, size, generator=g)
    t = torch.randint(0, 1000, (x.shape[0],), generator=g)

    def one_pass(bf16: bool) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            out = model(x, t).sample
        out.float().square().mean().backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    one_pass(False), one_pass(True)  # warm-up: oneDNN's kernels are built on first use
    best = {False: float("inf"), True: float("inf")}
    for _ in range(rounds):
        for bf16 in (False, True):
            best[bf16] = min(best[bf16], one_pass(bf16))
        if not 1 / CLEAR < best[True] / best[False] < CLEAR:
            break
    return best[True] / best[False]


def choose_precision(config, unet: torch.nn.Module, channels: int, device: torch.device) -> PrecisionChoice:
    """Resolve `config.mixed_precision` for this device: "auto" by the rule above; "bf16" on a CPU measured
    and warned about when it is slower; anything else as given.

    Args:
        config: the run's settings (mixed_precision, batch_size, image_size).
        unet: the run's model (copied for the measurement, never changed).
        channels: the images' channels.
        device: the device the run trains on.
    """
    asked = config.mixed_precision
    if device.type == "cuda":
        if asked != "auto":
            return PrecisionChoice(asked, None, f"precision: {asked} (as set)")
        chosen = "bf16" if torch.cuda.is_bf16_supported() else "no"
        return PrecisionChoice(chosen, None, f"precision: {_named(chosen)} (auto: bf16 where the GPU has it)")
    if device.type != "cpu" or asked not in ("auto", "bf16"):
        chosen = "no" if asked == "auto" else asked
        return PrecisionChoice(
            chosen, None, f"precision: {_named(chosen)} ({'auto' if asked == 'auto' else 'as set'})"
        )
    cpu = f"{cpu_capability()}, {'native bf16' if native_bf16() else 'no native bf16'}"
    if asked == "bf16" and native_bf16():  # as set, on a CPU made for it: no measurement
        return PrecisionChoice("bf16", None, f"precision: bf16 autocast (as set; {cpu})")
    factor = bf16_factor(unet, config.batch_size, channels, config.image_size)
    if asked == "auto":
        chosen = "bf16" if factor < FASTER else "no"
        return PrecisionChoice(
            chosen, factor,
            f"precision: {_named(chosen)} (auto: a bf16 step measured {factor:.2f}x the time of an fp32 step on "
            f"this CPU, {cpu})",
        )  # fmt: skip
    warning = None
    if factor >= FASTER or not native_bf16():  # (not native: always)
        warning = (
            f"bf16 autocast on a CPU with {cpu}: a step takes {factor:.1f}x the time of fp32; "
            "--mixed-precision auto (or no) trains in fp32 here"
        )
    return PrecisionChoice(
        "bf16", factor, f"precision: bf16 (as set; {factor:.2f}x the time of fp32, {cpu})", warning
    )


def _named(mixed_precision: str) -> str:
    return {"no": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}[mixed_precision]


_WARNED: set[str] = set()  # the CPUs whose slow bf16 this process has warned about


def resolve_precision(config, unet: torch.nn.Module, channels: int, device: torch.device):
    """`config` with `mixed_precision` resolved by `choose_precision`, and the choice; an explicit bf16 that is
    slower is warned about once per process. Under torchrun every process trains in fp32 when any measured
    bf16 slower (all processes train in one precision).

    Returns:
        (config, PrecisionChoice).
    """
    import dataclasses

    import minidiff.training.distributed as distributed

    choice = choose_precision(config, unet, channels, device)
    if config.mixed_precision == "auto" and distributed.is_distributed():
        if (
            distributed.max_over_ranks(int(choice.mixed_precision != "bf16"), device)
            and choice.mixed_precision == "bf16"
        ):
            choice = PrecisionChoice("no", choice.factor, choice.line.replace("bf16 autocast", "fp32", 1) +
                                     "; fp32 as another process measured bf16 slower")  # fmt: skip
    if choice.warning and describe_cpu() not in _WARNED:  # once per process (the factor varies run to run)
        _WARNED.add(describe_cpu())
        logger.warning(choice.warning)
    return dataclasses.replace(config, mixed_precision=choice.mixed_precision), choice
