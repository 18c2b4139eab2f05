"""predict and export: image files in, the probabilities Lightning's test loop computes out."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from softcal.apps.export import main as export_main
from softcal.apps.export import metadata, probability_model
from softcal.apps.predict import main as predict_main
from softcal.apps.predict import predict_probabilities, read_images
from softcal.calibration.run_calibration import RunCalibration
from softcal.data.readers import decode_images, image_label_pairs, read_idx
from softcal.errors import CheckpointError, DataError
from softcal.evaluation.passes import evaluation_trainer
from softcal.runs.load import load_run
from softcal.runs.run_dirs import best_checkpoint
from tests.conftest import REPO, TINY, run_script
from tests.helpers import CALIBRATION_KEY, slow_when, stored_temperature


@pytest.fixture(scope="module")
def colour_run(image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 3-channel run: the CIFAR-10 sample config (ResNet, RGB) on a generated folder."""
    from softcal.apps.train import main as train

    results = train([
        "--config", str(REPO / "configs" / "cifar10_sample.yaml"), *TINY,
        "--data.init_args.val_size", "0.2",
        "--data.init_args.root", str(image_folder.parent),
        "--data.init_args.folder", image_folder.name,
        "--trainer.logger.init_args.save_dir", str(tmp_path_factory.mktemp("colour_runs")),
    ])  # fmt: skip
    return Path(results["run_dir"])


@pytest.fixture(scope="module")
def test_images(mnist_root: Path) -> torch.Tensor:
    """The first 7 images of the generated MNIST test split, uint8 (7, 1, 28, 28)."""
    return read_idx(mnist_root / "MNIST" / "raw" / "t10k-images-idx3-ubyte")[:7].unsqueeze(1)


