"""Evaluation of an encoder: DINO k-NN and linear probing on frozen features, class-balanced label
subsets and budgets (host-side functions); fine-tuning on the mesh is `evaluators.finetune`."""

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
