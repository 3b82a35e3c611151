#!/usr/bin/env bash
# Set up (idempotently), then the main job on the embedded default: bundled EfficientNet-Lite0 ImageNet weights,
# Fashion-MNIST tasks, the localhost device profile. A small SMSP pool is built first (resumable, kept in runs/).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

pool=runs/demo/pool.sqlite
mkdir -p runs/demo
echo "== building the demo pool (4 Fashion-MNIST tasks pruned from scratch; finished tasks are skipped)" >&2
.venv/bin/edge-smsp pool build --backbone efficientnet_lite0 --dataset fashion-mnist --tasks 4 \
  --classes-per-task 3 --ratio 0.5 --iters 100 --rounds 2 --image-size 64 --train-per-class 200 \
  --val-per-class 100 --seed 1 --pool "$pool"
echo "== deploying a new task (classes 0,2,4) to the localhost profile" >&2
exec .venv/bin/edge-smsp deploy --profile device_profiles/localhost.yaml --pool "$pool" \
  --classes 0,2,4 --iters 100 --train-per-class 200 --val-per-class 100 --out runs/demo/deploy "$@"
