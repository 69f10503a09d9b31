"""Sample quality you can measure: FID and KID (torchmetrics) on a digit network that ships with minidiff,
and on Inception-v3 with `pip install 'minidiff[fid]'`.

    from minidiff.quality import evaluate, plot_quality_vs_steps, quality_vs_steps
    report = evaluate("out/demo/model", num_samples=500)     # = `minidiff eval` (DPM-Solver++, 20 steps)
    plot_quality_vs_steps(quality_vs_steps("out/demo/model"), "out/demo/quality_vs_steps.png")

Modules (this package only measures; the scripts that made the digit network's weights, fit its
statistics and calibrate the metrics are in the checkout's scripts/ folder):

    digit_net.py          the CNN, its input conversion, the digits' splits and accuracy
    features.py           networks -> features (digit network, Inception-v3)
    in_distribution.py    is an image a digit at all? (the statistics beside the weights)
    metrics.py            FID, KID, classifier scores
    reference.py          cached features of the real images
    evaluate.py           sample + score (`minidiff eval`; `digit_fid`, the reading a training run takes)
    steps.py              quality against sampling steps, and its figure

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
