"""The schema of a run's config - one description for training, reopening a run and ``--ood``.

A run's config (what ``configs/*.yaml`` hold and a run saves as ``config.yaml``) has the
sections ``seed_everything``, ``model``, ``data`` and ``trainer``, and while training also the
callback groups (``checkpoint``, ``last_checkpoint``, ``calibration``, ``figures``) and a few
options. Three commands read it, and all build their parser here:

* training (``softcal.apps.cli``): LightningCLI adds the model, data, trainer and seed itself;
  :func:`add_training_arguments` adds the rest and the links, the same ones as below;
* reopening a run (evaluate, predict, export; ``softcal.runs.load``): :func:`run_parser`, the
  same types and seed link, the model's data facts left to the checkpoint;
* an OOD set named by a config (``evaluate --ood fashion_mnist``): :func:`config_datamodule`.

Whatever jsonargparse rejects becomes one line (:func:`config_problem`, with "did you mean"
for a misspelt key). jsonargparse and Lightning are imported inside the functions: reopening
a run reads its checkpoint first, so a wrong path is reported before the slow imports.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from softcal.errors import CheckpointError, SoftcalError, first_line, softcal_cause
from softcal.runs.checkpoints import DATA_FACTS
from softcal.runs.config_problems import config_problem

if TYPE_CHECKING:
    from jsonargparse import ArgumentParser, Namespace

#: ``calibration.method`` values: softcal.calibration.calibrators.METHODS, spelled out for the
#: parser (a Literal, so a wrong name fails while parsing, in one line, before any run starts).
CalibratorName = Literal["temperature", "vector", "matrix", "histogram", "isotonic", "top_label_beta"]

#: Trainer settings that only make sense while training (the run's logger, its callbacks
#: such as checkpointing) or that name objects: a reopened run leaves them out.
#: num_nodes belongs to a launch (torchrun, srun): a multi-node run is evaluated wherever it is.
TRAINING_ONLY = ("logger", "callbacks", "plugins", "profiler", "model_registry", "num_nodes")

#: The callbacks' config groups, each the init arguments of the callback it configures; those
#: in SWITCHED have an ``enabled`` switch.
CALLBACK_GROUPS = ("checkpoint", "last_checkpoint", "calibration", "figures")
SWITCHED = ("calibration", "figures")

#: Command-line options that override a reopened run's saved config.
OVERRIDE_PREFIXES = ("--data", "--model", "--trainer", "--seed_everything")


def link_seed(parser: ArgumentParser) -> None:
    """One seed drives initialisation, the train/val split and the shuffling order."""
    parser.link_arguments("seed_everything", "data.init_args.split_seed")


def link_data_facts(parser: ArgumentParser) -> None:
    """The data knows its classes and image shape; the model is told, never configured twice."""
    for name in ("num_classes", "in_channels", "class_names"):
        parser.link_arguments(f"data.{name}", f"model.{name}", apply_on="instantiate")
    parser.link_arguments("data.image_size", "model.image_size", compute_fn=_side, apply_on="instantiate")


def _side(size: Sequence[int]) -> int:
    return int(size[0])


def add_training_arguments(parser: ArgumentParser) -> None:
    """What training adds to LightningCLI's model, data, trainer and seed: the callbacks'
    groups (each the init arguments of the callback it configures, as Lightning's convention
    has it), the run's own options, and the links above."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from softcal.calibration.callbacks import CalibrationFigures, FitCalibration
    from softcal.runs.last_checkpoint import LastCheckpoint

    parser.add_class_arguments(ModelCheckpoint, "checkpoint", instantiate=False)
    parser.add_class_arguments(LastCheckpoint, "last_checkpoint", instantiate=False)
    parser.set_defaults({
        "checkpoint.monitor": "val/acc",
        "checkpoint.mode": "max",
        "checkpoint.save_last": False,  # last.ckpt is LastCheckpoint's job
        "checkpoint.filename": "best-epoch{epoch:02d}-step{step}",
        "checkpoint.auto_insert_metric_name": False,
    })  # fmt: skip
    # method typed here as the Literal of the methods: the callback itself takes any str
    parser.add_class_arguments(FitCalibration, "calibration", instantiate=False, skip={"method"})
    calibration = parser.groups["calibration"]  # method in the group's own --help section
    calibration.add_argument("--calibration.method", type=CalibratorName, default="temperature",
                             help="the calibration the run stores and its calibrated metrics, predict"
                                  " and export use; fitted next to T at each validation (T is always"
                                  " fitted and reported)")  # fmt: skip
    # n_bins is the model's calibration_bins: one setting for the metrics and the pictures
    parser.add_class_arguments(CalibrationFigures, "figures", instantiate=False, skip={"n_bins"})
    parser.add_argument("--ckpt_path", type=str | None, default=None,
                        help="resume from a checkpoint, a run directory, or 'last' (the newest run"
                             " of this experiment with a last.ckpt)")  # fmt: skip
    parser.add_argument("--progress_refresh_rate", type=int, default=50,
                        help="progress bar updates every N steps (each costs time)")
    parser.add_argument("--validate_every_epoch", type=bool, default=True,
                        help="false: validate only the final weights (their checkpoint, T and figures"
                             " as after any validation), saving the per-epoch passes and giving up"
                             " the validation curves (softcal.runs.final_validation)")  # fmt: skip
    parser.add_argument("--keep_freed_memory", type=bool, default=True,
                        help="keep freed memory in the C heap for the next step instead of mapping"
                             " it afresh (glibc; see softcal.allocator)")  # fmt: skip
    link_data_facts(parser)
    link_seed(parser)


