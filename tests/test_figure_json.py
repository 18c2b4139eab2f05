"""The figures' numbers in the JSON files: the reliability bins and risk-coverage points that
results.json (training's test stage) and selective.json (evaluate) hold are those of the
pictures drawn beside them, and agree with a numpy recomputation from the logits.

Made-up logits, a third of their predictions wrong, with tied confidences (a third of the rows
repeat others' logits under other labels), so the curves have points to thin and risks to
check; no training.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from softcal.apps import train
from softcal.calibration import figures
from softcal.calibration.callbacks import CalibrationFigures
from softcal.evaluation.results import Confidences
from softcal.evaluation.selective_prediction import selective_outputs
from tests.figure_references import assert_curve, assert_reliability

N, K, BINS, T = 3000, 10, 15, 2.0


@pytest.fixture(scope="module")
def made_up() -> dict[str, Any]:
    """Labels and the float32 probabilities the code bins and ranks, raw and at T = 2."""
    generator = torch.Generator().manual_seed(5)
    labels = torch.randint(0, K, (N,), generator=generator)
    logits = 2 * torch.randn((N, K), generator=generator) + 6 * torch.nn.functional.one_hot(labels, K)
    logits[2000:] = logits[1000:2000]  # tied confidences, right for some rows and wrong for others
    probs = {"raw": torch.softmax(logits, dim=1), "calibrated": torch.softmax(logits / T, dim=1)}
    for t, p in ((1.0, probs["raw"]), (T, probs["calibrated"])):  # the softmax of the logits, nothing else
        z = logits.double().numpy() / t
        e = np.exp(z - z.max(axis=1, keepdims=True))
        np.testing.assert_allclose(p.numpy(), e / e.sum(axis=1, keepdims=True), atol=1e-6)
    return {"labels": labels, "probs": probs}


def top_label(probs: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(confidence as float64, correct) of the float32 probabilities, in numpy."""
    p = probs.numpy()
    return p.max(axis=1).astype(np.float64), p.argmax(axis=1) == labels.numpy()


def spy(monkeypatch: pytest.MonkeyPatch, name: str, drawn: list) -> None:
    """Record every figure ``figures.<name>`` draws (with its arguments)."""
    real = getattr(figures, name)

    def recording(*args, **kwargs):
        fig = real(*args, **kwargs)
        drawn.append((args, fig))
        return fig

    monkeypatch.setattr(figures, name, recording)


def run_test_stage(made_up: dict[str, Any], fitted: bool = True, logger: Any = None) -> CalibrationFigures:
    """A test stage of CalibrationFigures as a Trainer runs it, batch by batch; what it reads of
    the module and the Trainer made up. Nothing fitted: the calibrated stage gets the raw
    softmax (as Classifier's test_step gives it)."""
    callback = CalibrationFigures(n_bins=BINS)
    module = SimpleNamespace(device=torch.device("cpu"), calibration=SimpleNamespace(fitted=fitted),
                             hparams=SimpleNamespace(num_classes=K, class_names=None))  # fmt: skip
    trainer = SimpleNamespace(logger=logger, is_global_zero=True, current_epoch=0, global_step=0)
    raw, calibrated = made_up["probs"]["raw"], made_up["probs"]["calibrated" if fitted else "raw"]
    callback.on_test_epoch_start(trainer, module)
    for rows in torch.split(torch.arange(N), 1024):
        outputs = {"labels": made_up["labels"][rows],
                   "probabilities": {"test": raw[rows], "test_calibrated": calibrated[rows]}}  # fmt: skip
        callback.on_test_batch_end(trainer, module, outputs, None, 0)
    callback.on_test_epoch_end(trainer, module)
    return callback


def assert_drawn_diagram(fig: Any, data: dict[str, Any]) -> None:
    """The diagram shows the entry's numbers: the count panel's bars, each bin's accuracy line
    and the ECE in the title."""
    top, bottom = fig.axes
    filled = [i for i, n in enumerate(data["count"]) if n > 0]
    assert [p.get_height() for p in bottom.patches] == [data["count"][i] for i in filled]
    assert [s[0][1] for s in top.collections[0].get_segments()] == [data["accuracy"][i] for i in filled]
    assert f"ECE = {100 * data['ece']:.2f}%" in top.get_title()


