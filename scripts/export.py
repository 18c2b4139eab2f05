"""Export a checkpoint: [0, 1] float images in, calibrated softmax probabilities out.

    python scripts/export.py --ckpt runs/mnist/version_0                       # ONNX
    python scripts/export.py --ckpt runs/mnist/version_0 --format torchscript --out model.pt
"""

from softcal.apps.export import command

if __name__ == "__main__":
    command()
