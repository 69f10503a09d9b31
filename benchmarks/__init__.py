"""Same-process benchmarks of minidiff against diffusers: `python -m benchmarks --help`.

Cases: UNet forward, train step, whole sampling runs, scheduler step alone; diffusers fp32, minidiff's
plain path, minidiff's fast path, and diffusers' strongest setting (bf16 + torch.compile) side by side.
"""
