"""``scripts/benchmark.py --readme`` and docs/benchmarks.md against the README: the runs it
measures are the README's commands, every number the README quotes is in a section of
docs/benchmarks.md that names its command, the sections are laid out as the README prints its
numbers, and one smoke run on generated data writes them end to end."""

from __future__ import annotations

import json
import re
from argparse import Namespace
from pathlib import Path

import pytest
from softcal_bench.readme_numbers import regenerate_command, section_key, shown_dir
from softcal_bench.readme_report import Measured, Provenance, Step, conformal_cell, sections
from softcal_bench.readme_runs import (
    CONFORMAL_COLUMNS,
    CONFORMAL_METHODS,
    ENSEMBLE,
    README_RUNS,
    RUNS,
    SHIFT_ROWS,
    selected,
)

from softcal.evaluation.shift_report import summarise
from tests.conftest import REPO, run_script

README = (REPO / "README.md").read_text(encoding="utf-8")
BENCHMARKS = (REPO / "docs" / "benchmarks.md").read_text(encoding="utf-8")
DECIMAL = re.compile(r"\d+\.\d+")


def readme_section(title: str) -> list[str]:
    """The lines of the README's ``## title`` section."""
    return README.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0].splitlines()


def table_rows(lines: list[str], first_header: str) -> tuple[list[str], list[list[str]]]:
    """(header cells, body rows' cells) of the markdown table whose header starts with
    ``| first_header |``."""
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return [cell.strip() for cell in lines[start].strip("|").split("|")], rows


def test_the_readme_runs_are_the_readme_numbers_table():
    """README_RUNS is the one list the generator trains: the README's table, row for row."""
    _, rows = table_rows(readme_section("Numbers"), "run, seed 0")
    readme = [(row[0], row[1].strip("`")) for row in rows]
    assert readme == [(run.label, run.command()) for run in README_RUNS]


def test_the_conformal_columns_and_methods_are_the_readmes():
    header, rows = table_rows(readme_section("Numbers"), "method")
    columns = [re.fullmatch(r"(.+), (?:alpha )?([\d.]+)", cell).groups() for cell in header[1:]]
    assert [(dataset, float(alpha)) for dataset, alpha in columns] == \
        [(RUNS[name].dataset, alpha) for name, alpha in CONFORMAL_COLUMNS]  # fmt: skip
    assert [row[0] for row in rows] == list(CONFORMAL_METHODS.values())


def test_the_shift_rows_are_the_readmes():
    """The README's shift table: the full CIFAR-10 run, the ensemble, Fashion-MNIST (and the
    published anchors, in italics); the generator also measures MNIST."""
    _, rows = table_rows(readme_section("Numbers"), "model")
    measured = [row[0] for row in rows if not row[0].startswith("*")]
    assert measured == ["CIFAR-10, `cifar10.yaml`", ENSEMBLE.label, "Fashion-MNIST"]
    assert {"cifar10", ENSEMBLE.name, "fashion_mnist"} <= set(SHIFT_ROWS)


def readme_numbers() -> list[tuple[int, str]]:
    """(line, number) of every measured number the README quotes: the decimals of its prose,
    tables and output blocks. Left out, as settings or citations rather than measurements: the
    commands of ```bash/```python blocks (their comments count: ``# 93.8%``), a table's header
    row (``alpha 0.01``), ``alpha 0.1/0.05/0.01``, the published anchors (italic rows) and the
    softmax tutorial's arithmetic."""
    found, fence, lines = [], None, README.splitlines()
    for number, line in enumerate(lines, start=1):
        if line.startswith("```"):
            fence = None if fence is not None else line[3:]
            continue
        if fence in ("bash", "python"):
            line = line.split(" # ", 1)[1] if " # " in line else ""
        header = number < len(lines) and lines[number].startswith("| ---")
        if header or line.startswith("| *") or line.startswith("softmax(["):
            continue
        found += [(number, n) for n in DECIMAL.findall(re.sub(r"alpha [\d./]+", "", line))]
    return found


