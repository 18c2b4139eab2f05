"""Workers' signs of life, so a worker killed mid-trial (SIGKILL, a lost machine, a preempted
job) leaves a study that goes on: its trial is marked failed and queued again.

Optuna has this for its database storages only (``heartbeat_interval`` of ``RDBStorage``);
its journal storage, the default here, has none. So softcal keeps its own, the same on every
storage, through public trial attributes: while a trial runs, its worker writes the time to
the trial's ``heartbeat`` attribute every ``interval`` seconds. Before each trial, a worker
fails every running trial whose last sign of life (heartbeat, else start) is older than the
grace period, and hands it to Optuna's retry callback (``RetryFailedTrialCallback``, renamed
``RetryHeartbeatStaleTrialCallback`` in Optuna 5), which queues a copy with the same
parameters and the system attributes ``failed_trial`` and ``retry_history``. Of two workers
that find the same stale trial, the storage lets exactly one fail it.

The times are each machine's clock: machines sharing a study need clocks that agree to well
within the grace period (NTP does).
"""

from __future__ import annotations

import threading
import time
import warnings
from types import TracebackType
from typing import Any

#: The trial attribute holding the worker's last sign of life (seconds since the epoch).
HEARTBEAT_ATTR = "heartbeat"


class Heartbeat:
    """``with Heartbeat(trial, interval):`` writes the trial's heartbeat every ``interval``
    seconds, from a thread, until the block ends."""

    def __init__(self, trial: Any, interval: float) -> None:
        self.trial, self.interval = trial, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="softcal-heartbeat", daemon=True)

    def _beat(self) -> None:
        while True:
            try:
                self.trial.set_user_attr(HEARTBEAT_ATTR, time.time())
            except Exception:  # the trial was finished by another worker, the storage went away:
                return  # no heartbeat to keep, and the training must not be disturbed for it
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:  # fmt: skip
        self._stop.set()
        self._thread.join()


def retry_callback(max_retry: int | None) -> Any:
    """Optuna's callback that queues a failed trial again (at most ``max_retry`` times)."""
    import optuna

    storages = optuna.storages  # the class was renamed in Optuna 5; the old name is deprecated there
    callback = getattr(storages, "RetryHeartbeatStaleTrialCallback", None)
    callback = callback or storages.RetryFailedTrialCallback
    with warnings.catch_warnings():  # experimental in every Optuna that has it
        warnings.simplefilter("ignore")
        return callback(max_retry=max_retry)


def last_alive(trial: Any) -> float:
    """When ``trial``'s worker last showed it was alive: its heartbeat, or its start (a retried
    trial inherits the heartbeat of the one it copies, older than its own start)."""
    started = trial.datetime_start.timestamp() if trial.datetime_start else 0.0
    return max(float(trial.user_attrs.get(HEARTBEAT_ATTR, 0.0)), started)


def fail_stale_trials(study: Any, grace_period: float, retry: Any, now: float | None = None) -> list[int]:
    """Fail every running trial of ``study`` silent for longer than ``grace_period`` seconds
    (at ``now``, the clock's time by default), queue each again through ``retry``; the numbers
    of the trials failed here."""
    from optuna.trial import TrialState

    failed = []
    now = time.time() if now is None else now
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if now - last_alive(trial) <= grace_period:
            continue
        try:
            frozen = study.tell(trial.number, state=TrialState.FAIL)
        except (ValueError, RuntimeError):  # finished meanwhile, or failed by another worker first
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            retry(study, frozen)
        failed.append(trial.number)
    return failed
