"""On-disk artifact formats (one reader/writer pair per artifact, each with ``format_version``).

See ``docs/formats/`` for the field-by-field reference. ``io`` sits below every stage, so a format
whose reader rebuilds a stage's model lives with that stage instead: region-encoder checkpoints in
:mod:`mixmag.region.checkpoints`, MIL fold models in :mod:`mixmag.mil.artifacts`.
"""
