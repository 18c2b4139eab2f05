"""The benchmark (benchmarks/softcal_bench): its time accounting, its verdicts, its per-seed
statistics, config overlays, cold caches, its results file, that its bare loop trains exactly as
Lightning does, and one smoke run of scripts/benchmark.py."""

from __future__ import annotations

import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from softcal_bench.cli import REPO, TINY_ARGS, data_overrides, write_tiny_data
from softcal_bench.overhead import Interleave, run_interleaved
from softcal_bench.overlays import config_args, merged, parse_spec
from softcal_bench.report import seeds_markdown, write_section
from softcal_bench.seeds import CACHE_ENV, aggregate, run_seeds, seed_measures
from softcal_bench.targets import TARGETS, verdict, verdict_rows

from tests.conftest import run_script


class FakeClock:
    """A clock that only moves when told: every interval below is known exactly."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeLoop:
    """Stands in for a bare loop: starting an epoch and each step take fixed times."""

    device = torch.device("cpu")

    def __init__(self, clock: FakeClock, start_s: float, step_s: float) -> None:
        self.clock, self.start_s, self.step_s = clock, start_s, step_s
        self.attached_to = None

    def attach(self, trainer: object) -> None:
        self.attached_to = trainer

    def start_epoch(self) -> None:
        self.clock.now += self.start_s

    def step(self) -> None:
        self.clock.now += self.step_s


def test_interleaving_charges_each_bare_step_to_its_own_loop():
    """The overhead verdict rests on this accounting: time spent in the bare steps run inside
    Lightning's hooks is the bare loops', never (a)'s. Binary fractions keep it exact."""
    clock = FakeClock()
    loops = [FakeLoop(clock, 0.125, 0.25), FakeLoop(clock, 0.0625, 0.5)]
    interleave = Interleave(loops, clock=clock)
    trainer = SimpleNamespace(sanity_checking=False)
    module = SimpleNamespace(device=torch.device("cpu"))
    interleave.on_train_start(trainer, module)
    assert all(loop.attached_to is trainer for loop in loops)
    interleave.on_validation_start(SimpleNamespace(sanity_checking=True), module)  # before any epoch
    for _ in range(2):  # two epochs
        interleave.on_train_epoch_start(trainer, module)
        for batch_idx in range(4):
            clock.now += 1.0  # (a): fetching the batch
            interleave.on_train_batch_start(trainer, module, None, batch_idx)
            clock.now += 2.0  # (a): its step
            interleave.on_train_batch_end(trainer, module, None, None, batch_idx)
        clock.now += 0.5  # (a): the end of its epoch, before validation
        interleave.on_validation_start(trainer, module)
        clock.now += 7.0  # validation: nobody's training time
        interleave.on_train_epoch_end(trainer, module)  # already closed: changes nothing
    assert len(interleave.epochs) == 2
    for epoch in interleave.epochs:
        assert epoch.steps == 4
        assert epoch.lightning_s == 4 * 3.0 + 0.5
        assert epoch.bare_s == (0.125 + 4 * 0.25, 0.0625 + 4 * 0.5)
        # Steps 1-3 run from one batch start to the next (2 + 1 s); the last one to the close.
        assert epoch.lightning_step_ms == 3000.0
        assert epoch.bare_step_ms == (250.0, 500.0)
        assert epoch.overhead == 12.5 / ((1.125 + 2.0625) / 2) - 1
        assert epoch.control == 2.0625 / 1.125 - 1


def test_verdicts_come_from_the_measurements_and_the_declared_targets():
    assert verdict(0.995, (">=", 0.99)) == "met"
    assert verdict(0.985, (">=", 0.99)) == "**missed**"
    assert verdict(0.05, ("<=", 0.05)) == "met"  # the threshold itself meets it
    assert verdict(0.051, ("<=", 0.05)) == "**missed**"
    assert verdict(None, ("<=", 0.05)) == "n/a"
    assert verdict(float("nan"), ("<=", 0.05)) == "n/a"
    assert verdict(3.0, None) == "info"
    rows = verdict_rows({"data_speedup": 12.0, "wall_s": 50.0, "control": 0.004},
                        {"wall_s": ("<=", 45.0), "test_acc": (">=", 0.99)})  # fmt: skip
    assert [row[1:] for row in rows] == [["n/a", "n/a"], ["50.0 s", "**missed**"],
                                         ["+0.4%", "info"], ["12.0x", "info"]]  # fmt: skip
    assert rows[0][0].endswith(">= 99.00%") and rows[1][0].endswith("<= 45.0 s")


