"""Lightning callbacks for calibration: fit the run's calibration, draw the pictures.

Both read what a LightningModule's ``validation_step`` / ``test_step`` return -
``{"logits": ..., "labels": ..., "probabilities": {stage: probs}}``, the probabilities each
stage was scored on - so they work in any Trainer with any module that does so. Fitting
collects the validation logits (:class:`_StepOutputs`, the one collector of step outputs);
the figures keep sums and pairs of the probabilities, not the outputs themselves.
The calibration lives in the module (``pl_module.calibration``), which makes it part of every
checkpoint the Trainer writes; nothing is rewritten afterwards.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torchmetrics import Metric
from torchmetrics.classification import MulticlassConfusionMatrix

from softcal.calibration.calibrators import METHODS
from softcal.calibration.figure_data import reliability_json, risk_coverage_json
from softcal.calibration.metrics import TopLabelBins
from softcal.uncertainty.selective import aurc, risk_coverage_curve
from softcal.uncertainty.selective_metrics import TopLabelPairs


def gather_from_all_processes(module: L.LightningModule, values: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor whose first dimension differs by process (evaluation shards do)."""
    if module.trainer.world_size == 1:
        return values
    sizes = module.all_gather(torch.tensor(len(values), device=values.device))
    padded = torch.zeros((int(sizes.max()), *values.shape[1:]), dtype=values.dtype, device=values.device)
    padded[: len(values)] = values
    everything = module.all_gather(padded)  # (world_size, max_size, ...)
    return torch.cat([part[: int(n)] for part, n in zip(everything, sizes, strict=True)])


class _StepOutputs(L.Callback):
    """Collects the (logits, labels) each validation step returns, on every process."""

    def __init__(self) -> None:
        self._logits: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._logits, self._labels = [], []

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:  # fmt: skip
        if not trainer.sanity_checking and isinstance(outputs, dict) and "logits" in outputs:
            self._logits.append(outputs["logits"].detach().float())
            self._labels.append(outputs["labels"].detach())


class FitCalibration(_StepOutputs):
    """Fit the run's calibration on the validation logits at the end of every validation.

    The module stores it (``pl_module.calibration``, a
    :class:`~softcal.calibration.run_calibration.RunCalibration`), so each checkpoint carries
    the calibration fitted for its own weights: the best checkpoint and ``last.ckpt`` never
    disagree about which weights it belongs to. When a training epoch starts it is marked "not
    fitted" again - the weights are about to move - so a checkpoint saved mid-epoch says so
    instead of carrying a stale fit. Every process fits the same calibration from the logits
    of all processes. T is fitted and logged (``val/temperature``) whatever the ``method``, so
    runs of any method can be compared on it.

    Args:
        method: temperature (default), vector, matrix, histogram, isotonic or top_label_beta
            (``--calibration.method``).
        enabled: False (``--calibration.enabled false``) makes the callback do nothing at all:
            it stays in the Trainer's list, as its config group says, and the module keeps
            "not fitted" (raw softmax).
    """

    def __init__(self, method: str = "temperature", enabled: bool = True) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown calibrator {method!r}; choose one of {', '.join(METHODS)}")
        self.method, self.enabled = method, enabled

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:  # fmt: skip
        if self.enabled:  # disabled: keep no logits (they would only cost memory)
            super().on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled:  # also one restored from a run resumed with another method is stale
            pl_module.calibration.reset()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled or trainer.sanity_checking or not self._logits:
            return
        logits = gather_from_all_processes(pl_module, torch.cat(self._logits))
        labels = gather_from_all_processes(pl_module, torch.cat(self._labels))
        self._logits, self._labels = [], []
        pl_module.calibration.fit(logits, labels, self.method)
        temperature = pl_module.calibration.temperature
        if temperature is not None:  # val/temperature per epoch: how overconfident it grows
            pl_module.log("val/temperature", temperature, sync_dist=False)


#: The test stages of the figures, by the scaling of the probabilities they were scored on.
TEST_STAGES = {"raw": "test", "calibrated": "test_calibrated"}


