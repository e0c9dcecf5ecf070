"""Weights in and out (ssljax.weights, ssljax.export): timm's models, created offline with a fixed
seed, are the independent reference. Each h is compared as max |h - h_timm| / max |h_timm|.

The fast tier uses small models (a few blocks, 16-48 px); the full-size table (ViT-T/S/B/16,
ViT-L/14, a resampled grid, one channel, ResNet-50 at 224 px) and a DINO run exported and read
by timm are `-m slow`.
"""

import argparse
import json
import os
import pickle
import subprocess
import sys

import jax
import numpy as np
import pytest

import ssljax
from ssljax import build, data, models, restore, sharding
from ssljax.errors import ConfigError
from ssljax.models import pixels, vit
from ssljax.weights import WeightsError, files, import_encoder, timm_form

torch = pytest.importorskip('torch')
timm = pytest.importorskip('timm')
safetensors_torch = pytest.importorskip('safetensors.torch')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGENET = (
  np.array([0.485, 0.456, 0.406], np.float32),
  np.array([0.229, 0.224, 0.225], np.float32),
)


def _timm(name: str, seed: int = 0, **kwargs):
  """timm's NAME, untrained, seeded, in eval mode; BatchNorm's statistics and affine randomized
  (they start at 0 and 1, which would hide a mix-up of mean and variance)."""
  torch.manual_seed(seed)
  model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs).eval()
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.uniform_(-0.5, 0.5)
        m.running_var.uniform_(0.5, 2.0)
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.2, 0.2)
  return model


def _images(n: int, side: int, channels: int = 3, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).random((n, side, side, channels), np.float32)


def _timm_h(model, images: np.ndarray, mean, std) -> np.ndarray:
  x = torch.from_numpy((images - np.asarray(mean, np.float32)) / np.asarray(std, np.float32))
  with torch.no_grad():
    return model(x.permute(0, 3, 1, 2)).numpy()


def _relative(h: np.ndarray, reference: np.ndarray) -> float:
  return float(np.abs(h - reference).max() / np.abs(reference).max())


def _save(model_or_state, path) -> str:
  state = model_or_state if isinstance(model_or_state, dict) else model_or_state.state_dict()
  state = {k: v.contiguous() for k, v in state.items()}
  if str(path).endswith('.safetensors'):
    safetensors_torch.save_file(state, str(path))
  else:
    torch.save(state, str(path))
  return str(path)


def _ssljax_h(path, images, model='', **options) -> np.ndarray:
  apply_fn, params = ssljax.load_encoder(str(path), model, **options)
  return np.asarray(apply_fn(params, images))


# ----------------------------------------------------------------------------- import, small


SMALL_VIT = dict(img_size=32, depth=2)


def test_vit_h_matches_timm(tmp_path):
  """A ViT-T/16 of 2 blocks at 32 px: as timm's (inputs (x - 0.5) / 0.5, its augreg default)."""
  model = _timm('vit_tiny_patch16_224', **SMALL_VIT)
  path = _save(model, tmp_path / 'vit.safetensors')
  images = _images(2, 32)
  h = _ssljax_h(path, images, 'vit_tiny_patch16_224')
  assert _relative(h, _timm_h(model, images, 0.5, 0.5)) <= 1e-5


def test_vit_resampled_grid_and_one_channel_match_timm(tmp_path):
  """The position table of a 2x2 grid resampled to 3x3 as timm's resample_abs_pos_embed; one
  channel from three as timm's adapt_input_conv (the kernel's channels summed)."""
  from timm.layers import resample_abs_pos_embed
  from timm.models import adapt_input_conv

  model = _timm('vit_tiny_patch16_224', **SMALL_VIT)
  path = _save(model, tmp_path / 'vit.pth')
  state = model.state_dict()

  bigger = _timm('vit_tiny_patch16_224', img_size=48, depth=2)
  moved = dict(state, pos_embed=resample_abs_pos_embed(state['pos_embed'], (3, 3)))
  bigger.load_state_dict(moved, strict=True)
  images = _images(2, 48)
  h = _ssljax_h(path, images, 'vit_tiny_patch16_224', image_size=48)
  assert _relative(h, _timm_h(bigger, images, 0.5, 0.5)) <= 1e-5

  gray = _timm('vit_tiny_patch16_224', in_chans=1, **SMALL_VIT)
  w = state['patch_embed.proj.weight']
  gray.load_state_dict(dict(state, **{'patch_embed.proj.weight': adapt_input_conv(1, w)}))
  images = _images(2, 32, channels=1)
  h = _ssljax_h(path, images, 'vit_tiny_patch16_224', channels=1)
  assert _relative(h, _timm_h(gray, images, 0.5, 0.5)) <= 1e-5


