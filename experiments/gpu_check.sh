#!/usr/bin/env bash
# The accelerator check of issue 17, one prepared run (about 8 minutes on an H100/H200):
#   1. SimCLR ResNet-50, 224 px, bf16, batch 256: the step alone on host-made views against the
#      step that makes its views on the device from uint8 images (target: within 10%);
#   2. MAE ViT-B/16, 224 px, 75% masking, bf16, batch 256: images/s and model FLOPs utilisation
#      (XLA's FLOP count of the step over the device's peak, 989 TFLOP/s dense bf16).
# Needs only JAX (no TensorFlow): the synthetic source. Results go to $OUT (or
# experiments/results/gpu). The machine needs ml_collections (carry its wheel) besides JAX and torch.
set -euo pipefail
out=${OUT:-experiments/results/gpu}
mkdir -p "$out"
common=(--config.data.source=synthetic --config.data.num_examples=512 --config.batch_size=256
  --pipeline=false --steps=20)
python experiments/bench_train_step.py --config=configs/simclr_imagenet.py "${common[@]}" \
  --config.augment.on=device --out="$out/simclr_resnet50_device_augment.json"
python experiments/bench_train_step.py --config=configs/mae_imagenet.py "${common[@]}" \
  --peak_tflops=989 --out="$out/mae_vit_b16.json"
# 3. The same SimCLR ResNet-50 step in PyTorch (written from torchvision's layout, autocast bf16,
#    channels_last) beside ssljax's, back to back on the same GPU.
python experiments/bench_vs_pytorch.py --cases=resnet50_224 --steps=20 --repeats=2 \
  --out="$out/vs_pytorch_resnet50.json"
