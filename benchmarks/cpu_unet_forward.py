"""minidiff vs diffusers UNet2DModel forward pass on CPU: the tutorial's 32x32 model, fp32, same weights.

    .venv/bin/python -m benchmarks.cpu_unet_forward     # batch 8, 2 threads, median of 10 runs each

Both models run in this process on the same fresh random inputs, alternating which goes first, after a
warm-up, under torch.inference_mode. Prints each median, the ratio diffusers / minidiff, and the output
difference (the two must agree, or the timing means nothing).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import diffusers
import torch

from benchmarks.cases import TUTORIAL_UNET as TUTORIAL  # the tutorial's UNet
from minidiff import UNet2DModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10, help="timed runs per model")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    reference = diffusers.UNet2DModel(**TUTORIAL).eval()
    model = UNet2DModel(**TUTORIAL).eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    models = {"diffusers": reference, "minidiff": model}
    generator = torch.Generator().manual_seed(1)

    def fresh_inputs() -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(args.batch, 3, 32, 32, generator=generator), torch.randint(0, 1000, (args.batch,))

    times: dict[str, list[float]] = {name: [] for name in models}
    max_rel = 0.0
    with torch.inference_mode():
        for _ in range(2):  # warm-up: allocator, oneDNN primitive caches
            x, t = fresh_inputs()
            for m in models.values():
                m(x, t)
        for i in range(args.runs):
            x, t = fresh_inputs()
            order = list(models) if i % 2 == 0 else list(reversed(models))
            outs = {}
            for name in order:
                start = time.perf_counter()
                outs[name] = models[name](x, t).sample
                times[name].append(time.perf_counter() - start)
            diff = (outs["minidiff"] - outs["diffusers"]).norm() / outs["diffusers"].norm()
            max_rel = max(max_rel, diff.item())

    median = {name: statistics.median(ts) for name, ts in times.items()}
    print(
        f"UNet2DModel forward, tutorial config ({model.num_parameters() / 1e6:.1f}M params), batch {args.batch}, "
        f"32x32, fp32, CPU {platform.processor() or platform.machine()}, {args.threads} threads, "
        f"torch {torch.__version__}, diffusers {diffusers.__version__}"
    )
    for name, seconds in median.items():
        print(
            f"  {name:<9} median {seconds * 1e3:8.1f} ms  (min {min(times[name]) * 1e3:.1f} ms, {args.runs} runs)"
        )
    print(f"  ratio diffusers / minidiff: {median['diffusers'] / median['minidiff']:.3f}")
    print(f"  output ||minidiff - diffusers|| / ||diffusers||: {max_rel:.1e}")


if __name__ == "__main__":
    main()
