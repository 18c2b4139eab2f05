"""The command line: LightningCLI over the Classifier and any ClassificationDataModule.

``python scripts/train.py`` = fit, then fit a temperature on validation logits, then test the
best checkpoint (the final weights with ``--trainer.enable_checkpointing false``) with raw and
calibrated probabilities and print one table. Without ``--config`` the default
``configs/mnist.yaml`` is used; any value can be overridden (``--trainer.max_epochs 3``), and
the resolved config is saved in the run directory so the checkpoint can be evaluated later with
exactly the settings that made it.
"""

from __future__ import annotations

import math
import re
import sys
from argparse import ArgumentError
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from softcal.allocator import keep_freed_memory
from softcal.calibration.metrics import collect_logits, fit_temperature
from softcal.runs.callbacks import FreezeStartupObjects, LastCheckpoint
from softcal.data import ClassificationDataModule, TensorBatchLoader, default_data_root
from softcal.errors import SoftcalError
from softcal.model.module import Classifier
from softcal.runs.files import (
    atomic_torch_save,
    atomic_write_json,
    check_checkpoint_fits,
    checkpoint_hparams,
    latest_run_with_last,
    load_checkpoint,
)

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "mnist.yaml"


def with_default_config(args: list[str]) -> list[str]:
    """Prepend ``--config configs/mnist.yaml`` unless the user named a config.

    A ``--config configs/...`` path that does not exist from the current directory is taken
    from the project's own ``configs/``, so the README's commands work from any directory.
    """
    args = list(args)
    named = False
    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args):
            named = True
            path = Path(args[i + 1])
            if not path.exists() and (CONFIG_DIR.parent / path).is_file():
                args[i + 1] = str(CONFIG_DIR.parent / path)
        elif arg.startswith("--config="):
            named = True
    if named:
        return args
    if not DEFAULT_CONFIG.is_file():
        raise SoftcalError(f"default config {DEFAULT_CONFIG} not found; pass --config FILE.yaml")
    return ["--config", str(DEFAULT_CONFIG), *args]


