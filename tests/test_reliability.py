"""A crash loses nothing, a seed means something, bad input gets one line, and two processes
compute what one does."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, run_script

#: Every test here launches scripts/train.py as a user would: seconds to a minute each.
pytestmark = pytest.mark.slow

#: Small MNIST-format run: 500 train images / batch 32 = 15 steps per epoch, 2 epochs.
BASE = [
    "--config", "configs/mnist.yaml",
    "--trainer.max_epochs", "2",
    "--trainer.deterministic", "true",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
    "--data.init_args.batch_size", "32",
    "--data.init_args.eval_batch_size", "100",
    "--data.init_args.val_size", "100",
    "--figures", "false",
]  # fmt: skip


def _train(root: Path, out: Path, *extra: str, cwd: Path | None = None):
    return run_script(
        "train.py", *BASE, "--data.init_args.root", str(root),
        "--trainer.logger.init_args.save_dir", str(out), *extra,
        env={"PYTHONPATH": str(REPO)}, cwd=cwd,
    )  # fmt: skip


def _results(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "results.json").read_text())["metrics"]


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(mnist_root, tmp_path):
    whole = _train(mnist_root, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-2000:]
    expected = _results(tmp_path / "whole" / "mnist" / "version_0")

    # Checkpoint every 5 steps; die by SIGKILL at step 12 (epoch 0 of 15 steps: mid-epoch).
    every5 = ["--last_checkpoint.every_n_train_steps", "5"]
    killed = _train(mnist_root, tmp_path / "crash", *every5,
                    "--trainer.callbacks+=tests.helpers.KillAtStep",
                    "--trainer.callbacks.step", "12")  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run_dir = tmp_path / "crash" / "mnist" / "version_0"
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 10 and last["epoch"] == 0, "expected the mid-epoch checkpoint"

    resumed = _train(mnist_root, tmp_path / "crash", *every5, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not (tmp_path / "crash" / "mnist" / "version_1").exists(), "resume must reuse the run"
    got = _results(run_dir)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-6), name
    # TensorBoard: one value per validation epoch, none duplicated or missing
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def scalars(run: Path, tag: str) -> list[tuple[int, float]]:
        events = EventAccumulator(str(run), size_guidance={"scalars": 0})
        events.Reload()
        return [(e.step, e.value) for e in events.Scalars(tag)]

    steps = [step for step, _ in scalars(run_dir, "val/acc")]
    assert steps == sorted(set(steps)) and len(steps) == 2
    # The interrupted epoch's training loss and accuracy cover all its batches, not only the
    # ones after the restart: the running totals travel in the checkpoint.
    whole_dir = tmp_path / "whole" / "mnist" / "version_0"
    for tag in ("train/loss", "train/acc"):
        got_values, expected_values = scalars(run_dir, tag), scalars(whole_dir, tag)
        assert [s for s, _ in got_values] == [s for s, _ in expected_values], tag
        for (_, value), (_, reference) in zip(got_values, expected_values, strict=True):
            assert value == pytest.approx(reference, abs=1e-6), tag


def test_same_seed_same_metrics_other_seed_other_split(mnist_root, tmp_path):
    short = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "6"]
    runs = {}
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        proc = _train(mnist_root, tmp_path / name, *short, "--seed_everything", seed)
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs[name] = _results(tmp_path / name / "mnist" / "version_0")
    assert runs["a"] == runs["b"], "same seed, same numbers"
    assert runs["a"] != runs["c"], "another seed gives another split and result"


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(mnist_root, tmp_path):
    proc = _train(mnist_root, tmp_path, "--last_checkpoint.every_n_train_steps", "3",
                  "--model.net.class_path", "tests.helpers.NaNAfter",
                  "--model.net.init_args.after", "7")  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "training loss is nan at step 7" in error[0], proc.stderr[-2000:]
    assert error[0] == (
        "error: training loss is nan at step 7 (epoch 0, batch 7); lower model.lr or check the data."
        " Nothing from this step was saved: the last checkpoint holds the last good weights"
    )
    last = torch.load(tmp_path / "mnist" / "version_0" / "checkpoints" / "last.ckpt",
                      weights_only=True)  # fmt: skip
    assert last["global_step"] == 6
    tensors = [v for v in last["state_dict"].values() if torch.is_tensor(v) and v.is_floating_point()]
    assert tensors and all(torch.isfinite(v).all() for v in tensors)


def _one_error_line(proc) -> str:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    return errors[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_gpu_accelerator_without_a_gpu(mnist_root, tmp_path):
    line = _one_error_line(_train(mnist_root, tmp_path, "--trainer.accelerator", "gpu"))
    assert "--trainer.accelerator cpu" in line


def test_resuming_from_a_checkpoint_of_another_dataset(mnist_root, cifar10_root, tmp_path):
    first = _train(mnist_root, tmp_path / "mnist", "--trainer.max_epochs", "1",
                   "--trainer.limit_train_batches", "2")  # fmt: skip
    assert first.returncode == 0, first.stderr[-2000:]
    ckpt = tmp_path / "mnist" / "mnist" / "version_0" / "checkpoints" / "last.ckpt"
    proc = run_script("train.py", "--config", "configs/cifar10.yaml", "--ckpt_path", str(ckpt),
                      "--data.init_args.root", str(cifar10_root),
                      "--trainer.logger.init_args.save_dir", str(tmp_path / "c"))  # fmt: skip
    assert "1x28x28" in _one_error_line(proc)


def test_resuming_with_more_epochs_than_the_schedule_was_planned_for(mnist_root, tmp_path):
    first = _train(mnist_root, tmp_path, "--trainer.max_epochs", "1")
    assert first.returncode == 0, first.stderr[-2000:]
    ckpt = tmp_path / "mnist" / "version_0" / "checkpoints" / "last.ckpt"
    before = ckpt.read_bytes()
    proc = _train(mnist_root, tmp_path, "--trainer.max_epochs", "2", "--ckpt_path", "last")
    error = _one_error_line(proc)
    assert "planned for 15 steps, but these settings make 30" in error, error
    assert error == (
        "error: the checkpoint's one-cycle learning-rate schedule was planned for 15 steps, but these"
        " settings make 30 (max_epochs, batch size or limit_train_batches changed); resume with the"
        " settings of the run's config.yaml, or start a new run with more epochs to train longer"
    )
    assert ckpt.read_bytes() == before, "the saved checkpoint must survive the refusal"


def test_truncated_idx_via_the_script(tmp_path):
    from tests.synthetic_data import write_idx_dataset

    raw = write_idx_dataset(tmp_path, n_train=200, n_test=50)
    path = raw / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    proc = _train(tmp_path, tmp_path / "runs", "--trainer.limit_train_batches", "1",
                  "--trainer.max_epochs", "1")  # fmt: skip
    assert "truncated or corrupt" in _one_error_line(proc)


def test_wrong_type_is_rejected_clearly(tmp_path):
    proc = run_script("train.py", "--trainer.max_epochs", "three", cwd=tmp_path)
    assert proc.returncode != 0 and "max_epochs" in proc.stderr and "Traceback" not in proc.stderr


def test_two_processes_compute_what_one_does(mnist_root, tmp_path):
    """DDP on 2 CPU processes (gloo): training runs with each process on its own shard, and
    evaluating one checkpoint on 2 processes gives the metrics of 1 process - calibration
    included - so metric states are summed across processes and no sample is seen twice."""
    ddp = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
    trained = _train(mnist_root, tmp_path / "ddp", "--trainer.max_epochs", "1",
                     "--trainer.limit_train_batches", "5", *ddp)  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    run_dir = tmp_path / "ddp" / "mnist" / "version_0"
    # Each process validated its own shard; the temperature was fitted on both shards'
    # logits gathered: it equals a fit on the whole validation split in one process.
    from softcal.calibration.temperature import fit_temperature
    from softcal.runs.load import load_run
    from tests.helpers import collect_logits

    run = load_run(run_dir, ["--data.init_args.root", str(mnist_root)])
    run.datamodule.setup("fit")
    images, labels = run.datamodule.splits["val"]
    logits, labels = collect_logits(run.model, [(images, labels)], run.datamodule.preprocess,
                                    torch.device("cpu"))  # fmt: skip
    assert run.calibration.temperature == pytest.approx(fit_temperature(logits, labels), rel=1e-4)
    metrics = {}
    for name, extra in (("one", []), ("two", ddp)):
        proc = run_script("evaluate.py", str(run_dir), "--split", "val", "--out",
                          str(tmp_path / name), *extra, env={"PYTHONPATH": str(REPO)})  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        written = json.loads((tmp_path / name / "metrics.json").read_text())
        assert written["num_samples"] == 100, "every validation image exactly once"
        metrics[name] = written["metrics"]
    names = {key.split("/", 1)[1] for key in metrics["one"]}
    assert {"ece", "adaptive_ece", "classwise_ece", "nll"} <= names
    for name, value in metrics["one"].items():
        assert metrics["two"][name] == pytest.approx(value, abs=1e-6), name
