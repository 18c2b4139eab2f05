"""The sweep's study: storage choice and bad storages, the objectives a study keeps, pruning
where Optuna allows it, the heartbeat and retry of lost trials, the Pareto report, and the
sweep's own command line. Fast: studies are made by hand, nothing trains."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from optuna.distributions import FloatDistribution  # noqa: E402
from optuna.trial import TrialState, create_trial  # noqa: E402

from softcal.apps.sweep import main as sweep  # noqa: E402
from softcal.apps.sweep import parse_args, require_optuna  # noqa: E402
from softcal.errors import NonFiniteLossError, SoftcalError  # noqa: E402
from softcal.sweep import trial as trial_module  # noqa: E402
from softcal.sweep.heartbeat import HEARTBEAT_ATTR, Heartbeat, fail_stale_trials, retry_callback  # noqa: E402
from softcal.sweep.objectives import ValidationObjectives, parse_objectives  # noqa: E402
from softcal.sweep.report import dominates, format_front, front_report, write_report  # noqa: E402
from softcal.sweep.space import Parameter, SearchSpace  # noqa: E402
from softcal.sweep.storage import open_storage, shown  # noqa: E402
from softcal.sweep.study import StudyPlan, check_run_folder, enqueue_baseline, make_pruner, open_study  # noqa: E402

ACC_NLL = parse_objectives("acc,nll")
LR = Parameter("model.lr", "float", 0.001, 0.1, log=True)
SPACE = SearchSpace(Path("space.yaml"), (LR,))


def one_line(caught: pytest.ExceptionInfo) -> str:
    message = str(caught.value)
    assert "\n" not in message, message
    return message


def journal_study(tmp_path: Path, objectives: str = "acc,nll", name: str = "s") -> tuple:
    storage = open_storage(str(tmp_path / "sweeps" / "journal.log"))
    study, created = open_study(storage, "j", StudyPlan(name, parse_objectives(objectives)), SPACE)
    return storage, study, created


# --------------------------------------------------------------------------- storage
def test_a_path_is_a_journal_file(tmp_path):
    journal = open_storage(str(tmp_path / "new" / "folder" / "study.journal"))
    assert type(journal).__name__ == "JournalStorage" and (tmp_path / "new" / "folder").is_dir()
    assert shown("postgresql://me:secret@db.example:5432/sweeps") == "postgresql://me:***@db.example:5432/sweeps"
    assert shown("runs/sweeps/mnist/journal.log") == "runs/sweeps/mnist/journal.log"


@pytest.mark.slow  # Optuna creates the database's tables: about a second
def test_a_url_is_a_database(tmp_path):
    database = open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    assert type(database).__name__ == "RDBStorage"
    study, created = open_study(database, "db", StudyPlan("s", ACC_NLL), SPACE)
    assert created and study.user_attrs["softcal:objectives"] == ["val/acc", "val_ts/nll"]


def test_an_unreachable_database_is_one_line(tmp_path):
    url = f"sqlite:///{tmp_path / 'missing' / 'folder' / 'study.db'}"
    with pytest.raises(SoftcalError) as caught:
        open_storage(url)
    assert one_line(caught) == (
        f"cannot open storage {url}: (sqlite3.OperationalError) unable to open database file; check the URL"
        " and that the database can be reached from here, or use a journal file (--storage FILE)"
    )
    with pytest.raises(SoftcalError) as caught:
        open_storage("nosuchdb://host/db")
    assert one_line(caught).startswith("cannot open storage nosuchdb://host/db: Can't load plugin")


def test_a_database_without_its_driver_is_one_line_and_hides_the_password():
    with pytest.raises(SoftcalError) as caught:
        open_storage("postgresql+pg8000://me:secret@127.0.0.1:1/sweeps")
    assert one_line(caught) == (
        "cannot open storage postgresql+pg8000://me:***@127.0.0.1:1/sweeps: no Python driver for postgresql"
        " is installed; install one (e.g. pip install psycopg2-binary for postgresql://) or use a journal"
        " file (--storage FILE)"
    )


def test_a_file_that_is_not_a_journal_is_refused_and_left_alone(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    with pytest.raises(SoftcalError) as caught:
        open_storage(str(notes))
    assert one_line(caught) == (
        f"{notes} is not an Optuna journal file (its first line is not a journal entry); pass another"
        " --storage file, or a database URL"
    )
    assert notes.read_text() == "my notes\n"
    with pytest.raises(SoftcalError) as caught:
        open_storage(str(tmp_path))  # a folder
    assert one_line(caught).startswith(f"cannot open the journal file {tmp_path}: ")
    assert str(caught.value).endswith(
        "; pass a --storage file in a folder you can write (on several machines: one on a filesystem they"
        " share)"
    )


# --------------------------------------------------------------------------- study and objectives
def test_a_study_keeps_its_objectives_and_refuses_others_unchanged(tmp_path):
    storage, study, created = journal_study(tmp_path)
    assert created and [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.user_attrs["softcal:objectives"] == ["val/acc", "val_ts/nll"]
    again, created = open_study(storage, "j", StudyPlan("s", ACC_NLL), SPACE)
    assert not created and again.study_name == "s"
    journal = (tmp_path / "sweeps" / "journal.log").read_bytes()
    with pytest.raises(SoftcalError) as caught:
        open_study(storage, "runs/sweeps/s/journal.log", StudyPlan("s", parse_objectives("acc,ece")), SPACE)
    assert one_line(caught) == (
        "study s in runs/sweeps/s/journal.log was made with the objectives val/acc (maximize), val_ts/nll"
        " (minimize), not val/acc, val_ts/ece: pass --objectives acc,nll to continue it, or name a new"
        " study (--study-name); the study is left as it was"
    )
    with pytest.raises(SoftcalError, match="was made with the objectives"):
        open_study(storage, "j", StudyPlan("s", parse_objectives("nll")), SPACE)
    assert (tmp_path / "sweeps" / "journal.log").read_bytes() == journal


def test_objectives_and_pruning_where_optuna_allows_it():
    assert [o.metric for o in parse_objectives(" ece , acc")] == ["val_ts/ece", "val/acc"]
    with pytest.raises(SoftcalError) as caught:
        parse_objectives("acc,brier")
    assert one_line(caught) == (
        "--objectives 'acc,brier': unknown objective 'brier'; choose from acc, nll, ece, comma-separated"
        " (e.g. acc,nll)"
    )
    with pytest.raises(SoftcalError, match="an objective is named twice; name each once"):
        parse_objectives("acc,acc")
    assert type(make_pruner(StudyPlan("s", ACC_NLL))).__name__ == "NopPruner"
    assert type(make_pruner(StudyPlan("s", parse_objectives("acc")))).__name__ == "MedianPruner"
    assert type(make_pruner(StudyPlan("s", parse_objectives("acc"), pruner="none"))).__name__ == "NopPruner"
    with pytest.raises(SoftcalError) as caught:
        make_pruner(StudyPlan("s", ACC_NLL, pruner="median"))
    assert one_line(caught) == (
        "--pruner median needs a single objective: Optuna cannot prune a multi-objective study"
        " (Trial.report refuses it); pass one objective (--objectives acc) or --pruner none"
    )


def test_optuna_refuses_to_report_a_multi_objective_trial(tmp_path):
    """Why two objectives mean no pruning: the pruning callback's first call fails."""
    _, study, _ = journal_study(tmp_path)
    with pytest.raises(NotImplementedError, match="multi-objective"):
        study.ask().report(0.5, step=0)


