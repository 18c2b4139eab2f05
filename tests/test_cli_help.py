"""``train.py --help`` fits a screen and shows the values the run would use."""

from __future__ import annotations

import pytest

from softcal.apps.train import main as train_main


def train_help(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> list[str]:
    """The lines ``train.py ARGS`` prints on an 80-column terminal; it must exit 0."""
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit) as caught:
        train_main(args)
    assert caught.value.code == 0
    return capsys.readouterr().out.splitlines()


def option_line(lines: list[str], option: str) -> str:
    """The line that starts the option's entry, with the two next (a default may wrap)."""
    i = next(i for i, line in enumerate(lines) if line.lstrip().startswith(option + " "))
    return " ".join(lines[i : i + 3])


def test_help_is_one_screen_with_the_default_configs_values(monkeypatch, capsys):
    lines = train_help(["--help"], monkeypatch, capsys)
    text = "\n".join(lines)
    assert len(lines) <= 250, f"{len(lines)} lines"
    assert max(map(len, lines)) <= 80
    # configs/mnist.yaml: 1 epoch (the Trainer's own default is 1000), channels-last (the
    # Classifier's is off) and a DigitCNN with options its defaults leave off
    assert "(default: 1)" in option_line(lines, "--trainer.max_epochs")
    assert "(default: true)" in option_line(lines, "--model.channels_last")
    net = " ".join(option_line(lines, "--model.net").split())  # the default wraps
    assert "DigitCNN(widths=[16, 32, 64], stem_stride=2, pool_before_norm=true)" in net
    assert "given: mnist.yaml" in option_line(lines, "-c, --config")
    # sections titled by their config group, not by class reprs or docstrings
    for title in ("trainer (Lightning's Trainer):", "model (the classifier", "data (the dataset",
                  "calibration (fitted on the validation logits", "figures (reliability"):  # fmt: skip
        assert any(line.startswith(title) for line in lines), title
    for noise in ("<class", "torch.nn.Identity", "lacks type and help", "known subclasses",
                  "--optimizer", "--lr_scheduler"):  # fmt: skip
        assert noise not in text, noise
    # the long forms, and the examples
    assert "--data.help MNISTDataModule" in text and "--model.net.help DigitCNN" in text
    assert "examples:" in text and "--ckpt last" in text
    assert "--ckpt_path, --ckpt" in text and "--calibration.method, --calibrator" in text


def test_help_shows_the_values_of_the_configs_and_overrides_given(monkeypatch, capsys):
    lines = train_help(["-c", "cifar10", "--model.lr", "0.003", "--help"], monkeypatch, capsys)
    assert "(default: 0.003)" in option_line(lines, "--model.lr")
    assert "given: cifar10.yaml" in option_line(lines, "-c, --config")
    assert "CIFAR10DataModule(" in option_line(lines, "--data")


def test_help_after_a_bad_value_falls_back_to_the_classes_defaults(monkeypatch, capsys):
    lines = train_help(["--trainer.max_epochs", "three", "--help"], monkeypatch, capsys)
    assert "the classes' own" in " ".join(lines)
    assert "(default: 0.01)" in option_line(lines, "--model.lr")


def test_a_class_help_keeps_its_long_form(monkeypatch, capsys):
    lines = train_help(["--data.help", "MNISTDataModule"], monkeypatch, capsys)
    assert any(line.lstrip().startswith("--data.batch_size BATCH_SIZE") for line in lines)
    assert any("MNIST handwritten digits" in line for line in lines)
