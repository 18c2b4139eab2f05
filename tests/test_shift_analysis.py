"""evaluate --shift: every record recomputed here from pixels this test corrupts and logits it
computes itself (softcal.shift's ``corrupt`` - the library under test elsewhere - then the net in
one plain forward pass, no Trainer and no softcal.evaluation, and numpy metrics), on a real
MNIST run; the files, the pictures and the TensorBoard images; the options and their one-line
errors; one pass per set, shared through the context's cache.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from softcal.apps.evaluate import main, parse_args
from softcal.errors import DataError, SoftcalError
from softcal.evaluation import shifted_sets
from softcal.evaluation.context import EvaluationContext
from softcal.evaluation.shifted_sets import ShiftedSets
from softcal.runs.load import load_run
from softcal.shift.corruptions import CORRUPTIONS, corrupt
from tests.conftest import REPO, run_script

DATA_ROOT = Path(os.environ.get("SOFTCAL_DATA_ROOT") or "data")
REAL_DATA = (DATA_ROOT / "MNIST" / "raw").is_dir() and (DATA_ROOT / "frost").is_dir()
needs_real_data = pytest.mark.skipif(not REAL_DATA, reason=f"no MNIST/raw and frost/ under {DATA_ROOT}")
KEYS = {"corruption", "severity", "num_images", "raw", "calibrated"}
METRICS = {"acc", "ece", "nll", "brier"}


# ----------------------------------------------------------------------------- references


def np_metrics(logits: np.ndarray, labels: np.ndarray, t: float = 1.0, n_bins: int = 15) -> dict[str, float]:
    """Accuracy, 15-bin ECE, NLL (p floored at float32's smallest normal) and Brier, in numpy."""
    z = logits.astype(np.float64) / t
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    confidence, correct = p.max(axis=1), p.argmax(axis=1) == labels
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    gaps = [abs(correct[bins == b].sum() - confidence[bins == b].sum()) for b in range(n_bins)]
    onehot = np.eye(p.shape[1])[labels]
    return {"acc": correct.mean(), "ece": sum(gaps) / len(labels),
            "nll": -np.log(np.maximum(p[np.arange(len(labels)), labels], np.finfo(np.float32).tiny)).mean(),
            "brier": ((p - onehot) ** 2).sum(axis=1).mean()}  # fmt: skip


def plain_logits(run, images: torch.Tensor) -> np.ndarray:
    """The model on uint8 images in one forward pass, outside any Trainer."""
    with torch.no_grad():
        return run.model.cpu()(run.datamodule.preprocess(images)).float().numpy()


def check_record(record: dict, logits: np.ndarray, labels: np.ndarray, t: float) -> None:
    for stage, temperature in (("raw", 1.0), ("calibrated", t)):
        expected = np_metrics(logits, labels, temperature)
        for name, value in expected.items():
            # one plain forward pass against the Trainer's batches: float32 rounding only
            assert record[stage][name] == pytest.approx(value, abs=1e-4), (record["corruption"], stage, name)


# ----------------------------------------------------------------------------- a real run, 75 sets


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch (60 steps) on the real MNIST: 97% accuracy, enough to lose some under shift."""
    if not REAL_DATA:
        pytest.skip(f"no MNIST/raw and frost/ under {DATA_ROOT}")
    from softcal.apps.train import main as train

    save_dir = tmp_path_factory.mktemp("real_runs")
    results = train(["--config", str(REPO / "configs" / "mnist.yaml"), "--trainer.max_epochs", "1",
                     "--trainer.limit_train_batches", "60", "--trainer.enable_progress_bar", "false",
                     "--trainer.enable_model_summary", "false", "--data.init_args.root", str(DATA_ROOT),
                     "--trainer.logger.init_args.save_dir", str(save_dir)])  # fmt: skip
    return Path(results["run_dir"])


@pytest.fixture(scope="module")
def all_sets(real_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    out = tmp_path_factory.mktemp("shift_all")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        main([str(real_run), "--shift", "all", "--shift-samples", "500", "--out", str(out)])
    return out, json.loads((out / "shift.json").read_text()), printed.getvalue()


@pytest.mark.slow
@needs_real_data
def test_all_75_sets_are_written_with_their_files(all_sets):
    out, saved, printed = all_sets
    records = saved["records"]
    assert len(records) == 76 and records[0]["corruption"] == "clean" and records[0]["severity"] == 0
    assert [(r["corruption"], r["severity"]) for r in records[1:]] == [
        (name, severity) for name in CORRUPTIONS for severity in (1, 2, 3, 4, 5)]  # fmt: skip
    for record in records:
        assert set(record) == KEYS and record["num_images"] == 500
        assert set(record["raw"]) == set(record["calibrated"]) == METRICS
    assert [row["severity"] for row in saved["summary"]] == [0, 1, 2, 3, 4, 5, "all"]
    assert saved["summary"][-1]["sets"] == 75 and saved["seed"] == 0
    markdown = (out / "shift.md").read_text()
    assert "| clean | 1 |" in markdown and "| all | 75 |" in markdown and "| frost |" in markdown
    for name in ("ece_by_severity", "accuracy_by_severity", "examples"):
        with Image.open(out / "shift" / f"{name}.png") as image:
            assert image.format == "PNG" and min(image.size) >= 250
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert sorted(events.Tags()["images"]) == ["shift/accuracy_by_severity", "shift/ece_by_severity",
                                               "shift/examples"]  # fmt: skip
    table = printed[printed.index("Calibration under shift"):].splitlines()
    assert [line.split()[0] for line in table[3:10]] == ["clean", "1", "2", "3", "4", "5", "all"]


@pytest.mark.slow
@needs_real_data
def test_records_equal_an_independent_recomputation(all_sets, real_run: Path):
    _, saved, _ = all_sets
    run = load_run(real_run, check_classes=True)
    run.datamodule.setup("test")
    images, labels = run.datamodule.splits["test"]
    images, labels = images[:500], labels[:500].numpy()
    t = saved["temperature"]
    assert t == run.calibration.temperature and saved["calibration_method"] == "temperature"
    check_record(saved["records"][0], plain_logits(run, images), labels, t)
    found = {(r["corruption"], r["severity"]): r for r in saved["records"]}
    for name in ("gaussian_noise", "frost", "glass_blur"):  # random, photographs, a shuffle
        for severity in (1, 3, 5):
            corrupted = corrupt(images, name, severity, seed=0, frost_dir=DATA_ROOT / "frost")
            check_record(found[(name, severity)], plain_logits(run, corrupted), labels, t)


@pytest.mark.slow
@needs_real_data
def test_accuracy_falls_with_severity(all_sets):
    _, saved, _ = all_sets
    mean = {row["severity"]: row["raw"]["acc"]["mean"] for row in saved["summary"]}
    assert mean[5] < mean[1] < mean[0], mean
    ece = {row["severity"]: row["raw"]["ece"]["mean"] for row in saved["summary"]}
    assert ece[5] > ece[0], ece  # the model grows overconfident as the images drift away


# ----------------------------------------------------------------------------- a tiny run



@pytest.mark.slow
def test_a_few_sets_of_a_tiny_run(tiny_run: Path, tmp_path: Path, counted_passes: list[int]):
    (evaluation,) = main([str(tiny_run), "--shift", "contrast,fog", "--shift-severities", "5,2",
                          "--shift-samples", "50", "--out", str(tmp_path)])  # fmt: skip
    saved = json.loads((tmp_path / "shift.json").read_text())
    assert [(r["corruption"], r["severity"], r["num_images"]) for r in saved["records"]] == [
        ("clean", 0, 50), ("contrast", 5, 50), ("contrast", 2, 50), ("fog", 5, 50),
        ("fog", 2, 50)]  # fmt: skip
    assert counted_passes == [200, 50, 50, 50, 50]  # the test split once, then one pass per set
    assert [r.name for r in evaluation.analyses][-1] == "shift"
    assert evaluation.analyses[-1].record == saved
    run = load_run(tiny_run, check_classes=True)
    run.datamodule.setup("test")
    images, labels = run.datamodule.splits["test"]
    fog = corrupt(images[:50], "fog", 5, seed=0)
    check_record(saved["records"][3], plain_logits(run, fog), labels[:50].numpy(), saved["temperature"])


@pytest.mark.slow
def test_a_subset_missing_classes_is_said_plainly(tiny_run: Path, tmp_path: Path, capsys):
    (evaluation,) = main([str(tiny_run), "--shift", "contrast", "--shift-severities", "1", "--shift-samples",
                          "3", "--out", str(tmp_path)])  # fmt: skip
    run = load_run(tiny_run, check_classes=True)
    run.datamodule.setup("test")
    held = len(run.datamodule.splits["test"][1][:3].unique())
    note = (f"the first 3 test images hold {held} of the split's 10 classes: these numbers describe those"
            " classes only (a split stored in class order, as image folders are, puts one class first);"
            " use a larger --shift-samples or leave it out")  # fmt: skip
    assert f"\nnote: {note}\n" in capsys.readouterr().out
    assert json.loads((tmp_path / "shift.json").read_text())["notes"] == [note]
    assert (tmp_path / "shift.md").read_text().endswith(f"\nnote: {note}\n")
    (evaluation,) = main([str(tiny_run), "--shift", "contrast", "--shift-severities", "1",
                          "--out", str(tmp_path)])  # fmt: skip
    assert evaluation.analyses[-1].record["notes"] == []  # the whole split: every class


def test_shifted_logits_are_made_once_and_shared(tiny_run: Path, counted_passes: list[int]):
    ctx = EvaluationContext(load_run(tiny_run, check_classes=True))
    first = ctx.shifted_logits("brightness", 3, 40)
    assert ctx.shifted_logits("brightness", 3, 40) is first and len(first.labels) == 40
    assert ctx.shifted_logits("brightness", 3, 10_000) is ctx.shifted_logits("brightness", 3, None)
    assert counted_passes == [200, 40, 200]  # the test split (for its images), then two sets
    made = {("brightness", 3, 40), ("brightness", 3, 200)}
    assert set(ctx.shift_seconds) == set(ctx.shifted_sets.seconds) == made


def test_chunks_corrupt_each_image_as_one_call_does(monkeypatch: pytest.MonkeyPatch):
    generator = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (23, 3, 32, 32), generator=generator, dtype=torch.uint8)
    monkeypatch.setattr(shifted_sets, "CHUNK", 5)  # 5 + 5 + 5 + 5 + 1 of the first 21
    sets = ShiftedSets(images, torch.arange(23), Path("unused"))
    for name in ("gaussian_noise", "elastic_transform", "glass_blur"):
        corrupted, labels = sets.corrupted(name, 4, 21)
        assert torch.equal(corrupted, corrupt(images[:21], name, 4, seed=0))
        assert torch.equal(labels, torch.arange(21))
        assert torch.equal(sets.example(name, 4, 7), corrupted[7])


def test_missing_frost_photographs_are_one_line_before_any_set(
    tiny_run: Path, mnist_root: Path, tmp_path: Path, counted_passes: list[int]
):
    with pytest.raises(DataError) as caught:
        main([str(tiny_run), "--shift", "all", "--shift-samples", "20", "--out", str(tmp_path)])
    assert str(caught.value) == (
        f"frost photographs not found: {mnist_root}/frost does not exist; put frost1.png ... frost6.jpg"
        " from github.com/hendrycks/robustness (ImageNet-C/create_c/) there"
    )
    assert counted_passes == [200] and not (tmp_path / "shift.json").exists()


@pytest.mark.parametrize(("argv", "message"), [
    (["--shift", "fogg"], "unknown corruption 'fogg'; valid names: gaussian_noise, shot_noise, impulse_noise,"
     " defocus_blur, glass_blur, motion_blur, zoom_blur, snow, frost, fog, brightness, contrast,"
     " elastic_transform, pixelate, jpeg_compression or all"),
    (["--shift", "all", "--shift-severities", "1,6"],
     "unknown severity '6'; valid severities: 1, 2, 3, 4, 5"),
    (["--shift", "fog", "--shift-samples", "0"],
     "--shift-samples 0: use a positive number of test images (leave it out for all)"),
    (["--shift-severities", "5"], "--shift-severities and --shift-samples go with --shift; add --shift all or"
     " a comma list of corruptions"),
])  # fmt: skip
def test_bad_shift_options_are_one_line_before_loading(argv: list[str], message: str):
    with pytest.raises(SoftcalError) as caught:
        parse_args(["no/such/run", *argv])  # the run is never opened
    assert str(caught.value) == message


@pytest.mark.slow
def test_the_script_prints_one_error_line_for_a_bad_corruption(tiny_run: Path):
    proc = run_script("evaluate.py", str(tiny_run), "--shift", "fog,fogg")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "error: unknown corruption 'fogg'; valid names: gaussian_noise, shot_noise, impulse_noise,"
        " defocus_blur, glass_blur, motion_blur, zoom_blur, snow, frost, fog, brightness, contrast,"
        " elastic_transform, pixelate, jpeg_compression or all"
    ]


def test_the_speed_benchmark_times_each_set_and_writes_its_section(tiny_run: Path, tmp_path: Path, capsys):
    import shift_speed  # benchmarks/, on the path for the benchmark's tests (conftest)

    doc = tmp_path / "benchmarks.md"
    totals = shift_speed.main([str(tiny_run), "--shift", "contrast,fog", "--shift-severities", "1,5",
                               "--shift-samples", "20", "--doc", str(doc)])  # fmt: skip
    assert totals["sets"] == 4 and totals["total"] >= totals["generation"] + totals["inference"] > 0
    printed = capsys.readouterr().out
    assert "contrast                  5      20" in printed and "4 sets: generation " in printed
    text = doc.read_text()
    assert "<!-- benchmark:shift-speed-MNIST-4x20 -->" in text and "| contrast | 2 |" in text
    assert "## MNIST: `evaluate.py --shift`, 4 sets of 20 images" in text
    assert "- commit: " in text and "n/a (not the full-size run)" in text
