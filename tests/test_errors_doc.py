"""docs/errors.md is complete and true: every message it lists names a test that produces it,
and every one-line error the code can raise is listed.

The doc's tables have three columns, ``situation | message | test``. The test column names
one or more tests as pytest node ids (``tests/test_x.py::test_name``, comma-separated). For
every row this checks that each named test exists and that, for every message in the row (a
backticked span of 20 characters or more in the message column), the named tests' string
literals hold all of its fixed wording - what the tests assert (``match=re.escape(...)``,
``== "error: ..."``, ``in stderr``):

- values are not compared: ``<placeholders>``, ``...``, and every word holding a digit or a
  ``/`` (paths, numbers, shapes, file names like ``last.ckpt`` only when they hold one); the
  ``error: ``/``warning: ``/``note: `` prefix is the one-line handler's, asserted by its own
  tests, and is not compared either;
- the text between values is the message's fixed wording; each stretch of it of 12
  characters or more must be covered, character by character, by pieces of at least 12
  characters that occur verbatim in one literal of the named tests (f-string values never
  match); only a left-over of fewer than 8 letters and digits (a word the code fills in, such
  as a method name) may be uncovered.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import lightning.pytorch as L
import pytest

from softcal.errors import CheckpointError, DataError, SoftcalError
from tests.conftest import REPO

DOC = REPO / "docs" / "errors.md"
HEADER = ["situation", "message", "test"]
#: Shorter spans are option names or values (`--calibrate false`, `\xNN`), not messages.
MIN_MESSAGE = 20
#: The exception classes whose messages users read (softcal.errors) and the names the code
#: builds them through.
USER_ERRORS = {"SoftcalError", "DataError", "CheckpointError", "NonFiniteLossError", "error"}


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def doc_rows() -> tuple[list[tuple[int, list[str]]], list[str]]:
    """(line number, [situation, message, test]) of every table row under a
    ``situation | message | test`` header, and the lines that break that format."""
    rows, problems, in_table = [], [], False
    for number, line in enumerate(DOC.read_text().splitlines(), start=1):
        if not line.startswith("|"):
            in_table = False
            continue
        cells = _cells(line)
        if cells[:2] == HEADER[:2]:
            in_table = cells == HEADER
            if not in_table:
                problems.append(f"errors.md:{number}: a table's columns are {' | '.join(HEADER)}")
        elif in_table and not set("".join(cells)) <= set("-: "):
            if len(cells) == 3:
                rows.append((number, cells))
            else:
                problems.append(f"errors.md:{number}: {len(cells)} cells, expected 3")
    return rows, problems


def messages(cell: str) -> list[str]:
    cell = cell.replace("\\|", "|")  # a table cell escapes the pipes of `a\|b`
    doubled = re.findall(r"``\s?(.+?)\s?``", cell)  # ``a message with `backticks` inside``
    single = re.findall(r"`([^`]+)`", re.sub(r"``.+?``", "", cell))
    return [span for span in doubled + single if len(span) >= MIN_MESSAGE]


def named_tests(cell: str) -> list[str]:
    return re.findall(r"`(tests/test_\w+\.py::\w+)`", cell)


@cache
def _module(path: Path) -> ast.Module:
    return ast.parse(path.read_text())


def _strings(node: ast.AST) -> list[str]:
    """Every string literal in ``node``, f-strings with their values replaced by NUL (a value
    never matches), each also with regex escapes removed (``match=r"model\\.lr"``)."""
    found = []
    for sub in ast.walk(node):
        if isinstance(sub, ast.JoinedStr):
            found.append("".join(v.value if isinstance(v, ast.Constant) else "\0" for v in sub.values))
        elif isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            found.append(sub.value)
    return found + [re.sub(r"\\(.)", r"\1", s) for s in found]


def find_test(node_id: str) -> ast.FunctionDef | None:
    file, name = node_id.split("::")
    path = REPO / file
    if not path.is_file():
        return None
    return next((n for n in _module(path).body if isinstance(n, ast.FunctionDef) and n.name == name), None)


#: A message's fixed wording starts after this prefix (the one-line handler adds it).
PREFIX = re.compile(r"^(error|warning|note): ")
#: Values: <placeholders>, "..." and words (up to brackets and punctuation) holding a digit or "/".
VALUE = re.compile(r"<[^<>]*>|\.\.\.|…|[^\s(),;:\[\]]*[\d/][^\s(),;:\[\]]*")
#: Fixed wording comes in stretches between values; each stretch this long or longer is
#: compared, in pieces at least this long that a test literal holds verbatim.
MIN_PIECE = 12
#: What a test may leave unasserted of a stretch: fewer letters and digits than this (a word
#: the code fills in, such as a method or class name, or wording next to one of the test's
#: own f-string values).
MAX_LEFT = 8


def fixed_pieces(message: str) -> list[str]:
    """The message's fixed wording: the stretches between its values."""
    return [p for p in VALUE.split(PREFIX.sub("", message)) if len(p.strip()) >= MIN_PIECE]


