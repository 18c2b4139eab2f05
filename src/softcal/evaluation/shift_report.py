"""The tables of the shift analysis: per-severity summaries over the corruptions, and per corruption.

A record is one set: ``{"corruption", "severity", "num_images", "raw": {acc, ece, nll,
brier}, "calibrated": {...}}``; the clean test split is severity 0 (corruption ``"clean"``).
:func:`summarise` reduces them per severity - mean, standard deviation (population, ddof 0:
defined for a single corruption too), min and max over the corruptions - clean row first and
a last row ``"all"`` over every corrupted set. evaluate prints :func:`text_table`; ``shift.md``
holds :func:`markdown_report` (the same summary, the spread, and per-corruption tables).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from softcal.evaluation.scored_logits import SET_METRICS

#: The summary's columns: (stage, metric, header, shown as a percentage).
COLUMNS = (
    ("raw", "acc", "acc", True),
    ("raw", "ece", "ECE raw", True),
    ("calibrated", "ece", "ECE cal.", True),
    ("raw", "nll", "NLL raw", False),
    ("calibrated", "nll", "NLL cal.", False),
    ("raw", "brier", "Brier raw", False),
    ("calibrated", "brier", "Brier cal.", False),
)
CLEAN = "clean"


def _stats(values: Sequence[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std()), "min": float(array.min()),
            "max": float(array.max())}  # fmt: skip


def summarise(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per severity (0 = clean first, then 1..5 as evaluated) and ``"all"``:
    ``{"severity", "sets", "raw": {metric: {mean, std, min, max}}, "calibrated": {...}}``."""
    groups: dict[int | str, list[Mapping[str, Any]]] = {}
    for record in records:
        groups.setdefault(record["severity"], []).append(record)
    corrupted = [record for record in records if record["severity"] != 0]
    if corrupted:
        groups["all"] = corrupted
    return [{"severity": severity, "sets": len(group),
             **{stage: {metric: _stats([r[stage][metric] for r in group]) for metric in SET_METRICS}
                for stage in ("raw", "calibrated")}}
            for severity, group in groups.items()]  # fmt: skip


def _label(severity: int | str) -> str:
    return CLEAN if severity == 0 else str(severity)


def _number(value: float, percent: bool) -> str:
    return f"{100 * value:.2f}" if percent else f"{value:.4f}"


def _cell(stats: Mapping[str, float], percent: bool, spread: str = "std") -> str:
    if stats["min"] == stats["max"]:  # one set (the clean row): no spread to show
        return _number(stats["mean"], percent)
    if spread == "std":
        return f"{_number(stats['mean'], percent)} ± {_number(stats['std'], percent)}"
    return f"{_number(stats['min'], percent)} – {_number(stats['max'], percent)}"


def _headers() -> list[str]:
    return [f"{head} (%)" if percent else head for _, _, head, percent in COLUMNS]


def text_table(rows: Sequence[Mapping[str, Any]], title: str, calibration_label: str) -> str:
    """The per-severity summary as fixed-width text: mean ± std over the corruptions."""
    heads = _headers()
    width = max(18, *(len(_cell(row[s][m], p)) + 2 for row in rows for s, m, _, p in COLUMNS))
    head = f"{'severity':<10}{'sets':>5}" + "".join(f"{h:>{width}}" for h in heads)
    lines = [title, head, "-" * len(head)]
    for row in rows:
        cells = "".join(f"{_cell(row[s][m], p):>{width}}" for s, m, _, p in COLUMNS)
        lines.append(f"{_label(row['severity']):<10}{row['sets']:>5}{cells}")
    lines.append(f"cal. = {calibration_label} (the calibration fitted on clean"
                 " validation data); mean ± std over the corruptions of each severity")  # fmt: skip
    return "\n".join(lines)


def _md_summary(rows: Sequence[Mapping[str, Any]], spread: str) -> list[str]:
    heads = _headers()
    lines = ["| severity | sets | " + " | ".join(heads) + " |", "| --- | ---: |" + " ---: |" * len(heads)]
    for row in rows:
        cells = " | ".join(_cell(row[s][m], p, spread) for s, m, _, p in COLUMNS)
        lines.append(f"| {_label(row['severity'])} | {row['sets']} | {cells} |")
    return lines


def _md_by_corruption(records: Sequence[Mapping[str, Any]], what: str) -> list[str]:
    """Rows: corruptions; columns: severities. ``what`` "ece": raw → calibrated; "acc": raw."""
    severities = sorted({r["severity"] for r in records if r["severity"] != 0})
    table: dict[str, dict[int, str]] = {}
    for r in records:
        if r["severity"] == 0:
            continue
        cell = _number(r["raw"][what], True)
        if what == "ece":
            cell += f" → {_number(r['calibrated'][what], True)}"
        table.setdefault(r["corruption"], {})[r["severity"]] = cell
    lines = ["| corruption | " + " | ".join(f"severity {s}" for s in severities) + " |",
             "| --- |" + " ---: |" * len(severities)]  # fmt: skip
    lines += [f"| {name} | " + " | ".join(cells.get(s, "") for s in severities) + " |"
              for name, cells in table.items()]  # fmt: skip
    return lines


def _clean_note(records: Sequence[Mapping[str, Any]], what: str) -> str:
    """`` (clean: ...)`` after a per-corruption table's caption; empty without a clean record."""
    clean = next((r for r in records if r["severity"] == 0), None)
    if clean is None:
        return ""
    raw = _number(clean["raw"][what], True)
    if what == "ece":
        return f" (clean: {raw} → {_number(clean['calibrated'][what], True)})"
    return f" (clean: {raw})"


def markdown_report(records: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]], title: str,
                    calibration_label: str) -> str:  # fmt: skip
    """shift.md: the summary (mean ± std), its spread (min – max), and per-corruption tables."""
    parts = [f"**{title}**", "", f"cal. = {calibration_label}: the calibration fitted on"
             " clean validation data. Percentages for accuracy and ECE.", "",
             "Mean ± std over the corruptions of each severity:", "",
             *_md_summary(rows, "std"), "",
             "Spread, min – max over the corruptions:", "",
             *_md_summary(rows, "range"), "",
             f"ECE (%) per corruption and severity, raw → calibrated{_clean_note(records, 'ece')}:", "",
             *_md_by_corruption(records, "ece"), "",
             f"Accuracy (%) per corruption and severity{_clean_note(records, 'acc')}:", "",
             *_md_by_corruption(records, "acc")]  # fmt: skip
    return "\n".join(parts) + "\n"