class CalibrationFigures(L.Callback):
    """Reliability diagram, confidence histogram and confusion matrix in TensorBoard, at the
    end of every validation and of testing (raw and, at test, calibrated by the run's method),
    and at test the risk-coverage curves of both (``test/risk_coverage``).

    Works from the probabilities each step returns (``outputs["probabilities"][stage]``, see
    :class:`softcal.model.module.Classifier`), never computing them again. Keeps its own
    per-bin sums and confusion counts (exact, constant in memory) and, at test, the
    (confidence, correct) pairs the curves rank (8 bytes a prediction), all gathered from every
    process when drawn. ``finished[stage]`` keeps the last drawn bin sums and ``confusion`` of
    each stage, ``pairs[stage]`` the last test's ``{"confidence": float32, "correct": bool}``
    (``test`` and ``test_calibrated``, in test order per process), for pictures made elsewhere;
    with no logger nothing is drawn, but both are still filled, and :meth:`test_figure_data`
    gives the test pictures' numbers for results.json. ``enabled=False``
    (``--figures.enabled false``) makes the callback do nothing: no sums, no pictures.
    """

    def __init__(self, n_bins: int = 15, enabled: bool = True) -> None:
        """
        Args:
            n_bins: equal-width confidence bins of the reliability diagram.
            enabled: draw at every validation and at test; false (``--figures.enabled false``):
                no sums, no pictures.
        """
        self.n_bins, self.enabled = n_bins, enabled
        self._state: dict[str, dict[str, Metric]] = {}
        self.finished: dict[str, dict[str, torch.Tensor]] = {}
        self.pairs: dict[str, dict[str, torch.Tensor]] = {}

    def _start(self, stage: str, pl_module: L.LightningModule, pictures: bool, ranked: bool) -> None:
        """Fresh state for a stage: bin sums and confusion counts for the pictures, the pairs for
        the risk-coverage curve. Made when the epoch starts, so a process that gets no batch
        still joins the gathering when the others draw."""
        state: dict[str, Metric] = {}
        if pictures:
            state["bins"] = TopLabelBins(self.n_bins)
            state["confusion"] = MulticlassConfusionMatrix(int(pl_module.hparams.num_classes))
        if ranked:
            state["pairs"] = TopLabelPairs()
        self._state[stage] = {part: metric.to(pl_module.device) for part, metric in state.items()}

    def _update(self, outputs: Any) -> None:
        if not (isinstance(outputs, dict) and "probabilities" in outputs):
            return
        for stage, probs in outputs["probabilities"].items():
            for metric in self._state.get(stage, {}).values():
                metric.update(probs, outputs["labels"])

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled and not trainer.sanity_checking:
            self._start("val", pl_module, pictures=True, ranked=False)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled:
            self._start("test", pl_module, pictures=True, ranked=True)
            # Calibrated pictures only of a fitted calibration; both curves, as the metrics are.
            self._start("test_calibrated", pl_module, pl_module.calibration.fitted, ranked=True)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:  # fmt: skip
        self._update(outputs)

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                          batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:  # fmt: skip
        self._update(outputs)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._draw(trainer, pl_module, ["val"])

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._draw(trainer, pl_module, ["test", "test_calibrated"])

    def last_test(self) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, dict[str, torch.Tensor]]]:
        """The last test's bin sums (with ``confusion``) and (confidence, correct) pairs, each
        keyed "raw" and "calibrated"; empty when nothing was tested. With nothing fitted the
        calibrated stage was scored on the raw softmax, so its bins are the raw ones."""
        raw = self.finished.get("test")
        bins = {} if raw is None else {"raw": raw, "calibrated": self.finished.get("test_calibrated", raw)}
        pairs = {scaling: self.pairs[stage] for scaling, stage in TEST_STAGES.items() if stage in self.pairs}
        return bins, pairs

    def test_figure_data(self) -> dict[str, Any]:
        """The numbers of the last test's pictures for a JSON file: ``reliability`` and
        ``risk_coverage`` of the test split, raw and calibrated (see
        :mod:`~softcal.calibration.figure_data`); {} when nothing was tested."""
        bins, pairs = self.last_test()
        curves = {scaling: risk_coverage_curve(kept["confidence"], kept["correct"])
                  for scaling, kept in pairs.items()}  # fmt: skip
        return {**(reliability_json("test", bins) if bins else {}),
                **(risk_coverage_json("test", curves) if curves else {})}  # fmt: skip

    def _draw(self, trainer: L.Trainer, pl_module: L.LightningModule, stages: list[str]) -> None:
        experiment = getattr(trainer.logger, "experiment", None)
        drawing = trainer.is_global_zero and hasattr(experiment, "add_image")
        when = f"(epoch {trainer.current_epoch}, step {trainer.global_step})"
        ranked: dict[str, dict[str, torch.Tensor]] = {}
        for stage in stages:
            state = self._state.pop(stage, None)
            if state is None:
                continue
            if "pairs" in state:  # computing gathers: every process, drawing or not
                ranked[stage] = {k: v.cpu() for k, v in state["pairs"].compute().items()}
            if "bins" not in state:
                continue
            bins, confusion = state["bins"].compute(), state["confusion"].compute()  # synced
            self.finished[stage] = {**{k: v.cpu() for k, v in bins.items()}, "confusion": confusion.cpu()}
            if drawing:
                names = pl_module.hparams.class_names
                for name, image in stage_images(bins, confusion, names, f"{stage} {when}"):
                    experiment.add_image(f"{stage}/{name}", image, trainer.global_step, dataformats="HWC")
        ranked = {stage: pairs for stage, pairs in ranked.items() if len(pairs["confidence"])}
        self.pairs.update(ranked)
        if drawing and ranked:
            image = risk_coverage_image(ranked, f"test {when}")
            experiment.add_image("test/risk_coverage", image, trainer.global_step, dataformats="HWC")


def stage_images(bins: dict[str, torch.Tensor], confusion: torch.Tensor,
                 class_names: list[str] | None, where: str) -> list[tuple[str, Any]]:  # fmt: skip
    """(tag, RGB array) for each picture of one stage."""
    from softcal.calibration import figures  # matplotlib is imported only when drawing

    made = [
        ("reliability_diagram",
         figures.reliability_diagram(**bins, title=f"Reliability diagram, {where}")),
        ("confidence_histogram",
         figures.confidence_histogram(**bins, title=f"Confidence histogram, {where}")),
        ("confusion_matrix", figures.confusion_matrix_figure(
            confusion, class_names or [], title=f"Confusion matrix, {where}")),
    ]  # fmt: skip
    return [(name, figures.to_rgb_array(fig)) for name, fig in made]


def risk_coverage_image(pairs: dict[str, dict[str, torch.Tensor]], where: str) -> Any:
    """The raw (``test``) and calibrated (``test_calibrated``) risk-coverage curves of the
    (confidence, correct) pairs, AURC in the legend, as one RGB array."""
    from softcal.calibration import figures  # matplotlib is imported only when drawing

    curves = {}
    for stage, kept in pairs.items():
        confidence, correct = kept["confidence"], kept["correct"]
        name = "calibrated" if stage.endswith("calibrated") else "raw"
        area = aurc(confidence, correct)
        curves[f"{name} (AURC {100 * area:.3g}%)"] = risk_coverage_curve(confidence, correct)
    return figures.to_rgb_array(figures.risk_coverage_figure(curves, f"Risk-coverage curve, {where}"))
