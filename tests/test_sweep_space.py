"""Search spaces: the YAML format, every bad entry as one line naming it, the names checked
against the training command line, and the values a trial hands training. Fast: no training."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("optuna")

from softcal.errors import SoftcalError  # noqa: E402
from softcal.sweep.space import Parameter, arguments, read_space, resolve_space  # noqa: E402
from softcal.sweep.training_options import check_space, logger_save_dir, training_config  # noqa: E402
from tests.conftest import REPO  # noqa: E402

TRAIN = ["--config", "mnist"]


def space_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(body)
    return path


def space_error(path: Path) -> str:
    """The one line reading the space at ``path`` fails with."""
    with pytest.raises(SoftcalError) as caught:
        read_space(path)
    assert "\n" not in str(caught.value)
    return str(caught.value)


@pytest.mark.parametrize("name", ["mnist", "cifar10_quick"])
def test_the_packaged_spaces_name_options_of_their_configs(name):
    space = read_space(resolve_space(name))
    assert space.path == REPO / "configs" / "sweeps" / f"{name}.yaml"
    options = set(training_config(["--config", name]).keys())
    assert {p.name for p in space.parameters} <= options
    assert {"model.lr", "model.weight_decay"} <= {p.name for p in space.parameters}


@pytest.mark.slow  # a parse per end of each range: a few seconds
@pytest.mark.parametrize("name", ["mnist", "cifar10_quick"])
def test_the_packaged_spaces_pass_the_whole_check(name):
    config = check_space(read_space(resolve_space(name)), ["--config", name])
    assert config.get("model.lr") > 0


def test_a_space_names_options_as_on_the_command_line(tmp_path):
    space = read_space(space_file(tmp_path, """
parameters:
  --model.lr: {type: float, low: 0.001, high: 0.1, log: true}
  trainer.max_epochs: {type: int, low: 1, high: 4, step: 1}
  model.net.init_args.widths: {type: categorical, choices: ["[8, 16, 32]", "[16, 32, 64]"]}
  calibration.enabled: {type: categorical, choices: [true, false]}