def check_training_config(config: Any) -> None:
    """What the parser lets through but no run can use, as one line before anything starts:
    a callback group given a plain value (``figures: false``, as the option was spelt before it
    became a group), and a stored method without the callback that fits it (with
    ``calibration.enabled false`` nothing is fitted, and the run's HPARAMS row would name a
    method it never used)."""
    import json

    from jsonargparse import Namespace

    for group in CALLBACK_GROUPS:
        value = config.get(group)
        if not isinstance(value, (Namespace, Mapping)):
            shown = json.dumps(value, default=str)
            option, given = ("enabled", shown) if group in SWITCHED else ("OPTION", "VALUE")
            raise SoftcalError(
                f"{group}: {shown} is not a group of options; set one of its options: --{group}.{option}"
                f" {given} (in YAML: {group}: {{{option}: {given}}})"
            )
    method = config.get("calibration").get("method") or "temperature"
    if not config.get("calibration").get("enabled", True) and method != "temperature":
        raise SoftcalError(
            f"--calibrator {method} needs --calibrate true: with --calibrate false no"
            " calibrator is fitted; drop one of the two options"
        )


def run_parser() -> ArgumentParser:
    """The part of the training config that describes a trained model, for reopening it.

    The same types as training (so overrides are checked the same way and ``--data
    FashionMNISTDataModule`` finds the class), the same seed link (the validation split is
    carved with the run's seed), and the model's data facts left to the checkpoint.
    """
    from lightning.pytorch import Trainer

    from softcal.model.module import Classifier

    parser = _data_parser()
    parser.add_class_arguments(Classifier, "model", skip=set(DATA_FACTS))
    parser.add_class_arguments(Trainer, "trainer", skip=set(TRAINING_ONLY), instantiate=False,
                               fail_untyped=False)  # fmt: skip
    return parser


def _data_parser(seed: bool | int = True) -> ArgumentParser:
    """The seed (default ``seed``; training's is True: a random one) and the datamodule,
    linked as in training."""
    from jsonargparse import ArgumentParser

    from softcal.data import ClassificationDataModule

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--seed_everything", type=bool | int, default=seed)
    parser.add_subclass_arguments(ClassificationDataModule, "data", required=True)
    link_seed(parser)
    return parser


def read_config(path: Path) -> dict[str, Any]:
    """config.yaml as a dict; it must at least name the model and the data."""
    import yaml

    try:
        saved = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise CheckpointError(f"{path} is not a readable run config ({first_line(err)})") from err
    if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict) or not saved.get("data"):
        raise CheckpointError(f"{path} is not a run config: it has no model and data entries")
    return saved


