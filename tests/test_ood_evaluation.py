"""evaluate --ood: every number recomputed here with sklearn, every step checked on its own.

The OOD images are rebuilt independently (noise from its definition's statistics, image files
decoded with PIL, IDX files read with numpy) and run through the model in one plain forward pass
(no Trainer, no softcal.evaluation.passes): the logits evaluate ranked must agree with it to
float32 rounding. The scores evaluate ranked must equal numpy's formulas on those logits to
1e-12, and its metrics scikit-learn's roc_auc_score / average_precision_score / roc_curve of
those very scores.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from softcal.apps.evaluate import main
from softcal.errors import SoftcalError
from softcal.evaluation import ood_detection
from softcal.evaluation.ood_detection import Detection, calibrated_scores, detect
from softcal.evaluation.ood_sets import (
    NOISE_KINDS,
    OODSet,
    load_ood_set,
    luminance,
    match_shape,
    noise_images,
    parse_spec,
)
from softcal.runs.load import load_run
from softcal.uncertainty.ood import SCORES, ood_scores
from tests.conftest import run_script
from tests.helpers import slow_when
from tests.synthetic_data import write_idx_dataset

if TYPE_CHECKING:
    from softcal.calibration.run_calibration import RunCalibration

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- references


def np_scores(logits: np.ndarray, t: float = 1.0) -> dict[str, np.ndarray]:
    z = logits.astype(np.float64)
    scaled = z / t
    shifted = scaled - scaled.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    p = np.exp(log_p)
    return {
        "msp": p.max(axis=1),
        "max_logit": z.max(axis=1),
        "energy": t * (scaled.max(axis=1) + np.log(np.exp(shifted).sum(axis=1))),
        "entropy": (p * log_p).sum(axis=1),
    }


def sk_metrics(score_in: np.ndarray, score_out: np.ndarray) -> dict[str, float]:
    scores = np.concatenate([score_in, score_out])
    is_in = np.concatenate([np.ones(len(score_in)), np.zeros(len(score_out))])
    fpr, tpr, _ = roc_curve(is_in, scores, drop_intermediate=False)
    return {
        "auroc": roc_auc_score(is_in, scores),
        "aupr_in": average_precision_score(is_in, scores),
        "aupr_out": average_precision_score(1 - is_in, -scores),
        "fpr_at_95_tpr": float(fpr[np.argmax(tpr >= 0.95)]),
    }


def plain_logits(run, images: np.ndarray | torch.Tensor) -> np.ndarray:
    """The model on uint8 images in one forward pass, outside any Trainer."""
    with torch.no_grad():
        x = run.datamodule.preprocess(torch.as_tensor(images))
        return run.model.cpu()(x).float().numpy()


def check_set(record: dict, ranked: tuple[torch.Tensor, torch.Tensor], plain_in: np.ndarray,
              plain_out: np.ndarray, calibration: RunCalibration) -> None:  # fmt: skip
    """``record`` (one set of ood.json) against sklearn, from the logits evaluate ranked
    (``ranked``: in-distribution, OOD), once those are checked against the plain forward pass."""
    for logits, plain in zip(ranked, (plain_in, plain_out), strict=True):
        # The Trainer's batches of 100 against one plain forward pass: float32 rounding only.
        np.testing.assert_allclose(logits.numpy(), plain, rtol=0, atol=1e-5)
    code_scores = [{"raw": ood_scores(z), "calibrated": calibrated_scores(calibration, z)} for z in ranked]
    for scaling, temperature in (("raw", 1.0), ("calibrated", calibration.temperature)):
        ours_in, ours_out = (np_scores(z.numpy(), temperature) for z in ranked)
        scores_in, scores_out = (scores[scaling] for scores in code_scores)
        for score in SCORES:
            # sklearn ranks the very float64 scores evaluate ranked, checked against numpy's first.
            # Where a score saturates (msp of 1.0 at a small T), torch's and numpy's exp and log may
            # leave one row 1 ulp apart, and that row then ties with many rows or stops tying:
            # AUROC moves by far more than rounding, and which rows it happens to depends on the
            # trained weights (so on the thread count and the CPU).
            for got, ours in ((scores_in[score], ours_in[score]), (scores_out[score], ours_out[score])):
                np.testing.assert_allclose(got.numpy(), ours, rtol=1e-12, atol=1e-12, err_msg=score)
            expected = sk_metrics(scores_in[score].numpy(), scores_out[score].numpy())
            for name, value in expected.items():
                got = record[scaling][score][name]
                assert got == pytest.approx(value, abs=1e-12), (record["name"], scaling, score, name)


# ----------------------------------------------------------------------------- one evaluation


@pytest.fixture(scope="module")
def fashion_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A datamodule config for generated Fashion-MNIST-format files (150 test images)."""
    root = tmp_path_factory.mktemp("fashion_root")
    write_idx_dataset(root, "FashionMNIST", n_train=60, n_test=150, seed=7)
    config = root / "fashion.yaml"
    config.write_text(
        "data:\n  class_path: softcal.data.FashionMNISTDataModule\n"
        f"  init_args:\n    root: {root}\n    download: false\n"
    )
    return config


