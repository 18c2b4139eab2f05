"""One schema for a run's config (softcal.runs.run_config) and the command line around it
(softcal.apps.command_line): ``-c`` is ``--config``, the old option spellings are aliases of
the callbacks' config groups, overlays name their base and resolve to the full config, no
config repeats another, and bad keys are one line with "did you mean"."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from softcal.apps.command_line import command_line
from softcal.apps.train import command
from softcal.apps.train import main as train
from softcal.calibration.callbacks import CalibrationFigures, FitCalibration
from softcal.config_files import config_chain, packaged_configs_dir
from softcal.errors import SoftcalError
from softcal.model.module import Classifier
from softcal.runs.run_config import config_datamodule, rebuild
from tests.conftest import REPO

CONFIGS = REPO / "configs"


def _printed(capsys: pytest.CaptureFixture, *args: str) -> dict:
    """The config ``train.py ARGS --print_config`` resolves, as a dict."""
    with pytest.raises(SystemExit) as done:
        train([*args, "--print_config"])
    assert done.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def _packaged(name: str) -> str:
    return str(packaged_configs_dir() / name)


# ----------------------------------------------------------------------------- the command line


@pytest.mark.parametrize("spelling", [["-c", "cifar10"], ["-c=cifar10"], ["-ccifar10"], ["--config=cifar10"],
                                      ["-c", "configs/cifar10.yaml"]])  # fmt: skip
def test_minus_c_is_the_config_option(spelling: list[str], monkeypatch):
    """-c in every argparse form names the config: no default mnist.yaml layered under it."""
    monkeypatch.chdir(REPO)
    option, path = command_line(spelling)
    assert option == "--config" and Path(path).resolve() == Path(_packaged("cifar10.yaml")).resolve()


def test_minus_c_prints_the_same_config_as_the_long_option(capsys):
    assert _printed(capsys, "-c", "cifar10") == _printed(capsys, "--config", "cifar10")


@pytest.mark.parametrize("old, new", [
    (["--calibrate", "false"], ["--calibration.enabled", "false"]),
    (["--calibrate=false"], ["--calibration.enabled=false"]),
    (["--calibrator", "vector"], ["--calibration.method", "vector"]),
    (["--calibrator=vector"], ["--calibration.method=vector"]),
    (["--figures", "false"], ["--figures.enabled", "false"]),
    (["--figures=false"], ["--figures.enabled=false"]),
    (["--figures", "{enabled: false}"], ["--figures", "{enabled: false}"]),  # the group itself
    (["--figures=mine.yaml"], ["--figures=mine.yaml"]),
])  # fmt: skip
def test_the_old_option_spellings_set_the_callback_groups(old: list[str], new: list[str]):
    assert command_line(["--config", "mnist", *old]) == ["--config", _packaged("mnist.yaml"), *new]


def test_the_aliases_reach_the_parsed_config(capsys):
    config = _printed(capsys, "--calibrate=false", "--figures", "false")
    assert config["calibration"] == {"enabled": False, "method": "temperature"}
    assert config["figures"] == {"enabled": False}
    assert "calibrate" not in config and "calibrator" not in config
    assert _printed(capsys, "--calibrator", "matrix")["calibration"] == {"enabled": True, "method": "matrix"}


@pytest.mark.parametrize("subcommand, advice", [
    ("fit", "drop 'fit' and keep the options (python scripts/train.py --config cifar10 ...)"),
    ("test", "to test a trained run, use python scripts/evaluate.py RUN_DIR"),
])  # fmt: skip
def test_a_lightning_subcommand_is_one_line_saying_what_to_type(subcommand, advice, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["train.py", subcommand, "--config", "cifar10"])
    with pytest.raises(SystemExit) as done:
        command()
    assert done.value.code == 2
    assert capsys.readouterr().err == (
        "error: train.py has no subcommands: it always fits, then tests the best checkpoint; " + advice + "\n"
    )


# ----------------------------------------------------------------------------- overlays


def _full(base: str, changes: dict[str, object], tmp_path: Path) -> str:
    """A standalone copy of configs/``base`` with ``changes`` (dotted keys) written in."""
    config = yaml.safe_load((CONFIGS / base).read_text())
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        section = config
        for key in parents:
            section = section.setdefault(key, {})
        section[last] = value
    path = tmp_path / f"full_{base}"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.parametrize("overlay, base, changes", [
    ("cifar100", "cifar10.yaml", {"trainer.logger.init_args.name": "cifar100", "trainer.max_epochs": 24,
                                  "validate_every_epoch": False,
                                  "data.class_path": "softcal.data.CIFAR100DataModule",
                                  "calibration.method": "top_label_beta"}),
    ("fashion_mnist", "mnist.yaml", {"trainer.max_epochs": 10,
                                     "trainer.logger.init_args.name": "fashion_mnist",
                                     "model.net.init_args.widths": [32, 64, 128],
                                     "model.net.init_args.stem_stride": 1,
                                     "model.net.init_args.pool_before_norm": False,
                                     "data.class_path": "softcal.data.FashionMNISTDataModule"}),
    ("cifar10_quick", "cifar10.yaml", {"trainer.max_epochs": 6,
                                       "trainer.logger.init_args.name": "cifar10_quick",
                                       "model.optimizer": "muon", "model.muon_lr": 0.12,
                                       "model.muon_momentum": 0.6, "validate_every_epoch": False}),
])  # fmt: skip
def test_an_overlay_alone_resolves_to_its_base_with_its_changes(overlay, base, changes, tmp_path, capsys):
    """``--config cifar100`` is the CIFAR-10 config with only the data class, the run name and
    the calibrator changed, exactly as a standalone file with
    those changes (its base's init_args carry over to the other datamodule class, as
    jsonargparse does for two --config files)."""
    assert [path.name for path in config_chain(CONFIGS / f"{overlay}.yaml")] == [base, f"{overlay}.yaml"]
    full = _full(base, changes, tmp_path)
    assert _printed(capsys, "--config", overlay) == _printed(capsys, "--config", full)


def test_a_base_named_twice_is_applied_once():
    """The README's two-file form still means what it did; the base is not layered again on top."""
    assert command_line(["--config", "cifar10", "--config", "cifar10_quick"]) == command_line(
        ["--config", "cifar10_quick"]) == ["--config", _packaged("cifar10.yaml"),
                                          "--config", _packaged("cifar10_quick.yaml")]  # fmt: skip