def rebuild(
    path: Path, saved: dict[str, Any], overrides: Sequence[str], hparams: dict[str, Any]
) -> tuple[Namespace, Namespace]:
    """(instantiated data and model, the parsed config) from the saved config's model, data
    and trainer entries with the overrides on top; the model's data facts are the
    checkpoint's own (``hparams``), since the weights were shaped by them."""
    parser = run_parser()
    trainer = {k: v for k, v in (saved.get("trainer") or {}).items() if k not in TRAINING_ONLY}
    entries = {"model": saved["model"], "data": saved["data"], "trainer": trainer}
    if "seed_everything" in saved:
        entries["seed_everything"] = saved["seed_everything"]
    try:
        cfg = parser.parse_object(entries)
    except Exception as err:  # jsonargparse reports bad class paths and values many ways
        raise _config_error(path, err, parser) from err
    if overrides:
        try:
            cfg = parser.parse_args(list(overrides), namespace=cfg)
        except Exception as err:
            raise SoftcalError(f"bad override: {config_problem(err, parser)[:300]}") from err
    for key in DATA_FACTS:
        cfg.model[key] = hparams.get(key)
    return _instantiated(parser, cfg, lambda err: _config_error(path, err, parser)), cfg


def _instantiated(parser: ArgumentParser, cfg: Namespace, error: Any) -> Namespace:
    """``parser.instantiate_classes(cfg)``; a constructor's own one-line error comes through
    as it is (jsonargparse wraps it), anything else becomes ``error(err)``."""
    try:
        return parser.instantiate_classes(cfg)
    except SoftcalError:
        raise
    except Exception as err:  # a class that fails to build: bad values, a missing module
        cause = softcal_cause(err)
        if cause is not None:
            raise cause from None  # e.g. an override's batch_size=0, wrapped by jsonargparse
        raise error(err) from err


def _config_error(path: Path, err: BaseException, parser: ArgumentParser | None = None) -> CheckpointError:
    return CheckpointError(f"{path} cannot be used to rebuild the model ({config_problem(err, parser, 200)})")


def config_datamodule(paths: Sequence[Path], where: str) -> Any:
    """The datamodule of the ``data`` sections of ``paths`` (a config and the bases it names,
    base first, layered as training layers them), instantiated, not set up; every problem is
    one line that starts with ``where``."""
    import yaml

    sections = []
    for path in paths:
        try:
            content = yaml.safe_load(path.read_text()) or {}
            if not isinstance(content, dict):
                raise ValueError(f"it holds a {type(content).__name__}, not sections")
        except (OSError, ValueError, yaml.YAMLError) as err:  # ValueError: not text
            raise SoftcalError(f"{where}: not a readable YAML config ({first_line(err)})") from err
        sections.append({k: content[k] for k in ("seed_everything", "data") if k in content})
    if not any("data" in section for section in sections):
        raise SoftcalError(f"{where}: the config has no data section; pass a datamodule config")
    # A datamodule config may hold no seed: its split then keeps split_seed's own default, 0.
    parser, cfg = _data_parser(seed=0), None
    try:
        for section in sections[next(i for i, s in enumerate(sections) if "data" in s):]:
            cfg = parser.parse_object(section, namespace=cfg)  # the next file on top, as --config does
    except Exception as err:  # jsonargparse reports bad class paths and values many ways
        raise _build_error(where, err, parser) from err
    return _instantiated(parser, cfg, lambda err: _build_error(where, err, parser)).data


def _build_error(where: str, err: BaseException, parser: ArgumentParser) -> SoftcalError:
    problem = config_problem(err, parser, 200)
    return SoftcalError(f"{where}: the config cannot build its datamodule ({problem})")


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separate ``--data.* / --model.* / --trainer.* / --seed_everything`` overrides (with
    their values) from an app's own arguments; argparse alone would take an override's value
    for a path. Returns (own arguments, overrides for ``load_run``)."""
    own: list[str] = []
    overrides: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name = arg.split("=", 1)[0]
        if any(name == p or name.startswith(p + ".") for p in OVERRIDE_PREFIXES):
            overrides.append(arg)
            if "=" not in arg and i + 1 < len(argv):
                overrides.append(argv[i + 1])
                i += 1
        else:
            own.append(arg)
        i += 1
    return own, overrides