def test_trial_folders_of_an_unknown_study_are_not_reused(tmp_path):
    storage, _, _ = journal_study(tmp_path)
    folder = tmp_path / "runs" / "sweeps" / "other"
    check_run_folder(storage, "other", folder)  # nothing there yet
    (folder / "trial_0000").mkdir(parents=True)
    check_run_folder(storage, "s", folder)  # the study exists: its own trials
    with pytest.raises(SoftcalError) as caught:
        check_run_folder(storage, "other", folder)
    assert one_line(caught) == (
        f"{folder} holds the trials of another study named other, which this storage does not have;"
        " continue it with its own --storage, or name a new study (--study-name)"
    )


def test_the_config_as_given_is_queued_first_when_the_space_holds_it(tmp_path):
    _, study, _ = journal_study(tmp_path)
    assert enqueue_baseline(study, SPACE, {"model.lr": 0.5}) is None  # outside the range
    assert study.get_trials() == []
    assert enqueue_baseline(study, SPACE, {"model.lr": 0.02}) == {"model.lr": 0.02}
    (waiting,) = study.get_trials()
    assert waiting.state == TrialState.WAITING and waiting.user_attrs == {"baseline": True}
    trial = study.ask()
    assert SPACE.suggest(trial) == {"model.lr": 0.02}