def test_resnet_h_matches_timm_with_symmetric_padding(tmp_path):
  """timm's ResNet-18 (its ImageNet statistics, BatchNorm randomized); the file alone says the
  architecture. ssljax's old SAME padding on the same weights is far off."""
  model = _timm('resnet18')
  state = dict(model.state_dict())
  state['fc.weight'], state['fc.bias'] = torch.zeros(10, 512), torch.zeros(10)  # a classifier
  path = _save(state, tmp_path / 'resnet18.pth')
  images = _images(2, 32)
  reference = _timm_h(model, images, *IMAGENET)
  imported = import_encoder(path)
  assert imported.config.model.padding == 'torch'
  assert 'not used: fc.weight (the classifier)' in imported.report
  assert _relative(_ssljax_h(path, images), reference) <= 1e-5

  imported.config.model.padding = 'same'
  encoder = models.build_encoder(imported.config)
  same = np.asarray(encoder.apply(imported.variables, images, train=False))
  assert _relative(same, reference) > 1e-2


# ----------------------------------------------------------------------------- refusals


class _Payload:
  def __reduce__(self):
    return (os.system, ('touch ran',))


def test_a_pickle_with_code_is_refused(tmp_path):
  path = tmp_path / 'evil.pth'
  with open(path, 'wb') as f:
    pickle.dump({'patch_embed.proj.weight': _Payload()}, f, protocol=2)
  with pytest.raises(WeightsError, match=r'evil\.pth: refused to load.*weights_only=True'):
    import_encoder(str(path))
  assert not os.path.exists('ran') and not os.path.exists(tmp_path / 'ran')


def test_pth_without_torch_names_the_extra(tmp_path, monkeypatch):
  path = tmp_path / 'weights.pth'
  path.write_bytes(b'')
  monkeypatch.setitem(sys.modules, 'torch', None)
  with pytest.raises(WeightsError, match=r"pip install 'ssljax\[torch\]'"):
    files.read(str(path))


def test_keys_and_shapes_that_do_not_fit_are_named(tmp_path):
  state = _timm('vit_tiny_patch16_224', **SMALL_VIT).state_dict()
  extra = _save(dict(state, **{'blocks.0.ls1.gamma': torch.ones(192)}), tmp_path / 'a.pth')
  with pytest.raises(
    WeightsError, match=r'a\.pth: in the file but not in the encoder: blocks\.0\.ls1\.gamma'
  ):
    import_encoder(extra, 'vit_tiny_patch16_224')
  missing = _save({k: v for k, v in state.items() if k != 'norm.weight'}, tmp_path / 'b.pth')
  with pytest.raises(WeightsError, match=r'missing from the file: norm\.weight'):
    import_encoder(missing, 'vit_tiny_patch16_224')
  with pytest.raises(WeightsError, match=r'192 wide, but model=.vit_small_patch16_224. is 384'):
    import_encoder(missing, 'vit_small_patch16_224')
  with pytest.raises(WeightsError, match='does not say its input statistics'):
    import_encoder(extra)  # a plain timm ViT: augreg (0.5) or DINO (ImageNet)?
  with pytest.raises(WeightsError, match=r'not a weight file'):
    import_encoder(str(tmp_path / 'model.npz'))


# ----------------------------------------------------------------------------- official layouts


