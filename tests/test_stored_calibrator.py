"""The calibrator a run stores (``--calibrator``): fitted at validation, carried by every
checkpoint, and used by the calibrated test metrics, predict and export.

Numbers are checked against implementations written here: vector scaling fitted with scipy's
L-BFGS-B on a numpy NLL, softmax, NLL and affine logit maps in numpy.
"""

from __future__ import annotations

import json
import shutil
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from softcal.apps.export import main as export_main
from softcal.apps.predict import main as predict_main
from softcal.calibration.calibrators import METHODS, make_calibrator
from softcal.calibration.run_calibration import RunCalibration
from softcal.errors import SoftcalError
from softcal.model.module import Classifier
from softcal.runs.checkpoints import load_weights
from softcal.runs.load import load_run
from softcal.runs.results_table import format_results
from softcal.runs.run_config import CalibratorName
from tests.conftest import REPO, TINY, run_script
from tests.helpers import collect_logits
from tests.synthetic_data import write_idx_dataset

SLOT_KEY = "calibration._extra_state"  # the one key the run's calibration is stored under


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _nll(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.mean(np.log(probs[np.arange(len(labels)), labels])))


def _fit_vector_scaling(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vector scaling, independently: (w, b) minimising the mean NLL of softmax(w * z + b),
    with the analytic gradient, by scipy's L-BFGS-B in float64."""
    n, k = logits.shape
    onehot = np.eye(k)[labels]

    def loss(params: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = params[:k], params[k:]
        p = _softmax(logits * w + b)
        value = -np.mean(np.log(p[np.arange(n), labels]))
        residual = (p - onehot) / n
        return value, np.concatenate([(residual * logits).sum(0), residual.sum(0)])

    start = np.concatenate([np.ones(k), np.zeros(k)])
    result = minimize(loss, start, jac=True, method="L-BFGS-B",
                      options={"maxiter": 5000, "gtol": 1e-12, "ftol": 1e-15})  # fmt: skip
    return result.x[:k], result.x[k:]


def _isotonic(val_logits: np.ndarray, val_labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """One-vs-rest isotonic regression, independently: per class sklearn's increasing map of
    p_k to 1[y = k] on validation, applied to ``probs`` (clipped), rows divided by their sums."""
    from sklearn.isotonic import IsotonicRegression

    val_probs = _softmax(val_logits)
    mapped = np.stack([
        IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
        .fit(val_probs[:, k], (val_labels == k).astype(float)).predict(probs[:, k])
        for k in range(probs.shape[1])
    ], axis=1)  # fmt: skip
    total = mapped.sum(1, keepdims=True)
    return np.where(total > 0, mapped / np.where(total > 0, total, 1.0), probs)


def _split_logits(run_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The best checkpoint's logits on one split, by collect_logits (no Lightning loop)."""
    run = load_run(run_dir)
    run.datamodule.setup("fit" if split == "val" else "test")
    logits, labels = collect_logits(run.model, [run.datamodule.splits[split]],
                                    run.datamodule.preprocess, torch.device("cpu"))  # fmt: skip
    return logits.double().numpy(), labels.numpy()


def _random_images(n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=generator)


# ----------------------------------------------------------------------------- no training


def test_the_cli_choices_are_the_library_methods():
    assert typing.get_args(CalibratorName) == METHODS


def test_an_unknown_calibrator_is_one_line():
    from softcal.apps.train import main as train

    for spelling in (["--calibrator", "platt"], ["--calibration.method=platt"]):  # the old one: an alias
        with pytest.raises(SoftcalError, match='"calibration.method": Expected a typing.Literal') as caught:
            train(spelling)
        assert "\n" not in str(caught.value) and "Got value: platt" in str(caught.value)
        assert str(caught.value) == (
            'bad config or argument: Parser key "calibration.method": Expected a'
            " typing.Literal['temperature', 'vector', 'matrix', 'histogram', 'isotonic', 'top_label_beta']."
            " Got value: platt"
            " (see --help)"
        )


def test_a_calibrator_without_calibration_is_one_line(tmp_path):
    from softcal.apps.train import main as train

    message = "--calibrator vector needs --calibrate true: with --calibrate false no calibrator is fitted"
    message += "; drop one of the two options$"
    with pytest.raises(SoftcalError, match=message):
        train(["--calibrate", "false", "--calibrator", "vector",
               "--trainer.logger.init_args.save_dir", str(tmp_path)])  # fmt: skip
    assert not any(tmp_path.iterdir()), "refused before any run directory was made"


@pytest.mark.slow
def test_the_stored_calibrator_computes_in_float32_under_bf16_autocast():
    """Lightning runs test_step under autocast with bf16-mixed (configs/cifar10.yaml): the
    calibrated metrics must be the float32 numbers predict and export give, not a bf16 matmul's."""
    logits, labels, calibrator = _fitted("matrix")
    calibration = RunCalibration(10)
    calibration.set(None, calibrator)
    expected = calibrator(5 * logits)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = calibration.probabilities(5 * logits)
    assert got.dtype == torch.float32 and torch.equal(got, expected)


def _fitted(method: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, object]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (300,), generator=generator)
    logits = torch.randn(300, 10, generator=generator) + 3 * torch.nn.functional.one_hot(labels, 10)
    return logits, labels, make_calibrator(method, 10).fit(logits, labels)


def test_the_calibration_is_one_state_dict_key_and_round_trips():
    model = Classifier()
    assert [k for k in model.state_dict() if "calibrat" in k or "temperature" in k] == [SLOT_KEY]
    assert model.state_dict()[SLOT_KEY] == {"temperature": None, "calibrator": None, "conformal": None}
    logits, _, calibrator = _fitted("vector")
    model.calibration.set(1.25, calibrator)
    state = model.state_dict()
    assert state[SLOT_KEY]["calibrator"]["method"] == "vector" and state[SLOT_KEY]["temperature"] == 1.25
    copy = Classifier()
    copy.load_state_dict(state)
    assert copy.calibration.method == "vector"
    w, b = calibrator.weight.numpy(), calibrator.bias.numpy()
    want = _softmax(logits.double().numpy() * w + b)
    np.testing.assert_allclose(copy.probabilities(logits).numpy(), want, atol=1e-6)
    raw = _softmax(logits.double().numpy())
    np.testing.assert_allclose(copy.probabilities(logits, calibrated=False).numpy(), raw, atol=1e-6)


def _old_keys(state: dict, temperature: float | None, stored: object = None) -> dict:
    """``state`` with the calibration in the keys checkpoints held before RunCalibration:
    ``temperature``/``temperature_fitted`` buffers, and another method in ``calibrator._extra_state``."""
    state = {k: v for k, v in state.items() if k != SLOT_KEY}
    state["temperature"] = torch.tensor(1.0 if temperature is None else temperature)
    state["temperature_fitted"] = torch.tensor(temperature is not None)
    if stored is not None:
        state["calibrator._extra_state"] = stored.get_extra_state()
    return state


def test_a_checkpoint_with_the_old_temperature_buffers_loads(tmp_path):
    state = _old_keys(Classifier().state_dict(), 1.5)  # a temperature-only run's checkpoint
    fresh = Classifier()
    fresh.calibration.set(None, _fitted("vector")[2])  # loading replaces whatever the model held
    load_weights(fresh, state, tmp_path / "old.ckpt")
    assert fresh.calibration.method == "temperature" and fresh.calibration.temperature == 1.5
    logits = torch.randn(5, 10)
    want = _softmax(logits.double().numpy() / 1.5)
    np.testing.assert_allclose(fresh.probabilities(logits).numpy(), want, atol=1e-6)
    assert torch.equal(fresh.probabilities(logits), torch.softmax(logits / torch.tensor(1.5), dim=1))
    unfitted = Classifier()
    load_weights(unfitted, _old_keys(Classifier().state_dict(), None), tmp_path / "old.ckpt")
    assert unfitted.calibration.method is None and unfitted.calibration.temperature is None


@pytest.mark.slow
def test_a_checkpoint_with_the_old_calibrator_slot_loads(tmp_path):
    logits, _, matrix = _fitted("matrix")
    fresh = Classifier()
    load_weights(fresh, _old_keys(Classifier().state_dict(), 1.5, matrix), tmp_path / "old.ckpt")
    assert fresh.calibration.method == "matrix" and fresh.calibration.temperature == 1.5
    assert torch.equal(fresh.probabilities(logits), matrix(logits))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["temperature", "vector"])
def test_a_training_epoch_marks_any_stored_calibrator_stale(method):
    from softcal.calibration.callbacks import FitCalibration

    model = Classifier()
    model.calibration.set(1.5, _fitted("matrix")[2])  # e.g. restored from a run resumed with another method
    FitCalibration(method).on_train_epoch_start(None, model)
    assert model.calibration.calibrator is None and model.calibration.method is None
    assert model.calibration.temperature is None


def test_results_summary_and_table_header_name_the_method():
    calibration = RunCalibration(10)
    assert calibration.summary() is None and calibration.label() == "T = 1, not fitted"
    assert calibration.describe() == "not fitted: raw softmax (T = 1)"
    calibration.use_temperature(1.25)
    description = "temperature scaling, T = 1.2500"
    assert calibration.summary() == {"method": "temperature", "description": description}
    assert calibration.label() == "T = 1.250"
    _, _, isotonic = _fitted("isotonic")
    calibration.set(1.25, isotonic)
    assert calibration.summary() == {"method": "isotonic", "description": isotonic.describe()}
    assert calibration.label() == "isotonic" and calibration.temperature == 1.25
    metrics = {"test/acc": 0.5, "test_calibrated/acc": 0.5}
    assert "calibrated (T = 1.250)" in format_results(metrics, "T = 1.250", "t")
    assert "calibrated (vector)" in format_results(metrics, "vector", "t")
    # a method name longer than the column keeps the columns apart, and the cells under it
    head, _, row = format_results(metrics, "top_label_beta", "t").splitlines()[1:]
    assert "(T = 1)  calibrated (top_label_beta)" in head and len(row) == len(head)


# ----------------------------------------------------------------------------- trained runs


def _train(root: Path, save_dir: Path, *extra: str) -> dict:
    from softcal.apps.train import main as train

    return train([
        "--config", str(REPO / "configs" / "mnist.yaml"), *TINY,
        "--trainer.limit_train_batches", "8", "--data.init_args.val_size", "200",
        "--data.init_args.root", str(root), "--trainer.logger.init_args.save_dir", str(save_dir),
        *extra,
    ])  # fmt: skip


NOISE = 0.25  # the fraction of labels replaced by a uniformly random class


@pytest.fixture(scope="module")
def noisy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generated MNIST set with a quarter of its train and test labels replaced at random.

    On the clean set a tiny net separates validation perfectly: vector scaling then has no
    minimum (w grows until the optimiser stops), every probability is 0 or 1, and any two fits
    agree on probabilities however different their parameters. Label noise puts rows no affine
    map of the logits can classify correctly, so the NLL has a unique finite minimum to compare.
    """
    root = tmp_path_factory.mktemp("noisy_mnist")
    raw = write_idx_dataset(root, "MNIST")
    rng = np.random.default_rng(7)
    for name in ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"):
        data = bytearray((raw / name).read_bytes())
        labels = np.frombuffer(bytes(data[8:]), dtype=np.uint8).copy()  # after the 8-byte IDX header
        flip = rng.random(len(labels)) < NOISE
        labels[flip] = rng.integers(0, 10, int(flip.sum()))
        (raw / name).write_bytes(bytes(data[:8]) + labels.tobytes())
    return root


@pytest.fixture(scope="module")
def runs(noisy_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """One tiny training per stored method, on noisy labels: results.json of each."""
    return {method: _train(noisy_root, tmp_path_factory.mktemp(method), "--calibrator", method)
            for method in ("vector", "matrix", "isotonic")}  # fmt: skip


@pytest.mark.slow
def test_vector_run_stores_the_vector_fit_of_its_own_validation_logits(runs):
    results = runs["vector"]
    run_dir = Path(results["run_dir"])
    assert results["calibrator"]["method"] == "vector"
    assert results["calibrator"]["description"].startswith("vector scaling")
    assert results["temperature"] is not None, "T is still fitted and reported"
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["calibrator"] == results["calibrator"]
    for name in (Path(results["checkpoint"]).name, "last.ckpt"):  # every checkpoint carries it
        state = torch.load(run_dir / "checkpoints" / name, weights_only=True)["state_dict"]
        assert state[SLOT_KEY]["calibrator"]["method"] == "vector"
    run = load_run(run_dir)
    assert run.calibration.method == "vector" and run.calibration.calibrator.method == "vector"
    # An independent vector-scaling fit on the best checkpoint's validation logits ...
    val_logits, val_labels = _split_logits(run_dir, "val")
    w, b = _fit_vector_scaling(val_logits, val_labels)
    test_logits, test_labels = _split_logits(run_dir, "test")
    want = _softmax(test_logits * w + b)
    # ... on data that is not separated: a finite minimum, probabilities well inside (0, 1).
    metrics = results["metrics"]
    assert _nll(_softmax(val_logits * w + b), val_labels) > 0.1
    assert metrics["test_calibrated/nll"] > 0.1 and metrics["test_calibrated/acc"] < 0.95
    assert np.median(want.max(1)) < 0.99 and want.max(1).min() < 0.9
    # ... has the stored parameters (b only up to a common shift: softmax ignores one),
    np.testing.assert_allclose(run.calibration.calibrator.weight.numpy(), w, rtol=1e-2)
    bias = run.calibration.calibrator.bias.numpy()
    np.testing.assert_allclose(bias - bias.mean(), b - b.mean(), rtol=1e-2, atol=1e-3)
    # ... gives the probabilities the stored calibrator gives after reloading,
    with torch.no_grad():
        got = run.model.probabilities(torch.from_numpy(test_logits).float()).double().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
    # ... and the test_calibrated metrics are computed with it (not with T).
    assert metrics["test_calibrated/nll"] == pytest.approx(_nll(want, test_labels), abs=1e-4)
    accuracy = float(np.mean(want.argmax(1) == test_labels))
    # float32 metric: 1e-6 is far below one row in 200 (0.005)
    assert metrics["test_calibrated/acc"] == pytest.approx(accuracy, abs=1e-6)
    t_scaled = _softmax(test_logits / results["temperature"])
    assert abs(_nll(t_scaled, test_labels) - metrics["test_calibrated/nll"]) > 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("method", ["vector", "isotonic"])
def test_predict_applies_the_stored_calibrator(method, runs, tmp_path, capsys):
    from PIL import Image

    run_dir = Path(runs[method]["run_dir"])
    # Noise, not digits: the generated digits are so easy that every calibration gives them
    # probabilities of 0 and 1; noise gets in-between ones, where methods differ.
    images = _random_images(5, seed=5)[:, 0]
    for i, image in enumerate(images.numpy()):
        Image.fromarray(image).save(tmp_path / f"digit{i}.png")
    report = predict_main(["--ckpt", str(run_dir), str(tmp_path)])
    out = capsys.readouterr().out
    assert report["calibration"]["method"] == method
    assert method in out.splitlines()[0]  # the line above the table names what is applied
    run = load_run(run_dir)
    with torch.no_grad():
        logits = run.model(run.datamodule.preprocess(images.unsqueeze(1), train=False))
    got = np.array([p["probabilities"] for p in report["predictions"]])
    if method == "vector":  # the stored numbers, applied in numpy
        w, b = run.calibration.calibrator.weight.numpy(), run.calibration.calibrator.bias.numpy()
        want = _softmax(logits.double().numpy() * w + b)
    else:  # sklearn's isotonic fit of the run's own validation set, in the test
        want = _isotonic(*_split_logits(run_dir, "val"), _softmax(logits.double().numpy()))
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert np.abs(got - _softmax(logits.double().numpy() / run.calibration.temperature)).max() > 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("method", ["vector", "matrix"])
def test_onnx_export_carries_vector_and_matrix_scaling(method, runs, tmp_path, capsys):
    import onnx
    import onnxruntime

    run_dir = Path(runs[method]["run_dir"])
    out = export_main(["--ckpt", str(run_dir), "--out", str(tmp_path / "model.onnx")])
    assert "max |difference|" in capsys.readouterr().out
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(out)).metadata_props}
    assert meta["calibration"] == method and method in meta["output"]
    run = load_run(run_dir)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    images = _random_images(7, seed=3)
    (got,) = session.run(None, {"images": (images.float() / 255).numpy()})
    with torch.no_grad():
        z = run.model(run.datamodule.preprocess(images, train=False)).double().numpy()
    w, b = run.calibration.calibrator.weight.numpy(), run.calibration.calibrator.bias.numpy()
    want = _softmax(z * w + b if method == "vector" else z @ w.T + b)
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.slow
def test_export_refuses_isotonic_in_one_line_and_exports_t_or_raw_on_request(runs, tmp_path, capsys):
    run_dir = Path(runs["isotonic"]["run_dir"])
    with pytest.raises(SoftcalError) as caught:
        export_main(["--ckpt", str(run_dir), "--out", str(tmp_path / "refused.onnx")])
    message = str(caught.value)
    assert "\n" not in message and "isotonic" in message
    assert "--calibrator temperature|vector|matrix|top_label_beta" in message
    assert "--calibration temperature" in message
    assert message.endswith(
        " stores isotonic calibration, which an exported graph cannot carry (only temperature, vector and"
        " matrix scaling and top-label beta calibration are logit transforms); export with --calibration"
        " temperature (its fitted T) or --calibration none (raw softmax), or train with --calibrator"
        " temperature|vector|matrix|top_label_beta"
    )
    assert not (tmp_path / "refused.onnx").exists()
    proc = run_script("export.py", "--ckpt", str(run_dir), "--out", str(tmp_path / "refused.onnx"))
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    import onnx
    import onnxruntime

    run = load_run(run_dir)
    images = _random_images(4, seed=4)
    with torch.no_grad():
        z = run.model(run.datamodule.preprocess(images, train=False)).double().numpy()
    t = run.calibration.temperature
    for calibration, want in (("temperature", _softmax(z / t)), ("none", _softmax(z))):
        out = export_main(["--ckpt", str(run_dir), "--calibration", calibration,
                           "--out", str(tmp_path / f"{calibration}.onnx")])  # fmt: skip
        meta = {p.key: json.loads(p.value) for p in onnx.load(str(out)).metadata_props}
        assert meta["calibration"] == (None if calibration == "none" else "temperature")
        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        (got,) = session.run(None, {"images": (images.float() / 255).numpy()})
        np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.slow
def test_default_run_keeps_the_temperature_path(tiny_run):
    results = json.loads((tiny_run / "results.json").read_text())
    assert results["calibrator"]["method"] == "temperature"
    state = torch.load(results["checkpoint"], weights_only=True)["state_dict"]
    assert "temperature" not in state and state[SLOT_KEY]["temperature"] == results["temperature"]
    assert state[SLOT_KEY]["calibrator"] == {"method": "temperature", "num_classes": 10, "fitted": True,
                                             "temperature": results["temperature"]}
    run = load_run(tiny_run)
    assert run.calibration.method == "temperature"
    test_logits, test_labels = _split_logits(tiny_run, "test")
    want = _softmax(test_logits / results["temperature"])
    assert results["metrics"]["test_calibrated/nll"] == pytest.approx(_nll(want, test_labels), abs=1e-4)


@pytest.mark.slow
def test_a_real_checkpoint_in_the_old_layout_loads_with_its_temperature(runs, tmp_path):
    source = Path(runs["vector"]["run_dir"])
    run_dir = tmp_path / "old_run"
    shutil.copytree(source, run_dir)
    best = run_dir / "checkpoints" / Path(runs["vector"]["checkpoint"]).name
    ckpt = torch.load(best, weights_only=True)
    # the layout of a temperature-only run before RunCalibration: T in two buffers, no slot
    ckpt["state_dict"] = _old_keys(ckpt["state_dict"], runs["vector"]["temperature"])
    torch.save(ckpt, best)
    run = load_run(best)
    assert run.calibration.method == "temperature"
    assert run.calibration.temperature == pytest.approx(runs["vector"]["temperature"])
    z = torch.randn(3, 10)
    want = _softmax(z.double().numpy() / run.calibration.temperature)
    np.testing.assert_allclose(run.model.probabilities(z).numpy(), want, atol=1e-6)


@pytest.mark.slow
def test_evaluate_scores_with_the_stored_calibrator(runs, tmp_path, capsys):
    from softcal.apps.evaluate import main as evaluate_main

    results = runs["vector"]
    (evaluation,) = evaluate_main([str(results["run_dir"]), "--out", str(tmp_path / "eval")])
    out = capsys.readouterr().out
    assert evaluation.calibration_method == "vector" and "calibrated (vector)" in out
    for name in ("acc", "nll", "ece"):  # the same checkpoint, the same calibrator as training's test
        key = f"test_calibrated/{name}"
        assert evaluation.metrics[key] == pytest.approx(results["metrics"][key], abs=1e-6)
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["calibration_method"] == "vector"
