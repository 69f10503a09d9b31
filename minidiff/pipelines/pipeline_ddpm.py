"""DDPMPipeline: the plain denoising loop, nothing hidden, in diffusers' names and file layout.

    pipeline = DDPMPipeline(unet, scheduler)                   # or DDPMPipeline.from_pretrained("out/pipeline")
    images = pipeline(batch_size=16, generator=torch.Generator().manual_seed(0)).images   # 16 PIL images

Sampling (Ho et al. 2020, Algorithm 2, in the form every scheduler shares):
    x_T ~ N(0, I) * init_noise_sigma
    for t in timesteps:   x_{t-1} = scheduler.step(epsilon_theta(scale_model_input(x_t, t), t), t, x_t).prev_sample
The scheduler decides what one step is: DDPM's ancestral step (eq. 6-7), DDIM's (Song et al. 2021, eq. 12,
with `eta`), or any sampler of minidiff/schedulers/samplers.py; and over which timesteps (`num_inference_steps` of the
T training steps). DDPM and DDIM start from N(0, I) and feed x_t unscaled (init_noise_sigma 1, scale_model_input
the identity); Euler's samplers work in sigma = sqrt((1 - alpha_bar) / alpha_bar) and scale both. `denoise`
below is that loop; DDIMPipeline runs it too. Files and devices: minidiff/pipelines/pipeline_utils.py.
"""

from __future__ import annotations

import inspect

import torch

from minidiff.outputs import ImagePipelineOutput
from minidiff.pipelines.pipeline_utils import OUTPUT_TYPES, DiffusionPipeline, numpy_to_pil
from minidiff.schedulers.samplers import scheduler_for
from minidiff.schedulers.scheduling_utils import randn_tensor
from minidiff.viz import denormalize


