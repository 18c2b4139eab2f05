"""softcal: train image classifiers with Lightning and measure how calibrated their softmax is."""

__version__ = "0.1.0"
