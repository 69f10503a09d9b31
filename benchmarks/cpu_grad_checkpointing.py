"""Activation memory of one training step with and without gradient checkpointing, on CPU.

    .venv/bin/python -m benchmarks.cpu_grad_checkpointing          # the tutorial's UNet, batch 64, fp32

Two measures, for minidiff and for diffusers (same weights, same batch):
  saved:  bytes of the distinct tensors autograd keeps for the backward pass after the forward (counted
          with torch.autograd.graph.saved_tensors_hooks, plus the inputs each checkpointed resnet keeps
          to recompute itself), so the figure is exact and does not depend on the allocator;
  peak:   peak resident memory of a fresh process over forward + backward, minus its resident memory
          before the forward (what the allocator really held; includes the gradients, 74 MB).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

from benchmarks.cases import TUTORIAL_UNET

MB = 2**20


def _storage_key(t: torch.Tensor) -> tuple[int, int]:
    return t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()


def saved_bytes(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, checkpointing: bool) -> int:
    """Distinct storages autograd holds for backward after the forward pass (parameters excluded)."""
    params = {_storage_key(p) for p in model.parameters()}
    kept: dict[tuple[int, int], int] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        key = _storage_key(tensor)
        if key not in params:
            kept[key] = key[1]
        return tensor

    def counting_checkpoint(module, *args):  # a checkpointed resnet keeps its inputs to recompute itself
        for a in args:
            keep(a)
        return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False)

    if checkpointing:
        model.enable_gradient_checkpointing(counting_checkpoint)
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        loss = F.mse_loss(model(x, t).sample, x)
    loss.backward()
    return sum(kept.values())


def one_run(library: str, checkpointing: bool, batch: int) -> dict:
    """Runs in a fresh process: peak RSS over forward + backward, and the saved-tensor count."""
    module = __import__(library)
    torch.manual_seed(0)
    model = module.UNet2DModel(**TUTORIAL_UNET).train()
    x, t = torch.randn(batch, 3, 32, 32), torch.randint(0, 1000, (batch,))
    if checkpointing:
        model.enable_gradient_checkpointing()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    start = time.perf_counter()
    F.mse_loss(model(x, t).sample, x).backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    model.zero_grad(set_to_none=True)
    model.disable_gradient_checkpointing()
    saved = saved_bytes(model, x, t, checkpointing)
    return {"peak_over_start": peak - before, "saved": saved, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", nargs=2, metavar=("LIBRARY", "CHECKPOINTING"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(one_run(args.one[0], args.one[1] == "on", args.batch)))
        return
    print(
        f"tutorial UNet, batch {args.batch}, 32x32, fp32, CPU, {args.threads} threads, torch {torch.__version__}"
    )
    print(
        f"{'library':<10} {'checkpointing':<14} {'saved tensors':>14} {'peak RSS - start':>17} {'fwd+bwd':>8}"
    )
    for library in ("minidiff", "diffusers"):
        for mode in ("off", "on"):
            command = [sys.executable, "-m", "benchmarks.cpu_grad_checkpointing", "--one", library, mode]
            command += ["--batch", str(args.batch), "--threads", str(args.threads)]
            result = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
            print(
                f"{library:<10} {mode:<14} {result['saved'] / MB:>11.0f} MB {result['peak_over_start'] / MB:>14.0f} MB"
                f" {result['seconds']:>7.1f}s"
            )


if __name__ == "__main__":
    main()
