"""`diffusers.utils` names that notebooks import, at the same path: `from minidiff.utils import make_image_grid`."""

from minidiff.viz import make_image_grid

__all__ = ["make_image_grid"]
