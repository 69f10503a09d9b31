"""DDPMPipeline: the plain denoising loop, nothing hidden, in diffusers' names and file layout.

    pipeline = DDPMPipeline(unet, scheduler)                   # or DDPMPipeline.from_pretrained("out/pipeline")
    images = pipeline(batch_size=16, generator=torch.Generator().manual_seed(0)).images   # 16 PIL images

Sampling (Ho et al. 2020, Algorithm 2):
    x_T ~ N(0, I)
    for t = T, ..., 1:   x_{t-1} = scheduler.step(epsilon_theta(x_t, t), t, x_t).prev_sample
The scheduler decides what one step is: DDPM's ancestral step (eq. 6-7) or DDIM's (Song et al. 2021, eq. 12,
with `eta`), and over which timesteps (`num_inference_steps` of the T training steps).

Files (diffusers' layout, so either library loads the other's):
    model_index.json      {"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"], "scheduler": [...]}
    unet/                 config.json + diffusion_pytorch_model.safetensors
    scheduler/            scheduler_config.json
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from minidiff.configuration import DIFFUSERS_FORMAT_VERSION
from minidiff.files import atomic_write_text, resolve_file, swap_in
from minidiff.outputs import ImagePipelineOutput
from minidiff.scheduling_ddim import DDIMScheduler
from minidiff.scheduling_ddpm import DDPMScheduler
from minidiff.scheduling_utils import randn_tensor
from minidiff.unet_2d import UNet2DModel
from minidiff.viz import numpy_to_pil

OUTPUT_TYPES = ("pil", "np", "pt")
SCHEDULER_CLASSES = {"DDPMScheduler": DDPMScheduler, "DDIMScheduler": DDIMScheduler}
PIPELINE_CLASSES = ("DDPMPipeline", "DDIMPipeline")  # same two components, same loop
MODEL_INDEX = "model_index.json"


class DDPMPipeline:
    """A UNet that predicts the noise and a scheduler that turns the prediction into one reverse step."""

    def __init__(self, unet: UNet2DModel, scheduler: DDPMScheduler | DDIMScheduler):
        self.unet = unet
        self.scheduler = scheduler
        self._progress_bar_config: dict[str, object] = {}

    # ---- where and how ---------------------------------------------------------------------------
    @property
    def components(self) -> dict[str, object]:
        return {"unet": self.unet, "scheduler": self.scheduler}

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def to(
        self, device: str | torch.device | torch.dtype | None = None, dtype: torch.dtype | None = None
    ) -> DDPMPipeline:
        """Move the UNet: `pipe.to("cuda")`, `pipe.to(torch.float16)`, `pipe.to("cuda", torch.bfloat16)`.
        (The scheduler holds no weights; its tables follow the sample at each step.)"""
        if isinstance(device, torch.dtype):
            device, dtype = None, device if dtype is None else dtype
        self.unet.to(device=device, dtype=dtype)
        return self

    def set_progress_bar_config(
        self, disable: bool | None = None, desc: str | None = None, leave: bool | None = None
    ) -> None:
        """Options for the tqdm bar over the denoising steps, as diffusers' method of the same name."""
        new = {"disable": disable, "desc": desc, "leave": leave}
        self._progress_bar_config.update({k: v for k, v in new.items() if v is not None})

    def progress_bar(self, iterable, disable: bool | None = None):
        config = dict(self._progress_bar_config)
        if disable is not None:
            config["disable"] = disable
        return tqdm(iterable, **config)

    numpy_to_pil = staticmethod(numpy_to_pil)

    # ---- sampling --------------------------------------------------------------------------------
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

        generator: a torch.Generator (or one per image) for reproducible noise; a CPU generator with a CUDA
            UNet draws on the CPU and moves the noise, so a seed gives the same images on any device.
        num_inference_steps: denoising steps (the scheduler spaces them over its T training steps).
        output_type: "pil" (list of PIL images), "np" (NHWC numpy in [0, 1]) or "pt" (NCHW tensor in [0, 1]).
        eta: DDIM's noise scale (0: deterministic DDIM, 1: DDPM's variance); only with a DDIMScheduler.
        progress: show the tqdm bar (None: as `set_progress_bar_config` says; shown by default).
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}; expected a positive int")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(
                f"output_type {output_type!r} is not supported; expected one of {list(OUTPUT_TYPES)}"
            )
        step_takes_eta = "eta" in inspect.signature(self.scheduler.step).parameters
        if eta != 0 and not step_takes_eta:
            raise ValueError(
                f"eta={eta!r} needs a DDIMScheduler; {type(self.scheduler).__name__} has no eta "
                "(DDPM's ancestral step already uses the full posterior variance)"
            )
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(
                f"got {len(generator)} generators for batch_size={batch_size}; expected one per image"
            )

        # 1. x_T ~ N(0, I) in the UNet's dtype, drawn before anything else (same seed -> same numbers)
        config = self.unet.config
        size = config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        shape = (batch_size, config.in_channels, *size)  # (B, C, H, W)
        device = self.device
        if device.type == "mps":  # as diffusers: randn is not reproducible on mps, draw on the CPU
            image = randn_tensor(shape, generator, torch.device("cpu"), self.unet.dtype).to(device)
        else:
            image = randn_tensor(shape, generator, device, self.unet.dtype)

        # 2. the timesteps t_1 > t_2 > ... > t_n the sampler visits
        self.scheduler.set_timesteps(num_inference_steps)

        for t in self.progress_bar(
            self.scheduler.timesteps, disable=None if progress is None else not progress
        ):
            # 3. epsilon_theta(x_t, t): the UNet's estimate of the noise in x_t
            model_output = self.unet(image, t).sample
            # 4. x_t -> x_{t-1}: the scheduler's reverse step (may add sigma_t z from `generator`)
            if step_takes_eta:
                image = self.scheduler.step(model_output, t, image, eta=eta, generator=generator).prev_sample
            else:
                image = self.scheduler.step(model_output, t, image, generator=generator).prev_sample

        # 5. [-1, 1] -> [0, 1]
        image = (image / 2 + 0.5).clamp(0, 1)
        if output_type != "pt":
            if image.dtype == torch.bfloat16:  # numpy has no bfloat16 (diffusers fails here); float16 stays
                image = image.float()
            image = image.cpu().permute(0, 2, 3, 1).numpy()  # (B, H, W, C)
            if output_type == "pil":
                image = numpy_to_pil(image)
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)

    # ---- files -----------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, torch_dtype: torch.dtype | None = None
    ) -> DDPMPipeline:
        """Load a pipeline folder (or hub id) saved by minidiff or by diffusers' DDPMPipeline / DDIMPipeline."""
        index_path = resolve_file(pretrained_model_name_or_path, MODEL_INDEX)
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{index_path} is not valid JSON: {err}") from err
        if not isinstance(index, dict):
            raise ValueError(f"{index_path} must hold a JSON object, got {type(index).__name__}")
        if index.get("_class_name") not in PIPELINE_CLASSES:
            raise ValueError(
                f"{index_path} describes a {index.get('_class_name')!r}; expected one of {list(PIPELINE_CLASSES)}"
            )
        components = {k: v for k, v in index.items() if not k.startswith("_")}
        if sorted(components) != ["scheduler", "unet"]:
            raise ValueError(
                f"{index_path} lists components {sorted(components)}; expected ['scheduler', 'unet']"
            )
        unet_class = components["unet"][1] if isinstance(components["unet"], list) else components["unet"]
        if unet_class != "UNet2DModel":
            raise ValueError(
                f"{index_path}: unet class {unet_class!r} is not supported; expected 'UNet2DModel'"
            )
        scheduler_class = components["scheduler"]
        scheduler_class = scheduler_class[1] if isinstance(scheduler_class, list) else scheduler_class
        if scheduler_class not in SCHEDULER_CLASSES:
            raise ValueError(
                f"{index_path}: scheduler class {scheduler_class!r} is not supported; "
                f"expected one of {list(SCHEDULER_CLASSES)}"
            )
        unet = UNet2DModel.from_pretrained(
            pretrained_model_name_or_path, subfolder="unet", torch_dtype=torch_dtype
        )
        scheduler = SCHEDULER_CLASSES[scheduler_class].from_pretrained(
            pretrained_model_name_or_path, subfolder="scheduler"
        )
        return cls(unet=unet, scheduler=scheduler)

    def model_index(self) -> dict[str, object]:
        """What model_index.json holds: diffusers' library and class names of each component."""
        scheduler_class = type(self.scheduler).__name__
        if scheduler_class not in SCHEDULER_CLASSES:
            raise ValueError(f"cannot save a {scheduler_class}; expected one of {list(SCHEDULER_CLASSES)}")
        return {
            "_class_name": "DDPMPipeline",
            "_diffusers_version": DIFFUSERS_FORMAT_VERSION,
            "scheduler": ["diffusers", scheduler_class],
            "unet": ["diffusers", type(self.unet).__name__],
        }

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write model_index.json, unet/ and scheduler/ into `save_directory`, never leaving it half-written.

        Everything is first written into a temporary sibling folder. Only when that succeeded are the new
        unet/, scheduler/ and (last) model_index.json renamed into place; the old ones are kept aside until
        all three renames succeeded, and put back if one fails. Other files in the folder are left alone,
        as diffusers leaves them. A failure while writing (disk full, a bad component) leaves a previously
        saved pipeline untouched.
        """
        index = json.dumps(self.model_index(), indent=2, sort_keys=True) + "\n"

        def write(folder: Path) -> None:
            self.unet.save_pretrained(folder / "unet")
            self.scheduler.save_pretrained(folder / "scheduler")
            atomic_write_text(folder / MODEL_INDEX, index)

        return swap_in(save_directory, ["unet", "scheduler", MODEL_INDEX], write)