def unasserted(message: str, strings: list[str]) -> list[str]:
    """The stretches of the message's fixed wording that no piece of ``strings`` covers."""
    left = []
    for piece in fixed_pieces(message):
        covered = [False] * len(piece)
        for start in range(len(piece) - MIN_PIECE + 1):
            end = None
            length = MIN_PIECE
            while start + length <= len(piece) and any(piece[start : start + length] in s for s in strings):
                end, length = start + length, length + 1
            if end is not None:
                covered[start:end] = [True] * (end - start)
        bits = "".join("x" if c else " " for c in covered)
        for gap in re.finditer(r" +", bits):
            text = piece[gap.start() : gap.end()]
            if len(re.findall(r"\w", text)) >= MAX_LEFT:
                left.append(text)
    return left


ROWS, FORMAT_PROBLEMS = doc_rows()


def test_the_doc_has_rows_and_every_row_names_a_test():
    assert not FORMAT_PROBLEMS, "\n".join(FORMAT_PROBLEMS)
    assert len(ROWS) > 50
    missing = [f"errors.md:{n}: {cells[0]}" for n, cells in ROWS if not named_tests(cells[2])]
    assert not missing, "rows without a test:\n" + "\n".join(missing)


@pytest.mark.parametrize(("line", "cells"), ROWS, ids=[f"line{n}" for n, _ in ROWS])
def test_each_message_is_asserted_by_the_tests_its_row_names(line, cells):
    functions = {node_id: find_test(node_id) for node_id in named_tests(cells[2])}
    absent = [node_id for node_id, fn in functions.items() if fn is None]
    assert not absent, f"errors.md:{line} names tests that do not exist: {absent}"
    strings = [s for fn in functions.values() for s in _strings(fn)]
    problems = []
    for message in messages(cells[1]):
        left = unasserted(message, strings)
        if left:
            problems.append(f"`{message}`\n    not asserted: {left}")
    assert not problems, f"errors.md:{line}: the tests named in the row do not assert\n" + "\n".join(problems)


def _raised_messages() -> list[tuple[str, str]]:
    """(file:line, longest fixed piece) of every user error the source raises or builds."""
    found = []
    for path in sorted((REPO / "src" / "softcal").rglob("*.py")):
        for node in ast.walk(_module(path)):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.args):
                continue
            if node.func.id not in USER_ERRORS:
                continue
            pieces = [p for s in _strings(node.args[0]) for p in s.split("\0") if "{" not in p]
            if pieces and max(pieces, key=len).strip():
                found.append((f"{path.relative_to(REPO)}:{node.lineno}", max(pieces, key=len).strip()))
    return found


def test_every_user_error_in_the_source_is_in_the_doc():
    text = DOC.read_text()
    missing = [f"{where}: {piece!r}" for where, piece in _raised_messages() if piece[:40] not in text]
    assert not missing, "messages missing from docs/errors.md:\n" + "\n".join(missing)


# --------------------------------------------------------------------------------------------
# Messages no other test asserted in full: each test below triggers them (in-process, before
# any training where possible) and checks the one line the user reads.
def _one_line(caught: pytest.ExceptionInfo) -> str:
    message = str(caught.value)
    assert "\n" not in message, message
    return message


def test_idx_file_messages(tmp_path):
    import gzip

    from softcal.data.readers import read_idx

    def idx(name: str, data: bytes) -> Path:
        (tmp_path / name).write_bytes(data)
        return tmp_path / name

    header = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (50, 28, 28))
    cases = [
        (idx("cut", header + bytes(5000 - len(header))),
         "is truncated or corrupt: 5000 bytes, header promises 39216 (shape [50, 28, 28]); download"
         " or copy it again"),
        (idx("text", b"not idx at all"), "is not an IDX file of unsigned bytes (bad header); replace it"),
        (idx("head", header[:9]), "is truncated inside its header; replace it"),
        (idx("bad.gz", b"\x1f\x8b garbage"), "; delete it and provide the file again"),
    ]  # fmt: skip
    for path, expected in cases:
        with pytest.raises(DataError) as caught:
            read_idx(path)
        assert expected in _one_line(caught) and str(path) in str(caught.value)
    assert str(caught.value).startswith(f"cannot read {tmp_path / 'bad.gz'}: ")
    good = idx("good.gz", gzip.compress(header + bytes(50 * 28 * 28)))
    assert read_idx(good).shape == (50, 28, 28)


