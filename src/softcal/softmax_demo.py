"""The teaching example this project grew from: what softmax does to a vector of logits.

softmax(z)_i = exp(z_i) / sum_j exp(z_j)

* every output lies in (0, 1) and the outputs sum to 1, so they can be read as probabilities;
* the order of the logits is kept, and gaps between logits become ratios between
  probabilities (exp(3 - 2) = e: the largest logit gets e times the probability of the next);
* adding a constant to every logit changes nothing, which is why implementations subtract
  the maximum first: exp(1000) overflows, exp(0) does not.

Dividing the logits by a temperature T > 1 flattens the distribution, T < 1 sharpens it.
Temperature scaling (see calibration.py) uses exactly this to calibrate a trained model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch


def softmax_by_hand(logits: Sequence[float], temperature: float = 1.0) -> list[float]:
    """Softmax with nothing but math.exp, the way one would check it on paper."""
    scaled = [z / temperature for z in logits]
    top = max(scaled)  # shift invariance: subtracting the max keeps exp() from overflowing
    exps = [math.exp(z - top) for z in scaled]
    total = sum(exps)
    return [e / total for e in exps]


def softmax_torch(logits: Sequence[float], temperature: float = 1.0) -> torch.Tensor:
    """The same with torch, as the model does it."""
    return torch.softmax(torch.tensor(logits, dtype=torch.float64) / temperature, dim=-1)


def plot_softmax_curves(path: str | Path, temperatures: Sequence[float] = (0.5, 1.0, 2.0)) -> Path:
    """Plot p(class 0) for logits [z, 0, 0] as z sweeps -5..5, at a few temperatures.

    The left panel shows softmax over three classes, one logit varying; the right panel shows
    how the temperature flattens or sharpens the same curve.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = torch.linspace(-5, 5, 201, dtype=torch.float64)
    logits = torch.stack([z, torch.zeros_like(z), torch.ones_like(z)], dim=1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    probs = torch.softmax(logits, dim=1)
    for k, label in enumerate(["class 0 (logit z)", "class 1 (logit 0)", "class 2 (logit 1)"]):
        left.plot(z, probs[:, k], label=label)
    left.set(title="softmax([z, 0, 1]) for z in -5..5", xlabel="logit z", ylabel="probability")
    left.set_ylim(0, 1)
    left.legend()
    for t in temperatures:
        right.plot(z, torch.softmax(logits / t, dim=1)[:, 0], label=f"T = {t:g}")
    right.set(title="p(class 0) at temperature T", xlabel="logit z", ylabel="probability")
    right.set_ylim(0, 1)
    right.legend()
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Print softmax([3, 2, 1]) two ways and plot it.")
    parser.add_argument("--out", default="outputs/softmax_demo.png", help="where to save the PNG")
    args = parser.parse_args(argv)
    logits = [3.0, 2.0, 1.0]
    by_hand = softmax_by_hand(logits)
    with_torch = softmax_torch(logits).tolist()
    print(f"logits                 {logits}")
    print("softmax (math.exp)     [" + ", ".join(f"{p:.4f}" for p in by_hand) + "]")
    print("softmax (torch)        [" + ", ".join(f"{p:.4f}" for p in with_torch) + "]")
    print(f"sum                    {sum(by_hand):.4f}")
    print(f"ratio p0/p1 = e^(3-2)  {by_hand[0] / by_hand[1]:.4f} (e = {math.e:.4f})")
    print(f"saved plot             {plot_softmax_curves(args.out)}")


if __name__ == "__main__":
    main()
