"""Train, calibrate, test: ``python scripts/train.py`` and ``softcal-train``.

    fit      the Trainer trains; at every validation the FitCalibration callback fits the run's
             calibration on the validation logits, so each checkpoint carries its own
    best     the best checkpoint's weights and calibration are loaded back (the final weights
             when the run saves no checkpoint)
    test     raw and calibrated metrics on the test split, one table, results.json

Without ``--config`` the default ``configs/mnist.yaml`` is used; any value can be overridden
(``--trainer.max_epochs 3``), and the resolved config is saved in the run directory.
"""

from __future__ import annotations

import logging
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, Trainer
from lightning.pytorch.utilities.exceptions import SIGTERMException

from softcal.apps.cli import SoftcalCLI
from softcal.calibration.callbacks import CalibrationFigures
from softcal.errors import exit_on_user_error
from softcal.runs.checkpoints import check_checkpoint_fits, checkpoint_hparams, load_checkpoint
from softcal.runs.dashboard import finish_dashboard
from softcal.runs.last_checkpoint import LastCheckpoint, sigterm_message
from softcal.runs.lost_peer import lost_peer_error
from softcal.runs.results_table import format_results
from softcal.runs.run_dirs import atomic_write_json

#: Lightning's start-up lines that tell a softcal user nothing: the seed (in config.yaml),
#: which accelerators exist (the Trainer's settings say which is used) and advertisements.
BANNERS = re.compile(
    r"Seed set to |GPU available: |TPU available: |HPU available: |Tip: "
    r"|Loading `train_dataloader` to estimate number of stepping batches"
)

#: The loggers that print them (``rank_zero_info`` logs through the rank_zero modules').
BANNER_LOGGERS = (
    "lightning.fabric.utilities.seed",
    "lightning.fabric.utilities.rank_zero",
    "lightning.pytorch.utilities.rank_zero",
)