def test_cifar_pickle_messages(tmp_path):
    import pickle

    import numpy as np

    from softcal.data.readers import read_cifar_batches, read_cifar_names

    def pickled(name: str, obj: object) -> Path:
        (tmp_path / name).write_bytes(pickle.dumps(obj))
        return tmp_path / name

    cases = [
        (tmp_path / "corrupt", "); download or copy it again"),
        (pickled("list", [1, 2]), "is not a CIFAR pickle (found list)"),
        (pickled("nodata", {b"labels": [0]}), "has no 'data' entry: not a CIFAR batch of this kind"),
        (pickled("shape", {b"data": np.zeros((10, 100), np.uint8), b"labels": [0] * 10}),
         "holds data of shape (10, 100), expected (N, 3072)"),
    ]  # fmt: skip
    (tmp_path / "corrupt").write_bytes(b"\x80\x04 not a pickle")
    for path, expected in cases:
        with pytest.raises(DataError) as caught:
            read_cifar_batches([path], "labels")
        assert expected in _one_line(caught) and str(path) in str(caught.value)
    assert str(caught.value) == f"{tmp_path / 'shape'} holds data of shape (10, 100), expected (N, 3072)"
    with pytest.raises(DataError, match=r"has no 'label_names' entry: not the CIFAR meta file$"):
        read_cifar_names(pickled("meta", {b"other": []}), "label_names")


def test_image_folder_messages(tmp_path):
    from softcal.data.readers import decode_images, image_label_pairs, list_class_folders
    from tests.synthetic_data import write_image_folder

    (tmp_path / "flat" / "train").mkdir(parents=True)
    with pytest.raises(DataError) as caught:
        list_class_folders(tmp_path / "flat" / "train")
    assert _one_line(caught) == (
        f"image folder {tmp_path}/flat/train has no class sub-folders (e.g. {tmp_path}/flat/train/cat/)"
    )
    split = write_image_folder(tmp_path / "f", classes=("circle", "square"), n_train=4, n_test=2) / "train"
    (split / "circle" / "readme.txt").write_text("notes")
    with pytest.raises(DataError) as caught:
        image_label_pairs(split, ["circle", "square"])
    assert _one_line(caught) == (
        f"{split}/circle/readme.txt is not an image file (expected one of ['.bmp', '.gif', '.jpeg', '.jpg',"
        " '.png', '.tif', '.tiff', '.webp']); move it out of the data folder"
    )
    (split / "circle" / "readme.txt").unlink()
    (split / "empty").mkdir()
    with pytest.raises(DataError) as caught:
        image_label_pairs(split, ["circle", "empty", "square"])
    assert _one_line(caught) == f"class folder {split}/empty is empty; add images or remove it"
    (split / "empty").rmdir()
    (split / "circle" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError) as caught:
        decode_images(image_label_pairs(split, ["circle", "square"]), 3, (32, 32))
    assert _one_line(caught).startswith(f"{split}/circle/bad.png is not a readable image (cannot identify")
    assert str(caught.value).endswith("); remove or replace it")


def test_datamodule_option_messages(tmp_path):
    import torch

    from softcal.data import CIFAR10DataModule, ImageFolderDataModule, MNISTDataModule

    with pytest.raises(DataError) as caught:
        MNISTDataModule(root=str(tmp_path), crop_pad_mode="edge")
    assert _one_line(caught) == "data.crop_pad_mode must be 'zeros' or 'reflect', not 'edge'"
    with pytest.raises(DataError) as caught:
        CIFAR10DataModule(root=str(tmp_path), crop_pad_mode="reflect", crop_padding=32)
    assert _one_line(caught) == (
        "data.crop_padding=32 is too deep to reflect CIFAR10's 32x32 images; use at most 31"
    )
    with pytest.raises(DataError) as caught:
        ImageFolderDataModule(folder=str(tmp_path), channels=3, mean=[0.5])
    assert _one_line(caught) == "data mean/std need 3 values each (one per channel)"
    data = MNISTDataModule(root=str(tmp_path))
    with pytest.raises(DataError) as caught:
        data._checked(torch.zeros(2, 1, 20, 20, dtype=torch.uint8), torch.zeros(2), "training")
    assert _one_line(caught) == (
        "MNIST training images have shape (1, 20, 20) and dtype torch.uint8, expected (1, 28, 28) uint8"
    )


