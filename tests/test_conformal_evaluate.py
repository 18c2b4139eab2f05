"""evaluate --conformal: split conformal sets fitted on the run's validation split, scored on test.

The records are recomputed here from the run's validation and test logits with numpy (the
conformal quantile, LAC, class-conditional LAC and APS written from their definitions - not
with softcal.conformal), the files and figures are checked, and one slow test trains on real
MNIST and checks the guarantee at every alpha.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from softcal.apps.evaluate import main
from softcal.conformal import METHODS
from softcal.errors import SoftcalError
from softcal.evaluation.conformal_sets import ANALYSIS, KINDS
from softcal.evaluation.context import EvaluationContext
from softcal.evaluation.results import Evaluation
from tests.conftest import REPO

ALPHAS = (0.1, 0.05, 0.01)
FIGURES = ["coverage.png", *(f"set_sizes_{method}.png" for method in METHODS)]


# ----------------------------------------------------------------------------- numpy references


def np_rank(n: int, alpha: float) -> int:
    """k = ceil((n + 1)(1 - alpha)), with alpha read as the decimal it prints as."""
    return math.ceil((n + 1) * (1 - Fraction(str(alpha))))


def np_quantile(scores: np.ndarray, alpha: float) -> float:
    """The k-th smallest score, or +inf when k > n."""
    k = np_rank(len(scores), alpha)
    return math.inf if k > len(scores) else float(np.sort(scores)[k - 1])


def np_mass(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mass through, mass above) of every class: the classes sorted by probability, largest
    first, ties by class index."""
    order = np.argsort(-probs, axis=1, kind="stable")
    through_sorted = np.cumsum(np.take_along_axis(probs, order, axis=1), axis=1)
    above_sorted = np.concatenate([np.zeros((len(probs), 1)), through_sorted[:, :-1]], axis=1)
    through, above = np.empty_like(probs), np.empty_like(probs)
    np.put_along_axis(through, order, through_sorted, axis=1)
    np.put_along_axis(above, order, above_sorted, axis=1)
    return through, above


def np_sets(method: str, alpha: float, val: np.ndarray, val_labels: np.ndarray,
            test: np.ndarray) -> tuple[np.ndarray, object]:  # fmt: skip
    """(bool sets of the test rows, threshold(s)) of a deterministic method, by its definition."""
    rows = np.arange(len(val_labels))
    if method == "lac":
        q = np_quantile(1 - val[rows, val_labels], alpha)
        return 1 - test <= q, q
    if method == "classwise_lac":
        scores = 1 - val[rows, val_labels]
        q = np.array([np_quantile(scores[val_labels == c], alpha) for c in range(val.shape[1])])
        return 1 - test <= q[None, :], q
    assert method == "aps"
    q = np_quantile(np_mass(val)[0][rows, val_labels], alpha)
    return np_mass(test)[1] < q, q


def np_report(sets: np.ndarray, labels: np.ndarray) -> dict:
    covered = sets[np.arange(len(labels)), labels]
    sizes = sets.sum(axis=1)
    per_class = {c: covered[labels == c].mean() for c in np.unique(labels)}
    worst = min(per_class, key=lambda c: (per_class[c], c))
    return {
        "coverage": covered.mean(), "mean_set_size": sizes.mean(),
        "singleton_rate": (sizes == 1).mean(), "empty_rate": (sizes == 0).mean(),
        "coverage_by_set_size": {str(s): {"count": int((sizes == s).sum()),
                                          "coverage": covered[sizes == s].mean()} for s in np.unique(sizes)},
        "worst_class": int(worst), "worst_class_coverage": per_class[worst],
    }  # fmt: skip


def np_softmax(logits: np.ndarray, t: float = 1.0) -> np.ndarray:
    z = logits.astype(np.float64) / t
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _threshold(value: object) -> object:
    """A stored threshold as numbers: "inf" is +inf, lists become arrays."""
    if isinstance(value, list):
        return np.array([_threshold(v) for v in value], dtype=np.float64)
    return math.inf if value == "inf" else float(value)


# ----------------------------------------------------------------------------- one evaluation


