"""evaluate's pipeline: a reopened run, its passes through the net, and the analyses run on them.

* :mod:`~softcal.evaluation.context` - :class:`EvaluationContext`: the run loaded once, each
  split tested once (:mod:`~softcal.evaluation.passes`), its calibration asked one way;
* :mod:`~softcal.evaluation.analysis` - the shape every analysis has and the result it returns;
* :mod:`~softcal.evaluation.analyses` - the list of analyses evaluate runs, in order;
* one module per analysis: :mod:`~softcal.evaluation.calibration_table`,
  :mod:`~softcal.evaluation.selective_prediction`,
  :mod:`~softcal.evaluation.calibrator_comparison`, :mod:`~softcal.evaluation.ood_detection`
  (with the OOD image sets of :mod:`~softcal.evaluation.ood_sets`);
* :mod:`~softcal.evaluation.report` - the metrics tables evaluate prints.

``softcal.apps.evaluate`` parses the command line, opens the contexts and prints; nothing here
imports it.
"""