@pytest.fixture(scope="module")
def detected(tiny_run: Path, image_folder: Path, fashion_config: Path, tmp_path_factory):
    out = tmp_path_factory.mktemp("ood")
    argv = [str(tiny_run), "--out", str(out), "--ood", "uniform-noise", "--ood", "gaussian-noise",
            "--ood", str(image_folder), "--ood", str(fashion_config)]  # fmt: skip
    ranked: list[tuple[torch.Tensor, torch.Tensor]] = []  # (in, OOD) logits of each set, in order

    def recording(logits_in: torch.Tensor, logits_out: torch.Tensor, ood: OODSet,
                  calibration: RunCalibration | None = None) -> Detection:  # fmt: skip
        ranked.append((logits_in, logits_out))
        return detect(logits_in, logits_out, ood, calibration)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ood_detection, "detect", recording)
        (evaluation,) = main(argv)
    run = load_run(tiny_run, check_classes=True)
    run.datamodule.setup("test")
    logits_in = plain_logits(run, run.datamodule.splits["test"][0])
    return out, json.loads((out / "ood.json").read_text()), run, logits_in, evaluation, ranked


@pytest.mark.slow
def test_noise_sets_equal_a_sklearn_recomputation(detected):
    out, saved, run, logits_in, _, ranked = detected
    assert saved["in_distribution"] == {"dataset": "MNIST", "split": "test", "num_images": 200}
    t = run.calibration.temperature
    assert saved["temperature"] == pytest.approx(t)
    for kind, record, logits in zip(NOISE_KINDS, saved["sets"][:2], ranked[:2], strict=True):
        images = noise_images(kind, 200, (1, 28, 28))
        assert record["name"] == kind and record["num_images"] == 200 and record["notes"] == []
        assert torch.equal(images, noise_images(kind, 200, (1, 28, 28)))  # seeded: same images
        pixels = images.double()
        if kind == "uniform-noise":
            assert pixels.min() == 0 and pixels.max() == 255 and abs(pixels.mean() - 127.5) < 1
            assert abs(pixels.std() - 255 / 12**0.5) < 1  # the uniform distribution's sd
        else:  # N(128, 64^2) clipped to 0..255 (1.9% of it lies outside): sd a little under 64
            assert abs(pixels.mean() - 128) < 1 and 60 < pixels.std() < 64
        check_set(record, logits, logits_in, plain_logits(run, images), run.calibration)


@pytest.mark.slow
def test_image_folder_is_converted_and_scored(detected, image_folder: Path):
    out, saved, run, logits_in, _, ranked = detected
    record = saved["sets"][2]
    files = sorted(image_folder.rglob("*.png"))
    assert record["name"] == "shapes" and record["num_images"] == len(files) == 150
    # RGB 32x32 images for a grayscale 28x28 model: converted, and the output says so.
    assert record["notes"] == [
        "shapes: 150 of 150 images converted to grayscale for the model",
        "shapes: 150 of 150 images resized bilinearly to 28x28 for the model",
    ]
    decoded = []
    for path in files:
        with Image.open(path) as img:
            decoded.append(np.array(img.convert("L").resize((28, 28), Image.BILINEAR))[None])
    check_set(record, ranked[2], logits_in, plain_logits(run, np.stack(decoded)), run.calibration)


