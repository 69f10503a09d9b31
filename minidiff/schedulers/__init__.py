"""The noise schedules and the six samplers, in diffusers' file names (`diffusers/schedulers/`).

    schedules.py                            beta schedules, zero-SNR rescaling, the forward process
                                            (add_noise, get_velocity), option checks
    scheduling_utils.py                     what the steps share: the schedule (vp_schedule), the model_output
                                            check, x0 / eps from the model output, clipping and thresholding,
                                            randn_tensor, timestep spacings, sigma helpers (the zero-SNR clamp,
                                            interpolated sigmas), what Euler and Euler ancestral share
    scheduling_ddpm.py                      DDPMScheduler (Ho et al. 2020)
    scheduling_ddim.py                      DDIMScheduler (Song et al. 2021)
    scheduling_pndm.py                      PNDMScheduler (Liu et al. 2022)
    scheduling_dpmsolver_multistep.py       DPMSolverMultistepScheduler (Lu et al. 2022)
    scheduling_euler_discrete.py            EulerDiscreteScheduler (Karras et al. 2022)
    scheduling_euler_ancestral_discrete.py  EulerAncestralDiscreteScheduler
    samplers.py                             the sampler table: name -> class, default steps, each purpose's
                                            sampler and steps (CHOICES), steps_for (imports no torch)

The public classes are imported from the package root: `from minidiff import DDPMScheduler`. Their keyword
lists are diffusers' own, repeated on purpose: each stands under a `# Copied from diffusers.X` mark, as
diffusers marks its copies, and tests/test_copies.py holds it equal to diffusers' signature.
"""
