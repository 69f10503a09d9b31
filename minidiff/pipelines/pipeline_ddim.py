"""DDIMPipeline: DDPMPipeline's loop with DDIM's deterministic step (Song et al. 2021), as diffusers' class.

    pipeline = DDIMPipeline(unet, scheduler)        # any scheduler's config becomes a DDIMScheduler
    images = pipeline(batch_size=4, generator=torch.Generator().manual_seed(0), num_inference_steps=50).images

x_t' = sqrt(alpha_bar_t') x_0_hat + sqrt(1 - alpha_bar_t' - sigma_t^2) eps_hat + sigma_t z   (eq. 12), with
sigma_t = eta * sqrt(DDPM's posterior variance) (eq. 16): eta = 0 is deterministic, eta = 1 is DDPM's noise.
"""

from __future__ import annotations

import torch

from minidiff.models.unet_2d import UNet2DModel
from minidiff.outputs import ImagePipelineOutput
from minidiff.pipelines.pipeline_ddpm import check_call, denoise
from minidiff.pipelines.pipeline_utils import DiffusionPipeline
from minidiff.schedulers.scheduling_ddim import DDIMScheduler
from minidiff.schedulers.scheduling_ddpm import DDPMScheduler


class DDIMPipeline(DiffusionPipeline):
    """A UNet and a DDIMScheduler; a DDPMScheduler passed in is rebuilt as DDIM from its config, as diffusers does
    (a DDPM checkpoint samples with DDIM in 50 steps instead of 1,000).

    Args:
        unet: the noise-predicting UNet.
        scheduler: a DDIMScheduler, or any scheduler whose config a DDIMScheduler is built from.
    """

    def __init__(self, unet: UNet2DModel, scheduler: DDIMScheduler | DDPMScheduler):
        super().__init__(unet, DDIMScheduler.from_config(scheduler.config))

    # Copied from diffusers.pipelines.ddim.pipeline_ddim.DDIMPipeline.__call__
    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        eta: float = 0.0,
        num_inference_steps: int = 50,
        use_clipped_model_output: bool | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Generate `batch_size` images with `num_inference_steps` DDIM steps.

        Args:
            batch_size: how many images.
            generator: a torch.Generator (or one per image) for reproducible noise.
            eta: the noise scale of eq. (16), in [0, 1] (0: deterministic DDIM, 1: DDPM's posterior variance).
            num_inference_steps: denoising steps, spaced over the scheduler's T training steps.
            use_clipped_model_output: re-derive eps from the clipped x_0 (`DDIMScheduler.step`); None means
                False.
            output_type: "pil" (list of PIL images), "np" (NHWC numpy in [0, 1]) or "pt" (NCHW tensor in [0, 1]).
            return_dict: return an `ImagePipelineOutput` rather than a tuple.

        Returns:
            `ImagePipelineOutput(images=...)`, or `(images,)`.
        """
        check_call(batch_size, output_type, generator)
        if isinstance(eta, bool) or not isinstance(eta, int | float) or not 0 <= eta <= 1:
            raise ValueError(f"eta={eta!r}; expected a number in [0, 1] (0: DDIM, 1: DDPM's variance)")
        clipped = bool(use_clipped_model_output)
        image = denoise(self, batch_size, generator, num_inference_steps, output_type, eta, clipped)
        return ImagePipelineOutput(images=image) if return_dict else (image,)
