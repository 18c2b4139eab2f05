"""scripts/predict.py and scripts/export.py: image files in, calibrated probabilities out."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from softcal.errors import CheckpointError, DataError
from softcal.apps.export import main as export_main
from softcal.apps.export import probability_model
from softcal.data.formats import decode_images, read_idx
from softcal.apps.predict import load_for_inference, predict_probabilities, read_images
from softcal.apps.predict import main as predict_main
from softcal.runs.files import best_checkpoint
from tests.conftest import run_script


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


# ------------------------------------------------------------------ predict


def test_png_predictions_equal_the_test_pipeline(tiny_run, test_images, image_files, capsys):
    folder = image_files["png"][0].parent  # a folder: every image in it, sorted
    report, err = _predict_json(["--ckpt", str(tiny_run), str(folder)], capsys)
    assert "warning" not in err
    trained = json.loads((tiny_run / "results.json").read_text())
    assert report["temperature"] == pytest.approx(trained["temperature"], rel=1e-6)
    assert report["classes"] == [str(d) for d in range(10)]
    got = torch.tensor([p["probabilities"] for p in report["predictions"]])
    assert torch.allclose(got.sum(1), torch.ones(len(got)), atol=1e-5)
    # PNG is lossless: the same uint8 pixels through the same preprocess as testing.
    inference = load_for_inference(tiny_run)
    with torch.no_grad():
        x = inference.datamodule.preprocess(test_images)
        want = inference.model.probabilities(inference.model(x), calibrated=True)
    assert (got - want).abs().max() <= 1e-6
    for prediction, row in zip(report["predictions"], want, strict=True):
        top = prediction["top_k"]
        assert len(top) == 3 and top[0]["index"] == int(row.argmax())
        assert top[0]["probability"] >= top[1]["probability"] >= top[2]["probability"]


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
    assert lines[0].startswith("checkpoint") and "T = " in lines[0]
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


# ------------------------------------------------------------------ export


@pytest.mark.filterwarnings("ignore:.*torch.jit.load. is deprecated")
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_torch_at_any_batch_size(fmt, tiny_run, test_images, tmp_path, capsys):
    out = export_main(["--ckpt", str(tiny_run), "--format", fmt,
                       "--out", str(tmp_path / f"model.{fmt}")])  # fmt: skip
    inference = load_for_inference(tiny_run)
    wrapper = probability_model(inference)
    images = torch.cat([test_images, test_images.flip(3)])[:7]  # 7 distinct images
    if fmt == "onnx":
        import onnx
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        assert isinstance(session.get_inputs()[0].shape[0], str)  # symbolic: any batch size
        meta = {p.key: json.loads(p.value) for p in onnx.load(str(out)).metadata_props}
        assert meta["class_names"] == inference.class_names
        assert meta["temperature"] == pytest.approx(inference.temperature)

        def run(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    else:
        loaded = torch.jit.load(str(out))
        run = loaded
    for n in (1, 7):
        x = images[:n].float() / 255.0
        got = run(x).detach()
        assert got.shape == (n, 10)
        with torch.no_grad():
            assert (got - wrapper(x)).abs().max() <= 1e-5
        # ... and the exported model is the predictor: normalisation and T are inside.
        assert (got - predict_probabilities(inference, images[:n])).abs().max() <= 1e-5
        assert torch.allclose(got.sum(1), torch.ones(n), atol=1e-5)
    assert f"wrote {out}" in capsys.readouterr().out


def test_a_foreign_torch_file_is_not_a_checkpoint(tiny_run, tmp_path):
    (tmp_path / "checkpoints").mkdir()
    shutil.copy(tiny_run / "config.yaml", tmp_path / "config.yaml")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "checkpoints" / "other.ckpt")
    with pytest.raises(CheckpointError, match="not a Lightning checkpoint"):
        load_for_inference(tmp_path / "checkpoints" / "other.ckpt")


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