def _tiny_vit_state(seed: int, *, cls: bool = True) -> dict:
  """A timm ViT's state dict of width 192, 1 block, 16-px patches over 32 px (timm's names are
  the official repositories' names for the encoder)."""
  kwargs = dict(img_size=32, depth=1)
  if not cls:
    kwargs.update(class_token=False, global_pool='avg', fc_norm=False)
  return dict(_timm('vit_tiny_patch16_224', seed, **kwargs).state_dict())


def _ijepa_predictor(width: int, pred: int, grid: int) -> dict:
  """The keys and shapes of I-JEPA's VisionTransformerPredictor (src/models/vision_transformer.py)
  with one block."""
  state = {
    'predictor_embed.weight': torch.randn(pred, width),
    'predictor_embed.bias': torch.randn(pred),
    'mask_token': torch.randn(1, 1, pred),
    'predictor_pos_embed': torch.from_numpy(vit.sincos_2d(pred, grid, grid))[None],
    'predictor_norm.weight': torch.ones(pred),
    'predictor_norm.bias': torch.zeros(pred),
    'predictor_proj.weight': torch.randn(width, pred),
    'predictor_proj.bias': torch.randn(width),
  }
  block = timm.models.vision_transformer.Block(pred, 2, qkv_bias=True).state_dict()
  return state | {f'predictor_blocks.0.{k}': v for k, v in block.items()}


def _mae_checkpoint(path):
  """(encoder, decoder) state dicts saved at `path` with the keys of MAE's misc.save_model: a
  ViT-Ti/16 encoder of one block at 32 px and a decoder 64 wide, one block, 2 heads."""
  encoder = _tiny_vit_state(3)
  encoder['pos_embed'] = torch.cat(
    [torch.zeros(1, 1, 192), torch.from_numpy(vit.sincos_2d(192, 2, 2))[None]], dim=1
  )
  decoder = {
    'mask_token': torch.zeros(1, 1, 64),
    'decoder_embed.weight': torch.randn(64, 192),
    'decoder_embed.bias': torch.randn(64),
    'decoder_pos_embed': torch.cat(
      [torch.zeros(1, 1, 64), torch.from_numpy(vit.sincos_2d(64, 2, 2))[None]], dim=1
    ),
    'decoder_norm.weight': torch.ones(64),
    'decoder_norm.bias': torch.zeros(64),
    'decoder_pred.weight': torch.randn(768, 64),
    'decoder_pred.bias': torch.randn(768),
  }
  block = timm.models.vision_transformer.Block(64, 2, qkv_bias=True).state_dict()
  decoder |= {f'decoder_blocks.0.{k}': v for k, v in block.items()}
  torch.save({'model': encoder | decoder}, path)
  return encoder, decoder


