"""Sweeps that train: several workers on one journal file fill one study, the same command
continues it, a worker killed mid-trial leaves a study that goes on and runs its trial again,
and a single-objective study prunes through optuna-integration's Lightning callback.

Trials are smoke-sized (tiny generated MNIST, 4 training batches): seconds each.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

optuna = pytest.importorskip("optuna")

from optuna.trial import TrialState, create_trial  # noqa: E402

from tests.conftest import PLAIN_DIGIT_CNN, REPO, TINY  # noqa: E402

pytestmark = pytest.mark.slow

SPACE = "parameters:\n  model.lr: {type: float, low: 0.005, high: 0.05, log: true}\n"


def sweep_command(space: Path, root: Path, *args: str) -> list[str]:
    training = ["--config", "mnist", *TINY, "--figures", "false", "--data.init_args.root", str(root)]
    return [sys.executable, str(REPO / "scripts" / "sweep.py"), *training, "--space", str(space), *args]


def start(command: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(worker: subprocess.Popen, timeout: float = 900) -> str:
    out, _ = worker.communicate(timeout=timeout)
    assert worker.returncode == 0, out[-4000:]
    return out


def load(journal: Path, name: str = "mini") -> optuna.Study:
    from softcal.sweep.storage import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(str(journal)))


def test_two_workers_at_once_fill_one_study_and_a_third_call_continues_it(tmp_path, mnist_root):
    space = tmp_path / "mini.yaml"
    space.write_text(SPACE)
    command = sweep_command(space, mnist_root, "--n-trials", "2")
    workers = [start(command, tmp_path), start(command, tmp_path)]
    outputs = [finish(worker) for worker in workers]
    folder = tmp_path / "runs" / "sweeps" / "mini"
    study = load(folder / "journal.log")
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert all(len(t.values) == 2 for t in trials) and len(study.directions) == 2
    assert sum(bool(t.user_attrs.get("baseline")) for t in trials) == 1  # queued by the creator only
    assert sum("created;" in out for out in outputs) == 1
    for trial in trials:
        run_dir = folder / f"trial_{trial.number:04d}"
        assert trial.user_attrs["run_dir"] == str(Path("runs/sweeps/mini") / run_dir.name)
        files = {p.name for p in run_dir.iterdir()}
        assert {"config.yaml", "results.json", "trial.json", "checkpoints"} <= files
        record = json.loads((run_dir / "trial.json").read_text())
        assert record["state"] == "complete" and record["params"] == trial.params
        assert list(record["objectives"].values()) == trial.values
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())  # the trial's value, as trained
        assert saved["model"]["lr"] == trial.params["model.lr"]
        assert list(run_dir.glob("events.out.tfevents.*"))  # TensorBoard, the HPARAMS row among them
    report = json.loads((folder / "pareto_front.json").read_text())
    assert report["trials"]["complete"] >= 2 and report["pareto_front"]  # each worker reported at its end
    assert (folder / "pareto_front.png").read_bytes()[:4] == b"\x89PNG"

    out = finish(start(sweep_command(space, mnist_root, "--n-trials", "1"), tmp_path))
    assert "continued (4 complete)" in out
    trials = load(folder / "journal.log").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5
    assert (folder / "trial_0004" / "results.json").is_file()
    assert json.loads((folder / "pareto_front.json").read_text())["trials"] == {"complete": 5}


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_worker_killed_mid_trial_leaves_a_study_that_goes_on_and_retries_its_trial(tmp_path, mnist_root):
    space = tmp_path / "mini.yaml"
    space.write_text(SPACE)
    journal = tmp_path / "shared" / "mini.journal"
    beat = ["--storage", str(journal), "--heartbeat", "1", "--grace-period", "3"]
    slower = ["--trainer.limit_train_batches", "19"]  # trial 1 must still be running when killed
    doomed = start(sweep_command(space, mnist_root, "--n-trials", "2", *beat, *slower), tmp_path)

    def second_trial_running() -> bool:
        if not journal.is_file():
            return False
        trials = load(journal).get_trials()
        return len(trials) == 2 and trials[0].state == TrialState.COMPLETE and (
            trials[1].state == TrialState.RUNNING and "heartbeat" in trials[1].user_attrs)

    try:
        wait_for(second_trial_running, 600, "the doomed worker's second trial")
    finally:
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.communicate()
    killed = load(journal).get_trials()[1]
    assert killed.state == TrialState.RUNNING  # as the killed worker left it
    time.sleep(3.5)  # the grace period: the killed worker's heartbeat is now stale

    out = finish(start(sweep_command(space, mnist_root, "--n-trials", "2", *beat), tmp_path))
    assert "trial 1 was lost (no heartbeat for 3 s): failed and queued again" in out
    trials = load(journal).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE,
                                         TrialState.COMPLETE]  # fmt: skip
    retried = trials[2]
    assert retried.system_attrs["failed_trial"] == 1 and retried.params == killed.params
    assert trials[0].values is not None and trials[0].values == load(journal).get_trials()[0].values
    folder = tmp_path / "runs" / "sweeps" / "mini"
    assert not (folder / "trial_0001" / "results.json").exists()  # the killed run, as it was left
    record = json.loads((folder / "trial_0002" / "trial.json").read_text())
    assert record["retried_from"] == 1 and record["state"] == "complete"


def test_one_objective_prunes_through_the_lightning_callback(tmp_path, mnist_root, monkeypatch, capsys):
    """Five finished trials at 100% validation accuracy after epoch 0: the median pruner stops a
    smoke trial after its first validation, which the callback reported (after epoch 0, although
    the trial's command line asks for one validation only: a pruned trial validates every
    epoch). The trial runs at the space's highest lr, where the smoke run is far below 100%
    after its first epoch (near 0.009 it is at 100%, ties the median and is rightly not
    pruned)."""
    from softcal.apps.sweep import main as sweep
    from softcal.sweep.objectives import parse_objectives
    from softcal.sweep.space import read_space
    from softcal.sweep.storage import open_storage
    from softcal.sweep.study import StudyPlan, open_study

    monkeypatch.chdir(tmp_path)
    space = tmp_path / "mini.yaml"
    space.write_text(SPACE)
    journal = tmp_path / "study.journal"
    study, _ = open_study(open_storage(str(journal)), "j", StudyPlan("mini", parse_objectives("acc")),
                          read_space(space))  # fmt: skip
    lr = optuna.distributions.FloatDistribution(0.005, 0.05, log=True)
    for _ in range(5):
        study.add_trial(create_trial(value=1.0, params={"model.lr": 0.01}, distributions={"model.lr": lr},
                                     intermediate_values={0: 1.0}))  # fmt: skip
    study.enqueue_trial({"model.lr": 0.05})  # not a random draw that may land where it ties
    # A config that validates only its final weights still prunes: a pruned trial validates
    # every epoch.
    one = ["--n-trials", "1", "--objectives", "acc", "--storage", str(journal), "--trainer.max_epochs", "2",
           *PLAIN_DIGIT_CNN, "--validate_every_epoch", "false"]
    sweep(sweep_command(space, mnist_root, *one)[2:])
    out = capsys.readouterr().out
    trial = load(journal).get_trials()[5]
    assert trial.params == {"model.lr": 0.05}
    assert trial.state == TrialState.PRUNED and list(trial.intermediate_values) == [0]
    assert "trial 5 pruned: Trial was pruned at epoch 0." in out
    record = json.loads((tmp_path / "runs" / "sweeps" / "mini" / "trial_0005" / "trial.json").read_text())
    assert record["state"] == "pruned"


def test_the_objectives_are_those_of_the_tested_checkpoints_validation(tmp_path, mnist_root):
    from softcal.apps.train import main as train
    from softcal.runs.checkpoints import load_checkpoint
    from softcal.sweep.objectives import ValidationObjectives, parse_objectives

    measured = ValidationObjectives(parse_objectives("acc,nll,ece"))
    results = train(["--config", "mnist", *TINY, "--trainer.max_epochs", "3", "--figures", "false",
                     "--data.init_args.root", str(mnist_root), "--trainer.logger.init_args.save_dir",
                     str(tmp_path)], callbacks=[measured])  # fmt: skip
    assert len(measured.history) == 3  # one entry per validation, by global step
    values = measured.values_for(results["checkpoint"])
    assert values == measured.history[load_checkpoint(results["checkpoint"])["global_step"]]
    assert values["val/acc"] == max(entry["val/acc"] for entry in measured.history.values())  # the best
    assert all(e["val_ts/nll"] >= 0 and 0 <= e["val_ts/ece"] <= 1 for e in measured.history.values())
