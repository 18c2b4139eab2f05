"""Conformal thresholds stored with the run (RunCalibration) and predict's ``--conformal-alpha``.

The stored thresholds must be :func:`softcal.conformal.fit_conformal`'s on the calibrated
validation probabilities, bit for bit, fitting them must leave everything the calibration did
before unchanged, and predict's sets must be the printed probabilities thresholded - checked here
from the probabilities predict prints, in numpy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from softcal.apps.predict import main as predict_main
from softcal.calibration.conformal_thresholds import STORED_ALPHAS, STORED_METHODS, ConformalThresholds
from softcal.calibration.run_calibration import RunCalibration
from softcal.conformal import fit_conformal
from softcal.data.readers import read_idx
from softcal.errors import SoftcalError
from softcal.evaluation.context import EvaluationContext
from softcal.model.module import Classifier
from softcal.runs.load import load_run
from softcal.runs.run_dirs import best_checkpoint
from tests.conftest import REPO, TINY
from tests.helpers import CALIBRATION_KEY


def _problem(k: int, n: int = 5000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Overconfident logits (N, K) of a problem with some confusion, and their labels."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, (n,), generator=generator)
    logits = 3 * torch.randn(n, k, generator=generator) + 5 * torch.nn.functional.one_hot(labels, k)
    return logits, labels


# ----------------------------------------------------------------------------- RunCalibration


@pytest.mark.parametrize(("k", "method"), [(10, "temperature"), (100, "temperature"), (10, "vector")])
def test_fit_stores_fit_conformal_on_the_calibrated_probabilities(k: int, method: str):
    logits, labels = _problem(k)
    calibration = RunCalibration(k)
    calibration.fit(logits, labels, method)
    calibrated = calibration.probabilities(logits)
    assert not torch.allclose(calibrated, torch.softmax(logits, dim=1), atol=1e-3), "calibration matters"
    stored = calibration.conformal_thresholds
    assert stored is not None
    assert stored.methods == list(STORED_METHODS) and stored.alphas == list(STORED_ALPHAS)
    for name in STORED_METHODS:
        for alpha in STORED_ALPHAS:
            want = fit_conformal(name, alpha, calibrated, labels)
            assert calibration.conformal(name, alpha).state() == want.state(), (name, alpha)
    assert calibration.conformal("raps", 0.1) is None and calibration.conformal("lac", 0.2) is None


def test_storing_thresholds_changes_nothing_the_calibration_did_before(monkeypatch):
    """Same T, same calibrator, same probabilities, and no random number drawn (training's
    shuffling and dropout continue exactly as without thresholds)."""
    logits, labels = _problem(10)
    with_thresholds = RunCalibration(10)
    rng = torch.random.get_rng_state()
    with_thresholds.fit(logits, labels, "vector")
    assert torch.equal(torch.random.get_rng_state(), rng), "no random draw"
    monkeypatch.setattr(ConformalThresholds, "fit", classmethod(lambda cls, probs, labels: None))
    without = RunCalibration(10)
    without.fit(logits, labels, "vector")
    assert without.conformal_thresholds is None and with_thresholds.conformal_thresholds is not None
    assert with_thresholds.temperature == without.temperature
    assert torch.equal(with_thresholds.probabilities(logits), without.probabilities(logits))
    assert with_thresholds.describe() == without.describe()


def test_thresholds_round_trip_and_go_with_the_calibration_they_belong_to():
    logits, labels = _problem(10, n=600)
    model = Classifier()
    model.calibration.fit(logits, labels)
    state = model.state_dict()[CALIBRATION_KEY]
    assert json.loads(json.dumps(state["conformal"])) == state["conformal"], "plain, JSON-safe values"
    copy = Classifier()
    copy.load_state_dict(model.state_dict())
    for name in STORED_METHODS:
        for alpha in STORED_ALPHAS:
            loaded, fitted = copy.calibration.conformal(name, alpha), model.calibration.conformal(name, alpha)
            assert loaded.state() == fitted.state()
    copy.calibration.use_temperature(1.5)  # another calibration: thresholds of the old one are stale
    assert copy.calibration.conformal_thresholds is None
    model.calibration.reset()  # a training epoch starts
    assert model.calibration.conformal("lac", 0.1) is None
    assert model.state_dict()[CALIBRATION_KEY]["conformal"] is None


def test_a_failed_fit_stores_no_thresholds_and_raises_nothing():
    logits, labels = _problem(10, n=200)
    calibration = RunCalibration(10)
    calibration.fit(logits * float("nan"), labels)  # a diverged net: training goes on
    assert calibration.conformal_thresholds is None
    calibration.fit(logits[:0], labels[:0])  # no validation rows
    assert calibration.conformal_thresholds is None


def test_an_older_checkpoint_without_the_entry_loads_with_no_thresholds():
    model = Classifier()
    model.calibration.fit(*_problem(10, n=300))
    state = model.state_dict()
    del state[CALIBRATION_KEY]["conformal"]  # what checkpoints held before thresholds were stored
    older = Classifier()
    older.load_state_dict(state)
    assert older.calibration.temperature == model.calibration.temperature
    assert older.calibration.conformal_thresholds is None


# ----------------------------------------------------------------------------- a trained run


def test_a_checkpoint_stores_the_thresholds_of_its_own_validation_split(tiny_run: Path):
    ctx = EvaluationContext.open(tiny_run)
    val = ctx.logits("val")
    with torch.no_grad():
        calibrated = ctx.calibration.probabilities(val.logits)
    for name in ("best", "last"):
        path = best_checkpoint(tiny_run) if name == "best" else tiny_run / "checkpoints" / "last.ckpt"
        stored = torch.load(path, weights_only=True)["state_dict"][CALIBRATION_KEY]["conformal"]
        keys = [(s["method"], s["alpha"]) for s in stored]
        assert keys == [(m, a) for m in STORED_METHODS for a in STORED_ALPHAS]
        for state in stored:
            assert state == fit_conformal(state["method"], state["alpha"], calibrated, val.labels).state()


@pytest.fixture(scope="module")
def digits(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The first 12 generated MNIST test digits as PNG files."""
    folder = tmp_path_factory.mktemp("digits")
    images = read_idx(mnist_root / "MNIST" / "raw" / "t10k-images-idx3-ubyte")[:12]
    for i, image in enumerate(images.numpy()):
        Image.fromarray(image).save(folder / f"digit{i:02d}.png")
    return sorted(folder.glob("*.png"))


