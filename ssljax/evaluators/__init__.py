"""Host-side evaluation of frozen features: DINO k-NN, linear probing, few-label subsets."""

from ssljax.evaluators.knn import knn_accuracy, knn_classify
from ssljax.evaluators.label_subset import per_class_subset
from ssljax.evaluators.linear_probe import linear_probe

__all__ = ['knn_accuracy', 'knn_classify', 'linear_probe', 'per_class_subset']
