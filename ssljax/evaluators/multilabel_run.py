"""The evaluation of a run whose labels come from a CSV (`config.data.labels`): the protocols of
`protocols` with multi-label targets. An evaluation split's labels are row numbers of its split
(`data.sources.labelled_folder`); their targets (N, L) come from `data.labels_csv.table`.

Each protocol's results: its key (accuracy over the known targets) and KEY/auroc/LABEL,
KEY/auroc_macro, KEY/ap/LABEL, KEY/ap_macro, KEY being today's (`linear@10_per_class`,
`knn/ood`). The evaluation of the pretrained encoder with all labels keeps its linear probe and
fine-tuned network in the workdir (`evaluators.kept`).
"""

from __future__ import annotations

import functools

import numpy as np

from ssljax.data import labels_csv
from ssljax.evaluators import kept, multilabel, protocols
from ssljax.evaluators.label_subset import LabelBudget


def _all_labels(budget: LabelBudget | None) -> bool:
  return budget is None or budget.fraction == 1.0


class MultiLabelRun(protocols._Run):
  """`protocols._Run` with targets (N, L) for labels: budgets in positives per label, per-label
  probes and votes, fine-tuning with binary cross-entropy."""

  def __init__(self, *args, keep_in: str | None = None):
    super().__init__(*args)
    self.table = labels_csv.table(self.config)
    ood = protocols.ood_config(self.config)
    self.tables = {'': self.table}
    if protocols.OOD in self.tests:
      self.tables[protocols.OOD] = labels_csv.table(ood) if ood is not None else self.table
    self.keep_in = keep_in

  @property
  def names(self) -> tuple[str, ...]:
    return self.table.names

  @functools.cached_property
  def num_classes(self) -> int:
    return len(self.names)

  def targets(self, name: str) -> np.ndarray:
    """'train' or a test suffix -> targets (N, L) of its features, in their order."""
    rows = self.rows(name).labels  # rows of the CSV table
    if name == 'train':
      return self.table.targets['train'][rows]
    return self.tables[name].targets['test'][rows]

  def subset(
    self, budget: LabelBudget | None, labels: np.ndarray | None = None
  ) -> np.ndarray | None:
    """`protocols._Run.subset` counted in positives per label; `labels` are rows of the table."""
    targets = self.targets('train') if labels is None else self.table.targets['train'][labels]
    return multilabel.budget_rows(budget, targets, seed=self.ec.subset_seed)

  def _scored(self, scores: dict[str, np.ndarray]) -> dict[str, float]:
    """{test suffix + metric suffix: value} of each test set's scores in its features' order."""
    out = {}
    for name, s in scores.items():
      metrics = multilabel.scores_metrics(self.targets(name), s, self.names)
      out.update({name + key: value for key, value in metrics.items()})
    return out

  def run_features(self, fn, budget: LabelBudget | None) -> dict[str, float]:
    """The multi-label probe or k-NN where the features are (`multilabel.fit_probe_rows`,
    `knn_scores_rows`): only scores leave the devices."""
    if fn is protocols._linear_few_on_rows:
      few = int(self.ec.few_per_class)
      budget = LabelBudget(f'{few}_per_class', per_class=few)
    train, idx = self.rows('train'), self.subset(budget)
    if fn is protocols._knn_on_rows:
      scores = {
        name: multilabel.knn_scores_rows(
          train,
          self.rows(name),
          self.mesh,
          self.targets('train'),
          k=self.ec.knn_k,
          temperature=self.ec.knn_temperature,
          train_examples=idx,
        )
        for name in self.tests
      }
      return self._scored(scores)
    groups = self.table.groups['train'][train.labels]
    probe = multilabel.fit_probe_rows(
      train, self.targets('train'), groups, idx, seed=self.ec.subset_seed
    )
    scores = {name: probe.probabilities_rows(self.rows(name)) for name in self.tests}
    if self.keep_in and _all_labels(budget):
      kept.save_linear(self.keep_in, probe, self.names, (self._test_files(), scores['']))
      kept.save_roc(self.keep_in, 'linear', self.names, self.targets(''), scores[''])
    return self._scored(scores)

  def _test_files(self) -> list[str]:
    files = self.table.files['test']
    return [files[int(r)].replace('\\', '/') for r in self.rows('').labels]

  def run_training(
    self, pretrained: bool, frozen: bool, budget: LabelBudget | None
  ) -> dict[str, float]:
    ft, chosen = self.training_images(frozen, budget)
    variables = self.start_variables(pretrained, ft, self.train.image_shape)
    train = self.train.with_labels(lambda r: self.table.targets['train'][r])  # rows -> targets
    result = self.finetune(variables, train, chosen, ft, frozen, multilabel=True)
    out = {}
    for name, (probabilities, test_rows) in result.scores.items():
      table = self.tables[name]
      metrics = multilabel.scores_metrics(
        table.targets['test'][test_rows], probabilities, self.names
      )
      out.update({name + key: value for key, value in metrics.items()})
    if self.keep_in and pretrained and _all_labels(budget):
      files = [self.table.files['test'][int(r)].replace('\\', '/') for r in result.scores[''][1]]
      kind = 'linear_sgd' if frozen else 'finetune'
      test = (files, result.scores[''][0])
      kept.save_finetune(self.keep_in, kind, result.variables, self.names, ft, frozen, test)
      targets = self.table.targets['test'][result.scores[''][1]]
      kept.save_roc(self.keep_in, kind, self.names, targets, result.scores[''][0])
    return out


protocols.MULTI_LABEL_RUN = MultiLabelRun
