"""evaluate as one pipeline: each split through the net once, analyses listed once and plugged in
the same way, and what a pass keeps agreeing with the run's calibration on the pass's logits."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from softcal.apps.evaluate import main
from softcal.evaluation import analyses
from softcal.evaluation.analysis import EveryEvaluation
from softcal.evaluation.context import EvaluationContext
from softcal.evaluation.results import AnalysisResult
from softcal.runs.load import load_run


def test_each_split_goes_through_the_net_once(tiny_run: Path, counted_passes: list[int]):
    ctx = EvaluationContext(load_run(tiny_run, check_classes=True))
    evaluation = ctx.evaluation()
    assert ctx.evaluation() is evaluation and ctx.tested() is ctx.tested("test")
    test = ctx.logits()
    assert ctx.logits("test") is test and len(test.labels) == 200
    assert counted_passes == [200]  # the metrics, figures, pairs and logits: one pass
    val = ctx.logits("val")
    assert ctx.logits("val") is val and counted_passes == [200, 100]
    trained = json.loads((tiny_run / "results.json").read_text())
    assert evaluation.metrics == pytest.approx(trained["metrics"], abs=1e-6)

    on_val = EvaluationContext(load_run(tiny_run, check_classes=True), "val")
    assert set(on_val.evaluation().metrics) == {key.replace("test", "val", 1) for key in trained["metrics"]}
    assert torch.equal(on_val.logits().logits, val.logits)  # the same images, the same order
    assert torch.equal(on_val.logits("val").labels, val.labels) and counted_passes == [200, 100, 100]


@pytest.mark.slow
def test_evaluate_makes_one_pass_per_split_and_set(tiny_run: Path, tmp_path: Path, counted_passes: list[int]):
    main([str(tiny_run), "--out", str(tmp_path), "--calibrators", "temperature",
          "--ood", "uniform-noise", "--ood", "gaussian-noise", "--conformal"])  # fmt: skip
    # test (metrics, selective, calibrators' and conformal's test side, OOD in-distribution),
    # val (calibrators, conformal), two OOD sets
    assert counted_passes == [200, 100, 200, 200]


def test_pass_pairs_are_the_calibration_of_the_pass_logits(tiny_run: Path):
    """The (confidence, correct) pairs behind selective.json and the printed AURC rows are the
    top probabilities of ``ctx.calibration`` on the very logits the pass kept."""
    ctx = EvaluationContext(load_run(tiny_run, check_classes=True))
    logits, labels = ctx.logits()
    for stage in ("raw", "calibrated"):
        confidence, predicted = ctx.calibration.probabilities(logits, calibrated=stage == "calibrated").max(1)
        pair = ctx.tested().confidences[stage]
        assert torch.equal(pair.confidence, confidence) and torch.equal(pair.correct, predicted == labels)
    assert ctx.calibration.fitted and ctx.calibration.method == "temperature"
    assert ctx.calibration.label() == f"T = {ctx.calibration.temperature:.3f}"


def test_the_analyses_are_listed_once_with_one_shape():
    names = [analysis.name for analysis in analyses.ANALYSES]
    assert names == ["calibration", "selective", "calibrators", "ood", "shift", "conformal"]
    for analysis in analyses.ANALYSES:
        for method in ("add_arguments", "check", "wanted", "run"):
            assert callable(getattr(analysis, method)), (analysis.name, method)


class _Echo(EveryEvaluation):
    """A made-up analysis with an option of its own: what a new one (shift, conformal) adds."""

    name = "echo"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--echo", default=None)

    def check(self, args: argparse.Namespace) -> None:
        args.echo_words = (args.echo or "").split(",")

    def wanted(self, args: argparse.Namespace) -> bool:
        return args.echo is not None

    def run(self, ctx: EvaluationContext, out_dir: Path, args: argparse.Namespace) -> AnalysisResult:
        path = out_dir / "echo.txt"
        path.write_text(f"{ctx.where} {len(ctx.logits().labels)} {ctx.calibration.label()}")
        return AnalysisResult(self.name, [path], "echo: " + " ".join(args.echo_words), {})


@pytest.mark.slow
def test_a_new_analysis_plugs_in_with_one_line(tiny_run: Path, tmp_path: Path, capsys,
                                               monkeypatch: pytest.MonkeyPatch):  # fmt: skip
    monkeypatch.setattr(analyses, "ANALYSES", (*analyses.ANALYSES, _Echo()))
    (evaluation,) = main([str(tiny_run), "--out", str(tmp_path), "--echo", "a,b"])
    printed = capsys.readouterr().out
    assert "\necho: a b\n" in printed and "echo.txt" in printed.splitlines()[-1]
    assert [r.name for r in evaluation.analyses] == ["calibration", "selective", "echo"]
    assert evaluation.files[-1] == tmp_path / "echo.txt"
    assert (tmp_path / "echo.txt").read_text().startswith("MNIST test 200 T = ")
    # Not asked for: not run.
    (evaluation,) = main([str(tiny_run), "--out", str(tmp_path / "again")])
    assert [r.name for r in evaluation.analyses] == ["calibration", "selective"]
