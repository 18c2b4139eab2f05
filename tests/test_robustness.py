"""Issue 15: atomic checkpoints that survive a full disk, one line for impossible numbers, odd
file names read, and SIGTERM that saves last.ckpt for ``--ckpt_path last``."""

from __future__ import annotations

import json
import os
import resource
import signal
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from softcal.atomic_files import atomic_write_bytes
from softcal.checks import check_epochs
from softcal.data import ImageFolderDataModule, MNISTDataModule
from softcal.data.readers import content_key, image_label_pairs, load_image_folder
from softcal.errors import CheckpointError, DataError, SoftcalError
from softcal.model.module import Classifier
from softcal.runs.checkpoint_io import AtomicCheckpointIO, with_atomic_checkpoints
from tests.synthetic_data import write_image_folder
from tests.test_reliability import _train as reliability_train


def _checkpoint(size: int, value: float = 1.0) -> dict:
    return {"state_dict": {"w": torch.full((size,), value)}, "epoch": 3, "global_step": 7}


def _temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- atomic writes
def test_checkpoint_io_round_trip_leaves_only_the_checkpoint(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint(_checkpoint(10, 2.0), path)
    io.save_checkpoint(_checkpoint(10, 3.0), path)  # over an existing file
    loaded = io.load_checkpoint(path)
    assert torch.equal(loaded["state_dict"]["w"], torch.full((10,), 3.0))
    assert (loaded["epoch"], loaded["global_step"]) == (3, 7)
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def _write_under_file_size_limit(limit: int, write) -> None:
    """Run ``write()`` with files capped at ``limit`` bytes (EFBIG past it, as a full disk
    fails part-way), then lift the cap again."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        write()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_a_checkpoint_that_runs_out_of_room_keeps_the_previous_one(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint(_checkpoint(1000), path)
    before = path.read_bytes()
    with pytest.raises(CheckpointError) as caught:
        bigger = _checkpoint(100_000)
        _write_under_file_size_limit(len(before) + 4096, lambda: io.save_checkpoint(bigger, path))
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path) in message and "File too large" in message
    assert path.read_bytes() == before, "the previous checkpoint must be byte-identical"
    assert torch.equal(io.load_checkpoint(path)["state_dict"]["w"], torch.ones(1000))
    assert _temp_files(tmp_path) == []


def test_atomic_write_bytes_cleans_up_when_the_rename_fails(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    target.write_text("old")

    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(SoftcalError, match=r"cannot write results.json in .*No space left on device"):
        atomic_write_bytes(target, b"new")
    assert target.read_text() == "old" and _temp_files(tmp_path) == []


def test_an_image_cache_that_runs_out_of_room_keeps_the_old_file(tmp_path):
    folder = write_image_folder(tmp_path / "f", classes=("a", "b"), n_train=20, n_test=2)
    classes, cache = ["a", "b"], tmp_path / "cache"
    key = content_key(image_label_pairs(folder / "train", classes), 3, (32, 32))
    old = cache / f"imagefolder-{key}.pt"
    old.parent.mkdir()
    old.write_bytes(b"an untrusted cache file: decoded again, then replaced" * 10)
    before = old.read_bytes()
    got = []
    _write_under_file_size_limit(
        len(before), lambda: got.append(load_image_folder(folder / "train", classes, 3, (32, 32), cache))
    )
    images, labels = got[0]
    assert images.shape == (20, 3, 32, 32) and labels.tolist().count(1) == 10, "the run goes on"
    assert old.read_bytes() == before and _temp_files(cache) == []
    assert torch.equal(load_image_folder(folder / "train", classes, 3, (32, 32), cache)[0], images)
    assert torch.load(old, weights_only=True)["images"].shape == (20, 3, 32, 32), "replaced with room"


def test_a_figure_that_runs_out_of_room_keeps_the_old_png(tmp_path):
    import matplotlib.pyplot as plt

    from softcal.calibration.figures import save_png

    path = save_png(plt.figure(figsize=(1, 1)), tmp_path / "reliability.png")
    before = path.read_bytes()
    assert before.startswith(b"\x89PNG")
    with pytest.raises(SoftcalError, match=r"^cannot write reliability.png in .*: File too large"):
        _write_under_file_size_limit(len(before), lambda: save_png(plt.figure(figsize=(8, 8)), path))
    assert path.read_bytes() == before and _temp_files(tmp_path) == []


def test_an_export_that_runs_out_of_room_keeps_the_old_model(tmp_path):
    from softcal.apps.export import export_torchscript

    path, example = tmp_path / "model.pt", torch.rand(2, 4)
    export_torchscript(torch.nn.Linear(4, 2), example, path, {"classes": ["a", "b"]})
    before = path.read_bytes()
    bigger = torch.nn.Sequential(torch.nn.Linear(4, 4000), torch.nn.Linear(4000, 2))
    with pytest.raises(SoftcalError, match=r"^cannot write model.pt in .*: File too large"):
        _write_under_file_size_limit(len(before), lambda: export_torchscript(bigger, example, path, {}))
    assert path.read_bytes() == before and _temp_files(tmp_path) == []
    assert torch.jit.load(path)(example).shape == (2, 2), "the old model still loads"


def test_the_cli_plugin_is_added_unless_the_config_names_one():
    own = TorchCheckpointIO()
    assert with_atomic_checkpoints([own]) == [own]
    added = with_atomic_checkpoints(None)
    assert len(added) == 1 and isinstance(added[0], AtomicCheckpointIO)
    assert with_atomic_checkpoints("bf16-mixed")[0] == "bf16-mixed"


# --------------------------------------------------------------------------- impossible numbers
@pytest.mark.parametrize(("option", "value"), [
    ("lr", 0.0), ("lr", -1.0), ("lr", float("nan")), ("weight_decay", -0.1), ("momentum", 1.0),
    ("momentum", -0.5), ("calibration_bins", 0), ("warmup_fraction", 1.0), ("label_smoothing", -0.1),
    ("num_classes", 1),
])  # fmt: skip
def test_impossible_model_values_get_one_line(option, value):
    with pytest.raises(SoftcalError) as caught:
        Classifier(**{option: value})
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"model.{option}={value!r} is impossible")
    assert f"(e.g. --model.{option} " in message


def test_an_impossible_learning_rate_names_the_rule_and_an_example():
    with pytest.raises(SoftcalError) as caught:
        Classifier(lr=-1.0)
    expected = "model.lr=-1.0 is impossible: it must be a number above 0 (e.g. --model.lr 0.01)"
    assert str(caught.value) == expected


@pytest.mark.parametrize(("option", "value"), [
    ("batch_size", 0), ("batch_size", -4), ("eval_batch_size", 0), ("val_size", 0), ("val_size", -0.1),
])  # fmt: skip
def test_impossible_data_values_get_one_line(option, value, tmp_path):
    with pytest.raises(SoftcalError, match=rf"^data.init_args.{option}={value!r} is impossible"):
        MNISTDataModule(root=str(tmp_path), **{option: value})


def test_epochs():
    with pytest.raises(SoftcalError) as caught:
        check_epochs(0, None)
    assert str(caught.value) == (
        "trainer.max_epochs=0 is impossible: it must be a number at least 1 (e.g. --trainer.max_epochs 10)"
    )
    with pytest.raises(SoftcalError, match=r"^trainer.max_epochs=0 is impossible.*--trainer.max_epochs 10"):
        check_epochs(0, None)
    with pytest.raises(SoftcalError, match=r"^trainer.max_epochs=-1 is impossible"):
        check_epochs(-1, -1)  # no epoch limit and no step limit: never ends
    check_epochs(-1, 100)  # Lightning's "train by steps"
    check_epochs(None, None)
    check_epochs(1, None)


def test_valid_values_are_accepted(tmp_path):
    model = Classifier(lr=1e-3, weight_decay=0.0, momentum=0.0, calibration_bins=1, num_classes=2)
    assert model.hparams.calibration_bins == 1
    assert MNISTDataModule(root=str(tmp_path), batch_size=1, val_size=0.5).batch_size == 1


def test_an_image_folder_with_one_class_is_refused(tmp_path):
    folder = write_image_folder(tmp_path / "one", classes=("only",), n_train=4, n_test=2)
    data = ImageFolderDataModule(folder=str(folder))
    with pytest.raises(DataError) as caught:
        data.class_names  # noqa: B018 - the property reads the folder
    message = str(caught.value)
    assert "\n" not in message and "has one class sub-folder (only)" in message
    split = folder / "train"
    assert message == (
        f"image folder {split} has one class sub-folder (only); a classifier needs at least two - add a"
        f" sub-folder per class (e.g. {split}/cat/, {split}/dog/)"
    )


def test_file_and_class_names_that_are_not_utf8_are_read(tmp_path):
    folder = write_image_folder(tmp_path / "f", classes=("a", "b"), n_train=6, n_test=2)
    first = sorted((folder / "train" / "a").iterdir())[0]
    first.rename(first.with_name(os.fsdecode(b"caf\xe9-latin1.png")))  # Latin-1 bytes, not UTF-8
    for split in ("train", "test"):
        (folder / split / "b").rename(folder / split / os.fsdecode(b"\xff-b"))
    images, labels = load_image_folder(
        folder / "train", ["a", os.fsdecode(b"\xff-b")], 3, (32, 32), tmp_path / "cache"
    )
    assert images.shape == (6, 3, 32, 32) and labels.tolist().count(0) == 3
    data = ImageFolderDataModule(folder=str(folder), cache_dir=str(tmp_path / "cache"), val_size=2)
    assert data.class_names == ["a", "\\xff-b"]  # printable, plottable, storable in YAML
    data.setup("fit")
    data.setup("test")
    assert torch.equal(data.splits["test"][1].sort().values, torch.tensor([0, 1]))
    cached, _ = data.read_split(train=True)  # read back from the cache written above
    assert torch.equal(cached, images)


# --------------------------------------------------------------------------- end to end
#: test_reliability's small MNIST-format run (500 train images, batch 32, 2 epochs), with
#: last.ckpt saved every 5 steps as well.
EVERY5 = ("--last_checkpoint.every_n_train_steps", "5")


def _train(root: Path, out: Path, *extra: str):
    return reliability_train(root, out, *EVERY5, *extra)


def _stderr_lines(proc, start: str) -> list[str]:
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return [line for line in proc.stderr.splitlines() if line.startswith(start)]


@pytest.mark.slow
def test_impossible_batch_size_ends_in_one_line(mnist_root, tmp_path):
    proc = _train(mnist_root, tmp_path, "--data.init_args.batch_size", "0")
    assert proc.returncode == 2
    assert _stderr_lines(proc, "error:") == [
        "error: data.init_args.batch_size=0 is impossible: it must be a number at least 1"
        " (e.g. --data.init_args.batch_size 128)"
    ]


@pytest.mark.slow
def test_a_full_disk_mid_run_keeps_the_last_checkpoint_and_stops_in_one_line(mnist_root, tmp_path):
    # last.ckpt is saved at step 5; at step 7 files are capped at half its size: step 10's fails.
    proc = _train(mnist_root, tmp_path, "--trainer.callbacks+=tests.helpers.FileSizeLimitAtStep",
                  "--trainer.callbacks.step", "7")  # fmt: skip
    checkpoints = tmp_path / "mnist" / "version_0" / "checkpoints"
    assert proc.returncode == 2
    errors = _stderr_lines(proc, "error:")
    assert errors == [
        f"error: cannot write last.ckpt in {checkpoints}: File too large (errno 27); make room there"
        " or write elsewhere (an existing last.ckpt is left as it was)"
    ]
    assert (checkpoints / "last.ckpt").read_bytes() == (checkpoints / "last.ckpt.before").read_bytes()
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 5
    assert _temp_files(checkpoints) == []


@pytest.mark.slow
def test_sigterm_saves_last_and_the_run_resumes_to_the_same_result(mnist_root, tmp_path):
    whole = _train(mnist_root, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-2000:]
    term = _train(mnist_root, tmp_path / "term", "--trainer.callbacks+=tests.helpers.TermAtStep",
                  "--trainer.callbacks.step", "12")  # fmt: skip
    run_dir = tmp_path / "term" / "mnist" / "version_0"
    assert term.returncode == 143, term.stderr[-2000:]
    assert _stderr_lines(term, "terminated (SIGTERM): ") == [
        f"terminated (SIGTERM): {run_dir / 'checkpoints' / 'last.ckpt'} holds step 12 (epoch 0);"
        " resume with --ckpt_path last (or --ckpt_path <run directory>)"
    ]
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert (saved["global_step"], saved["epoch"]) == (12, 0), "saved at the SIGTERM, not at step 10"
    assert not (run_dir / "results.json").exists()

    resumed = _train(mnist_root, tmp_path / "term", "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    got = json.loads((run_dir / "results.json").read_text())["metrics"]
    expected = json.loads((tmp_path / "whole" / "mnist" / "version_0" / "results.json").read_text())
    for name, value in expected["metrics"].items():
        assert got[name] == pytest.approx(value, abs=1e-6), name


class TermWhileTesting(L.Callback):
    """SIGTERM to this process after the first of the two test batches: the test has begun."""

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 0:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.slow
def test_sigterm_while_testing_exits_143_in_one_line_and_writes_no_results(mnist_root, tmp_path):
    term = _train(mnist_root, tmp_path, "--trainer.max_epochs", "1",
                  "--trainer.callbacks+=tests.test_robustness.TermWhileTesting")  # fmt: skip
    run_dir = tmp_path / "mnist" / "version_0"
    assert term.returncode == 143, term.stderr[-2000:]
    [best] = (run_dir / "checkpoints").glob("best*.ckpt")
    assert _stderr_lines(term, "terminated (SIGTERM)") == [
        f"terminated (SIGTERM) while testing: no results.json was written; training is complete and"
        f" {best} holds the model - test it with python scripts/evaluate.py {best}"
    ]
    assert not (run_dir / "results.json").exists(), "no results from part of the test set"
    assert torch.load(best, weights_only=True)["global_step"] == 15, "the trained model is saved"


def test_the_sigterm_while_testing_line_without_a_checkpoint():
    from softcal.apps.train import sigterm_while_testing

    assert sigterm_while_testing("") == (
        "terminated (SIGTERM) while testing: no results.json was written, and the run saved no checkpoint"
        " (--trainer.enable_checkpointing false): train again"
    )


def test_a_lost_node_is_named_in_one_line_and_other_errors_pass_through():
    from types import SimpleNamespace

    from softcal.runs.lost_peer import lost_peer_error

    gloo = RuntimeError("[gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:27036: Connection reset"
                        " by peer. This is typically caused by a remote worker hanging\nmore")  # fmt: skip
    two, one = SimpleNamespace(world_size=2, global_rank=1), SimpleNamespace(world_size=1, global_rank=0)
    message = str(lost_peer_error(two, gloo))
    assert message.startswith("rank 1 of 2 lost contact with the other processes of this run ([gloo/")
    assert "\n" not in message and "--ckpt_path last" in message
    assert lost_peer_error(one, gloo) is None
    assert lost_peer_error(two, RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None


def test_an_impossible_override_of_a_reopened_run_names_the_option(tiny_run):
    from softcal.runs.load import load_run

    with pytest.raises(SoftcalError, match=r"^data.init_args.eval_batch_size=0 is impossible"):
        load_run(tiny_run, ["--data.init_args.eval_batch_size", "0"])
