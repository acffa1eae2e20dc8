#!/bin/bash
# The video inception loop on the simulated animal (experiments/video_loop.md).
# Usage: experiments/video_loop.sh OUT [NEURONS]   (NEURONS: how many direction-selective cells get MEVs; default 20)
# `twin loop --video` into OUT/loop: simulate the animal (100 neurons, 200 train + 20x10 test videos of
# 120 frames at 18x32), fit the video twin, select 16 neurons, their MEVs, export, the animal's
# responses to them, closeloop. Then, on the loop's twin: evaluate (fraction of the ground-truth
# ceiling), MEVs of NEURONS direction-selective cells, exciting and suppressing surround clips around
# them, and the table: MEV vs best natural clip on the true neurons, MEV motion vs preferred direction,
# grating tuning, surround ratios.
# Every step skips outputs that already exist, so the script resumes after the loop.
set -euo pipefail
OUT=$1
NEURONS=${2:-20}
HERE=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
source "$HERE/experiments/common.sh"

[ -e "$OUT/loop/loop.json" ] || timed loop twin loop "$OUT/loop" --video > "$OUT/loop.log"
ln -sfn loop/session.zarr "$OUT/animal.zarr"
ln -sfn loop/run "$OUT/run"
[ -e "$OUT/evaluate.json" ] || twin evaluate "$OUT/run" --json > "$OUT/evaluate.json"
neurons=$(python -c "
import sys, numpy as np, xarray as xr
ds = xr.open_zarr(sys.argv[1], consolidated=False)
print(','.join(map(str, np.flatnonzero(ds['gt_direction_selective'].values)[:int(sys.argv[2])])))" "$OUT/animal.zarr" "$NEURONS")
[ -e "$OUT/mevs.json" ] || timed mevs twin mei "$OUT/run" --neurons "$neurons" \
    --config "$HERE/experiments/video_mev.toml" --out "$OUT/mevs.zarr" --json > "$OUT/mevs.json"
for surround in excite suppress; do  # surround clips around those MEVs, each inside its tight mask
    [ -e "$OUT/surround_$surround.json" ] || timed "surround_$surround" twin mei "$OUT/run" --surround "$surround" \
        --centre "$OUT/mevs.zarr" --config "$HERE/experiments/video_mev.toml" --out "$OUT/surround_$surround.zarr" \
        --json > "$OUT/surround_$surround.json"
done
python "$HERE/experiments/video_loop_table.py" "$OUT"