def test_cli_argument_messages(tmp_path, monkeypatch):
    from softcal.apps.train import main

    monkeypatch.chdir(tmp_path)  # nothing may be written, but if it were: not in the checkout
    with pytest.raises(SoftcalError) as caught:
        main(["--trainer.max_epochs", "three"])
    assert _one_line(caught) == (
        "bad config or argument: Parser key \"trainer.max_epochs\": expects int or null, got 'three'"
        " (see --help)"
    )


def test_config_file_messages(monkeypatch):
    from importlib import resources

    from softcal import config_files

    with pytest.raises(SoftcalError) as caught:
        config_files.resolve_config("/tmp/nothere.yaml")
    assert _one_line(caught).startswith(
        "config /tmp/nothere.yaml not found: no such file here, and the packaged configs are cifar10.yaml,"
        " cifar100.yaml, cifar10_quick.yaml, cifar10_sample.yaml, fashion_mnist.yaml, gpu.yaml,"
        " image_folder.yaml, mnist.yaml, smoke.yaml (in "
    )
    assert str(caught.value).endswith("/configs)")
    monkeypatch.setattr(config_files, "DEFAULT_CONFIG", "gone.yaml")
    with pytest.raises(SoftcalError) as caught:
        config_files.default_config()
    assert _one_line(caught).startswith("default config ")
    assert str(caught.value).endswith(
        "/configs/gone.yaml not found; reinstall softcal or pass --config FILE.yaml"
    )

    def not_installed(name):
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(resources, "files", not_installed)
    with pytest.raises(SoftcalError) as caught:
        config_files.packaged_configs_dir()
    assert _one_line(caught) == (
        "the packaged configs (softcal.configs) are not installed; reinstall softcal (pip install -e . in"
        " a checkout)"
    )
    monkeypatch.setattr(resources, "files", lambda name: "zip:/somewhere/softcal/configs")
    with pytest.raises(SoftcalError) as caught:
        config_files.packaged_configs_dir()
    assert _one_line(caught) == (
        "the packaged configs are not files on disk (zip:/somewhere/softcal/configs); install softcal"
        " with pip"
    )


def test_resume_path_messages(tmp_path):
    from softcal.apps.cli import resolve_resume

    logger = {"init_args": {"save_dir": str(tmp_path / "runs"), "name": "mnist"}}
    with pytest.raises(SoftcalError) as caught:
        resolve_resume("last", None)
    assert _one_line(caught) == "--ckpt_path last needs a TensorBoard logger to find the run"
    with pytest.raises(SoftcalError) as caught:
        resolve_resume("last", logger)
    assert _one_line(caught) == f"--ckpt_path last: no run in {tmp_path}/runs/mnist has checkpoints/last.ckpt"
    run_dir = tmp_path / "runs" / "mnist" / "version_0"
    run_dir.mkdir(parents=True)
    with pytest.raises(SoftcalError) as caught:
        resolve_resume(str(run_dir), logger)
    assert _one_line(caught) == (
        f"checkpoint {run_dir}/checkpoints/last.ckpt not found; pass a .ckpt, a run directory or last"
    )
    with pytest.raises(SoftcalError) as caught:
        resolve_resume("nope.ckpt", logger)
    assert _one_line(caught) == "checkpoint nope.ckpt not found; pass a .ckpt, a run directory or last"


class Foreign:
    """An object a torch file may hold that safe loading (weights_only=True) refuses."""


