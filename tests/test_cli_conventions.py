"""One convention across the command lines: one-line errors, the program named as invoked,
``--ckpt`` for "which run", hyphenated flags with underscore spellings accepted, overrides and
``--verbose`` in --help; and the messages that point at the run or checkpoint meant."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from softcal.apps.arguments import AppArgumentParser, entry_point, run_app_parser
from softcal.apps.command_line import command_line
from softcal.errors import CheckpointError, DataError, SoftcalError


def parse_fails(parse, argv: list[str], capsys) -> str:
    """The stderr of a command line argparse refuses; it must be one line and exit 2."""
    with pytest.raises(SystemExit) as caught:
        parse(argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err.strip()


@pytest.mark.parametrize(("argv0", "prog"), [
    ("/usr/local/bin/softcal-predict", "softcal-predict"),
    ("scripts/predict.py", "predict.py"),
    ("/usr/lib/python3/site-packages/pytest/__main__.py", "predict.py"),  # run inside a program
])  # fmt: skip
def test_the_program_is_named_as_invoked(argv0, prog, monkeypatch):
    monkeypatch.setattr(sys, "argv", [argv0])
    assert entry_point("predict.py") == prog
    assert run_app_parser("predict.py", "Predict.").prog == prog


def test_argparse_errors_are_one_line(capsys):
    from softcal.apps.export import parse_args as export_args
    from softcal.apps.predict import parse_args as predict_args

    err = parse_fails(export_args, ["--ckpt", "runs/mnist/version_0", "--format", "tflite"], capsys)
    assert err == (
        "error: argument --format: invalid choice: 'tflite' (choose from 'onnx', 'torchscript')"
        " (see export.py --help)"
    )
    err = parse_fails(predict_args, [], capsys)
    assert err == "error: the following arguments are required: --ckpt, FILE_OR_DIR (see predict.py --help)"
    err = parse_fails(predict_args, ["--ckpt", "r", "--top-k", "0", "a.png"], capsys)
    assert err == "error: --top-k must be at least 1 (see predict.py --help)"


def test_hyphenated_flags_take_underscores_and_overrides_are_split():
    from softcal.apps.predict import parse_args as predict_args

    argv = ["--ckpt", "r", "a.png", "--top_k", "5", "--skip_bad", "--trainer.accelerator", "cpu"]
    args, overrides = predict_args(argv)
    assert (args.top_k, args.skip_bad, args.files) == (5, True, ["a.png"])
    assert overrides == ["--trainer.accelerator", "cpu"]
    args, _ = predict_args(["--ckpt", "r", "a.png", "--top-k", "2"])
    assert (args.top_k, args.skip_bad) == (2, False)


def test_help_lists_the_overrides_and_verbose_but_each_option_once(capsys):
    from softcal.apps.predict import parse_args as predict_args

    with pytest.raises(SystemExit):
        predict_args(["--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: predict.py ")
    for shown in ("--ckpt RUN_DIR_OR_CKPT", "--top-k K", "--skip-bad", "--verbose", "--data.NAME VALUE",
                  "--model.NAME VALUE", "--trainer.NAME VALUE", "(--top-k or --top_k)"):  # fmt: skip
        assert shown in out, shown
    assert "--top_k K" not in out and "--skip_bad" not in out.replace("--top_k)", "")


def test_a_parser_of_its_own_gets_the_same_conventions(capsys):
    parser = AppArgumentParser("evaluate.py", "Evaluate.")
    parser.add_option("--max-rows", type=int, default=10)
    args, overrides = parser.parse_with_overrides(["--max_rows", "3", "--data.root", "d"])
    assert (args.max_rows, overrides) == (3, ["--data.root", "d"])
    err = parse_fails(parser.parse_args, ["--bogus"], capsys)
    assert err == "error: unrecognized arguments: --bogus (see evaluate.py --help)"


def test_train_takes_ckpt_for_ckpt_path():
    assert command_line(["--ckpt", "last"])[-2:] == ["--ckpt_path", "last"]
    assert command_line(["--ckpt=runs/mnist/version_0"])[-1] == "--ckpt_path=runs/mnist/version_0"


# ------------------------------------------------------------------ runs and checkpoints meant


def fake_run(run_dir: Path, *checkpoints: str, age: float = 0) -> Path:
    """A run directory with config.yaml and empty checkpoint files, ``age`` seconds old."""
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("model: {}\n")
    for name in checkpoints:
        path = run_dir / "checkpoints" / name
        path.write_bytes(b"")
        stamp = time.time() - age
        os.utime(path, (stamp, stamp))
    return run_dir


def test_a_folder_of_runs_gets_did_you_mean_the_newest_run(tmp_path):
    from softcal.apps.cli import resolve_resume
    from softcal.runs.run_dirs import resolve_checkpoint

    runs = tmp_path / "runs" / "mnist"
    fake_run(runs / "version_0", "best.ckpt", "last.ckpt", age=100)
    fake_run(runs / "version_1", "best.ckpt", age=10)  # the newest checkpoint, but no last.ckpt
    fake_run(runs / "version_2")  # no checkpoint at all
    with pytest.raises(CheckpointError) as caught:
        resolve_checkpoint(runs)
    assert str(caught.value) == (
        f"{runs} is a folder of runs, not a run; did you mean {runs}/version_1? (the newest run in it"
        " with a checkpoint)"
    )
    with pytest.raises(CheckpointError) as caught:
        resolve_checkpoint(tmp_path / "runs")  # two levels up
    assert f"did you mean {runs}/version_1?" in str(caught.value)
    logger = {"init_args": {"save_dir": str(tmp_path / "runs"), "name": "mnist"}}
    with pytest.raises(SoftcalError) as caught:
        resolve_resume(str(runs), logger)  # resuming needs last.ckpt: version_0
    assert f"did you mean {runs}/version_0?" in str(caught.value)


def test_a_missing_checkpoint_lists_those_in_its_folder(tmp_path):
    from softcal.apps.cli import resolve_resume
    from softcal.runs.run_dirs import resolve_checkpoint

    run_dir = fake_run(tmp_path / "version_0", "best-epoch01-step428.ckpt", "last.ckpt")
    with pytest.raises(CheckpointError) as caught:
        resolve_checkpoint(run_dir / "checkpoints" / "best.ckpt")
    assert str(caught.value) == (
        f"{run_dir}/checkpoints/best.ckpt not found; pass a .ckpt file or a run directory"
        f" ({run_dir}/checkpoints holds best-epoch01-step428.ckpt, last.ckpt)"
    )
    with pytest.raises(CheckpointError) as caught:
        resolve_checkpoint(run_dir / "best.ckpt")  # checkpoints/ left out of the path
    assert str(caught.value).endswith(f" ({run_dir}/checkpoints holds best-epoch01-step428.ckpt, last.ckpt)")
    with pytest.raises(SoftcalError) as caught:
        resolve_resume(str(run_dir / "checkpoints" / "best.ckpt"), None)
    assert str(caught.value) == (
        f"checkpoint {run_dir}/checkpoints/best.ckpt not found; pass a .ckpt, a run directory or last"
        f" ({run_dir}/checkpoints holds best-epoch01-step428.ckpt, last.ckpt)"
    )


# ------------------------------------------------------------------ predict --skip-bad


@pytest.fixture
def folder_with_a_bad_file(tmp_path: Path) -> Path:
    folder = tmp_path / "scans"
    folder.mkdir()
    for i in range(2):
        Image.new("L", (28, 28), 40 * i).save(folder / f"digit{i}.png")
    (folder / "bad.png").write_text("not an image")
    return folder


def test_skip_bad_skips_unreadable_files_with_one_warning_each(tiny_run, folder_with_a_bad_file, capsys):
    from softcal.apps.predict import main as predict_main

    report = predict_main(["--ckpt", str(tiny_run), str(folder_with_a_bad_file), "--skip-bad", "--json"])
    err = capsys.readouterr().err.splitlines()
    bad = folder_with_a_bad_file / "bad.png"
    assert [line for line in err if line.startswith("warning:")] == [
        f"warning: skipping {bad}: not a readable image (cannot identify image file '{bad}')"
    ]
    assert [Path(p["file"]).name for p in report["predictions"]] == ["digit0.png", "digit1.png"]
    assert report["skipped"] == [str(bad)]


def test_without_skip_bad_an_unreadable_file_stops_and_names_the_option(tiny_run, folder_with_a_bad_file):
    from softcal.apps.predict import main as predict_main

    bad = folder_with_a_bad_file / "bad.png"
    with pytest.raises(DataError) as caught:
        predict_main(["--ckpt", str(tiny_run), str(folder_with_a_bad_file)])
    assert str(caught.value) == (
        f"{bad} is not a readable image (cannot identify image file '{bad}'); remove or replace it,"
        " or pass --skip-bad to skip unreadable files"
    )
    with pytest.raises(DataError) as caught:
        predict_main(["--ckpt", str(tiny_run), str(bad), "--skip-bad"])
    assert str(caught.value) == "none of the 1 files given is a readable image (see the warnings above)"


def test_train_prints_no_lightning_banners(caplog):
    import logging

    from softcal.apps.train import BANNER_LOGGERS, quiet_banners

    quiet_banners()
    caplog.set_level(logging.INFO)
    for name in BANNER_LOGGERS:  # evaluate, run earlier in the same process, raises their levels
        caplog.set_level(logging.INFO, logger=name)
    for name in BANNER_LOGGERS:
        logging.getLogger(name).info("Seed set to 0")
        logging.getLogger(name).info("GPU available: False, used: False")
        logging.getLogger(name).info("💡 Tip: For seamless cloud logging, try installing [litlogger]")
    logging.getLogger(BANNER_LOGGERS[-1]).info("Detected KeyboardInterrupt, attempting graceful shutdown ...")
    assert caplog.messages == ["Detected KeyboardInterrupt, attempting graceful shutdown ..."]


@pytest.mark.slow
def test_a_training_run_prints_no_lightning_banners(mnist_root, tmp_path):
    from tests.conftest import TINY, run_script

    proc = run_script("train.py", "--config", "configs/mnist.yaml", *TINY, "--figures", "false",
                      "--data.init_args.root", str(mnist_root),
                      "--trainer.logger.init_args.save_dir", str(tmp_path))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    for banner in ("Seed set to", "GPU available:", "TPU available:", "Tip:", "LeafSpec"):
        assert banner not in proc.stdout + proc.stderr, banner
    assert "test (T = 1)" in proc.stdout
