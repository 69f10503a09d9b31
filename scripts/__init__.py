"""The workbench: scripts that fit or calibrate what minidiff.quality measures with (the digit network's
weights, its in-distribution statistics, the calibration table). They run from the checkout
(`python -m scripts.NAME`) and are not installed; the package never imports them.

train_digit_net.py   train the digit network -> minidiff/quality/digit_net.safetensors
fit_digit_stats.py   refit its in-distribution statistics -> minidiff/quality/digit_stats.safetensors
calibration.py       the digit metrics on known image sets (held-out, blurred, noise) and a model's samplers
"""
