"""Readers for the on-disk dataset formats, each returning uint8 image tensors (N, C, H, W).

Decoding happens once per run (or once ever, for image folders, thanks to the cache); training
then indexes tensors in memory. Every reader checks what it reads and raises a DataError that
names the file and the fix, instead of a numpy reshape error from deep inside.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from softcal.atomic_files import atomic_write_bytes
from softcal.errors import DataError, SoftcalError

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}

# IDX type codes (http://yann.lecun.com/exdb/mnist/): only unsigned bytes are used by (Fashion-)MNIST.
_IDX_UBYTE = 0x08


def find_with_gz(folder: Path, name: str) -> Path | None:
    """The file ``name`` in ``folder``, or its gzipped twin ``name.gz``; None if neither exists."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: Path) -> torch.Tensor:
    """Read an IDX file (plain or .gz) of unsigned bytes into a uint8 tensor of its shape."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(f"cannot read {path}: {err}; delete it and provide the file again") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _IDX_UBYTE or not 1 <= raw[3] <= 4:
        raise DataError(f"{path} is not an IDX file of unsigned bytes (bad header); replace it")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated inside its header; replace it")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise DataError(
            f"{path} is truncated or corrupt: {len(raw)} bytes, header promises {expected}"
            " (shape {dims}); download or copy it again".replace("{dims}", str(dims))
        )
    array = np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)
    return torch.from_numpy(array.copy())


def read_cifar_batches(files: list[Path], label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Read CIFAR 'python version' pickle batches into (N, 3, 32, 32) uint8 images and labels."""
    images, labels = [], []
    for path in files:
        batch = _unpickle(path)
        try:
            data = np.asarray(batch["data"], dtype=np.uint8)
            targets = np.asarray(batch[label_key], dtype=np.int64)
        except KeyError as err:
            raise DataError(f"{path} has no {err} entry: not a CIFAR batch of this kind") from err
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(targets):
            raise DataError(f"{path} holds data of shape {data.shape}, expected (N, 3072)")
        images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()))
        labels.append(torch.from_numpy(targets))
    return torch.cat(images), torch.cat(labels)


def read_cifar_names(path: Path, key: str) -> list[str]:
    """Class names from a CIFAR 'meta' pickle (``label_names`` or ``fine_label_names``)."""
    meta = _unpickle(path)
    if key not in meta:
        raise DataError(f"{path} has no '{key}' entry: not the CIFAR meta file")
    return [str(name) for name in meta[key]]


def _unpickle(path: Path) -> dict:
    # The official CIFAR archives are pickles; only open files from a source you trust.
    try:
        with open(path, "rb") as handle:
            obj = pickle.load(handle, encoding="latin1")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, AttributeError) as err:
        raise DataError(f"cannot read {path} ({err}); download or copy it again") from err
    if not isinstance(obj, dict):
        raise DataError(f"{path} is not a CIFAR pickle (found {type(obj).__name__})")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


# --------------------------------------------------------------------------- image folders


def list_class_folders(split_dir: Path) -> list[str]:
    """Sorted class names (sub-folders) of ``split_dir``; hidden folders are skipped."""
    if not split_dir.is_dir():
        raise DataError(
            f"image folder {split_dir} not found; it must hold one sub-folder per class"
            " (e.g. train/cat/*.png) - set data.init_args.folder or SOFTCAL_DATA_ROOT"
        )
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"image folder {split_dir} has no class sub-folders (e.g. {split_dir}/cat/)")
    if len(classes) == 1:  # nothing to tell apart: metrics and calibration are meaningless
        raise DataError(
            f"image folder {split_dir} has one class sub-folder ({classes[0]}); a classifier needs"
            f" at least two - add a sub-folder per class (e.g. {split_dir}/cat/, {split_dir}/dog/)"
        )
    return classes


def image_label_pairs(split_dir: Path, classes: list[str]) -> list[tuple[Path, int]]:
    """(image file, class index) for every image, in a stable order; rejects empty or odd folders."""
    found = list_class_folders(split_dir)
    if found != classes:
        raise DataError(
            f"classes in {split_dir} ({', '.join(found)}) differ from the training classes"
            f" ({', '.join(classes)}); train and test must have the same class folders"
        )
    items: list[tuple[Path, int]] = []
    for index, name in enumerate(classes):
        files = sorted(
            p for p in (split_dir / name).iterdir() if p.is_file() and not p.name.startswith(".")
        )
        for path in files:
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise DataError(
                    f"{path} is not an image file (expected one of {sorted(IMAGE_SUFFIXES)});"
                    " move it out of the data folder"
                )
        if not files:
            raise DataError(f"class folder {split_dir / name} is empty; add images or remove it")
        items.extend((path, index) for path in files)
    return items


