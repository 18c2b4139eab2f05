"""--tiny: any config on a few batches of generated data in its real format, a smoke test in
seconds (the numbers it gives mean nothing)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from softcal_bench.overlays import merged
from tests.synthetic_data import write_cifar_dataset, write_idx_dataset, write_image_folder

#: --tiny: any config on a few batches of generated data, a smoke test in seconds.
TINY_ARGS = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3",
             "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
             "--data.init_args.batch_size", "32", "--data.init_args.eval_batch_size", "100",
             "--data.init_args.val_size", "100"]  # fmt: skip


def write_tiny_data(configs: Sequence[Path], root: Path) -> None:
    """A few hundred generated images in the format the configs' datamodule reads."""
    data = merged(configs)["data"]
    kind = data["class_path"].rsplit(".", 1)[1].removesuffix("DataModule")
    if kind in ("MNIST", "FashionMNIST"):
        write_idx_dataset(root, kind)
    elif kind in ("CIFAR10", "CIFAR100"):
        write_cifar_dataset(root, int(kind[5:]), n_train=500 if kind == "CIFAR10" else 400)
    else:  # an image folder
        write_image_folder(root / data["init_args"]["folder"], tuple(f"c{i}" for i in range(10)),
                           n_train=300, n_test=100)  # fmt: skip
