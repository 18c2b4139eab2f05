"""``evaluate.py RUN1 RUN2 ... --ensemble``: a deep ensemble evaluated as one model, beside its members.

A deep ensemble (Lakshminarayanan et al. 2017) predicts the mean of its members' softmax
probabilities. :class:`EnsembleContext` is an
:class:`~softcal.evaluation.context.EvaluationContext` whose "logits" are the log of that mean
(:func:`mean_log_probs`), so their softmax IS the averaged probability, and every analysis -
the test table, reliability diagrams, selective prediction, ``--calibrators``, ``--ood``,
``--shift`` and whatever is added later - runs on the ensemble unchanged. It computes nothing
through a net itself: each answer is the members' answers (their own contexts' passes, made
once and shared with their own evaluations) averaged, and the pass a Trainer would have made
is rebuilt from those logits (:func:`softcal.evaluation.scored_logits.scored_pass`).

Its calibration is a :class:`~softcal.calibration.run_calibration.RunCalibration` with a
temperature fitted on the ensemble's validation log-probabilities: "raw" is the members'
averaged probability, "calibrated" that average temperature-scaled. Each run carves its
validation split from the training set with its own seed, so the members of an ensemble
trained with different seeds held out different images; an image one member trained on says
nothing honest about the ensemble's calibration. T is therefore fitted on the validation images
that every member held out - found by their pixels and label - and evaluate says in a note
how many that is when it is fewer than a whole validation split (none: T is not fitted).

Members must share the dataset and its classes, and their test passes must have seen the same
images (same pixels, labels and count): anything else is refused in one line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from softcal.calibration.run_calibration import RunCalibration
from softcal.errors import SoftcalError
from softcal.evaluation.context import EvaluationContext
from softcal.evaluation.results import AnalysisResult, SplitLogits, SplitPass
from softcal.evaluation.scored_logits import scored_pass
from softcal.evaluation.shifted_sets import ShiftedSets
from softcal.runs.load import LoadedRun
from softcal.runs.run_dirs import atomic_write_json

#: The smallest averaged probability kept: its log (-87.3) is finite, so every score is.
TINY = torch.finfo(torch.float32).tiny
#: How every refusal ends.
SHARE = "ensemble members must share the dataset and its classes"
#: What evaluate says under an ensemble's OOD tables.
OOD_NOTE = ("the ensemble's logits are log-probabilities: its max_logit ranks images as its msp does, and"
            " its energy at T = 1 is 0 up to rounding; read its msp and entropy rows")  # fmt: skip


def mean_log_probs(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """float32 log of the mean of the softmax probabilities of each (N, K) logits tensor."""
    probs = torch.stack([torch.softmax(z.double(), dim=1) for z in logits]).mean(dim=0)
    return probs.clamp_min(TINY).log().float()


class EnsembleModel:
    """What analyses read of ``run.model``: the hyperparameters (the first member's: classes,
    image shape, calibration bins) and the ensemble's calibration. Not a net."""

    def __init__(self, hparams: Any, calibration: RunCalibration) -> None:
        self.hparams, self.calibration = hparams, calibration


@dataclass
class EnsembleRun:
    """The ensemble in the shape of a :class:`~softcal.runs.load.LoadedRun`, as far as analyses
    read one. ``checkpoint`` is a name (``ensemble_of_3``), not a file; ``run_dir`` and
    ``datamodule`` are the first member's."""

    members: list[LoadedRun]
    model: EnsembleModel
    datamodule: Any
    checkpoint: Path
    run_dir: Path

    @property
    def calibration(self) -> RunCalibration:
        return self.model.calibration

    @property
    def class_names(self) -> list[str]:
        return self.members[0].class_names

    @property
    def num_classes(self) -> int:
        return self.members[0].num_classes

    @property
    def in_channels(self) -> int:
        return self.members[0].in_channels

    @property
    def image_size(self) -> tuple[int, int]:
        return self.members[0].image_size


def check_member_count(count: int) -> None:
    if count < 2:
        raise SoftcalError("--ensemble needs at least two runs to average, got one; pass RUN1 RUN2 ...")


def _name(ctx: EvaluationContext) -> str:
    return str(ctx.run.run_dir)


def check_members(members: Sequence[EvaluationContext]) -> None:
    """Two or more members of one dataset and class list; checked before any pass is made."""
    check_member_count(len(members))
    first = members[0]
    for other in members[1:]:
        if other.dataset != first.dataset:
            raise SoftcalError(f"--ensemble: {_name(first)} is evaluated on {first.dataset} and"
                               f" {_name(other)} on {other.dataset}; {SHARE}")  # fmt: skip
        if other.run.class_names != first.run.class_names:
            mine, theirs = (", ".join(ctx.run.class_names[:6]) for ctx in (first, other))
            raise SoftcalError(f"--ensemble: {_name(first)} and {_name(other)} have different classes ({mine}"
                               f" vs {theirs}); {SHARE}")  # fmt: skip


def _test_difference(first: EvaluationContext, other: EvaluationContext) -> str | None:
    """How two members' test passes differ in what they saw, or None."""
    (_, labels), (_, theirs) = first.logits("test"), other.logits("test")
    if len(labels) != len(theirs):
        return f"{len(labels)} and {len(theirs)} images"
    if not torch.equal(labels, theirs):
        return "different labels"
    mine, other_images = (ctx.run.datamodule.splits["test"][0][: len(labels)] for ctx in (first, other))
    return None if torch.equal(mine, other_images) else "different pixels"


