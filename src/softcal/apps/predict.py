"""Predict classes of image files with a trained checkpoint, calibrated probabilities included.

A checkpoint is turned back into a model without touching its training data: the net comes
from the run's ``config.yaml`` (its ``model.net`` entry), every other model setting from the
checkpoint's hyperparameters, and the preprocessing from the config's datamodule class - the
very ``preprocess`` that training used. Files are decoded like an image-folder dataset
(converted to the model's channels, resized to its size) and the fitted temperature is applied.

    python scripts/predict.py --ckpt runs/mnist/version_0 digit.png more_digits/ --top-k 3
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from softcal.errors import CheckpointError, DataError, SoftcalError
from softcal.data.formats import IMAGE_SUFFIXES, decode_images
from softcal.runs.files import (
    check_checkpoint_fits,
    load_weights,
    open_run_checkpoint,
)

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

    from softcal.data import ClassificationDataModule
    from softcal.model.module import Classifier, NetFactory

# Lightning (behind softcal.data and softcal.model.module) is imported only once a checkpoint has
# passed its checks: a wrong path or a broken file is reported in a second or two.

#: Channel spread above which an image counts as colour; JPEG leaves grey images +-2 apart.
COLOUR_TOLERANCE = 8


@dataclass
class InferenceModel:
    """A trained Classifier in eval mode with the datamodule whose preprocessing it expects."""

    model: Classifier
    datamodule: ClassificationDataModule
    checkpoint: Path
    run_dir: Path

    @property
    def in_channels(self) -> int:
        return int(self.model.hparams.in_channels)

    @property
    def image_size(self) -> tuple[int, int]:
        size = int(self.model.hparams.image_size)
        return size, size

    @property
    def class_names(self) -> list[str]:
        names = self.model.hparams.class_names
        return [str(n) for n in names] if names else [str(i) for i in range(self.num_classes)]

    @property
    def num_classes(self) -> int:
        return int(self.model.hparams.num_classes)

    @property
    def temperature(self) -> float:
        return float(self.model.temperature)


# ----------------------------------------------------------------------------- loading


def read_run_config(config: Path) -> tuple[NetFactory, ClassificationDataModule]:
    """The net factory and an (unloaded) datamodule from a run's ``config.yaml``.

    Only the ``model.net`` and ``data`` entries are read, with the same types the training CLI
    declares; the CLI itself would also list the data's classes, which for an image folder
    means the folder must exist - prediction must work without the training data.
    """
    import yaml
    from jsonargparse import ArgumentParser

    from softcal.data import ClassificationDataModule
    from softcal.model.module import NetFactory

    try:
        saved = yaml.safe_load(config.read_text())
        entries = {"net": saved["model"]["net"], "data": saved["data"]}
    except (OSError, yaml.YAMLError, KeyError, TypeError) as err:
        raise CheckpointError(
            f"{config} is not a readable run config with model.net and data entries ({err})"
        ) from err
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--net", type=NetFactory, required=True)
    parser.add_subclass_arguments(ClassificationDataModule, "data", required=True)
    try:
        built = parser.instantiate(parser.parse_object(entries))
    except SoftcalError:
        raise
    except Exception as err:  # jsonargparse reports bad class paths and values many ways
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{config} cannot be used to rebuild the model ({reason})") from err
    return built.net, built.data


def load_for_inference(path: str | Path) -> InferenceModel:
    """A run directory's best checkpoint, or a .ckpt beside its run's config, ready to predict."""
    checkpoint, ckpt, hparams, run_dir = open_run_checkpoint(path)
    net, datamodule = read_run_config(run_dir / "config.yaml")
    # The classes are the checkpoint's own; only the preprocessing must fit its input shape.
    check_checkpoint_fits(checkpoint, hparams, datamodule, classes=False)
    from softcal.model.module import Classifier  # loaded by now (read_run_config needed it)

    accepted = inspect.signature(Classifier.__init__).parameters
    kwargs = {k: v for k, v in hparams.items() if k in accepted and k != "net"}
    model = Classifier(net=net, **kwargs)
    load_weights(model, ckpt["state_dict"], checkpoint)
    return InferenceModel(model.eval(), datamodule, checkpoint, run_dir)


# ----------------------------------------------------------------------------- images


def list_image_files(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given, and the image files under each directory (recursively, sorted)."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*")
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)  # fmt: skip
            if not found:
                raise DataError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {path}")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"{path} not found; pass image files or folders of images")
    if not files:
        raise DataError("no images given; pass image files or folders of images")
    return files


def is_colour(img: PILImage) -> bool:
    """Whether an open image has colour content (an RGB file of grey pixels does not)."""
    if img.mode in ("1", "L", "LA", "I", "I;16", "F"):
        return False
    rgb = np.asarray(img.convert("RGB"), dtype=np.int16)
    spread = rgb.max(axis=2) - rgb.min(axis=2)
    return bool(spread.max() > COLOUR_TOLERANCE)


def warn_if_colour(path: Path, img: PILImage) -> None:
    if is_colour(img):
        print(f"warning: {path} is a colour image; converting it to grayscale for this"
              " 1-channel model", file=sys.stderr)  # fmt: skip


def read_images(files: Sequence[Path], channels: int, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (N, C, H, W) as an image-folder dataset would decode them, so the model sees
    what training saw; colour images given to a grayscale model are converted with a warning.
    The colour check looks at the image decode_images has open: each file is read once."""
    check = warn_if_colour if channels == 1 else None
    images, _ = decode_images([(path, 0) for path in files], channels, size, check=check)
    return images


