"""The classic diffusers tutorial ("train a DDPM on 32x32 butterflies") as plain functions.

It imports diffusers: it is what minidiff is checked against. `reference.tutorial` holds the
tutorial's own code, step by step. It runs from the repository checkout (the tests and the docs use
it) and is not installed; minidiff never imports it.
"""
