"""Evaluation of an encoder. The protocols of a run (what config.eval names, per label budget
and test set) are run by `evaluators.protocols`; the pieces it runs are k-NN and linear probing
on frozen features and class-balanced label subsets (host-side, exported here), and fine-tuning
on the mesh (`evaluators.finetune`). `python -m ssljax.evaluate` is the command line."""

from ssljax.evaluators import multilabel_run  # noqa: F401  (sets protocols.MULTI_LABEL_RUN)
from ssljax.evaluators.knn import knn_accuracy, knn_classify
from ssljax.evaluators.label_subset import (
  LabelBudget,
  fraction_subset,
  parse_label_budget,
  parse_label_budgets,
  per_class_subset,
)
from ssljax.evaluators.linear_probe import LinearProbe, fit_linear_probe, linear_probe

__all__ = [
  'LabelBudget',
  'LinearProbe',
  'fit_linear_probe',
  'fraction_subset',
  'knn_accuracy',
  'knn_classify',
  'linear_probe',
  'parse_label_budget',
  'parse_label_budgets',
  'per_class_subset',
]