@pytest.fixture(scope="module")
def evaluated(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """evaluate --conformal on the tiny run; its printed output, files and the run's logits."""
    out = tmp_path_factory.mktemp("conformal")
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        (evaluation,) = main([str(tiny_run), "--conformal", "--out", str(out)])
    ctx = EvaluationContext.open(tiny_run)
    return {"out": out, "printed": buffer.getvalue(), "evaluation": evaluation,
            "record": json.loads((out / "conformal.json").read_text()),
            "val": ctx.logits("val"), "test": ctx.logits("test"), "calibration": ctx.calibration}  # fmt: skip


@pytest.mark.slow
def test_every_method_alpha_and_kind_has_a_record_and_the_files_exist(evaluated):
    record, out = evaluated["record"], evaluated["out"]
    keys = [(r["alpha"], r["method"], r["probabilities"]) for r in record["records"]]
    assert keys == [(a, m, k) for a in ALPHAS for m in METHODS for k in KINDS]
    assert record["fitted_on"] == {"split": "val", "num_samples": len(evaluated["val"].labels)}
    assert record["scored_on"] == {"split": "test", "num_samples": len(evaluated["test"].labels)}
    for r in record["records"]:
        assert r["target_coverage"] == pytest.approx(1 - r["alpha"])
        assert set(r) >= {"coverage", "mean_set_size", "singleton_rate", "empty_rate", "coverage_by_set_size",
                          "worst_class", "worst_class_name", "worst_class_coverage", "threshold"}  # fmt: skip
        assert r["worst_class_name"] == evaluated["evaluation"].class_names[r["worst_class"]]
    conformal = next(a for a in evaluated["evaluation"].analyses if a.name == "conformal")
    assert [p.relative_to(out).as_posix() for p in conformal.files] == [
        "conformal.json", "conformal.md", *(f"conformal/{name}" for name in FIGURES)]  # fmt: skip
    for name in FIGURES:
        with Image.open(out / "conformal" / name) as image:
            assert image.size[0] > 500 and image.size[1] > 250
    markdown = (out / "conformal.md").read_text()
    assert markdown.count("| method ") == 3 and "alpha = 0.05: coverage target 95.00%" in markdown
    assert markdown.rstrip("\n") in evaluated["printed"], "the printed table is conformal.md's"
    assert not list(out.rglob(".*.tmp")), "every file written through the atomic writer, none left half-done"


def check_against_numpy(records: list[dict], val, test, calibration) -> None:
    """The thresholds and every number of the deterministic methods' records, recomputed in
    numpy from the probabilities of the val/test logits: exactly equal. The probabilities are
    the code's float32 ones, shown first to be a float64 softmax of the logits (divided by the
    checkpoint's T for "calibrated") to 1e-6 - a recomputation of the sets from that float64
    softmax would differ where probabilities saturate (float32 rounds p = 1 - 1e-11 to 1)."""
    by_key = {(r["alpha"], r["method"], r["probabilities"]): r for r in records}
    t = calibration.temperature
    assert t is not None and abs(t - 1) > 1e-3, "raw and calibrated must differ to be told apart"
    y_val, y_test = val.labels.numpy(), test.labels.numpy()
    for kind in KINDS:
        scale = t if kind == "calibrated" else 1.0
        with torch.no_grad():
            p_val, p_test = (calibration.probabilities(split.logits, calibrated=kind == "calibrated")
                             .double().numpy() for split in (val, test))  # fmt: skip
        np.testing.assert_allclose(p_val, np_softmax(val.logits.numpy(), scale), atol=1e-6)
        np.testing.assert_allclose(p_test, np_softmax(test.logits.numpy(), scale), atol=1e-6)
        for alpha in ALPHAS:
            for method in ("lac", "aps", "classwise_lac"):
                got = by_key[alpha, method, kind]
                sets, q = np_sets(method, alpha, p_val, y_val, p_test)
                np.testing.assert_array_equal(_threshold(got["threshold"]), q)
                assert got["n_calibration"] == len(y_val)
                for key, value in np_report(sets, y_test).items():
                    assert got[key] == value, (method, alpha, kind, key)


@pytest.mark.slow
def test_lac_aps_and_classwise_records_equal_a_numpy_recomputation(evaluated):
    check_against_numpy(evaluated["record"]["records"], evaluated["val"], evaluated["test"],
                        evaluated["calibration"])  # fmt: skip


@pytest.mark.slow
def test_a_rerun_gives_the_same_numbers(tiny_run: Path, evaluated, tmp_path: Path):
    """The randomised methods draw from a fixed seed: evaluate twice, the same conformal.json."""
    main([str(tiny_run), "--conformal", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "conformal.json").read_text())["records"] == evaluated["record"]["records"]


class EnsembleLikeContext:
    """Only what the context interface promises: no ``run``, no ``tested`` - the shape an
    ensemble context of several runs has."""

    def __init__(self, ctx: EvaluationContext) -> None:
        self._ctx, self.dataset, self.calibration = ctx, "MNIST-format ensemble", ctx.calibration
        self._evaluation = ctx.evaluation()

    def logits(self, split: str | None = None):
        return self._ctx.logits(split)

    def evaluation(self) -> Evaluation:
        return self._evaluation


@pytest.mark.slow
def test_the_analysis_needs_only_the_context_interface(tiny_run: Path, evaluated, tmp_path: Path):
    args = argparse.Namespace(conformal=True, alpha=None, split="test")
    ANALYSIS.check(args)
    result = ANALYSIS.run(EnsembleLikeContext(EvaluationContext.open(tiny_run)), tmp_path, args)
    assert result.record["dataset"] == "MNIST-format ensemble"
    assert result.record["records"] == evaluated["record"]["records"]


# ----------------------------------------------------------------------------- bad input


def _error(args: list[str]) -> str:
    with pytest.raises(SoftcalError) as caught:
        main(args)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


def test_bad_conformal_options_are_one_line_before_any_checkpoint_is_read(tmp_path: Path):
    missing = str(tmp_path / "no_run")  # never opened: the options are refused first
    assert _error([missing, "--conformal", "--alpha", "0.1,1.5"]) == (
        "conformal alpha '1.5' is outside (0, 1); give the miscoverage, e.g. 0.1 for 90% coverage"
    )
    assert _error([missing, "--conformal", "--alpha", "0"]) == (
        "conformal alpha '0' is outside (0, 1); give the miscoverage, e.g. 0.1 for 90% coverage"
    )
    assert _error([missing, "--alpha", "0.2"]) == (
        "--alpha 0.2 sets the conformal miscoverage; add --conformal"
    )
    assert _error([missing, "--conformal", "--split", "val"]) == (
        "--conformal fits on the validation split and scores on the test split; leave out --split val"
    )


@pytest.mark.slow
def test_a_validation_split_too_small_for_alpha_is_one_line(tiny_run: Path, tmp_path: Path):
    # the tiny run holds out 100 validation images: alpha 0.01 needs 99, alpha 0.005 needs 199
    assert _error([str(tiny_run), "--conformal", "--alpha", "0.1,0.005", "--out", str(tmp_path)]) == (
        "--alpha 0.005 needs at least 199 validation images (ceil(1/alpha) - 1) for a finite conformal"
        " threshold, the run's validation split has 100; use a larger alpha or retrain with a larger"
        " data.val_size"
    )
    assert not (tmp_path / "conformal.json").exists()


@pytest.mark.slow
def test_classes_with_too_few_validation_images_are_named_in_the_table(evaluated):
    """At alpha 0.01 class-conditional LAC needs 99 images per class: the tiny run has ~10, so
    every class gets +inf (in every set) - recorded and said, not hidden."""
    records = evaluated["record"]["records"]
    worst = [r for r in records if r["method"] == "classwise_lac" and r["alpha"] == 0.01]
    assert all(r["infinite_thresholds"] == 10 and r["coverage"] == 1.0 for r in worst)
    assert (
        "- classwise_lac at alpha 0.01 (raw): 10 classes had fewer than 99 validation images - in every set"
    ) in evaluated["printed"]


def test_a_run_always_has_a_validation_split(tmp_path: Path):
    """val_size 0 is refused when the datamodule is built (train, evaluate and predict build it
    the same way), so every run evaluate opens has a validation split to fit on."""
    from softcal.data import MNISTDataModule

    with pytest.raises(SoftcalError) as caught:
        MNISTDataModule(root=str(tmp_path), val_size=0)
    assert str(caught.value) == (
        "data.init_args.val_size=0 is impossible: it must be a number above 0 (e.g."
        " --data.init_args.val_size 0.1)"
    )


# ----------------------------------------------------------------------------- real MNIST


def _real_mnist_root() -> Path:
    root = Path(os.environ.get("SOFTCAL_DATA_ROOT") or "data")
    if not (root / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        pytest.skip(f"real MNIST not found under {root}/MNIST/raw (set SOFTCAL_DATA_ROOT)")
    return root


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of the MNIST config on real MNIST (30 batches of 128: ~89% accuracy), its whole
    validation split (5,000) and test set (10,000) evaluated."""
    from softcal.apps.train import main as train

    root = _real_mnist_root()
    results = train([
        "--config", str(REPO / "configs" / "mnist.yaml"), "--config", str(REPO / "configs" / "smoke.yaml"),
        "--trainer.limit_train_batches", "30", "--data.init_args.batch_size", "128",
        "--trainer.limit_val_batches", "1.0", "--trainer.limit_test_batches", "1.0",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--figures", "false", "--data.init_args.root", str(root),
        "--trainer.logger.init_args.save_dir", str(tmp_path_factory.mktemp("mnist_runs")),
    ])  # fmt: skip
    return Path(results["run_dir"])


@pytest.mark.slow
def test_real_mnist_sets_cover_at_every_alpha(mnist_run: Path, tmp_path: Path):
    (evaluation,) = main([str(mnist_run), "--conformal", "--out", str(tmp_path)])
    assert evaluation.metrics["test/acc"] > 0.8, "a sensible net"
    record = json.loads((tmp_path / "conformal.json").read_text())
    assert record["fitted_on"]["num_samples"] == 5000 and record["scored_on"]["num_samples"] == 10000
    records = record["records"]
    assert {r["method"] for r in records} >= {"lac", "aps", "raps", "classwise_lac"}
    assert sorted({r["alpha"] for r in records}) == sorted(ALPHAS)
    for r in records:
        assert r["coverage"] >= 1 - r["alpha"] - 0.01, r
        assert r["infinite_thresholds"] == 0, r
    lac = {(r["alpha"], r["probabilities"]): r for r in records if r["method"] == "lac"}
    assert lac[0.1, "calibrated"]["mean_set_size"] < lac[0.01, "calibrated"]["mean_set_size"]
    ctx = EvaluationContext.open(mnist_run)
    check_against_numpy(records, ctx.logits("val"), ctx.logits("test"), ctx.calibration)


@pytest.mark.slow
def test_with_shift_the_clean_predictors_are_scored_on_every_corrupted_set(tiny_run: Path, tmp_path: Path):
    """--conformal --shift: the predictors fitted on the clean validation split, applied to each
    corrupted set; LAC's coverage per set equals numpy's LAC on that set's probabilities."""
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        main([str(tiny_run), "--conformal", "--alpha", "0.1", "--shift", "gaussian_noise,contrast",
              "--shift-severities", "1,5", "--shift-samples", "40", "--out", str(tmp_path)])  # fmt: skip
    shifted = json.loads((tmp_path / "conformal.json").read_text())["conformal_shift"]
    assert len(shifted) == 5 * 2 * 2  # methods x kinds x severities, one alpha
    assert "Coverage under shift" in printed.getvalue()
    ctx = EvaluationContext.open(tiny_run)
    val = ctx.logits("val")
    for record in shifted:
        values = list(record["by_corruption"].values())
        assert sorted(record["by_corruption"]) == ["contrast", "gaussian_noise"]
        assert record["mean_coverage"] == pytest.approx(sum(values) / 2)
        assert record["min_coverage"] == min(values)
        if record["method"] != "lac":
            continue
        calibrated = record["probabilities"] == "calibrated"
        with torch.no_grad():
            p_val = ctx.calibration.probabilities(val.logits, calibrated=calibrated).double().numpy()
        for corruption, coverage in record["by_corruption"].items():
            test = ctx.shifted_logits(corruption, record["severity"], 40)
            with torch.no_grad():
                p_test = ctx.calibration.probabilities(test.logits, calibrated=calibrated).double().numpy()
            sets, _ = np_sets("lac", 0.1, p_val, val.labels.numpy(), p_test)
            assert coverage == pytest.approx(np_report(sets, test.labels.numpy())["coverage"], abs=1e-12)
