"""config.model.scan and config.model.remat: a ViT whose blocks are one nn.scan, and whose backward
pass recomputes activations, computes what the plain ViT computes, from the same variables
(converted between the two layouts), and a run warm-starts across the layouts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config_file

from ssljax import build, checkpoint, data, models, restore, sharding, train
from ssljax.errors import ConfigError
from ssljax.models import vit

DEPTH = 3
DEPTH_OF_TINY = 1  # tests/conftest.py's shrink_config


def _vit(**kw):
  defaults = dict(patch_size=4, width=16, depth=DEPTH, num_heads=2, image_size=16, pool='cls')
  return vit.ViT(**{**defaults, **kw})


def _images(n=4, seed=0):
  return jnp.asarray(np.random.default_rng(seed).uniform(size=(n, 16, 16, 3)), jnp.float32)


@pytest.fixture(scope='module')
def plain_variables():
  return _vit().init(jax.random.key(0), _images(), train=False)


def _close(a, b, rtol=1e-5, atol=1e-6):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def test_the_layouts_convert_both_ways(plain_variables):
  params = plain_variables['params']
  scanned = vit.scan_layout(params, DEPTH)
  init = _vit(scan=True).init(jax.random.key(0), _images(), train=False)['params']
  assert jax.tree.map(jnp.shape, scanned) == jax.tree.map(jnp.shape, init)
  np.testing.assert_array_equal(
    scanned['blocks']['block']['mlp']['fc1']['kernel'][1],
    params['blocks_1']['mlp']['fc1']['kernel'],
  )
  _close(vit.unscan_layout(scanned, DEPTH), params, rtol=0, atol=0)
  _close(vit.to_layout(plain_variables, scan=True, depth=DEPTH), {'params': scanned}, 0, 0)
  _close(vit.to_layout({'params': scanned}, scan=False, depth=DEPTH), plain_variables, 0, 0)


@pytest.mark.parametrize('remat', vit.REMAT_POLICIES)
@pytest.mark.parametrize('scan', [False, True])
def test_scanned_and_rematerialized_vits_compute_the_plain_one(plain_variables, scan, remat):
  model = _vit(scan=scan, remat=remat)
  variables = vit.to_layout(plain_variables, scan=scan, depth=DEPTH)
  images = _images()

  def loss(params, model, images):
    h = model.apply({'params': params}, images, train=True)
    return jnp.sum(jnp.sin(h))

  def reference_loss(params):
    return loss(params, _vit(), images)

  grads = jax.jit(jax.grad(loss), static_argnums=1)(variables['params'], model, images)
  expected = jax.jit(jax.grad(reference_loss))(plain_variables['params'])
  _close(vit.to_layout({'params': grads}, scan=False, depth=DEPTH)['params'], expected)

  h, attn = model.apply(variables, images, train=False, return_attention=True)
  h0, attn0 = _vit().apply(plain_variables, images, train=False, return_attention=True)
  _close((h, attn), (h0, attn0))
  cls = model.apply(variables, images, 2, method=vit.ViT.last_cls)
  _close(cls, _vit().apply(plain_variables, images, 2, method=vit.ViT.last_cls))


def test_stochastic_depth_in_a_scan_gives_each_block_its_rate():
  """Rates rise from 0 at the first block to drop_path at the last: with drop_path=1 the first
  block computes what it computes in inference mode, and the last one drops both residual
  branches of every sample, so it leaves the tokens it was given."""
  model = _vit(scan=True, drop_path=1.0)
  images = _images()
  variables = model.init(jax.random.key(1), images, train=False)
  train = model.apply(
    variables, images, train=True, rngs={'dropout': jax.random.key(2)}, method=_cls
  )
  infer = model.apply(variables, images, train=False, method=_cls)
  np.testing.assert_allclose(train[0], infer[0], rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(train[-1], train[-2])
  assert not np.allclose(infer[-1], infer[-2])


def _cls(module, images, *, train):
  """The CLS token each block leaves, (depth, N, D)."""
  x, _ = module._with_cls(module.embed(images), None, True)
  return jnp.stack(module._blocks(x, train, None, False)[2])


def test_the_config_fields_are_checked_and_reach_the_model(config_file, shrink):
  config = shrink(config_file('mae_digits.py'))
  config.model.scan, config.model.remat = True, 'dots_saveable'
  encoder = models.build_encoder(config)
  assert encoder.scan and encoder.remat == 'dots_saveable'
  config.model.remat = 'sometimes'
  with pytest.raises(ConfigError, match=r'model\.remat'):
    train.validate(config, sharding.make_mesh())


def test_a_scanned_run_warm_starts_from_an_unscanned_one(mae_digits_run, tmp_path, shrink):
  """init_from a run whose ViT blocks were not scanned, into a run whose blocks are: every
  encoder variable is loaded, stacked block by block."""
  source_dir, _, _ = mae_digits_run
  config = shrink(load_config_file('mae_digits.py'), source='digits')
  config.model.scan, config.init_from, config.eval = True, str(source_dir), ()
  mesh = sharding.make_mesh()
  method, _, _, init, _ = build.build_run(config, mesh, data.dataset_info(config))
  abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
  warm = restore.prepare_warm_start(config, method, abstract, str(tmp_path))
  assert warm.not_loaded == ()
  replicated = jax.tree.map(lambda _: sharding.replicated(mesh), abstract)
  fresh = jax.jit(init, out_shardings=replicated)(jax.random.PRNGKey(config.seed))
  state = restore.warm_start(method, fresh, warm)
  loaded = method.encoder_variables(state.params, state.model_state)
  source = checkpoint.restore_arrays(str(source_dir), 3, ('params',))['params']['encoder']
  _close(loaded['params'], vit.scan_layout(source, DEPTH_OF_TINY), rtol=0, atol=0)
