#!/bin/bash
# The video inception loop on the simulated animal (experiments/video_loop.md).
# Usage: experiments/video_loop.sh OUT [NEURONS]   (NEURONS: how many direction-selective cells get MEVs; default 20)
# simulate --video (100 neurons, 200 train + 20x10 test videos of 120 frames at 18x32), fit the
# video twin, evaluate (fraction of the ground-truth ceiling), MEVs of direction-selective cells,
# then the table: MEV vs best natural clip on the true neurons, MEV motion vs preferred direction.
# Every step skips outputs that already exist, so the script resumes where it stopped.
set -euo pipefail
OUT=$1
NEURONS=${2:-20}
HERE=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
source "$HERE/experiments/common.sh"

[ -e "$OUT/animal.zarr" ] || timed simulate twin simulate "$OUT/animal.zarr" --video
fit_once run "$OUT/animal.zarr" --config "$HERE/experiments/video_twin.toml"
[ -e "$OUT/evaluate.json" ] || twin evaluate "$OUT/run" --json > "$OUT/evaluate.json"
neurons=$(python -c "
import sys, numpy as np, xarray as xr
ds = xr.open_zarr(sys.argv[1], consolidated=False)
print(','.join(map(str, np.flatnonzero(ds['gt_direction_selective'].values)[:int(sys.argv[2])])))" "$OUT/animal.zarr" "$NEURONS")
[ -e "$OUT/mevs.json" ] || timed mevs twin mei "$OUT/run" --neurons "$neurons" \
    --config "$HERE/experiments/video_mev.toml" --out "$OUT/mevs.zarr" --json > "$OUT/mevs.json"
python "$HERE/experiments/video_loop_table.py" "$OUT"
