"""``scripts/benchmark.py --views``: one trained run scored under each set of test-time views,
each with its own temperature, the numbers those views really give."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from softcal_bench.cli import main as benchmark  # noqa: E402
from softcal_bench.test_time_views import VIEW_SETS, score  # noqa: E402

from softcal.calibration.temperature import fit_temperature  # noqa: E402
from softcal.runs.load import load_run  # noqa: E402
from tests.conftest import REPO, TINY  # noqa: E402


@pytest.fixture(scope="module")
def whitened_run(cifar10_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from softcal.apps.train import main as train

    results = train([
        "--config", str(REPO / "configs" / "cifar10.yaml"), *TINY, "--data.init_args.val_size", "50",
        "--model.net.init_args.widths", "[8, 16, 16]", "--data.init_args.root", str(cifar10_root),
        "--trainer.logger.init_args.save_dir", str(tmp_path_factory.mktemp("runs")),
    ])  # fmt: skip
    return Path(results["run_dir"])


def _direct(run: Path, root: Path, views: tuple[bool, bool]) -> tuple[float, float]:
    """Accuracy and calibrated NLL computed by hand: the net's own views, a temperature on val."""
    loaded = load_run(run, ["--data.init_args.root", str(root)])
    net, data = loaded.model.net, loaded.datamodule
    net.flip_average, net.translate_average = views
    data.setup("fit")
    data.setup("test")
    (val_images, val_labels), (test_images, labels) = data.splits["val"], data.splits["test"]
    with torch.no_grad():
        val, test = net(data.preprocess(val_images)), net(data.preprocess(test_images))
    temperature = fit_temperature(val, val_labels)
    accuracy = (test.argmax(1) == labels).float().mean()
    return float(accuracy), float(F.cross_entropy(test / temperature, labels))


@pytest.mark.slow
def test_each_view_set_is_scored_with_its_own_views_and_temperature(whitened_run, cifar10_root):
    overrides = ["--data.init_args.root", str(cifar10_root), "--trainer.precision", "32-true"]
    for views, flags in VIEW_SETS.items():
        got = score(whitened_run, views, overrides)
        acc, nll = _direct(whitened_run, cifar10_root, flags)
        assert got.acc == pytest.approx(acc, abs=1e-6), views
        assert got.nll_calibrated == pytest.approx(nll, rel=1e-4), views
        assert got.run == "cifar10, seed 0"


@pytest.mark.slow
def test_views_section_names_no_paths(whitened_run, cifar10_root, tmp_path):
    out = tmp_path / "bench.md"
    assert benchmark(["--views", str(whitened_run), "--out", str(out), "--",
                      "--data.init_args.root", str(cifar10_root)]) == 0  # fmt: skip
    text = out.read_text()
    assert "<!-- benchmark:test-time-views -->" in text
    for label in ("image (1)", "mirror (2)", "shifts (3)", "mirror + shifts (6)"):
        assert text.count(f"| {label} |") == 2, label  # the mean over the runs, and the one run's row
        assert f"| cifar10, seed 0 | {label} |" in text
    assert str(whitened_run) not in text and str(tmp_path) not in text