def test_checkpoint_file_messages(tmp_path):
    import torch

    from softcal.runs.checkpoints import checkpoint_hparams, load_checkpoint
    from softcal.runs.run_dirs import resolve_checkpoint

    with pytest.raises(CheckpointError) as caught:
        resolve_checkpoint(tmp_path / "nope.ckpt")
    assert _one_line(caught) == f"{tmp_path}/nope.ckpt not found; pass a .ckpt file or a run directory"
    (tmp_path / "bad.ckpt").write_text("hello")
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, tmp_path / "whole.ckpt")
    (tmp_path / "trunc.ckpt").write_bytes((tmp_path / "whole.ckpt").read_bytes()[:2000])
    torch.save({"state_dict": {}, "extra": Foreign()}, tmp_path / "foreign.ckpt")
    torch.save({"weights": {}}, tmp_path / "plain.ckpt")
    cases = {
        "bad": "is not a checkpoint (not a torch.save archive); pass a .ckpt written by scripts/train.py",
        "trunc": "is truncated (its archive has no end); the run was killed while writing it or the copy"
        " is incomplete - use another checkpoint from the run",
        "foreign": "cannot be read as a checkpoint (it holds objects that safe loading (weights_only=True)"
        " refuses to run); it is truncated, corrupt or not written by softcal - use another checkpoint"
        " from the run",
        "plain": "is not a Lightning checkpoint (no 'state_dict' in it)",
    }
    for name, expected in cases.items():
        with pytest.raises(CheckpointError) as caught:
            load_checkpoint(tmp_path / f"{name}.ckpt")
        assert _one_line(caught) == f"{tmp_path}/{name}.ckpt {expected}"
    with pytest.raises(CheckpointError) as caught:
        checkpoint_hparams(load_checkpoint(tmp_path / "whole.ckpt"), tmp_path / "whole.ckpt")
    assert _one_line(caught) == (
        f"{tmp_path}/whole.ckpt holds no softcal Classifier hyperparameters (num_classes, in_channels,"
        " image_size); it was not written by scripts/train.py"
    )


def test_checkpoint_of_other_data_messages(tmp_path):
    from types import SimpleNamespace

    import torch

    from softcal.data import CIFAR10DataModule
    from softcal.runs.checkpoints import check_checkpoint_fits, load_weights

    digits = [str(i) for i in range(10)]
    mnist = {"in_channels": 1, "image_size": 28, "num_classes": 10, "class_names": digits}
    with pytest.raises(CheckpointError) as caught:
        check_checkpoint_fits("m.ckpt", mnist, CIFAR10DataModule(root=str(tmp_path)))
    assert _one_line(caught) == (
        "m.ckpt takes 1x28x28 (channels x height x width) images but the data (CIFAR10) has 3x32x32; use"
        " the data the model was trained on (check the data.* settings and overrides)"
    )
    shapes = SimpleNamespace(image_size=(28, 28), in_channels=1, name="shapes",
                             class_names=["circle", "square", "triangle"])  # fmt: skip
    with pytest.raises(CheckpointError) as caught:
        check_checkpoint_fits("m.ckpt", mnist, shapes)
    assert _one_line(caught) == (
        "m.ckpt was trained on 10 classes (0, 1, 2, 3, 4, 5, ... (10 in all)) but the data (shapes) has 3"
        " (circle, square, triangle); its metrics on this data would be meaningless"
    )
    check_checkpoint_fits("m.ckpt", mnist, shapes, classes=False)  # prediction needs no labels
    with pytest.raises(CheckpointError) as caught:
        load_weights(torch.nn.Linear(2, 2), {"weight": torch.zeros(3, 3), "bias": torch.zeros(3)}, "m.ckpt")
    assert _one_line(caught).startswith(
        "the weights in m.ckpt do not fit the net that config.yaml describes (Error(s) in loading"
    )
    assert str(caught.value).endswith("); is the config from the same run?")


def test_run_config_messages(tmp_path):
    from softcal.runs.load import read_config, rebuild
    from softcal.runs.run_dirs import find_run_dir

    with pytest.raises(CheckpointError) as caught:
        find_run_dir(tmp_path / "best.ckpt")
    assert _one_line(caught) == (
        f"no config.yaml found beside {tmp_path}/best.ckpt; evaluate a run directory made by"
        " scripts/train.py (or copy the run's config.yaml next to the checkpoint)"
    )
    config = tmp_path / "config.yaml"
    config.write_text("model: [unclosed")
    with pytest.raises(CheckpointError) as caught:
        read_config(config)
    assert _one_line(caught).startswith(f"{config} is not a readable run config (")
    config.write_text("trainer: {}\n")
    with pytest.raises(CheckpointError) as caught:
        read_config(config)
    assert _one_line(caught) == f"{config} is not a run config: it has no model and data entries"
    saved = {"model": {}, "data": {"class_path": "softcal.data.NoSuchDataModule"}}
    with pytest.raises(CheckpointError) as caught:
        rebuild(config, saved, [], {})
    assert _one_line(caught).startswith(f"{config} cannot be used to rebuild the model (")
    saved = {"seed_everything": 0, "model": {}, "data": {"class_path": "softcal.data.MNISTDataModule",
                                                         "init_args": {"root": str(tmp_path)}}}  # fmt: skip
    with pytest.raises(SoftcalError) as caught:
        rebuild(config, saved, ["--trainer.max_epochs", "three"], {})
    expected = "bad override: Parser key \"trainer.max_epochs\": expects int or null, got 'three'"
    assert _one_line(caught) == expected


