"""What the benchmark runs on and what it costs: machine description, load average, peak
memory from /proc, tensor sizes, and the device the bare loop shares with Lightning."""

from __future__ import annotations

import datetime as dt
import os
import platform
import threading
from pathlib import Path

import lightning as L
import torch

MIB = 1024 * 1024


# --------------------------------------------------------------------------- machine and memory


def machine_info() -> dict[str, str]:
    """What the numbers were measured on: CPU, cores, RAM, library versions, date."""
    import torchvision

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / 1024**2:.1f} GiB"
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "CPU": cpu,
        "cores": f"{os.cpu_count()} ({usable} usable; torch threads: {torch.get_num_threads()})",
        "RAM": ram,
        "GPU": gpu,
        "versions": f"Python {platform.python_version()}, torch {torch.__version__}, torchvision"
        f" {torchvision.__version__}, lightning {L.__version__}",
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def load_1min() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def load_average() -> str:
    """``uptime``'s load averages: other users of the CPU make every number here slower."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f} (1, 5, 15 min)"


def status_mib(field_name: str, pid: int | str = "self") -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


def _pss_mib(pid: int) -> float:
    # PSS, not RSS: forked workers share the parent's pages, and RSS would count them twice.
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


def _child_pids() -> list[int]:
    pids: list[int] = []
    try:
        for tid in os.listdir("/proc/self/task"):
            text = Path(f"/proc/self/task/{tid}/children").read_text()
            pids += [int(p) for p in text.split()]
    except OSError:
        pass
    return pids


class PeakMemory:
    """Peak RSS of this process over a ``with`` block, plus the summed PSS of its children.

    Linux lets a process reset its own high-water mark (``/proc/self/clear_refs``), so each
    block gets an exact peak even though earlier blocks ran in the same process. Children
    (DataLoader workers) are sampled every ``interval`` seconds.
    """

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.start_mib = self.peak_mib = self.children_peak_mib = 0.0
        self.exact = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            children = sum(_pss_mib(pid) for pid in _child_pids())
            self.children_peak_mib = max(self.children_peak_mib, children)
            self.peak_mib = max(self.peak_mib, status_mib("VmRSS") or 0.0)

    def __enter__(self) -> PeakMemory:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS
            self.exact = True
        except OSError:
            self.exact = False
        self.start_mib = self.peak_mib = status_mib("VmRSS") or 0.0
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        hwm = status_mib("VmHWM")
        if self.exact and hwm is not None:
            self.peak_mib = hwm
        elif hwm is not None:  # no reset possible: the lifetime peak is all we know
            self.peak_mib = max(self.peak_mib, hwm)


def tensor_mib(*tensors: torch.Tensor) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / MIB


def sync(device: torch.device) -> None:
    if device.type == "cuda":  # kernels run asynchronously: wait for them before reading a clock
        torch.cuda.synchronize(device)


def auto_device() -> torch.device:
    # What accelerator="auto" would pick, so the bare loop runs where the Lightning fits run.
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
