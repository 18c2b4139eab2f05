"""Train, calibrate and test an image classifier.

    python scripts/train.py                                # MNIST, configs/mnist.yaml
    python scripts/train.py --config configs/cifar10.yaml  # another experiment
    python scripts/train.py --trainer.max_epochs 1         # override any value
    python scripts/train.py --ckpt_path last               # resume the newest run
"""

from softcal.apps.train import command

if __name__ == "__main__":
    command()
