"""minidiff's fast paths, in one namespace (see benchmarks/README.md for how they are measured):

- `sample(unet, scheduler, batch_size, seed=...)` / `FastDDPMSampler`: DDPM sampling with the scheduler
  folded into on-device tables and UNet + update + noise replayed as one CUDA graph per step
  (minidiff/fast/sampler.py; its docstring states the seed -> output rule).
- `prepare_unet_for_sampling` / `fuse_qkv_projections`: the UNet copy the sampler runs (minidiff/fast/unet.py).

The fast training engine, `FastTrainer` (the whole step replayed as one CUDA graph), is a training engine
and lives with the other one: minidiff/training/fast_engine.py (`from minidiff import FastTrainer`). This
wing imports only the core.

Nothing here compiles or captures at import; that happens on the first call, behind the flags.
"""

from minidiff.fast.sampler import DDPMStepTables, FastDDPMSampler, ddpm_step_tables, ddpm_update, sample
from minidiff.fast.unet import FusedQKVAttention, fuse_qkv_projections, prepare_unet_for_sampling

__all__ = [
    "DDPMStepTables",
    "FastDDPMSampler",
    "FusedQKVAttention",
    "ddpm_step_tables",
    "ddpm_update",
    "fuse_qkv_projections",
    "prepare_unet_for_sampling",
    "sample",
]
