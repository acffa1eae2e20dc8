#!/usr/bin/env bash
# The GPU benchmark in one command (benchmarks/device.py says what it measures).
#
#   benchmarks/device.sh --fetch-wheels        # with network: the packages the GPU machine lacks, into .whl/
#   benchmarks/device.sh --out DIR [--quick]   # there: install .whl/ where imports fail, then run
#
# The GPU machine has no network and Python 3.12 without zarr, numcodecs, donfig, tomli-w,
# google-crc32c (zarr's) and neuralpredictors; they travel as wheels in .whl/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 tomli-w==1.2.0 google-crc32c==1.9.0 neuralpredictors==0.3.0)
MODULES="zarr, numcodecs, donfig, tomli_w, google_crc32c, neuralpredictors"

if [[ "${1:-}" == --fetch-wheels ]]; then
    exclude=$(git rev-parse --git-path info/exclude)
    mkdir -p "$(dirname "$exclude")" .whl
    grep -qxF /.whl/ "$exclude" 2>/dev/null || echo /.whl/ >>"$exclude"
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
    ls -l .whl
    exit 0
fi

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false
PYTHON=${PYTHON:-python3}  # the interpreter to run with (tests pass their own)
if ! "$PYTHON" -c "import $MODULES" 2>/dev/null; then
    ls .whl/*.whl >/dev/null 2>&1 || { echo "benchmarks/device.sh: missing $MODULES and no .whl/; run benchmarks/device.sh --fetch-wheels first" >&2; exit 2; }
    echo "installing $(ls .whl | wc -l) wheels from .whl/ into /tmp/site" >&2
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
exec "$PYTHON" benchmarks/device.py "$@"
