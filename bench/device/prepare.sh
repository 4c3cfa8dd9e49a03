#!/usr/bin/env bash
# Run here, before a lent device machine's one call: fills .device/ (ignored by git) with what
# that machine lacks for bench/device/check.sh: Python 3.12 wheels of the server's and the
# tests' packages at the versions this venv runs, and perf_analyzer with the two libraries it
# links (libcudart.so.12, Debian's libb64.so.0d). Then call the device tool with carry [".device"]
# and the command `bash bench/device/check.sh` (see docs/benchmarks.md, "On a lent GPU").
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
DEST=.device
grep -qxF "/$DEST/" .git/info/exclude 2>/dev/null || echo "/$DEST/" >> .git/info/exclude
rm -rf "$DEST" && mkdir -p "$DEST/wheels" "$DEST/bin"

# What the device image has no copy of (or may have too old a copy of: the generated protobuf
# and gRPC code needs runtimes at least as new as the ones it was generated with).
packages=(starlette uvicorn httptools pydantic pydantic_core pydantic-settings annotated-types
          typing-inspection python-dotenv grpcio grpcio-health-checking protobuf tritonclient
          python-rapidjson geventhttpclient gevent greenlet zope.event zope.interface brotli
          anyio)
pins=()
for name in "${packages[@]}"; do
    version=$("$PY" -m pip show "$name" 2>/dev/null | awk '/^Version:/ {print $2}')
    [ -n "$version" ] || { echo "prepare: $name is not installed in $PY's environment" >&2; exit 1; }
    pins+=("$name==$version")
done
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1 \
           manylinux_2_31 manylinux_2_34 manylinux_2_35 manylinux_2_39; do
    platforms+=(--platform "${tag}_x86_64")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$DEST/wheels" "${pins[@]}"

# perf_analyzer: the tritonclient 2.41.0 wheel's binary (the last wheel that ships it), gzipped
# to fit the carry limit, and the libraries the tests' fixture finds beside it.
cache=.venv/cache
"$PY" - "$cache" "$DEST/bin" <<'PYEOF'
import glob, gzip, os, shutil, subprocess, sys, zipfile
cache, dest = sys.argv[1], sys.argv[2]
os.makedirs(cache, exist_ok=True)
def wheel(req: str, name: str) -> str:
    found = sorted(glob.glob(os.path.join(cache, f"{name}-*.whl")))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", cache,
                        req], check=True)
        found = sorted(glob.glob(os.path.join(cache, f"{name}-*.whl")))
    return found[-1]
def member(path: str, suffix: str) -> bytes:
    with zipfile.ZipFile(path) as zf:
        return zf.read(next(m for m in zf.namelist() if m.endswith(suffix)))
binary = member(wheel("tritonclient==2.41.0", "tritonclient-2.41.0"), "/bin/perf_analyzer")
with gzip.open(os.path.join(dest, "perf_analyzer.gz"), "wb", compresslevel=9) as out:
    out.write(binary)
with open(os.path.join(dest, "libcudart.so.12"), "wb") as out:
    out.write(member(wheel("nvidia-cuda-runtime-cu12", "nvidia_cuda_runtime_cu12"), "/libcudart.so.12"))
PYEOF
libb64=$(ldconfig -p | awk '/libb64\.so\.0d / {print $NF; exit}')
[ -n "$libb64" ] || { echo "prepare: libb64.so.0d not found (make system-deps)" >&2; exit 1; }
cp -L "$libb64" "$DEST/bin/libb64.so.0d"
du -sh "$DEST"; ls "$DEST/wheels" | wc -l