def check_call(batch_size: int, output_type: str, generator) -> None:
    """The checks both pipelines make before drawing anything."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}; expected a positive int")
    if output_type not in OUTPUT_TYPES:
        raise ValueError(
            f"output_type {output_type!r} is not supported; expected one of {list(OUTPUT_TYPES)}"
        )
    if isinstance(generator, list) and len(generator) != batch_size:
        raise ValueError(
            f"got {len(generator)} generators for batch_size={batch_size}; expected one per image"
        )


def denoise(
    pipeline: DiffusionPipeline,
    batch_size: int,
    generator: torch.Generator | list[torch.Generator] | None,
    num_inference_steps: int,
    output_type: str,
    eta: float | None = None,
    use_clipped_model_output: bool = False,
    progress: bool | None = None,
) -> torch.Tensor | object:
    """Algorithm 2 for any scheduler: x_T ~ N(0, I) * init_noise_sigma, then one scheduler step per timestep;
    images in [0, 1] as `output_type`. `eta` and `use_clipped_model_output` go to a step that takes them
    (a DDIM step; eta None: none), `generator` to a step that draws noise."""
    unet, scheduler = pipeline.unet, pipeline.scheduler
    # 1. x_T ~ N(0, I) in the UNet's dtype, drawn before anything else (same seed -> same numbers)
    size = unet.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    shape = (batch_size, unet.config.in_channels, *size)  # (B, C, H, W)
    device = pipeline.device
    if device.type == "mps":  # as diffusers: randn is not reproducible on mps, draw on the CPU
        image = randn_tensor(shape, generator, torch.device("cpu"), unet.dtype).to(device)
    else:
        image = randn_tensor(shape, generator, device, unet.dtype)

    # 2. the timesteps t_1 > t_2 > ... > t_n the sampler visits, and the noise level of x_T in its units
    # (1 for DDPM / DDIM; the largest sigma for Euler's samplers, known once the timesteps are set)
    scheduler.set_timesteps(num_inference_steps)
    image = image * scheduler.init_noise_sigma

    # the step's keywords: the caller's generator where the step draws noise, DDIM's eta where it takes one
    takes = inspect.signature(scheduler.step).parameters
    step_kwargs = {"generator": generator} if "generator" in takes else {}
    if eta is not None:
        step_kwargs.update(eta=eta, use_clipped_model_output=use_clipped_model_output)

    for t in pipeline.progress_bar(scheduler.timesteps, disable=None if progress is None else not progress):
        # 3. epsilon_theta(x_t, t): the UNet's estimate of the noise in x_t (fed as the sampler scales it)
        model_output = unet(scheduler.scale_model_input(image, t), t).sample
        # 4. x_t -> x_{t-1}: the scheduler's reverse step (may add sigma_t z from `generator`)
        image = scheduler.step(model_output, t, image, **step_kwargs).prev_sample

    # 5. [-1, 1] -> [0, 1]
    image = denormalize(image)
    if output_type != "pt":
        if image.dtype == torch.bfloat16:  # numpy has no bfloat16 (diffusers fails here); float16 stays
            image = image.float()
        image = image.cpu().permute(0, 2, 3, 1).numpy()  # (B, H, W, C)
        if output_type == "pil":
            image = numpy_to_pil(image)
    return image


class DDPMPipeline(DiffusionPipeline):
    """A UNet that predicts the noise and a scheduler (DDPM, DDIM or any of minidiff/schedulers/samplers.py) that turns
    it into one reverse step.

    Args:
        unet: the noise-predicting UNet.
        scheduler: the scheduler whose `step` the loop calls.
    """

    # Copied from diffusers.pipelines.ddpm.pipeline_ddpm.DDPMPipeline.__call__
    # (diffusers' signature, then minidiff's eta and progress)
    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int = 1000,
        output_type: str = "pil",
        return_dict: bool = True,
        eta: float = 0.0,
        progress: bool | None = None,
    ) -> ImagePipelineOutput | tuple:
        """Generate `batch_size` images.

        Args:
            batch_size: how many images.
            generator: a torch.Generator (or one per image) for reproducible noise; a CPU generator with a
                CUDA UNet draws on the CPU and moves the noise, so a seed gives the same images on any device.
            num_inference_steps: denoising steps (the scheduler spaces them over its T training steps).
            output_type: "pil" (list of PIL images), "np" (NHWC numpy in [0, 1]) or "pt" (NCHW tensor in
                [0, 1]).
            return_dict: return an `ImagePipelineOutput` rather than a tuple.
            eta: DDIM's noise scale (0: deterministic DDIM, 1: DDPM's variance); only with a scheduler whose
                step takes `eta` (DDIMScheduler).
            progress: show the tqdm bar (None: as `set_progress_bar_config` says; shown by default).

        Returns:
            `ImagePipelineOutput(images=...)`, or `(images,)`.
        """
        check_call(batch_size, output_type, generator)
        step_takes_eta = "eta" in inspect.signature(self.scheduler.step).parameters
        if eta != 0 and not step_takes_eta:
            raise ValueError(
                f"eta={eta!r} needs a DDIMScheduler; {type(self.scheduler).__name__} has no eta "
                "(DDPM's ancestral step already uses the full posterior variance)"
            )
        eta = eta if step_takes_eta else None
        image = denoise(self, batch_size, generator, num_inference_steps, output_type, eta, progress=progress)
        return ImagePipelineOutput(images=image) if return_dict else (image,)


def with_sampler(pipeline: DiffusionPipeline, sampler: str) -> DDPMPipeline:
    """This pipeline with sampler X: a DDPMPipeline on the same UNet whose scheduler is a fresh `sampler` (a
    name of minidiff/schedulers/samplers.py) built from the pipeline's scheduler config (the same noise
    schedule), so sampling never touches the original's scheduler (training keeps using it).

    Args:
        pipeline: any pipeline with `unet` and `scheduler`.
        sampler: the sampler's name, e.g. "dpmsolver++".

    Returns:
        The new DDPMPipeline (it shares the UNet).
    """
    return DDPMPipeline(unet=pipeline.unet, scheduler=scheduler_for(sampler, pipeline.scheduler.config))
