"""Synthetic slides and cohorts (test data, the demo data and a multi-scale benchmark).

:func:`make_synthetic_cohort` writes pyramidal TIFF slides whose label needs 5x *and* 20x
(see docs/concepts/synthetic-cohort.md); :func:`write_pyramidal_tiff` writes any RGB array as a
tiled pyramidal TIFF with resolution tags. Two generators of feature files with a known answer
(no pixels) live here too: :mod:`mixmag.synth.mil_features` (MIL cohorts: a rare instance or a
cross-scale conjunction) and :mod:`mixmag.synth.region_features` (pretraining cohorts).
"""

from __future__ import annotations

from mixmag.synth.cohort import CohortInfo, SlideRecord, make_synthetic_cohort
from mixmag.synth.tiff import write_plain_image, write_pyramidal_tiff

__all__ = ["CohortInfo", "SlideRecord", "make_synthetic_cohort", "write_plain_image", "write_pyramidal_tiff"]