# --------------------------------------------------------------------------- heartbeat and retry
def test_a_heartbeat_is_written_while_a_trial_runs(tmp_path):
    _, study, _ = journal_study(tmp_path)
    trial = study.ask()
    start = time.time()
    with Heartbeat(trial, 0.05):
        time.sleep(0.2)
    (running,) = study.get_trials()
    assert running.user_attrs[HEARTBEAT_ATTR] >= start


def test_a_silent_trial_is_failed_and_queued_again_once(tmp_path):
    storage, study, _ = journal_study(tmp_path)
    lost = study.ask()
    lost.suggest_float("model.lr", 0.001, 0.1, log=True)
    alive = study.ask()
    other = optuna.load_study(study_name="s", storage=storage)  # another worker
    retry = retry_callback(max_retry=2)
    assert fail_stale_trials(other, 60, retry) == []  # both started just now
    later = time.time() + 100  # judged 100 s from now: only a trial that beat since is alive
    lost.set_user_attr(HEARTBEAT_ATTR, time.time())
    alive.set_user_attr(HEARTBEAT_ATTR, later - 1)
    assert fail_stale_trials(other, 60, retry, now=later) == [lost.number]
    assert fail_stale_trials(other, 60, retry, now=later) == []  # failed once, by one worker
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING]
    assert trials[2].system_attrs["failed_trial"] == lost.number
    assert trials[2].params == trials[0].params
    study.tell(alive, [0.9, 0.3])  # the other worker's trial finishes normally


# --------------------------------------------------------------------------- the report
def finished(study, number_values: list[tuple[float, float]], baseline: int = 0) -> None:
    for i, values in enumerate(number_values):
        study.add_trial(create_trial(
            values=list(values), params={"model.lr": 0.01 * (i + 1)},
            distributions={"model.lr": FloatDistribution(0.001, 0.1, log=True)},
            user_attrs={"run_dir": f"runs/sweeps/s/trial_{i:04d}", "baseline": i == baseline},
        ))  # fmt: skip


def test_the_pareto_front_json_and_table(tmp_path):
    _, study, _ = journal_study(tmp_path)
    finished(study, [(0.95, 0.20), (0.97, 0.15), (0.96, 0.10), (0.90, 0.30)])
    report = front_report(study, ACC_NLL, "j")
    assert [entry["number"] for entry in report["pareto_front"]] == [1, 2]
    assert report["pareto_front"][0] == {
        "number": 1, "values": {"val/acc": 0.97, "val_ts/nll": 0.15}, "params": {"model.lr": 0.02},
        "run_dir": "runs/sweeps/s/trial_0001", "baseline": False, "retried_from": None,
    }  # fmt: skip
    assert report["baseline"]["number"] == 0 and report["beat_baseline"] == [1, 2]
    assert report["trials"] == {"complete": 4}
    assert report["objectives"][1] == {"name": "nll", "metric": "val_ts/nll", "direction": "minimize"}
    table = format_front(report)
    assert table.splitlines()[0] == "Pareto front of study s (4 complete): 2 trial(s)"
    assert table.splitlines()[1].split() == ["trial", "val/acc", "val_ts/nll", "model.lr", "run", "directory"]
    assert table.splitlines()[2].split() == ["1", "0.9700", "0.1500", "0.02", "runs/sweeps/s/trial_0001"]
    assert table.endswith("trials that beat it on every objective: 1, 2")
    assert dominates((0.97, 0.1), (0.97, 0.2), ACC_NLL) and not dominates((0.97, 0.2), (0.97, 0.2), ACC_NLL)


