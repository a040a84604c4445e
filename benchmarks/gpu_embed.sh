#!/usr/bin/env bash
# Embedding throughput on a GPU with the Virchow2 architecture (random weights, fp16 autocast),
# plus GPU utilisation sampled with nvidia-smi during the end-to-end run.
#
#   bash benchmarks/gpu_embed.sh            # defaults below
#   BATCH=512 WORKERS=12 SLIDE_PX="20000 15000" bash benchmarks/gpu_embed.sh
#
# Prints (a) model-only tiles/s (fp32, fp32+channels-last, fp16+channels-last with cosine vs fp32
# on real H&E tiles) and (b) end-to-end tiles/s slide -> feature file with peak RSS and GPU
# utilisation. Needs: a CUDA GPU, nvidia-smi, this repository installed (pip install -e .).
set -euo pipefail
cd "$(dirname "$0")/.."
BATCH="${BATCH:-256}"
WORKERS="${WORKERS:-$(( $(nproc) > 2 ? $(nproc) - 2 : 1 ))}"
ENCODER="${ENCODER:-virchow2}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python benchmarks/embed.py --device cuda --encoders "$ENCODER" --random-weights --batch-size "$BATCH" \
  --workers "$WORKERS" --threads 4 --model-tiles 2048 --gpu-util --slide-px ${SLIDE_PX:-40000 30000} \
  --json "${OUT_JSON:-gpu_embed.json}"
