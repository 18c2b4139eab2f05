"""One image finder, one hidden-file rule, for predict's folders and evaluate's --ood FOLDER."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from softcal.apps.predict import images_to_predict
from softcal.data.image_files import find_images
from softcal.errors import DataError
from softcal.evaluation.ood_sets import load_ood_set, parse_spec


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    from PIL import Image

    root = tmp_path / ".hidden_root"  # a hidden folder the user names: searched all the same
    for name in ("b.png", "a/c.JPG", "a/deep/d.webp", ".e.png", "a/._f.png", ".cache/g.png",
                 "a/.ipynb_checkpoints/h.png", "notes.txt", "a/i.png.txt"):  # fmt: skip
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (8, 8), 100).save(path, format="PNG")  # any bytes: the name decides
    (root / "z.png").mkdir()  # a folder with an image suffix is not a file
    return root


def test_hidden_files_and_folders_are_skipped(folder: Path):
    assert find_images(folder) == [folder / "a" / "c.JPG", folder / "a" / "deep" / "d.webp", folder / "b.png"]
    assert find_images(folder, recursive=False) == [folder / "b.png"]
    assert find_images(folder / ".cache") == [folder / ".cache" / "g.png"]  # named: not hidden


def test_predict_and_ood_folders_find_the_same_images(folder: Path):
    assert images_to_predict([folder]) == find_images(folder)
    ood = load_ood_set(parse_spec(str(folder)), 1, (8, 8), 0)
    assert ood.images.shape == (3, 1, 8, 8) and torch.all(ood.images == 100)


def test_a_folder_with_only_hidden_images_has_none(tmp_path: Path):
    (tmp_path / "only" / ".git").mkdir(parents=True)
    (tmp_path / "only" / ".git" / "x.png").write_bytes(b"")
    (tmp_path / "only" / ".y.png").write_bytes(b"")
    with pytest.raises(DataError, match="no image files"):
        images_to_predict([tmp_path / "only"])
    with pytest.raises(DataError, match="no image files"):
        load_ood_set(parse_spec(str(tmp_path / "only")), 1, (8, 8), 0)
