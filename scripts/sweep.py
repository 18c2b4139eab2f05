"""Sweep the training options of a config with Optuna: accuracy against calibration.

    python scripts/sweep.py --config mnist --space mnist --n-trials 30
    python scripts/sweep.py -c cifar10_quick --space cifar10_quick --n-trials 12
    python scripts/sweep.py --config mnist --space mnist --n-trials 15 \
        --storage /shared/sweeps/mnist.journal     # the same on every machine: one study
"""

from softcal.apps.sweep import command

if __name__ == "__main__":
    command()
