"""scripts/evaluate.py: a saved run re-tested from its config reproduces training's numbers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from softcal.errors import CheckpointError
from softcal.apps.evaluate import evaluate_checkpoint, main, split_passthrough
from softcal.runs.files import best_checkpoint
from tests.conftest import run_script


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def test_evaluate_reproduces_training_and_writes_files(tiny_run: Path, capsys):
    (evaluation,) = main([str(tiny_run)])
    trained = _results(tiny_run)
    assert evaluation.checkpoint == Path(trained["checkpoint"])
    assert evaluation.metrics["test/acc"] == pytest.approx(trained["metrics"]["test/acc"], abs=1e-6)
    # Not only accuracy: every metric, raw and calibrated, comes out as training logged it.
    assert evaluation.metrics.keys() == trained["metrics"].keys()
    for key, value in trained["metrics"].items():
        assert evaluation.metrics[key] == pytest.approx(value, abs=1e-6), key
    assert evaluation.temperature == pytest.approx(trained["temperature"], rel=1e-6)

    out = tiny_run / "eval"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["split"] == "test" and saved["metrics"] == evaluation.metrics
    for name in ("reliability_diagram.png", "reliability_diagram_calibrated.png",
                 "confusion_matrix.png"):  # fmt: skip
        with Image.open(out / name) as image:
            assert image.format == "PNG" and min(image.size) >= 300
    printed = capsys.readouterr().out
    assert "calibrated (T = " in printed
    assert f"{100 * trained['metrics']['test/acc']:.2f}%" in printed


def test_validation_split_scores_what_checkpointing_saw(tiny_run: Path, tmp_path: Path):
    (evaluation,) = main([str(tiny_run), "--split", "val", "--out", str(tmp_path)])
    # The best checkpoint was chosen by val/acc on this very split: the score it recorded.
    ckpt = torch.load(best_checkpoint(tiny_run), map_location="cpu", weights_only=True)
    (state,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("ModelCheckpoint")]
    recorded = float(state["best_model_score"])
    assert evaluation.metrics["test/acc"] == pytest.approx(recorded, abs=1e-6)
    assert json.loads((tmp_path / "metrics.json").read_text())["split"] == "val"


def test_several_checkpoints_print_one_comparison_table(tiny_run: Path, tmp_path: Path, capsys):
    last = tiny_run / "checkpoints" / "last.ckpt"
    best, final = main([str(tiny_run), str(last), "--out", str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("checkpoint"))
    columns = ["acc", "ece", "mce", "adaptive_ece", "brier", "nll", "cal.", "ece"]
    assert header.split()[1:] == columns
    rows = [line for line in lines if ".ckpt" in line and not line.startswith("wrote")]
    assert len(rows) == 2 and rows[1].startswith(str(last))
    # One epoch: the same weights, but only the best checkpoint carries the fitted temperature.
    assert best.metrics["test/acc"] == final.metrics["test/acc"]
    assert final.temperature is None
    assert final.metrics["test_calibrated/ece"] == pytest.approx(final.metrics["test/ece"])
    assert best.metrics["test_calibrated/ece"] != pytest.approx(best.metrics["test/ece"])
    assert {p.name for p in tmp_path.iterdir()} == {"0_version_0", "1_version_0"}


def test_overrides_are_passed_through_with_their_values():
    own, overrides = split_passthrough(
        ["run", "--data.root", "/d", "--split", "val", "--trainer.accelerator=cpu",
         "--data", "softcal.data.FashionMNISTDataModule", "other.ckpt"]
    )  # fmt: skip
    assert own == ["run", "--split", "val", "other.ckpt"]
    assert overrides == ["--data.root", "/d", "--trainer.accelerator=cpu",
                         "--data", "softcal.data.FashionMNISTDataModule"]  # fmt: skip


def test_images_of_another_shape_are_refused_before_loading(tiny_run: Path, image_folder: Path):
    overrides = ["--data", "softcal.data.ImageFolderDataModule",
                 "--data.init_args.folder", str(image_folder)]  # fmt: skip
    with pytest.raises(CheckpointError, match=r"takes 1x28x28 .* has 3x32x32"):
        evaluate_checkpoint(tiny_run, overrides=overrides)


# ------------------------------------------------------------------ bad input: one line, exit 2


def _copy_config(run_dir: Path, dest: Path) -> Path:
    (dest / "checkpoints").mkdir(parents=True)
    shutil.copy(run_dir / "config.yaml", dest / "config.yaml")
    return dest / "checkpoints"


def _bad_truncated(run_dir: Path, tmp: Path) -> tuple[list[str], str]:
    data = best_checkpoint(run_dir).read_bytes()
    target = _copy_config(run_dir, tmp / "run") / "best.ckpt"
    target.write_bytes(data[: len(data) // 2])
    return [str(target)], "is truncated"


def _bad_not_a_checkpoint(run_dir: Path, tmp: Path) -> tuple[list[str], str]:
    target = _copy_config(run_dir, tmp / "run") / "notes.ckpt"
    target.write_text("these are my notes, not weights\n")
    return [str(target)], "is not a checkpoint"


def _bad_classes(run_dir: Path, tmp: Path) -> tuple[list[str], str]:
    # Same image shape and class count, other classes: only the names can tell.
    return [str(run_dir), "--data", "softcal.data.FashionMNISTDataModule"], "trained on 10 classes"


def _bad_no_config(run_dir: Path, tmp: Path) -> tuple[list[str], str]:
    target = tmp / "loose.ckpt"
    shutil.copy(best_checkpoint(run_dir), target)
    return [str(target)], "no config.yaml found beside"


@pytest.mark.parametrize("case", [_bad_truncated, _bad_not_a_checkpoint, _bad_classes,
                                  _bad_no_config], ids=lambda f: f.__name__[5:])  # fmt: skip
def test_bad_input_is_one_error_line(case, tiny_run: Path, tmp_path: Path):
    args, message = case(tiny_run, tmp_path)
    proc = run_script("evaluate.py", *args, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
