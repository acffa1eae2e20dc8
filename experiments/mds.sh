#!/bin/bash
# Most discriminative stimuli against the simulated animal's true functional types
# (experiments/mds.md). Usage: experiments/mds.sh OUT [SEED...]   (default seeds: 0 1)
# Per seed: a 60-neuron animal of 4 functional types, the small twin, then `twin mds --clusters
# auto` and `--clusters 4`; prints the adjusted Rand index of each against the true types.
# Every step skips outputs that already exist, so the script resumes where it stopped.
set -euo pipefail
OUT=$1; shift
SEEDS=${*:-0 1}
HERE=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
source "$HERE/experiments/common.sh"

for seed in $SEEDS; do
    store=$OUT/types4_s$seed.zarr
    [ -e "$store" ] || twin simulate "$store" --size 18x32 --neurons 60 --types 4 --seed "$seed"
    fit_once "run_types4_s$seed" "$store" --config "$HERE/experiments/small_twin.toml"
    for clusters in auto 4; do
        name=mds_s${seed}_$clusters
        [ -e "$OUT/$name.json" ] || timed "$name" twin mds "$OUT/run_types4_s$seed" --clusters "$clusters" \
            --config "$HERE/experiments/mds_simulated.toml" --out "$OUT/$name.zarr" --json > /dev/null
        python - "$OUT/$name.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"{sys.argv[1]}: {s['clusters']} clusters {s['cluster_sizes']}, {s['iterations']} rounds,"
      f" {len(s['merges'])} merges; ARI vs true types {s['ari_true_type']:.3f}"
      f" (k-means start {s['ari_initial_true_type']:.3f})")
PY
    done
done
