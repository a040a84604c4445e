"""Whole-slide image readers, exact resolution (mpp) resolution, and tissue detection."""
