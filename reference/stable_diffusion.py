"""The chapter's Stable Diffusion cell (4.1), as written, with diffusers' pipeline or minidiff's.

    pipe = StableDiffusionPipeline.from_pretrained("sd-dreambooth-library/mr-potato-head", torch_dtype=...)
    pipe(prompt, num_inference_steps=50, guidance_scale=5.5)

`--library minidiff` loads the same folder into minidiff's StableDiffusionPipeline (its own UNet, VAE and
scheduler; CLIP from transformers), the drop-in tests/test_stable_diffusion.py checks offline, bit for bit, on a
tiny pipeline. `swap_scheduler` puts a minidiff scheduler into either pipeline
(`pipe.scheduler = X.from_config(pipe.scheduler.config)`; tests/test_stable_diffusion_swap.py). Run:

    python -m reference.stable_diffusion [--library minidiff] [--scheduler DPMSolverMultistepScheduler] [--out potato.png]

Needs the hub (about 2.7 GB of weights, or the Hugging Face cache) and the `reference` extra (diffusers, transformers).
"""

from __future__ import annotations

import argparse

import torch

MODEL_ID = "sd-dreambooth-library/mr-potato-head"
PROMPT = "an abstract oil painting of sks mr potato head by picasso"


def hub_problem() -> str | None:
    """Why the hub cannot be used now, in one line, or None when it can."""
    from minidiff.files import hub_offline, hub_reachable

    if hub_offline():
        return "HF_HUB_OFFLINE is set"
    if not hub_reachable():
        return "huggingface.co cannot be reached"
    return None


LIBRARIES = ("diffusers", "minidiff")


def load_pipeline(
    model_id: str = MODEL_ID, device: str | torch.device | None = None, library: str = "diffusers"
):
    """The chapter's `from_pretrained` with `library`'s StableDiffusionPipeline, float16 on a GPU and float32 on
    the CPU; a one-line OSError without the hub (and no cached copy)."""
    if library not in LIBRARIES:
        raise ValueError(f"library {library!r}; expected one of {list(LIBRARIES)}")
    if library == "minidiff":
        from minidiff import StableDiffusionPipeline
    else:
        from diffusers import StableDiffusionPipeline

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    try:
        pipe = StableDiffusionPipeline.from_pretrained(model_id, torch_dtype=dtype)
    except Exception as err:  # hub unreachable, repository missing or gated
        reason = hub_problem() or f"{type(err).__name__}: {err}"
        raise OSError(
            f"could not load {model_id!r}: {reason}; it needs the hub or the Hugging Face cache"
        ) from err
    return pipe.to(device)


def swap_scheduler(pipe, name: str):
    """`pipe.scheduler = minidiff.<name>.from_config(pipe.scheduler.config)`: same config, minidiff's code."""
    import minidiff

    pipe.scheduler = getattr(minidiff, name).from_config(pipe.scheduler.config)
    return pipe


def generate(
    pipe, prompt: str = PROMPT, seed: int = 0, num_inference_steps: int = 50, guidance_scale: float = 5.5
):
    """The chapter's call: 50 steps, guidance scale 5.5, one image (a PIL image)."""
    generator = torch.Generator("cpu").manual_seed(seed)
    return pipe(
        prompt, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, generator=generator
    ).images[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument(
        "--library", choices=LIBRARIES, default="diffusers", help="whose StableDiffusionPipeline"
    )
    parser.add_argument(
        "--scheduler", help="a minidiff scheduler class name, e.g. DPMSolverMultistepScheduler"
    )
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="mr_potato_head.png")
    args = parser.parse_args(argv)
    try:
        pipe = load_pipeline(library=args.library)
    except OSError as err:
        print(f"skipped: {err}")
        return 1
    if args.scheduler:
        swap_scheduler(pipe, args.scheduler)
    generate(pipe, args.prompt, args.seed, args.steps).save(args.out)
    print(
        f"{args.out}: {type(pipe).__module__}.{type(pipe).__name__} with "
        f"{type(pipe.scheduler).__module__}.{type(pipe.scheduler).__name__}, {args.steps} steps"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
