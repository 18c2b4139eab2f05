"""Shared fixtures: tiny datasets in the real formats, and a way to run the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.synthetic_data import write_cifar_dataset, write_idx_dataset, write_image_folder

REPO = Path(__file__).resolve().parents[1]

# Tests must never touch the network or a user's cache.
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SOFTCAL_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory) -> Path:
    """A root holding MNIST/raw with 600 train and 200 test generated digits-like images."""
    root = tmp_path_factory.mktemp("mnist_root")
    write_idx_dataset(root, "MNIST")
    return root


@pytest.fixture(scope="session")
def cifar10_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar10_root")
    write_cifar_dataset(root, 10)
    return root


@pytest.fixture(scope="session")
def cifar100_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar100_root")
    write_cifar_dataset(root, 100, n_train=400, n_test=100)
    return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("folder") / "shapes", n_train=120, n_test=30)


#: Arguments that make any config train in seconds on tiny data.
TINY = [
    "--trainer.max_epochs", "1",
    "--trainer.limit_train_batches", "4",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
    "--data.init_args.batch_size", "32",
    "--data.init_args.eval_batch_size", "100",
    "--data.init_args.val_size", "100",
]  # fmt: skip


#: DigitCNN's plain layout (a pool after each conv-BN-ReLU), not mnist.yaml's strided, pool-first
#: one, which learns the generated digits within TINY's four steps: tests that need mistakes to
#: measure (misclassification AUROC, a temperature with errors to fit, a trial worth pruning)
#: train this one.
PLAIN_DIGIT_CNN = ["--model.net.init_args.stem_stride", "1",
                   "--model.net.init_args.pool_before_norm", "false"]  # fmt: skip
#: ... at a peak lr of 0.02: about a third of the generated digits still wrong after four steps.
FEW_STEPS_WITH_ERRORS = [*PLAIN_DIGIT_CNN, "--model.lr", "0.02"]


def run_script(script: str, *args: str, env: dict | None = None, cwd: Path | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess:  # fmt: skip
    """Run ``python scripts/<script> args...`` as a user would; returns the finished process."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / script), *args],
        cwd=cwd or REPO, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture(scope="session")
def mnist_sized_root(tmp_path_factory) -> Path:
    """Enough generated MNIST-format images for the unchanged configs (val_size 5000)."""
    root = tmp_path_factory.mktemp("mnist_sized_root")
    write_idx_dataset(root, "MNIST", n_train=6000, n_test=1000)
    return root


@pytest.fixture(scope="session")
def tiny_run(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny MNIST-format training run (seconds), shared by the evaluate/predict tests."""
    from softcal.apps.train import main as train

    save_dir = tmp_path_factory.mktemp("runs")
    results = train([
        "--config", str(REPO / "configs" / "mnist.yaml"), *TINY,
        "--trainer.limit_train_batches", "8",
        "--data.init_args.root", str(mnist_root),
        "--trainer.logger.init_args.save_dir", str(save_dir),
    ])  # fmt: skip
    return Path(results["run_dir"])

# The benchmark package lives outside the installed one (benchmarks/); its tests import it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.fixture
def counted_passes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of images of every ``trainer.test`` evaluation runs, in order."""
    from softcal.evaluation import passes

    sizes: list[int] = []
    real = passes.run_test

    def counting(run, datamodule, callbacks):
        metrics = real(run, datamodule, callbacks)
        sizes.append(len(datamodule.splits["test"][1]))  # set up by the pass itself
        return metrics

    monkeypatch.setattr(passes, "run_test", counting)
    return sizes
