"""Issue 15 part 4: two nodes on one machine - ``torchrun --nnodes 2 --nproc-per-node 1``,
rendezvous on 127.0.0.1, gloo. Each node runs in its own folder with a relative run directory,
as on two machines with their own disks: only rank 0 may write there."""

from __future__ import annotations

import json
import os
import shutil
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

#: Seconds the surviving node may take, from the moment the other node's worker is killed to its
#: own exit (it notices in about one; the whole killed-node test takes a few seconds alone).
BOUND = 60

#: Seconds both nodes together may take, start to exit, before the test gives up on them.
DEADLINE = 300

#: What the master node's torchrun says when the port _free_port picked was taken in between.
PORT_TAKEN = ("eaddrinuse", "address already in use")


def _free_port() -> int:
    """A port free right now; someone may take it before torchrun binds it (retried once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker_alive(torchrun_pid: int) -> bool | None:
    """Whether the training worker (``scripts/train.py``) under a node's torchrun runs: True
    or False (exited, or a zombie not yet reaped); None while torchrun has not started it yet."""
    for children in Path(f"/proc/{torchrun_pid}/task").glob("*/children"):
        try:
            pids = children.read_text().split()
        except FileNotFoundError:  # torchrun (or this thread of it) exited meanwhile
            continue
        for pid in pids:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            if b"train.py" in cmdline:
                return state != "Z"
    return None


class Nodes:
    """Node 0 and node 1 as run, with what the test measured of them (``time.monotonic()``)."""

    def __init__(self) -> None:
        self.codes: list[int] = []
        self.logs: list[str] = []
        self.exited: list[float] = []  # when each node's torchrun exited
        self.worker_died: list[float | None] = []  # when each node's worker was last seen gone


def _launch(root: Path, base: Path, port: int, extra: tuple[str, ...]) -> list[tuple[subprocess.Popen, Path]]:
    env = {"PYTHONPATH": CHECKOUT, "PATH": "/usr/bin:/bin",
           "HOME": str(base), "OMP_NUM_THREADS": "1"}  # fmt: skip
    procs = []
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
    return procs


def _watch(procs: list[tuple[subprocess.Popen, Path]]) -> Nodes | None:
    """Poll both nodes until both exit; None when the port was taken (the caller retries).

    Each node's output goes to a file (a pipe nobody reads would stall a node once full); when
    the nodes outlive DEADLINE, the test fails with both logs, so a hang can be diagnosed."""
    nodes, started = Nodes(), time.monotonic()
    exited: list[float | None] = [None, None]
    died: list[float | None] = [None, None]
    seen = [False, False]
    try:
        while None in exited:
            now = time.monotonic()
            for i, (proc, log) in enumerate(procs):
                if exited[i] is None and proc.poll() is not None:
                    exited[i] = now
                    if any(w in log.read_text().lower() for w in PORT_TAKEN):
                        return None
                if died[i] is None:
                    alive = _worker_alive(proc.pid) if exited[i] is None else False
                    seen[i] = seen[i] or alive is True
                    if seen[i] and alive is not True:  # a zombie, or reaped already
                        died[i] = now
            if now - started > DEADLINE:
                logs = "".join(f"\n--- {log.name} (last 4000 characters)\n{log.read_text()[-4000:]}"
                               for _, log in procs)  # fmt: skip
                pytest.fail(f"the two nodes did not finish within {DEADLINE} s:{logs}")
            time.sleep(0.05)
    finally:
        for proc, _ in procs:
            if proc.poll() is None:  # torchrun and its worker: the node's process group
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    nodes.codes = [proc.returncode for proc, _ in procs]
    nodes.logs = [log.read_text() for _, log in procs]
    nodes.exited, nodes.worker_died = list(exited), died
    return nodes


def _two_nodes(root: Path, base: Path, *extra: str) -> Nodes:
    """Launch node 0 and node 1 (each in ``base/node<i>``) and watch them to the end.

    The port is free when picked but not reserved: if torchrun finds it taken, the nodes start
    once more on another port, in fresh folders."""
    for _ in range(2):
        nodes = _watch(_launch(root, base, _free_port(), extra))
        if nodes is not None:
            return nodes
        for node in (0, 1):
            shutil.rmtree(base / f"node{node}")
    pytest.fail("torchrun found the master port taken twice in a row")


def test_two_nodes_train_disjoint_shards_and_only_rank_0_writes(mnist_root, tmp_path):
    shards = tmp_path / "shards"
    nodes = _two_nodes(
        mnist_root, tmp_path, "--trainer.callbacks+=tests.helpers.RecordTrainingImages",
        "--trainer.callbacks.folder", str(shards),
    )  # fmt: skip
    (code0, code1), (log0, log1) = nodes.codes, nodes.logs
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
    nodes = _two_nodes(
        mnist_root, tmp_path, "--trainer.callbacks+=tests.helpers.KillAtStep",
        "--trainer.callbacks.step", "2", "--trainer.callbacks.rank", "1",
    )  # fmt: skip
    (code0, code1), log0 = nodes.codes, nodes.logs[0]
    assert code1 != 0 and code0 != 0, "node 0 must not report success"
    # Measured here, not by the code under test: node 1's worker was seen running, then gone
    # (SIGKILL at step 2, polled every 0.05 s); node 0 exits within BOUND of that moment.
    killed = nodes.worker_died[1]
    assert killed is not None, "node 1's worker was never seen running and then gone"
    assert killed <= nodes.exited[1]
    waited = nodes.exited[0] - killed
    assert 0 <= waited < BOUND, f"node 0 exited {waited:.1f} s after node 1 was killed:\n{log0[-3000:]}"
    errors = [line for line in log0.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, log0[-3000:]
    assert errors[0].startswith("error: rank 0 of 2 lost contact with the other processes of this run (")
    assert errors[0].endswith(
        "); a node died or was stopped - check its log, then start every node again with --ckpt_path last"
        " (the run directory must be on a disk all nodes see)"
    )  # fmt: skip
    assert "[rank0]: Traceback" not in log0, "the worker itself prints no traceback"
    print(f"node 0 exited {waited:.2f} s after node 1's worker was killed")