@pytest.fixture(scope="module")
def image_files(test_images: torch.Tensor, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The same digits as grayscale PNG and JPEG files, and tinted colour copies of two."""
    folder = tmp_path_factory.mktemp("images")
    files: dict[str, list[Path]] = {"png": [], "jpeg": [], "colour": []}
    for i, image in enumerate(test_images[:, 0].numpy()):
        for kind, suffix in (("png", ".png"), ("jpeg", ".jpg")):
            path = folder / kind / f"digit{i}{suffix}"
            path.parent.mkdir(exist_ok=True)
            Image.fromarray(image).save(path)
            files[kind].append(path)
    for i, suffix in ((0, ".png"), (1, ".jpg")):
        rgb = np.repeat(test_images[i, 0].numpy()[..., None], 3, axis=2).astype(np.int16)
        rgb[..., 0] = np.clip(rgb[..., 0] + 90, 0, 255)  # a red cast: clearly colour
        path = folder / "colour" / f"tinted{i}{suffix}"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rgb.astype(np.uint8)).save(path)
        files["colour"].append(path)
    return files


def _predict_json(args: list[str], capsys) -> tuple[dict, str]:
    predict_main([*args, "--json"])
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


class _KeepTestLogits(L.Callback):
    def __init__(self) -> None:
        self.logits: list[torch.Tensor] = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.logits.append(outputs["logits"].float().cpu())


def lightning_test_probabilities(run_dir: Path) -> torch.Tensor:
    """softmax(logits / T) over the run's test split, the logits from Lightning's test loop
    (the datamodule's loader and transfer hook, as evaluate runs it) and T read from the
    checkpoint file itself - none of predict's code on this side."""
    run = load_run(run_dir)
    keep = _KeepTestLogits()
    evaluation_trainer(run, [keep]).test(run.model, datamodule=run.datamodule, verbose=False)
    temperature = stored_temperature(torch.load(run.checkpoint, weights_only=True)["state_dict"])
    return torch.softmax(torch.cat(keep.logits) / float(temperature), dim=1)


# ------------------------------------------------------------------ predict


def test_grayscale_predictions_equal_lightning_test(tiny_run, image_files, capsys):
    folder = image_files["png"][0].parent  # a folder: every image in it, sorted
    report, err = _predict_json(["--ckpt", str(tiny_run), str(folder)], capsys)
    assert "warning" not in err
    trained = json.loads((tiny_run / "results.json").read_text())
    assert report["temperature"] == pytest.approx(trained["temperature"], rel=1e-6)
    assert report["classes"] == [str(d) for d in range(10)]
    got = torch.tensor([p["probabilities"] for p in report["predictions"]])
    # The PNGs hold the first 7 test images (lossless): what the test loop scored first.
    want = lightning_test_probabilities(tiny_run)[:7]
    assert (got - want).abs().max() <= 1e-6
    for prediction, row in zip(report["predictions"], want, strict=True):
        top = prediction["top_k"]
        assert len(top) == 3 and top[0]["index"] == int(row.argmax())
        assert top[0]["probability"] >= top[1]["probability"] >= top[2]["probability"]


@pytest.mark.slow
def test_colour_predictions_equal_lightning_test(colour_run, image_folder, capsys):
    report, err = _predict_json(["--ckpt", str(colour_run), str(image_folder / "test")], capsys)
    assert "warning" not in err and report["classes"] == ["circle", "square", "triangle"]
    got = {Path(p["file"]): p["probabilities"] for p in report["predictions"]}
    # The test split holds the same files in the datamodule's order: match them by name.
    order = [path for path, _ in image_label_pairs(image_folder / "test", report["classes"])]
    assert sorted(got) == sorted(order) and len(order) == 30
    want = lightning_test_probabilities(colour_run)
    assert (torch.tensor([got[path] for path in order]) - want).abs().max() <= 1e-6


def test_jpeg_and_colour_images(tiny_run, image_files, capsys):
    report, err = _predict_json(["--ckpt", str(tiny_run), *map(str, image_files["jpeg"])], capsys)
    assert "warning" not in err  # grey JPEGs carry no colour, whatever their encoding
    assert len(report["predictions"]) == 7
    report, err = _predict_json(["--ckpt", str(tiny_run), *map(str, image_files["colour"])], capsys)
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and all("colour image" in w and "grayscale" in w for w in warnings)
    for prediction in report["predictions"]:
        assert sum(prediction["probabilities"]) == pytest.approx(1.0, abs=1e-5)


def test_text_output_lists_top_k_per_image(tiny_run, image_files, capsys):
    predict_main(["--ckpt", str(tiny_run), str(image_files["png"][0]), "--top-k", "2"])
    lines = capsys.readouterr().out.splitlines()
    t = load_run(tiny_run).calibration.temperature
    assert lines[0].startswith("checkpoint") and lines[0].endswith(f"  (temperature scaling, T = {t:.4f})")
    assert lines[1].startswith(str(image_files["png"][0])) and lines[1].count("%") == 2


def test_each_file_is_opened_once_for_a_grayscale_model(image_files, monkeypatch, capsys):
    """The colour check looks at the image being decoded instead of reading the file again."""
    files = [image_files["png"][0], image_files["jpeg"][0], *image_files["colour"]]
    plain = decode_images([(path, 0) for path in files], 1, (28, 28))[0]
    opened: list[Path] = []
    real_open = Image.open

    def counting_open(fp, *args, **kwargs):
        opened.append(Path(fp))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    images = read_images(files, 1, (28, 28))
    assert opened == files
    assert torch.equal(images, plain)  # looking first does not change the decoded pixels
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and all("tinted" in w for w in warnings)


def test_unreadable_image_is_a_data_error(tiny_run, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="not a readable image"):
        predict_main(["--ckpt", str(tiny_run), str(tmp_path / "broken.png")])


# ------------------------------------------------------------------ the temperature


def _with_temperature(run_dir: Path, dest: Path, temperature: float, fitted: bool) -> Path:
    """A copy of the run whose checkpoint says T = ``temperature``, fitted or not."""
    (dest / "checkpoints").mkdir(parents=True)
    shutil.copy(run_dir / "config.yaml", dest / "config.yaml")
    ckpt = torch.load(best_checkpoint(run_dir), map_location="cpu", weights_only=True)
    calibration = RunCalibration(10)
    calibration.use_temperature(temperature if fitted else None)
    ckpt["state_dict"][CALIBRATION_KEY] = calibration.get_extra_state()
    torch.save(ckpt, dest / "checkpoints" / "best.ckpt")
    return dest


def test_a_fitted_temperature_of_exactly_one_is_fitted(tiny_run, image_files, tmp_path, capsys):
    run_dir = _with_temperature(tiny_run, tmp_path / "run", 1.0, fitted=True)
    assert load_run(run_dir).calibration.temperature == 1.0
    report, err = _predict_json(["--ckpt", str(run_dir), str(image_files["png"][0])], capsys)
    assert report["temperature"] == 1.0 and "warning" not in err
    predict_main(["--ckpt", str(run_dir), str(image_files["png"][0])])
    assert "(temperature scaling, T = 1.0000)" in capsys.readouterr().out
    assert metadata(load_run(run_dir))["temperature"] == 1.0


def test_no_fitted_temperature_is_said_plainly(tiny_run, image_files, tmp_path, capsys):
    run_dir = _with_temperature(tiny_run, tmp_path / "run", 1.0, fitted=False)
    run = load_run(run_dir)
    assert run.calibration.temperature is None
    report, err = _predict_json(["--ckpt", str(run_dir), str(image_files["png"][0])], capsys)
    assert report["temperature"] is None
    assert "has no fitted temperature" in err and "uncalibrated" in err
    assert (
        f"warning: {run.checkpoint.name} has no fitted temperature (trained with --calibrate false?); the"
        " probabilities are uncalibrated (T = 1)\n"
    ) in err
    from softcal.apps.evaluate import main as evaluate_main

    evaluate_main([str(run_dir), "--out", str(tmp_path / "evaluated")])
    assert (
        f"note: {run.checkpoint.name} has no fitted temperature (trained with --calibrate false?): the"
        " calibrated metrics are the raw ones (T = 1)\n"
    ) in capsys.readouterr().err
    meta = metadata(run)
    assert meta["temperature"] is None and meta["calibration"] is None
    not_fitted = "calibration: not fitted: raw softmax (T = 1)"
    assert meta["output"] == f"softmax probabilities (N, num_classes), {not_fitted}"
    # The raw softmax, not the checkpoint's T of another run: one image gives the same answer.
    fitted = load_run(tiny_run)
    images = read_images(image_files["png"][:1], 1, (28, 28))
    with torch.no_grad():
        raw = torch.softmax(fitted.model(fitted.datamodule.preprocess(images)), dim=1)
    assert torch.allclose(torch.tensor(report["predictions"][0]["probabilities"]), raw[0], atol=1e-6)


# ------------------------------------------------------------------ export


@pytest.mark.filterwarnings("ignore:.*torch.jit.load. is deprecated")
@pytest.mark.parametrize("run_name,fmt", slow_when([("tiny_run", "torchscript"), ("colour_run", "onnx")],
                                                   [("colour_run", "onnx")]))
def test_export_matches_torch_at_any_batch_size(run_name, fmt, request, tmp_path, capsys):
    run_dir = request.getfixturevalue(run_name)
    out = export_main(["--ckpt", str(run_dir), "--format", fmt, "--out", str(tmp_path / "model")])
    run = load_run(run_dir)
    wrapper = probability_model(run)
    if fmt == "onnx":
        import onnx
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        assert isinstance(session.get_inputs()[0].shape[0], str)  # symbolic: any batch size
        meta = {p.key: json.loads(p.value) for p in onnx.load(str(out)).metadata_props}
        assert meta["class_names"] == run.class_names
        assert meta["temperature"] == pytest.approx(run.calibration.temperature)

        def infer(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    else:
        infer = torch.jit.load(str(out))
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (7, run.in_channels, *run.image_size), dtype=torch.uint8,
                           generator=generator)  # fmt: skip
    for n in (1, 7):
        x = images[:n].float() / 255.0
        got = infer(x).detach()
        assert got.shape == (n, run.num_classes)
        with torch.no_grad():
            assert (got - wrapper(x)).abs().max() <= 1e-5
        # ... and the exported model is the predictor: normalisation and T are inside.
        assert (got - predict_probabilities(run, images[:n])).abs().max() <= 1e-5
    assert f"wrote {out}" in capsys.readouterr().out


def test_a_foreign_torch_file_is_not_a_checkpoint(tiny_run, tmp_path):
    (tmp_path / "checkpoints").mkdir()
    shutil.copy(tiny_run / "config.yaml", tmp_path / "config.yaml")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "checkpoints" / "other.ckpt")
    with pytest.raises(CheckpointError, match="not a Lightning checkpoint"):
        load_run(tmp_path / "checkpoints" / "other.ckpt")


# ------------------------------------------------------------------ bad input: one line, exit 2


def _no_config(run_dir: Path, tmp: Path) -> tuple[Path, str]:
    shutil.copy(best_checkpoint(run_dir), tmp / "loose.ckpt")
    return tmp / "loose.ckpt", "no config.yaml found beside"


def _truncated(run_dir: Path, tmp: Path) -> tuple[Path, str]:
    (tmp / "checkpoints").mkdir()
    shutil.copy(run_dir / "config.yaml", tmp / "config.yaml")
    data = best_checkpoint(run_dir).read_bytes()
    (tmp / "checkpoints" / "cut.ckpt").write_bytes(data[: len(data) // 3])
    return tmp / "checkpoints" / "cut.ckpt", "is truncated"


@pytest.mark.slow
@pytest.mark.parametrize("script,case", [("predict.py", _truncated), ("export.py", _no_config)],
                         ids=["predict-truncated", "export-no-config"])  # fmt: skip
def test_bad_checkpoint_is_one_error_line(script, case, tiny_run, image_files, tmp_path):
    ckpt, message = case(tiny_run, tmp_path)
    extra = [str(image_files["png"][0])] if script == "predict.py" else []
    proc = run_script(script, "--ckpt", str(ckpt), *extra, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
