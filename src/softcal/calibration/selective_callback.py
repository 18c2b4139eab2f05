"""Selective prediction at test, in the logged metrics and in TensorBoard.

At the end of testing, :class:`SelectivePrediction` logs AURC, E-AURC, the risk at 80/90/95%
coverage and the misclassification AUROC (``softcal.uncertainty.selective``) for the raw
softmax (``test/...``) and the calibrated one (``test_calibrated/...``), and draws both
risk-coverage curves in one picture. Unlike the binned metrics these rank every prediction, so
the callback keeps one confidence and one correct/wrong flag per test image (8 bytes each),
gathered from all processes before anything is computed.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch

from softcal.calibration.callbacks import gather_from_all_processes
from softcal.uncertainty.selective import risk_coverage_curve, selective_report

#: (stage, calibrated): the stages the callback reports, as the module's own test metrics do.
STAGES = (("test", False), ("test_calibrated", True))


class SelectivePrediction(L.Callback):
    """Selective-prediction metrics and a risk-coverage figure at the end of testing.

    Reads the ``{"logits", "labels"}`` each ``test_step`` returns; the confidence is the top
    softmax probability of ``pl_module.probabilities(logits, calibrated=...)``, so the
    calibrated stage follows whichever calibration the module stores. ``finished[stage]`` keeps
    ``{"confidence": float32, "correct": bool}`` (CPU, all processes, in test order per
    process) for pictures drawn elsewhere; ``reports[stage]`` the logged numbers. A metric that
    is NaN (misclassification AUROC when every prediction is right or every one wrong) is left
    out of the log rather than logged as NaN. ``draw=False`` logs the numbers without the
    picture (``--figures false``).
    """

    def __init__(self, draw: bool = True) -> None:
        self.draw = draw
        self._parts: dict[str, list[torch.Tensor]] = {}
        self.finished: dict[str, dict[str, torch.Tensor]] = {}
        self.reports: dict[str, dict[str, float]] = {}

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._parts = {stage: [] for stage, _ in STAGES}

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                          batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:  # fmt: skip
        if not (isinstance(outputs, dict) and "logits" in outputs):
            return
        logits, labels = outputs["logits"].detach(), outputs["labels"].detach()
        for stage, calibrated in STAGES:
            confidence, predicted = pl_module.probabilities(logits, calibrated=calibrated).max(dim=1)
            # one (N, 2) float tensor per batch: a single gather at the end carries both
            self._parts[stage].append(torch.stack([confidence.float(), (predicted == labels).float()], 1))

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        curves: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for stage, _ in STAGES:
            parts = self._parts.pop(stage, None)
            if parts is None:  # no test epoch started
                continue
            # a process with no test batches still joins the gather, with nothing
            mine = torch.cat(parts) if parts else torch.zeros((0, 2), device=pl_module.device)
            pairs = gather_from_all_processes(pl_module, mine).cpu()
            if len(pairs) == 0:
                continue
            confidence, correct = pairs[:, 0], pairs[:, 1] > 0.5
            self.finished[stage] = {"confidence": confidence, "correct": correct}
            report = self.reports[stage] = selective_report(confidence, correct)
            for name, value in report.items():
                if not math.isnan(value):  # every process holds the same gathered numbers
                    # float64: a float is logged as float32 (0.000125 as 0.00012500000594)
                    exact = torch.tensor(value, dtype=torch.float64)
                    pl_module.log(f"{stage}/{name}", exact, sync_dist=False)
            name = "raw" if stage == "test" else "calibrated"
            curves[f"{name} (AURC {100 * report['aurc']:.3g}%)"] = risk_coverage_curve(confidence, correct)
        experiment = getattr(trainer.logger, "experiment", None)
        if self.draw and curves and trainer.is_global_zero and hasattr(experiment, "add_image"):
            from softcal.calibration import figures  # matplotlib only when drawing

            where = f"test (epoch {trainer.current_epoch}, step {trainer.global_step})"
            fig = figures.risk_coverage_figure(curves, f"Risk-coverage curve, {where}")
            experiment.add_image("test/risk_coverage", figures.to_rgb_array(fig), trainer.global_step,
                                 dataformats="HWC")  # fmt: skip
