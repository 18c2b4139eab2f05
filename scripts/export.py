"""Export a checkpoint: [0, 1] float images in, calibrated softmax probabilities out.

    python scripts/export.py --ckpt runs/mnist/version_0                       # ONNX
    python scripts/export.py --ckpt runs/mnist/version_0 --format torchscript --out model.pt
"""

from softcal.errors import exit_on_user_error
from softcal.apps.export import main

if __name__ == "__main__":
    exit_on_user_error(main)()
