"""What the numbers were measured on, and what a command costs in wall time and peak memory."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch


def _proc_field(path: str, prefix: str) -> str | None:
    """The rest of the first line of a /proc file that starts with ``prefix``."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(prefix):
                return line[len(prefix):].strip()
    except OSError:
        pass
    return None


def machine_info() -> dict[str, str]:
    """CPU, cores, RAM, GPU, library versions and date: timings mean little without them."""
    import torchvision

    ram_kib = _proc_field("/proc/meminfo", "MemTotal:")
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "CPU": (_proc_field("/proc/cpuinfo", "model name") or platform.processor()).lstrip(": "),
        "cores": f"{os.cpu_count()} ({usable} usable; torch threads: {torch.get_num_threads()})",
        "RAM": f"{int(ram_kib.split()[0]) / 1024**2:.1f} GiB" if ram_kib else "unknown",
        "GPU": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "versions": f"Python {platform.python_version()}, torch {torch.__version__}, torchvision"
        f" {torchvision.__version__}, lightning {L.__version__}",
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def commit(repo: Path) -> str:
    """The checkout's short commit, marked when tracked files have uncommitted changes: a number
    is only reproducible from the code that measured it. The report itself does not count: each
    section written leaves it changed for the next."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
                              text=True, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)docs/benchmarks.md"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" (with uncommitted changes)" if dirty else "")


def load_average() -> str:
    """``uptime``'s load averages: other users of the CPU make every number here slower."""
    try:
        return "{:.2f}, {:.2f}, {:.2f} (1, 5, 15 min)".format(*os.getloadavg())
    except OSError:
        return "unknown"


def rss_mib(field: str = "VmRSS") -> float | None:
    """This process's resident memory (``VmRSS``) or its high-water mark (``VmHWM``)."""
    value = _proc_field("/proc/self/status", f"{field}:")
    return int(value.split()[0]) / 1024 if value else None


def reset_peak_rss() -> bool:
    """Restart this process's high-water mark (``VmHWM``) from its current RSS (Linux >= 4.0), so
    that a later peak belongs to what ran after; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def tensor_mib(*tensors: torch.Tensor) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def sync(device: torch.device) -> None:
    if device.type == "cuda":  # kernels run asynchronously: wait for them before reading a clock
        torch.cuda.synchronize(device)


# Runs the command and reports its wall time and peak RSS. A small interpreter in between is
# needed: Linux carries the parent's peak RSS into a child's ru_maxrss across fork + exec, so
# a child of this (large) process would report at least this process's size.
_MEASURE = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
rc = subprocess.call(sys.argv[2:])
wall = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
with open(sys.argv[1], "w") as out:
    json.dump({"returncode": rc, "wall_s": wall, "peak_rss_gb": peak * 1024 / 1e9}, out)
"""


def measure_command(command: Sequence[str], log: Path, cwd: Path) -> dict[str, float]:
    """Wall time, exit code and peak RSS of one command in a fresh process; output to ``log``."""
    report = log.with_suffix(".json")
    with open(log, "w") as out:
        subprocess.run([sys.executable, "-c", _MEASURE, str(report), *command], cwd=cwd,
                       stdout=out, stderr=subprocess.STDOUT, check=True)  # fmt: skip
    return json.loads(report.read_text())
