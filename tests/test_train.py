"""The LightningModule's steps, a CPU fast_dev_run, and the train script end to end."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from softcal.apps.cli import format_results, train, trainer_settings_error
from softcal.data import MNISTDataModule
from softcal.errors import CheckpointError, SoftcalError
from softcal.model.module import Classifier
from softcal.model.nets import DigitCNN, ResNet
from softcal.runs.files import resolve_checkpoint
from tests.conftest import TINY, run_script


def test_nets_give_logits_of_the_right_shape():
    assert DigitCNN(1, 10)(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert DigitCNN(3, 5, image_size=32)(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    assert ResNet(3, 100, base_width=8, blocks=(1, 1))(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_shared_step_loss_is_cross_entropy_on_logits_and_metrics_on_softmax():
    model = Classifier(num_classes=10, in_channels=1)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    model.train()
    loss = model.training_step((x, y), 0)
    model.eval()
    with torch.no_grad():
        logits = model(x)
    assert torch.allclose(model.probabilities(logits).sum(1), torch.ones(16), atol=1e-6)
    model.temperature.fill_(2.0)
    assert torch.allclose(model.probabilities(logits), torch.softmax(logits / 2, 1), atol=1e-6)
    assert torch.allclose(model.probabilities(logits, calibrated=False), torch.softmax(logits, 1))
    assert loss.ndim == 0 and loss.requires_grad
    # the returned loss is exactly cross-entropy of the logits (BatchNorm in eval = same net)
    model.train()
    torch.manual_seed(0)
    assert torch.isclose(model.training_step((x, y), 0), F.cross_entropy(model(x), y))


def test_label_smoothing_is_an_option_and_off_by_default():
    assert Classifier().hparams.label_smoothing == 0.0
    model = Classifier(label_smoothing=0.1)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    assert torch.isclose(model.training_step((x, y), 0),
                         F.cross_entropy(model(x), y, label_smoothing=0.1))  # fmt: skip


def test_fast_dev_run_on_cpu(mnist_root, tmp_path):
    dm = MNISTDataModule(root=str(mnist_root), val_size=100, batch_size=32, download=False)
    model = Classifier(num_classes=dm.num_classes, in_channels=dm.in_channels,
                       class_names=dm.class_names)  # fmt: skip
    trainer = L.Trainer(accelerator="cpu", fast_dev_run=2, default_root_dir=tmp_path,
                        enable_progress_bar=False, logger=False)  # fmt: skip
    trainer.fit(model, datamodule=dm)
    results = trainer.test(model, datamodule=dm, verbose=False)[0]
    assert 0.0 <= results["test/acc"] <= 1.0 and "test_calibrated/ece" in results
    predictions = trainer.predict(model, datamodule=dm)
    assert torch.allclose(predictions[0].sum(1), torch.ones(len(predictions[0])), atol=1e-5)


def test_startup_objects_are_frozen_while_training_and_released_after(mnist_root, tmp_path):
    import gc

    from softcal.runs.callbacks import FreezeStartupObjects

    seen = []

    class Probe(L.Callback):
        def on_train_batch_start(self, *args) -> None:
            seen.append(gc.get_freeze_count())

    class Boom(L.Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            if trainer.current_epoch == 0 and trainer.global_step == 2 and self.armed:
                raise RuntimeError("boom")

    dm = MNISTDataModule(root=str(mnist_root), val_size=100, batch_size=32, download=False)
    for armed in (False, True):
        boom = Boom()
        boom.armed = armed
        model = Classifier(num_classes=dm.num_classes, in_channels=dm.in_channels)
        trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=3,
                            limit_val_batches=1, default_root_dir=tmp_path, logger=False,
                            enable_progress_bar=False, enable_checkpointing=False,
                            callbacks=[FreezeStartupObjects(), Probe(), boom])  # fmt: skip
        if armed:
            with pytest.raises(RuntimeError, match="boom"):
                trainer.fit(model, datamodule=dm)
        else:
            trainer.fit(model, datamodule=dm)
        assert gc.get_freeze_count() == 0, "released after training, also after a crash"
    assert seen and all(count > 10_000 for count in seen), seen


def test_freed_memory_is_kept_unless_switched_off(mnist_root, monkeypatch):
    import softcal.apps.cli
    from softcal.allocator import keep_freed_memory

    assert keep_freed_memory() is True  # glibc on Linux takes both thresholds
    calls = []
    monkeypatch.setattr(softcal.apps.cli, "keep_freed_memory", lambda: calls.append(1) or True)
    base = ["--data.init_args.root", str(mnist_root), "--trainer.logger", "false"]
    softcal.apps.cli.SoftcalCLI(base)
    assert calls == [1]
    softcal.apps.cli.SoftcalCLI([*base, "--keep_freed_memory", "false"])
    assert calls == [1]


def test_results_table_lists_raw_and_calibrated():
    table = format_results({"test/acc": 0.99, "test/ece": 0.02, "test_calibrated/acc": 0.99,
                            "test_calibrated/ece": 0.01, "test/nll": 0.05}, 1.5, "title")  # fmt: skip
    assert "99.00%" in table and "2.00%" in table and "1.00%" in table and "T = 1.500" in table


def _events(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_train_script_end_to_end_as_the_readme_shows(mnist_sized_root, tmp_path):
    """The README's smoke command, run as a subprocess: checkpoint, config, TensorBoard."""
    proc = run_script(
        "train.py", "--config", "configs/mnist.yaml", "--config", "configs/smoke.yaml",
        env={"SOFTCAL_DATA_ROOT": str(mnist_sized_root)}, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MNIST test set" in proc.stdout and "calibrated (T = " in proc.stdout
    run_dir = tmp_path / "runs" / "mnist" / "version_0"
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert list((run_dir / "checkpoints").glob("best-*.ckpt"))
    results = json.loads((run_dir / "results.json").read_text())
    assert results["metrics"]["test/acc"] == results["metrics"]["test_calibrated/acc"]
    temperature = json.loads((run_dir / "temperature.json").read_text())["temperature"]
    best = torch.load(results["checkpoint"], map_location="cpu", weights_only=True)
    assert float(best["state_dict"]["temperature"]) == pytest.approx(temperature)
    scalars = set(_events(run_dir).Tags()["scalars"])
    for tag in ("train/loss", "train/acc", "val/acc", "val/ece", "test/acc", "test/ece",
                "test_calibrated/ece", "test/nll", "test/brier", "test/adaptive_ece"):  # fmt: skip
        assert tag in scalars, tag


def test_reliability_diagrams_every_validation_epoch_and_at_test(mnist_root, tmp_path):
    train([
        "--config", "configs/mnist.yaml", *TINY, "--trainer.max_epochs", "2",
        "--data.init_args.root", str(mnist_root),
        "--trainer.logger.init_args.save_dir", str(tmp_path),
    ])  # fmt: skip
    events = _events(tmp_path / "mnist" / "version_0")
    images = events.Tags()["images"]
    assert len(events.Images("val/reliability_diagram")) == 2
    for tag in ("test/reliability_diagram", "test_calibrated/reliability_diagram",
                "val/confidence_histogram", "val/confusion_matrix", "test/confusion_matrix"):  # fmt: skip
        assert tag in images, tag


@pytest.mark.parametrize("config,fixture", [("configs/cifar10.yaml", "cifar10_root"),
                                            ("configs/cifar100.yaml", "cifar100_root")])  # fmt: skip
def test_cifar_configs_train(config, fixture, tmp_path, request):
    root = request.getfixturevalue(fixture)
    results = train([
        "--config", config, *TINY, "--data.init_args.val_size", "50",
        "--model.net.init_args.base_width", "8", "--data.init_args.root", str(root),
        "--trainer.logger.init_args.save_dir", str(tmp_path),
    ])  # fmt: skip
    assert 0.0 <= results["metrics"]["test/acc"] <= 1.0
    if "cifar100" in config:
        assert "test/acc_top5" in results["metrics"]


def test_image_folder_config_learns(image_folder, tmp_path):
    results = train([
        "--config", "configs/cifar10_sample.yaml", "--trainer.max_epochs", "6",
        "--trainer.enable_progress_bar", "false", "--data.init_args.batch_size", "16",
        "--data.init_args.val_size", "0.2", "--data.init_args.root", str(image_folder.parent),
        "--data.init_args.folder", image_folder.name, "--data.init_args.mean", "[0.5,0.5,0.5]",
        "--data.init_args.std", "[0.25,0.25,0.25]", "--model.lr", "0.05",
        "--trainer.logger.init_args.save_dir", str(tmp_path),
    ])  # fmt: skip
    assert results["metrics"]["test/acc"] > 0.5  # three classes: chance is 1/3


def test_missing_data_is_one_line_without_traceback(tmp_path):
    proc = run_script("train.py", env={"SOFTCAL_DATA_ROOT": str(tmp_path / "empty")}, cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "MNIST not found" in errors[0] and "SOFTCAL_DATA_ROOT" in errors[0]


def test_train_without_checkpointing_tests_the_final_weights(mnist_root, tmp_path):
    proc = run_script(
        "train.py", *TINY, "--trainer.limit_train_batches", "2", "--trainer.enable_checkpointing",
        "false", "--data.init_args.root", str(mnist_root), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MNIST test set, final weights (no checkpoint saved)" in proc.stdout
    run_dir = tmp_path / "runs" / "mnist" / "version_0"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["checkpoint"] is None and 0.0 <= results["metrics"]["test/acc"] <= 1.0
    temperature = json.loads((run_dir / "temperature.json").read_text())["temperature"]
    assert results["temperature"] == pytest.approx(temperature)
    assert not (run_dir / "checkpoints").exists()  # neither best-*.ckpt nor last.ckpt
    # What needs a checkpoint says so in one line: evaluate/predict/export, and resuming.
    with pytest.raises(CheckpointError, match="enable_checkpointing false saves none"):
        resolve_checkpoint(run_dir)
    with pytest.raises(SoftcalError, match="no run in .* has checkpoints/last.ckpt"):
        train(["--ckpt_path", "last", "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
               "--data.init_args.root", str(mnist_root)])  # fmt: skip


def test_conflicting_trainer_settings_are_one_line_without_machine_advice(mnist_root, tmp_path):
    """Only accelerator and device problems are told to change the accelerator."""
    proc = run_script(
        "train.py", *TINY, "--trainer.enable_checkpointing", "false", "--trainer.callbacks",
        "lightning.pytorch.callbacks.ModelCheckpoint", "--data.init_args.root", str(mnist_root),
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith("error: invalid trainer settings: Trainer was configured with")
    assert "`enable_checkpointing=False`" in errors[0] and "accelerator" not in errors[0]


@pytest.mark.parametrize("message", [
    "No supported gpu backend found!",
    "You requested gpu: [0, 1]\n But your machine only has: [0]",
    "`CUDAAccelerator` can not run on your system since the accelerator is not available.",
    "`Trainer(devices='0')` value is not a valid input using cpu accelerator.",
])  # fmt: skip
def test_device_problems_keep_the_machine_advice(message):
    text = str(trainer_settings_error(MisconfigurationException(message)))
    assert text.startswith("trainer settings do not fit this machine: " + message.splitlines()[0])
    assert "--trainer.accelerator cpu" in text and "\n" not in text


def test_unknown_config_key_is_rejected(tmp_path):
    proc = run_script("train.py", "--model.learning_rate", "0.1", cwd=tmp_path)
    assert proc.returncode != 0 and "learning_rate" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_gpu_overlay_runs_on_cpu_with_bf16(mnist_root, tmp_path):
    """configs/gpu.yaml's settings (bf16-mixed, channels_last, pinned/device-resident data)
    through the same code path on the CPU; compile is exercised separately below."""
    results = train([
        "--config", "configs/mnist.yaml", "--config", "configs/gpu.yaml", *TINY,
        "--trainer.accelerator", "cpu", "--model.compile", "false",
        "--data.init_args.root", str(mnist_root),
        "--trainer.logger.init_args.save_dir", str(tmp_path),
    ])  # fmt: skip
    assert 0.0 <= results["metrics"]["test/acc"] <= 1.0
    assert results["metrics"]["test/acc"] == results["metrics"]["test_calibrated/acc"]


def test_compile_switch_wraps_the_net_but_checkpoints_hold_plain_weights(monkeypatch):
    calls = []

    def fake_compile(module):
        calls.append(module)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = Classifier(compile=True)
    model.configure_model()
    assert calls == [model.net]
    assert not any("_orig_mod" in key for key in model.state_dict())
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