def test_official_dino_mae_ijepa_layouts_load(tmp_path):
  """Checkpoints with each official repository's keys (DINO's main_dino.py save_dict, MAE's
  misc.save_model, I-JEPA's train.py save_checkpoint): the evaluated network becomes the
  encoder, and the report names every other part."""
  teacher, student = _tiny_vit_state(1), _tiny_vit_state(2)
  head = {'head.mlp.0.weight': torch.randn(32, 192), 'head.last_layer.weight_g': torch.ones(1, 8)}
  dino = {
    'teacher': {**{f'backbone.{k}': v for k, v in teacher.items()}, **head},
    'student': {f'module.backbone.{k}': v for k, v in student.items()}
    | {f'module.{k}': v for k, v in head.items()},
    'optimizer': {'state': {0: {'exp_avg': torch.zeros(3)}}, 'param_groups': [{'lr': 0.1}]},
    'epoch': 100,
    'args': argparse.Namespace(arch='vit_small', patch_size=16),
    'dino_loss': {'center': torch.zeros(1, 32)},
  }
  torch.save(dino, tmp_path / 'dino.pth')
  out = import_encoder(str(tmp_path / 'dino.pth'))
  assert out.layout == 'dino' and out.config.model.pixel_mean == pixels.IMAGENET_MEAN
  np.testing.assert_array_equal(out.variables['params']['cls_token'], teacher['cls_token'].numpy())
  assert 'not used: teacher/head.mlp.0.weight (the DINO head)' in out.report
  assert any(line.startswith('not used: student/...') for line in out.report)
  assert 'not an array, not used: args' in out.report
  student_out = import_encoder(str(tmp_path / 'dino.pth'), part='student')
  np.testing.assert_array_equal(
    student_out.variables['params']['cls_token'], student['cls_token'].numpy()
  )

  encoder, decoder = _mae_checkpoint(tmp_path / 'mae.pth')
  out = import_encoder(str(tmp_path / 'mae.pth'))
  assert out.layout == 'mae'
  assert 'decoder: 19 arrays -> ssljax MAEDecoder (1 blocks' in out.report[-1]
  np.testing.assert_array_equal(out.variables['params']['pos_embed'], encoder['pos_embed'].numpy())

  context, target = _tiny_vit_state(4, cls=False), _tiny_vit_state(5, cls=False)
  ijepa = {
    'encoder': {f'module.{k}': v for k, v in context.items()},
    'target_encoder': {f'module.{k}': v for k, v in target.items()},
    'predictor': {f'module.{k}': v for k, v in _ijepa_predictor(192, 96, 2).items()},
    'opt': {'state': {}, 'param_groups': []},
    'epoch': 300,
    'loss': 0.1,
  }
  torch.save(ijepa, tmp_path / 'ijepa.pth')
  out = import_encoder(str(tmp_path / 'ijepa.pth'))
  assert out.layout == 'ijepa' and not out.config.model.cls_token
  assert out.config.model.pool == 'mean'
  assert 'predictor: 19 arrays -> ssljax I-JEPA Predictor (1 blocks' in out.report[-1]
  gap = _timm(
    'vit_tiny_patch16_224',
    5,
    img_size=32,
    depth=1,
    class_token=False,
    global_pool='avg',
    fc_norm=False,
  )
  images = _images(2, 32)
  h = _ssljax_h(tmp_path / 'ijepa.pth', images)
  assert _relative(h, _timm_h(gap, images, *IMAGENET)) <= 1e-5


# ----------------------------------------------------------------------------- warm starts


def test_init_from_a_weight_file(tmp_path, config_file, shrink):
  """config.init_from=FILE: the run's config must build the file's encoder (each differing field
  named with its flag) and say its pixel statistics; then the encoder is the file's, the one
  channel of digits adapted from three."""
  config = shrink(config_file('dino_digits.py'), source='digits')
  m = config.model
  m.vit_width, m.vit_depth, m.vit_heads, m.patch_size = 0, 1, 0, 8
  config.init_from = _save(_timm('vit_tiny_patch16_224', img_size=32, depth=1), tmp_path / 'w.pth')
  config.init_from_model = 'vit_tiny_patch16_224.dino'
  mesh = sharding.make_mesh()
  method, _, _, init, _ = build.build_run(config, mesh, data.dataset_info(config))
  abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
  with pytest.raises(
    ConfigError, match=r'model\.patch_size=8 \(the file: 16\).*--config\.model\.patch_size=16'
  ):
    restore.prepare_warm_start(config, method, abstract, str(tmp_path / 'run'))
  m.patch_size = 16
  method, _, _, init, _ = build.build_run(config, mesh, data.dataset_info(config))
  abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
  with pytest.raises(ConfigError, match=r'pixel_mean and pixel_std are the encoder default'):
    restore.prepare_warm_start(config, method, abstract, str(tmp_path / 'run'))
  m.pixel_mean, m.pixel_std = (0.45,), (0.23,)
  warm = restore.prepare_warm_start(config, method, abstract, str(tmp_path / 'run'))
  assert warm.not_loaded == () and len(warm.loaded) == len(
    jax.tree.leaves(abstract.params['encoder'])
  )
  assert any('3 input channels adapted to 1' in n for n in warm.notes)
  assert any('resampled from 5 rows to 2' in n for n in warm.notes)


