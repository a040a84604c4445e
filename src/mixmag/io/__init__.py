"""On-disk artifact formats (one reader/writer pair per artifact, each with ``format_version``).

See ``docs/formats/`` for the field-by-field reference.
"""
