"""The calibrator a run stores with its weights (``--calibrator``), as a part of the module.

Temperature scaling, the default, keeps living in the Classifier's ``temperature`` buffers.
Any other method (vector, matrix, histogram, isotonic) is fitted next to T on the same
validation logits and held in a :class:`CalibratorSlot`, a submodule of the Classifier, so
every checkpoint carries the calibrator fitted for exactly its own weights - the same rule
as for T.

The slot writes its key (``calibrator._extra_state``: the calibrator's own state, from which
:func:`softcal.calibration.calibrators.calibrator_from_state` rebuilds it) only while it holds
one. A default run's checkpoints therefore have exactly the keys they had before the slot
existed, and a checkpoint written before it (no key) loads as "no calibrator stored".
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from softcal.calibration.calibrators import Calibrator, calibrator_from_state

#: The state_dict key under the slot's prefix; torch's own name for a module's extra state.
STATE_KEY = "_extra_state"


class CalibratorSlot(nn.Module):
    """Holds one fitted calibrator, or none. The calibrator is deliberately not a registered
    submodule: its parameters would then be state_dict keys that differ by method, and a
    freshly built (empty) model could not load a checkpoint of another method strictly."""

    def __init__(self) -> None:
        super().__init__()
        self.__dict__["held"] = None  # not nn.Module.__setattr__: see the class docstring

    def hold(self, calibrator: Calibrator | None) -> None:
        """Store a fitted calibrator, or mark the slot empty (None)."""
        if calibrator is not None and not calibrator.fitted:
            raise ValueError(f"a {calibrator.method} calibrator must be fitted before it is stored")
        self.__dict__["held"] = calibrator

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities from the held calibrator (on the logits' device)."""
        held = self.held
        if held is None:
            raise RuntimeError("no calibrator is stored; check slot.held first")
        # Outside autocast: under bf16-mixed a matrix calibrator's matmul would run in bf16
        # (changing up to 1% of a probability, and some predicted classes), while predict,
        # export and evaluate's comparison compute it in float32.
        with torch.autocast(logits.device.type, enabled=False):
            return held(logits.float())  # each calibrator brings its tensors to the logits' device

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        # Only a held calibrator writes a key: an empty slot leaves the state_dict as it was.
        if self.held is not None:
            destination[prefix + STATE_KEY] = self.held.get_extra_state()

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, local_metadata: dict,
                              strict: bool, missing_keys: list[str], unexpected_keys: list[str],
                              error_msgs: list[str]) -> None:  # fmt: skip
        # No key is not an error: the checkpoint stores no calibrator (a temperature-only
        # run, or one written before the slot existed).
        state = state_dict.get(prefix + STATE_KEY)
        try:
            self.hold(calibrator_from_state(state) if state is not None else None)
        except Exception as err:  # a state this version cannot read: reported like a bad key
            error_msgs.append(f"cannot rebuild the stored calibrator from {prefix + STATE_KEY}: {err}")
        if strict:
            unexpected_keys.extend(k for k in state_dict if k.startswith(prefix) and k != prefix + STATE_KEY)


def calibration_summary(temperature: float | None, held: Calibrator | None) -> dict[str, str] | None:
    """What results.json says about the calibration the calibrated metrics used: the method
    and its one-line description; None when nothing was fitted (raw softmax)."""
    if held is not None:
        return {"method": held.method, "description": held.describe()}
    if temperature is not None:
        return {"method": "temperature", "description": f"temperature scaling, T = {temperature:.4f}"}
    return None