# ----------------------------------------------------------------------------- predicting


@torch.no_grad()
def predict_probabilities(
    inference: InferenceModel, images: torch.Tensor, batch_size: int = 256
) -> torch.Tensor:
    """softmax(logits / T) for uint8 images, preprocessed exactly as in training."""
    out = []
    for chunk in images.split(batch_size):
        x = inference.datamodule.preprocess(chunk, train=False)
        out.append(inference.model.probabilities(inference.model(x), calibrated=True))
    return torch.cat(out) if out else torch.zeros(0, inference.num_classes)


def top_k(probabilities: torch.Tensor, names: Sequence[str], k: int) -> list[list[dict[str, Any]]]:
    """Per image, the k most probable classes as {class, index, probability}, best first."""
    values, indices = probabilities.topk(min(k, probabilities.shape[1]), dim=1)
    return [
        [{"class": names[i], "index": int(i), "probability": float(p)}
         for p, i in zip(row_p.tolist(), row_i.tolist(), strict=True)]
        for row_p, row_i in zip(values, indices, strict=True)
    ]  # fmt: skip


def format_predictions(files: Sequence[Path], ranked: Sequence[list[dict[str, Any]]]) -> str:
    """One line per image: the file, then each class with its probability."""
    width = max(len(str(f)) for f in files)
    lines = []
    for path, row in zip(files, ranked, strict=True):
        cells = "   ".join(f"{c['class']} {100 * c['probability']:6.2f}%" for c in row)
        lines.append(f"{str(path):<{width}}   {cells}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="predict.py",
        description="Top-k classes with calibrated probabilities (the run's fitted temperature"
        " applied) for image files, preprocessed as in training.",
    )
    parser.add_argument("--ckpt", required=True, metavar="CKPT_OR_RUN_DIR",
                        help="a .ckpt inside a run directory, or the run directory (best)")
    parser.add_argument("files", nargs="+", metavar="FILE_OR_DIR",
                        help="image files, or folders searched recursively for images")
    parser.add_argument("--top-k", type=int, default=3, help="classes shown per image")
    parser.add_argument("--json", action="store_true",
                        help="print JSON with every class probability instead of a table")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error("--top-k must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    inference = load_for_inference(args.ckpt)
    files = list_image_files(args.files)
    images = read_images(files, inference.in_channels, inference.image_size)
    probabilities = predict_probabilities(inference, images)
    ranked = top_k(probabilities, inference.class_names, args.top_k)
    if inference.temperature == 1.0:
        print(f"warning: {inference.checkpoint.name} has no fitted temperature (T = 1); the"
              " probabilities are uncalibrated. The run's best checkpoint carries it.",
              file=sys.stderr)  # fmt: skip
    report = {
        "checkpoint": str(inference.checkpoint.resolve()),
        "temperature": inference.temperature,
        "classes": inference.class_names,
        "predictions": [
            {"file": str(path), "top_k": row, "probabilities": probs}
            for path, row, probs in zip(files, ranked, probabilities.tolist(), strict=True)
        ],
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"checkpoint {inference.checkpoint}  (T = {inference.temperature:.3f})")
        print(format_predictions(files, ranked))
    return report

