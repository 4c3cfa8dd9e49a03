#!/usr/bin/env bash
# The GPU variant of the benchmarks: ResNet-50 and VGG-16 (random weights), batch 1-64, fp32 and
# fp16, in-process on the GPU vs through capserve's TorchScript CUDA path. Needs only python3 with
# torch (CUDA) + torchvision, numpy, protobuf, prometheus-client (grpcio for the gRPC rows); no
# network, installs nothing. About 5 minutes on one H100-class GPU. Flags: bench/gpu.sh --help.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m bench.gpu "$@"