def decode_images(
    items: list[tuple[Path, int]],
    channels: int,
    size: tuple[int, int],
    check: Callable[[Path, PILImage], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode image files with PIL into (N, C, H, W) uint8, converting mode and size as needed.

    ``check(path, image)``, if given, sees each image as stored, before any conversion: a
    caller that needs to know what the file holds (e.g. colour content) need not open it again.
    Its PIL errors are reported like any unreadable image.
    """
    from PIL import Image, UnidentifiedImageError

    mode = "L" if channels == 1 else "RGB"
    out = torch.empty((len(items), channels, size[0], size[1]), dtype=torch.uint8)
    labels = torch.empty(len(items), dtype=torch.int64)
    for i, (path, label) in enumerate(items):
        try:
            with Image.open(path) as img:
                if check is not None:
                    check(path, img)
                img = img.convert(mode)
                if img.size != (size[1], size[0]):
                    img = img.resize((size[1], size[0]), Image.BILINEAR)
                array = np.array(img, dtype=np.uint8)  # a writable copy
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise DataError(f"{path} is not a readable image ({err}); remove or replace it") from err
        out[i] = torch.from_numpy(array.reshape(size[0], size[1], channels)).permute(2, 0, 1)
        labels[i] = label
    return out, labels


def content_key(items: list[tuple[Path, int]], channels: int, size: tuple[int, int]) -> str:
    """A hash of every file's bytes, name and label plus the decode settings: the cache key."""
    digest = hashlib.sha256(f"v1|{channels}|{size}".encode())
    for path, label in items:
        # surrogateescape: a file name that is not valid UTF-8 hashes by its raw bytes
        digest.update(f"|{path.parent.name}/{path.name}|{label}|".encode(errors="surrogateescape"))
        digest.update(path.read_bytes())
    return digest.hexdigest()[:24]


def default_cache_dir() -> Path:
    env = os.environ.get("SOFTCAL_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "softcal"


def load_image_folder(
    split_dir: Path,
    classes: list[str],
    channels: int,
    size: tuple[int, int],
    cache_dir: Path | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of one split folder, decoded once and cached by content hash.

    Hashing the bytes costs a fraction of decoding them, so a second run reads one tensor
    file instead of thousands of PNGs, and any changed, added or removed file changes the key.
    A cache file that cannot be read or does not hold what its key promises is never trusted:
    the folder is decoded again and the file replaced.
    """
    items = image_label_pairs(split_dir, classes)
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
    cache_file = cache_dir / f"imagefolder-{content_key(items, channels, size)}.pt"
    labels = torch.tensor([label for _, label in items], dtype=torch.int64)
    images = _read_cache(cache_file, labels, (len(items), channels, *size))
    if images is not None:
        return images, labels
    images, labels = decode_images(items, channels, size)
    buffer = io.BytesIO()
    torch.save({"images": images, "labels": labels}, buffer)
    try:  # atomic and fsynced: a kill or a full disk never leaves half a cache file
        atomic_write_bytes(cache_file, buffer.getbuffer())
    except SoftcalError:
        pass  # a read-only or full cache location only costs speed
    return images, labels


def _read_cache(path: Path, labels: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor | None:
    """The cached images when ``path`` holds uint8 images of ``shape`` and exactly ``labels``,
    else None. A truncated copy or a garbage file fails torch.load, in whatever way the bytes
    make it fail, so every exception of it means "rebuild"; a readable file is then checked."""
    if not path.is_file():
        return None
    try:
        cached = torch.load(path, weights_only=True)
    except Exception:  # see the docstring: any failure only costs a decode
        return None
    images = cached.get("images") if isinstance(cached, dict) else None
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.shape != shape:
        return None
    cached_labels = cached.get("labels")
    if not isinstance(cached_labels, torch.Tensor) or not torch.equal(cached_labels, labels):
        return None
    return images
