"""The LightningModule's steps, its temperature state, the optimiser and schedules, the train
workflow in-process, and the train script end to end as the README runs it."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from softcal.apps.cli import trainer_settings_error
from softcal.apps.train import main as train
from softcal.calibration.temperature import fit_temperature
from softcal.data import MNISTDataModule
from softcal.errors import CheckpointError, SoftcalError
from softcal.model.module import Classifier
from softcal.model.optimization import build_schedule, parameter_groups
from softcal.runs.results_table import format_results
from softcal.runs.run_dirs import resolve_checkpoint
from tests.conftest import FEW_STEPS_WITH_ERRORS, TINY, run_script
from tests.helpers import collect_logits, stored_method, stored_temperature


def _tiny(root: Path, save_dir: Path, *extra: str) -> list[str]:
    return ["--config", "configs/mnist.yaml", *TINY, "--data.init_args.root", str(root),
            "--trainer.logger.init_args.save_dir", str(save_dir), *extra]  # fmt: skip


def _state(path: str | Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


# ----------------------------------------------------------------------------- the module


def test_loss_is_cross_entropy_on_logits_and_probabilities_are_softmax_over_t():
    model = Classifier(num_classes=10, in_channels=1)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    model.train()
    torch.manual_seed(0)
    loss = model.training_step((x, y), 0)
    torch.manual_seed(0)
    assert torch.isclose(loss, F.cross_entropy(model(x), y))
    model.eval()
    with torch.no_grad():
        logits = model(x)
    assert torch.allclose(model.probabilities(logits), torch.softmax(logits, 1))  # not fitted: T = 1
    model.calibration.use_temperature(2.0)
    assert torch.allclose(model.probabilities(logits), torch.softmax(logits / 2, 1), atol=1e-6)
    assert torch.allclose(model.probabilities(logits, calibrated=False), torch.softmax(logits, 1))


def test_label_smoothing_is_an_option_and_off_by_default():
    assert Classifier().hparams.label_smoothing == 0.0
    model = Classifier(label_smoothing=0.1)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    torch.manual_seed(0)
    loss = model.training_step((x, y), 0)
    torch.manual_seed(0)
    assert torch.isclose(loss, F.cross_entropy(model(x), y, label_smoothing=0.1))
    assert not torch.isclose(loss, F.cross_entropy(model(x), y))


def test_temperature_state_is_explicit_and_travels_in_the_state_dict():
    model = Classifier()
    assert model.calibration.temperature is None and not model.calibration.fitted
    model.calibration.use_temperature(1.0)  # a fitted T of exactly 1 is fitted, not "uncalibrated"
    assert model.calibration.temperature == 1.0
    model.calibration.use_temperature(0.75)
    copy = Classifier()
    copy.load_state_dict(model.state_dict())
    assert copy.calibration.temperature == 0.75
    model.calibration.use_temperature(None)
    assert model.calibration.temperature is None and not model.calibration.fitted


# ----------------------------------------------------------------------------- optimisation


def test_weight_decay_skips_batchnorm_and_biases_and_frozen_layers():
    from softcal.model.whitened_cnn import WhitenedCNN

    net = WhitenedCNN(3, 10, widths=(8, 16, 16))
    decay, other = parameter_groups(net, weight_decay=0.1, bias_lr_scale=4.0, lr=0.5)
    assert decay["weight_decay"] == 0.1 and other["weight_decay"] == 0.0
    assert decay["lr"] == 0.5 and other["lr"] == 2.0
    decayed, not_decayed = {id(p) for p in decay["params"]}, {id(p) for p in other["params"]}
    for name, p in net.named_parameters():
        if not p.requires_grad:  # the whitening filters and the frozen BatchNorm scales
            assert id(p) not in decayed | not_decayed, name
        elif p.ndim > 1:
            assert id(p) in decayed, name
        else:  # BatchNorm shifts, the whitening bias
            assert id(p) in not_decayed, name
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())


def _lrs(name: str, total: int = 100, warmup: float = 0.2) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = build_schedule(optimizer, name, total, warmup, planned=None)
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return lrs


def test_cosine_schedule_warms_up_linearly_then_decays_to_zero():
    lrs = _lrs("cosine")
    assert lrs[0] == pytest.approx(1 / 20) and lrs[19] == pytest.approx(1.0)
    assert lrs[20] == pytest.approx(1.0) and lrs[60] == pytest.approx(0.5, abs=0.02)
    assert lrs[-1] < 0.002 and all(a >= b for a, b in zip(lrs[20:], lrs[21:], strict=False))


def test_linear_schedule_is_a_triangle_from_a_fifth_of_the_peak():
    lrs = _lrs("linear")
    assert lrs[0] == pytest.approx(0.2) and lrs[10] == pytest.approx(0.6) and lrs[20] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.5) and lrs[99] == pytest.approx(1 / 80)


def test_onecycle_peaks_at_the_warmup_end_and_constant_has_no_scheduler():
    lrs = _lrs("onecycle")
    # OneCycleLR reaches its peak at step pct_start * total - 1
    assert max(lrs) == pytest.approx(1.0, rel=1e-3) and lrs.index(max(lrs)) == 19
    assert lrs[0] < 0.05 and lrs[-1] < 1e-3
    model = Classifier(lr_schedule="constant")
    assert isinstance(model.configure_optimizers(), torch.optim.AdamW)


# ----------------------------------------------------------------------------- train, in-process


def test_fast_dev_run_predictions_are_the_calibrated_softmax_of_the_test_split(mnist_root, tmp_path):
    dm = MNISTDataModule(root=str(mnist_root), val_size=100, batch_size=32, download=False)
    model = Classifier(num_classes=dm.num_classes, in_channels=dm.in_channels,
                       class_names=dm.class_names)  # fmt: skip
    trainer = L.Trainer(accelerator="cpu", fast_dev_run=2, default_root_dir=tmp_path,
                        enable_progress_bar=False, logger=False)  # fmt: skip
    trainer.fit(model, datamodule=dm)
    model.calibration.use_temperature(1.5)
    predictions = torch.cat(trainer.predict(model, datamodule=dm))
    images, labels = dm.splits["test"]
    logits, _ = collect_logits(model, [(images[:len(predictions)], labels)], dm.preprocess,
                               torch.device("cpu"))  # fmt: skip
    assert torch.allclose(predictions, torch.softmax(logits / 1.5, 1), atol=1e-6)


@pytest.mark.slow
def test_temperature_is_fitted_at_validation_and_stored_once_in_each_checkpoint(mnist_root, tmp_path):
    results = train(_tiny(mnist_root, tmp_path))
    run_dir = Path(results["run_dir"])
    assert not (run_dir / "temperature.json").exists()
    best, last = _state(results["checkpoint"]), _state(run_dir / "checkpoints" / "last.ckpt")
    # One epoch: best and last are the same weights, so they carry the same T, fitted.
    assert stored_method(best) == stored_method(last) == "temperature"
    assert stored_temperature(best) == stored_temperature(last) == results["temperature"]
    # An independent fit on the checkpoint's validation logits gives the same T.
    from softcal.runs.load import load_run

    run = load_run(run_dir)
    run.datamodule.setup("fit")
    logits, labels = collect_logits(run.model, [run.datamodule.splits["val"]],
                                    run.datamodule.preprocess, torch.device("cpu"))  # fmt: skip
    assert results["temperature"] == pytest.approx(fit_temperature(logits, labels), rel=1e-5)
    assert results["metrics"]["test/acc"] == results["metrics"]["test_calibrated/acc"]
    assert results["metrics"]["test/nll"] != results["metrics"]["test_calibrated/nll"]


@pytest.mark.slow
def test_calibrate_false_leaves_every_checkpoint_unfitted(mnist_root, tmp_path, capsys):
    results = train(_tiny(mnist_root, tmp_path, "--calibrate", "false"))
    assert results["temperature"] is None
    assert stored_method(_state(results["checkpoint"])) is None
    metrics = results["metrics"]
    for name in ("acc", "ece", "nll", "brier"):  # T = 1: "calibrated" is the raw softmax
        assert metrics[f"test_calibrated/{name}"] == metrics[f"test/{name}"], name
    assert "calibrated (T = 1, not fitted)" in capsys.readouterr().out


def _validated_steps(callbacks: list[L.Callback], **limits: int) -> list[int]:
    """The global steps at which a BoringModel run (10 batches an epoch) was validated."""
    from lightning.pytorch.demos.boring_classes import BoringModel

    class Counting(BoringModel):
        def on_validation_epoch_end(self) -> None:
            validated_at.append(self.global_step)

    validated_at: list[int] = []
    trainer = L.Trainer(**limits, limit_train_batches=10, limit_val_batches=2, num_sanity_val_steps=0,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=callbacks)  # fmt: skip
    trainer.fit(Counting())
    return validated_at


def test_lightning_alone_does_not_validate_a_run_that_stops_inside_an_epoch():
    """What FinalValidation is for: a plain Trainer stops at max_steps mid-epoch unvalidated."""
    from softcal.runs.final_validation import FinalValidation

    assert _validated_steps([], max_epochs=3, max_steps=15) == [10]
    assert _validated_steps([FinalValidation()], max_epochs=3, max_steps=15) == [10, 15]


@pytest.mark.parametrize(("limits", "expected"), [
    ({"max_epochs": 3}, [30]),
    ({"max_epochs": 3, "max_steps": 15}, [15]),  # the end is inside the second epoch
    ({"max_epochs": 5, "max_steps": 20}, [20]),  # ... or at the end of one before max_epochs
    ({"max_epochs": -1, "max_steps": 25}, [25]),
])  # fmt: skip
def test_validate_every_epoch_false_validates_only_the_final_weights(limits, expected):
    from softcal.runs.final_validation import FinalValidation

    assert _validated_steps([FinalValidation(every_epoch=False)], **limits) == expected
    every = _validated_steps([FinalValidation()], **limits)
    assert len(every) > 1 and every[-1] == expected[-1]  # the same end, validated every epoch


def test_last_epoch_of_a_run():
    from softcal.runs.final_validation import last_epoch

    assert last_epoch(6, -1, 88) == 6
    assert last_epoch(7, 566, 88) == 7 and last_epoch(100, 566, 88) == 7  # 566 / 88 = 6.4
    assert last_epoch(100, 176, 88) == 2  # exactly two epochs of steps
    assert last_epoch(100, 88, 88, accumulate=4) == 4  # 22 optimizer steps an epoch
    assert last_epoch(100, 23, 90, accumulate=4) == 1  # 23 steps: 22 full and the epoch's last, partial
    assert last_epoch(-1, 10, float("inf")) is None and last_epoch(None, -1, 88) is None


def _validated_steps_logged(run_dir: Path) -> list[int]:
    """The steps at which a run logged its validation metrics (``val/nll``) to TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return [event.step for event in events.Scalars("val/nll")]