def fake_run(seed: int, acc: float | None, ece: float | None, wall_s: float | None, rss: float) -> dict:
    """What train_script returns for one run, plus its seed; None: the run reported nothing."""
    return {"seed": seed, "returncode": 0 if wall_s else 1, "test_acc": acc,
            "test_ece": None if ece is None else 2 * ece,
            "calibrated_ece": ece, "test_nll": 0.5, "calibrated_nll": 0.25, "test_brier": 0.125,
            "calibrated_brier": 0.0625, "temperature": 1.5, "wall_s": wall_s, "peak_rss_gb": rss}  # fmt: skip


def test_seeds_are_checked_on_the_mean_for_quality_and_the_max_for_cost():
    """One seed below 90% does not fail a mean above it; one run over the time limit fails it."""
    runs = [fake_run(0, 0.905, 0.0125, 500.0, 1.5), fake_run(1, 0.89, 0.0075, 620.0, 1.25),
            fake_run(2, 0.915, 0.005, 530.0, 1.75)]  # fmt: skip
    stats = aggregate(runs)
    assert stats["mean"]["test_acc"] == pytest.approx(2.71 / 3)
    assert (stats["min"]["test_acc"], stats["max"]["test_acc"]) == (0.89, 0.915)
    assert (stats["min"]["wall_s"], stats["max"]["wall_s"]) == (500.0, 620.0)
    assert stats["mean"]["temperature"] == 1.5
    measured = seed_measures(runs)
    assert measured == {"test_acc": stats["mean"]["test_acc"], "test_ece": 2 * 0.025 / 3,
                        "calibrated_ece": 0.025 / 3, "wall_s": 620.0, "peak_rss_gb": 1.75}  # fmt: skip
    verdicts = {row[0].split(" >=")[0].split(" <=")[0]: row[2]
                for row in verdict_rows(measured, {"test_acc": (">=", 0.90), "wall_s": ("<=", 600.0),
                                                   "calibrated_ece": ("<=", 0.01)})}  # fmt: skip
    assert verdicts == {"`train.py` test accuracy (mean over the seeds)": "met",
                        "`train.py` wall time, start-up, data loading, calibration and test included"
                        " (max over the seeds)": "**missed**",
                        "`train.py` test ECE after temperature scaling (mean over the seeds)": "met",
                        "`train.py` test ECE, raw softmax (T = 1) (mean over the seeds)": "info",
                        "`train.py` peak RSS (max over the seeds)": "info"}  # fmt: skip
    table = seeds_markdown("python scripts/train.py --seed_everything S", runs)
    assert "| **mean** | 90.33% |" in table and "| **min** | 89.00% |" in table
    # seed, acc, ECE raw / calibrated, NLL raw / calibrated, Brier raw / calibrated, T, wall, RSS, exit
    assert "| 1 | 89.00% | 1.50% | 0.75% | 0.5000 | 0.2500 | 0.1250 | 0.0625 | 1.5000 | 620.0 s | 1.25 GB |" \
        " 0 |" in table


def test_a_failed_seed_is_never_averaged_away():
    runs = [fake_run(0, 0.93, 0.01, 100.0, 1.0), fake_run(1, None, None, None, 1.0)]
    measured = seed_measures(runs)
    assert measured["test_acc"] is None and measured["wall_s"] is None
    assert measured["peak_rss_gb"] == 1.0  # measured for every run, failed or not
    assert verdict(measured["test_acc"], (">=", 0.93)) == "n/a"


