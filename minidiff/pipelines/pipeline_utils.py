"""DiffusionPipeline: what DDPMPipeline and DDIMPipeline share, as diffusers' base class of the same name.

A pipeline is a UNet and a scheduler. This file holds everything but the sampling loop: moving the UNet
(`to`), the progress bar, the float -> PIL conversion, and the pipeline folder, in diffusers' layout so
either library loads the other's:

    model_index.json      {"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"], "scheduler": [...]}
    unet/                 config.json + diffusion_pytorch_model.safetensors
    scheduler/            scheduler_config.json
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from minidiff.configuration import DIFFUSERS_FORMAT_VERSION, FrozenConfig
from minidiff.files import atomic_write_text, resolve_file, swap_in
from minidiff.models.unet_2d import UNet2DModel
from minidiff.schedulers.samplers import SCHEDULER_CLASS_NAMES, scheduler_class_named
from minidiff.viz import numpy_to_pil

OUTPUT_TYPES = ("pil", "np", "pt")
# pipeline class -> its module (same two components: either folder loads in either); the schedulers a
# pipeline folder may name are those of minidiff/schedulers/samplers.py
PIPELINE_CLASSES = {
    "DDPMPipeline": "minidiff.pipelines.pipeline_ddpm",
    "DDIMPipeline": "minidiff.pipelines.pipeline_ddim",
    "StableDiffusionPipeline": "minidiff.pipelines.pipeline_stable_diffusion",  # five components: its own loader
}
MODEL_INDEX = "model_index.json"


class DiffusionPipeline:
    """A UNet that predicts the noise and a scheduler that turns the prediction into one reverse step.

    The base class of DDPMPipeline and DDIMPipeline: devices, the progress bar and the pipeline folder.

    Args:
        unet: the noise-predicting UNet.
        scheduler: the scheduler whose `step` the sampling loop calls.
    """

    def __init__(self, unet: UNet2DModel, scheduler):
        self.unet = unet
        self.scheduler = scheduler
        self._progress_bar_config: dict[str, object] = {}

    # ---- where and how ---------------------------------------------------------------------------
    @property
    def components(self) -> dict[str, object]:
        return {"unet": self.unet, "scheduler": self.scheduler}

    @property
    def config(self) -> FrozenConfig:
        """What model_index.json holds, as diffusers' `pipeline.config`."""
        return FrozenConfig(self.model_index())

    def __repr__(self) -> str:  # as diffusers: the class name and model_index.json
        return f"{type(self).__name__} {json.dumps(self.model_index(), indent=2, sort_keys=True)}\n"

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def to(
        self, device: str | torch.device | torch.dtype | None = None, dtype: torch.dtype | None = None
    ) -> DiffusionPipeline:
        """Move the UNet: `pipe.to("cuda")`, `pipe.to(torch.float16)`, `pipe.to("cuda", torch.bfloat16)`.

        The scheduler holds no weights; its tables follow the sample at each step.

        Args:
            device: the device to move to, or a dtype (then `dtype` must be None or is used instead).
            dtype: the dtype to cast the UNet's weights to.

        Returns:
            The pipeline itself.
        """
        if isinstance(device, torch.dtype):
            device, dtype = None, device if dtype is None else dtype
        self.unet.to(device=device, dtype=dtype)
        return self

    def set_progress_bar_config(self, **kwargs) -> None:
        """Set tqdm's keywords for the bar over the denoising steps.

        As diffusers' method of the same name, each call replaces the previous settings.

        Args:
            **kwargs: tqdm keywords: disable, desc, leave, mininterval, ...
        """
        self._progress_bar_config = kwargs

    def progress_bar(self, iterable, disable: bool | None = None):
        """Wrap `iterable` in a tqdm bar configured by `set_progress_bar_config`.

        Args:
            iterable: what to iterate over (the scheduler's timesteps).
            disable: hide the bar (True) or show it (False); None keeps the configured setting.

        Returns:
            The tqdm iterator.
        """
        config = dict(self._progress_bar_config)
        if disable is not None:
            config["disable"] = disable
        return tqdm(iterable, **config)

    numpy_to_pil = staticmethod(numpy_to_pil)

    # ---- files -----------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, torch_dtype: torch.dtype | None = None
    ) -> DiffusionPipeline:
        """Load a pipeline folder (or hub id) saved by minidiff or by diffusers' DDPMPipeline / DDIMPipeline.

        `DiffusionPipeline.from_pretrained` builds the class model_index.json names, as in diffusers.

        Args:
            pretrained_model_name_or_path: a local pipeline folder, or a Hugging Face Hub repository id.
            torch_dtype: the dtype to load the UNet's weights in (default: as saved).

        Returns:
            The pipeline, of the class model_index.json names when called on DiffusionPipeline.
        """
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
        named = getattr(importlib.import_module(PIPELINE_CLASSES[index["_class_name"]]), index["_class_name"])
        if (
            named.from_pretrained.__func__ is not DiffusionPipeline.from_pretrained.__func__
        ):  # Stable Diffusion
            if cls is not DiffusionPipeline:
                raise ValueError(
                    f"{index_path} describes a {index['_class_name']!r}; load it with "
                    f"{index['_class_name']}.from_pretrained or DiffusionPipeline.from_pretrained"
                )
            return named.from_pretrained(pretrained_model_name_or_path, torch_dtype=torch_dtype)
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
        if scheduler_class not in SCHEDULER_CLASS_NAMES:
            raise ValueError(
                f"{index_path}: scheduler class {scheduler_class!r} is not supported; "
                f"expected one of {list(SCHEDULER_CLASS_NAMES)}"
            )
        unet = UNet2DModel.from_pretrained(
            pretrained_model_name_or_path, subfolder="unet", torch_dtype=torch_dtype
        )
        scheduler = scheduler_class_named(scheduler_class).from_pretrained(
            pretrained_model_name_or_path, subfolder="scheduler"
        )
        return (named if cls is DiffusionPipeline else cls)(unet=unet, scheduler=scheduler)

    def model_index(self) -> dict[str, object]:
        """What model_index.json holds: diffusers' library and class names of each component."""
        scheduler_class = type(self.scheduler).__name__
        if scheduler_class not in SCHEDULER_CLASS_NAMES:
            raise ValueError(
                f"cannot save a {scheduler_class}; expected one of {list(SCHEDULER_CLASS_NAMES)}"
            )
        return {
            "_class_name": type(self).__name__,
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

        Args:
            save_directory: the pipeline folder (created if missing).

        Returns:
            The folder written.
        """
        index = json.dumps(self.model_index(), indent=2, sort_keys=True) + "\n"

        def write(folder: Path) -> None:
            self.unet.save_pretrained(folder / "unet")
            self.scheduler.save_pretrained(folder / "scheduler")
            atomic_write_text(folder / MODEL_INDEX, index)

        return swap_in(save_directory, ["unet", "scheduler", MODEL_INDEX], write)