def _leaves(config: dict, prefix: str = "") -> dict[str, str]:
    found: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            found.update(_leaves(value, f"{prefix}{key}."))
        else:
            found[f"{prefix}{key}"] = repr(value)
    return found


def test_no_config_repeats_another():
    """Two configs that share sections are one config and an overlay of it (``# base:``).

    Fails when two files (as written, not resolved) hold more than one identical top-level
    entry (``seed_everything: 0`` may repeat; a whole ``model:`` or ``checkpoint:`` may not),
    or when half of the smaller one's settings are the other's, value for value (what
    ``cifar100.yaml`` and ``fashion_mnist.yaml`` were before they became overlays)."""
    configs = {path.name: yaml.safe_load(path.read_text()) or {} for path in sorted(CONFIGS.glob("*.yaml"))}
    repeats = []
    for (a, one), (b, other) in itertools.combinations(configs.items(), 2):
        same_sections = sorted(key for key in one if key in other and one[key] == other[key])
        mine, theirs = _leaves(one), _leaves(other)
        same = [key for key in mine if theirs.get(key) == mine[key]]
        if len(same_sections) > 1 or len(same) > min(len(mine), len(theirs)) / 2:
            repeats.append(f"{a} and {b}: identical sections {same_sections}, {len(same)} identical settings")
    assert not repeats, "configs that repeat each other (make one an overlay):\n" + "\n".join(repeats)


