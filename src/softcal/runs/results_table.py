"""The results table train.py and evaluate.py print, and the dashboard shows in TensorBoard's
TEXT tab: one implementation, so the text a run leaves behind is exactly what was printed."""

from __future__ import annotations

import math

#: Row order of the results table; metrics not listed follow in name order.
ROW_ORDER = ("acc", "acc_top5", "ece", "mce", "rmsce", "adaptive_ece", "classwise_ece", "brier", "nll",
             "loss", "aurc", "e_aurc", "risk_at_80", "risk_at_90", "risk_at_95",
             "misclassification_auroc")  # fmt: skip

#: Rows shown as percentages (besides acc* and *ece*): calibration errors, selective risks, AUROC.
PERCENT_ROWS = ("mce", "rmsce", "aurc", "e_aurc", "risk_at_80", "risk_at_90", "risk_at_95",
                "misclassification_auroc")  # fmt: skip
#: Selective risks of a good model are hundredths of a percent (MNIST AURC 0.017%): 3 decimals.
FINE_ROWS = ("aurc", "e_aurc", "risk_at_80", "risk_at_90", "risk_at_95")


def format_results(results: dict[str, float], calibration_label: str, title: str, split: str = "test") -> str:
    """A two-column table: raw softmax vs calibrated, one row per metric of ``split``; the
    calibrated column's header names the run's calibration (``RunCalibration.label()``)."""
    names = sorted({k.split("/", 1)[1] for k in results if k.startswith(f"{split}/")})
    names.sort(key=lambda n: ROW_ORDER.index(n) if n in ROW_ORDER else len(ROW_ORDER))
    width = max([15, *(len(n) + 1 for n in names)])  # misclassification_auroc is 23 long
    calibrated = f"calibrated ({calibration_label})"
    cal_width = max(26, len(calibrated) + 2)  # a long method name (top_label_beta) keeps a gap
    head = f"{'metric':<{width}}{split + ' (T = 1)':>15}{calibrated:>{cal_width}}"
    lines = [title, head, "-" * len(head)]
    for name in names:
        raw = results.get(f"{split}/{name}", math.nan)
        cal = results.get(f"{split}_calibrated/{name}", math.nan)
        percent = name.startswith("acc") or "ece" in name or name in PERCENT_ROWS
        digits = 3 if name in FINE_ROWS else 2
        cells = [_cell(v, percent, digits) for v in (raw, cal)]
        lines.append(f"{name:<{width}}{cells[0]:>15}{cells[1] if not math.isnan(cal) else '':>{cal_width}}")
    return "\n".join(lines)


def _cell(value: float, percent: bool, digits: int) -> str:
    return f"{100 * value:.{digits}f}%" if percent else f"{value:.4f}"