def sections_with_commands() -> list[str]:
    """The ``## `` sections of docs/benchmarks.md that name the command giving their numbers."""
    parts = re.split(r"\n(?=## )", BENCHMARKS)
    return [part for part in parts if re.search(r"python (scripts|benchmarks)/\w+\.py", part)]


def quoted_in(number: str, text: str) -> bool:
    """``number`` as written (no rounding: ``87.6`` is not ``87.61``) among ``text``'s numbers."""
    return number in DECIMAL.findall(text)


def test_every_number_the_readme_quotes_is_in_benchmarks_md_with_its_command():
    numbers = readme_numbers()
    assert len(numbers) > 90  # the tables, the default run's output, the caption, the sweep
    for expected in ("99.24", "87.83", "94.29", "0.018", "1.9", "9.7", "67.31", "100.00", "7.71"):
        assert expected in {n for _, n in numbers}, expected
    texts = sections_with_commands()
    missing = [f"README line {line}: {n}" for line, n in numbers if not any(quoted_in(n, t) for t in texts)]
    assert not missing, "not in a section of docs/benchmarks.md with its command:\n" + "\n".join(missing)


def test_the_number_check_finds_a_missing_number():
    assert quoted_in("87.61", "| 87.61% |") and not quoted_in("87.6", "| 87.61% |")
    assert quoted_in("0.0246", "0.0246 -> 0.0247") and not quoted_in("0.024", "0.0246")


def test_runs_selected_by_only_keep_the_readmes_order():
    assert selected([], False) == list(README_RUNS)
    assert selected([], True) == [*README_RUNS, ENSEMBLE]
    assert [run.name for run in selected(["fashion_mnist", "mnist"], False)] == ["mnist", "fashion_mnist"]
    with pytest.raises(ValueError, match="not a README run"):
        selected(["mnist", "imagenet"], False)
    with pytest.raises(ValueError, match="add --with-shift"):
        selected([ENSEMBLE.name], False)
    assert section_key("readme-training", []) == "readme-training"
    assert section_key("readme-training", ["mnist", "fashion_mnist"]) == "readme-training-mnist-fashion_mnist"
    args = Namespace(with_shift=True, only=["mnist"], tiny=False)
    assert regenerate_command(args) == "python scripts/benchmark.py --readme --with-shift --only mnist"
    assert ENSEMBLE.command() == ("python scripts/train.py -c cifar10_quick --model.optimizer sgd"
                                  " --model.net.init_args.translate_average false"
                                  " --data.val_split_seed 0 --seed_everything S")  # fmt: skip


def trained(run_dir: Path | None, seed: int | None = None, **metrics: float) -> dict:
    """What seeds.train_script returns for one run (None: it failed to train)."""
    values = {"test_acc": 0.9924, "test_ece": 0.0015476, "calibrated_ece": 0.0016812, "test_nll": 0.0246055,
              "calibrated_nll": 0.0247017, "temperature": 1.05383, "test_aurc": 0.000211, "wall_s": 17.25,
              "peak_rss_gb": 1.3, "returncode": 0} | metrics  # fmt: skip
    if run_dir is None:
        values |= {key: None for key in values if key != "returncode"} | {"returncode": 1}
    return {**values, "run_dir": run_dir, "seed": seed}


def write_shift(run_dir: Path, folder: str, temperature: float, acc: float) -> None:
    """A shift.json whose summary comes from the real summarise(): a clean set and two corrupted."""
    def scores(a: float, ece: float) -> dict:  # calibration halves the ECE
        return {"raw": {"acc": a, "ece": ece, "nll": 0.1, "brier": 0.1},
                "calibrated": {"acc": a, "ece": ece / 2, "nll": 0.1, "brier": 0.1}}  # fmt: skip

    records = [{"corruption": "clean", "severity": 0, **scores(acc, 0.02)},
               {"corruption": "fog", "severity": 1, **scores(acc - 0.1, 0.04)},
               {"corruption": "fog", "severity": 2, **scores(acc - 0.3, 0.08)}]  # fmt: skip
    (run_dir / folder).mkdir(parents=True, exist_ok=True)
    found = {"temperature": temperature, "summary": summarise(records)}
    (run_dir / folder / "shift.json").write_text(json.dumps(found))


