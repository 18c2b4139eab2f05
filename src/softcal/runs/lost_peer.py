"""Training on several machines: one line when another process of the run is lost.

Multi-node training is Lightning's DDP launched by ``torchrun`` or SLURM's ``srun``. When one
node dies, the others' next collective fails in the communication backend (gloo or NCCL)
with a long traceback; this turns that into one line that says what happened and how to go on.
A node that hangs instead of dying is only noticed after the process group's timeout
(Lightning's ``DDPStrategy(timeout=...)``, 30 minutes by default).
"""

from __future__ import annotations

import lightning as L
import torch.distributed as dist

from softcal.errors import SoftcalError

#: Words of gloo's and NCCL's messages for a peer that went away.
_LOST_PEER_WORDS = ("connection reset by peer", "connection closed by peer", "broken pipe",
                    "socket timeout", "remote process exited", "communicator was aborted")  # fmt: skip


def lost_peer_error(trainer: L.Trainer, err: BaseException) -> SoftcalError | None:
    """A one-line error when ``err`` is the backend failing because another process of a
    multi-process run is gone; None for anything else (re-raise it as it is)."""
    if trainer.world_size <= 1:
        return None
    text = str(err).strip()
    if not isinstance(err, dist.DistNetworkError) and not any(w in text.lower() for w in _LOST_PEER_WORDS):
        return None
    first = text.splitlines()[0] if text else type(err).__name__
    return SoftcalError(
        f"rank {trainer.global_rank} of {trainer.world_size} lost contact with the other processes"
        f" of this run ({first}); a node died or was stopped - check its log, then start every"
        " node again with --ckpt_path last (the run directory must be on a disk all nodes see)"
    )