def _validation_rows(ctx: EvaluationContext) -> tuple[SplitLogits, dict[tuple[bytes, int], int]]:
    """A member's validation logits and the row of each (image bytes, label) in them."""
    logits, labels = ctx.logits("val")
    images = ctx.run.datamodule.splits["val"][0][: len(labels)].reshape(len(labels), -1).numpy()
    rows: dict[tuple[bytes, int], int] = {}
    for row, (pixels, label) in enumerate(zip(images, labels.tolist(), strict=True)):
        rows.setdefault((pixels.tobytes(), label), row)
    return SplitLogits(logits, labels), rows


class EnsembleContext(EvaluationContext):
    """The members' averaged probabilities as one model, answering what analyses ask a context."""

    def __init__(self, members: Sequence[EvaluationContext]) -> None:
        check_members(members)
        first = members[0].run
        model = EnsembleModel(first.model.hparams, RunCalibration(first.num_classes))
        run = EnsembleRun([m.run for m in members], model, first.datamodule,
                          Path(f"ensemble_of_{len(members)}"), first.run_dir)  # fmt: skip
        super().__init__(run, members[0].split, members[0].overrides)  # type: ignore[arg-type]
        self.members = list(members)
        #: what evaluate should say about the fit (printed as note: lines)
        self.notes: list[str] = []
        self.fitted_on: dict[str, Any] = {}
        self._validation: SplitLogits | None = None

    @property
    def calibration(self) -> RunCalibration:
        """T fitted on the validation images every member held out (not fitted: none)."""
        if self._validation is None:
            self._validation = self._common_validation()
            self.run.calibration.fit(*self._validation, "temperature")
        return self.run.calibration

    @property
    def dataset(self) -> str:
        return self.members[0].dataset

    def tested(self, split: str | None = None) -> SplitPass:
        split = split or self.split
        if split not in self._passes:
            logits = self._test_logits() if split == "test" else self._validation_logits()
            n_bins = int(self.run.model.hparams.calibration_bins)
            self._passes[split] = scored_pass(split, logits, self.calibration, n_bins)
        return self._passes[split]

    def images_logits(self, images: torch.Tensor) -> torch.Tensor:
        return mean_log_probs([member.images_logits(images) for member in self.members])

    @property
    def shifted_sets(self) -> ShiftedSets:
        """The first member's, shared with the others: their test images are the same."""
        sets = self.members[0].shifted_sets
        for member in self.members[1:]:
            member.share_shifted_sets(sets)
        return sets

    def shifted_logits(self, corruption: str, severity: int, samples: int | None = None) -> SplitLogits:
        key = self.shifted_sets.key(corruption, severity, samples)
        if key not in self._shifted:
            parts = [member.shifted_logits(corruption, severity, samples) for member in self.members]
            self._shifted[key] = SplitLogits(mean_log_probs([p.logits for p in parts]), parts[0].labels)
        return self._shifted[key]

    def _test_logits(self) -> SplitLogits:
        first = self.members[0]
        for other in self.members[1:]:
            why = _test_difference(first, other)
            if why:
                raise SoftcalError(f"--ensemble: {_name(first)} and {_name(other)} were tested on different"
                                   f" images ({why}); {SHARE}, and the same test settings")  # fmt: skip
        averaged = mean_log_probs([member.logits("test").logits for member in self.members])
        return SplitLogits(averaged, first.logits("test").labels)

    def _validation_logits(self) -> SplitLogits:
        self.calibration  # noqa: B018 - finds the common validation images
        assert self._validation is not None
        return self._validation

    def _common_validation(self) -> SplitLogits:
        """Each member's validation logits on the images all of them held out, averaged."""
        found = [_validation_rows(member) for member in self.members]
        (_, labels), first_rows = found[0]
        common = [key for key in first_rows if all(key in rows for _, rows in found[1:])]
        parts = [logits.logits[[rows[key] for key in common]] for logits, rows in found]
        sizes = [len(rows) for _, rows in found]
        self.fitted_on = {"split": "val", "num_images": len(common), "members_num_images": sizes}
        m, held = len(self.members), ", ".join(map(str, sizes))
        if not common:
            self.notes.append(f"the {m} members' validation splits share no image (each run's seed draws"
                              " its own): the ensemble's temperature is not fitted (T = 1)")  # fmt: skip
        elif len(common) < min(sizes):
            self.notes.append(f"the ensemble's temperature is fitted on the {len(common)} validation images"
                              f" all {m} members held out (their splits hold {held}): each run's seed draws"
                              " its own split")  # fmt: skip
        index = torch.tensor([first_rows[key] for key in common], dtype=torch.long)
        return SplitLogits(mean_log_probs(parts), labels[index])


def ensemble_result(ctx: EnsembleContext, out_dir: Path) -> AnalysisResult:
    """ensemble.json: the members, how the probabilities are combined and what T was fitted on."""
    calibration = ctx.calibration
    record = {"members": [str(run.checkpoint) for run in ctx.run.members], "dataset": ctx.dataset,
              "combination": "mean of the members' softmax probabilities (T = 1); logits: its log",
              "calibration": calibration.describe(), "temperature": calibration.temperature,
              "fitted_on": ctx.fitted_on, "notes": ctx.notes}  # fmt: skip
    return AnalysisResult("ensemble", [atomic_write_json(out_dir / "ensemble.json", record)], None, record)
