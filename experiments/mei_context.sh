#!/bin/bash
# Centre-surround and transparent MEIs on a fitted twin of the simulated animal
# (experiments/mei_context.md), from the twin and MEIs of experiments/precision.sh.
# Usage: experiments/mei_context.sh PRECISION_OUT OUT. Every step skips outputs that already exist.
set -euo pipefail
RUNS=$1
OUT=$2
mkdir -p "$OUT"
run_once() {  # run_once NAME FLAGS: twin mei on the float32 twin, 2 seeds, into OUT/NAME.zarr and NAME.json
    local name=$1; shift
    [ -e "$OUT/$name.json" ] && return
    twin mei "$RUNS/fit_float32" --seeds 2 --recipe walker2019 --out "$OUT/$name.zarr" --overwrite --json "$@" \
        > "$OUT/$name.json.tmp"
    mv "$OUT/$name.json.tmp" "$OUT/$name.json"
}
run_once surround_excite --surround excite --centre "$RUNS/mei_float32_on_float32.zarr"
run_once surround_suppress --surround suppress --centre "$RUNS/mei_float32_on_float32.zarr"
run_once transparent_grey --neurons all --transparency --background grey
run_once transparent_natural --neurons all --transparency --background "$RUNS/sim18.zarr"