def _predict_json(args: list[str], capsys) -> tuple[dict, str]:
    predict_main([*args, "--json"])
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


def _np_sets(method: str, probs: np.ndarray, threshold: object) -> np.ndarray:
    """The sets of the stored threshold(s), by definition: LAC {k : 1 - p_k <= q} (q per class
    for classwise_lac), APS the smallest prefix of the ranking with mass >= q."""
    q = np.array([np.inf if v == "inf" else v for v in threshold]) if isinstance(threshold, list) else (
        np.inf if threshold == "inf" else threshold)  # fmt: skip
    if method in ("lac", "classwise_lac"):
        return 1 - probs <= q
    order = np.argsort(-probs, axis=1, kind="stable")
    through = np.cumsum(np.take_along_axis(probs, order, axis=1), axis=1)
    above_sorted = np.concatenate([np.zeros((len(probs), 1)), through[:, :-1]], axis=1)
    above = np.empty_like(probs)
    np.put_along_axis(above, order, above_sorted, axis=1)
    return above < q


@pytest.mark.parametrize(("method", "alpha"),
                         [("lac", 0.1), ("lac", 0.05), ("aps", 0.05), ("classwise_lac", 0.1)])  # fmt: skip
def test_predict_sets_are_the_printed_probabilities_thresholded(method, alpha, tiny_run, digits, capsys):
    report, _ = _predict_json(["--ckpt", str(tiny_run), *map(str, digits), "--conformal-alpha", str(alpha),
                               "--conformal-method", method], capsys)  # fmt: skip
    stored = load_run(tiny_run).calibration.conformal(method, alpha)
    assert report["conformal"] == {
        "method": method, "alpha": alpha, "coverage_target": 1 - alpha,
        "threshold": stored.state()["threshold"], "n_calibration": 100,
        "fitted_on": "the calibrated probabilities of the run's validation split",
    }  # fmt: skip
    probs = np.array([p["probabilities"] for p in report["predictions"]], dtype=np.float64)
    want = _np_sets(method, probs, report["conformal"]["threshold"])
    for row, entry, inside in zip(probs, report["predictions"], want, strict=True):
        members = [c["index"] for c in entry["prediction_set"]]
        assert sorted(members) == np.flatnonzero(inside).tolist()
        shown = [c["probability"] for c in entry["prediction_set"]]
        assert shown == sorted(row[members].tolist(), reverse=True)
        assert all(c["class"] == str(c["index"]) for c in entry["prediction_set"])


def test_text_output_prints_each_set_under_its_top_k_line(tiny_run, digits, capsys):
    predict_main(["--ckpt", str(tiny_run), *map(str, digits[:3]), "--conformal-alpha", "0.05"])
    lines = capsys.readouterr().out.splitlines()[1:]
    assert len(lines) == 6
    for top, below in zip(lines[::2], lines[1::2], strict=True):
        assert top.startswith(str(digits[0].parent))
        assert below.lstrip().startswith("95% set (lac): ")
    report, _ = _predict_json(["--ckpt", str(tiny_run), str(digits[0])], capsys)
    assert "conformal" not in report and "prediction_set" not in report["predictions"][0], "only when asked"


