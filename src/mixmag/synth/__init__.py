"""Synthetic slides and cohorts (test data, the demo data and a multi-scale benchmark)."""
