"""evaluate --calibrators and selective prediction: numbers recomputed from the logits in numpy/sklearn.

The logits themselves (softcal.runs.split_logits) are first shown to be the ones evaluate's test
run scores; every table number is then recomputed here from them, with metric formulas written
in numpy - not with softcal.calibration.metrics, which the app uses.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from softcal.apps import calibrator_comparison
from softcal.apps.evaluate import main
from softcal.calibration.calibrators import ALL_METHODS_FOR_COMPARISON
from softcal.errors import SoftcalError
from softcal.runs.load import load_run
from softcal.runs.split_logits import split_logits

REPO = Path(__file__).resolve().parents[1]
BINS = 15
TINY32 = float(np.finfo(np.float32).tiny)


# ----------------------------------------------------------------------------- numpy references


def np_metrics(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> dict[str, float]:
    """accuracy, ECE, MCE, adaptive ECE, classwise ECE, NLL, Brier from their definitions."""
    n, k = probs.shape
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    index = np.clip((confidence * np.float32(bins)).astype(np.int64), 0, bins - 1)
    gaps = []
    ece = 0.0
    for b in range(bins):
        inside = index == b
        if inside.any():
            gap = abs(correct[inside].sum() - confidence[inside].astype(np.float64).sum())
            ece += gap / n
            gaps.append(gap / inside.sum())
    order = np.argsort(confidence, kind="stable")
    adaptive = sum(abs(correct[part].sum() - confidence[part].astype(np.float64).sum())
                   for part in np.array_split(order, min(bins, n))) / n  # fmt: skip
    classwise = []
    for c in range(k):
        p = probs[:, c]
        hits = (labels == c).astype(np.float64)
        cls_index = np.clip((p * np.float32(bins)).astype(np.int64), 0, bins - 1)
        total = sum(abs(hits[cls_index == b].sum() - p[cls_index == b].astype(np.float64).sum())
                    for b in range(bins))  # fmt: skip
        classwise.append(total / n)
    one_hot = np.eye(k)[labels]
    p_true = probs[np.arange(n), labels].astype(np.float64)
    return {
        "acc": correct.mean(), "ece": ece, "mce": max(gaps), "adaptive_ece": adaptive,
        "classwise_ece": float(np.mean(classwise)),
        "nll": float(-np.log(np.maximum(p_true, TINY32)).mean()),
        "brier": float(((probs.astype(np.float64) - one_hot) ** 2).sum(axis=1).mean()),
    }  # fmt: skip


def np_softmax(logits: np.ndarray, t: float = 1.0) -> np.ndarray:
    z = logits.astype(np.float64) / t
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_selective(confidence: np.ndarray, correct: np.ndarray) -> dict[str, float]:
    """AURC and friends by their definitions. A group of tied confidences is kept in a random
    order: risk(k) inside it is its expectation, the group's errors counted pro rata."""
    n = len(confidence)
    risk = np.empty(n)
    kept_before, errors_before = 0, 0.0
    for value in sorted(set(confidence.tolist()), reverse=True):
        group = confidence == value
        size, errors = int(group.sum()), float((1.0 - correct[group]).sum())
        for j in range(1, size + 1):
            risk[kept_before + j - 1] = (errors_before + j * errors / size) / (kept_before + j)
        kept_before, errors_before = kept_before + size, errors_before + errors
    kept = np.arange(1, n + 1)
    n_correct = int(correct.sum())
    best = np.where(kept > n_correct, (kept - n_correct) / kept, 0.0).mean()
    report = {"aurc": risk.mean(), "e_aurc": risk.mean() - best}
    for c in (80, 90, 95):
        report[f"risk_at_{c}"] = risk[math.ceil(c / 100 * n) - 1]
    both = 0 < n_correct < n
    report["misclassification_auroc"] = roc_auc_score(correct, confidence) if both else math.nan
    return report


# ----------------------------------------------------------------------------- one evaluation


