"""StableDiffusionPipeline: text -> image by latent diffusion (Rombach et al. 2022) with classifier-free guidance
(Ho & Salimans 2022), in diffusers' names, numbers and folder layout.

    pipe = StableDiffusionPipeline.from_pretrained("sd-dreambooth-library/mr-potato-head", torch_dtype=torch.float16)
    image = pipe.to("cuda")("an oil painting of sks mr potato head", num_inference_steps=50, guidance_scale=5.5).images[0]

    c = tau(prompt), c_0 = tau(negative prompt or "")          CLIP text encoder: (B, 77, D) tokens
    z_T ~ N(0, I) * init_noise_sigma                           latents (B, 4, H/8, W/8)
    for t in timesteps:
        eps = eps_theta(z_t, t, c_0) + w (eps_theta(z_t, t, c) - eps_theta(z_t, t, c_0))     (guidance, w > 1)
        z_{t-1} = scheduler.step(eps, t, z_t)
    x = D(z_0 / scaling_factor)                                the VAE decoder; images in [-1, 1]

The text encoder and tokenizer are `transformers`' CLIP classes, as in diffusers; the UNet and the VAE are
minidiff's (minidiff/models/unet_2d_condition.py, autoencoder_kl.py); the scheduler any of minidiff's six.
No safety checker is run (said once when a folder names one). Files and devices: pipeline_utils.py.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from pathlib import Path

import torch

from minidiff.files import atomic_write_text, resolve_file, swap_in
from minidiff.models.autoencoder_kl import AutoencoderKL
from minidiff.models.unet_2d_condition import UNet2DConditionModel
from minidiff.outputs import StableDiffusionPipelineOutput
from minidiff.pipelines.pipeline_utils import MODEL_INDEX, OUTPUT_TYPES, DiffusionPipeline, numpy_to_pil
from minidiff.schedulers.samplers import SCHEDULER_CLASS_NAMES, scheduler_class_named
from minidiff.schedulers.scheduling_utils import randn_tensor

logger = logging.getLogger(__name__)
COMPONENTS = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")
TRANSFORMERS_CLASSES = ("CLIPTextModel", "CLIPTokenizer", "CLIPTokenizerFast")  # what SD folders name


def _class_of(index: dict, name: str, index_path: Path) -> str:
    entry = index.get(name)
    if not isinstance(entry, list) or len(entry) != 2 or not isinstance(entry[1], str):
        raise ValueError(f"{index_path}: component {name!r} is {entry!r}; expected [library, class name]")
    return entry[1]


def _load_transformers(path, name: str, class_name: str, torch_dtype: torch.dtype | None):
    """The CLIP text encoder or tokenizer through transformers, as diffusers loads them."""
    import transformers

    if class_name not in TRANSFORMERS_CLASSES or not hasattr(transformers, class_name):
        raise ValueError(
            f"{name} class {class_name!r} is not supported; expected one of {list(TRANSFORMERS_CLASSES)}"
        )
    cls = getattr(transformers, class_name)
    if name == "tokenizer":
        return cls.from_pretrained(path, subfolder=name)
    # cast after loading (the same rounding as loading in that dtype), the keyword differs across versions
    return cls.from_pretrained(path, subfolder=name).to(torch_dtype or torch.float32).eval()


class StableDiffusionPipeline(DiffusionPipeline):
    """Text-to-image with a VAE, a CLIP text encoder and tokenizer, a conditional UNet and a scheduler.

    Args:
        vae: the AutoencoderKL that maps latents to images.
        text_encoder: transformers' CLIPTextModel: prompt tokens -> c, (B, L, D).
        tokenizer: transformers' CLIPTokenizer.
        unet: the UNet2DConditionModel eps_theta(z_t, t, c).
        scheduler: any of minidiff's six schedulers (or diffusers' own).
        safety_checker: must be None: minidiff runs no safety checker.
        feature_extractor: must be None (it feeds the safety checker).
        requires_safety_checker: recorded in model_index.json, as diffusers does.
    """

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder,
        tokenizer,
        unet: UNet2DConditionModel,
        scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker: bool = False,
    ):
        if safety_checker is not None or feature_extractor is not None:
            raise ValueError(
                "minidiff's StableDiffusionPipeline runs no safety checker; expected safety_checker=None"
            )
        super().__init__(unet=unet, scheduler=scheduler)
        self.vae, self.text_encoder, self.tokenizer = vae, text_encoder, tokenizer
        self.requires_safety_checker = requires_safety_checker
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)  # f: 8 for Stable Diffusion

    @property
    def components(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in COMPONENTS}

    def to(self, device=None, dtype: torch.dtype | None = None) -> StableDiffusionPipeline:
        """Move the UNet, VAE and text encoder: `pipe.to("cuda")`, `pipe.to(torch.float16)`.

        Args:
            device: the device to move to, or a dtype.
            dtype: the dtype to cast the weights to.
        """
        if isinstance(device, torch.dtype):
            device, dtype = None, device if dtype is None else dtype
        for model in (self.unet, self.vae, self.text_encoder):
            model.to(device=device, dtype=dtype)
        return self

    # ---- 1. text -> c ------------------------------------------------------------------------------
    def _embed(self, texts: list[str], n: int) -> torch.Tensor:
        """tau(y): tokens padded to the tokenizer's length (77), the encoder's last hidden state, each row n x."""
        tokens = self.tokenizer(
            texts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        )  # fmt: skip
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = tokens.attention_mask.to(self.device)
        c = self.text_encoder(tokens.input_ids.to(self.device), attention_mask=mask)[0]  # (B, L, D)
        c = c.to(dtype=self.text_encoder.dtype, device=self.device)
        return c.repeat_interleave(n, dim=0)  # (B * n, L, D): each prompt's rows next to each other

    def _encode_prompt(
        self, prompt: list[str], negative_prompt: list[str] | None, n: int, guidance: bool
    ) -> torch.Tensor:
        """c for the prompts, and [c_0; c] (unconditional first, as diffusers) when guidance is on."""
        c = self._embed(prompt, n)
        if not guidance:
            return c
        c_0 = self._embed(negative_prompt or [""] * len(prompt), n)
        return torch.cat([c_0, c])  # (2 B n, L, D)

    # ---- 2. the call ---------------------------------------------------------------------------------
    def _check_call(self, prompt, negative_prompt, height, width, n, output_type) -> tuple[list, list | None]:
        if isinstance(prompt, str):
            prompt = [prompt]
        if not isinstance(prompt, list) or not prompt or not all(isinstance(p, str) for p in prompt):
            raise ValueError(f"prompt {prompt!r}; expected a string or a non-empty list of strings")
        if isinstance(negative_prompt, str):
            negative_prompt = [negative_prompt] * len(prompt)
        if negative_prompt is not None and (
            not isinstance(negative_prompt, list) or len(negative_prompt) != len(prompt)
        ):
            raise ValueError(
                f"negative_prompt {negative_prompt!r}; expected a string or {len(prompt)} strings"
            )
        for name, size in (("height", height), ("width", width)):
            if isinstance(size, bool) or not isinstance(size, int) or size <= 0 or size % 8 != 0:
                raise ValueError(
                    f"{name}={size!r}; expected a positive multiple of 8 (the VAE's downsampling)"
                )
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"num_images_per_prompt={n!r}; expected a positive int")
        if output_type not in (*OUTPUT_TYPES, "latent"):
            raise ValueError(
                f"output_type {output_type!r} is not supported; expected one of {[*OUTPUT_TYPES, 'latent']}"
            )
        return prompt, negative_prompt

    def _initial_latents(self, shape, dtype, generator, latents: torch.Tensor | None) -> torch.Tensor:
        """z_T ~ N(0, I) (or the caller's), times the scheduler's init_noise_sigma."""
        if isinstance(generator, list) and len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for {shape[0]} images; expected one per image")
        if latents is None:
            # randn is not seeded alike on mps: drawn on the CPU there, as diffusers' pipelines do
            draw_on = torch.device("cpu") if self.device.type == "mps" else self.device
            latents = randn_tensor(shape, generator, draw_on, dtype).to(self.device)
        elif tuple(latents.shape) != tuple(shape):
            raise ValueError(f"latents of shape {tuple(latents.shape)}; expected {tuple(shape)}")
        return latents.to(self.device) * self.scheduler.init_noise_sigma

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        progress: bool | None = None,
    ) -> StableDiffusionPipelineOutput | tuple:
        """Generate images for `prompt`.

        Args:
            prompt: a prompt or a list of prompts.
            height: image height in pixels, a multiple of 8 (default: the UNet's sample_size x 8).
            width: image width in pixels, a multiple of 8 (default: the UNet's sample_size x 8).
            num_inference_steps: denoising steps.
            guidance_scale: w of classifier-free guidance; guidance is off for w <= 1.
            negative_prompt: what to steer away from (default: the empty prompt), one or one per prompt.
            num_images_per_prompt: images per prompt.
            eta: DDIM's noise scale, for a scheduler whose step takes it.
            generator: a torch.Generator (or one per image) for the initial latents and any step noise.
            latents: z_T to start from, (B * num_images_per_prompt, 4, height / 8, width / 8).
            output_type: "pil", "np" (NHWC in [0, 1]), "pt" (NCHW in [0, 1]) or "latent" (z_0).
            return_dict: return a `StableDiffusionPipelineOutput` (else `(images, None)`).
            progress: show the tqdm bar (None: as `set_progress_bar_config` says).

        Returns:
            `StableDiffusionPipelineOutput(images=..., nsfw_content_detected=None)`.
        """
        size = self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        height = height or size[0] * self.vae_scale_factor
        width = width or size[1] * self.vae_scale_factor
        n = num_images_per_prompt
        prompt, negative_prompt = self._check_call(prompt, negative_prompt, height, width, n, output_type)
        guidance = guidance_scale > 1.0  # w = 1 is the conditional model alone: one UNet pass, no c_0
        # 1. c (and c_0), from the CLIP text encoder
        context = self._encode_prompt(prompt, negative_prompt, n, guidance)
        # 2. the timesteps, and z_T in the text encoder's dtype (as diffusers)
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        f = self.vae_scale_factor
        shape = (len(prompt) * n, self.unet.config.in_channels, height // f, width // f)
        z = self._initial_latents(shape, context.dtype, generator, latents)
        takes = inspect.signature(self.scheduler.step).parameters
        step_kwargs = {k: v for k, v in (("eta", eta), ("generator", generator)) if k in takes}
        disable = None if progress is None else not progress
        for t in self.progress_bar(self.scheduler.timesteps, disable=disable):
            # 3. eps_theta on [z_t; z_t] with [c_0; c] in one batch, scaled as the sampler needs
            z_in = self.scheduler.scale_model_input(torch.cat([z] * 2) if guidance else z, t)
            eps = self.unet(z_in, t, encoder_hidden_states=context).sample
            if guidance:  # Ho & Salimans 2022, eq. 6: eps_0 + w (eps_c - eps_0)
                eps_uncond, eps_text = eps.chunk(2)
                eps = eps_uncond + guidance_scale * (eps_text - eps_uncond)
            # 4. z_t -> z_{t-1}
            z = self.scheduler.step(eps, t, z, **step_kwargs).prev_sample
        images = z if output_type == "latent" else self._to_images(z, output_type)
        return StableDiffusionPipelineOutput(images=images) if return_dict else (images, None)

    def _to_images(self, z: torch.Tensor, output_type: str):
        # 5. x = D(z_0 / scaling_factor), [-1, 1] -> [0, 1]
        x = self.vae.decode(z / self.vae.config.scaling_factor).sample
        x = (x * 0.5 + 0.5).clamp(0, 1)
        if output_type == "pt":
            return x
        x = x.cpu().permute(0, 2, 3, 1).float().numpy()  # (B, H, W, 3)
        return numpy_to_pil(x) if output_type == "pil" else x

    # ---- 3. folders -------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, torch_dtype: torch.dtype | None = None
    ) -> StableDiffusionPipeline:
        """Load a diffusers Stable Diffusion folder (or hub id): model_index.json, unet/, vae/, text_encoder/,
        tokenizer/, scheduler/. A safety_checker/ it names is not loaded (said once).

        Args:
            pretrained_model_name_or_path: a local folder, or a Hugging Face Hub repository id.
            torch_dtype: the dtype of the UNet's, VAE's and text encoder's weights (default float32).
        """
        path = pretrained_model_name_or_path
        index_path = resolve_file(path, MODEL_INDEX)
        index = json.loads(index_path.read_text(encoding="utf-8"))
        if index.get("_class_name") != "StableDiffusionPipeline":
            raise ValueError(
                f"{index_path} describes a {index.get('_class_name')!r}; expected 'StableDiffusionPipeline'"
            )
        classes = {name: _class_of(index, name, index_path) for name in COMPONENTS}
        expected = {"unet": "UNet2DConditionModel", "vae": "AutoencoderKL"}
        for name, class_name in expected.items():
            if classes[name] != class_name:
                raise ValueError(
                    f"{index_path}: {name} class {classes[name]!r} is not supported; expected {class_name!r}"
                )
        if classes["scheduler"] not in SCHEDULER_CLASS_NAMES:
            raise ValueError(
                f"{index_path}: scheduler class {classes['scheduler']!r} is not supported; "
                f"expected one of {list(SCHEDULER_CLASS_NAMES)}"
            )
        if (index.get("safety_checker") or [None])[0] is not None:
            logger.warning("%s names a safety_checker: minidiff runs none and does not load it", path)
        return cls(
            vae=AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=torch_dtype),
            text_encoder=_load_transformers(path, "text_encoder", classes["text_encoder"], torch_dtype),
            tokenizer=_load_transformers(path, "tokenizer", classes["tokenizer"], None),
            unet=UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=torch_dtype),
            scheduler=scheduler_class_named(classes["scheduler"]).from_pretrained(
                path, subfolder="scheduler"
            ),
            requires_safety_checker=bool(index.get("requires_safety_checker", False)),
        )

    def model_index(self) -> dict[str, object]:
        """What model_index.json holds, as diffusers writes it for a pipeline without safety checker."""
        return {
            **super().model_index(),  # _class_name, _diffusers_version, scheduler, unet
            "feature_extractor": [None, None],
            "requires_safety_checker": self.requires_safety_checker,
            "safety_checker": [None, None],
            "text_encoder": ["transformers", type(self.text_encoder).__name__],
            "tokenizer": ["transformers", type(self.tokenizer).__name__],
            "vae": ["diffusers", type(self.vae).__name__],
        }

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write model_index.json and the five component folders, all or nothing (see DiffusionPipeline's).

        Args:
            save_directory: the pipeline folder (created if missing).
        """
        index = json.dumps(self.model_index(), indent=2, sort_keys=True) + "\n"

        def write(folder: Path) -> None:
            for name in COMPONENTS:
                getattr(self, name).save_pretrained(folder / name)
            atomic_write_text(folder / MODEL_INDEX, index)

        return swap_in(save_directory, [*COMPONENTS, MODEL_INDEX], write)
