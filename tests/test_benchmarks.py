"""The benchmark (benchmarks/softcal_bench): its time accounting, its verdicts, its results file,
that its bare loop trains exactly as Lightning does, and one smoke run of scripts/benchmark.py."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from softcal_bench.cli import REPO, TINY_ARGS, data_overrides, write_tiny_data
from softcal_bench.overhead import Interleave, run_interleaved
from softcal_bench.report import write_section
from softcal_bench.targets import verdict, verdict_rows

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
@pytest.mark.parametrize("config", ["mnist.yaml", "cifar10_sample.yaml"])  # AdamW; SGD + crop/flip
def test_bare_loops_train_exactly_as_lightning(config, tmp_path, monkeypatch):
    """(c) and (c') mirror (a): same initial weights, optimizer, schedule, data order and
    augmentation, so after training interleaved all three hold identical weights."""
    write_tiny_data(REPO / "configs" / config, tmp_path / "data")
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
    proc = run_script("benchmark.py", "--tiny", "--out", str(out), "--dataset", "mnist",
                      "synthetic-cifar", timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    text = out.read_text()
    for expected in ("<!-- benchmark:mnist -->", "<!-- benchmark:synthetic-cifar -->",
                     "`python scripts/train.py --config configs/mnist.yaml", "exit code 0",
                     "interleaved in one process", "(c') bare (s)", "### Data path alone",
                     "PIL image per sample", "peak RSS", "load average", "--tiny smoke run",
                     "| `train.py` test accuracy >= 99.00% |",
                     "| data path samples/s, softcal vs the PIL DataLoader >= 10.0x |"):  # fmt: skip
        assert expected in text, expected
    # (c) and (c') are the same code with the same seed as (a): all three end with (a)'s weights.
    line = next(x for x in text.splitlines() if x.startswith("Test accuracy of the final weights"))
    assert "identical to (a)'s: repeat 1: (c) yes, (c') yes." in line, line