def test_the_report_files(tmp_path, capsys):
    _, study, _ = journal_study(tmp_path)
    finished(study, [(0.95, 0.20), (0.97, 0.15)])
    out = tmp_path / "out"
    report = write_report(study, ACC_NLL, "j", out)
    assert json.loads((out / "pareto_front.json").read_text()) == report
    assert (out / "pareto_front.png").read_bytes()[:4] == b"\x89PNG"
    assert f"written: {out / 'pareto_front.json'}, {out / 'pareto_front.png'}" in capsys.readouterr().out


# --------------------------------------------------------------------------- the command line
def test_the_sweep_passes_every_other_option_to_training():
    args, train = parse_args(["-c", "mnist", "--space", "mnist", "--model.lr", "-0.5", "--n_trials", "3",
                              "--trainer.max_epochs=1", "--storage", "x.log"])  # fmt: skip
    assert (args.space, args.n_trials, args.storage, args.grace_period) == ("mnist", 3, "x.log", 120.0)
    assert train == ["-c", "mnist", "--model.lr", "-0.5", "--trainer.max_epochs=1"]


@pytest.mark.parametrize(("argv", "expected"), [
    (["--n-trials", "1"], "error: the following arguments are required: --space (see sweep.py --help)"),
    (["--space", "s", "--n-trials", "-1"],
     "error: --n-trials must be 0 or more, not -1 (see sweep.py --help)"),
    (["--space", "s", "--n-trials", "1", "--heartbeat", "0"],
     "error: --heartbeat must be above 0 seconds, not 0 (see sweep.py --help)"),
    (["--space", "s", "--n-trials", "1", "--max-retry", "-2"],
     "error: --max-retry must be 0 or more, not -2 (see sweep.py --help)"),
    (["--space", "s", "--n-trials", "1", "--heartbeat", "10", "--grace-period", "5"],
     "error: --grace-period (5 s) must be longer than --heartbeat (10 s), or every running trial would"
     " look lost (see sweep.py --help)"),
])  # fmt: skip
def test_bad_sweep_options_are_one_line(argv, expected, capsys):
    with pytest.raises(SystemExit) as caught:
        parse_args(argv)
    assert caught.value.code == 2
    assert capsys.readouterr().err.strip() == expected


def test_a_study_asked_for_other_objectives_is_left_as_it_was(tmp_path, monkeypatch, capsys):
    """The whole command, no trial: --n-trials 0 creates the study (the config as given queued)
    and reports; another call with other objectives fails in one line and changes nothing."""
    monkeypatch.chdir(tmp_path)
    space = tmp_path / "lr.yaml"
    space.write_text("parameters:\n  model.lr: {type: float, low: 0.001, high: 0.1, log: true}\n")
    report = sweep(["--config", "mnist", "--space", str(space), "--n-trials", "0"])
    assert report["study"] == "lr" and report["trials"] == {"waiting": 1} and report["pareto_front"] == []
    journal = tmp_path / "runs" / "sweeps" / "lr" / "journal.log"
    before = journal.read_bytes()
    out = capsys.readouterr().out
    assert out.startswith("study lr in runs/sweeps/lr/journal.log: created; objectives val/acc (maximize),"
                          " val_ts/nll (minimize); ")  # fmt: skip
    assert "the config as given is queued as its first trial" in out
    with pytest.raises(SoftcalError, match=r"pass --objectives acc,nll to continue it"):
        sweep(["--config", "mnist", "--space", str(space), "--n-trials", "1", "--objectives", "acc,ece"])
    assert journal.read_bytes() == before


