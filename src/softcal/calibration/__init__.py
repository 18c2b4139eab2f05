"""Calibration: binned metrics, temperature scaling and the figures that show them."""
