"""One process of the multi-process equivalence test (run by tests/test_multiprocess.py).

usage: python multiprocess_worker.py PROCESS_ID NUM_PROCESSES PORT LOCAL_DEVICES OUT.json
Computes the sharded NT-Xent and two SimCLR train steps on a fixed global batch; each process
feeds only its own rows, as on a pod.
"""

import json
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

process_id, num_processes, port, local_devices = (int(a) for a in sys.argv[1:5])
jax.config.update('jax_num_cpu_devices', local_devices)
if num_processes > 1:
  jax.distributed.initialize(f'localhost:{port}', num_processes, process_id)

import functools  # noqa: E402

import numpy as np  # noqa: E402
from jax.experimental.multihost_utils import process_allgather  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from ssljax import build, losses, methods, optim, sharding  # noqa: E402


def local_rows(x):
  """This process's contiguous block of the global batch."""
  n = len(x) // jax.process_count()
  return x[jax.process_index() * n : (jax.process_index() + 1) * n]


mesh = sharding.make_mesh()
rng = np.random.default_rng(0)
z1, z2 = rng.normal(size=(2, 16, 8)).astype(np.float32)
nt_xent = jax.jit(
  jax.value_and_grad(
    jax.shard_map(
      functools.partial(losses.nt_xent, temperature=0.2, axis_name='data'),
      mesh=mesh,
      in_specs=(P('data'), P('data')),
      out_specs=P(),
    )
  )
)
loss, grad = nt_xent(*sharding.to_global((local_rows(z1), local_rows(z2)), mesh))

config = methods.SimCLR.default_config()
config.model.width = 4
config.model.proj_dim = 8
config.batch_size = 16
method = methods.build(config, mesh)
tx, schedule = optim.build_optimizer(config, total_steps=10, warmup_steps=0)
init = build.init_state(method, tx, [(8, 8, 1), (8, 8, 1)])
state = jax.jit(init, out_shardings=sharding.replicated(mesh))(jax.random.PRNGKey(0))
step = jax.jit(build.make_train_step(method, tx, schedule))
views = rng.uniform(size=(2, 16, 8, 8, 1)).astype(np.float32)
step_losses = []
for _ in range(2):
  state, metrics = step(state, sharding.to_global({'views': [local_rows(v) for v in views]}, mesh))
  step_losses.append(float(metrics['loss']))

grad_norm = float(np.linalg.norm(process_allgather(grad, tiled=True)))  # a collective: all call it
if jax.process_index() == 0:
  with open(sys.argv[5], 'w') as f:
    json.dump(
      {
        'loss': float(loss),
        'grad_norm': grad_norm,
        'step_losses': step_losses,
        'devices': jax.device_count(),
      },
      f,
    )