def assert_drawn_curve(line: Any, points: dict[str, Any]) -> None:
    """The entry's points are points of the drawn curve, with the same values."""
    x, y = line.get_xdata(), line.get_ydata()
    at = np.searchsorted(x, points["coverage"])
    assert np.array_equal(x[at], points["coverage"])
    assert np.array_equal(y[at], 100 * np.asarray(points["risk"]))
    assert len(x) == points["num_points"]


def test_results_json_figure_data_is_the_drawn_figures_and_numpy(made_up, monkeypatch):
    diagrams, curves = [], []
    spy(monkeypatch, "reliability_diagram", diagrams)
    spy(monkeypatch, "risk_coverage_figure", curves)
    monkeypatch.setattr(figures, "to_rgb_array", lambda fig: np.zeros((1, 1, 3), np.uint8))  # no rendering
    for other in ("confidence_histogram", "confusion_matrix_figure"):  # not what the JSON holds
        monkeypatch.setattr(figures, other, lambda *args, **kwargs: None)
    logger = SimpleNamespace(experiment=SimpleNamespace(add_image=lambda *args, **kwargs: None))
    callback = run_test_stage(made_up, logger=logger)
    data = train.test_figure_data(SimpleNamespace(callbacks=[object(), callback]))  # what results.json gets
    assert json.loads(json.dumps(data, allow_nan=False)) == data  # strict JSON
    assert set(data) == {"reliability", "risk_coverage"} and set(data["reliability"]) == {"test"}
    (curve_args, curve_fig) = curves[0]
    for index, scaling in enumerate(("raw", "calibrated")):
        confidence, correct = top_label(made_up["probs"][scaling], made_up["labels"])
        bins, points = data["reliability"]["test"][scaling], data["risk_coverage"]["test"][scaling]
        assert_reliability(bins, made_up["probs"][scaling].numpy(), made_up["labels"].numpy(), BINS)
        assert_curve(points, confidence, correct)
        assert len(points["coverage"]) < points["num_points"]  # thinned
        assert_drawn_diagram(diagrams[index][1], bins)
        assert list(curve_args[0])[index].startswith(scaling)
        assert_drawn_curve(curve_fig.axes[0].lines[index], points)


def test_without_a_fitted_calibration_the_calibrated_bins_are_the_raw_ones(made_up):
    data = run_test_stage(made_up, fitted=False).test_figure_data()
    assert data["reliability"]["test"]["calibrated"] == data["reliability"]["test"]["raw"]
    assert data["risk_coverage"]["test"]["calibrated"] == data["risk_coverage"]["test"]["raw"]


def test_figures_off_leave_results_json_without_figure_data(made_up):
    callback = CalibrationFigures(enabled=False)
    assert train.test_figure_data(SimpleNamespace(callbacks=[callback])) == {}
    assert train.test_figure_data(SimpleNamespace(callbacks=[])) == {}


def test_selective_json_curves_are_the_drawn_curves_and_numpy(made_up, monkeypatch, tmp_path: Path):
    drawn = []
    spy(monkeypatch, "risk_coverage_figure", drawn)
    pairs = {}
    for scaling, probs in made_up["probs"].items():
        confidence, predicted = probs.max(dim=1)
        pairs[scaling] = Confidences(confidence, predicted == made_up["labels"])
    about = {"checkpoint": Path("x.ckpt"), "dataset": "MNIST", "split": "val"}
    _, record = selective_outputs(pairs, {"raw": "raw", "calibrated": "calibrated"}, about, tmp_path)
    saved = json.loads((tmp_path / "selective.json").read_text())
    assert saved == record and set(saved["risk_coverage"]) == {"val"}  # keyed by the split evaluated
    assert saved["raw"]["aurc"] == record["raw"]["aurc"]  # the report's keys as they were
    fig = drawn[0][1]
    for index, scaling in enumerate(("raw", "calibrated")):
        points = saved["risk_coverage"]["val"][scaling]
        assert_curve(points, *top_label(made_up["probs"][scaling], made_up["labels"]))
        assert_drawn_curve(fig.axes[0].lines[index], points)
