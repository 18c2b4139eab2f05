"""evaluate: a saved run re-tested from its config reproduces training's numbers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from softcal.apps.evaluate import main
from softcal.errors import CheckpointError, SoftcalError
from softcal.evaluation.context import EvaluationContext
from softcal.evaluation.report import comparison_table, comparison_title
from softcal.evaluation.results import Evaluation
from softcal.runs.load import load_run, split_overrides
from softcal.runs.run_dirs import best_checkpoint
from tests.conftest import run_script


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def test_evaluate_reproduces_training_and_writes_files(tiny_run: Path, capsys):
    (evaluation,) = main([str(tiny_run)])
    trained = _results(tiny_run)
    assert evaluation.checkpoint == Path(trained["checkpoint"])
    # Not only accuracy: every metric, raw and calibrated, comes out as training logged it.
    assert evaluation.metrics.keys() == trained["metrics"].keys()
    for key, value in trained["metrics"].items():
        assert evaluation.metrics[key] == pytest.approx(value, abs=1e-6), key
    assert evaluation.temperature == pytest.approx(trained["temperature"], rel=1e-6)

    out = tiny_run / "eval"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["split"] == "test" and saved["metrics"] == evaluation.metrics
    assert saved["num_samples"] == 200  # the whole generated test split, each image once
    for name in ("reliability_diagram.png", "reliability_diagram_calibrated.png",
                 "confusion_matrix.png"):  # fmt: skip
        with Image.open(out / name) as image:
            assert image.format == "PNG" and min(image.size) >= 300
    printed = capsys.readouterr().out
    assert "calibrated (T = " in printed
    assert f"{100 * trained['metrics']['test/acc']:.2f}%" in printed


def test_validation_split_scores_what_checkpointing_saw(tiny_run: Path, tmp_path: Path, capsys):
    (evaluation,) = main([str(tiny_run), "--split", "val", "--out", str(tmp_path)])
    # The keys name the split that was scored, raw and calibrated; nothing claims "test".
    assert {key.split("/")[0] for key in evaluation.metrics} == {"val", "val_calibrated"}
    printed = capsys.readouterr().out
    assert "MNIST val split" in printed and "val (T = 1)" in printed and "test (T" not in printed
    # The best checkpoint was chosen by val/acc on this very split: the score it recorded.
    ckpt = torch.load(best_checkpoint(tiny_run), map_location="cpu", weights_only=True)
    (state,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("ModelCheckpoint")]
    assert evaluation.metrics["val/acc"] == pytest.approx(float(state["best_model_score"]), abs=1e-6)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["split"] == "val" and saved["metrics"] == evaluation.metrics
    assert saved["num_samples"] == 100  # val_size of the tiny run


@pytest.mark.slow
def test_best_and_last_checkpoint_in_one_table(tiny_run: Path, tmp_path: Path, capsys):
    last = tiny_run / "checkpoints" / "last.ckpt"
    best, final = main([str(tiny_run), str(last), "--out", str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "MNIST, test split"
    header = next(line for line in lines if line.startswith("checkpoint"))
    assert header.split()[1:] == ["acc", "ece", "mce", "adaptive_ece", "brier", "nll", "cal.", "ece"]
    rows = [line for line in lines if ".ckpt" in line and not line.startswith("wrote")]
    assert len(rows) == 2 and rows[1].startswith(str(last))
    assert Path(rows[0].split()[0]) == best_checkpoint(tiny_run)  # a path that exists
    # One epoch: the same weights, and each checkpoint carries the T fitted for them.
    assert best.metrics == final.metrics
    assert final.temperature == best.temperature is not None
    assert best.metrics["test_calibrated/ece"] != pytest.approx(best.metrics["test/ece"])
    assert {p.name for p in tmp_path.iterdir()} == {"0_version_0", "1_version_0"}


def _evaluation(dataset: str, acc: float) -> Evaluation:
    metrics = {"test/acc": acc, "test/ece": 0.05, "test_calibrated/ece": 0.01}
    return Evaluation(Path(f"/runs/{dataset}/best.ckpt"), Path(f"/runs/{dataset}"), "test",
                      dataset, 1.5, metrics)  # fmt: skip


def test_a_copied_run_reads_and_writes_only_its_own_files(tiny_run: Path, tmp_path: Path):
    """results.json records an absolute checkpoint path: a copy of the run directory must use
    its own checkpoint and write its evaluation beside it, never into the original."""
    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy, ignore=shutil.ignore_patterns("eval*"))
    assert best_checkpoint(copy) == copy / "checkpoints" / best_checkpoint(tiny_run).name
    before = sorted(p.name for p in tiny_run.iterdir())
    main([str(copy)])
    assert (copy / "eval" / "metrics.json").is_file()
    assert sorted(p.name for p in tiny_run.iterdir()) == before


def test_comparison_of_two_datasets_names_both():
    evaluations = [_evaluation("MNIST", 0.99), _evaluation("FashionMNIST", 0.91)]
    assert comparison_title(evaluations) == "MNIST and FashionMNIST, test splits"
    assert comparison_title(evaluations[:1]) == "MNIST, test split"
    lines = comparison_table(evaluations, ["a.ckpt", "b.ckpt"]).splitlines()
    assert lines[0].split()[:3] == ["checkpoint", "dataset", "acc"]
    assert lines[2].split()[:3] == ["a.ckpt", "MNIST", "99.00%"]
    assert lines[3].split()[:3] == ["b.ckpt", "FashionMNIST", "91.00%"]
    # One dataset: no dataset column.
    assert comparison_table(evaluations[:1], ["a.ckpt"]).split()[:2] == ["checkpoint", "acc"]


def test_overrides_are_passed_through_with_their_values():
    own, overrides = split_overrides(
        ["run", "--data.root", "/d", "--split", "val", "--trainer.accelerator=cpu",
         "--data", "softcal.data.FashionMNISTDataModule", "other.ckpt"]
    )  # fmt: skip
    assert own == ["run", "--split", "val", "other.ckpt"]
    assert overrides == ["--data.root", "/d", "--trainer.accelerator=cpu",
                         "--data", "softcal.data.FashionMNISTDataModule"]  # fmt: skip


def test_overrides_reach_the_reopened_run(tiny_run: Path, tmp_path: Path):
    run = load_run(tiny_run, ["--data.root", str(tmp_path), "--trainer.accelerator=cpu",
                              "--seed_everything", "7", "--trainer.precision", "bf16-mixed"])  # fmt: skip
    assert run.datamodule.root == tmp_path and run.datamodule.split_seed == 7
    assert run.trainer["accelerator"] == "cpu" and run.trainer["precision"] == "bf16-mixed"
    assert "logger" not in run.trainer and "callbacks" not in run.trainer  # training's own
    assert run.config["trainer"]["accelerator"] == "auto"  # the saved config, as saved
    assert not run.model.training and run.class_names == [str(d) for d in range(10)]
    with pytest.raises(SoftcalError, match="bad override") as err:
        load_run(tiny_run, ["--data.init_args.no_such_setting", "1"])
    assert "\n" not in str(err.value)


def test_images_of_another_shape_are_refused_before_loading(tiny_run: Path, image_folder: Path):
    overrides = ["--data", "softcal.data.ImageFolderDataModule",
                 "--data.init_args.folder", str(image_folder)]  # fmt: skip
    with pytest.raises(CheckpointError, match=r"takes 1x28x28 .* has 3x32x32"):
        EvaluationContext.open(tiny_run, overrides=overrides)


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
    return [str(run_dir), "--data", "FashionMNISTDataModule"], "trained on 10 classes"


def _bad_no_config(run_dir: Path, tmp: Path) -> tuple[list[str], str]:
    target = tmp / "loose.ckpt"
    shutil.copy(best_checkpoint(run_dir), target)
    return [str(target)], "no config.yaml found beside"


@pytest.mark.parametrize("case", [_bad_truncated, _bad_not_a_checkpoint, _bad_classes,
                                  _bad_no_config], ids=lambda f: f.__name__[5:])  # fmt: skip
def test_bad_input_is_one_error_line(case, tiny_run: Path, tmp_path: Path):
    args, message = case(tiny_run, tmp_path)
    with pytest.raises(SoftcalError) as err:
        main(args)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow
def test_the_script_prints_one_error_line_and_exits_2(tiny_run: Path, tmp_path: Path):
    args, message = _bad_truncated(tiny_run, tmp_path)
    proc = run_script("evaluate.py", *args, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