class SoftcalCLI(LightningCLI):
    """LightningCLI with the data facts linked into the model and a checkpoint policy."""

    def __init__(self, args: list[str] | None = None, **kwargs: Any) -> None:
        if args is None:  # from the command line: rewrite argv (LightningCLI reads it itself)
            sys.argv[1:] = with_default_config(sys.argv[1:])
        else:
            args = with_default_config(list(args))
        try:
            super().__init__(
                model_class=Classifier,
                datamodule_class=ClassificationDataModule,
                subclass_mode_data=True,
                run=False,
                args=args,
                save_config_kwargs={"overwrite": True},  # a resumed run rewrites the same file
                parser_kwargs={
                    "description": "Train an image classifier and measure calibration.",
                    "exit_on_error": False,  # we print one line instead of the whole usage
                },
                **kwargs,
            )
        except ArgumentError as err:
            # jsonargparse explains unknown keys and wrong types well, over several lines.
            detail = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
            raise SoftcalError(f"bad config or argument: {detail} (see --help)") from err

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(LastCheckpoint, "last_checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/acc",
            "checkpoint.mode": "max",
            "checkpoint.save_last": False,  # last.ckpt is LastCheckpoint's job
            "checkpoint.filename": "best-epoch{epoch:02d}-step{step}",
            "checkpoint.auto_insert_metric_name": False,
        })  # fmt: skip
        parser.add_argument("--ckpt_path", type=str | None, default=None,
                            help="resume from a checkpoint, a run directory, or 'last' (the"
                                 " newest run of this experiment with a last.ckpt)")  # fmt: skip
        parser.add_argument("--calibrate", type=bool, default=True,
                            help="fit a temperature on validation logits after training")  # fmt: skip
        parser.add_argument("--progress_refresh_rate", type=int, default=50,
                            help="progress bar updates every N steps (each costs time)")  # fmt: skip
        parser.add_argument("--keep_freed_memory", type=bool, default=True,
                            help="keep freed memory in the C heap for the next step instead of"
                                 " mapping it afresh (glibc; see softcal.allocator)")  # fmt: skip
        # The data knows its classes and image shape; the model is told, never configured twice.
        for source, target in (("num_classes", "num_classes"), ("in_channels", "in_channels"),
                               ("class_names", "class_names")):  # fmt: skip
            parser.link_arguments(f"data.{source}", f"model.{target}", apply_on="instantiate")
        parser.link_arguments("data.image_size", "model.image_size",
                              compute_fn=lambda size: int(size[0]), apply_on="instantiate")  # fmt: skip
        # One seed drives initialisation, the train/val split and the shuffling order.
        parser.link_arguments("seed_everything", "data.init_args.split_seed")

    def before_instantiate_classes(self) -> None:
        """Resolve ``--ckpt_path`` so a resumed run writes into its own run directory, and the
        data root, so the saved config.yaml names the data actually used (not ``null``)."""
        self.resume_path = self._resolve_resume(self.config.get("ckpt_path"))
        if self.config.get("keep_freed_memory", True):
            keep_freed_memory()  # before the datasets and the net allocate anything
        data_args = self.config.data.get("init_args")
        if data_args is not None and "root" in data_args and not data_args["root"]:
            data_args["root"] = str(default_data_root().resolve())

    def _resolve_resume(self, ckpt_path: str | None) -> str | None:
        if not ckpt_path:
            return None
        logger = self.config.trainer.get("logger")
        init = logger.get("init_args") if hasattr(logger, "get") else None
        path = Path(ckpt_path)
        if ckpt_path == "last":
            if init is None:
                raise SoftcalError("--ckpt_path last needs a TensorBoard logger to find the run")
            run_dir = latest_run_with_last(Path(init["save_dir"]), init["name"])
            if run_dir is None:
                where = Path(init["save_dir"]) / init["name"]
                raise SoftcalError(f"--ckpt_path last: no run in {where} has checkpoints/last.ckpt")
            path = run_dir / "checkpoints" / "last.ckpt"
        elif path.is_dir():
            path = path / "checkpoints" / "last.ckpt"
        if not path.is_file():
            raise SoftcalError(f"checkpoint {path} not found; pass a .ckpt, a run directory or last")
        run_dir = path.parent.parent
        if init is not None and path.parent.name == "checkpoints":
            # Continue in the same run directory: same TensorBoard run, same checkpoints folder.
            init["save_dir"] = str(run_dir.parent.parent)
            init["name"] = run_dir.parent.name
            init["version"] = run_dir.name
        return str(path)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self._get(self.config_init, "trainer", default={})
        given = config.get("callbacks") or []
        callbacks = list(given) if isinstance(given, list) else [given]  # one may come bare
        if config.get("enable_progress_bar", True) is not False and not any(
            isinstance(c, ProgressBar) for c in callbacks
        ):
            refresh = self._get(self.config, "progress_refresh_rate", default=50)
            callbacks.append(TQDMProgressBar(refresh_rate=refresh))
        callbacks.append(FreezeStartupObjects())
        kwargs["callbacks"] = callbacks
        try:
            return super().instantiate_trainer(**kwargs)
        except MisconfigurationException as err:
            raise trainer_settings_error(err) from err

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        # checkpoint.* and last_checkpoint.* always build their callbacks; with checkpointing
        # off they must stay out, or Lightning refuses the ModelCheckpoint (and last.ckpt
        # would still be written). A ModelCheckpoint the user lists in trainer.callbacks stays:
        # that is a real conflict, reported by trainer_settings_error.
        if config.get("enable_checkpointing") is False:
            callbacks = [c for c in callbacks if not isinstance(c, (ModelCheckpoint, LastCheckpoint))]
        return super()._instantiate_trainer(config, callbacks)


#: Words in Lightning's message that mark an accelerator or device problem: the only kind that
#: "use another accelerator, or fewer devices" fixes.
_DEVICE_WORDS = re.compile(r"accelerator|\bgpus?\b|cuda|\bmps\b|\btpu|\bdevices?\b", re.IGNORECASE)