@pytest.fixture(scope="module")
def logits(tiny_run: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    run = load_run(tiny_run, check_classes=True)
    return {split: split_logits(run, split) for split in ("val", "test")}


@pytest.fixture(scope="module")
def compared(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory):
    """evaluate --calibrators all, with every calibrator's fit and forward recorded."""
    out = tmp_path_factory.mktemp("calibrators")
    calls: dict[str, list] = {"fit": [], "forward": [], "calibrators": {}}
    real = calibrator_comparison.make_calibrator

    def spying(method: str, num_classes: int):
        calibrator = real(method, num_classes)
        fit, forward = calibrator.fit, calibrator.forward

        def recorded_fit(x, y):
            calls["fit"].append((method, x.clone(), y.clone()))
            return fit(x, y)

        def recorded_forward(x):
            calls["forward"].append((method, x.clone()))
            return forward(x)

        calibrator.fit, calibrator.forward = recorded_fit, recorded_forward
        calls["calibrators"][method] = calibrator
        return calibrator

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(calibrator_comparison, "make_calibrator", spying)
        (evaluation,) = main([str(tiny_run), "--calibrators", "all", "--out", str(out)])
    return out, calls, evaluation


def test_split_logits_are_the_logits_evaluate_scores(tiny_run: Path, logits, compared):
    out, _, evaluation = compared
    saved = json.loads((out / "metrics.json").read_text())["metrics"]
    trained = json.loads((tiny_run / "results.json").read_text())
    test_logits, test_labels = logits["test"]
    assert len(test_labels) == 200 and len(logits["val"][1]) == 100  # the tiny run's splits
    for t, stage in ((1.0, "test"), (trained["temperature"], "test_calibrated")):
        ours = np_metrics(np_softmax(test_logits.numpy(), t).astype(np.float32), test_labels.numpy())
        for name in ("acc", "ece", "nll", "brier"):
            assert ours[name] == pytest.approx(saved[f"{stage}/{name}"], abs=1e-5), (stage, name)
            assert ours[name] == pytest.approx(trained["metrics"][f"{stage}/{name}"], abs=1e-5)


def test_calibrators_are_fitted_on_validation_only(logits, compared):
    _, calls, _ = compared
    (val_logits, val_labels), (test_logits, _) = logits["val"], logits["test"]
    assert [m for m, *_ in calls["fit"]] == list(ALL_METHODS_FOR_COMPARISON)
    for method, x, y in calls["fit"]:
        assert torch.equal(x, val_logits) and torch.equal(y, val_labels), method
    # The test logits only ever go through the fitted calibrators.
    assert [m for m, _ in calls["forward"]] == list(ALL_METHODS_FOR_COMPARISON)
    for method, x in calls["forward"]:
        assert torch.equal(x, test_logits), method


def test_calibrator_table_equals_a_numpy_recomputation(logits, compared):
    out, calls, evaluation = compared
    saved = json.loads((out / "calibrators.json").read_text())
    rows = {row["method"]: row for row in saved["methods"]}
    assert [row["method"] for row in saved["methods"]] == ["uncalibrated", *ALL_METHODS_FOR_COMPARISON]
    assert saved["fitted_on"] == {"split": "val", "num_samples": 100}
    assert saved["scored_on"] == {"split": "test", "num_samples": 200}
    test_logits, test_labels = logits["test"]
    expected = {"uncalibrated": np_softmax(test_logits.numpy()).astype(np.float32)}
    for method, calibrator in calls["calibrators"].items():
        with torch.no_grad():
            expected[method] = calibrator(test_logits).numpy()
    for method, probs in expected.items():
        ours = np_metrics(probs, test_labels.numpy())
        for name, value in ours.items():
            assert rows[method]["metrics"][name] == pytest.approx(value, abs=1e-5), (method, name)
    # The first row is evaluate's own raw test metrics.
    for name in ("acc", "ece", "mce", "adaptive_ece", "classwise_ece", "nll", "brier"):
        expected = evaluation.metrics[f"test/{name}"]
        assert rows["uncalibrated"]["metrics"][name] == pytest.approx(expected, abs=1e-6)


def test_calibrator_files_and_printed_table(compared, capsys):
    out, calls, _ = compared
    markdown = (out / "calibrators.md").read_text()
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert table[0].split("|")[1:-1] == [" method ", " accuracy ", " ECE ", " MCE ", " adaptive ECE ",
                                         " classwise ECE ", " NLL ", " Brier "]  # fmt: skip
    assert [line.split("|")[1].strip() for line in table[2:]] == ["uncalibrated", *ALL_METHODS_FOR_COMPARISON]
    saved = json.loads((out / "calibrators.json").read_text())
    isotonic = next(r for r in saved["methods"] if r["method"] == "isotonic")
    row = next(line for line in table if line.startswith("| isotonic |")).split("|")
    assert row[3].strip() == f"{100 * isotonic['metrics']['ece']:.2f}%"  # the ECE column
    for method in ("uncalibrated", *ALL_METHODS_FOR_COMPARISON):
        with Image.open(out / "calibrators" / f"reliability_{method}.png") as image:
            assert image.format == "PNG" and min(image.size) >= 300


def test_selective_json_equals_a_numpy_recomputation(tiny_run: Path, logits, compared):
    out, _, evaluation = compared
    saved = json.loads((out / "selective.json").read_text())
    for stage, prefix in (("raw", "test"), ("calibrated", "test_calibrated")):  # evaluate's metrics
        for name in ("aurc", "e_aurc", "risk_at_80", "risk_at_90", "risk_at_95"):
            assert saved[stage][name] == pytest.approx(evaluation.metrics[f"{prefix}/{name}"], abs=1e-9)
    assert saved["num_samples"] == 200 and saved["split"] == "test"
    test_logits, test_labels = logits["test"]
    t = json.loads((tiny_run / "results.json").read_text())["temperature"]
    for stage, temperature in (("raw", 1.0), ("calibrated", t)):
        probs = np_softmax(test_logits.numpy(), temperature).astype(np.float32)
        correct = (probs.argmax(axis=1) == test_labels.numpy()).astype(np.float64)
        for name, value in np_selective(probs.max(axis=1).astype(np.float64), correct).items():
            if math.isnan(value):  # every test image right (or wrong): nothing to separate
                assert saved[stage][name] is None, (stage, name)
            else:
                assert saved[stage][name] == pytest.approx(value, abs=1e-6), (stage, name)
    assert saved["calibrated"]["label"] == f"calibrated (T = {t:.3f})"
    with Image.open(out / "risk_coverage.png") as image:
        assert image.format == "PNG"


def test_printed_tables(tiny_run: Path, tmp_path: Path, capsys):
    main([str(tiny_run), "--calibrators", "temperature,histogram", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    # The selective numbers are rows of evaluate's results table, the ones selective.json holds.
    selective = json.loads((tmp_path / "selective.json").read_text())
    aurc = next(line for line in printed.splitlines() if line.startswith("aurc ")).split()
    assert aurc[1:] == [f"{100 * selective[s]['aurc']:.3f}%" for s in ("raw", "calibrated")]
    lines = printed[printed.index("Post-hoc calibrators"):].splitlines()
    assert lines[1].split()[:3] == ["method", "accuracy", "ECE"]
    assert [line.split()[0] for line in lines[3:6]] == ["uncalibrated", "temperature", "histogram"]
    saved = json.loads((tmp_path / "calibrators.json").read_text())
    assert [r["method"] for r in saved["methods"]] == ["uncalibrated", "temperature", "histogram"]


@pytest.mark.parametrize("argv, message", [
    (["--calibrators", "bogus"], "--calibrators bogus: unknown method bogus; use all or a comma list of"),
    (["--calibrators", "all", "--split", "val"],
     "--calibrators fits on the validation split and scores on the test split; leave out --split val"),
])  # fmt: skip
def test_bad_calibrators_option_is_one_line(tiny_run: Path, argv: list[str], message: str):
    with pytest.raises(SoftcalError) as err:
        main([str(tiny_run), *argv])
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


@pytest.mark.parametrize("case", ["all correct", "all wrong"])
def test_selective_outputs_of_degenerate_predictions(tiny_run: Path, tmp_path: Path, case: str):
    """Every prediction right (or wrong): AURC is 0 (or 1), E-AURC 0, and the misclassification
    AUROC - nothing to separate - is null in selective.json, not a NaN strict JSON cannot hold."""
    from types import SimpleNamespace

    from softcal.apps.evaluation_analyses import selective_outputs

    labels = torch.arange(40) % 10
    target = labels if case == "all correct" else (labels + 1) % 10
    logits = 8 * torch.nn.functional.one_hot(target, 10).float() + torch.linspace(0, 1, 40)[:, None]
    state = {"run": load_run(tiny_run), "logits": logits, "labels": labels, "selective": {}}
    evaluation = SimpleNamespace(dataset="MNIST", split="test", checkpoint=Path("x.ckpt"))
    selective_outputs(evaluation, state, tmp_path)
    text = (tmp_path / "selective.json").read_text()
    assert "NaN" not in text
    saved = json.loads(text)
    for stage in ("raw", "calibrated"):
        risk = 0.0 if case == "all correct" else 1.0
        assert saved[stage]["aurc"] == pytest.approx(risk) and saved[stage]["e_aurc"] == pytest.approx(0.0)
        assert saved[stage]["risk_at_95"] == pytest.approx(risk)
        assert saved[stage]["misclassification_auroc"] is None
    assert (tmp_path / "risk_coverage.png").is_file()


def test_selective_outputs_with_errors_equal_numpy(tiny_run: Path, tmp_path: Path):
    """The tiny run gets every test image right; here logits with ~9% errors and tied
    confidences go through selective_outputs' own path (no callback pairs: from the logits)."""
    from types import SimpleNamespace

    from softcal.apps.evaluation_analyses import selective_outputs

    generator = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 10, (300,), generator=generator)
    logits = (torch.randn((300, 10), generator=generator)
              + 3 * torch.nn.functional.one_hot(labels, 10)).round(decimals=1)  # fmt: skip
    logits[200:] = logits[100:200]  # tied confidences, right for some rows and wrong for others
    run = load_run(tiny_run)
    state = {"run": run, "logits": logits, "labels": labels, "selective": {}}
    evaluation = SimpleNamespace(dataset="MNIST", split="test", checkpoint=Path("x.ckpt"))
    selective_outputs(evaluation, state, tmp_path)
    saved = json.loads((tmp_path / "selective.json").read_text())
    for stage, t in (("raw", 1.0), ("calibrated", run.temperature)):
        probs = np_softmax(logits.numpy(), t).astype(np.float32)
        correct = (probs.argmax(axis=1) == labels.numpy()).astype(np.float64)
        assert 0.5 < correct.mean() < 0.95  # errors to rank
        for name, value in np_selective(probs.max(axis=1).astype(np.float64), correct).items():
            assert saved[stage][name] == pytest.approx(value, abs=1e-6), (stage, name)