"""))
    lr, epochs, widths, calibrate = space.parameters
    assert lr == Parameter("model.lr", "float", 0.001, 0.1, log=True)
    assert (epochs.kind, epochs.low, epochs.high, epochs.step) == ("int", 1, 4, 1)
    assert widths.choices == ("[8, 16, 32]", "[16, 32, 64]") and calibrate.choices == (True, False)
    values = {"model.lr": 0.01, "trainer.max_epochs": 2, "model.net.init_args.widths": "[8, 16, 32]",
              "calibration.enabled": False}  # fmt: skip
    assert arguments(values) == [
        "--model.lr", "0.01", "--trainer.max_epochs", "2", "--model.net.init_args.widths", "[8, 16, 32]",
        "--calibration.enabled", "false",
    ]  # fmt: skip
    choices = space.__class__(space.path, (widths, calibrate))
    config = check_space(choices, TRAIN)  # every choice parses (ranges: the packaged spaces' test)
    assert logger_save_dir(config) == "runs"


def test_contains_says_whether_the_config_value_is_in_the_space():
    lr = Parameter("model.lr", "float", 0.001, 0.1, log=True)
    batch = Parameter("data.init_args.batch_size", "categorical", choices=(128, 256))
    epochs = Parameter("trainer.max_epochs", "int", 1, 4)
    assert lr.contains(0.02) and not lr.contains(0.5) and not lr.contains("0.02")
    assert batch.contains(256) and not batch.contains(512) and not batch.contains(256.0)
    assert epochs.contains(2) and not epochs.contains(2.5) and not epochs.contains(True)


@pytest.mark.parametrize(("body", "expected"), [
    ("parameters:\n  model.lr: {type: float, low: 0.1, high: 0.01}\n",
     ", parameter model.lr: low 0.1 is above high 0.01; swap them"),
    ("parameters:\n  model.lr: {type: real, low: 0.1, high: 1}\n",
     ', parameter model.lr: type must be float, int or categorical, not "real"'),
    ("parameters:\n  model.lr: {type: float, lo: 0.1, high: 1}\n",
     ", parameter model.lr: unknown key 'lo' (the keys are type, low, high, log, step, choices)"),
    ("parameters:\n  model.lr: {type: float, low: 0.1}\n",
     ", parameter model.lr: a float parameter needs both low and high"),
    ("parameters:\n  trainer.max_epochs: {type: int, low: 1.5, high: 3}\n",
     ", parameter trainer.max_epochs: low and high must be whole numbers, not 1.5 and 3"),
    ("parameters:\n  model.lr: {type: float, low: 0, high: 1, log: true}\n",
     ", parameter model.lr: a log scale needs low above 0, not 0"),
    ("parameters:\n  model.lr: {type: float, low: 0.1, high: 1, log: yes please}\n",
     ', parameter model.lr: log must be true or false, not "yes please"'),
    ("parameters:\n  model.lr: {type: float, low: 0.1, high: 1, log: true, step: 0.1}\n",
     ", parameter model.lr: step and log cannot be combined; drop one (a grid or a log scale)"),
    ("parameters:\n  trainer.max_epochs: {type: int, low: 1, high: 3, step: 0}\n",
     ", parameter trainer.max_epochs: step must be a positive int, not 0"),
    ("parameters:\n  data.init_args.batch_size: {type: categorical, choices: []}\n",
     ", parameter data.init_args.batch_size: a categorical parameter needs a non-empty list of choices"),
    ("parameters:\n  data.init_args.batch_size: {type: categorical, choices: [1, 2], low: 1}\n",
     ", parameter data.init_args.batch_size: a categorical parameter takes choices, not low"),
    ("parameters:\n  model.net.init_args.widths: {type: categorical, choices: [[8, 16, 32]]}\n",
     ", parameter model.net.init_args.widths: choice [8, 16, 32] is not a number, string, true/false or"
     " null; write it as a string, '[8, 16, 32]', which the command line reads back"),
    ("parameters:\n  model.lr: 0.1\n",
     ", parameter model.lr: expected a mapping such as {type: float, low: 0.001, high: 0.1, log: true},"
     " got 0.1"),
    ("parameters:\n  model.lr: {type: float, low: 0.1, high: 1}\n"
     "  --model.lr: {type: float, low: 0.1, high: 1}\n",
     ", parameter model.lr: given twice (as --model.lr and model.lr); keep one"),
    ("parameters:\n  trainer.logger.init_args.version: {type: int, low: 1, high: 3}\n",
     ", parameter trainer.logger.init_args.version: set by the sweep itself (each trial's own run); it"
     " cannot be searched"),
    ("model.lr: {type: float, low: 0.1, high: 1}\n",
     " has no 'parameters:' mapping of options to ranges; see configs/sweeps/mnist.yaml for the format"),
])  # fmt: skip
def test_a_bad_entry_is_one_line_naming_it(tmp_path, body, expected):
    path = space_file(tmp_path, body)
    assert space_error(path) == f"search space {path}{expected}"


def test_unreadable_yaml_is_one_line(tmp_path):
    path = space_file(tmp_path, "parameters: {model.lr: [unclosed\n")
    message = space_error(path)
    assert message.startswith(f"search space {path} cannot be read as YAML (")
    assert message.endswith("); correct it")


def test_an_unknown_option_is_refused_with_the_nearest_name(tmp_path):
    path = space_file(tmp_path, "parameters:\n  model.lrr: {type: float, low: 0.001, high: 0.1}\n")
    with pytest.raises(SoftcalError) as caught:
        check_space(read_space(path), TRAIN)
    assert str(caught.value) == (
        f"search space {path}, parameter model.lrr: not an option of the training command line; did you"
        " mean model.lr? (python scripts/train.py --help lists them)"
    )


def test_a_value_training_refuses_is_one_line_naming_the_entry(tmp_path):
    body = "parameters:\n  data.init_args.batch_size: {type: categorical, choices: [64, big]}\n"
    path = space_file(tmp_path, body)
    with pytest.raises(SoftcalError) as caught:
        check_space(read_space(path), TRAIN)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(
        f"search space {path}, parameter data.init_args.batch_size: the training command line refuses the"
        " value 'big': "
    )


def test_a_sweep_needs_the_tensorboard_logger(tmp_path):
    space = read_space(space_file(tmp_path, "parameters:\n  model.lr: {type: float, low: 0.01, high: 0.1}\n"))
    config = check_space(space, [*TRAIN, "--trainer.logger", "false"])
    with pytest.raises(SoftcalError) as caught:
        logger_save_dir(config)
    assert str(caught.value) == (
        "a sweep needs the config's TensorBoard logger (trainer.logger): each trial's run directory is one"
        " of its versions; drop --trainer.logger false or restore the logger in the config"
    )


def test_a_missing_space_lists_the_packaged_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SoftcalError) as caught:
        resolve_space("nope")
    message = str(caught.value)
    assert message.startswith(
        "search space nope not found: no such file here, and the packaged spaces are cifar10_quick.yaml,"
        " mnist.yaml (in "
    )
    assert resolve_space("configs/sweeps/mnist.yaml") == resolve_space("mnist.yaml") == resolve_space("mnist")
