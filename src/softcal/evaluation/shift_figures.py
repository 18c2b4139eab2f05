"""The shift analysis's pictures, as PNG files and as TensorBoard images.

* :func:`severity_boxes` - a metric against severity, one box per severity and scaling over
  the corruptions (the box spans the quartiles, the line is the median, the whiskers reach the
  smallest and the largest value), the clean test split at severity 0 as one mark per
  scaling: Ovadia et al. 2019's Fig. 2, ECE raw next to calibrated.
* :func:`examples_figure` - one test image under every corruption at two severities, beside
  the clean image.
* :func:`write_tensorboard` - the same pictures as images in an event file under
  ``<out>/tensorboard`` (tags ``shift/...``), written to a temporary folder first and moved in
  with the atomic writer like every file evaluate writes.

matplotlib is imported with this module: the analysis imports it only when it writes files.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on training machines; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from PIL import Image  # noqa: E402

from softcal.atomic_files import atomic_write_bytes  # noqa: E402

#: A colour per scaling, in the order the boxes stand.
COLOURS = ("#C44E52", "#4C72B0", "#55A868")
#: The event file's name: fixed, so a re-run replaces it instead of adding a second copy.
EVENT_FILE = "events.out.tfevents.shift"


def severity_boxes(values: Mapping[str, Mapping[int, Sequence[float]]], clean: Mapping[str, float],
                   ylabel: str, title: str) -> Figure:  # fmt: skip
    """``values[scaling][severity]``: the metric of every corruption (fractions, drawn as %);
    ``clean[scaling]``: the clean split's value."""
    scalings = list(values)
    severities = sorted({s for per in values.values() for s in per})
    width = 0.8 / max(len(scalings), 1)
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=100)
    for i, scaling in enumerate(scalings):
        offset = (i - (len(scalings) - 1) / 2) * width
        colour = COLOURS[i % len(COLOURS)]
        data = [100 * np.asarray(values[scaling][s], dtype=float) for s in severities]
        boxes = ax.boxplot(data, positions=[s + offset for s in severities], widths=width * 0.85,
                           whis=(0, 100), patch_artist=True, manage_ticks=False,
                           medianprops={"color": "black"})  # fmt: skip
        for box in boxes["boxes"]:
            box.set(facecolor=colour, alpha=0.75)
        if scaling in clean:
            ax.plot([offset], [100 * clean[scaling]], marker="D", color=colour, markersize=7)
    ax.set_xticks([0, *severities], ["clean", *(str(s) for s in severities)])
    ax.set_xlim(-0.6, max(severities, default=0) + 0.6)
    ax.set_xlabel("corruption severity")
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(handles=[Patch(facecolor=COLOURS[i % len(COLOURS)], alpha=0.75, label=scaling)
                       for i, scaling in enumerate(scalings)], loc="best", fontsize=9)  # fmt: skip
    count = max((len(v) for per in values.values() for v in per.values()), default=0)
    ax.set_title(f"{title}\nboxes: quartiles over {count} corruptions, line: median, whiskers: min to"
                 " max; diamonds: clean", fontsize=9)  # fmt: skip
    fig.tight_layout()
    return fig


def _show(ax: plt.Axes, image: torch.Tensor) -> None:
    pixels = image.detach().cpu().numpy()
    if pixels.shape[0] == 1:
        ax.imshow(pixels[0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(pixels.transpose(1, 2, 0), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def examples_figure(clean: torch.Tensor, examples: Mapping[str, Mapping[int, torch.Tensor]],
                    severities: Sequence[int], title: str) -> Figure:  # fmt: skip
    """Rows: ``severities``; columns: the clean image, then each corruption's version of it."""
    names = list(examples)
    columns = 1 + len(names)
    fig, axes = plt.subplots(len(severities), columns, figsize=(1.15 * columns, 1.35 * len(severities) + 0.7),
                             dpi=100, squeeze=False)  # fmt: skip
    for row, severity in enumerate(severities):
        _show(axes[row][0], clean)
        axes[row][0].set_ylabel(f"severity {severity}", fontsize=8)
        for col, name in enumerate(names, start=1):
            _show(axes[row][col], examples[name][severity])
        if row == 0:
            for col, name in enumerate(["clean", *names]):
                axes[0][col].set_title(name.replace("_", "\n"), fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def png_and_pixels(fig: Figure) -> tuple[bytes, np.ndarray]:
    """The figure as PNG bytes and as an (H, W, 3) uint8 image of the same rendering; closes it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    png = buffer.getvalue()
    with Image.open(io.BytesIO(png)) as image:
        return png, np.asarray(image.convert("RGB"))


def write_tensorboard(folder: Path, images: Mapping[str, np.ndarray]) -> Path:
    """One event file in ``folder`` holding each (H, W, 3) image under its tag, at step 0."""
    from torch.utils.tensorboard import SummaryWriter  # tensorboard's import costs a second

    with tempfile.TemporaryDirectory() as scratch:
        writer = SummaryWriter(log_dir=scratch)
        for tag, image in images.items():
            writer.add_image(tag, image, 0, dataformats="HWC")
        writer.close()
        (written,) = Path(scratch).glob("events.out.tfevents.*")
        return atomic_write_bytes(folder / EVENT_FILE, written.read_bytes())
