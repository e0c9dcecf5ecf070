"""Triplet training with each negative rule beside SimCLR, same encoder, views and budget
(issue 20).

python experiments/triplet_negatives.py [--dataset=digits] [--rules=random,hardest,semi_hard]

Runs configs/triplet_<dataset>.py once per rule (--config.triplet.negatives) and
configs/simclr_<dataset>.py, one at a time (the wall time is part of the result), and writes
linear / 5-per-class / k-NN of each against its random encoder to
experiments/results/triplet_negatives_<dataset>.json, merged with earlier rows.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fashion_mnist_presets import PROBES, run_config  # noqa: E402

_DATASET = flags.DEFINE_enum('dataset', 'digits', ['digits', 'fashion_mnist'], 'configs to run')
_RULES = flags.DEFINE_list('rules', ['random', 'hardest', 'semi_hard'], 'negative rules')
_SIMCLR = flags.DEFINE_bool('simclr', True, 'also run the SimCLR config')
_WORKDIRS = flags.DEFINE_string('workdirs', 'runs/triplet_negatives', 'where the runs are kept')


def main(argv):
  del argv
  d = _DATASET.value
  out_path = f'experiments/results/triplet_negatives_{d}.json'
  out = json.load(open(out_path)) if os.path.exists(out_path) else {}
  jobs = [
    (f'triplet_{r}', f'configs/triplet_{d}.py', (f'--config.triplet.negatives={r}',))
    for r in _RULES.value
  ]
  if _SIMCLR.value:
    jobs.append(('simclr', f'configs/simclr_{d}.py', ()))
  for name, config, overrides in jobs:
    out[name] = run_config(config, os.path.join(_WORKDIRS.value, f'{name}_{d}'), overrides)
    with open(out_path, 'w') as f:  # after every run: a later failure keeps the earlier ones
      json.dump(out, f, indent=1)
  print(f'{"run":18s} {"wall":>6s}  ' + '  '.join(f'{k:>20s}' for k in PROBES))
  for name, r in out.items():
    cells = [f'{100 * r["pretrained"][k]:8.2f} / {100 * r["random_init"][k]:6.2f}' for k in PROBES]
    print(f'{name:18s} {r["wall_s"] / 60:5.1f}m  ' + '  '.join(f'{c:>20s}' for c in cells))


if __name__ == '__main__':
  app.run(main)
