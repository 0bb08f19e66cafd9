#!/usr/bin/env bash
# The GPU measurements of issue 6, in one go: fused-kernel tests on CUDA, SE-ResNet-50 vs ResNet-50 (eager and
# compiled, training and inference, bf16 + channels_last, batch 256, 224 px; the fused path and the eager one), and
# the CIFAR ResNet-110 / SE-ResNet-110 training step. Raw output goes to benchmarks/results/ (or $OUT if set).
# Usage: bash benchmarks/gpu_suite.sh   (needs a CUDA GPU, the package installed with `pip install -e ".[test]"`,
# triton, and timm for the peer rows)
set -u
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
gpu=$(python -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '_'))")
log="$out/gpu_${gpu}_$(date -u +%Y%m%d).txt"
run() { echo "\$ $*" | tee -a "$log"; "$@" 2>&1 | tee -a "$log"; }
run python -m pytest -q tests/ops/test_fused_se.py tests/models/test_se_impl.py -p no:cacheprovider
common="--model se_resnet50 --baseline resnet50 --device cuda --batch-size 256 --amp bf16 --channels-last --mode both"
run python tools/benchmark.py $common --json
run python tools/benchmark.py $common --compile --json
run python tools/benchmark.py $common --se-impl eager --no-peer --json
run python tools/benchmark.py $common --se-impl eager --no-peer --compile --json
run python tools/benchmark_cifar.py --models resnet110 se_resnet110 --json
run python tools/benchmark_cifar.py --models resnet110 se_resnet110 --se-impl eager --json
echo "written: $log"