@pytest.mark.slow
def test_a_run_ending_inside_an_epoch_is_validated_and_calibrated_there(mnist_root, tmp_path):
    """A fractional last epoch (``max_steps``): the final weights are validated, so their
    checkpoint carries a temperature fitted on them (a checkpoint saved between validations
    would be marked not fitted) and the best checkpoint is chosen among them too."""
    results = train(_tiny(mnist_root, tmp_path, "--trainer.max_epochs", "3", "--trainer.max_steps", "6"))
    run_dir = Path(results["run_dir"])
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 6 and last["epoch"] == 1  # 4 steps, then 2 of the next 4
    assert stored_method(last["state_dict"]) == "temperature"
    assert _validated_steps_logged(run_dir) == [3, 5]  # logged at the last step's index: after 4 and 6


@pytest.mark.slow
def test_a_run_validated_only_at_its_end_checkpoints_and_calibrates_its_final_weights(mnist_root, tmp_path):
    """``--validate_every_epoch false``: one validation, after the last step; the best
    checkpoint is the final weights and carries the temperature fitted on them."""
    results = train(_tiny(mnist_root, tmp_path, "--trainer.max_epochs", "3",
                          "--validate_every_epoch", "false"))  # fmt: skip
    run_dir = Path(results["run_dir"])
    assert _validated_steps_logged(run_dir) == [11]  # after 12 steps, 4 an epoch
    best = sorted((run_dir / "checkpoints").glob("best-*.ckpt"))
    assert [path.name for path in best] == ["best-epoch02-step12.ckpt"], best
    saved = torch.load(best[0], map_location="cpu", weights_only=True)
    assert stored_method(saved["state_dict"]) == "temperature"
    assert results["checkpoint"] == str(best[0]) and results["temperature"] not in (None, 1.0)


