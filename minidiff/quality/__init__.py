"""Sample quality you can measure: FID and KID (torchmetrics) on a digit network that ships with minidiff,
and on Inception-v3 with `pip install 'minidiff[fid]'`.

    from minidiff.quality import evaluate, plot_quality_vs_steps, quality_vs_steps
    report = evaluate("out/demo/model", num_samples=500)     # = `minidiff eval` (DPM-Solver++, 20 steps)
    plot_quality_vs_steps(quality_vs_steps("out/demo/model"), "out/demo/quality_vs_steps.png")

Modules: digit_net (the CNN, its input conversion), train_digit_net (the script that made its weights),
features (networks -> features), in_distribution (is an image a digit at all?), metrics (FID, KID,
classifier scores), reference (cached real features), evaluate (sample + score; `digit_fid`, the reading a
training run takes), steps (quality against sampling steps), calibration (known image sets).
torchmetrics and matplotlib are imported inside the functions that use them.
"""

from minidiff.quality.evaluate import digit_fid, evaluate, format_report
from minidiff.quality.features import Features, extract_features, feature_network
from minidiff.quality.metrics import digit_scores, fid, kid
from minidiff.quality.reference import reference_features
from minidiff.quality.steps import plot_quality_vs_steps, quality_vs_steps

__all__ = [
    "Features",
    "digit_fid",
    "digit_scores",
    "evaluate",
    "extract_features",
    "feature_network",
    "fid",
    "format_report",
    "kid",
    "plot_quality_vs_steps",
    "quality_vs_steps",
    "reference_features",
]
