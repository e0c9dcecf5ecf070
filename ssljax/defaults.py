"""Defaults shared by every config (configs/*.py start from `base_config()` and override)."""

import ml_collections


def augment_defaults(image_size: int) -> ml_collections.ConfigDict:
  """SimCLR's augmentation knobs (Chen et al. 2020, appendix A); views override them."""
  return ml_collections.ConfigDict(
    dict(
      image_size=image_size,  # output side of every view (pixels)
      crop_scale=(0.08, 1.0),  # random resized crop: fraction of the image area
      crop_ratio=(3 / 4, 4 / 3),  # and aspect-ratio range
      flip=True,  # random horizontal flip, p = 0.5
      color_strength=1.0,  # s: brightness, contrast, saturation 0.8 s, hue 0.2 s
      color_jitter=(0.8, 0.8, 0.8, 0.2),  # (brightness, contrast, saturation, hue) at s = 1
      color_prob=0.8,  # p of applying the colour jitter (ops in random order)
      grayscale_prob=0.2,
      blur_prob=0.5,
      blur_kernel_frac=0.1,  # Gaussian kernel side as a fraction of the image side
      blur_sigma=(0.1, 2.0),
      solarize_prob=0.0,
      count=1,  # how many views this spec produces (multi-crop)
    )
  )


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = ''  # the run's name: default workdir is runs/<name>
  c.method = 'simclr'
  c.seed = 0

  c.data = ml_collections.ConfigDict(
    dict(
      source='digits',  # digits | tfds | idx | folder | synthetic
      name='',  # tfds dataset name (source=tfds)
      data_dir='',  # tfds data_dir (empty: tfds default)
      path='',  # directory for idx / folder sources
      train_split='train',
      test_split='test',
      image_size=32,  # eval images are resized to this
      num_classes=10,  # synthetic source only; others read it from the data
      channels=1,  # synthetic source only
      num_examples=1024,  # synthetic source only
    )
  )
  c.augment = augment_defaults(32)
  # One entry per view spec, taken in sorted order of the names; each overrides c.augment.
  c.views = ml_collections.ConfigDict(dict(view1={}, view2={}))

  c.model = ml_collections.ConfigDict(
    dict(
      encoder='resnet18',  # resnet18 | resnet34 | resnet50
      stem='small',  # small (3x3 conv, no max-pool: 28-64 px) | imagenet (7x7/2 + max-pool)
      width=64,  # channels of the first stage
      proj_hidden=0,  # 0: the width of h
      proj_dim=128,
      proj_layers=2,
      pred_hidden=0,  # BYOL's predictor hidden width (0: as the projector's)
      compute_dtype='float32',  # or bfloat16 (params stay float32)
    )
  )
  c.loss = ml_collections.ConfigDict(dict(temperature=0.5))
  # EMA teacher (BYOL's target network): tau goes from `base` to 1 with a cosine over the run.
  c.ema = ml_collections.ConfigDict(dict(base=0.996))
  c.eval_encoder = 'online'  # methods with a teacher: evaluate 'online' or 'target'

  c.batch_size = 256  # global, over all devices and hosts
  c.epochs = 10
  c.total_steps = 0  # 0: epochs * (train examples // batch_size)
  c.warmup_epochs = 1.0
  c.optimizer = 'lars'  # lars | adamw
  c.base_lr = 0.3
  c.lr_scaling = 'linear'  # linear: base_lr * B / 256 | sqrt: base_lr * sqrt(B) | none
  c.weight_decay = 1e-6
  c.momentum = 0.9
  c.b2 = 0.999  # adamw

  c.log_every = 20
  c.checkpoint_every = 500
  c.keep_checkpoints = 3
  c.eval_every = 0  # 0: only at the end
  c.eval = ('linear', 'linear_few', 'knn')
  c.eval_config = ml_collections.ConfigDict(
    dict(
      few_per_class=5,  # k labelled images per class for linear_few
      subset_seed=0,  # which k images: fixed, so every method is probed on the same ones
      knn_k=20,
      knn_temperature=0.07,
      batch_size=256,
      max_examples=0,  # 0: whole split; else cap each split (ImageNet-sized data)
      random_init=True,  # also evaluate the randomly initialised encoder
    )
  )
  return c


def byol_config(image_size: int) -> ml_collections.ConfigDict:
  """BYOL's defaults: 4096 -> 256 heads, LARS, asymmetric views (Grill et al. 2020, table 6)."""
  c = base_config()
  c.method = 'byol'
  c.augment = augment_defaults(image_size)
  c.augment.color_jitter = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue
  c.views = ml_collections.ConfigDict(
    dict(
      view1=dict(blur_prob=1.0, solarize_prob=0.0),
      view2=dict(blur_prob=0.1, solarize_prob=0.2),
    )
  )
  c.model.proj_hidden = 4096
  c.model.proj_dim = 256
  c.weight_decay = 1.5e-6
  return c
