"""Issue 15 part 4: two nodes on one machine - ``torchrun --nnodes 2 --nproc-per-node 1``,
rendezvous on 127.0.0.1, gloo. Each node runs in its own folder with a relative run directory,
as on two machines with their own disks: only rank 0 may write there."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, run_script
from tests.test_reliability import BASE

pytestmark = pytest.mark.slow

#: test_reliability's small MNIST-format run (500 train images, batch 32), 1 epoch of 4 steps
#: on each node, with the packaged config (each node runs in its own folder): ./runs/mnist/.
ARGS = [
    *(arg.replace("configs/mnist.yaml", "mnist.yaml") for arg in BASE),
    "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "4", "--trainer.accelerator", "cpu",
    "--trainer.strategy", "ddp", "--trainer.num_nodes", "2", "--trainer.devices", "1",
]  # fmt: skip

#: The checkout's own sources first: a clone tests its code, not the copy an install points at.
CHECKOUT = os.pathsep.join([str(REPO / "src"), str(REPO)])

#: Seconds a node may take to give up once the other is gone (it notices in about one).
BOUND = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(root: Path, base: Path, *extra: str) -> list[tuple[int, str]]:
    """Launch node 0 and node 1 (each in ``base/node<i>``); their (exit code, log).

    Each node's output goes to a file (a pipe nobody reads would stall a node once full); when
    a node outlives the bound, the test fails with both logs, so a hang can be diagnosed."""
    port, procs = _free_port(), []
    env = {"PYTHONPATH": CHECKOUT, "PATH": "/usr/bin:/bin",
           "HOME": str(base), "OMP_NUM_THREADS": "1"}  # fmt: skip
    for node in (0, 1):
        cwd, log = base / f"node{node}", base / f"node{node}.log"
        cwd.mkdir(parents=True)
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
            "--node-rank", str(node), "--master-addr", "127.0.0.1", "--master-port", str(port),
            str(REPO / "scripts" / "train.py"), *ARGS, "--data.init_args.root", str(root), *extra,
        ]  # fmt: skip
        with open(log, "w") as out:
            procs.append((subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=out,
                                           start_new_session=True), log))  # fmt: skip
    deadline = time.monotonic() + BOUND + 180
    try:
        for proc, _ in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        logs = "".join(
            f"\n--- {log.name} (last 4000 characters)\n{log.read_text()[-4000:]}" for _, log in procs
        )
        pytest.fail(f"the two nodes did not finish within {BOUND + 180} s:{logs}")
    finally:
        for proc, _ in procs:
            if proc.poll() is None:  # torchrun and its worker: the node's process group
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return [(proc.returncode, log.read_text()) for proc, log in procs]


def test_two_nodes_train_disjoint_shards_and_only_rank_0_writes(mnist_root, tmp_path):
    shards = tmp_path / "shards"
    (code0, log0), (code1, log1) = _two_nodes(
        mnist_root, tmp_path, "--trainer.callbacks+=tests.helpers.RecordTrainingImages",
        "--trainer.callbacks.folder", str(shards),
    )  # fmt: skip
    assert code0 == 0 and code1 == 0, log0[-3000:] + log1[-3000:]
    seen = [(shards / f"rank{rank}.txt").read_text().split() for rank in (0, 1)]
    assert [len(s) for s in seen] == [128, 128] and all(len(set(s)) == 128 for s in seen)
    assert not set(seen[0]) & set(seen[1]), "each node trains on its own shard"
    assert sorted(p.name for p in (tmp_path / "node1").iterdir()) == [], "only rank 0 writes"
    run_dir = tmp_path / "node0" / "runs" / "mnist" / "version_0"
    results = json.loads((run_dir / "results.json").read_text())
    # The test metrics of the two-node run equal one process evaluating the same checkpoint.
    one = run_script("evaluate.py", results["checkpoint"], "--out", str(tmp_path / "eval"),
                     env={"PYTHONPATH": CHECKOUT})  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert evaluated["num_samples"] == 200
    for name, value in evaluated["metrics"].items():
        assert results["metrics"][name] == pytest.approx(value, abs=1e-6), name


def test_when_one_node_dies_the_other_stops_with_one_line(mnist_root, tmp_path):
    (code0, log0), (code1, _) = _two_nodes(
        mnist_root, tmp_path, "--trainer.callbacks+=tests.helpers.KillAtStep",
        "--trainer.callbacks.step", "2", "--trainer.callbacks.rank", "1",
    )  # fmt: skip
    assert code1 != 0 and code0 != 0, "node 0 must not report success"
    errors = [line for line in log0.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, log0[-3000:]
    assert errors[0].startswith("error: rank 0 of 2 lost contact with the other processes of this run")
    assert "--ckpt_path last" in errors[0]
    assert "[rank0]: Traceback" not in log0, "the worker itself prints no traceback"