def test_an_overlay_finds_its_base_beside_it_or_packaged(tmp_path):
    """A copy of an overlay still finds the packaged base; a base beside it comes first."""
    copy = tmp_path / "mine.yaml"
    copy.write_text("# my CIFAR-100 run\n# base: cifar10.yaml\ntrainer:\n  max_epochs: 2\n")
    assert config_chain(copy) == [packaged_configs_dir() / "cifar10.yaml", copy]
    (tmp_path / "cifar10.yaml").write_text("seed_everything: 1\n")
    assert config_chain(copy) == [tmp_path / "cifar10.yaml", copy]
    late = tmp_path / "late.yaml"  # only the opening comments name a base
    late.write_text("seed_everything: 1\n# base: cifar10.yaml\n")
    assert config_chain(late) == [late]


def test_bad_bases_are_one_line(tmp_path):
    lost = tmp_path / "lost.yaml"
    lost.write_text("# base: nowhere.yaml\n")
    with pytest.raises(SoftcalError) as caught:
        config_chain(lost)
    assert str(caught.value) == (
        f"config {lost} names its base nowhere.yaml ('# base:' line), which is neither beside it nor a"
        " packaged config; correct that line or put the base beside it"
    )
    (tmp_path / "a.yaml").write_text("# base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("# base: a.yaml\n")
    with pytest.raises(SoftcalError) as caught:
        config_chain(tmp_path / "a.yaml")
    assert str(caught.value).startswith(f"config {tmp_path}/a.yaml: its '# base:' lines go round in a loop (")
    assert str(caught.value).endswith("); break it")


# ----------------------------------------------------------------------------- one parser, its errors


def test_the_ood_path_reads_an_overlay_as_training_does():
    """``evaluate --ood fashion_mnist``: the datamodule of mnist.yaml's data with the overlay's on
    top - the class and batch size change, MNIST's other settings carry over."""
    data = config_datamodule(config_chain(CONFIGS / "fashion_mnist.yaml"), "--ood fashion_mnist")
    assert type(data).__name__ == "FashionMNISTDataModule"
    assert (data.batch_size, data.eval_batch_size, data.val_size) == (128, 1000, 5000)
    cifar100 = config_datamodule(config_chain(CONFIGS / "cifar100.yaml"), "--ood cifar100")
    assert type(cifar100).__name__ == "CIFAR100DataModule" and cifar100.batch_size == 512


@pytest.mark.parametrize("args, expected", [
    (["--trainr.max_epochs", "3"],
     "unrecognized arguments: --trainr.max_epochs 3 (did you mean --trainer.max_epochs?)"),
    (["--data.init_args.batchsize", "3"],
     'Parser key "data": softcal.data.MNISTDataModule does not accept option \'batchsize\' (did you'
     " mean batch_size?)"),
    (["--model.net.init_args.widht", "3"],
     'Parser key "model.net": softcal.model.nets.DigitCNN does not accept option \'widht\' (did you'
     " mean widths?)"),
    # a value of the wrong type: the type and the value, not every type a Union would take
    (["--model.lr", "abc"], "Parser key \"model.lr\": expects float, got 'abc'"),
    (["--trainer.max_epochs", "three"],
     "Parser key \"trainer.max_epochs\": expects int or null, got 'three'"),
    (["--data.batch_size", "x"],
     "Parser key \"data\": softcal.data.MNISTDataModule option 'batch_size' expects int, got 'x'"),
    (["--data.val_split_seed", "x"],
     "Parser key \"data\": softcal.data.MNISTDataModule option 'val_split_seed' expects int or null,"
     " got 'x'"),
])  # fmt: skip
def test_a_misspelt_option_or_a_wrong_value_is_one_line(args, expected):
    with pytest.raises(SoftcalError) as caught:
        train(args)
    assert str(caught.value) == f"bad config or argument: {expected} (see --help)"


@pytest.mark.parametrize("text, expected", [
    ("calibrate: false\n", "Option 'calibrate' is not accepted (did you mean calibration.enabled?)"),
    ("calibrator: vector\n", "Option 'calibrator' is not accepted (did you mean calibration.method?)"),
    ("model:\n  lrr: 0.1\n", "Group 'model' does not accept option 'lrr' (did you mean model.lr?)"),
])  # fmt: skip
def test_a_config_file_with_a_moved_or_misspelt_key_gets_did_you_mean(text, expected, tmp_path):
    (tmp_path / "old.yaml").write_text(text)
    with pytest.raises(SoftcalError) as caught:
        train(["--config", "mnist", "--config", str(tmp_path / "old.yaml")])
    assert str(caught.value) == f"bad config or argument: {expected} (see --help)"


def test_a_callback_group_given_a_plain_value_is_one_line(tmp_path):
    (tmp_path / "old.yaml").write_text("figures: false\n")  # the option's spelling before the group
    with pytest.raises(SoftcalError) as caught:
        train(["--config", "mnist", "--config", str(tmp_path / "old.yaml"),
               "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")])  # fmt: skip
    assert str(caught.value) == (
        "figures: false is not a group of options; set one of its options: --figures.enabled false (in"
        " YAML: figures: {enabled: false})"
    )
    assert not (tmp_path / "runs").exists(), "refused before any run directory was made"