def test_sections_print_numbers_as_the_readme_does(tmp_path):
    """The rows, in the README's formats; a run that failed shows n/a and its exit code; an
    ensemble's row comes from eval_ensemble/ and each member's from its own eval/."""
    dirs = {name: tmp_path / name / "version_0" for name in ("mnist", "m0", "m1", "m2")}
    records = [{"method": m, "alpha": a, "probabilities": p, "coverage": 0.9923 if p == "raw" else 0.5,
                "mean_set_size": 1.004}
               for m in CONFORMAL_METHODS for a in (0.1, 0.01) for p in ("raw", "calibrated")]  # fmt: skip
    (dirs["mnist"] / "eval").mkdir(parents=True)
    (dirs["mnist"] / "eval" / "conformal.json").write_text(json.dumps({"records": records}))
    write_shift(dirs["mnist"], "eval", 1.05383, 0.9924)
    write_shift(dirs["m0"], "eval_ensemble", 0.723, 0.9322)
    for i, name in enumerate(("m0", "m1", "m2")):
        write_shift(dirs[name], "eval", 0.8 + i / 100, 0.92 + i / 100)
    measured = Measured(
        trained={"mnist": [trained(dirs["mnist"])], "fashion_mnist": [trained(None)],
                 ENSEMBLE.name: [trained(dirs[n], seed=i) for i, n in enumerate(("m0", "m1", "m2"))]},
        conformal={"mnist": Step("python scripts/evaluate.py runs/mnist/version_0 --conformal", 0, 12.5, 1.1),
                   "fashion_mnist": Step("evaluate.py runs/X/version_0 --conformal", -1, None, None)},
        shift={"mnist": Step("python scripts/evaluate.py runs/mnist/version_0 --shift all", 0, 60.0, 1.2),
               ENSEMBLE.name: Step("python scripts/evaluate.py ... --ensemble --shift all", 0, 600.0, 2.0)},
    )  # fmt: skip
    text = sections(measured, Provenance("python scripts/benchmark.py --readme", "abc1234", "- CPU: x"))
    assert list(text) == ["readme-training", "readme-conformal", "readme-shift"]
    assert "| MNIST, default config | `python scripts/train.py` | 99.24% | 0.15% -> 0.17% |" \
        " 0.0246 -> 0.0247 | 1.054 | 0.021% | 17.2 s | 1.30 GB | 0 |" in text["readme-training"]  # fmt: skip
    assert "| Fashion-MNIST | `python scripts/train.py -c fashion_mnist` | n/a | n/a -> n/a |" \
        " n/a -> n/a | n/a | n/a | n/a | n/a | 1 |" in text["readme-training"]  # fmt: skip
    for section in text.values():
        assert "- regenerate: `python scripts/benchmark.py --readme`\n- commit: abc1234\n- CPU: x" in section
    assert "| method | MNIST, alpha 0.01 | Fashion-MNIST, alpha 0.01 |" in text["readme-conformal"]
    assert "| LAC | 99.23% / 1.00 | n/a |" in text["readme-conformal"]
    assert "| `python scripts/evaluate.py runs/mnist/version_0 --conformal` | 12.5 s | 1.10 GB | 0 |" \
        in text["readme-conformal"]  # fmt: skip
    shift = text["readme-shift"]
    # clean: the severity-0 set; corrupted: the mean of the others (acc - 0.1, acc - 0.3; ECE 4%, 8%)
    assert "| CIFAR-10, ensemble of 3 `cifar10_quick.yaml` SGD runs, mirror views | 0.723 | 93.22%" \
        " | 2.00% -> 1.00% | 73.22% | 6.00% -> 3.00% |" in shift  # fmt: skip
    assert "| its member, seed 2 | 0.820 | 94.00% |" in shift
    assert "| MNIST, default config | 1.054 | 99.24% |" in shift
    assert shift.index("ensemble of 3") < shift.index("its member, seed 0") < shift.index("| MNIST")
    assert "| `python scripts/train.py -c cifar10_quick --model.optimizer sgd" \
        " --model.net.init_args.translate_average false --data.val_split_seed 0" \
        " --seed_everything 1` |" \
        " 17.2 s |" in shift  # fmt: skip