def test_too_small_a_validation_split_is_a_warning(tiny_run, digits, capsys):
    """The tiny run holds out ~10 images per class: class-conditional LAC at 0.01 has no finite
    threshold for any class - every set is every class, and predict says so."""
    report, err = _predict_json(["--ckpt", str(tiny_run), str(digits[0]), "--conformal-alpha", "0.01",
                                 "--conformal-method", "classwise_lac"], capsys)  # fmt: skip
    assert len(report["predictions"][0]["prediction_set"]) == 10
    assert err.splitlines() == [
        "warning: the run's validation split was too small for classwise_lac at alpha 0.01 (99 images needed"
        " per class): 10 classes are in every prediction set"
    ]


# ----------------------------------------------------------------------------- bad input


def _error(args: list[str]) -> str:
    with pytest.raises(SoftcalError) as caught:
        predict_main(args)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


def _copy_run(run_dir: Path, dest: Path, conformal: object = "drop") -> Path:
    """A copy of the run whose checkpoint has no ``conformal`` entry ("drop": an older
    checkpoint) or the given one (None: stored nothing, as with --calibrate false)."""
    (dest / "checkpoints").mkdir(parents=True)
    shutil.copy(run_dir / "config.yaml", dest / "config.yaml")
    ckpt = torch.load(best_checkpoint(run_dir), map_location="cpu", weights_only=True)
    entry = ckpt["state_dict"][CALIBRATION_KEY]
    if conformal == "drop":
        del entry["conformal"]
    else:
        entry["conformal"] = conformal
    torch.save(ckpt, dest / "checkpoints" / "best.ckpt")
    return dest


@pytest.mark.parametrize("conformal", ["drop", None])
def test_a_run_without_thresholds_predicts_and_names_the_fix(conformal, tiny_run, digits, tmp_path, capsys):
    older = _copy_run(tiny_run, tmp_path / "older", conformal)
    report, _ = _predict_json(["--ckpt", str(older), str(digits[0])], capsys)  # loads, predicts
    assert report["temperature"] is not None
    assert _error(["--ckpt", str(older), str(digits[0]), "--conformal-alpha", "0.05"]) == (
        "best.ckpt stores no conformal thresholds (saved before runs stored them, mid-epoch, or trained with"
        f" --calibrate false); retrain the run to store them, or see prediction sets on its test split with"
        f" scripts/evaluate.py {older} --conformal"
    )


def test_an_alpha_or_method_that_is_not_stored_is_one_line(tiny_run, digits):
    name = best_checkpoint(tiny_run).name
    assert _error(["--ckpt", str(tiny_run), str(digits[0]), "--conformal-alpha", "0.2"]) == (
        f"{name} stores no lac thresholds at conformal alpha 0.2; it stores alpha 0.1, 0.05, 0.01 for lac,"
        " aps, classwise_lac; pass one of those alphas"
    )


def test_bad_conformal_options_are_refused_before_the_checkpoint_is_read(tmp_path, digits):
    missing = ["--ckpt", str(tmp_path / "no_run"), str(digits[0])]
    assert _error([*missing, "--conformal-alpha", "1.5"]) == (
        "conformal alpha '1.5' is outside (0, 1); give the miscoverage, e.g. 0.1 for 90% coverage"
    )
    assert _error([*missing, "--conformal-alpha", "0.1", "--conformal-method", "raps"]) == (
        "--conformal-method raps: runs store lac, aps, classwise_lac (the randomised methods would give an"
        " image another set on every call); evaluate.py RUN --conformal scores all five on the test split"
    )


@pytest.mark.slow
def test_a_run_trained_with_calibration_off_stores_no_thresholds(mnist_root, digits, tmp_path):
    from softcal.apps.train import main as train

    results = train(["--config", str(REPO / "configs" / "mnist.yaml"), *TINY, "--calibrate", "false",
                     "--figures", "false", "--data.init_args.root", str(mnist_root),
                     "--trainer.logger.init_args.save_dir", str(tmp_path)])  # fmt: skip
    run_dir = Path(results["run_dir"])
    for path in (run_dir / "checkpoints").glob("*.ckpt"):
        assert torch.load(path, weights_only=True)["state_dict"][CALIBRATION_KEY]["conformal"] is None
    message = _error(["--ckpt", str(run_dir), str(digits[0]), "--conformal-alpha", "0.1"])
    assert message.startswith(f"{best_checkpoint(run_dir).name} stores no conformal thresholds")