@pytest.mark.slow
def test_a_checkpoint_saved_mid_epoch_is_marked_not_fitted(mnist_root, tmp_path):
    """Weights saved between validations have moved since T was fitted: not fitted."""
    with pytest.raises(SystemExit) as stopped:
        train(_tiny(mnist_root, tmp_path, "--trainer.max_epochs", "2",
                    "--last_checkpoint.every_n_train_steps", "6",
                    "--trainer.callbacks+=tests.helpers.InterruptAtStep",
                    "--trainer.callbacks.step", "7"))  # fmt: skip
    assert stopped.value.code == 130  # Ctrl-C: the shell's code for an interrupt
    run_dir = tmp_path / "mnist" / "version_0"
    assert not (run_dir / "results.json").exists()
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 6 and saved["epoch"] == 1  # mid-way through the second epoch
    assert stored_method(saved["state_dict"]) is None and stored_temperature(saved["state_dict"]) is None


@pytest.mark.slow
def test_startup_objects_are_frozen_while_training_and_released_after(mnist_root, tmp_path):
    import gc

    from softcal.allocator import FreezeStartupObjects

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
                            "test_calibrated/ece": 0.01, "test/nll": 0.05}, "T = 1.500", "title")  # fmt: skip
    lines = table.splitlines()
    assert lines[0] == "title" and "calibrated (T = 1.500)" in lines[1]
    assert lines[3].split() == ["acc", "99.00%", "99.00%"]
    assert lines[4].split() == ["ece", "2.00%", "1.00%"]
    assert lines[5].split() == ["nll", "0.0500"]


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
    assert text.endswith(" - use --trainer.accelerator cpu (or auto), or fewer --trainer.devices")


