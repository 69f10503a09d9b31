"""The sampling pipelines, in diffusers' file names (`diffusers/pipelines/`).

    pipeline_utils.py    DiffusionPipeline: components, device moves, progress bar, pipeline folders
    pipeline_ddpm.py     DDPMPipeline and the plain sampling loop (denoise)
    pipeline_ddim.py     DDIMPipeline
    pipeline_stable_diffusion.py   StableDiffusionPipeline: text -> latents -> image, classifier-free guidance

The public classes are imported from the package root: `from minidiff import DDPMPipeline`.
"""
