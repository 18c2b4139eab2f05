"""The columns of TensorBoard's HPARAMS table for a training run, and one run's values.

TensorBoard builds the table's columns from ONE experiment description (the first it reads;
github.com/Lightning-AI/pytorch-lightning/issues/1217), so every run writes the same
description: the same hyperparameter names and the same metric tags, whatever its net or
dataset. A value a run does not have is a fixed placeholder (``""``, ``-1`` or ``False``),
never a missing key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from tensorboard.plugins.hparams import api_pb2

STRING, NUMBER, BOOL = api_pb2.DATA_TYPE_STRING, api_pb2.DATA_TYPE_FLOAT64, api_pb2.DATA_TYPE_BOOL
PLACEHOLDER = {STRING: "", NUMBER: -1.0, BOOL: False}

#: Hyperparameter columns in table order: (name, type, description).
HPARAMS: tuple[tuple[str, int, str], ...] = (
    ("dataset", STRING, "the datamodule's dataset name"),
    ("net", STRING, "model.net class"),
    ("net_widths", STRING, "model.net widths (or base_width)"),
    ("optimizer", STRING, "model.optimizer"),
    ("lr", NUMBER, "model.lr (peak)"),
    ("muon_lr", NUMBER, "model.muon_lr (peak) with optimizer muon"),
    ("weight_decay", NUMBER, "model.weight_decay"),
    ("lr_schedule", STRING, "model.lr_schedule"),
    ("batch_size", NUMBER, "data batch_size per process"),
    ("epochs", NUMBER, "trainer.max_epochs"),
    ("label_smoothing", NUMBER, "model.label_smoothing"),
    ("crop_padding", NUMBER, "random-crop padding in pixels (0: no crop)"),
    ("crop_pad_mode", STRING, "what the crop pads with"),
    ("hflip", BOOL, "random horizontal flips"),
    ("alternate_flips", BOOL, "each image mirrored every other epoch"),
    ("seed", NUMBER, "seed_everything"),
    ("precision", STRING, "trainer precision"),
    ("accelerator", STRING, "the accelerator the run used"),
    ("devices", NUMBER, "devices per node"),
    ("calibrate", BOOL, "a temperature fitted at each validation (calibration.enabled)"),
    ("calibrator", STRING, "post-hoc calibration method reported as calibrated (calibration.method)"),
)

#: The columns TensorBoard shows before any is ticked: it shows five, those marked ``differs``
#: first (else the first five by name: accelerator, alternate_flips, batch_size, ...).
SHOWN = ("dataset", "net", "lr", "epochs", "seed")

#: Metric columns: scalar tags in the run's own event files (the last value is shown).
#: test/* and test_calibrated/* are what Lightning logs at test; final/* are the dashboard's.
#: Table order: raw next to calibrated, ECE and NLL first (a window shows about five metrics).
METRICS: tuple[str, ...] = (
    "test/ece", "test_calibrated/ece", "test/nll", "test_calibrated/nll", "final/temperature",
    "test/acc", "test_calibrated/acc", "test/brier", "test_calibrated/brier",
    "final/best_epoch", "final/wall_time_s",
)  # fmt: skip


def experiment_infos() -> tuple[list[api_pb2.HParamInfo], list[api_pb2.MetricInfo]]:
    """The table's columns. No value domains: a domain taken from one run would hide the rows of
    runs with other values (the discrete-domain half of Lightning #1217)."""
    hparams = [api_pb2.HParamInfo(name=n, type=t, description=d, differs=n in SHOWN) for n, t, d in HPARAMS]
    metrics = [api_pb2.MetricInfo(name=api_pb2.MetricName(group="", tag=tag)) for tag in METRICS]
    return hparams, metrics


def _last_name(class_path: Any) -> str:
    return str(class_path).rsplit(".", 1)[-1] if class_path else ""


def _widths(init_args: Mapping[str, Any]) -> str:
    for key in ("widths", "base_width"):
        if init_args.get(key) is not None:
            value = init_args[key]
            return str(list(value)) if isinstance(value, (list, tuple)) else str(value)
    return ""


def _typed(kind: int, value: Any) -> str | float | bool:
    """``value`` as the column's type, or the column's placeholder when it is missing."""
    if value is None or isinstance(value, (dict, list)) and kind != STRING:
        return PLACEHOLDER[kind]
    if kind == BOOL:
        return bool(value)
    if kind == NUMBER:
        try:
            return float(value)
        except (TypeError, ValueError):
            return PLACEHOLDER[kind]
    return str(value)


def hparam_values(config: Mapping[str, Any], **facts: Any) -> dict[str, str | float | bool]:
    """One run's row: every column of :data:`HPARAMS`, from the resolved config (the nested
    form of config.yaml) and ``facts`` that override it: what the Trainer resolved (the
    accelerator ``auto`` became, the precision), the dataset's name."""
    model, trainer = config.get("model") or {}, config.get("trainer") or {}
    net = model.get("net") if isinstance(model.get("net"), Mapping) else {}
    data = config.get("data") or {}
    data_args = data.get("init_args", data) if isinstance(data, Mapping) else {}
    seed = config.get("seed_everything")
    calibration = config.get("calibration") if isinstance(config.get("calibration"), Mapping) else {}
    raw: dict[str, Any] = {
        "dataset": None,
        "net": _last_name(net.get("class_path")),
        "net_widths": _widths(net.get("init_args") or {}),
        **{k: model.get(k) for k in ("optimizer", "lr", "weight_decay", "lr_schedule", "label_smoothing")},
        # only Muon uses it: another optimizer's run shows the placeholder, not an unused default
        "muon_lr": model.get("muon_lr") if model.get("optimizer") == "muon" else None,
        "batch_size": data_args.get("batch_size"),
        "epochs": trainer.get("max_epochs"),
        **{k: data_args.get(k) for k in ("crop_padding", "crop_pad_mode", "hflip", "alternate_flips")},
        # True means "pick one": Lightning exports the seed it picked.
        "seed": os.environ.get("PL_GLOBAL_SEED") if seed is True or seed is None else seed,
        "precision": trainer.get("precision"),
        "accelerator": trainer.get("accelerator"),
        "devices": trainer.get("devices"),
        # the columns keep the names of the options the calibration: group replaced
        "calibrate": calibration.get("enabled", True),
        "calibrator": calibration.get("method") or "temperature",
    }
    raw.update(facts)
    if raw["seed"] is False:  # seeding switched off
        raw["seed"] = None
    return {name: _typed(kind, raw.get(name)) for name, kind, _ in HPARAMS}