def test_conformal_cells_and_run_folders():
    records = [{"method": "raps", "alpha": 0.05, "probabilities": "raw", "coverage": 0.9492,
                "mean_set_size": 1.2}]  # fmt: skip
    assert conformal_cell(records, "raps", 0.05) == "94.92% / 1.20"
    assert conformal_cell(records, "raps", 0.01) == "n/a"
    scratch = Path("/scratch/x/run-0/runs/cifar10_quick/version_0")
    assert shown_dir(scratch, 2) == "runs/cifar10_quick/version_2"


def section_of(text: str, key: str) -> str:
    return text.split(f"<!-- benchmark:{key} -->", 1)[1].split(f"<!-- /benchmark:{key} -->", 1)[0]


@pytest.mark.slow
def test_readme_tiny_writes_every_readme_run_with_its_command_commit_and_machine(tmp_path: Path):
    out = tmp_path / "bench.md"
    proc = run_script("benchmark.py", "--readme", "--tiny", "--out", str(out), timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    text = out.read_text()
    training, conformal = section_of(text, "readme-training"), section_of(text, "readme-conformal")
    for section in (training, conformal):
        assert "- regenerate: `python scripts/benchmark.py --readme --tiny`" in section
        assert re.search(r"\n- commit: ([0-9a-f]{7,}|unknown)", section)
        assert "\n- CPU: " in section and "\n- load average before: " in section
        assert "--tiny smoke run" in section
    for run in README_RUNS:
        row = next(line for line in training.splitlines()
                   if line.startswith(f"| {run.label} | `{run.command()}` |"))  # fmt: skip
        assert row.endswith(" GB | 0 |") and "n/a" not in row, row
    rows = [line for line in conformal.splitlines() if line.startswith("| ") and " / " in line]
    assert len(rows) == len(CONFORMAL_METHODS) and not any("n/a" in row for row in rows), rows
    assert "| `python scripts/evaluate.py runs/fashion_mnist/version_0 --conformal` |" in conformal


@pytest.mark.slow
def test_readme_tiny_with_shift_writes_the_ensemble_and_its_own_sections(tmp_path: Path):
    """--only: sections of their own; --with-shift: the ensemble, its members, the MNIST run."""
    out = tmp_path / "bench.md"
    out.write_text("# Benchmarks\n\n<!-- benchmark:readme-training -->\nthe full table\n"
                   "<!-- /benchmark:readme-training -->\n")  # fmt: skip
    proc = run_script("benchmark.py", "--readme", "--tiny", "--with-shift", "--only",
                      f"mnist,{ENSEMBLE.name}", "--out", str(out), timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    text = out.read_text()
    assert "the full table" in section_of(text, "readme-training")  # left as it was
    key = f"mnist-{ENSEMBLE.name}"
    shift = section_of(text, f"readme-shift-{key}")
    assert f"--readme --with-shift --only mnist,{ENSEMBLE.name} --tiny`" in shift
    labels = [ENSEMBLE.label, *(f"its member, seed {seed}" for seed in (0, 1, 2)), RUNS["mnist"].label]
    rows = [line for line in shift.splitlines() if line.startswith(tuple(f"| {label} |" for label in labels))]
    assert len(rows) == 5 and not any("n/a" in row for row in rows), rows
    assert "--ensemble --shift all` |" in shift and "--seed_everything 2` |" in shift
    assert "| CIFAR-10 |" not in section_of(text, f"readme-training-{key}")
