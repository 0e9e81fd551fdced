"""Reproducible measurements, each printed beside the baseline it is compared with."""
