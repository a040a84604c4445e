"""Linked multi-magnification region tiling: region spec, grid over tissue, pixel extraction."""
