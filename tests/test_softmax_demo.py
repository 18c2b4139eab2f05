"""The teaching example: softmax([3, 2, 1]) by hand and with torch, and its plot."""

import math

import pytest
import torch

from softcal.softmax_demo import main, plot_softmax_curves, softmax_by_hand, softmax_torch

EXPECTED = [0.6652, 0.2447, 0.0900]  # worked out on paper with math.exp


def test_values_match_the_worked_example():
    for result in (softmax_by_hand([3.0, 2.0, 1.0]), softmax_torch([3.0, 2.0, 1.0]).tolist()):
        assert result == pytest.approx(EXPECTED, abs=1e-4)
    # and the first value straight from the definition
    assert softmax_by_hand([3.0, 2.0, 1.0])[0] == pytest.approx(
        math.exp(3) / (math.exp(3) + math.exp(2) + math.exp(1)), abs=1e-12
    )


@pytest.mark.parametrize("logits", [[3.0, 2.0, 1.0], [-1.5, 0.0, 4.2, 0.3], [0.0, 0.0]])
def test_probabilities_in_open_interval_sum_to_one_and_keep_order(logits):
    probs = softmax_by_hand(logits)
    assert all(0.0 < p < 1.0 for p in probs)
    assert sum(probs) == pytest.approx(1.0, abs=1e-12)
    order = sorted(range(len(logits)), key=lambda i: logits[i])
    assert sorted(range(len(probs)), key=lambda i: probs[i]) == order
    assert torch.allclose(softmax_torch(logits), torch.tensor(probs, dtype=torch.float64))


def test_gaps_become_ratios():
    p = softmax_by_hand([3.0, 2.0, 1.0])
    # A gap of 1 between logits is a ratio of e between probabilities: softmax widens gaps.
    assert p[0] / p[1] == pytest.approx(math.e) and p[1] / p[2] == pytest.approx(math.e)
    assert p[0] - p[1] > (3.0 - 2.0) / 3  # more spread than the logits' share


def test_shift_invariance_and_no_overflow():
    assert softmax_by_hand([1003.0, 1002.0, 1001.0]) == pytest.approx(EXPECTED, abs=1e-4)
    big = softmax_by_hand([1000.0, 999.0, 998.0])
    assert all(math.isfinite(p) for p in big) and big == pytest.approx(EXPECTED, abs=1e-4)
    assert torch.isfinite(softmax_torch([1000.0, 999.0, 998.0])).all()


def test_temperature_flattens_and_sharpens():
    base = softmax_by_hand([3.0, 2.0, 1.0])
    assert softmax_by_hand([3.0, 2.0, 1.0], temperature=2.0)[0] < base[0]
    assert softmax_by_hand([3.0, 2.0, 1.0], temperature=0.5)[0] > base[0]


def test_plot_is_a_png(tmp_path):
    from PIL import Image

    path = plot_softmax_curves(tmp_path / "softmax.png")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (1000, 400)


def test_demo_prints_the_values(tmp_path, capsys):
    main(["--out", str(tmp_path / "demo.png")])
    out = capsys.readouterr().out
    assert "[0.6652, 0.2447, 0.0900]" in out and (tmp_path / "demo.png").is_file()
