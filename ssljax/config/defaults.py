"""Defaults every method shares, one function per section; `base_config` assembles them. A
method's own sections and settings live in its file (`Method.default_config` in
ssljax/methods/<name>.py), which starts from `base_config()`."""

from typing import Any

import ml_collections
from ml_collections.config_dict import placeholder

from ssljax.monitor.collapse import MIN_RANKME, MIN_STD
from ssljax.sharding import mesh_defaults


def augment_defaults(image_size: int) -> ml_collections.ConfigDict:
  """SimCLR's augmentation knobs (Chen et al. 2020, appendix A); views override them."""
  return ml_collections.ConfigDict(
    dict(
      # Where views are made: 'host' (tf.data on the CPUs) or 'device' (inside the jitted train
      # step, from uint8 base images: an accelerator is never input-bound). One value for all views.
      on='host',
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


def data_defaults(image_size: int) -> ml_collections.ConfigDict:
  """config.data: where the images come from and how evaluation reads them."""
  return ml_collections.ConfigDict(
    dict(
      source='digits',  # digits | tfds | idx | folder | synthetic
      name='',  # tfds dataset name (source=tfds)
      data_dir='',  # tfds data_dir (empty: tfds default)
      path='',  # directory for idx / folder sources
      train_split='train',
      test_split='test',
      image_size=image_size,  # eval images are resized to this
      num_classes=10,  # synthetic source only; others read it from the data
      channels=1,  # synthetic source only
      num_examples=1024,  # synthetic source only
      # A corruption of the evaluation images (ssljax.data.shifts): '' (none) | gaussian_noise |
      # contrast | rotate; pretraining views are never shifted. Usually set in eval_config.ood_data.
      shift='',
      shift_severity=3,  # 1..5 (ImageNet-C's levels; rotate: 15, 30, 45, 60, 90 degrees)
      shift_seed=0,  # keys the noise of each example (with its index in the split)
      # folder source: unreadable image files are skipped, counted and named; more than this
      # fraction of the files stops the run (it lists them).
      max_bad_fraction=0.001,
      # folder source, DICOM files: (center, width) after the rescale (CT: Hounsfield units, e.g.
      # (40, 400) soft tissue) instead of each file's own window; None: the file's, else its
      # bit depth's range.
      dicom_window=placeholder(tuple),
      # folder source: labels from a CSV instead of subfolders (docs/medical.md): a path column
      # (relative to data.path), one column per label (1, 0; -1 or blank: uncertain), an
      # optional group column (a patient id) and an optional split column (train / test).
      labels='',
      path_column='path',
      label_columns=(),  # (): every column but the path, group and split columns
      group_column='',  # '': each image its own group
      split_column='split',  # used when the CSV has it; else the groups are split
      uncertain='ignore',  # -1 and blank: ignore (left out) | ones | zeros (CheXpert's U-*)
      test_fraction=0.2,  # of the groups, without a split column
      split_seed=0,  # which groups go to test; the split is written to WORKDIR/splits.csv
      max_bad_rows=0.001,  # fraction of the CSV's rows that may be skipped (named) before a stop
    )
  )


def model_defaults() -> ml_collections.ConfigDict:
  """config.model: the encoder and the heads every method builds on it."""
  return ml_collections.ConfigDict(
    dict(
      encoder='resnet18',  # resnet18 | resnet34 | resnet50 | vit_tiny | vit_small | vit_base
      stem='small',  # small (3x3 conv, no max-pool: 28-64 px) | imagenet (7x7/2 + max-pool)
      width=64,  # channels of the stem and, without stage_widths, of the first stage
      stage_widths=(),  # (): width doubling per stage; else one per stage (the last is h's)
      # ResNets: how stride-2 convolutions and the max-pool pad: same (XLA's SAME, 2 before and 3
      # after for the 7x7/2 stem) | torch (symmetric, as PyTorch, timm and the official SimCLR;
      # weights imported from there need it). Runs saved without the field keep 'same'.
      padding='same',
      proj_hidden=0,  # 0: the width of h
      proj_dim=128,
      proj_layers=2,
      pred_hidden=0,  # BYOL's predictor hidden width (0: as the projector's)
      compute_dtype='float32',  # or bfloat16 (params stay float32)
      # Which kernels run the convolutions, BatchNorm, GELU and attention layout: auto (ssljax's
      # CPU kernels on the CPU backend, XLA's everywhere else) | xla | cpu. Same parameters and
      # checkpoints either way (ssljax/cpu/__init__.py).
      kernels='auto',
      # ViT encoders only:
      patch_size=16,
      pos_embed='learned',  # learned | sincos (fixed 2-D)
      drop_path=0.0,  # stochastic depth at the last block (linear from 0 at the first)
      pool='cls',  # h = the CLS token | mean of the patch tokens
      cls_token=True,  # False: patch tokens only (I-JEPA), needs pool='mean'
      # The blocks as one nn.scan (compile time flat in depth; checkpoints convert between the
      # layouts, models.vit.scan_layout) and which activations the backward pass recomputes:
      # none | nothing_saveable | dots_saveable | dots_with_no_batch_dims_saveable.
      scan=False,
      remat='none',
      # Pixels in [0, 1] enter as (x - mean) / std, one value for every channel or one per
      # channel (models.pixels.IMAGENET_MEAN / _STD; `python -m ssljax.data.scan --path=DIR`
      # prints a folder's). () is the encoder's default: ViTs (0.5,) / (0.25,), about
      # ImageNet's; ResNets none, their stem's BatchNorm rescales (as SimCLR's official code).
      pixel_mean=(),
      pixel_std=(),
      vit_width=0,  # 0: the named size's; else override width / depth / heads (small data)
      vit_depth=0,
      vit_heads=0,
    )
  )


def optim_defaults() -> dict[str, Any]:
  """Batch size, schedule and optimizer: top-level fields of the config (`config.base_lr`),
  merged in by base_config (a dict: ConfigDict.update would sort them)."""
  return dict(
    batch_size=256,  # global, over all devices and hosts
    # > 1: each step's gradient summed over this many micro-batches of batch_size / accum_steps
    # (less activation memory, the same update); refused by methods whose loss couples examples.
    accum_steps=1,
    epochs=10,
    total_steps=0,  # 0: epochs * (train examples // batch_size)
    warmup_epochs=1.0,
    optimizer='lars',  # lars | adamw
    base_lr=0.3,
    lr_scaling='linear',  # linear: base_lr * B / 256 | sqrt: base_lr * sqrt(B) | none
    weight_decay=1e-6,
    momentum=0.9,
    b2=0.999,  # adamw
    weight_decay_end=placeholder(float),  # adamw: cosine from weight_decay to this (None: fixed)
    grad_clip=0.0,  # > 0: clip the gradient to this norm
    grad_clip_by='global_norm',  # or parameter_norm: each parameter's own (DINO's official)
  )


def health_defaults() -> ml_collections.ConfigDict:
  """config.health, label-free (ssljax.monitor.health and .collapse): at each log step, RankMe
  and the normalised std of h on the first `images` un-augmented training images (0: off). Below
  either floor the run warns once, with the method's remedies; stop_on_collapse stops it instead,
  without saving the collapsed state."""
  return ml_collections.ConfigDict(
    dict(images=512, min_rankme=MIN_RANKME, min_std=MIN_STD, stop_on_collapse=False)
  )


def finetune_defaults() -> ml_collections.ConfigDict:
  """config.eval_config.finetune: the recipe of the 'finetune' and 'supervised' protocols."""
  return ml_collections.ConfigDict(
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
      mixup=0.0,  # Beta alpha of mixup (MAE: 0.8); 0: off
      cutmix=0.0,  # Beta alpha of cutmix (MAE: 1.0); 0: off
      mix_switch_prob=0.5,  # both on: the chance a batch uses cutmix
      random_erasing=0.0,  # the chance an image gets an erased rectangle (MAE: 0.25)
      randaugment='',  # timm's name, e.g. rand-m9-mstd0.5-inc1 (MAE's); '': off
      seed=0,  # head init, batch order, augmentations; and the supervised baseline's init
    )
  )


def linear_sgd_defaults() -> ml_collections.ConfigDict:
  """config.eval_config.linear_sgd: the papers' linear protocol ('linear_sgd' in config.eval,
  evaluators/linear_sgd.py), a preset and the fields that override it."""
  return ml_collections.ConfigDict(
    dict(
      preset='auto',  # simclr | byol | dino | mae; auto: the method's (I-JEPA: mae)
      # None: the preset's value
      optimizer=placeholder(str),  # sgd (Nesterov) | momentum | lars
      base_lr=placeholder(float),  # times B / 256
      weight_decay=placeholder(float),
      epochs=placeholder(float),
      warmup_epochs=placeholder(float),
      batch_size=placeholder(int),  # global; the devices must divide it
      head_norm=placeholder(bool),  # BatchNorm without affine before the head (MAE)
      last_blocks=placeholder(int),  # ViTs: concatenate the CLS of the last n blocks (DINO 4)
      head_init_std=placeholder(float),  # 0: zeros (SimCLR)
      min_steps=100,
      crop_scale=placeholder(tuple),  # None: config.augment's
      flip=placeholder(bool),  # None: config.augment's
      seed=0,
    )
  )


def eval_defaults() -> ml_collections.ConfigDict:
  """config.eval_config: how the protocols in config.eval probe the encoder."""
  return ml_collections.ConfigDict(
    dict(
      few_per_class=5,  # k labelled images per class for linear_few
      subset_seed=0,  # which k images: fixed, so every method is probed on the same ones
      knn_k=20,
      knn_temperature=0.07,
      batch_size=256,
      max_examples=0,  # 0: whole split; else the first N of each split
      # Splits are encoded a batch at a time and only the features h stay in host memory:
      # 'float16' halves that (ImageNet's train split with 2048-d features: 5 GB, not 10).
      feature_dtype='float32',
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
      finetune=finetune_defaults(),
      # 'linear_sgd' in config.eval: the papers' linear protocol (evaluators/linear_sgd.py).
      linear_sgd=linear_sgd_defaults(),
    )
  )


def visualize_defaults() -> ml_collections.ConfigDict:
  """config.visualize: the pictures under WORKDIR/pictures at every evaluation."""
  return ml_collections.ConfigDict(
    dict(
      embeddings=True,  # 2-D projection of test embeddings, coloured by label, one frame per eval
      projection='pca',  # pca | tsne | umap (pip install umap-learn)
      num_points=1000,  # fixed test examples in every frame
      attention=True,  # ViT encoders: last-block CLS attention of every head
      reconstructions=True,  # MAE: original / masked / reconstruction / visible pasted back
      num_images=6,  # images in the attention / reconstruction pictures
    )
  )


def base_config(method: str = '', image_size: int = 32) -> ml_collections.ConfigDict:
  """Data, views, encoder, optimizer, schedule, logging, evaluation and pictures: the sections
  every method reads, for images of `image_size` pixels. `method` is set by each method's
  default_config (empty: none chosen)."""
  c = ml_collections.ConfigDict()
  c.name = ''  # the run's name: default workdir is runs/<name>
  c.method = method  # simclr | byol | dino | mae | ijepa | triplet
  c.seed = 0
  # Warm start: another run's workdir. A new run starts its encoder (online and every EMA copy)
  # from that run's latest encoder, by name and shape; heads start fresh (REMEDIS's pipeline).
  # Or a weight file (.safetensors, .pth): timm's, torchvision's, the official DINO, MAE or
  # I-JEPA checkpoints (docs/weights.md); init_from_model: its timm name where the file does not
  # say it; init_from_part: the network of a file with two (DINO: teacher | student, I-JEPA:
  # target_encoder | encoder; '': the evaluated one).
  c.init_from = ''
  c.init_from_model = ''
  c.init_from_part = ''

  c.data = data_defaults(image_size)
  c.augment = augment_defaults(image_size)
  # One entry per view spec, taken in sorted order of the names; each overrides c.augment.
  c.views = ml_collections.ConfigDict(dict(view1={}, view2={}))
  c.model = model_defaults()
  c.eval_encoder = 'online'  # which network is evaluated; methods with a teacher offer more
  c.update(optim_defaults())
  # The devices as a data x fsdp mesh (ssljax/sharding.py): the batch split over both, the
  # parameters, optimizer state and EMA copies split over fsdp (1: data parallel, every device
  # holds them whole). -1 takes the rest; tensors below fsdp_min_size elements stay whole.
  c.mesh = mesh_defaults()

  c.log_every = 20
  c.health = health_defaults()
  c.checkpoint_every = 500
  c.keep_checkpoints = 3
  c.eval_every = 0  # 0: only at the end
  c.eval = ('linear', 'linear_few', 'knn')
  c.eval_config = eval_defaults()
  c.visualize = visualize_defaults()
  # WORKDIR/report.md (monitor/report.py): summary, results, curves, pictures; rewritten at every
  # evaluation so a run can be read, or copied, without TensorBoard.
  c.report = True
  return c