def test_init_from_an_official_mae_checkpoint_loads_its_decoder(tmp_path, config_file, shrink):
  """An MAE run from MAE's own checkpoint: the encoder and the decoder are the file's (so
  pretraining goes on where the authors stopped); a decoder of another size is refused."""
  _, decoder = _mae_checkpoint(tmp_path / 'mae.pth')
  config = shrink(config_file('mae_digits.py'))  # synthetic RGB: the decoder predicts 16x16x3
  config.data.image_size = config.augment.image_size = 32
  m = config.model
  m.vit_width, m.vit_depth, m.vit_heads, m.patch_size = 0, 1, 0, 16
  m.pixel_mean, m.pixel_std = pixels.IMAGENET_MEAN, pixels.IMAGENET_STD
  config.mae.decoder_width, config.mae.decoder_depth, config.mae.decoder_heads = 64, 2, 2
  config.init_from = str(tmp_path / 'mae.pth')
  mesh = sharding.make_mesh()

  def warm_start():
    method, _, _, init, _ = build.build_run(config, mesh, data.dataset_info(config))
    abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
    warm = restore.prepare_warm_start(config, method, abstract, str(tmp_path / 'run'))
    fresh = jax.jit(init)(jax.random.PRNGKey(0))
    return restore.warm_start(method, fresh, warm), warm

  with pytest.raises(ConfigError, match=r'its decoder does not fit.*Block_1'):
    warm_start()
  config.mae.decoder_depth = 1
  state, warm = warm_start()
  loaded = state.params['decoder']
  assert len(jax.tree.leaves(loaded)) == len(jax.tree.leaves(warm.parts['decoder'])) == 19
  np.testing.assert_array_equal(loaded['Dense_0']['kernel'], decoder['decoder_embed.weight'].T)
  np.testing.assert_array_equal(loaded['Dense_1']['bias'], decoder['decoder_pred.bias'])
  np.testing.assert_array_equal(
    loaded['Block_0']['mlp']['fc2']['kernel'], decoder['decoder_blocks.0.mlp.fc2.weight'].T
  )


def test_init_from_an_official_ijepa_checkpoint_loads_its_predictor(tmp_path, config_file, shrink):
  """An I-JEPA run from I-JEPA's own checkpoint: the target encoder and the predictor are the
  file's, every variable of ssljax's Predictor filled by name and shape."""
  predictor = _ijepa_predictor(192, 96, 2)
  target = _tiny_vit_state(5, cls=False)
  target['pos_embed'] = torch.from_numpy(vit.sincos_2d(192, 2, 2))[None]  # I-JEPA's fixed table
  checkpoint = {
    'encoder': {f'module.{k}': v for k, v in _tiny_vit_state(4, cls=False).items()},
    'target_encoder': {f'module.{k}': v for k, v in target.items()},
    'predictor': {f'module.{k}': v for k, v in predictor.items()},
  }
  torch.save(checkpoint, tmp_path / 'ijepa.pth')
  config = shrink(config_file('ijepa_digits.py'))
  config.data.image_size = config.augment.image_size = 32
  m = config.model
  m.vit_width, m.vit_depth, m.vit_heads, m.patch_size = 0, 1, 0, 16
  m.pixel_mean, m.pixel_std = pixels.IMAGENET_MEAN, pixels.IMAGENET_STD
  config.ijepa.pred_width, config.ijepa.pred_depth, config.ijepa.pred_heads = 96, 1, 2
  config.ijepa.min_keep = 1  # a 2x2 grid
  config.init_from = str(tmp_path / 'ijepa.pth')
  mesh = sharding.make_mesh()
  method, _, _, init, _ = build.build_run(config, mesh, data.dataset_info(config))
  abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
  warm = restore.prepare_warm_start(config, method, abstract, str(tmp_path / 'run'))
  state = restore.warm_start(method, jax.jit(init)(jax.random.PRNGKey(0)), warm)
  loaded = state.params['predictor']
  assert len(jax.tree.leaves(loaded)) == len(jax.tree.leaves(abstract.params['predictor']))
  np.testing.assert_array_equal(loaded['embed']['kernel'], predictor['predictor_embed.weight'].T)
  np.testing.assert_array_equal(loaded['proj']['bias'], predictor['predictor_proj.bias'])
  np.testing.assert_array_equal(
    state.params['encoder']['blocks_0']['mlp']['fc1']['bias'], target['blocks.0.mlp.fc1.bias']
  )


