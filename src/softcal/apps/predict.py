"""Predict classes of image files with a trained checkpoint, calibrated probabilities included.

The run is reopened with :func:`softcal.runs.load.load_run` - the net and preprocessing from its
``config.yaml``, the weights, classes and temperature from the checkpoint - without touching
its training data. Files are decoded like an image-folder dataset (converted to the model's
channels, resized to its size) and preprocessed by the datamodule's own ``preprocess``, so the
model sees what testing showed it. Probabilities are calibrated by the method the run stored
(``--calibrator`` at training: temperature scaling by default, or vector, matrix, histogram or
isotonic), the same ``Classifier.probabilities`` its calibrated test metrics used; without a
fitted temperature or calibrator they are the raw softmax, and predict says so. The line
above the table (and ``"calibration"`` in ``--json``) names what was applied.

``--conformal-alpha 0.05`` adds each image's split-conformal prediction set - the classes it
holds, with their probabilities - from the thresholds the run stored beside its calibration
(:mod:`softcal.calibration.conformal_thresholds`: lac, aps, classwise_lac at alpha 0.1, 0.05,
0.01, fitted on the calibrated validation probabilities). Only those deterministic methods are
stored, so an image gets the same set every time, alone or in a folder.

    python scripts/predict.py --ckpt runs/mnist/version_0 digit.png more_digits/ --top-k 3
    python scripts/predict.py --ckpt runs/mnist/version_0 scans/ --skip-bad
    python scripts/predict.py --ckpt runs/mnist/version_0 digit.png --conformal-alpha 0.05

An unreadable file ends the command in one line that names it; with ``--skip-bad`` it is
skipped with a one-line warning instead, and the others are predicted.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from softcal.apps.arguments import run_app_parser
from softcal.apps.predict_sets import check_conformal_options, set_lines, stored_predictor, with_sets
from softcal.data.image_files import find_images
from softcal.data.readers import IMAGE_SUFFIXES, decode_images
from softcal.errors import DataError, exit_on_user_error, first_line
from softcal.runs.load import LoadedRun, load_run

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

#: Channel spread above which an image counts as colour; JPEG leaves grey images +-2 apart.
COLOUR_TOLERANCE = 8


def images_to_predict(paths: Sequence[str | Path]) -> list[Path]:
    """The files to predict: files as given, and the image files under each directory
    (recursively, sorted)."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = find_images(path)
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


def read_images_or_skip(files: Sequence[Path], channels: int, size: tuple[int, int],
                        skip_bad: bool = False) -> tuple[torch.Tensor, list[Path]]:  # fmt: skip
    """(the images, the files they came from). An unreadable file ends the command in one line
    that names it; with ``skip_bad`` it is left out with a one-line warning, so one bad file
    does not cost the rest of a folder."""
    if not skip_bad:
        try:
            return read_images(files, channels, size), list(files)
        except DataError as err:
            raise DataError(f"{err}, or pass --skip-bad to skip unreadable files") from err
    kept, images = [], []
    for path in files:
        try:
            images.append(read_images([path], channels, size))
        except DataError as err:
            reason = first_line(err.__cause__) if err.__cause__ is not None else str(err)
            print(f"warning: skipping {path}: not a readable image ({reason})", file=sys.stderr)
            continue
        kept.append(path)
    if not kept:
        raise DataError(f"none of the {len(files)} files given is a readable image (see the warnings above)")
    return torch.cat(images), kept


# ----------------------------------------------------------------------------- predicting


