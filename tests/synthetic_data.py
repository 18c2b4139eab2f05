"""Small datasets written in the exact on-disk formats of the real ones.

Tests and the benchmark use these to exercise every reader offline: MNIST-style IDX files
(plain or gzipped), CIFAR-10/100 python pickle batches, and image folders. The images are
learnable: each class is a distinct blob pattern plus noise, so a tiny net gets well above
chance in a few steps.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np


def class_images(
    n: int, num_classes: int, channels: int, size: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(n, size, size, channels) uint8 images and int64 labels; class k is a bright square at
    a position and in a colour that depend on k, on a noisy background."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % num_classes
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(n, size, size, channels), dtype=np.int64)
    side = max(2, size // 4)
    grid = max(1, (size - side) // 3)
    for i, k in enumerate(labels):
        row, col = (k % 4) * grid, ((k // 4) % 4) * grid
        # Colour also tells classes apart, so nets with global pooling (ResNet) learn it fast.
        colour = np.full(channels, 90 + 40 * ((k // channels) % 4))
        colour[k % channels] = 255
        images[i, row : row + side, col : col + side, :] = colour
    return images.astype(np.uint8), labels


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx_dataset(
    root: Path, folder: str = "MNIST", n_train: int = 600, n_test: int = 200,
    gz: bool = False, seed: int = 0,
) -> Path:  # fmt: skip
    """Four IDX files in ``root/folder/raw`` (torchvision's layout); returns that folder."""
    raw = Path(root) / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n, split_seed in (("train", n_train, seed), ("t10k", n_test, seed + 1)):
        images, labels = class_images(n, 10, 1, 28, split_seed)
        for kind, array in (("images-idx3", images[..., 0]), ("labels-idx1", labels)):
            data = _idx_bytes(array.astype(np.uint8))
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                (raw / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (raw / name).write_bytes(data)
    return raw


def write_cifar_dataset(
    root: Path, num_classes: int = 10, n_train: int = 500, n_test: int = 100, seed: int = 0
) -> Path:
    """CIFAR-10 (``cifar-10-batches-py``, 5 data batches) or CIFAR-100 (``cifar-100-python``)
    pickles, exactly as the official archives extract; returns the folder."""
    def rows(n: int, s: int) -> tuple[np.ndarray, list[int]]:
        images, labels = class_images(n, num_classes, 3, 32, s)
        return images.transpose(0, 3, 1, 2).reshape(n, 3072), labels.tolist()

    def dump(path: Path, obj: dict) -> None:
        with open(path, "wb") as handle:
            pickle.dump(obj, handle, protocol=2)

    if num_classes == 10:
        folder = Path(root) / "cifar-10-batches-py"
        folder.mkdir(parents=True, exist_ok=True)
        names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck"]  # fmt: skip
        dump(folder / "batches.meta", {"label_names": names, "num_cases_per_batch": n_train // 5})
        data, labels = rows(n_train, seed)
        for i, part in enumerate(np.array_split(np.arange(n_train), 5), start=1):
            dump(folder / f"data_batch_{i}", {"batch_label": f"training batch {i} of 5",
                 "labels": [labels[j] for j in part], "data": data[part],
                 "filenames": [f"img_{j}.png" for j in part]})  # fmt: skip
        data, labels = rows(n_test, seed + 1)
        dump(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": labels,
                                     "data": data})  # fmt: skip
        return folder
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    dump(folder / "meta", {"fine_label_names": [f"fine_{k}" for k in range(num_classes)],
                           "coarse_label_names": [f"coarse_{k}" for k in range(20)]})  # fmt: skip
    for split, n, s in (("train", n_train, seed), ("test", n_test, seed + 1)):
        data, labels = rows(n, s)
        dump(folder / split, {"fine_labels": labels, "coarse_labels": [k % 20 for k in labels],
                              "data": data})  # fmt: skip
    return folder


def write_image_folder(
    root: Path, classes: tuple[str, ...] = ("circle", "square", "triangle"),
    n_train: int = 30, n_test: int = 12, size: int = 32, channels: int = 3,
    suffix: str = ".png", seed: int = 0,
) -> Path:  # fmt: skip
    """``root/train/<class>/*.png`` and ``root/test/<class>/*.png``; returns ``root``."""
    from PIL import Image

    for split, n, s in (("train", n_train, seed), ("test", n_test, seed + 1)):
        images, labels = class_images(n, len(classes), channels, size, s)
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            folder = Path(root) / split / classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            pixels = image[..., 0] if channels == 1 else image
            Image.fromarray(pixels).save(folder / f"{i:05d}{suffix}")
    return Path(root)


def write_frost_photos(root: Path, size: int = 250, seed: int = 0) -> Path:
    """``root/frost/frost1.png ... frost6.jpg``: noise photographs in place of the real ones,
    large enough for the frost corruption's crops once shrunk (to size / 5 pixels a side)."""
    from PIL import Image

    folder = Path(root) / "frost"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg"):
        pixels = rng.integers(120, 256, size=(size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name)
    return folder
