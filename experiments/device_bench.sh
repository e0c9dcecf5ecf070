#!/usr/bin/env bash
# Train-step throughput on an accelerator machine without TensorFlow (synthetic source).
# usage: bash experiments/device_bench.sh OUTDIR   (carry .whl with ml_collections if missing)
set -uo pipefail
out=${1:-experiments/results}
mkdir -p "$out"
if ! python3 -c 'import ml_collections' 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
run() {
  name=$1; shift
  python3 experiments/bench_train_step.py --nopipeline --out="$out/bench_$name.json" "$@" 2>&1 \
    | grep -v -E '^(W|I)[0-9]{4}' | tee -a "$out/bench.log"
}
run r50_bf16_b256 --config=configs/simclr_imagenet.py --config.batch_size=256 --steps=20
run r50_f32_b256 --config=configs/simclr_imagenet.py --config.batch_size=256 --steps=20 \
  --config.model.compute_dtype=float32
run r18_cifar_b512 --config=configs/simclr_cifar10.py --config.batch_size=512 --steps=30
