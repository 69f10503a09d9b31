"""Timing tools: alternating runs, warm-up, CUDA events (perf_counter on CPU), medians, peak memory.

Each implementation of a case is a zero-argument callable doing one unit of work (one forward, one train
step, one whole sampling run). `alternate` runs them round-robin, so slow drifts of the machine (clocks,
other tenants) hit every implementation alike, and reports each one's times.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch


@dataclass
class Row:
    """One implementation of one case: times in milliseconds per unit of work."""

    case: str  # "unet_forward", "train_step", "sampling", "scheduler_step"
    impl: str  # e.g. "diffusers fp32", "minidiff fast bf16 graph"
    batch: int
    dtype: str
    unit: str  # what one timed run is: "forward", "step", "1000-step run", ...
    median_ms: float | None = None
    min_ms: float | None = None
    runs: int = 0
    compile_s: float | None = None  # compile / capture / first-call overhead, measured apart
    peak_mem_mb: float | None = None
    accuracy_rel_err: float | None = None  # ||out - ref|| / ||ref||
    accuracy_ref: str = ""  # what the error is measured against
    ratio_vs_diffusers: float | None = None  # diffusers fp32 time / this time
    ratio_vs_diffusers_best: float | None = None  # fastest diffusers row's time / this time
    throughput: float | None = None  # images per second, where meaningful
    note: str = ""
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call: CUDA events around it on a GPU, perf_counter after a sync elsewhere."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000
    start_s = time.perf_counter()
    fn()
    return time.perf_counter() - start_s


def alternate(
    fns: dict[str, Callable[[], object]], device: torch.device, rounds: int, warmup: int
) -> dict[str, list[float]]:
    """Warm every fn up, then time them round-robin (rotating who goes first); seconds per call."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    synchronize(device)
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(time_once(fns[name], device))
    return times


def round_robin(
    fns: dict[str, Callable[[], object]], rounds: dict[str, int], device: torch.device
) -> dict[str, list[float]]:
    """Like `alternate` without warm-up, but each implementation has its own number of runs (slow ones
    fewer); seconds per call."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    while any(len(times[n]) < rounds[n] for n in fns):
        for name, fn in fns.items():
            if len(times[name]) < rounds[name]:
                times[name].append(time_once(fn, device))
    return times


def reset_peak(device: torch.device) -> None:
    """Start a new peak-memory reading (CUDA only)."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def read_peak(device: torch.device) -> float | None:
    """MiB of torch.cuda.max_memory_allocated since `reset_peak` (None on CPU)."""
    if device.type != "cuda":
        return None
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> float | None:
    """Peak memory over one more call (None on CPU, where fn is not called)."""
    if device.type != "cuda":
        return None
    reset_peak(device)
    fn()
    return read_peak(device)


def skipped_row(case: str, impl: str, batch: int, unit: str, why: str) -> Row:
    """A row for an implementation that did not run (e.g. torch.compile unavailable), saying why."""
    return Row(case, impl, batch, "bf16", unit, note=why)


def fill(row: Row, seconds: list[float]) -> Row:
    row.median_ms = statistics.median(seconds) * 1000
    row.min_ms = min(seconds) * 1000
    row.runs = len(seconds)
    return row


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    return ((out - ref).norm() / ref.norm()).item()


def cpu_model() -> str:
    """The CPU's model name and the instruction set torch's kernels use, e.g. "Intel(R) Xeon(R) Processor, AVX512"."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:  # not Linux
        pass
    return f"{name}, {torch.backends.cpu.get_cpu_capability()}"


def environment(device: torch.device) -> dict:
    """Versions and device name for the report header."""
    try:
        import diffusers

        diffusers_version = diffusers.__version__
    except ImportError:  # pragma: no cover - the harness needs diffusers
        diffusers_version = "missing"
    info = {
        "device": str(device),
        "device_name": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffusers": diffusers_version,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_model": cpu_model(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["device_name"] = props.name
        info["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)
        info["multiprocessors"] = props.multi_processor_count
    return info
