"""Defaults shared by every config (configs/*.py start from `base_config()` and override)."""

import ml_collections
from ml_collections.config_dict import placeholder


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
  # Warm start: another run's workdir. A new run starts its encoder (online and every EMA copy)
  # from that run's latest encoder, by name and shape; heads start fresh (REMEDIS's pipeline).
  c.init_from = ''

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
      # A corruption of the evaluation images (ssljax.data.shifts): '' (none) | gaussian_noise |
      # contrast | rotate; pretraining views are never shifted. Usually set in eval_config.ood_data.
      shift='',
      shift_severity=3,  # 1..5 (ImageNet-C's levels; rotate: 15, 30, 45, 60, 90 degrees)
      shift_seed=0,  # keys the noise of each example (with its index in the split)
    )
  )
  c.augment = augment_defaults(32)
  # One entry per view spec, taken in sorted order of the names; each overrides c.augment.
  c.views = ml_collections.ConfigDict(dict(view1={}, view2={}))

  c.model = ml_collections.ConfigDict(
    dict(
      encoder='resnet18',  # resnet18 | resnet34 | resnet50 | vit_tiny | vit_small | vit_base
      stem='small',  # small (3x3 conv, no max-pool: 28-64 px) | imagenet (7x7/2 + max-pool)
      width=64,  # channels of the first stage
      proj_hidden=0,  # 0: the width of h
      proj_dim=128,
      proj_layers=2,
      pred_hidden=0,  # BYOL's predictor hidden width (0: as the projector's)
      compute_dtype='float32',  # or bfloat16 (params stay float32)
      # ViT encoders only:
      patch_size=16,
      pos_embed='learned',  # learned | sincos (fixed 2-D)
      drop_path=0.0,  # stochastic depth at the last block (linear from 0 at the first)
      pool='cls',  # h = the CLS token | mean of the patch tokens
      cls_token=True,  # False: patch tokens only (I-JEPA), needs pool='mean'
      # Pixels in [0, 1] enter as (x - mean) / std: about ImageNet's per-channel mean and std,
      # which the official code normalizes with (ResNets begin with BatchNorm and need none).
      pixel_mean=0.5,
      pixel_std=0.25,
      vit_width=0,  # 0: the named size's; else override width / depth / heads (small data)
      vit_depth=0,
      vit_heads=0,
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
  c.weight_decay_end = placeholder(float)  # adamw: cosine from weight_decay to this (None: fixed)
  c.grad_clip = 0.0  # > 0: clip the gradient's global norm

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
      # linear, knn, finetune and supervised run once per budget, keys `linear@10_per_class`:
      # 'N_per_class' or 'P%' (round(P/100 * class count) of each class, at least 1). Empty: all
      # labels, plain keys. Class-balanced, drawn with subset_seed: the same images for every
      # method.
      label_budgets=(),
      # A second test set: config.data with these fields replaced (None: keep), e.g.
      # dict(shift='gaussian_noise') or dict(source='idx', path=DIR). Results get keys `.../ood`.
      ood_data=ml_collections.ConfigDict(
        dict(shift=placeholder(str), shift_severity=placeholder(int))
      ),
      # 'finetune' trains the whole encoder + a linear head on h with cross-entropy; 'supervised'
      # runs the same recipe from a random init (the baseline without pretraining).
      finetune=ml_collections.ConfigDict(
        dict(
          epochs=30.0,  # passes over the labelled subset
          min_steps=100,  # at least this many steps (tiny label budgets)
          warmup_epochs=3.0,
          batch_size=64,  # global; the devices must divide it
          optimizer='auto',  # auto: adamw for ViTs, sgd (Nesterov) for ResNets | sgd | lars | adamw
          base_lr=placeholder(float),  # None: sgd 0.1, lars 0.1, adamw 4e-3; times B / 256
          weight_decay=placeholder(float),  # None: sgd 1e-4, lars 1e-6, adamw 0.05
          momentum=0.9,  # sgd / lars momentum, adamw beta1
          layer_decay=0.75,  # ViTs: lr of block i x decay**(depth - i) (MAE: 0.65 B, 0.75 L/H)
          label_smoothing=0.1,
          drop_path=0.1,  # ViTs: stochastic depth while fine-tuning
          crop_scale=placeholder(tuple),  # random resized crop (area); None: config.augment's
          flip=placeholder(bool),  # random horizontal flip; None: config.augment's
          seed=0,  # head init, batch order, augmentations; and the supervised baseline's init
        )
      ),
    )
  )
  # Pictures under WORKDIR/pictures at every evaluation (ssljax.visualize).
  c.visualize = ml_collections.ConfigDict(
    dict(
      embeddings=True,  # 2-D projection of test embeddings, coloured by label, one frame per eval
      projection='pca',  # pca | tsne | umap (pip install umap-learn)
      num_points=1000,  # fixed test examples in every frame
      attention=True,  # ViT encoders: last-block CLS attention of every head
      reconstructions=True,  # MAE: original / masked / reconstruction / visible pasted back
      num_images=6,  # images in the attention / reconstruction pictures
    )
  )
  # WORKDIR/report.md (ssljax.report): summary, results, curves, pictures; rewritten at every
  # evaluation so a run can be read, or copied, without TensorBoard.
  c.report = True
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


