"""configs/image_folder.yaml: a template for one's own image folder, normalised with that
folder's own statistics, which the run records so a reopened run needs no data."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from softcal.data.readers import load_image_folder
from tests.conftest import TINY
from tests.synthetic_data import write_image_folder


def measured(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) standard deviation in [0, 1] units, 4 decimals."""
    values = images.double() / 255
    mean = values.mean(dim=(0, 2, 3))
    std = values.std(dim=(0, 2, 3), unbiased=False)
    return [round(float(m), 4) for m in mean], [round(float(s), 4) for s in std]


@pytest.mark.slow
def test_the_template_trains_on_a_folder_with_its_own_statistics(tmp_path: Path):
    from softcal.apps.train import main as train
    from softcal.runs.load import load_run

    folder = write_image_folder(tmp_path / "data" / "shapes", n_train=40, n_test=10, seed=3)
    results = train([
        "-c", "image_folder", *TINY, "--data.init_args.val_size", "0.2",
        "--data.init_args.root", str(tmp_path / "data"), "--data.init_args.folder", "shapes",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
    ])  # fmt: skip
    run_dir = Path(results["run_dir"])
    assert (run_dir / "results.json").is_file() and results["dataset"] == "shapes"
    classes = ["circle", "square", "triangle"]
    want_mean, want_std = measured(load_image_folder(folder / "train", classes, 3, (32, 32))[0])
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["init_args"]
    assert saved["mean"] == pytest.approx(want_mean, abs=1e-4)
    assert saved["std"] == pytest.approx(want_std, abs=1e-4)
    assert saved["mean"] != [0.5, 0.5, 0.5] and saved["mean"] != [0.4914, 0.4822, 0.4465]  # its own
    shutil.rmtree(tmp_path / "data")  # a reopened run normalises with the recorded numbers
    run = load_run(run_dir)
    assert list(run.datamodule.mean) == saved["mean"] and list(run.datamodule.std) == saved["std"]


def test_auto_statistics_of_a_grayscale_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from softcal.data import ImageFolderDataModule
    from softcal.data.folder import folder_statistics

    monkeypatch.setenv("SOFTCAL_CACHE_DIR", str(tmp_path / "cache"))
    folder = write_image_folder(tmp_path / "grey", n_train=20, n_test=5, channels=1, size=28)
    data = ImageFolderDataModule(folder=str(folder), channels=1, image_size=28, mean="auto", std=[0.3])
    images = load_image_folder(folder / "train", ["circle", "square", "triangle"], 1, (28, 28))[0]
    assert list(data.mean) == pytest.approx(measured(images)[0], abs=1e-4) and data.std == (0.3,)
    flat = torch.full((2, 1, 4, 4), 7, dtype=torch.uint8)  # no spread: a usable, non-zero std
    assert folder_statistics(flat) == ([round(7 / 255, 4)], [0.0001])
