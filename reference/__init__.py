"""The classic diffusers tutorial ("train a DDPM on 32x32 butterflies") as plain functions.

This is the only package besides the tests that imports diffusers: it is what minidiff is checked
against. `reference.tutorial` holds the tutorial's own code, step by step; `reference.builders`
moves weights between diffusers' and minidiff's UNet2DModel.
"""