def test_a_missing_optuna_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna_integration", None)
    with pytest.raises(SoftcalError) as caught:
        require_optuna()
    assert one_line(caught) == (
        'the sweep needs optuna and optuna-integration (optuna_integration is missing): pip install'
        ' "softcal[sweep]" (in a checkout: pip install -e ".[sweep]")'
    )


def test_a_run_without_a_validation_has_no_objectives():
    with pytest.raises(SoftcalError) as caught:
        ValidationObjectives(ACC_NLL).values_for(None)
    assert one_line(caught) == "the run validated no epoch, so it has no objectives; let it train an epoch"


def fake_training(outcomes: list) -> object:
    """train.main's stand-in: each call raises its outcome, or records it as the objectives of
    the run's only validation."""

    def train(argv, callbacks):
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        callbacks[0].history[7] = outcome
        return {"checkpoint": None}

    return train


def test_every_outcome_of_a_trial_is_one_line_and_the_study_goes_on(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    space = tmp_path / "lr.yaml"
    space.write_text("parameters:\n  model.lr: {type: float, low: 0.001, high: 0.1, log: true}\n")
    monkeypatch.setattr(trial_module, "train", fake_training([
        {"val/acc": 0.9, "val_ts/nll": 0.3},
        NonFiniteLossError("training loss is nan at step 3"),
        {"val/acc": 0.95, "val_ts/nll": float("nan")},
        {"val/acc": 0.97, "val_ts/nll": 0.2},
        SystemExit(143),  # train's exit after a SIGTERM
    ]))  # fmt: skip
    command = ["--config", "mnist", "--space", str(space), "--n-trials", "5"]
    with pytest.raises(SystemExit) as caught:
        sweep(command)
    assert caught.value.code == 143
    out, err = capsys.readouterr()
    folder = Path("runs/sweeps/lr")
    lines = out.splitlines()
    assert "trial 0 complete: val/acc 0.9000, val_ts/nll 0.3000 (runs/sweeps/lr/trial_0000)" in lines
    nan_loss = "trial 1 failed: training loss is nan at step 3; the sweep goes on (runs/sweeps/lr/trial_0001)"
    nan_value = ("trial 2 failed: an objective is not finite ({'val/acc': 0.95, 'val_ts/nll': nan}); the"
                 " sweep goes on (runs/sweeps/lr/trial_0002)")  # fmt: skip
    assert nan_loss in lines and nan_value in lines
    assert err == (
        "stopped: the trial in progress is marked failed and queued again; run the same command to continue"
        " study lr\n"
    )
    study = optuna.load_study(study_name="lr", storage=open_storage(str(folder / "journal.log")))
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "FAIL", "COMPLETE", "FAIL", "WAITING"]
    assert trials[0].user_attrs["baseline"] and trials[0].params == {"model.lr": 0.01}  # mnist.yaml's
    assert trials[1].user_attrs["failure"] == "training loss is nan at step 3"
    assert trials[5].system_attrs["failed_trial"] == 4
    assert json.loads((folder / "trial_0001" / "trial.json").read_text())["state"] == "failed"

    monkeypatch.setattr(trial_module, "train", fake_training([{"val/acc": 0.96, "val_ts/nll": 0.25}]))
    report = sweep([*command[:-1], "1"])  # the same command again runs the queued trial
    trials = study.get_trials()
    assert trials[5].state.name == "COMPLETE" and trials[5].params == trials[4].params
    assert json.loads((folder / "trial_0005" / "trial.json").read_text())["retried_from"] == 4
    assert report["baseline"]["number"] == 0 and report["beat_baseline"] == [3, 5]
    assert [entry["number"] for entry in report["pareto_front"]] == [3]
    assert (folder / "pareto_front.png").is_file()