def trainer_settings_error(err: MisconfigurationException) -> SoftcalError:
    """One line for a Trainer that refuses its settings; Lightning's first line names them."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if _DEVICE_WORDS.search(first):  # e.g. accelerator: gpu on a machine without one
        return SoftcalError(
            f"trainer settings do not fit this machine: {first} - use"
            " --trainer.accelerator cpu (or auto), or fewer --trainer.devices"
        )
    return SoftcalError(
        f"invalid trainer settings: {first} - change the setting it names"
        " (--print_config shows the resolved config)"
    )


# --------------------------------------------------------------------------- train workflow


def calibrate_temperature(model: Classifier, datamodule: ClassificationDataModule) -> float:
    """Fit T on the whole validation split (the same on every process), set it on the model."""
    images, labels = datamodule.splits["val"]
    batches = TensorBatchLoader(images, labels, datamodule.eval_batch_size, shuffle=False)
    logits, targets = collect_logits(model, batches, datamodule.preprocess, model.device)
    temperature = fit_temperature(logits, targets)
    model.temperature.fill_(temperature)
    return temperature


def format_results(results: dict[str, float], temperature: float | None, title: str) -> str:
    """A two-column table: raw softmax vs temperature-scaled, one row per metric."""
    names = sorted({k.split("/", 1)[1] for k in results if k.startswith("test/")})
    order = ["acc", "acc_top5", "ece", "mce", "rmsce", "adaptive_ece", "classwise_ece", "brier",
             "nll", "loss"]  # fmt: skip
    names.sort(key=lambda n: order.index(n) if n in order else len(order))
    t = f"T = {temperature:.3f}" if temperature is not None else "T = 1"
    head = f"{'metric':<15}{'test (T = 1)':>15}{'calibrated (' + t + ')':>26}"
    lines = [title, head, "-" * len(head)]
    for name in names:
        raw = results.get(f"test/{name}", math.nan)
        cal = results.get(f"test_calibrated/{name}", math.nan)
        percent = name.startswith("acc") or "ece" in name or name in ("mce", "rmsce")
        fmt = (lambda v: f"{100 * v:.2f}%") if percent else (lambda v: f"{v:.4f}")
        lines.append(f"{name:<15}{fmt(raw):>15}{fmt(cal) if not math.isnan(cal) else '':>26}")
    return "\n".join(lines)


def saved_checkpoint(trainer: Trainer) -> str:
    """The checkpoint to calibrate and test: the best one, else last.ckpt; "" when the run
    saved none (--trainer.enable_checkpointing false), and the weights in memory are used."""
    checkpoint = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if not checkpoint:
        last = [c for c in trainer.callbacks if isinstance(c, LastCheckpoint)]
        checkpoint = last[0].last_model_path if last else ""
    return checkpoint


def train(args: list[str] | None = None) -> dict[str, Any]:
    """fit -> temperature scaling -> test; returns the results also written to results.json."""
    cli = SoftcalCLI(args)
    trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
    if cli.resume_path:  # a checkpoint of another dataset fails here, in one line
        check_checkpoint_fits(cli.resume_path, checkpoint_hparams(
            load_checkpoint(cli.resume_path), cli.resume_path), datamodule)  # fmt: skip
    trainer.fit(model, datamodule=datamodule, ckpt_path=cli.resume_path)
    if trainer.interrupted:
        raise SystemExit(130)
    checkpoint = trainer.strategy.broadcast(saved_checkpoint(trainer))
    best = load_checkpoint(checkpoint) if checkpoint else None
    if best is not None:
        model.load_state_dict(best["state_dict"])
    temperature = None
    if cli.config.calibrate:
        temperature = calibrate_temperature(model, datamodule)
        if best is not None and trainer.is_global_zero:
            best["state_dict"]["temperature"] = torch.tensor(temperature)
            atomic_torch_save(best, checkpoint)
    metrics = trainer.test(model, datamodule=datamodule, verbose=False)[0]
    run_dir = Path(trainer.log_dir) if trainer.log_dir else None
    results = {
        "dataset": datamodule.name,
        "checkpoint": str(Path(checkpoint).resolve()) if checkpoint else None,
        "temperature": temperature,
        "run_dir": str(run_dir) if run_dir else None,
        "metrics": {k: float(v) for k, v in sorted(metrics.items())},
    }
    if trainer.is_global_zero:
        if run_dir is not None and trainer.logger is not None:
            if temperature is not None:
                atomic_write_json(run_dir / "temperature.json", {"temperature": temperature})
            atomic_write_json(run_dir / "results.json", results)
        tested = f"checkpoint {checkpoint}" if checkpoint else "final weights (no checkpoint saved)"
        title = f"{datamodule.name} test set, {tested}"
        print("\n" + format_results(results["metrics"], temperature, title))
        if run_dir is not None and trainer.logger is not None:
            print(f"\nrun directory: {run_dir}  (tensorboard --logdir {run_dir.parent.parent})")
    return results