def test_an_overlay_section_is_named_after_its_last_file_and_trains_both():
    name, configs = parse_spec("configs/cifar10.yaml+configs/cifar10_quick.yaml")
    assert name == "cifar10_quick" and "cifar10_quick" in TARGETS
    assert configs == [REPO / "configs" / "cifar10.yaml", REPO / "configs" / "cifar10_quick.yaml"]
    args = config_args(configs, lambda c: c.name)
    assert args == ["--config", "cifar10.yaml", "--config", "cifar10_quick.yaml"]
    config = merged(configs)  # what the data path builds its datamodule from
    assert config["trainer"]["max_epochs"] == 6 and config["trainer"]["precision"] == "bf16-mixed"
    assert config["trainer"]["logger"]["init_args"] == {"save_dir": "runs", "name": "cifar10_quick",
                                                        "default_hp_metric": False}  # fmt: skip
    assert config["data"]["init_args"]["alternate_flips"] is True
    assert parse_spec("configs/mnist.yaml") == ("mnist", [REPO / "configs" / "mnist.yaml"])


def test_an_overlay_with_another_class_replaces_the_entry(tmp_path):
    base, overlay = tmp_path / "a.yaml", tmp_path / "b.yaml"
    base.write_text("data:\n  class_path: X\n  init_args: {root: r, batch_size: 8}\n")
    overlay.write_text("data:\n  class_path: Y\n  init_args: {batch_size: 4}\n")
    assert merged([base, overlay])["data"] == {"class_path": "Y", "init_args": {"batch_size": 4}}


@pytest.mark.parametrize("cold", [True, False])
def test_cold_cache_gives_every_run_a_fresh_empty_cache(cold, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "user-cache"))
    seen = []

    def fake_train_script(command: list[str], work: Path) -> dict:
        cache = Path(os.environ[CACHE_ENV])
        seen.append((command, work, cache, cache.is_dir() and not any(cache.iterdir())))
        if cold:
            (cache / "imagefolder-abc.pt").write_bytes(b"decoded")  # what train.py leaves there
        return fake_run(0, 0.9, 0.01, 1.0, 1.0)

    runs = run_seeds(["python", "train.py"], [0, 7], tmp_path / "work", cold, train=fake_train_script)
    assert [run["seed"] for run in runs] == [0, 7]
    assert [command[2:] for command, *_ in seen] == [["--seed_everything", "0"], ["--seed_everything", "7"]]
    assert seen[0][1] != seen[1][1]  # a work folder each
    caches = [cache for _, _, cache, _ in seen]
    if cold:
        assert [empty for *_, empty in seen] == [True, True]
        assert caches[0] != caches[1] and not any(c.exists() for c in caches)  # removed after the run
    else:
        assert caches == [tmp_path / "user-cache"] * 2
    assert os.environ[CACHE_ENV] == str(tmp_path / "user-cache")  # restored
    (run,) = run_seeds(["train.py"], [None], tmp_path / "w2", cold, train=fake_train_script)
    assert seen[-1][0] == ["train.py"]  # the config's own seed: no --seed_everything


def test_data_overrides_take_only_datamodule_arguments():
    args = ["--trainer.max_epochs", "1", "--data.init_args.batch_size", "32",
            "--data.init_args.mean", "[0.5, 0.5]", "--model.lr", "0.1"]  # fmt: skip
    assert data_overrides(args) == {"batch_size": 32, "mean": [0.5, 0.5]}


def test_write_section_replaces_only_its_own_section(tmp_path):
    out = tmp_path / "bench.md"
    write_section(out, "mnist", "first mnist")
    write_section(out, "synthetic-cifar", "cifar numbers")
    write_section(out, "mnist", "second mnist")
    text = out.read_text()
    assert text.startswith("# Benchmarks")
    assert "second mnist" in text and "first mnist" not in text and "cifar numbers" in text
    assert text.count("<!-- benchmark:mnist -->") == 1


