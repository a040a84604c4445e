"""Whole-study orchestration: ``mixmag run`` (from a config) and ``mixmag demo`` (embedded data)."""