class LightningBanners(logging.Filter):
    """Drops Lightning's start-up banners; every other message (warnings, "Detected
    KeyboardInterrupt", checkpoint restores) passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not BANNERS.search(record.getMessage())


def quiet_banners() -> None:
    """Install :class:`LightningBanners` on the loggers that print them (once), and ignore a
    deprecation warning inside Lightning itself that a user cannot act on."""
    for name in BANNER_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, LightningBanners) for f in logger.filters):
            logger.addFilter(LightningBanners())
    warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")


def saved_checkpoint(trainer: Trainer) -> str:
    """The checkpoint to test: the best one, else last.ckpt; "" when the run saved none
    (--trainer.enable_checkpointing false), and the weights in memory are tested."""
    checkpoint = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if not checkpoint:
        last = [c for c in trainer.callbacks if isinstance(c, LastCheckpoint)]
        checkpoint = last[0].last_model_path if last else ""
    return checkpoint


def main(argv: list[str] | None = None, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """fit -> best weights (with their T) -> test; returns what results.json holds.
    ``callbacks`` join the Trainer's (a sweep's trial measures and prunes through them)."""
    quiet_banners()
    cli = SoftcalCLI(argv, extra_callbacks=callbacks)
    trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
    if cli.resume_path:  # a checkpoint of another dataset fails here, in one line
        saved = load_checkpoint(cli.resume_path)
        check_checkpoint_fits(cli.resume_path, checkpoint_hparams(saved, cli.resume_path), datamodule)
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=cli.resume_path)
    except SIGTERMException:  # raised by Lightning after a SIGTERM; last.ckpt is saved by then
        if trainer.is_global_zero:
            print(sigterm_message(trainer), file=sys.stderr)
        raise SystemExit(143) from None  # 128 + SIGTERM: the shell's code for a terminated job
    except RuntimeError as err:  # another node lost: one line, not gloo's or NCCL's traceback
        lost = lost_peer_error(trainer, err)
        if lost is None:
            raise
        raise lost from err
    except SystemExit:  # Lightning ends a Ctrl-C'd fit with sys.exit(1) after its shutdown
        if trainer.interrupted:
            raise SystemExit(130) from None  # the shell's code for an interrupted command
        raise
    if trainer.interrupted:
        raise SystemExit(130)
    checkpoint = trainer.strategy.broadcast(saved_checkpoint(trainer))
    tested_epoch = max(trainer.current_epoch - 1, 0)  # the final weights', when none is saved
    if checkpoint:  # its state_dict holds the calibration fitted for exactly these weights
        # Read where it was written (rank 0) and sent to the others: other nodes may not see
        # rank 0's disk.
        saved = load_checkpoint(checkpoint) if trainer.is_global_zero else None
        if saved is not None:
            tested_epoch = int(saved["epoch"])
        model.load_state_dict(trainer.strategy.broadcast(saved["state_dict"] if saved else None))
    metrics = run_test(trainer, model, datamodule, checkpoint)
    calibration = model.calibration
    run_dir = Path(trainer.log_dir) if trainer.log_dir and trainer.logger is not None else None
    results = {
        "dataset": datamodule.name,
        "checkpoint": str(Path(checkpoint).resolve()) if checkpoint else None,
        "temperature": calibration.temperature,  # a report: the checkpoint is where T is read from
        # the method the calibrated metrics used (--calibrator), or None: nothing fitted
        "calibrator": calibration.summary(),
        "run_dir": str(run_dir) if run_dir else None,
        "metrics": {k: float(v) for k, v in sorted(metrics.items())},
        **test_figure_data(trainer),
    }
    if trainer.is_global_zero:
        # TensorBoard's HPARAMS and TEXT
        finish_dashboard(trainer, results, report(results, run_dir, calibration.label()), tested_epoch)
    leave_process_group()
    return results


def test_figure_data(trainer: Trainer) -> dict[str, Any]:
    """The numbers of the test pictures (``reliability``, ``risk_coverage``) for results.json;
    none when the figures are off (``--figures false``: the callback keeps no sums)."""
    drawn = next((c for c in trainer.callbacks if isinstance(c, CalibrationFigures)), None)
    return drawn.test_figure_data() if drawn is not None else {}


def run_test(trainer: Trainer, model: Any, datamodule: Any, checkpoint: str) -> dict[str, float]:
    """The test metrics. A SIGTERM while testing ends the run with exit 143 and one line, and
    no results.json: Lightning stops after the batch in progress, and the metrics of part of
    the test set would read as the run's result."""
    try:
        return trainer.test(model, datamodule=datamodule, verbose=False)[0]
    except SIGTERMException:  # a SystemExit without a code: left alone, the run would exit 0
        if trainer.is_global_zero:
            print(sigterm_while_testing(checkpoint), file=sys.stderr)
        raise SystemExit(143) from None


def sigterm_while_testing(checkpoint: str) -> str:
    start = "terminated (SIGTERM) while testing: no results.json was written"
    if not checkpoint:
        return f"{start}, and the run saved no checkpoint (--trainer.enable_checkpointing false): train again"
    return (f"{start}; training is complete and {checkpoint} holds the model - test it with"
            f" python scripts/evaluate.py {checkpoint}")  # fmt: skip


def leave_process_group() -> None:
    """End a multi-process run's process group once every rank is done. Left to exit
    handlers, gloo's threads can abort a finished process ("terminate called without an active
    exception", seen on a busy machine); torchrun counts that node as failed, and the other
    node's torchrun then waits out its 300 s exit barrier."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def report(results: dict[str, Any], run_dir: Path | None, calibration_label: str) -> str:
    """results.json in the run directory, and the table on the terminal (returned)."""
    if run_dir is not None:
        atomic_write_json(run_dir / "results.json", results)
    checkpoint = results["checkpoint"]
    tested = f"checkpoint {checkpoint}" if checkpoint else "final weights (no checkpoint saved)"
    title = f"{results['dataset']} test set, {tested}"
    table = format_results(results["metrics"], calibration_label, title)
    print("\n" + table)
    if run_dir is not None:
        print(f"\nrun directory: {run_dir}  (tensorboard --logdir {run_dir.parent.parent})")
    return table


command = exit_on_user_error(main)
