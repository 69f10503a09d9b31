"""The sampling pipelines, in diffusers' file names (`diffusers/pipelines/`).

    pipeline_utils.py    DiffusionPipeline: components, device moves, progress bar, pipeline folders
    pipeline_ddpm.py     DDPMPipeline, the plain sampling loop (denoise) and with_sampler (this pipeline
                         with another sampler on the same schedule)
    pipeline_ddim.py     DDIMPipeline
    pipeline_stable_diffusion.py   StableDiffusionPipeline: text -> latents -> image, classifier-free guidance

The public classes are imported from the package root: `from minidiff import DDPMPipeline`.
"""
