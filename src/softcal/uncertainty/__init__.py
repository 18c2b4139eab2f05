"""Uncertainty in use: abstaining on the least confident predictions, spotting unfamiliar inputs."""