@pytest.mark.slow
def test_datamodule_config_test_split_is_scored(detected, fashion_config: Path):
    out, saved, run, logits_in, _, ranked = detected
    record = saved["sets"][3]
    assert record["name"] == "FashionMNIST test" and record["num_images"] == 150 and record["notes"] == []
    raw = (fashion_config.parent / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte").read_bytes()
    images = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(150, 1, 28, 28)
    check_set(record, ranked[3], logits_in, plain_logits(run, images.copy()), run.calibration)


@pytest.mark.slow
def test_ood_files_and_tables(detected):
    out, saved, _, _, evaluation, _ = detected
    markdown = (out / "ood.md").read_text()
    assert markdown.count("**OOD detection: MNIST test (200) vs ") == 4
    row = next(line for line in markdown.splitlines() if line.startswith("| energy | T = 1 |"))
    assert row.split("|")[3].strip() == f"{100 * saved['sets'][0]['raw']['energy']['auroc']:.2f}%"
    for name in ("uniform-noise", "gaussian-noise", "shapes", "FashionMNIST_test"):
        for score in SCORES:
            with Image.open(out / "ood" / f"{name}_{score}.png") as image:
                assert image.format == "PNG"
    assert out / "ood.json" in evaluation.files


@pytest.mark.slow
def test_printed_table_says_what_was_converted(tiny_run: Path, image_folder: Path, tmp_path: Path, capsys):
    main([str(tiny_run), "--out", str(tmp_path), "--ood", str(image_folder / "test")])
    printed = capsys.readouterr().out
    table = printed[printed.index("OOD detection: MNIST test (200) vs test (30)"):].splitlines()
    assert table[1].split() == ["score", "scaling", "AUROC", "AUPR-in", "AUPR-out", "FPR@95%TPR"]
    assert [line.split()[0] for line in table[3:11]] == [s for s in SCORES for _ in range(2)]
    assert "note: test: 30 of 30 images converted to grayscale for the model" in printed


# ----------------------------------------------------------------------------- the run's calibration


class _Stored:
    """A run's calibration as ``ctx.calibration`` presents it, around a fitted calibrator."""

    def __init__(self, calibrator) -> None:
        self.calibrator, self.method = calibrator, calibrator.method
        self.temperature, self.fitted = None, True

    def probabilities(self, logits, calibrated=True):
        return self.calibrator(logits)

    def calibrated_logits(self, logits):
        return self.calibrator.calibrated_logits(logits)

    def label(self):
        return f"{self.method} scaling"


def _seeded_logits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(val logits, val labels, in-distribution logits, OOD logits): overconfident, 5 classes."""
    generator = torch.Generator().manual_seed(5)
    labels = torch.randint(0, 5, (300,), generator=generator)
    val = 4 * torch.randn((300, 5), generator=generator) + 6 * torch.nn.functional.one_hot(labels, 5)
    logits_in = 4 * torch.randn((200, 5), generator=generator) + 6 * torch.nn.functional.one_hot(
        torch.randint(0, 5, (200,), generator=generator), 5)  # fmt: skip
    return val, labels, logits_in, 3 * torch.randn((120, 5), generator=generator)


@pytest.mark.parametrize("method", slow_when(["vector", "matrix", "histogram", "isotonic"], ["matrix"]))
def test_calibrated_rows_use_the_stored_calibrator(method: str):
    """With a stored calibrator other than T, the "calibrated" rows are that calibrator's: msp
    and entropy of its probabilities, max_logit and energy of its calibrated logits - and for
    histogram binning and isotonic regression, which have no calibrated logits, raw rows only."""
    from softcal.calibration.calibrators import make_calibrator
    from softcal.evaluation.ood_detection import calibration_note, text_table

    val, labels, logits_in, logits_out = _seeded_logits()
    calibration = _Stored(make_calibrator(method, 5).fit(val, labels))
    found = detect(logits_in, logits_out, OODSet("noise", "noise", torch.zeros(0)), calibration)
    with torch.no_grad():
        p_in, p_out = (calibration.probabilities(z).double().numpy() for z in (logits_in, logits_out))
    plogp = [np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0.0).sum(1) for p in (p_in, p_out)]
    expected = {"msp": sk_metrics(p_in.max(1), p_out.max(1)), "entropy": sk_metrics(*plogp)}
    if method in ("vector", "matrix"):
        with torch.no_grad():
            z_in, z_out = (calibration.calibrated_logits(z).numpy() for z in (logits_in, logits_out))
        s_in, s_out = np_scores(z_in), np_scores(z_out)
        expected |= {s: sk_metrics(s_in[s], s_out[s]) for s in ("max_logit", "energy")}
    assert list(found.results["calibrated"]) == [s for s in SCORES if s in expected]
    for score, metrics in expected.items():
        for name, value in metrics.items():
            # Histogram binning and isotonic regression give many rows equal probabilities: an
            # entropy summed in numpy's order may split a tie torch's order keeps (~1e-5).
            assert found.results["calibrated"][score][name] == pytest.approx(value, abs=1e-4), (score, name)
    raw_in, raw_out = np_scores(logits_in.numpy()), np_scores(logits_out.numpy())
    for score in SCORES:  # the raw rows: the logits as they are
        assert found.results["raw"][score] == pytest.approx(sk_metrics(raw_in[score], raw_out[score]))
    legends = {"raw": "T = 1", "calibrated": calibration.label()}
    rows = [(line[:12].strip(), line[12:].split("  ")[0]) for line in
            text_table(found, legends, "in", 200).splitlines()[3:]]  # fmt: skip
    assert rows == [(score, scaling) for score in SCORES for scaling in ("T = 1", f"{method} scaling")
                    if scaling == "T = 1" or score in expected]  # fmt: skip
    note = calibration_note(calibration, [found])
    if method in ("histogram", "isotonic"):
        assert note == (f"{method} scaling maps probabilities, not logits: max_logit and energy have no"
                        " calibrated version (raw rows only)")  # fmt: skip
    else:
        assert note is None


def test_temperature_rows_are_the_scores_at_t():
    """Temperature scaling keeps its definition: every score at T (energy = T logsumexp(z/T))."""
    from softcal.evaluation.ood_detection import calibrated_scores
    from softcal.uncertainty.ood import ood_scores

    _, _, logits_in, _ = _seeded_logits()

    class AtT:
        method, temperature, fitted = "temperature", 1.7, True

    scores = calibrated_scores(AtT(), logits_in)
    for score, values in ood_scores(logits_in, 1.7).items():
        assert torch.equal(scores[score], values), score
    reference = np_scores(logits_in.numpy(), 1.7)
    for score in SCORES:
        np.testing.assert_allclose(scores[score].numpy(), reference[score], rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- conversions, specs


def test_conversions_match_pil(image_folder: Path):
    files = sorted((image_folder / "test").rglob("*.png"))[:5]
    rgb = np.stack([np.array(Image.open(p).convert("RGB")) for p in files]).transpose(0, 3, 1, 2)
    grey = luminance(torch.from_numpy(rgb))
    pil_grey = np.stack([np.array(Image.open(p).convert("L")) for p in files])[:, None]
    assert np.array_equal(grey.numpy(), pil_grey)  # PIL's own luminance, bit for bit
    repeated, notes = match_shape(torch.from_numpy(pil_grey), 3, (32, 32), "x")
    assert torch.equal(repeated, torch.from_numpy(pil_grey).repeat(1, 3, 1, 1))
    assert notes == ["x: grayscale images converted to RGB for the model"]
    resized, notes = match_shape(torch.from_numpy(pil_grey), 1, (28, 28), "x")
    pil_resized = np.stack([np.array(Image.open(p).convert("L").resize((28, 28), Image.BILINEAR))
                            for p in files])[:, None]  # fmt: skip
    assert np.abs(resized.numpy().astype(int) - pil_resized).max() <= 2  # antialiased like PIL
    assert notes == ["x: resized bilinearly from 32x32 to 28x28 for the model"]


def test_specs_name_their_kind(image_folder: Path, tmp_path: Path):
    assert parse_spec("uniform-noise").kind == "noise"
    assert parse_spec(str(image_folder)).kind == "folder"
    packaged = parse_spec("fashion_mnist")  # a packaged config by name, without .yaml
    assert packaged.kind == "config" and packaged.path is not None
    assert packaged.path.name == "fashion_mnist.yaml"
    cifar = tmp_path / "c.yaml"
    cifar.write_text("data:\n  class_path: softcal.data.CIFAR10DataModule\n")
    assert parse_spec(str(cifar)).kind == "config"


def test_a_config_of_colour_images_is_converted(cifar10_root: Path, tmp_path: Path):
    config = tmp_path / "cifar.yaml"
    config.write_text(f"data:\n  class_path: softcal.data.CIFAR10DataModule\n"
                      f"  init_args:\n    root: {cifar10_root}\n    download: false\n")  # fmt: skip
    ood = load_ood_set(parse_spec(str(config)), 1, (28, 28), 0)
    assert ood.name == "CIFAR10 test" and ood.images.shape == (100, 1, 28, 28)
    assert ood.notes == ["CIFAR10 test: RGB images converted to grayscale for the model",
                         "CIFAR10 test: resized bilinearly from 32x32 to 28x28 for the model"]  # fmt: skip


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("make, message", [
    (lambda tmp: "no/such/thing", "--ood no/such/thing: not uniform-noise or gaussian-noise, an image"
                                  " folder or a datamodule config (a YAML file, or a packaged config: "),
    (lambda tmp: _write(tmp / "nodata.yaml", "model: {}\n"),
     "nodata.yaml: the config has no data section; pass a datamodule config"),
    (lambda tmp: _write(tmp / "broken.yaml", "data: [unclosed\n"),
     "broken.yaml: not a readable YAML config (while parsing a flow sequence)"),
    (lambda tmp: (tmp / "picture.png").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe") and tmp / "picture.png",
     "picture.png: not a readable YAML config ("),  # a file, not a folder: not text at all
    (lambda tmp: _write(tmp / "bad.yaml", "data:\n  class_path: softcal.data.NoSuchModule\n"),
     "bad.yaml: the config cannot build its datamodule ("),
    (lambda tmp: (tmp / "empty").mkdir() or _write(tmp / "empty" / "a.txt", "x").parent,
     "empty: no image files (.bmp, .gif, .jpeg, .jpg, .png, .tif, .tiff, .webp) in it"),
])  # fmt: skip
def test_bad_spec_is_one_line(make, message: str, tmp_path: Path):
    with pytest.raises(SoftcalError) as err:
        load_ood_set(parse_spec(str(make(tmp_path))), 1, (28, 28), 10)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith("--ood ")


def test_channels_that_cannot_be_converted_are_refused():
    with pytest.raises(SoftcalError, match="x images have 2 channels; the model takes 1$"):
        match_shape(torch.zeros((1, 2, 4, 4), dtype=torch.uint8), 1, (4, 4), "x")


def test_a_bad_spec_is_refused_before_the_checkpoint_is_tested(tiny_run: Path, tmp_path: Path):
    with pytest.raises(SoftcalError) as err:
        main([str(tiny_run), "--ood", "nonsense", "--out", str(tmp_path)])
    assert str(err.value) == (
        "--ood nonsense: not uniform-noise or gaussian-noise, an image folder or a datamodule config (a"
        " YAML file, or a packaged config: cifar10.yaml, cifar100.yaml, cifar10_quick.yaml,"
        " cifar10_sample.yaml, fashion_mnist.yaml, gpu.yaml, image_folder.yaml, mnist.yaml, smoke.yaml)"
    )
    assert not any(tmp_path.iterdir())  # nothing was evaluated or written


@pytest.mark.slow
def test_the_script_prints_one_error_line_for_a_bad_spec(tiny_run: Path):
    done = run_script("evaluate.py", str(tiny_run), "--ood", "nonsense")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith("error: --ood nonsense: not uniform-noise or gaussian-noise, an image")