def test_init_from_model_needs_a_weight_file(config_file):
  from ssljax import train

  config = config_file('simclr_digits.py')
  config.init_from_model = 'resnet50'
  with pytest.raises(
    ConfigError, match=r'config\.init_from_model=.resnet50.: only with a weight file'
  ):
    train.validate(config, sharding.make_mesh())


def test_runs_saved_before_padding_keep_same(tmp_path, config_file):
  saved = json.loads(config_file('simclr_digits.py').to_json_best_effort())
  del saved['model']['padding']
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  assert restore.load_config(str(tmp_path)).model.padding == 'same'


# ----------------------------------------------------------------------------- export


def test_export_loads_in_timm_strictly_and_round_trips(tmp_path, config_file, shrink):
  """A DINO-digits ViT (16 wide, 4-px patches, 1 channel) in timm's form: timm loads it with
  strict=True and gives ssljax's h; read back, every variable is the same, bit for bit."""
  config = shrink(config_file('dino_digits.py'), source='digits')
  encoder = models.build_encoder(config)
  images = _images(3, 16, channels=1)
  variables = jax.tree.map(np.asarray, encoder.init(jax.random.PRNGKey(1), images, train=False))
  state, meta = timm_form.timm_form(config, variables, channels=1)
  model = timm.create_model(meta['timm']['model'], pretrained=False, **meta['timm']['kwargs'])
  model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, strict=True)
  h = np.asarray(encoder.apply(variables, images, train=False))
  assert _relative(h, _timm_h(model.eval(), images, meta['pixel_mean'], meta['pixel_std'])) <= 1e-5

  files.write_safetensors(str(tmp_path / 'model.safetensors'), state)
  (tmp_path / 'config.json').write_text(json.dumps(meta))
  back = import_encoder(str(tmp_path / 'model.safetensors'))
  jax.tree.map(np.testing.assert_array_equal, back.variables, variables)
  assert back.config.model.pixel_mean == tuple(meta['pixel_mean'])


def test_export_refuses_what_timm_cannot_express(config_file, shrink):
  config = shrink(config_file('simclr_digits.py'), source='digits')
  with pytest.raises(WeightsError, match=r"stem='small'.*no PyTorch name"):
    timm_form.timm_form(config, {'params': {}}, 1)
  config.model.stem = 'imagenet'
  with pytest.raises(WeightsError, match=r"padding='same'.*--config\.model\.padding=torch"):
    timm_form.timm_form(config, {'params': {}}, 1)


# ----------------------------------------------------------------------------- slow: full size

# (case, timm name, timm kwargs, load_encoder options, image side, channels, input statistics)
FULL_SIZE = [
  ('vit_tiny_patch16_224', 'vit_tiny_patch16_224', {}, {}, 224, 3, 'half'),
  ('vit_small_patch16_224', 'vit_small_patch16_224', {}, {}, 224, 3, 'half'),
  ('vit_base_patch16_224', 'vit_base_patch16_224', {}, {}, 224, 3, 'half'),
  ('vit_large_patch14_224', 'vit_large_patch14_224', {}, {}, 224, 3, 'half'),
  ('vit_small/16, 224 -> 160 px', 'vit_small_patch16_224', {}, {'image_size': 160}, 160, 3, 'half'),
  ('vit_small/16, 1 channel', 'vit_small_patch16_224', {}, {'channels': 1}, 224, 1, 'half'),
  ('resnet50', 'resnet50', {}, {}, 224, 3, 'imagenet'),
  ('resnet50, 1 channel', 'resnet50', {}, {'channels': 1}, 224, 1, 'imagenet'),
]


