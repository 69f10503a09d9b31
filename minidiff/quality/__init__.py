"""Sample quality you can measure: FID and KID (torchmetrics) on a digit network that ships with minidiff,
and on Inception-v3 with `pip install 'minidiff[fid]'`.