def test_a_calibrator_without_calibration_is_refused_in_the_groups_too(tmp_path):
    (tmp_path / "c.yaml").write_text("calibration:\n  enabled: false\n  method: isotonic\n")
    with pytest.raises(SoftcalError, match="^--calibrator isotonic needs --calibrate true: with --calibrate"):
        train(["--config", "mnist", "--config", str(tmp_path / "c.yaml")])


def test_an_override_of_a_reopened_run_gets_did_you_mean(tmp_path):
    saved = {"seed_everything": 0, "model": {}, "data": {"class_path": "softcal.data.MNISTDataModule",
                                                         "init_args": {"root": str(tmp_path)}}}  # fmt: skip
    with pytest.raises(SoftcalError) as caught:
        rebuild(tmp_path / "config.yaml", saved, ["--model.lrr", "0.1"], {})
    assert str(caught.value) == (
        "bad override: unrecognized arguments: --model.lrr 0.1 (did you mean --model.lr?)"
    )


# ----------------------------------------------------------------------------- the callbacks


def test_disabled_callbacks_do_nothing():
    """``enabled: false`` keeps a callback in the Trainer's list but inert: no T reset, no
    logits kept, no sums for figures."""
    model = Classifier(num_classes=3, in_channels=1)
    model.calibration.use_temperature(1.5)
    trainer = SimpleNamespace(sanity_checking=False, current_epoch=0, global_step=0, logger=None,
                              is_global_zero=True)  # fmt: skip
    outputs = {"logits": torch.randn(4, 3), "labels": torch.tensor([0, 1, 2, 0])}
    fit, figures = FitCalibration("vector", enabled=False), CalibrationFigures(enabled=False, n_bins=5)
    fit.on_train_epoch_start(trainer, model)
    for callback in (fit, figures):
        callback.on_validation_batch_end(trainer, model, outputs, None, 0)
        callback.on_validation_epoch_end(trainer, model)
    figures.on_test_batch_end(trainer, model, outputs, None, 0)
    figures.on_test_epoch_end(trainer, model)
    assert model.calibration.temperature == 1.5 and fit._logits == []
    assert figures.finished == {} and figures.n_bins == 5
    assert FitCalibration().enabled and FitCalibration().method == "temperature"
    old_call = CalibrationFigures(10)  # n_bins comes first, as evaluate passes it
    assert old_call.enabled is True and old_call.n_bins == 10