@pytest.mark.slow  # full-size models at 224 px: about a minute
@pytest.mark.parametrize('case', FULL_SIZE, ids=[c[0] for c in FULL_SIZE])
def test_full_size_h_matches_timm(case, tmp_path):
  from timm.layers import resample_abs_pos_embed
  from timm.models import adapt_input_conv

  label, name, kwargs, options, side, channels, stats = case
  model = _timm(name, **kwargs)
  path = _save(model, tmp_path / 'model.safetensors')
  state = dict(model.state_dict())
  first = 'patch_embed.proj.weight' if 'vit' in name else 'conv1.weight'
  if channels == 1:
    state[first] = adapt_input_conv(1, state[first])
  if side != 224:
    g = side // model.patch_embed.patch_size[0]
    state['pos_embed'] = resample_abs_pos_embed(state['pos_embed'], (g, g))
  reference = _timm(name, in_chans=channels, **({'img_size': side} if 'vit' in name else {}))
  reference.load_state_dict(state, strict=True)
  mean, std = (0.5, 0.5) if stats == 'half' else IMAGENET
  if channels == 1:
    mean, std = float(np.mean(mean)), float(np.mean(std))
  images = _images(2, side, channels)
  h = _ssljax_h(path, images, name, **options)
  error = _relative(h, _timm_h(reference, images, mean, std))
  print(f'\n| {label} | {h.shape[1]} | {error:.1e} |')
  assert error <= 1e-4


@pytest.mark.slow  # a DINO run on digits (20 steps), then the export command: ~1 minute
def test_dino_digits_run_exported_loads_in_timm(tmp_path, config_file):
  from ssljax import train

  config = config_file('dino_digits.py')
  config.total_steps, config.batch_size, config.eval = 20, 32, ()
  config.health.images, config.report = 0, False
  config.visualize.embeddings = config.visualize.attention = False
  run, out = str(tmp_path / 'run'), str(tmp_path / 'export')
  train.train_and_evaluate(config, run)
  proc = subprocess.run(
    [sys.executable, '-m', 'ssljax.export', f'--workdir={run}', f'--out={out}'],
    cwd=ROOT,
    env={**os.environ, 'JAX_PLATFORMS': 'cpu'},
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  meta = json.loads(open(os.path.join(out, 'config.json')).read())
  assert meta['timm']['model'] == 'vit_tiny_patch16_224' and meta['source']['method'] == 'dino'

  # The five lines of docs/weights.md.
  from safetensors.torch import load_file

  model = timm.create_model(meta['timm']['model'], pretrained=False, **meta['timm']['kwargs'])
  model.load_state_dict(load_file(os.path.join(out, 'model.safetensors')), strict=True)
  images = data.load_eval_split(restore.load_config(run), 'test')[0][:64]
  theirs = _timm_h(model.eval(), images, meta['pixel_mean'], meta['pixel_std'])

  apply_fn, params = ssljax.load_encoder(run)
  h = np.asarray(apply_fn(params, images))
  error = _relative(h, theirs)
  print(f'\nDINO digits run in timm: max relative difference of h {error:.1e}')
  assert error <= 1e-5
  back_fn, back = ssljax.load_encoder(os.path.join(out, 'model.safetensors'))
  jax.tree.map(np.testing.assert_array_equal, back, params)  # ssljax -> timm -> ssljax
  np.testing.assert_array_equal(np.asarray(back_fn(back, images)), h)


@pytest.mark.slow  # the three frozen-feature protocols on digits: ~30 s
def test_evaluate_published_weights_without_training(tmp_path, config_file, shrink):
  from ssljax import evaluate

  config = shrink(config_file('dino_digits.py'), source='digits')
  m = config.model
  m.vit_width, m.vit_depth, m.vit_heads, m.patch_size = 0, 1, 0, 8
  m.pixel_mean, m.pixel_std = (0.45,), (0.23,)
  weights = _timm('vit_tiny_patch16_224', img_size=16, patch_size=8, depth=1)
  config.init_from = _save(weights, tmp_path / 'w.pth')
  config.init_from_model = 'vit_tiny_patch8_224'
  config.name = 'published'
  out = evaluate.evaluate_run(config, str(tmp_path / 'run'))
  assert set(out['pretrained']) == {'linear', 'linear_2_per_class', 'knn'} and out['step'] == 0
  assert out['pretrained'] != out['random_init']
  assert os.path.exists(tmp_path / 'run' / 'eval.json')
