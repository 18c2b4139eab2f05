"""evaluate --ensemble: the members' mean probability evaluated as one model, every number
recomputed here from the members' own logits (one plain forward pass each, no Trainer, no
softcal.evaluation), its temperature refitted with scipy on the validation images both members
held out, found here by their pixels; through selective prediction, --ood and --shift; the
members' passes shared, not repeated; and the refusals, one line each."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar
from sklearn.metrics import roc_auc_score

from softcal.apps.evaluate import main, parse_args
from softcal.errors import SoftcalError
from softcal.evaluation.context import EvaluationContext
from softcal.evaluation.ensemble import EnsembleContext, check_members
from softcal.evaluation.ood_sets import noise_images
from softcal.evaluation.results import SplitLogits
from softcal.evaluation.scored_logits import scored_pass
from softcal.runs.load import load_run
from softcal.shift.corruptions import corrupt
from tests.conftest import FEW_STEPS_WITH_ERRORS, REPO, TINY, run_script
from tests.synthetic_data import write_idx_dataset

# ----------------------------------------------------------------------------- references


def softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def np_metrics(p: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict[str, float]:
    confidence, correct = p.max(axis=1), p.argmax(axis=1) == labels
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    gaps = [abs(correct[bins == b].sum() - confidence[bins == b].sum()) for b in range(n_bins)]
    picked = np.maximum(p[np.arange(len(labels)), labels], np.finfo(np.float32).tiny)
    return {"acc": correct.mean(), "ece": sum(gaps) / len(labels), "nll": -np.log(picked).mean(),
            "brier": ((p - np.eye(p.shape[1])[labels]) ** 2).sum(axis=1).mean()}  # fmt: skip


def plain_probs(run, images: torch.Tensor) -> np.ndarray:
    """softmax of the model on uint8 images, one forward pass outside any Trainer."""
    with torch.no_grad():
        return softmax(run.model.cpu()(run.datamodule.preprocess(images)).float().numpy())


def scaled(p: np.ndarray, t: float) -> np.ndarray:
    """The averaged probabilities temperature-scaled: softmax(log p / T)."""
    return softmax(np.log(np.maximum(p, np.finfo(np.float32).tiny)) / t)


def fit_t(p: np.ndarray, labels: np.ndarray) -> float:
    """T minimising the NLL of softmax(log p / T), by scipy on log T."""

    def nll(log_t: float) -> float:
        return -np.log(scaled(p, np.exp(log_t))[np.arange(len(labels)), labels]).mean()

    return float(np.exp(minimize_scalar(nll, bounds=(-4, 4), method="bounded", options={"xatol": 1e-9}).x))


def common_validation(runs: list) -> tuple[np.ndarray, np.ndarray]:
    """The mean probability of the members on the validation images all of them held out (in
    the first one's order), found by pixels and label; and their labels."""
    found = []
    for run in runs:
        run.datamodule.setup("fit")
        images, labels = run.datamodule.splits["val"]
        keys = [(image.numpy().tobytes(), int(label)) for image, label in zip(images, labels, strict=True)]
        found.append((plain_probs(run, images), dict(zip(keys, range(len(keys)), strict=True)), keys))
    common = [key for key in found[0][2] if all(key in rows for _, rows, _ in found[1:])]
    mean = np.mean([probs[[rows[key] for key in common]] for probs, rows, _ in found], axis=0)
    return mean, np.array([label for _, label in common])


# ----------------------------------------------------------------------------- two tiny members


def _train(root: Path, save_dir: Path, *extra: str, config: str = "mnist.yaml") -> Path:
    from softcal.apps.train import main as train

    results = train(["--config", str(REPO / "configs" / config), *TINY, "--trainer.limit_train_batches", "8",
                     "--data.init_args.root", str(root), "--trainer.logger.init_args.save_dir", str(save_dir),
                     *extra])  # fmt: skip
    return Path(results["run_dir"])


@pytest.fixture(scope="module")
def members(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two tiny members, seeds 0 and 2: their weights and validation splits (300 of the 600
    training images each, so about 150 in common) differ. Four steps leave them 60-70%
    accurate: errors to calibrate on (the 8-step fixture run makes none)."""
    save_dir = tmp_path_factory.mktemp("members")
    return tuple(_train(mnist_root, save_dir, "--trainer.limit_train_batches", "4", "--seed_everything", seed,
                        "--data.init_args.val_size", "300", *FEW_STEPS_WITH_ERRORS)
                 for seed in ("0", "2"))  # fmt: skip


@pytest.fixture(scope="module")
def ensembled(members: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory):
    tiny_run, second_run = members
    out = tmp_path_factory.mktemp("ensemble")
    printed, warned = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(warned):
        evaluations = main([str(tiny_run), str(second_run), "--ensemble", "--out", str(out),
                            "--ood", "uniform-noise", "--shift", "contrast,fog", "--shift-severities", "1,5",
                            "--shift-samples", "60"])  # fmt: skip
    runs = [load_run(path, check_classes=True) for path in (tiny_run, second_run)]
    runs[0].datamodule.setup("test")
    images, labels = runs[0].datamodule.splits["test"]
    probs = np.mean([plain_probs(run, images) for run in runs], axis=0)
    return out, evaluations, printed.getvalue(), warned.getvalue(), runs, probs, labels.numpy()


def _saved(out: Path, name: str) -> dict:
    return json.loads((out / "ensemble" / name).read_text())


@pytest.mark.slow
def test_raw_probabilities_are_the_members_mean(ensembled, members: tuple[Path, Path]):
    out, evaluations, printed, *_, probs, labels = ensembled
    metrics = _saved(out, "metrics.json")["metrics"]
    for name, value in np_metrics(probs, labels).items():
        assert metrics[f"test/{name}"] == pytest.approx(value, abs=1e-5), name
    contexts = [EvaluationContext(load_run(path, check_classes=True)) for path in members]
    ensemble = EnsembleContext(contexts)
    logits = ensemble.logits().logits
    mean = torch.stack([torch.softmax(m.logits().logits.double(), 1) for m in contexts]).mean(0)
    assert torch.allclose(torch.softmax(logits.double(), 1), mean, atol=1e-6)  # the members' own logits
    raw = ensemble.calibration.probabilities(logits, calibrated=False)
    assert torch.allclose(raw.double(), mean, atol=1e-6)
    assert len(evaluations) == 3 and evaluations[-1].out_dir == out / "ensemble"
    assert "ensemble of 2 (mean probability)" in printed
    assert f"to {out}/ensemble (the ensemble of 2)" in printed


@pytest.mark.slow
def test_temperature_is_an_independent_fit_on_the_common_validation_images(ensembled):
    out, _, _, warned, runs, probs, labels = ensembled
    described = _saved(out, "ensemble.json")
    val_probs, val_labels = common_validation(runs)
    assert 100 < len(val_labels) < 200 and described["fitted_on"]["num_images"] == len(val_labels)
    assert described["fitted_on"]["members_num_images"] == [300, 300]
    assert (val_probs.argmax(1) != val_labels).sum() > 10  # errors: T is not driven to a bound
    assert described["temperature"] == pytest.approx(fit_t(val_probs, val_labels), rel=1e-4)
    assert (f"note: the ensemble's temperature is fitted on the {len(val_labels)} validation images all 2"
            " members held out (their splits hold 300, 300): each run's seed draws its own split") in warned
    metrics = _saved(out, "metrics.json")["metrics"]
    for name, value in np_metrics(scaled(probs, described["temperature"]), labels).items():
        assert metrics[f"test_calibrated/{name}"] == pytest.approx(value, abs=1e-5), name


@pytest.mark.slow
def test_the_ensemble_goes_through_every_analysis(ensembled):
    out, *_, runs, probs, labels = ensembled
    written = {path.relative_to(out / "ensemble").as_posix() for path in (out / "ensemble").rglob("*")
               if path.is_file()}  # fmt: skip
    assert {"ensemble.json", "metrics.json", "reliability_diagram.png", "reliability_diagram_calibrated.png",
            "confusion_matrix.png", "selective.json", "risk_coverage.png", "ood.json", "ood.md",
            "shift.json", "shift.md", "shift/ece_by_severity.png"} <= written  # fmt: skip
    selective = _saved(out, "selective.json")["raw"]
    correct = probs.argmax(1) == labels
    expected = roc_auc_score(correct, probs.max(1))
    assert selective["misclassification_auroc"] == pytest.approx(expected, abs=1e-6)
    noise = noise_images("uniform-noise", len(labels), (1, 28, 28))
    noise_probs = np.mean([plain_probs(run, noise) for run in runs], axis=0)
    scores = np.concatenate([probs.max(1), noise_probs.max(1)])
    auroc = roc_auc_score(np.r_[np.ones(len(labels)), np.zeros(len(noise))], scores)
    assert _saved(out, "ood.json")["sets"][0]["raw"]["msp"]["auroc"] == pytest.approx(auroc, abs=1e-4)
    shift = _saved(out, "shift.json")
    t = shift["temperature"]
    assert t == _saved(out, "ensemble.json")["temperature"]
    (fog,) = [r for r in shift["records"] if (r["corruption"], r["severity"]) == ("fog", 5)]
    images = runs[0].datamodule.splits["test"][0][:60]
    fogged = np.mean([plain_probs(run, corrupt(images, "fog", 5, seed=0)) for run in runs], axis=0)
    for stage, p in (("raw", fogged), ("calibrated", scaled(fogged, t))):
        for name, value in np_metrics(p, labels[:60]).items():
            assert fog[stage][name] == pytest.approx(value, abs=1e-4), (stage, name)


def test_an_ensemble_of_a_run_with_itself_is_that_run(tiny_run: Path):
    """Also: the pass rebuilt from logits (scored_pass) is the pass trainer.test made."""
    member = EvaluationContext(load_run(tiny_run, check_classes=True))
    ensemble = EnsembleContext([member, EvaluationContext(load_run(tiny_run, check_classes=True))])
    tested, alone = ensemble.tested(), member.tested()
    assert tested.metrics.keys() == alone.metrics.keys()
    for key, value in alone.metrics.items():
        assert tested.metrics[key] == pytest.approx(value, abs=2e-6), key
    assert ensemble.calibration.temperature == pytest.approx(member.calibration.temperature, rel=1e-4)
    assert ensemble.notes == [] and ensemble.fitted_on["num_images"] == 100
    rebuilt = scored_pass("test", member.logits(), member.calibration, 15)
    assert torch.equal(rebuilt.confusion, alone.confusion)
    for stage in ("raw", "calibrated"):
        assert torch.allclose(rebuilt.bins[stage]["confidence_sum"], alone.bins[stage]["confidence_sum"])
        assert torch.equal(rebuilt.bins[stage]["count"], alone.bins[stage]["count"])
        assert torch.equal(rebuilt.confidences[stage].correct, alone.confidences[stage].correct)


@pytest.mark.slow
def test_the_members_passes_are_made_once(members: tuple[Path, Path], tmp_path: Path,
                                          counted_passes: list[int]):  # fmt: skip
    sizes = counted_passes
    main([*map(str, members), "--ensemble", "--out", str(tmp_path), "--ood", "gaussian-noise",
          "--shift", "contrast", "--shift-severities", "2", "--shift-samples", "30"])  # fmt: skip
    # two test passes, two validation passes (the ensemble's T), each member's OOD set and
    # shifted set; the ensemble reuses them all
    assert sizes == [200, 200, 300, 300, 200, 30, 200, 30]


def test_common_validation_images_are_matched_by_pixels():
    """Members whose validation splits hold the same images in other orders, and others apart."""
    a, b, c, d, x = (torch.full((1, 2, 2), v, dtype=torch.uint8) for v in (1, 2, 3, 4, 9))

    def member(images: list, labels: list[int], logits: torch.Tensor):
        datamodule = SimpleNamespace(splits={"val": (torch.stack(images), torch.tensor(labels))})
        return SimpleNamespace(logits=lambda split: SplitLogits(logits, torch.tensor(labels)),
                               run=SimpleNamespace(datamodule=datamodule))  # fmt: skip

    first = member([a, b, c, d], [0, 1, 0, 1], torch.randn(4, 2))
    second = member([d, x, b, a], [1, 0, 1, 1], torch.randn(4, 2))  # a with another label: not the same
    fake = SimpleNamespace(members=[first, second], notes=[], fitted_on={})
    logits, labels = EnsembleContext._common_validation(fake)
    assert labels.tolist() == [1, 1]  # b, d in the first member's order
    p = [torch.softmax(m.logits("val").logits.double(), 1) for m in (first, second)]
    assert torch.allclose(torch.softmax(logits.double(), 1), (p[0][[1, 3]] + p[1][[2, 0]]) / 2, atol=1e-6)
    assert fake.fitted_on == {"split": "val", "num_images": 2, "members_num_images": [4, 4]}
    fake = SimpleNamespace(members=[first, member([x], [0], torch.randn(1, 2))], notes=[], fitted_on={})
    logits, labels = EnsembleContext._common_validation(fake)
    assert len(labels) == 0 and fake.notes == [
        "the 2 members' validation splits share no image (each run's seed draws its own): the ensemble's"
        " temperature is not fitted (T = 1)"]  # fmt: skip


# ----------------------------------------------------------------------------- refusals


def test_an_ensemble_of_one_run_is_refused_before_loading():
    with pytest.raises(SoftcalError) as caught:
        parse_args(["no/such/run", "--ensemble"])
    assert str(caught.value) == "--ensemble needs at least two runs to average, got one; pass RUN1 RUN2 ..."


@pytest.mark.slow
def test_members_of_other_data_or_classes_are_refused(tiny_run: Path, tmp_path: Path):
    fashion_root = tmp_path / "fashion"
    write_idx_dataset(fashion_root, "FashionMNIST")
    fashion = _train(fashion_root, tmp_path / "runs", config="fashion_mnist.yaml")
    with pytest.raises(SoftcalError) as caught:
        main([str(tiny_run), str(fashion), "--ensemble", "--out", str(tmp_path / "out")])
    assert str(caught.value) == (
        f"--ensemble: {tiny_run} is evaluated on MNIST and {fashion} on FashionMNIST; ensemble members must"
        " share the dataset and its classes"
    )
    assert not (tmp_path / "out").exists()  # refused before any pass or file
    digits, shapes = ([str(i) for i in range(10)], ["circle", "square", "triangle"])
    members = [SimpleNamespace(dataset="shapes", run=SimpleNamespace(class_names=names, run_dir=Path(where)))
               for names, where in ((digits, "runs/a"), (shapes, "runs/b"))]  # fmt: skip
    with pytest.raises(SoftcalError) as caught:
        check_members(members)
    assert str(caught.value) == (
        "--ensemble: runs/a and runs/b have different classes (0, 1, 2, 3, 4, 5 vs circle, square, triangle);"
        " ensemble members must share the dataset and its classes"
    )


@pytest.mark.slow
def test_members_tested_on_other_images_are_refused(tiny_run: Path, members: tuple[Path, Path],
                                                    tmp_path: Path):  # fmt: skip
    """The same dataset and classes, other files: another MNIST-format folder."""
    write_idx_dataset(tmp_path, "MNIST", seed=5)
    first = EvaluationContext(load_run(tiny_run, check_classes=True))
    other = EvaluationContext.open(members[1], overrides=["--data.init_args.root", str(tmp_path)])
    ensemble = EnsembleContext([first, other])
    with pytest.raises(SoftcalError) as caught:
        ensemble.evaluation()
    assert str(caught.value) == (
        f"--ensemble: {tiny_run} and {members[1]} were tested on different images (different labels);"
        " ensemble members must share the dataset and its classes, and the same test settings"
    )
    assert ensemble.notes == [  # other training images too: no validation image in common
        "the 2 members' validation splits share no image (each run's seed draws its own): the ensemble's"
        " temperature is not fitted (T = 1)"]  # fmt: skip


@pytest.mark.slow
def test_the_script_prints_one_error_line_for_a_lone_ensemble(tiny_run: Path):
    proc = run_script("evaluate.py", str(tiny_run), "--ensemble")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "error: --ensemble needs at least two runs to average, got one; pass RUN1 RUN2 ..."
    ]
