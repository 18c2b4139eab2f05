"""Export a trained checkpoint as one self-contained model: images in, probabilities out.

The exported graph is ``normalise -> net -> calibration -> softmax``: its input is a float
batch (N, C, H, W) with values in [0, 1] (an 8-bit image divided by 255), its output calibrated
probabilities (N, num_classes); the batch size is free. Whoever runs it needs neither this
package nor the dataset's mean and std.

The calibration is the run's stored one (``--calibration stored``, the default): ``/ T`` for
temperature scaling, or the stored vector scaling's, matrix scaling's or top-label beta
calibration's ``calibrated_logits`` - the logit transforms a graph can carry. Histogram binning
and isotonic regression map probabilities through fitted step functions that are not logit
transforms; such a run is refused in one line that suggests ``--calibration temperature`` (the
T every run also fits) or ``none`` (raw softmax), or training with
``--calibrator temperature|vector|matrix|top_label_beta``.

* ``onnx``: ``torch.onnx.export`` with the ``torch.export``-based exporter (the default since
  torch 2.9; the TorchScript-based one is deprecated), checked against onnxruntime when it
  is installed. Class names, T, the calibration method, mean and std are stored as metadata properties.
* ``torchscript``: ``torch.jit.trace``, with the same facts in an extra file ``softcal.json``.
  torch marks TorchScript as deprecated; it still loads with ``torch.jit.load``.

A run without a fitted calibration exports the raw softmax (T = 1); its metadata says
``"calibration": null`` and the command warns.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from softcal.apps.arguments import run_app_parser
from softcal.atomic_files import atomic_write_bytes
from softcal.data.augment import normalize
from softcal.errors import SoftcalError, exit_on_user_error
from softcal.runs.load import LoadedRun, load_run

if TYPE_CHECKING:
    from softcal.calibration.run_calibration import RunCalibration

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}


#: What ``--calibration`` can put into the graph.
CALIBRATIONS = ("stored", "temperature", "none")


class ProbabilityModel(nn.Module):
    """[0, 1] float images -> softmax(calibration.calibrated_logits(net(normalised images))).

    ``calibration`` is a :class:`~softcal.calibration.run_calibration.RunCalibration` whose
    method is a logit transform (temperature, vector or matrix scaling, top-label beta
    calibration) or nothing fitted (the raw softmax). Normalisation goes through
    :func:`softcal.data.augment.normalize` on ``images * 255``, the function training applies
    to uint8 batches, so both see the same numbers (to float rounding) for the same picture.
    """

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float],
                 calibration: RunCalibration) -> None:  # fmt: skip
        super().__init__()
        self.net = net
        self.calibration = calibration
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = normalize(images * 255.0, self.mean, self.std)
        return torch.softmax(self.calibration.calibrated_logits(self.net(x).float()), dim=1)


def exported_calibration(run: LoadedRun, choice: str = "stored") -> RunCalibration:
    """The calibration the graph will apply: the run's own (``stored``), its T alone
    (``temperature``) or nothing (``none``); one line of SoftcalError when the stored method is
    not a logit transform a graph can carry."""
    from softcal.calibration.calibrators import exportable_methods
    from softcal.calibration.run_calibration import RunCalibration

    stored = run.calibration
    if choice == "stored" and not stored.exportable:
        raise SoftcalError(
            f"{run.checkpoint.name} stores {stored.method} calibration, which an exported"
            " graph cannot carry (only temperature, vector and matrix scaling and top-label beta"
            " calibration are logit transforms); export with --calibration temperature (its fitted"
            " T) or --calibration none (raw softmax), or train with --calibrator"
            f" {'|'.join(exportable_methods())}"
        )
    if choice == "stored":
        return stored
    chosen = RunCalibration(run.num_classes)
    if choice == "temperature":
        chosen.use_temperature(stored.temperature)
    return chosen


def probability_model(run: LoadedRun, calibration: str = "stored") -> ProbabilityModel:
    """The wrapper around a reopened run, in eval mode on the CPU, calibrated as
    :func:`exported_calibration` says."""
    chosen = exported_calibration(run, calibration)
    wrapper = ProbabilityModel(run.model.net, run.datamodule.mean, run.datamodule.std, chosen)
    return wrapper.eval().cpu()


def metadata(run: LoadedRun, calibration: str = "stored") -> dict[str, Any]:
    """What a consumer needs to read the output: classes, input layout, calibration."""
    chosen = exported_calibration(run, calibration)
    return {
        "class_names": run.class_names,
        "input": "float32 images (N, C, H, W) in [0, 1]",
        "input_shape": [run.in_channels, *run.image_size],
        "output": f"softmax probabilities (N, num_classes), calibration: {chosen.describe()}",
        "calibration": chosen.method,  # null: raw softmax inside
        # null: not fitted, or not applied (T = 1 inside unless the graph applies temperature scaling)
        "temperature": chosen.temperature if chosen.method == "temperature" else None,
        "mean": list(run.datamodule.mean),
        "std": list(run.datamodule.std),
        "checkpoint": str(run.checkpoint),
    }


def example_batch(run: LoadedRun, batch: int = 2) -> torch.Tensor:
    """A random [0, 1] batch; 2 rather than 1, so the exporter cannot fix the batch at 1."""
    generator = torch.Generator().manual_seed(0)
    shape = (batch, run.in_channels, *run.image_size)
    return torch.rand(shape, generator=generator)


def export_onnx(module: ProbabilityModel, example: torch.Tensor, path: Path,
                meta: dict[str, Any]) -> Path:  # fmt: skip
    """One .onnx file (weights inside), dynamic batch dimension, metadata attached."""
    import onnx

    batch = torch.export.Dim("batch", min=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The exporter writes a file of its own: a unique name beside the target, removed whether
    # the export, or reading it back, succeeds or fails part-way (e.g. on a full disk).
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with torch.no_grad():
            torch.onnx.export(
                module, (example,), str(tmp), dynamo=True, external_data=False, verbose=False,
                input_names=["images"], output_names=["probabilities"],
                dynamic_shapes={"images": {0: batch}},
            )  # fmt: skip
        proto = onnx.load(str(tmp))
    finally:
        tmp.unlink(missing_ok=True)
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    # atomic and fsynced: a failed export never leaves half a model under the final name
    return atomic_write_bytes(path, proto.SerializeToString())


def export_torchscript(module: ProbabilityModel, example: torch.Tensor, path: Path,
                       meta: dict[str, Any]) -> Path:  # fmt: skip
    """A traced TorchScript file; tracing keeps the batch dimension symbolic for these nets."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", category=FutureWarning, module="torch.jit")
        traced = torch.jit.trace(module, example)
        torch.jit.save(traced, buffer, _extra_files={"softcal.json": json.dumps(meta)})
    return atomic_write_bytes(path, buffer.getbuffer())


