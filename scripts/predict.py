"""Predict image files with a trained checkpoint: top-k classes, calibrated probabilities.

    python scripts/predict.py --ckpt runs/mnist/version_0 digit.png
    python scripts/predict.py --ckpt runs/mnist/version_0 my_digits/ --top-k 5 --json
"""

from softcal.apps.predict import command

if __name__ == "__main__":
    command()