def test_compile_switch_wraps_the_net_but_checkpoints_hold_plain_weights(monkeypatch):
    calls = []

    def fake_compile(module):
        calls.append(module)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = Classifier(compile=True)
    model.configure_model()
    assert calls == [model.net]
    assert all(not key.startswith("_compiled") for key in model.state_dict())


# ----------------------------------------------------------------------------- slower runs


def _events(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


@pytest.mark.slow
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
    results = json.loads((run_dir / "results.json").read_text())
    assert results["metrics"]["test/acc"] == results["metrics"]["test_calibrated/acc"]
    assert stored_temperature(_state(results["checkpoint"])) == results["temperature"]
    assert stored_method(_state(run_dir / "checkpoints" / "last.ckpt")) == "temperature"
    scalars = set(_events(run_dir).Tags()["scalars"])
    for tag in ("train/loss", "train/acc", "val/acc", "val/ece", "val/temperature", "test/acc", "test/ece",
                "test_calibrated/ece", "test/nll", "test/brier", "test/adaptive_ece", "test/aurc",
                "test_calibrated/risk_at_95"):  # fmt: skip
        assert tag in scalars, tag
    # The AUROC of right against wrong predictions exists only when there are both.
    mixed = 0 < results["metrics"]["test/acc"] < 1
    assert ("test/misclassification_auroc" in scalars) == mixed
    assert "val/aurc" not in scalars  # validation is scored without ranking every prediction


@pytest.mark.slow
def test_training_logs_the_misclassification_auroc_when_some_predictions_are_wrong(mnist_root, tmp_path):
    results = train(_tiny(mnist_root, tmp_path, *FEW_STEPS_WITH_ERRORS))
    assert 0 < results["metrics"]["test/acc"] < 1
    logged = _events(tmp_path / "mnist" / "version_0").Scalars("test/misclassification_auroc")
    assert logged[-1].value == pytest.approx(results["metrics"]["test/misclassification_auroc"], abs=1e-6)


@pytest.mark.slow
def test_reliability_diagrams_every_validation_epoch_and_at_test(mnist_root, tmp_path):
    train(_tiny(mnist_root, tmp_path, "--trainer.max_epochs", "2"))
    events = _events(tmp_path / "mnist" / "version_0")
    images = events.Tags()["images"]
    assert len(events.Images("val/reliability_diagram")) == 2
    for tag in ("test/reliability_diagram", "test_calibrated/reliability_diagram",
                "val/confidence_histogram", "val/confusion_matrix", "test/confusion_matrix",
                "test/risk_coverage"):  # fmt: skip
        assert tag in images, tag
    train(_tiny(mnist_root, tmp_path / "none", "--figures", "false"))
    assert not _events(tmp_path / "none" / "mnist" / "version_0").Tags()["images"]


@pytest.mark.slow
@pytest.mark.parametrize("config,fixture,classes", [
    ("configs/cifar10.yaml", "cifar10_root", 10), ("configs/cifar100.yaml", "cifar100_root", 100),
])  # fmt: skip
def test_cifar_configs_train_the_whitened_net(config, fixture, classes, tmp_path, request):
    root = request.getfixturevalue(fixture)
    results = train([
        "--config", config, *TINY, "--data.init_args.val_size", "50",
        "--model.net.init_args.widths", "[8, 16, 16]", "--data.init_args.root", str(root),
        "--trainer.logger.init_args.save_dir", str(tmp_path),
    ])  # fmt: skip
    state = _state(results["checkpoint"])
    assert bool(state["net.whiten.fitted"]), "the whitening layer was fitted from the data"
    assert state["net.head.weight"].shape[0] == classes
    assert results["temperature"] is not None
    metrics = results["metrics"]
    assert metrics["test/acc_top5"] >= metrics["test/acc"]


@pytest.mark.slow
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


@pytest.mark.slow
def test_missing_data_is_one_line_without_traceback(tmp_path):
    proc = run_script("train.py", env={"SOFTCAL_DATA_ROOT": str(tmp_path / "empty")}, cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "MNIST not found" in errors[0] and "SOFTCAL_DATA_ROOT" in errors[0]


@pytest.mark.slow
def test_train_without_checkpointing_tests_the_final_weights(mnist_root, tmp_path):
    proc = run_script(
        "train.py", *TINY, "--trainer.limit_train_batches", "2", "--trainer.enable_checkpointing",
        "false", "--data.init_args.root", str(mnist_root), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MNIST test set, final weights (no checkpoint saved)" in proc.stdout
    run_dir = tmp_path / "runs" / "mnist" / "version_0"
    results = json.loads((run_dir / "results.json").read_text())
    # the last validation fitted T for exactly the final weights, which are what was tested
    assert results["checkpoint"] is None and results["temperature"] is not None
    assert f"calibrated (T = {results['temperature']:.3f})" in proc.stdout
    assert not (run_dir / "checkpoints").exists()  # neither best-*.ckpt nor last.ckpt
    # What needs a checkpoint says so in one line: evaluate/predict/export, and resuming.
    with pytest.raises(CheckpointError) as caught:
        resolve_checkpoint(run_dir)
    assert str(caught.value) == (
        f"no checkpoint in {run_dir / 'checkpoints'}; train first (a run with"
        " --trainer.enable_checkpointing false saves none) or pass a .ckpt"
    )
    with pytest.raises(SoftcalError, match="no run in .* has checkpoints/last.ckpt"):
        train(["--ckpt_path", "last", "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
               "--data.init_args.root", str(mnist_root)])  # fmt: skip


@pytest.mark.slow
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
    assert errors[0] == (
        "error: invalid trainer settings: Trainer was configured with `enable_checkpointing=False` but"
        " found `ModelCheckpoint` in callbacks list. - change the setting it names (--print_config shows"
        " the resolved config)"
    )


@pytest.mark.slow
def test_unknown_config_key_is_rejected(tmp_path):
    proc = run_script("train.py", "--model.learning_rate", "0.1", cwd=tmp_path)
    assert proc.returncode != 0 and "learning_rate" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: bad config or argument: unrecognized arguments: --model.learning_rate 0.1 (see --help)"
    )


@pytest.mark.slow
def test_gpu_overlay_runs_on_cpu_with_bf16(mnist_root, tmp_path):
    """configs/gpu.yaml's settings (bf16-mixed, channels_last, pinned/device-resident data)
    through the same code path on the CPU; compile is exercised separately above."""
    results = train([
        "--config", "configs/mnist.yaml", "--config", "configs/gpu.yaml", *TINY,
        "--trainer.accelerator", "cpu", "--model.compile", "false",
        "--data.init_args.root", str(mnist_root),
        "--trainer.logger.init_args.save_dir", str(tmp_path),
    ])  # fmt: skip
    saved = (Path(results["run_dir"]) / "config.yaml").read_text()
    assert "precision: bf16-mixed" in saved
    state = _state(results["checkpoint"])
    assert state["net.classifier.weight"].dtype == torch.float32  # bf16 computes, fp32 stores
    assert results["temperature"] is not None
    assert results["metrics"]["test/acc"] == results["metrics"]["test_calibrated/acc"]
