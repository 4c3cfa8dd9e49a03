#!/usr/bin/env bash
# The checks that need a GPU, as one call of a lent device machine (about 5 minutes):
#   device tool: carry [".device"], command `bash bench/device/check.sh`, timeout_s 420
# after `bash bench/device/prepare.sh` here. Installs the carried wheels, exports lenet, runs the
# GPU tests (CUDA shared memory in one process and with two workers, TorchScript on the GPU
# reading CUDA inputs in place, the GPU backend tests, perf_analyzer --shared-memory system and
# cuda), then the GPU bench for ResNet-50 fp16 at batch 32 and 64 (in-process, core path, gRPC,
# system and CUDA shared memory through perf_analyzer). Everything it reports lands in $OUT:
# pytest.log, junit.xml, bench.log, the bench's results JSON and its rendered section.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/device-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }

# LOCAL=1 tries the script on this CPU machine with its own venv (PYTHON=.venv/bin/python):
# no wheels installed, the bench on --device cpu, the GPU tests skipping.
DEVICE=cuda
if [ "${LOCAL:-0}" = 1 ]; then
    DEVICE=cpu
    export PYTHONPATH="$PWD"
else
    stamp "install carried wheels"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .device/wheels/*.whl || { echo "wheel install failed" >&2; exit 1; }
    export PYTHONPATH="$PWD:/tmp/site"
fi
PA_DIR=/tmp/perf_analyzer
mkdir -p "$PA_DIR"
gunzip -c .device/bin/perf_analyzer.gz > "$PA_DIR/perf_analyzer" && chmod 755 "$PA_DIR/perf_analyzer"
cp .device/bin/libcudart.so.12 .device/bin/libb64.so.0d "$PA_DIR/"
export CAPSERVE_PERF_ANALYZER="$PA_DIR/perf_analyzer"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee "$OUT/gpu.txt"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

stamp "export lenet"
STORE=/tmp/capserve-store
timeout 180 "$PY" -m export.defaults --checkpoints checkpoints --store "$STORE" --models lenet \
    > "$OUT/export.log" 2>&1 || { echo "export failed"; tail -20 "$OUT/export.log"; }
export CAPSERVE_TEST_STORE="$STORE"

stamp "GPU tests"
timeout 200 "$PY" -m pytest -q -rs --tb=short -p no:cacheprovider --junitxml="$OUT/junit.xml" \
    tests/integration/test_cuda_shared_memory.py \
    tests/integration/test_shared_memory_workers.py \
    tests/unit/serving/core/test_device_inputs.py tests/unit/serving/core/test_cuda_shm.py \
    tests/unit/serving/backends/test_backends.py \
    > "$OUT/pytest.log" 2>&1
echo "pytest exit $?"; tail -25 "$OUT/pytest.log"

stamp "GPU bench"
cp docs/benchmarks.md "$OUT/benchmarks-gpu.md"  # the bench rewrites its GPU section
timeout 240 "$PY" -m bench.gpu --device "$DEVICE" --models resnet50 --dtypes fp16 --batches 32,64 \
    --concurrency 1,4 --seconds 2 --budget-s 150 --perf-analyzer "$PA_DIR/perf_analyzer" \
    --out "$OUT" --docs "$OUT/benchmarks-gpu.md" --img-dir "$OUT/img" > "$OUT/bench.log" 2>&1
echo "bench exit $?"; tail -30 "$OUT/bench.log"
rm -rf "$OUT/img"  # plots stay behind: at most 8 files come back
stamp "done"