def onnxruntime_difference(module: ProbabilityModel, path: Path, example: torch.Tensor,
                           batch_sizes: Sequence[int] = (1, 7)) -> float | None:  # fmt: skip
    """Largest |onnxruntime - torch| over random batches; None without onnxruntime."""
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(1)
    worst = 0.0
    for n in batch_sizes:
        x = torch.rand((n, *example.shape[1:]), generator=generator)
        (got,) = session.run(None, {"images": x.numpy()})
        with torch.no_grad():
            want = module(x)
        worst = max(worst, float((torch.from_numpy(got) - want).abs().max()))
    return worst


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """(export's own arguments, the overrides of the run's config)."""
    parser = run_app_parser(
        "export.py",
        "Export a checkpoint as a model from [0, 1] float images (N, C, H, W) to"
        " calibrated softmax probabilities, normalisation and calibration inside.",
    )
    parser.add_argument("--format", choices=sorted(FORMATS), default="onnx")
    parser.add_argument("--calibration", choices=CALIBRATIONS, default="stored",
                        help="stored: the run's calibration (temperature, vector or matrix scaling,"
                             " top-label beta; histogram and isotonic cannot be exported); temperature:"
                             " its fitted T only; none: the raw softmax")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None,
                        help="output file (default: <run_dir>/export/model.onnx or model.pt)")
    return parser.parse_with_overrides(argv)


def main(argv: Sequence[str] | None = None) -> Path:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    run = load_run(args.ckpt, overrides)
    out = args.out or run.run_dir / "export" / f"model{FORMATS[args.format]}"
    module, example = probability_model(run, args.calibration), example_batch(run)
    meta = metadata(run, args.calibration)
    try:
        if args.format == "onnx":
            export_onnx(module, example, out, meta)
        else:
            export_torchscript(module, example, out, meta)
    except ImportError as err:
        raise SoftcalError(
            f"{args.format} export needs {err.name or 'a missing package'}; install the export"
            " extra: pip install -e '.[export]'"
        ) from err
    except OSError as err:
        raise SoftcalError(f"cannot write {out}: {err}") from err
    warning = run.uncalibrated_warning("the exported probabilities")
    if warning and args.calibration != "none":
        print(warning, file=sys.stderr)
    shape = ", ".join(str(s) for s in example.shape[1:])
    print(f"wrote {out}")
    print(f"  input  images: float32 [batch, {shape}] in [0, 1]")
    print(f"  output probabilities: [batch, {run.num_classes}] (normalisation inside;"
          f" {module.calibration.describe()})")  # fmt: skip
    if args.format == "onnx":
        diff = onnxruntime_difference(module, out, example)
        if diff is not None:
            print(f"  onnxruntime vs torch: max |difference| {diff:.2e} (batches of 1 and 7)")
    return out


command = exit_on_user_error(main)