@torch.no_grad()
def predict_probabilities(run: LoadedRun, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Calibrated probabilities for uint8 images, preprocessed exactly as in training, through
    the run's calibration (the raw softmax when none was fitted)."""
    out = []
    for chunk in images.split(batch_size):
        x = run.datamodule.preprocess(chunk, train=False)
        out.append(run.calibration.probabilities(run.model(x)))
    return torch.cat(out) if out else torch.zeros(0, run.num_classes)


def top_k(probabilities: torch.Tensor, names: Sequence[str], k: int) -> list[list[dict[str, Any]]]:
    """Per image, the k most probable classes as {class, index, probability}, best first."""
    values, indices = probabilities.topk(min(k, probabilities.shape[1]), dim=1)
    return [
        [{"class": names[i], "index": int(i), "probability": float(p)}
         for p, i in zip(row_p.tolist(), row_i.tolist(), strict=True)]
        for row_p, row_i in zip(values, indices, strict=True)
    ]  # fmt: skip


def format_predictions(files: Sequence[Path], ranked: Sequence[list[dict[str, Any]]],
                       below: Sequence[str] | None = None) -> str:  # fmt: skip
    """One line per image: the file, then each class with its probability; ``below``: a line
    to print under each image's (its prediction set)."""
    width = max(len(str(f)) for f in files)
    lines = []
    for i, (path, row) in enumerate(zip(files, ranked, strict=True)):
        cells = "   ".join(f"{c['class']} {100 * c['probability']:6.2f}%" for c in row)
        lines.append(f"{str(path):<{width}}   {cells}")
        if below is not None:
            lines.append(f"{'':<{width}}   {below[i]}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """(predict's own arguments, the overrides of the run's config)."""
    parser = run_app_parser(
        "predict.py",
        "Top-k classes with calibrated probabilities (the run's stored calibration applied:"
        " its fitted temperature, or the --calibrator it was trained with) for image files,"
        " preprocessed as in training.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE_OR_DIR",
                        help="image files, or folders searched recursively for images")
    parser.add_option("--top-k", type=int, default=3, metavar="K", help="classes shown per image")
    parser.add_argument("--json", action="store_true",
                        help="print JSON with every class probability instead of a table")
    parser.add_option("--skip-bad", action="store_true",
                      help="skip unreadable files with a warning each, instead of stopping at the first")
    parser.add_option("--conformal-alpha", metavar="ALPHA", default=None,
                      help="also print each image's conformal prediction set at this miscoverage"
                      " (one the run stored: 0.1, 0.05 or 0.01)")
    parser.add_option("--conformal-method", metavar="METHOD", default="lac",
                      help="the stored conformal method of --conformal-alpha: lac (default), aps"
                      " or classwise_lac")
    args, overrides = parser.parse_with_overrides(argv)
    if args.top_k < 1:
        parser.error("--top-k must be at least 1")
    check_conformal_options(args)  # before the checkpoint is read
    return args, overrides


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    run = load_run(args.ckpt, overrides)
    predictor = stored_predictor(run, args)  # None without --conformal-alpha; before any image is read
    found = images_to_predict(args.files)
    images, files = read_images_or_skip(found, run.in_channels, run.image_size, args.skip_bad)
    probabilities = predict_probabilities(run, images)
    ranked = top_k(probabilities, run.class_names, args.top_k)
    warning = run.uncalibrated_warning("the probabilities")
    if warning:
        print(warning, file=sys.stderr)
    report = {
        "checkpoint": str(run.checkpoint),
        "temperature": run.calibration.temperature,  # null: not fitted
        # method null: nothing fitted, the probabilities are the raw softmax
        "calibration": {"method": run.calibration.method, "description": run.calibration.describe()},
        "classes": run.class_names,
        "predictions": [
            {"file": str(path), "top_k": row, "probabilities": probs}
            for path, row, probs in zip(files, ranked, probabilities.tolist(), strict=True)
        ],
        "skipped": [str(path) for path in found if path not in set(files)],  # --skip-bad
    }
    sets = with_sets(report, predictor, probabilities, run.class_names)  # adds "prediction_set"s
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"checkpoint {run.checkpoint}  ({run.calibration.describe()})")
        print(format_predictions(files, ranked, set_lines(predictor, sets)))
    return report


command = exit_on_user_error(main)