@pytest.mark.slow
# AdamW; SGD + crop/flip; whitened net, reflect crop and flips alternated inside the loader
@pytest.mark.parametrize("config", ["mnist.yaml", "cifar10_sample.yaml", "cifar10.yaml"])
def test_bare_loops_train_exactly_as_lightning(config, tmp_path, monkeypatch):
    """(c) and (c') mirror (a): same initial weights, optimizer, schedule, data order and
    augmentation, so after training interleaved all three hold identical weights."""
    write_tiny_data([REPO / "configs" / config], tmp_path / "data")
    monkeypatch.setenv("SOFTCAL_DATA_ROOT", str(tmp_path / "data"))
    args = ["--config", str(REPO / "configs" / config), *TINY_ARGS, "--trainer.max_epochs", "2",
            "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]  # fmt: skip
    (run,) = run_interleaved(args, repeats=1)
    assert [epoch.steps for epoch in run.epochs] == [3, 3]
    assert run.same_weights == (True, True)
    assert run.test_acc[0] == run.test_acc[1] == run.test_acc[2]


@pytest.mark.slow
def test_benchmark_tiny_runs_end_to_end(tmp_path: Path):
    out = tmp_path / "bench.md"
    proc = run_script("benchmark.py", "--tiny", "--out", str(out), "--dataset", "synthetic-cifar",
                      "--config", "configs/cifar10.yaml+configs/cifar10_quick.yaml", "--seeds", "0", "1",
                      "--cold-cache", "--overhead-args", "--trainer.limit_train_batches 2",
                      timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    text = out.read_text()
    for expected in ("<!-- benchmark:cifar10_quick -->", "<!-- benchmark:synthetic-cifar -->",
                     "`python scripts/train.py --config configs/cifar10.yaml --config"
                     " configs/cifar10_quick.yaml",
                     "--seed_everything S`", "### `train.py`, 2 seed(s)", "| **mean** |", "| **max** |",
                     "decoded-image cache: cold", "with `--trainer.limit_train_batches 2` on top",
                     "interleaved in one process", "(c') bare (s)", "### Data path alone",
                     "PIL image per sample", "load average", "--tiny smoke run",
                     "- command: `python scripts/benchmark.py --tiny --out ", "\n- commit: ",
                     "| `train.py` test accuracy (mean over the seeds) >= 93.00% |",
                     "| data path samples/s, softcal vs the PIL DataLoader >= 10.0x |"):  # fmt: skip
        assert expected in text, expected
    seed_rows = [x for x in text.splitlines() if x.startswith(("| 0 |", "| 1 |")) and " GB | " in x]
    assert len(seed_rows) == 2 and all(row.endswith(" GB | 0 |") for row in seed_rows), seed_rows  # exit 0
    assert "| 1 | 1 | 2 |" in text  # the interleaved fit ran 2 steps: --overhead-args reached it alone
    # (c) and (c') are the same code with the same seed as (a): all three end with (a)'s weights.
    line = next(x for x in text.splitlines() if x.startswith("Test accuracy of the final weights"))
    assert "identical to (a)'s: repeat 1: (c) yes, (c') yes." in line, line


@pytest.mark.slow
def test_profile_times_start_up_and_the_runs_steps(tmp_path: Path):
    """--profile: Lightning's SimpleProfiler report of one run, parsed into the section."""
    out = tmp_path / "bench.md"
    proc = run_script("benchmark.py", "--tiny", "--out", str(out), "--dataset", "mnist", "--skip-train",
                      "--skip-overhead", "--skip-data-path", "--profile", timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    text = out.read_text()
    assert "with `--trainer.profiler lightning.pytorch.profilers.SimpleProfiler`" in text
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    actions = " ".join(rows)
    assert "SingleDeviceStrategy.training_step`" in actions and "run_training_epoch" in actions, rows
    assert "test_step`" in actions and len(rows) == len(set(rows)), rows  # one report, no repeats
    # each row: a whole number of calls, seconds, and a share of the run's wall time
    row_form = r"\| `.+` \| \d+ \| \d+\.\d\d s \| \d+\.\d% \|"
    assert all(re.fullmatch(row_form, row) for row in rows), rows
    assert "| start-up: `train.py --help` (imports and the parser) |" in text


def test_sections_show_no_path_of_this_machine():
    """--keep-runs, --out and --data-root name places on the machine that ran the benchmark:
    the command a section shows has DIR and FILE there, in either option form."""
    from softcal_bench.cli import placeholders

    words = ["--config", "configs/cifar10.yaml", "--keep-runs", "/tmp/runs", "--out=/tmp/b.md",
             "--data-root", "/data", "--seeds", "0", "1"]  # fmt: skip
    assert placeholders(words) == ["--config", "configs/cifar10.yaml", "--keep-runs", "DIR", "--out=FILE",
                                   "--data-root", "DIR", "--seeds", "0", "1"]  # fmt: skip
