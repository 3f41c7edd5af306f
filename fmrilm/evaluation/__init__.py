"""Evaluation metrics, controls and baselines (definitions in docs/design.md, "Metric definitions").

Modules: :mod:`~fmrilm.evaluation.captions` (SemScore, BLEU/METEOR/ROUGE-L/CIDEr),
:mod:`~fmrilm.evaluation.vqa` (normalised exact match by question type),
:mod:`~fmrilm.evaluation.retrieval_metrics` (n-way retrieval, MindEye protocol),
:mod:`~fmrilm.evaluation.naming` (zero-shot naming), :mod:`~fmrilm.evaluation.controls`
(shuffled-brain derangement), :mod:`~fmrilm.evaluation.regression` (R², MAE, accuracy, AUC),
:mod:`~fmrilm.evaluation.baselines` (ridge caption decoder, FC phenotype models) and
:mod:`~fmrilm.evaluation.temporal_baselines` (persistence, linear AR).

Submodules are imported on demand: the caption metrics load MiniLM and Java, which the others
do not need.
"""