def test_predict_messages(tmp_path, capsys):
    from PIL import Image

    from softcal.apps.predict import images_to_predict, warn_if_colour

    with pytest.raises(DataError) as caught:
        images_to_predict([tmp_path / "nothere.png"])
    assert _one_line(caught) == f"{tmp_path}/nothere.png not found; pass image files or folders of images"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as caught:
        images_to_predict([tmp_path / "empty"])
    assert _one_line(caught) == (
        f"no image files (.bmp, .gif, .jpeg, .jpg, .png, .tif, .tiff, .webp) in {tmp_path}/empty"
    )
    with pytest.raises(DataError) as caught:
        images_to_predict([])
    assert _one_line(caught) == "no images given; pass image files or folders of images"
    warn_if_colour(Path("digit.png"), Image.new("RGB", (28, 28), (200, 10, 10)))
    warn_if_colour(Path("gray.png"), Image.new("L", (28, 28)))
    assert capsys.readouterr().err.splitlines() == [
        "warning: digit.png is a colour image; converting it to grayscale for this 1-channel model"
    ]


def test_uncalibrated_warnings():
    from types import SimpleNamespace

    from softcal.calibration.run_calibration import RunCalibration
    from softcal.runs.load import LoadedRun

    last = Path("runs/x/checkpoints/last.ckpt")
    unfitted = SimpleNamespace(calibration=RunCalibration(10), checkpoint=last)
    assert LoadedRun.uncalibrated_warning(unfitted, "the exported probabilities") == (
        "warning: last.ckpt has no fitted temperature (trained with --calibrate false?); the exported"
        " probabilities are uncalibrated (T = 1)"
    )
    fitted = SimpleNamespace(calibration=RunCalibration(10), checkpoint=Path("best.ckpt"))
    fitted.calibration.use_temperature(1.5)
    assert LoadedRun.uncalibrated_warning(fitted, "the exported probabilities") is None


def test_export_without_its_extra(tiny_run, tmp_path, monkeypatch):
    import sys

    from softcal.apps.export import main

    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` fails as if not installed
    with pytest.raises(SoftcalError) as caught:
        main(["--ckpt", str(tiny_run), "--format", "onnx", "--out", str(tmp_path / "model.onnx")])
    assert _one_line(caught) == "onnx export needs onnx; install the export extra: pip install -e '.[export]'"
    assert list(tmp_path.iterdir()) == [], "nothing written"


def test_ctrl_c_outside_the_training_loops(capsys):
    from softcal.errors import exit_on_user_error

    def starting_up() -> None:
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as caught:
        exit_on_user_error(starting_up)()
    assert caught.value.code == 130
    assert capsys.readouterr().err == "interrupted: the last saved checkpoint is kept\n"


class InterruptAtFirstBatch(L.Callback):
    """Ctrl-C (KeyboardInterrupt) after the first training batch."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        raise KeyboardInterrupt


def test_ctrl_c_while_training(mnist_root, tmp_path, caplog):
    import logging
    import signal

    from softcal.apps.train import main
    from tests.conftest import TINY

    caplog.set_level(logging.INFO)
    # evaluate's quiet_lightning() (run by earlier tests in this process) raises Lightning's level
    caplog.set_level(logging.INFO, logger="lightning.pytorch")
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as caught:
            main(["--config", str(REPO / "configs" / "mnist.yaml"), *TINY, "--figures", "false",
                  "--data.init_args.root", str(mnist_root),
                  "--trainer.logger.init_args.save_dir", str(tmp_path),
                  "--trainer.callbacks+=tests.test_errors_doc.InterruptAtFirstBatch"])  # fmt: skip
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores further Ctrl-Cs once interrupted
    assert caught.value.code == 130
    assert "Detected KeyboardInterrupt, attempting graceful shutdown ..." in caplog.text
    assert not list(tmp_path.rglob("results.json"))