def dino_config(image_size: int, local_size: int, num_local: int = 8) -> ml_collections.ConfigDict:
  """DINO's defaults (Caron et al. 2021, official code): multi-crop, AdamW, EMA teacher."""
  c = base_config()
  c.method = 'dino'
  c.augment = augment_defaults(image_size)
  c.augment.color_jitter = (0.4, 0.4, 0.2, 0.1)
  c.augment.crop_scale = (0.4, 1.0)
  # Sorted names: global1, global2, then the local crops; the teacher sees the first two.
  c.views = ml_collections.ConfigDict(
    dict(
      global1=dict(blur_prob=1.0),
      global2=dict(blur_prob=0.1, solarize_prob=0.2),
      local=dict(image_size=local_size, crop_scale=(0.05, 0.4), blur_prob=0.5, count=num_local),
    )
  )
  c.model.encoder = 'vit_small'
  c.model.patch_size = 16
  c.model.drop_path = 0.1
  c.dino = ml_collections.ConfigDict(
    dict(
      out_dim=65536,  # K prototypes
      hidden_dim=2048,
      bottleneck_dim=256,
      num_layers=3,
      norm_last_layer=True,  # the last layer's weight norm fixed at 1
      use_bn=False,  # BatchNorm in the head's MLP (the official use_bn_in_head)
      freeze_last_layer_epochs=1.0,  # no gradient into the last layer at first
      global_views=2,  # the first views (sorted names) are the teacher's
      student_temp=0.1,
      teacher_temp=0.04,  # the final teacher temperature
      warmup_teacher_temp=0.04,  # linear from this to teacher_temp over the epochs below
      warmup_teacher_temp_epochs=0.0,
      center_momentum=0.9,
    )
  )
  c.ema.base = 0.996
  c.eval_encoder = 'target'  # the teacher (DINO evaluates it)
  c.optimizer = 'adamw'
  c.base_lr = 5e-4
  c.momentum = 0.9
  c.b2 = 0.999
  c.weight_decay = 0.04
  c.weight_decay_end = 0.4
  c.grad_clip = 3.0
  c.warmup_epochs = 10.0
  return c


def mae_config(image_size: int) -> ml_collections.ConfigDict:
  """MAE's defaults (He et al. 2022, official code): 75% masking, AdamW (0.9, 0.95), wd 0.05,
  lr 1.5e-4 x B/256; random resized crop (0.2-1) and flip only."""
  c = base_config()
  c.method = 'mae'
  c.augment = augment_defaults(image_size)
  c.augment.crop_scale = (0.2, 1.0)
  c.augment.color_strength = 0.0  # no colour jitter, grayscale, blur or solarize
  c.augment.grayscale_prob = 0.0
  c.augment.blur_prob = 0.0
  c.views = ml_collections.ConfigDict(dict(view1={}))
  c.model.encoder = 'vit_base'
  c.model.patch_size = 16
  c.model.pos_embed = 'sincos'  # MAE's encoder uses fixed 2-D sin-cos positions
  c.mae = ml_collections.ConfigDict(
    dict(
      mask_ratio=0.75,
      decoder_width=512,
      decoder_depth=8,
      decoder_heads=16,
      norm_pix=True,  # targets: each patch normalized by its own mean and variance
    )
  )
  c.optimizer = 'adamw'
  c.base_lr = 1.5e-4
  c.momentum = 0.9
  c.b2 = 0.95
  c.weight_decay = 0.05
  return c


def ijepa_config(image_size: int) -> ml_collections.ConfigDict:
  """I-JEPA's defaults (Assran et al. 2023, official code): ViT-H/14 without CLS, 4 target blocks
  (scale 0.15-0.2, aspect 0.75-1.5) and a context block (0.85-1.0) per image, a 384-wide
  12-block predictor, target encoder momentum 0.996 -> 1 (linear), AdamW with weight decay
  0.04 -> 0.4, random resized crop (0.3-1) as the only augmentation."""
  c = base_config()
  c.method = 'ijepa'
  c.augment = augment_defaults(image_size)
  c.augment.crop_scale = (0.3, 1.0)
  c.augment.flip = False
  c.augment.color_strength = 0.0  # no colour jitter, grayscale, blur or solarize
  c.augment.grayscale_prob = 0.0
  c.augment.blur_prob = 0.0
  c.views = ml_collections.ConfigDict(dict(view1={}))
  c.model.encoder = 'vit_huge'
  c.model.patch_size = 14
  c.model.pos_embed = 'sincos'
  c.model.cls_token = False  # patch tokens only; h = their mean
  c.model.pool = 'mean'
  c.ijepa = ml_collections.ConfigDict(
    dict(
      num_targets=4,
      target_scale=(0.15, 0.2),  # fraction of the patch grid per target block
      target_aspect=(0.75, 1.5),  # height / width
      context_scale=(0.85, 1.0),
      context_aspect=(1.0, 1.0),
      min_keep=10,  # context patches every image keeps
      max_context=0,  # > 0: at most this many context patches (a random subset); 0: no cap
      tries=8,  # redraws for an image whose context would keep fewer than min_keep
      pred_width=384,
      pred_depth=12,
      pred_heads=0,  # 0: the encoder's number of heads (as the official code)
      ema_end=1.0,  # the target momentum goes linearly from ema.base to this
    )
  )
  c.loss = ml_collections.ConfigDict(dict(kind='l2'))  # l2 (the lecture) | smooth_l1 (official)
  c.ema.base = 0.996
  c.eval_encoder = 'target'  # or 'context'
  c.optimizer = 'adamw'
  c.base_lr = 1.25e-4  # x B/256: 1e-3 at the official batch of 2048
  c.momentum = 0.9
  c.b2 = 0.999
  c.weight_decay = 0.04
  c.weight_decay_end = 0.4
  c.warmup_epochs = 40.0
  return c
