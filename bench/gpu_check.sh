#!/usr/bin/env bash
# The GPU validation, as one command on a lent NVIDIA machine (Python 3.12 + torch, no TVM, no network):
#   bash bench/gpu_check.sh [BUNDLE.tar.xz] [runner options]
# BUNDLE: what `python -m intvit.bench.gpu_bundle` packed here (default .gpu_bundle.tar.xz).
# Exactness (CUDA = torch integer model = x86-64 module, three models, batch 1 and 8), then latency
# (intvit INT8 vs TVM FP32/FP16 and torch FP32/FP16/BF16, DeiT-S and ViT-B, batch 1/8/32).
# Results: $OUT/gpu_check.json and .png (OUT defaults to ./gpu-check-results).
set -euo pipefail
cd "$(dirname "$0")/.."
ARCHIVE=${1:-.gpu_bundle.tar.xz}; shift || true
OUT=${OUT:-$PWD/gpu-check-results}
[ -f "$ARCHIVE" ] || { echo "no bundle at $ARCHIVE: run python -m intvit.bench.gpu_bundle here first" >&2; exit 2; }
WORK=$(mktemp -d)
tar -xJf "$ARCHIVE" -C "$WORK"
BUNDLE=$(echo "$WORK"/*/)
python3 -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" "$BUNDLE"runtime/wheels/*.whl
mkdir -p "$WORK/pkg" && ln -sfn "$PWD" "$WORK/pkg/intvit"
export PYTHONPATH="$WORK/pkg:${BUNDLE}runtime:$WORK/site" TVM_USE_RUNTIME_LIB=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader || true
mkdir -p "$OUT"
set -o pipefail
python3 -m intvit.bench.gpu_check "$BUNDLE" --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
