"""Relative depth estimation (RDE) of Lee & Kim's supplement (S-3 to S-5).

* :mod:`mlrb.relative.maps`: the 16 relative log-depth maps (Eq. S-2) with validity masks.
* :mod:`mlrb.relative.fusion`: ODE + RDE fusion (Eq. S-3, Fig. S-7) and the exact fit of
  its gammas; "RDE only" fusion of the maps alone.
The network is :class:`mlrb.models.relative.RelativeDepthNet`, its training
``mlrb train --task rde`` (:mod:`mlrb.train.rde`), the fusion command ``mlrb fuse``.
"""
from mlrb.relative.fusion import GAMMA_NAMES, fit_gammas, fuse
from mlrb.relative.maps import (RELATIVE_NAMES, RELATIVE_SCALES, RELATIVE_TYPES, disparity_maps, relative_maps,
                                relative_shapes)

__all__ = ["GAMMA_NAMES", "fit_gammas", "fuse", "RELATIVE_NAMES", "RELATIVE_SCALES", "RELATIVE_TYPES", "disparity_maps", "relative_maps",
           "relative_shapes"]
