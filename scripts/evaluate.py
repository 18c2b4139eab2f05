"""Evaluate checkpoints: accuracy and calibration, raw and temperature-scaled, plus figures.

    python scripts/evaluate.py runs/mnist/version_0                 # the run's best checkpoint
    python scripts/evaluate.py runs/mnist/version_0 --split val     # its validation split
    python scripts/evaluate.py runs/mnist/version_0/checkpoints/last.ckpt --out eval_last
    python scripts/evaluate.py runs/mnist/version_0 runs/mnist/version_1   # comparison table
    python scripts/evaluate.py RUN --data.root /other/data --trainer.accelerator cpu
"""

from softcal.apps.evaluate import command

if __name__ == "__main__":
    command()
