"""The probes of `config.eval` on raw pixels: the floor an encoder's features must clear.

python experiments/raw_pixel_baseline.py --config=configs/simclr_fashion_mnist.py
Prints a table and writes experiments/results/raw_pixels_<config>.json.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from ssljax import data  # noqa: E402
from ssljax.evaluators import protocols  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
_OUT = flags.DEFINE_string(
  'out', '', 'Results file (default experiments/results/raw_pixels_<config>.json).'
)


def main(argv) -> None:
  del argv
  config = _CONFIG.value
  name = os.path.splitext(
    os.path.basename(config_flags.get_config_filename(flags.FLAGS['config']))
  )[0]
  splits = {}
  for split in ('train', 'test'):
    images, labels = data.load_eval_split(config, split)
    splits[split] = (images.reshape(len(images), -1), labels)
  num_classes = int(max(splits['train'][1].max(), splits['test'][1].max())) + 1
  results = {}
  for protocol in config.eval:
    key, fn = protocols.PROTOCOLS[protocol]
    results[key(config.eval_config)] = float(
      fn(splits['train'], splits['test'], num_classes, config.eval_config)
    )
  print(f'raw pixels, {name} ({config.data.image_size} px)')
  for key, acc in results.items():
    print(f'{key:<24} {100 * acc:6.2f}%')
  out = _OUT.value or f'experiments/results/raw_pixels_{name}.json'
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, 'w') as f:
    json.dump({'raw_pixels': results, 'config': name}, f, indent=2)


if __name__ == '__main__':
  app.run(main)
